//! Drives, VM configurations, sharing, the host inventory and the audit log.

use super::*;

impl Service {
    // ----- drives -----

    /// Creates a LUKS qcow2 image with a fresh passphrase wrapped under the project key.
    /// The image is announced before it exists and its row replaces the announcement, so a
    /// crash in between leaves a file the next start knows to remove.
    pub async fn create_drive(
        &self,
        p: &Principal,
        project: ProjectName,
        name: DriveName,
        size_mib: u64,
    ) -> Result<DriveView> {
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
            return Err(deny(Denial::Hidden(Hidden::Project), project.as_str()));
        }
        if size_mib == 0 || size_mib > MAX_DRIVE_MIB {
            return Err(ServiceError::Invalid(format!(
                "Field size_mib must be between 1 and {MAX_DRIVE_MIB}"
            )));
        }
        let _shared = self.project_lock(&project).read_owned().await;
        let id = DriveId::new_random();
        let passphrase = keys::new_passphrase();
        let (wrapped, next_wrapped) = self
            .keys
            .with_keys(&project, Instant::now(), |k, next| {
                let d = id.to_string();
                (
                    keys::wrap(k, &project, &d, &passphrase),
                    next.map(|n| keys::wrap(n, &project, &d, &passphrase)),
                )
            })
            .map_err(|e| ServiceError::Locked(e.to_string()))?;
        let drive = Drive {
            id,
            storage: StorageId::new_random(),
            name,
            project,
            size_mib,
            owners: vec![p.name.clone()],
            attached_to: None,
        };
        let storage = drive.storage;
        self.db(move |s| s.intend_image(storage)).await?;
        let path = self.image_path(storage);
        let (p2, dir) = (path.clone(), self.cfg.drives_dir());
        let hv = self.hv.clone();
        let created = blocking(move || {
            prepare_drives_dir(&dir)?;
            hv.create_image(&p2, size_mib, &passphrase)
        })
        .await
        .and_then(|r| r.map_err(ServiceError::from));
        if let Err(e) = created {
            let _ = self.db(move |s| s.drop_intent(storage)).await;
            return Err(e);
        }
        let actor = p.clone();
        let d2 = drive.clone();
        let res = self
            .db(move |s| {
                s.create_drive(
                    &audit(&actor, "drive.create", d2.id.to_string(), None),
                    &d2,
                    &wrapped,
                    next_wrapped.as_deref(),
                )
            })
            .await;
        if let Err(e) = res {
            self.remove_image(storage).await;
            return Err(match e {
                ServiceError::Store(StoreError::Missing("Project", p)) => {
                    deny(Denial::Hidden(Hidden::Project), &p)
                }
                e => e,
            });
        }
        Ok(drive.into())
    }

    /// Where a drive's image lives.
    pub fn image_path(&self, storage: StorageId) -> std::path::PathBuf {
        self.cfg.drives_dir().join(format!("{storage}.qcow2"))
    }

    /// Removes an image file and then its announcement; a failure leaves the announcement,
    /// so the next start retries.
    pub(super) async fn remove_image(&self, storage: StorageId) {
        let path = self.image_path(storage);
        let hv = self.hv.clone();
        match blocking(move || hv.remove_image(&path)).await {
            Ok(Ok(())) => {
                if let Err(e) = self.db(move |s| s.drop_intent(storage)).await {
                    tracing::warn!(error = %e, "image removed; its announcement stays until the next start");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot remove an image; retried at the next start")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove an image; retried at the next start")
            }
        }
    }

    pub(super) async fn drive_for(
        &self,
        p: &Principal,
        id: DriveId,
    ) -> Result<crate::store::DriveRow> {
        let row = self.db(move |s| s.drive(id)).await?;
        let Some(row) = row else {
            // A missing drive costs the same work as a hidden one: no answer time tells
            // them apart.
            let _ = self.is_member(&unseen_project(), &p.name).await?;
            return Err(deny(Denial::Hidden(Hidden::Drive), &id.to_string()));
        };
        let member = self.is_member(&row.drive.project, &p.name).await?;
        self.check(
            p,
            &Action::Drive(DriveFacts {
                project_member: member,
                owner: row.drive.owners.contains(&p.name),
            }),
            &id.to_string(),
        )?;
        Ok(row)
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
        Ok(self.drive_for(p, id).await?.drive.into())
    }

    /// Deletes a detached drive and its image.
    pub async fn delete_drive(&self, p: &Principal, id: DriveId) -> Result<()> {
        let row = self.drive_for(p, id).await?;
        if let Some(vm) = row.drive.attached_to {
            return Err(conflict(
                "drive_attached",
                format!("Drive {id} is attached to VM {vm}; detach it first"),
            ));
        }
        let actor = p.clone();
        let storage = self
            .db(move |s| s.delete_drive(&audit(&actor, "drive.delete", id.to_string(), None), id))
            .await
            .map_err(|e| match e {
                ServiceError::Store(StoreError::Attached(_)) => conflict(
                    "drive_attached",
                    format!("Drive {id} was attached meanwhile; detach it first"),
                ),
                ServiceError::Store(StoreError::Missing(..)) => {
                    deny(Denial::Hidden(Hidden::Drive), &id.to_string())
                }
                e => e,
            })?;
        self.remove_image(storage).await;
        Ok(())
    }

    // ----- VMs -----

    pub(super) async fn vm_facts(&self, p: &Principal, id: VmId) -> Result<(Vm, VmFacts)> {
        let vm = self.db(move |s| s.vm(id)).await?;
        let Some(vm) = vm else {
            // A missing VM costs the same work as a hidden one.
            let _ = self.is_member(&unseen_project(), &p.name).await?;
            return Err(deny(Denial::Hidden(Hidden::Vm), &id.to_string()));
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

    pub(super) async fn vm_checked(&self, p: &Principal, id: VmId, a: VmAction) -> Result<Vm> {
        self.vm_checked_for(p, id, a, None).await
    }

    /// As `vm_checked`, for drive operations: a hidden drive is named by its own id.
    pub(super) async fn vm_checked_for(
        &self,
        p: &Principal,
        id: VmId,
        a: VmAction,
        drive: Option<DriveId>,
    ) -> Result<Vm> {
        let (vm, facts) = self.vm_facts(p, id).await?;
        match policy::decide(p, &Action::Vm(a, facts)) {
            Decision::Allow => Ok(vm),
            Decision::Deny(d @ Denial::Hidden(Hidden::Drive)) => {
                Err(deny(d, &drive.map(|d| d.to_string()).unwrap_or_default()))
            }
            Decision::Deny(d) => Err(deny(d, &id.to_string())),
        }
    }

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
        Ok(VmView::of(vm, role, drives, idle_status))
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
            let min = self.cfg.idle.sample_interval * 2;
            if after > self.cfg.idle.max_after || after < min {
                return Err(ServiceError::Invalid(format!(
                    "Field idle.after must be between {} (two samples) and {}",
                    crate::config::format_duration(min),
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
            drives: req.drives,
            idle,
            state: VmState::Stopped,
            state_reason: "created".into(),
        };
        let actor = p.clone();
        let v2 = vm.clone();
        self.db(move |s| {
            s.create_vm(
                &audit(&actor, "vm.create", v2.id.to_string(), Some(v2.id)),
                &v2,
            )
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Attached(_)) => conflict(
                "drive_attached",
                "A listed drive was attached elsewhere meanwhile".into(),
            ),
            e => e,
        })?;
        self.emit(
            "vm.created",
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
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
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
                    &audit(&actor, "vm.update", id.to_string(), Some(id)),
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
                "vm_running",
                format!("VM {id} is running; stop it first"),
            ));
        }
        let actor = p.clone();
        self.db(move |s| s.delete_vm(&audit(&actor, "vm.delete", id.to_string(), Some(id)), id))
            .await
            .map_err(|e| match e {
                ServiceError::Store(StoreError::Changed(m)) => conflict("vm_running", m),
                e => e,
            })?;
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
        self.vm_slots.lock().unwrap().remove(&id);
        Ok(())
    }

    // ----- sharing -----

    /// Owners and users of a VM.
    pub async fn members(&self, p: &Principal, id: VmId) -> Result<Members> {
        let vm = self.vm_checked(p, id, VmAction::Members).await?;
        Ok(Members {
            owners: vm.owners,
            users: vm.users,
        })
    }

    /// Grants or changes a role (sharing rules 1-5, 7), judged inside the transaction that
    /// writes it.
    pub async fn share(
        &self,
        p: &Principal,
        id: VmId,
        target: UserName,
        role: Role,
        confirm: bool,
    ) -> Result<Changed<Members>> {
        let max_owners = self.cfg.sharing.max_owners;
        self.set_role(p, id, target, Some(role), "vm.share", move |vm, t| {
            Action::Share {
                vm,
                target: t,
                role,
                confirm,
                max_owners,
            }
        })
        .await
    }

    /// Removes a role (rule 6); idempotent.
    pub async fn unshare(
        &self,
        p: &Principal,
        id: VmId,
        target: UserName,
    ) -> Result<Changed<Members>> {
        self.set_role(p, id, target, None, "vm.unshare", |vm, t| Action::Unshare {
            vm,
            target: t,
        })
        .await
    }

    /// The members tail of share and unshare: judge in the transaction, write, announce.
    async fn set_role(
        &self,
        p: &Principal,
        id: VmId,
        target: UserName,
        role: Option<Role>,
        action: &'static str,
        make: impl FnOnce(VmFacts, TargetFacts) -> Action + Send + 'static,
    ) -> Result<Changed<Members>> {
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
        let actor = p.clone();
        let t2 = target.clone();
        let max_owners = self.cfg.sharing.max_owners;
        let (change, vm) = self
            .db_checked(move |s| {
                let mut a = audit(&actor, action, t2.to_string(), Some(id));
                a.detail = role.map(Role::as_str).unwrap_or_default().into();
                s.set_role_checked(&a, id, &t2, role, |f: &RoleFacts| {
                    let facts = VmFacts {
                        project_member: f.caller_member,
                        role: f.vm.role_of(&actor.name),
                        team: f.vm.team.clone(),
                        owners: f.vm.owners.len(),
                    };
                    let tf = TargetFacts {
                        team: f.target.as_ref().map(|u| u.team.clone()),
                        project_member: f.target_member,
                        role: f.vm.role_of(&t2),
                        is_self: t2 == actor.name,
                    };
                    match policy::decide(&actor, &make(facts, tf)) {
                        Decision::Allow => Ok(()),
                        Decision::Deny(d @ Denial::Hidden(Hidden::User)) => {
                            let e = deny(d, t2.as_str());
                            let o = e.outcome();
                            Err(Refusal::audited(e, o))
                        }
                        // A hidden VM gets the answer of a missing one, with no trace that
                        // its owners could read.
                        Decision::Deny(d @ Denial::Hidden(_)) => {
                            Err(Refusal::silent(deny(d, &id.to_string())))
                        }
                        Decision::Deny(d) => {
                            let e = role_denial(d, &t2, &f.vm, max_owners);
                            let o = e.outcome();
                            Err(Refusal::audited(e, o))
                        }
                    }
                })
                // Unchanged shares still write their row: the attempt was allowed.
            })
            .await
            .map_err(|e| match e {
                ServiceError::Store(StoreError::Missing("VM", _)) => {
                    deny(Denial::Hidden(Hidden::Vm), &id.to_string())
                }
                e => e,
            })?;
        if change != Change::Unchanged {
            let data = match role {
                Some(r) => serde_json::json!({"id": id, "user": target, "role": r}),
                None => serde_json::json!({"id": id, "user": target}),
            };
            self.emit(
                if role.is_some() {
                    "vm.shared"
                } else {
                    "vm.unshared"
                },
                Some(&vm),
                data,
            );
        }
        Ok(Changed {
            change,
            object: Members {
                owners: vm.owners,
                users: vm.users,
            },
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
}

/// The stand-in for the membership read of a missing object: the read is made so that a
/// missing object costs the same work as a hidden one, and its answer is not used.
fn unseen_project() -> ProjectName {
    ProjectName::parse("0-unseen").expect("valid")
}

/// The refusal of a share or unshare, in words that name what is wrong. A target outside
/// the caller's team is named with the caller's own team only (the VM's, which every role
/// holder is in): never the target's team, which the caller may not know.
fn role_denial(d: Denial, target: &UserName, vm: &Vm, max_owners: usize) -> ServiceError {
    let message = match d {
        Denial::TeamMismatch => format!("{target} is not in your team {}", vm.team),
        Denial::NotProjectMember => {
            format!("{target} is not a member of project {}", vm.project)
        }
        Denial::MaxOwnersReached => format!(
            "VM {} ({}) already has {max_owners} owners, the most sharing.max_owners allows",
            vm.name, vm.id
        ),
        Denial::ConfirmationRequired => format!(
            "Co-ownership of VM {} hands over its drives to {target}: confirm with confirm_drive_access",
            vm.name
        ),
        Denial::LastOwner => format!(
            "{target} is the last owner of VM {}: make someone else owner first",
            vm.name
        ),
        Denial::OwnerRequired => format!("Only owners of VM {} may do this", vm.name),
        other => return deny(other, &vm.id.to_string()),
    };
    ServiceError::Denied(DenialMsg { denial: d, message })
}

pub(super) fn drive_fits(d: &Drive, project: &ProjectName, vm: Option<VmId>) -> Result<()> {
    if d.project != *project {
        return Err(conflict(
            "project_mismatch",
            format!("Drive {} belongs to another project", d.id),
        ));
    }
    match d.attached_to {
        Some(other) if Some(other) == vm => Ok(()),
        Some(_) => Err(conflict(
            "drive_attached",
            format!("Drive {} is attached to another VM; detach it first", d.id),
        )),
        None => Ok(()),
    }
}

/// The drives folder admits only the daemon and QEMU's group: QEMU (which libvirt runs as
/// another user) must reach the images, nobody else may even stat them.
pub(super) fn prepare_drives_dir(dir: &std::path::Path) -> Result<(), HypervisorError> {
    ensure_dir(dir, 0o710).map_err(|e| HypervisorError::Image(e.to_string()))?;
    if let Some(g) = crate::hypervisor::qemu_group() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir).map_err(|e| HypervisorError::Image(e.to_string()))?;
        if meta.gid() != g {
            // Under the unit's sandbox a chown may be refused when it changes nothing; it
            // changes something here.
            nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(g))).map_err(|e| {
                HypervisorError::Image(format!(
                    "Cannot give {} to QEMU's group: {e}",
                    dir.display()
                ))
            })?;
        }
    }
    Ok(())
}
