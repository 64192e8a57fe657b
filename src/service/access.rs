//! Who is asking and what they may see: principals, membership, visibility of projects,
//! VMs and drives. A missing object costs the same work as a hidden one.

use super::*;

/// What an operation on a project is judged on: "read the project, check membership, check
/// policy, hide" happens once, here.
#[derive(Debug)]
pub(super) struct ProjectFacts {
    /// The project named.
    pub name: ProjectName,
    /// Its row, if it exists.
    pub row: Option<ProjectRow>,
    /// Whether the caller is a member.
    pub member: bool,
}

impl ProjectFacts {
    fn hidden(&self) -> ServiceError {
        deny(Denial::Hidden(Hidden::Project), self.name.as_str())
    }

    /// The row, if the caller may know the project exists.
    pub fn visible(self, p: &Principal) -> Result<ProjectRow> {
        match self.row {
            Some(r) if p.admin || self.member => Ok(r),
            _ => Err(self.hidden()),
        }
    }

    /// Asks policy about `action` (which is built from the membership), then hides a
    /// missing project like one the caller may not see.
    pub fn gate(self, svc: &Service, p: &Principal, action: &Action) -> Result<ProjectRow> {
        svc.check(p, action, self.name.as_str())?;
        match self.row {
            Some(r) => Ok(r),
            None => Err(self.hidden()),
        }
    }
}

impl Service {
    pub(super) async fn user_snapshot(&self) -> Result<Arc<HashMap<UserName, User>>> {
        // In a fleet, catch up with what other agents committed before this request came
        // (a share through host A applies in the next request through host B).
        if self.store.is_shared() {
            self.db(|s| s.sync()).await?;
        }
        // Read the generation before loading, so a change committed meanwhile leaves the
        // cache tagged stale rather than fresh.
        let g = self.store.generation();
        if let Some((cg, m)) = &*self.users_cache.lock().unwrap() {
            if *cg == g {
                return Ok(m.clone());
            }
        }
        let users = self.db(|s| s.users()).await?;
        let m: Arc<HashMap<UserName, User>> =
            Arc::new(users.into_iter().map(|u| (u.name.clone(), u)).collect());
        *self.users_cache.lock().unwrap() = Some((g, m.clone()));
        Ok(m)
    }

    /// Resolves the principal of a request: the peer, or for an orchestrator the user it acts
    /// for. Reads the registry on every request, so a share or a registration takes effect in
    /// the very next request.
    pub async fn principal(
        &self,
        peer: UserName,
        acting_for: Option<UserName>,
    ) -> Result<Principal> {
        let name = match acting_for {
            Some(u) if u != peer => {
                if !self
                    .cfg
                    .access
                    .orchestrators
                    .iter()
                    .any(|o| o == peer.as_str())
                {
                    return Err(ServiceError::Denied(DenialMsg {
                        denial: Denial::AdminRequired,
                        message: format!(
                            "{peer} is not an orchestrator and may not act for another user"
                        ),
                    }));
                }
                u
            }
            _ => peer.clone(),
        };
        let user = self.user_snapshot().await?.get(&name).cloned();
        let acting = name != peer;
        if acting && user.is_none() {
            // Orchestrators act for registered users only; a config admin name does not
            // make an unregistered principal an admin through the header.
            return Err(ServiceError::Denied(DenialMsg {
                denial: Denial::Unregistered,
                message: format!("{name} is not a registered vmwarden user"),
            }));
        }
        let cfg_admin = !acting && self.cfg.access.admins.iter().any(|a| a == name.as_str());
        Ok(Principal {
            admin: cfg_admin || user.as_ref().is_some_and(|u| u.admin),
            team: user.map(|u| u.team),
            name,
        })
    }

    pub(super) fn check(&self, p: &Principal, a: &Action, what: &str) -> Result<()> {
        match policy::decide(p, a) {
            Decision::Allow => Ok(()),
            Decision::Deny(d) => Err(deny(d, what)),
        }
    }

    pub(super) async fn is_member(&self, project: &ProjectName, user: &UserName) -> Result<bool> {
        let (p, u) = (project.clone(), user.clone());
        Ok(self
            .db(move |s| s.project(&p))
            .await?
            .is_some_and(|row| row.members.contains(&u)))
    }

    /// A project as the caller meets it, in one read: its row and whether the caller is a
    /// member.
    pub(super) async fn project_facts(
        &self,
        p: &Principal,
        project: &ProjectName,
    ) -> Result<ProjectFacts> {
        let pr = project.clone();
        let row = self.db(move |s| s.project(&pr)).await?;
        Ok(ProjectFacts {
            member: row.as_ref().is_some_and(|r| r.members.contains(&p.name)),
            name: project.clone(),
            row,
        })
    }

    /// The project's row if the caller may know it exists (admins see every project,
    /// others only theirs); a missing project and a hidden one answer alike.
    pub(super) async fn project_row(
        &self,
        p: &Principal,
        project: &ProjectName,
    ) -> Result<ProjectRow> {
        self.project_facts(p, project).await?.visible(p)
    }

    pub(super) async fn vm_facts(&self, p: &Principal, id: VmId) -> Result<(Vm, VmFacts)> {
        let vm = self.db(move |s| s.vm(id)).await?;
        let Some(vm) = vm else {
            // A missing VM costs the same work as a hidden one.
            let _ = self.is_member(&unseen_project(), &p.name).await?;
            return Err(deny(Denial::Hidden(Hidden::Vm), &id.to_string()));
        };
        let member = self.is_member(&vm.project, &p.name).await?;
        let facts = VmFacts {
            project_member: member,
            role: vm.role_of(&p.name),
            team: vm.team.clone(),
            owners: vm.owners.len(),
        };
        Ok((vm, facts))
    }

