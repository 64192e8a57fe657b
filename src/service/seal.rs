//! Fleet unlock (DESIGN section 7): this agent's keyring follows the envelopes in the shared
//! store. Before K is used or a key state is judged, the project's envelopes sealed to this
//! host are opened into the keyring (only when their `seal_gen` moved since the last look),
//! and every keyring change is sealed to every enrolled host in the transaction that records
//! it. With SQLite none of this runs: the keyring alone holds the key state (DESIGN 1).

use super::*;
use crate::keys::host::{self, HostKey, HostPublic, Sealed};
use crate::keys::{Half, Key32, Restored, Sealing};
use crate::store::{Discard, Envelope, SealPlan, SealState};

/// This agent's identity and what it last opened.
pub(super) struct FleetKeys {
    key: HostKey,
    /// The `seal_gen` each project's keyring slot was restored or written at.
    seen: Mutex<HashMap<ProjectName, i64>>,
    /// Notifications of other agents' key changes received so far: a restore or a write
    /// that a notification overtook looks again, so a lock elsewhere never leaves K behind.
    notices: AtomicU64,
}

impl FleetKeys {
    pub(super) fn new(key: HostKey) -> Self {
        Self {
            key,
            seen: Mutex::new(HashMap::new()),
            notices: AtomicU64::new(0),
        }
    }

    pub(super) fn notices(&self) -> u64 {
        self.notices.load(Ordering::Acquire)
    }
}

/// The key state of a project as this agent last read it from the store.
pub(super) struct SealView {
    /// The state read.
    pub state: SealState,
    /// The enrolled hosts and the keys they are enrolled with.
    pub enrolled: Vec<(String, HostPublic)>,
}

impl Service {
    /// Gives this agent its host identity (fleet only: with SQLite it has none).
    pub fn with_host_key(mut self, key: HostKey) -> Self {
        if self.store.is_shared() {
            self.sealed = Some(Arc::new(FleetKeys::new(key)));
        }
        self
    }

    /// This agent's public key, if it is part of a fleet.
    pub fn host_public(&self) -> Option<&HostPublic> {
        self.sealed.as_ref().map(|f| f.key.public())
    }

    /// Drops what the keyring holds of projects whose envelopes another agent changed
    /// (`""`: all of them), zeroizing it at once; it is opened again when next needed.
    pub fn follow_fleet_keys(self: &Arc<Self>) {
        let Some(f) = self.sealed.clone() else {
            return;
        };
        let keys = self.keys.clone();
        let me = self.host().to_owned();
        self.store.on_keys(move |payload| {
            f.notices.fetch_add(1, Ordering::AcqRel);
            let mut parts = payload.split('\n');
            let (project, what) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if project.is_empty() || what.strip_prefix("unenroll:") == Some(me.as_str()) {
                keys.forget_all();
                f.seen.lock().unwrap().clear();
                if !project.is_empty() {
                    tracing::info!("this host was un-enrolled; zeroized every key it held");
                }
            } else if let Ok(p) = project.parse::<ProjectName>() {
                f.seen.lock().unwrap().remove(&p);
                // A lock zeroizes at once; any other change is looked at before the next use
                // (which keeps a staged re-key of this agent).
                if what == "lock" && keys.lock(&p) {
                    tracing::debug!(project = %p, "locked through another agent; zeroized the key of project {p}");
                }
            }
        });
    }

    /// Brings the keyring's state of `project` in line with its envelopes (fleet; `None`
    /// with SQLite, where the keyring is the truth).
    pub(super) async fn sync_keys(&self, project: &ProjectName) -> Result<Option<SealView>> {
        let Some(f) = self.sealed.clone() else {
            return Ok(None);
        };
        // Bounded: each round is one snapshot; a round that a notification overtook restored
        // what may already be gone, so it looks again.
        for _ in 0..3 {
            let before = f.notices();
            let view = self.sync_once(&f, project).await?;
            if f.notices() == before {
                return Ok(Some(view));
            }
            f.seen.lock().unwrap().remove(project);
        }
        Ok(Some(self.sync_once(&f, project).await?))
    }

