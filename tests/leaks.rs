//! Nothing leaks (issue "Nothing leaks"): names by conflict, the registry by share errors,
//! input before registration, the process table and the drives folder, the reserved name,
//! audit outcomes and metric labels. Over the real socket on real libvirt.

mod common;
use common::*;
use serde_json::json;

/// alice owns VM "web" (drive "data"); bob is its user; carol is a member without a role;
/// dave is a member in another team; erin is in alice's team but not in the project.
async fn world() -> World {
    Fixture::new(Opts::default())
        .users(&[
            ("alice", "lab"),
            ("bob", "lab"),
            ("carol", "lab"),
            ("dave", "far"),
            ("erin", "lab"),
        ])
        .project("gen", &["alice", "bob", "carol", "dave"])
        .boot_drive("alice", "gen", "data", "LEAK")
        .vm("alice", "gen", "web", &["data"])
        .share("web", "alice", "bob", "user")
        .build()
        .await
}

/// Item 1: a name its creator cannot see never conflicts; one it can see does.
#[test]
fn hidden_names_never_conflict() {
    rt().block_on(async {
        let w = world().await;
        let c = w.c.clone();
        // bob uses alice's VM but does not see its drive "data".
        let r = c
            .req(
                "POST",
                "/v1/drives",
                Some("bob"),
                Some(json!({"project": "gen", "name": "data", "size_mib": 16})),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        // carol sees no VM "web" in the project.
        let r = c
            .req(
                "POST",
                "/v1/vms",
                Some("carol"),
                Some(json!({"name": "web", "project": "gen", "vcpus": 1, "memory_mib": 32})),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        // carol shares her "web" with bob, who uses alice's "web" too: the name is ambiguous
        // to him, the answer lists both ids, and an id prefix settles it.
        let carols = r.body["id"].as_str().unwrap().to_owned();
        assert_eq!(
            c.share(&carols, "carol", "bob", "user", false).await.status,
            200
        );
        let r = c.get("/v1/vms/web", "bob").await;
        assert_eq!((r.status, r.code()), (409, "ambiguous"), "{r:?}");
        let detail = r.body["detail"].as_str().unwrap();
        assert!(
            detail.contains(&carols) && detail.contains(&w.vm("web")),
            "{detail}"
        );
        let r = c.get(&format!("/v1/vms/{}", &carols[..13]), "bob").await;
        assert_eq!((r.status, &r.body["id"]), (200, &json!(carols)));
        // alice sees both of hers.
        let r = c
            .req(
                "POST",
                "/v1/drives",
                Some("alice"),
                Some(json!({"project": "gen", "name": "data", "size_mib": 16})),
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "already_exists"), "{r:?}");
        let r = c
            .req(
                "POST",
                "/v1/vms",
                Some("alice"),
                Some(json!({"name": "web", "project": "gen", "vcpus": 1, "memory_mib": 32})),
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "already_exists"), "{r:?}");
    });
}

/// Item 3: an unregistered name and a user of another team get the same answer; a
/// teammate outside the project gets `not_project_member` naming the project.
#[test]
fn share_errors_do_not_map_the_registry() {
    rt().block_on(async {
        let w = world().await;
        let (c, vm) = (w.c.clone(), w.vm("web"));
        let share = |to: &'static str| {
            let (c, vm) = (c.clone(), vm.clone());
            async move {
                c.req(
                    "PUT",
                    &format!("/v1/vms/{vm}/members/{to}"),
                    Some("bob"),
                    Some(json!({"role": "user"})),
                )
                .await
            }
        };
        let ghost = share("ghost").await;
        let dave = share("dave").await;
        assert_eq!(
            (ghost.status, ghost.code()),
            (409, "team_mismatch"),
            "{ghost:?}"
        );
        assert_eq!(
            (dave.status, dave.code()),
            (409, "team_mismatch"),
            "{dave:?}"
        );
        assert_eq!(ghost.body["detail"], "ghost is not in your team lab");
        assert_eq!(dave.body["detail"], "dave is not in your team lab");
        assert!(!String::from_utf8_lossy(&dave.raw).contains("far"));
        let erin = share("erin").await;
        assert_eq!(
            (erin.status, erin.code()),
            (409, "not_project_member"),
            "{erin:?}"
        );
        assert_eq!(erin.body["detail"], "erin is not a member of project gen");
    });
}

