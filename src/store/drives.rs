//! Drives, their owners and attachments, and the image files they name.
//!
//! An image file is announced in `image_intents` (committed) before it is created, and the
//! intent is replaced by the drive row in the transaction that creates the drive. So every
//! file in the drives folder has a row, and a file whose intent is left over (a crash between
//! the two) is known to be garbage.

use super::vms::attach_tx;
use super::{parse_col, AuditCtx, Change, Store, StoreError};
use crate::model::{Drive, DriveId, DriveName, StorageId, UserName, VmId};
use rusqlite::{params, Connection, OptionalExtension};

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

fn load_drive(conn: &Connection, id: DriveId) -> Result<Option<DriveRow>, StoreError> {
    type Row = (
        String,
        String,
        String,
        i64,
        Vec<u8>,
        Option<Vec<u8>>,
        Option<String>,
    );
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT storage, name, project, size_mib, wrapped, next_wrapped, attached_to
             FROM drives WHERE id = ?1",
        )?
        .query_row([id.to_string()], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .optional()?;
    let Some((storage, name, project, size, wrapped, next_wrapped, attached)) = row else {
        return Ok(None);
    };
    let owners = conn
        .prepare_cached("SELECT user FROM drive_owners WHERE drive = ?1 ORDER BY user")?
        .query_map([id.to_string()], |r| parse_col(r.get(0)?))?
        .collect::<Result<_, _>>()?;
    Ok(Some(DriveRow {
        drive: Drive {
            id,
            storage: parse_col(storage)?,
            name: parse_col::<DriveName>(name)?,
            project: parse_col(project)?,
            size_mib: size as u64,
            owners,
            attached_to: attached.map(parse_col).transpose()?,
        },
        wrapped,
        next_wrapped,
    }))
}

impl Store {
    /// Announces an image file about to be created.
    pub fn intend_image(&self, storage: StorageId) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.execute(
                "INSERT INTO image_intents (storage, created_ms) VALUES (?1, ?2)",
                params![storage.to_string(), super::now_ms()],
            )?;
            Ok(())
        })
    }

    /// Withdraws an image announcement (the file was not created, or was removed).
    pub fn drop_intent(&self, storage: StorageId) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.execute(
                "DELETE FROM image_intents WHERE storage = ?1",
                [storage.to_string()],
            )?;
            Ok(())
        })
    }

    /// Storage ids of every drive row, and of every announced image with no row yet.
    pub fn storages(&self) -> Result<(Vec<StorageId>, Vec<StorageId>), StoreError> {
        self.read(|conn| {
            let rows = conn
                .prepare_cached("SELECT storage FROM drives")?
                .query_map([], |r| parse_col(r.get(0)?))?
                .collect::<Result<_, _>>()?;
            let intents = conn
                .prepare_cached("SELECT storage FROM image_intents")?
                .query_map([], |r| parse_col(r.get(0)?))?
                .collect::<Result<_, _>>()?;
            Ok((rows, intents))
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
        next_wrapped: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            let staged: bool = tx
                .query_row(
                    "SELECT next_verifier IS NOT NULL FROM projects WHERE name = ?1",
                    [d.project.as_str()],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(|| StoreError::Missing("Project", d.project.to_string()))?;
            if staged != next_wrapped.is_some() {
                return Err(StoreError::Changed(format!(
                    "The key of project {} changed meanwhile",
                    d.project
                )));
            }
            for o in &d.owners {
                let taken = tx
                    .prepare_cached(
                        "SELECT 1 FROM drives x JOIN drive_owners o ON o.drive = x.id
                         WHERE x.project = ?1 AND x.name = ?2 AND o.user = ?3",
                    )?
                    .query_row(
                        params![d.project.as_str(), d.name.as_str(), o.as_str()],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if taken {
                    return Err(StoreError::Exists(format!(
                        "Drive {} in project {}",
                        d.name, d.project
                    )));
                }
            }
            tx.execute(
                "INSERT INTO drives (id, storage, name, project, size_mib, wrapped, next_wrapped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
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
                tx.execute(
                    "INSERT INTO drive_owners (drive, user, project) VALUES (?1, ?2, ?3)",
                    params![d.id.to_string(), o.as_str(), d.project.as_str()],
                )
                .map_err(|e| {
                    if super::is_constraint(&e) {
                        StoreError::Changed(format!("{o} is no longer a member of {}", d.project))
                    } else {
                        StoreError::from(e)
                    }
                })?;
            }
            tx.execute(
                "DELETE FROM image_intents WHERE storage = ?1",
                [d.storage.to_string()],
            )?;
            Ok(())
        })
    }

    /// One drive with its wrapped passphrases.
    pub fn drive(&self, id: DriveId) -> Result<Option<DriveRow>, StoreError> {
        self.read(|conn| load_drive(conn, id))
    }

    /// Every drive.
    pub fn drives(&self) -> Result<Vec<Drive>, StoreError> {
        self.read(|conn| {
            let ids: Vec<DriveId> = conn
                .prepare_cached("SELECT id FROM drives ORDER BY project, name, id")?
                .query_map([], |r| parse_col(r.get(0)?))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(row) = load_drive(conn, id)? {
                    out.push(row.drive);
                }
            }
            Ok(out)
        })
    }

    /// Deletes a drive's row only if it is still detached (checked in the same statement,
    /// so a concurrent attach wins and the image stays). Returns its storage id, now
    /// announced as an image to remove.
    pub fn delete_drive(&self, a: &AuditCtx<'_>, id: DriveId) -> Result<StorageId, StoreError> {
        self.mutate(a, |tx| {
            let storage: Option<String> = tx
                .query_row(
                    "SELECT storage FROM drives WHERE id = ?1",
                    [id.to_string()],
                    |r| r.get(0),
                )
                .optional()?;
            let storage: StorageId =
                parse_col(storage.ok_or_else(|| StoreError::Missing("Drive", id.to_string()))?)?;
            let n = tx.execute(
                "DELETE FROM drives WHERE id = ?1 AND attached_to IS NULL",
                [id.to_string()],
            )?;
            if n != 1 {
                return Err(StoreError::Attached(id.to_string()));
            }
            // Until the file is gone, the intent keeps it known as garbage.
            tx.execute(
                "INSERT INTO image_intents (storage, created_ms) VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
                params![storage.to_string(), super::now_ms()],
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
            tx.execute(
                "UPDATE drives SET attached_to = NULL WHERE id = ?1",
                [drive.to_string()],
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
            let n = tx.execute(
                "UPDATE drives SET attached_to = NULL WHERE id = ?1 AND attached_to IS NOT NULL",
                [drive.to_string()],
            )?;
            if n == 0 {
                return Ok(Change::Unchanged);
            }
            set_owners(tx, drive, std::slice::from_ref(keeper))?;
            Ok(Change::Removed)
        })
    }
}

fn set_owners(tx: &Connection, drive: DriveId, owners: &[UserName]) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM drive_owners WHERE drive = ?1",
        [drive.to_string()],
    )?;
    for o in owners {
        tx.execute(
            "INSERT INTO drive_owners (drive, user, project)
             SELECT id, ?2, project FROM drives WHERE id = ?1",
            params![drive.to_string(), o.as_str()],
        )
        .map_err(|e| {
            if super::is_constraint(&e) {
                StoreError::Changed(format!("{o} is no longer a member of the drive's project"))
            } else {
                StoreError::from(e)
            }
        })?;
    }
    Ok(())
}
