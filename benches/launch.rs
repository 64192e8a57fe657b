//! Launch cost, side by side in one run, same domain XML (vmwardend's builder), same host:
//! 1. vmwardend: POST /v1/vms/{id}/start of a VM with one LUKS drive (iter-time 10 ms):
//!    unwrap the passphrase, define an ephemeral secret, create the domain, undefine the secret.
//! 2. `virsh create` with an unencrypted qcow2 image.
//! 3. `virsh create` with a LUKS qcow2 image made at qemu-img's default iter-time, its secret
//!    defined beforehand (not timed).
//!
//! Each launch is destroyed before the next; destroy is not timed. Runs are interleaved.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};
use vmwarden::hypervisor::{xml, DiskSpec, DomainSpec, DomainType};
use vmwarden::model::{DriveId, ProjectName, SecretBytes, VmId, VmName};

const ROUNDS: usize = 7;

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .unwrap()
}

fn domain_type() -> DomainType {
    let caps = virsh(&["domcapabilities", "--virttype", "kvm"]);
    if caps.status.success() {
        DomainType::Kvm
    } else {
        DomainType::Qemu
    }
}

/// Domain XML from vmwarden's own builder; `encrypted: false` strips the encryption element.
fn domain(
    dir: &std::path::Path,
    image: &std::path::Path,
    secret: uuid::Uuid,
    encrypted: bool,
) -> (String, String) {
    let id = VmId::new_random();
    let spec = DomainSpec {
        id,
        name: VmName::parse("bench").unwrap(),
        project: ProjectName::parse("bench").unwrap(),
        host: "bench".into(),
        vcpus: 1,
        memory_mib: 64,
        disks: vec![DiskSpec {
            drive: DriveId::new_random(),
            path: image.to_owned(),
            passphrase: SecretBytes::new(vec![]),
        }],
        serial_log: dir.join(format!("{id}.log")),
    };
    let mut x = xml::domain_xml(&spec, domain_type(), &[secret]).unwrap();
    if !encrypted {
        let start = x.find("<encryption").unwrap();
        let end = x[start..]
            .find("</encryption>")
            .map(|e| start + e + "</encryption>".len())
            .unwrap_or_else(|| start + x[start..].find("/>").unwrap() + 2);
        x.replace_range(start..end, "");
    }
    let path = dir.join(format!("{id}.xml"));
    std::fs::write(&path, x).unwrap();
    (id.to_string(), path.display().to_string())
}

fn timed_virsh_create(xml_path: &str, id: &str) -> Duration {
    let t = Instant::now();
    let out = virsh(&["create", xml_path]);
    let el = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    virsh(&["destroy", id]);
    el
}

fn summary(name: &str, mut v: Vec<Duration>) -> f64 {
    v.sort();
    let med = ms(v[v.len() / 2]);
    println!(
        "  {:<44} {:>9.1} {:>9.1} {:>9.1}",
        name,
        ms(v[0]),
        med,
        ms(v[v.len() - 1])
    );
    med
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = Daemon::start(daemon("", ""));
        let mut c = Conn::open(&d.socket).await;
        c.call("PUT", "/v1/users/root", Some("root"), Some(json!({"team": "ops"}))).await;
        c.call("PUT", "/v1/users/alice", Some("root"), Some(json!({"team": "lab"}))).await;
        let (_, b) = c.call("POST", "/v1/projects", Some("root"), Some(json!({"name": "p", "members": ["alice"]}))).await;
        let shares: serde_json::Value = serde_json::from_slice(&b).unwrap();
        // The answer that carries the shares ends its connection.
        let mut c = Conn::open(&d.socket).await;
        c.call("POST", "/v1/projects/p/unlock", Some("root"), Some(json!({"share": shares["admin_share"]}))).await;
        c.call("POST", "/v1/projects/p/unlock", Some("alice"), Some(json!({"share": shares["member_share"]}))).await;
        let t = Instant::now();
        let (st, b) = c.call("POST", "/v1/drives", Some("alice"), Some(json!({"project": "p", "name": "d", "size_mib": 64}))).await;
        let drive_create = t.elapsed();
        assert_eq!(st, 201);
        let drive: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let (st, b) = c.call("POST", "/v1/vms", Some("alice"), Some(json!({"project": "p", "name": "v", "vcpus": 1, "memory_mib": 64, "drives": [drive["id"]]}))).await;
        assert_eq!(st, 201);
        let vm: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let vm = vm["id"].as_str().unwrap().to_owned();

        // Images for the virsh runs, in a directory QEMU may read.
        let dir = d.dir.join("virsh");
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain.qcow2");
        assert!(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&plain).arg("64M").status().unwrap().success());
        let pass_file = dir.join("pass");
        std::fs::write(&pass_file, "bench-passphrase-not-a-secret").unwrap();
        let luks = dir.join("luks.qcow2");
        let t = Instant::now();
        assert!(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "--object"])
            .arg(format!("secret,id=s0,file={}", pass_file.display()))
            .args(["-o", "encrypt.format=luks,encrypt.key-secret=s0"])
            .arg(&luks)
            .arg("64M")
            .status()
            .unwrap()
            .success());
        let default_create = t.elapsed();
        let secret = uuid::Uuid::new_v4();
        let sxml = dir.join("secret.xml");
        std::fs::write(&sxml, format!("<secret ephemeral='yes' private='yes'><uuid>{secret}</uuid><description>vmwarden bench</description></secret>")).unwrap();
        assert!(virsh(&["secret-define", sxml.to_str().unwrap()]).status.success());
        assert!(virsh(&["secret-set-value", &secret.to_string(), "--file", pass_file.to_str().unwrap(), "--plain"]).status.success());

        let (mut ours, mut plain_t, mut luks_t) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let (st, b) = c.call("POST", &format!("/v1/vms/{vm}/start"), Some("alice"), None).await;
            ours.push(t.elapsed());
            assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
            let (st, _) = c.call("POST", &format!("/v1/vms/{vm}/stop"), Some("alice"), Some(json!({"force": true}))).await;
            assert_eq!(st, 200);

            let (id, x) = domain(&dir, &plain, secret, false);
            plain_t.push(timed_virsh_create(&x, &id));
            let (id, x) = domain(&dir, &luks, secret, true);
            luks_t.push(timed_virsh_create(&x, &id));
        }
        virsh(&["secret-undefine", &secret.to_string()]);
        println!("Launch of a 64 MiB, 1-vCPU domain with one 64 MiB qcow2 drive, {ROUNDS} rounds, domain type {:?}", domain_type());
        println!("  {:<44} {:>9} {:>9} {:>9}", "launch", "min ms", "median", "max ms");
        let a = summary("vmwardend start, LUKS iter-time 10 ms", ours);
        let b = summary("virsh create, unencrypted image", plain_t);
        let c2 = summary("virsh create, LUKS at default iter-time", luks_t);
        println!("  ratio vmwardend / unencrypted virsh create (median): {:.2}", a / b);
        println!("  ratio default-iter LUKS virsh create / unencrypted (median): {:.2}", c2 / b);
        println!("  drive creation: vmwardend POST /v1/drives {:.0} ms; qemu-img LUKS at default iter-time {:.0} ms", ms(drive_create), ms(default_create));
    });
}
