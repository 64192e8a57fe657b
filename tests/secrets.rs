//! No key, share or passphrase leaves the daemon after the response that created it: not in the
//! database, the drive directory, the daemon's log, libvirt's QEMU log, nor any later response.

mod common;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use serde_json::json;
use std::path::Path;

/// Every form a secret could leak in: raw, hex (both cases), base64 (four alphabets).
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_vec(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
        STANDARD.encode(secret).into_bytes(),
        STANDARD_NO_PAD.encode(secret).into_bytes(),
        URL_SAFE.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every text and blob value of every table of the daemon's store, as ("table.column row",
/// bytes).
fn store_values(d: &Daemon) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let tables = d.tables();
    assert!(tables.iter().any(|t| t == "drives"), "{tables:?}");
    for t in tables {
        let columns = d.columns(&t);
        assert!(!columns.is_empty(), "{t}");
        for (n, row) in d.sql(&format!("SELECT * FROM {t}"), &[]).iter().enumerate() {
            for (i, col) in columns.iter().enumerate() {
                let v = match (row.opt_bytes(i), row.opt_text(i)) {
                    (Ok(Some(b)), _) => b,
                    (_, Ok(Some(s))) => s.into_bytes(),
                    _ => continue,
                };
                out.push((format!("{t}.{col} row {n}"), v));
            }
        }
    }
    out
}

