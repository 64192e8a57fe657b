//! Parsing, pure: a matched route, its path parameters, the query and the body become one
//! [`Op`], with every parameter typed and every body decoded (unknown fields refused). No
//! I/O happens here, so parsing is tested (and fuzzed) without a socket.

use super::error::ApiError;
use crate::model::{
    DriveName, HostName, IdlePolicy, ObjectRef, ProjectName, Role, SecretBytes, TeamName, UserName,
    VmName,
};
use crate::service::{AuditFilter, MemberExit, NewVm, VmPatch};
use hyper::Method;
use serde::Deserialize;
use zeroize::Zeroize;

/// Every route: (method, path pattern). The OpenAPI document is checked against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/me"),
    ("GET", "/v1/users"),
    ("PUT", "/v1/users/{name}"),
    ("DELETE", "/v1/users/{name}"),
    ("GET", "/v1/projects"),
    ("POST", "/v1/projects"),
    ("DELETE", "/v1/projects/{project}"),
    ("PUT", "/v1/projects/{project}/members/{user}"),
    ("DELETE", "/v1/projects/{project}/members/{user}"),
    ("POST", "/v1/projects/{project}/unlock"),
    ("POST", "/v1/projects/{project}/lock"),
    ("POST", "/v1/projects/{project}/resplit"),
    ("GET", "/v1/drives"),
    ("POST", "/v1/drives"),
    ("GET", "/v1/drives/{id}"),
    ("DELETE", "/v1/drives/{id}"),
    ("GET", "/v1/vms"),
    ("POST", "/v1/vms"),
    ("GET", "/v1/vms/{id}"),
    ("PATCH", "/v1/vms/{id}"),
    ("DELETE", "/v1/vms/{id}"),
    ("GET", "/v1/vms/{id}/members"),
    ("PUT", "/v1/vms/{id}/members/{user}"),
    ("DELETE", "/v1/vms/{id}/members/{user}"),
    ("POST", "/v1/vms/{id}/start"),
    ("POST", "/v1/vms/{id}/stop"),
    ("POST", "/v1/vms/{id}/keepalive"),
    ("GET", "/v1/vms/{id}/log"),
    ("PUT", "/v1/vms/{id}/drives/{drive}"),
    ("DELETE", "/v1/vms/{id}/drives/{drive}"),
    ("GET", "/v1/host/vms"),
    ("GET", "/v1/fleet/hosts"),
    ("GET", "/v1/fleet/vms"),
    ("POST", "/v1/fleet/hosts/{host}/enroll"),
    ("DELETE", "/v1/fleet/hosts/{host}/enroll"),
    ("POST", "/v1/fleet/hosts/{host}/fence"),
    ("POST", "/v1/host/vms/{id}/stop"),
    ("GET", "/v1/events"),
    ("GET", "/v1/audit"),
    ("GET", "/metrics"),
];

/// Finds the route pattern for a path, and the path parameters.
pub fn match_route(method: &Method, path: &str) -> Result<(&'static str, Vec<String>), ApiError> {
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let mut allow: Vec<&str> = vec![];
    for (m, pat) in ROUTES {
        let psegs: Vec<&str> = pat.split('/').skip(1).collect();
        if psegs.len() != segs.len() {
            continue;
        }
        let mut params = vec![];
        let ok = psegs.iter().zip(&segs).all(|(p, s)| {
            if p.starts_with('{') {
                params.push((*s).to_owned());
                !s.is_empty()
            } else {
                p == s
            }
        });
        if ok {
            if *m == method.as_str() {
                return Ok((pat, params));
            }
            allow.push(m);
        }
    }
    if !allow.is_empty() {
        Err(ApiError::Method {
            method: method.as_str().chars().take(20).collect(),
            allow: allow.join(", "),
        })
    } else {
        Err(ApiError::NoRoute(path.chars().take(200).collect()))
    }
}