/// Item 4: an unregistered peer gets 403 before anything it sent is examined.
#[test]
fn unregistered_peer_gets_403_before_its_input_is_read() {
    rt().block_on(async {
        let d = Daemon::start(Opts::default());
        let c = d.client();
        users(&c, &[]).await;
        for req in [
            raw_request(
                "PUT",
                "/v1/users/Bad%20Name",
                None,
                Some(&json!({"team": 7})),
            ),
            raw_request("POST", "/v1/vms", None, Some(&json!({"nonsense": true}))),
            raw_request("GET", "/v1/vms/not-an-id", None, None),
            b"POST /v1/drives HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n\r\n{not json".to_vec(),
            raw_request("GET", "/v1/no/such/route", None, None),
        ] {
            let out = as_uid(65534, &d.socket, &req);
            assert!(out.starts_with("HTTP/1.1 403"), "{out}");
            assert!(out.contains("\"code\":\"unregistered\""), "{out}");
        }
        let out = as_uid(
            65534,
            &d.socket,
            &raw_request("GET", "/v1/health", None, None),
        );
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let out = as_uid(
            65534,
            &d.socket,
            &raw_request("GET", "/v1/openapi.json", None, None),
        );
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    });
}

/// Item 6: QEMU's command line names image files by a storage id that appears in no answer
/// (never the drive id), and the drives folder admits only the daemon and QEMU's group:
/// another local user cannot even stat an image.
#[test]
fn process_table_and_drives_folder_reveal_no_drive() {
    rt().block_on(async {
        let w = world().await;
        let (d, c, drv, vm) = (&w.d, w.c.clone(), w.drive("data"), w.vm("web"));
        let r = c.start(&vm, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        let qemu: Vec<&str> = ps.lines().filter(|l| l.contains(&vm)).collect();
        assert!(!qemu.is_empty(), "no QEMU for {vm}");
        let storage = storage_of(d, &drv);
        assert_ne!(storage, drv);
        for l in &qemu {
            assert!(!l.contains(&drv), "the drive id is in QEMU's argv: {l}");
        }
        assert!(qemu.iter().any(|l| l.contains(&storage)), "{qemu:?}");
        // The storage id is in no answer: not the owner's view of the drive or the VM.
        for p in [
            format!("/v1/drives/{drv}"),
            format!("/v1/vms/{vm}"),
            "/v1/drives".into(),
        ] {
            let r = c.get(&p, "alice").await;
            assert!(!String::from_utf8_lossy(&r.raw).contains(&storage), "{p}");
        }
        use std::os::unix::fs::MetadataExt;
        let dir = d.state().join("drives");
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o710);
        let qemu_gid = nix::unistd::Group::from_name("libvirt-qemu")
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        assert_eq!(meta.gid(), qemu_gid);
        let image = dir.join(format!("{storage}.qcow2"));
        let st = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "stat"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(!st.status.success(), "nobody can stat {}", image.display());
        assert!(String::from_utf8_lossy(&st.stderr).contains("Permission denied"));
    });
}

/// Item 7: nobody may register the daemon's own name.
#[test]
fn the_daemons_name_is_reserved() {
    rt().block_on(async {
        let d = Daemon::start(Opts::default());
        let c = d.client();
        users(&c, &[]).await;
        let r = c
            .req(
                "PUT",
                "/v1/users/vmwardend",
                Some("root"),
                Some(json!({"team": "ops"})),
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "name_reserved"), "{r:?}");
        let users = c.get("/v1/users", "root").await;
        assert!(!String::from_utf8_lossy(&users.raw).contains("vmwardend"));
    });
}

/// Item 8: audit outcomes use the API codes; the request counter and the latency
/// histogram name routes alike.
#[test]
fn audit_outcomes_and_metric_labels_use_api_names() {
    rt().block_on(async {
        let w = world().await;
        let (c, vm) = (w.c.clone(), w.vm("web"));
        for to in ["bob", "carol"] {
            c.req(
                "PUT",
                &format!("/v1/vms/{vm}/members/{to}"),
                Some("alice"),
                Some(json!({"role": "owner", "confirm_drive_access": true})),
            )
            .await;
        }
        let rows = audit_rows(&c, &format!("&vm={vm}")).await;
        let refused = rows
            .iter()
            .find(|e| e["action"] == "vm.share" && e["target"] == "carol")
            .unwrap();
        assert_eq!(refused["outcome"], "denied:max_owners_reached", "{rows:?}");
        let m = c.get("/metrics", "root").await;
        let text = String::from_utf8_lossy(&m.raw);
        let counter_routes: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("vmwarden_http_requests_total{"))
            .filter_map(|l| l.split("route=\"").nth(1)?.split('"').next())
            .collect();
        let histogram_routes: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("vmwarden_http_request_duration_seconds_count{"))
            .filter_map(|l| l.split("route=\"").nth(1)?.split('"').next())
            .collect();
        assert!(
            counter_routes.contains("/v1/vms/{id}/members/{user}"),
            "{text}"
        );
        assert_eq!(counter_routes, histogram_routes, "{text}");
    });
}
