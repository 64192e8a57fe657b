//! The service in-process, over a real SQLite file and the scripted hypervisor: paths that
//! need faults real libvirt cannot produce on demand, and the work done on hidden paths.

use super::*;
use crate::hypervisor::double::{Call, Scripted};

struct World {
    _dir: tempfile::TempDir,
    svc: Arc<Service>,
    hv: Arc<Scripted>,
    vm: VmId,
    drive: DriveId,
}

fn user(name: &str, team: &str) -> Principal {
    Principal {
        name: UserName::parse(name).unwrap(),
        team: Some(TeamName::parse(team).unwrap()),
        admin: false,
    }
}

fn root() -> Principal {
    Principal {
        name: UserName::parse("root").unwrap(),
        team: None,
        admin: true,
    }
}

fn p() -> ProjectName {
    ProjectName::parse("genomics").unwrap()
}

/// alice owns VM "web" with drive "boot" in project "genomics" (alice, bob); mallory is
/// registered in the same team but not a member.
async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.daemon.state_dir = dir.path().to_path_buf();
    let store = Arc::new(Store::open(&cfg.db_path()).unwrap());
    let hv = Arc::new(Scripted::new());
    let svc = Arc::new(Service::new(Arc::new(cfg), store, hv.clone()));
    for (n, t) in [("alice", "lab"), ("bob", "lab"), ("mallory", "lab")] {
        svc.put_user(
            &root(),
            User {
                name: UserName::parse(n).unwrap(),
                team: TeamName::parse(t).unwrap(),
                admin: false,
            },
        )
        .await
        .unwrap();
    }
    let members = vec![
        UserName::parse("alice").unwrap(),
        UserName::parse("bob").unwrap(),
    ];
    let created = svc.create_project(&root(), p(), members).await.unwrap();
    let (a, m) = (created.admin_share.clone(), created.member_share.clone());
    created.delivery.delivered();
    let alice = user("alice", "lab");
    svc.unlock(&root(), p(), a).await.unwrap();
    svc.unlock(&alice, p(), m).await.unwrap();
    let drive = svc
        .create_drive(&alice, p(), DriveName::parse("boot").unwrap(), 16)
        .await
        .unwrap()
        .id;
    let vm = svc
        .create_vm(
            &alice,
            NewVm {
                name: VmName::parse("web").unwrap(),
                project: p(),
                vcpus: 1,
                memory_mib: 32,
                drives: vec![drive],
                idle: None,
            },
        )
        .await
        .unwrap()
        .id;
    World {
        _dir: dir,
        svc,
        hv,
        vm,
        drive,
    }
}

