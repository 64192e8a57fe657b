//! Durable state in one SQLite file (WAL, synchronous=FULL, foreign keys on).
//!
//! Every mutation is one transaction that also writes its audit row, so an acknowledged change
//! and its audit entry are on disk together or not at all. The schema is versioned with
//! `PRAGMA user_version`; `MIGRATIONS[i]` takes version i to i+1. Methods block; the service
//! calls them from `spawn_blocking`. Secrets never reach this module except as wrapped
//! (AES-GCM) passphrases and key verifiers.

use crate::model::{
    Drive, DriveId, DriveName, IdlePolicy, ProjectName, Role, TeamName, User, UserName, Vm, VmId,
    VmName, VmState,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("Database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The row does not exist.
    #[error("Not found")]
    NotFound,
    /// A name is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// The database file's permissions could not be set.
    #[error("Database file: {0}")]
    Io(#[from] std::io::Error),
    /// The database was written by a newer vmwarden.
    #[error("Database schema version {0} is newer than this vmwarden supports ({1})")]
    TooNew(i64, i64),
}

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE projects (
    name TEXT PRIMARY KEY,
    verifier BLOB NOT NULL,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE project_members (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    PRIMARY KEY (project, user)
);
CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES projects(name),
    team TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    idle TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (project, name)
);
CREATE TABLE vm_roles (
    vm TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    user TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'user')),
    seq INTEGER NOT NULL,
    PRIMARY KEY (vm, user)
);
CREATE TABLE drives (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES projects(name),
    size_mib INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    attached_to TEXT REFERENCES vms(id) ON DELETE SET NULL,
    attach_seq INTEGER NOT NULL DEFAULT 0,
    UNIQUE (project, name)
);
CREATE TABLE drive_owners (
    drive TEXT NOT NULL REFERENCES drives(id) ON DELETE CASCADE,
    user TEXT NOT NULL,
    PRIMARY KEY (drive, user)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    vm TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_vm ON audit(vm, id);
CREATE INDEX audit_actor ON audit(actor, id);
"#];

/// Who did what, for the audit row of a mutation.
#[derive(Debug, Clone)]
pub struct AuditCtx<'a> {
    /// The principal.
    pub actor: &'a str,
    /// The operation (`vm.start`, `user.put`, ...).
    pub action: &'a str,
    /// The object (a name or an id).
    pub target: String,
    /// The VM involved, so VM roles can read the entry.
    pub vm: Option<VmId>,
    /// Free text (a reason, a role); never secrets.
    pub detail: String,
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    /// Monotonic id.
    pub id: i64,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// The principal.
    pub actor: String,
    /// The operation.
    pub action: String,
    /// The object.
    pub target: String,
    /// The VM involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// `ok` or `denied:<code>` / `failed:<code>`.
    pub outcome: String,
    /// Free text.
    pub detail: String,
}

/// Audit query.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this VM.
    pub vm: Option<VmId>,
    /// Only this actor.
    pub actor: Option<String>,
    /// From this time (ms, inclusive).
    pub since_ms: Option<i64>,
    /// Until this time (ms, exclusive).
    pub until_ms: Option<i64>,
    /// Restrict to these VMs (a non-admin's VMs); `None` means no restriction.
    pub vms_allowed: Option<Vec<VmId>>,
    /// At most this many rows, newest first.
    pub limit: usize,
}

/// What an idempotent mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Nothing to do; the state already matched.
    Unchanged,
    /// A new row.
    Created,
    /// An existing row changed.
    Updated,
    /// A row went away.
    Removed,
}

/// A project as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectRow {
    /// Name.
    pub name: ProjectName,
    /// Members in name order.
    pub members: Vec<UserName>,
    /// HMAC verifier of K.
    pub verifier: Vec<u8>,
}

/// The database handle.
pub struct Store {
    conn: Mutex<Connection>,
    /// Bumped after every committed change, so readers can cache what they derived from the
    /// store and know exactly when it went stale.
    generation: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_col<T: std::str::FromStr>(s: String) -> rusqlite::Result<T> {
    s.parse::<T>().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            "bad value".into(),
        )
    })
}

