//! The OpenAPI 3.1 document of the socket API (`GET /v1/openapi.json`), built once at
//! start-up. The schemas come from the Rust types (utoipa derives them from the same structs
//! serde reads and writes); the operations come from [`SPECS`], one entry per route with its
//! parameters, its body, its answers and, per error status, the exact problem codes it may
//! carry. Host limits (`[limits] max_vcpus`, ...) become schema bounds, so a request the
//! document calls valid is never refused as malformed.
//!
//! [`declared`] answers whether a route may answer a status with a code; in debug builds
//! the router refuses to send anything else (`routes::handle`), so every test that runs the
//! daemon also checks the document against the code.

use super::error::Problem;
use super::ops::{
    CreateDriveRequest, CreateProjectRequest, CreateVmRequest, EnrollRequest, PutUserRequest,
    ShareRequest, StopRequest, UnlockRequest, UpdateVmRequest, AUDIT_LIMIT_MAX,
};
use super::routes::CreatedProjectView;
use crate::config::Config;
use crate::keys::{Half, LockStatus};
use crate::model::{
    HostName, IdlePolicy, ObjectRef, ProjectName, Role, UserName, VmState, API_DURATION_PATTERN,
};
use crate::service::{
    Change, Changed, ConsoleLog, DriveView, EventKind, FencedHost, FleetHost, Health, HostState,
    HostVm, IdleStatus, Me, Members, ProjectView, UserView, VmView,
};
use crate::store::AuditEntry;
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

/// Problem codes, by the status they come with.
type Problems = &'static [(u16, &'static str)];

/// A parameter's type.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A user name.
    User,
    /// A project name.
    Project,
    /// A VM: id, unique id prefix or name.
    Vm,
    /// A drive: id, unique id prefix or name.
    Drive,
    /// `true` or `false`.
    Flag,
    /// The audit row limit.
    Limit,
    /// A whole number from 0 (milliseconds since the epoch, a byte offset).
    Natural,
    /// A fleet host's name.
    Host,
}

/// A path or query parameter.
#[derive(Debug)]
pub struct Param {
    /// Its name.
    pub name: &'static str,
    /// In the path (required) or the query (optional).
    pub in_path: bool,
    /// Its type.
    pub kind: Kind,
    /// What it means.
    pub doc: &'static str,
}

const fn path(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        in_path: true,
        kind,
        doc,
    }
}

const fn query(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        in_path: false,
        kind,
        doc,
    }
}

