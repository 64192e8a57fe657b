//! The encrypted launch path on real libvirt + QEMU: a boot sector written through LUKS prints
//! a marker on the serial port, which proves QEMU decrypted the drive with the right key.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

/// alice owns VM "web" in project "genomics", booting from drive "boot" that prints
/// `marker`.
async fn setup(opts: Opts, marker: &str) -> World {
    Fixture::new(opts)
        .users(&[("alice", "lab")])
        .project("genomics", &["alice"])
        .boot_drive("alice", "genomics", "boot", marker)
        .vm("alice", "genomics", "web", &["boot"])
        .build()
        .await
}

#[test]
fn encrypted_drive_boots_and_prints_marker_with_no_secret_left() {
    rt().block_on(async {
        let w = setup(Opts::default(), "VMWARDEN-MARKER-7f3a").await;
        let (d, c, drv, vm) = (&w.d, w.c.clone(), w.drive("boot"), w.vm("web"));
        let r = c.start(&vm, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            our_secrets(&[&drv]).is_empty(),
            "a vmwarden secret outlived the launch"
        );
        assert!(domain_running(&vm));
        assert!(
            wait_for_file_containing(
                &serial_log(d, &vm),
                "VMWARDEN-MARKER-7f3a",
                Duration::from_secs(20)
            ),
            "marker not on the serial port"
        );
        let r = c.stop(&vm, "alice", true).await;
        assert_eq!(r.status, 200);
        assert!(!domain_running(&vm));
    });
}

#[test]
fn locked_project_refuses_launch_with_409_project_locked_and_no_domain() {
    rt().block_on(async {
        let w = setup(Opts::default(), "LOCKED").await;
        let (c, s, drv, vm) = (
            w.c.clone(),
            w.shares("genomics").clone(),
            w.drive("boot"),
            w.vm("web"),
        );
        let r = c.lock("genomics", "alice").await;
        assert_eq!((r.status, r.body["locked"].as_bool()), (200, Some(true)));
        let r = c.start(&vm, "alice").await;
        assert_eq!((r.status, r.code()), (409, "project_locked"), "{r:?}");
        let detail = r.body["detail"].as_str().unwrap();
        assert!(
            detail.contains("admin share") && detail.contains("member share"),
            "{detail}"
        );
        assert!(!domain_running(&vm));
        // Half unlocked: the detail names the missing half.
        let r = c.unlock_half("genomics", "root", &s.admin).await;
        assert_eq!(r.status, 200);
        let r = c.start(&vm, "alice").await;
        assert_eq!((r.status, r.code()), (409, "project_locked"));
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap()
                .contains("a project member must submit the member share"),
            "{r:?}"
        );
        // Creating a drive is refused too.
        let r = c
            .req(
                "POST",
                "/v1/drives",
                Some("alice"),
                Some(json!({"project": "genomics", "name": "x", "size_mib": 16})),
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "project_locked"));
        assert!(our_secrets(&[&drv]).is_empty());
    });
}

/// A single host (SQLite) keeps K in memory only: a restart locks every project. A fleet
/// agent (PostgreSQL) opens its envelope again while it is valid (DESIGN 7, "Fleet unlock"):
/// the project stays unlocked, and the envelope is the only place K persists, sealed.
#[test]
fn restart_leaves_project_locked_and_vm_running() {
    rt().block_on(async {
        let mut w = setup(Opts::default(), "RESTART").await;
        let (c, vm) = (w.c.clone(), w.vm("web"));
        assert_eq!(c.start(&vm, "alice").await.status, 200);
        let _ = w.d.terminate();
        w.d.spawn();
        let r = c.get("/v1/projects", "alice").await;
        assert_eq!(r.body[0]["locked"], !w.d.on_postgres(), "{r:?}");
        if w.d.on_postgres() {
            // Locked, then restarted: nothing brings it back.
            assert_eq!(c.lock("genomics", "alice").await.status, 200);
            let _ = w.d.terminate();
            w.d.spawn();
            let r = c.get("/v1/projects", "alice").await;
            assert_eq!(r.body[0]["locked"], true, "{r:?}");
        }
        assert!(domain_running(&vm), "restart must not touch running VMs");
        let r = c.get(&format!("/v1/vms/{vm}"), "alice").await;
        assert_eq!(r.body["state"], "running");
    });
}

