//! Drives, their owners and attachments, and the image files they name.
//!
//! An image file is announced in `image_intents` (committed) before it is created, and the
//! intent is replaced by the drive row in the transaction that creates the drive. So every
//! file in the drives folder has a row, and a file whose intent is left over (a crash between
//! the two) is known to be garbage.

use super::sql::{args, Db};
use super::vms::attach_tx;
use super::{AuditCtx, Change, Store, StoreError};
use crate::model::{Drive, DriveId, StorageId, UserName, VmId};

/// Storage ids: of drive rows, of this host's image intents, of other hosts' intents.
pub type StorageSets = (Vec<StorageId>, Vec<StorageId>, Vec<StorageId>);

/// A drive with its wrapped passphrases.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveRow {
    /// The drive.
    pub drive: Drive,
    /// The passphrase wrapped under the project key.
    pub wrapped: Vec<u8>,
    /// The passphrase wrapped under a staged re-key's key.
    pub next_wrapped: Option<Vec<u8>>,
}

fn load_drive(db: &dyn Db, id: DriveId) -> Result<Option<DriveRow>, StoreError> {
    let Some(r) = db.row(
        "SELECT storage, name, project, size_mib, wrapped, next_wrapped, attached_to
         FROM drives WHERE id = ?1",
        args![id.to_string()],
    )?
    else {
        return Ok(None);
    };
    let owners = db
        .rows(
            "SELECT username FROM drive_owners WHERE drive = ?1 ORDER BY username",
            args![id.to_string()],
        )?
        .iter()
        .map(|o| o.parse(0))
        .collect::<Result<_, _>>()?;
    Ok(Some(DriveRow {
        drive: Drive {
            id,
            storage: r.parse(0)?,
            name: r.parse(1)?,
            project: r.parse(2)?,
            size_mib: r.int(3)? as u64,
            owners,
            attached_to: r.opt_parse(6)?,
        },
        wrapped: r.bytes(4)?,
        next_wrapped: r.opt_bytes(5)?,
    }))
}

impl Store {
    /// Announces an image file about to be created.
    pub fn intend_image(&self, storage: StorageId) -> Result<(), StoreError> {
        // Intents are read only by start-up recovery: nothing cached changes.
        self.quiet_write(|db| {
            db.exec(
                "INSERT INTO image_intents (storage, created_ms, host) VALUES (?1, ?2, ?3)",
                args![storage.to_string(), super::now_ms(), self.host()],
            )?;
            Ok(())
        })
    }

    /// Withdraws an image announcement (the file was not created, or was removed).
    pub fn drop_intent(&self, storage: StorageId) -> Result<(), StoreError> {
        self.quiet_write(|db| {
            db.exec(
                "DELETE FROM image_intents WHERE storage = ?1",
                args![storage.to_string()],
            )?;
            Ok(())
        })
    }

    /// Storage ids of every drive row; of every image this host announced with no row yet;
    /// and of every image other hosts announced (theirs to finish or clean up, in a shared
    /// drives folder).
    pub fn storages(&self) -> Result<StorageSets, StoreError> {
        self.read(|db| {
            let column =
                |sql: &str, args: &[super::sql::Value]| -> Result<Vec<StorageId>, StoreError> {
                    db.rows(sql, args)?.iter().map(|r| r.parse(0)).collect()
                };
            Ok((
                column("SELECT storage FROM drives", &[])?,
                column(
                    "SELECT storage FROM image_intents WHERE host IS NULL OR host = ?1",
                    args![self.host()],
                )?,
                column(
                    "SELECT storage FROM image_intents WHERE host <> ?1",
                    args![self.host()],
                )?,
            ))
        })
    }

