//! The control socket API over the real socket: every endpoint with an allowed caller, a denied
//! caller and a caller who cannot see the object; unregistered peers; limits; bad input.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// alice (lab) owns VM "web" in project "genomics"; bob (lab) is a member without a role;
/// carol (lab) is not in the project; root is admin and a member.
struct World {
    d: Daemon,
    c: Client,
    vm: String,
    drive: String,
}

async fn world() -> World {
    world_with(Opts::default()).await
}

async fn world_with(opts: Opts) -> World {
    let d = Daemon::start(opts);
    let c = d.client();
    users(&c, &[("alice", "lab"), ("bob", "lab"), ("carol", "lab")]).await;
    let s = project(&c, "genomics", &["alice", "bob", "root"]).await;
    unlock(&c, "genomics", &s, "alice").await;
    let drive = drive(&c, "alice", "genomics", "data").await;
    let vm = vm(&c, "alice", "genomics", "web", &[&drive]).await;
    World { d, c, vm, drive }
}

#[test]
fn every_endpoint_allowed_denied_and_hidden() {
    rt().block_on(async {
        let w = world().await;
        let (c, vm, drv) = (&w.c, w.vm.as_str(), w.drive.as_str());
        // (method, path, body, allowed caller, denied caller + status, hidden caller)
        type Row<'a> = (
            &'a str,
            String,
            Option<serde_json::Value>,
            &'a str,
            (&'a str, u16),
            Option<&'a str>,
        );
        let rows: Vec<Row> = vec![
            ("GET", "/v1/me".into(), None, "alice", ("nobody", 403), None),
            (
                "GET",
                "/v1/users".into(),
                None,
                "root",
                ("alice", 403),
                None,
            ),
            (
                "PUT",
                "/v1/users/dave".into(),
                Some(json!({"team": "lab"})),
                "root",
                ("alice", 403),
                None,
            ),
            (
                "DELETE",
                "/v1/users/dave".into(),
                None,
                "root",
                ("alice", 403),
                None,
            ),
            (
                "GET",
                "/v1/projects".into(),
                None,
                "alice",
                ("nobody", 403),
                None,
            ),
            (
                "POST",
                "/v1/projects".into(),
                Some(json!({"name": "other", "members": []})),
                "root",
                ("alice", 403),
                None,
            ),
            (
                "PUT",
                "/v1/projects/genomics/members/carol".into(),
                None,
                "root",
                ("alice", 403),
                None,
            ),
            (
                "DELETE",
                "/v1/projects/genomics/members/carol".into(),
                None,
                "root",
                ("alice", 403),
                None,
            ),
            (
                "GET",
                "/v1/drives".into(),
                None,
                "alice",
                ("nobody", 403),
                None,
            ),
            (
                "GET",
                format!("/v1/drives/{drv}"),
                None,
                "alice",
                ("nobody", 403),
                Some("bob"),
            ),
            (
                "GET",
                "/v1/vms".into(),
                None,
                "alice",
                ("nobody", 403),
                None,
            ),
            (
                "GET",
                format!("/v1/vms/{vm}"),
                None,
                "alice",
                ("nobody", 403),
                Some("carol"),
            ),
            (
                "PATCH",
                format!("/v1/vms/{vm}"),
                Some(json!({"vcpus": 2})),
                "alice",
                ("root", 403),
                Some("bob"),
            ),
            (
                "GET",
                format!("/v1/vms/{vm}/members"),
                None,
                "alice",
                ("root", 403),
                Some("carol"),
            ),
            (
                "PUT",
                format!("/v1/vms/{vm}/members/bob"),
                Some(json!({"role": "user"})),
                "alice",
                ("root", 403),
                Some("carol"),
            ),
            (
                "DELETE",
                format!("/v1/vms/{vm}/members/bob"),
                None,
                "alice",
                ("root", 403),
                Some("carol"),
            ),
            (
                "POST",
                format!("/v1/vms/{vm}/keepalive"),
                None,
                "alice",
                ("root", 403),
                Some("carol"),
            ),
            (
                "GET",
                "/v1/host/vms".into(),
                None,
                "root",
                ("alice", 403),
                None,
            ),
            (
                "GET",
                "/v1/audit".into(),
                None,
                "root",
                ("nobody", 403),
                None,
            ),
            ("GET", "/metrics".into(), None, "root", ("alice", 403), None),
            (
                "POST",
                "/v1/projects/genomics/lock".into(),
                None,
                "alice",
                ("nobody", 403),
                Some("carol"),
            ),
        ];
        for (m, path, body, ok, (denied, dstatus), hidden) in rows {
            let r = c.req(m, &path, Some(ok), body.clone()).await;
            assert!(r.status < 300, "{m} {path} as {ok}: {r:?}");
            let r = c.req(m, &path, Some(denied), body.clone()).await;
            assert_eq!(r.status, dstatus, "{m} {path} as {denied}: {r:?}");
            // The code says why: not registered, not an admin, or no role on the VM.
            let code = match denied {
                "nobody" => "unregistered",
                "root" => "role_required",
                _ => "admin_required",
            };
            assert_eq!(r.code(), code, "{m} {path} as {denied}: {r:?}");
            assert_eq!(r.content_type, "application/problem+json");
            for k in ["type", "title", "status", "detail", "code"] {
                assert!(r.body.get(k).is_some(), "{k} missing in {r:?}");
            }
            if let Some(h) = hidden {
                let r = c.req(m, &path, Some(h), body).await;
                assert_eq!(r.status, 404, "{m} {path} as {h}: {r:?}");
            }
        }
        // Health and the API document answer any peer.
        assert_eq!(
            c.req("GET", "/v1/health", Some("nobody"), None)
                .await
                .status,
            200
        );
        let doc = c.req("GET", "/v1/openapi.json", Some("nobody"), None).await;
        assert_eq!(doc.body["openapi"].as_str().map(|s| &s[..2]), Some("3."));
    });
}

