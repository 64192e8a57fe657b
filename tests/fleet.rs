//! Fleet scenarios (DESIGN section 7): three agents on this machine, each with its own
//! `[fleet] host`, socket and state folder, sharing one PostgreSQL database, one drives
//! folder and the one libvirtd. A registration, a share, a start or a write through one agent
//! holds for the others, and a VM runs on one host at a time.

mod common;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct Fleet {
    agents: Vec<Daemon>,
    drives: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.drives);
        }
    }
}

/// `n` agents, `h1`..`hn`, on one new database and one drives folder.
fn fleet(n: usize, sharing: &str) -> Fleet {
    let url = vmwarden::store::testpg::fresh_database();
    let drives = PathBuf::from(format!("/tmp/vmw-dr-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&drives).unwrap();
    let agents = (1..=n)
        .map(|i| {
            Daemon::start(Opts {
                store_url: Some(url.clone()),
                fleet: format!(
                    "host = \"h{i}\"\nheartbeat = \"500ms\"\nhost_dead_after = \"2s\"\n"
                ),
                storage: format!("drives_dir = \"{}\"\n", drives.display()),
                sharing: sharing.into(),
                ..Default::default()
            })
        })
        .collect();
    Fleet { agents, drives }
}

impl Fleet {
    fn c(&self, i: usize) -> Client {
        self.agents[i].client()
    }
}

fn names(r: &Resp) -> Vec<String> {
    r.body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Users of team lab, a project `p` of alice, bob and carol unlocked through the given
/// agents (unlock stays per agent until fleet unlock), and a VM `v` of alice with a drive.
async fn world(f: &Fleet, unlocked_on: &[usize]) -> (Shares, String, String) {
    let a = f.c(0);
    users(&a, &[("alice", "lab"), ("bob", "lab"), ("carol", "lab")]).await;
    let s = project(&a, "p", &["alice", "bob", "carol"]).await;
    for i in unlocked_on {
        unlock(&f.c(*i), "p", &s, "alice").await;
    }
    let d = drive(&a, "alice", "p", "d").await;
    let v = vm(&a, "alice", "p", "v", &[&d]).await;
    (s, d, v)
}

#[test]
fn a_user_registered_through_one_agent_acts_through_another() {
    rt().block_on(async {
        let f = fleet(3, "");
        let (a, c) = (f.c(0), f.c(2));
        users(&a, &[("alice", "lab")]).await;
        // No wait: the next request through C knows alice.
        let r = c.get("/v1/me", "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["team"], "lab");
        let r = c
            .req(
                "POST",
                "/v1/projects",
                Some("root"),
                Some(json!({"name": "q", "members": ["alice"]})),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let r = a.get("/v1/projects", "alice").await;
        assert_eq!(names(&r), vec!["q"], "{r:?}");
        // Unregistered through C, gone through A at once.
        let r = c.req("DELETE", "/v1/projects/q", Some("root"), None).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = c.req("DELETE", "/v1/users/alice", Some("root"), None).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(a.get("/v1/me", "alice").await.code(), "unregistered");
    });
}

#[test]
fn a_share_through_one_agent_is_visible_and_announced_through_another() {
    rt().block_on(async {
        let f = fleet(3, "");
        let (_, _, v) = world(&f, &[0]).await;
        let (a, b) = (f.c(0), f.c(1));
        // bob's list through B, fetched (and cached) before the share, and his event stream.
        assert!(b
            .get("/v1/vms", "bob")
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty());
        let mut ev = Events::open(&b, "bob").await;
        let mut owner_ev = Events::open(&b, "alice").await;
        let r = a.share(&v, "alice", "bob", "user", false).await;
        assert_eq!(r.status, 200, "{r:?}");
        // The very next request through B sees it.
        let r = b.get("/v1/vms", "bob").await;
        assert_eq!(names(&r), vec!["v"], "{r:?}");
        assert_eq!(r.body[0]["role"], "user");
        assert_eq!(b.get(&format!("/v1/vms/{v}"), "bob").await.status, 200);
        let got = ev
            .wait_for("vm.shared", &[&v, "bob"], Duration::from_secs(10))
            .await;
        assert!(got.is_some(), "B's stream never carried A's share");
        // And the unshare through C reaches B's list at once, and the owner's stream on B
        // (bob, who no longer sees the VM, gets no event about it).
        let r = f.c(2).unshare(&v, "alice", "bob").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(b
            .get("/v1/vms", "bob")
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty());
        assert!(owner_ev
            .wait_for("vm.unshared", &[&v, "bob"], Duration::from_secs(10))
            .await
            .is_some());
    });
}

#[test]
fn a_vm_runs_on_one_host_and_only_its_agent_acts_on_it() {
    rt().block_on(async {
        let f = fleet(3, "");
        // The drive is created through A in the shared folder and starts on B.
        let (_, d, v) = world(&f, &[0, 1, 2]).await;
        let (a, b, c) = (f.c(0), f.c(1), f.c(2));
        let r = b.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["state"], "running");
        assert_eq!(r.body["host"], "h2");
        assert!(domain_running(&v));
        // C refuses to start it again, naming the host; so do stop, keepalive and detach.
        let r = c.start(&v, "alice").await;
        assert_eq!((r.status, r.code()), (409, "vm_running_elsewhere"), "{r:?}");
        assert!(r.body["detail"].as_str().unwrap().contains("h2"), "{r:?}");
        assert_eq!(
            c.stop(&v, "alice", true).await.code(),
            "vm_running_elsewhere"
        );
        let r = c
            .req(
                "POST",
                &format!("/v1/vms/{v}/keepalive"),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!(r.code(), "vm_running_elsewhere", "{r:?}");
        let r = c
            .req(
                "DELETE",
                &format!("/v1/vms/{v}/drives/{d}"),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!(r.code(), "vm_running_elsewhere", "{r:?}");
        assert!(domain_running(&v), "another agent touched the domain");
        // A's reconcile and idle sweep leave B's VM alone.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            a.get(&format!("/v1/vms/{v}"), "alice").await.body["state"],
            "running"
        );
        // The fleet views: every host up, the VM on h2.
        let r = c.get("/v1/fleet/hosts", "root").await;
        assert_eq!(names(&r), vec!["h1", "h2", "h3"], "{r:?}");
        for h in r.body.as_array().unwrap() {
            assert_eq!(h["state"], "up", "{r:?}");
        }
        assert_eq!(r.body[1]["vms"], 1);
        let r = a.get("/v1/fleet/vms", "root").await;
        assert_eq!(r.body[0]["host"], "h2", "{r:?}");
        assert!(r.body[0].get("drives").is_none());
        // This host's own inventory on A does not list B's running VM.
        let r = a.get("/v1/host/vms", "root").await;
        assert!(r.body.as_array().unwrap().is_empty(), "{r:?}");
        assert_eq!(a.get("/v1/fleet/hosts", "alice").await.status, 403);
        // The operator's view through C's socket.
        let hosts = cli(&f.agents[2], &["fleet", "hosts"]);
        let rows: Vec<Vec<&str>> = hosts
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0][..4], ["HOST", "STATE", "VERSION", "VMS"], "{hosts}");
        assert_eq!(rows[2][..2], ["h2", "up"], "{hosts}");
        assert_eq!(rows[2][3], "1", "{hosts}");
        let vms = cli(&f.agents[0], &["fleet", "vms"]);
        assert!(
            vms.lines().nth(1).is_some_and(|l| l.starts_with("v ")
                && l.contains(" h2 ")
                && l.contains("running")),
            "{vms}"
        );
        // And a refused stop says where to go.
        let o = std::process::Command::new(bin("vmwarden"))
            .env("VMWARDEN_SOCKET", &f.agents[2].socket)
            .args(["--as", "alice", "vm", "stop", "--force", "v"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("h2"), "{err}");
        // Stopped through B, it starts through C.
        let r = b.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.get("host").is_none(), "{r:?}");
        let r = c.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["host"], "h3");
        let r = c.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
    });
}

#[test]
fn a_vm_whose_host_died_is_unknown_and_not_taken_over() {
    rt().block_on(async {
        let mut f = fleet(2, "");
        let (_, _, v) = world(&f, &[0, 1]).await;
        let (a, b) = (f.c(0), f.c(1));
        assert_eq!(b.start(&v, "alice").await.status, 200);
        f.agents[1].kill9();
        // The domain keeps running; once h2 misses its heartbeats the VM shows `unknown`.
        assert!(domain_running(&v));
        eventually(Duration::from_secs(15), "h2 down", || async {
            let r = a.get("/v1/fleet/hosts", "root").await;
            r.body[1]["state"] == "down"
        })
        .await;
        let r = a.get(&format!("/v1/vms/{v}"), "alice").await;
        assert_eq!(
            (r.body["state"].as_str(), r.body["host"].as_str()),
            (Some("unknown"), Some("h2")),
            "{r:?}"
        );
        let r = a.get("/v1/fleet/vms", "root").await;
        assert_eq!(r.body[0]["state"], "unknown", "{r:?}");
        // Nothing is taken over by a timer: two QEMUs on one image would destroy it.
        let r = a.start(&v, "alice").await;
        assert_eq!(r.code(), "vm_running_elsewhere", "{r:?}");
        assert_eq!(
            virsh(&["list", "--name"])
                .lines()
                .filter(|l| *l == v)
                .count(),
            1
        );
        let _ = virsh(&["destroy", &v]);
    });
}

#[test]
fn owner_grants_through_two_agents_never_exceed_the_limit() {
    rt().block_on(async {
        let f = fleet(2, "max_owners = 2");
        let a = f.c(0);
        users(&a, &[("alice", "lab"), ("bob", "lab"), ("carol", "lab")]).await;
        project(&a, "p", &["alice", "bob", "carol"]).await;
        let (a, b) = (Arc::new(f.c(0)), Arc::new(f.c(1)));
        for round in 0..10 {
            let v = vm(&a, "alice", "p", &format!("v{round}"), &[]).await;
            let (a2, b2, v1, v2) = (a.clone(), b.clone(), v.clone(), v.clone());
            let one =
                tokio::spawn(async move { a2.share(&v1, "alice", "bob", "owner", true).await });
            let two =
                tokio::spawn(async move { b2.share(&v2, "alice", "carol", "owner", true).await });
            let (one, two) = (one.await.unwrap(), two.await.unwrap());
            let ok = [&one, &two].iter().filter(|r| r.status == 200).count();
            assert_eq!(ok, 1, "round {round}: {one:?} {two:?}");
            for r in [&one, &two] {
                assert!(r.status == 200 || r.code() == "max_owners_reached", "{r:?}");
            }
            let m = b.get(&format!("/v1/vms/{v}/members"), "alice").await;
            assert_eq!(m.body["owners"].as_array().unwrap().len(), 2, "{m:?}");
        }
    });
}

#[test]
fn killing_an_agent_during_writes_through_all_three_loses_no_acknowledged_write() {
    mt().block_on(async {
        let mut f = fleet(3, "");
        users(&f.c(0), &[]).await;
        let clients: Vec<Arc<Client>> = (0..3).map(|i| Arc::new(f.c(i))).collect();
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(24));
        let mut tasks = vec![];
        for i in 0..400 {
            let (c, acked, gate) = (clients[i % 3].clone(), acked.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _p = gate.acquire().await.unwrap();
                let name = format!("u{i}");
                let r = c
                    .try_req(
                        "PUT",
                        &format!("/v1/users/{name}"),
                        Some("root"),
                        Some(json!({"team": format!("t{}", i % 7)})),
                    )
                    .await;
                if r.is_some_and(|r| r.status == 200) {
                    acked.lock().unwrap().push(name);
                }
            }));
            if i == 150 {
                // Mid-stream: B dies without a chance to clean up.
                tokio::time::sleep(Duration::from_millis(30)).await;
                f.agents[1].kill9();
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= 250,
            "too few writes acknowledged: {}",
            acked.len()
        );
        for i in [0, 2] {
            let r = f.c(i).get("/v1/users", "root").await;
            let have: std::collections::HashSet<String> = names(&r).into_iter().collect();
            let lost: Vec<&String> = acked.iter().filter(|n| !have.contains(*n)).collect();
            assert!(
                lost.is_empty(),
                "agent {i} lost acknowledged writes: {lost:?}"
            );
        }
        // Each acknowledged write has its audit row.
        let rows = audit_rows(&f.c(0), "").await;
        let audited: std::collections::HashSet<&str> = rows
            .iter()
            .filter(|r| r["action"] == "user.put" && r["outcome"] == "ok")
            .filter_map(|r| r["target"].as_str())
            .collect();
        for n in &acked {
            assert!(audited.contains(n.as_str()), "no audit row for {n}");
        }
        // B restarts in its state folder and rejoins.
        f.agents[1].spawn();
        let r = f.c(1).get("/v1/users", "root").await;
        assert!(names(&r).len() > acked.len(), "{}", names(&r).len());
    });
}

