//! GET /v1/vms over the control socket with 1,000 VMs in the store, side by side with a bare
//! hyper server on a Unix socket that answers a fixed JSON body of the same size. Same client,
//! same concurrency, same run. Prints requests/s and p50/p99 for both and the ratios.

mod common;
use bytes::Bytes;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const VMS: usize = 1000;
fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = Daemon::start(daemon("test:///default", ""));
        let mut c = Conn::open(&d.socket).await;
        assert_eq!(c.call("PUT", "/v1/users/root", Some("root"), Some(json!({"team": "ops"}))).await.0, 200);
        assert_eq!(c.call("PUT", "/v1/users/alice", Some("root"), Some(json!({"team": "lab"}))).await.0, 200);
        assert_eq!(c.call("POST", "/v1/projects", Some("root"), Some(json!({"name": "p", "members": ["alice"]}))).await.0, 201);
        // The answer that carries the shares ends its connection.
        let mut c = Conn::open(&d.socket).await;
        let t = Instant::now();
        for i in 0..VMS {
            let (st, _) = c
                .call("POST", "/v1/vms", Some("alice"), Some(json!({"name": format!("vm-{i}"), "project": "p", "vcpus": 1, "memory_mib": 64})))
                .await;
            assert_eq!(st, 201);
        }
        let create = t.elapsed();
        let (_, body) = c.call("GET", "/v1/vms", Some("alice"), None).await;
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), VMS);

        let bare_path = d.dir.join("bare.sock");
        let fixed = Bytes::from(vec![b' '; body.len()]);
        tokio::spawn(bare_server(bare_path.clone(), fixed));
        tokio::time::sleep(Duration::from_millis(50)).await;

        // Interleave to share any drift of the machine between the two.
        let mut vm_runs = vec![];
        let mut bare_runs = vec![];
        for _ in 0..2 {
            bare_runs.push(load(&bare_path, None).await);
            vm_runs.push(load(&d.socket, Some("alice")).await);
        }
        let pick = |runs: Vec<Stats>| runs.into_iter().max_by(|a, b| a.rps().total_cmp(&b.rps())).unwrap();
        let (v, b) = (pick(vm_runs), pick(bare_runs));
        println!("GET /v1/vms, {VMS} VMs, body {} bytes, {CLIENTS} clients x {PER_CLIENT} requests (best of 2 runs each)", body.len());
        println!("  creating {VMS} VMs through the API: {:.1} ms each", ms(create) / VMS as f64);
        println!("  {:<22} {:>10} {:>10} {:>10}", "server", "req/s", "p50 ms", "p99 ms");
        println!("  {:<22} {:>10.0} {:>10.3} {:>10.3}", "bare hyper", b.rps(), ms(b.p50), ms(b.p99));
        println!("  {:<22} {:>10.0} {:>10.3} {:>10.3}", "vmwardend", v.rps(), ms(v.p50), ms(v.p99));
        println!(
            "  ratio vmwardend/bare: throughput {:.2}, p50 {:.2}x, p99 {:.2}x",
            v.rps() / b.rps(),
            ms(v.p50) / ms(b.p50),
            ms(v.p99) / ms(b.p99)
        );
    });
}
