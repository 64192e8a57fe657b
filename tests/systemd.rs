//! systemd integration of `vmwardend`, driven the way systemd drives it, without systemd:
//! - socket activation: a listening Unix socket bound by the test is passed as fd 3 with
//!   LISTEN_FDS=1 and LISTEN_PID=<the daemon's pid>; the daemon serves on it and binds
//!   nothing of its own; a passed socket of the wrong type is refused;
//! - NOTIFY_SOCKET: READY=1 arrives on the test's datagram socket only once the control
//!   socket answers; WATCHDOG=1 pings follow at half WATCHDOG_USEC; STOPPING=1 on SIGTERM;
//! - journald: with stderr being the journal stream (JOURNAL_STREAM), audit events are
//!   native journal entries with MESSAGE_ID, VM, USER and ACTION fields. The journal socket
//!   path is fixed (/run/systemd/journal/socket), so the daemon runs in a private mount
//!   namespace where the test's datagram socket is bind-mounted there (root only).

mod common;
use common::*;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory with a short path (sun_path holds 108 bytes) and a daemon config whose
/// own socket is `own.sock` in it.
struct Scratch {
    dir: PathBuf,
    config: PathBuf,
    own_socket: PathBuf,
    child: Option<Child>,
}

impl Scratch {
    fn new() -> Scratch {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = PathBuf::from(format!("/tmp/vsd-{}", &id[..12]));
        std::fs::create_dir_all(&dir).unwrap();
        let own_socket = dir.join("own.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"[daemon]
socket = "{sock}"
socket_group = ""
socket_mode = "0666"
state_dir = "{dir}/state"

[access]
admins = ["root"]
orchestrators = ["root"]

[store]
url = "{store}"
"#,
                sock = own_socket.display(),
                dir = dir.display(),
                store = store_url(),
            ),
        )
        .unwrap();
        Scratch {
            dir,
            config,
            own_socket,
            child: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap()
    }

    /// A command that runs `vmwardend --config CONFIG` through `sh -c`, so that `$$` (the pid
    /// `exec` keeps) can name the daemon in LISTEN_PID / WATCHDOG_PID, with a clean systemd
    /// environment and stderr in daemon.log.
    fn daemon_cmd(&self, shell_prefix: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{shell_prefix} exec \"$0\" --config \"$1\""))
            .arg(bin("vmwardend"))
            .arg(&self.config)
            .env("RUST_LOG", "debug")
            .env("VMWARDEN_LOG", "stderr");
        for v in [
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
        ] {
            cmd.env_remove(v);
        }
        cmd.stdout(Stdio::null()).stderr(self.log_file());
        cmd
    }

    fn spawn(&mut self, mut cmd: Command) {
        self.child = Some(cmd.spawn().unwrap());
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    /// Waits for the daemon to exit by itself.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut().unwrap();
        while Instant::now() < deadline {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Makes `fd` the child's fd 3, without close-on-exec, as systemd passes sockets.
fn pass_as_fd3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (dup2, fcntl) on descriptors it owns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself would keep FD_CLOEXEC: clear it instead.
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits until the daemon's own socket accepts a connection: the path exists from `bind`,
/// a moment before `listen`, and a connect in between is refused.
fn wait_listening(p: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(p).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn serves_a_socket_passed_the_systemd_way() {
    let mut s = Scratch::new();
    let path = s.path("act.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut cmd = s.daemon_cmd("LISTEN_PID=$$");
    cmd.env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "vmwarden.socket");
    pass_as_fd3(&mut cmd, listener.as_raw_fd());
    s.spawn(cmd);
    // The socket listened before the daemon started: a client may connect at once, and the
    // request waits in the backlog until the daemon accepts it.
    let c = Client::new(&path);
    let r = rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), c.get("/v1/health", "root")).await
    });
    let r = r.unwrap_or_else(|_| panic!("no answer on the passed socket: {}", s.log()));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "ok", "{r:?}");
    // A second request, on a fresh connection, is served too.
    let r = rt().block_on(c.get("/v1/health", "root"));
    assert_eq!(r.status, 200, "{r:?}");
    // The daemon bound nothing of its own.
    assert!(!s.own_socket.exists(), "daemon bound {:?}", s.own_socket);
    assert!(
        s.log().contains("act.sock"),
        "log names the passed socket: {}",
        s.log()
    );
    assert!(s.terminate().success(), "{}", s.log());
    // A socket systemd passed stays for the next activation.
    assert!(path.exists());
    drop(listener);
}

