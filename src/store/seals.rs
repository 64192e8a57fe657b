//! Fleet unlock in the store (DESIGN section 7): the hosts' public keys and enrollment,
//! fencing, and the envelopes that carry pending halves and rebuilt keys to enrolled hosts.
//!
//! The store sees envelopes only as age ciphertext: it never holds anything that opens them.
//! Every change of a project's envelopes moves its `seal_gen` in the transaction of the change
//! it belongs to (an unlock's audit row, a re-key's promotion), so two agents that judged an
//! unlock from the same envelopes cannot both commit, and the others learn of it through
//! `NOTIFY vmwarden_keys`. An envelope is only ever written for a host that is enrolled with
//! the very key it was sealed to, checked in the writing transaction.

use super::audit::{self, AuditCtx};
use super::sql::{args, Db};
use super::{Store, StoreError};
use crate::model::{ProjectName, VmId};

/// The channel that tells every agent a project's envelopes changed (payload: host, project
/// and what changed, one per line).
pub(super) const KEYS_CHANNEL: &str = "vmwarden_keys";

/// One sealed secret for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `admin`, `member` or `key`.
    pub kind: String,
    /// The host it is sealed to.
    pub host: String,
    /// The public key it is sealed to (the write checks the host is enrolled with it).
    pub sealed_to: String,
    /// Who submitted the half (empty for a key).
    pub from_user: String,
    /// Until when it may be opened (ms since the epoch, database clock).
    pub expires_ms: i64,
    /// The age ciphertext.
    pub body: Vec<u8>,
}

/// A project's envelopes as this host sees them.
#[derive(Debug, Clone)]
pub struct SealState {
    /// The project's `seal_gen`.
    pub gen: i64,
    /// The database's clock when read.
    pub now_ms: i64,
    /// The unexpired envelopes sealed to this host.
    pub mine: Vec<Envelope>,
}

/// Which envelopes a change removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// None.
    Nothing,
    /// The pending halves.
    Halves,
    /// All of them (a lock).
    All,
}

/// A change of one project's envelopes, made inside the transaction of the change it follows.
#[derive(Debug, Clone)]
pub struct SealPlan {
    /// The project.
    pub project: ProjectName,
    /// The `seal_gen` the change was judged from (`None`: whatever it is now).
    pub expect: Option<i64>,
    /// What goes.
    pub drop: Discard,
    /// What comes.
    pub put: Vec<Envelope>,
    /// A re-key's promotion: the `key` envelopes are replaced by `put` (sealed with the
    /// expiry of this host's envelope of K), and nothing is put when there were none (the
    /// project locked meanwhile).
    pub rekey: bool,
}

/// A host's key and enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyRow {
    /// The host.
    pub name: String,
    /// Its published public key, if its agent has published one.
    pub pubkey: Option<String>,
    /// Whether an admin enrolled it.
    pub enrolled: bool,
    /// When an admin fenced it, if it is fenced.
    pub fenced_ms: Option<i64>,
}

/// What fencing a host did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    /// Whether it was fenced already.
    pub already: bool,
    /// The VMs it held, now stopped and free to start elsewhere.
    pub released: Vec<VmId>,
}

impl Store {
    /// Publishes this host's public key. A key that differs from the one an admin enrolled
    /// (the state folder was replaced) un-enrolls the host and drops its envelopes: a new
    /// key must be enrolled again.
    pub fn publish_host_key(&self, pubkey: &str) -> Result<bool, StoreError> {
        let host = self.host();
        let mut changed = false;
        self.transaction(|db| {
            let old = db
                .row("SELECT pubkey FROM hosts WHERE name = ?1", args![host])?
                .map(|r| r.opt_text(0))
                .transpose()?
                .flatten();
            if old.as_deref() == Some(pubkey) {
                return Ok::<_, StoreError>(((), false));
            }
            changed = old.is_some();
            db.exec(
                "UPDATE hosts SET pubkey = ?2, enrolled = ?3 WHERE name = ?1",
                args![host, pubkey, false],
            )?;
            db.exec("DELETE FROM envelopes WHERE host = ?1", args![host])?;
            Ok(((), true))
        })?;
        Ok(changed)
    }

    /// Every host's key, enrollment and fencing.
    pub fn host_keys(&self) -> Result<Vec<HostKeyRow>, StoreError> {
        self.read(host_rows)
    }

    /// Enrolls `host` with the key it published, if that is still `pubkey` (what the admin
    /// compared the fingerprint of). `Ok(false)`: it was enrolled already.
    pub fn enroll(&self, a: &AuditCtx<'_>, host: &str, pubkey: &str) -> Result<bool, StoreError> {
        self.mutate_opt(a, |db| {
            let row = db.row(
                "SELECT pubkey, enrolled FROM hosts WHERE name = ?1",
                args![host],
            )?;
            let Some(r) = row else {
                return Err(StoreError::Missing("Host", host.to_owned()));
            };
            if r.opt_text(0)?.as_deref() != Some(pubkey) {
                return Err(StoreError::Changed(format!(
                    "Host {host} published another key meanwhile; compare its fingerprint again"
                )));
            }
            if r.bool(1)? {
                return Ok(None);
            }
            db.exec(
                "UPDATE hosts SET enrolled = ?2 WHERE name = ?1",
                args![host, true],
            )?;
            Ok(Some(()))
        })
        .map(|o| o.is_some())
    }

