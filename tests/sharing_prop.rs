//! Property test over the real daemon: random sequences of share, unshare, membership, attach
//! and detach. After every step: no caller receives the id of a drive it does not own (so a
//! user of a VM never sees its drives), every VM keeps at least one owner, and nothing answers
//! with a server error.

mod common;
use common::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashSet;

const PEOPLE: [&str; 4] = ["alice", "bob", "carol", "dave"];

#[derive(Debug, Clone)]
enum Op {
    Share {
        by: usize,
        vm: usize,
        to: usize,
        owner: bool,
        confirm: bool,
    },
    Unshare {
        by: usize,
        vm: usize,
        who: usize,
    },
    Member {
        who: usize,
        add: bool,
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
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PEOPLE.len();
    prop_oneof![
        (
            p.clone(),
            0..3usize,
            p.clone(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(by, vm, to, owner, confirm)| Op::Share {
                by,
                vm,
                to,
                owner,
                confirm
            }),
        (p.clone(), 0..3usize, p.clone()).prop_map(|(by, vm, who)| Op::Unshare { by, vm, who }),
        (p.clone(), any::<bool>()).prop_map(|(who, add)| Op::Member { who, add }),
        (p.clone(), 0..3usize, 0..3usize).prop_map(|(by, vm, drive)| Op::Attach { by, vm, drive }),
        (p, 0..3usize, 0..3usize).prop_map(|(by, vm, drive)| Op::Detach { by, vm, drive }),
    ]
}

struct World {
    d: Daemon,
    c: Client,
    vms: Vec<String>,
    drives: Vec<String>,
}

fn owned_drives(d: &Daemon, user: &str) -> HashSet<String> {
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    let mut st = conn
        .prepare("SELECT drive FROM drive_owners WHERE user = ?1")
        .unwrap();
    st.query_map([user], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn owners_per_vm(d: &Daemon) -> Vec<i64> {
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    let mut st = conn
        .prepare("SELECT (SELECT COUNT(*) FROM vm_roles r WHERE r.vm = v.id AND r.role = 'owner') FROM vms v")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

async fn apply(w: &World, op: &Op) -> u16 {
    let c = &w.c;
    let r = match op {
        Op::Share { by, vm, to, owner, confirm } => {
            c.req("PUT", &format!("/v1/vms/{}/members/{}", w.vms[*vm], PEOPLE[*to]), Some(PEOPLE[*by]),
                Some(json!({"role": if *owner { "owner" } else { "user" }, "confirm_drive_access": confirm}))).await
        }
        Op::Unshare { by, vm, who } => c.req("DELETE", &format!("/v1/vms/{}/members/{}", w.vms[*vm], PEOPLE[*who]), Some(PEOPLE[*by]), None).await,
        Op::Member { who, add } => {
            c.req(if *add { "PUT" } else { "DELETE" }, &format!("/v1/projects/genomics/members/{}", PEOPLE[*who]), Some("root"), None).await
        }
        Op::Attach { by, vm, drive } => c.req("PUT", &format!("/v1/vms/{}/drives/{}", w.vms[*vm], w.drives[*drive]), Some(PEOPLE[*by]), None).await,
        Op::Detach { by, vm, drive } => c.req("DELETE", &format!("/v1/vms/{}/drives/{}", w.vms[*vm], w.drives[*drive]), Some(PEOPLE[*by]), None).await,
    };
    r.status
}

async fn check_invariants(w: &World) {
    assert!(
        owners_per_vm(&w.d).iter().all(|n| *n >= 1),
        "a VM lost its last owner"
    );
    for who in PEOPLE {
        let mine = owned_drives(&w.d, who);
        let foreign: Vec<&String> = w.drives.iter().filter(|d| !mine.contains(*d)).collect();
        let mut paths = vec![
            "/v1/vms".to_string(),
            "/v1/drives".into(),
            "/v1/audit".into(),
        ];
        for vm in &w.vms {
            paths.push(format!("/v1/vms/{vm}"));
            paths.push(format!("/v1/vms/{vm}/members"));
        }
        for p in paths {
            let r = w.c.get(&p, who).await;
            assert!(r.status < 500, "{p} as {who}: {r:?}");
            let text = String::from_utf8_lossy(&r.raw);
            for d in &foreign {
                assert!(
                    !text.contains(d.as_str()),
                    "{who} received drive {d} it does not own via {p}: {text}"
                );
            }
        }
    }
}

#[test]
fn random_sharing_sequences_keep_the_invariants() {
    let rt = rt();
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
            ],
        )
        .await;
        let s = project(&c, "genomics", &["alice", "bob", "carol", "dave"]).await;
        unlock(&c, "genomics", &s, "alice").await;
        let mut drives = vec![];
        let mut vms = vec![];
        for (i, owner) in ["alice", "bob", "alice"].iter().enumerate() {
            let dr = drive(&c, owner, "genomics", &format!("d{i}")).await;
            vms.push(vm(&c, owner, "genomics", &format!("v{i}"), &[&dr]).await);
            drives.push(dr);
        }
        World { d, c, vms, drives }
    });
    let cfg = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(cfg, |(ops in proptest::collection::vec(op(), 1..20))| {
        rt.block_on(async {
            for op in &ops {
                let status = apply(&w, op).await;
                assert!(status < 500, "{op:?} answered {status}");
                check_invariants(&w).await;
            }
        });
    });
}
