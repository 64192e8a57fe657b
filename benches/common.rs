//! Shared bench helpers: a vmwardend process with a temporary state directory, an HTTP client
//! over a Unix socket, and latency statistics.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Child,
}

impl Daemon {
    pub fn start(extra: &str) -> Daemon {
        let dir = PathBuf::from(format!("/tmp/vmwb-{}", uuid::Uuid::new_v4().simple()));
        Self::start_in(dir, extra)
    }

    /// Starts (or restarts) a daemon whose state lives in `dir`.
    pub fn start_in(dir: PathBuf, extra: &str) -> Daemon {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let socket = dir.join("s.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nsocket = \"{}\"\nsocket_group = \"\"\nstate_dir = \"{}/state\"\n[access]\nadmins = [\"root\"]\norchestrators = [\"root\"]\n{extra}\n",
                socket.display(),
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vmwardend"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { dir, socket, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
}

impl Daemon {
    /// Stops the process and keeps the state directory.
    pub fn stop_keep(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self.dir.clone();
        self.dir = PathBuf::new();
        dir
    }

    /// Resident set size of the daemon, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(socket: &std::path::Path) -> Conn {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, Bytes) {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "x");
        if let Some(u) = user {
            req = req.header("vmwarden-user", u);
        }
        let body = body
            .map(|b| Bytes::from(serde_json::to_vec(&b).unwrap()))
            .unwrap_or_default();
        self.sender.ready().await.unwrap();
        let r = self
            .sender
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.into_body().collect().await.unwrap().to_bytes())
    }
}

pub struct Stats {
    pub n: usize,
    pub secs: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Stats {
    pub fn from(mut lat: Vec<Duration>, secs: f64) -> Stats {
        lat.sort();
        let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
        Stats {
            n: lat.len(),
            secs,
            p50: q(0.50),
            p99: q(0.99),
        }
    }
    pub fn rps(&self) -> f64 {
        self.n as f64 / self.secs
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
