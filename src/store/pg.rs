//! The PostgreSQL engine behind the store (`[store] url = "postgres://..."`, DESIGN section
//! 7): a pool of connections (r2d2), the store's `?N` placeholders rewritten to `$N`, writes
//! in SERIALIZABLE transactions and reads in REPEATABLE READ snapshots, and the schema as one
//! baseline at the store's latest version, created under an advisory lock so that agents
//! starting together do not race.
//!
//! The client is the blocking `postgres` crate: the store's methods block and run on the
//! blocking pool already, and the client panics on a tokio worker thread, so nothing here is
//! called from async code.

use super::sql::{Db, Row, Value};
use super::StoreError;
use bytes::BytesMut;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{IsolationLevel, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The pool of connections of one store.
pub(super) type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// What the store shares with its listener and publisher threads.
pub(super) struct Shared {
    /// This agent's host: notifications it sent itself are not news.
    pub host: String,
    /// The store's generation (`Store::generation`).
    pub generation: Arc<AtomicU64>,
    /// The last value of the `vmwarden_generation` sequence this agent saw.
    fence: AtomicI64,
    /// Where events of other agents go (`Store::on_event`).
    on_event: Mutex<Option<EventSink>>,
    /// Where the names of projects whose envelopes another agent changed go (`""`: any
    /// project, after a reconnection lost notifications).
    on_keys: Mutex<Option<EventSink>>,
    stop: AtomicBool,
}

/// Receives the payload of another agent's event.
pub(super) type EventSink = Box<dyn Fn(&str) + Send + Sync>;

impl Shared {
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Owns a pool, the listener and the publisher of one store, and closes them on a thread of
/// its own: closing a client blocks, which the client refuses to do on a thread that drives
/// async tasks (the daemon drops its store there).
pub(super) struct Handle {
    pool: Option<Pool>,
    pub shared: Arc<Shared>,
    publish: Mutex<Option<mpsc::SyncSender<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for Handle {
    type Target = Pool;

    fn deref(&self) -> &Pool {
        self.pool.as_ref().expect("the pool lives until drop")
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.publish.lock().unwrap().take();
        let pool = self.pool.take();
        let threads = std::mem::take(&mut self.threads);
        let _ = std::thread::spawn(move || {
            for t in threads {
                let _ = t.join();
            }
            drop(pool)
        })
        .join();
    }
}

impl Handle {
    /// Sends an event to the other agents (best effort: dropped while PostgreSQL is away or
    /// the queue is full, never blocking the caller).
    pub(super) fn publish(&self, payload: &str) {
        if let Some(tx) = &*self.publish.lock().unwrap() {
            let _ = tx.try_send(format!("{}\n{payload}", self.shared.host));
        }
    }

    /// Sets where events of other agents go.
    pub(super) fn on_event(&self, sink: EventSink) {
        *self.shared.on_event.lock().unwrap() = Some(sink);
    }

    /// Sets where the projects whose envelopes other agents changed go.
    pub(super) fn on_keys(&self, sink: EventSink) {
        *self.shared.on_keys.lock().unwrap() = Some(sink);
    }

    /// Catches up with commits of other agents: when the sequence every commit advances has
    /// moved since this agent last looked, its caches are stale, whether or not the
    /// notification has arrived yet. One round trip.
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        let mut client = self.get().map_err(unavailable)?;
        // The simple protocol: one round trip, where a prepared statement would take two.
        let seen: i64 = client
            .simple_query("SELECT last_value FROM vmwarden_generation")?
            .iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
                _ => None,
            })
            .unwrap_or(0);
        if self.shared.fence.swap(seen, Ordering::AcqRel) != seen {
            self.shared.bump();
        }
        Ok(())
    }
}

/// Channels: one for "something committed", one for events.
const CHANGED: &str = "vmwarden_changed";
const EVENTS: &str = "vmwarden_events";

