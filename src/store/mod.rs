//! Durable state: one SQLite file (WAL, synchronous=FULL, foreign keys on), or a PostgreSQL
//! database (`pg`, `[store] url`) that the agents of an enclave will share.
//!
//! Every mutation is one transaction that also writes its audit row, so an acknowledged change
//! and its audit entry are on disk together or not at all. A mutation whose rules span rows
//! (sharing, membership, deletion of users) reads its facts and judges them inside that same
//! transaction (`mutate_checked`), so no interleaving of requests can slip between the check
//! and the write; the schema's foreign keys back the most important of these rules. The schema
//! is versioned with `PRAGMA user_version` (`schema::SQLITE`). Queries go through the `sql`
//! seam (`Db`, `Value`, `Row`), so the resource files never name the engine. Methods block;
//! the service calls them from `spawn_blocking`. Secrets never reach this module except as
//! wrapped (AES-GCM) passphrases and key verifiers.

mod audit;
mod drives;
mod hosts;
mod pg;
mod projects;
mod schema;
mod seals;
mod sql;
mod users;
mod vms;

pub use audit::{AuditCtx, AuditEntry, AuditFilter, AUDIT_MESSAGE_ID};
pub use drives::DriveRow;
pub use hosts::HostRow;
pub use projects::{MemberHoldings, MemberRemoval, ProjectRow};
pub use seals::{Discard, Envelope, Fenced, HostKeyRow, SealPlan, SealState};
#[doc(hidden)]
pub use sql::{Row, Value};
pub use vms::RoleFacts;

use rusqlite::Connection;
use sql::Db;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("Database: {0}")]
    Sqlite(rusqlite::Error),
    /// PostgreSQL failed.
    #[error("Database: {0}")]
    Postgres(postgres::Error),
    /// PostgreSQL cannot be reached (the detail goes to the log, not to callers).
    #[error("The database is unreachable; try again shortly")]
    Unavailable(String),
    /// The VM is held by another host of the fleet, whose agent alone may act on it.
    #[error("The VM runs on host {0}; ask that host's agent")]
    Elsewhere(String),
    /// The file system holding the database is full.
    #[error("The state directory is full")]
    Full,
    /// The row does not exist.
    #[error("Not found")]
    NotFound,
    /// A row the operation names does not exist.
    #[error("{0} {1} does not exist")]
    Missing(&'static str, String),
    /// Another change interfered; nothing was written.
    #[error("{0}")]
    Changed(String),
    /// A name is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// A drive is attached to a VM (or was attached meanwhile).
    #[error("Drive {0} is attached")]
    Attached(String),
    /// A user still holds VM roles or drives.
    #[error("{user} holds {roles} VM roles and {drives} drives")]
    Holdings {
        /// The user.
        user: String,
        /// VM roles held.
        roles: i64,
        /// Drive ownerships held.
        drives: i64,
    },
    /// A project still holds VMs or drives.
    #[error("Project {project} holds {vms} VMs and {drives} drives")]
    NotEmpty {
        /// The project.
        project: String,
        /// VMs in it.
        vms: i64,
        /// Drives in it.
        drives: i64,
    },
    /// The database file's permissions could not be set.
    #[error("Database file: {0}")]
    Io(#[from] std::io::Error),
    /// Another live agent registered this host name.
    #[error("Host {0} is held by another agent (its heartbeat is recent); give each agent its own [fleet] host")]
    HostTaken(String),
    /// The database was written by a newer vmwarden.
    #[error("Database schema version {0} is newer than this vmwarden supports ({1})")]
    TooNew(i64, i64),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                StoreError::Full
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        match e.code() {
            Some(c) if *c == SqlState::DISK_FULL => StoreError::Full,
            Some(c)
                if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                StoreError::Changed("Another agent changed this meanwhile; try again".into())
            }
            // Class 08 (connection exception) and 57P01-03 (the server shuts down or starts).
            Some(c) if c.code().starts_with("08") || c.code().starts_with("57P0") => {
                StoreError::Unavailable(e.to_string())
            }
            _ if e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Postgres(e),
        }
    }
}

