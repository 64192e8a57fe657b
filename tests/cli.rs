//! The `vmwarden` binary against a real daemon, as an operator meets it: names and id
//! prefixes, each table's columns, one line per event, progress on a terminal only, prompts
//! and `--yes`, a closed pipe, the sentence of each refusal, following a stop to its end,
//! the serial log, status, completion and manual pages. A terminal is given by `script(1)`.

mod common;

use common::*;
use std::process::{Command, Stdio};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn cmd(w: &World, args: &[&str]) -> Command {
    let mut c = Command::new(bin("vmwarden"));
    c.env("VMWARDEN_SOCKET", &w.d.socket)
        .env("TZ", "UTC")
        .env_remove("COMPLETE")
        .args(args)
        .stdin(Stdio::null());
    c
}

/// Runs `vmwarden args` with no terminal.
fn run(w: &World, args: &[&str]) -> Out {
    let o = cmd(w, args).output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The value of `Key:` in a detail view.
fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {key}: in {out}"))
}

fn ok(w: &World, args: &[&str]) -> String {
    let o = run(w, args);
    assert_eq!(o.code, 0, "vmwarden {args:?}: {o:?}");
    o.stdout
}

/// Runs `vmwarden args` on a terminal (script(1)), `input` typed in; the terminal's output.
fn on_tty(w: &World, args: &[&str], input: &str) -> (i32, String) {
    let line = std::iter::once(bin("vmwarden").display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"])
        .env("VMWARDEN_SOCKET", &w.d.socket)
        .env("TZ", "UTC")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        // script(1) ends the session at EOF on its input: keep it open until the command
        // has had time to ask.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

async fn world() -> World {
    Fixture::new(Opts::default())
        .users(&[("alice", "ops"), ("bob", "ops"), ("carol", "ops")])
        .project("lab", &["alice", "bob", "carol"])
        .project("other", &["alice"])
        .boot_drive("alice", "lab", "disk", "CLI-MARKER")
        .drive("alice", "lab", "spare")
        .vm("alice", "lab", "web", &["disk"])
        .share("web", "alice", "bob", "user")
        .build()
        .await
}

#[test]
fn names_and_prefixes_name_vms_and_drives_everywhere() {
    let rt = mt();
    let w = rt.block_on(world());
    let id = w.vm("web");
    for r in ["web", &id[..8], &id[..4], &id] {
        let out = ok(&w, &["--as", "alice", "vm", "show", r]);
        assert_eq!(field(&out, "ID"), id, "{r}: {out}");
    }
    let out = ok(&w, &["--as", "alice", "drive", "show", "spare"]);
    assert_eq!(field(&out, "Name"), "spare", "{out}");
    let out = ok(&w, &["--as", "alice", "audit", "--vm", "web"]);
    assert!(out.lines().count() > 1, "{out}");
    // The same name in two projects: ambiguous, listing both ids; --project narrows it.
    ok(
        &w,
        &["--as", "alice", "vm", "create", "twin", "--project", "lab"],
    );
    ok(
        &w,
        &[
            "--as",
            "alice",
            "vm",
            "create",
            "twin",
            "--project",
            "other",
        ],
    );
    let o = run(&w, &["--as", "alice", "vm", "show", "twin"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(
        o.stderr.contains("twin") && o.stderr.contains("--project"),
        "{o:?}"
    );
    let out = ok(
        &w,
        &["--as", "alice", "vm", "show", "twin", "--project", "other"],
    );
    assert_eq!(field(&out, "Project"), "other", "{out}");
    // Names are checked before anything is sent.
    let o = run(&w, &["--as", "alice", "vm", "show", "Web<1>"]);
    assert_eq!(o.code, 2, "{o:?}");
    let o = run(
        &w,
        &[
            "--as", "alice", "vm", "share", "web", "bob", "--role", "onwer",
        ],
    );
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("owner") && o.stderr.contains("user"),
        "{o:?}"
    );
}

#[test]
fn every_list_has_its_own_table() {
    let rt = mt();
    let w = rt.block_on(world());
    let header = |args: &[&str]| ok(&w, args).lines().next().unwrap_or("").to_owned();
    let cols = |line: String| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cols(header(&["--as", "alice", "vm", "list"])),
        ["NAME", "ID", "PROJECT", "ROLE", "STATE", "VCPUS", "MEMORY", "IDLE"]
    );
    assert_eq!(
        cols(header(&["--as", "alice", "drive", "list"])),
        ["NAME", "ID", "PROJECT", "SIZE", "OWNERS", "ATTACHED"]
    );
    assert_eq!(
        cols(header(&["project", "list"])),
        ["NAME", "MEMBERS", "KEY"]
    );
    assert_eq!(cols(header(&["user", "list"])), ["NAME", "TEAM", "ADMIN"]);
    assert_eq!(
        cols(header(&["host", "vms"])),
        ["NAME", "ID", "PROJECT", "STATE", "VCPUS", "MEMORY", "IDLE"]
    );
    assert_eq!(
        cols(header(&["audit"])),
        ["TIME", "AGO", "ACTOR", "ACTION", "VM", "TARGET", "OUTCOME", "DETAIL"]
    );
    assert_eq!(
        cols(header(&["--as", "alice", "vm", "members", "web"])),
        ["USER", "ROLE"]
    );
    let id = w.vm("web");
    let list = ok(&w, &["--as", "alice", "vm", "list"]);
    let row = list.lines().find(|l| l.starts_with("web ")).unwrap();
    assert_eq!(
        cols(row.to_owned()),
        ["web", &id[..8], "lab", "owner", "stopped", "1", "32M", "-"]
    );
    let drives = ok(&w, &["--as", "alice", "drive", "list"]);
    assert!(
        drives
            .lines()
            .any(|l| l.starts_with("disk ") && l.ends_with(" web")),
        "the ATTACHED column names the VM: {drives}"
    );
    let projects = ok(&w, &["project", "list"]);
    assert!(
        projects
            .lines()
            .any(|l| l.starts_with("lab ") && l.contains("unlocked until ")),
        "{projects}"
    );
    let users = ok(&w, &["user", "list"]);
    assert!(
        users
            .lines()
            .any(|l| cols(l.to_owned()) == ["root", "ops", "yes", "(config)"]),
        "{users}"
    );
    // Filters, ids only, JSON and YAML.
    assert_eq!(
        ok(&w, &["--as", "alice", "vm", "list", "--state", "running"]),
        "(none)\n"
    );
    assert_eq!(
        ok(&w, &["--as", "alice", "vm", "list", "-q"]),
        format!("{id}\n")
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&w, &["--as", "alice", "--json", "vm", "list"])).unwrap();
    assert_eq!(json[0]["id"], id.as_str());
    let yaml = ok(
        &w,
        &["--as", "alice", "--format", "yaml", "vm", "show", "web"],
    );
    assert!(yaml.contains(&format!("\"id\": \"{id}\"")), "{yaml}");
    // Times: --since takes spans and local times.
    assert!(
        ok(&w, &["audit", "--since", "1h", "--limit", "5"])
            .lines()
            .count()
            > 1
    );
    assert_eq!(
        ok(&w, &["audit", "--until", "2000-01-01 00:00"]),
        "(none)\n"
    );
    let o = run(&w, &["audit", "--since", "soonish"]);
    assert_eq!(o.code, 2, "{o:?}");
}

#[test]
fn events_are_lines_filtered_and_json_on_request() {
    let rt = mt();
    let w = rt.block_on(world());
    let spawn = |args: &[&str]| {
        cmd(&w, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let human = spawn(&[
        "--as", "alice", "events", "--vm", "web", "--kind", "vm.state",
    ]);
    let json = spawn(&["--as", "alice", "--json", "events"]);
    std::thread::sleep(std::time::Duration::from_millis(800));
    ok(&w, &["--as", "alice", "vm", "keepalive", "web"]);
    ok(&w, &["--as", "alice", "vm", "start", "web"]);
    ok(&w, &["--as", "alice", "vm", "stop", "web", "--force"]);
    std::thread::sleep(std::time::Duration::from_millis(800));
    let read = |mut c: std::process::Child| {
        let _ = c.kill();
        String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned()
    };
    let h = read(human);
    let lines: Vec<&str> = h.lines().collect();
    assert!(lines.len() >= 3, "{h}");
    let id = w.vm("web");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("vm.state") && l.contains(&format!("VM web ({})", &id[..8]))),
        "{h}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("is running (start)")),
        "{h}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("is stopped (stop, destroyed)"),
        "{h}"
    );
    // Each line starts with a local time.
    assert!(
        lines[0].as_bytes()[2] == b':' && lines[0].as_bytes()[5] == b':',
        "{h}"
    );
    let j = read(json);
    for line in j.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["kind"].is_string(), "{line}");
    }
    assert!(j.lines().any(|l| l.contains("\"vm.state\"")), "{j}");
}

