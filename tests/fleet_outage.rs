//! The fleet's database goes away under load and comes back (its own test process: the
//! throwaway cluster is restarted, which no other test may share). While PostgreSQL is down
//! the agents answer 503 `store_unavailable` with Retry-After and lose nothing they
//! acknowledged; once it is back they serve again, and follow each other again, without a
//! restart.

mod common;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn postgres_restarted_under_load_gives_503s_then_recovers_without_restarting_agents() {
    mt().block_on(async {
        let url = vmwarden::store::testpg::fresh_database();
        let agents: Vec<Daemon> = (1..=2)
            .map(|i| {
                Daemon::start(Opts {
                    store_url: Some(url.clone()),
                    fleet: format!(
                        "host = \"h{i}\"\nheartbeat = \"500ms\"\nhost_dead_after = \"5s\"\n"
                    ),
                    ..Default::default()
                })
            })
            .collect();
        let (a, b) = (Arc::new(agents[0].client()), Arc::new(agents[1].client()));
        users(&a, &[("alice", "lab"), ("bob", "lab")]).await;
        project(&a, "p", &["alice", "bob"]).await;
        let v = vm(&a, "alice", "p", "v", &[]).await;

        // Load: registrations through both agents, four at a time, until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let statuses = Arc::new(Mutex::new(Vec::<(u16, String, Option<String>)>::new()));
        let mut load = vec![];
        for w in 0..4 {
            let (c, stop, acked, statuses) = (
                if w % 2 == 0 { a.clone() } else { b.clone() },
                stop.clone(),
                acked.clone(),
                statuses.clone(),
            );
            load.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}n{i}");
                    i += 1;
                    let r = c
                        .req(
                            "PUT",
                            &format!("/v1/users/{name}"),
                            Some("root"),
                            Some(json!({"team": "lab"})),
                        )
                        .await;
                    if r.status == 200 {
                        acked.lock().unwrap().push(name);
                    }
                    statuses
                        .lock()
                        .unwrap()
                        .push((r.status, r.code().to_owned(), r.retry_after));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Fast shutdown cuts every session; the server stays away for three seconds.
        tokio::task::spawn_blocking(|| vmwarden::store::testpg::restart(Duration::from_secs(3)))
            .await
            .unwrap();
        // Back: both agents serve again without a restart.
        eventually(Duration::from_secs(20), "both agents serve again", || {
            let (a, b) = (a.clone(), b.clone());
            async move {
                a.get("/v1/users", "root").await.status == 200
                    && b.get("/v1/users", "root").await.status == 200
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.await.unwrap();
        }

        let statuses = statuses.lock().unwrap().clone();
        let unavailable: Vec<_> = statuses.iter().filter(|s| s.0 == 503).collect();
        assert!(
            !unavailable.is_empty(),
            "no 503 while the database was down"
        );
        for s in &unavailable {
            assert_eq!(s.1, "store_unavailable", "{s:?}");
            assert!(s.2.is_some(), "503 without Retry-After: {s:?}");
        }
        // Every failure was the outage's; nothing else went wrong.
        for s in &statuses {
            assert!(s.0 == 200 || s.0 == 503, "{s:?}");
        }
        assert_eq!(
            statuses.last().unwrap().0,
            200,
            "the load ended with a failure"
        );
        // Nothing acknowledged was lost, as seen through either agent.
        let acked = acked.lock().unwrap().clone();
        for c in [&a, &b] {
            let r = c.get("/v1/users", "root").await;
            let have: std::collections::HashSet<&str> = r
                .body
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|u| u["name"].as_str())
                .collect();
            let lost: Vec<&String> = acked
                .iter()
                .filter(|n| !have.contains(n.as_str()))
                .collect();
            assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
        }
        // The agents follow each other again: a share through A is on B's list at once, and
        // once B's listener has reconnected by itself (events sent while it was away are
        // lost: they are notices, the store is the record), shares reach B's stream again.
        let mut ev = Events::open(&b, "bob").await;
        let r = a.share(&v, "alice", "bob", "user", false).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            b.get("/v1/vms", "bob").await.body.as_array().unwrap().len(),
            1
        );
        let mut arrived = false;
        for i in 0..10 {
            let w = vm(&a, "alice", "p", &format!("w{i}"), &[]).await;
            assert_eq!(a.share(&w, "alice", "bob", "user", false).await.status, 200);
            if ev
                .wait_for("vm.shared", &[&w], Duration::from_secs(2))
                .await
                .is_some()
            {
                arrived = true;
                break;
            }
        }
        assert!(arrived, "B's stream never followed A again");
    });
}