fn audit_len(w: &World) -> usize {
    w.svc
        .store
        .audit(&AuditFilter {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap()
        .len()
}

/// Runs `f` and returns the store calls it made and its error code.
async fn cost<T: std::fmt::Debug>(
    w: &World,
    f: impl std::future::Future<Output = Result<T>>,
) -> (u64, &'static str) {
    let before = w.svc.store_calls();
    let code = match f.await {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.code(),
    };
    (w.svc.store_calls() - before, code)
}

/// A hidden object gets the same answer and the same work (store calls) as a missing one,
/// and leaves no audit row its owners could read.
#[tokio::test]
async fn hidden_and_missing_objects_cost_the_same() {
    let w = world().await;
    let mallory = user("mallory", "lab");
    let missing_vm = VmId::new_random();
    let missing_drive = DriveId::new_random();
    let rows = audit_len(&w);
    let hidden = cost(&w, w.svc.vm(&mallory, w.vm)).await;
    let missing = cost(&w, w.svc.vm(&mallory, missing_vm)).await;
    assert_eq!((hidden, hidden.1), (missing, "vm_not_found"));
    let hidden = cost(&w, w.svc.drive(&mallory, w.drive)).await;
    let missing = cost(&w, w.svc.drive(&mallory, missing_drive)).await;
    assert_eq!((hidden, hidden.1), (missing, "drive_not_found"));
    let target = UserName::parse("bob").unwrap();
    let hidden = cost(
        &w,
        w.svc
            .share(&mallory, w.vm, target.clone(), Role::User, false),
    )
    .await;
    let missing = cost(
        &w,
        w.svc.share(&mallory, missing_vm, target, Role::User, false),
    )
    .await;
    assert_eq!((hidden, hidden.1), (missing, "vm_not_found"));
    let hidden = cost(&w, w.svc.members(&mallory, w.vm)).await;
    let missing = cost(&w, w.svc.members(&mallory, missing_vm)).await;
    assert_eq!(hidden, missing);
    let share = SecretBytes::new(b"vmw-member-AAAA".to_vec());
    let hidden = cost(&w, w.svc.unlock(&mallory, p(), share.clone())).await;
    let nowhere = ProjectName::parse("nowhere").unwrap();
    let missing = cost(&w, w.svc.unlock(&mallory, nowhere, share)).await;
    assert_eq!((hidden, hidden.1), (missing, "project_not_found"));
    assert_eq!(audit_len(&w), rows, "a hidden attempt left an audit row");
}

/// A hot-plug that fails after the store claimed the drive gives the drive back as it was,
/// with an audit row saying so.
#[tokio::test]
async fn failed_hot_plug_gives_the_drive_back() {
    let w = world().await;
    let (alice, bob) = (user("alice", "lab"), UserName::parse("bob").unwrap());
    w.svc.start(&alice, w.vm).await.unwrap();
    let extra = w
        .svc
        .create_drive(&alice, p(), DriveName::parse("extra").unwrap(), 16)
        .await
        .unwrap()
        .id;
    // bob co-owns the VM: a successful attach would make him an owner of the drive.
    w.svc
        .share(&alice, w.vm, bob.clone(), Role::Owner, true)
        .await
        .unwrap();
    w.hv.fail_next(
        Call::Attach,
        HypervisorError::Failed("Bus refused the device".into()),
    );
    let e = w.svc.attach(&alice, w.vm, extra).await.unwrap_err();
    assert_eq!(e.code(), "hypervisor_error");
    let d = w.svc.drive(&alice, extra).await.unwrap();
    assert_eq!(
        (d.attached_to, d.owners),
        (None, vec![UserName::parse("alice").unwrap()])
    );
    assert!(!w.hv.plugged(w.vm).unwrap().contains(&extra));
    let rows = w
        .svc
        .store
        .audit(&AuditFilter {
            limit: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows[0].action, "drive.attach_undone");
    // Attaching again works and the claim holds.
    w.svc.attach(&alice, w.vm, extra).await.unwrap();
    assert!(w.hv.plugged(w.vm).unwrap().contains(&extra));
}

/// An image that cannot be created leaves no file and no announcement; an image whose row
/// cannot be written is removed again.
#[tokio::test]
async fn failed_drive_creation_leaves_no_image() {
    let w = world().await;
    let alice = user("alice", "lab");
    let files = || {
        std::fs::read_dir(w.svc.config().drives_dir())
            .unwrap()
            .count()
    };
    assert_eq!(files(), 1);
    w.hv.fail_next(Call::CreateImage, HypervisorError::NoSpace("full".into()));
    let e = w
        .svc
        .create_drive(&alice, p(), DriveName::parse("big").unwrap(), 16)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "insufficient_storage");
    // A name alice already sees: the image is made, the row refused, the image removed.
    let e = w
        .svc
        .create_drive(&alice, p(), DriveName::parse("boot").unwrap(), 16)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "already_exists");
    assert_eq!(files(), 1);
    let (rows, intents, _) = w.svc.store.storages().unwrap();
    assert_eq!((rows.len(), intents.len()), (1, 0));
    assert_eq!(
        w.hv.calls()
            .iter()
            .filter(|c| **c == Call::CreateImage)
            .count(),
        3
    );
}

/// A launch libvirt refuses is recorded as failed with its code, and the VM is stopped.
#[tokio::test]
async fn refused_launch_is_recorded_with_its_code() {
    let w = world().await;
    let alice = user("alice", "lab");
    w.hv.fail_next(Call::Launch, HypervisorError::Failed("no memory".into()));
    let e = w.svc.start(&alice, w.vm).await.unwrap_err();
    assert_eq!(e.code(), "hypervisor_error");
    let vm = w.svc.vm(&alice, w.vm).await.unwrap();
    assert_eq!(
        (vm.state, vm.state_reason.as_str()),
        (VmState::Stopped, "start_failed")
    );
    let rows = w
        .svc
        .store
        .audit(&AuditFilter {
            vm: Some(w.vm),
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (rows[0].action.as_str(), rows[0].outcome.as_str()),
        ("vm.start", "failed:hypervisor_error")
    );
}

/// Every typed code renders to the exact string the API, the audit log and the event stream
/// have always used.
#[test]
fn codes_render_to_their_stable_strings() {
    let render = |all: Vec<&'static str>| all.join(" ");
    assert_eq!(
        render(ConflictCode::ALL.iter().map(|c| c.as_str()).collect()),
        "vm_running vm_stopping no_drive drive_attached project_mismatch user_has_roles \
         project_not_empty member_owns changed_meanwhile ambiguous idle_out_of_bounds \
         idle_required no_team name_reserved host_not_enrolled fingerprint_mismatch host_up \
         not_a_fleet"
    );
    assert_eq!(
        render(EventKind::ALL.iter().map(|c| c.as_str()).collect()),
        "vm.state vm.created vm.deleted vm.shared vm.unshared vm.idle_warning vm.idle_shutdown \
         drive.attached drive.detached project.unlock_pending project.unlocked project.locked \
         project.member_removed project.deleted"
    );
    assert_eq!(
        render(AuditAction::ALL.iter().map(|c| c.as_str()).collect()),
        "user.put user.delete project.create project.delivered project.create_undone \
         project.delete project.member_add project.member_remove project.unlock project.lock \
         project.resplit project.resplit_delivered project.resplit_undone drive.create \
         drive.delete drive.attach drive.attach_undone drive.detach vm.create vm.update \
         vm.delete vm.share vm.unshare vm.start vm.stop vm.keepalive vm.state \
         vm.idle_shutdown host.stop host.enroll host.unenroll host.fence host.fenced_destroyed"
    );
    assert_eq!(
        [StopCause::Request, StopCause::Admin, StopCause::Idle].map(StopCause::as_str),
        ["stop", "admin", "idle"]
    );
    for a in AuditAction::ALL {
        assert_eq!(AuditAction::parse(a.as_str()), Some(*a));
        assert_eq!(a.names_drive(), a.as_str().starts_with("drive."));
    }
    assert_eq!(
        serde_json::to_string(&EventKind::VmState).unwrap(),
        "\"vm.state\""
    );
}