#[test]
fn lifecycle_endpoints_allowed_denied_hidden() {
    rt().block_on(async {
        let w = world().await;
        let (c, vm, drv) = (&w.c, w.vm.as_str(), w.drive.as_str());
        // Start: owner ok; admin member without role 403; non-member 404.
        assert_eq!(c.start(vm, "root").await.status, 403);
        assert_eq!(c.start(vm, "carol").await.status, 404);
        let r = c.start(vm, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(domain_running(vm));
        let r = c.start(vm, "alice").await;
        assert_eq!((r.status, r.code()), (409, "vm_running"));
        let r = c
            .req("DELETE", &format!("/v1/vms/{vm}"), Some("alice"), None)
            .await;
        assert_eq!((r.status, r.code()), (409, "vm_running"));
        assert_eq!(c.stop(vm, "carol", true).await.status, 404);
        assert_eq!(c.stop(vm, "root", true).await.status, 403);
        let r = c.stop(vm, "alice", true).await;
        assert_eq!(
            (r.status, r.body["state"].as_str()),
            (200, Some("stopped")),
            "{r:?}"
        );
        assert!(!domain_running(vm));
        // Admin host stop of a stopped VM is fine and audited with reason admin.
        let r = c
            .req(
                "POST",
                &format!("/v1/host/vms/{vm}/stop"),
                Some("root"),
                Some(json!({"force": true})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = c
            .req(
                "POST",
                &format!("/v1/host/vms/{vm}/stop"),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!(r.status, 403);
        // Detach / attach: owner ok, non-member 404, admin 403.
        assert_eq!(
            c.req(
                "DELETE",
                &format!("/v1/vms/{vm}/drives/{drv}"),
                Some("carol"),
                None
            )
            .await
            .status,
            404
        );
        assert_eq!(
            c.req(
                "DELETE",
                &format!("/v1/vms/{vm}/drives/{drv}"),
                Some("root"),
                None
            )
            .await
            .status,
            403
        );
        assert_eq!(
            c.req(
                "DELETE",
                &format!("/v1/vms/{vm}/drives/{drv}"),
                Some("alice"),
                None
            )
            .await
            .status,
            200
        );
        assert_eq!(
            c.req(
                "PUT",
                &format!("/v1/vms/{vm}/drives/{drv}"),
                Some("carol"),
                None
            )
            .await
            .status,
            404
        );
        assert_eq!(
            c.req(
                "PUT",
                &format!("/v1/vms/{vm}/drives/{drv}"),
                Some("alice"),
                None
            )
            .await
            .status,
            200
        );
        // Drive delete: attached -> 409; non-owner -> 404.
        let r = c
            .req("DELETE", &format!("/v1/drives/{drv}"), Some("alice"), None)
            .await;
        assert_eq!((r.status, r.code()), (409, "drive_attached"));
        assert_eq!(
            c.req("DELETE", &format!("/v1/drives/{drv}"), Some("bob"), None)
                .await
                .status,
            404
        );
        // VM delete: non-member 404, owner ok; the drive survives, detached, with alice.
        assert_eq!(
            c.req("DELETE", &format!("/v1/vms/{vm}"), Some("carol"), None)
                .await
                .status,
            404
        );
        assert_eq!(
            c.req("DELETE", &format!("/v1/vms/{vm}"), Some("alice"), None)
                .await
                .status,
            200
        );
        let r = c.get(&format!("/v1/drives/{drv}"), "alice").await;
        assert_eq!(r.body["attached_to"], serde_json::Value::Null);
        assert_eq!(
            c.req("DELETE", &format!("/v1/drives/{drv}"), Some("alice"), None)
                .await
                .status,
            200
        );
        assert!(!w
            .d
            .state()
            .join("drives")
            .join(format!("{drv}.qcow2"))
            .exists());
        // Drive and VM creation gated by membership.
        let r = c
            .req(
                "POST",
                "/v1/drives",
                Some("carol"),
                Some(json!({"project": "genomics", "name": "x", "size_mib": 16})),
            )
            .await;
        assert_eq!(r.status, 404);
        let r = c
            .req(
                "POST",
                "/v1/vms",
                Some("carol"),
                Some(json!({"project": "genomics", "name": "x", "vcpus": 1, "memory_mib": 32})),
            )
            .await;
        assert_eq!(r.status, 404);
    });
}

#[test]
fn unregistered_peer_gets_403_but_health() {
    // A real second uid: `nobody` runs the CLI against the 0666 test socket.
    rt().block_on(async {
        let d = Daemon::start(Opts::default());
        let run = |args: &[&str]| {
            std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(bin("vmwarden"))
                .arg("--socket")
                .arg(&d.socket)
                .arg("--json")
                .args(args)
                .output()
                .unwrap()
        };
        let out = run(&["me"]);
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (body["status"].as_u64(), body["code"].as_str()),
            (Some(403), Some("unregistered"))
        );
        let out = run(&["vm", "list"]);
        assert_eq!(out.status.code(), Some(4));
        let out = run(&["health"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        // nobody may not act for root either.
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("vmwarden"))
            .arg("--socket")
            .arg(&d.socket)
            .args(["--as", "root", "--json", "user", "list"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "{out:?}");
    });
}

#[test]
fn oversized_malformed_unknown_fields_and_hostile_names() {
    rt().block_on(async {
        let w = world().await;
        let c = &w.c;
        let big = vec![b' '; 70_000];
        let r = c.raw("POST", "/v1/vms", Some("alice"), Some(big)).await;
        assert_eq!((r.status, r.code()), (413, "body_too_large"));
        let r = c.raw("POST", "/v1/vms", Some("alice"), Some(b"{\"name\": ".to_vec())).await;
        assert_eq!((r.status, r.code()), (400, "invalid_body"));
        let r = c.req("POST", "/v1/vms", Some("alice"), Some(json!({"name": "a", "project": "genomics", "vcpus": 1, "memory_mib": 32, "colour": "red"}))).await;
        assert_eq!((r.status, r.code()), (400, "invalid_body"));
        assert!(r.body["detail"].as_str().unwrap().contains("colour"), "{r:?}");
        let r = c.req("POST", &format!("/v1/vms/{}/stop", w.vm), Some("alice"), Some(json!({"forse": true}))).await;
        assert_eq!((r.status, r.code()), (400, "invalid_body"));
        for bad in ["a<b", "it's", "a/b", "..", "../etc", "<x/>"] {
            let r = c.req("POST", "/v1/vms", Some("alice"), Some(json!({"name": bad, "project": "genomics", "vcpus": 1, "memory_mib": 32}))).await;
            assert_eq!((r.status, r.code()), (400, "invalid_body"), "{bad}: {r:?}");
            let r = c.req("POST", "/v1/drives", Some("alice"), Some(json!({"name": bad, "project": "genomics", "size_mib": 16}))).await;
            assert_eq!(r.status, 400, "{bad}: {r:?}");
            let r = c.req("PUT", "/v1/users/x", Some("root"), Some(json!({"team": bad}))).await;
            assert_eq!(r.status, 400, "{bad}: {r:?}");
        }
        for path in ["/v1/users/a%3Cb", "/v1/users/..", "/v1/vms/..%2F..", "/v1/projects/a'b/lock"] {
            let r = c.req("PUT", path, Some("root"), Some(json!({"team": "lab"}))).await;
            assert!(r.status == 400 || r.status == 405, "{path}: {r:?}");
        }
        // Where an id is expected, a name or an id prefix does too (DESIGN 1); anything
        // else is not a reference at all.
        let r = c.req("GET", "/v1/vms/Not_A_Name", Some("alice"), None).await;
        assert_eq!((r.status, r.code()), (400, "invalid_parameter"));
        let r = c.req("GET", "/v1/vms/web", Some("alice"), None).await;
        assert_eq!((r.status, &r.body["id"]), (200, &json!(w.vm)));
        let r = c.req("GET", &format!("/v1/vms/{}", &w.vm[..8]), Some("alice"), None).await;
        assert_eq!((r.status, &r.body["id"]), (200, &json!(w.vm)));
        let r = c.req("GET", "/v1/vms/no-such-vm", Some("alice"), None).await;
        assert_eq!((r.status, r.code()), (404, "vm_not_found"));
        let r = c.req("GET", "/v1/vms/web", Some("carol"), None).await;
        assert_eq!((r.status, r.code()), (404, "vm_not_found"));
        let r = c.raw("GET", "/v1/me", Some("a<b"), None).await;
        assert_eq!(r.status, 400);
        // Out-of-range sizes.
        let r = c.req("POST", "/v1/vms", Some("alice"), Some(json!({"name": "big", "project": "genomics", "vcpus": 1000, "memory_mib": 32}))).await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"));
        // A taken name is a conflict, not a server error.
        let r = c.req("POST", "/v1/vms", Some("alice"), Some(json!({"name": "web", "project": "genomics", "vcpus": 1, "memory_mib": 32}))).await;
        assert_eq!((r.status, r.code()), (409, "already_exists"), "{r:?}");
        // Nothing of the above created anything.
        let r = c.get("/v1/vms", "alice").await;
        assert_eq!(r.body.as_array().unwrap().len(), 1);
    });
}

#[test]
fn slow_header_client_is_cut_off_while_others_are_served() {
    rt().block_on(async {
        let d = Daemon::start(Opts {
            limits: "header_timeout = \"1s\"".into(),
            ..Default::default()
        });
        let c = d.client();
        let mut slow = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        slow.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = Instant::now();
        // Others are served while the slow client holds its connection.
        for _ in 0..5 {
            assert_eq!(c.req("GET", "/v1/health", None, None).await.status, 200);
        }
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![];
        let _ = slow.read_to_end(&mut buf);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slow client was never cut off"
        );
        // Hyper answers a timed-out head with nothing or a 408; either way, the socket closed.
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
        assert_eq!(c.req("GET", "/v1/health", None, None).await.status, 200);
    });
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    rt().block_on(async {
        let mut d = Daemon::start(Opts::default());
        assert_eq!(
            d.client().req("GET", "/v1/health", None, None).await.status,
            200
        );
        let st = d.terminate();
        assert!(st.success(), "{st:?}");
        assert!(!d.socket.exists(), "socket left behind");
        // A restart on the same paths works (the lock was released).
        d.spawn();
        assert_eq!(
            d.client().req("GET", "/v1/health", None, None).await.status,
            200
        );
    });
}

#[test]
fn second_daemon_on_the_same_socket_refuses_to_start() {
    let d = Daemon::start(Opts::default());
    let out = std::process::Command::new(bin("vmwardend"))
        .arg("--config")
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Another vmwardend holds"),
        "{out:?}"
    );
    assert!(d.socket.exists());
}

#[test]
fn check_config_reports_key_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[keys]\nunlock_window = \"ten minutes\"\n").unwrap();
    let out = std::process::Command::new(bin("vmwardend"))
        .arg("--check-config")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keys.unlock_window") && err.contains("line 2, column 17"),
        "{err}"
    );
    std::fs::write(&p, "").unwrap();
    let out = std::process::Command::new(bin("vmwardend"))
        .arg("--check-config")
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/vmwarden.toml");
    let out = std::process::Command::new(bin("vmwardend"))
        .arg("--check-config")
        .arg(shipped)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn key_and_stream_endpoints_allowed_denied_hidden() {
    rt().block_on(async {
        let w = world().await;
        let c = &w.c;
        // Re-split: admins only, on an unlocked project.
        let r = c
            .req("POST", "/v1/projects/genomics/resplit", Some("alice"), None)
            .await;
        assert_eq!((r.status, r.code()), (403, "admin_required"));
        let r = c
            .req("POST", "/v1/projects/genomics/resplit", Some("root"), None)
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let (admin_share, member_share) = (
            r.body["admin_share"].as_str().unwrap().to_owned(),
            r.body["member_share"].as_str().unwrap().to_owned(),
        );
        assert_eq!(c.lock("genomics", "alice").await.status, 200);
        let r = c
            .req("POST", "/v1/projects/genomics/resplit", Some("root"), None)
            .await;
        assert_eq!((r.status, r.code()), (409, "project_locked"));
        // Unlock: the admin half from a member is denied; a non-member does not see the project.
        let r = c.unlock_half("genomics", "bob", &admin_share).await;
        assert_eq!(r.status, 403, "{r:?}");
        let r = c.unlock_half("genomics", "carol", &member_share).await;
        assert_eq!(r.status, 404, "{r:?}");
        let r = c.unlock_half("nope", "root", &admin_share).await;
        assert_eq!(r.status, 404, "{r:?}");
        let r = c
            .req(
                "POST",
                "/v1/projects/genomics/unlock",
                Some("root"),
                Some(json!({"share": "not-a-share"})),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "malformed_share"));
        let r = c.unlock_half("genomics", "root", &admin_share).await;
        assert_eq!(
            (r.status, r.body["waiting_for"].clone()),
            (200, json!(["member"])),
            "{r:?}"
        );
        let r = c.get("/v1/projects", "bob").await;
        assert_eq!(r.body[0]["pending"], json!(["admin"]), "{r:?}");
        let r = c.unlock_half("genomics", "bob", &member_share).await;
        assert_eq!(
            (r.status, r.body["locked"].as_bool()),
            (200, Some(false)),
            "{r:?}"
        );
        // Events: registered callers stream; unregistered get 403.
        let _stream = Events::open(c, "carol").await;
        let r = c.req("GET", "/v1/events", Some("nobody"), None).await;
        assert_eq!((r.status, r.code()), (403, "unregistered"));
    });
}

