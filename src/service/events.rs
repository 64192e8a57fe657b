//! Events for `GET /v1/events` subscribers, and who may see each one.

use super::*;

codes! {
    /// What an event reports (the `event:` line of the stream).
    EventKind {
        /// A VM changed state (`starting`, `running`, `stopping`, `stopped`).
        VmState = "vm.state",
        /// A VM was created.
        VmCreated = "vm.created",
        /// A VM was deleted.
        VmDeleted = "vm.deleted",
        /// A role was granted or changed.
        VmShared = "vm.shared",
        /// A role was removed.
        VmUnshared = "vm.unshared",
        /// A VM entered its idle warning.
        VmIdleWarning = "vm.idle_warning",
        /// A VM is shut down for inactivity.
        VmIdleShutdown = "vm.idle_shutdown",
        /// A drive was attached (owners of the drive only).
        DriveAttached = "drive.attached",
        /// A drive was detached (owners of the drive only).
        DriveDetached = "drive.detached",
        /// One half of a project's key waits for the other.
        ProjectUnlockPending = "project.unlock_pending",
        /// A project's key is in memory.
        ProjectUnlocked = "project.unlocked",
        /// A project's key was forgotten (lock or TTL).
        ProjectLocked = "project.locked",
        /// A member left a project.
        ProjectMemberRemoved = "project.member_removed",
        /// A project was deleted.
        ProjectDeleted = "project.deleted",
    }
}

/// A state-changing event for `GET /v1/events` subscribers (filtered per caller by the API).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
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

impl Service {
    /// Subscribes to events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// To this agent's subscribers, and to the other agents of a fleet.
    pub(super) fn send(&self, ev: Event) {
        self.publish(&ev);
        let _ = self.events.send(ev);
    }

    pub(super) fn emit(&self, kind: EventKind, vm: Option<&Vm>, data: serde_json::Value) {
        self.emit_drive(kind, vm, None, data);
    }

    pub(super) fn emit_project(
        &self,
        kind: EventKind,
        project: ProjectName,
        data: serde_json::Value,
    ) {
        self.send(Event {
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
    pub(super) fn emit_drive(
        &self,
        kind: EventKind,
        vm: Option<&Vm>,
        drive: Option<DriveId>,
        data: serde_json::Value,
    ) {
        self.send(Event {
            kind,
            vm: vm.map(|v| v.id),
            project: vm.map(|v| v.project.clone()),
            drive,
            audience: None,
            data,
            at_ms: crate::store::now_ms(),
        });
    }

    pub(super) fn emit_state(&self, vm: &Vm, state: VmState, reason: &str) {
        self.emit(
            EventKind::VmState,
            Some(vm),
            serde_json::json!({"id": vm.id, "state": state, "reason": reason}),
        );
    }

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
