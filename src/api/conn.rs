//! One accepted connection: its IO with a write timeout and delivery tracking, and the
//! connection slots that bound what one peer can hold.
//!
//! - Slots: unprivileged peers share `limits.max_connections` and hold at most
//!   `limits.max_connections_per_peer` each; an unprivileged peer over its limit gets a 503
//!   and the connection closes. Root and the peers named in `[access]` have a pool of their
//!   own, so no local user can lock them out; their extra connections wait for a slot. An event stream gives its request slot back and holds a
//!   stream slot instead (`limits.max_streams`, `limits.max_streams_per_user`).
//! - Write timeout: a peer that stops reading its answers (pipelining requests it never
//!   reads) loses the connection after `limits.write_timeout` without progress.
//! - Delivery: an answer that carries new shares arms a [`Delivery`] when its last byte is
//!   handed to hyper; once the connection has flushed those bytes, the ticket fires when the
//!   peer has read them all (the socket's unread count reaches zero with no reset). A peer
//!   that hangs up before reading, or a connection that fails, drops it unfired.

use crate::config::LimitsConfig;
use crate::model::UserName;
use crate::service::Delivery;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Deliveries armed on one connection, confirmed once the peer has read what the next
/// successful flush wrote.
#[derive(Debug, Default)]
pub struct Deliveries(Mutex<Vec<Delivery>>);

impl Deliveries {
    /// Waits for the next flush (and the peer's read) to fire `d`.
    pub fn arm(&self, d: Delivery) {
        self.0.lock().unwrap().push(d);
    }

    /// The flushed bytes are in the peer's receive queue; fire the armed tickets once the
    /// peer has read them.
    fn flushed(&self, fd: std::os::fd::BorrowedFd<'_>, within: Duration) {
        let armed = std::mem::take(&mut *self.0.lock().unwrap());
        if armed.is_empty() {
            return;
        }
        // A duplicate keeps the socket itself (not a number the kernel may hand to another
        // file once the connection closes) until the watch ends.
        let Ok(fd) = fd.try_clone_to_owned() else {
            return;
        };
        tokio::spawn(async move {
            if peer_read_all(&fd, within).await {
                for d in armed {
                    d.delivered();
                }
            }
        });
    }
}

/// Bytes written to a Unix stream socket that its peer has not read yet. On Linux an
/// AF_UNIX socket's send queue is charged until the peer consumes the data (`SIOCOUTQ`), so
/// zero means every byte was read by the peer process.
fn unread(fd: &std::os::fd::OwnedFd) -> io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is an open socket owned for the duration of the call; TIOCOUTQ (SIOCOUTQ)
    // writes one c_int through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// Whether the peer read everything written to `fd`, waiting up to `within`. A peer that
/// closes with unread data leaves ECONNRESET on our socket before its queue is dropped (and
/// the unread count falls to zero), so a zero count with no error is a read, not a hang-up.
async fn peer_read_all(fd: &std::os::fd::OwnedFd, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match unread(fd) {
            Ok(0) => {
                return matches!(
                    nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::SocketError),
                    Ok(0)
                )
            }
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await
            }
            _ => return false,
        }
    }
}

/// The connection's IO: a Unix stream with a write timeout that fires armed deliveries when
/// a flush succeeds.
pub struct ConnIo {
    inner: TokioIo<UnixStream>,
    write_timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    deliveries: Arc<Deliveries>,
}

impl std::fmt::Debug for ConnIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnIo")
    }
}

impl ConnIo {
    /// Wraps an accepted stream.
    pub fn new(stream: UnixStream, write_timeout: Duration, deliveries: Arc<Deliveries>) -> Self {
        Self {
            inner: TokioIo::new(stream),
            write_timeout,
            stalled: None,
            deliveries,
        }
    }

    /// Turns a pending write into a timeout error once the peer made no progress for
    /// `write_timeout`; any progress resets the clock.
    fn guard<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer did not read its answer in time",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future;

impl hyper::rt::Read for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        let r = ready!(this.guard(cx, r));
        if r.is_ok() {
            // hyper flushes its IO only once its buffer is written out, so every byte of an
            // armed answer has reached the socket.
            use std::os::fd::AsFd;
            this.deliveries
                .flushed(this.inner.inner().as_fd(), this.write_timeout);
        }
        Poll::Ready(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, r)
    }
}

/// Whose pool a connection draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerClass {
    /// Root, `access.admins`, `access.orchestrators`.
    Privileged,
    /// Everyone else.
    Unprivileged,
}

/// The connection and stream slots of the socket.
#[derive(Debug)]
pub struct Slots {
    general: Arc<Semaphore>,
    privileged: Arc<Semaphore>,
    per_peer_max: usize,
    per_peer: PerPeer,
    streams: Arc<Semaphore>,
    per_user_max: usize,
    per_user: Arc<Mutex<HashMap<UserName, usize>>>,
}