#[test]
fn canary_key_shares_and_passphrases_never_leak() {
    rt().block_on(async {
        let d = Daemon::start(Opts::default());
        let c = d.client();
        users(&c, &[("alice", "lab"), ("bob", "lab")]).await;
        let s = project(&c, "genomics", &["alice", "bob"]).await;
        // The canary: K itself, rebuilt by the key holders, and both halves.
        let k = vmwarden::keys::combine(s.admin.as_bytes(), s.member.as_bytes()).unwrap();
        let (_, a) = vmwarden::keys::parse_share(s.admin.as_bytes()).unwrap();
        let (_, m) = vmwarden::keys::parse_share(s.member.as_bytes()).unwrap();

        let mut responses: Vec<Vec<u8>> = vec![];
        let mut keep = |r: Resp| {
            responses.push(r.raw.clone());
            r
        };
        keep(c.unlock_half("genomics", "root", &s.admin).await);
        // A wrong half and a malformed half are refused without echoing anything back.
        keep(c.unlock_half("genomics", "alice", &s.admin).await);
        keep(c.raw("POST", "/v1/projects/genomics/unlock", Some("alice"), Some(format!("{{\"share\": \"{}\", \"x\": 1}}", s.member).into_bytes())).await);
        let r = keep(c.unlock_half("genomics", "alice", &s.member).await);
        assert_eq!(r.body["locked"], false, "{r:?}");
        let r = keep(c.req("POST", "/v1/drives", Some("alice"), Some(json!({"project": "genomics", "name": "boot", "size_mib": 16}))).await);
        let drv = r.body["id"].as_str().unwrap().to_owned();
        write_boot_sector(&d, &s, "genomics", &drv, &boot_sector("CANARY", false));
        let r = keep(c.req("POST", "/v1/vms", Some("alice"), Some(json!({"project": "genomics", "name": "web", "vcpus": 1, "memory_mib": 32, "drives": [drv]}))).await);
        let vm = r.body["id"].as_str().unwrap().to_owned();
        let r = keep(c.start(&vm, "alice").await);
        assert_eq!(r.status, 200, "{r:?}");
        keep(c.req("PUT", &format!("/v1/vms/{vm}/members/bob"), Some("alice"), Some(json!({"role": "owner", "confirm_drive_access": true}))).await);
        for (u, p) in [("alice", "/v1/vms".to_string()), ("alice", format!("/v1/vms/{vm}")), ("alice", "/v1/drives".into()), ("alice", "/v1/projects".into()), ("root", "/v1/audit".into()), ("root", "/v1/host/vms".into()), ("root", "/metrics".into()), ("bob", format!("/v1/drives/{drv}"))] {
            keep(c.get(&p, u).await);
        }
        keep(c.stop(&vm, "alice", true).await);
        // The passphrase of the drive, as the key holders can compute it.
        let wrapped = d.sql("SELECT wrapped FROM drives WHERE id = ?1", &[(&drv).into()])[0].bytes(0).unwrap();
        let pass = vmwarden::keys::unwrap(&k, &vmwarden::model::ProjectName::parse("genomics").unwrap(), &drv, &wrapped).unwrap();
        // A fleet agent keeps K sealed to its host key in the store (and nowhere else); a
        // single host keeps nothing of it, and has no host key (DESIGN 1 holds unchanged).
        let sealed = d.sql("SELECT kind, host, body, expires_ms FROM envelopes", &[]);
        let genomics = vmwarden::model::ProjectName::parse("genomics").unwrap();
        if d.on_postgres() {
            assert_eq!(sealed.len(), 1, "one envelope of K for the one enrolled host");
            let (body, until) = (sealed[0].bytes(2).unwrap(), sealed[0].int(3).unwrap());
            let mine = vmwarden::keys::host::HostKey::load_or_create(&d.state().join("host-key")).unwrap();
            let opened = mine.open(&genomics, vmwarden::keys::host::Sealed::Key, until, &body).unwrap();
            assert_eq!(opened.expose(), k.expose());
            let stranger = vmwarden::keys::host::HostKey::generate();
            assert!(stranger.open(&genomics, vmwarden::keys::host::Sealed::Key, until, &body).is_none());
        } else {
            assert!(sealed.is_empty());
            assert!(!d.state().join("host-key").exists());
        }
        keep(c.lock("genomics", "alice").await);
        assert!(d.sql("SELECT kind FROM envelopes", &[]).is_empty(), "a lock deletes every envelope");

        let mut secrets: Vec<(&str, Vec<u8>)> = vec![
            ("admin share token", s.admin.clone().into_bytes()),
            ("member share token", s.member.clone().into_bytes()),
        ];
        for (name, bytes) in [("K", k.expose().to_vec()), ("A", a.expose().to_vec()), ("M", m.expose().to_vec()), ("passphrase", pass.expose().to_vec())] {
            for f in forms(&bytes) {
                secrets.push((name, f));
            }
        }
        // The passphrase is base64 text; its decoded bytes count too.
        let raw_pass = STANDARD.decode(pass.expose()).unwrap();
        for f in forms(&raw_pass) {
            secrets.push(("passphrase bytes", f));
        }

        let mut places: Vec<(String, Vec<u8>)> = vec![];
        let mut all = vec![];
        files(&d.state(), &mut all);
        for p in all {
            places.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
        places.push(("daemon log".into(), std::fs::read(&d.log).unwrap()));
        if let Ok(q) = std::fs::read(format!("/var/log/libvirt/qemu/{vm}.log")) {
            places.push(("QEMU log".into(), q));
        }
        for (i, r) in responses.iter().enumerate() {
            places.push((format!("response {i}"), r.clone()));
        }
        // The database row by row, through the engine (on PostgreSQL the rows live in the
        // server's files, not under the state directory): every text and blob value.
        let rows = store_values(&d);
        assert!(rows.iter().any(|(n, v)| n.starts_with("drives.wrapped") && *v == wrapped), "the dump must hold the drive's wrapped passphrase");
        places.extend(rows);
        if !d.on_postgres() {
            assert!(places.iter().any(|(n, _)| n.ends_with("state.db")));
        }
        assert!(places.iter().any(|(n, _)| n.ends_with(".qcow2")));
        assert!(d.log_text().contains("DEBUG"), "the log must be verbose for this test to mean something");
        for (place, hay) in &places {
            for (what, needle) in &secrets {
                assert!(!contains(hay, needle), "{what} found in {place}");
            }
        }
    });
}

#[test]
fn secret_types_print_redacted() {
    let nk = vmwarden::keys::generate();
    let text = format!(
        "{nk:?} {:?} {:?}",
        vmwarden::keys::new_passphrase(),
        vmwarden::model::SecretBytes::new(b"hunter2".to_vec())
    );
    assert!(
        !text.contains("vmw-") && !text.contains("hunter2"),
        "{text}"
    );
    assert_eq!(text.matches("[REDACTED]").count(), 5, "{text}");
}

#[test]
fn daemon_has_a_zero_core_limit() {
    let d = Daemon::start(Opts::default());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().filter(|w| *w == "0").count(),
        2,
        "{core}"
    );
}

