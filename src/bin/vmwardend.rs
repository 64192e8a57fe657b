//! `vmwardend`: the per-host daemon. Loads the config, hardens the process, opens the store,
//! binds the control socket, tells systemd it is ready, and serves until SIGTERM.

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;
use vmwarden::cli::daemon_args::Args;
use vmwarden::config::Config;
use vmwarden::hypervisor::libvirt::Libvirt;
use vmwarden::service::Service;
use vmwarden::{api, daemon, store};

/// Freed heap memory is zeroed before it goes back to the allocator: a buffer that held a
/// share or a passphrase for a moment (hyper's read buffers, serde's scratch space, a JSON
/// body) leaves nothing behind once it is freed.
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = args.check_config {
        Config::load_checked(&path)?;
        println!("{}: ok", path.display());
        return Ok(());
    }
    daemon::harden().context("Cannot harden the process")?;
    // The systemd environment (LISTEN_*, NOTIFY_SOCKET, WATCHDOG_*) is read and cleared
    // before any thread starts, so children such as qemu-img inherit none of it.
    let passed = daemon::socket_from_systemd();
    let notifier = daemon::Notifier::from_env();
    let target = daemon::init_logging();
    tracing::debug!(?target, notify = notifier.enabled(), "logging initialised");
    let passed = passed.map_err(anyhow::Error::msg)?;
    let cfg = Arc::new(Config::load_checked(&args.config)?);
    // glibc gives every thread that allocates its own arena (64 MiB of address space, a few
    // MiB resident each); the blocking pool's threads would multiply RSS for nothing. Two
    // arenas and a bounded pool keep the daemon small.
    // SAFETY: called before any other thread exists; mallopt only tunes the allocator.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()?
        .block_on(run(cfg, passed, Arc::new(notifier)))
}

