//! Stopping VMs: ACPI, then destroy after the timeout; the VM is `stopping` meanwhile, and
//! the stop runs in a task of its own whether or not anyone waits for it.

use super::*;

/// What `stop` tells its caller before the VM is stopped (`wait: false`).
#[derive(Debug)]
pub enum StopStarted {
    /// The VM was not running; nothing happened.
    AlreadyStopped,
    /// The stop runs (state `stopping`).
    Stopping,
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

    pub(super) fn action(self) -> AuditAction {
        match self {
            StopCause::Request => AuditAction::VmStop,
            StopCause::Admin => AuditAction::HostStop,
            StopCause::Idle => AuditAction::VmIdleShutdown,
        }
    }
}

impl Service {
    /// Stops the VM: ACPI shutdown, then destroy after `libvirt.shutdown_timeout` (or at once
    /// with `force`). With `wait`, answers once the VM is stopped; otherwise once the stop
    /// runs (state `stopping`), the rest continuing in the background. A stopped VM is left
    /// alone (no event, no audit row).
    pub async fn stop(
        self: &Arc<Self>,
        p: &Principal,
        id: VmId,
        force: bool,
        wait: bool,
    ) -> Result<(StopStarted, VmView)> {
        let vm = self.vm_checked(p, id, VmAction::Stop).await?;
        self.held_here(&vm)?;
        let started = self
            .stop_as(p.clone(), vm, force, wait, StopCause::Request)
            .await?;
        let vm = self.vm_checked(p, id, VmAction::View).await?;
        Ok((started, self.view(p, vm).await?))
    }

    /// Stops any VM for resource management, audited with reason `admin`.
    pub async fn host_stop(
        self: &Arc<Self>,
        p: &Principal,
        id: VmId,
        force: bool,
        wait: bool,
    ) -> Result<(StopStarted, HostVm)> {
        self.check(p, &Action::Admin(AdminAction::HostStop), "")?;
        let vm = self
            .db(move |s| s.vm(id))
            .await?
            .ok_or_else(|| deny(Denial::Hidden(Hidden::Vm), &id.to_string()))?;
        self.held_here(&vm)?;
        let started = self
            .stop_as(p.clone(), vm, force, wait, StopCause::Admin)
            .await?;
        let host = self
            .host_vms(p)
            .await?
            .into_iter()
            .find(|v| v.id == id)
            .ok_or_else(|| deny(Denial::Hidden(Hidden::Vm), &id.to_string()))?;
        Ok((started, host))
    }

    /// Runs a stop in a task of its own and waits for it to end (`wait`) or to begin.
    pub(super) async fn stop_as(
        self: &Arc<Self>,
        who: Principal,
        vm: Vm,
        force: bool,
        wait: bool,
        cause: StopCause,
    ) -> Result<StopStarted> {
        let slot = self.vm_slot(vm.id);
        if force {
            // A gentle stop already waiting for the guest destroys at once.
            slot.force.store(true, Ordering::Release);
        }
        let (began_tx, began) = oneshot::channel();
        let svc = self.clone();
        let task =
            tokio::spawn(
                async move { svc.stop_inner(&who, vm, force, cause, Some(began_tx)).await },
            );
        if wait {
            return task.await.map_err(|_| ServiceError::Task)?;
        }
        match began.await {
            Ok(s) => Ok(s),
            // The stop ended before it began (refused or failed): its result says why.
            Err(_) => task.await.map_err(|_| ServiceError::Task)?,
        }
    }

    pub(super) async fn stop_inner(
        &self,
        who: &Principal,
        vm: Vm,
        force: bool,
        cause: StopCause,
        began: Option<oneshot::Sender<StopStarted>>,
    ) -> Result<StopStarted> {
        let id = vm.id;
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
        // A forced stop that queued behind this lock has done its work; the flag is this
        // stop's only if it asked for it.
        slot.force.store(force, Ordering::Release);
        let is = self.hv(move |h| h.is_running(id)).await?;
        let now = self
            .db(move |s| s.vm(id))
            .await?
            .ok_or_else(|| deny(Denial::Hidden(Hidden::Vm), &id.to_string()))?;
        if !is {
            if now.state != VmState::Stopped {
                // Libvirt already knows it ended; record that under its own reason.
                let actor = system();
                self.db(move |s| {
                    let mut a = audit(&actor, AuditAction::VmState, id.to_string(), Some(id));
                    a.detail = "state=stopped reason=exited".into();
                    s.record_state(&a, id, VmState::Stopped, "exited", "ok")
                })
                .await?;
                self.emit_state(&now, VmState::Stopped, "exited");
            }
            if let Some(b) = began {
                let _ = b.send(StopStarted::AlreadyStopped);
            }
            return Ok(StopStarted::AlreadyStopped);
        }
        let reason = cause.as_str();
        self.db(move |s| {
            s.transition(
                id,
                &[
                    VmState::Running,
                    VmState::Stopped,
                    VmState::Starting,
                    VmState::Stopping,
                ],
                VmState::Stopping,
                reason,
            )
        })
        .await?
        .ok();
        self.emit_state(&vm, VmState::Stopping, reason);
        if let Some(b) = began {
            let _ = b.send(StopStarted::Stopping);
        }
        let timeout = match cause {
            StopCause::Idle => self.cfg.idle.shutdown_timeout,
            _ => self.cfg.libvirt.shutdown_timeout,
        };
        let s2 = slot.clone();
        let how = self
            .hv(move |h| {
                if !s2.force.load(Ordering::Acquire) {
                    match h.shutdown(id) {
                        Ok(()) => {}
                        Err(HypervisorError::NoDomain) => return Ok("acpi"),
                        Err(e) => return Err(e),
                    }
                    let deadline = Instant::now() + timeout;
                    while Instant::now() < deadline && !s2.force.load(Ordering::Acquire) {
                        if !h.is_running(id)? {
                            return Ok("acpi");
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                match h.destroy(id) {
                    Ok(()) => Ok("destroy"),
                    Err(HypervisorError::NoDomain) => Ok("acpi"),
                    Err(e) => Err(e),
                }
            })
            .await;
        slot.force.store(false, Ordering::Release);
        let actor = who.clone();
        let how = match how {
            Ok(h) => h,
            Err(e) => {
                // The stop did not finish: the VM runs on, and the record says so.
                let detail = e.to_string();
                let outcome = e.outcome();
                self.db(move |s| {
                    let mut a = audit(&actor, cause.action(), id.to_string(), Some(id));
                    a.detail = detail;
                    s.record_state(&a, id, VmState::Running, "stop_failed", &outcome)
                })
                .await?;
                self.emit_state(&vm, VmState::Running, "stop_failed");
                return Err(e);
            }
        };
        self.db(move |s| {
            let mut a = audit(&actor, cause.action(), id.to_string(), Some(id));
            a.detail = format!("reason={reason} via={how}");
            s.record_state(&a, id, VmState::Stopped, reason, "ok")
        })
        .await?;
        self.idle.lock().unwrap().forget(id);
        self.emit(
            EventKind::VmState,
            Some(&vm),
            serde_json::json!({"id": id, "state": VmState::Stopped, "reason": reason, "via": how}),
        );
        Ok(StopStarted::Stopping)
    }
}