/// Every operation the API offers, with its inputs typed. `GET /v1/health` and
/// `GET /v1/openapi.json` are answered before a principal exists and are not here.
#[derive(Debug)]
pub enum Op {
    /// `GET /v1/me`.
    Me,
    /// `GET /v1/users`.
    Users,
    /// `PUT /v1/users/{name}`.
    PutUser {
        /// The user.
        name: UserName,
        /// Their team.
        team: TeamName,
        /// Registry admin flag.
        admin: bool,
    },
    /// `DELETE /v1/users/{name}`.
    DeleteUser(UserName),
    /// `GET /v1/projects`.
    Projects,
    /// `POST /v1/projects`.
    CreateProject {
        /// Name.
        name: ProjectName,
        /// First members.
        members: Vec<UserName>,
    },
    /// `DELETE /v1/projects/{project}`.
    DeleteProject(ProjectName),
    /// `PUT /v1/projects/{project}/members/{user}`.
    AddMember(ProjectName, UserName),
    /// `DELETE /v1/projects/{project}/members/{user}`.
    RemoveMember(ProjectName, UserName, MemberExit),
    /// `POST /v1/projects/{project}/unlock`.
    Unlock(ProjectName, SecretBytes),
    /// `POST /v1/projects/{project}/lock`.
    Lock(ProjectName),
    /// `POST /v1/projects/{project}/resplit`.
    Resplit(ProjectName),
    /// `GET /v1/drives`.
    Drives,
    /// `POST /v1/drives`.
    CreateDrive {
        /// Project.
        project: ProjectName,
        /// Name.
        name: DriveName,
        /// Size.
        size_mib: u64,
    },
    /// `GET /v1/drives/{id}`.
    Drive(ObjectRef),
    /// `DELETE /v1/drives/{id}`.
    DeleteDrive(ObjectRef),
    /// `GET /v1/vms`.
    Vms,
    /// `POST /v1/vms`: the VM, and its drives as named (resolved by the service).
    CreateVm(NewVm, Vec<ObjectRef>),
    /// `GET /v1/vms/{id}`.
    Vm(ObjectRef),
    /// `PATCH /v1/vms/{id}`.
    UpdateVm(ObjectRef, VmPatch),
    /// `DELETE /v1/vms/{id}`.
    DeleteVm(ObjectRef),
    /// `GET /v1/vms/{id}/members`.
    Members(ObjectRef),
    /// `PUT /v1/vms/{id}/members/{user}`.
    Share {
        /// The VM.
        vm: ObjectRef,
        /// The target.
        user: UserName,
        /// The role.
        role: Role,
        /// `confirm_drive_access`.
        confirm: bool,
    },
    /// `DELETE /v1/vms/{id}/members/{user}`.
    Unshare(ObjectRef, UserName),
    /// `POST /v1/vms/{id}/start`.
    Start(ObjectRef),
    /// `POST /v1/vms/{id}/stop`.
    Stop {
        /// The VM.
        vm: ObjectRef,
        /// Destroy at once.
        force: bool,
        /// Answer once stopped (otherwise 202 once stopping).
        wait: bool,
    },
    /// `POST /v1/vms/{id}/keepalive`.
    Keepalive(ObjectRef),
    /// `GET /v1/vms/{id}/log?offset=N`.
    ConsoleLog(ObjectRef, u64),
    /// `PUT /v1/vms/{id}/drives/{drive}`.
    Attach(ObjectRef, ObjectRef),
    /// `DELETE /v1/vms/{id}/drives/{drive}`.
    Detach(ObjectRef, ObjectRef),
    /// `GET /v1/host/vms`.
    HostVms,
    /// `GET /v1/fleet/hosts`.
    FleetHosts,
    /// `GET /v1/fleet/vms`.
    FleetVms,
    /// `POST /v1/fleet/hosts/{host}/enroll`.
    Enroll(HostName, String),
    /// `DELETE /v1/fleet/hosts/{host}/enroll`.
    Unenroll(HostName),
    /// `POST /v1/fleet/hosts/{host}/fence`.
    Fence(HostName),
    /// `POST /v1/host/vms/{id}/stop`.
    HostStop {
        /// The VM.
        vm: ObjectRef,
        /// Destroy at once.
        force: bool,
        /// Answer once stopped.
        wait: bool,
    },
    /// `GET /v1/events`.
    Events,
    /// `GET /v1/audit`, with the VM named by the `vm` filter.
    Audit(AuditFilter, Option<ObjectRef>),
    /// `GET /metrics`.
    Metrics,
}

