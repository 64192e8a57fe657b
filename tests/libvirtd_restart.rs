//! libvirtd stops while the daemon runs: hypervisor requests get 503 quickly, never hang; when
//! libvirtd is back, requests succeed again without restarting vmwardend.
//! This binary is alone because it stops the host's libvirtd (cargo runs test binaries one
//! after another).

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn libvirtd_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn start_libvirtd() {
    if !libvirtd_running() {
        // As scripts/setup-host.sh does: under a subreaper, so dead QEMUs are reaped at once.
        // setsid -f forks, so the command returns and libvirtd lives on in its own session.
        let st = Command::new("setsid")
            .args(["-f", "tini", "-s", "--", "libvirtd"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if Command::new("virsh")
            .args(["-c", "qemu:///system", "version"])
            .output()
            .unwrap()
            .status
            .success()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("libvirtd did not come back");
}

/// The tests of this binary stop the one libvirtd: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Restarts libvirtd even when the test fails, so later tests find it running.
struct Restore;
impl Drop for Restore {
    fn drop(&mut self) {
        start_libvirtd();
    }
}

#[test]
fn dead_libvirtd_gives_503_then_recovers_without_restart() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rt().block_on(async {
        let d = Daemon::start(Opts::default());
        let c = d.client();
        users(&c, &[("alice", "lab")]).await;
        let s = project(&c, "genomics", &["alice"]).await;
        unlock(&c, "genomics", &s, "alice").await;
        let drv = drive(&c, "alice", "genomics", "boot").await;
        write_boot_sector(&d, &s, "genomics", &drv, &boot_sector("BACK", false));
        let vm = vm(&c, "alice", "genomics", "web", &[&drv]).await;
        assert_eq!(
            c.req("GET", "/v1/health", None, None).await.body["status"],
            "ok"
        );

        let _restore = Restore;
        assert!(Command::new("pkill")
            .args(["-x", "libvirtd"])
            .status()
            .unwrap()
            .success());
        while libvirtd_running() {
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..3 {
            // A guard against hanging, not a speed assertion.
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                c.req("POST", &format!("/v1/vms/{vm}/start"), Some("alice"), None),
            )
            .await
            .expect("request hung while libvirtd was down");
            assert_eq!(
                (r.status, r.code()),
                (503, "hypervisor_unavailable"),
                "{r:?}"
            );
            assert_eq!(r.retry_after.as_deref(), Some("5"));
        }
        let h = c.req("GET", "/v1/health", None, None).await;
        assert_eq!(
            (
                h.status,
                h.body["status"].as_str(),
                h.body["hypervisor"].as_str()
            ),
            (200, Some("degraded"), Some("unavailable"))
        );
        // Requests that need only the store keep working.
        assert_eq!(c.get("/v1/vms", "alice").await.status, 200);

        start_libvirtd();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut started = None;
        while Instant::now() < deadline {
            let r = c.start(&vm, "alice").await;
            if r.status == 200 {
                started = Some(r);
                break;
            }
            assert_eq!(r.status, 503, "{r:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            started.is_some(),
            "vmwardend did not recover after libvirtd came back"
        );
        assert!(wait_for_file_containing(
            &serial_log(&d, &vm),
            "BACK",
            Duration::from_secs(20)
        ));
        // Lifecycle events were registered again on the new connection: a QEMU killed now
        // still shows as stopped without any request touching the VM.
        let mut ev = Events::open(&c, "alice").await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(qemu_pid(&vm)),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let st = ev
            .wait_for("vm.state", &[&vm, "\"stopped\""], Duration::from_secs(10))
            .await;
        assert!(st.is_some(), "no stopped event after libvirtd came back");
    });
}

/// libvirtd killed at several moments of a start, and back a second later: whatever the
/// moment, the answer, the recorded state, the domain and the audit row agree.
#[test]
fn libvirtd_killed_during_a_start_leaves_answer_state_and_audit_agreeing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = Daemon::start(Opts::default());
        let c = d.client();
        users(&c, &[("alice", "lab")]).await;
        let s = project(&c, "genomics", &["alice"]).await;
        unlock(&c, "genomics", &s, "alice").await;
        let drv = drive(&c, "alice", "genomics", "boot").await;
        write_boot_sector(&d, &s, "genomics", &drv, &boot_sector("KILLED", false));
        let vm = vm(&c, "alice", "genomics", "web", &[&drv]).await;
        let _restore = Restore;
        for delay_ms in [0u64, 40, 120, 300] {
            let (c2, v2) = (c.clone(), vm.clone());
            let start = tokio::spawn(async move {
                c2.start(&v2, "alice").await
            });
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let _ = Command::new("pkill").args(["-9", "-x", "libvirtd"]).status();
            while libvirtd_running() {
                std::thread::sleep(Duration::from_millis(20));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            start_libvirtd();
            let r = tokio::time::timeout(Duration::from_secs(60), start)
                .await
                .expect("the start hung")
                .unwrap();
            // Let the reconciliation after the reconnection run.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let running = domain_running(&vm);
            let state = c.get(&format!("/v1/vms/{vm}"), "alice").await.body["state"].clone();
            let rows = c.get(&format!("/v1/audit?vm={vm}"), "root").await.body;
            let rows = rows.as_array().unwrap();
            // Newest first: the rows after this start's own row come before it.
            let at = rows.iter().position(|e| e["action"] == "vm.start").unwrap();
            let (later, last_start) = (&rows[..at], &rows[at]);
            let seen: Vec<String> = d
                .log_text()
                .lines()
                .filter(|l| l.contains("lifecycle") || l.contains("reconcil"))
                .map(str::to_owned)
                .collect();
            let ctx = format!(
                "delay {delay_ms} ms: answer {} {}, running {running}, state {state}, audit {rows:?}, daemon {seen:#?}",
                r.status,
                r.code()
            );
            // The state matches libvirt, and the answer matches the start's own row.
            assert_eq!(state == "running", running, "{ctx}");
            assert_eq!(r.status == 200, last_start["outcome"] == "ok", "{ctx}");
            // Whatever happened to the domain since (libvirtd, restarted, may end a QEMU it
            // was starting) is recorded after it, by the daemon.
            let started = r.status == 200;
            if started != running {
                let want = if running { "state=running" } else { "state=stopped" };
                assert!(
                    later.iter().any(|e| e["actor"] == "vmwardend"
                        && e["detail"].as_str().unwrap_or("").starts_with(want)),
                    "{ctx}"
                );
            }
            let r = c
                .req(
                    "POST",
                    &format!("/v1/vms/{vm}/stop"),
                    Some("alice"),
                    Some(serde_json::json!({"force": true})),
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
        }
    });
}
