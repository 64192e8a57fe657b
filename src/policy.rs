//! Who may do what: a pure function `(principal, action, snapshot) -> Allow | Deny(code)`.
//!
//! No I/O happens here. The service loads a snapshot of the facts an action depends on
//! (project membership, the caller's role, teams, owner counts), asks `decide`, and only then
//! acts. The rules are DESIGN section 1; `tests` holds them as a table, one row per
//! (action, relation).

use crate::model::{Role, TeamName, UserName};

/// The caller as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Unix user name (or the orchestrator's `Vmwarden-User`).
    pub name: UserName,
    /// The caller's team; `None` for an unregistered principal.
    pub team: Option<TeamName>,
    /// Admin by config or registry.
    pub admin: bool,
}

impl Principal {
    /// Registered in the users registry, or an admin by config (who may bootstrap the
    /// registry without being in it).
    fn registered(&self) -> bool {
        self.team.is_some() || self.admin
    }
}

/// Facts about a VM relative to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFacts {
    /// Whether the caller is a member of the VM's project.
    pub project_member: bool,
    /// The caller's role on the VM.
    pub role: Option<Role>,
    /// The VM's team.
    pub team: TeamName,
    /// Number of owners now.
    pub owners: usize,
}

/// Facts about the target of a share or unshare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFacts {
    /// The target's team, `None` when not registered.
    pub team: Option<TeamName>,
    /// Whether the target is a member of the VM's project.
    pub project_member: bool,
    /// The target's current role.
    pub role: Option<Role>,
    /// Whether the target is the caller.
    pub is_self: bool,
}

/// Facts about a drive relative to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriveFacts {
    /// Whether the caller is a member of the drive's project.
    pub project_member: bool,
    /// Whether the caller owns the drive.
    pub owner: bool,
}

/// Operations on a VM the caller holds (or lacks) a role on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    /// GET /v1/vms/{id}.
    View,
    /// GET /v1/vms/{id}/members.
    Members,
    /// POST start.
    Start,
    /// POST stop.
    Stop,
    /// POST keepalive.
    Keepalive,
    /// PATCH.
    Update,
    /// DELETE.
    Delete,
    /// PUT drives/{drive}; the drive's own facts are checked separately.
    Attach,
    /// DELETE drives/{drive}.
    Detach,
    /// See the drives in the VM's view.
    SeeDrives,
}

/// Admin-only operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// Users registry.
    ManageUsers,
    /// POST /v1/projects.
    CreateProject,
    /// Project memberships.
    ManageMembers,
    /// GET /v1/host/vms.
    HostInventory,
    /// POST /v1/host/vms/{id}/stop.
    HostStop,
    /// GET /metrics.
    Metrics,
}

/// Which share a caller submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareHalf {
    /// The admin's.
    Admin,
    /// The members'.
    Member,
}

/// Every action the API can ask about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// GET /v1/health: any peer.
    Health,
    /// /v1/me, listings, events and own audit: registered principals (listings filter).
    Registered,
    /// Admin-only operations.
    Admin(AdminAction),
    /// Create a VM or a drive in a project.
    CreateIn {
        /// Whether the caller is a member of that project.
        project_member: bool,
    },
    /// Submit one share of a project's key.
    Unlock {
        /// Which share.
        half: ShareHalf,
        /// Whether the caller is a member of the project.
        project_member: bool,
    },
    /// Lock a project or see its status.
    Lock {
        /// Whether the caller is a member of the project.
        project_member: bool,
    },
    /// An operation on a VM.
    Vm(VmAction, VmFacts),
    /// PUT /v1/vms/{id}/members/{user}.
    Share {
        /// The VM.
        vm: VmFacts,
        /// The target.
        target: TargetFacts,
        /// The role granted.
        role: Role,
        /// `confirm_drive_access`.
        confirm: bool,
        /// `sharing.max_owners`.
        max_owners: usize,
    },
    /// DELETE /v1/vms/{id}/members/{user}.
    Unshare {
        /// The VM.
        vm: VmFacts,
        /// The target.
        target: TargetFacts,
    },
    /// GET or DELETE /v1/drives/{id}, or naming a drive in a VM operation.
    Drive(DriveFacts),
}

/// What object a hidden answer pretends is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    /// A VM.
    Vm,
    /// A drive.
    Drive,
    /// A project.
    Project,
    /// A user (share target).
    User,
}

