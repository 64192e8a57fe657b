//! What operations answer and take: the views of users, projects, drives and VMs, and
//! the inputs of the larger operations.

use super::*;

/// `GET /v1/health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// libvirt's version text, or `unavailable`.
    pub hypervisor: String,
    /// vmwarden's version.
    pub version: &'static str,
    /// Why the status is `degraded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A registered user as the registry shows them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    /// The Unix user name.
    pub name: UserName,
    /// Their team.
    pub team: TeamName,
    /// Whether they are an admin: by the registry's flag or by `[access] admins`.
    pub admin: bool,
    /// The registry's own admin flag (what `PUT /v1/users/{name}` sets).
    pub admin_in_registry: bool,
}

/// A stretch of a VM's serial console log (`GET /v1/vms/{id}/log`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsoleLog {
    /// Where this stretch starts, in bytes from the start of the log.
    pub offset: u64,
    /// Where the next read starts (`offset` of the next call to follow the log).
    pub next: u64,
    /// The text (invalid UTF-8 replaced).
    pub text: String,
}

/// `GET /v1/me`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    pub(super) fn new() -> (Self, oneshot::Receiver<()>) {
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// The fleet host holding it while it is not stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
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
    pub(super) fn of(
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
            host: vm.host,
            role,
            idle: vm.idle,
            drives,
            idle_status,
        }
    }
}

/// Where a running VM's idle clock stands.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IdleStatus {
    /// Whether idle shutdown applies to this VM.
    pub enabled: bool,
    /// The idle period in force.
    #[serde(with = "crate::model::api_duration")]
    #[schema(value_type = String, example = "2h")]
    pub after: Duration,
    /// Idle since (ms since the epoch), if idle.
    pub idle_since_ms: Option<i64>,
    /// Planned shutdown (ms since the epoch), if idle.
    pub shutdown_at_ms: Option<i64>,
}

/// `GET /v1/host/vms` row: no drive details.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    /// The fleet host holding it while it is not stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `GET /v1/fleet/hosts` row.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetHost {
    /// The host's `[fleet] host`.
    pub name: String,
    /// The vmwarden version its agent runs.
    pub version: String,
    /// `up`, or `down` after `host_dead_after` without a heartbeat.
    pub state: HostState,
    /// Its last heartbeat (ms since the epoch, the database's clock).
    pub last_seen_ms: i64,
    /// When its agent started (ms since the epoch).
    pub started_ms: i64,
    /// VMs it holds.
    pub vms: u32,
    /// The fingerprint of the host key its agent published (what an admin compares before
    /// enrolling it); absent with SQLite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Whether an admin enrolled it: only enrolled hosts receive key material.
    pub enrolled: bool,
}

/// `POST /v1/fleet/hosts/{h}/fence`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FencedHost {
    /// The host, now fenced.
    pub host: FleetHost,
    /// The VMs it held, now stopped and free to start on another host.
    pub released: Vec<VmId>,
}

/// Whether a host's agent is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Heartbeats arrive.
    Up,
    /// No heartbeat for `host_dead_after`.
    Down,
    /// An admin fenced it (stated it is powered off); its VMs were released.
    Fenced,
}

/// `GET /v1/vms/{id}/members`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Members {
    /// Owners ("Managers").
    pub owners: Vec<UserName>,
    /// Users.
    pub users: Vec<UserName>,
}

/// Answer of a mutation that may have been a no-op.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Changed<T: Serialize + utoipa::ToSchema> {
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
