//! Trust under adversity (issue "Trust under adversity"), over the real socket on real
//! libvirt: clients that hang up at several delays, requests that race, hostile local peers,
//! a full disk. Each test reproduces an attack and asserts the invariant it threatened, never
//! a timing.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

const DELAYS_US: [u64; 6] = [0, 300, 1_000, 3_000, 10_000, 50_000];

/// alice (owner) and bob (user) of VM "web" in project "genomics", whose boot drive "boot"
/// prints `marker`; carol is a member with no role; dave is in another team.
async fn world(opts: Opts, marker: &str) -> World {
    Fixture::new(opts)
        .users(&[
            ("alice", "lab"),
            ("bob", "lab"),
            ("carol", "lab"),
            ("dave", "far"),
        ])
        .project("genomics", &["alice", "bob", "carol", "dave"])
        .boot_drive("alice", "genomics", "boot", marker)
        .vm("alice", "genomics", "web", &["boot"])
        .share("web", "alice", "bob", "user")
        .build()
        .await
}

async fn lock(c: &Client) {
    let r = c.lock("genomics", "alice").await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Defect 1: a client that hangs up during a re-key, at any delay, never loses the project.
/// The staged pair was never read, so it is undone and the pair in hand keeps working; a
/// client that reads its answer gets a pair that works, and the old one stops.
#[test]
fn resplit_hang_ups_never_lose_the_project() {
    mt().block_on(async {
        let w = world(Opts::default(), "REKEY-SURVIVES").await;
        let (d, c, s0, vm) = (&w.d, &w.c, w.shares("genomics").clone(), w.vm("web"));
        let resplit = raw_request("POST", "/v1/projects/genomics/resplit", Some("root"), None);
        for us in DELAYS_US {
            hang_up(&d.socket, &resplit, Duration::from_micros(us));
            // Lock waits for the key lock, which the re-key holds until its delivery is
            // decided: after it, the outcome is settled.
            lock(c).await;
            unlock(c, "genomics", &s0, "alice").await;
        }
        // Half an answer is not an answer.
        {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
            s.write_all(&resplit).unwrap();
            let mut head = [0u8; 64];
            s.read_exact(&mut head).unwrap();
        }
        lock(c).await;
        unlock(c, "genomics", &s0, "alice").await;
        let staged = audit_rows(c, "").await;
        let count = |a: &str| staged.iter().filter(|e| e["action"] == a).count();
        assert!(count("project.resplit") >= 1, "no re-key ran at all");
        assert_eq!(
            count("project.resplit"),
            count("project.resplit_undone"),
            "every unread re-key is undone"
        );
        assert_eq!(count("project.resplit_delivered"), 0);
        // A client that reads its answer.
        let (status, body) = raw_roundtrip(&d.socket, &resplit);
        assert_eq!(status, 201, "{body}");
        let s1 = Shares {
            admin: body["admin_share"].as_str().unwrap().to_owned(),
            member: body["member_share"].as_str().unwrap().to_owned(),
        };
        lock(c).await;
        let r = c.unlock_half("genomics", "root", &s0.admin).await;
        assert_eq!(r.status, 200);
        let r = c.unlock_half("genomics", "alice", &s0.member).await;
        assert_eq!((r.status, r.code()), (409, "invalid_share"), "{r:?}");
        unlock(c, "genomics", &s1, "alice").await;
        let r = c.start(&vm, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(wait_for_file_containing(
            &serial_log(d, &vm),
            "REKEY-SURVIVES",
            Duration::from_secs(20)
        ));
    });
}

/// Defect 2: hung-up operations run to their end with their audit row: a start by a user,
/// a stop, a drive creation, a project creation (undone: nobody read its shares).
#[test]
fn hung_up_operations_run_to_their_end() {
    mt().block_on(async {
        let w = world(Opts::default(), "HUNG").await;
        let (d, c, vm) = (&w.d, &w.c, w.vm("web"));
        let start = raw_request("POST", &format!("/v1/vms/{vm}/start"), Some("bob"), None);
        let stop = raw_request("POST", &format!("/v1/vms/{vm}/stop"), Some("alice"), None);
        for us in [0, 1_000, 20_000] {
            let before = audit_rows(c, &format!("&vm={vm}")).await.len();
            hang_up(&d.socket, &start, Duration::from_micros(us));
            eventually(
                Duration::from_secs(30),
                "the hung-up start is recorded",
                || async { audit_rows(c, &format!("&vm={vm}")).await.len() > before },
            )
            .await;
            let rows = audit_rows(c, &format!("&vm={vm}")).await;
            let row = rows.iter().find(|e| e["action"] == "vm.start").unwrap();
            assert_eq!(
                (&row["actor"], &row["outcome"]),
                (&json!("bob"), &json!("ok"))
            );
            assert!(domain_running(&vm));
            assert_eq!(
                c.get(&format!("/v1/vms/{vm}"), "bob").await.body["state"],
                "running"
            );
            // A gentle stop, hung up: the guest ignores ACPI, the stop destroys it after the
            // timeout, and the record names alice, not the daemon.
            hang_up(&d.socket, &stop, Duration::from_micros(us));
            eventually(Duration::from_secs(30), "the hung-up stop ends", || async {
                c.get(&format!("/v1/vms/{vm}"), "alice").await.body["state"] == "stopped"
            })
            .await;
            let rows = audit_rows(c, &format!("&vm={vm}")).await;
            assert_eq!(rows[0]["action"], "vm.stop", "{rows:?}");
            assert_eq!(rows[0]["actor"], "alice");
            assert_eq!(rows[0]["detail"], "reason=stop via=destroy");
            assert!(!domain_running(&vm));
        }
        // Drive creation, hung up: every image has its row, every row its image.
        let create = |n: usize| {
            raw_request(
                "POST",
                "/v1/drives",
                Some("alice"),
                Some(&json!({"project": "genomics", "name": format!("hung{n}"), "size_mib": 16})),
            )
        };
        for (i, us) in [0u64, 5_000, 50_000, 500_000].into_iter().enumerate() {
            hang_up(&d.socket, &create(i), Duration::from_micros(us));
        }
        eventually(
            Duration::from_secs(60),
            "four hung-up drives are created",
            || async {
                audit_rows(c, "")
                    .await
                    .iter()
                    .filter(|e| e["action"] == "drive.create")
                    .count()
                    == 5
            },
        )
        .await;
        let mut files = image_files(d);
        let mut rows = storage_rows(d);
        files.sort();
        rows.sort();
        assert_eq!(files, rows);
        assert_eq!(
            c.get("/v1/drives", "alice")
                .await
                .body
                .as_array()
                .unwrap()
                .len(),
            5
        );
        // Project creation, hung up: nobody read the shares, so the project is undone.
        for (i, us) in [0u64, 1_000, 20_000].into_iter().enumerate() {
            let name = format!("lost{i}");
            hang_up(
                &d.socket,
                &raw_request(
                    "POST",
                    "/v1/projects",
                    Some("root"),
                    Some(&json!({"name": name, "members": ["alice"]})),
                ),
                Duration::from_micros(us),
            );
            eventually(
                Duration::from_secs(20),
                "the unread project is undone",
                || async {
                    audit_rows(c, "").await.iter().any(|e| {
                        e["action"] == "project.create_undone" && e["target"] == name.as_str()
                    })
                },
            )
            .await;
            let listed = c.get("/v1/projects", "root").await;
            assert!(
                !String::from_utf8_lossy(&listed.raw).contains(&name),
                "{listed:?}"
            );
            // The name is free again.
            project(c, &name, &["alice"]).await;
        }
    });
}

/// Defect 2, the crash half: an image file no drive names (a daemon killed between
/// creating a file and recording it) is removed and reported at the next start; a file of
/// another kind is left alone.
#[test]
fn start_up_removes_images_without_rows() {
    mt().block_on(async {
        let mut w = world(Opts::default(), "ORPHAN").await;
        let (c, drv) = (w.c.clone(), w.drive("boot"));
        let dir = w.d.state().join("drives");
        let orphan = dir.join(format!("{}.qcow2", uuid::Uuid::new_v4()));
        std::fs::write(&orphan, b"not an image").unwrap();
        let other = dir.join("README");
        std::fs::write(&other, b"operator notes").unwrap();
        w.d.kill9();
        w.d.spawn();
        assert!(!orphan.exists(), "the orphan image survived a restart");
        assert!(other.exists(), "a file vmwarden did not make was removed");
        assert!(w
            .d
            .log_text()
            .contains("removing an image file that no drive names"));
        let kept = dir.join(format!("{}.qcow2", storage_of(&w.d, &drv)));
        assert!(kept.exists());
        assert_eq!(
            c.get(&format!("/v1/drives/{drv}"), "alice").await.status,
            200
        );
    });
}

/// Defect 3: a share to a user races the deletion of that user. Whatever wins, no role and
/// no drive ownership survives for a name that is not registered, and a new user of the
/// same name inherits nothing.
#[test]
fn deleting_a_user_races_a_share() {
    mt().block_on(async {
        let w = world(Opts::default(), "RACE").await;
        let (d, c, vm) = (&w.d, &w.c, w.vm("web"));
        for round in 0..15 {
            let name = format!("tz{round}");
            let put = |team: &'static str| {
                let (c, name) = (c.clone(), name.clone());
                async move {
                    let r = c
                        .req("PUT", &format!("/v1/users/{name}"), Some("root"), Some(json!({"team": team})))
                        .await;
                    assert_eq!(r.status, 200, "{r:?}");
                    let r = c
                        .req("PUT", &format!("/v1/projects/genomics/members/{name}"), Some("root"), None)
                        .await;
                    assert_eq!(r.status, 200, "{r:?}");
                }
            };
            put("lab").await;
            let (c1, c2, v, n1, n2) = (c.clone(), c.clone(), vm.clone(), name.clone(), name.clone());
            let share = tokio::spawn(async move {
                c1.req(
                    "PUT",
                    &format!("/v1/vms/{v}/members/{n1}"),
                    Some("alice"),
                    Some(json!({"role": "owner", "confirm_drive_access": true})),
                )
                .await
            });
            let delete = tokio::spawn(async move {
                c2.req("DELETE", &format!("/v1/users/{n2}"), Some("root"), None).await
            });
            let (share, delete) = (share.await.unwrap(), delete.await.unwrap());
            let dangling = d.sql(
                "SELECT (SELECT COUNT(*) FROM vm_roles WHERE username NOT IN (SELECT name FROM users))
                      + (SELECT COUNT(*) FROM drive_owners WHERE username NOT IN (SELECT name FROM users))",
                &[],
            )[0]
            .int(0)
            .unwrap();
            assert_eq!(dangling, 0, "round {round}: share {share:?}, delete {delete:?}");
            if delete.status == 200 && delete.body["change"] == "removed" {
                put("other").await;
                assert!(c.get("/v1/vms", &name).await.body.as_array().unwrap().is_empty());
                assert!(c.get("/v1/drives", &name).await.body.as_array().unwrap().is_empty());
                let m = c.get(&format!("/v1/vms/{vm}/members"), "alice").await;
                assert!(!String::from_utf8_lossy(&m.raw).contains(&name), "{m:?}");
            } else {
                assert_eq!((delete.status, delete.code()), (409, "user_has_roles"), "{delete:?}");
                assert_eq!(share.status, 200, "{share:?}");
                let r = c.unshare(&vm, "alice", &name).await;
                assert_eq!(r.status, 200, "{r:?}");
            }
            let m = c.get(&format!("/v1/vms/{vm}/members"), "alice").await;
            assert!(m.body["owners"].as_array().unwrap().len() <= 2);
        }
    });
}

/// Defect 4: a share races a team change. Whatever wins, every role holder is in the VM's
/// team.
#[test]
fn team_change_races_a_share() {
    mt().block_on(async {
        let w = world(Opts::default(), "TEAM").await;
        let (d, c, vm) = (&w.d, &w.c, w.vm("web"));
        for round in 0..15 {
            let name = format!("tx{round}");
            c.req(
                "PUT",
                &format!("/v1/users/{name}"),
                Some("root"),
                Some(json!({"team": "lab"})),
            )
            .await;
            c.req(
                "PUT",
                &format!("/v1/projects/genomics/members/{name}"),
                Some("root"),
                None,
            )
            .await;
            let (c1, c2, v, n1, n2) =
                (c.clone(), c.clone(), vm.clone(), name.clone(), name.clone());
            let share = tokio::spawn(async move {
                c1.req(
                    "PUT",
                    &format!("/v1/vms/{v}/members/{n1}"),
                    Some("alice"),
                    Some(json!({"role": "user"})),
                )
                .await
            });
            let moved = tokio::spawn(async move {
                c2.req(
                    "PUT",
                    &format!("/v1/users/{n2}"),
                    Some("root"),
                    Some(json!({"team": "other"})),
                )
                .await
            });
            let (share, moved) = (share.await.unwrap(), moved.await.unwrap());
            let crossed = d.sql(
                "SELECT COUNT(*) FROM vm_roles r JOIN vms v ON v.id = r.vm
                 JOIN users u ON u.name = r.username WHERE u.team != v.team",
                &[],
            )[0]
            .int(0)
            .unwrap();
            assert_eq!(crossed, 0, "round {round}: share {share:?}, move {moved:?}");
            if moved.status == 200 {
                let r = c
                    .req("POST", &format!("/v1/vms/{vm}/start"), Some(&name), None)
                    .await;
                assert_eq!(r.status, 404, "{r:?}");
            } else {
                assert_eq!(
                    (moved.status, moved.code()),
                    (409, "user_has_roles"),
                    "{moved:?}"
                );
            }
        }
    });
}

/// Defect 5, the second half: `DELETE /v1/projects/{p}` removes only an empty project.
#[test]
fn only_an_empty_project_is_deleted() {
    mt().block_on(async {
        let w = world(Opts::default(), "DEL").await;
        let c = &w.c;
        let r = c
            .req("DELETE", "/v1/projects/genomics", Some("root"), None)
            .await;
        assert_eq!((r.status, r.code()), (409, "project_not_empty"), "{r:?}");
        project(c, "empty", &["alice"]).await;
        let r = c
            .req("DELETE", "/v1/projects/empty", Some("alice"), None)
            .await;
        assert_eq!(r.status, 403, "{r:?}");
        let r = c
            .req("DELETE", "/v1/projects/empty", Some("root"), None)
            .await;
        assert_eq!(
            (r.status, &r.body["change"]),
            (200, &json!("removed")),
            "{r:?}"
        );
        let r = c
            .req("DELETE", "/v1/projects/empty", Some("root"), None)
            .await;
        assert_eq!(r.status, 404, "{r:?}");
        assert!(audit_rows(c, "")
            .await
            .iter()
            .any(|e| e["action"] == "project.delete"));
    });
}

/// Defect 6: hostile local peers cannot lock anyone else out. `nobody` holds 40 connections
/// pipelining requests it never reads; a registered user opens 40 event streams; another
/// peer sends 2,000 made-up methods. Root's health check and other users' requests through
/// the orchestrator are served throughout, the hog's connections are cut by the write
/// timeout, and the metrics do not grow a label per method.
#[test]
fn hostile_peers_cannot_lock_anyone_out() {
    mt().block_on(async {
        let d = Daemon::start(Opts {
            limits: "write_timeout = \"1s\"\nheader_timeout = \"2s\"\n".into(),
            ..Default::default()
        });
        let c = d.client();
        users(&c, &[("alice", "lab"), ("mallory", "lab"), ("nobody", "lab")]).await;
        let mut pipelined = Vec::new();
        for _ in 0..200 {
            pipelined.extend(raw_request("GET", "/v1/openapi.json", None, None));
        }
        let hog = hog_as(65534, &d.socket, 40, &pipelined);
        // Give the hog time to fill its connections (not a measurement: any later moment
        // would do as well).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let guard = Duration::from_secs(10);
        let h = tokio::time::timeout(guard, c.get("/v1/health", "root")).await.expect("health answered");
        assert_eq!(h.status, 200);
        let me = tokio::time::timeout(guard, c.get("/v1/me", "alice")).await.expect("alice served");
        assert_eq!(me.status, 200);
        // The write timeout cuts the hog's connections; nobody is served again (a 200 from
        // /v1/me, not a 503 for too many connections).
        eventually(Duration::from_secs(20), "the hog's connections are cut", || async {
            let out = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "socat", "-t", "2", "-"])
                .arg(format!("UNIX-CONNECT:{}", d.socket.display()))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut ch| {
                    use std::io::Write;
                    ch.stdin
                        .take()
                        .unwrap()
                        .write_all(b"GET /v1/me HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
                    ch.wait_with_output()
                })
                .unwrap();
            String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200")
        })
        .await;
        unhog(hog);
        // Event streams: capped per principal, counted apart from request slots.
        let mut streams = vec![];
        let mut refused = 0;
        for _ in 0..40 {
            let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .uri("/v1/events")
                .header("host", "x")
                .header("vmwarden-user", "mallory")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            match resp.status().as_u16() {
                200 => streams.push((sender, resp)),
                429 => refused += 1,
                s => panic!("unexpected {s}"),
            }
        }
        assert_eq!((streams.len(), refused), (8, 32));
        // Another user's stream is not capped by mallory's.
        let _alice_events = Events::open(&c, "alice").await;
        assert_eq!(c.get("/v1/health", "root").await.status, 200);
        assert_eq!(c.get("/v1/me", "alice").await.status, 200);
        drop(streams);
        // 2,000 made-up methods.
        for i in 0..2000 {
            let req = format!("M{i} /v1/users HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n");
            let (status, _) = raw_roundtrip(&d.socket, req.as_bytes());
            assert_eq!(status, 405);
        }
        let m = c.get("/metrics", "root").await;
        let text = String::from_utf8_lossy(&m.raw);
        let lines = text.lines().filter(|l| l.starts_with("vmwarden_http_requests_total")).count();
        assert!(lines < 30, "{lines} request counter lines:\n{text}");
        assert!(text.contains("vmwarden_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"405\"} 2000"), "{text}");
    });
}

