//! Projects and their members: creation (with the delivery of its shares), listing,
//! membership, deletion.

use super::*;

impl Service {
    /// Creates a project and its key; the shares are returned here and never again. The
    /// project stays undelivered until the answer reaches its client; if it never does, the
    /// project is removed again (nobody holds its shares).
    pub async fn create_project(
        self: &Arc<Self>,
        p: &Principal,
        name: ProjectName,
        members: Vec<UserName>,
    ) -> Result<CreatedProject> {
        self.check(p, &Action::Admin(AdminAction::CreateProject), "")?;
        // Held until the delivery is decided, so no unlock of the new project can run before.
        let guard = self.key_lock(&name).lock_owned().await;
        let nk = keys::generate();
        let verifier = keys::verifier(&nk.key, &name);
        let actor = p.clone();
        let (n2, m2) = (name.clone(), members.clone());
        self.db(move |s| {
            s.create_project(
                &audit(&actor, AuditAction::ProjectCreate, n2.to_string(), None),
                &n2,
                &m2,
                &verifier,
            )
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Missing("User", u)) => {
                deny(Denial::Hidden(Hidden::User), &u)
            }
            e => e,
        })?;
        let (delivery, delivered) = Delivery::new();
        let svc = self.clone();
        let project = name.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let who = system();
            let outcome = if delivered.await.is_ok() {
                svc.db(move |s| {
                    s.project_delivered(
                        &audit(
                            &who,
                            AuditAction::ProjectDelivered,
                            project.to_string(),
                            None,
                        ),
                        &project,
                    )
                })
                .await
            } else {
                tracing::warn!(project = %project, "the shares of a new project never reached the client; removing it");
                let p2 = project.clone();
                let r = svc
                    .db(move |s| {
                        let mut a =
                            audit(&who, AuditAction::ProjectCreateUndone, p2.to_string(), None);
                        a.detail = "reason=undelivered".into();
                        s.undo_project(&a, &p2)
                    })
                    .await;
                svc.keys.lock(&project);
                r
            };
            if let Err(e) = outcome {
                tracing::error!(error = %e, "cannot record the delivery of a new project");
            }
        });
        let lock = self.keys.status(&name, Instant::now());
        Ok(CreatedProject {
            project: ProjectView {
                name,
                members,
                lock,
            },
            admin_share: nk.admin_share,
            member_share: nk.member_share,
            delivery,
        })
    }

    /// Projects the caller may see (admins: all).
    pub async fn projects(&self, p: &Principal) -> Result<Vec<ProjectView>> {
        self.check(p, &Action::Registered, "")?;
        self.sync_all_keys().await?;
        let now = Instant::now();
        Ok(self
            .db(|s| s.projects())
            .await?
            .into_iter()
            .filter(|r| p.admin || r.members.contains(&p.name))
            .map(|r| ProjectView {
                lock: self.keys.status(&r.name, now),
                name: r.name,
                members: r.members,
            })
            .collect())
    }

    /// Adds a project member; idempotent.
    pub async fn add_member(
        &self,
        p: &Principal,
        project: ProjectName,
        user: UserName,
    ) -> Result<Change> {
        self.check(p, &Action::Admin(AdminAction::ManageMembers), "")?;
        let actor = p.clone();
        let pr = project.clone();
        self.db(move |s| {
            let mut a = audit(&actor, AuditAction::ProjectMemberAdd, pr.to_string(), None);
            a.detail = user.to_string();
            s.add_member(&a, &pr, &user)
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Missing("Project", _)) => {
                deny(Denial::Hidden(Hidden::Project), project.as_str())
            }
            ServiceError::Store(StoreError::Missing("User", u)) => {
                deny(Denial::Hidden(Hidden::User), &u)
            }
            e => e,
        })
    }

    /// Removes a project member (DESIGN 3): their user roles in the project go at once. A
    /// member who owns VMs or drives there is refused (`member_owns`) unless `force`: shared
    /// ownerships end, and what they alone owned goes to `transfer_to`.
    pub async fn remove_member(
        &self,
        p: &Principal,
        project: ProjectName,
        user: UserName,
        exit: MemberExit,
    ) -> Result<Change> {
        self.check(p, &Action::Admin(AdminAction::ManageMembers), "")?;
        self.project_row(p, &project).await?;
        let actor = p.clone();
        let (pr, u) = (project.clone(), user.clone());
        let removal: MemberRemoval = self
            .db_checked(move |s| {
                let mut a = audit(
                    &actor,
                    AuditAction::ProjectMemberRemove,
                    pr.to_string(),
                    None,
                );
                a.detail = match &exit.transfer_to {
                    Some(t) => format!("user={u} force={} transfer_to={t}", exit.force),
                    None => format!("user={u} force={}", exit.force),
                };
                let (force, transfer) = (exit.force, exit.transfer_to.clone());
                s.remove_member(&a, &pr, &u, exit.transfer_to.as_ref(), |h| {
                    judge_exit(&u, force, transfer.as_ref(), h)
                        .map_err(|e| Refusal::audited(e.0, e.1))
                })
            })
            .await?;
        let change = removal.change.unwrap_or(Change::Unchanged);
        if change == Change::Removed {
            for id in &removal.roles_dropped {
                if let Some(vm) = self
                    .db({
                        let id = *id;
                        move |s| s.vm(id)
                    })
                    .await?
                {
                    self.emit(
                        EventKind::VmUnshared,
                        Some(&vm),
                        serde_json::json!({"id": vm.id, "user": user, "reason": "member_removed"}),
                    );
                    if removal.vms_transferred.contains(id) {
                        self.emit(
                            EventKind::VmShared,
                            Some(&vm),
                            serde_json::json!({"id": vm.id, "user": vm.owners.last(), "role": Role::Owner, "reason": "transfer"}),
                        );
                    }
                }
            }
            self.emit_project(
                EventKind::ProjectMemberRemoved,
                project.clone(),
                serde_json::json!({"project": project, "user": user,
                    "vms_transferred": removal.vms_transferred,
                    "drives_transferred": removal.drives_transferred.len()}),
            );
        }
        Ok(change)
    }

    /// Deletes a project that holds no VMs and no drives; its key is forgotten.
    pub async fn delete_project(&self, p: &Principal, project: ProjectName) -> Result<Change> {
        self.check(p, &Action::Admin(AdminAction::ManageMembers), "")?;
        let _k = self.key_lock(&project).lock_owned().await;
        let actor = p.clone();
        let pr = project.clone();
        let change = self
            .db(move |s| {
                s.delete_project(&audit(&actor, AuditAction::ProjectDelete, pr.to_string(), None), &pr)
            })
            .await
            .map_err(|e| match e {
                ServiceError::Store(StoreError::NotEmpty {
                    project,
                    vms,
                    drives,
                }) => conflict(ConflictCode::ProjectNotEmpty,
                    format!(
                        "Project {project} still holds {vms} VMs and {drives} drives; delete them first"
                    ),
                ),
                e => e,
            })?;
        if change == Change::Removed {
            self.keys.lock(&project);
            self.emit_project(
                EventKind::ProjectDeleted,
                project.clone(),
                serde_json::json!({"project": project}),
            );
        } else {
            return Err(deny(Denial::Hidden(Hidden::Project), project.as_str()));
        }
        Ok(change)
    }
}
/// Judges a member's exit from a project: `Err((error, audit outcome))` refuses it.
pub(super) fn judge_exit(
    user: &UserName,
    force: bool,
    transfer_to: Option<&UserName>,
    h: &crate::store::MemberHoldings,
) -> std::result::Result<(), (ServiceError, String)> {
    let owns = !h.owned_vms.is_empty() || !h.owned_drives.is_empty();
    let refuse = |e: ServiceError| {
        let o = e.outcome();
        Err((e, o))
    };
    if owns && !force {
        let mut what: Vec<String> = h
            .owned_vms
            .iter()
            .map(|(id, name, ..)| format!("VM {name} ({id})"))
            .collect();
        what.extend(
            h.owned_drives
                .iter()
                .map(|(id, name, _)| format!("drive {name} ({id})")),
        );
        return refuse(conflict(
            ConflictCode::MemberOwns,
            format!(
                "{user} owns {}; remove with force=true and transfer_to=USER to hand them over",
                what.join(", ")
            ),
        ));
    }
    let sole_vms: Vec<&TeamName> = h
        .owned_vms
        .iter()
        .filter(|(.., others)| others.is_empty())
        .map(|(_, _, team, _)| team)
        .collect();
    let sole_drives = h.owned_drives.iter().any(|(.., others)| others.is_empty());
    if sole_vms.is_empty() && !sole_drives {
        return Ok(());
    }
    // Handing their things to themselves hands nothing over: the same refusal as naming
    // nobody.
    let Some(t) = transfer_to.filter(|t| *t != user) else {
        return refuse(conflict(
            ConflictCode::MemberOwns,
            format!(
                "{user} alone owns VMs or drives in this project: name another member to take them with transfer_to"
            ),
        ));
    };
    match &h.transfer {
        Some((u, _)) if sole_vms.iter().any(|team| **team != u.team) => {
            refuse(deny(Denial::TeamMismatch, t.as_str()))
        }
        None => refuse(deny(Denial::TeamMismatch, t.as_str())),
        Some((_, false)) => refuse(deny(Denial::NotProjectMember, t.as_str())),
        Some(_) => Ok(()),
    }
}
