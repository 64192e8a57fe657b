//! Test harness: a real `vmwardend` process on a real Unix socket, against the host's real
//! libvirtd (qemu:///system) and a real SQLite file, driven over HTTP.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running daemon with its own state directory.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// Extra config lines per section, appended to the test config.
#[derive(Default, Clone)]
pub struct Opts {
    pub libvirt: String,
    pub limits: String,
    pub keys: String,
    pub sharing: String,
    pub idle: String,
    pub uri: Option<String>,
    /// Mount a tmpfs of this size (`2m`) as the state directory.
    pub tmpfs_state: Option<String>,
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "vmwardend" => PathBuf::from(env!("CARGO_BIN_EXE_vmwardend")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_vmwarden")),
    }
}

impl Daemon {
    pub fn start(opts: Opts) -> Daemon {
        // Short paths: sun_path holds 108 bytes. The directory must be traversable by QEMU
        // (libvirt-qemu), so it is 0755 like /var/lib/vmwarden's parents.
        let dir = PathBuf::from(format!("/tmp/vmw-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let socket = dir.join("s.sock");
        let config = dir.join("config.toml");
        let uri = opts.uri.clone().unwrap_or_else(|| "qemu:///system".into());
        let text = format!(
            r#"[daemon]
socket = "{sock}"
socket_group = ""
socket_mode = "0666"
state_dir = "{dir}/state"

[libvirt]
uri = "{uri}"
shutdown_timeout = "3s"
detach_timeout = "3s"
{libvirt}

[access]
admins = ["root"]
orchestrators = ["root"]

[sharing]
{sharing}

[keys]
{keys}

[idle]
{idle}

[limits]
{limits}
"#,
            sock = socket.display(),
            dir = dir.display(),
            libvirt = opts.libvirt,
            sharing = opts.sharing,
            keys = opts.keys,
            idle = opts.idle,
            limits = opts.limits,
        );
        std::fs::write(&config, text).unwrap();
        if let Some(size) = &opts.tmpfs_state {
            let state = dir.join("state");
            std::fs::create_dir_all(&state).unwrap();
            let ok = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0711"),
                    "tmpfs",
                ])
                .arg(&state)
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot mount a tmpfs on {}", state.display());
        }
        let log = dir.join("daemon.log");
        let mut d = Daemon {
            dir,
            socket,
            config,
            log,
            child: None,
        };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin("vmwardend"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // Up means this process listens on the path: a socket left by a killed daemon (held
            // a moment longer by a child it was starting) answers with another pid.
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&self.socket) {
                let peer =
                    nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials);
                if peer.is_ok_and(|c| c.pid() == pid) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "daemon did not come up: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn db(&self) -> PathBuf {
        self.state().join("state.db")
    }