/// Listens for other agents' commits and events, on a connection of its own, reconnecting
/// with backoff. After every (re)connection the generation moves, since notifications sent
/// while it was away are lost.
fn listen(cfg: postgres::Config, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    while !shared.stop.load(Ordering::Acquire) {
        let Ok(mut client) = cfg.connect(NoTls) else {
            if backoff == Duration::from_millis(100) {
                tracing::warn!("lost the fleet's notifications; reconnecting");
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(500));
            continue;
        };
        if client
            .batch_execute(&format!(
                "LISTEN {CHANGED}; LISTEN {EVENTS}; LISTEN {}",
                super::seals::KEYS_CHANNEL
            ))
            .is_err()
        {
            continue;
        }
        if backoff > Duration::from_millis(100) {
            tracing::info!("following the fleet's notifications again");
        }
        backoff = Duration::from_millis(100);
        shared.bump();
        // A lock sent while this listener was away is lost: every key held is dropped and
        // opened again from its envelope when next needed.
        if let Some(sink) = &*shared.on_keys.lock().unwrap() {
            sink("");
        }
        let mut idle = std::time::Instant::now();
        while !shared.stop.load(Ordering::Acquire) {
            let next = {
                let mut n = client.notifications();
                let mut wait = n.timeout_iter(Duration::from_millis(200));
                wait.next()
                    .map(|o| o.map(|m| (m.channel().to_owned(), m.payload().to_owned())))
            };
            match next {
                Ok(Some((channel, payload))) => deliver(&shared, &channel, &payload),
                // A connection the server ended looks idle to the iterator, so an idle
                // listener asks the server now and then whether it is still there.
                Ok(None) if idle.elapsed() < Duration::from_millis(500) => continue,
                Ok(None) if client.is_valid(Duration::from_secs(1)).is_ok() => {}
                _ => break,
            }
            idle = std::time::Instant::now();
        }
    }
}

fn deliver(shared: &Shared, channel: &str, payload: &str) {
    let (origin, body) = payload.split_once('\n').unwrap_or((payload, ""));
    if origin == shared.host {
        return;
    }
    match channel {
        CHANGED => shared.bump(),
        EVENTS => {
            if let Some(sink) = &*shared.on_event.lock().unwrap() {
                sink(body);
            }
        }
        super::seals::KEYS_CHANNEL => {
            if let Some(sink) = &*shared.on_keys.lock().unwrap() {
                sink(body);
            }
        }
        _ => {}
    }
}

/// Sends queued events with `pg_notify` (through the pool, which reconnects).
fn publisher(pool: Pool, rx: mpsc::Receiver<String>) {
    for payload in rx {
        if let Ok(mut c) = pool.get() {
            let _ = c.execute("SELECT pg_notify($1, $2)", &[&EVENTS, &payload]);
        }
    }
}

/// An arbitrary constant: the advisory lock under which the schema is created or migrated.
const SCHEMA_LOCK: i64 = 0x766d_7761_7264_656e; // "vmwarden"

