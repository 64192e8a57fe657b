//! Project keys: two-party unlock, lock, re-key, and the delivery of new share pairs.

use super::*;

impl Service {
    /// Takes one half of the project key. The attempt is recorded before the keyring
    /// changes, so an answer, the key state and the audit log always agree.
    pub async fn unlock(
        &self,
        p: &Principal,
        project: ProjectName,
        share: SecretBytes,
    ) -> Result<LockStatus> {
        let _k = self.key_lock(&project).lock_owned().await;
        let mut attempt = 1u64;
        loop {
            match self.unlock_once(p, &project, &share).await {
                // Another agent changed the project's envelopes between this agent's look
                // and its write (fleet): nothing was written; judge again from what is there.
                Err(ServiceError::Store(StoreError::Changed(_)))
                    if self.is_sealing() && attempt < 5 =>
                {
                    attempt += 1;
                    self.sealed_at(&project, None);
                    tokio::time::sleep(std::time::Duration::from_millis(
                        attempt * 4 + u64::from(rand::random::<u8>() % 8),
                    ))
                    .await;
                }
                r => return r,
            }
        }
    }

    async fn unlock_once(
        &self,
        p: &Principal,
        project: &ProjectName,
        share: &SecretBytes,
    ) -> Result<LockStatus> {
        let project = project.clone();
        let f = self.project_facts(p, &project).await?;
        let member = f.member;
        let half = match keys::parse_share(share.expose()) {
            Ok((keys::Half::Admin, _)) => ShareHalf::Admin,
            Ok((keys::Half::Member, _)) => ShareHalf::Member,
            Err(e) => {
                // Unknown projects answer 404 before a malformed share is judged.
                f.visible(p)?;
                return Err(ServiceError::Share(e));
            }
        };
        let action = Action::Unlock {
            half,
            project_member: member,
        };
        let row = f.gate(self, p, &action)?;
        let view = self.sync_keys(&project).await?;
        if let Err(e) = self.must_be_enrolled(&view) {
            let target = project.to_string();
            return Err(self.refuse(p, AuditAction::ProjectUnlock, target, e).await);
        }
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
        let plan = match &view {
            Some(v) => self.seal_plan(&project, v, t.sealing()),
            None => None,
        };
        let sealed_gen = plan.as_ref().and(view.as_ref()).map(|v| v.state.gen + 1);
        let notices = self.key_notices();
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
                        let mut a = audit(&actor, AuditAction::ProjectUnlock, pr.to_string(), None);
                        a.detail = detail;
                        s.promote_rekey(&a, &pr, &staged, plan.as_ref())
                    })
                    .await?;
                if !promoted {
                    return Err(conflict(ConflictCode::ChangedMeanwhile,
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
                    let mut a = audit(&actor, AuditAction::ProjectUnlock, pr.to_string(), None);
                    a.detail = detail;
                    s.undo_rekey(&a, &pr, &staged, plan.as_ref())
                })
                .await?;
            }
            _ => {
                let result = match &outcome {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("denied:{}", e.code()),
                };
                self.db(move |s| {
                    let mut a = audit(&actor, AuditAction::ProjectUnlock, pr.to_string(), None);
                    a.detail = detail;
                    match &plan {
                        Some(plan) => s.record_seal(&a, &result, plan).map(|_| ()),
                        None => s.audit_outcome(&a, &result),
                    }
                })
                .await?;
            }
        }
        if sealed_gen.is_some() {
            self.sealed_at(&project, sealed_gen);
        }
        let applied = self.keys.apply(t).map_err(ServiceError::Share);
        if self.key_notices() != notices {
            // Another agent's key change arrived while this one was recorded (a lock, say):
            // what was just applied may be gone already; the store says what holds.
            self.sealed_at(&project, None);
            self.sync_keys(&project).await?;
        }
        let kind = match applied? {
            UnlockOutcome::Pending => Some(EventKind::ProjectUnlockPending),
            UnlockOutcome::Unlocked | UnlockOutcome::UnlockedStaged => {
                Some(EventKind::ProjectUnlocked)
            }
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
        let f = self.project_facts(p, &project).await?;
        let action = Action::Lock {
            project_member: f.member,
        };
        f.gate(self, p, &action)?;
        let actor = p.clone();
        let pr = project.clone();
        let sealing = self.is_sealing();
        // Fleet: every envelope of the project goes in the transaction of the audit row, and
        // the notification tells every agent to zeroize what it holds.
        let deleted = self
            .db(move |s| {
                let a = audit(&actor, AuditAction::ProjectLock, pr.to_string(), None);
                if sealing {
                    s.record_seal(
                        &a,
                        "ok",
                        &crate::store::SealPlan {
                            project: pr.clone(),
                            expect: None,
                            drop: crate::store::Discard::All,
                            put: vec![],
                            rekey: false,
                        },
                    )
                } else {
                    s.audit_outcome(&a, "ok").map(|()| 0)
                }
            })
            .await?;
        self.sealed_at(&project, None);
        if self.keys.lock(&project) | (deleted > 0) {
            self.emit_project(
                EventKind::ProjectLocked,
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
        let view = self.sync_keys(&project).await?;
        self.must_be_enrolled(&view)?;
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
                let mut a = audit(
                    &who,
                    AuditAction::ProjectResplitUndone,
                    pr.to_string(),
                    None,
                );
                a.detail = "reason=replaced".into();
                s.undo_rekey(&a, &pr, &stale, None)
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
                &audit(&actor, AuditAction::ProjectResplit, pr.to_string(), None),
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
            // Fleet: the promotion replaces every host's envelope of K by one of K' (with
            // the same expiry), unless the project locked meanwhile.
            let plan = if is_delivered && svc.is_sealing() {
                Some(svc.rekey_plan(&pr).await)
            } else {
                None
            };
            let r = svc
                .db(move |s| {
                    if is_delivered {
                        s.promote_rekey(
                            &audit(
                                &who,
                                AuditAction::ProjectResplitDelivered,
                                p2.to_string(),
                                None,
                            ),
                            &p2,
                            &next_verifier,
                            plan.as_ref(),
                        )
                    } else {
                        let mut a = audit(
                            &who,
                            AuditAction::ProjectResplitUndone,
                            p2.to_string(),
                            None,
                        );
                        a.detail = "reason=undelivered".into();
                        s.undo_rekey(&a, &p2, &next_verifier, None)
                    }
                })
                .await;
            match r {
                Ok(true) if is_delivered => {
                    svc.keys.promote(&pr);
                    svc.sealed_at(&pr, None);
                }
                Ok(true) => {
                    tracing::warn!(project = %pr, "the shares of a re-key never reached the client; the old pair stays");
                    svc.keys.unstage(&pr);
                }
                // Replaced or undone meanwhile (another re-key, an unlock with the old
                // pair): this K' is nobody's key.
                Ok(false) => svc.keys.unstage(&pr),
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
