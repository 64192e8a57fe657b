//! Shared bench helpers: the tests' daemon launcher, the crate's client on one kept-alive
//! connection, and latency statistics.
#![allow(dead_code)]

#[path = "../tests/common/mod.rs"]
mod harness;
pub use harness::{Daemon, Opts};

use bytes::Bytes;
use hyper::Method;
use std::time::Duration;

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
