//! The audit log: one row per committed mutation (written in its transaction) and per
//! recorded refusal, mirrored into the journal.

use super::sql::{args, Db, Value};
use super::{now_ms, Store, StoreError};
use crate::model::VmId;

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
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
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

/// The journal MESSAGE_ID of audit entries (one per audit row), so operators can select them
/// with `journalctl MESSAGE_ID=5d1e8a4f0b2c4e6f9a7d3c1b2e4f6a80`. A fixed random 128-bit id,
/// as systemd's catalog expects; never change it.
pub const AUDIT_MESSAGE_ID: &str = "5d1e8a4f0b2c4e6f9a7d3c1b2e4f6a80";

/// Mirrors an audit row into the log; under journald the fields become journal fields (VM,
/// USER, ACTION, OUTCOME, MESSAGE_ID).
pub(super) fn log(a: &AuditCtx<'_>, outcome: &str) {
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

pub(super) fn insert(db: &dyn Db, a: &AuditCtx<'_>, outcome: &str) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO audit (at_ms, actor, action, target, vm, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![
            now_ms(),
            a.actor,
            a.action,
            &a.target,
            a.vm.map(|v| v.to_string()),
            outcome,
            &a.detail
        ],
    )?;
    Ok(())
}

impl Store {
    /// Audit rows matching `f`, newest first.
    pub fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|db| {
            let mut sql = String::from(
                "SELECT id, at_ms, actor, action, target, vm, outcome, detail FROM audit WHERE 1=1",
            );
            let mut args: Vec<Value> = vec![];
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
                if allowed.is_empty() {
                    return Ok(vec![]);
                }
                sql.push_str(" AND vm IN (");
                for (i, vm) in allowed.iter().enumerate() {
                    sql.push_str(if i == 0 { "?" } else { ", ?" });
                    args.push(vm.to_string().into());
                }
                sql.push(')');
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push((f.limit.clamp(1, 10_000) as i64).into());
            db.rows(&sql, &args)?
                .iter()
                .map(|r| {
                    Ok(AuditEntry {
                        id: r.int(0)?,
                        at_ms: r.int(1)?,
                        actor: r.text(2)?,
                        action: r.text(3)?,
                        target: r.text(4)?,
                        vm: r.opt_text(5)?,
                        outcome: r.text(6)?,
                        detail: r.text(7)?,
                    })
                })
                .collect()
        })
    }
}
