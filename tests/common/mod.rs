//! Test harness: a real `vmwardend` process on a real Unix socket, against the host's real
//! libvirtd (qemu:///system) and a real store (a SQLite file, or with
//! `VMWARDEN_TEST_STORE=postgres` a database of a throwaway PostgreSQL cluster), driven over
//! HTTP with the one client of the crate. `Fixture` builds a world of users, projects, drives and VMs in one chain.
#![allow(dead_code, unused_imports)]

mod client;
mod daemon;
mod fixture;
mod host;
mod raw;

pub use client::*;
pub use daemon::*;
pub use fixture::*;
pub use host::*;
pub use raw::*;

use std::time::{Duration, Instant};

/// Waits until `f` holds, polling; panics with `what` after `within` (a guard against a
/// hang, not a measurement).
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
