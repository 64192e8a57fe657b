//! The one shared connection: opened lazily in a thread of its own (a hung libvirtd cannot
//! hang a call), kept alive by libvirt's keepalive on its event loop, reopened by a keeper
//! thread within a second of libvirtd answering again, with lifecycle events registered on
//! every new connection before anyone uses it.

use super::*;

/// Keepalive: a probe every 5 s, the connection declared dead after 3 unanswered ones, so a
/// wedged libvirtd costs a call at most about 20 s instead of hanging it forever.
pub(super) const KEEPALIVE_INTERVAL_S: i32 = 5;
pub(super) const KEEPALIVE_COUNT: u32 = 3;

/// How long a call waits for a new connection. Opening one has no keepalive yet, so on a
/// libvirtd that accepts but never answers (stopped, deadlocked) it would wait forever.
pub(super) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the keeper looks at the connection once an event sink is set. `is_alive` is a
/// local check, so a healthy connection costs nothing; a lost one is reopened (and events
/// re-registered) within this interval of libvirtd answering again.
pub(super) const KEEPER_INTERVAL: Duration = Duration::from_secs(1);

pub(super) static EVENT_LOOP: Once = Once::new();
pub(super) static EVENT_LOOP_OK: OnceLock<bool> = OnceLock::new();

