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
            "fleet management",
            |_, _, _| Action::Admin(AdminAction::ManageFleet),
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
            "serial log",
            |v, _, _| Action::Vm(VmAction::Console, v.clone()),
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
