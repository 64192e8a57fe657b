//! Projects and their keys: creation, members, two-party unlock, lock, re-key, and the
//! delivery of new share pairs.

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
                &audit(&actor, "project.create", n2.to_string(), None),
                &n2,
                &m2,
                &verifier,
            )
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Missing("User", u)) => {
                ServiceError::Invalid(format!("User {u} is not registered"))
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
                        &audit(&who, "project.delivered", project.to_string(), None),
                        &project,
                    )
                })
                .await
            } else {
                tracing::warn!(project = %project, "the shares of a new project never reached the client; removing it");
                let p2 = project.clone();
                let r = svc
                    .db(move |s| {
                        let mut a = audit(&who, "project.create_undone", p2.to_string(), None);
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
            let mut a = audit(&actor, "project.member_add", pr.to_string(), None);
            a.detail = user.to_string();
            s.add_member(&a, &pr, &user)
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Missing("Project", _)) => {
                deny(Denial::Hidden(Hidden::Project), project.as_str())
            }
            ServiceError::Store(StoreError::Missing("User", u)) => {
                ServiceError::Invalid(format!("User {u} is not registered"))
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
        let pr = project.clone();
        if self.db(move |s| s.project(&pr)).await?.is_none() {
            return Err(deny(Denial::Hidden(Hidden::Project), project.as_str()));
        }
        if exit.transfer_to.as_ref() == Some(&user) {
            return Err(ServiceError::Invalid(format!(
                "transfer_to must name another member than {user}"
            )));
        }
        let actor = p.clone();
        let (pr, u) = (project.clone(), user.clone());
        let removal: MemberRemoval = self
            .db_checked(move |s| {
                let mut a = audit(&actor, "project.member_remove", pr.to_string(), None);
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
                        "vm.unshared",
                        Some(&vm),
                        serde_json::json!({"id": vm.id, "user": user, "reason": "member_removed"}),
                    );
                    if removal.vms_transferred.contains(id) {
                        self.emit(
                            "vm.shared",
                            Some(&vm),
                            serde_json::json!({"id": vm.id, "user": vm.owners.last(), "role": Role::Owner, "reason": "transfer"}),
                        );
                    }
                }
            }
            self.emit_project(
                "project.member_removed",
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
                s.delete_project(&audit(&actor, "project.delete", pr.to_string(), None), &pr)
            })
            .await
            .map_err(|e| match e {
                ServiceError::Store(StoreError::NotEmpty {
                    project,
                    vms,
                    drives,
                }) => conflict(
                    "project_not_empty",
                    format!(
                        "Project {project} still holds {vms} VMs and {drives} drives; delete them first"
                    ),
                ),
                e => e,
            })?;
        if change == Change::Removed {
            self.keys.lock(&project);
            self.emit_project(
                "project.deleted",
                project.clone(),
                serde_json::json!({"project": project}),
            );
        } else {
            return Err(deny(Denial::Hidden(Hidden::Project), project.as_str()));
        }
        Ok(change)
    }

    pub(super) async fn project_row(
        &self,
        p: &Principal,
        project: &ProjectName,
    ) -> Result<crate::store::ProjectRow> {
        let pr = project.clone();
        let row = self.db(move |s| s.project(&pr)).await?;
        match row {
            Some(r) if p.admin || r.members.contains(&p.name) => Ok(r),
            _ => Err(deny(Denial::Hidden(Hidden::Project), project.as_str())),
        }
    }

    /// Takes one half of the project key. The attempt is recorded before the keyring
    /// changes, so an answer, the key state and the audit log always agree.
    pub async fn unlock(
        &self,
        p: &Principal,
        project: ProjectName,
        share: SecretBytes,
    ) -> Result<LockStatus> {
        let _k = self.key_lock(&project).lock_owned().await;
        let row = {
            let pr = project.clone();
            self.db(move |s| s.project(&pr)).await?
        };
        let member = row.as_ref().is_some_and(|r| r.members.contains(&p.name));
        let half = match keys::parse_share(share.expose()) {
            Ok((keys::Half::Admin, _)) => ShareHalf::Admin,
            Ok((keys::Half::Member, _)) => ShareHalf::Member,
            Err(e) => {
                // Unknown projects answer 404 before a malformed share is judged.
                if row.is_none() || !(p.admin || member) {
                    return Err(deny(Denial::Hidden(Hidden::Project), project.as_str()));
                }
                return Err(ServiceError::Share(e));
            }
        };
        self.check(
            p,
            &Action::Unlock {
                half,
                project_member: member,
            },
            project.as_str(),
        )?;
        let Some(row) = row else {
            return Err(deny(Denial::Hidden(Hidden::Project), project.as_str()));
        };
        let who = Submitter {
            name: p.name.clone(),
            admin: p.admin,
            member,
        };
        let t = self.keys.evaluate(
            &project,
            Verifiers {
                current: &row.verifier,
                staged: row.next_verifier.as_deref(),
            },
            share.expose(),
            &who,
            self.cfg.keys.unlock_window,
            self.cfg.keys.unlock_ttl,
            Instant::now(),
        );
        drop(share);
        let half_name = if half == ShareHalf::Admin {
            "admin"
        } else {
            "member"
        };
        let outcome = t.outcome.clone();
        let mut detail = match &outcome {
            Ok(o) => format!("{half_name} share; {o:?}"),
            Err(e) => format!("{half_name} share; {e}"),
        };
        let actor = p.clone();
        let pr = project.clone();
        match &outcome {
            Ok(UnlockOutcome::UnlockedStaged) => {
                // The re-keyed pair was delivered after all (the daemon stopped before it
                // could record that): it becomes the only pair.
                let _excl = self.project_lock(&project).write_owned().await;
                let staged = row.next_verifier.clone().expect("staged verifier matched");
                detail.push_str("; the re-keyed pair is now the only pair");
                let promoted = self
                    .db(move |s| {
                        let mut a = audit(&actor, "project.unlock", pr.to_string(), None);
                        a.detail = detail;
                        s.promote_rekey(&a, &pr, &staged)
                    })
                    .await?;
                if !promoted {
                    return Err(conflict(
                        "changed_meanwhile",
                        format!("The key of project {project} changed meanwhile; submit the share again"),
                    ));
                }
            }
            Ok(UnlockOutcome::Unlocked) if row.next_verifier.is_some() => {
                // The old pair unlocked while a re-key waited for its delivery: the old pair
                // is still held, the staged one may not be; the staged one goes.
                let staged = row.next_verifier.clone().expect("checked");
                detail.push_str("; the undelivered re-key was dropped");
                let _excl = self.project_lock(&project).write_owned().await;
                self.db(move |s| {
                    let mut a = audit(&actor, "project.unlock", pr.to_string(), None);
                    a.detail = detail;
                    s.undo_rekey(&a, &pr, &staged)
                })
                .await?;
            }
            _ => {
                let result = match &outcome {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("denied:{}", e.code()),
                };
                self.db(move |s| {
                    let mut a = audit(&actor, "project.unlock", pr.to_string(), None);
                    a.detail = detail;
                    s.audit_outcome(&a, &result)
                })
                .await?;
            }
        }
        let kind = match self.keys.apply(t).map_err(ServiceError::Share)? {
            UnlockOutcome::Pending => Some("project.unlock_pending"),
            UnlockOutcome::Unlocked | UnlockOutcome::UnlockedStaged => Some("project.unlocked"),
            UnlockOutcome::AlreadyUnlocked => None,
        };
        if let Some(kind) = kind {
            self.emit_project(
                kind,
                project.clone(),
                serde_json::json!({"project": project}),
            );
        }
        Ok(self.keys.status(&project, Instant::now()))
    }

    /// Forgets the project key now. Recorded first: if the record cannot be written, nothing
    /// changes and the caller hears why (a restart of the daemon locks every project).
    pub async fn lock(&self, p: &Principal, project: ProjectName) -> Result<LockStatus> {
        let _k = self.key_lock(&project).lock_owned().await;
        let pr = project.clone();
        let row = self.db(move |s| s.project(&pr)).await?;
        let member = row.as_ref().is_some_and(|r| r.members.contains(&p.name));
        self.check(
            p,
            &Action::Lock {
                project_member: member,
            },
            project.as_str(),
        )?;
        if row.is_none() {
            return Err(deny(Denial::Hidden(Hidden::Project), project.as_str()));
        }
        let actor = p.clone();
        let pr = project.clone();
        self.db(move |s| {
            s.audit_outcome(&audit(&actor, "project.lock", pr.to_string(), None), "ok")
        })
        .await?;
        if self.keys.lock(&project) {
            self.emit_project(
                "project.locked",
                project.clone(),
                serde_json::json!({"project": project, "reason": "lock"}),
            );
        }
        Ok(self.keys.status(&project, Instant::now()))
    }

    /// Re-keys an unlocked project: a new K and a new pair of shares (returned once); every
    /// drive passphrase is re-wrapped in one transaction. The new pair is staged beside the
    /// old one until the answer reaches the client: then it becomes the only pair; if the
    /// answer never arrives, the re-key is undone and the old pair keeps working. No
    /// interleaving of hang-ups, kills and restarts leaves a project no delivered pair opens.
    pub async fn resplit(
        self: &Arc<Self>,
        p: &Principal,
        project: ProjectName,
    ) -> Result<CreatedProject> {
        self.check(p, &Action::Admin(AdminAction::CreateProject), "")?;
        let keylock = self.key_lock(&project).lock_owned().await;
        let excl = self.project_lock(&project).write_owned().await;
        let row = self.project_row(p, &project).await?;
        let now = Instant::now();
        let old = self
            .keys
            .clone_key(&project, now)
            .map_err(|e| ServiceError::Locked(e.to_string()))?;
        if let Some(stale) = row.next_verifier.clone() {
            // An earlier re-key still waits for its delivery; this one replaces it.
            let who = system();
            let pr = project.clone();
            self.db(move |s| {
                let mut a = audit(&who, "project.resplit_undone", pr.to_string(), None);
                a.detail = "reason=replaced".into();
                s.undo_rekey(&a, &pr, &stale)
            })
            .await?;
            self.keys.unstage(&project);
        }
        let pr = project.clone();
        let wrapped = self.db(move |s| s.project_drive_secrets(&pr)).await?;
        let nk = keys::generate();
        let mut rewrapped = Vec::with_capacity(wrapped.len());
        for (id, w, _) in wrapped {
            let pass = keys::unwrap(&old, &project, &id.to_string(), &w)
                .map_err(|e| ServiceError::SecretCorrupt(e.to_string()))?;
            rewrapped.push((id, keys::wrap(&nk.key, &project, &id.to_string(), &pass)));
        }
        drop(old);
        let next_verifier = keys::verifier(&nk.key, &project);
        let actor = p.clone();
        let pr = project.clone();
        let nv = next_verifier.clone();
        self.db(move |s| {
            s.stage_rekey(
                &audit(&actor, "project.resplit", pr.to_string(), None),
                &pr,
                &nv,
                &rewrapped,
            )
        })
        .await?;
        let keys::NewKey {
            key,
            admin_share,
            member_share,
        } = nk;
        // Locked meanwhile: the staged pair still becomes the only one once delivered.
        let _ = self.keys.stage(&project, key, Instant::now());
        let (delivery, delivered) = Delivery::new();
        let svc = self.clone();
        let pr = project.clone();
        tokio::spawn(async move {
            let (_keylock, _excl) = (keylock, excl);
            let who = system();
            let is_delivered = delivered.await.is_ok();
            let p2 = pr.clone();
            let r = svc
                .db(move |s| {
                    if is_delivered {
                        s.promote_rekey(
                            &audit(&who, "project.resplit_delivered", p2.to_string(), None),
                            &p2,
                            &next_verifier,
                        )
                    } else {
                        let mut a = audit(&who, "project.resplit_undone", p2.to_string(), None);
                        a.detail = "reason=undelivered".into();
                        s.undo_rekey(&a, &p2, &next_verifier)
                    }
                })
                .await;
            match r {
                Ok(true) if is_delivered => svc.keys.promote(&pr),
                Ok(true) => {
                    tracing::warn!(project = %pr, "the shares of a re-key never reached the client; the old pair stays");
                    svc.keys.unstage(&pr);
                }
                Ok(false) => {}
                // Nothing recorded: the re-key stays staged and both pairs keep working
                // until one of them unlocks (DESIGN 1).
                Err(e) => {
                    tracing::error!(project = %pr, error = %e, "cannot record the delivery of a re-key")
                }
            }
        });
        Ok(CreatedProject {
            project: ProjectView {
                lock: self.keys.status(&project, Instant::now()),
                name: project,
                members: row.members,
            },
            admin_share,
            member_share,
            delivery,
        })
    }
}

/// Judges a member's exit from a project: `Err((error, audit outcome))` refuses it.
fn judge_exit(
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
            "member_owns",
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
    let Some(t) = transfer_to else {
        return refuse(ServiceError::Invalid(format!(
            "{user} alone owns VMs or drives in this project: name who takes them with transfer_to"
        )));
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