/// A request body.
#[derive(Debug)]
pub enum Body {
    /// None is read (GET, DELETE).
    None,
    /// Optional; if sent, the empty object.
    Empty,
    /// Required; the named component schema.
    Json(&'static str),
    /// Optional; the named component schema (every field has a default).
    Optional(&'static str),
}

/// A success answer.
#[derive(Debug)]
pub enum Answer {
    /// JSON of the named component schema.
    Json(&'static str),
    /// A JSON array of the named component schema.
    List(&'static str),
    /// `{"change": ...}`.
    Change,
    /// Prometheus text.
    Text,
    /// Server-Sent Events.
    Events,
    /// This document.
    Document,
}

/// One operation.
#[derive(Debug)]
pub struct Spec {
    /// HTTP method.
    pub method: &'static str,
    /// Path pattern, as in `ops::ROUTES`.
    pub path: &'static str,
    /// operationId (client generators name their methods after it).
    pub id: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Who may call it and what it does.
    pub description: &'static str,
    /// Path and query parameters.
    pub params: &'static [Param],
    /// The request body.
    pub body: Body,
    /// Success statuses.
    pub answers: &'static [(u16, Answer)],
    /// Problem codes by status, in groups.
    pub problems: &'static [Problems],
}

// The groups of problem codes, named by the step of the request flow (`api` module doc)
// that produces them.

/// Any connection: over its peer's connection limit, or a handler that failed.
const CONN: Problems = &[(503, "too_many_connections"), (500, "internal")];
/// The principal step, and a query parameter where none is taken.
const PEER: Problems = &[
    (400, "invalid_parameter"),
    (403, "unregistered"),
    (403, "admin_required"),
    (500, "store_error"),
    (503, "store_unavailable"),
];
/// Reading a body.
const BODY: Problems = &[
    (400, "invalid_body"),
    (408, "body_timeout"),
    (413, "body_too_large"),
];
/// A route with path parameters: an empty segment matches no route.
const PATH: Problems = &[(404, "no_route")];
/// A write to the store.
const WRITE: Problems = &[
    (500, "store_error"),
    (507, "insufficient_storage"),
    (409, "changed_meanwhile"),
];
/// A VM named by reference.
const VM: Problems = &[
    (404, "vm_not_found"),
    (409, "ambiguous"),
    (403, "role_required"),
    (404, "not_found"),
];
/// A drive named by reference.
const DRIVE: Problems = &[
    (404, "drive_not_found"),
    (409, "ambiguous"),
    (404, "not_found"),
];
/// A call to libvirt.
const HV: Problems = &[(503, "hypervisor_unavailable"), (502, "hypervisor_error")];
/// An operation on a running VM, which only the agent of the host holding it may do.
const HELD: Problems = &[(409, "vm_running_elsewhere")];
/// Key material on a fleet host no admin enrolled.
const KEYS: Problems = &[(409, "host_not_enrolled")];
/// Fleet management, which needs a fleet and names a host.
const FLEET: Problems = &[(409, "not_a_fleet"), (404, "not_found")];
/// A project named in the path.
const PROJECT: Problems = &[(404, "project_not_found"), (404, "not_found")];

const NAME: Param = path("name", Kind::User, "The user.");
const PROJECT_P: Param = path("project", Kind::Project, "The project.");
const USER_P: Param = path("user", Kind::User, "The user.");
const HOST_P: Param = path("host", Kind::Host, "The fleet host.");
const VM_P: Param = path(
    "id",
    Kind::Vm,
    "The VM: its id, a unique id prefix or its name.",
);
const DRIVE_P: Param = path(
    "drive",
    Kind::Drive,
    "The drive: its id, a unique id prefix or its name.",
);
const DRIVE_ID_P: Param = path(
    "id",
    Kind::Drive,
    "The drive: its id, a unique id prefix or its name.",
);

/// Every operation of the API.
pub const SPECS: &[Spec] = &[
    Spec {
        method: "GET",
        path: "/v1/health",
        id: "health",
        summary: "Daemon and hypervisor status",
        description: "Any peer may ask, registered or not.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::Json("Health"))],
        problems: &[CONN],
    },
    Spec {
        method: "GET",
        path: "/v1/openapi.json",
        id: "openapi",
        summary: "This document",
        description: "Any peer may ask, registered or not.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::Document)],
        problems: &[CONN],
    },
    Spec {
        method: "GET",
        path: "/v1/me",
        id: "me",
        summary: "The calling principal",
        description: "Name, team, admin flag and projects of the caller.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::Json("Me"))],
        problems: &[CONN, PEER],
    },
    Spec {
        method: "GET",
        path: "/v1/users",
        id: "list_users",
        summary: "The user registry",
        description: "Admins only.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::List("UserView"))],
        problems: &[CONN, PEER],
    },
    Spec {
        method: "PUT",
        path: "/v1/users/{name}",
        id: "put_user",
        summary: "Register a user or change their team or admin flag",
        description: "Admins only; idempotent. A user who holds VM roles or drives cannot \
                      change team (409 user_has_roles).",
        params: &[NAME],
        body: Body::Json("PutUserRequest"),
        answers: &[(200, Answer::Json("Changed_UserView"))],
        problems: &[
            CONN,
            PEER,
            BODY,
            PATH,
            WRITE,
            &[(409, "name_reserved"), (409, "user_has_roles")],
        ],
    },
    Spec {
        method: "DELETE",
        path: "/v1/users/{name}",
        id: "delete_user",
        summary: "Unregister a user",
        description: "Admins only; idempotent (`unchanged` for an unknown user). Refused while \
                      the user holds VM roles or drives.",
        params: &[NAME],
        body: Body::None,
        answers: &[(200, Answer::Change)],
        problems: &[CONN, PEER, PATH, WRITE, &[(409, "user_has_roles")]],
    },
    Spec {
        method: "GET",
        path: "/v1/projects",
        id: "list_projects",
        summary: "Projects the caller may see",
        description: "Admins see every project; others the projects they are members of.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::List("ProjectView"))],
        problems: &[CONN, PEER],
    },
    Spec {
        method: "POST",
        path: "/v1/projects",
        id: "create_project",
        summary: "Create a project and its key",
        description: "Admins only. The answer carries the admin and the member share, shown \
                      this once; the project exists only once the answer has been read.",
        params: &[],
        body: Body::Json("CreateProjectRequest"),
        answers: &[(201, Answer::Json("CreatedProjectView"))],
        problems: &[
            CONN,
            PEER,
            BODY,
            WRITE,
            &[(409, "already_exists"), (404, "user_not_found")],
        ],
    },
    Spec {
        method: "DELETE",
        path: "/v1/projects/{project}",
        id: "delete_project",
        summary: "Delete an empty project",
        description: "Admins only. Refused while the project holds VMs or drives.",
        params: &[PROJECT_P],
        body: Body::None,
        answers: &[(200, Answer::Change)],
        problems: &[
            CONN,
            PEER,
            PATH,
            WRITE,
            PROJECT,
            &[(409, "project_not_empty")],
        ],
    },
    Spec {
        method: "PUT",
        path: "/v1/projects/{project}/members/{user}",
        id: "add_member",
        summary: "Add a project member",
        description: "Admins only; idempotent.",
        params: &[PROJECT_P, USER_P],
        body: Body::Empty,
        answers: &[(200, Answer::Change)],
        problems: &[
            CONN,
            PEER,
            BODY,
            PATH,
            WRITE,
            PROJECT,
            &[(404, "user_not_found")],
        ],
    },
    Spec {
        method: "DELETE",
        path: "/v1/projects/{project}/members/{user}",
        id: "remove_member",
        summary: "Remove a project member",
        description: "Admins only; idempotent. Their user roles in the project end at once. A \
                      member who owns VMs or drives there is refused (409 member_owns) unless \
                      `force=true`: shared ownerships end, and what they alone own goes to \
                      `transfer_to`, a member of the same team.",
        params: &[
            PROJECT_P,
            USER_P,
            query("force", Kind::Flag, "Hand over what the member owns."),
            query(
                "transfer_to",
                Kind::User,
                "Who takes what the member alone owns.",
            ),
        ],
        body: Body::None,
        answers: &[(200, Answer::Change)],
        problems: &[
            CONN,
            PEER,
            PATH,
            WRITE,
            PROJECT,
            &[
                (409, "member_owns"),
                (409, "team_mismatch"),
                (409, "not_project_member"),
            ],
        ],
    },
    Spec {
        method: "POST",
        path: "/v1/projects/{project}/unlock",
        id: "unlock_project",
        summary: "Submit one half of the project key",
        description: "An admin submits the admin share, a member the member share; two \
                      different people. The key is in memory once both arrived.",
        params: &[PROJECT_P],
        body: Body::Json("UnlockRequest"),
        answers: &[(200, Answer::Json("LockStatus"))],
        problems: &[
            CONN,
            PEER,
            KEYS,
            BODY,
            PATH,
            WRITE,
            PROJECT,
            &[
                (400, "malformed_share"),
                (403, "member_required"),
                (403, "wrong_submitter"),
                (409, "half_already_pending"),
                (409, "two_people_required"),
                (409, "invalid_share"),
            ],
        ],
    },
    Spec {
        method: "POST",
        path: "/v1/projects/{project}/lock",
        id: "lock_project",
        summary: "Forget the project key",
        description: "Admins and members. Running VMs keep running.",
        params: &[PROJECT_P],
        body: Body::Empty,
        answers: &[(200, Answer::Json("LockStatus"))],
        problems: &[CONN, PEER, BODY, PATH, WRITE, PROJECT],
    },
    Spec {
        method: "POST",
        path: "/v1/projects/{project}/resplit",
        id: "resplit_project",
        summary: "Re-key a project and hand out new shares",
        description: "Admins only, while the key is unlocked. The old shares keep working \
                      until the new pair has unlocked once.",
        params: &[PROJECT_P],
        body: Body::Empty,
        answers: &[(201, Answer::Json("CreatedProjectView"))],
        problems: &[
            CONN,
            PEER,
            KEYS,
            BODY,
            PATH,
            WRITE,
            PROJECT,
            &[(409, "project_locked"), (500, "drive_secret_invalid")],
        ],
    },
    Spec {
        method: "GET",
        path: "/v1/drives",
        id: "list_drives",
        summary: "Drives the caller owns",
        description: "",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::List("DriveView"))],
        problems: &[CONN, PEER],
    },
    Spec {
        method: "POST",
        path: "/v1/drives",
        id: "create_drive",
        summary: "Create an encrypted drive",
        description: "Project members, while the project key is unlocked. The caller owns it.",
        params: &[],
        body: Body::Json("CreateDriveRequest"),
        answers: &[(201, Answer::Json("DriveView"))],
        problems: &[
            CONN,
            PEER,
            KEYS,
            BODY,
            WRITE,
            PROJECT,
            &[
                (400, "invalid_request"),
                (403, "not_project_member"),
                (409, "already_exists"),
                (409, "project_locked"),
                (500, "image_error"),
            ],
        ],
    },
    Spec {
        method: "GET",
        path: "/v1/drives/{id}",
        id: "get_drive",
        summary: "One drive",
        description: "Its owners only.",
        params: &[DRIVE_ID_P],
        body: Body::None,
        answers: &[(200, Answer::Json("DriveView"))],
        problems: &[CONN, PEER, PATH, DRIVE],
    },
    Spec {
        method: "DELETE",
        path: "/v1/drives/{id}",
        id: "delete_drive",
        summary: "Delete a detached drive and its image",
        description: "Its owners only.",
        params: &[DRIVE_ID_P],
        body: Body::None,
        answers: &[(200, Answer::Change)],
        problems: &[CONN, PEER, PATH, WRITE, DRIVE, &[(409, "drive_attached")]],
    },
    Spec {
        method: "GET",
        path: "/v1/vms",
        id: "list_vms",
        summary: "VMs the caller holds a role on",
        description: "Drive details only in owners' views.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::List("VmView"))],
        problems: &[CONN, PEER],
    },
    Spec {
        method: "POST",
        path: "/v1/vms",
        id: "create_vm",
        summary: "Create a VM configuration",
        description: "Project members with a team. The caller becomes its first owner and \
                      must own the drives it names.",
        params: &[],
        body: Body::Json("CreateVmRequest"),
        answers: &[(201, Answer::Json("VmView"))],
        problems: &[
            CONN,
            PEER,
            BODY,
            WRITE,
            PROJECT,
            DRIVE,
            &[
                (400, "invalid_request"),
                (403, "not_project_member"),
                (409, "already_exists"),
                (409, "idle_out_of_bounds"),
                (409, "idle_required"),
                (409, "no_team"),
                (409, "project_mismatch"),
                (409, "drive_attached"),
            ],
        ],
    },
    Spec {
        method: "GET",
        path: "/v1/vms/{id}",
        id: "get_vm",
        summary: "One VM",
        description: "Role holders.",
        params: &[VM_P],
        body: Body::None,
        answers: &[(200, Answer::Json("VmView"))],
        problems: &[CONN, PEER, PATH, VM],
    },
    Spec {
        method: "PATCH",
        path: "/v1/vms/{id}",
        id: "update_vm",
        summary: "Change a VM's size or idle policy",
        description: "Owners. Sizes apply at the next start.",
        params: &[VM_P],
        body: Body::Optional("UpdateVmRequest"),
        answers: &[(200, Answer::Json("Changed_VmView"))],
        problems: &[
            CONN,
            PEER,
            BODY,
            PATH,
            WRITE,
            VM,
            &[
                (400, "invalid_request"),
                (403, "owner_required"),
                (409, "idle_out_of_bounds"),
                (409, "idle_required"),
            ],
        ],
    },
    Spec {
        method: "DELETE",
        path: "/v1/vms/{id}",
        id: "delete_vm",
        summary: "Delete a stopped VM",
        description: "Owners. Its drives stay, detached.",
        params: &[VM_P],
        body: Body::None,
        answers: &[(200, Answer::Change)],
        problems: &[
            CONN,
            PEER,
            PATH,
            WRITE,
            VM,
            HV,
            &[(403, "owner_required"), (409, "vm_running")],
        ],
    },
    Spec {
        method: "GET",
        path: "/v1/vms/{id}/members",
        id: "list_vm_members",
        summary: "A VM's owners and users",
        description: "Role holders.",
        params: &[VM_P],
        body: Body::None,
        answers: &[(200, Answer::Json("Members"))],
        problems: &[CONN, PEER, PATH, VM],
    },
    Spec {
        method: "PUT",
        path: "/v1/vms/{id}/members/{user}",
        id: "share_vm",
        summary: "Grant a role on a VM",
        description: "Owners grant either role, users grant `user`; within the VM's team and \
                      project. Granting `owner` hands over the drives and needs \
                      `confirm_drive_access`. Idempotent.",
        params: &[VM_P, USER_P],
        body: Body::Json("ShareRequest"),
        answers: &[(200, Answer::Json("Changed_Members"))],
        problems: &[
            CONN,
            PEER,
            BODY,
            PATH,
            WRITE,
            VM,
            &[
                (403, "owner_required"),
                (409, "team_mismatch"),
                (409, "not_project_member"),
                (409, "confirmation_required"),
                (409, "max_owners_reached"),
                (409, "last_owner"),
            ],
        ],
    },
    Spec {
        method: "DELETE",
        path: "/v1/vms/{id}/members/{user}",
        id: "unshare_vm",
        summary: "Remove a role on a VM",
        description: "Owners remove anyone but the last owner; users remove themselves. \
                      Idempotent.",
        params: &[VM_P, USER_P],
        body: Body::None,
        answers: &[(200, Answer::Json("Changed_Members"))],
        problems: &[
            CONN,
            PEER,
            PATH,
            WRITE,
            VM,
            &[(403, "owner_required"), (409, "last_owner")],
        ],
    },
    Spec {
        method: "POST",
        path: "/v1/vms/{id}/start",
        id: "start_vm",
        summary: "Start a VM",
        description: "Role holders, while the project key is unlocked.",
        params: &[VM_P],
        body: Body::Empty,
        answers: &[(200, Answer::Json("VmView"))],
        problems: &[
            CONN,
            PEER,
            KEYS,
            BODY,
            PATH,
            WRITE,
            VM,
            HV,
            HELD,
            &[
                (409, "vm_running"),
                (409, "vm_stopping"),
                (409, "no_drive"),
                (409, "project_locked"),
                (500, "drive_secret_invalid"),
            ],
        ],
    },
    Spec {
        method: "POST",
        path: "/v1/vms/{id}/stop",
        id: "stop_vm",
        summary: "Stop a VM",
        description: "Role holders. ACPI shutdown, then destroy after the timeout (or at once \
                      with `force`). 200 once stopped; with `wait: false`, 202 once stopping.",
        params: &[VM_P],
        body: Body::Optional("StopRequest"),
        answers: &[(200, Answer::Json("VmView")), (202, Answer::Json("VmView"))],
        problems: &[CONN, PEER, BODY, PATH, WRITE, VM, HV, HELD],
    },
    Spec {
        method: "POST",
        path: "/v1/vms/{id}/keepalive",
        id: "keepalive_vm",
        summary: "Reset a VM's idle clock",
        description: "Role holders.",
        params: &[VM_P],
        body: Body::Empty,
        answers: &[(200, Answer::Json("VmView"))],
        problems: &[CONN, PEER, BODY, PATH, WRITE, VM, HELD],
    },
    Spec {
        method: "GET",
        path: "/v1/vms/{id}/log",
        id: "vm_log",
        summary: "A stretch of the VM's serial console log",
        description: "Owners only (the console may show what is on the drives). At most \
                      64 KiB from `offset`; follow the log by asking again from `next`.",
        params: &[
            VM_P,
            query(
                "offset",
                Kind::Natural,
                "Start here (bytes from the start of the log).",
            ),
        ],
        body: Body::None,
        answers: &[(200, Answer::Json("ConsoleLog"))],
        problems: &[
            CONN,
            PEER,
            PATH,
            VM,
            &[(403, "owner_required"), (502, "hypervisor_error")],
        ],
    },
    Spec {
        method: "PUT",
        path: "/v1/vms/{id}/drives/{drive}",
        id: "attach_drive",
        summary: "Attach a drive (hot-plugged if the VM runs)",
        description: "Owners of both. Idempotent.",
        params: &[VM_P, DRIVE_P],
        body: Body::Empty,
        answers: &[(200, Answer::Json("Changed_VmView"))],
        problems: &[
            CONN,
            PEER,
            KEYS,
            BODY,
            PATH,
            WRITE,
            VM,
            DRIVE,
            HV,
            HELD,
            &[
                (409, "project_mismatch"),
                (409, "drive_attached"),
                (409, "vm_not_running"),
                (409, "project_locked"),
                (500, "drive_secret_invalid"),
            ],
        ],
    },
    Spec {
        method: "DELETE",
        path: "/v1/vms/{id}/drives/{drive}",
        id: "detach_drive",
        summary: "Detach a drive (hot-unplugged if the VM runs)",
        description: "Owners of both. Idempotent.",
        params: &[VM_P, DRIVE_P],
        body: Body::None,
        answers: &[(200, Answer::Json("Changed_VmView"))],
        problems: &[
            CONN,
            PEER,
            PATH,
            WRITE,
            VM,
            DRIVE,
            HV,
            HELD,
            &[
                (409, "drive_attached"),
                (409, "detach_timeout"),
                (409, "vm_not_running"),
            ],
        ],
    },
    Spec {
        method: "GET",
        path: "/v1/host/vms",
        id: "host_vms",
        summary: "Every VM on this host",
        description: "Admins only: id, project, state and size, no drive details.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::List("HostVm"))],
        problems: &[CONN, PEER],
    },
    Spec {
        method: "GET",
        path: "/v1/fleet/hosts",
        id: "fleet_hosts",
        summary: "The hosts of the fleet",
        description: "Admins only: each agent's host, version, heartbeat and state (`down` \
                      after `[fleet] host_dead_after` without a heartbeat). With SQLite, \
                      this host alone.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::List("FleetHost"))],
        problems: &[CONN, PEER],
    },
    Spec {
        method: "GET",
        path: "/v1/fleet/vms",
        id: "fleet_vms",
        summary: "Every VM of the fleet, with the host holding it",
        description: "Admins only, no drive details. A VM held by a host that is down shows \
                      state `unknown`.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::List("HostVm"))],
        problems: &[CONN, PEER],
    },
    Spec {
        method: "POST",
        path: "/v1/fleet/hosts/{host}/enroll",
        id: "enroll_host",
        summary: "Enroll a fleet host: it receives key material from now on",
        description: "Admins only. The fingerprint is the one read on the host itself (its \
                      agent logs it at start); a key with any other fingerprint is refused. \
                      Idempotent.",
        params: &[HOST_P],
        body: Body::Json("EnrollRequest"),
        answers: &[(200, Answer::Json("FleetHost"))],
        problems: &[
            CONN,
            PEER,
            BODY,
            PATH,
            WRITE,
            FLEET,
            &[(409, "fingerprint_mismatch")],
        ],
    },
    Spec {
        method: "DELETE",
        path: "/v1/fleet/hosts/{host}/enroll",
        id: "unenroll_host",
        summary: "Un-enroll a fleet host: its envelopes are deleted at once",
        description: "Admins only. Idempotent.",
        params: &[HOST_P],
        body: Body::None,
        answers: &[(200, Answer::Json("FleetHost"))],
        problems: &[CONN, PEER, PATH, WRITE, FLEET],
    },
    Spec {
        method: "POST",
        path: "/v1/fleet/hosts/{host}/fence",
        id: "fence_host",
        summary: "Fence a host that is down: its VMs may start elsewhere",
        description: "Admins only, and only for a host that is down: the admin states that it \
                      is powered off. The VMs it held are recorded stopped. When it comes \
                      back, its agent destroys the domains of VMs it no longer holds and \
                      reports them in the audit log (`host.fenced_destroyed`).",
        params: &[HOST_P],
        body: Body::Empty,
        answers: &[(200, Answer::Json("FencedHost"))],
        problems: &[CONN, PEER, BODY, PATH, WRITE, FLEET, &[(409, "host_up")]],
    },
    Spec {
        method: "POST",
        path: "/v1/host/vms/{id}/stop",
        id: "host_stop_vm",
        summary: "Stop any VM on this host",
        description: "Admins only, for resource management; audited with reason `admin`.",
        params: &[VM_P],
        body: Body::Optional("StopRequest"),
        answers: &[(200, Answer::Json("HostVm")), (202, Answer::Json("HostVm"))],
        problems: &[
            CONN,
            PEER,
            BODY,
            PATH,
            WRITE,
            HV,
            &[
                (404, "vm_not_found"),
                (409, "ambiguous"),
                (404, "not_found"),
            ],
        ],
    },
    Spec {
        method: "GET",
        path: "/v1/events",
        id: "events",
        summary: "Server-Sent Events about what the caller may see",
        description: "The stream stays open. A reader that falls behind gets a final \
                      `stream.dropped` event.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::Events)],
        problems: &[CONN, PEER, &[(429, "too_many_streams")]],
    },
    Spec {
        method: "GET",
        path: "/v1/audit",
        id: "audit",
        summary: "The audit log, newest first",
        description: "Admins see every row; others the rows of the VMs they hold a role on.",
        params: &[
            query("vm", Kind::Vm, "Only rows about this VM."),
            query("user", Kind::User, "Only rows by this actor."),
            query(
                "since",
                Kind::Natural,
                "From this time (ms since the epoch).",
            ),
            query(
                "until",
                Kind::Natural,
                "Before this time (ms since the epoch).",
            ),
            query(
                "limit",
                Kind::Limit,
                "At most this many rows (default 1000).",
            ),
        ],
        body: Body::None,
        answers: &[(200, Answer::List("AuditEntry"))],
        problems: &[CONN, PEER, &[(404, "vm_not_found"), (409, "ambiguous")]],
    },
    Spec {
        method: "GET",
        path: "/metrics",
        id: "metrics",
        summary: "Prometheus metrics",
        description: "Admins only.",
        params: &[],
        body: Body::None,
        answers: &[(200, Answer::Text)],
        problems: &[CONN, PEER],
    },
];

/// The entry of a route.
pub fn spec(method: &str, path: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.method == method && s.path == path)
}

/// Whether `route` (a pattern of `ops::ROUTES`) may answer `status` with problem `code`
/// (`None` for a success).
pub fn declared(method: &str, route: &str, status: u16, code: Option<&str>) -> bool {
    let Some(s) = spec(method, route) else {
        // Unmatched requests: the document does not describe them.
        return true;
    };
    match code {
        None => s.answers.iter().any(|(st, _)| *st == status),
        Some(c) => s
            .problems
            .iter()
            .flat_map(|g| g.iter())
            .any(|(st, pc)| *st == status && *pc == c),
    }
}

/// The component schemas, derived from the Rust types.
#[derive(OpenApi)]
#[openapi(components(schemas(
    Health,
    Me,
    UserView,
    Changed<UserView>,
    Changed<VmView>,
    Changed<Members>,
    Change,
    ProjectView,
    CreatedProjectView,
    LockStatus,
    Half,
    DriveView,
    VmView,
    VmState,
    Role,
    IdlePolicy,
    IdleStatus,
    Members,
    HostVm,
    FleetHost,
    FencedHost,
    HostState,
    ConsoleLog,
    AuditEntry,
    Problem,
    PutUserRequest,
    CreateProjectRequest,
    UnlockRequest,
    EnrollRequest,
    CreateDriveRequest,
    CreateVmRequest,
    UpdateVmRequest,
    ShareRequest,
    StopRequest,
)))]
struct Components;

