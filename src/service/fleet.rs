//! The fleet (DESIGN section 7): this agent's heartbeat, which hosts are down, the fleet
//! inventories, and events that cross agents. With SQLite the fleet is this one host.

use super::*;
use crate::store::HostRow;

/// An event as it travels between agents (`NOTIFY vmwarden_events`): the event with its
/// audience, which local subscribers never see on the wire.
#[derive(Serialize, Deserialize)]
struct WireEvent {
    kind: String,
    vm: Option<VmId>,
    project: Option<ProjectName>,
    drive: Option<DriveId>,
    data: serde_json::Value,
    audience: Option<Vec<UserName>>,
    at_ms: i64,
}

impl Service {
    /// This agent's host.
    pub fn host(&self) -> &str {
        self.store.host()
    }

    /// Records this agent's heartbeat (`starting`: its registration at start-up) and learns
    /// which hosts are down. A change in that set moves the generation, so cached lists show
    /// `unknown` for the VMs of a host that went down.
    pub async fn heartbeat(&self, starting: bool) -> Result<()> {
        let dead = self.cfg.fleet.host_dead_after.as_millis() as i64;
        let public = self.host_public().map(|k| k.as_str().to_owned());
        let (now, hosts, rekeyed) = self
            .db(move |s| {
                s.heartbeat(env!("CARGO_PKG_VERSION"), starting, dead)?;
                let rekeyed = match (&public, starting) {
                    (Some(k), true) => s.publish_host_key(k)?,
                    _ => false,
                };
                s.purge_envelopes()?;
                let (now, hosts) = s.hosts()?;
                Ok((now, hosts, rekeyed))
            })
            .await?;
        if rekeyed {
            tracing::warn!("this host's key differs from the one enrolled; it receives no key material until an admin enrolls it again");
        }
        if let Some(k) = self.host_public() {
            if starting {
                tracing::info!(fingerprint = %k.fingerprint(), "host key");
            }
        }
        self.note_down(&hosts, now);
        Ok(())
    }

    /// Learns which hosts are down from rows just read, so every view agrees with the last
    /// look at the hosts table (a heartbeat, or `GET /v1/fleet/hosts`).
    fn note_down(&self, hosts: &[HostRow], now: i64) {
        let down: HashSet<String> = hosts
            .iter()
            .filter(|h| self.is_down(h, now))
            .map(|h| h.name.clone())
            .collect();
        let mut known = self.down_hosts.lock().unwrap();
        if *known != down {
            for h in down.difference(&known) {
                tracing::warn!(host = %h, "fleet host is down (no heartbeat)");
            }
            for h in known.difference(&down) {
                tracing::info!(host = %h, "fleet host is up");
            }
            *known = down;
            self.store.touch();
        }
    }

    fn is_down(&self, h: &HostRow, now_ms: i64) -> bool {
        let dead = self.cfg.fleet.host_dead_after.as_millis() as i64;
        h.name != self.host() && now_ms - h.last_seen_ms > dead
    }

    /// `vm` as callers see it: the state of a VM held by a host that is down is `unknown`.
    pub(super) fn shown(&self, mut vm: Vm) -> Vm {
        if let Some(h) = &vm.host {
            if vm.state != VmState::Stopped && self.down_hosts.lock().unwrap().contains(h) {
                vm.state = VmState::Unknown;
            }
        }
        vm
    }

    /// `GET /v1/fleet/hosts` (admins).
    pub async fn fleet_hosts(&self, p: &Principal) -> Result<Vec<FleetHost>> {
        self.check(p, &Action::Admin(AdminAction::HostInventory), "")?;
        let ((now, hosts), keys, vms) = self
            .db(|s| Ok((s.hosts()?, s.host_keys()?, s.vms()?)))
            .await?;
        self.note_down(&hosts, now);
        let shared = self.store.is_shared();
        Ok(hosts
            .into_iter()
            .map(|h| {
                let k = keys.iter().find(|k| k.name == h.name);
                FleetHost {
                    state: if k.is_some_and(|k| k.fenced_ms.is_some()) {
                        HostState::Fenced
                    } else if self.is_down(&h, now) {
                        HostState::Down
                    } else {
                        HostState::Up
                    },
                    vms: vms
                        .iter()
                        .filter(|v| v.host.as_deref() == Some(h.name.as_str()))
                        .count() as u32,
                    fingerprint: k
                        .and_then(|k| k.pubkey.as_deref())
                        .filter(|_| shared)
                        .map(crate::keys::host::fingerprint),
                    enrolled: k.is_some_and(|k| k.enrolled),
                    name: h.name,
                    version: h.version,
                    last_seen_ms: h.last_seen_ms,
                    started_ms: h.started_ms,
                }
            })
            .collect())
    }

