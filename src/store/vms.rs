//! VM configurations, their roles and their lifecycle state.

use super::projects::is_member;
use super::sql::{args, Db};
use super::users::load_user;
use super::{is_constraint, AuditCtx, Change, Refusal, Store, StoreError};
use crate::model::{DriveId, IdlePolicy, Role, User, UserName, Vm, VmId, VmState};

/// What a share or unshare is judged on, read inside the transaction that writes it.
#[derive(Debug, Clone)]
pub struct RoleFacts {
    /// The VM with its roles.
    pub vm: Vm,
    /// Whether the caller is a member of the VM's project.
    pub caller_member: bool,
    /// The target's registry entry.
    pub target: Option<User>,
    /// Whether the target is a member of the VM's project.
    pub target_member: bool,
}

/// Grants, changes or removes a role (rule 7: owners also own the VM's attached drives;
/// losing owner loses them). The role row carries the VM's project and team, so the schema
/// refuses a role for a non-member or a user of another team.
pub(super) fn set_role_tx(
    tx: &dyn Db,
    vm: VmId,
    user: &UserName,
    role: Option<Role>,
) -> Result<Change, StoreError> {
    let id = vm.to_string();
    let old: Option<String> = tx
        .row(
            "SELECT role FROM vm_roles WHERE vm = ?1 AND username = ?2",
            args![&id, user.as_str()],
        )?
        .map(|r| r.text(0))
        .transpose()?;
    let new = role.map(Role::as_str);
    if old.as_deref() == new {
        return Ok(Change::Unchanged);
    }
    match role {
        Some(r) => {
            tx.exec(
                "INSERT INTO vm_roles (vm, username, role, seq, project, team)
                 SELECT id, ?2, ?3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM vm_roles WHERE vm = ?1),
                        project, team FROM vms WHERE id = ?1
                 ON CONFLICT (vm, username) DO UPDATE SET role = excluded.role",
                args![&id, user.as_str(), r.as_str()],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    StoreError::Changed(format!(
                        "{user} is no longer a member of the VM's project or team"
                    ))
                } else {
                    e
                }
            })?;
        }
        None => {
            tx.exec(
                "DELETE FROM vm_roles WHERE vm = ?1 AND username = ?2",
                args![&id, user.as_str()],
            )?;
        }
    }
    if role == Some(Role::Owner) {
        tx.exec(
            "INSERT INTO drive_owners (drive, username, project)
             SELECT id, ?2, project FROM drives WHERE attached_to = ?1
             ON CONFLICT DO NOTHING",
            args![&id, user.as_str()],
        )?;
    } else if old.as_deref() == Some(Role::Owner.as_str()) {
        tx.exec(
            "DELETE FROM drive_owners WHERE username = ?2 AND drive IN
             (SELECT id FROM drives WHERE attached_to = ?1)",
            args![&id, user.as_str()],
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

/// Attaches a detached drive of the VM's project; its owners become the VM's owners.
pub(super) fn attach_tx(tx: &dyn Db, vm: VmId, drive: DriveId) -> Result<(), StoreError> {
    let n = tx.exec(
        "UPDATE drives SET attached_to = ?1,
             attach_seq = (SELECT COALESCE(MAX(attach_seq), 0) + 1 FROM drives WHERE attached_to = ?1)
         WHERE id = ?2 AND attached_to IS NULL
           AND project = (SELECT project FROM vms WHERE id = ?1)",
        args![vm.to_string(), drive.to_string()],
    )?;
    if n == 0 {
        return Err(StoreError::Attached(drive.to_string()));
    }
    tx.exec(
        "DELETE FROM drive_owners WHERE drive = ?1",
        args![drive.to_string()],
    )?;
    tx.exec(
        "INSERT INTO drive_owners (drive, username, project)
         SELECT ?2, username, project FROM vm_roles WHERE vm = ?1 AND role = 'owner'",
        args![vm.to_string(), drive.to_string()],
    )?;
    Ok(())
}

pub(super) fn load_vms(db: &dyn Db, only: Option<VmId>) -> Result<Vec<Vm>, StoreError> {
    let only = only.map(|v| v.to_string());
    let mut vms: Vec<Vm> = db
        .rows(
            "SELECT id, name, project, team, vcpus, memory_mib, idle, state, state_reason, host
             FROM vms WHERE (CAST(?1 AS TEXT) IS NULL OR id = ?1) ORDER BY created_ms, id",
            args![only.as_deref()],
        )?
        .iter()
        .map(|r| {
            Ok(Vm {
                id: r.parse(0)?,
                name: r.parse(1)?,
                project: r.parse(2)?,
                team: r.parse(3)?,
                vcpus: r.u32(4)?,
                memory_mib: r.int(5)? as u64,
                idle: IdlePolicy::from_stored(&r.text(6)?),
                state: VmState::parse(&r.text(7)?),
                state_reason: r.text(8)?,
                host: r.opt_text(9)?,
                owners: vec![],
                users: vec![],
                drives: vec![],
            })
        })
        .collect::<Result<_, StoreError>>()?;
    if vms.is_empty() {
        return Ok(vms);
    }
    let index: std::collections::HashMap<VmId, usize> =
        vms.iter().enumerate().map(|(i, v)| (v.id, i)).collect();
    let roles = db.rows(
        "SELECT vm, username, role FROM vm_roles WHERE (CAST(?1 AS TEXT) IS NULL OR vm = ?1) ORDER BY seq, username",
        args![only.as_deref()],
    )?;
    for r in &roles {
        let vm: VmId = r.parse(0)?;
        let user: UserName = r.parse(1)?;
        let role = r.text(2)?;
        if let Some(i) = index.get(&vm) {
            if role == Role::Owner.as_str() {
                vms[*i].owners.push(user);
            } else {
                vms[*i].users.push(user);
            }
        }
    }
    let drives = db.rows(
        "SELECT attached_to, id FROM drives
         WHERE attached_to IS NOT NULL AND (CAST(?1 AS TEXT) IS NULL OR attached_to = ?1)
         ORDER BY attach_seq, id",
        args![only.as_deref()],
    )?;
    for r in &drives {
        let vm: VmId = r.parse(0)?;
        let d: DriveId = r.parse(1)?;
        if let Some(i) = index.get(&vm) {
            vms[*i].drives.push(d);
        }
    }
    Ok(vms)
}

pub(super) fn load_vm(db: &dyn Db, id: VmId) -> Result<Option<Vm>, StoreError> {
    Ok(load_vms(db, Some(id))?.into_iter().next())
}

fn role_facts(
    tx: &dyn Db,
    vm: VmId,
    caller: &str,
    target: &UserName,
) -> Result<Option<RoleFacts>, StoreError> {
    let Some(vm) = load_vm(tx, vm)? else {
        // The same reads as for a VM that exists, so that a missing VM and a hidden one
        // cost the same; their answers are not used.
        is_member(tx, "", caller)?;
        load_user(tx, target)?;
        is_member(tx, "", target.as_str())?;
        return Ok(None);
    };
    let p = vm.project.as_str().to_owned();
    Ok(Some(RoleFacts {
        caller_member: is_member(tx, &p, caller)?,
        target: load_user(tx, target)?,
        target_member: is_member(tx, &p, target.as_str())?,
        vm,
    }))
}

/// Records a state; a VM that is not stopped is held by this agent's host (`?4`), and a
/// stopped one by nobody, so any host may start it next.
const HOLD: &str = "UPDATE vms SET state = ?2, state_reason = ?3,
    host = CASE WHEN ?2 = 'stopped' THEN NULL ELSE ?4 END WHERE id = ?1";

impl Store {
    /// Inserts a new VM with its creator as owner and its drives attached. `taken` says
    /// whether the name is already used among the VMs its creator sees in the project:
    /// names of VMs the creator cannot see never conflict.
    pub fn create_vm(&self, a: &AuditCtx<'_>, vm: &Vm) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            let taken = tx.exists(
                "SELECT 1 FROM vms v JOIN vm_roles r ON r.vm = v.id
                 WHERE v.project = ?1 AND v.name = ?2 AND r.username = ?3",
                args![vm.project.as_str(), vm.name.as_str(), a.actor],
            )?;
            if taken {
                return Err(StoreError::Exists(format!(
                    "VM {} in project {}",
                    vm.name, vm.project
                )));
            }
            tx.exec(
                "INSERT INTO vms (id, name, project, team, vcpus, memory_mib, idle, state,
                                  state_reason, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                args![
                    vm.id.to_string(),
                    vm.name.as_str(),
                    vm.project.as_str(),
                    vm.team.as_str(),
                    vm.vcpus,
                    vm.memory_mib as i64,
                    serde_json::to_string(&vm.idle).expect("idle policy serializes"),
                    vm.state.as_str(),
                    &vm.state_reason,
                    super::now_ms()
                ],
            )?;
            for o in &vm.owners {
                set_role_tx(tx, vm.id, o, Some(Role::Owner))?;
            }
            for d in &vm.drives {
                attach_tx(tx, vm.id, *d)?;
            }
            Ok(())
        })
    }

    /// One VM with roles and drives.
    pub fn vm(&self, id: VmId) -> Result<Option<Vm>, StoreError> {
        self.read(|db| load_vm(db, id))
    }

    /// Every VM.
    pub fn vms(&self) -> Result<Vec<Vm>, StoreError> {
        self.read(|db| load_vms(db, None))
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
            let n = tx.exec(
                "UPDATE vms SET vcpus = ?2, memory_mib = ?3, idle = ?4 WHERE id = ?1
                 AND (vcpus != ?2 OR memory_mib != ?3 OR idle != ?4)",
                args![
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

    /// Deletes a stopped VM; its drives become detached and stay with their owners.
    pub fn delete_vm(&self, a: &AuditCtx<'_>, id: VmId) -> Result<(), StoreError> {
        self.mutate(a, |tx| {
            let n = tx.exec(
                "DELETE FROM vms WHERE id = ?1 AND state = 'stopped'",
                args![id.to_string()],
            )?;
            if n == 0 {
                return Err(StoreError::Changed(format!("VM {id} is no longer stopped")));
            }
            Ok(())
        })
    }

    /// Records how an operation ended: the VM's state and reason, and the audit row with
    /// `outcome` (`ok`, `failed:<code>`), in one transaction.
    pub fn record_state(
        &self,
        a: &AuditCtx<'_>,
        id: VmId,
        state: VmState,
        reason: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.transaction(|tx| {
            tx.exec(
                HOLD,
                args![id.to_string(), state.as_str(), reason, self.host()],
            )?;
            super::audit::insert(tx, a, outcome)?;
            Ok::<_, StoreError>(((), true))
        })?;
        super::audit::log(a, outcome);
        Ok(())
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
            tx.exec(
                HOLD,
                args![id.to_string(), state.as_str(), reason, self.host()],
            )?;
            Ok(())
        })
    }

    /// Moves a VM into a transitional state (`starting`, `stopping`) or back, if it is in one
    /// of `from`; otherwise returns the state it is in. This claims the VM for this agent's
    /// host; a VM another host holds is `Elsewhere`, whatever its state. Not audited: the operation that
    /// moves it records its own row when it ends.
    pub fn transition(
        &self,
        id: VmId,
        from: &[VmState],
        to: VmState,
        reason: &str,
    ) -> Result<Result<VmState, VmState>, StoreError> {
        self.transaction(|tx| {
            let Some(row) = tx.row(
                "SELECT state, host FROM vms WHERE id = ?1",
                args![id.to_string()],
            )?
            else {
                return Err(StoreError::Missing("VM", id.to_string()));
            };
            let now = VmState::parse(&row.text(0)?);
            if let Some(holder) = row.opt_text(1)? {
                if !self.holds(Some(&holder)) && now != VmState::Stopped {
                    return Err(StoreError::Elsewhere(holder));
                }
            }
            if !from.contains(&now) {
                return Ok((Err(now), false));
            }
            tx.exec(
                HOLD,
                args![id.to_string(), to.as_str(), reason, self.host()],
            )?;
            Ok((Ok(now), true))
        })
    }

    /// Grants, changes or removes a role after `check` judged the facts read in the same
    /// transaction (sharing rules 1-7 under any interleaving). A VM that does not exist is
    /// `Missing`.
    pub fn set_role_checked<E: From<StoreError>>(
        &self,
        a: &AuditCtx<'_>,
        vm: VmId,
        target: &UserName,
        role: Option<Role>,
        check: impl Fn(&RoleFacts) -> Result<(), Refusal<E>>,
    ) -> Result<(Change, Vm), E> {
        self.mutate_checked(a, |tx| {
            let facts = role_facts(tx, vm, a.actor, target)?
                .ok_or_else(|| StoreError::Missing("VM", vm.to_string()))?;
            check(&facts)?;
            let change = set_role_tx(tx, vm, target, role)?;
            let after = load_vm(tx, vm)?.ok_or(StoreError::NotFound)?;
            Ok((change, after))
        })
    }

    /// Grants or changes a role without judging it (tests and migrations of data).
    pub fn set_role(
        &self,
        a: &AuditCtx<'_>,
        vm: VmId,
        user: &UserName,
        role: Option<Role>,
    ) -> Result<Change, StoreError> {
        self.mutate(a, |tx| set_role_tx(tx, vm, user, role))
    }
}