impl Op {
    /// Whether the operation has side effects: such operations run to their end in a task
    /// of their own, whoever still waits for the answer.
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            Op::Me
                | Op::Users
                | Op::Projects
                | Op::Drives
                | Op::Drive(_)
                | Op::Vms
                | Op::Vm(_)
                | Op::Members(_)
                | Op::ConsoleLog(..)
                | Op::HostVms
                | Op::FleetHosts
                | Op::FleetVms
                | Op::Events
                | Op::Audit(..)
                | Op::Metrics
        )
    }
}

/// JSON Schema counts `2.0` as an integer and generators send it; serde's integer types
/// refuse it. The fields the document calls integers take both spellings (and nothing with
/// a fraction).
mod whole {
    use serde::{de::Error, Deserialize, Deserializer};

    fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        if let Some(v) = n.as_u64() {
            return Ok(v);
        }
        match n.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => Ok(f as u64),
            _ => Err(D::Error::custom(format!(
                "expected a whole number, got {n}"
            ))),
        }
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let n = number(d)?;
        u32::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large")))
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        number(d)
    }

    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(deserialize_with = "u32")] u32);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(deserialize_with = "u64")] u64);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// An idle policy, or null. serde reads a struct from an array as well (`[true, "1h"]`); the
/// document says object, so only an object is read.
fn idle_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IdlePolicy>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)? {
        None => Ok(None),
        Some(m) => serde_json::from_value(serde_json::Value::Object(m))
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// `PUT /v1/users/{name}`: registers a user or changes their team or admin flag.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutUserRequest {
    /// The user's team; a user who holds VM roles or drives cannot change team.
    team: TeamName,
    /// Whether the user administers the registry.
    #[serde(default)]
    admin: bool,
}

/// `POST /v1/projects`: a new project and its first members.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    /// The project's name.
    name: ProjectName,
    /// Registered users who become members.
    #[serde(default)]
    members: Vec<UserName>,
}

/// `POST /v1/fleet/hosts/{host}/enroll`: the fingerprint of the host key, as read on the
/// host itself (its agent logs it at start; `vmwarden fleet hosts` shows the published one).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// `SHA256:` and 43 base64 characters.
    #[schema(pattern = "^SHA256:[A-Za-z0-9+/]{43}$")]
    pub fingerprint: String,
}

/// `POST /v1/projects/{project}/unlock`: one half of the project key. The share goes
/// straight into zeroizing memory.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    /// A share token as handed out at creation or re-key.
    #[schema(value_type = String, pattern = "^vmw-(admin|member)-[A-Za-z0-9_-]{43}$")]
    share: ShareField,
}

/// Debug shows `SecretBytes`' redaction.
#[derive(Debug)]
struct ShareField(SecretBytes);

impl<'de> Deserialize<'de> for ShareField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ShareField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a share token string")
            }
            fn visit_str<E>(self, v: &str) -> Result<ShareField, E> {
                Ok(ShareField(SecretBytes::new(v.as_bytes().to_vec())))
            }
            fn visit_string<E>(self, mut v: String) -> Result<ShareField, E> {
                let s = ShareField(SecretBytes::new(v.as_bytes().to_vec()));
                v.zeroize();
                Ok(s)
            }
        }
        d.deserialize_str(V)
    }
}

/// `POST /v1/drives`: a new encrypted drive, owned by its creator.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDriveRequest {
    /// The project it belongs to (the caller must be a member, its key unlocked).
    project: ProjectName,
    /// The drive's name, unique among the creator's drives in the project.
    name: DriveName,
    /// Size in MiB, at most the host's `limits.max_drive_mib`.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole::u64")]
    size_mib: u64,
}