/// Why an action was refused; each becomes one stable API code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// 403 `unregistered`.
    Unregistered,
    /// 404: the object does not exist for this caller.
    Hidden(Hidden),
    /// 403 `admin_required`.
    AdminRequired,
    /// 403 `owner_required`.
    OwnerRequired,
    /// 403 `role_required`: the caller sees the VM (admin) but holds no role on it.
    RoleRequired,
    /// 403 `not_project_member` (admins, who see every project).
    NotProjectMemberCaller,
    /// 403 `member_required`: a member share from someone outside the project.
    MemberRequired,
    /// 409 `team_mismatch`.
    TeamMismatch,
    /// 409 `confirmation_required`.
    ConfirmationRequired,
    /// 409 `max_owners_reached`.
    MaxOwnersReached,
    /// 409 `not_project_member` (the target).
    NotProjectMember,
    /// 409 `last_owner`.
    LastOwner,
}

impl Denial {
    /// The stable API code (also written in audit outcomes as `denied:<code>`).
    pub fn code(self) -> &'static str {
        match self {
            Denial::Unregistered => "unregistered",
            Denial::Hidden(Hidden::Vm) => "vm_not_found",
            Denial::Hidden(Hidden::Drive) => "drive_not_found",
            Denial::Hidden(Hidden::Project) => "project_not_found",
            Denial::Hidden(Hidden::User) => "user_not_found",
            Denial::AdminRequired => "admin_required",
            Denial::OwnerRequired => "owner_required",
            Denial::RoleRequired => "role_required",
            Denial::NotProjectMemberCaller => "not_project_member",
            Denial::MemberRequired => "member_required",
            Denial::TeamMismatch => "team_mismatch",
            Denial::ConfirmationRequired => "confirmation_required",
            Denial::MaxOwnersReached => "max_owners_reached",
            Denial::NotProjectMember => "not_project_member",
            Denial::LastOwner => "last_owner",
        }
    }
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused, with the reason.
    Deny(Denial),
}

use Decision::{Allow, Deny};

/// Decides one action. Pure.
pub fn decide(p: &Principal, action: &Action) -> Decision {
    if matches!(action, Action::Health) {
        return Allow;
    }
    if !p.registered() {
        return Deny(Denial::Unregistered);
    }
    match action {
        Action::Health | Action::Registered => Allow,
        Action::Admin(_) => {
            if p.admin {
                Allow
            } else {
                Deny(Denial::AdminRequired)
            }
        }
        Action::CreateIn { project_member } => project_gate(p, *project_member),
        Action::Unlock {
            half,
            project_member,
        } => match half {
            ShareHalf::Admin if p.admin => Allow,
            ShareHalf::Admin => Deny(if *project_member {
                Denial::AdminRequired
            } else {
                Denial::Hidden(Hidden::Project)
            }),
            ShareHalf::Member => match project_gate(p, *project_member) {
                Allow => Allow,
                Deny(Denial::NotProjectMemberCaller) => Deny(Denial::MemberRequired),
                d => d,
            },
        },
        Action::Lock { project_member } => {
            if p.admin || *project_member {
                Allow
            } else {
                Deny(Denial::Hidden(Hidden::Project))
            }
        }
        Action::Vm(a, vm) => vm_action(p, *a, vm),
        Action::Share {
            vm,
            target,
            role,
            confirm,
            max_owners,
        } => share(p, vm, target, *role, *confirm, *max_owners),
        Action::Unshare { vm, target } => unshare(p, vm, target),
        Action::Drive(d) => {
            if d.project_member && d.owner {
                Allow
            } else {
                Deny(Denial::Hidden(Hidden::Drive))
            }
        }
    }
}

/// Membership gates project-scoped creation; admins see every project, others only theirs.
fn project_gate(p: &Principal, member: bool) -> Decision {
    match (member, p.admin) {
        (true, _) => Allow,
        (false, true) => Deny(Denial::NotProjectMemberCaller),
        (false, false) => Deny(Denial::Hidden(Hidden::Project)),
    }
}

/// Visibility first: a VM is visible to project members with a role; an admin in the project
/// without a role knows it exists (host inventory) and gets 403 rather than 404.
fn visible(p: &Principal, vm: &VmFacts) -> Result<Role, Denial> {
    if !vm.project_member {
        return Err(Denial::Hidden(Hidden::Vm));
    }
    match vm.role {
        Some(r) => Ok(r),
        None if p.admin => Err(Denial::RoleRequired),
        None => Err(Denial::Hidden(Hidden::Vm)),
    }
}

