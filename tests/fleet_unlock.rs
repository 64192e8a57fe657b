//! Fleet unlock and fencing (DESIGN section 7): agents on this machine with their own host,
//! socket and state folder, one PostgreSQL database and one drives folder. Halves submitted
//! through two agents unlock the project for every enrolled host; a lock anywhere locks
//! everywhere; the envelopes in the store open only with an enrolled host's key; a VM held by
//! a dead host waits for an admin's fence, and only one QEMU runs it afterwards.

mod common;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use vmwarden::keys::host::{HostKey, Sealed};
use vmwarden::model::ProjectName;

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

/// Agents `h1`.. on one new database; `opts(i)` adds to agent i's options.
fn fleet(n: usize, opts: impl Fn(usize) -> Opts) -> Fleet {
    let url = vmwarden::store::testpg::fresh_database();
    let drives = PathBuf::from(format!("/tmp/vmw-dr-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&drives).unwrap();
    let agents = (1..=n)
        .map(|i| {
            let o = opts(i);
            Daemon::start(Opts {
                store_url: Some(url.clone()),
                fleet: format!(
                    "host = \"h{i}\"\nheartbeat = \"300ms\"\nhost_dead_after = \"1s\"\n"
                ),
                storage: format!("drives_dir = \"{}\"\n", drives.display()),
                ..o
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

fn p() -> ProjectName {
    "p".parse().unwrap()
}

/// alice, bob (team lab), ada (an admin of team lab); project p of all three, not unlocked.
async fn world(c: &Client) -> Shares {
    users(c, &[("alice", "lab"), ("bob", "lab")]).await;
    let r = c
        .req(
            "PUT",
            "/v1/users/ada",
            Some("root"),
            Some(json!({"team": "lab", "admin": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    project(c, "p", &["alice", "bob", "ada"]).await
}

/// The envelopes in the store: (kind, host, (expiry, body)).
fn envelopes(d: &Daemon) -> Vec<(String, String, (i64, Vec<u8>))> {
    d.sql(
        "SELECT kind, host, expires_ms, body FROM envelopes ORDER BY host, kind",
        &[],
    )
    .iter()
    .map(|r| {
        (
            r.text(0).unwrap(),
            r.text(1).unwrap(),
            (r.int(2).unwrap(), r.bytes(3).unwrap()),
        )
    })
    .collect()
}

fn host_key(d: &Daemon) -> HostKey {
    HostKey::load_or_create(&d.state().join("host-key")).unwrap()
}

#[test]
fn halves_through_two_agents_unlock_the_fleet_and_a_lock_through_a_third_locks_it() {
    rt().block_on(async {
        let f = fleet(3, |_| Opts::default());
        let (a, b, c) = (f.c(0), f.c(1), f.c(2));
        let s = world(&a).await;
        // The same person may not submit both halves, whichever agents they use.
        let r = a.unlock_half("p", "ada", &s.admin).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = c.unlock_half("p", "ada", &s.member).await;
        assert_eq!((r.status, r.code()), (409, "two_people_required"), "{r:?}");
        // The admin half waits in an envelope per host, not in A's memory alone: B sees it.
        let r = b.get("/v1/projects", "alice").await;
        assert_eq!(r.body[0]["pending"], json!(["admin"]), "{r:?}");
        let r = c.unlock_half("p", "alice", &s.member).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["locked"], false, "{r:?}");
        // Unlocked for the fleet: a drive through A, a VM started through B.
        let d = drive(&a, "alice", "p", "d").await;
        let v = vm(&a, "alice", "p", "v", &[&d]).await;
        let r = b.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["state"], "running");
        let r = b.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
        let mut held: Vec<String> = envelopes(&f.agents[0])
            .into_iter()
            .map(|(k, h, _)| format!("{k}@{h}"))
            .collect();
        held.sort();
        assert_eq!(held, ["key@h1", "key@h2", "key@h3"]);
        // A lock through C: every envelope goes. A and B, which both held K (A created the
        // drive, B launched), zeroize it on the notification, before anyone asks them.
        let r = c.lock("p", "bob").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(envelopes(&f.agents[0]).is_empty());
        for ag in &f.agents[..2] {
            eventually(
                Duration::from_secs(5),
                "the lock reaches every agent holding K",
                || async {
                    ag.log_text()
                        .contains("locked through another agent; zeroized the key of project p")
                },
            )
            .await;
        }
        // B's very next start is refused, and every agent shows the project locked.
        let r = b.start(&v, "alice").await;
        assert_eq!((r.status, r.code()), (409, "project_locked"), "{r:?}");
        for i in 0..3 {
            let r = f.c(i).get("/v1/projects", "alice").await;
            assert_eq!(r.body[0]["locked"], true, "agent {i}: {r:?}");
        }
    });
}

#[test]
fn an_agent_killed_while_unlocked_launches_again_without_new_halves() {
    rt().block_on(async {
        let mut f = fleet(2, |_| Opts::default());
        let a = f.c(0);
        let s = world(&a).await;
        unlock(&a, "p", &s, "alice").await;
        let d = drive(&a, "alice", "p", "d").await;
        let v = vm(&a, "alice", "p", "v", &[&d]).await;
        f.agents[1].kill9();
        f.agents[1].spawn();
        // B starts with an empty keyring; its envelope is all it needs.
        let b = f.c(1);
        let r = b.get("/v1/projects", "alice").await;
        assert_eq!(r.body[0]["locked"], false, "{r:?}");
        let r = b.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = b.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
    });
}

#[test]
fn after_the_ttl_every_agent_refuses_even_after_restarts() {
    rt().block_on(async {
        let mut f = fleet(2, |_| Opts {
            keys: "unlock_ttl = \"10s\"\n".into(),
            ..Default::default()
        });
        let a = f.c(0);
        let s = world(&a).await;
        unlock(&a, "p", &s, "alice").await;
        let d = drive(&a, "alice", "p", "d").await;
        let v = vm(&a, "alice", "p", "v", &[&d]).await;
        let until = a.get("/v1/projects", "alice").await.body[0]["until_ms"]
            .as_i64()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        tokio::time::sleep(Duration::from_millis((until - now).max(0) as u64 + 1500)).await;
        for i in 0..2 {
            let r = f.c(i).start(&v, "alice").await;
            assert_eq!(
                (r.status, r.code()),
                (409, "project_locked"),
                "agent {i}: {r:?}"
            );
        }
        for ag in f.agents.iter_mut() {
            ag.kill9();
            ag.spawn();
        }
        for i in 0..2 {
            let r = f.c(i).start(&v, "alice").await;
            assert_eq!(
                (r.status, r.code()),
                (409, "project_locked"),
                "agent {i}: {r:?}"
            );
        }
        assert!(
            envelopes(&f.agents[0]).iter().all(|(k, _, _)| k != "key"),
            "expired envelopes are purged"
        );
    });
}

#[test]
fn a_host_no_admin_enrolled_never_receives_key_material() {
    rt().block_on(async {
        let f = fleet(2, |i| Opts {
            unenrolled: i == 2,
            ..Default::default()
        });
        let (a, b) = (f.c(0), f.c(1));
        let s = world(&a).await;
        unlock(&a, "p", &s, "alice").await;
        let d = drive(&a, "alice", "p", "d").await;
        let v = vm(&a, "alice", "p", "v", &[&d]).await;
        // Only h1 holds an envelope, and only h1's key opens it, to K itself.
        let sealed = envelopes(&f.agents[0]);
        assert_eq!(
            sealed.len(),
            1,
            "{:?}",
            sealed.iter().map(|e| &e.1).collect::<Vec<_>>()
        );
        let (kind, host, (until, body)) = &sealed[0];
        assert_eq!((kind.as_str(), host.as_str()), ("key", "h1"));
        let k = vmwarden::keys::combine(s.admin.as_bytes(), s.member.as_bytes()).unwrap();
        let opened = host_key(&f.agents[0])
            .open(&p(), Sealed::Key, *until, body)
            .unwrap();
        assert_eq!(opened.expose(), k.expose());
        assert!(host_key(&f.agents[1])
            .open(&p(), Sealed::Key, *until, body)
            .is_none());
        assert!(HostKey::generate()
            .open(&p(), Sealed::Key, *until, body)
            .is_none());
        // Through B: no launch, no half, no drive.
        let r = b.start(&v, "alice").await;
        assert_eq!((r.status, r.code()), (409, "host_not_enrolled"), "{r:?}");
        let r = b.unlock_half("p", "root", &s.admin).await;
        assert_eq!((r.status, r.code()), (409, "host_not_enrolled"), "{r:?}");
        let r = b
            .req(
                "POST",
                "/v1/drives",
                Some("alice"),
                Some(json!({"project": "p", "name": "e", "size_mib": 16})),
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "host_not_enrolled"), "{r:?}");
        // Enrolling takes the fingerprint read on the host itself; another one is refused.
        let fp = f.agents[1].fingerprint();
        let wrong = f.agents[0].fingerprint();
        let r = a
            .req(
                "POST",
                "/v1/fleet/hosts/h2/enroll",
                Some("root"),
                Some(json!({"fingerprint": wrong})),
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "fingerprint_mismatch"), "{r:?}");
        let r = a
            .req(
                "POST",
                "/v1/fleet/hosts/h2/enroll",
                Some("alice"),
                Some(json!({"fingerprint": fp})),
            )
            .await;
        assert_eq!((r.status, r.code()), (403, "admin_required"), "{r:?}");
        let r = a
            .req(
                "POST",
                "/v1/fleet/hosts/h2/enroll",
                Some("root"),
                Some(json!({"fingerprint": fp})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            (r.body["enrolled"].clone(), r.body["fingerprint"].clone()),
            (json!(true), json!(fp))
        );
        // Enrolled hosts receive envelopes from the next unlock on.
        let r = a.lock("p", "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        unlock(&b, "p", &s, "alice").await;
        let r = b.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = b.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
        // What an operator sees, then un-enrolls with: its envelopes are gone at once, and it
        // refuses again.
        let hosts = cli(&f.agents[0], &["fleet", "hosts"]);
        assert!(hosts.contains("ENROLLED") && hosts.contains(&fp), "{hosts}");
        let out = cli(&f.agents[0], &["fleet", "unenroll", "h2"]);
        assert!(out.contains("Host h2 is not enrolled"), "{out}");
        let r = a.get("/v1/fleet/hosts", "root").await;
        let h2 = r
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == "h2")
            .unwrap()
            .clone();
        assert_eq!(h2["enrolled"], false, "{r:?}");
        assert!(envelopes(&f.agents[0]).iter().all(|(_, h, _)| h == "h1"));
        let r = b.start(&v, "alice").await;
        assert_eq!((r.status, r.code()), (409, "host_not_enrolled"), "{r:?}");
        let r = a.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = a.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
        let rows = audit_rows(&a, "").await;
        for action in ["host.enroll", "host.unenroll"] {
            assert!(
                rows.iter()
                    .any(|r| r["action"] == action && r["outcome"] == "ok"),
                "{action}"
            );
        }
        assert!(
            rows.iter()
                .any(|r| r["action"] == "host.enroll"
                    && r["outcome"] == "denied:fingerprint_mismatch")
        );
    });
}

#[test]
fn the_secrets_of_a_fleet_stay_out_of_the_store_the_state_folders_and_the_logs() {
    rt().block_on(async {
        let f = fleet(2, |_| Opts::default());
        let (a, b) = (f.c(0), f.c(1));
        let s = world(&a).await;
        let r = a.unlock_half("p", "root", &s.admin).await;
        assert_eq!(r.status, 200, "{r:?}");
        // A pending half sits in the store, sealed.
        let pending = envelopes(&f.agents[0]);
        assert_eq!(
            pending.len(),
            2,
            "one admin-half envelope per enrolled host"
        );
        let r = b.unlock_half("p", "alice", &s.member).await;
        assert_eq!(r.body["locked"], false, "{r:?}");
        let d = drive(&b, "alice", "p", "d").await;
        let sealed = envelopes(&f.agents[0]);
        let k = vmwarden::keys::combine(s.admin.as_bytes(), s.member.as_bytes()).unwrap();
        let (_, ah) = vmwarden::keys::parse_share(s.admin.as_bytes()).unwrap();
        let (_, mh) = vmwarden::keys::parse_share(s.member.as_bytes()).unwrap();
        let mut needles: Vec<(&str, Vec<u8>)> = vec![
            ("admin share", s.admin.clone().into_bytes()),
            ("member share", s.member.clone().into_bytes()),
        ];
        for (what, bytes) in [
            ("K", k.expose().to_vec()),
            ("A", ah.expose().to_vec()),
            ("M", mh.expose().to_vec()),
        ] {
            use base64::Engine;
            needles.push((what, bytes.clone()));
            needles.push((
                what,
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(&bytes)
                    .into_bytes(),
            ));
            needles.push((
                what,
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(&bytes)
                    .into_bytes(),
            ));
            needles.push((
                what,
                bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into_bytes(),
            ));
        }
        let wrapped = f.agents[0].sql("SELECT wrapped FROM drives WHERE id = ?1", &[(&d).into()])
            [0]
        .bytes(0)
        .unwrap();
        let pass = vmwarden::keys::unwrap(&k, &p(), &d, &wrapped).unwrap();
        needles.push(("passphrase", pass.expose().to_vec()));
        // Everything the store holds, row by row, the pending halves' envelopes included.
        let mut places: Vec<(String, Vec<u8>)> = vec![];
        for t in f.agents[0].tables() {
            for (n, row) in f.agents[0]
                .sql(&format!("SELECT * FROM {t}"), &[])
                .iter()
                .enumerate()
            {
                for (i, col) in f.agents[0].columns(&t).iter().enumerate() {
                    if let Ok(Some(b)) = row.opt_bytes(i) {
                        places.push((format!("{t}.{col} {n}"), b));
                    } else if let Ok(Some(s)) = row.opt_text(i) {
                        places.push((format!("{t}.{col} {n}"), s.into_bytes()));
                    }
                }
            }
        }
        for (i, (_, _, (_, body))) in pending.iter().enumerate() {
            places.push((format!("pending envelope {i}"), body.clone()));
        }
        assert!(
            places.iter().any(|(n, _)| n.starts_with("envelopes.body")),
            "the dump must hold envelopes"
        );
        for ag in &f.agents {
            places.push(("daemon log".into(), std::fs::read(&ag.log).unwrap()));
            let mut stack = vec![ag.state()];
            while let Some(dir) = stack.pop() {
                for e in std::fs::read_dir(&dir).unwrap().flatten() {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    } else {
                        places.push((
                            e.path().display().to_string(),
                            std::fs::read(e.path()).unwrap(),
                        ));
                    }
                }
            }
        }
        for (place, hay) in &places {
            for (what, needle) in &needles {
                assert!(
                    !hay.windows(needle.len()).any(|w| w == needle.as_slice()),
                    "{what} found in {place}"
                );
            }
        }
        // Nor does either host's private key appear anywhere but in its own key file.
        for ag in &f.agents {
            let text = std::fs::read_to_string(ag.state().join("host-key")).unwrap();
            let secret = text.trim().as_bytes();
            assert!(secret.starts_with(b"AGE-SECRET-KEY-1"));
            for (place, hay) in places.iter().filter(|(n, _)| !n.ends_with("/host-key")) {
                assert!(
                    !hay.windows(secret.len()).any(|w| w == secret),
                    "a host key found in {place}"
                );
            }
        }
        // Each envelope opens with its enrolled host's key, and with no other.
        let keys: Vec<(String, HostKey)> = f
            .agents
            .iter()
            .enumerate()
            .map(|(i, ag)| (format!("h{}", i + 1), host_key(ag)))
            .collect();
        for (kind, host, (until, body)) in pending.iter().chain(&sealed) {
            let kind = Sealed::parse(kind).unwrap();
            for (name, key) in &keys {
                let opened = key.open(&p(), kind, *until, body);
                assert_eq!(
                    opened.is_some(),
                    name == host,
                    "{kind:?} for {host} opened with {name}'s key"
                );
            }
            assert!(HostKey::generate().open(&p(), kind, *until, body).is_none());
            assert!(keys[0].1.open(&p(), kind, until + 1, body).is_none());
            let secret = keys
                .iter()
                .find(|(n, _)| n == host)
                .unwrap()
                .1
                .open(&p(), kind, *until, body)
                .unwrap();
            let expected = match kind {
                Sealed::Key => k.expose(),
                Sealed::AdminHalf => ah.expose(),
                Sealed::MemberHalf => mh.expose(),
            };
            assert_eq!(secret.expose(), expected);
        }
    });
}

/// How many QEMU processes run the VM `id` (whichever libvirtd started them).
fn qemus_of(id: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("qemu-system") && cmd.contains(id) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn a_vm_of_a_dead_host_waits_for_a_fence_and_runs_once_after_the_host_returns() {
    rt().block_on(async {
        // h1 runs its QEMUs under a libvirtd of its own (root's session daemon), as another
        // machine would: killing h1's agent leaves its domain running there.
        let mut f = fleet(2, |i| Opts {
            uri: (i == 1).then(|| "qemu:///session".to_owned()),
            ..Default::default()
        });
        let (a, b) = (f.c(0), f.c(1));
        let s = world(&a).await;
        unlock(&a, "p", &s, "alice").await;
        let d = drive(&a, "alice", "p", "d").await;
        let v = vm(&a, "alice", "p", "v", &[&d]).await;
        let r = a.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(qemus_of(&v), 1);
        f.agents[0].kill9();
        // h1 goes down; its VM is unknown, held by h1, and refused through h2.
        eventually(Duration::from_secs(10), "h1 is down", || async {
            let r = b.get("/v1/fleet/hosts", "root").await;
            r.body
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == "h1" && h["state"] == "down")
        })
        .await;
        let r = b.start(&v, "alice").await;
        assert_eq!((r.status, r.code()), (409, "vm_running_elsewhere"), "{r:?}");
        // Fencing is for admins, and only for a host that is down.
        let r = b
            .req(
                "POST",
                "/v1/fleet/hosts/h1/fence",
                Some("alice"),
                Some(json!({})),
            )
            .await;
        assert_eq!((r.status, r.code()), (403, "admin_required"), "{r:?}");
        let r = b
            .req(
                "POST",
                "/v1/fleet/hosts/h2/fence",
                Some("root"),
                Some(json!({})),
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "host_up"), "{r:?}");
        let r = b
            .req(
                "POST",
                "/v1/fleet/hosts/h1/fence",
                Some("root"),
                Some(json!({})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["released"], json!([v]));
        assert_eq!(r.body["host"]["state"], "fenced");
        let r = b.get(&format!("/v1/vms/{v}"), "alice").await;
        assert_eq!(r.body["state"], "stopped", "{r:?}");
        // The old agent returns; its domain of a VM it no longer holds is destroyed and
        // reported before it acts.
        f.agents[0].spawn();
        let a = f.c(0);
        eventually(
            Duration::from_secs(20),
            "h1 destroys its stale domain",
            || async { qemus_of(&v) == 0 },
        )
        .await;
        let rows = audit_rows(&a, "").await;
        assert!(
            rows.iter()
                .any(|r| r["action"] == "host.fenced_destroyed" && r["target"] == v.as_str()),
            "{rows:?}"
        );
        assert!(rows
            .iter()
            .any(|r| r["action"] == "host.fence" && r["outcome"] == "ok"));
        let r = b.get("/v1/fleet/hosts", "root").await;
        assert!(
            r.body
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == "h1" && h["state"] == "up"),
            "{r:?}"
        );
        // Now through h2: one QEMU runs the VM, held by h2.
        let r = b.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(qemus_of(&v), 1);
        let r = b.get("/v1/fleet/vms", "root").await;
        let row = r
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == v.as_str())
            .unwrap()
            .clone();
        assert_eq!(
            (row["host"].clone(), row["state"].clone()),
            (json!("h2"), json!("running"))
        );
        let r = b.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
    });
}

const DELAYS_US: [u64; 4] = [0, 1_000, 10_000, 50_000];

#[test]
fn a_resplit_through_one_agent_never_loses_the_project_for_the_fleet() {
    rt().block_on(async {
        let mut f = fleet(2, |_| Opts::default());
        let (a, b) = (f.c(0), f.c(1));
        let s0 = world(&a).await;
        unlock(&a, "p", &s0, "alice").await;
        let d = drive(&a, "alice", "p", "d").await;
        let v = vm(&a, "alice", "p", "v", &[&d]).await;
        let resplit = raw_request("POST", "/v1/projects/p/resplit", Some("root"), None);
        // Clients that hang up through A: the pair in hand keeps working through B.
        for us in DELAYS_US {
            hang_up(&f.agents[0].socket, &resplit, Duration::from_micros(us));
            // A's lock waits for the re-key's delivery to be decided.
            let r = a.lock("p", "alice").await;
            assert_eq!(r.status, 200, "{r:?}");
            unlock(&b, "p", &s0, "alice").await;
        }
        // A killed during a re-key, at several delays, and restarted.
        for us in DELAYS_US {
            {
                use std::io::Write;
                let mut s = std::os::unix::net::UnixStream::connect(&f.agents[0].socket).unwrap();
                s.write_all(&resplit).unwrap();
                std::thread::sleep(Duration::from_micros(us));
                f.agents[0].kill9();
            }
            f.agents[0].spawn();
            let r = b.lock("p", "alice").await;
            assert_eq!(r.status, 200, "{r:?}");
            unlock(&b, "p", &s0, "alice").await;
            let r = f.c(0).start(&v, "alice").await;
            assert_eq!(r.status, 200, "after a kill at {us} µs: {r:?}");
            let r = f.c(0).stop(&v, "alice", true).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        // A client that reads its answer: B launches at once with the new key, and only the
        // new pair unlocks from now on.
        let a = f.c(0);
        let (status, body) = raw_roundtrip(&f.agents[0].socket, &resplit);
        assert_eq!(status, 201, "{body}");
        let s1 = Shares::of(&body);
        let r = b.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = b.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
        eventually(
            Duration::from_secs(5),
            "the new pair is the only one",
            || async {
                audit_rows(&a, "")
                    .await
                    .iter()
                    .any(|r| r["action"] == "project.resplit_delivered")
            },
        )
        .await;
        let r = b.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = b.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = a.lock("p", "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = b.unlock_half("p", "root", &s0.admin).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = a.unlock_half("p", "alice", &s0.member).await;
        assert_eq!((r.status, r.code()), (409, "invalid_share"), "{r:?}");
        let r = b.unlock_half("p", "root", &s1.admin).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = a.unlock_half("p", "alice", &s1.member).await;
        assert_eq!(r.body["locked"], false, "{r:?}");
        let r = b.start(&v, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = b.stop(&v, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
    });
}

/// Halves arriving at the same moment through two agents: each agent judges from the
/// envelopes it read, and the store lets only one of two conflicting judgements commit; the
/// other judges again. Whatever the interleaving, the pair unlocks, every round.
#[test]
fn halves_racing_through_two_agents_always_unlock() {
    rt().block_on(async {
        let f = fleet(3, |_| Opts::default());
        let (a, b, c) = (f.c(0), f.c(1), f.c(2));
        let s = world(&a).await;
        for round in 0..12 {
            let (x, y) = if round % 2 == 0 { (&a, &c) } else { (&c, &b) };
            let (r1, r2) = tokio::join!(
                x.unlock_half("p", "root", &s.admin),
                y.unlock_half("p", "alice", &s.member)
            );
            assert_eq!(
                (r1.status, r2.status),
                (200, 200),
                "round {round}: {r1:?} {r2:?}"
            );
            for i in 0..3 {
                let r = f.c(i).get("/v1/projects", "alice").await;
                assert_eq!(
                    r.body[0]["locked"], false,
                    "round {round}, agent {i}: {r:?}"
                );
            }
            let r = b.lock("p", "alice").await;
            assert_eq!(r.status, 200, "{r:?}");
        }
    });
}