    pub fn client(&self) -> Client {
        Client {
            socket: self.socket.clone(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Destroys every domain this daemon's VMs may have left running.
    pub fn destroy_domains(&self) {
        if let Ok(conn) = rusqlite::Connection::open(self.db()) {
            if let Ok(mut st) = conn.prepare("SELECT id FROM vms") {
                let ids: Vec<String> = st
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .filter_map(Result::ok)
                    .collect();
                for id in ids {
                    let _ = Command::new("virsh")
                        .args(["-q", "-c", "qemu:///system", "destroy", &id])
                        .stderr(Stdio::null())
                        .stdout(Stdio::null())
                        .status();
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.destroy_domains();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount")
            .arg(self.state())
            .stderr(Stdio::null())
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An HTTP/1.1 client on the control socket.
#[derive(Clone)]
pub struct Client {
    pub socket: PathBuf,
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub raw: Vec<u8>,
    pub content_type: String,
    pub retry_after: Option<String>,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Client {
    /// As `req`, but a connection that fails (a daemon killed mid-request) is `None`.
    pub async fn try_req(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Option<Resp> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "vmwarden");
        if let Some(u) = user {
            req = req.header("vmwarden-user", u);
        }
        let body = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let raw = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
        Some(Resp {
            status,
            body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
            raw,
            content_type: String::new(),
            retry_after: None,
        })
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "vmwarden");
        if let Some(u) = user {
            req = req.header("vmwarden-user", u);
        }
        let resp = sender
            .send_request(
                req.body(Full::new(Bytes::from(body.unwrap_or_default())))
                    .unwrap(),
            )
            .await
            .expect("response");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let raw = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Resp {
            status,
            body,
            raw,
            content_type,
            retry_after,
        }
    }

    pub async fn req(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        self.raw(
            method,
            path,
            user,
            body.map(|b| serde_json::to_vec(&b).unwrap()),
        )
        .await
    }

    pub async fn get(&self, path: &str, user: &str) -> Resp {
        self.req("GET", path, Some(user), None).await
    }
}

/// The key holders' copy of a project's shares, as returned once at creation.
pub struct Shares {
    pub admin: String,
    pub member: String,
}

/// Registers `root` (team ops) and the given users (name, team).
pub async fn users(c: &Client, users: &[(&str, &str)]) {
    let r = c
        .req(
            "PUT",
            "/v1/users/root",
            Some("root"),
            Some(json!({"team": "ops"})),
        )
        .await;
    assert!(r.status == 200, "{r:?}");
    for (u, t) in users {
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
    Shares {
        admin: r.body["admin_share"].as_str().unwrap().to_owned(),
        member: r.body["member_share"].as_str().unwrap().to_owned(),
    }
}

pub async fn unlock(c: &Client, project: &str, s: &Shares, member: &str) {
    let r = c
        .req(
            "POST",
            &format!("/v1/projects/{project}/unlock"),
            Some("root"),
            Some(json!({"share": s.admin})),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = c
        .req(
            "POST",
            &format!("/v1/projects/{project}/unlock"),
            Some(member),
            Some(json!({"share": s.member})),
        )
        .await;
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

/// A boot sector that prints `marker` on COM1 and halts (or spins forever with `spin`).
pub fn boot_sector(marker: &str, spin: bool) -> Vec<u8> {
    let mut code: Vec<u8> = vec![
        0xFA, // cli
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xBE, 0x16, 0x7C, // mov si, 0x7c16 (msg)
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xAC, // loop: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp loop
    ];
    if spin {
        code.extend_from_slice(&[0xEB, 0xFE, 0x90]); // done: jmp $ (busy), pad
    } else {
        code.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // done: hlt; jmp done
    }
    assert_eq!(code.len(), 22);
    code.extend_from_slice(marker.as_bytes());
    code.push(0);
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xAA]);
    code
}

/// Writes a boot sector into an encrypted drive as the key holders can: rebuild K from the
/// shares, unwrap the drive's passphrase from the database, write through LUKS.
pub fn write_boot_sector(d: &Daemon, s: &Shares, project: &str, drive: &str, sector: &[u8]) {
    let k = vmwarden::keys::combine(s.admin.as_bytes(), s.member.as_bytes()).unwrap();
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    let (wrapped, storage): (Vec<u8>, String) = conn
        .query_row(
            "SELECT wrapped, storage FROM drives WHERE id = ?1",
            [drive],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let p = vmwarden::model::ProjectName::parse(project).unwrap();
    let pass = vmwarden::keys::unwrap(&k, &p, drive, &wrapped).unwrap();
    let path = d.state().join("drives").join(format!("{storage}.qcow2"));
    vmwarden::hypervisor::image::write_raw_via_luks(&path, &pass, sector).unwrap();
}

/// The storage id (image file name) of a drive, which no API answer shows.
pub fn storage_of(d: &Daemon, drive: &str) -> String {
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    conn.query_row("SELECT storage FROM drives WHERE id = ?1", [drive], |r| {
        r.get(0)
    })
    .unwrap()
}

pub fn serial_log(d: &Daemon, vm: &str) -> PathBuf {
    d.state().join("logs").join(format!("{vm}.serial.log"))
}

pub fn wait_for_file_containing(path: &Path, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

pub fn domain_running(id: &str) -> bool {
    virsh(&["list", "--name"]).lines().any(|l| l.trim() == id)
}

/// libvirt secrets vmwarden defined for these drives (tests run in parallel, so each looks
/// only at its own drives).
pub fn our_secrets(drives: &[&str]) -> Vec<String> {
    let list = virsh(&["secret-list"]);
    list.lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|uuid| {
            let xml = virsh(&["secret-dumpxml", uuid]);
            drives
                .iter()
                .any(|d| xml.contains(&format!("vmwarden drive {d}")))
        })
        .map(str::to_owned)
        .collect()
}

/// A `GET /v1/events` subscription: raw SSE frames parsed into (kind, data).
pub struct Events {
    pub rx: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    pub raw: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Events {
    pub async fn open(c: &Client, user: &str) -> Events {
        let stream = tokio::net::UnixStream::connect(&c.socket).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/v1/events")
            .header("host", "x")
            .header("vmwarden-user", user)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let mut resp = sender.send_request(req).await.unwrap();
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

    /// Waits for an event of `kind` whose data contains `needle`, up to `within`.
    pub async fn wait_for(
        &mut self,
        kind: &str,
        needles: &[&str],
        within: Duration,
    ) -> Option<serde_json::Value> {
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

pub fn qemu_pid(vm: &str) -> i32 {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{vm}.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A whole HTTP/1.1 request as bytes, as a raw client would send it.
pub fn raw_request(
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Vec<u8> {
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(u) = user {
        r.push_str(&format!("vmwarden-user: {u}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(&body);
    r
}

/// Sends `request` and hangs up `after` it, reading nothing: the client that gives up.
pub fn hang_up(socket: &Path, request: &[u8], after: Duration) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(request).unwrap();
    if !after.is_zero() {
        std::thread::sleep(after);
    }
    drop(s);
}

/// Sends `request` and reads the whole answer (one response; `connection: close` is not
/// assumed, the body length is).
pub fn raw_roundtrip(socket: &Path, request: &[u8]) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or_default();
                return (status, body);
            }
        }
    }
    panic!(
        "connection closed before a whole answer: {}",
        String::from_utf8_lossy(&buf)
    );
}

/// Waits until `f` holds, polling; panics with `what` after `within` (a guard against a
/// hang, not a measurement).
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Audit rows as JSON (root's view).
pub async fn audit_rows(c: &Client, query: &str) -> Vec<serde_json::Value> {
    let r = c
        .get(&format!("/v1/audit?limit=10000{query}"), "root")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body.as_array().unwrap().clone()
}

/// Image files in a daemon's drives folder.
pub fn image_files(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.state().join("drives"))
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Storage ids of every drive row (read straight from the database file).
pub fn storage_rows(d: &Daemon) -> Vec<String> {
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    let mut st = conn.prepare("SELECT storage FROM drives").unwrap();
    let rows = st
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| format!("{}.qcow2", r.unwrap()))
        .collect();
    rows
}

/// Holds `n` connections to `socket` open as Unix user `uid` (a forked child that drops
/// root), each having sent `payload` and reading nothing. Kill the returned child to free
/// them. Everything the child needs is prepared before the fork, so the child only makes
/// system calls (safe after fork in a threaded process).
pub fn hog_as(uid: u32, path: &Path, n: usize, payload: &[u8]) -> nix::unistd::Pid {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(path).unwrap();
    let payload = payload.to_vec();
    // SAFETY: the child only calls async-signal-safe functions (setgroups, setgid, setuid,
    // socket, connect, write, pause, _exit) on memory prepared before the fork.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Parent { child } => child,
        nix::unistd::ForkResult::Child => {
            let gid = nix::unistd::Gid::from_raw(uid);
            let ok = nix::unistd::setgroups(&[]).is_ok()
                && nix::unistd::setgid(gid).is_ok()
                && nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).is_ok();
            if !ok {
                // SAFETY: _exit ends the child without running the parent's destructors.
                unsafe { libc::_exit(2) };
            }
            for _ in 0..n {
                if let Ok(fd) = socket(
                    AddressFamily::Unix,
                    SockType::Stream,
                    SockFlag::empty(),
                    None,
                ) {
                    use std::os::fd::AsRawFd;
                    if connect(fd.as_raw_fd(), &addr).is_ok() {
                        let _ = nix::unistd::write(&fd, &payload);
                    }
                    std::mem::forget(fd);
                }
            }
            loop {
                // SAFETY: pause only waits for a signal.
                unsafe { libc::pause() };
            }
        }
    }
}

/// Ends a child started by `hog_as`.
pub fn unhog(pid: nix::unistd::Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}

/// Sends one raw request as Unix user `uid` (setpriv + socat) and returns the raw answer.
pub fn as_uid(uid: u32, socket: &Path, request: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "socat",
            "-t",
            "5",
            "-",
        ])
        .arg(format!("UNIX-CONNECT:{}", socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut req = request.to_vec();
    // One request per connection: the daemon closes after answering it.
    if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
        req.splice(end + 2..end + 2, b"connection: close\r\n".iter().copied());
    }
    child.stdin.take().unwrap().write_all(&req).unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
}