#[test]
fn fleet_hosts_on_sqlite_is_this_host_alone() {
    rt().block_on(async {
        let d = Daemon::start(Opts {
            store_url: Some("sqlite".into()),
            fleet: "host = \"solo\"\n".into(),
            ..Default::default()
        });
        let c = d.client();
        users(&c, &[]).await;
        let r = c.get("/v1/fleet/hosts", "root").await;
        assert_eq!(names(&r), vec!["solo"], "{r:?}");
        assert_eq!(r.body[0]["state"], "up");
        assert_eq!(r.body[0]["version"], env!("CARGO_PKG_VERSION"));
    });
}

#[test]
fn a_second_agent_under_a_live_host_name_is_refused() {
    let f = fleet(1, "");
    // h1's config, with a state folder and a socket of its own: another agent, same name.
    let dir = PathBuf::from(format!("/tmp/vmw-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(&f.agents[0].config)
        .unwrap()
        .replace(
            &f.agents[0].dir.display().to_string(),
            &dir.display().to_string(),
        );
    let config = dir.join("config.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = std::process::Command::new(bin("vmwardend"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second agent named h1 started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("Host h1 is held by another agent"), "{err}");
    assert!(!dir.join("s.sock").exists(), "it served: {err}");
    // The first agent is untouched.
    rt().block_on(async {
        users(&f.c(0), &[]).await;
        let r = f.c(0).get("/v1/fleet/hosts", "root").await;
        assert_eq!(names(&r), vec!["h1"], "{r:?}");
        assert_eq!(r.body[0]["state"], "up");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn starts_racing_through_two_agents_run_the_vm_on_one_host() {
    rt().block_on(async {
        let f = fleet(2, "");
        let (_, _, v) = world(&f, &[0, 1]).await;
        let (a, b) = (Arc::new(f.c(0)), Arc::new(f.c(1)));
        for round in 0..4 {
            let (a2, b2, v1, v2) = (a.clone(), b.clone(), v.clone(), v.clone());
            let one = tokio::spawn(async move { a2.start(&v1, "alice").await });
            let two = tokio::spawn(async move { b2.start(&v2, "alice").await });
            let (one, two) = (one.await.unwrap(), two.await.unwrap());
            let won: Vec<&Resp> = [&one, &two]
                .into_iter()
                .filter(|r| r.status == 200)
                .collect();
            assert_eq!(won.len(), 1, "round {round}: {one:?} {two:?}");
            let lost = if one.status == 200 { &two } else { &one };
            assert_eq!(
                lost.code(),
                "vm_running_elsewhere",
                "round {round}: {lost:?}"
            );
            assert_eq!(
                virsh(&["list", "--name"])
                    .lines()
                    .filter(|l| *l == v)
                    .count(),
                1,
                "round {round}"
            );
            let holder = if one.status == 200 { &a } else { &b };
            assert_eq!(holder.stop(&v, "alice", true).await.status, 200);
        }
    });
}
