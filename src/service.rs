//! One function per API operation; the only place that combines policy, store, keys and the
//! hypervisor.
//!
//! Each operation: resolve the snapshot it needs from the store, ask `policy::decide`, then
//! act. Operations on one VM run under that VM's lock, so a start, a stop and a detach of the
//! same VM never interleave. Blocking work (SQLite, libvirt, qemu-img) runs on the blocking
//! pool. Mutations write their audit row in the same transaction as the change.

use crate::config::Config;
use crate::hypervisor::{image, DiskSpec, DomainSpec, Hypervisor, LifecycleEvent};
use crate::idle;
use crate::keys::{self, Keyring, Submitter, UnlockOutcome};
use crate::model::{
    Drive, DriveId, DriveName, IdlePolicy, ProjectName, Role, SecretBytes, TeamName, User,
    UserName, Vm, VmId, VmName, VmState,
};
use crate::policy::{
    self, Action, AdminAction, Decision, DriveFacts, ShareHalf, TargetFacts, VmAction, VmFacts,
};
use crate::store::{AuditCtx, Store};

// What the API needs from the layers below, re-exported so that `api` depends on `service`
// alone: the error types its one status mapping looks into, and the principal and filters.
pub use crate::hypervisor::HypervisorError;
pub use crate::keys::{KeyError, LockStatus};
pub use crate::policy::{Denial, Hidden, Principal};
pub use crate::store::{AuditEntry, AuditFilter, Change, StoreError};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Errors of the service layer; the API maps each to one status in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Refused by policy.
    #[error("{0}")]
    Denied(DenialMsg),
    /// Bad input that parsing could not catch (ranges, references).
    #[error("{0}")]
    Invalid(String),
    /// The object does not exist (or is hidden).
    #[error("{0}")]
    NotFound(String),
    /// A rule or state conflict with a stable code.
    #[error("{message}")]
    Conflict {
        /// Stable code (`vm_running`, `no_drive`, ...).
        code: &'static str,
        /// What happened.
        message: String,
    },
    /// The project key is not unlocked.
    #[error("{0}")]
    Locked(String),
    /// A share was refused.
    #[error("{0}")]
    Share(KeyError),
    /// A wrapped passphrase failed authentication.
    #[error("{0}")]
    SecretCorrupt(String),
    /// libvirt or the image tool failed.
    #[error("{0}")]
    Hypervisor(#[from] HypervisorError),
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A blocking task panicked or was cancelled.
    #[error("Internal task failed")]
    Task,
}

/// A policy denial with the message shown to the caller.
#[derive(Debug)]
pub struct DenialMsg {
    /// The reason.
    pub denial: Denial,
    /// Caller-facing text.
    pub message: String,
}

impl std::fmt::Display for DenialMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

fn deny(d: Denial, what: &str) -> ServiceError {
    use policy::Hidden;
    let message = match d {
        Denial::Unregistered => "You are not a registered vmwarden user".into(),
        Denial::Hidden(Hidden::Vm) => format!("VM {what} not found"),
        Denial::Hidden(Hidden::Drive) => format!("Drive {what} not found"),
        Denial::Hidden(Hidden::Project) => format!("Project {what} not found"),
        Denial::Hidden(Hidden::User) => format!("User {what} not found"),
        Denial::AdminRequired => "Only admins may do this".into(),
        Denial::OwnerRequired => format!("Only owners of VM {what} may do this"),
        Denial::RoleRequired => format!("You hold no role on VM {what}"),
        Denial::NotProjectMemberCaller => format!("You are not a member of project {what}"),
        Denial::MemberRequired => {
            format!("The member share must come from a member of project {what}")
        }
        Denial::TeamMismatch => "Sharer and target must both be in the VM's team".into(),
        Denial::ConfirmationRequired => {
            "Co-ownership hands over the VM's drives: set confirm_drive_access to true".into()
        }
        Denial::MaxOwnersReached => format!("VM {what} already has the most owners allowed"),
        Denial::NotProjectMember => {
            format!("The target is not a member of the VM's project {what}")
        }
        Denial::LastOwner => format!("VM {what} must keep at least one owner"),
    };
    ServiceError::Denied(DenialMsg { denial: d, message })
}

/// A state-changing event for `GET /v1/events` subscribers (filtered per caller by the API).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `vm.state`, `vm.shared`, `drive.attached`, ...
    pub kind: &'static str,
    /// The VM concerned, for visibility filtering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmId>,
    /// The project concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectName>,
    /// Drive concerned; only shown to its owners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drive: Option<DriveId>,
    /// Event data without drive details.
    pub data: serde_json::Value,
    /// Who may receive it when its object can no longer be checked (a deleted VM's members).
    #[serde(skip)]
    pub audience: Option<Vec<UserName>>,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// libvirt's version text, or `unavailable`.
    pub hypervisor: String,
    /// vmwarden's version.
    pub version: &'static str,
}

/// `GET /v1/me`.
#[derive(Debug, Serialize)]
pub struct Me {
    /// Principal name.
    pub name: UserName,
    /// Team, if registered.
    pub team: Option<TeamName>,
    /// Admin flag.
    pub admin: bool,
    /// Member projects.
    pub projects: Vec<ProjectName>,
}

/// A project as listed.
#[derive(Debug, Serialize)]
pub struct ProjectView {
    /// Name.
    pub name: ProjectName,
    /// Members.
    pub members: Vec<UserName>,
    /// Lock status and pending halves.
    #[serde(flatten)]
    pub lock: LockStatus,
}

/// Response of project creation: the only time the shares leave the daemon.
#[derive(Debug)]
pub struct CreatedProject {
    /// The project.
    pub project: ProjectView,
    /// Token for the creating admin.
    pub admin_share: SecretBytes,
    /// Token for the members.
    pub member_share: SecretBytes,
}

/// A drive as its owners see it.
#[derive(Debug, Clone, Serialize)]
pub struct DriveView {
    /// Id.
    pub id: DriveId,
    /// Name.
    pub name: DriveName,
    /// Project.
    pub project: ProjectName,
    /// Size.
    pub size_mib: u64,
    /// Owners.
    pub owners: Vec<UserName>,
    /// VM it is attached to.
    pub attached_to: Option<VmId>,
}

impl From<Drive> for DriveView {
    fn from(d: Drive) -> Self {
        Self {
            id: d.id,
            name: d.name,
            project: d.project,
            size_mib: d.size_mib,
            owners: d.owners,
            attached_to: d.attached_to,
        }
    }
}

/// A VM as a role holder sees it; `drives` only for owners.
#[derive(Debug, Clone, Serialize)]
pub struct VmView {
    /// Id.
    pub id: VmId,
    /// Name.
    pub name: VmName,
    /// Project.
    pub project: ProjectName,
    /// Team.
    pub team: TeamName,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory.
    pub memory_mib: u64,
    /// State.
    pub state: VmState,
    /// Why it is in that state.
    pub state_reason: String,
    /// The caller's role.
    pub role: Role,
    /// Idle policy overrides.
    pub idle: IdlePolicy,
    /// Attached drives, owners only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drives: Option<Vec<DriveView>>,
    /// Idle clock of a running VM (single-VM view only; lists stay cacheable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_status: Option<IdleStatus>,
}

impl VmView {
    /// The caller's view of `vm`: `drives` only for owners, `idle_status` only in the
    /// single-VM view.
    fn of(
        vm: Vm,
        role: Role,
        drives: Option<Vec<DriveView>>,
        idle_status: Option<IdleStatus>,
    ) -> Self {
        Self {
            id: vm.id,
            name: vm.name,
            project: vm.project,
            team: vm.team,
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            state: vm.state,
            state_reason: vm.state_reason,
            role,
            idle: vm.idle,
            drives,
            idle_status,
        }
    }
}

/// Where a running VM's idle clock stands.
#[derive(Debug, Clone, Serialize)]
pub struct IdleStatus {
    /// Whether idle shutdown applies to this VM.
    pub enabled: bool,
    /// The idle period in force.
    #[serde(with = "crate::config::duration")]
    pub after: Duration,
    /// Idle since (ms since the epoch), if idle.
    pub idle_since_ms: Option<i64>,
    /// Planned shutdown (ms since the epoch), if idle.
    pub shutdown_at_ms: Option<i64>,
}

/// `GET /v1/host/vms` row: no drive details.
#[derive(Debug, Serialize)]
pub struct HostVm {
    /// Id.
    pub id: VmId,
    /// Name.
    pub name: VmName,
    /// Project.
    pub project: ProjectName,
    /// State.
    pub state: VmState,
    /// Reason.
    pub state_reason: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory.
    pub memory_mib: u64,
    /// Whether idle shutdown applies.
    pub idle_enabled: bool,
}