/// Registers libvirt's default event loop and runs it in its own thread, once per process.
/// Keepalive (and domain events) need it, and it must be registered before the first
/// connection opens to be used by it.
pub(super) fn start_event_loop() -> bool {
    EVENT_LOOP.call_once(|| {
        // libvirt's default error handler prints every error to stderr; ours go into
        // `HypervisorError`s instead.
        virt::error::clear_error_callback();
        let ok = match virt::event::event_register_default_impl() {
            Ok(()) => std::thread::Builder::new()
                .name("libvirt-events".to_owned())
                .spawn(|| loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        tracing::warn!(error = %e.message(), "libvirt event loop iteration failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .map_err(|e| tracing::error!(error = %e, "cannot start the libvirt event thread"))
                .is_ok(),
            Err(e) => {
                tracing::error!(error = %e.message(), "cannot register the libvirt event loop");
                false
            }
        };
        let _ = EVENT_LOOP_OK.set(ok);
    });
    EVENT_LOOP_OK.get().copied().unwrap_or(false)
}

/// The shared connection, how it is (re)opened, and where its lifecycle events go.
pub(super) struct Link {
    /// Connection URI, e.g. `qemu:///system`.
    pub(super) uri: String,
    /// The open connection, if any, with its event registration.
    pub(super) conn: Mutex<Option<Session>>,
    /// An open still running in its own thread after a caller gave up waiting for it; the
    /// next caller takes its result instead of starting another. Held while a connection
    /// is opened or its events registered, so that those happen once at a time.
    pub(super) opening: Mutex<Option<Receiver<Result<Connect, VirtError>>>>,
    /// Where lifecycle events go, once the service has said so.
    pub(super) sink: Mutex<Option<Sink>>,
    /// Starts the keeper thread once.
    pub(super) keeper: Once,
}

/// An event sink and its generation, which tells whether a registration sends to it.
#[derive(Clone)]
pub(super) struct Sink {
    pub(super) generation: u64,
    pub(super) tx: UnboundedSender<LifecycleEvent>,
}

/// One open connection as the shared slot holds it.
pub(super) struct Session {
    pub(super) conn: Connect,
    /// The lifecycle callback registered on `conn`, deregistered when the session is
    /// dropped: the callback holds a reference to the connection, which would otherwise
    /// never close.
    pub(super) events: Option<Registration>,
}

/// A lifecycle callback registered on a connection.
#[derive(Clone, Copy)]
pub(super) struct Registration {
    /// libvirt's callback id.
    pub(super) id: c_int,
    /// The [`Sink::generation`] whose sender the callback owns.
    pub(super) generation: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(reg) = self.events.take() {
            deregister_lifecycle(&self.conn, reg.id);
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutex here only ever holds a whole value or none; a panic elsewhere cannot leave
    // one half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens a connection in a thread of its own, so that the caller can stop waiting.
pub(super) fn spawn_open(
    uri: &str,
) -> Result<Receiver<Result<Connect, VirtError>>, HypervisorError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let uri = uri.to_owned();
    std::thread::Builder::new()
        .name("libvirt-connect".to_owned())
        .spawn(move || {
            // If nobody waits any more, the send fails and the connection is closed on drop.
            let _ = tx.send(Connect::open(Some(&uri)));
        })
        .map_err(|e| {
            HypervisorError::Unavailable(format!("Cannot start a connection thread: {e}"))
        })?;
    Ok(rx)
}

impl Link {
    pub(super) fn slot(&self) -> MutexGuard<'_, Option<Session>> {
        lock(&self.conn)
    }

    pub(super) fn sink(&self) -> Option<Sink> {
        lock(&self.sink).clone()
    }

    /// The shared connection if it is alive; a dead one is dropped.
    pub(super) fn live_connection(&self) -> Option<Connect> {
        let dead = {
            let mut slot = self.slot();
            let session = slot.as_ref()?;
            // is_alive asks the client library, not the daemon: no round trip.
            if session.conn.is_alive().unwrap_or(false) {
                return Some(session.conn.clone());
            }
            slot.take()
        };
        tracing::info!(uri = %self.uri, "libvirt connection lost, reconnecting");
        // Outside the lock: deregistering the events may talk to libvirtd.
        drop(dead);
        None
    }

    /// A live connection: the shared one, or a new one when there is none or it died.
    pub(super) fn connection(&self) -> Result<Connect, HypervisorError> {
        if let Some(conn) = self.live_connection() {
            return Ok(conn);
        }
        // One open at a time: the others wait here, at most OPEN_TIMEOUT, and then use it.
        let mut opening = lock(&self.opening);
        if let Some(conn) = self.live_connection() {
            return Ok(conn);
        }
        let events = start_event_loop();
        // An open already found hanging is only checked, not waited for again: while
        // libvirtd does not answer, every call fails at once instead of queueing here.
        let (rx, wait) = match opening.take() {
            Some(rx) => (rx, Duration::ZERO),
            None => (spawn_open(&self.uri)?, OPEN_TIMEOUT),
        };
        let conn = match rx.recv_timeout(wait) {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(HypervisorError::Unavailable(format!(
                    "Cannot connect to {}: {}",
                    self.uri,
                    message(&e)
                )))
            }
            Err(RecvTimeoutError::Timeout) => {
                *opening = Some(rx);
                return Err(HypervisorError::Unavailable(format!(
                    "No answer from libvirtd at {}",
                    self.uri
                )));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(HypervisorError::Unavailable(format!(
                    "Cannot connect to {}: the connection thread ended",
                    self.uri
                )))
            }
        };
        if events {
            if let Err(e) = conn.set_keep_alive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT) {
                tracing::warn!(error = %e.message(), "cannot enable libvirt keepalive");
            }
        }
        // Events are registered before the connection is shared, so nothing done through
        // it goes unreported; a failed registration is retried by the keeper.
        let sink = self.sink();
        let registration = sink.as_ref().and_then(|s| match register_lifecycle(&conn, &s.tx) {
            Ok(id) => Some(Registration {
                id,
                generation: s.generation,
            }),
            Err(e) => {
                tracing::warn!(error = %message(&e), "cannot register for libvirt domain events");
                None
            }
        });
        tracing::info!(uri = %self.uri, events = registration.is_some(), "connected to libvirt");
        let old = self.slot().replace(Session {
            conn: conn.clone(),
            events: registration,
        });
        drop(old);
        if let (Some(sink), Some(_)) = (sink, registration) {
            let _ = sink.tx.send(LifecycleEvent::Reconnected);
        }
        Ok(conn)
    }

    /// Registers the current sink on the open connection when it is not yet (a failed
    /// registration, a sink set after the connection opened, or a new sink), replacing an
    /// older registration, and sends `Reconnected`.
    pub(super) fn ensure_events(&self) {
        let Some(sink) = self.sink() else {
            return;
        };
        // Serialises with `connection`, which registers too.
        let _opening = lock(&self.opening);
        let (conn, old) = {
            let mut slot = self.slot();
            match slot.as_mut() {
                None => return,
                Some(s) if s.events.map(|r| r.generation) == Some(sink.generation) => return,
                Some(s) => (s.conn.clone(), s.events.take()),
            }
        };
        // libvirt refuses the same callback twice on one connection: the old registration
        // goes first. Events in between are covered by the `Reconnected` below.
        if let Some(old) = old {
            deregister_lifecycle(&conn, old.id);
        }
        let id = match register_lifecycle(&conn, &sink.tx) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %message(&e), "cannot register for libvirt domain events");
                self.forget_if_dead(&conn);
                return;
            }
        };
        let current = {
            let mut slot = self.slot();
            match slot.as_mut() {
                Some(s) if same_connection(&s.conn, &conn) => {
                    s.events = Some(Registration {
                        id,
                        generation: sink.generation,
                    });
                    true
                }
                _ => false,
            }
        };
        if !current {
            // The connection was dropped meanwhile; the next one registers anew.
            deregister_lifecycle(&conn, id);
            return;
        }
        let _ = sink.tx.send(LifecycleEvent::Reconnected);
    }

    /// One keeper round: reopen a lost connection (which registers events) or register
    /// events missing on an open one.
    pub(super) fn maintain(&self) -> Result<(), HypervisorError> {
        self.connection()?;
        self.ensure_events();
        Ok(())
    }

    /// Starts the thread that keeps the connection open while an event sink is set. It
    /// holds only a weak reference and ends within a round of the `Libvirt` being dropped.
    pub(super) fn start_keeper(self: &Arc<Self>) {
        self.keeper.call_once(|| {
            let link = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("libvirt-keeper".to_owned())
                .spawn(move || {
                    let mut up = true;
                    loop {
                        std::thread::sleep(KEEPER_INTERVAL);
                        let Some(link) = link.upgrade() else {
                            return;
                        };
                        match link.maintain() {
                            Ok(()) => up = true,
                            Err(e) if up => {
                                tracing::warn!(error = %e, "libvirt unreachable, retrying every second");
                                up = false;
                            }
                            Err(e) => tracing::debug!(error = %e, "libvirt still unreachable"),
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the libvirt keeper thread");
            }
        });
    }

    /// Forgets the shared connection if it is dead, so the next call reconnects.
    pub(super) fn forget_if_dead(&self, conn: &Connect) -> bool {
        if conn.is_alive().unwrap_or(false) {
            return false;
        }
        let stale = {
            let mut slot = self.slot();
            if slot
                .as_ref()
                .is_some_and(|s| !s.conn.is_alive().unwrap_or(false))
            {
                slot.take()
            } else {
                None
            }
        };
        drop(stale);
        true
    }

    /// Forgets `conn` if it is still the shared connection.
    pub(super) fn forget(&self, conn: &Connect) {
        let stale = {
            let mut slot = self.slot();
            if slot
                .as_ref()
                .is_some_and(|s| same_connection(&s.conn, conn))
            {
                slot.take()
            } else {
                None
            }
        };
        drop(stale);
    }
}
