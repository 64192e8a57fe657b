//! The fleet on PostgreSQL, side by side in one run (DESIGN section 7):
//! 1. `GET /v1/vms` with 1,000 VMs: vmwardend on SQLite, vmwardend on PostgreSQL, and a bare
//!    hyper server on a Unix socket answering a body of the same size;
//! 2. share-to-visible latency across agents: a share through agent A, then the first answer
//!    of agent B that shows it, and the share's event on B's stream (p50, p99);
//! 3. writes per second (registrations, 24 in flight) through one agent, and spread over
//!    three agents of one database;
//! 4. unlock cycles (admin half, member half, lock): SQLite, where the key stays in one
//!    agent's memory, against PostgreSQL, where every change is sealed to the three enrolled
//!    hosts and stored, with the halves through one agent or through two.
//!
//! PostgreSQL is the tests' throwaway cluster (`fsync=off`, `synchronous_commit=off`), so its
//! writes are cheaper than on a durable server; SQLite runs with `synchronous=FULL`.

mod common;
use bytes::Bytes;
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const VMS: usize = 1000;
const ROUNDS: usize = 200;
const WRITES: usize = 600;
const IN_FLIGHT: usize = 24;

fn agent(url: &str, host: &str) -> Daemon {
    Daemon::start(Opts {
        store_url: Some(url.to_owned()),
        fleet: format!("host = \"{host}\"\n"),
        ..daemon("test:///default", "")
    })
}

async fn fill(socket: &std::path::Path) -> usize {
    let mut c = Conn::open(socket).await;
    for (u, t) in [("root", "ops"), ("alice", "lab"), ("bob", "lab")] {
        let (st, _) = c
            .call(
                "PUT",
                &format!("/v1/users/{u}"),
                Some("root"),
                Some(json!({"team": t})),
            )
            .await;
        assert_eq!(st, 200);
    }
    let (st, _) = c
        .call(
            "POST",
            "/v1/projects",
            Some("root"),
            Some(json!({"name": "p", "members": ["alice", "bob"]})),
        )
        .await;
    assert_eq!(st, 201);
    // The answer that carries the shares ends its connection.
    let mut c = Conn::open(socket).await;
    for i in 0..VMS {
        let (st, _) = c
            .call("POST", "/v1/vms", Some("alice"), Some(json!({"name": format!("vm-{i}"), "project": "p", "vcpus": 1, "memory_mib": 64})))
            .await;
        assert_eq!(st, 201);
    }
    let (_, body) = c.call("GET", "/v1/vms", Some("alice"), None).await;
    body.len()
}

