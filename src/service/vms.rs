//! VM configurations: creation, views, updates, deletion.

use super::*;

impl Service {
    pub(super) async fn view(&self, p: &Principal, vm: Vm) -> Result<VmView> {
        let idle_status = (vm.state == VmState::Running).then(|| self.idle_status(&vm));
        let role = vm.role_of(&p.name).unwrap_or(Role::User);
        let drives = if role == Role::Owner {
            let mut out = vec![];
            for d in vm.drives.clone() {
                if let Some(row) = self.db(move |s| s.drive(d)).await? {
                    out.push(row.drive.into());
                }
            }
            Some(out)
        } else {
            None
        };
        Ok(VmView::of(self.shown(vm), role, drives, idle_status))
    }

    pub(super) fn check_size(&self, vcpus: u32, memory_mib: u64) -> Result<()> {
        self.check_vcpus(vcpus)?;
        self.check_memory(memory_mib)
    }

    fn check_vcpus(&self, vcpus: u32) -> Result<()> {
        let max = self.cfg.limits.max_vcpus;
        if vcpus == 0 || vcpus > max {
            return Err(ServiceError::Invalid(format!(
                "Field vcpus must be between 1 and {max}"
            )));
        }
        Ok(())
    }

    fn check_memory(&self, memory_mib: u64) -> Result<()> {
        let max = self.cfg.limits.max_memory_mib;
        if !(MIN_MEMORY_MIB..=max).contains(&memory_mib) {
            return Err(ServiceError::Invalid(format!(
                "Field memory_mib must be between {MIN_MEMORY_MIB} and {max}"
            )));
        }
        Ok(())
    }

    pub(super) fn check_idle(&self, idle: &IdlePolicy) -> Result<()> {
        if let Some(after) = idle.after {
            let min = self.cfg.idle.sample_interval * 2;
            // The bounds are the host's, not the document's: a duration the schema accepts may
            // still be outside them, which is a conflict with this host (409), not bad input.
            if after > self.cfg.idle.max_after || after < min {
                return Err(conflict(
                    ConflictCode::IdleOutOfBounds,
                    format!(
                        "Field idle.after must be between {} (two samples) and {}",
                        crate::model::format_api_duration(min),
                        crate::model::format_api_duration(self.cfg.idle.max_after)
                    ),
                ));
            }
        }
        if idle.enabled == Some(false) && !self.cfg.idle.owners_may_disable {
            return Err(conflict(
                ConflictCode::IdleRequired,
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
        let f = self.project_facts(p, &req.project).await?;
        let action = Action::CreateIn {
            project_member: f.member,
        };
        f.gate(self, p, &action)?;
        self.check_size(req.vcpus, req.memory_mib)?;
        let idle = req.idle.unwrap_or_default();
        self.check_idle(&idle)?;
        let Some(team) = p.team.clone() else {
            return Err(conflict(
                ConflictCode::NoTeam,
                "Register with a team before creating VMs".into(),
            ));
        };
        // One drive named twice (by name and by id, say) is attached once.
        let mut drives = req.drives;
        let mut seen = std::collections::HashSet::new();
        drives.retain(|d| seen.insert(*d));
        for d in &drives {
            let row = self.drive_for(p, *d).await?;
            drive_fits(&row.drive, &req.project, None)?;
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
            drives,
            idle,
            state: VmState::Stopped,
            state_reason: "created".into(),
            host: None,
        };
        let actor = p.clone();
        let v2 = vm.clone();
        self.db(move |s| {
            s.create_vm(
                &audit(
                    &actor,
                    AuditAction::VmCreate,
                    v2.id.to_string(),
                    Some(v2.id),
                ),
                &v2,
            )
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Attached(_)) => conflict(
                ConflictCode::DriveAttached,
                "A listed drive was attached elsewhere meanwhile".into(),
            ),
            e => e,
        })?;
        self.emit(
            EventKind::VmCreated,
            Some(&vm),
            serde_json::json!({"id": vm.id, "name": vm.name}),
        );
        self.view(p, vm).await
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
            out.push(VmView::of(self.shown(vm), role, drives, None));
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
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
        let vm = self.vm_checked(p, id, VmAction::Update).await?;
        // Only what the patch sets is judged: a VM made before the host lowered its limits
        // keeps its size and policy until its owner changes them.
        if let Some(v) = patch.vcpus {
            self.check_vcpus(v)?;
        }
        if let Some(m) = patch.memory_mib {
            self.check_memory(m)?;
        }
        if let Some(idle) = &patch.idle {
            self.check_idle(idle)?;
        }
        let vcpus = patch.vcpus.unwrap_or(vm.vcpus);
        let memory = patch.memory_mib.unwrap_or(vm.memory_mib);
        let idle = patch.idle.unwrap_or(vm.idle.clone());
        let actor = p.clone();
        let i2 = idle.clone();
        let change = self
            .db(move |s| {
                s.update_vm(
                    &audit(&actor, AuditAction::VmUpdate, id.to_string(), Some(id)),
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
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
        let vm = self.vm_checked(p, id, VmAction::Delete).await?;
        if vm.state != VmState::Stopped || self.hv(move |h| h.is_running(id)).await? {
            return Err(conflict(
                ConflictCode::VmRunning,
                format!("VM {id} is running; stop it first"),
            ));
        }
        let actor = p.clone();
        self.db(move |s| {
            s.delete_vm(
                &audit(&actor, AuditAction::VmDelete, id.to_string(), Some(id)),
                id,
            )
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Changed(m)) => conflict(ConflictCode::VmRunning, m),
            e => e,
        })?;
        let members = self
            .project_row(p, &vm.project)
            .await
            .map(|r| r.members)
            .unwrap_or_default();
        self.send(Event {
            kind: EventKind::VmDeleted,
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
        self.vm_slots.lock().unwrap().remove(&id);
        Ok(())
    }
}
pub(super) fn drive_fits(d: &Drive, project: &ProjectName, vm: Option<VmId>) -> Result<()> {
    if d.project != *project {
        return Err(conflict(
            ConflictCode::ProjectMismatch,
            format!("Drive {} belongs to another project", d.id),
        ));
    }
    match d.attached_to {
        Some(other) if Some(other) == vm => Ok(()),
        Some(_) => Err(conflict(
            ConflictCode::DriveAttached,
            format!("Drive {} is attached to another VM; detach it first", d.id),
        )),
        None => Ok(()),
    }
}
