//! The API contract, checked from the outside against a real daemon on real libvirt:
//! schemathesis (pinned, in the virtualenv `make contract-tools` builds under target/) runs
//! every check with its default settings and no configuration file, as an admin and as a
//! plain user (an orchestrator acting for alice); then a client generated from the document
//! by openapi-python-client runs a scenario (user, project, unlock, drive, VM, start, stop).
//!
//! The daemon is reached over a TCP bridge on 127.0.0.1 (the socket's peer is this test's
//! process, uid 0). `VMWARDEN_CONTRACT_SEED` and `VMWARDEN_CONTRACT_EXAMPLES` change the seed
//! (default 1) and the examples per operation (default 12).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn venv_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/contract-venv/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make contract-tools` (part of `make test`)",
        p.display()
    );
    p
}

/// Copies bytes between 127.0.0.1:<port> and the daemon's socket, one Unix connection per
/// TCP connection, on a thread of its own.
fn bridge(socket: &Path) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                });
            }
        });
    });
    port
}

fn knob(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One schemathesis run; its whole output on failure.
fn schemathesis(port: u16, dir: &Path, header: Option<&str>) {
    let seed = knob("VMWARDEN_CONTRACT_SEED", 1);
    let examples = knob("VMWARDEN_CONTRACT_EXAMPLES", 12);
    let base = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(venv_bin("schemathesis"));
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .args(["run", &format!("{base}/v1/openapi.json"), "--url", &base])
        .args(["--checks", "all", "--seed", &seed.to_string()])
        .args(["--max-examples", &examples.to_string()])
        .args(["--generation-database", "none", "--no-color"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "schemathesis ({}) failed with seed {seed}:\n{text}",
        header.unwrap_or("as root")
    );
}

/// A world to test in: alice and bob in one team, project `lab` (unlocked) with a drive and
/// a VM of alice's, and small host limits so generated VMs stay cheap to start.
async fn world() -> World {
    let opts = Opts {
        limits: "max_vcpus = 2\nmax_memory_mib = 128\nmax_drive_mib = 64\n".into(),
        quiet: true,
        ..Default::default()
    };
    Fixture::new(opts)
        .users(&[("alice", "ops"), ("bob", "ops"), ("carol", "lab")])
        .project("lab", &["alice", "bob"])
        .drive("alice", "lab", "disk")
        .vm("alice", "lab", "web", &["disk"])
        .build()
        .await
}

#[test]
fn schemathesis_finds_nothing_as_admin_and_as_user() {
    let rt = mt();
    let w = rt.block_on(world());
    let port = bridge(&w.d.socket);
    let dir = tempdir();
    schemathesis(port, &dir, None);
    schemathesis(port, &dir, Some("Vmwarden-User: alice"));
    // The daemon is still whole: it answers, and said nothing undeclared.
    let r = rt.block_on(w.c.get("/v1/me", "alice"));
    assert_eq!(r.status, 200);
    assert!(
        !w.d.log_text()
            .contains("not declared in the OpenAPI document"),
        "{}",
        w.d.log_text()
    );
}

/// A client generated from the served document (openapi-python-client, warnings fatal) runs
/// a scenario from a new user to a stopped VM, over the socket itself.
#[test]
fn a_client_generated_from_the_document_works() {
    let rt = mt();
    let d = Daemon::start(Opts {
        quiet: true,
        ..Default::default()
    });
    let c = d.client();
    let doc = rt.block_on(c.get("/v1/openapi.json", "root"));
    assert_eq!(doc.status, 200);
    let dir = tempdir();
    std::fs::write(dir.join("openapi.json"), doc.body.to_string()).unwrap();
    let bin = venv_bin("openapi-python-client");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&bin)
        .current_dir(&dir)
        .env("PATH", &path)
        .args(["generate", "--path", "openapi.json", "--meta", "none"])
        .args(["--output-path", "vmw", "--fail-on-warning"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "generation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract_client.py");
    let out = Command::new(venv_bin("python"))
        .arg(&script)
        .arg(&dir)
        .arg(&d.socket)
        .arg("x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the scenario failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("scenario passed"));
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmw-contract-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