#[test]
fn tampered_wrapped_passphrase_fails_cleanly_without_qemu() {
    rt().block_on(async {
        let w = setup(Opts::default(), "TAMPER").await;
        let (d, c, drv, vm) = (&w.d, w.c.clone(), w.drive("boot"), w.vm("web"));
        {
            let mut w = d.sql("SELECT wrapped FROM drives WHERE id = ?1", &[(&drv).into()])[0]
                .bytes(0)
                .unwrap();
            let last = w.len() - 1;
            w[last] ^= 0x01;
            d.sql(
                "UPDATE drives SET wrapped = ?2 WHERE id = ?1",
                &[(&drv).into(), (&w).into()],
            );
        }
        let r = c.start(&vm, "alice").await;
        assert_eq!((r.status, r.code()), (500, "drive_secret_invalid"), "{r:?}");
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap()
                .contains("fails authentication"),
            "{r:?}"
        );
        assert!(
            d.log_text().contains(&drv),
            "the operator's log names the drive"
        );
        assert!(!domain_running(&vm));
        assert!(
            !std::path::Path::new(&format!("/var/log/libvirt/qemu/{vm}.log")).exists(),
            "QEMU was started"
        );
        let r = c.get(&format!("/v1/audit?vm={vm}"), "root").await;
        assert!(
            r.body
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == "vm.start" && e["outcome"] == "failed:drive_secret_invalid"),
            "{r:?}"
        );
    });
}

#[test]
fn tcg_domain_type_boots_without_kvm() {
    rt().block_on(async {
        let w = setup(
            Opts {
                libvirt: "domain_type = \"qemu\"".into(),
                ..Default::default()
            },
            "TCG-BOOT",
        )
        .await;
        let (d, c, vm) = (&w.d, w.c.clone(), w.vm("web"));
        let r = c.start(&vm, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            virsh(&["dumpxml", &vm]).contains("type='qemu'"),
            "not a TCG domain"
        );
        assert!(wait_for_file_containing(
            &serial_log(d, &vm),
            "TCG-BOOT",
            Duration::from_secs(30)
        ));
    });
}