/// Defect 7: with the state directory full, an unlock half or a lock answers 507 and
/// changes nothing; once space is back, the same calls work.
#[test]
fn full_disk_answers_507_and_changes_nothing() {
    mt().block_on(async {
        // SQLite on both runs: a full disk under the PostgreSQL server is not this daemon's
        // file, and a tmpfs state directory holds only the SQLite store.
        let d = Daemon::start(Opts {
            tmpfs_state: Some("2m".into()),
            store_url: Some("sqlite".into()),
            ..Default::default()
        });
        let c = d.client();
        users(&c, &[("alice", "lab")]).await;
        let s = project(&c, "genomics", &["alice"]).await;
        let filler = d.state().join("filler");
        let fill = || {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let block = vec![0u8; 4096];
            while f.write_all(&block).is_ok() {}
            let _ = f.sync_all();
        };
        let status = |c: &Client| {
            let c = c.clone();
            async move { c.get("/v1/projects", "alice").await.body[0].clone() }
        };
        fill();
        let r = c.unlock_half("genomics", "root", &s.admin).await;
        assert_eq!((r.status, r.code()), (507, "insufficient_storage"), "{r:?}");
        assert_eq!(
            status(&c).await["pending"],
            json!([]),
            "a refused half was kept"
        );
        std::fs::remove_file(&filler).unwrap();
        unlock(&c, "genomics", &s, "alice").await;
        fill();
        let r = c.lock("genomics", "alice").await;
        assert_eq!((r.status, r.code()), (507, "insufficient_storage"), "{r:?}");
        assert_eq!(
            status(&c).await["locked"],
            false,
            "locked although the answer was 507"
        );
        let r = c
            .req(
                "POST",
                "/v1/drives",
                Some("alice"),
                Some(json!({"project": "genomics", "name": "big", "size_mib": 16})),
            )
            .await;
        assert_eq!((r.status, r.code()), (507, "insufficient_storage"), "{r:?}");
        std::fs::remove_file(&filler).unwrap();
        lock(&c).await;
        assert_eq!(status(&c).await["locked"], true);
        let rows = audit_rows(&c, "").await;
        assert_eq!(
            rows.iter()
                .filter(|e| e["action"] == "project.lock")
                .count(),
            1
        );
        assert!(image_files(&d).is_empty(), "{:?}", image_files(&d));
    });
}

