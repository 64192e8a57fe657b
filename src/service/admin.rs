//! The registry, the host inventory and the audit log.

use super::*;

impl Service {
    /// Daemon and hypervisor status.
    pub async fn health(&self) -> Health {
        match self.hv(|h| h.ping()).await {
            Ok(v) => Health {
                status: "ok",
                hypervisor: v,
                version: env!("CARGO_PKG_VERSION"),
                reason: None,
            },
            Err(e) => Health {
                status: "degraded",
                hypervisor: "unavailable".into(),
                version: env!("CARGO_PKG_VERSION"),
                reason: Some(format!(
                    "libvirt at {} does not answer: {e}",
                    self.cfg.libvirt.uri
                )),
            },
        }
    }

    /// The caller.
    pub async fn me(&self, p: &Principal) -> Result<Me> {
        self.check(p, &Action::Registered, "")?;
        let name = p.name.clone();
        let projects = self
            .db(|s| s.projects())
            .await?
            .into_iter()
            .filter(|r| r.members.contains(&name))
            .map(|r| r.name)
            .collect();
        Ok(Me {
            name: p.name.clone(),
            team: p.team.clone(),
            admin: p.admin,
            projects,
        })
    }

    /// The registry.
    pub async fn users(&self, p: &Principal) -> Result<Vec<UserView>> {
        self.check(p, &Action::Admin(AdminAction::ManageUsers), "")?;
        let users = self.db(|s| s.users()).await?;
        Ok(users.into_iter().map(|u| self.user_view(u)).collect())
    }

    /// A registry entry with what `[access] admins` adds to it.
    fn user_view(&self, u: User) -> UserView {
        let by_config = self.cfg.access.admins.iter().any(|a| a == u.name.as_str());
        UserView {
            name: u.name,
            team: u.team,
            admin: u.admin || by_config,
            admin_in_registry: u.admin,
        }
    }

    /// Registers or updates a user; idempotent. A user holding roles or drives keeps their
    /// team (checked in the transaction that writes).
    pub async fn put_user(&self, p: &Principal, user: User) -> Result<Changed<UserView>> {
        self.check(p, &Action::Admin(AdminAction::ManageUsers), "")?;
        if user.name.is_reserved() {
            return Err(conflict(
                ConflictCode::NameReserved,
                format!("The name {} is reserved for the daemon itself", user.name),
            ));
        }
        let actor = p.clone();
        let u = user.clone();
        let change = self
            .db(move |s| {
                s.put_user(
                    &audit(&actor, AuditAction::UserPut, u.name.to_string(), None),
                    &u,
                )
            })
            .await
            .map_err(|e| holdings_conflict(e, "change the team of"))?;
        Ok(Changed {
            change,
            object: self.user_view(user),
        })
    }

    /// Removes a user; idempotent. A user holding roles or drives is refused.
    pub async fn delete_user(&self, p: &Principal, name: UserName) -> Result<Change> {
        self.check(p, &Action::Admin(AdminAction::ManageUsers), "")?;
        let actor = p.clone();
        self.db(move |s| {
            s.delete_user(
                &audit(&actor, AuditAction::UserDelete, name.to_string(), None),
                &name,
            )
        })
        .await
        .map_err(|e| holdings_conflict(e, "delete"))
    }
    /// Inventory for admins: no drive details.
    pub async fn host_vms(&self, p: &Principal) -> Result<Vec<HostVm>> {
        self.check(p, &Action::Admin(AdminAction::HostInventory), "")?;
        self.inventory().await
    }

    async fn inventory(&self) -> Result<Vec<HostVm>> {
        // This host's inventory: VMs no other host holds.
        Ok(self
            .fleet_inventory()
            .await?
            .into_iter()
            .filter(|v| self.store.holds(v.host.as_deref()))
            .collect())
    }

    /// Every VM of the fleet with the host holding it; `unknown` when that host is down.
    pub(super) async fn fleet_inventory(&self) -> Result<Vec<HostVm>> {
        let default_enabled = self.cfg.idle.enabled;
        Ok(self
            .db(|s| s.vms())
            .await?
            .into_iter()
            .map(|v| self.shown(v))
            .map(|v| HostVm {
                host: v.host,
                idle_enabled: default_enabled && v.idle.enabled.unwrap_or(true),
                id: v.id,
                name: v.name,
                project: v.project,
                state: v.state,
                state_reason: v.state_reason,
                vcpus: v.vcpus,
                memory_mib: v.memory_mib,
            })
            .collect())
    }

    /// What `/metrics` reports about VMs (admins: AdminAction::Metrics).
    pub async fn metrics_inventory(&self, p: &Principal) -> Result<Vec<HostVm>> {
        self.check(p, &Action::Admin(AdminAction::Metrics), "")?;
        self.inventory().await
    }

    /// Audit entries: everything for admins, entries of the caller's VMs otherwise.
    pub async fn audit_log(&self, p: &Principal, mut f: AuditFilter) -> Result<Vec<AuditEntry>> {
        self.check(p, &Action::Registered, "")?;
        let mut user_of = std::collections::HashSet::new();
        if !p.admin {
            let mine = self.vms(p).await?;
            user_of = mine
                .iter()
                .filter(|v| v.role == Role::User)
                .map(|v| v.id)
                .collect();
            f.vms_allowed = Some(mine.into_iter().map(|v| v.id).collect());
        }
        let mut rows = self.db(move |s| s.audit(&f)).await?;
        // Users of a VM see its history without its drives: drive entries go, details blank.
        rows.retain_mut(|e| {
            let vm = e.vm.as_deref().and_then(|v| v.parse::<VmId>().ok());
            match vm {
                Some(v) if user_of.contains(&v) => {
                    e.detail.clear();
                    !AuditAction::parse(&e.action).is_some_and(AuditAction::names_drive)
                }
                _ => true,
            }
        });
        Ok(rows)
    }
}
