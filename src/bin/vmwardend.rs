//! `vmwardend`: the per-host daemon. Loads the config, hardens the process, opens the store,
//! binds the control socket, tells systemd it is ready, and serves until SIGTERM.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmwarden::config::Config;
use vmwarden::hypervisor::libvirt::Libvirt;
use vmwarden::service::Service;
use vmwarden::{api, daemon, store};

/// vmwarden daemon: enforces VM sharing rules over libvirt.
#[derive(Parser, Debug)]
#[command(name = "vmwardend", version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/vmwarden/config.toml")]
    config: PathBuf,
    /// Only validate the configuration file and exit.
    #[arg(long, value_name = "PATH")]
    check_config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = args.check_config {
        Config::load(&path)?;
        println!("{}: ok", path.display());
        return Ok(());
    }
    daemon::harden().context("Cannot harden the process")?;
    // The environment is read (LISTEN_FDS) and cleared before any thread starts.
    let passed = daemon::socket_from_systemd();
    daemon::init_logging();
    let cfg = Arc::new(Config::load(&args.config)?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg, passed))
}

async fn run(
    cfg: Arc<Config>,
    passed: Option<std::os::unix::net::UnixListener>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.daemon.state_dir)
        .with_context(|| format!("Cannot create {}", cfg.daemon.state_dir.display()))?;
    let store = Arc::new(store::Store::open(&cfg.db_path()).context("Cannot open the store")?);
    let hv = Arc::new(Libvirt::new(&cfg.libvirt.uri, cfg.libvirt.domain_type));
    let svc = Arc::new(Service::new(cfg.clone(), store, hv));
    let (listener, _lock) = match passed {
        Some(l) => (tokio::net::UnixListener::from_std(l)?, None),
        None => {
            let (l, lock) = api::bind(&cfg)?;
            (l, Some(lock))
        }
    };
    tracing::info!(socket = %cfg.daemon.socket.display(), "listening");
    daemon::notify(&[sd_notify::NotifyState::Ready]);

    // Reconcile with libvirt in the background: a dead libvirtd must not delay READY.
    let bg = svc.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            match bg.reconcile().await {
                Ok(()) if first => {
                    tracing::info!("reconciled running domains with the store");
                    first = false;
                }
                Ok(()) => {}
                Err(e) => tracing::debug!(error = %e, "reconcile skipped"),
            }
            bg.keyring().sweep(Instant::now());
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    if let Some(every) = daemon::watchdog_interval() {
        tokio::spawn(async move {
            loop {
                daemon::notify(&[sd_notify::NotifyState::Watchdog]);
                tokio::time::sleep(every).await;
            }
        });
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down");
        daemon::notify(&[sd_notify::NotifyState::Stopping]);
    };
    api::serve(listener, svc, shutdown).await;
    // Only the daemon that bound the socket removes it; a socket systemd passed in stays
    // for the next activation.
    if _lock.is_some() {
        let _ = std::fs::remove_file(&cfg.daemon.socket);
    }
    Ok(())
}