fn vm_action(p: &Principal, a: VmAction, vm: &VmFacts) -> Decision {
    let role = match visible(p, vm) {
        Ok(r) => r,
        Err(d) => return Deny(d),
    };
    use VmAction::*;
    match (a, role) {
        (View | Members | Start | Stop | Keepalive, _) => Allow,
        (Update | Delete | Attach | Detach | SeeDrives, Role::Owner) => Allow,
        // To a user, every drive operation answers as if the drive did not exist.
        (Attach | Detach, Role::User) => Deny(Denial::Hidden(Hidden::Drive)),
        (Update | Delete | SeeDrives, Role::User) => Deny(Denial::OwnerRequired),
    }
}

fn share(
    p: &Principal,
    vm: &VmFacts,
    t: &TargetFacts,
    role: Role,
    confirm: bool,
    max_owners: usize,
) -> Decision {
    let caller_role = match visible(p, vm) {
        Ok(r) => r,
        Err(d) => return Deny(d),
    };
    // Rule 2: only owners grant owner; changing an owner's role is an owner's act too.
    if (role == Role::Owner || t.role == Some(Role::Owner)) && caller_role != Role::Owner {
        return Deny(Denial::OwnerRequired);
    }
    // Rule 1: sharer and target both in the VM's team.
    if p.team.as_ref() != Some(&vm.team) {
        return Deny(Denial::TeamMismatch);
    }
    // An unregistered name gets the answer of a user of another team (both are true: the
    // name is not in the team), so sharing never reveals who is registered elsewhere.
    if t.team.as_ref() != Some(&vm.team) {
        return Deny(Denial::TeamMismatch);
    }
    // Rule 4.
    if !t.project_member {
        return Deny(Denial::NotProjectMember);
    }
    match role {
        Role::Owner => {
            // Rule 2: co-ownership hands over the drives, so it must be confirmed.
            if !confirm {
                return Deny(Denial::ConfirmationRequired);
            }
            // Rule 3 (an existing owner re-granted is a no-op, not a new owner).
            if t.role != Some(Role::Owner) && vm.owners >= max_owners {
                return Deny(Denial::MaxOwnersReached);
            }
            Allow
        }
        Role::User => {
            if t.role == Some(Role::Owner) && vm.owners <= 1 {
                return Deny(Denial::LastOwner);
            }
            Allow
        }
    }
}

fn unshare(p: &Principal, vm: &VmFacts, t: &TargetFacts) -> Decision {
    let caller_role = match visible(p, vm) {
        Ok(r) => r,
        Err(d) => return Deny(d),
    };
    // Rule 6: owners remove anyone but the last owner; a user may remove itself.
    match caller_role {
        Role::Owner => {
            if t.role == Some(Role::Owner) && vm.owners <= 1 {
                Deny(Denial::LastOwner)
            } else {
                Allow
            }
        }
        Role::User if t.is_self => Allow,
        Role::User => Deny(Denial::OwnerRequired),
    }
}

#[cfg(test)]
mod tests {
    //! The rules as a table. Each row: action, relation, expected outcome. Relations are the
    //! seven of the issue: admin, owner, user, same-team non-member (of the VM: in the project,
    //! no role), other-team user, project non-member, unregistered.

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Rel {
        Admin,
        Owner,
        User,
        SameTeamNoRole,
        OtherTeam,
        NonMember,
        Unregistered,
    }
    const RELS: [Rel; 7] = [
        Rel::Admin,
        Rel::Owner,
        Rel::User,
        Rel::SameTeamNoRole,
        Rel::OtherTeam,
        Rel::NonMember,
        Rel::Unregistered,
    ];

    fn n(s: &str) -> UserName {
        UserName::parse(s).unwrap()
    }
    fn t(s: &str) -> TeamName {
        TeamName::parse(s).unwrap()
    }

