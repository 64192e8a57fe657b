//! Projects, their members, key verifiers and the delivery of new share pairs.
//!
//! A share pair exists only in the answer that creates it, so a project (or a re-key) is
//! committed as *undelivered* first: `delivered` false for a new project, `next_verifier` and
//! `next_wrapped` beside the current ones for a re-key. Once the answer has been written to
//! the client the service promotes it; if it never was, the service undoes it. A pending
//! re-key that outlives the daemon keeps both pairs working until one of them unlocks.

use super::seals::SealPlan;
use super::sql::{args, Db, Row};
use super::users::load_user;
use super::{AuditCtx, Change, Refusal, Store, StoreError};
use crate::model::{DriveId, DriveName, ProjectName, Role, TeamName, User, UserName, VmId, VmName};

/// A project as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectRow {
    /// Name.
    pub name: ProjectName,
    /// Members in name order.
    pub members: Vec<UserName>,
    /// HMAC verifier of K.
    pub verifier: Vec<u8>,
    /// Verifier of a re-key whose shares have not been delivered yet.
    pub next_verifier: Option<Vec<u8>>,
    /// Whether the creating answer (with the first share pair) reached its client.
    pub delivered: bool,
}

/// A drive's passphrase: (drive, wrapped under the key, wrapped under a staged re-key's).
pub type WrappedSecrets = (DriveId, Vec<u8>, Option<Vec<u8>>);

/// What a member holds in a project, judged before they are removed.
#[derive(Debug, Clone, Default)]
pub struct MemberHoldings {
    /// VMs they own: id, name, team, the other owners.
    pub owned_vms: Vec<(VmId, VmName, TeamName, Vec<UserName>)>,
    /// Drives they own: id, name, the other owners.
    pub owned_drives: Vec<(DriveId, DriveName, Vec<UserName>)>,
    /// VMs they are a user of.
    pub user_of: Vec<VmId>,
    /// The registry entry of the `transfer_to` user and whether they are a member.
    pub transfer: Option<(User, bool)>,
}

/// What removing a member changed, for events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberRemoval {
    /// Whether the membership existed.
    pub change: Option<Change>,
    /// VMs on which the member lost a role.
    pub roles_dropped: Vec<VmId>,
    /// VMs whose sole ownership went to the transfer target.
    pub vms_transferred: Vec<VmId>,
    /// Drives whose sole ownership went to the transfer target.
    pub drives_transferred: Vec<DriveId>,
}

pub(super) fn members_of(db: &dyn Db, project: &str) -> Result<Vec<UserName>, StoreError> {
    db.rows(
        "SELECT username FROM project_members WHERE project = ?1 ORDER BY username",
        args![project],
    )?
    .iter()
    .map(|r| r.parse(0))
    .collect()
}

pub(super) fn is_member(db: &dyn Db, project: &str, user: &str) -> Result<bool, StoreError> {
    db.exists(
        "SELECT 1 FROM project_members WHERE project = ?1 AND username = ?2",
        args![project, user],
    )
}

fn load_project(db: &dyn Db, name: &str) -> Result<Option<ProjectRow>, StoreError> {
    let Some(r) = db.row(
        "SELECT name, verifier, next_verifier, delivered FROM projects WHERE name = ?1",
        args![name],
    )?
    else {
        return Ok(None);
    };
    let members = members_of(db, &r.text(0)?)?;
    project_row(&r, members).map(Some)
}

/// A row of `SELECT name, verifier, next_verifier, delivered FROM projects`.
fn project_row(r: &Row, members: Vec<UserName>) -> Result<ProjectRow, StoreError> {
    Ok(ProjectRow {
        members,
        name: r.parse(0)?,
        verifier: r.bytes(1)?,
        next_verifier: r.opt_bytes(2)?,
        delivered: r.bool(3)?,
    })
}

/// VMs and drives in a project: (vms, drives).
fn contents(db: &dyn Db, project: &str) -> Result<(i64, i64), StoreError> {
    let r = db
        .row(
            "SELECT (SELECT COUNT(*) FROM vms WHERE project = ?1),
                    (SELECT COUNT(*) FROM drives WHERE project = ?1)",
            args![project],
        )?
        .ok_or(StoreError::NotFound)?;
    Ok((r.int(0)?, r.int(1)?))
}

