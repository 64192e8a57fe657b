//! The control socket: a hyper 1.x HTTP/1.1 server on a Unix socket.
//!
//! Request flow:
//! 1. `bind` locks `<socket>.lock`, removes a stale socket only while holding that lock,
//!    binds, and sets the socket's mode and group (or the daemon adopts a socket systemd
//!    passed in).
//! 2. `serve` accepts every connection at once and reads the peer's uid (SO_PEERCRED); the
//!    connection takes a slot from its peer's pool (`conn::Slots`) or is answered 503 and
//!    closed. hyper closes a connection whose request head does not arrive within
//!    `limits.header_timeout` (idle keep-alive included); `conn::ConnIo` closes one whose
//!    answer is not taken within `limits.write_timeout`.
//! 3. `routes::handle` answers `GET /v1/health` and `GET /v1/openapi.json` to anyone. For
//!    everything else the peer's uid names the principal (an orchestrator may act for the
//!    user in `Vmwarden-User`); an unregistered principal gets 403 before its input is read.
//! 4. The route is matched, the body read under `limits.max_body_bytes` and the same
//!    timeout, and `ops::parse` turns it all into one typed `Op` (unknown fields refused).
//! 5. `routes::execute` runs the `Service` operation. Every request is handled in a task of
//!    its own (and an operation with side effects in one more), so a client that hangs up
//!    once its request is sent never cuts it short.
//! 6. The result is JSON with Content-Length; every error becomes problem+json in
//!    `error::status_and_code`; an answer that carries shares fires its delivery ticket once
//!    flushed to the socket.
//! 7. On shutdown, accepting stops and open connections drain (bounded), then `serve` returns.

pub mod conn;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod routes;

use crate::config::Config;
use crate::service::Service;
use conn::PeerClass;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;

/// Errors while setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another vmwardend holds the lock.
    #[error("Another vmwardend holds {0}")]
    Locked(String),
    /// I/O on the socket path.
    #[error("Socket {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The configured group does not exist.
    #[error("Group {0} does not exist")]
    NoGroup(String),
}

/// Holds the `<socket>.lock` flock for the daemon's lifetime.
#[derive(Debug)]
pub struct SocketLock(#[allow(dead_code)] Flock<File>);

fn io(path: &Path) -> impl Fn(std::io::Error) -> BindError + '_ {
    move |source| BindError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Step 1: lock, remove a stale socket, bind, set mode and group.
pub fn bind(cfg: &Config) -> Result<(UnixListener, SocketLock), BindError> {
    let path = &cfg.daemon.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let lock_path = path.with_file_name(format!(
        "{}.lock",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    ));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| BindError::Locked(lock_path.display().to_string()))?;
    // Holding the lock proves no live daemon serves this path, so a leftover is stale.
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io(path))?;
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(cfg.daemon.socket_mode_bits()),
    )
    .map_err(io(path))?;
    if !cfg.daemon.socket_group.is_empty() {
        match nix::unistd::Group::from_name(&cfg.daemon.socket_group) {
            // Skipped when the group already matches: under the unit's system-call filter a
            // chown may be refused even when it would change nothing.
            Ok(Some(g)) if nix::unistd::getegid() == g.gid => {}
            Ok(Some(g)) => nix::unistd::chown(path, None, Some(g.gid))
                .map_err(|e| io(path)(std::io::Error::from(e)))?,
            // `Config::check_host` refused a missing group at start; it went away since.
            _ => return Err(BindError::NoGroup(cfg.daemon.socket_group.clone())),
        }
    }
    Ok((listener, SocketLock(lock)))
}

/// Steps 2-7: serves until `shutdown` completes, then drains connections (at most 10 s).
pub async fn serve(listener: UnixListener, svc: Arc<Service>, shutdown: impl Future<Output = ()>) {
    let limits = Arc::new(svc.config().limits.clone());
    let access = svc.config().access.clone();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let state = Arc::new(routes::State::new(svc));
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => { backoff = Duration::from_millis(5); s }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (st, watcher, limits, access) = (
            state.clone(),
            graceful.watcher(),
            limits.clone(),
            access.clone(),
        );
        // Everything after the accept runs in the connection's own task: looking the peer
        // up (NSS may be slow) never holds up the accept loop.
        tokio::spawn(async move {
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            let class = match uid {
                Some(0) => PeerClass::Privileged,
                Some(u) => match st.peer_name(u).await {
                    Some(n) if access.admins.contains(&n) || access.orchestrators.contains(&n) => {
                        PeerClass::Privileged
                    }
                    _ => PeerClass::Unprivileged,
                },
                None => PeerClass::Unprivileged,
            };
            let slot = match (st.slots.connection(uid.unwrap_or(u32::MAX), class), class) {
                (Some(slot), _) => slot,
                (None, PeerClass::Privileged) => st.slots.privileged().await,
                (None, PeerClass::Unprivileged) => {
                    tracing::debug!(?uid, "connection refused: too many open connections");
                    use tokio::io::AsyncWriteExt;
                    let mut stream = stream;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stream.write_all(conn::BUSY))
                            .await;
                    return;
                }
            };
            let deliveries = Arc::new(conn::Deliveries::default());
            let ctx = Arc::new(conn::ConnCtx {
                uid,
                deliveries: deliveries.clone(),
                slot: std::sync::Mutex::new(Some(slot)),
            });
            let svc_fn = hyper::service::service_fn(move |req| {
                // The handler runs in a task of its own: a client that hangs up after sending
                // its request (hyper then drops this future) does not cut it short.
                let handler = tokio::spawn(routes::handle(st.clone(), ctx.clone(), req));
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handler.await.unwrap_or_else(|_| routes::internal_error()),
                    )
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                // A client that shuts its writing side once its request is sent (`socat`,
                // `nc -N`) still gets its answer.
                .half_close(true)
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(
                    conn::ConnIo::new(stream, limits.write_timeout, deliveries),
                    svc_fn,
                );
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    state.closing();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; closing them");
        }
    }
}