fn unique(e: rusqlite::Error, what: &str) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Exists(what.to_owned())
        }
        _ => StoreError::Sqlite(e),
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        // Wrapped passphrases and verifiers are not secrets, but nobody else needs them.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let store = Self {
            conn: Mutex::new(conn),
            generation: AtomicU64::new(0),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let latest = MIGRATIONS.len() as i64;
        if version > latest {
            return Err(StoreError::TooNew(version, latest));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(StoreError::Sqlite(rusqlite::Error::InvalidQuery));
        }
        Ok(())
    }

    /// Changes committed since open; a cache tagged with an older value is stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Schema version now in the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let conn = self.conn.lock().unwrap();
        Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Runs `f` in one transaction and writes the audit row in it.
    fn mutate<T>(
        &self,
        audit: &AuditCtx<'_>,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        insert_audit(&tx, audit, "ok")?;
        tx.commit()?;
        self.generation.fetch_add(1, Ordering::Release);
        log_audit(audit, "ok");
        Ok(out)
    }

    /// Records a refused or failed attempt (its own transaction; nothing else changed).
    pub fn audit_outcome(&self, audit: &AuditCtx<'_>, outcome: &str) -> Result<(), StoreError> {
        let conn = self.conn.lock().unwrap();
        insert_audit(&conn, audit, outcome)?;
        log_audit(audit, outcome);
        Ok(())
    }

    // ----- users -----

    /// Creates or updates a user; idempotent.
    pub fn put_user(&self, a: &AuditCtx<'_>, u: &User) -> Result<Change, StoreError> {
        self.mutate(a, |tx| {
            let old: Option<(String, bool)> = tx
                .query_row(
                    "SELECT team, admin FROM users WHERE name = ?1",
                    [u.name.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match old {
                Some((team, admin)) if team == u.team.as_str() && admin == u.admin => {
                    Ok(Change::Unchanged)
                }
                Some(_) => {
                    tx.execute(
                        "UPDATE users SET team = ?2, admin = ?3 WHERE name = ?1",
                        params![u.name.as_str(), u.team.as_str(), u.admin],
                    )?;
                    Ok(Change::Updated)
                }
                None => {
                    tx.execute(
                        "INSERT INTO users (name, team, admin) VALUES (?1, ?2, ?3)",
                        params![u.name.as_str(), u.team.as_str(), u.admin],
                    )?;
                    Ok(Change::Created)
                }
            }
        })
    }

    /// Removes a user, its memberships and its roles; idempotent.
    pub fn delete_user(&self, a: &AuditCtx<'_>, name: &UserName) -> Result<Change, StoreError> {
        self.mutate(a, |tx| {
            tx.execute("DELETE FROM vm_roles WHERE user = ?1", [name.as_str()])?;
            tx.execute("DELETE FROM drive_owners WHERE user = ?1", [name.as_str()])?;
            let n = tx.execute("DELETE FROM users WHERE name = ?1", [name.as_str()])?;
            Ok(if n == 0 {
                Change::Unchanged
            } else {
                Change::Removed
            })
        })
    }

    /// VM roles plus drive ownerships a user holds.
    pub fn holdings(&self, name: &UserName) -> Result<i64, StoreError> {
        let conn = self.conn.lock().unwrap();
        Ok(conn.query_row(
            "SELECT (SELECT COUNT(*) FROM vm_roles WHERE user = ?1) + (SELECT COUNT(*) FROM drive_owners WHERE user = ?1)",
            [name.as_str()],
            |r| r.get(0),
        )?)
    }

    /// One user.
    pub fn user(&self, name: &UserName) -> Result<Option<User>, StoreError> {
        let conn = self.conn.lock().unwrap();
        Ok(conn
            .query_row(
                "SELECT name, team, admin FROM users WHERE name = ?1",
                [name.as_str()],
                row_user,
            )
            .optional()?)
    }

    /// Every user by name.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut st = conn.prepare("SELECT name, team, admin FROM users ORDER BY name")?;
        let rows = st.query_map([], row_user)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ----- projects -----

    /// Creates a project with its members and key verifier.
    pub fn create_project(
        &self,
        a: &AuditCtx<'_>,
        name: &ProjectName,
        members: &[UserName],
        verifier: &[u8],
    ) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            tx.execute(
                "INSERT INTO projects (name, verifier, created_by, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![name.as_str(), verifier, a.actor, now_ms()],
            )
            .map_err(|e| unique(e, &format!("Project {name}")))?;
            for m in members {
                tx.execute(
                    "INSERT OR IGNORE INTO project_members (project, user) VALUES (?1, ?2)",
                    params![name.as_str(), m.as_str()],
                )?;
            }
            Ok(())
        })
    }

    /// One project.
    pub fn project(&self, name: &ProjectName) -> Result<Option<ProjectRow>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let verifier: Option<Vec<u8>> = conn
            .query_row(
                "SELECT verifier FROM projects WHERE name = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(verifier) = verifier else {
            return Ok(None);
        };
        let members = members_of(&conn, name.as_str())?;
        Ok(Some(ProjectRow {
            name: name.clone(),
            members,
            verifier,
        }))
    }

    /// Every project by name.
    pub fn projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut st = conn.prepare("SELECT name, verifier FROM projects ORDER BY name")?;
        let rows: Vec<(String, Vec<u8>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(n, verifier)| {
                Ok(ProjectRow {
                    members: members_of(&conn, &n)?,
                    name: parse_col(n)?,
                    verifier,
                })
            })
            .collect()
    }

    /// Adds or removes a member; idempotent.
    pub fn set_member(
        &self,
        a: &AuditCtx<'_>,
        project: &ProjectName,
        user: &UserName,
        present: bool,
    ) -> Result<Change, StoreError> {
        self.mutate(a, |tx| {
            let n = if present {
                tx.execute(
                    "INSERT OR IGNORE INTO project_members (project, user) VALUES (?1, ?2)",
                    params![project.as_str(), user.as_str()],
                )?
            } else {
                tx.execute(
                    "DELETE FROM project_members WHERE project = ?1 AND user = ?2",
                    params![project.as_str(), user.as_str()],
                )?
            };
            Ok(match (n, present) {
                (0, _) => Change::Unchanged,
                (_, true) => Change::Created,
                (_, false) => Change::Removed,
            })
        })
    }

    /// Replaces the verifier and every drive's wrapped passphrase in one transaction (re-key).
    pub fn rekey_project(
        &self,
        a: &AuditCtx<'_>,
        project: &ProjectName,
        verifier: &[u8],
        rewrapped: &[(DriveId, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            tx.execute(
                "UPDATE projects SET verifier = ?2 WHERE name = ?1",
                params![project.as_str(), verifier],
            )?;
            // Every drive of the project must be re-wrapped in this same transaction, or a
            // drive would stay wrapped under a key nobody can rebuild any more.
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM drives WHERE project = ?1",
                [project.as_str()],
                |r| r.get(0),
            )?;
            if count != rewrapped.len() as i64 {
                return Err(StoreError::Exists(format!(
                    "A drive created in project {project} during the re-key"
                )));
            }
            for (id, w) in rewrapped {
                let n = tx.execute(
                    "UPDATE drives SET wrapped = ?2 WHERE id = ?1 AND project = ?3",
                    params![id.to_string(), w, project.as_str()],
                )?;
                if n != 1 {
                    return Err(StoreError::NotFound);
                }
            }
            Ok(())
        })
    }

    /// Wrapped passphrases of every drive in a project.
    pub fn project_drive_secrets(
        &self,
        project: &ProjectName,
    ) -> Result<Vec<(DriveId, Vec<u8>)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut st = conn.prepare("SELECT id, wrapped FROM drives WHERE project = ?1")?;
        let rows = st
            .query_map([project.as_str()], |r| {
                Ok((parse_col(r.get(0)?)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ----- VMs -----

    /// Inserts a new VM with its creator as owner and its drives attached.
    pub fn create_vm(&self, a: &AuditCtx<'_>, vm: &Vm) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            tx.execute(
                "INSERT INTO vms (id, name, project, team, vcpus, memory_mib, idle, state, state_reason, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    vm.id.to_string(),
                    vm.name.as_str(),
                    vm.project.as_str(),
                    vm.team.as_str(),
                    vm.vcpus,
                    vm.memory_mib as i64,
                    serde_json::to_string(&vm.idle).expect("idle policy serializes"),
                    vm.state.as_str(),
                    vm.state_reason,
                    now_ms()
                ],
            )
            .map_err(|e| unique(e, &format!("VM {} in project {}", vm.name, vm.project)))?;
            for (i, o) in vm.owners.iter().enumerate() {
                set_role_tx(tx, vm.id, o, Some(Role::Owner), i as i64)?;
            }
            for d in &vm.drives {
                attach_tx(tx, vm.id, *d)?;
            }
            Ok(())
        })
    }

    /// One VM with roles and drives.
    pub fn vm(&self, id: VmId) -> Result<Option<Vm>, StoreError> {
        let conn = self.conn.lock().unwrap();
        load_vm(&conn, id)
    }

    /// Every VM.
    pub fn vms(&self) -> Result<Vec<Vm>, StoreError> {
        let conn = self.conn.lock().unwrap();
        load_vms(&conn, None)
    }

    /// Updates size and idle policy; returns whether anything changed.
    pub fn update_vm(
        &self,
        a: &AuditCtx<'_>,
        id: VmId,
        vcpus: u32,
        memory_mib: u64,
        idle: &IdlePolicy,
    ) -> Result<Change, StoreError> {
        self.mutate(a, |tx| {
            let n = tx.execute(
                "UPDATE vms SET vcpus = ?2, memory_mib = ?3, idle = ?4 WHERE id = ?1
                 AND (vcpus != ?2 OR memory_mib != ?3 OR idle != ?4)",
                params![
                    id.to_string(),
                    vcpus,
                    memory_mib as i64,
                    serde_json::to_string(idle).expect("idle policy serializes")
                ],
            )?;
            Ok(if n == 0 {
                Change::Unchanged
            } else {
                Change::Updated
            })
        })
    }

    /// Deletes a VM; its drives become detached and stay with their owners.
    pub fn delete_vm(&self, a: &AuditCtx<'_>, id: VmId) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            let n = tx.execute("DELETE FROM vms WHERE id = ?1", [id.to_string()])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    /// Records a state change with its reason.
    pub fn set_state(
        &self,
        a: &AuditCtx<'_>,
        id: VmId,
        state: VmState,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            tx.execute(
                "UPDATE vms SET state = ?2, state_reason = ?3 WHERE id = ?1",
                params![id.to_string(), state.as_str(), reason],
            )?;
            Ok(())
        })
    }

    /// Grants or changes a role (rule 7: owners also own the VM's drives; losing owner
    /// loses them).
    pub fn set_role(
        &self,
        a: &AuditCtx<'_>,
        vm: VmId,
        user: &UserName,
        role: Option<Role>,
    ) -> Result<Change, StoreError> {
        self.mutate(a, |tx| {
            let seq: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM vm_roles WHERE vm = ?1",
                [vm.to_string()],
                |r| r.get(0),
            )?;
            set_role_tx(tx, vm, user, role, seq)
        })
    }

    // ----- drives -----

    /// Inserts a drive owned by its creator.
    pub fn create_drive(
        &self,
        a: &AuditCtx<'_>,
        d: &Drive,
        wrapped: &[u8],
    ) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            tx.execute(
                "INSERT INTO drives (id, name, project, size_mib, wrapped) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    d.id.to_string(),
                    d.name.as_str(),
                    d.project.as_str(),
                    d.size_mib as i64,
                    wrapped
                ],
            )
            .map_err(|e| unique(e, &format!("Drive {} in project {}", d.name, d.project)))?;
            for o in &d.owners {
                tx.execute(
                    "INSERT INTO drive_owners (drive, user) VALUES (?1, ?2)",
                    params![d.id.to_string(), o.as_str()],
                )?;
            }
            Ok(())
        })
    }

    /// One drive with its wrapped passphrase.
    pub fn drive(&self, id: DriveId) -> Result<Option<(Drive, Vec<u8>)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        load_drive(&conn, id)
    }

    /// Every drive.
    pub fn drives(&self) -> Result<Vec<Drive>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let ids: Vec<DriveId> = {
            let mut st = conn.prepare("SELECT id FROM drives ORDER BY project, name")?;
            let v = st
                .query_map([], |r| parse_col(r.get(0)?))?
                .collect::<Result<_, _>>()?;
            v
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((d, _)) = load_drive(&conn, id)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Deletes a detached drive's row.
    /// Deletes a drive's row only if it is still detached (checked in the same statement,
    /// so a concurrent attach wins and the image stays).
    pub fn delete_drive(&self, a: &AuditCtx<'_>, id: DriveId) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            let n = tx.execute(
                "DELETE FROM drives WHERE id = ?1 AND attached_to IS NULL",
                [id.to_string()],
            )?;
            if n != 1 {
                return Err(StoreError::Exists(format!("Attachment of drive {id}")));
            }
            Ok(())
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
            tx.execute(
                "DELETE FROM drive_owners WHERE drive = ?1",
                [drive.to_string()],
            )?;
            for o in owners {
                tx.execute(
                    "INSERT INTO drive_owners (drive, user) VALUES (?1, ?2)",
                    params![drive.to_string(), o.as_str()],
                )?;
            }
            Ok(())
        })
    }

    /// Detaches a drive; the detaching owner keeps it alone (a co-owner "takes" the drive).
    pub fn detach(
        &self,
        a: &AuditCtx<'_>,
        drive: DriveId,
        keeper: &UserName,
    ) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            tx.execute(
                "UPDATE drives SET attached_to = NULL WHERE id = ?1",
                [drive.to_string()],
            )?;
            tx.execute(
                "DELETE FROM drive_owners WHERE drive = ?1",
                [drive.to_string()],
            )?;
            tx.execute(
                "INSERT INTO drive_owners (drive, user) VALUES (?1, ?2)",
                params![drive.to_string(), keeper.as_str()],
            )?;
            Ok(())
        })
    }

    // ----- audit -----

    /// Audit rows matching `f`, newest first.
    pub fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut sql = String::from(
            "SELECT id, at_ms, actor, action, target, vm, outcome, detail FROM audit WHERE 1=1",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![];
        if let Some(vm) = f.vm {
            sql.push_str(" AND vm = ?");
            args.push(vm.to_string().into());
        }
        if let Some(a) = &f.actor {
            sql.push_str(" AND actor = ?");
            args.push(a.clone().into());
        }
        if let Some(s) = f.since_ms {
            sql.push_str(" AND at_ms >= ?");
            args.push(s.into());
        }
        if let Some(u) = f.until_ms {
            sql.push_str(" AND at_ms < ?");
            args.push(u.into());
        }
        if let Some(allowed) = &f.vms_allowed {
            sql.push_str(" AND vm IN (SELECT value FROM json_each(?))");
            let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
            args.push(serde_json::to_string(&list).expect("strings").into());
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push((f.limit.clamp(1, 10_000) as i64).into());
        let mut st = conn.prepare(&sql)?;
        let rows = st
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    vm: r.get(5)?,
                    outcome: r.get(6)?,
                    detail: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

/// The journal MESSAGE_ID of audit entries (one per audit row), so operators can select them
/// with `journalctl MESSAGE_ID=5d1e8a4f0b2c4e6f9a7d3c1b2e4f6a80`. A fixed random 128-bit id,
/// as systemd's catalog expects; never change it.
pub const AUDIT_MESSAGE_ID: &str = "5d1e8a4f0b2c4e6f9a7d3c1b2e4f6a80";

/// Mirrors a committed audit row into the log; under journald the fields become journal
/// fields (VM, USER, ACTION, OUTCOME, MESSAGE_ID).
fn log_audit(a: &AuditCtx<'_>, outcome: &str) {
    tracing::info!(
        target: "vmwarden::audit",
        message_id = AUDIT_MESSAGE_ID,
        vm = a.vm.map(|v| v.to_string()).unwrap_or_default(),
        user = a.actor,
        action = a.action,
        object = %a.target,
        outcome,
        "{} {} {}: {}",
        a.actor,
        a.action,
        a.target,
        outcome
    );
}

fn insert_audit(conn: &Connection, a: &AuditCtx<'_>, outcome: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit (at_ms, actor, action, target, vm, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            now_ms(),
            a.actor,
            a.action,
            a.target,
            a.vm.map(|v| v.to_string()),
            outcome,
            a.detail
        ],
    )?;
    Ok(())
}