/// `POST /v1/vms`: a new VM configuration, owned by its creator.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// The VM's name, unique among the creator's VMs in the project.
    name: VmName,
    /// The project it belongs to.
    project: ProjectName,
    /// vCPUs, at most the host's `limits.max_vcpus`.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole::u32")]
    vcpus: u32,
    /// Memory in MiB, at most the host's `limits.max_memory_mib`.
    #[schema(minimum = 16)]
    #[serde(deserialize_with = "whole::u64")]
    memory_mib: u64,
    /// Drives the caller owns in the project, by id, id prefix or name.
    #[serde(default)]
    drives: Vec<ObjectRef>,
    /// Idle overrides; absent fields take the host's defaults.
    #[serde(default, deserialize_with = "idle_object")]
    idle: Option<IdlePolicy>,
}

/// `PATCH /v1/vms/{id}`: new sizes (applied at the next start) or idle overrides.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVmRequest {
    /// New vCPUs.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "whole::opt_u32")]
    vcpus: Option<u32>,
    /// New memory in MiB.
    #[schema(minimum = 16)]
    #[serde(default, deserialize_with = "whole::opt_u64")]
    memory_mib: Option<u64>,
    /// New idle overrides (replace the old ones).
    #[serde(default, deserialize_with = "idle_object")]
    idle: Option<IdlePolicy>,
}

/// `PUT /v1/vms/{id}/members/{user}`: grants a role on a VM.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// The role to grant.
    role: Role,
    /// Must be true to grant `owner`: co-owners get the VM's drives.
    #[serde(default)]
    confirm_drive_access: bool,
}

/// `POST /v1/vms/{id}/stop` and `POST /v1/host/vms/{id}/stop`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Destroy at once instead of an ACPI shutdown.
    #[serde(default)]
    force: bool,
    /// Answer once stopped (200); false answers 202 once the stop has begun.
    #[serde(default = "yes")]
    #[schema(default = true)]
    wait: bool,
}

fn yes() -> bool {
    true
}

/// An empty JSON object: endpoints without a body still refuse unknown fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        &b"{}"[..]
    } else {
        body
    };
    // Every body is an object; serde would also read a struct from an array.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadJson("expected a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}

fn param<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| ApiError::BadParam(format!("Invalid {what} in path: {e}")))
}

/// The query's pairs, refusing any key not in `known`.
fn query_pairs<'a>(query: &'a str, known: &[&str]) -> Result<Vec<(&'a str, &'a str)>, ApiError> {
    let mut out = vec![];
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&k) {
            return Err(ApiError::BadParam(format!(
                "Unknown query parameter {:?}",
                k.chars().take(40).collect::<String>()
            )));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// A boolean query parameter, spelled as the document says: `true` or `false`.
fn flag(v: &str, what: &str) -> Result<bool, ApiError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::BadParam(format!(
            "Query parameter {what} must be true or false"
        ))),
    }
}

/// The most audit rows one request returns.
pub const AUDIT_LIMIT_MAX: usize = 10_000;

/// An integer query parameter within the bounds the document gives it.
fn bounded(v: &str, what: &str, min: i64, max: i64) -> Result<i64, ApiError> {
    // `2.0` is a whole number too (see `whole`).
    let n: i64 = match v.parse::<i64>() {
        Ok(n) => n,
        Err(_) => match v.parse::<f64>() {
            Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9e15 => f as i64,
            _ => param(v, what)?,
        },
    };
    if !(min..=max).contains(&n) {
        return Err(ApiError::BadParam(format!(
            "Query parameter {what} must be between {min} and {max}"
        )));
    }
    Ok(n)
}

/// The `GET /v1/audit` filter, and the VM its `vm` names.
pub fn audit_filter(query: &str) -> Result<(AuditFilter, Option<ObjectRef>), ApiError> {
    let mut f = AuditFilter {
        limit: 1000,
        ..Default::default()
    };
    let mut vm = None;
    for (k, v) in query_pairs(query, &["vm", "user", "since", "until", "limit"])? {
        match k {
            "vm" => vm = Some(param(v, "vm")?),
            "user" => f.actor = Some(param::<UserName>(v, "user")?.to_string()),
            "since" => f.since_ms = Some(bounded(v, "since (ms since epoch)", 0, i64::MAX)?),
            "until" => f.until_ms = Some(bounded(v, "until (ms since epoch)", 0, i64::MAX)?),
            _ => f.limit = bounded(v, "limit", 1, AUDIT_LIMIT_MAX as i64)? as usize,
        }
    }
    Ok((f, vm))
}

