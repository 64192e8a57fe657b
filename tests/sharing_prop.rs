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
    d.sql(
        "SELECT drive FROM drive_owners WHERE username = ?1",
        &[user.into()],
    )
    .iter()
    .map(|r| r.text(0).unwrap())
    .collect()
}

fn owners_per_vm(d: &Daemon) -> Vec<i64> {
    d.sql(
        "SELECT (SELECT COUNT(*) FROM vm_roles r WHERE r.vm = v.id AND r.role = 'owner') FROM vms v",
        &[],
    )
    .iter()
    .map(|r| r.int(0).unwrap())
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

fn count(d: &Daemon, sql: &str) -> i64 {
    d.sql(sql, &[])[0].int(0).unwrap()
}

async fn check_invariants(w: &World) {
    let owners = owners_per_vm(&w.d);
    assert!(owners.iter().all(|n| *n >= 1), "a VM lost its last owner");
    assert!(
        owners.iter().all(|n| *n <= 2),
        "more owners than sharing.max_owners"
    );
    assert_eq!(
        count(&w.d, "SELECT COUNT(*) FROM vm_roles r JOIN vms v ON v.id = r.vm JOIN users u ON u.name = r.username WHERE u.team != v.team"),
        0,
        "a role crossed teams"
    );
    // Rule 7: the owners of an attached drive are exactly its VM's owners.
    assert_eq!(
        count(&w.d, "SELECT COUNT(*) FROM drives d JOIN vm_roles r ON r.vm = d.attached_to AND r.role = 'owner'
                     WHERE NOT EXISTS (SELECT 1 FROM drive_owners o WHERE o.drive = d.id AND o.username = r.username)"),
        0,
        "a VM owner lacks its drive"
    );
    assert_eq!(
        count(&w.d, "SELECT COUNT(*) FROM drives d JOIN drive_owners o ON o.drive = d.id WHERE d.attached_to IS NOT NULL
                     AND NOT EXISTS (SELECT 1 FROM vm_roles r WHERE r.vm = d.attached_to AND r.username = o.username AND r.role = 'owner')"),
        0,
        "someone owns an attached drive without owning its VM"
    );
    for who in PEOPLE {
        let mine = owned_drives(&w.d, who);
        let foreign: Vec<&String> = w.drives.iter().filter(|d| !mine.contains(*d)).collect();
        // Lists and drive views: never a drive the caller does not own.
        for p in ["/v1/vms", "/v1/drives"] {
            let r = w.c.get(p, who).await;
            assert!(r.status < 500, "{p} as {who}: {r:?}");
            let text = String::from_utf8_lossy(&r.raw);
            for d in &foreign {
                assert!(
                    !text.contains(d.as_str()),
                    "{who} received drive {d} it does not own via {p}: {text}"
                );
            }
        }
        // Everything about a VM on which the caller is a user: no drive identifier at all.
        // (Owners do see the VM's drive history in its audit log: that is how a co-owner's
        // take-over is visible to the other owners.)
        let user_of = roles_of(&w.d, who, "user");
        for vm in &w.vms {
            let paths = [
                format!("/v1/vms/{vm}"),
                format!("/v1/vms/{vm}/members"),
                format!("/v1/audit?vm={vm}"),
            ];
            for p in paths {
                let r = w.c.get(&p, who).await;
                assert!(r.status < 500, "{p} as {who}: {r:?}");
                if !user_of.contains(vm) {
                    continue;
                }
                let text = String::from_utf8_lossy(&r.raw);
                for d in &w.drives {
                    assert!(
                        !text.contains(d.as_str()),
                        "user {who} received drive {d} via {p}: {text}"
                    );
                }
            }
        }
        let r = w.c.get("/v1/audit", who).await;
        for e in r.body.as_array().unwrap() {
            if user_of.iter().any(|v| e["vm"] == v.as_str()) {
                let text = e.to_string();
                for d in &w.drives {
                    assert!(
                        !text.contains(d.as_str()),
                        "user {who} received drive {d} in the audit log: {text}"
                    );
                }
            }
        }
    }
}

fn roles_of(d: &Daemon, user: &str, role: &str) -> HashSet<String> {
    d.sql(
        "SELECT vm FROM vm_roles WHERE username = ?1 AND role = ?2",
        &[user.into(), role.into()],
    )
    .iter()
    .map(|r| r.text(0).unwrap())
    .collect()
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
