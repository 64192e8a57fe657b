//! The tests' view of the one client (`vmwarden::client`): answers as JSON, the common calls
//! written once, and the event stream parsed into (kind, data).

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A client of a daemon's socket; the caller is root, acting for `user` where one is given.
#[derive(Clone)]
pub struct Client {
    pub socket: PathBuf,
    inner: vmwarden::client::Client,
}

/// An answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub raw: Vec<u8>,
    pub content_type: String,
    pub retry_after: Option<String>,
}

impl Resp {
    /// The problem code, if any.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    fn from(r: vmwarden::client::Reply) -> Resp {
        let header = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        Resp {
            status: r.status,
            body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            content_type: header("content-type").unwrap_or_default(),
            retry_after: header("retry-after"),
            raw: r.body.to_vec(),
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A multi-threaded runtime, for tests that race requests.
pub fn mt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).unwrap()
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_owned(),
            inner: vmwarden::client::Client::new(socket),
        }
    }

    /// As `req`, but a connection that fails (a daemon killed mid-request) is `None`.
    pub async fn try_req(
        &self,
        m: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Option<Resp> {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap()));
        self.inner
            .call_as(method(m), path, user, body)
            .await
            .ok()
            .map(Resp::from)
    }

    /// One request with a raw body.
    pub async fn raw(
        &self,
        m: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        Resp::from(
            self.inner
                .call_as(method(m), path, user, body.map(Bytes::from))
                .await
                .expect("response"),
        )
    }

    /// One request with a JSON body.
    pub async fn req(&self, m: &str, path: &str, user: Option<&str>, body: Option<Value>) -> Resp {
        self.raw(m, path, user, body.map(|b| serde_json::to_vec(&b).unwrap()))
            .await
    }

    pub async fn get(&self, path: &str, user: &str) -> Resp {
        self.req("GET", path, Some(user), None).await
    }

    /// `POST /v1/vms/{vm}/start` as `user`.
    pub async fn start(&self, vm: &str, user: &str) -> Resp {
        self.req("POST", &format!("/v1/vms/{vm}/start"), Some(user), None)
            .await
    }

    /// `POST /v1/vms/{vm}/stop` as `user`.
    pub async fn stop(&self, vm: &str, user: &str, force: bool) -> Resp {
        self.req(
            "POST",
            &format!("/v1/vms/{vm}/stop"),
            Some(user),
            Some(json!({"force": force})),
        )
        .await
    }

    /// `PUT /v1/vms/{vm}/members/{to}` as `by`.
    pub async fn share(&self, vm: &str, by: &str, to: &str, role: &str, confirm: bool) -> Resp {
        self.req(
            "PUT",
            &format!("/v1/vms/{vm}/members/{to}"),
            Some(by),
            Some(json!({"role": role, "confirm_drive_access": confirm})),
        )
        .await
    }

    /// `DELETE /v1/vms/{vm}/members/{who}` as `by`.
    pub async fn unshare(&self, vm: &str, by: &str, who: &str) -> Resp {
        self.req(
            "DELETE",
            &format!("/v1/vms/{vm}/members/{who}"),
            Some(by),
            None,
        )
        .await
    }

    /// `POST /v1/projects/{project}/lock` as `user`.
    pub async fn lock(&self, project: &str, user: &str) -> Resp {
        self.req(
            "POST",
            &format!("/v1/projects/{project}/lock"),
            Some(user),
            None,
        )
        .await
    }

    /// One unlock half.
    pub async fn unlock_half(&self, project: &str, user: &str, share: &str) -> Resp {
        self.req(
            "POST",
            &format!("/v1/projects/{project}/unlock"),
            Some(user),
            Some(json!({"share": share})),
        )
        .await
    }
}

/// The key holders' copy of a project's shares, as returned once at creation.
#[derive(Clone)]
pub struct Shares {
    pub admin: String,
    pub member: String,
}

impl Shares {
    /// The pair an answer carries (project creation, re-key).
    pub fn of(body: &Value) -> Shares {
        Shares {
            admin: body["admin_share"].as_str().unwrap().to_owned(),
            member: body["member_share"].as_str().unwrap().to_owned(),
        }
    }
}

/// Registers `root` (team ops) and the given users (name, team).
pub async fn users(c: &Client, users: &[(&str, &str)]) {
    for (u, t) in [("root", "ops")].iter().chain(users) {
        let r = c
            .req(
                "PUT",
                &format!("/v1/users/{u}"),
                Some("root"),
                Some(json!({"team": t})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
}

pub async fn project(c: &Client, name: &str, members: &[&str]) -> Shares {
    let r = c
        .req(
            "POST",
            "/v1/projects",
            Some("root"),
            Some(json!({"name": name, "members": members})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    Shares::of(&r.body)
}

/// Both halves: the admin's as root, the member's as `member`; the project must end unlocked.
pub async fn unlock(c: &Client, project: &str, s: &Shares, member: &str) {
    let r = c.unlock_half(project, "root", &s.admin).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.unlock_half(project, member, &s.member).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["locked"], false, "{r:?}");
}

pub async fn drive(c: &Client, user: &str, project: &str, name: &str) -> String {
    let r = c
        .req(
            "POST",
            "/v1/drives",
            Some(user),
            Some(json!({"project": project, "name": name, "size_mib": 16})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    r.body["id"].as_str().unwrap().to_owned()
}

pub async fn vm(c: &Client, user: &str, project: &str, name: &str, drives: &[&str]) -> String {
    let r = c
        .req("POST", "/v1/vms", Some(user), Some(json!({"name": name, "project": project, "vcpus": 1, "memory_mib": 32, "drives": drives})))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    r.body["id"].as_str().unwrap().to_owned()
}

/// Audit rows as JSON (root's view).
pub async fn audit_rows(c: &Client, query: &str) -> Vec<Value> {
    let r = c
        .get(&format!("/v1/audit?limit=10000{query}"), "root")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body.as_array().unwrap().clone()
}

/// A `GET /v1/events` subscription: raw SSE frames parsed into (kind, data).
pub struct Events {
    pub rx: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    pub raw: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Events {
    pub async fn open(c: &Client, user: &str) -> Events {
        let mut resp = c
            .inner
            .send(Method::GET, "/v1/events", Some(user), None)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let raw = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let raw2 = raw.clone();
        tokio::spawn(async move {
            let mut buf = String::new();
            while let Some(Ok(frame)) = resp.body_mut().frame().await {
                if let Ok(data) = frame.into_data() {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    raw2.lock().unwrap().push_str(&text);
                    buf.push_str(&text);
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        let mut kind = String::new();
                        let mut data = String::new();
                        for line in block.lines() {
                            if let Some(k) = line.strip_prefix("event: ") {
                                kind = k.to_owned();
                            } else if let Some(d) = line.strip_prefix("data: ") {
                                data = d.to_owned();
                            }
                        }
                        if !kind.is_empty() {
                            let _ = tx.send((kind, data));
                        }
                    }
                }
            }
        });
        Events { rx, raw }
    }

    /// Waits for an event of `kind` whose data contains every needle, up to `within`.
    pub async fn wait_for(
        &mut self,
        kind: &str,
        needles: &[&str],
        within: Duration,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if ev.0 == kind && needles.iter().all(|n| ev.1.contains(n)) {
                return serde_json::from_str(&ev.1).ok();
            }
        }
    }
}
