//! Starting VMs: the launch from encrypted drives, and the keepalive of a running VM.

use super::*;

impl Service {
    pub(super) fn unwrap_disks(
        &self,
        vm: &Vm,
        drives: Vec<crate::store::DriveRow>,
    ) -> Result<Vec<DiskSpec>> {
        let now = Instant::now();
        self.keys
            .with_key(&vm.project, now, |k| {
                drives
                    .into_iter()
                    .map(|row| {
                        let d = row.drive;
                        let passphrase = keys::unwrap(k, &vm.project, &d.id.to_string(), &row.wrapped)
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
                            path: self.image_path(d.storage),
                            passphrase,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .map_err(|e| ServiceError::Locked(e.to_string()))?
    }

    /// Launches the VM from its encrypted drives. The VM is `starting` meanwhile; the
    /// answer, the recorded state and the audit row agree on how it ended.
    pub async fn start(&self, p: &Principal, id: VmId) -> Result<VmView> {
        // A stop in progress holds the VM's lock for up to its timeout: answer at once. A
        // `stopping` with the lock free is a leftover of a daemon that died mid-stop.
        let vm = self.vm_checked(p, id, VmAction::Start).await?;
        let slot = self.vm_slot(id);
        let _g = match slot.op.try_lock() {
            Ok(g) => g,
            Err(_) if vm.state == VmState::Stopping => return Err(stopping_conflict(id)),
            Err(_) => slot.op.lock().await,
        };
        let vm = self.vm_checked(p, id, VmAction::Start).await?;
        self.held_here(&vm)?;
        let r = match self.prepare_launch(&vm).await {
            Ok(disks) => self.launch(p, &vm, disks).await,
            Err(e) => {
                self.audit_failure(p, AuditAction::VmStart, id.to_string(), Some(id), &e)
                    .await;
                Err(e)
            }
        };
        let r = match (r, vm.role_of(&p.name)) {
            (Err(e), Some(Role::User)) => Err(self.scrub_drives(e, &vm)),
            (r, _) => r,
        };
        r?;
        let vm = self
            .db(move |s| s.vm(id))
            .await?
            .ok_or_else(|| deny(Denial::Hidden(Hidden::Vm), &id.to_string()))?;
        self.view(p, vm).await
    }

    /// What a launch needs before anything changes: drives, a stopped VM, the passphrases.
    pub(super) async fn prepare_launch(&self, vm: &Vm) -> Result<Vec<DiskSpec>> {
        let id = vm.id;
        if vm.drives.is_empty() {
            return Err(conflict(
                ConflictCode::NoDrive,
                format!("VM {id} has no drive; an owner must attach one before it can start"),
            ));
        }
        if self.hv(move |h| h.is_running(id)).await? {
            // Agents of a fleet may share a libvirtd (the tests do): a domain another agent
            // started since this request read the VM is that host's, as the store says.
            if let Some(now) = self.db(move |s| s.vm(id)).await? {
                self.held_here(&now)?;
            }
            return Err(conflict(
                ConflictCode::VmRunning,
                format!("VM {id} is already running"),
            ));
        }
        // Fleet: a re-key another agent promotes between this agent's look at its envelope
        // and its read of the drives changes both; one more look sees them agree.
        let mut again = self.is_sealing();
        loop {
            let mut drives = vec![];
            for d in vm.drives.clone() {
                if let Some(row) = self.db(move |s| s.drive(d)).await? {
                    drives.push(row);
                }
            }
            if !drives.is_empty() {
                let view = self.sync_keys(&vm.project).await?;
                self.must_be_enrolled(&view)?;
            }
            match self.unwrap_disks(vm, drives) {
                Err(ServiceError::SecretCorrupt(_)) if again => {
                    again = false;
                    self.sealed_at(&vm.project, None);
                }
                r => return r,
            }
        }
    }

    /// Creates the domain; the VM is `starting` meanwhile, and the outcome is recorded with
    /// its audit row whatever it is.
    pub(super) async fn launch(&self, p: &Principal, vm: &Vm, disks: Vec<DiskSpec>) -> Result<()> {
        let id = vm.id;
        let _shared = self.project_lock(&vm.project).read_owned().await;
        // Under the VM's lock no other operation runs: a `starting` or `stopping` found here
        // was left by a daemon that died, and libvirt just said no domain runs.
        let from = [VmState::Stopped, VmState::Starting, VmState::Stopping];
        match self
            .db(move |s| s.transition(id, &from, VmState::Starting, "start"))
            .await?
        {
            Ok(_) => {}
            Err(VmState::Stopping) => return Err(stopping_conflict(id)),
            Err(_) => {
                return Err(conflict(
                    ConflictCode::VmRunning,
                    format!("VM {id} is already running"),
                ))
            }
        }
        self.emit_state(vm, VmState::Starting, "start");
        let logs = self.cfg.logs_dir();
        let spec = DomainSpec {
            id,
            name: vm.name.clone(),
            project: vm.project.clone(),
            host: self.store.host().to_owned(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            disks,
            serial_log: logs.join(format!("{id}.serial.log")),
        };
        let launched = self
            .hv(move |h| {
                // libvirt opens serial logs itself, as root: private to the daemon.
                ensure_dir(&logs, 0o700).map_err(|e| HypervisorError::Failed(e.to_string()))?;
                h.launch(&spec)
            })
            .await;
        let running = match &launched {
            Ok(()) => Some(true),
            // The connection broke during the call: whether the domain exists is known only
            // once libvirt answers again.
            Err(ServiceError::Hypervisor(HypervisorError::Unavailable(_))) => {
                self.running_after_outage(id).await
            }
            Err(_) => Some(false),
        };
        let actor = p.clone();
        let (state, outcome, detail) = match (running, &launched) {
            (Some(true), _) => (VmState::Running, "ok".to_string(), String::new()),
            (Some(false), Err(e)) => (VmState::Stopped, e.outcome(), e.to_string()),
            (Some(false), Ok(())) => (
                VmState::Stopped,
                "failed:hypervisor_error".into(),
                "The domain ended at once".into(),
            ),
            (None, Err(e)) => (
                VmState::Stopped,
                e.outcome(),
                "libvirt did not answer; the next reconciliation records the domain if it runs"
                    .into(),
            ),
            (None, Ok(())) => unreachable!("a launch that returned Ok is known"),
        };
        let reason = if state == VmState::Running {
            "start"
        } else {
            "start_failed"
        };
        let o2 = outcome.clone();
        self.db(move |s| {
            let mut a = audit(&actor, AuditAction::VmStart, id.to_string(), Some(id));
            a.detail = detail;
            s.record_state(&a, id, state, reason, &o2)
        })
        .await?;
        self.emit_state(vm, state, reason);
        match (running, launched) {
            (Some(true), _) => Ok(()),
            (_, Err(e)) => Err(e),
            (_, Ok(())) => Err(ServiceError::Hypervisor(HypervisorError::Failed(
                "The domain ended at once".into(),
            ))),
        }
    }

    /// Whether a domain runs, asking libvirt until it answers (bounded); `None` if it never
    /// did.
    pub(super) async fn running_after_outage(&self, id: VmId) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + LAUNCH_OUTCOME_WAIT;
        loop {
            match self.hv(move |h| h.is_running(id)).await {
                Ok(r) => return Some(r),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(_) => return None,
            }
        }
    }

    /// A user of a VM never learns its drives: libvirt and QEMU messages name image paths,
    /// so those are replaced before the error reaches a user.
    pub(super) fn scrub_drives(&self, e: ServiceError, vm: &Vm) -> ServiceError {
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

    /// Restarts the idle clock (idle shutdown itself is the `idle` module's). Recorded
    /// first, applied after.
    pub async fn keepalive(&self, p: &Principal, id: VmId) -> Result<VmView> {
        let vm = self.vm_checked(p, id, VmAction::Keepalive).await?;
        self.held_here(&vm)?;
        let actor = p.clone();
        self.db(move |s| {
            s.audit_outcome(
                &audit(&actor, AuditAction::VmKeepalive, id.to_string(), Some(id)),
                "ok",
            )
        })
        .await?;
        self.idle
            .lock()
            .unwrap()
            .keepalive(id, tokio::time::Instant::now());
        self.view(p, vm).await
    }
}

/// The most a `GET /v1/vms/{id}/log` answer carries.
const LOG_STRETCH: u64 = 64 * 1024;

impl Service {
    /// A stretch of the VM's serial console log from `offset`, owners only (the console may
    /// show what is on the drives). A log shorter than `offset` (a new log since) is read
    /// from its start.
    pub async fn console_log(&self, p: &Principal, id: VmId, offset: u64) -> Result<ConsoleLog> {
        self.vm_checked(p, id, VmAction::Console).await?;
        let path = self.cfg.logs_dir().join(format!("{id}.serial.log"));
        tokio::task::spawn_blocking(move || read_stretch(&path, offset))
            .await
            .map_err(|_| ServiceError::Task)?
            .map_err(|e| {
                ServiceError::Hypervisor(HypervisorError::Failed(format!(
                    "Cannot read the serial log: {e}"
                )))
            })
    }
}

fn read_stretch(path: &std::path::Path, offset: u64) -> std::io::Result<ConsoleLog> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConsoleLog {
                offset: 0,
                next: 0,
                text: String::new(),
            })
        }
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let offset = if offset > len { 0 } else { offset };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(LOG_STRETCH).read_to_end(&mut buf)?;
    // A character cut at the end of the stretch is left for the next read.
    let keep = match std::str::from_utf8(&buf) {
        Ok(_) => buf.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => buf.len(),
    };
    buf.truncate(keep);
    Ok(ConsoleLog {
        offset,
        next: offset + buf.len() as u64,
        text: String::from_utf8_lossy(&buf).into_owned(),
    })
}
