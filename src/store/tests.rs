//! Store tests on both engines, a real SQLite file and a real PostgreSQL database (a
//! throwaway cluster, `testpg`): migrations, idempotent mutations, one audit row per
//! committed change, rule 7 of the sharing rules, attachment exclusivity, the invariants the
//! schema holds by itself, member removal, staged re-keys and image intents.

use super::*;
use crate::model::{
    Drive, DriveId, DriveName, IdlePolicy, ProjectName, Role, StorageId, TeamName, User, UserName,
    Vm, VmId, VmName, VmState,
};

fn n(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

fn ctx(action: &str) -> AuditCtx<'_> {
    AuditCtx {
        actor: "alice",
        action,
        target: "t".into(),
        vm: None,
        detail: String::new(),
    }
}

fn p() -> ProjectName {
    ProjectName::parse("p").unwrap()
}

fn user(s: &Store, name: &str, team: &str) {
    s.put_user(
        &ctx("user.put"),
        &User {
            name: n(name),
            team: TeamName::parse(team).unwrap(),
            admin: false,
        },
    )
    .unwrap();
}

/// A populated SQLite store.
fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, populate(s))
}

/// The same population on each engine: SQLite, then PostgreSQL.
fn setups() -> Vec<(Option<tempfile::TempDir>, Store)> {
    let (dir, s) = setup();
    let pg = Store::connect(&super::testpg::fresh_database()).unwrap();
    vec![(Some(dir), s), (None, populate(pg))]
}

/// A statement under the store's own checks (the schema must refuse it by itself).
fn raw(s: &Store, sql: &str) -> Result<u64, StoreError> {
    s.transaction(|db| Ok::<_, StoreError>((db.exec(sql, &[])?, true)))
}

fn populate(s: Store) -> Store {
    for (u, t) in [
        ("alice", "lab"),
        ("bob", "lab"),
        ("carol", "lab"),
        ("dave", "far"),
    ] {
        user(&s, u, t);
    }
    s.create_project(
        &ctx("project.create"),
        &p(),
        &[n("alice"), n("bob"), n("dave")],
        b"v",
    )
    .unwrap();
    s.project_delivered(&ctx("project.delivered"), &p())
        .unwrap();
    s
}

fn vm(id: VmId, drives: Vec<DriveId>) -> Vm {
    Vm {
        id,
        name: VmName::parse("web").unwrap(),
        project: p(),
        team: TeamName::parse("lab").unwrap(),
        vcpus: 1,
        memory_mib: 32,
        owners: vec![n("alice")],
        users: vec![],
        drives,
        idle: IdlePolicy::default(),
        state: VmState::Stopped,
        state_reason: "created".into(),
        host: None,
    }
}

fn drive(id: DriveId, owner: &str) -> Drive {
    Drive {
        id,
        storage: StorageId::new_random(),
        name: DriveName::parse(&format!("d{}", &id.to_string()[..4])).unwrap(),
        project: p(),
        size_mib: 16,
        owners: vec![n(owner)],
        attached_to: None,
    }
}

fn audit_len(s: &Store) -> usize {
    s.audit(&AuditFilter {
        limit: 1000,
        ..Default::default()
    })
    .unwrap()
    .len()
}

#[test]
fn reopen_keeps_schema_and_data() {
    let (dir, s) = setup();
    drop(s);
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    assert_eq!(s.schema_version().unwrap(), Store::latest_schema());
    assert_eq!(s.users().unwrap().len(), 4);
}

/// A database of the first release, with a role that broke the team rule and a drive
/// named by its id, migrates: good rows stay, the bad role goes, the image keeps its name.
#[test]
fn first_release_database_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(schema::SQLITE[0]).unwrap();
        c.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO users VALUES ('alice', 'lab', 0), ('dave', 'far', 0);
             INSERT INTO projects VALUES ('p', x'00', 'root', 0);
             INSERT INTO project_members VALUES ('p', 'alice'), ('p', 'dave');
             INSERT INTO vms VALUES ('11111111-1111-4111-8111-111111111111', 'web', 'p', 'lab',
                 1, 32, '{}', 'stopped', 'created', 0);
             INSERT INTO vm_roles VALUES ('11111111-1111-4111-8111-111111111111', 'alice', 'owner', 1),
                 ('11111111-1111-4111-8111-111111111111', 'dave', 'user', 2);
             INSERT INTO drives VALUES ('22222222-2222-4222-8222-222222222222', 'data', 'p', 16, x'01',
                 '11111111-1111-4111-8111-111111111111', 1);
             INSERT INTO drive_owners VALUES ('22222222-2222-4222-8222-222222222222', 'alice');",
        )
        .unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), Store::latest_schema());
    let v = s.vms().unwrap().remove(0);
    assert_eq!((v.owners, v.users), (vec![n("alice")], vec![]));
    let d = s.drives().unwrap().remove(0);
    assert_eq!(d.storage.to_string(), d.id.to_string());
    assert_eq!(d.owners, vec![n("alice")]);
    assert!(s.project(&p()).unwrap().unwrap().delivered);
}

