//! The one daemon launcher: a real `vmwardend` process with its own state directory and
//! config, on a real Unix socket, against the host's libvirtd.

use super::client::Client;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running daemon with its own state directory.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// `sqlite` or the PostgreSQL URL of this daemon's database.
    pub store_url: String,
    /// The PostgreSQL store beside the daemon, opened once (a pool and a schema check per
    /// statement would slow the suites that check invariants after every step).
    pg: std::sync::OnceLock<vmwarden::store::Store>,
    child: Option<Child>,
    quiet: bool,
    /// Enroll the host once up (PostgreSQL).
    pub enroll: bool,
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
    /// Log only warnings (benchmarks: logging is not what they measure).
    pub quiet: bool,
    /// `[fleet]` lines.
    pub fleet: String,
    /// `[storage]` lines.
    pub storage: String,
    /// This store instead of the one `VMWARDEN_TEST_STORE` picks (agents of one fleet).
    pub store_url: Option<String>,
    /// On PostgreSQL, leave the host un-enrolled (by default the harness enrolls it once up,
    /// as an admin would after comparing its fingerprint).
    pub unenrolled: bool,
}

/// `vmwarden args` (as root, times in UTC) against one daemon's socket; its standard output.
pub fn cli(d: &Daemon, args: &[&str]) -> String {
    let o = Command::new(bin("vmwarden"))
        .env("VMWARDEN_SOCKET", &d.socket)
        .env("TZ", "UTC")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "vmwardend" => PathBuf::from(env!("CARGO_BIN_EXE_vmwardend")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_vmwarden")),
    }
}

impl Daemon {
    /// A daemon with a fresh state directory.
    pub fn start(opts: Opts) -> Daemon {
        // Short paths: sun_path holds 108 bytes.
        let dir = PathBuf::from(format!("/tmp/vmw-{}", uuid::Uuid::new_v4().simple()));
        Self::start_in(dir, opts)
    }