    pub(super) async fn vm_checked(&self, p: &Principal, id: VmId, a: VmAction) -> Result<Vm> {
        self.vm_checked_for(p, id, a, None).await
    }

    /// As `vm_checked`, for drive operations: a hidden drive is named by its own id.
    pub(super) async fn vm_checked_for(
        &self,
        p: &Principal,
        id: VmId,
        a: VmAction,
        drive: Option<DriveId>,
    ) -> Result<Vm> {
        let (vm, facts) = self.vm_facts(p, id).await?;
        match policy::decide(p, &Action::Vm(a, facts)) {
            Decision::Allow => Ok(vm),
            Decision::Deny(d @ Denial::Hidden(Hidden::Drive)) => {
                Err(deny(d, &drive.map(|d| d.to_string()).unwrap_or_default()))
            }
            Decision::Deny(d) => Err(deny(d, &id.to_string())),
        }
    }

    pub(super) async fn drive_for(
        &self,
        p: &Principal,
        id: DriveId,
    ) -> Result<crate::store::DriveRow> {
        let row = self.db(move |s| s.drive(id)).await?;
        let Some(row) = row else {
            // A missing drive costs the same work as a hidden one: no answer time tells
            // them apart.
            let _ = self.is_member(&unseen_project(), &p.name).await?;
            return Err(deny(Denial::Hidden(Hidden::Drive), &id.to_string()));
        };
        let member = self.is_member(&row.drive.project, &p.name).await?;
        self.check(
            p,
            &Action::Drive(DriveFacts {
                project_member: member,
                owner: row.drive.owners.contains(&p.name),
            }),
            &id.to_string(),
        )?;
        Ok(row)
    }
}
/// The stand-in for the membership read of a missing object: the read is made so that a
/// missing object costs the same work as a hidden one, and its answer is not used.
fn unseen_project() -> ProjectName {
    ProjectName::parse("0-unseen").expect("valid")
}

/// Picks the one candidate `r` names: a whole id, else an exact name, else a unique id
/// prefix. `kind` names the objects in errors.
fn pick<I: Copy + std::fmt::Display>(
    r: &ObjectRef,
    candidates: &[(I, String)],
    hidden: Hidden,
) -> Result<I> {
    let by = |f: &dyn Fn(&(I, String)) -> bool| -> Vec<I> {
        candidates.iter().filter(|c| f(c)).map(|c| c.0).collect()
    };
    let mut found = by(&|c| c.0.to_string() == r.as_str());
    if found.is_empty() {
        found = by(&|c| c.1 == r.as_str());
    }
    if found.is_empty() {
        found = by(&|c| r.prefixes(&c.0.to_string()));
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(deny(Denial::Hidden(hidden), r.as_str())),
        many => Err(conflict(
            ConflictCode::Ambiguous,
            format!(
                "{r} names {} objects: {}; give more of the id",
                many.len(),
                many.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

impl Service {
    /// The VM a request names, among the VMs the caller holds a role on in its projects
    /// (an admin in a project also resolves its VMs, to be told 403 rather than 404). A
    /// whole id is taken as it is: whether it exists is the operation's to say.
    pub async fn resolve_vm(&self, p: &Principal, r: &ObjectRef) -> Result<VmId> {
        if let Some(u) = r.as_uuid() {
            return Ok(VmId(u));
        }
        let member_of = self.member_projects(p).await?;
        let vms = self.db(|s| s.vms()).await?;
        let candidates: Vec<(VmId, String)> = vms
            .into_iter()
            .filter(|v| member_of.contains(&v.project) && (v.role_of(&p.name).is_some() || p.admin))
            .map(|v| (v.id, v.name.to_string()))
            .collect();
        pick(r, &candidates, Hidden::Vm)
    }

    /// The VM an admin names in the host inventory (every VM on the host).
    pub async fn resolve_host_vm(&self, p: &Principal, r: &ObjectRef) -> Result<VmId> {
        self.check(p, &Action::Admin(AdminAction::HostInventory), "")?;
        if let Some(u) = r.as_uuid() {
            return Ok(VmId(u));
        }
        let candidates: Vec<(VmId, String)> = self
            .db(|s| s.vms())
            .await?
            .into_iter()
            .map(|v| (v.id, v.name.to_string()))
            .collect();
        pick(r, &candidates, Hidden::Vm)
    }

    /// The drive a request names, among the drives the caller owns in its projects.
    pub async fn resolve_drive(&self, p: &Principal, r: &ObjectRef) -> Result<DriveId> {
        if let Some(u) = r.as_uuid() {
            return Ok(DriveId(u));
        }
        let member_of = self.member_projects(p).await?;
        let candidates: Vec<(DriveId, String)> = self
            .db(|s| s.drives())
            .await?
            .into_iter()
            .filter(|d| d.owners.contains(&p.name) && member_of.contains(&d.project))
            .map(|d| (d.id, d.name.to_string()))
            .collect();
        pick(r, &candidates, Hidden::Drive)
    }

    /// The projects the caller is a member of.
    pub(super) async fn member_projects(
        &self,
        p: &Principal,
    ) -> Result<std::collections::HashSet<ProjectName>> {
        Ok(self
            .db(|s| s.projects())
            .await?
            .into_iter()
            .filter(|r| r.members.contains(&p.name))
            .map(|r| r.name)
            .collect())
    }
}