/// `WRITES` registrations, `IN_FLIGHT` at a time, spread round-robin over `sockets`.
async fn writes(sockets: &[std::path::PathBuf], tag: &str) -> f64 {
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = vec![];
    for i in 0..WRITES {
        let (socket, gate) = (sockets[i % sockets.len()].clone(), gate.clone());
        let name = format!("{tag}{i}");
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            let mut c = Conn::open(&socket).await;
            let (st, _) = c
                .call(
                    "PUT",
                    &format!("/v1/users/{name}"),
                    Some("root"),
                    Some(json!({"team": "lab"})),
                )
                .await;
            assert_eq!(st, 200);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    WRITES as f64 / started.elapsed().as_secs_f64()
}

/// `UNLOCKS` cycles of admin half through `x`, member half through `y`, lock through `x`, on
/// a new project of alice; the cycles per second and the p50 of one cycle.
async fn unlock_cycles(x: &std::path::Path, y: &std::path::Path, project: &str) -> (f64, Duration) {
    let mut c = Conn::open(x).await;
    let (st, body) = c
        .call(
            "POST",
            "/v1/projects",
            Some("root"),
            Some(json!({"name": project, "members": ["alice"]})),
        )
        .await;
    assert_eq!(st, 201);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let (admin, member) = (v["admin_share"].clone(), v["member_share"].clone());
    let (mut cx, mut cy) = (Conn::open(x).await, Conn::open(y).await);
    let mut took = vec![];
    let started = Instant::now();
    for _ in 0..UNLOCKS {
        let t = Instant::now();
        let path = format!("/v1/projects/{project}/unlock");
        let (st, _) = cx
            .call("POST", &path, Some("root"), Some(json!({"share": admin})))
            .await;
        assert_eq!(st, 200);
        let (st, _) = cy
            .call("POST", &path, Some("alice"), Some(json!({"share": member})))
            .await;
        assert_eq!(st, 200);
        let (st, _) = cx
            .call(
                "POST",
                &format!("/v1/projects/{project}/lock"),
                Some("alice"),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, 200);
        took.push(t.elapsed());
    }
    let rate = UNLOCKS as f64 / started.elapsed().as_secs_f64();
    took.sort();
    (rate, took[took.len() / 2])
}

const UNLOCKS: usize = 100;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = vmwarden::store::testpg::fresh_database();
        let lite = Daemon::start(Opts {
            store_url: Some("sqlite".into()),
            ..daemon("test:///default", "")
        });
        let a = agent(&url, "h1");
        let body_len = fill(&lite.socket).await;
        assert_eq!(fill(&a.socket).await, body_len);
        let bare_path = a.dir.join("bare.sock");
        tokio::spawn(bare_server(bare_path.clone(), Bytes::from(vec![b' '; body_len])));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut s_runs, mut p_runs, mut b_runs) = (vec![], vec![], vec![]);
        for _ in 0..2 {
            b_runs.push(load(&bare_path, None).await);
            s_runs.push(load(&lite.socket, Some("alice")).await);
            p_runs.push(load(&a.socket, Some("alice")).await);
        }
        let pick = |runs: Vec<Stats>| runs.into_iter().max_by(|x, y| x.rps().total_cmp(&y.rps())).unwrap();
        let (s, p, b) = (pick(s_runs), pick(p_runs), pick(b_runs));
        println!("1. GET /v1/vms, {VMS} VMs, body {body_len} bytes, {CLIENTS} clients x {PER_CLIENT} requests (best of 2)");
        println!("  {:<24} {:>10} {:>10} {:>10} {:>8}", "server", "req/s", "p50 ms", "p99 ms", "vs bare");
        for (name, st) in [("bare hyper", &b), ("vmwardend, SQLite", &s), ("vmwardend, PostgreSQL", &p)] {
            println!("  {:<24} {:>10.0} {:>10.3} {:>10.3} {:>8.2}", name, st.rps(), ms(st.p50), ms(st.p99), st.rps() / b.rps());
        }

        // 2. Share through A, seen through B.
        let bb = agent(&url, "h2");
        let c3 = agent(&url, "h3");
        let (ca, cb) = (Client::new(&a.socket), Client::new(&bb.socket));
        let mut ev = Events::open(&cb, "bob").await;
        let mut conn_a = Conn::open(&a.socket).await;
        let mut conn_b = Conn::open(&bb.socket).await;
        let (mut visible, mut evented, mut polls) = (vec![], vec![], 0usize);
        for i in 0..ROUNDS {
            let (_, body) = conn_a
                .call("POST", "/v1/vms", Some("alice"), Some(json!({"name": format!("s-{i}"), "project": "p", "vcpus": 1, "memory_mib": 64})))
                .await;
            let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
            let t = Instant::now();
            let (st, _) = conn_a
                .call("PUT", &format!("/v1/vms/{id}/members/bob"), Some("alice"), Some(json!({"role": "user"})))
                .await;
            assert_eq!(st, 200);
            loop {
                polls += 1;
                if conn_b.call("GET", &format!("/v1/vms/{id}"), Some("bob"), None).await.0 == 200 {
                    break;
                }
            }
            visible.push(t.elapsed());
            assert!(ev.wait_for("vm.shared", &[&id], Duration::from_secs(10)).await.is_some());
            evented.push(t.elapsed());
        }
        let (v, e) = (Stats::from(visible, 1.0), Stats::from(evented, 1.0));
        println!("2. Share through A -> visible through B ({ROUNDS} shares; B asked {polls} times in all)");
        println!("  {:<36} {:>10} {:>10}", "", "p50 ms", "p99 ms");
        println!("  {:<36} {:>10.3} {:>10.3}", "share answered + B's next GET shows it", ms(v.p50), ms(v.p99));
        println!("  {:<36} {:>10.3} {:>10.3}", "share sent -> event on B's stream", ms(e.p50), ms(e.p99));
        drop((ca, cb));

        // 3. Writes per second: one agent, then three agents of the same database.
        let one = writes(std::slice::from_ref(&a.socket), "one").await;
        let three = writes(&[a.socket.clone(), bb.socket.clone(), c3.socket.clone()], "three").await;
        let lite_w = writes(std::slice::from_ref(&lite.socket), "lite").await;
        println!("3. Registrations, {WRITES} writes, {IN_FLIGHT} in flight");
        println!("  {:<36} {:>10}", "", "writes/s");
        println!("  {:<36} {:>10.0}", "PostgreSQL, 1 agent", one);
        println!("  {:<36} {:>10.0}", "PostgreSQL, 3 agents together", three);
        println!("  {:<36} {:>10.0}", "SQLite, 1 agent (for scale)", lite_w);
        println!("  ratio 3 agents / 1: {:.2}", three / one);

        // 4. Unlock cycles: the cost of sealing and storing key states for the fleet.
        let l = unlock_cycles(&lite.socket, &lite.socket, "u1").await;
        let one = unlock_cycles(&a.socket, &a.socket, "u2").await;
        let two = unlock_cycles(&a.socket, &c3.socket, "u3").await;
        println!("4. Unlock cycles (admin half, member half, lock), {UNLOCKS} cycles");
        println!("  {:<44} {:>10} {:>10}", "", "cycles/s", "p50 ms");
        println!("  {:<44} {:>10.0} {:>10.3}", "SQLite, one agent (key in memory only)", l.0, ms(l.1));
        println!("  {:<44} {:>10.0} {:>10.3}", "PostgreSQL, halves through A, 3 enrolled", one.0, ms(one.1));
        println!("  {:<44} {:>10.0} {:>10.3}", "PostgreSQL, halves through A and C", two.0, ms(two.1));
    });
}