const DESCRIPTION: &str = "\
The control API of one vmwarden host, served over HTTP/1.1 on a local Unix socket \
(`/run/vmwarden/vmwarden.sock` by default).

Authentication: the daemon reads the peer's uid from the socket (SO_PEERCRED) and looks up its \
user name; that name is the principal. A peer listed in `[access] orchestrators` may act for a \
registered user by sending `Vmwarden-User: <name>`; for anyone else that header is refused \
(403 admin_required). uid 0 and `[access] admins` are admins. An unregistered principal gets \
403 unregistered before its input is read. There is no token or password, so no security \
scheme is declared: who may call an operation is said in its description.

Objects: an `{id}` takes a VM's or drive's id, a unique prefix of it, or its name, resolved \
among what the caller may see (409 ambiguous lists the candidates). A hidden object and a \
missing one get the same 404.

Errors are `application/problem+json` (RFC 9457) with a stable `code`; each operation lists, \
per status, the codes it may answer. 400 means the request contradicts this document; what \
depends on the host's settings or on state (a locked project key included) is 409.";

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn param_schema(kind: Kind) -> Value {
    let to = |s: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>| {
        serde_json::to_value(s).expect("schemas serialize")
    };
    match kind {
        Kind::User => to(<UserName as utoipa::PartialSchema>::schema()),
        Kind::Project => to(<ProjectName as utoipa::PartialSchema>::schema()),
        Kind::Host => to(<HostName as utoipa::PartialSchema>::schema()),
        Kind::Vm | Kind::Drive => to(<ObjectRef as utoipa::PartialSchema>::schema()),
        Kind::Flag => json!({ "type": "boolean" }),
        Kind::Limit => json!({ "type": "integer", "minimum": 1, "maximum": AUDIT_LIMIT_MAX }),
        Kind::Natural => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
    }
}