    /// Inserts a drive owned by its creator, in place of its image's intent. The name must
    /// be new among the drives its creator owns in the project; drives the creator cannot
    /// see never conflict. `next_wrapped` must be given exactly when a re-key is staged.
    pub fn create_drive(
        &self,
        a: &AuditCtx<'_>,
        d: &Drive,
        wrapped: &[u8],
        key_verifier: &[u8],
        next: Option<(&[u8], &[u8])>,
    ) -> Result<(), StoreError> {
        let next_wrapped = next.map(|(w, _)| w);
        self.mutate(a, |tx| {
            let row = tx
                .row(
                    "SELECT next_verifier, verifier FROM projects WHERE name = ?1",
                    args![d.project.as_str()],
                )?
                .ok_or_else(|| StoreError::Missing("Project", d.project.to_string()))?;
            // `wrapped` must be under the project's key as it is now, and `next` under the
            // staged re-key's key: a re-key promoted, replaced or undone through another agent
            // of a fleet since this one read its keys would leave the drive under a key
            // nobody can rebuild.
            if row.opt_bytes(0)?.as_deref() != next.map(|(_, v)| v) || row.bytes(1)? != key_verifier
            {
                return Err(StoreError::Changed(format!(
                    "The key of project {} changed meanwhile",
                    d.project
                )));
            }
            for o in &d.owners {
                let taken = tx.exists(
                    "SELECT 1 FROM drives x JOIN drive_owners o ON o.drive = x.id
                     WHERE x.project = ?1 AND x.name = ?2 AND o.username = ?3",
                    args![d.project.as_str(), d.name.as_str(), o.as_str()],
                )?;
                if taken {
                    return Err(StoreError::Exists(format!(
                        "Drive {} in project {}",
                        d.name, d.project
                    )));
                }
            }
            tx.exec(
                "INSERT INTO drives (id, storage, name, project, size_mib, wrapped, next_wrapped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                args![
                    d.id.to_string(),
                    d.storage.to_string(),
                    d.name.as_str(),
                    d.project.as_str(),
                    d.size_mib as i64,
                    wrapped,
                    next_wrapped
                ],
            )?;
            for o in &d.owners {
                tx.exec(
                    "INSERT INTO drive_owners (drive, username, project) VALUES (?1, ?2, ?3)",
                    args![d.id.to_string(), o.as_str(), d.project.as_str()],
                )
                .map_err(|e| {
                    if super::is_constraint(&e) {
                        StoreError::Changed(format!("{o} is no longer a member of {}", d.project))
                    } else {
                        e
                    }
                })?;
            }
            tx.exec(
                "DELETE FROM image_intents WHERE storage = ?1",
                args![d.storage.to_string()],
            )?;
            Ok(())
        })
    }

    /// One drive with its wrapped passphrases.
    pub fn drive(&self, id: DriveId) -> Result<Option<DriveRow>, StoreError> {
        self.read(|db| load_drive(db, id))
    }

    /// Every drive.
    pub fn drives(&self) -> Result<Vec<Drive>, StoreError> {
        // Two queries whatever the number of drives (a remote database pays per round trip).
        self.read(|db| {
            let mut owners: std::collections::HashMap<String, Vec<UserName>> =
                std::collections::HashMap::new();
            for r in db.rows(
                "SELECT drive, username FROM drive_owners ORDER BY username",
                &[],
            )? {
                owners.entry(r.text(0)?).or_default().push(r.parse(1)?);
            }
            db.rows(
                "SELECT id, storage, name, project, size_mib, attached_to FROM drives
                 ORDER BY project, name, id",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(Drive {
                    id: r.parse(0)?,
                    storage: r.parse(1)?,
                    name: r.parse(2)?,
                    project: r.parse(3)?,
                    size_mib: r.int(4)? as u64,
                    owners: owners.remove(&r.text(0)?).unwrap_or_default(),
                    attached_to: r.opt_parse(5)?,
                })
            })
            .collect()
        })
    }

    /// Deletes a drive's row only if it is still detached (checked in the same statement,
    /// so a concurrent attach wins and the image stays). Returns its storage id, now
    /// announced as an image to remove.
    pub fn delete_drive(&self, a: &AuditCtx<'_>, id: DriveId) -> Result<StorageId, StoreError> {
        self.mutate(a, |tx| {
            let storage: StorageId = tx
                .row(
                    "SELECT storage FROM drives WHERE id = ?1",
                    args![id.to_string()],
                )?
                .ok_or_else(|| StoreError::Missing("Drive", id.to_string()))?
                .parse(0)?;
            let n = tx.exec(
                "DELETE FROM drives WHERE id = ?1 AND attached_to IS NULL",
                args![id.to_string()],
            )?;
            if n != 1 {
                return Err(StoreError::Attached(id.to_string()));
            }
            // Until the file is gone, the intent keeps it known as garbage.
            tx.exec(
                "INSERT INTO image_intents (storage, created_ms) VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
                args![storage.to_string(), super::now_ms()],
            )?;
            Ok(storage)
        })
    }

    /// Attaches a drive: its owners become the VM's owners (they have full drive access).
    pub fn attach(&self, a: &AuditCtx<'_>, vm: VmId, drive: DriveId) -> Result<(), StoreError> {
        self.mutate(a, |tx| attach_tx(tx, vm, drive))
    }

    /// Undoes an attach whose hot-plug failed: detached again, with its former owners.
    pub fn release(
        &self,
        a: &AuditCtx<'_>,
        drive: DriveId,
        owners: &[UserName],
    ) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            tx.exec(
                "UPDATE drives SET attached_to = NULL WHERE id = ?1",
                args![drive.to_string()],
            )?;
            set_owners(tx, drive, owners)
        })
    }

    /// Detaches a drive; the detaching owner keeps it alone (a co-owner "takes" the drive).
    pub fn detach(
        &self,
        a: &AuditCtx<'_>,
        drive: DriveId,
        keeper: &UserName,
    ) -> Result<Change, StoreError> {
        self.mutate(a, |tx| {
            let n = tx.exec(
                "UPDATE drives SET attached_to = NULL WHERE id = ?1 AND attached_to IS NOT NULL",
                args![drive.to_string()],
            )?;
            if n == 0 {
                return Ok(Change::Unchanged);
            }
            set_owners(tx, drive, std::slice::from_ref(keeper))?;
            Ok(Change::Removed)
        })
    }
}

fn set_owners(tx: &dyn Db, drive: DriveId, owners: &[UserName]) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM drive_owners WHERE drive = ?1",
        args![drive.to_string()],
    )?;
    for o in owners {
        tx.exec(
            "INSERT INTO drive_owners (drive, username, project)
             SELECT id, ?2, project FROM drives WHERE id = ?1",
            args![drive.to_string(), o.as_str()],
        )
        .map_err(|e| {
            if super::is_constraint(&e) {
                StoreError::Changed(format!("{o} is no longer a member of the drive's project"))
            } else {
                e
            }
        })?;
    }
    Ok(())
}