#[test]
fn hot_attach_of_an_encrypted_drive_leaves_no_secret() {
    rt().block_on(async {
        let w = setup(Opts::default(), "HOT").await;
        let (d, c, drv, vm) = (&w.d, w.c.clone(), w.drive("boot"), w.vm("web"));
        assert_eq!(c.start(&vm, "alice").await.status, 200);
        let extra = drive(&c, "alice", "genomics", "extra").await;
        let r = c
            .req(
                "PUT",
                &format!("/v1/vms/{vm}/drives/{extra}"),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(our_secrets(&[&drv, &extra]).is_empty());
        let xml = virsh(&["dumpxml", &vm]);
        assert!(
            xml.contains(&format!("{}.qcow2", storage_of(d, &extra))),
            "disk not attached live"
        );
        // The boot-sector guest never releases a hot-detached disk: a precise 409.
        let r = c
            .req(
                "DELETE",
                &format!("/v1/vms/{vm}/drives/{extra}"),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "detach_timeout"), "{r:?}");
        assert!(r.body["detail"]
            .as_str()
            .unwrap()
            .contains("stop the VM first"));
        // Stopped: a cold detach works.
        c.stop(&vm, "alice", true).await;
        let r = c
            .req(
                "DELETE",
                &format!("/v1/vms/{vm}/drives/{extra}"),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    });
}

#[test]
fn cli_walkthrough_starts_and_stops_a_domain() {
    let d = Daemon::start(Opts::default());
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin("vmwarden"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(cli(&["user", "put", "root", "--team", "ops"]).0, 0);
    assert_eq!(cli(&["user", "put", "alice", "--team", "lab"]).0, 0);
    // The shares exist only in the answer: the CLI wants files for them (or --show-shares).
    let (rc, _, err) = cli(&["project", "create", "genomics", "--member", "alice"]);
    assert_ne!(rc, 0);
    assert!(err.contains("--admin-share-file"), "{err}");
    assert_eq!(cli(&["project", "status"]).1.trim(), "(none)");
    let dir = tempfile::tempdir().unwrap();
    let (a, m) = (dir.path().join("a"), dir.path().join("m"));
    let (rc, out, err) = cli(&[
        "--json",
        "project",
        "create",
        "genomics",
        "--member",
        "alice",
        "--admin-share-file",
        a.to_str().unwrap(),
        "--member-share-file",
        m.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{err}");
    assert!(!out.contains("vmw-"), "a share was printed: {out}");
    use std::os::unix::fs::PermissionsExt;
    for (f, label) in [(&a, "vmw-admin-"), (&m, "vmw-member-")] {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(std::fs::read_to_string(f).unwrap().starts_with(label));
    }
    assert_eq!(
        cli(&[
            "project",
            "unlock",
            "genomics",
            "--share-file",
            a.to_str().unwrap()
        ])
        .0,
        0
    );
    // The member share from stdin.
    let out = std::process::Command::new(bin("vmwarden"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["--as", "alice", "project", "unlock", "genomics"])
        .stdin(std::fs::File::open(&m).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (rc, out, err) = cli(&[
        "--as",
        "alice",
        "--json",
        "drive",
        "create",
        "boot",
        "--project",
        "genomics",
        "--size-mib",
        "16",
    ]);
    assert_eq!(rc, 0, "{err}");
    let drive: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (rc, out, err) = cli(&[
        "--as",
        "alice",
        "--json",
        "vm",
        "create",
        "web",
        "--project",
        "genomics",
        "--drive",
        drive["id"].as_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{err}");
    let vm: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = vm["id"].as_str().unwrap();
    let (rc, _, err) = cli(&["--as", "alice", "vm", "start", id]);
    assert_eq!(rc, 0, "{err}");
    assert!(domain_running(id));
    let (rc, out, _) = cli(&["--as", "alice", "vm", "list"]);
    assert_eq!(rc, 0);
    assert!(out.contains("running") && out.contains("web"), "{out}");
    let (rc, _, _) = cli(&["--as", "alice", "vm", "start", id]);
    assert_eq!(rc, 5, "conflict exit code");
    let (rc, _, _) = cli(&[
        "--as",
        "alice",
        "vm",
        "show",
        "00000000-0000-0000-0000-000000000000",
    ]);
    assert_eq!(rc, 3, "not-found exit code");
    let (rc, _, _) = cli(&["--as", "alice", "user", "list"]);
    assert_eq!(rc, 4, "denied exit code");
    let (rc, _, err) = cli(&["--as", "alice", "vm", "stop", "--force", id]);
    assert_eq!(rc, 0, "{err}");
    assert!(!domain_running(id));
}

#[test]
fn resplit_rekeys_so_the_old_pair_stops_working_and_drives_still_boot() {
    rt().block_on(async {
        let w = setup(Opts::default(), "REKEYED").await;
        let (d, c, old, vm) = (&w.d, w.c.clone(), w.shares("genomics").clone(), w.vm("web"));
        let r = c
            .req("POST", "/v1/projects/genomics/resplit", Some("root"), None)
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let new = Shares {
            admin: r.body["admin_share"].as_str().unwrap().to_owned(),
            member: r.body["member_share"].as_str().unwrap().to_owned(),
        };
        assert_ne!(new.admin, old.admin);
        assert_eq!(c.lock("genomics", "alice").await.status, 200);
        // The old pair no longer rebuilds the key: both halves are discarded.
        let r = c.unlock_half("genomics", "root", &old.admin).await;
        assert_eq!(r.status, 200);
        let r = c.unlock_half("genomics", "alice", &old.member).await;
        assert_eq!((r.status, r.code()), (409, "invalid_share"), "{r:?}");
        assert_eq!(
            c.get("/v1/projects", "alice").await.body[0]["pending"],
            json!([])
        );
        // A mixed pair fails the same way.
        c.unlock_half("genomics", "root", &new.admin).await;
        let r = c.unlock_half("genomics", "alice", &old.member).await;
        assert_eq!(r.code(), "invalid_share");
        // The new pair works, and the re-wrapped passphrase still opens the drive.
        unlock(&c, "genomics", &new, "alice").await;
        let r = c.start(&vm, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(wait_for_file_containing(
            &serial_log(d, &vm),
            "REKEYED",
            Duration::from_secs(20)
        ));
    });
}

#[test]
fn failed_hot_attach_gives_the_drive_back() {
    rt().block_on(async {
        let w = setup(Opts::default(), "HOTFAIL").await;
        let (d, c, vm) = (&w.d, w.c.clone(), w.vm("web"));
        assert_eq!(c.start(&vm, "alice").await.status, 200);
        let extra = drive(&c, "alice", "genomics", "extra").await;
        d.sql(
            "UPDATE drives SET wrapped = ?2 WHERE id = ?1",
            &[(&extra).into(), (&[0u8; 60][..]).into()],
        );
        let r = c
            .req(
                "PUT",
                &format!("/v1/vms/{vm}/drives/{extra}"),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!((r.status, r.code()), (500, "drive_secret_invalid"), "{r:?}");
        let r = c.get(&format!("/v1/drives/{extra}"), "alice").await;
        assert_eq!(
            (r.body["attached_to"].clone(), r.body["owners"].clone()),
            (serde_json::Value::Null, json!(["alice"])),
            "{r:?}"
        );
        assert!(
            !virsh(&["dumpxml", &vm]).contains(&extra),
            "disk was plugged"
        );
        let audit = c.get(&format!("/v1/audit?vm={vm}"), "alice").await;
        assert!(audit
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "drive.attach_undone"));
    });
}
