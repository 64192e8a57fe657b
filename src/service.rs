//! One function per API operation; the only place that combines policy, store, keys and the
//! hypervisor.
//!
//! Each operation: resolve the snapshot it needs from the store, ask `policy::decide`, then
//! act. Rules that span rows are judged again inside the transaction that writes (the store's
//! checked mutations), so concurrent requests cannot slip between check and write. Operations
//! on one VM run under that VM's lock, so a start, a stop and a detach of the same VM never
//! interleave; key-state changes of one project (unlock, lock, re-key, delivery of new
//! shares) run under that project's key lock. Blocking work (SQLite, libvirt, qemu-img, file
//! removal) runs on the blocking pool. Mutations write their audit row in the same
//! transaction as the change; in-memory changes (keys, idle clocks) are applied only after
//! their audit row is written.
//!
//! Cancel safety: the API runs every operation with side effects in a task of its own, so a
//! client that hangs up never cuts one short. Shares exist only in the answer that carries
//! them; they are committed as undelivered and a [`Delivery`] ticket travels with the answer:
//! written to the client, it promotes them; dropped, it undoes them.

use crate::config::Config;
use crate::hypervisor::{DiskSpec, DomainSpec, Hypervisor, LifecycleEvent};
use crate::idle;
use crate::keys::{self, Keyring, Submitter, UnlockOutcome, Verifiers};
use crate::model::{
    Drive, DriveId, DriveName, IdlePolicy, ProjectName, Role, SecretBytes, StorageId, TeamName,
    User, UserName, Vm, VmId, VmName, VmState,
};
use crate::policy::{
    self, Action, AdminAction, Decision, DriveFacts, ShareHalf, TargetFacts, VmAction, VmFacts,
};
use crate::store::{AuditCtx, MemberRemoval, Refusal, RoleFacts, Store};

// What the API needs from the layers below, re-exported so that `api` depends on `service`
// alone: the error types its one status mapping looks into, and the principal and filters.
pub use crate::hypervisor::HypervisorError;
pub use crate::keys::{KeyError, LockStatus};
pub use crate::policy::{Denial, Hidden, Principal};
pub use crate::store::{AuditEntry, AuditFilter, Change, StoreError};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

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

impl ServiceError {
    /// The stable API code of this error (also the `<code>` of `denied:`/`failed:` audit
    /// outcomes).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Denied(d) => d.denial.code(),
            ServiceError::Invalid(_) => "invalid_request",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict { code, .. } => code,
            ServiceError::Locked(_) => "project_locked",
            ServiceError::Share(k) => k.code(),
            ServiceError::SecretCorrupt(_) => "drive_secret_invalid",
            ServiceError::Hypervisor(h) => match h {
                HypervisorError::Unavailable(_) => "hypervisor_unavailable",
                HypervisorError::NoDomain => "vm_not_running",
                HypervisorError::AlreadyRunning => "vm_running",
                HypervisorError::DetachTimeout(_) => "detach_timeout",
                HypervisorError::Failed(_) => "hypervisor_error",
                HypervisorError::Image(_) => "image_error",
                HypervisorError::NoSpace(_) => "insufficient_storage",
            },
            ServiceError::Store(s) => match s {
                StoreError::Exists(_) => "already_exists",
                StoreError::NotFound | StoreError::Missing(..) => "not_found",
                StoreError::Full => "insufficient_storage",
                StoreError::Changed(_) => "changed_meanwhile",
                StoreError::Attached(_) => "drive_attached",
                StoreError::Holdings { .. } => "user_has_roles",
                StoreError::NotEmpty { .. } => "project_not_empty",
                StoreError::Sqlite(_) | StoreError::Io(_) | StoreError::TooNew(..) => "store_error",
            },
            ServiceError::Task => "internal",
        }
    }

    /// The audit outcome of an attempt that failed with this error.
    fn outcome(&self) -> String {
        match self {
            ServiceError::Denied(_) | ServiceError::Share(_) => format!("denied:{}", self.code()),
            _ => format!("failed:{}", self.code()),
        }
    }
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

fn conflict(code: &'static str, message: String) -> ServiceError {
    ServiceError::Conflict { code, message }
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

/// Fires once the answer that carries new shares has been written to its client. Dropped
/// unfired (the client hung up, the write failed), it tells the service the shares never
/// left, and the service undoes what they were made for.
#[derive(Debug)]
pub struct Delivery(oneshot::Sender<()>);

impl Delivery {
    fn new() -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self(tx), rx)
    }

    /// The answer reached the client.
    pub fn delivered(self) {
        let _ = self.0.send(());
    }
}