#[test]
fn idle_policy_edits_stay_within_the_host_bounds() {
    rt().block_on(async {
        let w = world().await;
        let (c, vm) = (&w.c, w.vm.as_str());
        let patch = |who: &'static str, idle: serde_json::Value| {
            let c = c.clone();
            let path = format!("/v1/vms/{vm}");
            async move {
                c.req("PATCH", &path, Some(who), Some(json!({ "idle": idle })))
                    .await
            }
        };
        let r = patch("alice", json!({"after": "30m", "cpu_percent": 2.5})).await;
        assert_eq!(
            (r.status, r.body["change"].as_str()),
            (200, Some("updated")),
            "{r:?}"
        );
        assert_eq!(r.body["idle"]["after"], "30m");
        let r = patch("alice", json!({"after": "30m", "cpu_percent": 2.5})).await;
        assert_eq!(r.body["change"], "unchanged");
        let r = patch("alice", json!({"after": "48h"})).await;
        assert_eq!(
            (r.status, r.code()),
            (409, "idle_out_of_bounds"),
            "beyond max_after: {r:?}"
        );
        let r = patch("alice", json!({"enabled": false})).await;
        assert_eq!(
            (r.status, r.code()),
            (409, "idle_required"),
            "owners_may_disable is false: {r:?}"
        );
        let r = patch("alice", json!({"after": "ten"})).await;
        assert_eq!((r.status, r.code()), (400, "invalid_body"));
        let r = patch("alice", json!({"sleepy": true})).await;
        assert_eq!((r.status, r.code()), (400, "invalid_body"));
        c.req(
            "PUT",
            &format!("/v1/vms/{vm}/members/bob"),
            Some("alice"),
            Some(json!({"role": "user"})),
        )
        .await;
        let r = patch("bob", json!({"after": "1h"})).await;
        assert_eq!((r.status, r.code()), (403, "owner_required"));
        // Keepalive: owners and users.
        assert_eq!(
            c.req(
                "POST",
                &format!("/v1/vms/{vm}/keepalive"),
                Some("bob"),
                None
            )
            .await
            .status,
            200
        );
    });
}