fn row_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: parse_col(r.get(0)?)?,
        team: parse_col::<TeamName>(r.get(1)?)?,
        admin: r.get(2)?,
    })
}

fn members_of(conn: &Connection, project: &str) -> Result<Vec<UserName>, StoreError> {
    let mut st =
        conn.prepare_cached("SELECT user FROM project_members WHERE project = ?1 ORDER BY user")?;
    let rows = st
        .query_map([project], |r| parse_col(r.get(0)?))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

fn set_role_tx(
    tx: &Connection,
    vm: VmId,
    user: &UserName,
    role: Option<Role>,
    seq: i64,
) -> Result<Change, StoreError> {
    let old: Option<String> = tx
        .query_row(
            "SELECT role FROM vm_roles WHERE vm = ?1 AND user = ?2",
            params![vm.to_string(), user.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let new = role.map(Role::as_str);
    if old.as_deref() == new {
        return Ok(Change::Unchanged);
    }
    match role {
        Some(r) => {
            tx.execute(
                "INSERT INTO vm_roles (vm, user, role, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (vm, user) DO UPDATE SET role = excluded.role",
                params![vm.to_string(), user.as_str(), r.as_str(), seq],
            )?;
        }
        None => {
            tx.execute(
                "DELETE FROM vm_roles WHERE vm = ?1 AND user = ?2",
                params![vm.to_string(), user.as_str()],
            )?;
        }
    }
    // Rule 7: owners of a VM own its attached drives.
    if role == Some(Role::Owner) {
        tx.execute(
            "INSERT OR IGNORE INTO drive_owners (drive, user)
             SELECT id, ?2 FROM drives WHERE attached_to = ?1",
            params![vm.to_string(), user.as_str()],
        )?;
    } else if old.as_deref() == Some("owner") {
        tx.execute(
            "DELETE FROM drive_owners WHERE user = ?2 AND drive IN
             (SELECT id FROM drives WHERE attached_to = ?1)",
            params![vm.to_string(), user.as_str()],
        )?;
    }
    Ok(if old.is_none() {
        Change::Created
    } else if role.is_none() {
        Change::Removed
    } else {
        Change::Updated
    })
}

fn attach_tx(tx: &Connection, vm: VmId, drive: DriveId) -> Result<(), StoreError> {
    let seq: i64 = tx.query_row(
        "SELECT COALESCE(MAX(attach_seq), 0) + 1 FROM drives WHERE attached_to = ?1",
        [vm.to_string()],
        |r| r.get(0),
    )?;
    let n = tx.execute(
        "UPDATE drives SET attached_to = ?1, attach_seq = ?3 WHERE id = ?2 AND attached_to IS NULL",
        params![vm.to_string(), drive.to_string(), seq],
    )?;
    if n == 0 {
        return Err(StoreError::Exists(format!("Attachment of drive {drive}")));
    }
    tx.execute(
        "DELETE FROM drive_owners WHERE drive = ?1",
        [drive.to_string()],
    )?;
    tx.execute(
        "INSERT INTO drive_owners (drive, user) SELECT ?2, user FROM vm_roles WHERE vm = ?1 AND role = 'owner'",
        params![vm.to_string(), drive.to_string()],
    )?;
    Ok(())
}

fn load_vms(conn: &Connection, only: Option<VmId>) -> Result<Vec<Vm>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT id, name, project, team, vcpus, memory_mib, idle, state, state_reason FROM vms
         WHERE (?1 IS NULL OR id = ?1) ORDER BY created_ms, id",
    )?;
    let mut vms: Vec<Vm> = st
        .query_map([only.map(|v| v.to_string())], |r| {
            let idle: String = r.get(6)?;
            let state: String = r.get(7)?;
            Ok(Vm {
                id: parse_col(r.get(0)?)?,
                name: parse_col::<VmName>(r.get(1)?)?,
                project: parse_col(r.get(2)?)?,
                team: parse_col(r.get(3)?)?,
                vcpus: r.get(4)?,
                memory_mib: r.get::<_, i64>(5)? as u64,
                idle: serde_json::from_str(&idle).unwrap_or_default(),
                state: if state == "running" {
                    VmState::Running
                } else {
                    VmState::Stopped
                },
                state_reason: r.get(8)?,
                owners: vec![],
                users: vec![],
                drives: vec![],
            })
        })?
        .collect::<Result<_, _>>()?;
    if vms.is_empty() {
        return Ok(vms);
    }
    let index: std::collections::HashMap<VmId, usize> =
        vms.iter().enumerate().map(|(i, v)| (v.id, i)).collect();
    let mut roles = conn.prepare_cached(
        "SELECT vm, user, role FROM vm_roles WHERE (?1 IS NULL OR vm = ?1) ORDER BY seq, user",
    )?;
    let mut rows = roles.query([only.map(|v| v.to_string())])?;
    while let Some(r) = rows.next()? {
        let vm: VmId = parse_col(r.get(0)?)?;
        let user: UserName = parse_col(r.get(1)?)?;
        let role: String = r.get(2)?;
        if let Some(i) = index.get(&vm) {
            if role == "owner" {
                vms[*i].owners.push(user);
            } else {
                vms[*i].users.push(user);
            }
        }
    }
    let mut drives = conn.prepare_cached(
        "SELECT attached_to, id FROM drives WHERE attached_to IS NOT NULL AND (?1 IS NULL OR attached_to = ?1)
         ORDER BY attach_seq, id",
    )?;
    let mut rows = drives.query([only.map(|v| v.to_string())])?;
    while let Some(r) = rows.next()? {
        let vm: VmId = parse_col(r.get(0)?)?;
        let d: DriveId = parse_col(r.get(1)?)?;
        if let Some(i) = index.get(&vm) {
            vms[*i].drives.push(d);
        }
    }
    Ok(vms)
}

fn load_vm(conn: &Connection, id: VmId) -> Result<Option<Vm>, StoreError> {
    Ok(load_vms(conn, Some(id))?.into_iter().next())
}

fn load_drive(conn: &Connection, id: DriveId) -> Result<Option<(Drive, Vec<u8>)>, StoreError> {
    type DriveRow = (String, String, i64, Vec<u8>, Option<String>);
    let row: Option<DriveRow> = conn
        .query_row(
            "SELECT name, project, size_mib, wrapped, attached_to FROM drives WHERE id = ?1",
            [id.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((name, project, size, wrapped, attached)) = row else {
        return Ok(None);
    };
    let mut st =
        conn.prepare_cached("SELECT user FROM drive_owners WHERE drive = ?1 ORDER BY user")?;
    let owners = st
        .query_map([id.to_string()], |r| parse_col(r.get(0)?))?
        .collect::<Result<_, _>>()?;
    Ok(Some((
        Drive {
            id,
            name: parse_col::<DriveName>(name)?,
            project: parse_col(project)?,
            size_mib: size as u64,
            owners,
            attached_to: attached.map(parse_col).transpose()?,
        },
        wrapped,
    )))
}

#[cfg(test)]
mod tests;