/// Response of project creation or re-key: the only time the shares leave the daemon.
#[derive(Debug)]
pub struct CreatedProject {
    /// The project.
    pub project: ProjectView,
    /// Token for the creating admin.
    pub admin_share: SecretBytes,
    /// Token for the members.
    pub member_share: SecretBytes,
    /// Fire it once the answer is written.
    pub delivery: Delivery,
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

/// How a member leaves a project (`DELETE /v1/projects/{p}/members/{user}`).
#[derive(Debug, Clone, Default)]
pub struct MemberExit {
    /// Hand over what they own instead of refusing.
    pub force: bool,
    /// Who takes what they alone own.
    pub transfer_to: Option<UserName>,
}

/// Bounds the API accepts for VM sizes; wider values are refused before libvirt sees them.
pub const MAX_VCPUS: u32 = 64;
/// Upper bound on memory per VM.
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
/// Upper bound on drive size (16 TiB).
pub const MAX_DRIVE_MIB: u64 = 16 * 1024 * 1024;

/// How long a start whose libvirt connection broke waits for libvirt to answer again, to
/// learn whether the domain was created.
const LAUNCH_OUTCOME_WAIT: Duration = Duration::from_secs(15);

/// The users registry by name, shared between requests.
type UserMap = Arc<HashMap<UserName, User>>;

/// Per-VM operation state.
#[derive(Debug, Default)]
struct VmSlot {
    /// Held by every operation that changes the VM.
    op: tokio::sync::Mutex<()>,
    /// Set by a forced stop while a gentle one waits for the guest: the waiting stop
    /// destroys at once instead of waiting out the timeout.
    force: AtomicBool,
}

/// Why a VM stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// A role holder asked.
    Request,
    /// An admin, for resource management.
    Admin,
    /// Idle shutdown.
    Idle,
}

impl StopCause {
    /// The recorded reason.
    pub fn as_str(self) -> &'static str {
        match self {
            StopCause::Request => "stop",
            StopCause::Admin => "admin",
            StopCause::Idle => "idle",
        }
    }

    fn action(self) -> &'static str {
        match self {
            StopCause::Request => "vm.stop",
            StopCause::Admin => "host.stop",
            StopCause::Idle => "vm.idle_shutdown",
        }
    }
}