#[test]
fn progress_shows_on_a_terminal_only_and_stop_says_how_it_ended() {
    let rt = mt();
    let w = rt.block_on(world());
    // No terminal: nothing but the answer.
    let o = run(
        &w,
        &["--as", "alice", "drive", "create", "d2", "--project", "lab"],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.is_empty(), "{o:?}");
    // A terminal: the spinner names the work.
    let (code, tty) = on_tty(
        &w,
        &[
            "--as",
            "alice",
            "drive",
            "create",
            "d3",
            "--project",
            "lab",
            "--size-mib",
            "2048",
        ],
        "",
    );
    assert_eq!(code, 0, "{tty}");
    assert!(tty.contains("Creating drive d3 (2G)"), "{tty}");
    // A stop follows the VM to its end and says how it ended.
    ok(&w, &["--as", "alice", "vm", "start", "web"]);
    let out = ok(&w, &["--as", "alice", "vm", "stop", "web"]);
    assert_eq!(
        out,
        "VM web stopped: destroyed: the guest ignored ACPI until the host's shutdown timeout.\n"
    );
    ok(&w, &["--as", "bob", "vm", "start", "web"]);
    assert_eq!(
        ok(&w, &["--as", "bob", "vm", "stop", "web", "--force"]),
        "VM web stopped: destroyed (--force).\n"
    );
    assert_eq!(
        ok(&w, &["--as", "bob", "vm", "stop", "web"]),
        "VM web is already stopped.\n"
    );
    ok(&w, &["--as", "alice", "vm", "start", "web"]);
    assert_eq!(
        ok(&w, &["--as", "alice", "vm", "stop", "web", "--no-wait"]),
        "VM web is stopping.\n"
    );
    let (code, tty) = on_tty(&w, &["host", "stop", "web"], "");
    assert_eq!(code, 0, "{tty}");
    assert!(tty.contains("VM web "), "{tty}");
}