/// The problem+json answers of one status, their codes listed.
fn problem_response(status: u16, codes: &[&str]) -> Value {
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut r = json!({
        "description": format!("{reason}: {}", codes.join(", ")),
        "content": { "application/problem+json": { "schema": {
            "allOf": [
                schema_ref("Problem"),
                {
                    "type": "object",
                    "properties": {
                        "code": { "type": "string", "enum": codes }
                    }
                }
            ]
        }}}
    });
    if status == 503 {
        r["headers"] = json!({ "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "required": true,
            "schema": { "type": "string", "pattern": "^[0-9]+$" }
        }});
    }
    r
}

fn success_response(status: u16, a: &Answer) -> Value {
    let json_of = |schema: Value| json!({ "application/json": { "schema": schema } });
    let (description, content) = match a {
        Answer::Json(n) => ("The object", json_of(schema_ref(n))),
        Answer::List(n) => (
            "The list",
            json_of(json!({ "type": "array", "items": schema_ref(n) })),
        ),
        Answer::Change => (
            "What the call changed",
            json_of(json!({
                "type": "object",
                "required": ["change"],
                "additionalProperties": false,
                "properties": { "change": schema_ref("Change") }
            })),
        ),
        Answer::Document => ("The OpenAPI document", json_of(json!({ "type": "object" }))),
        Answer::Text => (
            "Prometheus text exposition",
            json!({ "text/plain": { "schema": { "type": "string" } } }),
        ),
        Answer::Events => {
            let mut kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            kinds.push("stream.dropped");
            (
                "An endless stream; each event's `data` is a JSON object",
                json!({ "text/event-stream": { "schema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": { "type": "string", "enum": kinds },
                        "data": { "type": "string", "contentMediaType": "application/json" }
                    }
                }}}),
            )
        }
    };
    let description = match status {
        202 => "Accepted: the stop goes on after the answer",
        _ => description,
    };
    json!({ "description": description, "content": content })
}