    /// A daemon whose state lives in `dir` (kept from an earlier daemon, or new).
    pub fn start_in(dir: PathBuf, opts: Opts) -> Daemon {
        // The directory must be traversable by QEMU (libvirt-qemu), so it is 0755 like
        // /var/lib/vmwarden's parents.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let socket = dir.join("s.sock");
        let config = dir.join("config.toml");
        let uri = opts.uri.clone().unwrap_or_else(|| "qemu:///system".into());
        let store_url = opts.store_url.clone().unwrap_or_else(store_url);
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

[store]
url = "{store}"

[fleet]
{fleet}

[storage]
{storage}
"#,
            sock = socket.display(),
            dir = dir.display(),
            libvirt = opts.libvirt,
            sharing = opts.sharing,
            keys = opts.keys,
            idle = opts.idle,
            limits = opts.limits,
            store = store_url,
            fleet = opts.fleet,
            storage = opts.storage,
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
            store_url,
            pg: std::sync::OnceLock::new(),
            child: None,
            quiet: opts.quiet,
            enroll: !opts.unenrolled,
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
            .env("RUST_LOG", if self.quiet { "warn" } else { "debug" })
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
                    if self.enroll && self.store_url.starts_with("postgres") {
                        self.enroll_self();
                    }
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

    /// The fingerprint of this agent's host key, read on the host (its state folder).
    pub fn fingerprint(&self) -> String {
        vmwarden::keys::host::HostKey::load_or_create(&self.state().join("host-key"))
            .unwrap()
            .public()
            .fingerprint()
    }

    /// Enrolls this agent's host through its own socket (a no-op once enrolled).
    pub fn enroll_self(&self) {
        let fp = self.fingerprint();
        let (status, hosts) = super::raw_roundtrip(
            &self.socket,
            &super::raw_request("GET", "/v1/fleet/hosts", Some("root"), None),
        );
        assert_eq!(status, 200, "{hosts}");
        let me = hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["fingerprint"] == fp.as_str())
            .unwrap_or_else(|| panic!("no host published {fp}: {hosts}"));
        if me["enrolled"] == true {
            return;
        }
        let name = me["name"].as_str().unwrap();
        let (status, body) = super::raw_roundtrip(
            &self.socket,
            &super::raw_request(
                "POST",
                &format!("/v1/fleet/hosts/{name}/enroll"),
                Some("root"),
                Some(&serde_json::json!({ "fingerprint": fp })),
            ),
        );
        assert_eq!(status, 200, "{body}");
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

    /// Runs `f` on this daemon's store, beside the daemon: the SQLite file opened afresh, the
    /// PostgreSQL database through one pool kept for the daemon's life. On a thread of its
    /// own: the PostgreSQL client blocks, which an async test's thread may not.
    pub fn with_store<T: Send>(&self, f: impl FnOnce(&vmwarden::store::Store) -> T + Send) -> T {
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let s = self
                    .open_store()
                    .unwrap_or_else(|e| panic!("cannot open the store {}: {e}", self.store_url));
                f(&s)
            })
            .join()
            .unwrap()
        })
    }

    /// The store beside the daemon (call on a thread that may block).
    fn open_store(&self) -> Result<Opened<'_>, vmwarden::store::StoreError> {
        if !self.on_postgres() {
            return vmwarden::store::Store::open(&self.db()).map(Opened::Sqlite);
        }
        if self.pg.get().is_none() {
            let s = vmwarden::store::Store::connect(&self.store_url)?;
            // Another thread may have set it meanwhile: then this one is dropped.
            let _ = self.pg.set(s);
        }
        Ok(Opened::Postgres(self.pg.get().expect("set above")))
    }

    /// Runs one SQL statement on this daemon's store, whichever engine it uses (`?N`
    /// placeholders; `Value::from` for arguments).
    pub fn sql(&self, sql: &str, args: &[vmwarden::store::Value]) -> Vec<vmwarden::store::Row> {
        self.with_store(|s| s.raw(sql, args).unwrap())
    }

    /// Every table of this daemon's store, from the engine's catalog.
    pub fn tables(&self) -> Vec<String> {
        let sql = if self.on_postgres() {
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        } else {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1"
        };
        self.sql(sql, &[])
            .iter()
            .map(|r| r.text(0).unwrap())
            .collect()
    }

    /// The columns of `table`, in order, from the engine's catalog.
    pub fn columns(&self, table: &str) -> Vec<String> {
        let sql = if self.on_postgres() {
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position"
        } else {
            "SELECT name FROM pragma_table_info(?1) ORDER BY cid"
        };
        self.sql(sql, &[table.into()])
            .iter()
            .map(|r| r.text(0).unwrap())
            .collect()
    }

    /// Whether this daemon runs on PostgreSQL.
    pub fn on_postgres(&self) -> bool {
        self.store_url != "sqlite"
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Stops the process and keeps the state directory (to start again in it).
    pub fn stop_keep(mut self) -> PathBuf {
        self.kill9();
        std::mem::take(&mut self.dir)
    }

    /// Resident set size of the daemon, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Destroys every domain this daemon's VMs may have left running.
    pub fn destroy_domains(&self) {
        let ids = std::thread::scope(|sc| {
            sc.spawn(|| self.open_store().ok()?.raw("SELECT id FROM vms", &[]).ok())
                .join()
                .ok()
                .flatten()
        });
        for row in ids.unwrap_or_default() {
            let Ok(id) = row.text(0) else { continue };
            let _ = Command::new("virsh")
                .args(["-q", "-c", "qemu:///system", "destroy", &id])
                .stderr(Stdio::null())
                .stdout(Stdio::null())
                .status();
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
        if !std::thread::panicking() && !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A store opened beside a daemon.
enum Opened<'a> {
    Sqlite(vmwarden::store::Store),
    Postgres(&'a vmwarden::store::Store),
}

impl std::ops::Deref for Opened<'_> {
    type Target = vmwarden::store::Store;

    fn deref(&self) -> &Self::Target {
        match self {
            Opened::Sqlite(s) => s,
            Opened::Postgres(s) => s,
        }
    }
}

/// The store the daemons under test use: SQLite, or with `VMWARDEN_TEST_STORE=postgres` a
/// new database of a throwaway PostgreSQL cluster per daemon.
pub fn store_url() -> String {
    match std::env::var("VMWARDEN_TEST_STORE").as_deref() {
        Ok("postgres") => vmwarden::store::testpg::fresh_database(),
        Ok("sqlite") | Err(_) => "sqlite".into(),
        Ok(other) => panic!("VMWARDEN_TEST_STORE={other}: sqlite or postgres"),
    }
}