#[test]
fn put_user_reports_what_changed() {
    for (_d, s) in setups() {
        let mut u = User {
            name: n("erin"),
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
}

#[test]
fn every_mutation_writes_one_audit_row() {
    for (_d, s) in setups() {
        let before = audit_len(&s);
        s.add_member(&ctx("project.member_add"), &p(), &n("carol"))
            .unwrap();
        let rows = s
            .audit(&AuditFilter {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rows.len(), before + 1);
        assert_eq!(rows[0].action, "project.member_add");
        assert_eq!(rows[0].outcome, "ok");
    }
}

#[test]
fn failed_mutation_leaves_no_audit_row() {
    for (_d, s) in setups() {
        let before = audit_len(&s);
        let e = s
            .create_project(&ctx("project.create"), &p(), &[], b"v")
            .unwrap_err();
        assert!(matches!(e, StoreError::Exists(_)), "{e:?}");
        assert_eq!(before, audit_len(&s));
    }
}

#[test]
fn rule7_owners_follow_drives_and_detach_keeps_it_for_the_detacher() {
    for (_d, s) in setups() {
        let (d1, vid) = (DriveId::new_random(), VmId::new_random());
        s.create_drive(&ctx("drive.create"), &drive(d1, "alice"), b"w", b"v", None)
            .unwrap();
        s.create_vm(&ctx("vm.create"), &vm(vid, vec![d1])).unwrap();
        assert_eq!(s.vm(vid).unwrap().unwrap().drives, vec![d1]);
        s.set_role(&ctx("vm.share"), vid, &n("bob"), Some(Role::Owner))
            .unwrap();
        let owners = |s: &Store| s.drive(d1).unwrap().unwrap().drive.owners;
        assert_eq!(owners(&s), vec![n("alice"), n("bob")]);
        s.set_role(&ctx("vm.share"), vid, &n("bob"), Some(Role::User))
            .unwrap();
        assert_eq!(owners(&s), vec![n("alice")]);
        s.set_role(&ctx("vm.share"), vid, &n("bob"), Some(Role::Owner))
            .unwrap();
        assert_eq!(
            s.detach(&ctx("drive.detach"), d1, &n("bob")).unwrap(),
            Change::Removed
        );
        let d = s.drive(d1).unwrap().unwrap().drive;
        assert_eq!((d.owners, d.attached_to), (vec![n("bob")], None));
        assert!(s.vm(vid).unwrap().unwrap().drives.is_empty());
        assert_eq!(
            s.detach(&ctx("drive.detach"), d1, &n("bob")).unwrap(),
            Change::Unchanged
        );
    }
}

#[test]
fn a_drive_attaches_to_one_vm_only() {
    for (_d, s) in setups() {
        let d1 = DriveId::new_random();
        s.create_drive(&ctx("drive.create"), &drive(d1, "alice"), b"w", b"v", None)
            .unwrap();
        let (v1, v2) = (VmId::new_random(), VmId::new_random());
        s.create_vm(&ctx("vm.create"), &vm(v1, vec![d1])).unwrap();
        let mut second = vm(v2, vec![]);
        second.name = VmName::parse("db").unwrap();
        s.create_vm(&ctx("vm.create"), &second).unwrap();
        assert!(matches!(
            s.attach(&ctx("drive.attach"), v2, d1),
            Err(StoreError::Attached(_))
        ));
    }
}

/// The schema itself refuses a role for a user of another team or outside the project, the
/// deletion of a user holding a role and a team change that would carry one across teams,
/// whatever the code above it checked.
#[test]
fn schema_holds_the_role_invariants() {
    for (_d, s) in setups() {
        let v = VmId::new_random();
        s.create_vm(&ctx("vm.create"), &vm(v, vec![])).unwrap();
        assert!(matches!(
            s.set_role(&ctx("vm.share"), v, &n("dave"), Some(Role::User)),
            Err(StoreError::Changed(_))
        ));
        assert!(matches!(
            s.set_role(&ctx("vm.share"), v, &n("carol"), Some(Role::User)),
            Err(StoreError::Changed(_))
        ));
        s.set_role(&ctx("vm.share"), v, &n("bob"), Some(Role::User))
            .unwrap();
        assert!(matches!(
            s.delete_user(&ctx("user.delete"), &n("bob")),
            Err(StoreError::Holdings { roles: 1, .. })
        ));
        let moved = User {
            name: n("bob"),
            team: TeamName::parse("far").unwrap(),
            admin: false,
        };
        assert!(matches!(
            s.put_user(&ctx("user.put"), &moved),
            Err(StoreError::Holdings { .. })
        ));
        // Even a raw statement that skips the check is refused by the foreign keys.
        assert!(raw(&s, "UPDATE users SET team = 'far' WHERE name = 'bob'").is_err());
        assert!(raw(&s, "DELETE FROM project_members WHERE username = 'bob'").is_err());
    }
}

/// `user` is a reserved word in SQL (PostgreSQL reads it as the login); no column is called so.
#[test]
fn no_column_is_called_user() {
    let (_d, s) = setup();
    let conn = s.sqlite();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master m JOIN pragma_table_info(m.name) c
             WHERE m.type = 'table' AND c.name = 'user'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn names_are_unique_only_among_what_the_creator_sees() {
    for (_d, s) in setups() {
        let (d1, d2, d3) = (
            DriveId::new_random(),
            DriveId::new_random(),
            DriveId::new_random(),
        );
        let mut a = drive(d1, "alice");
        a.name = DriveName::parse("data").unwrap();
        s.create_drive(&ctx("drive.create"), &a, b"w", b"v", None)
            .unwrap();
        let mut b = drive(d2, "bob");
        b.name = a.name.clone();
        s.create_drive(&ctx("drive.create"), &b, b"w", b"v", None)
            .unwrap();
        let mut again = drive(d3, "alice");
        again.name = a.name.clone();
        assert!(matches!(
            s.create_drive(&ctx("drive.create"), &again, b"w", b"v", None),
            Err(StoreError::Exists(_))
        ));
        let v1 = VmId::new_random();
        s.create_vm(&ctx("vm.create"), &vm(v1, vec![])).unwrap();
        let mut bobs = vm(VmId::new_random(), vec![]);
        bobs.owners = vec![n("bob")];
        let mut bob_ctx = ctx("vm.create");
        bob_ctx.actor = "bob";
        s.create_vm(&bob_ctx, &bobs).unwrap();
        assert!(matches!(
            s.create_vm(&ctx("vm.create"), &vm(VmId::new_random(), vec![])),
            Err(StoreError::Exists(_))
        ));
    }
}

#[test]
fn removing_a_member_drops_roles_and_hands_over_ownership() {
    for (_d, s) in setups() {
        s.add_member(&ctx("project.member_add"), &p(), &n("carol"))
            .unwrap();
        let (d1, v) = (DriveId::new_random(), VmId::new_random());
        s.create_drive(&ctx("drive.create"), &drive(d1, "alice"), b"w", b"v", None)
            .unwrap();
        s.create_vm(&ctx("vm.create"), &vm(v, vec![d1])).unwrap();
        s.set_role(&ctx("vm.share"), v, &n("bob"), Some(Role::User))
            .unwrap();
        // A user's role goes with the membership.
        let r = s
            .remove_member::<StoreError>(&ctx("m"), &p(), &n("bob"), None, |_| Ok(()))
            .unwrap();
        assert_eq!(r.roles_dropped, vec![v]);
        assert!(s.vm(v).unwrap().unwrap().users.is_empty());
        // The check sees what alice owns and may refuse.
        let refused = s.remove_member::<StoreError>(&ctx("m"), &p(), &n("alice"), None, |h| {
            assert_eq!(h.owned_vms.len(), 1);
            assert_eq!(h.owned_drives.len(), 1);
            Err(Refusal::audited(
                StoreError::NotFound,
                "denied:member_owns".into(),
            ))
        });
        assert!(refused.is_err());
        assert!(s
            .project(&p())
            .unwrap()
            .unwrap()
            .members
            .contains(&n("alice")));
        let last = s
            .audit(&AuditFilter {
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(last[0].outcome, "denied:member_owns");
        let r =
            s.remove_member::<StoreError>(&ctx("m"), &p(), &n("alice"), Some(&n("carol")), |_| {
                Ok(())
            })
            .unwrap();
        assert_eq!(
            (r.vms_transferred, r.change),
            (vec![v], Some(Change::Removed))
        );
        let after = s.vm(v).unwrap().unwrap();
        assert_eq!(after.owners, vec![n("carol")]);
        assert_eq!(s.drive(d1).unwrap().unwrap().drive.owners, vec![n("carol")]);
    }
}

#[test]
fn staged_rekey_promotes_or_undoes_whole() {
    for (_d, s) in setups() {
        let d1 = DriveId::new_random();
        s.create_drive(
            &ctx("drive.create"),
            &drive(d1, "alice"),
            b"old",
            b"v",
            None,
        )
        .unwrap();
        assert!(matches!(
            s.stage_rekey(&ctx("r"), &p(), b"v2", &[]),
            Err(StoreError::Changed(_))
        ));
        s.stage_rekey(&ctx("r"), &p(), b"v2", &[(d1, b"new".to_vec())])
            .unwrap();
        // A drive created while staged must carry both wrappings.
        let d2 = DriveId::new_random();
        assert!(s
            .create_drive(
                &ctx("drive.create"),
                &drive(d2, "alice"),
                b"old",
                b"v",
                None
            )
            .is_err());
        // A drive wrapped under a key that is no longer the project's, or under another
        // re-key than the staged one, is refused.
        assert!(matches!(
            s.create_drive(
                &ctx("drive.create"),
                &drive(d2, "alice"),
                b"old",
                b"v",
                Some((b"new", b"v3")),
            ),
            Err(StoreError::Changed(_))
        ));
        assert!(matches!(
            s.create_drive(
                &ctx("drive.create"),
                &drive(d2, "alice"),
                b"old",
                b"v0",
                Some((b"new", b"v2")),
            ),
            Err(StoreError::Changed(_))
        ));
        s.create_drive(
            &ctx("drive.create"),
            &drive(d2, "alice"),
            b"old",
            b"v",
            Some((b"new", b"v2")),
        )
        .unwrap();
        assert!(!s.promote_rekey(&ctx("r"), &p(), b"other", None).unwrap());
        assert!(s.promote_rekey(&ctx("r"), &p(), b"v2", None).unwrap());
        let row = s.project(&p()).unwrap().unwrap();
        assert_eq!(
            (row.verifier.as_slice(), row.next_verifier),
            (&b"v2"[..], None)
        );
        assert_eq!(s.drive(d2).unwrap().unwrap().wrapped, b"new");
        s.stage_rekey(
            &ctx("r"),
            &p(),
            b"v3",
            &[(d1, b"x".to_vec()), (d2, b"x".to_vec())],
        )
        .unwrap();
        assert!(s.undo_rekey(&ctx("r"), &p(), b"v3", None).unwrap());
        assert!(!s.undo_rekey(&ctx("r"), &p(), b"v3", None).unwrap());
        let row = s.drive(d1).unwrap().unwrap();
        assert_eq!(
            (row.wrapped.as_slice(), row.next_wrapped),
            (&b"new"[..], None)
        );
    }
}

#[test]
fn undelivered_projects_are_undone_delivered_ones_stay() {
    for (_d, s) in setups() {
        let q = ProjectName::parse("q").unwrap();
        s.create_project(&ctx("project.create"), &q, &[n("alice")], b"v")
            .unwrap();
        assert!(!s.project(&q).unwrap().unwrap().delivered);
        assert!(!s.undo_project(&ctx("u"), &p()).unwrap(), "p was delivered");
        assert!(s.project_delivered(&ctx("d"), &q).unwrap());
        assert!(!s.undo_project(&ctx("u"), &q).unwrap());
        let r = ProjectName::parse("r").unwrap();
        s.create_project(&ctx("project.create"), &r, &[], b"v")
            .unwrap();
        assert!(s.undo_project(&ctx("u"), &r).unwrap());
        assert!(s.project(&r).unwrap().is_none());
    }
}

#[test]
fn image_intents_cover_files_without_rows() {
    for (_d, s) in setups() {
        let d = drive(DriveId::new_random(), "alice");
        s.intend_image(d.storage).unwrap();
        assert_eq!(s.storages().unwrap(), (vec![], vec![d.storage], vec![]));
        s.create_drive(&ctx("drive.create"), &d, b"w", b"v", None)
            .unwrap();
        assert_eq!(s.storages().unwrap(), (vec![d.storage], vec![], vec![]));
        let storage = s.delete_drive(&ctx("drive.delete"), d.id).unwrap();
        assert_eq!(storage, d.storage);
        assert_eq!(s.storages().unwrap(), (vec![], vec![d.storage], vec![]));
        s.drop_intent(storage).unwrap();
        assert_eq!(s.storages().unwrap(), (vec![], vec![], vec![]));
    }
}

#[test]
fn audit_filters_by_vm_actor_and_allowed_set() {
    for (_d, s) in setups() {
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
}

/// Two agents on one PostgreSQL database granting ownership at once never exceed the limit
/// their check enforces: of two transactions that read the same owners and both add one,
/// SERIALIZABLE lets one commit and refuses the other.
#[test]
fn agents_racing_on_one_database_keep_the_owner_limit() {
    let url = super::testpg::fresh_database();
    let a = std::sync::Arc::new(populate(Store::connect(&url).unwrap()));
    let b = std::sync::Arc::new(Store::connect(&url).unwrap());
    a.add_member(&ctx("project.member"), &p(), &n("carol"))
        .unwrap();
    for round in 0..10 {
        let v = VmId::new_random();
        let mut m = vm(v, vec![]);
        m.name = VmName::parse(&format!("w{round}")).unwrap();
        a.create_vm(&ctx("vm.create"), &m).unwrap();
        let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
        let grant = |s: std::sync::Arc<Store>, who: &'static str| {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.wait();
                s.set_role_checked(&ctx("vm.share"), v, &n(who), Some(Role::Owner), |f| {
                    if f.vm.owners.len() >= 2 {
                        return Err(Refusal::silent(StoreError::Changed("full".into())));
                    }
                    Ok(())
                })
                .is_ok()
            })
        };
        let (x, y) = (grant(a.clone(), "bob"), grant(b.clone(), "carol"));
        let granted = [x.join().unwrap(), y.join().unwrap()];
        let owners = b.vm(v).unwrap().unwrap().owners;
        assert_eq!(owners.len(), 2, "{owners:?}");
        assert_eq!(granted.iter().filter(|g| **g).count(), 1, "{granted:?}");
    }
}

/// A start claims the VM for its host: another agent of the same database is refused, naming
/// the holder, until the VM is stopped; with SQLite there is one agent, which holds every VM
/// whatever its host was called when the VM started.
#[test]
fn a_started_vm_is_held_by_its_host() {
    use crate::model::VmState::{Running, Starting, Stopped, Stopping};
    let url = super::testpg::fresh_database();
    let a = populate(Store::connect_as(&url, "h1").unwrap());
    let b = Store::connect_as(&url, "h2").unwrap();
    let v = VmId::new_random();
    a.create_vm(&ctx("vm.create"), &vm(v, vec![])).unwrap();
    assert_eq!(
        a.transition(v, &[Stopped], Starting, "start").unwrap(),
        Ok(Stopped)
    );
    assert_eq!(b.vm(v).unwrap().unwrap().host.as_deref(), Some("h1"));
    match b.transition(v, &[Stopped], Starting, "start") {
        Err(StoreError::Elsewhere(h)) => assert_eq!(h, "h1"),
        other => panic!("{other:?}"),
    }
    a.record_state(&ctx("vm.state"), v, Stopped, "stop", "ok")
        .unwrap();
    assert_eq!(b.vm(v).unwrap().unwrap().host, None);
    assert_eq!(
        b.transition(v, &[Stopped], Starting, "start").unwrap(),
        Ok(Stopped)
    );
    assert_eq!(b.vm(v).unwrap().unwrap().host.as_deref(), Some("h2"));

    let (dir, s) = setup();
    let s = s.on_host("old-name");
    s.create_vm(&ctx("vm.create"), &vm(v, vec![])).unwrap();
    s.transition(v, &[Stopped], Starting, "start")
        .unwrap()
        .unwrap();
    s.record_state(&ctx("vm.state"), v, Running, "start", "ok")
        .unwrap();
    drop(s);
    let s = Store::open(&dir.path().join("state.db"))
        .unwrap()
        .on_host("new-name");
    assert_eq!(
        s.transition(v, &[Running], Stopping, "stop").unwrap(),
        Ok(Running)
    );
}

fn envelope(host: &str, sealed_to: &str, kind: &str, expires_ms: i64) -> Envelope {
    Envelope {
        kind: kind.into(),
        host: host.into(),
        sealed_to: sealed_to.into(),
        from_user: String::new(),
        expires_ms,
        body: format!("sealed for {host}").into_bytes(),
    }
}

fn plan(expect: Option<i64>, drop: Discard, put: Vec<Envelope>, rekey: bool) -> SealPlan {
    SealPlan {
        project: p(),
        expect,
        drop,
        put,
        rekey,
    }
}

/// Envelopes reach only hosts enrolled with the very key they were sealed to; a plan judged
/// from an older state is refused whole; a re-key's envelopes take the old key's expiry, or
/// are not written when the project locked meanwhile; un-enrolling and a new host key drop a
/// host's envelopes at once.
#[test]
fn envelopes_reach_only_enrolled_hosts_and_follow_the_project_state() {
    let url = super::testpg::fresh_database();
    let a = populate(Store::connect_as(&url, "h1").unwrap());
    let b = Store::connect_as(&url, "h2").unwrap();
    for s in [&a, &b] {
        s.heartbeat("t", true, 30_000).unwrap();
    }
    assert!(!a.publish_host_key("age1a").unwrap());
    assert!(!b.publish_host_key("age1b").unwrap());
    // Enrollment checks the key the admin compared.
    assert!(matches!(
        a.enroll(&ctx("host.enroll"), "h2", "age1x"),
        Err(StoreError::Changed(_))
    ));
    assert!(matches!(
        a.enroll(&ctx("host.enroll"), "h9", "age1x"),
        Err(StoreError::Missing(..))
    ));
    assert!(a.enroll(&ctx("host.enroll"), "h1", "age1a").unwrap());
    assert!(!a.enroll(&ctx("host.enroll"), "h1", "age1a").unwrap());
    let far = a.clock_ms().unwrap() + 60_000;
    let gen = a.seal_state(&p()).unwrap().0.gen;
    // h2 is not enrolled, and h1's envelope sealed to another key is not h1's.
    a.record_seal(
        &ctx("project.unlock"),
        "ok",
        &plan(
            Some(gen),
            Discard::Nothing,
            vec![
                envelope("h1", "age1a", "key", far),
                envelope("h1", "age1x", "admin", far),
                envelope("h2", "age1b", "key", far),
            ],
            false,
        ),
    )
    .unwrap();
    assert_eq!(a.seal_state(&p()).unwrap().0.mine.len(), 1);
    assert!(b.seal_state(&p()).unwrap().0.mine.is_empty());
    // The same plan again: judged from a state that is gone.
    assert!(matches!(
        a.record_seal(
            &ctx("project.unlock"),
            "ok",
            &plan(Some(gen), Discard::All, vec![], false)
        ),
        Err(StoreError::Changed(_))
    ));
    assert_eq!(a.seal_state(&p()).unwrap().0.mine.len(), 1);
    // A re-key: K''s envelopes replace K's, on every enrolled host (with the expiry the
    // promoting agent sealed, its own envelope's).
    assert!(b.enroll(&ctx("host.enroll"), "h2", "age1b").unwrap());
    a.record_seal(
        &ctx("project.resplit_delivered"),
        "ok",
        &plan(
            None,
            Discard::Nothing,
            vec![
                envelope("h1", "age1a", "key", far),
                envelope("h2", "age1b", "key", far),
            ],
            true,
        ),
    )
    .unwrap();
    assert_eq!(a.seal_state(&p()).unwrap().0.mine[0].body, b"sealed for h1");
    let mine = b.seal_state(&p()).unwrap().0.mine;
    assert_eq!((mine.len(), mine[0].expires_ms), (1, far));
    // A lock drops everything; a re-key after it writes nothing.
    assert_eq!(
        a.record_seal(
            &ctx("project.lock"),
            "ok",
            &plan(None, Discard::All, vec![], false)
        )
        .unwrap(),
        2
    );
    a.record_seal(
        &ctx("project.resplit_delivered"),
        "ok",
        &plan(
            None,
            Discard::Nothing,
            vec![envelope("h1", "age1a", "key", 0)],
            true,
        ),
    )
    .unwrap();
    assert!(a.seal_state(&p()).unwrap().0.mine.is_empty());
    // Expired envelopes are not read, and are purged.
    let gen = a.seal_state(&p()).unwrap().0.gen;
    a.record_seal(
        &ctx("project.unlock"),
        "ok",
        &plan(
            Some(gen),
            Discard::Nothing,
            vec![
                envelope("h1", "age1a", "admin", 1),
                envelope("h2", "age1b", "admin", far),
            ],
            false,
        ),
    )
    .unwrap();
    assert!(a.seal_state(&p()).unwrap().0.mine.is_empty());
    assert_eq!(b.seal_state(&p()).unwrap().0.mine.len(), 1);
    a.purge_envelopes().unwrap();
    assert_eq!(a.raw("SELECT host FROM envelopes", &[]).unwrap().len(), 1);
    // Un-enrolling drops h2's envelopes at once; so does a new key of h2.
    assert_eq!(a.unenroll(&ctx("host.unenroll"), "h2").unwrap(), Some(1));
    assert_eq!(a.unenroll(&ctx("host.unenroll"), "h2").unwrap(), None);
    assert!(b.enroll(&ctx("host.enroll"), "h2", "age1b").unwrap());
    let gen = a.seal_state(&p()).unwrap().0.gen;
    a.record_seal(
        &ctx("project.unlock"),
        "ok",
        &plan(
            Some(gen),
            Discard::All,
            vec![envelope("h2", "age1b", "key", far)],
            false,
        ),
    )
    .unwrap();
    assert_eq!(b.seal_state(&p()).unwrap().0.mine.len(), 1);
    assert!(b.publish_host_key("age1c").unwrap());
    assert!(b.seal_state(&p()).unwrap().0.mine.is_empty());
    let keys = a.host_keys().unwrap();
    let h2 = keys.iter().find(|h| h.name == "h2").unwrap();
    assert_eq!((h2.pubkey.as_deref(), h2.enrolled), (Some("age1c"), false));
}

/// Fencing releases the VMs a host held, once, and the host lifts its fence itself.
#[test]
fn fencing_releases_a_hosts_vms_until_it_comes_back() {
    use crate::model::VmState::{Starting, Stopped};
    let url = super::testpg::fresh_database();
    let a = populate(Store::connect_as(&url, "h1").unwrap());
    let b = Store::connect_as(&url, "h2").unwrap();
    for s in [&a, &b] {
        s.heartbeat("t", true, 30_000).unwrap();
    }
    let v = VmId::new_random();
    a.create_vm(&ctx("vm.create"), &vm(v, vec![])).unwrap();
    a.transition(v, &[Stopped], Starting, "start")
        .unwrap()
        .unwrap();
    let now = b.clock_ms().unwrap();
    let f = b.fence(&ctx("host.fence"), "h1", now).unwrap();
    assert_eq!(
        f,
        Fenced {
            already: false,
            released: vec![v]
        }
    );
    let row = b.vm(v).unwrap().unwrap();
    assert_eq!((row.state, row.host), (Stopped, None));
    assert!(a.fenced().unwrap());
    assert!(!b.fenced().unwrap());
    let f = b.fence(&ctx("host.fence"), "h1", now).unwrap();
    assert_eq!(
        f,
        Fenced {
            already: true,
            released: vec![]
        }
    );
    assert!(matches!(
        b.fence(&ctx("host.fence"), "h9", now),
        Err(StoreError::Missing(..))
    ));
    a.unfence(&[ctx("host.fenced_destroyed")]).unwrap();
    assert!(!a.fenced().unwrap());
}
