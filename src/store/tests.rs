//! Store tests on a real SQLite file: migrations, idempotent mutations, one audit row per
//! committed change, rule 7 of the sharing rules, attachment exclusivity, audit filters.

use super::*;
use crate::model::IdlePolicy;

fn n(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

fn ctx(action: &str) -> AuditCtx<'_> {
    AuditCtx {
        actor: "root",
        action,
        target: "t".into(),
        vm: None,
        detail: String::new(),
    }
}

fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    for (u, t) in [("alice", "lab"), ("bob", "lab")] {
        s.put_user(
            &ctx("user.put"),
            &User {
                name: n(u),
                team: TeamName::parse(t).unwrap(),
                admin: false,
            },
        )
        .unwrap();
    }
    let p = ProjectName::parse("p").unwrap();
    s.create_project(&ctx("project.create"), &p, &[n("alice"), n("bob")], b"v")
        .unwrap();
    (dir, s)
}

fn vm(id: VmId, drives: Vec<DriveId>) -> Vm {
    Vm {
        id,
        name: VmName::parse("web").unwrap(),
        project: ProjectName::parse("p").unwrap(),
        team: TeamName::parse("lab").unwrap(),
        vcpus: 1,
        memory_mib: 32,
        owners: vec![n("alice")],
        users: vec![],
        drives,
        idle: IdlePolicy::default(),
        state: VmState::Stopped,
        state_reason: "created".into(),
    }
}

fn drive(id: DriveId, owner: &str) -> Drive {
    Drive {
        id,
        name: DriveName::parse(&format!("d{}", &id.to_string()[..4])).unwrap(),
        project: ProjectName::parse("p").unwrap(),
        size_mib: 16,
        owners: vec![n(owner)],
        attached_to: None,
    }
}

#[test]
fn reopen_keeps_schema_and_data() {
    let (dir, s) = setup();
    drop(s);
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    assert_eq!(s.users().unwrap().len(), 2);
}

#[test]
fn put_user_reports_what_changed() {
    let (_d, s) = setup();
    let mut u = User {
        name: n("carol"),
        team: TeamName::parse("lab").unwrap(),
        admin: false,
    };
    assert_eq!(s.put_user(&ctx("user.put"), &u).unwrap(), Change::Created);
    assert_eq!(s.put_user(&ctx("user.put"), &u).unwrap(), Change::Unchanged);
    u.admin = true;
    assert_eq!(s.put_user(&ctx("user.put"), &u).unwrap(), Change::Updated);
    assert_eq!(
        s.delete_user(&ctx("user.delete"), &u.name).unwrap(),
        Change::Removed
    );
    assert_eq!(
        s.delete_user(&ctx("user.delete"), &u.name).unwrap(),
        Change::Unchanged
    );
}

#[test]
fn every_mutation_writes_one_audit_row() {
    let (_d, s) = setup();
    let before = s
        .audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .len();
    let p = ProjectName::parse("p").unwrap();
    s.set_member(&ctx("project.member_remove"), &p, &n("bob"), false)
        .unwrap();
    let rows = s
        .audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), before + 1);
    assert_eq!(rows[0].action, "project.member_remove");
    assert_eq!(rows[0].outcome, "ok");
}

#[test]
fn failed_mutation_leaves_no_audit_row() {
    let (_d, s) = setup();
    let before = s
        .audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .len();
    let p = ProjectName::parse("p").unwrap();
    let e = s
        .create_project(&ctx("project.create"), &p, &[], b"v")
        .unwrap_err();
    assert!(matches!(e, StoreError::Exists(_)), "{e:?}");
    let after = s
        .audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .len();
    assert_eq!(before, after);
}

#[test]
fn rule7_owners_follow_drives_and_detach_keeps_it_for_the_detacher() {
    let (_d, s) = setup();
    let (d1, vid) = (DriveId::new_random(), VmId::new_random());
    s.create_drive(&ctx("drive.create"), &drive(d1, "alice"), b"w")
        .unwrap();
    s.create_vm(&ctx("vm.create"), &vm(vid, vec![d1])).unwrap();
    assert_eq!(s.vm(vid).unwrap().unwrap().drives, vec![d1]);
    s.set_role(&ctx("vm.share"), vid, &n("bob"), Some(Role::Owner))
        .unwrap();
    assert_eq!(
        s.drive(d1).unwrap().unwrap().0.owners,
        vec![n("alice"), n("bob")]
    );
    s.set_role(&ctx("vm.share"), vid, &n("bob"), Some(Role::User))
        .unwrap();
    assert_eq!(s.drive(d1).unwrap().unwrap().0.owners, vec![n("alice")]);
    s.set_role(&ctx("vm.share"), vid, &n("bob"), Some(Role::Owner))
        .unwrap();
    s.detach(&ctx("drive.detach"), d1, &n("bob")).unwrap();
    let (d, _) = s.drive(d1).unwrap().unwrap();
    assert_eq!((d.owners, d.attached_to), (vec![n("bob")], None));
    assert!(s.vm(vid).unwrap().unwrap().drives.is_empty());
}

#[test]
fn a_drive_attaches_to_one_vm_only() {
    let (_d, s) = setup();
    let d1 = DriveId::new_random();
    s.create_drive(&ctx("drive.create"), &drive(d1, "alice"), b"w")
        .unwrap();
    let (v1, v2) = (VmId::new_random(), VmId::new_random());
    s.create_vm(&ctx("vm.create"), &vm(v1, vec![d1])).unwrap();
    let mut second = vm(v2, vec![]);
    second.name = VmName::parse("db").unwrap();
    s.create_vm(&ctx("vm.create"), &second).unwrap();
    assert!(matches!(
        s.attach(&ctx("drive.attach"), v2, d1),
        Err(StoreError::Exists(_))
    ));
}

#[test]
fn audit_filters_by_vm_actor_and_allowed_set() {
    let (_d, s) = setup();
    let v = VmId::new_random();
    s.create_vm(&ctx("vm.create"), &vm(v, vec![])).unwrap();
    let mut c = ctx("vm.start");
    c.vm = Some(v);
    s.audit_outcome(&c, "failed").unwrap();
    let f = AuditFilter {
        vm: Some(v),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(s.audit(&f).unwrap().len(), 1);
    let f = AuditFilter {
        vms_allowed: Some(vec![]),
        limit: 10,
        ..Default::default()
    };
    assert!(s.audit(&f).unwrap().is_empty());
    let f = AuditFilter {
        vms_allowed: Some(vec![v]),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(s.audit(&f).unwrap().len(), 1);
    let f = AuditFilter {
        actor: Some("nobody".into()),
        limit: 10,
        ..Default::default()
    };
    assert!(s.audit(&f).unwrap().is_empty());
}
