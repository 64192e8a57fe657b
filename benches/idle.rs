//! Idle sweep cost.
//! (a) libvirt's test driver with a node XML of N running domains (N = 100, 1,000, 5,000): the
//!     CPU and wall time of one sweep (one bulk-stats call, copying the records, one decision per
//!     VM). The test driver reports only the state group, so activity figures are synthetic.
//!     Then vmwardend's RSS with 1,000 VMs in its store, sampled every second on that driver.
//! (b) real QEMU with 20 small VMs: one bulk-stats call against 20 per-domain calls, side by
//!     side, interleaved.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};
use vmwarden::hypervisor::libvirt::Libvirt;
use vmwarden::hypervisor::{DomainType, Hypervisor};
use vmwarden::idle::{Effective, Sample, Tracker};

fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn node_xml(path: &std::path::Path, names: &[String]) {
    let mut x = String::from("<node>\n");
    for n in names {
        x.push_str(&format!(
            "<domain type='test'><name>{n}</name><uuid>{n}</uuid><memory>65536</memory><vcpu>1</vcpu>\
             <os><type>hvm</type></os><metadata><vmwarden:vm xmlns:vmwarden='{ns}'><vmwarden:name>b</vmwarden:name>\
             <vmwarden:project>p</vmwarden:project></vmwarden:vm></metadata></domain>\n",
            ns = vmwarden::hypervisor::xml::METADATA_NS
        ));
    }
    x.push_str("</node>\n");
    std::fs::write(path, x).unwrap();
}

fn policy() -> Effective {
    Effective {
        enabled: true,
        after: Duration::from_secs(7200),
        warn_before: Duration::from_secs(600),
        cpu_percent: 5.0,
        io_bytes_per_sec: 65536.0,
    }
}

fn part_a() {
    println!("(a) one idle sweep on libvirt's test driver (bulk stats + copy + decisions), 20 sweeps each");
    println!(
        "  {:>6} {:>12} {:>12} {:>16}",
        "N", "CPU ms", "wall ms", "CPU µs / domain"
    );
    let dir = std::env::temp_dir().join(format!("vmwb-idle-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for n in [100usize, 1000, 5000] {
        let names: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let path = dir.join(format!("node-{n}.xml"));
        node_xml(&path, &names);
        let hv = Libvirt::new(&format!("test://{}", path.display()), DomainType::Qemu);
        let first = hv.stats().unwrap();
        assert_eq!(
            first.iter().filter(|s| s.running).count(),
            n,
            "node XML domains not running"
        );
        let mut tracker = Tracker::new();
        let t0 = tokio::time::Instant::now();
        let rounds = 20u64;
        let (cpu0, wall0) = (cpu_now(), Instant::now());
        for r in 0..rounds {
            let stats = hv.stats().unwrap();
            // Synthetic activity: every third VM is busy, the rest idle.
            let at = t0 + Duration::from_secs(30 * r);
            let samples = stats.iter().enumerate().filter_map(|(i, s)| {
                let busy = i % 3 == 0;
                Some((
                    s.vm?,
                    Sample {
                        at,
                        cpu_time_ns: if busy {
                            r * 30_000_000_000
                        } else {
                            r * 1_000_000
                        },
                        io_bytes: 0,
                    },
                    policy(),
                ))
            });
            let d = tracker.sweep(samples);
            assert_eq!(d.len(), n);
        }
        let cpu = (cpu_now() - cpu0) / rounds as u32;
        let wall = wall0.elapsed() / rounds as u32;
        println!(
            "  {:>6} {:>12.2} {:>12.2} {:>16.2}",
            n,
            ms(cpu),
            ms(wall),
            cpu.as_secs_f64() * 1e6 / n as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn part_a_rss() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Create 1,000 VMs through the API, then restart the daemon on a test-driver node whose
        // domains carry those ids, so all 1,000 are running and sampled every second.
        let d = Daemon::start(daemon("test:///default", ""));
        let mut c = Conn::open(&d.socket).await;
        c.call("PUT", "/v1/users/alice", Some("root"), Some(json!({"team": "lab"}))).await;
        c.call("POST", "/v1/projects", Some("root"), Some(json!({"name": "p", "members": ["alice"]}))).await;
        // The answer that carries the shares ends its connection.
        let mut c = Conn::open(&d.socket).await;
        let mut ids = vec![];
        for i in 0..1000 {
            let (st, b) = c.call("POST", "/v1/vms", Some("alice"), Some(json!({"name": format!("v{i}"), "project": "p", "vcpus": 1, "memory_mib": 64}))).await;
            assert_eq!(st, 201);
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            ids.push(v["id"].as_str().unwrap().to_owned());
        }
        let idle_rss = d.rss_kib();
        let dir = d.stop_keep();
        let node = dir.join("node.xml");
        node_xml(&node, &ids);
        let d = Daemon::start_in(dir, daemon(&format!("test://{}", node.display()), "sample_interval = \"1s\""));
        let mut c = Conn::open(&d.socket).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, b) = c.call("GET", "/v1/host/vms", Some("root"), None).await;
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            let running = v.as_array().unwrap().iter().filter(|x| x["state"] == "running").count();
            if running == 1000 {
                break;
            }
            assert!(Instant::now() < deadline, "only {running} VMs running");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await; // a few sweeps
        let (_, _) = c.call("GET", "/v1/vms", Some("alice"), None).await;
        println!("  vmwardend RSS with 1,000 VMs in the store: {:.1} MiB after creating them; {:.1} MiB with all 1,000 running and swept every second",
            idle_rss as f64 / 1024.0, d.rss_kib() as f64 / 1024.0);
    });
}

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .unwrap()
}