/// `GET /v1/vms/{id}/members`.
#[derive(Debug, Serialize)]
pub struct Members {
    /// Owners ("Managers").
    pub owners: Vec<UserName>,
    /// Users.
    pub users: Vec<UserName>,
}

/// Answer of a mutation that may have been a no-op.
#[derive(Debug, Serialize)]
pub struct Changed<T: Serialize> {
    /// What the call did.
    pub change: Change,
    /// The resulting object.
    #[serde(flatten)]
    pub object: T,
}

/// `POST /v1/vms` input (validated by the API's DTO).
#[derive(Debug, Clone)]
pub struct NewVm {
    /// Name.
    pub name: VmName,
    /// Project.
    pub project: ProjectName,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory.
    pub memory_mib: u64,
    /// Drives to attach.
    pub drives: Vec<DriveId>,
    /// Idle overrides.
    pub idle: Option<IdlePolicy>,
}

/// `PATCH /v1/vms/{id}` input.
#[derive(Debug, Clone, Default)]
pub struct VmPatch {
    /// New vCPUs.
    pub vcpus: Option<u32>,
    /// New memory.
    pub memory_mib: Option<u64>,
    /// New idle overrides (replaces the old ones).
    pub idle: Option<IdlePolicy>,
}

/// Bounds the API accepts for VM sizes; wider values are refused before libvirt sees them.
pub const MAX_VCPUS: u32 = 64;
/// Upper bound on memory per VM.
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
/// Upper bound on drive size (16 TiB).
pub const MAX_DRIVE_MIB: u64 = 16 * 1024 * 1024;

/// The users registry by name, shared between requests.
type UserMap = Arc<HashMap<UserName, User>>;

/// The service: shared state of the daemon.
pub struct Service {
    cfg: Arc<Config>,
    store: Arc<Store>,
    keys: Arc<Keyring>,
    hv: Arc<dyn Hypervisor>,
    vm_locks: Mutex<HashMap<VmId, Arc<tokio::sync::Mutex<()>>>>,
    events: broadcast::Sender<Event>,
    /// The users registry as of a store generation: every request resolves its principal, so
    /// this keeps a SQLite query off the hot path while a registration still applies at once.
    users_cache: Mutex<Option<(u64, UserMap)>>,
    /// Foreign domains already reported, so the periodic reconcile warns once per domain.
    reported: Mutex<std::collections::HashSet<String>>,
    /// Per-project key use: launches, attaches and drive creation read K (shared); a re-key
    /// replaces it and every wrapped passphrase (exclusive), so none of them sees a half-done
    /// re-key.
    project_locks: Mutex<HashMap<ProjectName, Arc<tokio::sync::RwLock<()>>>>,
    /// Idle clocks of running VMs, fed by `idle_sweep`.
    idle: Mutex<idle::Tracker>,
    /// Idle shutdowns since start, for /metrics.
    idle_shutdowns: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Service")
    }
}

/// Creates `dir` if needed and gives it exactly `mode`.
fn ensure_dir(dir: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ServiceError::Task)
}

impl Service {
    /// Builds the service over an open store and a hypervisor.
    pub fn new(cfg: Arc<Config>, store: Arc<Store>, hv: Arc<dyn Hypervisor>) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            cfg,
            store,
            keys: Arc::new(Keyring::new()),
            hv,
            vm_locks: Mutex::new(HashMap::new()),
            events,
            users_cache: Mutex::new(None),
            reported: Mutex::new(std::collections::HashSet::new()),
            idle: Mutex::new(idle::Tracker::new()),
            project_locks: Mutex::new(HashMap::new()),
            idle_shutdowns: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The keyring (the daemon sweeps it; tests inspect it).
    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    /// The store generation: anything derived from the store at this value is current.
    pub fn generation(&self) -> u64 {
        self.store.generation()
    }

    async fn user_snapshot(&self) -> Result<Arc<HashMap<UserName, User>>> {
        // Read the generation before loading, so a change committed meanwhile leaves the
        // cache tagged stale rather than fresh.
        let g = self.store.generation();
        if let Some((cg, m)) = &*self.users_cache.lock().unwrap() {
            if *cg == g {
                return Ok(m.clone());
            }
        }
        let users = self.db(|s| s.users()).await?;
        let m: Arc<HashMap<UserName, User>> =
            Arc::new(users.into_iter().map(|u| (u.name.clone(), u)).collect());
        *self.users_cache.lock().unwrap() = Some((g, m.clone()));
        Ok(m)
    }

