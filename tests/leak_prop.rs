//! Property test over the real daemon: random sequences of share, unshare, attach, detach,
//! drive and VM creation and deletion, by random principals in two projects. Everything a
//! principal receives (answers to its own requests, errors, events, audit rows, lists and
//! views) is collected after every step, and must hold:
//! - no drive id, name, size or image name of a drive attached to a VM on which it is only
//!   a user (and which it does not own);
//! - nothing at all (name, VM ids, drive ids and names) of a project it is not a member of;
//! - no image file name (storage id) at all, for anyone.

mod common;
use common::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};

/// Principals; the last is the only member of the second project.
const PEOPLE: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
const GEN: &str = "gen";
const ZETA: &str = "zeta9";

#[derive(Debug, Clone)]
enum Op {
    Share {
        by: usize,
        vm: usize,
        to: usize,
        owner: bool,
    },
    Unshare {
        by: usize,
        vm: usize,
        who: usize,
    },
    Attach {
        by: usize,
        vm: usize,
        drive: usize,
    },
    Detach {
        by: usize,
        vm: usize,
        drive: usize,
    },
    CreateDrive {
        by: usize,
    },
    CreateVm {
        by: usize,
        drive: usize,
    },
    DeleteDrive {
        by: usize,
        drive: usize,
    },
    DeleteVm {
        by: usize,
        vm: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PEOPLE.len();
    prop_oneof![
        (p.clone(), 0..8usize, p.clone(), any::<bool>())
            .prop_map(|(by, vm, to, owner)| Op::Share { by, vm, to, owner }),
        (p.clone(), 0..8usize, p.clone()).prop_map(|(by, vm, who)| Op::Unshare { by, vm, who }),
        (p.clone(), 0..8usize, 0..12usize).prop_map(|(by, vm, drive)| Op::Attach { by, vm, drive }),
        (p.clone(), 0..8usize, 0..12usize).prop_map(|(by, vm, drive)| Op::Detach { by, vm, drive }),
        p.clone().prop_map(|by| Op::CreateDrive { by }),
        (p.clone(), 0..12usize).prop_map(|(by, drive)| Op::CreateVm { by, drive }),
        (p.clone(), 0..12usize).prop_map(|(by, drive)| Op::DeleteDrive { by, drive }),
        (p, 0..8usize).prop_map(|(by, vm)| Op::DeleteVm { by, vm }),
    ]
}

/// What the test created: ids with the identifiers that must not leak.
#[derive(Default)]
struct Known {
    vms: Vec<(String, &'static str)>,
    /// id, name, size, project.
    drives: Vec<(String, String, u64, &'static str)>,
    next: u64,
}

struct World {
    d: Daemon,
    c: Client,
    events: HashMap<&'static str, Events>,
    known: std::sync::Mutex<Known>,
    /// The path and body of the last request `apply` sent.
    last_request: std::sync::Mutex<String>,
    /// Drives each principal has owned at some point: what it saw then is not a leak.
    ever_owned: std::sync::Mutex<HashMap<&'static str, HashSet<String>>>,
}

fn project_of(who: usize) -> &'static str {
    if PEOPLE[who] == "erin" {
        ZETA
    } else {
        GEN
    }
}

/// Sends one request, remembering it: an answer may echo what its request named.
async fn send(
    w: &World,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<serde_json::Value>,
) -> Resp {
    *w.last_request.lock().unwrap() =
        format!("{method} {path} {}", body.clone().unwrap_or_default());
    w.c.req(method, path, user, body).await
}

/// Applies one operation; returns the raw answer (the performer receives it).
async fn apply(w: &World, op: &Op) -> (usize, String, Vec<u8>) {
    let pick_vm = |i: usize| {
        let k = w.known.lock().unwrap();
        k.vms
            .get(i % k.vms.len().max(1))
            .map(|v| v.0.clone())
            .unwrap_or_default()
    };
    let pick_drive = |i: usize| {
        let k = w.known.lock().unwrap();
        k.drives
            .get(i % k.drives.len().max(1))
            .map(|d| d.0.clone())
            .unwrap_or_default()
    };
    let (by, r) = match op {
        Op::Share { by, vm, to, owner } => (*by, send(w, "PUT", &format!("/v1/vms/{}/members/{}", pick_vm(*vm), PEOPLE[*to]), Some(PEOPLE[*by]),
            Some(json!({"role": if *owner { "owner" } else { "user" }, "confirm_drive_access": true}))).await),
        Op::Unshare { by, vm, who } => (*by, send(w, "DELETE", &format!("/v1/vms/{}/members/{}", pick_vm(*vm), PEOPLE[*who]), Some(PEOPLE[*by]), None).await),
        Op::Attach { by, vm, drive } => (*by, send(w, "PUT", &format!("/v1/vms/{}/drives/{}", pick_vm(*vm), pick_drive(*drive)), Some(PEOPLE[*by]), None).await),
        Op::Detach { by, vm, drive } => (*by, send(w, "DELETE", &format!("/v1/vms/{}/drives/{}", pick_vm(*vm), pick_drive(*drive)), Some(PEOPLE[*by]), None).await),
        Op::CreateDrive { by } => {
            let (name, size) = {
                let mut k = w.known.lock().unwrap();
                k.next += 1;
                (format!("dzq{}", k.next), 40 + k.next)
            };
            let r = send(w, "POST", "/v1/drives", Some(PEOPLE[*by]), Some(json!({"project": project_of(*by), "name": name, "size_mib": size}))).await;
            if r.status == 201 {
                w.known.lock().unwrap().drives.push((r.body["id"].as_str().unwrap().into(), name, size, project_of(*by)));
            }
            (*by, r)
        }
        Op::CreateVm { by, drive } => {
            let name = {
                let mut k = w.known.lock().unwrap();
                k.next += 1;
                format!("vzq{}", k.next)
            };
            let r = send(w, "POST", "/v1/vms", Some(PEOPLE[*by]), Some(json!({"name": name, "project": project_of(*by), "vcpus": 1, "memory_mib": 32, "drives": [pick_drive(*drive)]}))).await;
            if r.status == 201 {
                w.known.lock().unwrap().vms.push((r.body["id"].as_str().unwrap().into(), project_of(*by)));
            }
            (*by, r)
        }
        Op::DeleteDrive { by, drive } => (*by, send(w, "DELETE", &format!("/v1/drives/{}", pick_drive(*drive)), Some(PEOPLE[*by]), None).await),
        Op::DeleteVm { by, vm } => (*by, send(w, "DELETE", &format!("/v1/vms/{}", pick_vm(*vm)), Some(PEOPLE[*by]), None).await),
    };
    assert!(r.status < 500, "{op:?}: {r:?}");
    (
        by,
        format!("its answer to {op:?} {}", w.last_request.lock().unwrap()),
        r.raw,
    )
}

fn rows(d: &Daemon, sql: &str, arg: &str) -> HashSet<String> {
    d.sql(sql, &[arg.into()])
        .iter()
        .map(|r| r.text(0).unwrap())
        .collect()
}

/// What `who` may not receive now: (what, needle).
fn forbidden(w: &World, who: &str) -> Vec<(String, String)> {
    let k = w.known.lock().unwrap();
    let member_of: HashSet<String> = rows(
        &w.d,
        "SELECT project FROM project_members WHERE username = ?1",
        who,
    );
    let owned = w
        .ever_owned
        .lock()
        .unwrap()
        .get(who)
        .cloned()
        .unwrap_or_default();
    let user_of = rows(
        &w.d,
        "SELECT vm FROM vm_roles WHERE username = ?1 AND role = 'user'",
        who,
    );
    let attached: HashMap<String, String> =
        w.d.sql(
            "SELECT id, attached_to FROM drives WHERE attached_to IS NOT NULL",
            &[],
        )
        .iter()
        .map(|r| (r.text(0).unwrap(), r.text(1).unwrap()))
        .collect();
    let mut out = vec![];
    for p in [GEN, ZETA] {
        if !member_of.contains(p) {
            out.push((format!("project {p}"), format!("\"{p}\"")));
        }
    }
    for (id, p) in &k.vms {
        if !member_of.contains(*p) {
            out.push((format!("VM of {p}"), id.clone()));
        }
    }
    for (id, name, size, p) in &k.drives {
        let hidden_by_role =
            attached.get(id).is_some_and(|vm| user_of.contains(vm)) && !owned.contains(id);
        if !member_of.contains(*p) || hidden_by_role {
            out.push((format!("drive id of {p}"), id.clone()));
            out.push((format!("drive name of {p}"), format!("\"{name}\"")));
            out.push((format!("drive size of {p}"), format!("\"size_mib\":{size}")));
        }
    }
    for s in storage_rows(&w.d) {
        out.push(("image name".into(), s.trim_end_matches(".qcow2").to_owned()));
    }
    out
}

/// Adds the drives each principal owns now to what it ever owned.
fn note_owners(w: &World) {
    let mut ever = w.ever_owned.lock().unwrap();
    for who in PEOPLE {
        ever.entry(who).or_default().extend(rows(
            &w.d,
            "SELECT drive FROM drive_owners WHERE username = ?1",
            who,
        ));
    }
}

async fn check(w: &World, performer: usize, request: &str, answer: &[u8]) {
    let vms: Vec<String> = w
        .known
        .lock()
        .unwrap()
        .vms
        .iter()
        .map(|v| v.0.clone())
        .collect();
    for (i, who) in PEOPLE.iter().enumerate() {
        let mut got: Vec<(String, Vec<u8>)> = vec![];
        if i == performer {
            got.push((request.to_owned(), answer.to_vec()));
        }
        for p in [
            "/v1/vms",
            "/v1/drives",
            "/v1/audit",
            "/v1/projects",
            "/v1/me",
        ] {
            got.push((p.into(), w.c.get(p, who).await.raw));
        }
        for vm in &vms {
            for p in [
                format!("/v1/vms/{vm}"),
                format!("/v1/vms/{vm}/members"),
                format!("/v1/audit?vm={vm}"),
            ] {
                got.push((p.clone(), w.c.get(&p, who).await.raw));
            }
        }
        let ev = w.events.get(who).unwrap();
        got.push(("events".into(), ev.raw.lock().unwrap().clone().into_bytes()));
        ev.raw.lock().unwrap().clear();
        for (what, needle) in forbidden(w, who) {
            for (place, text) in &got {
                // An id the caller itself named, echoed back ("VM X not found"), teaches
                // it nothing.
                if place.contains(&needle) {
                    continue;
                }
                let text = String::from_utf8_lossy(text);
                assert!(
                    !text.contains(&needle),
                    "{who} received the {what} {needle} through {place}: {text}"
                );
            }
        }
    }
}

#[test]
fn nothing_reaches_a_principal_it_may_not_see() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(async {
        let d = Daemon::start(Opts::default());
        let c = d.client();
        users(
            &c,
            &[
                ("alice", "lab"),
                ("bob", "lab"),
                ("carol", "lab"),
                ("dave", "far"),
                ("erin", "lab"),
            ],
        )
        .await;
        let g = project(&c, GEN, &["alice", "bob", "carol", "dave"]).await;
        unlock(&c, GEN, &g, "alice").await;
        let z = project(&c, ZETA, &["erin"]).await;
        unlock(&c, ZETA, &z, "erin").await;
        let mut events = HashMap::new();
        for who in PEOPLE {
            events.insert(who, Events::open(&c, who).await);
        }
        let w = World {
            d,
            c,
            events,
            known: Default::default(),
            ever_owned: Default::default(),
            last_request: Default::default(),
        };
        // A drive and a VM for each of alice, bob and erin to start from.
        for by in [0usize, 1, 4] {
            apply(&w, &Op::CreateDrive { by }).await;
            let last = w.known.lock().unwrap().drives.len() - 1;
            apply(&w, &Op::CreateVm { by, drive: last }).await;
            apply(&w, &Op::CreateDrive { by }).await;
        }
        note_owners(&w);
        w
    });
    let cfg = ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(cfg, |(ops in proptest::collection::vec(op(), 1..14))| {
        rt.block_on(async {
            for op in &ops {
                let (by, request, answer) = apply(&w, op).await;
                note_owners(&w);
                // Events of this step reach the streams before the reads below are answered.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                check(&w, by, &request, &answer).await;
            }
        });
    });
}
