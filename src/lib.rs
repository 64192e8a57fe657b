//! vmwarden: a per-host hypervisor agent that enforces the sharing rules of a research
//! enclave over libvirt.
//!
//! # Layout
//! Data flows one way: socket -> `api` -> `service` -> (`policy`, `store`, `keys`,
//! `hypervisor`).
//! - `api`: hyper server on the Unix control socket, peer credentials, limits, routing, DTOs,
//!   and the one error-to-status mapping.
//! - `service`: one function per operation; combines the layers below; per-VM locks; events.
//! - `policy`: pure rules, `(principal, action, snapshot) -> Allow | Deny(code)`.
//! - `model`: validated names, ids, roles, records; `SecretBytes`.
//! - `store`: SQLite with migrations; one transaction per mutation with its audit row.
//! - `keys`: project keys, shares, two-party unlock, passphrase wrapping.
//! - `hypervisor`: the `Hypervisor` trait, its libvirt implementation, domain XML, images.
//! - `idle`: the idle decision over activity samples and the per-VM tracker.
//! - `config`: TOML config with defaults and located errors.
//! - `daemon`: process set-up shared by `vmwardend` (hardening, notify, logging).
//! - `cli`: the clap definitions of `vmwarden` and `vmwardend`, shared with the man page and
//!   completion generator (`examples/gen_assets.rs`).
//! - `client`: the one HTTP client of the control socket (CLI, tests, benchmarks).

#![deny(missing_debug_implementations)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod hypervisor;
pub mod idle;
pub mod keys;
pub mod model;
pub mod policy;
pub mod service;
pub mod store;