fn holdings_in(
    tx: &dyn Db,
    project: &ProjectName,
    user: &UserName,
    transfer_to: Option<&UserName>,
) -> Result<MemberHoldings, StoreError> {
    let mut h = MemberHoldings::default();
    let (p, u) = (project.as_str(), user.as_str());
    let roles = tx.rows(
        "SELECT v.id, v.name, v.team, r.role FROM vm_roles r JOIN vms v ON v.id = r.vm
         WHERE r.project = ?1 AND r.username = ?2 ORDER BY v.created_ms, v.id",
        args![p, u],
    )?;
    for r in &roles {
        let id: VmId = r.parse(0)?;
        if r.text(3)? == Role::Owner.as_str() {
            let others = tx
                .rows(
                    "SELECT username FROM vm_roles WHERE vm = ?1 AND role = 'owner' AND username != ?2
                     ORDER BY seq",
                    args![id.to_string(), u],
                )?
                .iter()
                .map(|o| o.parse(0))
                .collect::<Result<Vec<UserName>, _>>()?;
            let name: VmName = r.parse(1)?;
            let team: TeamName = r.parse(2)?;
            h.owned_vms.push((id, name, team, others));
        } else {
            h.user_of.push(id);
        }
    }
    let drives = tx.rows(
        "SELECT d.id, d.name FROM drive_owners o JOIN drives d ON d.id = o.drive
         WHERE o.project = ?1 AND o.username = ?2 ORDER BY d.name, d.id",
        args![p, u],
    )?;
    for r in &drives {
        let id = r.text(0)?;
        let others = tx
            .rows(
                "SELECT username FROM drive_owners WHERE drive = ?1 AND username != ?2",
                args![&id, u],
            )?
            .iter()
            .map(|o| o.parse(0))
            .collect::<Result<Vec<UserName>, _>>()?;
        let name: DriveName = r.parse(1)?;
        h.owned_drives.push((r.parse(0)?, name, others));
    }
    if let Some(t) = transfer_to {
        if let Some(user) = load_user(tx, t)? {
            let member = is_member(tx, p, t.as_str())?;
            h.transfer = Some((user, member));
        }
    }
    Ok(h)
}