#[test]
fn refuses_a_passed_socket_that_is_not_a_listening_stream() {
    let mut s = Scratch::new();
    let dgram = UnixDatagram::bind(s.path("dg.sock")).unwrap();
    let mut cmd = s.daemon_cmd("LISTEN_PID=$$");
    cmd.env("LISTEN_FDS", "1");
    pass_as_fd3(&mut cmd, dgram.as_raw_fd());
    s.spawn(cmd);
    let st = s
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("daemon kept running: {}", s.log()));
    assert!(!st.success());
    assert!(
        s.log().contains("not a listening Unix stream socket"),
        "{}",
        s.log()
    );
    assert!(!s.own_socket.exists());
}

#[test]
fn ignores_listen_fds_meant_for_another_process() {
    let mut s = Scratch::new();
    let mut cmd = s.daemon_cmd("");
    // LISTEN_PID names another process (pid 1): the daemon binds its own socket.
    cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
    s.spawn(cmd);
    assert!(
        wait_listening(&s.own_socket, Duration::from_secs(20)),
        "{}",
        s.log()
    );
    let c = Client::new(&s.own_socket);
    assert_eq!(rt().block_on(c.get("/v1/health", "root")).status, 200);
    assert!(s.terminate().success());
}

/// Receives notifications until one satisfies `pred` or `within` passes.
fn recv_until(sock: &UnixDatagram, within: Duration, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = vec![];
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = pred(&m);
                got.push(m);
                if done {
                    return got;
                }
            }
            Err(_) => break,
        }
    }
    got
}

#[test]
fn ready_only_once_the_socket_answers_then_watchdog_and_stopping() {
    let mut s = Scratch::new();
    let notify_path = s.path("n.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut cmd = s.daemon_cmd("WATCHDOG_PID=$$");
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000");
    s.spawn(cmd);

    let got = recv_until(&notify, Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    let ready = got
        .last()
        .filter(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 (got {got:?}): {}", s.log()))
        .clone();
    // At the moment READY=1 arrives, the socket answers: no retry, no wait.
    let c = Client::new(&s.own_socket);
    let r = rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(10), c.get("/v1/health", "root")).await
    });
    let r = r.expect("health right after READY=1");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(ready.contains("STATUS=listening on"), "{ready:?}");
    assert!(ready.contains(&format!("MAINPID={}", s.pid())), "{ready:?}");

    // WATCHDOG_USEC=400 ms: pings every 200 ms.
    let pings = recv_until(&notify, Duration::from_secs(5), |m| m == "WATCHDOG=1\n");
    assert!(
        pings.iter().any(|m| m == "WATCHDOG=1\n"),
        "no watchdog ping: {pings:?}"
    );
    let more = recv_until(&notify, Duration::from_secs(5), |m| m == "WATCHDOG=1\n");
    assert!(more.iter().any(|m| m == "WATCHDOG=1\n"), "{more:?}");

    let st = s.terminate();
    assert!(st.success(), "{}", s.log());
    let rest = recv_until(&notify, Duration::from_secs(5), |m| {
        m.contains("STOPPING=1")
    });
    assert!(
        rest.iter().any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1: {rest:?}"
    );
}