/// The schema at version 3 (SQLite's migrations 1 to 3 in one step). Text compares byte by
/// byte (`COLLATE "C"`), as in SQLite, whatever the database's locale.
const BASELINE: &str = r#"
CREATE TABLE users (
    name TEXT COLLATE "C" PRIMARY KEY,
    team TEXT COLLATE "C" NOT NULL,
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (name, team)
);
CREATE TABLE projects (
    name TEXT COLLATE "C" PRIMARY KEY,
    verifier BYTEA NOT NULL,
    next_verifier BYTEA,
    delivered BOOLEAN NOT NULL DEFAULT TRUE,
    created_by TEXT COLLATE "C" NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE project_members (
    project TEXT COLLATE "C" NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    username TEXT COLLATE "C" NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    PRIMARY KEY (project, username)
);
CREATE TABLE vms (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    project TEXT COLLATE "C" NOT NULL REFERENCES projects(name),
    team TEXT COLLATE "C" NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    idle TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    state_reason TEXT COLLATE "C" NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (id, project, team)
);
CREATE TABLE vm_roles (
    vm TEXT COLLATE "C" NOT NULL,
    username TEXT COLLATE "C" NOT NULL,
    role TEXT COLLATE "C" NOT NULL CHECK (role IN ('owner', 'user')),
    seq BIGINT NOT NULL,
    project TEXT COLLATE "C" NOT NULL,
    team TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (vm, username),
    FOREIGN KEY (vm, project, team) REFERENCES vms(id, project, team) ON DELETE CASCADE,
    FOREIGN KEY (username, team) REFERENCES users(name, team),
    FOREIGN KEY (project, username) REFERENCES project_members(project, username)
);
CREATE TABLE drives (
    id TEXT COLLATE "C" PRIMARY KEY,
    storage TEXT COLLATE "C" NOT NULL UNIQUE,
    name TEXT COLLATE "C" NOT NULL,
    project TEXT COLLATE "C" NOT NULL REFERENCES projects(name),
    size_mib BIGINT NOT NULL,
    wrapped BYTEA NOT NULL,
    next_wrapped BYTEA,
    attached_to TEXT COLLATE "C" REFERENCES vms(id) ON DELETE SET NULL,
    attach_seq BIGINT NOT NULL DEFAULT 0,
    UNIQUE (id, project)
);
CREATE TABLE drive_owners (
    drive TEXT COLLATE "C" NOT NULL,
    username TEXT COLLATE "C" NOT NULL,
    project TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (drive, username),
    FOREIGN KEY (drive, project) REFERENCES drives(id, project) ON DELETE CASCADE,
    FOREIGN KEY (project, username) REFERENCES project_members(project, username)
);
CREATE TABLE image_intents (
    storage TEXT COLLATE "C" PRIMARY KEY,
    created_ms BIGINT NOT NULL
);
CREATE TABLE audit (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT COLLATE "C" NOT NULL,
    action TEXT COLLATE "C" NOT NULL,
    target TEXT COLLATE "C" NOT NULL,
    vm TEXT COLLATE "C",
    outcome TEXT COLLATE "C" NOT NULL,
    detail TEXT COLLATE "C" NOT NULL DEFAULT ''
);
CREATE INDEX audit_vm ON audit(vm, id);
CREATE INDEX audit_actor ON audit(actor, id);
CREATE INDEX project_members_user ON project_members(username);
CREATE INDEX vms_project_name ON vms(project, name);
CREATE INDEX vm_roles_user ON vm_roles(username);
CREATE INDEX vm_roles_member ON vm_roles(project, username);
CREATE INDEX drives_project_name ON drives(project, name);
CREATE INDEX drives_attached ON drives(attached_to);
CREATE INDEX drive_owners_user ON drive_owners(username);
CREATE INDEX drive_owners_member ON drive_owners(project, username);
"#;

/// The version `BASELINE` creates.
const BASELINE_VERSION: i64 = 3;

/// PostgreSQL migrations after the baseline: `AFTER_BASELINE[i]` takes version
/// `BASELINE_VERSION + i` to the next (the same steps as SQLite's, in this dialect).
const AFTER_BASELINE: &[&str] = &[
    // 4: hosts, placement, and the sequence every commit advances (the generation fence).
    r#"
CREATE TABLE hosts (
    name TEXT COLLATE "C" PRIMARY KEY,
    version TEXT COLLATE "C" NOT NULL,
    started_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    agent TEXT COLLATE "C" NOT NULL DEFAULT ''
);
ALTER TABLE vms ADD COLUMN host TEXT COLLATE "C";
ALTER TABLE image_intents ADD COLUMN host TEXT COLLATE "C";
ALTER TABLE projects ADD COLUMN host TEXT COLLATE "C";
CREATE SEQUENCE vmwarden_generation;
"#,
    // 5: host keys, enrollment, fencing and envelopes (see SQLite's 5).
    r#"
ALTER TABLE hosts ADD COLUMN pubkey TEXT COLLATE "C";
ALTER TABLE hosts ADD COLUMN enrolled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE hosts ADD COLUMN fenced_ms BIGINT;
ALTER TABLE projects ADD COLUMN seal_gen BIGINT NOT NULL DEFAULT 0;
CREATE TABLE envelopes (
    project TEXT COLLATE "C" NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    kind TEXT COLLATE "C" NOT NULL CHECK (kind IN ('admin', 'member', 'key')),
    host TEXT COLLATE "C" NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,
    from_user TEXT COLLATE "C" NOT NULL DEFAULT '',
    expires_ms BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (project, kind, host)
);
"#,
];

/// The version this build creates and reads.
pub(super) fn latest() -> i64 {
    BASELINE_VERSION + AFTER_BASELINE.len() as i64
}

/// Opens a pool on `url`, brings the schema to the latest version, and starts listening to
/// the other agents as `host`.
pub(super) fn connect(
    url: &str,
    host: &str,
    generation: Arc<AtomicU64>,
) -> Result<Handle, StoreError> {
    let cfg: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| StoreError::Unavailable(e.to_string()))?;
    let pool = r2d2::Pool::builder()
        .max_size(8)
        .min_idle(Some(1))
        // A request waits this long for PostgreSQL before it answers 503.
        .connection_timeout(Duration::from_secs(2))
        .build(PostgresConnectionManager::new(cfg.clone(), NoTls))
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    migrate(&pool)?;
    let shared = Arc::new(Shared {
        host: host.to_owned(),
        generation,
        fence: AtomicI64::new(0),
        on_event: Mutex::new(None),
        on_keys: Mutex::new(None),
        stop: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::sync_channel(1024);
    let listener = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || listen(cfg, shared))?
    };
    let publisher = {
        let pool = pool.clone();
        std::thread::Builder::new()
            .name("pg-publish".into())
            .spawn(move || publisher(pool, rx))?
    };
    Ok(Handle {
        pool: Some(pool),
        shared,
        publish: Mutex::new(Some(tx)),
        threads: vec![listener, publisher],
    })
}

fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().map_err(unavailable)?;
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS vmwarden_schema (version BIGINT NOT NULL)")?;
    let version: Option<i64> = tx
        .query_opt("SELECT version FROM vmwarden_schema", &[])?
        .map(|r| r.get(0));
    let latest = latest();
    match version {
        None => {
            tx.batch_execute(BASELINE)?;
            for m in AFTER_BASELINE {
                tx.batch_execute(m)?;
            }
            tx.execute(
                "INSERT INTO vmwarden_schema (version) VALUES ($1)",
                &[&latest],
            )?;
        }
        Some(v) if v > latest => return Err(StoreError::TooNew(v, latest)),
        Some(v) => {
            for m in AFTER_BASELINE.iter().skip((v - BASELINE_VERSION) as usize) {
                tx.batch_execute(m)?;
            }
            tx.execute("UPDATE vmwarden_schema SET version = $1", &[&latest])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The schema version in the database.
pub(super) fn version(pool: &Pool) -> Result<i64, StoreError> {
    let mut client = pool.get().map_err(unavailable)?;
    Ok(client
        .query_one("SELECT version FROM vmwarden_schema", &[])?
        .get(0))
}

pub(super) fn unavailable(e: r2d2::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Runs `f` in a REPEATABLE READ, read-only snapshot.
pub(super) fn read<T>(
    pool: &Pool,
    f: impl FnOnce(&dyn Db) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut client = pool.get().map_err(unavailable)?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let db = PgDb(RefCell::new(tx), Cell::new(false));
    let out = f(&db)?;
    db.0.into_inner().commit()?;
    Ok(out)
}

/// Attempts of a write that PostgreSQL could not serialize with another agent's.
const ATTEMPTS: u32 = 5;

/// Runs `f` in a SERIALIZABLE transaction, committed when it says something changed, and
/// runs it again (up to `ATTEMPTS` times) when another agent's transaction got in the way.
/// A commit tells the other agents (`NOTIFY`, delivered only if it commits) and then moves
/// the fence sequence, after the commit, so that an agent that sees the new value also sees
/// the change.
pub(super) fn write<T, E: From<StoreError>>(
    h: &Handle,
    notify: bool,
    mut f: impl FnMut(&dyn Db) -> Result<(T, bool), E>,
) -> Result<(T, bool), E> {
    let mut client = h.get().map_err(unavailable)?;
    let mut attempt = 1;
    loop {
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .map_err(StoreError::from)?;
        let out = {
            let db = PgDb(RefCell::new(tx), Cell::new(false));
            match f(&db) {
                Ok((out, false)) => return Ok((out, false)),
                Ok((out, true)) => {
                    let PgDb(tx, _) = db;
                    let mut tx = tx.into_inner();
                    let done = tx
                        .execute("SELECT pg_notify($1, $2)", &[&CHANGED, &h.shared.host])
                        .and_then(|_| tx.commit());
                    match done {
                        Ok(()) => Some(out),
                        Err(e) if serialization(&e) && attempt < ATTEMPTS => None,
                        Err(e) => return Err(StoreError::from(e).into()),
                    }
                }
                Err(_) if db.1.get() && attempt < ATTEMPTS => None,
                Err(e) => return Err(e),
            }
        };
        if let Some(out) = out {
            if !notify {
                return Ok((out, true));
            }
            if let Ok(r) = client.query_one("SELECT nextval('vmwarden_generation')", &[]) {
                h.shared.fence.store(r.get(0), Ordering::Release);
            }
            return Ok((out, true));
        }
        attempt += 1;
        // Spread the retries of agents that collided, so they do not collide again.
        std::thread::sleep(Duration::from_millis(
            u64::from(attempt) * 3 + u64::from(rand::random::<u8>() % 8),
        ));
    }
}

fn serialization(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// The store's SQL in this dialect: `?N` becomes `$N`, and bare `?`s are numbered in order.
/// (No statement of the store has a `?` inside a quoted literal.)
pub(super) fn dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut bare = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        out.push('$');
        if chars.peek().is_some_and(char::is_ascii_digit) {
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                out.push(d);
            }
        } else {
            bare += 1;
            out.push_str(&bare.to_string());
        }
    }
    out
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(format!("An integer cannot be a {ty} parameter").into()),
            },
            Value::Bool(b) => b.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Bytes(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn params(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

fn row(r: &postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        values.push(match *c.type_() {
            Type::INT8 => r
                .try_get::<_, Option<i64>>(i)?
                .map_or(Value::Null, Value::Int),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)?
                .map_or(Value::Null, |v| Value::Int(v.into())),
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)?
                .map_or(Value::Null, |v| Value::Int(v.into())),
            Type::BOOL => r
                .try_get::<_, Option<bool>>(i)?
                .map_or(Value::Null, Value::Bool),
            Type::BYTEA => r
                .try_get::<_, Option<Vec<u8>>>(i)?
                .map_or(Value::Null, Value::Bytes),
            _ => r
                .try_get::<_, Option<String>>(i)?
                .map_or(Value::Null, Value::Text),
        });
    }
    Ok(Row::new(values))
}

/// Statements of one transaction; remembers whether one failed for want of serializability
/// (the whole transaction is then worth another attempt).
struct PgDb<'a>(RefCell<postgres::Transaction<'a>>, Cell<bool>);

impl PgDb<'_> {
    fn seen(&self, e: postgres::Error) -> StoreError {
        if serialization(&e) {
            self.1.set(true);
        }
        e.into()
    }
}

impl Db for PgDb<'_> {
    fn exec(&self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        self.0
            .borrow_mut()
            .execute(dialect(sql).as_str(), &params(args))
            .map_err(|e| self.seen(e))
    }

    fn rows(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.0
            .borrow_mut()
            .query(dialect(sql).as_str(), &params(args))
            .map_err(|e| self.seen(e))?
            .iter()
            .map(row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(super::dialect("a = ?1 AND b = ?12"), "a = $1 AND b = $12");
        assert_eq!(
            super::dialect("vm = ? AND at_ms < ? LIMIT ?"),
            "vm = $1 AND at_ms < $2 LIMIT $3"
        );
    }
}