    /// The fleet host `name` as `GET /v1/fleet/hosts` shows it.
    async fn fleet_host(&self, p: &Principal, name: &str) -> Result<FleetHost> {
        self.fleet_hosts(p)
            .await?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| ServiceError::NotFound(format!("Host {name} is not part of the fleet")))
    }

    fn fleet_only(&self) -> Result<()> {
        if self.store.is_shared() {
            return Ok(());
        }
        Err(conflict(
            ConflictCode::NotAFleet,
            "This agent keeps its state in SQLite: it is the only host, and holds project keys in its own memory only ([store] url names a PostgreSQL database for a fleet)".into(),
        ))
    }

    /// `POST /v1/fleet/hosts/{h}/enroll` (admins): from now on the host receives key
    /// material. The fingerprint is the one the admin read on the host itself, so a key
    /// written into the store by anyone else is never enrolled.
    pub async fn enroll(
        &self,
        p: &Principal,
        host: String,
        fingerprint: String,
    ) -> Result<FleetHost> {
        self.check(p, &Action::Admin(AdminAction::ManageFleet), "")?;
        self.fleet_only()?;
        let row = self
            .db(|s| s.host_keys())
            .await?
            .into_iter()
            .find(|h| h.name == host)
            .ok_or_else(|| {
                ServiceError::NotFound(format!("Host {host} is not part of the fleet"))
            })?;
        let Some(pubkey) = row.pubkey else {
            return Err(conflict(
                ConflictCode::FingerprintMismatch,
                format!("Host {host} has published no key yet; start its agent first"),
            ));
        };
        let actual = crate::keys::host::fingerprint(&pubkey);
        if actual.as_bytes() != fingerprint.trim().as_bytes() {
            let e = conflict(
                ConflictCode::FingerprintMismatch,
                format!("Host {host} published a key with another fingerprint ({actual}); compare it on the host before enrolling"),
            );
            return Err(self.refuse(p, AuditAction::HostEnroll, host, e).await);
        }
        let (actor, h) = (p.clone(), host.clone());
        self.db(move |s| {
            let mut a = audit(&actor, AuditAction::HostEnroll, h.clone(), None);
            a.detail = format!("fingerprint={}", crate::keys::host::fingerprint(&pubkey));
            s.enroll(&a, &h, &pubkey)
        })
        .await?;
        self.fleet_host(p, &host).await
    }

    /// `DELETE /v1/fleet/hosts/{h}/enroll` (admins): the host's envelopes are deleted at
    /// once, and it receives no more key material.
    pub async fn unenroll(&self, p: &Principal, host: String) -> Result<FleetHost> {
        self.check(p, &Action::Admin(AdminAction::ManageFleet), "")?;
        self.fleet_only()?;
        let (actor, h) = (p.clone(), host.clone());
        self.db(move |s| {
            s.unenroll(
                &audit(&actor, AuditAction::HostUnenroll, h.clone(), None),
                &h,
            )
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Missing(..)) => {
                ServiceError::NotFound(format!("Host {host} is not part of the fleet"))
            }
            e => e,
        })?;
        if host == self.host() {
            // Its own notification does not come back to it: this agent zeroizes now.
            self.forget_keys();
        }
        self.fleet_host(p, &host).await
    }

    /// `POST /v1/fleet/hosts/{h}/fence` (admins): the admin states that the host is powered
    /// off. Only a host that is down may be fenced; the VMs it held are recorded stopped and
    /// may start elsewhere. Never done by a timer: two QEMUs writing one image destroy it.
    pub async fn fence(&self, p: &Principal, host: String) -> Result<FencedHost> {
        self.check(p, &Action::Admin(AdminAction::ManageFleet), "")?;
        self.fleet_only()?;
        // Judged on the heartbeat, not the shown state: a fenced host that runs again is up.
        self.fleet_host(p, &host).await?;
        let (now, hosts) = self.db(|s| s.hosts()).await?;
        if hosts
            .iter()
            .any(|h| h.name == host && !self.is_down(h, now))
        {
            let e = conflict(
                ConflictCode::HostUp,
                format!("Host {host} heartbeats; only a host that is down (no heartbeat for [fleet] host_dead_after) and powered off may be fenced"),
            );
            return Err(self.refuse(p, AuditAction::HostFence, host, e).await);
        }
        let (actor, h) = (p.clone(), host.clone());
        let fenced = self
            .db(move |s| {
                let now = s.clock_ms()?;
                let mut a = audit(&actor, AuditAction::HostFence, h.clone(), None);
                a.detail = "operator states the host is powered off".into();
                s.fence(&a, &h, now)
            })
            .await?;
        for id in &fenced.released {
            tracing::warn!(host = %host, vm = %id, "VM released by fencing; it may start elsewhere");
        }
        Ok(FencedHost {
            host: self.fleet_host(p, &host).await?,
            released: fenced.released,
        })
    }

    /// A fenced host is back: the domains it still runs for VMs it no longer holds are
    /// destroyed (the VM may run elsewhere since the fence) and reported, each with an audit
    /// row, before the fence is lifted. Does nothing unless this host was fenced.
    pub async fn recover_from_fence(&self) -> Result<Vec<VmId>> {
        if !self.store.is_shared() {
            return Ok(vec![]);
        }
        let _one = self.fence_recovery.lock().await;
        if !self.db(|s| s.fenced()).await? {
            return Ok(vec![]);
        }
        let domains = self.hv(|h| h.list()).await?;
        let vms = self.db(|s| s.vms()).await?;
        let me = self.host().to_owned();
        let mut destroyed = vec![];
        for d in domains
            .iter()
            .filter(|d| d.host.as_deref() == Some(me.as_str()))
        {
            let Some(id) = d.vm else { continue };
            let held = vms.iter().find(|v| v.id == id).and_then(|v| v.host.clone());
            if held.as_deref() == Some(me.as_str()) {
                continue;
            }
            match self.hv(move |h| h.destroy(id)).await {
                Ok(()) | Err(ServiceError::Hypervisor(HypervisorError::NoDomain)) => {}
                Err(e) => return Err(e),
            }
            tracing::warn!(vm = %id, held_by = ?held, "fenced host back: destroyed a domain of a VM it no longer holds");
            destroyed.push((id, held));
        }
        let actor = system();
        let rows: Vec<(VmId, String)> = destroyed
            .iter()
            .map(|(id, held)| {
                (
                    *id,
                    match held {
                        Some(h) => format!("held_by={h}"),
                        None => "released".to_owned(),
                    },
                )
            })
            .collect();
        self.db(move |s| {
            let audits: Vec<_> = rows
                .iter()
                .map(|(id, detail)| {
                    let mut a = audit(
                        &actor,
                        AuditAction::HostFencedDestroyed,
                        id.to_string(),
                        Some(*id),
                    );
                    a.detail = detail.clone();
                    a
                })
                .collect();
            s.unfence(&audits)
        })
        .await?;
        tracing::info!(
            destroyed = destroyed.len(),
            "fence lifted: this host acts again"
        );
        Ok(destroyed.into_iter().map(|(id, _)| id).collect())
    }

    /// `GET /v1/fleet/vms` (admins; no drive details).
    pub async fn fleet_vms(&self, p: &Principal) -> Result<Vec<HostVm>> {
        self.check(p, &Action::Admin(AdminAction::HostInventory), "")?;
        self.fleet_inventory().await
    }

    /// Hands a local event to the other agents.
    pub(super) fn publish(&self, ev: &Event) {
        if !self.store.is_shared() {
            return;
        }
        let wire = WireEvent {
            kind: ev.kind.as_str().to_owned(),
            vm: ev.vm,
            project: ev.project.clone(),
            drive: ev.drive,
            data: ev.data.clone(),
            audience: ev.audience.clone(),
            at_ms: ev.at_ms,
        };
        match serde_json::to_string(&wire) {
            // NOTIFY payloads stop short of 8000 bytes.
            Ok(s) if s.len() < 7900 => self.store.publish(&s),
            _ => tracing::warn!(kind = %ev.kind, "event too large to reach other agents"),
        }
    }

    /// Delivers the events other agents publish to this agent's subscribers (who see them
    /// filtered by `may_see`, like local ones).
    pub fn follow_fleet_events(self: &Arc<Self>) {
        let tx = self.events.clone();
        self.store.on_event(move |payload| {
            let Ok(w) = serde_json::from_str::<WireEvent>(payload) else {
                return;
            };
            let Some(kind) = EventKind::parse(&w.kind) else {
                return;
            };
            let _ = tx.send(Event {
                kind,
                vm: w.vm,
                project: w.project,
                drive: w.drive,
                data: w.data,
                audience: w.audience,
                at_ms: w.at_ms,
            });
        });
    }
}