fn operation(s: &Spec) -> Value {
    let mut op = json!({
        "operationId": s.id,
        "summary": s.summary,
        "tags": [s.path.split('/').nth(2).filter(|t| *t != "openapi.json").unwrap_or("meta")],
    });
    if !s.description.is_empty() {
        op["description"] = json!(s.description);
    }
    let params: Vec<Value> = s
        .params
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "in": if p.in_path { "path" } else { "query" },
                "required": p.in_path,
                "description": p.doc,
                "schema": param_schema(p.kind),
            })
        })
        .collect();
    if !params.is_empty() {
        op["parameters"] = json!(params);
    }
    let body = |schema: Value, required: bool| json!({ "required": required, "content": { "application/json": { "schema": schema } } });
    match s.body {
        Body::None => {}
        Body::Empty => {
            op["requestBody"] = body(
                json!({ "type": "object", "additionalProperties": false, "maxProperties": 0 }),
                false,
            )
        }
        Body::Json(n) => op["requestBody"] = body(schema_ref(n), true),
        Body::Optional(n) => op["requestBody"] = body(schema_ref(n), false),
    }
    let mut responses = Map::new();
    for (status, a) in s.answers {
        responses.insert(status.to_string(), success_response(*status, a));
    }
    let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    for (status, code) in s.problems.iter().flat_map(|g| g.iter()) {
        let codes = by_status.entry(*status).or_default();
        if !codes.contains(code) {
            codes.push(code);
        }
    }
    for (status, mut codes) in by_status {
        codes.sort_unstable();
        responses.insert(status.to_string(), problem_response(status, &codes));
    }
    op["responses"] = Value::Object(responses);
    op
}