fn part_b() {
    const N: usize = 20;
    let dir = std::path::PathBuf::from(format!("/tmp/vmwb-qemu-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut names = vec![];
    for i in 0..N {
        let name = uuid::Uuid::new_v4().to_string();
        let img = dir.join(format!("{i}.qcow2"));
        assert!(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&img)
            .arg("16M")
            .status()
            .unwrap()
            .success());
        let xml = format!(
            "<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/><apic/></features>\
             <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
             <target dev='vda' bus='virtio'/></disk><memballoon model='none'/></devices></domain>",
            img.display()
        );
        let x = dir.join(format!("{i}.xml"));
        std::fs::write(&x, xml).unwrap();
        let out = virsh(&["create", x.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        names.push(name);
    }
    std::thread::sleep(Duration::from_secs(3));
    let hv = Libvirt::new("qemu:///system", DomainType::Auto);
    let ours = |v: &Vec<vmwarden::hypervisor::DomainStats>| {
        v.iter().filter(|s| names.contains(&s.name)).count()
    };
    let (mut bulk, mut per) = (vec![], vec![]);
    let (mut bulk_cpu, mut per_cpu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..20 {
        let (c0, t) = (cpu_now(), Instant::now());
        let s = hv.stats().unwrap();
        bulk.push(t.elapsed());
        bulk_cpu += cpu_now() - c0;
        assert_eq!(ours(&s), N);
        let (c0, t) = (cpu_now(), Instant::now());
        let s = hv.stats_per_domain().unwrap();
        per.push(t.elapsed());
        per_cpu += cpu_now() - c0;
        assert_eq!(ours(&s), N);
    }
    bulk.sort();
    per.sort();
    println!("(b) real QEMU/KVM, {N} running VMs, 20 samples each, interleaved");
    println!(
        "  {:<34} {:>10} {:>10} {:>14}",
        "sampling", "median ms", "p90 ms", "client CPU ms"
    );
    println!(
        "  {:<34} {:>10.2} {:>10.2} {:>14.2}",
        "1 bulk call (all domains)",
        ms(bulk[10]),
        ms(bulk[18]),
        ms(bulk_cpu / 20)
    );
    println!(
        "  {:<34} {:>10.2} {:>10.2} {:>14.2}",
        format!("{N} per-domain calls"),
        ms(per[10]),
        ms(per[18]),
        ms(per_cpu / 20)
    );
    println!(
        "  ratio per-domain / bulk (median): {:.2}",
        ms(per[10]) / ms(bulk[10])
    );
    for n in &names {
        virsh(&["destroy", n]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    part_a();
    part_a_rss();
    part_b();
}