/// Parses one datagram of the journal's native protocol: `KEY=value\n` or
/// `KEY\n<64-bit little-endian length><value>\n`.
fn parse_journal_entry(mut b: &[u8]) -> Vec<(String, String)> {
    let mut fields = vec![];
    while !b.is_empty() {
        let nl = b.iter().position(|&c| c == b'\n').expect("newline");
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            b = &b[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let val = &b[nl + 9..nl + 9 + len];
            fields.push((key, String::from_utf8_lossy(val).into_owned()));
            b = &b[nl + 9 + len + 1..];
        }
    }
    fields
}

#[test]
fn audit_events_are_native_journal_entries_with_fields() {
    // CI and `make test` run as root; a private mount namespace needs it.
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (a private mount namespace for the journal socket)"
    );
    let mut s = Scratch::new();
    let jpath = s.path("j.sock");
    let journal = UnixDatagram::bind(&jpath).unwrap();
    // /run/systemd may not exist on a host without systemd: then a tmpfs over /run (the
    // daemon's socket and state are under /tmp; libvirt is not needed here).
    let over = if Path::new("/run/systemd").is_dir() {
        "/run/systemd"
    } else {
        "/run"
    };
    let log = s.log_file();
    use std::os::unix::fs::MetadataExt;
    let meta = log.metadata().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "set -e; mount -t tmpfs tmpfs {over}; mkdir -p /run/systemd/journal; \
             : > /run/systemd/journal/socket; mount --bind \"$2\" /run/systemd/journal/socket; \
             exec \"$0\" --config \"$1\""
        ))
        .arg(bin("vmwardend"))
        .arg(&s.config)
        .arg(&jpath)
        .env("RUST_LOG", "info")
        .env_remove("VMWARDEN_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        // stderr is "the journal stream": the daemon's detection compares device and inode.
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(Stdio::null())
        .stderr(log);
    s.spawn(cmd);
    assert!(
        wait_listening(&s.own_socket, Duration::from_secs(20)),
        "{}",
        s.log()
    );
    let c = Client::new(&s.own_socket);
    let vm_id = rt().block_on(async {
        users(&c, &[("alice", "lab")]).await;
        project(&c, "genomics", &["alice"]).await;
        vm(&c, "alice", "genomics", "web", &[]).await
    });

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut entries: Vec<HashMap<String, String>> = vec![];
    let mut buf = vec![0u8; 65536];
    let found = loop {
        if let Some(e) = entries.iter().find(|e| {
            e.get("ACTION").map(String::as_str) == Some("vm.create")
                && e.get("MESSAGE_ID").map(String::as_str)
                    == Some(vmwarden::daemon::AUDIT_MESSAGE_ID)
        }) {
            break e.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no vm.create audit entry in {entries:#?}\nstderr: {}",
            s.log()
        );
        journal.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = journal.recv(&mut buf) {
            if n > 0 {
                entries.push(parse_journal_entry(&buf[..n]).into_iter().collect());
            }
        }
    };
    eprintln!("audit entry: {found:?}");
    assert_eq!(found.get("VM"), Some(&vm_id), "{found:#?}");
    assert_eq!(
        found.get("USER").map(String::as_str),
        Some("alice"),
        "{found:#?}"
    );
    assert_eq!(
        found.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("vmwardend")
    );
    assert!(found.contains_key("MESSAGE"), "{found:#?}");
    assert_eq!(
        found.get("TARGET").map(String::as_str),
        Some("vmwarden::audit")
    );
    // No "F_" prefix anywhere: user fields keep their plain names.
    assert!(
        entries
            .iter()
            .flat_map(|e| e.keys())
            .all(|k| !k.starts_with("F_")),
        "{entries:#?}"
    );
    // The audit events of the set-up (user and project registry) are entries too.
    assert!(entries.iter().any(|e| {
        e.get("MESSAGE_ID").map(String::as_str) == Some(vmwarden::daemon::AUDIT_MESSAGE_ID)
            && e.get("USER").map(String::as_str) == Some("root")
    }));
    // Under journald nothing goes to stderr as text.
    assert!(
        !s.log().contains("listening"),
        "text log despite journald: {}",
        s.log()
    );
    assert!(s.terminate().success());
}
