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
    Drive, DriveId, DriveName, IdlePolicy, ObjectRef, ProjectName, Role, SecretBytes, StorageId,
    TeamName, User, UserName, Vm, VmId, VmName, VmState,
};
use crate::policy::{
    self, Action, AdminAction, Decision, DriveFacts, ShareHalf, TargetFacts, VmAction, VmFacts,
};
use crate::store::{AuditCtx, MemberRemoval, ProjectRow, Refusal, RoleFacts, Store};

// What the API needs from the layers below, re-exported so that `api` depends on `service`
// alone: the error types its one status mapping looks into, and the principal and filters.
pub use crate::hypervisor::HypervisorError;
pub use crate::keys::{KeyError, LockStatus};
pub use crate::policy::{Denial, Hidden, Principal};
pub use crate::store::{AuditEntry, AuditFilter, Change, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

use drives::prepare_drives_dir;
use errors::{conflict, deny, holdings_conflict, role_denial, stopping_conflict};
use vms::drive_fits;

/// The least memory a VM may have (the upper bounds are the host's, in `[limits]`).
pub const MIN_MEMORY_MIB: u64 = 16;

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
    /// Fleet hosts without a heartbeat for `host_dead_after`, as of the last heartbeat.
    down_hosts: Mutex<HashSet<String>>,
    /// This agent's host identity and what it opened (fleet only).
    sealed: Option<Arc<seal::FleetKeys>>,
    /// One recovery from a fence at a time (the heartbeat and the reconcile both look).
    fence_recovery: tokio::sync::Mutex<()>,
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

fn audit(p: &Principal, action: AuditAction, target: String, vm: Option<VmId>) -> AuditCtx<'_> {
    AuditCtx {
        actor: p.name.as_str(),
        action: action.as_str(),
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
            down_hosts: Mutex::new(HashSet::new()),
            sealed: None,
            fence_recovery: tokio::sync::Mutex::new(()),
        }
    }

    /// Refuses to act on a VM that another host of the fleet holds: only its agent may
    /// (`vm_running_elsewhere`, naming the host).
    pub(super) fn held_here(&self, vm: &Vm) -> Result<()> {
        match &vm.host {
            Some(h) if !self.store.holds(Some(h)) && vm.state != VmState::Stopped => {
                Err(ServiceError::Store(StoreError::Elsewhere(h.clone())))
            }
            _ => Ok(()),
        }
    }

    /// Whether this agent's host holds `vm` (or nobody does: a stopped VM, or one a
    /// single-host store recorded before fleets existed).
    pub(super) fn is_mine(&self, vm: &Vm) -> bool {
        self.store.holds(vm.host.as_deref())
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

    /// Records a failed attempt; a failure to record is logged (the attempt changed nothing).
    /// Records a refusal `denied:<code>` of `e` in its own transaction, then hands `e` back
    /// for the caller to return (a rule of the fleet or of the key state said no).
    async fn refuse(
        &self,
        p: &Principal,
        action: AuditAction,
        target: String,
        e: ServiceError,
    ) -> ServiceError {
        let (actor, outcome) = (p.clone(), format!("denied:{}", e.code()));
        match self
            .db(move |s| s.audit_outcome(&audit(&actor, action, target, None), &outcome))
            .await
        {
            Ok(()) => e,
            Err(err) => err,
        }
    }

    async fn audit_failure(
        &self,
        p: &Principal,
        action: AuditAction,
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
            tracing::warn!(action = action.as_str(), error = %err, "cannot record a failed attempt");
        }
    }
}

/// Enums of stable strings: each variant renders to exactly one code, and `ALL` lists them
/// so a test can pin every rendering.
macro_rules! codes {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every variant.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant of a stable spelling.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

codes! {
    /// What an audit row records.
    AuditAction {
        /// `PUT /v1/users/{name}`.
        UserPut = "user.put",
        /// `DELETE /v1/users/{name}`.
        UserDelete = "user.delete",
        /// `POST /v1/projects`.
        ProjectCreate = "project.create",
        /// The first share pair reached its client.
        ProjectDelivered = "project.delivered",
        /// A project whose shares never reached a client was removed.
        ProjectCreateUndone = "project.create_undone",
        /// `DELETE /v1/projects/{p}`.
        ProjectDelete = "project.delete",
        /// `PUT /v1/projects/{p}/members/{u}`.
        ProjectMemberAdd = "project.member_add",
        /// `DELETE /v1/projects/{p}/members/{u}`.
        ProjectMemberRemove = "project.member_remove",
        /// One half of an unlock.
        ProjectUnlock = "project.unlock",
        /// `POST /v1/projects/{p}/lock`.
        ProjectLock = "project.lock",
        /// A re-key, staged until its pair is delivered.
        ProjectResplit = "project.resplit",
        /// The re-keyed pair reached its client.
        ProjectResplitDelivered = "project.resplit_delivered",
        /// A re-key whose pair never reached a client was dropped.
        ProjectResplitUndone = "project.resplit_undone",
        /// `POST /v1/drives`.
        DriveCreate = "drive.create",
        /// `DELETE /v1/drives/{id}`.
        DriveDelete = "drive.delete",
        /// `PUT /v1/vms/{id}/drives/{drive}`.
        DriveAttach = "drive.attach",
        /// A hot-plug failed after the drive was claimed; the claim was given back.
        DriveAttachUndone = "drive.attach_undone",
        /// `DELETE /v1/vms/{id}/drives/{drive}`.
        DriveDetach = "drive.detach",
        /// `POST /v1/vms`.
        VmCreate = "vm.create",
        /// `PATCH /v1/vms/{id}`.
        VmUpdate = "vm.update",
        /// `DELETE /v1/vms/{id}`.
        VmDelete = "vm.delete",
        /// `PUT /v1/vms/{id}/members/{user}`.
        VmShare = "vm.share",
        /// `DELETE /v1/vms/{id}/members/{user}`.
        VmUnshare = "vm.unshare",
        /// `POST /v1/vms/{id}/start`.
        VmStart = "vm.start",
        /// `POST /v1/vms/{id}/stop`.
        VmStop = "vm.stop",
        /// `POST /v1/vms/{id}/keepalive`.
        VmKeepalive = "vm.keepalive",
        /// A state the daemon observed (libvirt events, reconciliation).
        VmState = "vm.state",
        /// An idle shutdown.
        VmIdleShutdown = "vm.idle_shutdown",
        /// `POST /v1/host/vms/{id}/stop`.
        HostStop = "host.stop",
        /// `POST /v1/fleet/hosts/{h}/enroll`.
        HostEnroll = "host.enroll",
        /// `DELETE /v1/fleet/hosts/{h}/enroll`.
        HostUnenroll = "host.unenroll",
        /// `POST /v1/fleet/hosts/{h}/fence`.
        HostFence = "host.fence",
        /// A fenced host, back, destroyed a domain of a VM it no longer holds.
        HostFencedDestroyed = "host.fenced_destroyed",
    }
}

impl AuditAction {
    /// Rows about drives, which users of a VM never see.
    pub fn names_drive(self) -> bool {
        self.as_str().starts_with("drive.")
    }
}

mod access;
mod admin;
mod background;
mod drives;
mod errors;
mod events;
mod fleet;
mod hotplug;
mod lifecycle;
mod projects;
mod seal;
mod sharing;
mod stop;
mod unlock;
mod views;
mod vms;

pub use errors::{unregistered, ConflictCode, DenialMsg, ServiceError};
pub use events::{Event, EventKind};
pub use stop::{StopCause, StopStarted};
pub use views::*;

#[cfg(test)]
mod tests;
