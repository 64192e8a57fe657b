//! Drives on VMs: attach and detach, hot when the VM runs. The store claims a drive before
//! libvirt plugs it, and gives the claim back if the plug fails.

use super::*;

impl Service {
    /// Attaches a drive the caller owns to a VM the caller owns (hot when running).
    pub async fn attach(&self, p: &Principal, id: VmId, drive: DriveId) -> Result<Changed<VmView>> {
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
        let vm = self
            .vm_checked_for(p, id, VmAction::Attach, Some(drive))
            .await?;
        self.held_here(&vm)?;
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
            let mut a = audit(
                &actor,
                AuditAction::DriveAttach,
                drive.to_string(),
                Some(id),
            );
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
                ConflictCode::DriveAttached,
                format!("Drive {drive} was attached elsewhere meanwhile"),
            ),
            e => e,
        })?;
        let hot = async {
            if self.hv(move |h| h.is_running(id)).await? {
                let view = self.sync_keys(&vm.project).await?;
                self.must_be_enrolled(&view)?;
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
                    &audit(
                        &actor,
                        AuditAction::DriveAttachUndone,
                        drive.to_string(),
                        Some(id),
                    ),
                    drive,
                    &owners,
                )
            })
            .await?;
            return Err(e);
        }
        self.emit_drive(
            EventKind::DriveAttached,
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
        self.held_here(&vm)?;
        let d = self.drive_for(p, drive).await?.drive;
        if d.attached_to.is_none() {
            // Already detached (a repeated DELETE): nothing to do.
            return Ok(Changed {
                change: Change::Unchanged,
                object: self.view(p, vm).await?,
            });
        }
        if d.attached_to != Some(id) {
            return Err(conflict(
                ConflictCode::DriveAttached,
                format!("Drive {drive} is attached to another VM, not to VM {id}"),
            ));
        }
        if self.hv(move |h| h.is_running(id)).await? {
            let t = self.cfg.libvirt.detach_timeout;
            self.hv(move |h| h.detach_disk(id, drive, t)).await?;
        }
        let actor = p.clone();
        let keeper = p.name.clone();
        self.db(move |s| {
            s.detach(
                &audit(
                    &actor,
                    AuditAction::DriveDetach,
                    drive.to_string(),
                    Some(id),
                ),
                drive,
                &keeper,
            )
        })
        .await?;
        self.emit_drive(
            EventKind::DriveDetached,
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
}
