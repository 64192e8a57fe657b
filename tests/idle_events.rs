//! Idle shutdown on real QEMU, lifecycle events from libvirt, the SSE stream and metrics.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const IDLE: &str = r#"after = "8s"
warn_before = "4s"
sample_interval = "1s"
shutdown_timeout = "1s"
cpu_percent = 20.0
"#;

/// alice owns one VM per (marker, spin) in project "genomics" (bob and carol are members);
/// each boots a sector that prints its marker, then halts or spins.
async fn setup(opts: Opts, sectors: &[(&str, bool)]) -> (World, Vec<String>) {
    let mut f = Fixture::new(opts)
        .users(&[("alice", "lab"), ("bob", "lab"), ("carol", "lab")])
        .project("genomics", &["alice", "bob", "carol"]);
    for (i, (marker, spin)) in sectors.iter().enumerate() {
        let (drv, vm) = (format!("boot{i}"), format!("vm{i}"));
        f = if *spin {
            f.spinning_drive("alice", "genomics", &drv, marker)
        } else {
            f.boot_drive("alice", "genomics", &drv, marker)
        };
        f = f.vm("alice", "genomics", &vm, &[&drv]);
    }
    let w = f.build().await;
    let vms = (0..sectors.len())
        .map(|i| w.vm(&format!("vm{i}")))
        .collect();
    (w, vms)
}

#[test]
fn halting_vm_is_warned_kept_alive_then_shut_down_while_spinning_vm_runs() {
    rt().block_on(async {
        let (w, vms) = setup(
            Opts {
                idle: IDLE.into(),
                ..Default::default()
            },
            &[("HALT", false), ("SPIN", true)],
        )
        .await;
        let c = w.c.clone();
        let (halt, spin) = (&vms[0], &vms[1]);
        let mut ev = Events::open(&c, "alice").await;
        for vm in &vms {
            assert_eq!(c.start(vm, "alice").await.status, 200);
        }
        // The halting VM is warned with a deadline.
        let w = ev
            .wait_for("vm.idle_warning", &[halt], Duration::from_secs(30))
            .await
            .expect("no idle warning");
        let deadline = w["data"]["deadline_ms"].as_i64().unwrap();
        let status = c.get(&format!("/v1/vms/{halt}"), "alice").await;
        assert!(
            status.body["idle_status"]["shutdown_at_ms"]
                .as_i64()
                .is_some(),
            "{status:?}"
        );
        // A keepalive during the warning buys another full period.
        assert_eq!(
            c.req(
                "POST",
                &format!("/v1/vms/{halt}/keepalive"),
                Some("alice"),
                None
            )
            .await
            .status,
            200
        );
        let after_keepalive = c.get(&format!("/v1/vms/{halt}"), "alice").await;
        let new_deadline = after_keepalive.body["idle_status"]["shutdown_at_ms"]
            .as_i64()
            .unwrap();
        assert!(
            new_deadline > deadline,
            "keepalive did not move the deadline"
        );
        let wait_past_old = (deadline - vmwarden::store::now_ms() + 1500).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait_past_old)).await;
        assert!(domain_running(halt), "shut down despite the keepalive");
        // Then it is shut down for real, with reason idle.
        ev.wait_for("vm.idle_shutdown", &[halt], Duration::from_secs(30))
            .await
            .expect("no idle shutdown");
        let st = ev
            .wait_for("vm.state", &[halt, "\"stopped\""], Duration::from_secs(15))
            .await
            .expect("no stopped state");
        assert_eq!(st["data"]["state"], "stopped");
        let r = c.get(&format!("/v1/vms/{halt}"), "alice").await;
        assert_eq!(
            (r.body["state"].as_str(), r.body["state_reason"].as_str()),
            (Some("stopped"), Some("idle"))
        );
        assert!(!domain_running(halt));
        let audit = c.get(&format!("/v1/audit?vm={halt}"), "root").await;
        assert!(
            audit
                .body
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == "vm.idle_shutdown"),
            "{audit:?}"
        );
        // The spinning VM never got a warning and still runs.
        assert!(domain_running(spin));
        let raw = ev.raw.lock().unwrap().clone();
        assert!(
            !raw.split("\n\n")
                .any(|b| b.contains("vm.idle_") && b.contains(spin.as_str())),
            "the spinning VM was treated as idle: {raw}"
        );
        let m = c.get("/metrics", "root").await;
        let text = String::from_utf8_lossy(&m.raw);
        assert!(text.contains("vmwarden_idle_shutdowns_total 1"), "{text}");
    });
}