async fn run(
    cfg: Arc<Config>,
    passed: Option<std::os::unix::net::UnixListener>,
    notifier: Arc<daemon::Notifier>,
) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives once the socket answers (or even before READY)
    // must shut down cleanly, not kill the process with the default action.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("Cannot install the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("Cannot install the SIGINT handler")?;
    let state_dir = &cfg.daemon.state_dir;
    if !state_dir.exists() {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("Cannot create {}", state_dir.display()))?;
        // QEMU runs as libvirt-qemu and must traverse the state directory to reach drives/;
        // nothing else in it is readable by others. (systemd's StateDirectoryMode=0711 does
        // the same for the packaged unit.)
        std::fs::set_permissions(
            state_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .with_context(|| format!("Cannot set the mode of {}", state_dir.display()))?;
    }
    // The store blocks (and the PostgreSQL client refuses to run on the reactor's threads).
    let (db_path, pg_url) = (cfg.db_path(), cfg.store.postgres().map(str::to_owned));
    let host = cfg.fleet.host_name();
    let agent = agent_id(state_dir).context("Cannot read or create the agent id")?;
    let store = Arc::new(
        tokio::task::spawn_blocking(move || match pg_url {
            Some(url) => store::Store::connect_as(&url, &host).map(|s| s.as_agent(&agent)),
            None => store::Store::open(&db_path).map(|s| s.on_host(&host).as_agent(&agent)),
        })
        .await?
        .context("Cannot open the store")?,
    );
    let hv = Arc::new(Libvirt::new(&cfg.libvirt.uri, cfg.libvirt.domain_type));
    // A launch that died between defining and undefining its ephemeral secret (daemon killed)
    // leaves the passphrase in libvirtd. Nothing of ours runs yet, so remove any now; a hung
    // libvirtd gets two seconds, not the start-up.
    let purge = hv.clone();
    let s2 = store.clone();
    let drives: std::collections::HashSet<String> =
        tokio::task::spawn_blocking(move || s2.drives())
            .await?
            .context("Cannot read the store")?
            .into_iter()
            .map(|d| d.id.to_string())
            .collect();
    let purged = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::task::spawn_blocking(move || {
            purge.purge_our_secrets(|desc| {
                desc.rsplit(' ')
                    .next()
                    .is_some_and(|id| drives.contains(id))
            })
        }),
    )
    .await;
    match purged {
        Ok(Ok(Ok(n))) if n > 0 => tracing::warn!(secrets = n, "removed leftover libvirt secrets"),
        Ok(Ok(Ok(_))) => {}
        other => tracing::debug!(
            ?other,
            "leftover secrets not checked (libvirtd unavailable)"
        ),
    }
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut svc = Service::new(cfg.clone(), store.clone(), hv.clone());
    if store.is_shared() {
        // A fleet: this host's identity, which envelopes of project keys are sealed to once
        // an admin enrolls it. Kept in the state folder from the first start.
        let path = state_dir.join("host-key");
        let key = tokio::task::spawn_blocking(move || {
            vmwarden::keys::host::HostKey::load_or_create(&path)
        })
        .await?
        .context("Cannot read or create the host key")?;
        svc = svc.with_host_key(key);
    }
    let svc = Arc::new(svc);
    svc.follow_fleet_events();
    svc.follow_fleet_keys();
    // This host joins the fleet (or, with SQLite, records itself) before anything is served.
    svc.heartbeat(true)
        .await
        .context("Cannot register this host in the store")?;
    tracing::info!(host = %svc.host(), "fleet host registered");
    // What a killed daemon left half done is undone before anyone is served: projects whose
    // shares never reached a client, image files no drive names.
    for item in svc.recover().await.context("Cannot recover the state")? {
        tracing::warn!(removed = %item, "recovered at start-up");
    }
    let (listener, _lock, socket) = match passed {
        Some(l) => {
            let path = daemon::socket_path(&l);
            (tokio::net::UnixListener::from_std(l)?, None, path)
        }
        None => {
            let (l, lock) = api::bind(&cfg)?;
            (l, Some(lock), cfg.daemon.socket.display().to_string())
        }
    };
    tracing::info!(socket = %socket, activated = _lock.is_none(), "listening");
    // The store is open and the socket listens (connections queue in its backlog until
    // `serve` accepts them): from here on a request is answered.
    notifier.ready(&format!("listening on {socket}"));
    // Registering for events opens the libvirt connection, which may block while libvirtd
    // is hung: off the reactor, after READY.
    tokio::task::spawn_blocking(move || {
        vmwarden::hypervisor::Hypervisor::set_event_sink(&*hv, events_tx)
    });

    // libvirt lifecycle events keep VM states current; reconciling at start-up, after each
    // reconnection (a Reconnected event) and once a minute covers anything an event missed.
    // None of this delays READY: a dead libvirtd only delays these tasks.
    let ev = svc.clone();
    tokio::spawn(async move {
        use tokio::time::{sleep_until, Instant};
        // A reconcile soon after an event that could not be applied (libvirtd answering
        // again, half started), and soon after each reconnection: a restarted libvirtd ends
        // the domains it finds half started in threads of its own, possibly before our
        // callbacks are registered on the new connection, so no event says so.
        let soon = Duration::from_secs(2);
        let mut again: Option<Instant> = None;
        let mut failures = 0u32;
        loop {
            let event = match again {
                Some(at) => tokio::select! {
                    e = events_rx.recv() => e,
                    _ = sleep_until(at) => {
                        again = None;
                        match ev.reconcile().await {
                            Ok(()) => failures = 0,
                            // Bounded: a libvirtd that stays away is the minute's business.
                            Err(err) if failures < 5 => {
                                failures += 1;
                                tracing::debug!(error = %err, "reconcile failed; trying again soon");
                                again = Some(Instant::now() + soon);
                            }
                            Err(err) => tracing::debug!(error = %err, "reconcile failed"),
                        }
                        continue;
                    }
                },
                None => events_rx.recv().await,
            };
            let Some(e) = event else { break };
            tracing::debug!(event = ?e, "libvirt lifecycle event");
            let reconnected = matches!(e, vmwarden::hypervisor::LifecycleEvent::Reconnected);
            match ev.on_lifecycle(e).await {
                Err(err) => {
                    tracing::debug!(error = %err, "lifecycle event not applied");
                    again = Some(Instant::now() + soon);
                }
                Ok(()) if reconnected => again = Some(Instant::now() + soon),
                Ok(()) => {}
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
    let beat = svc.clone();
    let every = cfg.fleet.heartbeat;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match beat.heartbeat(false).await {
                // A host fenced while its agent ran on (cut off from the others) cleans up
                // as soon as it hears of it.
                Ok(()) => {
                    if let Err(e) = beat.recover_from_fence().await {
                        tracing::warn!(error = %e, "cannot yet destroy the domains of a fenced host");
                    }
                }
                Err(vmwarden::service::ServiceError::Store(
                    e @ store::StoreError::HostTaken(_),
                )) => {
                    tracing::error!(error = %e, "another agent runs under this host name")
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat not recorded"),
            }
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
    if let Some(every) = notifier.watchdog_interval() {
        let wd = notifier.clone();
        tokio::spawn(async move {
            loop {
                wd.watchdog();
                tokio::time::sleep(every).await;
            }
        });
    }
    let shutdown = async {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down");
        notifier.stopping();
    };
    api::serve(listener, svc, shutdown).await;
    // Only the daemon that bound the socket removes it; a socket systemd passed in stays
    // for the next activation.
    if _lock.is_some() {
        let _ = std::fs::remove_file(&cfg.daemon.socket);
    }
    Ok(())
}

/// This agent's id, kept in `state_dir/agent-id` from its first start: a fleet refuses a
/// second live agent under one host name, and knows this one again after a crash.
fn agent_id(state_dir: &std::path::Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if uuid::Uuid::parse_str(s.trim()).is_ok() => return Ok(s.trim().to_owned()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not an agent id", path.display()),
            ))
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(id.as_bytes())?;
    f.sync_all()?;
    Ok(id)
}
