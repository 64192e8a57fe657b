//! The daemon's own work: recovery at start-up, reconciliation with libvirt, lifecycle
//! events, idle sweeps, key expiry.

use super::*;

impl Service {
    /// The host's idle defaults from `[idle]`.
    pub(super) fn idle_host(&self) -> idle::Effective {
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
            .filter(|v| v.state == VmState::Running && self.is_mine(v))
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
                        EventKind::VmIdleWarning,
                        Some(vm),
                        serde_json::json!({"id": id, "deadline_ms": at}),
                    );
                }
                idle::Decision::Shutdown => {
                    self.idle_shutdowns.fetch_add(1, Ordering::Relaxed);
                    self.emit(
                        EventKind::VmIdleShutdown,
                        Some(vm),
                        serde_json::json!({"id": id}),
                    );
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
                EventKind::ProjectLocked,
                project.clone(),
                serde_json::json!({"project": project, "reason": "ttl"}),
            );
        }
    }

    /// Start-up recovery, before the socket serves: projects whose shares never reached
    /// anyone are removed, and image files without a drive row (a crash between creating a
    /// file and recording it, or between forgetting a drive and removing its file) are
    /// removed and reported. Returns what was removed, for the log.
    pub async fn recover(&self) -> Result<Vec<String>> {
        let mut report = vec![];
        let undelivered = self.db(|s| s.undelivered_projects()).await?;
        for name in undelivered {
            let who = system();
            let n2 = name.clone();
            if self
                .db(move |s| {
                    let mut a = audit(&who, AuditAction::ProjectCreateUndone, n2.to_string(), None);
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
        // Files first, rows second: in a shared drives folder another agent may be creating
        // an image now, and its intent is committed before its file exists, so every file
        // listed here has its row or intent visible below.
        let d2 = dir.clone();
        let files: Vec<std::path::PathBuf> = blocking(move || {
            std::fs::read_dir(&d2)
                .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default()
        })
        .await?;
        let (rows, intents, theirs) = self.db(|s| s.storages()).await?;
        let mut rows: std::collections::HashSet<StorageId> = rows.into_iter().collect();
        // Images other hosts announced are left to them.
        rows.extend(theirs);
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
    pub(super) fn report_foreign(&self, domains: &[crate::hypervisor::DomainInfo], vms: &[Vm]) {
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
        // A fenced host first destroys what it runs for VMs released by the fence, or it
        // would adopt them again here.
        self.recover_from_fence().await?;
        let domains = self.hv(|h| h.list()).await?;
        let vms = self.db(|s| s.vms()).await?;
        // Domains another host's agent runs are its business (agents may share a libvirtd).
        let running: std::collections::HashSet<VmId> = domains
            .iter()
            .filter(|d| self.store.holds(d.host.as_deref()))
            .filter_map(|d| d.vm)
            .collect();
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
        for vm in vms.into_iter().filter(|v| self.is_mine(v)) {
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
        // Another host's VM is its agent's to settle (fleet agents may share a libvirtd in
        // tests, and always share the store).
        if !self.is_mine(&vm) {
            return Ok(());
        }
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
            let mut a = audit(&actor, AuditAction::VmState, id.to_string(), Some(id));
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
