//! Shared bench helpers: the tests' daemon launcher, the crate's client on one kept-alive
//! connection, and latency statistics.
#![allow(dead_code)]

#[path = "../tests/common/mod.rs"]
mod harness;
#[allow(unused_imports)]
pub use harness::{Client, Daemon, Events, Opts};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Method;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A bench daemon: quiet logs, the given libvirt URI and extra `[idle]` lines.
pub fn daemon(uri: &str, idle: &str) -> Opts {
    Opts {
        uri: (!uri.is_empty()).then(|| uri.to_owned()),
        idle: idle.to_owned(),
        quiet: true,
        ..Opts::default()
    }
}

/// One kept-alive connection (the crate's client), answers as (status, body).
pub struct Conn(vmwarden::client::Connection);

impl Conn {
    pub async fn open(socket: &std::path::Path) -> Conn {
        Conn(
            vmwarden::client::Client::new(socket)
                .connect()
                .await
                .unwrap(),
        )
    }

    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, Bytes) {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap()));
        let r = self
            .0
            .call_as(
                Method::from_bytes(method.as_bytes()).unwrap(),
                path,
                user,
                body,
            )
            .await
            .unwrap();
        (r.status, r.body)
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

pub const CLIENTS: usize = 8;
pub const PER_CLIENT: usize = 250;

/// Warm-up, then `CLIENTS` keep-alive connections issuing `PER_CLIENT` `GET /v1/vms` each.
pub async fn load(socket: &std::path::Path, user: Option<&'static str>) -> Stats {
    let mut c = Conn::open(socket).await;
    for _ in 0..20 {
        assert_eq!(c.call("GET", "/v1/vms", user, None).await.0, 200);
    }
    let started = Instant::now();
    let mut tasks = vec![];
    for _ in 0..CLIENTS {
        let socket = socket.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&socket).await;
            let mut lat = Vec::with_capacity(PER_CLIENT);
            for _ in 0..PER_CLIENT {
                let t = Instant::now();
                let (st, _) = c.call("GET", "/v1/vms", user, None).await;
                assert_eq!(st, 200);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    Stats::from(all, started.elapsed().as_secs_f64())
}

/// A bare hyper 1.x server on a Unix socket answering `body` to everything: the floor any
/// server on the same socket and client can reach.
pub async fn bare_server(path: std::path::PathBuf, body: Bytes) {
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let body = Arc::new(body);
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move {
                    let mut r = hyper::Response::new(Full::new((*body).clone()));
                    r.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