    /// The principal and its facts on VM "v" (team "lab", project "p", 1 owner).
    /// The admin is a project member with no role on the VM; the other-team user is a project
    /// member (projects may span teams) with no role.
    fn setup(r: Rel) -> (Principal, VmFacts, DriveFacts) {
        let (team, admin, member, role) = match r {
            Rel::Admin => (Some("ops"), true, true, None),
            Rel::Owner => (Some("lab"), false, true, Some(Role::Owner)),
            Rel::User => (Some("lab"), false, true, Some(Role::User)),
            Rel::SameTeamNoRole => (Some("lab"), false, true, None),
            Rel::OtherTeam => (Some("far"), false, true, None),
            Rel::NonMember => (Some("lab"), false, false, Some(Role::Owner)),
            Rel::Unregistered => (None, false, false, None),
        };
        let p = Principal {
            name: n("caller"),
            team: team.map(t),
            admin,
        };
        let vm = VmFacts {
            project_member: member,
            role,
            team: t("lab"),
            owners: 1,
        };
        let drive = DriveFacts {
            project_member: member,
            owner: role == Some(Role::Owner),
        };
        (p, vm, drive)
    }

    /// Short codes for outcomes so each row fits on one line.
    fn code(d: Decision) -> &'static str {
        match d {
            Allow => "ok",
            Deny(Denial::Unregistered) => "403u",
            Deny(Denial::Hidden(_)) => "404",
            Deny(Denial::AdminRequired) => "403a",
            Deny(Denial::OwnerRequired) => "403o",
            Deny(Denial::RoleRequired) => "403r",
            Deny(Denial::NotProjectMemberCaller) => "403p",
            Deny(Denial::MemberRequired) => "403m",
            Deny(Denial::TeamMismatch) => "409team",
            Deny(Denial::ConfirmationRequired) => "409confirm",
            Deny(Denial::MaxOwnersReached) => "409max",
            Deny(Denial::NotProjectMember) => "409member",
            Deny(Denial::LastOwner) => "409last",
        }
    }

    type Build = fn(&VmFacts, &DriveFacts, &Principal) -> Action;

    fn same_team_target() -> TargetFacts {
        TargetFacts {
            team: Some(t("lab")),
            project_member: true,
            role: None,
            is_self: false,
        }
    }

    #[test]
    fn every_action_against_every_relation() {
        //                                  admin   owner  user    sameteam other  nonmember unreg
        let table: Vec<(&str, Build, [&str; 7])> = vec![
            (
                "health",
                |_, _, _| Action::Health,
                ["ok", "ok", "ok", "ok", "ok", "ok", "ok"],
            ),
            (
                "me/list/events",
                |_, _, _| Action::Registered,
                ["ok", "ok", "ok", "ok", "ok", "ok", "403u"],
            ),
            (
                "users",
                |_, _, _| Action::Admin(AdminAction::ManageUsers),
                ["ok", "403a", "403a", "403a", "403a", "403a", "403u"],
            ),
            (
                "create project",
                |_, _, _| Action::Admin(AdminAction::CreateProject),
                ["ok", "403a", "403a", "403a", "403a", "403a", "403u"],
            ),
            (
                "project members",
                |_, _, _| Action::Admin(AdminAction::ManageMembers),
                ["ok", "403a", "403a", "403a", "403a", "403a", "403u"],
            ),
            (
                "host inventory",
                |_, _, _| Action::Admin(AdminAction::HostInventory),
                ["ok", "403a", "403a", "403a", "403a", "403a", "403u"],
            ),
            (
                "host stop",
                |_, _, _| Action::Admin(AdminAction::HostStop),
                ["ok", "403a", "403a", "403a", "403a", "403a", "403u"],
            ),
            (
                "metrics",
                |_, _, _| Action::Admin(AdminAction::Metrics),
                ["ok", "403a", "403a", "403a", "403a", "403a", "403u"],
            ),
            (
                "create vm/drive",
                |v, _, _| Action::CreateIn {
                    project_member: v.project_member,
                },
                ["ok", "ok", "ok", "ok", "ok", "404", "403u"],
            ),
            (
                "unlock admin half",
                |v, _, _| Action::Unlock {
                    half: ShareHalf::Admin,
                    project_member: v.project_member,
                },
                ["ok", "403a", "403a", "403a", "403a", "404", "403u"],
            ),
            (
                "unlock member half",
                |v, _, _| Action::Unlock {
                    half: ShareHalf::Member,
                    project_member: v.project_member,
                },
                ["ok", "ok", "ok", "ok", "ok", "404", "403u"],
            ),
            (
                "lock",
                |v, _, _| Action::Lock {
                    project_member: v.project_member,
                },
                ["ok", "ok", "ok", "ok", "ok", "404", "403u"],
            ),
            (
                "view vm",
                |v, _, _| Action::Vm(VmAction::View, v.clone()),
                ["403r", "ok", "ok", "404", "404", "404", "403u"],
            ),
            (
                "vm members",
                |v, _, _| Action::Vm(VmAction::Members, v.clone()),
                ["403r", "ok", "ok", "404", "404", "404", "403u"],
            ),
            (
                "start",
                |v, _, _| Action::Vm(VmAction::Start, v.clone()),
                ["403r", "ok", "ok", "404", "404", "404", "403u"],
            ),
            (
                "stop",
                |v, _, _| Action::Vm(VmAction::Stop, v.clone()),
                ["403r", "ok", "ok", "404", "404", "404", "403u"],
            ),
            (
                "keepalive",
                |v, _, _| Action::Vm(VmAction::Keepalive, v.clone()),
                ["403r", "ok", "ok", "404", "404", "404", "403u"],
            ),
            (
                "patch vm",
                |v, _, _| Action::Vm(VmAction::Update, v.clone()),
                ["403r", "ok", "403o", "404", "404", "404", "403u"],
            ),
            (
                "delete vm",
                |v, _, _| Action::Vm(VmAction::Delete, v.clone()),
                ["403r", "ok", "403o", "404", "404", "404", "403u"],
            ),
            (
                "attach drive",
                |v, _, _| Action::Vm(VmAction::Attach, v.clone()),
                ["403r", "ok", "404", "404", "404", "404", "403u"],
            ),
            (
                "detach drive",
                |v, _, _| Action::Vm(VmAction::Detach, v.clone()),
                ["403r", "ok", "404", "404", "404", "404", "403u"],
            ),
            (
                "see vm drives",
                |v, _, _| Action::Vm(VmAction::SeeDrives, v.clone()),
                ["403r", "ok", "403o", "404", "404", "404", "403u"],
            ),
            (
                "view/delete drive",
                |_, d, _| Action::Drive(*d),
                ["404", "ok", "404", "404", "404", "404", "403u"],
            ),
            (
                "share user",
                |v, _, _| Action::Share {
                    vm: v.clone(),
                    target: same_team_target(),
                    role: Role::User,
                    confirm: false,
                    max_owners: 2,
                },
                ["403r", "ok", "ok", "404", "404", "404", "403u"],
            ),
            (
                "share owner confirmed",
                |v, _, _| Action::Share {
                    vm: v.clone(),
                    target: same_team_target(),
                    role: Role::Owner,
                    confirm: true,
                    max_owners: 2,
                },
                ["403r", "ok", "403o", "404", "404", "404", "403u"],
            ),
            (
                "unshare other",
                |v, _, _| Action::Unshare {
                    vm: v.clone(),
                    target: TargetFacts {
                        role: Some(Role::User),
                        ..same_team_target()
                    },
                },
                ["403r", "ok", "403o", "404", "404", "404", "403u"],
            ),
            (
                "unshare self",
                |v, _, _| Action::Unshare {
                    vm: v.clone(),
                    target: TargetFacts {
                        role: v.role,
                        is_self: true,
                        ..same_team_target()
                    },
                },
                ["403r", "409last", "ok", "404", "404", "404", "403u"],
            ),
        ];
        let mut failures = vec![];
        for (name, build, expected) in &table {
            for (i, rel) in RELS.iter().enumerate() {
                let (p, vm, drive) = setup(*rel);
                let got = code(decide(&p, &build(&vm, &drive, &p)));
                if got != expected[i] {
                    failures.push(format!(
                        "{name} / {rel:?}: expected {}, got {got}",
                        expected[i]
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The sharing rules of DESIGN 1, one row each: caller role, target facts, request, outcome.
    #[test]
    fn sharing_rules_table() {
        let owner = Principal {
            name: n("olivia"),
            team: Some(t("lab")),
            admin: false,
        };
        let user = Principal {
            name: n("ulrich"),
            ..owner.clone()
        };
        let outsider_sharer = Principal {
            name: n("oscar"),
            team: Some(t("far")),
            admin: false,
        };
        let vm = |role, owners| VmFacts {
            project_member: true,
            role: Some(role),
            team: t("lab"),
            owners,
        };
        let tgt = |team: Option<&str>, member, role| TargetFacts {
            team: team.map(t),
            project_member: member,
            role,
            is_self: false,
        };
        #[rustfmt::skip]
        let rows: Vec<(&str, &Principal, VmFacts, TargetFacts, Role, bool, &str)> = vec![
            ("1 user shares user in team",       &user,  vm(Role::User, 1),  tgt(Some("lab"), true, None), Role::User, false, "ok"),
            ("1 user shares user across teams",  &user,  vm(Role::User, 1),  tgt(Some("far"), true, None), Role::User, false, "409team"),
            ("1 owner shares across teams",      &owner, vm(Role::Owner, 1), tgt(Some("far"), true, None), Role::User, false, "409team"),
            ("1 sharer outside the VM's team",   &outsider_sharer, vm(Role::Owner, 1), tgt(Some("lab"), true, None), Role::User, false, "409team"),
            ("2 user cannot grant owner",        &user,  vm(Role::User, 1),  tgt(Some("lab"), true, None), Role::Owner, true, "403o"),
            ("2 owner needs confirmation",       &owner, vm(Role::Owner, 1), tgt(Some("lab"), true, None), Role::Owner, false, "409confirm"),
            ("2 owner grants confirmed",         &owner, vm(Role::Owner, 1), tgt(Some("lab"), true, None), Role::Owner, true, "ok"),
            ("3 third owner refused",            &owner, vm(Role::Owner, 2), tgt(Some("lab"), true, None), Role::Owner, true, "409max"),
            ("3 re-grant to an owner is no-op",  &owner, vm(Role::Owner, 2), tgt(Some("lab"), true, Some(Role::Owner)), Role::Owner, true, "ok"),
            ("3 user upgraded at max refused",   &owner, vm(Role::Owner, 2), tgt(Some("lab"), true, Some(Role::User)), Role::Owner, true, "409max"),
            ("4 target not in project",          &owner, vm(Role::Owner, 1), tgt(Some("lab"), false, None), Role::User, false, "409member"),
            ("1 unregistered target: as another team's", &owner, vm(Role::Owner, 1), tgt(None, false, None), Role::User, false, "409team"),
            ("6 demote the last owner",          &owner, vm(Role::Owner, 1), tgt(Some("lab"), true, Some(Role::Owner)), Role::User, false, "409last"),
            ("6 demote a co-owner",              &owner, vm(Role::Owner, 2), tgt(Some("lab"), true, Some(Role::Owner)), Role::User, false, "ok"),
            ("6 user cannot demote an owner",    &user,  vm(Role::User, 2),  tgt(Some("lab"), true, Some(Role::Owner)), Role::User, false, "403o"),
        ];
        for (name, p, vm, target, role, confirm, exp) in rows {
            let got = code(decide(
                p,
                &Action::Share {
                    vm,
                    target,
                    role,
                    confirm,
                    max_owners: 2,
                },
            ));
            assert_eq!(got, exp, "{name}");
        }
    }

    #[test]
    fn unshare_rules_table() {
        let owner = Principal {
            name: n("olivia"),
            team: Some(t("lab")),
            admin: false,
        };
        let vm = |role, owners| VmFacts {
            project_member: true,
            role: Some(role),
            team: t("lab"),
            owners,
        };
        let tgt = |role, is_self| TargetFacts {
            team: Some(t("lab")),
            project_member: true,
            role,
            is_self,
        };
        #[rustfmt::skip]
        let rows = vec![
            ("owner removes a user",          vm(Role::Owner, 1), tgt(Some(Role::User), false), "ok"),
            ("owner removes co-owner",        vm(Role::Owner, 2), tgt(Some(Role::Owner), false), "ok"),
            ("owner removes itself, co-owned",vm(Role::Owner, 2), tgt(Some(Role::Owner), true), "ok"),
            ("last owner cannot go",          vm(Role::Owner, 1), tgt(Some(Role::Owner), true), "409last"),
            ("user removes itself",           vm(Role::User, 1),  tgt(Some(Role::User), true), "ok"),
            ("user removes another user",     vm(Role::User, 1),  tgt(Some(Role::User), false), "403o"),
            ("user removes an owner",         vm(Role::User, 1),  tgt(Some(Role::Owner), false), "403o"),
        ];
        for (name, vm, target, exp) in rows {
            assert_eq!(
                code(decide(&owner, &Action::Unshare { vm, target })),
                exp,
                "{name}"
            );
        }
    }
}