#[test]
fn deletes_and_resplit_ask_first() {
    let rt = mt();
    let w = rt.block_on(world());
    let o = run(&w, &["--as", "alice", "drive", "delete", "spare"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--yes"), "{o:?}");
    let (code, tty) = on_tty(&w, &["--as", "alice", "drive", "delete", "spare"], "n\n");
    assert_eq!(code, 2, "{tty}");
    assert!(
        tty.contains("Delete drive spare and its data? [y/N]"),
        "{tty}"
    );
    assert!(ok(&w, &["--as", "alice", "drive", "list"]).contains("spare"));
    let (code, tty) = on_tty(&w, &["--as", "alice", "drive", "delete", "spare"], "y\n");
    assert_eq!(code, 0, "{tty}");
    assert!(!ok(&w, &["--as", "alice", "drive", "list"]).contains("spare"));
    for args in [
        &["project", "resplit", "lab", "--show-shares"][..],
        &["project", "delete", "other"],
        &["user", "delete", "carol"],
        &[
            "project",
            "remove-member",
            "lab",
            "alice",
            "--force",
            "--transfer-to",
            "bob",
        ],
        &["--as", "alice", "vm", "delete", "web"],
    ] {
        let o = run(&w, args);
        assert_eq!(o.code, 2, "{args:?} {o:?}");
        assert!(o.stderr.contains("--yes"), "{args:?} {o:?}");
    }
    assert_eq!(
        ok(&w, &["--yes", "user", "delete", "carol"]),
        "User carol removed.\n"
    );
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let rt = mt();
    let w = rt.block_on(world());
    // Audit rows to print several times a pipe's 64 KiB, so the writer is still writing
    // when `head` goes away.
    let c = w.c.clone();
    let vm = w.vm("web");
    rt.block_on(async {
        for _ in 0..300 {
            let path = format!("/v1/vms/{vm}/keepalive");
            let calls = (0..8).map(|_| c.req("POST", &path, Some("alice"), None));
            futures_util::future::join_all(calls).await;
        }
    });
    let sh = format!(
        "set -o pipefail; {} audit --limit 10000 | head -1; echo \"status=$?\"",
        bin("vmwarden").display()
    );
    let o = Command::new("bash")
        .args(["-c", &sh])
        .env("VMWARDEN_SOCKET", &w.d.socket)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(out.starts_with("TIME "), "{out}");
    assert!(
        out.trim_end().ends_with("status=141"),
        "killed by SIGPIPE: {out}"
    );
    assert!(err.is_empty(), "quiet: {err}");
}

#[test]
fn refusals_say_what_to_do_in_cli_terms() {
    let rt = mt();
    let w = rt.block_on(world());
    let refused = |args: &[&str], code: i32, needle: &str| {
        let o = run(&w, args);
        assert_eq!(o.code, code, "{args:?}: {o:?}");
        assert!(o.stderr.starts_with("vmwarden: "), "{o:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {o:?}");
        assert!(!o.stderr.contains("HTTP"), "{o:?}");
    };
    refused(
        &[
            "--as", "alice", "vm", "share", "web", "carol", "--role", "owner",
        ],
        5,
        "run again with --confirm-drive-access",
    );
    refused(
        &["--as", "bob", "vm", "delete", "web", "--yes"],
        4,
        "Ask one of the VM's owners",
    );
    refused(
        &["--as", "alice", "vm", "show", "nosuch"],
        3,
        "vmwarden vm list",
    );
    refused(
        &[
            "--as",
            "alice",
            "vm",
            "create",
            "c2",
            "--project",
            "lab",
            "--vcpus",
            "999",
        ],
        7,
        "limits",
    );
    ok(
        &w,
        &["--as", "alice", "vm", "create", "empty", "--project", "lab"],
    );
    refused(
        &["--as", "alice", "vm", "start", "empty"],
        5,
        "vmwarden vm attach",
    );
    refused(&["--as", "dave", "me"], 4, "vmwarden user put");
    ok(&w, &["--as", "alice", "project", "lock", "lab"]);
    refused(
        &["--as", "alice", "vm", "start", "web"],
        5,
        "vmwarden project unlock lab",
    );
    let missing = Command::new(bin("vmwarden"))
        .args(["--socket", "/nonexistent/vmwarden.sock", "health"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        err.contains("systemctl start vmwarden") && err.contains("VMWARDEN_SOCKET"),
        "{err}"
    );
}

#[test]
fn logs_status_health_completion_and_manuals() {
    let rt = mt();
    let w = rt.block_on(world());
    ok(&w, &["--as", "alice", "vm", "start", "web"]);
    let logs = {
        let mut found = String::new();
        for _ in 0..100 {
            found = ok(&w, &["--as", "alice", "vm", "logs", "web"]);
            if found.contains("CLI-MARKER") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        found
    };
    assert!(logs.contains("CLI-MARKER"), "{logs}");
    let o = run(&w, &["--as", "bob", "vm", "logs", "web"]);
    assert_eq!(o.code, 4, "owners only: {o:?}");
    let status = ok(&w, &["status"]);
    for line in [
        "Daemon:    vmwarden ",
        "libvirt:   ",
        "VMs:       1 running",
        "Projects:  lab unlocked until ",
    ] {
        assert!(status.contains(line), "{line}: {status}");
    }
    assert!(ok(&w, &["health"]).starts_with("ok: vmwarden "));
    let script = ok(&w, &["completion", "bash"]);
    assert!(script.contains("COMPLETE=\"bash\""), "{script}");
    for shell in ["zsh", "fish"] {
        assert!(!ok(&w, &["completion", shell]).is_empty());
    }
    // The shell's call back: VM names come from the daemon.
    let o = cmd(&w, &["--", "vmwarden", "--as", "alice", "vm", "show", "w"])
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", "5")
        .env("_CLAP_IFS", "\n")
        .output()
        .unwrap();
    let cands = String::from_utf8_lossy(&o.stdout);
    assert!(cands.lines().any(|l| l == "web"), "{cands}");
    let o = cmd(
        &w,
        &["--", "vmwarden", "vm", "share", "web", "bob", "--role", ""],
    )
    .env("COMPLETE", "bash")
    .env("_CLAP_COMPLETE_INDEX", "6")
    .env("_CLAP_IFS", "\n")
    .output()
    .unwrap();
    let cands = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        cands.lines().collect::<Vec<_>>(),
        ["user", "owner"],
        "{cands}"
    );
    assert!(ok(&w, &["man"]).contains(".TH vmwarden 1"));
    assert!(ok(&w, &["man", "vmwardend"]).contains(".TH vmwardend 8"));
    let page = ok(&w, &["man", "vmwarden.toml"]);
    assert!(page.starts_with(".TH VMWARDEN.TOML 5"), "{page}");
}
