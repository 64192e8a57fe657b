//! `vmwardend`: the per-host daemon. Loads the config, hardens the process, opens the store,
//! binds the control socket, tells systemd it is ready, and serves until SIGTERM.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
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
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    vmwarden::hypervisor::Hypervisor::set_event_sink(&*hv, events_tx);
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

    // libvirt lifecycle events keep VM states current; reconciling at start-up, after each
    // reconnection (a Reconnected event) and once a minute covers anything an event missed.
    // None of this delays READY: a dead libvirtd only delays these tasks.
    let ev = svc.clone();
    tokio::spawn(async move {
        while let Some(e) = events_rx.recv().await {
            if let Err(err) = ev.on_lifecycle(e).await {
                tracing::debug!(error = %err, "lifecycle event not applied");
            }
        }
    });
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
            tokio::time::sleep(Duration::from_secs(if first { 2 } else { 60 })).await;
        }
    });
    let keys = svc.clone();
    tokio::spawn(async move {
        loop {
            keys.sweep_keys();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    if cfg.idle.enabled {
        let idle = svc.clone();
        let every = cfg.idle.sample_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = idle.idle_sweep().await {
                    tracing::debug!(error = %e, "idle sweep skipped");
                }
            }
        });
    }
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