/// The daemon's whole memory (readable mappings of /proc/<pid>/mem, read as root) as
/// (mapping name, bytes).
fn memory(pid: u32) -> Vec<(String, Vec<u8>)> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut out = vec![];
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        let name = f.nth(3).unwrap_or("[anon]").to_owned();
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            out.push((format!("{name} {range}"), buf));
        }
    }
    out
}

/// After unlock, a drive created, a launch, a stop and a lock, no copy of K (nor of its
/// first 16 bytes, an AES-256 round key), of a share or of the drive's passphrase remains
/// anywhere in the daemon's memory.
#[test]
fn no_copy_of_a_secret_stays_in_memory_after_lock() {
    rt().block_on(async {
        let d = Daemon::start(Opts::default());
        let c = d.client();
        users(&c, &[("alice", "lab")]).await;
        let s = project(&c, "genomics", &["alice"]).await;
        let k = vmwarden::keys::combine(s.admin.as_bytes(), s.member.as_bytes()).unwrap();
        let (_, a) = vmwarden::keys::parse_share(s.admin.as_bytes()).unwrap();
        let (_, m) = vmwarden::keys::parse_share(s.member.as_bytes()).unwrap();
        unlock(&c, "genomics", &s, "alice").await;
        let drv = drive(&c, "alice", "genomics", "boot").await;
        write_boot_sector(&d, &s, "genomics", &drv, &boot_sector("MEM", false));
        let vm = vm(&c, "alice", "genomics", "web", &[&drv]).await;
        let r = c.start(&vm, "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = c.stop(&vm, "alice", true).await;
        assert_eq!(r.status, 200, "{r:?}");
        let wrapped = d.sql("SELECT wrapped FROM drives WHERE id = ?1", &[(&drv).into()])[0]
            .bytes(0)
            .unwrap();
        let pass = vmwarden::keys::unwrap(
            &k,
            &vmwarden::model::ProjectName::parse("genomics").unwrap(),
            &drv,
            &wrapped,
        )
        .unwrap();
        let r = c.lock("genomics", "alice").await;
        assert_eq!(r.status, 200, "{r:?}");
        let secrets: Vec<(&str, Vec<u8>)> = vec![
            ("K", k.expose().to_vec()),
            ("K's first round key", k.expose()[..16].to_vec()),
            ("K's second round key", k.expose()[16..].to_vec()),
            ("A", a.expose().to_vec()),
            ("M", m.expose().to_vec()),
            ("admin share token", s.admin.clone().into_bytes()),
            ("member share token", s.member.clone().into_bytes()),
            ("passphrase", pass.expose().to_vec()),
            ("passphrase bytes", STANDARD.decode(pass.expose()).unwrap()),
        ];
        let mem = memory(d.pid());
        assert!(mem.iter().map(|(_, b)| b.len()).sum::<usize>() > 1 << 20);
        let mut found = vec![];
        for (what, needle) in &secrets {
            for (place, hay) in &mem {
                let n = hay
                    .windows(needle.len())
                    .filter(|w| w == &needle.as_slice())
                    .count();
                if n > 0 {
                    found.push(format!("{n} x {what} in {place}"));
                }
            }
        }
        assert!(
            found.is_empty(),
            "secrets left in memory:\n{}",
            found.join("\n")
        );
    });
}
