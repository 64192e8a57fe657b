//! Running VMs: start, stop, keepalive, hot attach and detach; and the daemon's own work:
//! recovery at start-up, reconciliation with libvirt, lifecycle events, idle sweeps.

use super::resources::{drive_fits, prepare_drives_dir};
use super::*;

/// What `stop` tells its caller before the VM is stopped (`wait: false`).
#[derive(Debug)]
pub enum StopStarted {
    /// The VM was not running; nothing happened.
    AlreadyStopped,
    /// The stop runs (state `stopping`).
    Stopping,
}

impl Service {
    fn unwrap_disks(&self, vm: &Vm, drives: Vec<crate::store::DriveRow>) -> Result<Vec<DiskSpec>> {
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
        let r = match self.prepare_launch(&vm).await {
            Ok(disks) => self.launch(p, &vm, disks).await,
            Err(e) => {
                self.audit_failure(p, "vm.start", id.to_string(), Some(id), &e)
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
    async fn prepare_launch(&self, vm: &Vm) -> Result<Vec<DiskSpec>> {
        let id = vm.id;
        if vm.drives.is_empty() {
            return Err(conflict(
                "no_drive",
                format!("VM {id} has no drive; an owner must attach one before it can start"),
            ));
        }
        if self.hv(move |h| h.is_running(id)).await? {
            return Err(conflict(
                "vm_running",
                format!("VM {id} is already running"),
            ));
        }
        let mut drives = vec![];
        for d in vm.drives.clone() {
            if let Some(row) = self.db(move |s| s.drive(d)).await? {
                drives.push(row);
            }
        }
        self.unwrap_disks(vm, drives)
    }

    /// Creates the domain; the VM is `starting` meanwhile, and the outcome is recorded with
    /// its audit row whatever it is.
    async fn launch(&self, p: &Principal, vm: &Vm, disks: Vec<DiskSpec>) -> Result<()> {
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
                    "vm_running",
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
            let mut a = audit(&actor, "vm.start", id.to_string(), Some(id));
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
    async fn running_after_outage(&self, id: VmId) -> Option<bool> {
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
    async fn stop_as(
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

    async fn stop_inner(
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
                    let mut a = audit(&actor, "vm.state", id.to_string(), Some(id));
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
            "vm.state",
            Some(&vm),
            serde_json::json!({"id": id, "state": VmState::Stopped, "reason": reason, "via": how}),
        );
        Ok(StopStarted::Stopping)
    }

    /// Restarts the idle clock (idle shutdown itself is the `idle` module's). Recorded
    /// first, applied after.
    pub async fn keepalive(&self, p: &Principal, id: VmId) -> Result<VmView> {
        let vm = self.vm_checked(p, id, VmAction::Keepalive).await?;
        let actor = p.clone();
        self.db(move |s| {
            s.audit_outcome(
                &audit(&actor, "vm.keepalive", id.to_string(), Some(id)),
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

    // ----- drives on VMs -----

    /// Attaches a drive the caller owns to a VM the caller owns (hot when running).
    pub async fn attach(&self, p: &Principal, id: VmId, drive: DriveId) -> Result<Changed<VmView>> {
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
        let vm = self
            .vm_checked_for(p, id, VmAction::Attach, Some(drive))
            .await?;
        let row = self.drive_for(p, drive).await?;
        let d = row.drive.clone();
        drive_fits(&d, &vm.project, Some(id))?;
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
            let mut a = audit(&actor, "drive.attach", drive.to_string(), Some(id));
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
            ServiceError::Store(StoreError::Attached(_)) => conflict(
                "drive_attached",
                format!("Drive {drive} was attached elsewhere meanwhile"),
            ),
            e => e,
        })?;
        let hot = async {
            if self.hv(move |h| h.is_running(id)).await? {
                let disks = self.unwrap_disks(&vm, vec![row])?;
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
                    &audit(&actor, "drive.attach_undone", drive.to_string(), Some(id)),
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
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
        let vm = self
            .vm_checked_for(p, id, VmAction::Detach, Some(drive))
            .await?;
        let d = self.drive_for(p, drive).await?.drive;
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
                &audit(&actor, "drive.detach", drive.to_string(), Some(id)),
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

    // ----- idle -----

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

    pub(super) fn idle_status(&self, vm: &Vm) -> IdleStatus {
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

    /// Idle shutdowns since start.
    pub fn idle_shutdowns(&self) -> u64 {
        self.idle_shutdowns.load(Ordering::Relaxed)
    }

    /// One idle sweep: one bulk-stats call for every domain, one decision per running VM.
    /// Warnings become events; shutdowns run in the background (ACPI, then destroy after
    /// `idle.shutdown_timeout`) and are recorded with reason `idle`. The tracker ends an idle
    /// period with exactly one shutdown.
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
                    self.idle_shutdowns.fetch_add(1, Ordering::Relaxed);
                    self.emit("vm.idle_shutdown", Some(vm), serde_json::json!({"id": id}));
                    let (svc, vm) = (self.clone(), vm.clone());
                    tokio::spawn(async move {
                        if let Err(e) = svc
                            .stop_inner(&system(), vm, false, StopCause::Idle, None)
                            .await
                        {
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

    // ----- background -----

    /// Start-up recovery, before the socket serves: projects whose shares never reached
    /// anyone are removed, and image files without a drive row (a crash between creating a
    /// file and recording it, or between forgetting a drive and removing its file) are
    /// removed and reported. Returns what was removed, for the log.
    pub async fn recover(&self) -> Result<Vec<String>> {
        let mut report = vec![];
        let undelivered: Vec<ProjectName> = self
            .db(|s| s.projects())
            .await?
            .into_iter()
            .filter(|p| !p.delivered)
            .map(|p| p.name)
            .collect();
        for name in undelivered {
            let who = system();
            let n2 = name.clone();
            if self
                .db(move |s| {
                    let mut a = audit(&who, "project.create_undone", n2.to_string(), None);
                    a.detail = "reason=undelivered".into();
                    s.undo_project(&a, &n2)
                })
                .await?
            {
                report.push(format!(
                    "project {name} (its shares never reached a client)"
                ));
            }
        }
        let dir = self.cfg.drives_dir();
        if dir.exists() {
            let d2 = dir.clone();
            blocking(move || prepare_drives_dir(&d2)).await??;
        }
        let (rows, intents) = self.db(|s| s.storages()).await?;
        let rows: std::collections::HashSet<StorageId> = rows.into_iter().collect();
        let d2 = dir.clone();
        let files: Vec<std::path::PathBuf> = blocking(move || {
            std::fs::read_dir(&d2)
                .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default()
        })
        .await?;
        for path in files {
            let stem = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".qcow2"))
                .and_then(|s| s.parse::<StorageId>().ok());
            match stem {
                Some(s) if rows.contains(&s) => {}
                Some(s) => {
                    tracing::warn!(file = %path.display(), "removing an image file that no drive names");
                    self.remove_image(s).await;
                    report.push(format!("image {}", path.display()));
                }
                None => {
                    tracing::warn!(file = %path.display(), "unknown file in the drives folder; left alone");
                }
            }
        }
        for s in intents {
            if !rows.contains(&s) {
                self.remove_image(s).await;
            }
        }
        // A `starting` or `stopping` left by the dead daemon is settled before anyone asks
        // (bounded: a hung libvirtd delays the start-up, it does not stop it; the periodic
        // reconcile catches up).
        match tokio::time::timeout(Duration::from_secs(5), self.reconcile()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "start-up reconcile skipped"),
            Err(_) => tracing::warn!("start-up reconcile timed out"),
        }
        Ok(report)
    }

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
    /// is stopped, and a `starting` or `stopping` left by an operation that no longer runs is
    /// settled. Domains vmwarden does not know are reported, never touched.
    pub async fn reconcile(&self) -> Result<()> {
        let domains = self.hv(|h| h.list()).await?;
        let vms = self.db(|s| s.vms()).await?;
        let running: std::collections::HashSet<VmId> =
            domains.iter().filter_map(|d| d.vm).collect();
        self.report_foreign(&domains, &vms);
        // Locks nobody holds are dropped, so ids named in requests do not accumulate.
        self.vm_slots
            .lock()
            .unwrap()
            .retain(|_, l| Arc::strong_count(l) > 1);
        self.project_locks
            .lock()
            .unwrap()
            .retain(|_, l| Arc::strong_count(l) > 1);
        self.key_locks
            .lock()
            .unwrap()
            .retain(|_, l| Arc::strong_count(l) > 1);
        for vm in vms {
            let is = running.contains(&vm.id);
            let reason = if is { "found_running" } else { "exited" };
            if vm.state.is_transitional() || (vm.state == VmState::Running) != is {
                self.settle(vm.id, reason).await?;
            }
        }
        Ok(())
    }

    /// Records what libvirt says about one VM, under the VM's lock and after asking libvirt
    /// again: a stop or start in flight holds the lock and records its own reason, and this
    /// must not overwrite it with a stale observation.
    pub async fn settle(&self, id: VmId, reason: &'static str) -> Result<()> {
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
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
        let actor = system();
        self.db(move |s| {
            let mut a = audit(&actor, "vm.state", id.to_string(), Some(id));
            a.detail = format!("state={} reason={reason}", state.as_str());
            s.record_state(&a, id, state, reason, "ok")
        })
        .await?;
        self.emit_state(&vm, state, reason);
        Ok(())
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
}

fn stopping_conflict(id: VmId) -> ServiceError {
    conflict(
        "vm_stopping",
        format!("VM {id} is stopping; start it again once it has stopped"),
    )
}