/// A refused mutation: the caller's error, and the audit outcome to record for it (`None`:
/// record nothing, for refusals that must leave no trace such as hidden objects).
#[derive(Debug)]
pub struct Refusal<E> {
    /// What the caller gets.
    pub error: E,
    /// `denied:<code>` or similar, written in a transaction of its own.
    pub audit: Option<String>,
}

impl<E> Refusal<E> {
    /// A refusal recorded with `outcome`.
    pub fn audited(error: E, outcome: String) -> Self {
        Self {
            error,
            audit: Some(outcome),
        }
    }

    /// A refusal that leaves no audit row.
    pub fn silent(error: E) -> Self {
        Self { error, audit: None }
    }
}

impl<E: From<StoreError>> From<StoreError> for Refusal<E> {
    fn from(e: StoreError) -> Self {
        Refusal::silent(E::from(e))
    }
}

/// What an idempotent mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
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

/// Where the data lives.
enum Engine {
    /// One SQLite file; one connection, so every transaction runs alone.
    Sqlite(Mutex<Connection>),
    /// A PostgreSQL database shared by agents. `writer` makes this agent's own writes run
    /// one at a time, as on SQLite; writes of other agents are kept apart by SERIALIZABLE.
    Postgres { pool: pg::Handle, writer: Mutex<()> },
}

/// The database handle.
pub struct Store {
    engine: Engine,
    /// This agent's host in the fleet (`[fleet] host`): the VMs it holds are its own.
    host: String,
    /// This agent's identity (kept in its state folder): two agents may not share a host name.
    agent: String,
    /// Bumped after every committed change (on PostgreSQL, other agents' too), so readers can
    /// cache what they derived from the store and know exactly when it went stale.
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// The host of a store nobody named one for (tests; the daemon always names it).
pub const DEFAULT_HOST: &str = "local";

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether the database refused a statement for breaking a constraint (unique, foreign key).
fn is_constraint(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        // Class 23: integrity constraint violation.
        StoreError::Postgres(p) => p.code().is_some_and(|c| c.code().starts_with("23")),
        _ => false,
    }
}