    /// Un-enrolls `host` and deletes every envelope sealed to it, at once. `Ok(None)`: it was
    /// not enrolled; otherwise the number of envelopes deleted.
    pub fn unenroll(&self, a: &AuditCtx<'_>, host: &str) -> Result<Option<i64>, StoreError> {
        let shared = self.is_shared();
        self.mutate_opt(a, |db| {
            let Some(r) = db.row("SELECT enrolled FROM hosts WHERE name = ?1", args![host])? else {
                return Err(StoreError::Missing("Host", host.to_owned()));
            };
            if !r.bool(0)? {
                return Ok(None);
            }
            db.exec(
                "UPDATE hosts SET enrolled = ?2 WHERE name = ?1",
                args![host, false],
            )?;
            let projects: Vec<String> = db
                .rows(
                    "SELECT DISTINCT project FROM envelopes WHERE host = ?1",
                    args![host],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?;
            let n = db.exec("DELETE FROM envelopes WHERE host = ?1", args![host])? as i64;
            for p in &projects {
                db.exec(
                    "UPDATE projects SET seal_gen = seal_gen + 1 WHERE name = ?1",
                    args![p.as_str()],
                )?;
                if shared {
                    notify_keys(db, self.host(), p, &format!("unenroll:{host}"))?;
                }
            }
            Ok(Some(n))
        })
    }

    /// Fences `host`: its operator states it is powered off. Every VM it held is recorded
    /// stopped (reason `fenced`) and may start elsewhere. The caller checked it is down.
    pub fn fence(&self, a: &AuditCtx<'_>, host: &str, now_ms: i64) -> Result<Fenced, StoreError> {
        self.mutate(a, |db| {
            let Some(r) = db.row("SELECT fenced_ms FROM hosts WHERE name = ?1", args![host])?
            else {
                return Err(StoreError::Missing("Host", host.to_owned()));
            };
            let already = r.opt_int(0)?.is_some();
            if !already {
                db.exec(
                    "UPDATE hosts SET fenced_ms = ?2 WHERE name = ?1",
                    args![host, now_ms],
                )?;
            }
            let released: Vec<VmId> = db
                .rows(
                    "SELECT id FROM vms WHERE host = ?1 ORDER BY id",
                    args![host],
                )?
                .iter()
                .map(|r| r.parse(0))
                .collect::<Result<_, _>>()?;
            db.exec(
                "UPDATE vms SET state = 'stopped', state_reason = 'fenced', host = NULL
                 WHERE host = ?1",
                args![host],
            )?;
            Ok(Fenced { already, released })
        })
    }

    /// Whether this host was fenced (it must destroy what it still runs for VMs held
    /// elsewhere before it acts again).
    pub fn fenced(&self) -> Result<bool, StoreError> {
        let host = self.host();
        self.read(|db| {
            Ok(db
                .row("SELECT fenced_ms FROM hosts WHERE name = ?1", args![host])?
                .map(|r| r.opt_int(0))
                .transpose()?
                .flatten()
                .is_some())
        })
    }

    /// Clears this host's fence after it destroyed its stale domains (each one recorded in
    /// `destroyed`, an audit row per domain).
    pub fn unfence(&self, destroyed: &[AuditCtx<'_>]) -> Result<(), StoreError> {
        let host = self.host();
        self.transaction(|db| {
            for a in destroyed {
                audit::insert(db, a, "ok")?;
            }
            db.exec(
                "UPDATE hosts SET fenced_ms = NULL WHERE name = ?1",
                args![host],
            )?;
            Ok::<_, StoreError>(((), true))
        })?;
        for a in destroyed {
            audit::log(a, "ok");
        }
        Ok(())
    }

    /// A project's `seal_gen`, the unexpired envelopes sealed to this host and every host's
    /// key and enrollment, from one snapshot (and the database's clock, read in it).
    pub fn seal_state(
        &self,
        project: &ProjectName,
    ) -> Result<(SealState, Vec<HostKeyRow>), StoreError> {
        let host = self.host();
        let shared = self.is_shared();
        self.read(|db| {
            let now_ms = if shared {
                db.int(
                    "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
                    &[],
                )?
            } else {
                super::now_ms()
            };
            let gen = db
                .row(
                    "SELECT seal_gen FROM projects WHERE name = ?1",
                    args![project.as_str()],
                )?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(-1);
            let mine = db
                .rows(
                    "SELECT kind, from_user, expires_ms, body FROM envelopes
                     WHERE project = ?1 AND host = ?2 AND expires_ms > ?3",
                    args![project.as_str(), host, now_ms],
                )?
                .iter()
                .map(|r| {
                    Ok(Envelope {
                        kind: r.text(0)?,
                        host: host.to_owned(),
                        sealed_to: String::new(),
                        from_user: r.text(1)?,
                        expires_ms: r.int(2)?,
                        body: r.bytes(3)?,
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            Ok((SealState { gen, now_ms, mine }, host_rows(db)?))
        })
    }

    /// Every project's `seal_gen` (to find which ones changed since this agent looked).
    pub fn seal_gens(&self) -> Result<Vec<(ProjectName, i64)>, StoreError> {
        self.read(|db| {
            db.rows("SELECT name, seal_gen FROM projects", &[])?
                .iter()
                .map(|r| Ok((r.parse(0)?, r.int(1)?)))
                .collect()
        })
    }

    /// Records an unlock or lock attempt with `outcome` and changes the project's envelopes
    /// with it, in one transaction. Returns how many envelopes were deleted.
    pub fn record_seal(
        &self,
        a: &AuditCtx<'_>,
        outcome: &str,
        plan: &SealPlan,
    ) -> Result<i64, StoreError> {
        let n = self.transaction(|db| {
            let n = self.apply_seal(db, plan)?;
            audit::insert(db, a, outcome)?;
            Ok::<_, StoreError>((n, true))
        })?;
        audit::log(a, outcome);
        Ok(n)
    }

    /// Makes `plan` in the transaction `db`.
    pub(super) fn apply_seal(&self, db: &dyn Db, plan: &SealPlan) -> Result<i64, StoreError> {
        let project = plan.project.as_str();
        let gen = db
            .row(
                "SELECT seal_gen FROM projects WHERE name = ?1",
                args![project],
            )?
            .map(|r| r.int(0))
            .transpose()?
            .ok_or_else(|| StoreError::Missing("Project", project.to_owned()))?;
        if plan.expect.is_some_and(|e| e != gen) {
            return Err(StoreError::Changed(format!(
                "The key of project {project} changed through another host meanwhile; try again"
            )));
        }
        // A re-key's promotion: K's envelopes give way to K''s, which are written only where
        // K's were (none: the project locked meanwhile, and stays locked).
        let mut had_key = true;
        if plan.rekey {
            had_key = db.exec(
                "DELETE FROM envelopes WHERE project = ?1 AND kind = 'key'",
                args![project],
            )? > 0;
        }
        let dropped = match plan.drop {
            Discard::Nothing => 0,
            Discard::Halves => db.exec(
                "DELETE FROM envelopes WHERE project = ?1 AND kind <> 'key'",
                args![project],
            )?,
            Discard::All => db.exec("DELETE FROM envelopes WHERE project = ?1", args![project])?,
        } as i64;
        for e in plan.put.iter().filter(|_| had_key) {
            // Only a host enrolled with the very key the envelope was sealed to receives it
            // (un-enrolled or re-keyed meanwhile: nothing is written for it). An expired
            // envelope not yet purged gives way.
            db.exec(
                "INSERT INTO envelopes (project, kind, host, from_user, expires_ms, body)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS
                    (SELECT 1 FROM hosts WHERE name = ?3 AND enrolled = ?7 AND pubkey = ?8)
                 ON CONFLICT (project, kind, host) DO UPDATE SET from_user = excluded.from_user,
                    expires_ms = excluded.expires_ms, body = excluded.body",
                args![
                    project,
                    e.kind.as_str(),
                    e.host.as_str(),
                    e.from_user.as_str(),
                    e.expires_ms,
                    e.body.as_slice(),
                    true,
                    e.sealed_to.as_str()
                ],
            )?;
        }
        db.exec(
            "UPDATE projects SET seal_gen = seal_gen + 1 WHERE name = ?1",
            args![project],
        )?;
        if self.is_shared() {
            let what = if plan.drop == Discard::All {
                "lock"
            } else {
                "change"
            };
            notify_keys(db, self.host(), project, what)?;
        }
        Ok(dropped)
    }

    /// Deletes expired envelopes (any agent may; expiry is already enforced on read).
    pub fn purge_envelopes(&self) -> Result<(), StoreError> {
        if !self.is_shared() {
            return Ok(());
        }
        let now = self.clock_ms()?;
        self.quiet_write(|db| {
            db.exec("DELETE FROM envelopes WHERE expires_ms <= ?1", args![now])?;
            Ok(())
        })
    }
}

fn host_rows(db: &dyn Db) -> Result<Vec<HostKeyRow>, StoreError> {
    db.rows(
        "SELECT name, pubkey, enrolled, fenced_ms FROM hosts ORDER BY name",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok(HostKeyRow {
            name: r.text(0)?,
            pubkey: r.opt_text(1)?,
            enrolled: r.bool(2)?,
            fenced_ms: r.opt_int(3)?,
        })
    })
    .collect()
}

/// Tells every agent that `project`'s envelopes changed: `what` is `lock` (zeroize at once),
/// `unenroll:<host>` (that host zeroizes everything) or `change` (look again at next use).
fn notify_keys(db: &dyn Db, host: &str, project: &str, what: &str) -> Result<(), StoreError> {
    db.exec(
        "SELECT pg_notify(?1, ?2)",
        args![KEYS_CHANNEL, format!("{host}\n{project}\n{what}")],
    )?;
    Ok(())
}
