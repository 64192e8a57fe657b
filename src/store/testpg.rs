//! A throwaway PostgreSQL cluster for tests (the store's own, and the socket suite with
//! `VMWARDEN_TEST_STORE=postgres`), started once per test process:
//! `initdb` into a folder of `/tmp`, the server on a Unix socket in that folder only (no
//! TCP), as the `postgres` user when the tests run as root (PostgreSQL refuses root). Each
//! test gets a database of its own. The server is started by a thread that lives as long as
//! the process, with a parent-death signal, so it ends with the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static CLUSTER: OnceLock<PathBuf> = OnceLock::new();
static CREATE: Mutex<()> = Mutex::new(());

/// The newest installed server's programs (`VMWARDEN_PG_BINDIR` overrides).
fn bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("VMWARDEN_PG_BINDIR") {
        return d.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/setup-host.sh installs it)")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
        .1
}

/// Runs `program` as the `postgres` user when we are root.
fn as_owner(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--pdeathsig=TERM",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Removes the folders of earlier runs whose test process is gone (a server stopped for a
/// while by `restart` keeps its folder: the process that owns it lives).
fn sweep() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("vmw-pg-") {
            continue;
        }
        let read = |f: &str| {
            std::fs::read_to_string(e.path().join(f))
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok())
        };
        let pid = read("owner").or_else(|| read("data/postmaster.pid"));
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn start() -> PathBuf {
    sweep();
    let bin = bindir();
    let dir = PathBuf::from(format!(
        "/tmp/vmw-pg-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("owner"), std::process::id().to_string()).unwrap();
    if nix::unistd::geteuid().is_root() {
        let pg = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("the postgres user (PostgreSQL's package creates it)");
        nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).unwrap();
    }
    let data = dir.join("data");
    let st = as_owner(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "vmwarden",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "initdb failed");
    serve(&dir);
    dir
}

/// Starts the server of the cluster in `dir` and waits until it answers.
fn serve(dir: &Path) {
    let bin = bindir();
    let data = dir.join("data");
    let (tx, rx) = std::sync::mpsc::channel();
    let (d2, data2) = (dir.to_owned(), data.clone());
    std::thread::spawn(move || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d2.join("server.log"))
            .unwrap();
        let child = as_owner(&bin.join("postgres"))
            .arg("-D")
            .arg(&data2)
            .arg("-k")
            .arg(&d2)
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        tx.send(child.map(|_| ())).unwrap();
        // The server's parent-death signal follows this thread: it lives as long as the
        // process.
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap().expect("postgres starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while postgres::Client::connect(&conninfo(dir, "postgres"), postgres::NoTls).is_err() {
        assert!(
            Instant::now() < deadline,
            "postgres did not answer: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops this process's cluster (fast shutdown: sessions are cut), keeps it down for
/// `down_for`, and starts it again (tests of an outage of the fleet's database).
pub fn restart(down_for: Duration) {
    let dir = CLUSTER.get_or_init(start).clone();
    std::thread::spawn(move || {
        let st = as_owner(&bindir().join("pg_ctl"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "pg_ctl stop failed");
        std::thread::sleep(down_for);
        serve(&dir);
    })
    .join()
    .unwrap();
}

fn conninfo(dir: &Path, db: &str) -> String {
    format!("host={} user=vmwarden dbname={db}", dir.display())
}

/// The URL of a new, empty database. Callable from async tests: the blocking client works
/// on a thread of its own.
pub fn fresh_database() -> String {
    std::thread::spawn(create_database).join().unwrap()
}

fn create_database() -> String {
    let dir = CLUSTER.get_or_init(start);
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let _one = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = postgres::Client::connect(&conninfo(dir, "postgres"), postgres::NoTls).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
        .unwrap();
    let host = dir.display().to_string().replace('/', "%2F");
    format!("postgres://vmwarden@{host}/{name}")
}
