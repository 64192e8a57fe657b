//! Drives: LUKS qcow2 images with wrapped passphrases, their files and their owners.

use super::*;

impl Service {
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
        let f = self.project_facts(p, &project).await?;
        let action = Action::CreateIn {
            project_member: f.member,
        };
        f.gate(self, p, &action)?;
        let max = self.cfg.limits.max_drive_mib;
        if size_mib == 0 || size_mib > max {
            return Err(ServiceError::Invalid(format!(
                "Field size_mib must be between 1 and {max}"
            )));
        }
        let _shared = self.project_lock(&project).read_owned().await;
        let id = DriveId::new_random();
        let view = self.sync_keys(&project).await?;
        self.must_be_enrolled(&view)?;
        let passphrase = keys::new_passphrase();
        let (wrapped, key_verifier, next) = self
            .keys
            .with_keys(&project, Instant::now(), |k, next| {
                let d = id.to_string();
                (
                    keys::wrap(k, &project, &d, &passphrase),
                    keys::verifier(k, &project),
                    next.map(|n| {
                        (
                            keys::wrap(n, &project, &d, &passphrase),
                            keys::verifier(n, &project),
                        )
                    }),
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
                    &audit(&actor, AuditAction::DriveCreate, d2.id.to_string(), None),
                    &d2,
                    &wrapped,
                    &key_verifier,
                    next.as_ref().map(|(w, v)| (w.as_slice(), v.as_slice())),
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
                ConflictCode::DriveAttached,
                format!("Drive {id} is attached to VM {vm}; detach it first"),
            ));
        }
        let actor = p.clone();
        let storage = self
            .db(move |s| {
                s.delete_drive(
                    &audit(&actor, AuditAction::DriveDelete, id.to_string(), None),
                    id,
                )
            })
            .await
            .map_err(|e| match e {
                ServiceError::Store(StoreError::Attached(_)) => conflict(
                    ConflictCode::DriveAttached,
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