#[test]
fn slow_event_reader_is_dropped_without_slowing_others() {
    rt().block_on(async {
        // The slow reader falls behind within the first few hundred events (its socket
        // buffer and its queue of 64 fill up), and is dropped then, with the notice queued as
        // its last frame; it reads only once the burst is over. The burst takes longer than
        // the default `write_timeout` (10s) on a slower store (PostgreSQL), which would close
        // the stalled connection, notice unsent: that is the other defence, against a peer
        // that never reads (adversity.rs). A minute here keeps this test about the queue.
        let w = world_with(Opts {
            limits: "write_timeout = \"60s\"\n".into(),
            ..Default::default()
        })
        .await;
        let (c, vm) = (&w.c, w.vm.as_str());
        // The slow reader sends its request and reads nothing until the burst is over.
        let mut slow = std::os::unix::net::UnixStream::connect(&w.d.socket).unwrap();
        slow.write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nVmwarden-User: alice\r\n\r\n")
            .unwrap();
        let mut fast = Events::open(c, "alice").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Enough events to fill the socket buffers and the reader's queue.
        let rounds = 2500;
        for _ in 0..rounds {
            c.req(
                "PUT",
                &format!("/v1/vms/{vm}/members/bob"),
                Some("alice"),
                Some(json!({"role": "user"})),
            )
            .await;
            c.unshare(vm, "alice", "bob").await;
        }
        // The fast reader got every one of them.
        let mut got = 0;
        while got < 2 * rounds {
            match tokio::time::timeout(Duration::from_secs(10), fast.rx.recv()).await {
                Ok(Some((k, _))) if k == "vm.shared" || k == "vm.unshared" => got += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        assert_eq!(got, 2 * rounds, "the fast reader lost events");
        // The slow one was cut off, and told why as its last event.
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![];
        let _ = slow.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("event: stream.dropped"), "no drop notice");
        let shared = text.matches("event: vm.shared").count();
        assert!(
            shared < rounds,
            "the slow reader was not dropped ({shared} events)"
        );
    });
}

/// 405 names the allowed methods; HEAD is answered 405 too (with no body); answers of known
/// size carry Content-Length instead of chunks, event streams stay chunked.
#[test]
fn http_details_allow_head_and_content_length() {
    let rt = rt();
    rt.block_on(async {
        let w = world().await;
        let sock = &w.d.socket;
        for (method, path, allow) in [
            ("HEAD", "/v1/vms", "get, post"),
            ("TRACE", "/v1/me", "get"),
            ("PUT", "/v1/health", "get"),
            ("OPTIONS", "/v1/vms/web", "get, patch, delete"),
            ("QUERY", "/v1/projects/genomics/members/bob", "put, delete"),
        ] {
            let (head, body) = raw_head_and_body(sock, method, path);
            assert!(head.starts_with("http/1.1 405"), "{method} {path}: {head}");
            assert!(
                head.contains(&format!("\r\nallow: {allow}")),
                "{method} {path}: {head}"
            );
            if method == "HEAD" {
                assert!(body.is_empty(), "a HEAD answer carries no body");
            } else {
                let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(p["code"], "method_not_allowed");
            }
        }
        for path in ["/v1/health", "/v1/openapi.json", "/v1/vms", "/v1/nope"] {
            let (head, body) = raw_head_and_body(sock, "GET", path);
            assert!(!head.contains("transfer-encoding"), "{path}: {head}");
            assert!(
                head.contains(&format!("\r\ncontent-length: {}", body.len())),
                "{path}: {head}"
            );
        }
        let (head, _) = {
            // An event stream has no length: it is chunked, and this client reads only its head.
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
            s.write_all(b"GET /v1/events HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            (String::from_utf8_lossy(&buf[..n]).to_lowercase(), ())
        };
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
    });
}