/// The service: shared state of the daemon.
pub struct Service {
    cfg: Arc<Config>,
    store: Arc<Store>,
    keys: Arc<Keyring>,
    hv: Arc<dyn Hypervisor>,
    vm_slots: Mutex<HashMap<VmId, Arc<VmSlot>>>,
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
    /// Per-project key-state changes (unlock, lock, re-key, delivery of new shares): one at
    /// a time, from judging to recording to applying.
    key_locks: Mutex<HashMap<ProjectName, Arc<tokio::sync::Mutex<()>>>>,
    /// Idle clocks of running VMs, fed by `idle_sweep`.
    idle: Mutex<idle::Tracker>,
    /// Idle shutdowns since start, for /metrics.
    idle_shutdowns: AtomicU64,
    /// Store calls made: tests show with it that a hidden object costs the same work as a
    /// missing one.
    store_calls: AtomicU64,
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

fn audit<'a>(p: &'a Principal, action: &'a str, target: String, vm: Option<VmId>) -> AuditCtx<'a> {
    AuditCtx {
        actor: p.name.as_str(),
        action,
        target,
        vm,
        detail: String::new(),
    }
}

/// The principal the daemon acts as (idle shutdowns, reconciliation, undoing undelivered
/// shares).
fn system() -> Principal {
    Principal {
        name: UserName::daemon(),
        team: None,
        admin: true,
    }
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
            vm_slots: Mutex::new(HashMap::new()),
            events,
            users_cache: Mutex::new(None),
            reported: Mutex::new(std::collections::HashSet::new()),
            idle: Mutex::new(idle::Tracker::new()),
            project_locks: Mutex::new(HashMap::new()),
            key_locks: Mutex::new(HashMap::new()),
            idle_shutdowns: AtomicU64::new(0),
            store_calls: AtomicU64::new(0),
        }
    }

    /// Store calls made since start.
    pub fn store_calls(&self) -> u64 {
        self.store_calls.load(Ordering::Relaxed)
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

    fn emit_state(&self, vm: &Vm, state: VmState, reason: &str) {
        self.emit(
            "vm.state",
            Some(vm),
            serde_json::json!({"id": vm.id, "state": state, "reason": reason}),
        );
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T> {
        self.store_calls.fetch_add(1, Ordering::Relaxed);
        let store = self.store.clone();
        Ok(blocking(move || f(&store)).await??)
    }

    /// A store call whose refusals carry service errors (checked mutations).
    async fn db_checked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.store_calls.fetch_add(1, Ordering::Relaxed);
        let store = self.store.clone();
        blocking(move || f(&store)).await?
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

    fn key_lock(&self, p: &ProjectName) -> Arc<tokio::sync::Mutex<()>> {
        self.key_locks
            .lock()
            .unwrap()
            .entry(p.clone())
            .or_default()
            .clone()
    }

    fn vm_slot(&self, id: VmId) -> Arc<VmSlot> {
        self.vm_slots.lock().unwrap().entry(id).or_default().clone()
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

    async fn is_member(&self, project: &ProjectName, user: &UserName) -> Result<bool> {
        let (p, u) = (project.clone(), user.clone());
        Ok(self
            .db(move |s| s.project(&p))
            .await?
            .is_some_and(|row| row.members.contains(&u)))
    }

    /// Records a failed attempt; a failure to record is logged (the attempt changed nothing).
    async fn audit_failure(
        &self,
        p: &Principal,
        action: &'static str,
        target: String,
        vm: Option<VmId>,
        e: &ServiceError,
    ) {
        let actor = p.clone();
        let outcome = e.outcome();
        let detail = e.to_string();
        let r = self
            .db(move |s| {
                let mut a = audit(&actor, action, target, vm);
                a.detail = detail;
                s.audit_outcome(&a, &outcome)
            })
            .await;
        if let Err(err) = r {
            tracing::warn!(action, error = %err, "cannot record a failed attempt");
        }
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

    /// Registers or updates a user; idempotent. A user holding roles or drives keeps their
    /// team (checked in the transaction that writes).
    pub async fn put_user(&self, p: &Principal, user: User) -> Result<Changed<User>> {
        self.check(p, &Action::Admin(AdminAction::ManageUsers), "")?;
        if user.name.is_reserved() {
            return Err(ServiceError::Invalid(format!(
                "The name {} is reserved for the daemon itself",
                user.name
            )));
        }
        let actor = p.clone();
        let u = user.clone();
        let change = self
            .db(move |s| s.put_user(&audit(&actor, "user.put", u.name.to_string(), None), &u))
            .await
            .map_err(|e| holdings_conflict(e, "change the team of"))?;
        Ok(Changed {
            change,
            object: user,
        })
    }

    /// Removes a user; idempotent. A user holding roles or drives is refused.
    pub async fn delete_user(&self, p: &Principal, name: UserName) -> Result<Change> {
        self.check(p, &Action::Admin(AdminAction::ManageUsers), "")?;
        let actor = p.clone();
        self.db(move |s| {
            s.delete_user(&audit(&actor, "user.delete", name.to_string(), None), &name)
        })
        .await
        .map_err(|e| holdings_conflict(e, "delete"))
    }
}

/// The refusal of a principal that is neither registered nor an admin.
pub fn unregistered(name: &UserName) -> ServiceError {
    ServiceError::Denied(DenialMsg {
        denial: Denial::Unregistered,
        message: format!("{name} is not a registered vmwarden user"),
    })
}

impl Service {
    /// Whether `p` may receive `ev`: the same visibility rules as the objects it names (a
    /// drive event only for the drive's owners; to a user of the VM its drives do not
    /// exist), decided now, so a share or an unshare applies to the next event.
    pub async fn may_see(&self, p: &Principal, ev: &Event) -> bool {
        if let Some(audience) = &ev.audience {
            return audience.contains(&p.name);
        }
        if let Some(vm) = ev.vm {
            if self.vm(p, vm).await.is_err() {
                return false;
            }
            return match ev.drive {
                Some(d) => self.drive(p, d).await.is_ok(),
                None => true,
            };
        }
        if let Some(project) = &ev.project {
            return self
                .projects(p)
                .await
                .map(|ps| ps.iter().any(|x| &x.name == project))
                .unwrap_or(false);
        }
        p.admin
    }
}

fn holdings_conflict(e: ServiceError, what: &str) -> ServiceError {
    match e {
        ServiceError::Store(StoreError::Holdings {
            user,
            roles,
            drives,
        }) => conflict(
            "user_has_roles",
            format!(
                "Cannot {what} user {user}: they hold {roles} VM roles and {drives} drives; unshare and hand them over first"
            ),
        ),
        e => e,
    }
}

mod lifecycle;
mod projects;
mod resources;

pub use lifecycle::StopStarted;

#[cfg(test)]
mod tests;
