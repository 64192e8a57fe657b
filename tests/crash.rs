//! SIGKILL in the middle of a burst of 500 concurrent mutations: every mutation answered 2xx
//! must be there after a restart, and the store must open cleanly.

mod common;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[test]
fn kill9_mid_burst_loses_no_acknowledged_mutation() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut d = Daemon::start(Opts::default());
        let c = d.client();
        users(&c, &[]).await;
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let answered = Arc::new(tokio::sync::Notify::new());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = vec![];
        for i in 0..500 {
            let (c, acked, count, answered) =
                (c.clone(), acked.clone(), count.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                let name = format!("u{i}");
                let fut = async {
                    let stream = tokio::net::UnixStream::connect(&c.socket).await.ok()?;
                    let (mut s, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .ok()?;
                    tokio::spawn(conn);
                    let body = serde_json::to_vec(&json!({"team": "lab"})).unwrap();
                    let req = hyper::Request::builder()
                        .method("PUT")
                        .uri(format!("/v1/users/{name}"))
                        .header("host", "x")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap();
                    let r = s.send_request(req).await.ok()?;
                    Some(r.status().as_u16())
                };
                if let Some(st) = fut.await {
                    if (200..300).contains(&st) {
                        acked.lock().unwrap().insert(name);
                    }
                    if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 100 {
                        answered.notify_one();
                    }
                }
            }));
        }
        // Kill once about a hundred mutations are answered: the rest are in flight.
        answered.notified().await;
        d.kill9();
        for t in tasks {
            let _ = t.await;
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= 100 && acked.len() < 500,
            "kill did not land mid-burst: {}",
            acked.len()
        );
        // The store survives the kill intact: SQLite's own check of its file; on PostgreSQL
        // (whose server was not killed) every table still reads.
        if d.on_postgres() {
            let tables = d.tables();
            assert!(
                ["users", "vms", "drives", "audit"]
                    .iter()
                    .all(|t| tables.iter().any(|x| x == t)),
                "{tables:?}"
            );
            for t in tables {
                let rows = d.sql(&format!("SELECT COUNT(*) FROM {t}"), &[]);
                rows[0]
                    .int(0)
                    .unwrap_or_else(|e| panic!("{t} does not read: {e}"));
            }
        } else {
            let ok = d.sql("PRAGMA integrity_check", &[])[0].text(0).unwrap();
            assert_eq!(ok, "ok");
        }
        d.spawn();
        let r = c.get("/v1/users", "root").await;
        assert_eq!(r.status, 200);
        let present: HashSet<String> = r
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap().to_owned())
            .collect();
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
        // Each acknowledged mutation has its audit row too.
        let r = c.get("/v1/audit?limit=10000", "root").await;
        let audited: HashSet<String> = r
            .body
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "user.put")
            .map(|e| e["target"].as_str().unwrap().to_owned())
            .collect();
        assert!(acked.is_subset(&audited));
    });
}