    async fn sync_once(&self, f: &FleetKeys, project: &ProjectName) -> Result<SealView> {
        let pr = project.clone();
        let (state, hosts) = self.db(move |s| s.seal_state(&pr)).await?;
        let enrolled: Vec<(String, HostPublic)> = hosts
            .into_iter()
            .filter(|h| h.enrolled)
            .filter_map(|h| Some((h.name, HostPublic::parse(h.pubkey.as_deref()?)?)))
            .collect();
        let me_enrolled = enrolled
            .iter()
            .any(|(n, k)| n == self.host() && k == f.key.public());
        let current = f.seen.lock().unwrap().get(project) == Some(&state.gen);
        if !current {
            let restored = if me_enrolled {
                self.open_envelopes(&f.key, project, &state)
            } else {
                Restored::Locked
            };
            self.keys.restore(project, restored, Instant::now());
            f.seen.lock().unwrap().insert(project.clone(), state.gen);
        }
        if !me_enrolled {
            // Nothing may reach a host no admin enrolled; its keyring stays empty.
            self.keys.lock(project);
        }
        Ok(SealView { state, enrolled })
    }

    /// Refuses key material on a host no admin enrolled.
    pub(super) fn must_be_enrolled(&self, view: &Option<SealView>) -> Result<()> {
        let (Some(v), Some(f)) = (view, &self.sealed) else {
            return Ok(());
        };
        if v.enrolled
            .iter()
            .any(|(n, k)| n == self.host() && k == f.key.public())
        {
            return Ok(());
        }
        Err(conflict(
            ConflictCode::HostNotEnrolled,
            format!(
                "Host {} is not enrolled, so it may not receive key material; an admin enrolls it with its fingerprint {} (vmwarden fleet enroll {} {})",
                self.host(),
                f.key.public().fingerprint(),
                self.host(),
                f.key.public().fingerprint()
            ),
        ))
    }

    fn open_envelopes(&self, key: &HostKey, project: &ProjectName, st: &SealState) -> Restored {
        let left = |e: &Envelope| {
            std::time::Duration::from_millis((e.expires_ms - st.now_ms).max(0) as u64)
        };
        let mut half = None;
        for e in &st.mine {
            let Some(kind) = Sealed::parse(&e.kind) else {
                continue;
            };
            let Some(secret) = key.open(project, kind, e.expires_ms, &e.body) else {
                tracing::warn!(project = %project, kind = %e.kind, "an envelope sealed to this host does not open; ignored");
                continue;
            };
            match kind {
                Sealed::Key => {
                    return Restored::Unlocked {
                        key: secret,
                        left: left(e),
                    }
                }
                Sealed::AdminHalf | Sealed::MemberHalf => {
                    let Ok(from) = e.from_user.parse::<UserName>() else {
                        continue;
                    };
                    half = Some(Restored::Pending {
                        half: if kind == Sealed::AdminHalf {
                            Half::Admin
                        } else {
                            Half::Member
                        },
                        share: secret,
                        from,
                        left: left(e),
                    });
                }
            }
        }
        half.unwrap_or(Restored::Locked)
    }

    /// The envelope change that records `sealing` for every enrolled host.
    pub(super) fn seal_plan(
        &self,
        project: &ProjectName,
        view: &SealView,
        sealing: Sealing<'_>,
    ) -> Option<SealPlan> {
        let plan = |discard, put| SealPlan {
            project: project.clone(),
            expect: Some(view.state.gen),
            drop: discard,
            put,
            rekey: false,
        };
        match sealing {
            Sealing::Keep => None,
            Sealing::Clear => Some(plan(Discard::Halves, vec![])),
            Sealing::Pending { half, share, from } => {
                let (kind, until) = (
                    match half {
                        Half::Admin => Sealed::AdminHalf,
                        Half::Member => Sealed::MemberHalf,
                    },
                    view.state.now_ms + self.cfg.keys.unlock_window.as_millis() as i64,
                );
                Some(plan(
                    Discard::Nothing,
                    self.seal_to_all(project, view, kind, share, from.as_str(), until),
                ))
            }
            Sealing::Key(k) => {
                let until = view.state.now_ms + self.cfg.keys.unlock_ttl.as_millis() as i64;
                Some(plan(
                    Discard::Halves,
                    self.seal_to_all(project, view, Sealed::Key, k, "", until),
                ))
            }
        }
    }

