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
    /// GET log: the serial console may show what is on the drives.
    Console,
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
    /// Enroll, un-enroll and fence fleet hosts.
    ManageFleet,
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
        (Update | Delete | Attach | Detach | SeeDrives | Console, Role::Owner) => Allow,
        // To a user, every drive operation answers as if the drive did not exist.
        (Attach | Detach, Role::User) => Deny(Denial::Hidden(Hidden::Drive)),
        (Update | Delete | SeeDrives | Console, Role::User) => Deny(Denial::OwnerRequired),
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
mod tests;
