//! The users registry.

use super::sql::{args, Db, Row};
use super::{is_constraint, AuditCtx, Change, Store, StoreError};
use crate::model::{User, UserName};

pub(super) fn row_user(r: &Row) -> Result<User, StoreError> {
    Ok(User {
        name: r.parse(0)?,
        team: r.parse(1)?,
        admin: r.bool(2)?,
    })
}

pub(super) fn load_user(db: &dyn Db, name: &UserName) -> Result<Option<User>, StoreError> {
    db.row(
        "SELECT name, team, admin FROM users WHERE name = ?1",
        args![name.as_str()],
    )?
    .map(|r| row_user(&r))
    .transpose()
}

/// VM roles and drive ownerships of a user: (roles, drives).
fn holdings(db: &dyn Db, name: &UserName) -> Result<(i64, i64), StoreError> {
    let r = db
        .row(
            "SELECT (SELECT COUNT(*) FROM vm_roles WHERE username = ?1),
                    (SELECT COUNT(*) FROM drive_owners WHERE username = ?1)",
            args![name.as_str()],
        )?
        .ok_or(StoreError::NotFound)?;
    Ok((r.int(0)?, r.int(1)?))
}

fn refuse_holdings(db: &dyn Db, name: &UserName) -> Result<(), StoreError> {
    let (roles, drives) = holdings(db, name)?;
    if roles + drives > 0 {
        return Err(StoreError::Holdings {
            user: name.to_string(),
            roles,
            drives,
        });
    }
    Ok(())
}

/// The schema refuses what `refuse_holdings` checks; should a row slip past the check, the
/// foreign key's refusal reads the same.
fn holdings_error(e: StoreError, name: &UserName) -> StoreError {
    if is_constraint(&e) {
        StoreError::Holdings {
            user: name.to_string(),
            roles: 0,
            drives: 0,
        }
    } else {
        e
    }
}

impl Store {
    /// Creates or updates a user; idempotent. A user holding VM roles or drives keeps their
    /// team: roles were granted inside it (sharing never crosses teams).
    pub fn put_user(&self, a: &AuditCtx<'_>, u: &User) -> Result<Change, StoreError> {
        self.mutate(a, |tx| match load_user(tx, &u.name)? {
            Some(old) if old == *u => Ok(Change::Unchanged),
            Some(old) => {
                if old.team != u.team {
                    refuse_holdings(tx, &u.name)?;
                }
                tx.exec(
                    "UPDATE users SET team = ?2, admin = ?3 WHERE name = ?1",
                    args![u.name.as_str(), u.team.as_str(), u.admin],
                )
                .map_err(|e| holdings_error(e, &u.name))?;
                Ok(Change::Updated)
            }
            None => {
                tx.exec(
                    "INSERT INTO users (name, team, admin) VALUES (?1, ?2, ?3)",
                    args![u.name.as_str(), u.team.as_str(), u.admin],
                )?;
                Ok(Change::Created)
            }
        })
    }

    /// Removes a user and their memberships; idempotent. A user holding VM roles or drives
    /// is refused (a deleted owner would leave VMs and drives nobody may manage).
    pub fn delete_user(&self, a: &AuditCtx<'_>, name: &UserName) -> Result<Change, StoreError> {
        self.mutate(a, |tx| {
            refuse_holdings(tx, name)?;
            let n = tx
                .exec("DELETE FROM users WHERE name = ?1", args![name.as_str()])
                .map_err(|e| holdings_error(e, name))?;
            Ok(if n == 0 {
                Change::Unchanged
            } else {
                Change::Removed
            })
        })
    }

    /// One user.
    pub fn user(&self, name: &UserName) -> Result<Option<User>, StoreError> {
        self.read(|conn| load_user(conn, name))
    }

    /// Every user by name.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.read(|db| {
            db.rows("SELECT name, team, admin FROM users ORDER BY name", &[])?
                .iter()
                .map(row_user)
                .collect()
        })
    }
}
