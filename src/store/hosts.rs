//! The hosts of a fleet (DESIGN section 7): each agent's row with its version and heartbeat,
//! stamped with the database's clock so that hosts whose clocks drift still agree on who is
//! down. Heartbeats are not changes: they commit without moving the generation or notifying.

use super::sql::args;
use super::{Store, StoreError};

/// A host of the fleet as last heard of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    /// Its `[fleet] host`.
    pub name: String,
    /// The vmwarden version its agent runs.
    pub version: String,
    /// When its agent started (ms since the epoch, database clock).
    pub started_ms: i64,
    /// Its last heartbeat (ms since the epoch, database clock).
    pub last_seen_ms: i64,
}

impl Store {
    /// Registers this agent's host at start-up (`starting`), or records its heartbeat. A host
    /// name another agent heartbeats for within `dead_after_ms` is `HostTaken`: two agents
    /// under one name would each take the other's VMs for their own. The same agent (its id
    /// lives in its state folder) may take its name back at once after a crash.
    pub fn heartbeat(
        &self,
        version: &str,
        starting: bool,
        dead_after_ms: i64,
    ) -> Result<(), StoreError> {
        let now = self.clock_ms()?;
        let (host, agent) = (self.host(), self.agent());
        self.quiet_write(|db| {
            if let Some(r) = db.row(
                "SELECT agent, last_seen_ms FROM hosts WHERE name = ?1",
                args![host],
            )? {
                let (other, seen) = (r.text(0)?, r.int(1)?);
                if other != agent && (!starting || now - seen <= dead_after_ms) {
                    return Err(StoreError::HostTaken(host.to_owned()));
                }
            }
            db.exec(
                "INSERT INTO hosts (name, version, started_ms, last_seen_ms, agent)
                 VALUES (?1, ?2, ?3, ?3, ?5)
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version,
                    last_seen_ms = excluded.last_seen_ms, agent = excluded.agent,
                    started_ms = CASE WHEN ?4 THEN excluded.started_ms ELSE hosts.started_ms END",
                args![host, version, now, starting, agent],
            )?;
            Ok(())
        })
    }

    /// Every host, and the database's clock now (to judge heartbeats by).
    pub fn hosts(&self) -> Result<(i64, Vec<HostRow>), StoreError> {
        let now = self.clock_ms()?;
        let rows = self.read(|db| {
            db.rows(
                "SELECT name, version, started_ms, last_seen_ms FROM hosts ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(HostRow {
                    name: r.text(0)?,
                    version: r.text(1)?,
                    started_ms: r.int(2)?,
                    last_seen_ms: r.int(3)?,
                })
            })
            .collect()
        })?;
        Ok((now, rows))
    }
}