impl Store {
    /// Creates a project with its members and key verifier, undelivered until
    /// `project_delivered`.
    pub fn create_project(
        &self,
        a: &AuditCtx<'_>,
        name: &ProjectName,
        members: &[UserName],
        verifier: &[u8],
    ) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            tx.exec(
                "INSERT INTO projects (name, verifier, delivered, created_by, created_ms, host)
                 VALUES (?1, ?2, FALSE, ?3, ?4, ?5)",
                args![
                    name.as_str(),
                    verifier,
                    a.actor,
                    super::now_ms(),
                    self.host()
                ],
            )
            .map_err(|e| super::unique(e, &format!("Project {name}")))?;
            for m in members {
                if load_user(tx, m)?.is_none() {
                    return Err(StoreError::Missing("User", m.to_string()));
                }
                tx.exec(
                    "INSERT INTO project_members (project, username) VALUES (?1, ?2)
                     ON CONFLICT DO NOTHING",
                    args![name.as_str(), m.as_str()],
                )?;
            }
            Ok(())
        })
    }

    /// Projects this agent's host created whose shares it never delivered (a crash between
    /// the two): nobody else is waiting on them. Another host's are its own to judge.
    pub fn undelivered_projects(&self) -> Result<Vec<ProjectName>, StoreError> {
        self.read(|db| {
            db.rows(
                "SELECT name FROM projects WHERE NOT delivered AND (host IS NULL OR host = ?1)
                 ORDER BY name",
                args![self.host()],
            )?
            .iter()
            .map(|r| r.parse(0))
            .collect()
        })
    }

    /// Marks the first share pair as delivered; `false` when there was nothing to mark.
    pub fn project_delivered(
        &self,
        a: &AuditCtx<'_>,
        name: &ProjectName,
    ) -> Result<bool, StoreError> {
        self.mutate_opt(a, |tx| {
            let n = tx.exec(
                "UPDATE projects SET delivered = TRUE WHERE name = ?1 AND NOT delivered",
                args![name.as_str()],
            )?;
            Ok((n == 1).then_some(true))
        })
        .map(|o| o.is_some())
    }

    /// Removes a project whose share pair never reached anyone (it cannot hold VMs or drives:
    /// nobody could unlock it). `false` when it was delivered meanwhile or is gone.
    pub fn undo_project(&self, a: &AuditCtx<'_>, name: &ProjectName) -> Result<bool, StoreError> {
        self.mutate_opt(a, |tx| {
            if contents(tx, name.as_str())? != (0, 0) {
                return Ok(None);
            }
            let n = tx.exec(
                "DELETE FROM projects WHERE name = ?1 AND NOT delivered",
                args![name.as_str()],
            )?;
            Ok((n == 1).then_some(true))
        })
        .map(|o| o.is_some())
    }

    /// Deletes a project that holds no VMs and no drives; idempotent.
    pub fn delete_project(
        &self,
        a: &AuditCtx<'_>,
        name: &ProjectName,
    ) -> Result<Change, StoreError> {
        self.mutate(a, |tx| {
            let (vms, drives) = contents(tx, name.as_str())?;
            if vms + drives > 0 {
                return Err(StoreError::NotEmpty {
                    project: name.to_string(),
                    vms,
                    drives,
                });
            }
            let n = tx.exec("DELETE FROM projects WHERE name = ?1", args![name.as_str()])?;
            Ok(if n == 0 {
                Change::Unchanged
            } else {
                Change::Removed
            })
        })
    }

    /// One project.
    pub fn project(&self, name: &ProjectName) -> Result<Option<ProjectRow>, StoreError> {
        self.read(|db| load_project(db, name.as_str()))
    }

    /// Every project by name.
    pub fn projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        // Two queries whatever the number of projects (a remote database pays per round trip).
        self.read(|db| {
            let mut members: std::collections::HashMap<String, Vec<UserName>> =
                std::collections::HashMap::new();
            for r in db.rows(
                "SELECT project, username FROM project_members ORDER BY username",
                &[],
            )? {
                members.entry(r.text(0)?).or_default().push(r.parse(1)?);
            }
            db.rows(
                "SELECT name, verifier, next_verifier, delivered FROM projects ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| project_row(r, members.remove(&r.text(0)?).unwrap_or_default()))
            .collect()
        })
    }

    /// Adds a registered user to a project; idempotent.
    pub fn add_member(
        &self,
        a: &AuditCtx<'_>,
        project: &ProjectName,
        user: &UserName,
    ) -> Result<Change, StoreError> {
        self.mutate(a, |tx| {
            if load_project(tx, project.as_str())?.is_none() {
                return Err(StoreError::Missing("Project", project.to_string()));
            }
            if load_user(tx, user)?.is_none() {
                return Err(StoreError::Missing("User", user.to_string()));
            }
            let n = tx.exec(
                "INSERT INTO project_members (project, username) VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
                args![project.as_str(), user.as_str()],
            )?;
            Ok(if n == 0 {
                Change::Unchanged
            } else {
                Change::Created
            })
        })
    }

    /// Removes a member. Their user roles in the project go at once; what they own is judged
    /// by `check` (refuse, or hand over with `transfer_to`) inside the same transaction. With
    /// `force`, ownerships shared with others simply end, and sole ownerships go to
    /// `transfer_to` (rule 7 applies: a new VM owner owns the VM's drives).
    pub fn remove_member<E: From<StoreError>>(
        &self,
        a: &AuditCtx<'_>,
        project: &ProjectName,
        user: &UserName,
        transfer_to: Option<&UserName>,
        check: impl Fn(&MemberHoldings) -> Result<(), Refusal<E>>,
    ) -> Result<MemberRemoval, E> {
        self.mutate_checked(a, |tx| {
            let (p, u) = (project.as_str(), user.as_str());
            if !is_member(tx, p, u)? {
                return Ok(MemberRemoval {
                    change: Some(Change::Unchanged),
                    ..Default::default()
                });
            }
            let h = holdings_in(tx, project, user, transfer_to)?;
            check(&h)?;
            let mut out = MemberRemoval {
                change: Some(Change::Removed),
                roles_dropped: h.user_of.clone(),
                ..Default::default()
            };
            tx.exec(
                "DELETE FROM drive_owners WHERE project = ?1 AND username = ?2",
                args![p, u],
            )?;
            tx.exec(
                "DELETE FROM vm_roles WHERE project = ?1 AND username = ?2",
                args![p, u],
            )?;
            for (vm, _, _, others) in &h.owned_vms {
                out.roles_dropped.push(*vm);
                if others.is_empty() {
                    let t =
                        transfer_to.ok_or(StoreError::Missing("Transfer target", String::new()))?;
                    super::vms::set_role_tx(tx, *vm, t, Some(Role::Owner))?;
                    out.vms_transferred.push(*vm);
                }
            }
            for (drive, _, others) in &h.owned_drives {
                let still = tx.int(
                    "SELECT COUNT(*) FROM drive_owners WHERE drive = ?1",
                    args![drive.to_string()],
                )?;
                if others.is_empty() && still == 0 {
                    let t =
                        transfer_to.ok_or(StoreError::Missing("Transfer target", String::new()))?;
                    tx.exec(
                        "INSERT INTO drive_owners (drive, username, project) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO NOTHING",
                        args![drive.to_string(), t.as_str(), p],
                    )?;
                    out.drives_transferred.push(*drive);
                }
            }
            tx.exec(
                "DELETE FROM project_members WHERE project = ?1 AND username = ?2",
                args![p, u],
            )?;
            Ok(out)
        })
    }

    /// Stages a re-key: `next_verifier` beside the current verifier and every drive's
    /// passphrase wrapped under the new key beside the current wrapping. Nothing stops
    /// working until `promote_rekey`.
    pub fn stage_rekey(
        &self,
        a: &AuditCtx<'_>,
        project: &ProjectName,
        next_verifier: &[u8],
        rewrapped: &[(DriveId, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            let n = tx.exec(
                "UPDATE projects SET next_verifier = ?2 WHERE name = ?1",
                args![project.as_str(), next_verifier],
            )?;
            if n != 1 {
                return Err(StoreError::Missing("Project", project.to_string()));
            }
            // Every drive of the project must be re-wrapped in this same transaction, or a
            // drive would stay wrapped under a key nobody can rebuild once this is promoted.
            let count = tx.int(
                "SELECT COUNT(*) FROM drives WHERE project = ?1",
                args![project.as_str()],
            )?;
            if count != rewrapped.len() as i64 {
                return Err(StoreError::Changed(format!(
                    "A drive was created or deleted in project {project} during the re-key"
                )));
            }
            for (id, w) in rewrapped {
                let n = tx.exec(
                    "UPDATE drives SET next_wrapped = ?2 WHERE id = ?1 AND project = ?3",
                    args![id.to_string(), w, project.as_str()],
                )?;
                if n != 1 {
                    return Err(StoreError::Changed(format!(
                        "Drive {id} changed during the re-key"
                    )));
                }
            }
            Ok(())
        })
    }

    /// Makes a staged re-key the only key: its pair was delivered (or used). `false` when
    /// `next_verifier` is no longer the staged one (undone or replaced meanwhile).
    pub fn promote_rekey(
        &self,
        a: &AuditCtx<'_>,
        project: &ProjectName,
        next_verifier: &[u8],
        seal: Option<&SealPlan>,
    ) -> Result<bool, StoreError> {
        self.mutate_opt(a, |tx| {
            let staged: Option<Vec<u8>> = tx
                .row(
                    "SELECT next_verifier FROM projects WHERE name = ?1",
                    args![project.as_str()],
                )?
                .map(|r| r.opt_bytes(0))
                .transpose()?
                .flatten();
            if staged.as_deref() != Some(next_verifier) {
                return Ok(None);
            }
            let unwrapped = tx.int(
                "SELECT COUNT(*) FROM drives WHERE project = ?1 AND next_wrapped IS NULL",
                args![project.as_str()],
            )?;
            if unwrapped != 0 {
                return Err(StoreError::Changed(format!(
                    "A drive of project {project} lacks its re-wrapped passphrase"
                )));
            }
            tx.exec(
                "UPDATE drives SET wrapped = next_wrapped, next_wrapped = NULL WHERE project = ?1",
                args![project.as_str()],
            )?;
            tx.exec(
                "UPDATE projects SET verifier = next_verifier, next_verifier = NULL WHERE name = ?1",
                args![project.as_str()],
            )?;
            if let Some(plan) = seal {
                self.apply_seal(tx, plan)?;
            }
            Ok(Some(true))
        })
        .map(|o| o.is_some())
    }

    /// Drops a staged re-key (its pair never reached anyone, or the old pair unlocked first).
    /// `false` when `next_verifier` is no longer the staged one. `seal` (the unlock's
    /// envelopes) is made either way, with the audit row.
    pub fn undo_rekey(
        &self,
        a: &AuditCtx<'_>,
        project: &ProjectName,
        next_verifier: &[u8],
        seal: Option<&SealPlan>,
    ) -> Result<bool, StoreError> {
        self.mutate_opt(a, |tx| {
            let n = tx.exec(
                "UPDATE projects SET next_verifier = NULL WHERE name = ?1 AND next_verifier = ?2",
                args![project.as_str(), next_verifier],
            )?;
            if n > 0 {
                tx.exec(
                    "UPDATE drives SET next_wrapped = NULL WHERE project = ?1",
                    args![project.as_str()],
                )?;
            }
            // The unlock that drops the re-key seals its K whether or not the re-key was
            // still there to drop.
            match seal {
                Some(plan) => self.apply_seal(tx, plan)?,
                None if n == 0 => return Ok(None),
                None => 0,
            };
            Ok(Some(n > 0))
        })
        .map(|o| o.unwrap_or(false))
    }

    /// Wrapped passphrases of every drive in a project: (id, current, staged re-key).
    pub fn project_drive_secrets(
        &self,
        project: &ProjectName,
    ) -> Result<Vec<WrappedSecrets>, StoreError> {
        self.read(|db| {
            db.rows(
                "SELECT id, wrapped, next_wrapped FROM drives WHERE project = ?1 ORDER BY id",
                args![project.as_str()],
            )?
            .iter()
            .map(|r| Ok((r.parse(0)?, r.bytes(1)?, r.opt_bytes(2)?)))
            .collect()
        })
    }
}