/// Parses one request into its operation. `body` is the whole body (already bounded by
/// `limits.max_body_bytes`); a body that carries a share is zeroized here.
pub fn parse(
    route: &'static str,
    method: &Method,
    params: &[String],
    query: &str,
    mut body: Vec<u8>,
) -> Result<Op, ApiError> {
    let p = |i: usize| params[i].as_str();
    let no_query = |q: &str| query_pairs(q, &[]).map(|_| ());
    if !matches!(
        route,
        "/v1/audit" | "/v1/projects/{project}/members/{user}" | "/v1/vms/{id}/log"
    ) {
        no_query(query)?;
    }
    let op = match (method.as_str(), route) {
        ("GET", "/v1/me") => Op::Me,
        ("GET", "/v1/users") => Op::Users,
        ("PUT", "/v1/users/{name}") => {
            let name = param(p(0), "user name")?;
            let b: PutUserRequest = json(&body)?;
            Op::PutUser {
                name,
                team: b.team,
                admin: b.admin,
            }
        }
        ("DELETE", "/v1/users/{name}") => Op::DeleteUser(param(p(0), "user name")?),
        ("GET", "/v1/projects") => Op::Projects,
        ("POST", "/v1/projects") => {
            let b: CreateProjectRequest = json(&body)?;
            Op::CreateProject {
                name: b.name,
                members: b.members,
            }
        }
        ("DELETE", "/v1/projects/{project}") => Op::DeleteProject(param(p(0), "project name")?),
        ("PUT", "/v1/projects/{project}/members/{user}") => {
            no_query(query)?;
            let _: Empty = json(&body)?;
            Op::AddMember(param(p(0), "project name")?, param(p(1), "user name")?)
        }
        ("DELETE", "/v1/projects/{project}/members/{user}") => {
            let mut exit = MemberExit::default();
            for (k, v) in query_pairs(query, &["force", "transfer_to"])? {
                match k {
                    "force" => exit.force = flag(v, "force")?,
                    _ => exit.transfer_to = Some(param(v, "transfer_to user")?),
                }
            }
            Op::RemoveMember(
                param(p(0), "project name")?,
                param(p(1), "user name")?,
                exit,
            )
        }
        ("POST", "/v1/projects/{project}/unlock") => {
            let project = param(p(0), "project name")?;
            let parsed = json::<UnlockRequest>(&body);
            body.zeroize();
            let b = parsed.map_err(|_| {
                // serde's message could quote the body; say only what is wrong.
                ApiError::BadJson("expected {\"share\": \"vmw-...\"} and nothing else".into())
            })?;
            Op::Unlock(project, b.share.0)
        }
        ("POST", "/v1/projects/{project}/lock") => {
            let _: Empty = json(&body)?;
            Op::Lock(param(p(0), "project name")?)
        }
        ("POST", "/v1/projects/{project}/resplit") => {
            let _: Empty = json(&body)?;
            Op::Resplit(param(p(0), "project name")?)
        }
        ("GET", "/v1/drives") => Op::Drives,
        ("POST", "/v1/drives") => {
            let b: CreateDriveRequest = json(&body)?;
            Op::CreateDrive {
                project: b.project,
                name: b.name,
                size_mib: b.size_mib,
            }
        }
        ("GET", "/v1/drives/{id}") => Op::Drive(param(p(0), "drive")?),
        ("DELETE", "/v1/drives/{id}") => Op::DeleteDrive(param(p(0), "drive")?),
        ("GET", "/v1/vms") => Op::Vms,
        ("POST", "/v1/vms") => {
            let b: CreateVmRequest = json(&body)?;
            Op::CreateVm(
                NewVm {
                    name: b.name,
                    project: b.project,
                    vcpus: b.vcpus,
                    memory_mib: b.memory_mib,
                    drives: vec![],
                    idle: b.idle,
                },
                b.drives,
            )
        }
        ("GET", "/v1/vms/{id}") => Op::Vm(param(p(0), "VM")?),
        ("PATCH", "/v1/vms/{id}") => {
            let id = param(p(0), "VM")?;
            let b: UpdateVmRequest = json(&body)?;
            Op::UpdateVm(
                id,
                VmPatch {
                    vcpus: b.vcpus,
                    memory_mib: b.memory_mib,
                    idle: b.idle,
                },
            )
        }
        ("DELETE", "/v1/vms/{id}") => Op::DeleteVm(param(p(0), "VM")?),
        ("GET", "/v1/vms/{id}/members") => Op::Members(param(p(0), "VM")?),
        ("PUT", "/v1/vms/{id}/members/{user}") => {
            let vm = param(p(0), "VM")?;
            let user = param(p(1), "user name")?;
            let b: ShareRequest = json(&body)?;
            Op::Share {
                vm,
                user,
                role: b.role,
                confirm: b.confirm_drive_access,
            }
        }
        ("DELETE", "/v1/vms/{id}/members/{user}") => {
            Op::Unshare(param(p(0), "VM")?, param(p(1), "user name")?)
        }
        ("POST", "/v1/vms/{id}/start") => {
            let vm = param(p(0), "VM")?;
            let _: Empty = json(&body)?;
            Op::Start(vm)
        }
        ("POST", "/v1/vms/{id}/stop") => {
            let vm = param(p(0), "VM")?;
            let b: StopRequest = json(&body)?;
            Op::Stop {
                vm,
                force: b.force,
                wait: b.wait,
            }
        }
        ("POST", "/v1/vms/{id}/keepalive") => {
            let vm = param(p(0), "VM")?;
            let _: Empty = json(&body)?;
            Op::Keepalive(vm)
        }
        ("PUT", "/v1/vms/{id}/drives/{drive}") => {
            let (vm, drive) = (param(p(0), "VM")?, param(p(1), "drive")?);
            let _: Empty = json(&body)?;
            Op::Attach(vm, drive)
        }
        ("DELETE", "/v1/vms/{id}/drives/{drive}") => {
            Op::Detach(param(p(0), "VM")?, param(p(1), "drive")?)
        }
        ("GET", "/v1/vms/{id}/log") => {
            let vm = param(p(0), "VM")?;
            let mut offset = 0;
            for (_, v) in query_pairs(query, &["offset"])? {
                offset = bounded(v, "offset", 0, i64::MAX)? as u64;
            }
            Op::ConsoleLog(vm, offset)
        }
        ("GET", "/v1/host/vms") => Op::HostVms,
        ("GET", "/v1/fleet/hosts") => Op::FleetHosts,
        ("GET", "/v1/fleet/vms") => Op::FleetVms,
        ("POST", "/v1/fleet/hosts/{host}/enroll") => {
            let host = param(p(0), "host name")?;
            let b: EnrollRequest = json(&body)?;
            Op::Enroll(host, b.fingerprint)
        }
        ("DELETE", "/v1/fleet/hosts/{host}/enroll") => Op::Unenroll(param(p(0), "host name")?),
        ("POST", "/v1/fleet/hosts/{host}/fence") => {
            let host = param(p(0), "host name")?;
            let _: Empty = json(&body)?;
            Op::Fence(host)
        }
        ("POST", "/v1/host/vms/{id}/stop") => {
            let vm = param(p(0), "VM")?;
            let b: StopRequest = json(&body)?;
            Op::HostStop {
                vm,
                force: b.force,
                wait: b.wait,
            }
        }
        ("GET", "/v1/events") => Op::Events,
        ("GET", "/v1/audit") => {
            let (f, vm) = audit_filter(query)?;
            Op::Audit(f, vm)
        }
        ("GET", "/metrics") => Op::Metrics,
        _ => return Err(ApiError::NoRoute(route.into())),
    };
    Ok(op)
}

#[cfg(test)]
mod tests;