    /// Subscribes to events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, kind: &'static str, vm: Option<&Vm>, data: serde_json::Value) {
        self.emit_drive(kind, vm, None, data);
    }

    fn emit_project(&self, kind: &'static str, project: ProjectName, data: serde_json::Value) {
        let _ = self.events.send(Event {
            kind,
            vm: None,
            project: Some(project),
            drive: None,
            audience: None,
            data,
            at_ms: crate::store::now_ms(),
        });
    }

    /// An event that names a drive; the API strips the drive for subscribers who do not own it.
    fn emit_drive(
        &self,
        kind: &'static str,
        vm: Option<&Vm>,
        drive: Option<DriveId>,
        data: serde_json::Value,
    ) {
        let _ = self.events.send(Event {
            kind,
            vm: vm.map(|v| v.id),
            project: vm.map(|v| v.project.clone()),
            drive,
            audience: None,
            data,
            at_ms: crate::store::now_ms(),
        });
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        Ok(blocking(move || f(&store)).await??)
    }

    async fn hv<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HypervisorError> + Send + 'static,
    ) -> Result<T> {
        let hv = self.hv.clone();
        Ok(blocking(move || f(&*hv)).await??)
    }

    fn project_lock(&self, p: &ProjectName) -> Arc<tokio::sync::RwLock<()>> {
        self.project_locks
            .lock()
            .unwrap()
            .entry(p.clone())
            .or_default()
            .clone()
    }

    fn vm_lock(&self, id: VmId) -> Arc<tokio::sync::Mutex<()>> {
        self.vm_locks.lock().unwrap().entry(id).or_default().clone()
    }

    // ----- principals -----

    /// Resolves the principal of a request: the peer, or for an orchestrator the user it acts
    /// for. Reads the registry on every request, so a share or a registration takes effect in
    /// the very next request.
    pub async fn principal(
        &self,
        peer: UserName,
        acting_for: Option<UserName>,
    ) -> Result<Principal> {
        let name = match acting_for {
            Some(u) if u != peer => {
                if !self
                    .cfg
                    .access
                    .orchestrators
                    .iter()
                    .any(|o| o == peer.as_str())
                {
                    return Err(ServiceError::Denied(DenialMsg {
                        denial: Denial::AdminRequired,
                        message: format!(
                            "{peer} is not an orchestrator and may not act for another user"
                        ),
                    }));
                }
                u
            }
            _ => peer.clone(),
        };
        let user = self.user_snapshot().await?.get(&name).cloned();
        let acting = name != peer;
        if acting && user.is_none() {
            // Orchestrators act for registered users only; a config admin name does not
            // make an unregistered principal an admin through the header.
            return Err(ServiceError::Denied(DenialMsg {
                denial: Denial::Unregistered,
                message: format!("{name} is not a registered vmwarden user"),
            }));
        }
        let cfg_admin = !acting && self.cfg.access.admins.iter().any(|a| a == name.as_str());
        Ok(Principal {
            admin: cfg_admin || user.as_ref().is_some_and(|u| u.admin),
            team: user.map(|u| u.team),
            name,
        })
    }

    fn check(&self, p: &Principal, a: &Action, what: &str) -> Result<()> {
        match policy::decide(p, a) {
            Decision::Allow => Ok(()),
            Decision::Deny(d) => Err(deny(d, what)),
        }
    }

    fn audit<'a>(
        p: &'a Principal,
        action: &'a str,
        target: String,
        vm: Option<VmId>,
    ) -> AuditCtx<'a> {
        AuditCtx {
            actor: p.name.as_str(),
            action,
            target,
            vm,
            detail: String::new(),
        }
    }

    async fn is_member(&self, project: &ProjectName, user: &UserName) -> Result<bool> {
        let (p, u) = (project.clone(), user.clone());
        Ok(self
            .db(move |s| s.project(&p))
            .await?
            .is_some_and(|row| row.members.contains(&u)))
    }

    // ----- health, me, users -----

    /// Daemon and hypervisor status.
    pub async fn health(&self) -> Health {
        match self.hv(|h| h.ping()).await {
            Ok(v) => Health {
                status: "ok",
                hypervisor: v,
                version: env!("CARGO_PKG_VERSION"),
            },
            Err(_) => Health {
                status: "degraded",
                hypervisor: "unavailable".into(),
                version: env!("CARGO_PKG_VERSION"),
            },
        }
    }

    /// The caller.
    pub async fn me(&self, p: &Principal) -> Result<Me> {
        self.check(p, &Action::Registered, "")?;
        let name = p.name.clone();
        let projects = self
            .db(|s| s.projects())
            .await?
            .into_iter()
            .filter(|r| r.members.contains(&name))
            .map(|r| r.name)
            .collect();
        Ok(Me {
            name: p.name.clone(),
            team: p.team.clone(),
            admin: p.admin,
            projects,
        })
    }

    /// The registry.
    pub async fn users(&self, p: &Principal) -> Result<Vec<User>> {
        self.check(p, &Action::Admin(AdminAction::ManageUsers), "")?;
        self.db(|s| s.users()).await
    }

    /// Registers or updates a user; idempotent.
    pub async fn put_user(&self, p: &Principal, user: User) -> Result<Changed<User>> {
        self.check(p, &Action::Admin(AdminAction::ManageUsers), "")?;
        let n = user.name.clone();
        let old = self.db(move |s| s.user(&n)).await?;
        if old.is_some_and(|o| o.team != user.team) {
            // Roles were granted inside the old team; moving the user would carry them
            // across teams (sharing never crosses teams).
            self.refuse_if_holding(&user.name, "change the team of")
                .await?;
        }
        let actor = p.clone();
        let u = user.clone();
        let change = self
            .db(move |s| {
                s.put_user(
                    &Self::audit(&actor, "user.put", u.name.to_string(), None),
                    &u,
                )
            })
            .await?;
        Ok(Changed {
            change,
            object: user,
        })
    }

    /// Removes a user; idempotent.
    pub async fn delete_user(&self, p: &Principal, name: UserName) -> Result<Change> {
        self.check(p, &Action::Admin(AdminAction::ManageUsers), "")?;
        // A deleted owner could leave VMs and drives nobody may manage.
        self.refuse_if_holding(&name, "delete").await?;
        let actor = p.clone();
        self.db(move |s| {
            s.delete_user(
                &Self::audit(&actor, "user.delete", name.to_string(), None),
                &name,
            )
        })
        .await
    }

    async fn refuse_if_holding(&self, name: &UserName, what: &str) -> Result<()> {
        let n = name.clone();
        let held = self.db(move |s| s.holdings(&n)).await?;
        if held > 0 {
            return Err(ServiceError::Conflict {
                code: "user_has_roles",
                message: format!(
                    "Cannot {what} user {name}: they hold {held} VM roles or drives; unshare and hand them over first"
                ),
            });
        }
        Ok(())
    }

    // ----- projects and keys -----

    /// Creates a project and its key; the shares are returned here and never again.
    pub async fn create_project(
        &self,
        p: &Principal,
        name: ProjectName,
        members: Vec<UserName>,
    ) -> Result<CreatedProject> {
        self.check(p, &Action::Admin(AdminAction::CreateProject), "")?;
        for m in &members {
            let m2 = m.clone();
            if self.db(move |s| s.user(&m2)).await?.is_none() {
                return Err(ServiceError::Invalid(format!("User {m} is not registered")));
            }
        }
        let nk = keys::generate();
        let verifier = keys::verifier(&nk.key, &name);
        let actor = p.clone();
        let (n2, m2) = (name.clone(), members.clone());
        self.db(move |s| {
            s.create_project(
                &Self::audit(&actor, "project.create", n2.to_string(), None),
                &n2,
                &m2,
                &verifier,
            )
        })
        .await?;
        let lock = self.keys.status(&name, Instant::now());
        Ok(CreatedProject {
            project: ProjectView {
                name,
                members,
                lock,
            },
            admin_share: nk.admin_share,
            member_share: nk.member_share,
        })
    }

    /// Projects the caller may see (admins: all).
    pub async fn projects(&self, p: &Principal) -> Result<Vec<ProjectView>> {
        self.check(p, &Action::Registered, "")?;
        let now = Instant::now();
        Ok(self
            .db(|s| s.projects())
            .await?
            .into_iter()
            .filter(|r| p.admin || r.members.contains(&p.name))
            .map(|r| ProjectView {
                lock: self.keys.status(&r.name, now),
                name: r.name,
                members: r.members,
            })
            .collect())
    }

    /// Adds or removes a project member; idempotent. Removing a member hides the project's
    /// VMs from them at once and leaves running VMs alone.
    pub async fn set_member(
        &self,
        p: &Principal,
        project: ProjectName,
        user: UserName,
        present: bool,
    ) -> Result<Change> {
        self.check(p, &Action::Admin(AdminAction::ManageMembers), "")?;
        let pr = project.clone();
        if self.db(move |s| s.project(&pr)).await?.is_none() {
            return Err(deny(
                Denial::Hidden(policy::Hidden::Project),
                project.as_str(),
            ));
        }
        let u = user.clone();
        if present && self.db(move |s| s.user(&u)).await?.is_none() {
            return Err(ServiceError::Invalid(format!(
                "User {user} is not registered"
            )));
        }
        let actor = p.clone();
        let action = if present {
            "project.member_add"
        } else {
            "project.member_remove"
        };
        self.db(move |s| {
            let mut a = Self::audit(&actor, action, project.to_string(), None);
            a.detail = user.to_string();
            s.set_member(&a, &project, &user, present)
        })
        .await
    }

    async fn project_row(
        &self,
        p: &Principal,
        project: &ProjectName,
    ) -> Result<crate::store::ProjectRow> {
        let pr = project.clone();
        let row = self.db(move |s| s.project(&pr)).await?;
        match row {
            Some(r) if p.admin || r.members.contains(&p.name) => Ok(r),
            _ => Err(deny(
                Denial::Hidden(policy::Hidden::Project),
                project.as_str(),
            )),
        }
    }

    /// Takes one half of the project key.
    pub async fn unlock(
        &self,
        p: &Principal,
        project: ProjectName,
        share: SecretBytes,
    ) -> Result<LockStatus> {
        let row = {
            let pr = project.clone();
            self.db(move |s| s.project(&pr)).await?
        };
        let member = row.as_ref().is_some_and(|r| r.members.contains(&p.name));
        let half = match keys::parse_share(share.expose()) {
            Ok((keys::Half::Admin, _)) => ShareHalf::Admin,
            Ok((keys::Half::Member, _)) => ShareHalf::Member,
            Err(e) => {
                // Unknown projects answer 404 before a malformed share is judged.
                if row.is_none() || !(p.admin || member) {
                    return Err(deny(
                        Denial::Hidden(policy::Hidden::Project),
                        project.as_str(),
                    ));
                }
                return Err(ServiceError::Share(e));
            }
        };
        self.check(
            p,
            &Action::Unlock {
                half,
                project_member: member,
            },
            project.as_str(),
        )?;
        let Some(row) = row else {
            return Err(deny(
                Denial::Hidden(policy::Hidden::Project),
                project.as_str(),
            ));
        };
        let who = Submitter {
            name: p.name.clone(),
            admin: p.admin,
            member,
        };
        let now = Instant::now();
        let outcome = self
            .keys
            .submit(
                &project,
                &row.verifier,
                share.expose(),
                &who,
                self.cfg.keys.unlock_window,
                self.cfg.keys.unlock_ttl,
                now,
            )
            .map_err(ServiceError::Share);
        let actor = p.clone();
        let (pr, half_name) = (
            project.clone(),
            if half == ShareHalf::Admin {
                "admin"
            } else {
                "member"
            },
        );
        let result_text = match &outcome {
            Ok(UnlockOutcome::Pending) => "ok".to_string(),
            Ok(UnlockOutcome::Unlocked) => "ok".to_string(),
            Ok(UnlockOutcome::AlreadyUnlocked) => "ok".to_string(),
            Err(_) => "denied".to_string(),
        };
        let detail = match &outcome {
            Ok(o) => format!("{half_name} share; {o:?}"),
            Err(e) => format!("{half_name} share; {e}"),
        };
        self.db(move |s| {
            let mut a = Self::audit(&actor, "project.unlock", pr.to_string(), None);
            a.detail = detail;
            s.audit_outcome(&a, &result_text)
        })
        .await?;
        let kind = match outcome? {
            UnlockOutcome::Pending => "project.unlock_pending",
            UnlockOutcome::Unlocked => "project.unlocked",
            UnlockOutcome::AlreadyUnlocked => "",
        };
        if !kind.is_empty() {
            self.emit_project(
                kind,
                project.clone(),
                serde_json::json!({"project": project}),
            );
        }
        Ok(self.keys.status(&project, Instant::now()))
    }

    /// Forgets the project key now.
    pub async fn lock(&self, p: &Principal, project: ProjectName) -> Result<LockStatus> {
        // One read serves both the membership fact and the existence check.
        let pr = project.clone();
        let row = self.db(move |s| s.project(&pr)).await?;
        let member = row.as_ref().is_some_and(|r| r.members.contains(&p.name));
        self.check(
            p,
            &Action::Lock {
                project_member: member,
            },
            project.as_str(),
        )?;
        if row.is_none() {
            return Err(deny(
                Denial::Hidden(policy::Hidden::Project),
                project.as_str(),
            ));
        }
        let held = self.keys.lock(&project);
        let actor = p.clone();
        let pr = project.clone();
        self.db(move |s| {
            s.audit_outcome(
                &Self::audit(&actor, "project.lock", pr.to_string(), None),
                "ok",
            )
        })
        .await?;
        if held {
            self.emit_project(
                "project.locked",
                project.clone(),
                serde_json::json!({"project": project, "reason": "lock"}),
            );
        }
        Ok(self.keys.status(&project, Instant::now()))
    }

    /// Re-keys an unlocked project: a new K and a new pair of shares (returned once); every
    /// drive passphrase is re-wrapped in the same transaction, so the old pair opens nothing.
    pub async fn resplit(&self, p: &Principal, project: ProjectName) -> Result<CreatedProject> {
        self.check(p, &Action::Admin(AdminAction::CreateProject), "")?;
        let plock = self.project_lock(&project);
        let _excl = plock.write().await;
        let row = self.project_row(p, &project).await?;
        let now = Instant::now();
        let old = self
            .keys
            .clone_key(&project, now)
            .map_err(|e| ServiceError::Locked(e.to_string()))?;
        let pr = project.clone();
        let wrapped = self.db(move |s| s.project_drive_secrets(&pr)).await?;
        let nk = keys::generate();
        let mut rewrapped = Vec::with_capacity(wrapped.len());
        for (id, w) in wrapped {
            let pass = keys::unwrap(&old, &project, &id.to_string(), &w)
                .map_err(|e| ServiceError::SecretCorrupt(e.to_string()))?;
            rewrapped.push((id, keys::wrap(&nk.key, &project, &id.to_string(), &pass)));
        }
        let verifier = keys::verifier(&nk.key, &project);
        let actor = p.clone();
        let pr = project.clone();
        self.db(move |s| {
            s.rekey_project(
                &Self::audit(&actor, "project.resplit", pr.to_string(), None),
                &pr,
                &verifier,
                &rewrapped,
            )
        })
        .await?;
        let keys::NewKey {
            key,
            admin_share,
            member_share,
        } = nk;
        self.keys
            .replace(&project, key, self.cfg.keys.unlock_ttl, Instant::now());
        Ok(CreatedProject {
            project: ProjectView {
                lock: self.keys.status(&project, Instant::now()),
                name: project,
                members: row.members,
            },
            admin_share,
            member_share,
        })
    }

    // ----- drives -----

    /// Creates a LUKS qcow2 image with a fresh passphrase wrapped under the project key.
    pub async fn create_drive(
        &self,
        p: &Principal,
        project: ProjectName,
        name: DriveName,
        size_mib: u64,
    ) -> Result<DriveView> {
        // One read serves both the membership fact and the existence check.
        let pr = project.clone();
        let row = self.db(move |s| s.project(&pr)).await?;
        let member = row.as_ref().is_some_and(|r| r.members.contains(&p.name));
        self.check(
            p,
            &Action::CreateIn {
                project_member: member,
            },
            project.as_str(),
        )?;
        if row.is_none() {
            return Err(deny(
                Denial::Hidden(policy::Hidden::Project),
                project.as_str(),
            ));
        }
        if size_mib == 0 || size_mib > MAX_DRIVE_MIB {
            return Err(ServiceError::Invalid(format!(
                "Field size_mib must be between 1 and {MAX_DRIVE_MIB}"
            )));
        }
        let plock = self.project_lock(&project);
        let _shared = plock.read().await;
        let id = DriveId::new_random();
        let passphrase = keys::new_passphrase();
        let wrapped = self
            .keys
            .with_key(&project, Instant::now(), |k| {
                keys::wrap(k, &project, &id.to_string(), &passphrase)
            })
            .map_err(|e| ServiceError::Locked(e.to_string()))?;
        let drive = Drive {
            id,
            name,
            project,
            size_mib,
            owners: vec![p.name.clone()],
            attached_to: None,
        };
        let path = self.drive_path(id);
        let p2 = path.clone();
        blocking(move || {
            // QEMU opens images as libvirt-qemu: the directory must be traversable (not
            // listable) by others, whatever the daemon's umask (systemd gives it 0077).
            ensure_dir(p2.parent().expect("drives dir"), 0o711)
                .map_err(|e| HypervisorError::Image(e.to_string()))?;
            image::create_luks_qcow2(&p2, size_mib, &passphrase)
        })
        .await??;
        let actor = p.clone();
        let d2 = drive.clone();
        let res = self
            .db(move |s| {
                s.create_drive(
                    &Self::audit(&actor, "drive.create", d2.id.to_string(), None),
                    &d2,
                    &wrapped,
                )
            })
            .await;
        if let Err(e) = res {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(drive.into())
    }

    fn drive_path(&self, id: DriveId) -> std::path::PathBuf {
        self.cfg.drives_dir().join(format!("{id}.qcow2"))
    }

    async fn drive_for(&self, p: &Principal, id: DriveId) -> Result<(Drive, Vec<u8>)> {
        let row = self.db(move |s| s.drive(id)).await?;
        let Some((d, w)) = row else {
            return Err(deny(Denial::Hidden(policy::Hidden::Drive), &id.to_string()));
        };
        let member = self.is_member(&d.project, &p.name).await?;
        self.check(
            p,
            &Action::Drive(DriveFacts {
                project_member: member,
                owner: d.owners.contains(&p.name),
            }),
            &id.to_string(),
        )?;
        Ok((d, w))
    }

    /// Drives the caller owns, in projects the caller is a member of.
    pub async fn drives(&self, p: &Principal) -> Result<Vec<DriveView>> {
        self.check(p, &Action::Registered, "")?;
        let projects = self.db(|s| s.projects()).await?;
        let member_of: Vec<ProjectName> = projects
            .into_iter()
            .filter(|r| r.members.contains(&p.name))
            .map(|r| r.name)
            .collect();
        Ok(self
            .db(|s| s.drives())
            .await?
            .into_iter()
            .filter(|d| d.owners.contains(&p.name) && member_of.contains(&d.project))
            .map(DriveView::from)
            .collect())
    }

    /// One drive (owners only).
    pub async fn drive(&self, p: &Principal, id: DriveId) -> Result<DriveView> {
        Ok(self.drive_for(p, id).await?.0.into())
    }

    /// Deletes a detached drive and its image.
    pub async fn delete_drive(&self, p: &Principal, id: DriveId) -> Result<()> {
        let (d, _) = self.drive_for(p, id).await?;
        if let Some(vm) = d.attached_to {
            return Err(ServiceError::Conflict {
                code: "drive_attached",
                message: format!("Drive {id} is attached to VM {vm}; detach it first"),
            });
        }
        let actor = p.clone();
        self.db(move |s| {
            s.delete_drive(
                &Self::audit(&actor, "drive.delete", id.to_string(), None),
                id,
            )
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Exists(_)) => ServiceError::Conflict {
                code: "drive_attached",
                message: format!("Drive {id} was attached meanwhile; detach it first"),
            },
            e => e,
        })?;
        let path = self.drive_path(id);
        blocking(move || image::remove_image(&path)).await??;
        Ok(())
    }

    // ----- VMs -----

    async fn vm_facts(&self, p: &Principal, id: VmId) -> Result<(Vm, VmFacts)> {
        let vm = self.db(move |s| s.vm(id)).await?;
        let Some(vm) = vm else {
            return Err(deny(Denial::Hidden(policy::Hidden::Vm), &id.to_string()));
        };
        let member = self.is_member(&vm.project, &p.name).await?;
        let facts = VmFacts {
            project_member: member,
            role: vm.role_of(&p.name),
            team: vm.team.clone(),
            owners: vm.owners.len(),
        };
        Ok((vm, facts))
    }

    async fn vm_checked(&self, p: &Principal, id: VmId, a: VmAction) -> Result<Vm> {
        self.vm_checked_for(p, id, a, None).await
    }

    /// As `vm_checked`, for drive operations: a hidden drive is named by its own id.
    async fn vm_checked_for(
        &self,
        p: &Principal,
        id: VmId,
        a: VmAction,
        drive: Option<DriveId>,
    ) -> Result<Vm> {
        let (vm, facts) = self.vm_facts(p, id).await?;
        match policy::decide(p, &Action::Vm(a, facts)) {
            Decision::Allow => Ok(vm),
            Decision::Deny(d @ Denial::Hidden(policy::Hidden::Drive)) => {
                Err(deny(d, &drive.map(|d| d.to_string()).unwrap_or_default()))
            }
            Decision::Deny(d) => Err(deny(d, &id.to_string())),
        }
    }

    async fn view(&self, p: &Principal, vm: Vm) -> Result<VmView> {
        let idle_status = (vm.state == VmState::Running).then(|| self.idle_status(&vm));
        let role = vm.role_of(&p.name).unwrap_or(Role::User);
        let drives = if role == Role::Owner {
            let mut out = vec![];
            for d in vm.drives.clone() {
                if let Some((d, _)) = self.db(move |s| s.drive(d)).await? {
                    out.push(d.into());
                }
            }
            Some(out)
        } else {
            None
        };
        Ok(VmView::of(vm, role, drives, idle_status))
    }

    /// The host's idle defaults from `[idle]`.
    fn idle_host(&self) -> idle::Effective {
        let c = &self.cfg.idle;
        idle::Effective {
            enabled: c.enabled,
            after: c.after,
            warn_before: c.warn_before,
            cpu_percent: c.cpu_percent,
            io_bytes_per_sec: c.io_kib_per_sec * 1024.0,
        }
    }

    fn idle_status(&self, vm: &Vm) -> IdleStatus {
        let eff = self.idle_host().with(&vm.idle);
        let at = self.idle.lock().unwrap().status(vm.id, &eff);
        let now = tokio::time::Instant::now();
        let wall = |t: tokio::time::Instant| {
            let now_ms = crate::store::now_ms();
            if t >= now {
                now_ms + t.duration_since(now).as_millis() as i64
            } else {
                now_ms - now.duration_since(t).as_millis() as i64
            }
        };
        IdleStatus {
            enabled: eff.enabled,
            after: eff.after,
            idle_since_ms: at.map(|(s, _)| wall(s)),
            shutdown_at_ms: at.map(|(_, d)| wall(d)),
        }
    }

    fn check_size(vcpus: u32, memory_mib: u64) -> Result<()> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(ServiceError::Invalid(format!(
                "Field vcpus must be between 1 and {MAX_VCPUS}"
            )));
        }
        if !(16..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(ServiceError::Invalid(format!(
                "Field memory_mib must be between 16 and {MAX_MEMORY_MIB}"
            )));
        }
        Ok(())
    }

    fn check_idle(&self, idle: &IdlePolicy) -> Result<()> {
        if let Some(after) = idle.after {
            if after > self.cfg.idle.max_after || after.is_zero() {
                return Err(ServiceError::Invalid(format!(
                    "Field idle.after must be longer than zero and at most {}",
                    crate::config::format_duration(self.cfg.idle.max_after)
                )));
            }
        }
        if idle.enabled == Some(false) && !self.cfg.idle.owners_may_disable {
            return Err(ServiceError::Invalid(
                "This host does not let owners disable idle shutdown".into(),
            ));
        }
        if let Some(c) = idle.cpu_percent {
            if !(0.0..=10_000.0).contains(&c) {
                return Err(ServiceError::Invalid(
                    "Field idle.cpu_percent must be a percentage".into(),
                ));
            }
        }
        Ok(())
    }

    /// Creates a VM configuration; the caller becomes its first owner and must own the drives.
    pub async fn create_vm(&self, p: &Principal, req: NewVm) -> Result<VmView> {
        let member = self.is_member(&req.project, &p.name).await?;
        self.check(
            p,
            &Action::CreateIn {
                project_member: member,
            },
            req.project.as_str(),
        )?;
        Self::check_size(req.vcpus, req.memory_mib)?;
        let idle = req.idle.unwrap_or_default();
        self.check_idle(&idle)?;
        let Some(team) = p.team.clone() else {
            return Err(ServiceError::Invalid(
                "Register with a team before creating VMs".into(),
            ));
        };
        let mut seen = std::collections::HashSet::new();
        for d in &req.drives {
            if !seen.insert(*d) {
                return Err(ServiceError::Invalid(format!("Drive {d} is listed twice")));
            }
            let (drive, _) = self.drive_for(p, *d).await?;
            self.drive_fits(&drive, &req.project, None)?;
        }
        let vm = Vm {
            id: VmId::new_random(),
            name: req.name,
            project: req.project,
            team,
            vcpus: req.vcpus,
            memory_mib: req.memory_mib,
            owners: vec![p.name.clone()],
            users: vec![],
            drives: req.drives,
            idle,
            state: VmState::Stopped,
            state_reason: "created".into(),
        };
        let actor = p.clone();
        let v2 = vm.clone();
        self.db(move |s| {
            s.create_vm(
                &Self::audit(&actor, "vm.create", v2.id.to_string(), Some(v2.id)),
                &v2,
            )
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Exists(what)) if what.starts_with("Attachment") => {
                ServiceError::Conflict {
                    code: "drive_attached",
                    message: "A listed drive was attached elsewhere meanwhile".into(),
                }
            }
            e => e,
        })?;
        self.emit(
            "vm.created",
            Some(&vm),
            serde_json::json!({"id": vm.id, "name": vm.name}),
        );
        self.view(p, vm).await
    }

    fn drive_fits(&self, d: &Drive, project: &ProjectName, vm: Option<VmId>) -> Result<()> {
        if d.project != *project {
            return Err(ServiceError::Conflict {
                code: "project_mismatch",
                message: format!("Drive {} belongs to another project", d.id),
            });
        }
        match d.attached_to {
            Some(other) if Some(other) == vm => Ok(()),
            Some(_) => Err(ServiceError::Conflict {
                code: "drive_attached",
                message: format!("Drive {} is attached to another VM; detach it first", d.id),
            }),
            None => Ok(()),
        }
    }

    /// VMs the caller holds a role on, in projects the caller is a member of.
    pub async fn vms(&self, p: &Principal) -> Result<Vec<VmView>> {
        self.check(p, &Action::Registered, "")?;
        let projects = self.db(|s| s.projects()).await?;
        let member_of: std::collections::HashSet<ProjectName> = projects
            .into_iter()
            .filter(|r| r.members.contains(&p.name))
            .map(|r| r.name)
            .collect();
        let vms = self.db(|s| s.vms()).await?;
        let mut drive_cache: Option<HashMap<DriveId, Drive>> = None;
        let mut out = vec![];
        for vm in vms {
            if !member_of.contains(&vm.project) {
                continue;
            }
            let Some(role) = vm.role_of(&p.name) else {
                continue;
            };
            let drives = if role == Role::Owner {
                if drive_cache.is_none() {
                    drive_cache = Some(
                        self.db(|s| s.drives())
                            .await?
                            .into_iter()
                            .map(|d| (d.id, d))
                            .collect(),
                    );
                }
                let cache = drive_cache.as_ref().expect("filled");
                Some(
                    vm.drives
                        .iter()
                        .filter_map(|d| cache.get(d).cloned().map(DriveView::from))
                        .collect(),
                )
            } else {
                None
            };
            out.push(VmView::of(vm, role, drives, None));
        }
        Ok(out)
    }

    /// One VM.
    pub async fn vm(&self, p: &Principal, id: VmId) -> Result<VmView> {
        let vm = self.vm_checked(p, id, VmAction::View).await?;
        self.view(p, vm).await
    }

    /// Changes size or idle policy (owners). Size changes apply at the next start.
    pub async fn update_vm(
        &self,
        p: &Principal,
        id: VmId,
        patch: VmPatch,
    ) -> Result<Changed<VmView>> {
        let lock = self.vm_lock(id);
        let _g = lock.lock().await;
        let vm = self.vm_checked(p, id, VmAction::Update).await?;
        let vcpus = patch.vcpus.unwrap_or(vm.vcpus);
        let memory = patch.memory_mib.unwrap_or(vm.memory_mib);
        Self::check_size(vcpus, memory)?;
        let idle = patch.idle.unwrap_or(vm.idle.clone());
        self.check_idle(&idle)?;
        let actor = p.clone();
        let i2 = idle.clone();
        let change = self
            .db(move |s| {
                s.update_vm(
                    &Self::audit(&actor, "vm.update", id.to_string(), Some(id)),
                    id,
                    vcpus,
                    memory,
                    &i2,
                )
            })
            .await?;
        let vm = self.vm_checked(p, id, VmAction::View).await?;
        Ok(Changed {
            change,
            object: self.view(p, vm).await?,
        })
    }

    /// Deletes a stopped VM; its drives stay, detached, with their owners.
    pub async fn delete_vm(&self, p: &Principal, id: VmId) -> Result<()> {
        let lock = self.vm_lock(id);
        let _g = lock.lock().await;
        let vm = self.vm_checked(p, id, VmAction::Delete).await?;
        if self.hv(move |h| h.is_running(id)).await? {
            return Err(ServiceError::Conflict {
                code: "vm_running",
                message: format!("VM {id} is running; stop it first"),
            });
        }
        let actor = p.clone();
        self.db(move |s| {
            s.delete_vm(
                &Self::audit(&actor, "vm.delete", id.to_string(), Some(id)),
                id,
            )
        })
        .await?;
        let members = self
            .project_row(p, &vm.project)
            .await
            .map(|r| r.members)
            .unwrap_or_default();
        let _ = self.events.send(Event {
            kind: "vm.deleted",
            vm: Some(id),
            project: Some(vm.project.clone()),
            drive: None,
            audience: Some(
                vm.owners
                    .iter()
                    .chain(&vm.users)
                    .filter(|u| members.contains(u))
                    .cloned()
                    .collect(),
            ),
            data: serde_json::json!({"id": id}),
            at_ms: crate::store::now_ms(),
        });
        self.vm_locks.lock().unwrap().remove(&id);
        Ok(())
    }

    /// Owners and users of a VM.
    pub async fn members(&self, p: &Principal, id: VmId) -> Result<Members> {
        let vm = self.vm_checked(p, id, VmAction::Members).await?;
        Ok(Members {
            owners: vm.owners,
            users: vm.users,
        })
    }

    async fn target_facts(&self, p: &Principal, vm: &Vm, target: &UserName) -> Result<TargetFacts> {
        let t = target.clone();
        let user = self.db(move |s| s.user(&t)).await?;
        Ok(TargetFacts {
            team: user.map(|u| u.team),
            project_member: self.is_member(&vm.project, target).await?,
            role: vm.role_of(target),
            is_self: *target == p.name,
        })
    }

    /// Grants or changes a role (sharing rules 1-5, 7).
    pub async fn share(
        &self,
        p: &Principal,
        id: VmId,
        target: UserName,
        role: Role,
        confirm: bool,
    ) -> Result<Changed<Members>> {
        let lock = self.vm_lock(id);
        let _g = lock.lock().await;
        let (vm, facts) = self.vm_facts(p, id).await?;
        let tf = self.target_facts(p, &vm, &target).await?;
        let decision = policy::decide(
            p,
            &Action::Share {
                vm: facts,
                target: tf,
                role,
                confirm,
                max_owners: self.cfg.sharing.max_owners,
            },
        );
        if let Decision::Deny(d) = decision {
            let what = match d {
                Denial::Hidden(policy::Hidden::User) => target.to_string(),
                _ => id.to_string(),
            };
            let e = deny(d, &what);
            self.audit_denied(p, "vm.share", &target, id, &e);
            return Err(e);
        }
        let actor = p.clone();
        let t2 = target.clone();
        let change = self
            .db(move |s| {
                let mut a = Self::audit(&actor, "vm.share", t2.to_string(), Some(id));
                a.detail = role.as_str().into();
                s.set_role(&a, id, &t2, Some(role))
            })
            .await?;
        if change != Change::Unchanged {
            self.emit(
                "vm.shared",
                Some(&vm),
                serde_json::json!({"id": id, "user": target, "role": role}),
            );
        }
        let vm = self
            .db(move |s| s.vm(id))
            .await?
            .ok_or_else(|| deny(Denial::Hidden(policy::Hidden::Vm), &id.to_string()))?;
        Ok(Changed {
            change,
            object: Members {
                owners: vm.owners,
                users: vm.users,
            },
        })
    }

    fn audit_denied(
        &self,
        p: &Principal,
        action: &str,
        target: &UserName,
        vm: VmId,
        e: &ServiceError,
    ) {
        let code = match e {
            ServiceError::Denied(d) => format!("denied:{:?}", d.denial),
            other => format!("failed:{other}"),
        };
        let a = AuditCtx {
            actor: p.name.as_str(),
            action,
            target: target.to_string(),
            vm: Some(vm),
            detail: String::new(),
        };
        if let Err(err) = self.store.audit_outcome(&a, &code) {
            tracing::warn!(error = %err, "cannot record a denied attempt");
        }
    }

    /// Removes a role (rule 6); idempotent.
    pub async fn unshare(
        &self,
        p: &Principal,
        id: VmId,
        target: UserName,
    ) -> Result<Changed<Members>> {
        let lock = self.vm_lock(id);
        let _g = lock.lock().await;
        let (vm, facts) = self.vm_facts(p, id).await?;
        let tf = self.target_facts(p, &vm, &target).await?;
        self.check(
            p,
            &Action::Unshare {
                vm: facts,
                target: tf.clone(),
            },
            &id.to_string(),
        )
        .inspect_err(|e| self.audit_denied(p, "vm.unshare", &target, id, e))?;
        let change = if tf.role.is_none() {
            Change::Unchanged
        } else {
            let actor = p.clone();
            let t2 = target.clone();
            self.db(move |s| {
                s.set_role(
                    &Self::audit(&actor, "vm.unshare", t2.to_string(), Some(id)),
                    id,
                    &t2,
                    None,
                )
            })
            .await?
        };
        if change != Change::Unchanged {
            self.emit(
                "vm.unshared",
                Some(&vm),
                serde_json::json!({"id": id, "user": target}),
            );
        }
        let vm = self
            .db(move |s| s.vm(id))
            .await?
            .ok_or_else(|| deny(Denial::Hidden(policy::Hidden::Vm), &id.to_string()))?;
        Ok(Changed {
            change,
            object: Members {
                owners: vm.owners,
                users: vm.users,
            },
        })
    }

    // ----- lifecycle -----

    fn unwrap_disks(&self, vm: &Vm, drives: Vec<(Drive, Vec<u8>)>) -> Result<Vec<DiskSpec>> {
        let now = Instant::now();
        self.keys
            .with_key(&vm.project, now, |k| {
                drives
                    .into_iter()
                    .map(|(d, w)| {
                        let passphrase = keys::unwrap(k, &vm.project, &d.id.to_string(), &w)
                            .map_err(|e| {
                                // The drive id goes to the operator's log only: a user of
                                // the VM must not learn it from the error.
                                tracing::error!(vm = %vm.id, error = %e, "refusing to launch");
                                ServiceError::SecretCorrupt(format!(
                                    "A drive of VM {} has a wrapped passphrase that fails authentication (the stored value was altered); nothing was started",
                                    vm.id
                                ))
                            })?;
                        Ok(DiskSpec {
                            drive: d.id,
                            path: self.drive_path(d.id),
                            passphrase,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .map_err(|e| ServiceError::Locked(e.to_string()))?
    }

    /// Launches the VM from its encrypted drives.
    pub async fn start(&self, p: &Principal, id: VmId) -> Result<VmView> {
        let lock = self.vm_lock(id);
        let _g = lock.lock().await;
        let vm = self.vm_checked(p, id, VmAction::Start).await?;
        let r = self.launch(p, &vm).await;
        let r = match (r, vm.role_of(&p.name)) {
            (Err(e), Some(Role::User)) => Err(self.scrub_drives(e, &vm)),
            (r, _) => r,
        };
        if let Err(e) = &r {
            let actor = p.clone();
            let detail = e.to_string();
            let _ = self
                .db(move |s| {
                    let mut a = Self::audit(&actor, "vm.start", id.to_string(), Some(id));
                    a.detail = detail;
                    s.audit_outcome(&a, "failed")
                })
                .await;
        }
        r?;
        let vm = self
            .db(move |s| s.vm(id))
            .await?
            .ok_or_else(|| deny(Denial::Hidden(policy::Hidden::Vm), &id.to_string()))?;
        self.emit(
            "vm.state",
            Some(&vm),
            serde_json::json!({"id": id, "state": "running", "reason": "start"}),
        );
        self.view(p, vm).await
    }

    async fn launch(&self, p: &Principal, vm: &Vm) -> Result<()> {
        let id = vm.id;
        if vm.drives.is_empty() {
            return Err(ServiceError::Conflict {
                code: "no_drive",
                message: format!("VM {id} has no drive; attach one before starting it"),
            });
        }
        if self.hv(move |h| h.is_running(id)).await? {
            return Err(ServiceError::Conflict {
                code: "vm_running",
                message: format!("VM {id} is already running"),
            });
        }
        let mut drives = vec![];
        for d in vm.drives.clone() {
            if let Some(row) = self.db(move |s| s.drive(d)).await? {
                drives.push(row);
            }
        }
        let plock = self.project_lock(&vm.project);
        let _shared = plock.read().await;
        let disks = self.unwrap_disks(vm, drives)?;
        let logs = self.cfg.logs_dir();
        let spec = DomainSpec {
            id,
            name: vm.name.clone(),
            project: vm.project.clone(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            disks,
            serial_log: logs.join(format!("{id}.serial.log")),
        };
        self.hv(move |h| {
            // libvirt opens serial logs itself, as root: private to the daemon.
            ensure_dir(&logs, 0o700).map_err(|e| HypervisorError::Failed(e.to_string()))?;
            h.launch(&spec)
        })
        .await?;
        let actor = p.clone();
        self.db(move |s| {
            s.set_state(
                &Self::audit(&actor, "vm.start", id.to_string(), Some(id)),
                id,
                VmState::Running,
                "start",
            )
        })
        .await
    }

    /// A user of a VM never learns its drives: libvirt and QEMU messages name image paths,
    /// so those are replaced before the error reaches a user.
    fn scrub_drives(&self, e: ServiceError, vm: &Vm) -> ServiceError {
        let scrub = |msg: String| {
            let mut m = msg.replace(&self.cfg.drives_dir().display().to_string(), "[drives]");
            for d in &vm.drives {
                m = m.replace(&d.to_string(), "[drive]");
            }
            m
        };
        match e {
            ServiceError::Hypervisor(HypervisorError::Failed(m)) => {
                ServiceError::Hypervisor(HypervisorError::Failed(scrub(m)))
            }
            ServiceError::Hypervisor(HypervisorError::Image(m)) => {
                ServiceError::Hypervisor(HypervisorError::Image(scrub(m)))
            }
            other => other,
        }
    }

    /// Stops the VM: ACPI shutdown, then destroy after `libvirt.shutdown_timeout`
    /// (or at once with `force`).
    pub async fn stop(&self, p: &Principal, id: VmId, force: bool) -> Result<VmView> {
        let vm = self.vm_checked(p, id, VmAction::Stop).await?;
        self.stop_inner(p, vm, force, "stop").await?;
        let vm = self.vm_checked(p, id, VmAction::View).await?;
        self.view(p, vm).await
    }

    async fn stop_inner(
        &self,
        p: &Principal,
        vm: Vm,
        force: bool,
        reason: &'static str,
    ) -> Result<()> {
        let id = vm.id;
        let lock = self.vm_lock(id);
        let _g = lock.lock().await;
        let timeout = if reason == "idle" {
            self.cfg.idle.shutdown_timeout
        } else {
            self.cfg.libvirt.shutdown_timeout
        };
        let how = self
            .hv(move |h| {
                if !force {
                    match h.shutdown(id) {
                        Ok(()) => {}
                        Err(HypervisorError::NoDomain) => return Ok("not_running"),
                        Err(e) => return Err(e),
                    }
                    let deadline = Instant::now() + timeout;
                    while Instant::now() < deadline {
                        if !h.is_running(id)? {
                            return Ok("acpi");
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                match h.destroy(id) {
                    Ok(()) => Ok("destroy"),
                    Err(HypervisorError::NoDomain) => {
                        Ok(if force { "not_running" } else { "acpi" })
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        let actor = p.clone();
        self.db(move |s| {
            let mut a = Self::audit(
                &actor,
                match reason {
                    "admin" => "host.stop",
                    "idle" => "vm.idle_shutdown",
                    _ => "vm.stop",
                },
                id.to_string(),
                Some(id),
            );
            a.detail = format!("reason={reason} via={how}");
            s.set_state(&a, id, VmState::Stopped, reason)
        })
        .await?;
        self.emit(
            "vm.state",
            Some(&vm),
            serde_json::json!({"id": id, "state": "stopped", "reason": reason}),
        );
        Ok(())
    }

    /// Restarts the idle clock (idle shutdown itself is the `idle` module's).
    pub async fn keepalive(&self, p: &Principal, id: VmId) -> Result<VmView> {
        let vm = self.vm_checked(p, id, VmAction::Keepalive).await?;
        self.idle
            .lock()
            .unwrap()
            .keepalive(id, tokio::time::Instant::now());
        let actor = p.clone();
        self.db(move |s| {
            s.audit_outcome(
                &Self::audit(&actor, "vm.keepalive", id.to_string(), Some(id)),
                "ok",
            )
        })
        .await?;
        self.view(p, vm).await
    }

    // ----- drives on VMs -----

    /// Attaches a drive the caller owns to a VM the caller owns (hot when running).
    pub async fn attach(&self, p: &Principal, id: VmId, drive: DriveId) -> Result<Changed<VmView>> {
        let lock = self.vm_lock(id);
        let _g = lock.lock().await;
        let vm = self
            .vm_checked_for(p, id, VmAction::Attach, Some(drive))
            .await?;
        let (d, wrapped) = self.drive_for(p, drive).await?;
        self.drive_fits(&d, &vm.project, Some(id))?;
        if d.attached_to == Some(id) {
            return Ok(Changed {
                change: Change::Unchanged,
                object: self.view(p, vm).await?,
            });
        }
        let plock = self.project_lock(&vm.project);
        let _shared = plock.read().await;
        // Claim the drive in the store first (the claim fails if another attach won), then
        // hot-plug; a failed hot-plug gives the drive back as it was.
        let actor = p.clone();
        let previous = d.owners.clone();
        self.db(move |s| {
            let mut a = Self::audit(&actor, "drive.attach", drive.to_string(), Some(id));
            a.detail = format!(
                "from_owner={}",
                previous
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            s.attach(&a, id, drive)
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Exists(_)) => ServiceError::Conflict {
                code: "drive_attached",
                message: format!("Drive {drive} was attached elsewhere meanwhile"),
            },
            e => e,
        })?;
        let hot = async {
            if self.hv(move |h| h.is_running(id)).await? {
                let disks = self.unwrap_disks(&vm, vec![(d.clone(), wrapped)])?;
                let disk = disks.into_iter().next().expect("one disk");
                self.hv(move |h| h.attach_disk(id, &disk)).await?;
            }
            Ok::<(), ServiceError>(())
        }
        .await;
        if let Err(e) = hot {
            let actor = p.clone();
            let owners = d.owners.clone();
            self.db(move |s| {
                s.release(
                    &Self::audit(&actor, "drive.attach_undone", drive.to_string(), Some(id)),
                    drive,
                    &owners,
                )
            })
            .await?;
            return Err(e);
        }
        self.emit_drive(
            "drive.attached",
            Some(&vm),
            Some(drive),
            serde_json::json!({"id": id}),
        );
        let vm = self.vm_checked(p, id, VmAction::View).await?;
        Ok(Changed {
            change: Change::Created,
            object: self.view(p, vm).await?,
        })
    }

    /// Detaches a drive (hot when running); the caller keeps it.
    pub async fn detach(&self, p: &Principal, id: VmId, drive: DriveId) -> Result<Changed<VmView>> {
        let lock = self.vm_lock(id);
        let _g = lock.lock().await;
        let vm = self
            .vm_checked_for(p, id, VmAction::Detach, Some(drive))
            .await?;
        let (d, _) = self.drive_for(p, drive).await?;
        if d.attached_to.is_none() {
            // Already detached (a repeated DELETE): nothing to do.
            return Ok(Changed {
                change: Change::Unchanged,
                object: self.view(p, vm).await?,
            });
        }
        if d.attached_to != Some(id) {
            return Err(ServiceError::NotFound(format!(
                "Drive {drive} is not attached to VM {id}"
            )));
        }
        if self.hv(move |h| h.is_running(id)).await? {
            let t = self.cfg.libvirt.detach_timeout;
            self.hv(move |h| h.detach_disk(id, drive, t)).await?;
        }
        let actor = p.clone();
        let keeper = p.name.clone();
        self.db(move |s| {
            s.detach(
                &Self::audit(&actor, "drive.detach", drive.to_string(), Some(id)),
                drive,
                &keeper,
            )
        })
        .await?;
        self.emit_drive(
            "drive.detached",
            Some(&vm),
            Some(drive),
            serde_json::json!({"id": id}),
        );
        let vm = self.vm_checked(p, id, VmAction::View).await?;
        Ok(Changed {
            change: Change::Removed,
            object: self.view(p, vm).await?,
        })
    }

    // ----- host -----

    /// Inventory for admins: no drive details.
    pub async fn host_vms(&self, p: &Principal) -> Result<Vec<HostVm>> {
        self.check(p, &Action::Admin(AdminAction::HostInventory), "")?;
        let default_enabled = self.cfg.idle.enabled;
        Ok(self
            .db(|s| s.vms())
            .await?
            .into_iter()
            .map(|v| HostVm {
                idle_enabled: default_enabled && v.idle.enabled.unwrap_or(true),
                id: v.id,
                name: v.name,
                project: v.project,
                state: v.state,
                state_reason: v.state_reason,
                vcpus: v.vcpus,
                memory_mib: v.memory_mib,
            })
            .collect())
    }

    /// Stops any VM for resource management, audited with reason `admin`.
    pub async fn host_stop(&self, p: &Principal, id: VmId, force: bool) -> Result<()> {
        self.check(p, &Action::Admin(AdminAction::HostStop), "")?;
        let vm = self
            .db(move |s| s.vm(id))
            .await?
            .ok_or_else(|| deny(Denial::Hidden(policy::Hidden::Vm), &id.to_string()))?;
        self.stop_inner(p, vm, force, "admin").await
    }

    /// Audit entries: everything for admins, entries of the caller's VMs otherwise.
    pub async fn audit_log(&self, p: &Principal, mut f: AuditFilter) -> Result<Vec<AuditEntry>> {
        self.check(p, &Action::Registered, "")?;
        let mut user_of = std::collections::HashSet::new();
        if !p.admin {
            let mine = self.vms(p).await?;
            user_of = mine
                .iter()
                .filter(|v| v.role == Role::User)
                .map(|v| v.id)
                .collect();
            f.vms_allowed = Some(mine.into_iter().map(|v| v.id).collect());
        }
        let mut rows = self.db(move |s| s.audit(&f)).await?;
        // Users of a VM see its history without its drives: drive entries go, details blank.
        rows.retain_mut(|e| {
            let vm = e.vm.as_deref().and_then(|v| v.parse::<VmId>().ok());
            match vm {
                Some(v) if user_of.contains(&v) => {
                    e.detail.clear();
                    !e.action.starts_with("drive.")
                }
                _ => true,
            }
        });
        Ok(rows)
    }

    // ----- background -----

    /// Logs each domain vmwarden does not manage once; never touches it.
    fn report_foreign(&self, domains: &[crate::hypervisor::DomainInfo], vms: &[Vm]) {
        let mut reported = self.reported.lock().unwrap();
        reported.retain(|n| domains.iter().any(|d| &d.name == n));
        for d in domains {
            if d.vm.is_some_and(|id| vms.iter().any(|v| v.id == id))
                || !reported.insert(d.name.clone())
            {
                continue;
            }
            match d.vm {
                Some(id) if vms.iter().any(|v| v.id == id) => {}
                Some(id) => {
                    tracing::warn!(domain = %d.name, vm = %id, "domain carries vmwarden metadata but its VM is unknown; left running")
                }
                None => {
                    tracing::info!(domain = %d.name, "domain not managed by vmwarden; left alone")
                }
            }
        }
    }

    /// Aligns the store with libvirt: a VM whose domain runs is running, one without a domain
    /// is stopped. Domains vmwarden does not know are reported, never touched.
    pub async fn reconcile(&self) -> Result<()> {
        let domains = self.hv(|h| h.list()).await?;
        let vms = self.db(|s| s.vms()).await?;
        let running: std::collections::HashSet<VmId> =
            domains.iter().filter_map(|d| d.vm).collect();
        self.report_foreign(&domains, &vms);
        // Locks nobody holds are dropped, so ids named in requests do not accumulate.
        self.vm_locks
            .lock()
            .unwrap()
            .retain(|_, l| Arc::strong_count(l) > 1);
        self.project_locks
            .lock()
            .unwrap()
            .retain(|_, l| Arc::strong_count(l) > 1);
        for vm in vms {
            let is = running.contains(&vm.id);
            let reason = if is { "found_running" } else { "exited" };
            if (vm.state == VmState::Running) != is {
                self.settle(vm.id, reason).await?;
            }
        }
        Ok(())
    }

    /// Records what libvirt says about one VM, under the VM's lock and after asking libvirt
    /// again: a stop or start in flight holds the lock and records its own reason, and this
    /// must not overwrite it with a stale observation.
    pub async fn settle(&self, id: VmId, reason: &'static str) -> Result<()> {
        let lock = self.vm_lock(id);
        let _g = lock.lock().await;
        let Some(vm) = self.db(move |s| s.vm(id)).await? else {
            return Ok(());
        };
        let is = self.hv(move |h| h.is_running(id)).await?;
        let state = if is {
            VmState::Running
        } else {
            VmState::Stopped
        };
        if vm.state == state {
            return Ok(());
        }
        let actor = Self::system();
        self.db(move |s| {
            let mut a = Self::audit(&actor, "vm.state", id.to_string(), Some(id));
            a.detail = format!("state={} reason={reason}", state.as_str());
            s.set_state(&a, id, state, reason)
        })
        .await?;
        self.emit(
            "vm.state",
            Some(&vm),
            serde_json::json!({"id": id, "state": state, "reason": reason}),
        );
        Ok(())
    }

    fn system() -> Principal {
        Principal {
            name: UserName::parse("vmwardend").expect("valid"),
            team: None,
            admin: true,
        }
    }

    /// Applies one libvirt lifecycle event: the store follows within the event's latency,
    /// with the reason libvirt gave. After a reconnection, everything is reconciled.
    pub async fn on_lifecycle(&self, ev: LifecycleEvent) -> Result<()> {
        match ev {
            LifecycleEvent::Reconnected => self.reconcile().await,
            LifecycleEvent::Started { name } => match name.parse::<VmId>() {
                Ok(id) => self.settle(id, "started").await,
                Err(_) => Ok(()),
            },
            LifecycleEvent::Stopped { name, reason } => match name.parse::<VmId>() {
                Ok(id) => {
                    self.idle.lock().unwrap().forget(id);
                    self.settle(id, reason.as_str()).await
                }
                Err(_) => Ok(()),
            },
        }
    }

    /// Idle shutdowns since start.
    pub fn idle_shutdowns(&self) -> u64 {
        self.idle_shutdowns
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One idle sweep: one bulk-stats call for every domain, one decision per running VM.
    /// Warnings become events; shutdowns run in the background (ACPI, then destroy after
    /// `idle.shutdown_timeout`) and are recorded with reason `idle`.
    pub async fn idle_sweep(self: &Arc<Self>) -> Result<()> {
        let stats = self.hv(|h| h.stats()).await?;
        let vms: HashMap<VmId, Vm> = self
            .db(|s| s.vms())
            .await?
            .into_iter()
            .filter(|v| v.state == VmState::Running)
            .map(|v| (v.id, v))
            .collect();
        let now = tokio::time::Instant::now();
        let samples = stats.iter().filter(|st| st.running).filter_map(|st| {
            let vm = vms.get(&st.vm?)?;
            Some((
                vm.id,
                idle::Sample {
                    at: now,
                    cpu_time_ns: st.cpu_time_ns,
                    io_bytes: st.block_bytes + st.net_bytes,
                },
                self.idle_host().with(&vm.idle),
            ))
        });
        let decisions = self.idle.lock().unwrap().sweep(samples);
        for (id, d) in decisions {
            let vm = &vms[&id];
            match d {
                idle::Decision::Warn { deadline } => {
                    let at = crate::store::now_ms()
                        + deadline.saturating_duration_since(now).as_millis() as i64;
                    self.emit(
                        "vm.idle_warning",
                        Some(vm),
                        serde_json::json!({"id": id, "deadline_ms": at}),
                    );
                }
                idle::Decision::Shutdown => {
                    self.idle.lock().unwrap().forget(id);
                    self.idle_shutdowns
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.emit("vm.idle_shutdown", Some(vm), serde_json::json!({"id": id}));
                    let (svc, vm) = (self.clone(), vm.clone());
                    tokio::spawn(async move {
                        if let Err(e) = svc.stop_inner(&Self::system(), vm, false, "idle").await {
                            tracing::warn!(vm = %id, error = %e, "idle shutdown failed");
                        }
                    });
                }
                idle::Decision::Active | idle::Decision::Idle { .. } => {}
            }
        }
        Ok(())
    }

    /// Zeroizes expired keys and pending halves; announces projects that locked by TTL.
    pub fn sweep_keys(&self) {
        for project in self.keys.sweep(Instant::now()) {
            self.emit_project(
                "project.locked",
                project.clone(),
                serde_json::json!({"project": project, "reason": "ttl"}),
            );
        }
    }
}
