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
        let (now, hosts) = self
            .db(move |s| {
                s.heartbeat(env!("CARGO_PKG_VERSION"), starting, dead)?;
                s.hosts()
            })
            .await?;
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
        let ((now, hosts), vms) = self.db(|s| Ok((s.hosts()?, s.vms()?))).await?;
        self.note_down(&hosts, now);
        Ok(hosts
            .into_iter()
            .map(|h| FleetHost {
                state: if self.is_down(&h, now) {
                    HostState::Down
                } else {
                    HostState::Up
                },
                vms: vms
                    .iter()
                    .filter(|v| v.host.as_deref() == Some(h.name.as_str()))
                    .count() as u32,
                name: h.name,
                version: h.version,
                last_seen_ms: h.last_seen_ms,
                started_ms: h.started_ms,
            })
            .collect())
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
