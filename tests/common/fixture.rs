//! The fixture builder: a daemon with its users, projects (created and unlocked), drives
//! (optionally holding a boot sector that prints a marker), VMs and shares, in one chain.

use super::client::{drive, project, unlock, users, vm, Client, Shares};
use super::daemon::{Daemon, Opts};
use super::host::{boot_sector, write_boot_sector};
use std::collections::HashMap;

/// A drive to make: owner, project, name, and the boot marker with whether the guest spins
/// after printing it.
type DriveSpec = (String, String, String, Option<(String, bool)>);

/// What to build.
#[derive(Default)]
pub struct Fixture {
    opts: Opts,
    users: Vec<(String, String)>,
    projects: Vec<(String, Vec<String>)>,
    drives: Vec<DriveSpec>,
    /// owner, project, name, drive names.
    vms: Vec<(String, String, String, Vec<String>)>,
    /// VM name, by, to, role.
    shares: Vec<(String, String, String, String)>,
}

/// What was built: the daemon, a client, and the ids behind the names.
pub struct World {
    pub d: Daemon,
    pub c: Client,
    shares: HashMap<String, Shares>,
    drives: HashMap<String, String>,
    vms: HashMap<String, String>,
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Fixture {
    pub fn new(opts: Opts) -> Fixture {
        Fixture {
            opts,
            ..Default::default()
        }
    }

    /// Registers users (name, team); root (team ops) is always registered.
    pub fn users(mut self, users: &[(&str, &str)]) -> Self {
        self.users
            .extend(users.iter().map(|(u, t)| (u.to_string(), t.to_string())));
        self
    }

    /// A project, unlocked by root and its first member.
    pub fn project(mut self, name: &str, members: &[&str]) -> Self {
        self.projects.push((name.into(), owned(members)));
        self
    }

    /// A drive of `owner` in `project`.
    pub fn drive(mut self, owner: &str, project: &str, name: &str) -> Self {
        self.drives
            .push((owner.into(), project.into(), name.into(), None));
        self
    }

    /// A drive holding a boot sector that prints `marker` on the serial port and halts.
    pub fn boot_drive(mut self, owner: &str, project: &str, name: &str, marker: &str) -> Self {
        self.drives.push((
            owner.into(),
            project.into(),
            name.into(),
            Some((marker.into(), false)),
        ));
        self
    }

    /// A drive whose boot sector prints `marker` and then keeps a vCPU busy.
    pub fn spinning_drive(mut self, owner: &str, project: &str, name: &str, marker: &str) -> Self {
        self.drives.push((
            owner.into(),
            project.into(),
            name.into(),
            Some((marker.into(), true)),
        ));
        self
    }

    /// A VM of `owner` with the named drives.
    pub fn vm(mut self, owner: &str, project: &str, name: &str, drives: &[&str]) -> Self {
        self.vms
            .push((owner.into(), project.into(), name.into(), owned(drives)));
        self
    }

    /// A role on a VM, granted by `by` (co-ownership confirmed).
    pub fn share(mut self, vm: &str, by: &str, to: &str, role: &str) -> Self {
        self.shares
            .push((vm.into(), by.into(), to.into(), role.into()));
        self
    }

    pub async fn build(self) -> World {
        let d = Daemon::start(self.opts);
        let c = d.client();
        let list: Vec<(&str, &str)> = self
            .users
            .iter()
            .map(|(u, t)| (u.as_str(), t.as_str()))
            .collect();
        users(&c, &list).await;
        let mut w = World {
            d,
            c,
            shares: HashMap::new(),
            drives: HashMap::new(),
            vms: HashMap::new(),
        };
        for (name, members) in &self.projects {
            let m: Vec<&str> = members.iter().map(String::as_str).collect();
            let s = project(&w.c, name, &m).await;
            if let Some(first) = m.first() {
                unlock(&w.c, name, &s, first).await;
            }
            w.shares.insert(name.clone(), s);
        }
        for (owner, p, name, marker) in &self.drives {
            let id = drive(&w.c, owner, p, name).await;
            if let Some((marker, spin)) = marker {
                write_boot_sector(&w.d, &w.shares[p], p, &id, &boot_sector(marker, *spin));
            }
            w.drives.insert(name.clone(), id);
        }
        for (owner, p, name, drives) in &self.vms {
            let ids: Vec<&str> = drives.iter().map(|d| w.drives[d].as_str()).collect();
            let id = vm(&w.c, owner, p, name, &ids).await;
            w.vms.insert(name.clone(), id);
        }
        for (v, by, to, role) in &self.shares {
            let r = w.c.share(&w.vms[v], by, to, role, true).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        w
    }
}

impl World {
    /// The id of the VM called `name`.
    pub fn vm(&self, name: &str) -> String {
        self.vms[name].clone()
    }

    /// The id of the drive called `name`.
    pub fn drive(&self, name: &str) -> String {
        self.drives[name].clone()
    }

    /// The share pair of a project.
    pub fn shares(&self, project: &str) -> &Shares {
        &self.shares[project]
    }
}