fn unique(e: StoreError, what: &str) -> StoreError {
    if is_constraint(&e) {
        StoreError::Exists(what.to_owned())
    } else {
        e
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
        let store = Self {
            engine: Engine::Sqlite(Mutex::new(conn)),
            host: DEFAULT_HOST.to_owned(),
            agent: uuid::Uuid::new_v4().to_string(),
            generation: Arc::new(AtomicU64::new(0)),
        };
        store.migrate()?;
        store.sqlite().pragma_update(None, "foreign_keys", "ON")?;
        Ok(store)
    }

    /// Connects to a PostgreSQL database (`postgres://...`) and brings its schema to this
    /// build's version. Blocks; never call it on an async worker thread.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_as(url, DEFAULT_HOST)
    }

    /// Connects to a shared PostgreSQL database as the agent of `host`: it follows the other
    /// agents' commits and events (LISTEN) from now on.
    pub fn connect_as(url: &str, host: &str) -> Result<Self, StoreError> {
        let generation = Arc::new(AtomicU64::new(0));
        Ok(Self {
            engine: Engine::Postgres {
                pool: pg::connect(url, host, generation.clone())?,
                writer: Mutex::new(()),
            },
            host: host.to_owned(),
            agent: uuid::Uuid::new_v4().to_string(),
            generation,
        })
    }

    /// Names this agent's host (SQLite: the one host there is).
    pub fn on_host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// Names this agent (its id, kept in its state folder across restarts).
    pub fn as_agent(mut self, agent: &str) -> Self {
        self.agent = agent.to_owned();
        self
    }

    /// This agent's id.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// This agent's host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether this agent's host holds what names `holder` (a VM, a domain): nobody, or this
    /// host. With SQLite there is one agent and everything is its own, whatever name the host
    /// had when it was recorded.
    pub fn holds(&self, holder: Option<&str>) -> bool {
        !self.is_shared() || holder.is_none_or(|h| h == self.host)
    }

    /// Whether other agents share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.engine, Engine::Postgres { .. })
    }

    /// Makes sure every commit other agents finished before now is reflected in
    /// `generation` (one round trip on PostgreSQL; nothing on SQLite).
    pub fn sync(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite(_) => Ok(()),
            Engine::Postgres { pool, .. } => pool.sync(),
        }
    }

    /// Hands an event to the other agents (PostgreSQL; best effort, never blocks).
    pub fn publish(&self, payload: &str) {
        if let Engine::Postgres { pool, .. } = &self.engine {
            pool.publish(payload);
        }
    }

    /// Where the events other agents publish go.
    pub fn on_event(&self, sink: impl Fn(&str) + Send + Sync + 'static) {
        if let Engine::Postgres { pool, .. } = &self.engine {
            pool.on_event(Box::new(sink));
        }
    }

    /// Where the names of projects whose envelopes another agent changed go.
    pub fn on_keys(&self, sink: impl Fn(&str) + Send + Sync + 'static) {
        if let Engine::Postgres { pool, .. } = &self.engine {
            pool.on_keys(Box::new(sink));
        }
    }

    /// The SQLite connection (tests reach under the store with it).
    fn sqlite(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.engine {
            Engine::Sqlite(c) => c.lock().unwrap(),
            Engine::Postgres { .. } => unreachable!("a PostgreSQL store has no SQLite file"),
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.sqlite();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let latest = schema::SQLITE.len() as i64;
        if version > latest {
            return Err(StoreError::TooNew(version, latest));
        }
        // Migrations rebuild tables; foreign keys are checked once at the end instead of
        // per statement (SQLite cannot switch them inside a transaction).
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        for (i, sql) in schema::SQLITE.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            let broken: i64 =
                tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                    r.get(0)
                })?;
            if broken > 0 {
                return Err(StoreError::Sqlite(rusqlite::Error::InvalidQuery));
            }
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

    /// Moves the generation without a change in the store (what callers see changed).
    pub fn touch(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Schema version now in the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        match &self.engine {
            Engine::Sqlite(c) => {
                Ok(c.lock()
                    .unwrap()
                    .query_row("PRAGMA user_version", [], |r| r.get(0))?)
            }
            Engine::Postgres { pool, .. } => pg::version(pool),
        }
    }

    /// The latest schema version this build knows.
    pub fn latest_schema() -> i64 {
        schema::SQLITE.len() as i64
    }

    /// Runs a read on the connection.
    fn read<T>(&self, f: impl FnOnce(&dyn Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match &self.engine {
            Engine::Sqlite(c) => f(&*c.lock().unwrap()),
            Engine::Postgres { pool, .. } => pg::read(pool, f),
        }
    }

    /// Runs `f` in one transaction and writes the audit row in it.
    fn mutate<T>(
        &self,
        audit: &AuditCtx<'_>,
        mut f: impl FnMut(&dyn Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.mutate_checked(audit, |tx| f(tx).map_err(Refusal::silent))
    }

    /// The one place transactions begin and end: runs `f` in a transaction and commits it
    /// when `f` says something changed (`(out, true)`), bumping the generation; otherwise, or
    /// when `f` fails, nothing it wrote is kept. On PostgreSQL, `f` runs again when another
    /// agent's transaction made this one impossible to serialize.
    fn transaction<T, E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&dyn Db) -> Result<(T, bool), E>,
    ) -> Result<T, E> {
        let (out, changed) = match &self.engine {
            Engine::Sqlite(c) => {
                let mut conn = c.lock().unwrap();
                let tx = conn.transaction().map_err(StoreError::from)?;
                let (out, changed) = f(&tx)?;
                if changed {
                    tx.commit().map_err(StoreError::from)?;
                }
                (out, changed)
            }
            Engine::Postgres { pool, writer } => {
                let _one = writer.lock().unwrap();
                pg::write(pool, true, f)?
            }
        };
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
        Ok(out)
    }

    /// Runs `f` in a transaction that changes nothing anyone caches (heartbeats): no
    /// generation, no notification.
    fn quiet_write(&self, f: impl Fn(&dyn Db) -> Result<(), StoreError>) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite(c) => {
                let mut conn = c.lock().unwrap();
                let tx = conn.transaction()?;
                f(&tx)?;
                tx.commit()?;
                Ok(())
            }
            Engine::Postgres { pool, writer } => {
                let _one = writer.lock().unwrap();
                pg::write(pool, false, |db| f(db).map(|()| ((), true))).map(|_| ())
            }
        }
    }

    /// The database's clock (ms since the epoch): the one clock every agent of a fleet
    /// reads, so heartbeats compare whatever the hosts' clocks say.
    pub fn clock_ms(&self) -> Result<i64, StoreError> {
        match &self.engine {
            Engine::Sqlite(_) => Ok(now_ms()),
            Engine::Postgres { .. } => self.read(|db| {
                db.int(
                    "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
                    &[],
                )
            }),
        }
    }

    /// Runs `f` in one transaction; `Ok(None)` means nothing changed: no commit, no audit row.
    fn mutate_opt<T>(
        &self,
        audit: &AuditCtx<'_>,
        mut f: impl FnMut(&dyn Db) -> Result<Option<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let out = self.transaction(|tx| -> Result<_, StoreError> {
            match f(tx)? {
                None => Ok((None, false)),
                Some(out) => {
                    audit::insert(tx, audit, "ok")?;
                    Ok((Some(out), true))
                }
            }
        })?;
        if out.is_some() {
            audit::log(audit, "ok");
        }
        Ok(out)
    }

    /// Runs `f` in one transaction with the audit row; when `f` refuses, nothing it wrote is
    /// kept, and the refusal's audit outcome (if any) is written in a transaction of its own.
    fn mutate_checked<T, E: From<StoreError>>(
        &self,
        audit: &AuditCtx<'_>,
        mut f: impl FnMut(&dyn Db) -> Result<T, Refusal<E>>,
    ) -> Result<T, E> {
        let done = self.transaction(|tx| {
            let out = f(tx)?;
            audit::insert(tx, audit, "ok")?;
            Ok::<_, Refusal<E>>((out, true))
        });
        match done {
            Ok(out) => {
                audit::log(audit, "ok");
                Ok(out)
            }
            Err(Refusal { error, audit: None }) => Err(error),
            Err(Refusal {
                error,
                audit: Some(outcome),
            }) => {
                self.audit_outcome(audit, &outcome).map_err(E::from)?;
                Err(error)
            }
        }
    }

    /// Records a refused or failed attempt (its own transaction; nothing else changed).
    pub fn audit_outcome(&self, audit: &AuditCtx<'_>, outcome: &str) -> Result<(), StoreError> {
        // Nothing anyone caches changes: no generation, no notification.
        self.quiet_write(|db| audit::insert(db, audit, outcome))?;
        audit::log(audit, outcome);
        Ok(())
    }
}

impl Store {
    /// Runs one statement under the store's API, in a transaction of its own, in either
    /// engine's dialect (`?N` placeholders). Tests reach under the store with it, to damage
    /// rows or read what the API never shows; the daemon never calls it.
    #[doc(hidden)]
    pub fn raw(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.transaction(|db| Ok::<_, StoreError>((db.rows(sql, args)?, true)))
    }
}

#[doc(hidden)]
pub mod testpg;
#[cfg(test)]
mod tests;
