//! Sharing (DESIGN 1, sharing rules): members, share and unshare, judged inside the
//! transaction that writes.

use super::*;

impl Service {
    /// Owners and users of a VM.
    pub async fn members(&self, p: &Principal, id: VmId) -> Result<Members> {
        let vm = self.vm_checked(p, id, VmAction::Members).await?;
        Ok(Members {
            owners: vm.owners,
            users: vm.users,
        })
    }

    /// Grants or changes a role (sharing rules 1-5, 7), judged inside the transaction that
    /// writes it.
    pub async fn share(
        &self,
        p: &Principal,
        id: VmId,
        target: UserName,
        role: Role,
        confirm: bool,
    ) -> Result<Changed<Members>> {
        let max_owners = self.cfg.sharing.max_owners;
        self.set_role(
            p,
            id,
            target,
            Some(role),
            AuditAction::VmShare,
            move |vm, t| Action::Share {
                vm,
                target: t,
                role,
                confirm,
                max_owners,
            },
        )
        .await
    }

    /// Removes a role (rule 6); idempotent.
    pub async fn unshare(
        &self,
        p: &Principal,
        id: VmId,
        target: UserName,
    ) -> Result<Changed<Members>> {
        self.set_role(p, id, target, None, AuditAction::VmUnshare, |vm, t| {
            Action::Unshare { vm, target: t }
        })
        .await
    }

    /// The members tail of share and unshare: judge in the transaction, write, announce.
    pub(super) async fn set_role(
        &self,
        p: &Principal,
        id: VmId,
        target: UserName,
        role: Option<Role>,
        action: AuditAction,
        make: impl Fn(VmFacts, TargetFacts) -> Action + Send + 'static,
    ) -> Result<Changed<Members>> {
        let slot = self.vm_slot(id);
        let _g = slot.op.lock().await;
        let actor = p.clone();
        let t2 = target.clone();
        let max_owners = self.cfg.sharing.max_owners;
        let (change, vm) = self
            .db_checked(move |s| {
                let mut a = audit(&actor, action, t2.to_string(), Some(id));
                a.detail = role.map(Role::as_str).unwrap_or_default().into();
                s.set_role_checked(&a, id, &t2, role, |f: &RoleFacts| {
                    let facts = VmFacts {
                        project_member: f.caller_member,
                        role: f.vm.role_of(&actor.name),
                        team: f.vm.team.clone(),
                        owners: f.vm.owners.len(),
                    };
                    let tf = TargetFacts {
                        team: f.target.as_ref().map(|u| u.team.clone()),
                        project_member: f.target_member,
                        role: f.vm.role_of(&t2),
                        is_self: t2 == actor.name,
                    };
                    match policy::decide(&actor, &make(facts, tf)) {
                        Decision::Allow => Ok(()),
                        Decision::Deny(d @ Denial::Hidden(Hidden::User)) => {
                            let e = deny(d, t2.as_str());
                            let o = e.outcome();
                            Err(Refusal::audited(e, o))
                        }
                        // A hidden VM gets the answer of a missing one, with no trace that
                        // its owners could read.
                        Decision::Deny(d @ Denial::Hidden(_)) => {
                            Err(Refusal::silent(deny(d, &id.to_string())))
                        }
                        Decision::Deny(d) => {
                            let e = role_denial(d, &t2, &f.vm, max_owners);
                            let o = e.outcome();
                            Err(Refusal::audited(e, o))
                        }
                    }
                })
                // Unchanged shares still write their row: the attempt was allowed.
            })
            .await
            .map_err(|e| match e {
                ServiceError::Store(StoreError::Missing("VM", _)) => {
                    deny(Denial::Hidden(Hidden::Vm), &id.to_string())
                }
                e => e,
            })?;
        if change != Change::Unchanged {
            let data = match role {
                Some(r) => serde_json::json!({"id": id, "user": target, "role": r}),
                None => serde_json::json!({"id": id, "user": target}),
            };
            self.emit(
                if role.is_some() {
                    EventKind::VmShared
                } else {
                    EventKind::VmUnshared
                },
                Some(&vm),
                data,
            );
        }
        Ok(Changed {
            change,
            object: Members {
                owners: vm.owners,
                users: vm.users,
            },
        })
    }
}