#[test]
fn killed_qemu_shows_stopped_within_two_seconds() {
    rt().block_on(async {
        let (w, vms) = setup(Opts::default(), &[("KILL", false)]).await;
        let c = w.c.clone();
        let vm = &vms[0];
        let mut ev = Events::open(&c, "alice").await;
        assert_eq!(c.start(vm, "alice").await.status, 200);
        let pid = qemu_pid(vm);
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let st = ev
            .wait_for("vm.state", &[vm, "\"stopped\""], Duration::from_secs(2))
            .await
            .expect("no vm.state within 2 s of the kill");
        assert_eq!(st["data"]["state"], "stopped");
        let reason = st["data"]["reason"].as_str().unwrap().to_owned();
        assert!(
            ["qemu_exited", "crashed", "destroyed"].contains(&reason.as_str()),
            "{reason}"
        );
        eprintln!(
            "stopped event {:?} after the kill, reason {reason}",
            killed.elapsed()
        );
        let r = c.get(&format!("/v1/vms/{vm}"), "alice").await;
        assert_eq!(
            (r.body["state"].as_str(), r.body["state_reason"].as_str()),
            (Some("stopped"), Some(reason.as_str()))
        );
    });
}

#[test]
fn event_stream_is_filtered_per_caller() {
    rt().block_on(async {
        let (w, vms) = setup(Opts::default(), &[("SSE", false)]).await;
        let c = w.c.clone();
        let vm = &vms[0];
        // bob becomes a user, carol stays an outsider (member of the project, no role).
        let mut owner = Events::open(&c, "alice").await;
        let user = Events::open(&c, "bob").await;
        let outsider = Events::open(&c, "carol").await;
        let r = c
            .req(
                "PUT",
                &format!("/v1/vms/{vm}/members/bob"),
                Some("alice"),
                Some(json!({"role": "user"})),
            )
            .await;
        assert_eq!(r.status, 200);
        let extra = drive(&c, "alice", "genomics", "extra").await;
        assert_eq!(
            c.req(
                "PUT",
                &format!("/v1/vms/{vm}/drives/{extra}"),
                Some("alice"),
                None
            )
            .await
            .status,
            200
        );
        assert_eq!(c.start(vm, "bob").await.status, 200);
        assert_eq!(c.stop(vm, "bob", true).await.status, 200);
        assert_eq!(
            c.req(
                "DELETE",
                &format!("/v1/vms/{vm}/drives/{extra}"),
                Some("alice"),
                None
            )
            .await
            .status,
            200
        );
        // The owner sees the drive events with the drive; wait for the last one.
        let det = owner
            .wait_for("drive.detached", &[vm], Duration::from_secs(5))
            .await
            .expect("owner missed drive.detached");
        assert_eq!(det["drive"], extra.as_str());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let u = user.raw.lock().unwrap().clone();
        assert!(u.contains("vm.shared") && u.contains("vm.state"), "{u}");
        assert!(!u.contains("drive."), "drive events reached a user: {u}");
        assert!(!u.contains(&extra), "user stream leaks a drive id: {u}");
        for id in w.d.state().join("drives").read_dir().unwrap() {
            let name = id
                .unwrap()
                .file_name()
                .to_string_lossy()
                .replace(".qcow2", "");
            assert!(!u.contains(&name), "user stream leaks drive {name}");
        }
        // Deleting the VM reaches its members, not the outsider.
        assert_eq!(
            c.req("DELETE", &format!("/v1/vms/{vm}"), Some("alice"), None)
                .await
                .status,
            200
        );
        assert!(owner
            .wait_for("vm.deleted", &[vm], Duration::from_secs(5))
            .await
            .is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(user.raw.lock().unwrap().contains("vm.deleted"));
        let o = outsider.raw.lock().unwrap().clone();
        assert!(!o.contains("event:"), "outsider got events: {o}");
    });
}

#[test]
fn metrics_expose_states_launches_requests_latency_and_libvirt() {
    rt().block_on(async {
        let (w, vms) = setup(Opts::default(), &[("MET", false)]).await;
        let c = w.c.clone();
        assert_eq!(c.req("POST", &format!("/v1/vms/{}/start", vms[0]), Some("alice"), None).await.status, 200);
        c.req("POST", &format!("/v1/vms/{}/start", vms[0]), Some("alice"), None).await;
        let m = c.get("/metrics", "root").await;
        assert_eq!(m.status, 200);
        let t = String::from_utf8_lossy(&m.raw);
        for needle in [
            "vmwarden_vms{state=\"running\"} 1",
            "vmwarden_launches_total{code=\"ok\"} 1",
            "vmwarden_launches_total{code=\"vm_running\"} 1",
            "vmwarden_http_requests_total{method=\"POST\",route=\"/v1/vms/{id}/start\",status=\"409\"} 1",
            "vmwarden_http_request_duration_seconds_bucket{route=\"/v1/vms/{id}/start\",le=\"+Inf\"} 2",
            "vmwarden_idle_shutdowns_total 0",
            "vmwarden_libvirt_connected 1",
        ] {
            assert!(t.contains(needle), "missing {needle} in\n{t}");
        }
    });
}

/// A VM whose idle period is shorter than the host's warning lead time, and whose guest
/// ignores ACPI (the shutdown waits out `shutdown_timeout` while samples keep coming): it is
/// warned first, then shut down exactly once (one event, one audit row, one count).
#[test]
fn short_idle_period_warns_first_and_shuts_down_once() {
    rt().block_on(async {
        let (w, vms) = setup(Opts {
            idle: "after = \"20s\"\nwarn_before = \"10s\"\nsample_interval = \"1s\"\nshutdown_timeout = \"3s\"\ncpu_percent = 20.0\n".into(),
            ..Default::default()
        }, &[("SHORT", false)]).await;
        let c = w.c.clone();
        let vm = &vms[0];
        let path = format!("/v1/vms/{vm}");
        let patch = |after: &str| {
            c.req(
                "PATCH",
                &path,
                Some("alice"),
                Some(json!({"idle": {"after": after}})),
            )
        };
        let r = patch("1s").await;
        assert_eq!((r.status, r.code()), (409, "idle_out_of_bounds"), "{r:?}");
        assert_eq!(patch("3s").await.status, 200);
        let mut ev = Events::open(&c, "alice").await;
        assert_eq!(
            c.start(vm, "alice").await
                .status,
            200
        );
        ev.wait_for("vm.state", &[vm, "\"stopped\""], Duration::from_secs(40))
            .await
            .expect("never shut down");
        // Samples go on for a while after the stop; none may decide again.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let raw = ev.raw.lock().unwrap().clone();
        let kinds: Vec<&str> = raw
            .split("\n\n")
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("event: ")))
            .filter(|k| k.starts_with("vm.idle_"))
            .collect();
        assert_eq!(kinds, ["vm.idle_warning", "vm.idle_shutdown"], "{raw}");
        let audit = c.get(&format!("/v1/audit?vm={vm}"), "root").await;
        let shutdowns = audit
            .body
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "vm.idle_shutdown")
            .count();
        assert_eq!(shutdowns, 1, "{audit:?}");
        let m = c.get("/metrics", "root").await;
        assert!(String::from_utf8_lossy(&m.raw).contains("vmwarden_idle_shutdowns_total 1"));
    });
}