/// Open connections per unprivileged peer uid.
type PerPeer = Arc<Mutex<HashMap<u32, usize>>>;

/// A held connection slot; dropping it frees it.
#[derive(Debug)]
pub struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    peer: Option<(u32, PerPeer)>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some((uid, map)) = self.peer.take() {
            let mut m = map.lock().unwrap();
            if let Some(n) = m.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&uid);
                }
            }
        }
    }
}

/// A held event-stream slot.
#[derive(Debug)]
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    user: UserName,
    per_user: Arc<Mutex<HashMap<UserName, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.per_user.lock().unwrap();
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

impl Slots {
    /// Slots sized by `[limits]`.
    pub fn new(l: &LimitsConfig) -> Self {
        Self {
            general: Arc::new(Semaphore::new(l.max_connections)),
            privileged: Arc::new(Semaphore::new(l.max_connections)),
            per_peer_max: l.max_connections_per_peer,
            per_peer: Arc::default(),
            streams: Arc::new(Semaphore::new(l.max_streams)),
            per_user_max: l.max_streams_per_user,
            per_user: Arc::default(),
        }
    }

    /// A privileged peer's slot: it waits for one (it is trusted not to flood its own pool).
    pub async fn privileged(&self) -> ConnSlot {
        ConnSlot {
            _permit: self
                .privileged
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed"),
            peer: None,
        }
    }

    /// A connection slot for a peer, or `None` when its pool or its own share is used up.
    pub fn connection(&self, uid: u32, class: PeerClass) -> Option<ConnSlot> {
        match class {
            PeerClass::Privileged => Some(ConnSlot {
                _permit: self.privileged.clone().try_acquire_owned().ok()?,
                peer: None,
            }),
            PeerClass::Unprivileged => {
                let mut m = self.per_peer.lock().unwrap();
                if m.get(&uid).copied().unwrap_or(0) >= self.per_peer_max {
                    return None;
                }
                let permit = self.general.clone().try_acquire_owned().ok()?;
                *m.entry(uid).or_default() += 1;
                Some(ConnSlot {
                    _permit: permit,
                    peer: Some((uid, self.per_peer.clone())),
                })
            }
        }
    }

    /// An event-stream slot for `user`, or `None` when streams are used up.
    pub fn stream(&self, user: &UserName) -> Option<StreamSlot> {
        let mut m = self.per_user.lock().unwrap();
        if m.get(user).copied().unwrap_or(0) >= self.per_user_max {
            return None;
        }
        let permit = self.streams.clone().try_acquire_owned().ok()?;
        *m.entry(user.clone()).or_default() += 1;
        Some(StreamSlot {
            _permit: permit,
            user: user.clone(),
            per_user: self.per_user.clone(),
        })
    }
}

/// What the request handler knows about its connection.
#[derive(Debug)]
pub struct ConnCtx {
    /// The peer's uid (SO_PEERCRED).
    pub uid: Option<u32>,
    /// Deliveries armed on this connection.
    pub deliveries: Arc<Deliveries>,
    /// The connection's request slot; an event stream gives it back.
    pub slot: Mutex<Option<ConnSlot>>,
}

/// The answer to a peer over its limits, written without reading its request.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 175\r\n\r\n\
{\"type\":\"https://vmwarden.invalid/problems/too_many_connections\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"Too many open connections\",\"code\":\"too_many_connections\"}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "too_many_connections");
    }

    #[test]
    fn per_peer_and_pool_limits() {
        let l = LimitsConfig {
            max_connections: 3,
            max_connections_per_peer: 2,
            max_streams: 2,
            max_streams_per_user: 1,
            ..LimitsConfig::default()
        };
        let s = Slots::new(&l);
        let a1 = s.connection(1000, PeerClass::Unprivileged).unwrap();
        let _a2 = s.connection(1000, PeerClass::Unprivileged).unwrap();
        assert!(
            s.connection(1000, PeerClass::Unprivileged).is_none(),
            "per peer"
        );
        let _b1 = s.connection(1001, PeerClass::Unprivileged).unwrap();
        assert!(
            s.connection(1002, PeerClass::Unprivileged).is_none(),
            "pool"
        );
        let roots: Vec<_> = (0..3)
            .map(|_| s.connection(0, PeerClass::Privileged).unwrap())
            .collect();
        assert_eq!(roots.len(), 3, "privileged peers have their own pool");
        drop(a1);
        assert!(s.connection(1002, PeerClass::Unprivileged).is_some());
        let alice = UserName::parse("alice").unwrap();
        let st = s.stream(&alice).unwrap();
        assert!(s.stream(&alice).is_none(), "per user");
        let bob = UserName::parse("bob").unwrap();
        let _b = s.stream(&bob).unwrap();
        drop(st);
        assert!(s.stream(&alice).is_some());
    }
}