    /// One envelope of `secret` per enrolled host.
    pub(super) fn seal_to_all(
        &self,
        project: &ProjectName,
        view: &SealView,
        kind: Sealed,
        secret: &Key32,
        from: &str,
        expires_ms: i64,
    ) -> Vec<Envelope> {
        view.enrolled
            .iter()
            .map(|(name, public)| Envelope {
                kind: kind.as_str().to_owned(),
                host: name.clone(),
                sealed_to: public.as_str().to_owned(),
                from_user: from.to_owned(),
                expires_ms,
                body: host::seal(public, project, kind, expires_ms, secret),
            })
            .collect()
    }

    /// The envelope change of a re-key's promotion: K' sealed to every enrolled host with the
    /// expiry of K, put in place of the envelopes of K (the store writes none when the
    /// project locked meanwhile). When K' cannot be sealed now (this agent no longer holds it)
    /// the promotion only drops the envelopes of K, which no longer opens the drives: the
    /// project is locked for the fleet until the new pair unlocks it.
    pub(super) async fn rekey_plan(&self, project: &ProjectName) -> SealPlan {
        let view = self.sync_keys(project).await.ok().flatten();
        let put = view
            .and_then(|v| {
                // K' lives as long as this host's envelope of K was to.
                let until = v
                    .state
                    .mine
                    .iter()
                    .find(|e| e.kind == Sealed::Key.as_str())?
                    .expires_ms;
                self.keys
                    .with_keys(project, Instant::now(), |_, next| {
                        next.map(|n| self.seal_to_all(project, &v, Sealed::Key, n, "", until))
                    })
                    .ok()
                    .flatten()
            })
            .unwrap_or_default();
        SealPlan {
            project: project.clone(),
            expect: None,
            drop: Discard::Nothing,
            put,
            rekey: true,
        }
    }

    /// Brings the keyring in line with the envelopes of every project whose `seal_gen`
    /// moved since this agent looked (one round trip when none did).
    pub(super) async fn sync_all_keys(&self) -> Result<()> {
        let Some(f) = self.sealed.clone() else {
            return Ok(());
        };
        let gens = self.db(|s| s.seal_gens()).await?;
        let stale: Vec<ProjectName> = {
            let seen = f.seen.lock().unwrap();
            gens.into_iter()
                .filter(|(p, g)| seen.get(p) != Some(g))
                .map(|(p, _)| p)
                .collect()
        };
        for p in stale {
            self.sync_keys(&p).await?;
        }
        Ok(())
    }

    /// Notes that this agent's own write moved `project`'s envelopes to `gen` (the keyring
    /// already holds what it wrote).
    pub(super) fn sealed_at(&self, project: &ProjectName, gen: Option<i64>) {
        if let Some(f) = &self.sealed {
            let mut seen = f.seen.lock().unwrap();
            match gen {
                Some(g) => seen.insert(project.clone(), g),
                None => seen.remove(project),
            };
        }
    }

    /// Zeroizes every key state this agent holds (it was un-enrolled).
    pub(super) fn forget_keys(&self) {
        if let Some(f) = &self.sealed {
            self.keys.forget_all();
            f.seen.lock().unwrap().clear();
        }
    }

    /// How many notifications of other agents' key changes arrived (0 with SQLite).
    pub(super) fn key_notices(&self) -> u64 {
        self.sealed.as_ref().map_or(0, |f| f.notices())
    }

    /// Whether this agent seals key states to the fleet.
    pub(super) fn is_sealing(&self) -> bool {
        self.sealed.is_some()
    }
}
