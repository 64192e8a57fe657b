//! Dynamic shell completion: VM and drive names come from the daemon as the user types
//! (`COMPLETE=bash vmwarden ...`, registered by `vmwarden completion bash`). A daemon that
//! does not answer within a second completes nothing rather than hanging the shell.

use clap_complete::engine::CompletionCandidate;
use std::ffi::OsStr;
use std::time::Duration;

fn names(paths: &[&'static str], current: &OsStr) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy().into_owned();
    let socket = std::env::var_os("VMWARDEN_SOCKET")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/vmwarden/vmwarden.sock".into());
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return vec![];
    };
    let client = crate::client::Client::new(socket);
    let mut items = vec![];
    for path in paths {
        let reply = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(1),
                client.call(hyper::Method::GET, path, None),
            )
            .await
        });
        if let Ok(Ok(r)) = reply {
            if let Ok(serde_json::Value::Array(list)) = serde_json::from_slice(&r.body) {
                items.extend(list);
            }
        }
    }
    let mut out: Vec<CompletionCandidate> = items
        .iter()
        .filter_map(|v| {
            let name = v["name"].as_str()?;
            let help = format!(
                "{} {}",
                v["project"].as_str().unwrap_or(""),
                v["state"].as_str().unwrap_or("")
            );
            name.starts_with(&prefix)
                .then(|| CompletionCandidate::new(name).help(Some(help.trim().to_owned().into())))
        })
        .collect();
    out.sort_by(|a, b| a.get_value().cmp(b.get_value()));
    out.dedup_by(|a, b| a.get_value() == b.get_value());
    out
}

/// Names of the VMs the caller holds a role on (for an admin, of every VM on the host).
pub fn vms(current: &OsStr) -> Vec<CompletionCandidate> {
    names(&["/v1/vms", "/v1/host/vms"], current)
}

/// Names of the drives the caller owns.
pub fn drives(current: &OsStr) -> Vec<CompletionCandidate> {
    names(&["/v1/drives"], current)
}