/// Defect 8: a stop in progress is visible (`stopping`), a start meanwhile is refused with
/// 409 `vm_stopping`, `wait: false` answers 202 at once, a forced stop ends the wait, and a
/// stop of a stopped VM changes nothing.
#[test]
fn stopping_is_a_state_of_its_own() {
    mt().block_on(async {
        let w = world(Opts::default(), "STOPPING").await;
        let (c, vm) = (&w.c, w.vm("web"));
        let mut ev = Events::open(c, "bob").await;
        assert_eq!(c.start(&vm, "bob").await.status, 200);
        let r = c
            .req(
                "POST",
                &format!("/v1/vms/{vm}/stop"),
                Some("bob"),
                Some(json!({"wait": false})),
            )
            .await;
        assert_eq!(
            (r.status, &r.body["state"]),
            (202, &json!("stopping")),
            "{r:?}"
        );
        let r = c.start(&vm, "alice").await;
        assert_eq!((r.status, r.code()), (409, "vm_stopping"), "{r:?}");
        assert_eq!(
            c.get(&format!("/v1/vms/{vm}"), "alice").await.body["state"],
            "stopping"
        );
        let host = c.get("/v1/host/vms", "root").await;
        assert_eq!(host.body[0]["state"], "stopping");
        let r = c.stop(&vm, "alice", true).await;
        assert_eq!(
            (r.status, &r.body["state"]),
            (200, &json!("stopped")),
            "{r:?}"
        );
        assert!(ev
            .wait_for("vm.state", &["\"stopping\""], Duration::from_secs(5))
            .await
            .is_some());
        let stopped = ev
            .wait_for("vm.state", &["\"stopped\""], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(stopped["data"]["via"], "destroy");
        let rows = audit_rows(c, &format!("&vm={vm}")).await;
        let stops = rows.iter().filter(|e| e["action"] == "vm.stop").count();
        // A stop of a stopped VM: no event, no row.
        let r = c.stop(&vm, "alice", true).await;
        assert_eq!((r.status, &r.body["state"]), (200, &json!("stopped")));
        let again = audit_rows(c, &format!("&vm={vm}")).await;
        assert_eq!(
            again.iter().filter(|e| e["action"] == "vm.stop").count(),
            stops
        );
        assert!(ev
            .wait_for("vm.state", &[], Duration::from_millis(500))
            .await
            .is_none());
    });
}
