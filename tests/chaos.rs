//! Chaos, bounded: 50 rounds of a random loop of drive creation, VM creation, start, stop,
//! share, unshare, re-key, lock and unlock, each round cut by kill -9 of the daemon at a
//! random moment. After every restart: the project opens with the newest share pair a
//! client read (and no older one), every VM with drives starts, no image without a row and
//! no row without an image, no libvirt secret of ours, and the audit log holds every
//! mutation that was answered 2xx.

mod common;
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const ROUNDS: usize = 50;

/// What the test knows happened: answered mutations as (audit action, audit target).
#[derive(Default)]
struct Model {
    acked: Vec<(&'static str, String)>,
    pairs: Vec<Shares>,
    vms: Vec<String>,
    drives: Vec<String>,
}

fn mt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// One random operation; records it in the model when it was answered 2xx.
async fn step(c: &Client, m: &std::sync::Mutex<Model>, rng: &mut rand::rngs::StdRng) {
    let pick = rng.gen_range(0..9);
    let (vm, drive) = {
        let m = m.lock().unwrap();
        let vm = (!m.vms.is_empty()).then(|| m.vms[rng.gen_range(0..m.vms.len())].clone());
        let drive = m.drives.last().cloned();
        (vm, drive)
    };
    let ok = |r: &Option<Resp>| r.as_ref().is_some_and(|r| (200..300).contains(&r.status));
    match (pick, vm) {
        (0, _) => {
            if m.lock().unwrap().drives.len() >= 6 {
                return;
            }
            let name = format!("d{}", rng.gen::<u32>());
            let r = c
                .try_req(
                    "POST",
                    "/v1/drives",
                    Some("alice"),
                    Some(json!({"project": "genomics", "name": name, "size_mib": 16})),
                )
                .await;
            if ok(&r) {
                let id = r.unwrap().body["id"].as_str().unwrap().to_owned();
                let mut m = m.lock().unwrap();
                m.acked.push(("drive.create", id.clone()));
                m.drives.push(id);
            }
        }
        (1, _) => {
            let Some(drive) = drive else { return };
            if m.lock().unwrap().vms.len() >= 4 {
                return;
            }
            let name = format!("v{}", rng.gen::<u32>());
            let r = c
                .try_req(
                    "POST",
                    "/v1/vms",
                    Some("alice"),
                    Some(json!({"name": name, "project": "genomics", "vcpus": 1, "memory_mib": 32, "drives": [drive]})),
                )
                .await;
            if ok(&r) {
                let id = r.unwrap().body["id"].as_str().unwrap().to_owned();
                let mut m = m.lock().unwrap();
                m.acked.push(("vm.create", id.clone()));
                m.vms.push(id);
                m.drives.pop();
            }
        }
        (2, Some(vm)) => {
            let r = c
                .try_req("POST", &format!("/v1/vms/{vm}/start"), Some("alice"), None)
                .await;
            if ok(&r) {
                m.lock().unwrap().acked.push(("vm.start", vm));
            }
        }
        (3, Some(vm)) => {
            let r = c
                .try_req(
                    "POST",
                    &format!("/v1/vms/{vm}/stop"),
                    Some("alice"),
                    Some(json!({"force": true})),
                )
                .await;
            // A stop of a stopped VM changes nothing and records nothing, and the answer
            // does not tell the two apart: stops are not counted.
            let _ = r;
        }
        (4, Some(vm)) => {
            let role = if rng.gen_bool(0.5) { "user" } else { "owner" };
            let r = c
                .try_req(
                    "PUT",
                    &format!("/v1/vms/{vm}/members/bob"),
                    Some("alice"),
                    Some(json!({"role": role, "confirm_drive_access": true})),
                )
                .await;
            if ok(&r) {
                m.lock().unwrap().acked.push(("vm.share", "bob".into()));
            }
        }
        (5, Some(vm)) => {
            let r = c
                .try_req(
                    "DELETE",
                    &format!("/v1/vms/{vm}/members/bob"),
                    Some("alice"),
                    None,
                )
                .await;
            if ok(&r) {
                m.lock().unwrap().acked.push(("vm.unshare", "bob".into()));
            }
        }
        (6, _) => {
            let r = c
                .try_req("POST", "/v1/projects/genomics/resplit", Some("root"), None)
                .await;
            if ok(&r) {
                let b = r.unwrap().body;
                let mut m = m.lock().unwrap();
                m.acked.push(("project.resplit", "genomics".into()));
                m.pairs.push(Shares {
                    admin: b["admin_share"].as_str().unwrap().to_owned(),
                    member: b["member_share"].as_str().unwrap().to_owned(),
                });
            }
        }
        (7, _) => {
            let r = c
                .try_req("POST", "/v1/projects/genomics/lock", Some("alice"), None)
                .await;
            if ok(&r) {
                m.lock()
                    .unwrap()
                    .acked
                    .push(("project.lock", "genomics".into()));
            }
        }
        (8, _) => {
            let pair = m
                .lock()
                .unwrap()
                .pairs
                .last()
                .map(|p| (p.admin.clone(), p.member.clone()));
            let Some((a, mem)) = pair else { return };
            for (who, share) in [("root", a), ("alice", mem)] {
                let r = c
                    .try_req(
                        "POST",
                        "/v1/projects/genomics/unlock",
                        Some(who),
                        Some(json!({"share": share})),
                    )
                    .await;
                if ok(&r) {
                    m.lock()
                        .unwrap()
                        .acked
                        .push(("project.unlock", "genomics".into()));
                }
            }
        }
        _ => {}
    }
}

async fn unlock_with(c: &Client, s: &Shares) -> (u16, String) {
    let r = c.unlock_half("genomics", "root", &s.admin).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.unlock_half("genomics", "alice", &s.member).await;
    (r.status, r.code().to_owned())
}

async fn check(d: &Daemon, c: &Client, m: &std::sync::Mutex<Model>, round: usize) {
    let (pairs, vms, acked) = {
        let m = m.lock().unwrap();
        let pairs: Vec<Shares> = m
            .pairs
            .iter()
            .map(|p| Shares {
                admin: p.admin.clone(),
                member: p.member.clone(),
            })
            .collect();
        (pairs, m.vms.clone(), m.acked.clone())
    };
    // The newest pair a client read opens the project; the one before it no longer does.
    let lock = || async {
        let r = c.lock("genomics", "alice").await;
        assert_eq!(r.status, 200, "round {round}: {r:?}");
    };
    lock().await;
    let newest = pairs.last().unwrap();
    let (s, code) = unlock_with(c, newest).await;
    assert_eq!(
        s, 200,
        "round {round}: the newest pair does not open the project: {code}"
    );
    if pairs.len() >= 2 {
        lock().await;
        let (s, code) = unlock_with(c, &pairs[pairs.len() - 2]).await;
        assert_eq!(
            (s, code.as_str()),
            (409, "invalid_share"),
            "round {round}: an old pair still opens"
        );
        let (s, code) = unlock_with(c, newest).await;
        assert_eq!(s, 200, "round {round}: {code}");
    }
    // Every VM with drives starts (or runs already).
    for vm in &vms {
        let r = c.start(vm, "alice").await;
        assert!(
            r.status == 200 || (r.status, r.code()) == (409, "vm_running"),
            "round {round}: {vm} does not start: {r:?}"
        );
        assert!(domain_running(vm), "round {round}: {vm}");
        let r = c.stop(vm, "alice", true).await;
        assert_eq!(r.status, 200, "round {round}: {r:?}");
    }
    // No image without a row, no row without an image.
    let mut files = image_files(d);
    let mut rows = storage_rows(d);
    files.sort();
    rows.sort();
    assert_eq!(files, rows, "round {round}");
    // No libvirt secret of ours.
    let drives: Vec<String> = d
        .sql("SELECT id FROM drives", &[])
        .iter()
        .map(|r| r.text(0).unwrap())
        .collect();
    let refs: Vec<&str> = drives.iter().map(String::as_str).collect();
    assert!(our_secrets(&refs).is_empty(), "round {round}");
    // Every answered mutation is in the audit log.
    let rows = audit_rows(c, "").await;
    let mut audited: HashMap<(String, String), usize> = HashMap::new();
    for e in &rows {
        if e["outcome"] == "ok" {
            *audited
                .entry((
                    e["action"].as_str().unwrap().into(),
                    e["target"].as_str().unwrap().into(),
                ))
                .or_default() += 1;
        }
    }
    let mut wanted: HashMap<(String, String), usize> = HashMap::new();
    for (a, t) in &acked {
        *wanted.entry(((*a).into(), t.clone())).or_default() += 1;
    }
    for (k, n) in wanted {
        let have = audited.get(&k).copied().unwrap_or(0);
        assert!(
            have >= n,
            "round {round}: {k:?} answered {n} times, audited {have}"
        );
    }
}

#[test]
fn kill9_at_random_points_loses_nothing_answered() {
    let seed: u64 = std::env::var("VMWARDEN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4a0);
    eprintln!("chaos seed {seed} (VMWARDEN_CHAOS_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    mt().block_on(async {
        let mut d = Daemon::start(Opts::default());
        let c = d.client();
        users(&c, &[("alice", "lab"), ("bob", "lab")]).await;
        let s0 = project(&c, "genomics", &["alice", "bob"]).await;
        unlock(&c, "genomics", &s0, "alice").await;
        let m = std::sync::Arc::new(std::sync::Mutex::new(Model {
            pairs: vec![s0],
            ..Default::default()
        }));
        for round in 0..ROUNDS {
            let (c2, m2) = (c.clone(), m.clone());
            let mut task_rng = rand::rngs::StdRng::seed_from_u64(rng.gen());
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop2 = stop.clone();
            // The work ends its step rather than being cancelled: an answer it read must
            // reach the model (a share pair read is a pair delivered).
            let work = tokio::spawn(async move {
                while !stop2.load(std::sync::atomic::Ordering::Acquire) {
                    step(&c2, &m2, &mut task_rng).await;
                }
            });
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..600))).await;
            d.kill9();
            stop.store(true, std::sync::atomic::Ordering::Release);
            work.await.unwrap();
            d.spawn();
            check(&d, &c, &m, round).await;
        }
    });
}