/// Sets a numeric bound on a property of a component schema.
fn bound(doc: &mut Value, schema: &str, property: &str, key: &str, value: u64) {
    let p = &mut doc["components"]["schemas"][schema]["properties"][property];
    assert!(p.is_object(), "{schema}.{property} is in the document");
    p[key] = json!(value);
}

/// The document, with this host's limits as schema bounds.
pub fn document(cfg: &Config) -> Value {
    let mut doc = serde_json::to_value(Components::openapi()).expect("document serializes");
    doc["info"] = json!({
        "title": "vmwarden",
        "version": env!("CARGO_PKG_VERSION"),
        "description": DESCRIPTION,
    });
    doc["servers"] = json!([{
        "url": "http://localhost",
        "description": format!("Unix socket {}", cfg.daemon.socket.display())
    }]);
    let mut paths = Map::new();
    for s in SPECS {
        let item = paths.entry(s.path.to_owned()).or_insert_with(|| json!({}));
        item[s.method.to_lowercase()] = operation(s);
    }
    doc["paths"] = Value::Object(paths);
    let l = &cfg.limits;
    for schema in ["CreateVmRequest", "UpdateVmRequest"] {
        bound(&mut doc, schema, "vcpus", "maximum", u64::from(l.max_vcpus));
        bound(&mut doc, schema, "memory_mib", "maximum", l.max_memory_mib);
    }
    bound(
        &mut doc,
        "CreateDriveRequest",
        "size_mib",
        "maximum",
        l.max_drive_mib,
    );
    let after = &mut doc["components"]["schemas"]["IdleStatus"]["properties"]["after"];
    after["pattern"] = json!(API_DURATION_PATTERN);
    doc
}

#[cfg(test)]
mod tests;
