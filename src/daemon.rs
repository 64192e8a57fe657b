//! Process-level set-up for `vmwardend`: hardening, logging, systemd notification and socket
//! activation. Kept out of `main` so tests can drive the same code.
//!
//! Everything that reads the systemd environment (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`)
//! runs once at start-up, before any thread exists, and removes the variables so that child
//! processes (`qemu-img`) neither inherit the listening socket nor the notification socket.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::time::Duration;

/// The journal MESSAGE_ID of audit entries (defined with the audit rows, in the store).
pub use crate::store::AUDIT_MESSAGE_ID;

/// Where the journal's native protocol socket lives.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Makes the process undumpable and disables core files, so keys in memory cannot be read
/// through ptrace by same-uid processes or land in a core dump.
pub fn harden() -> std::io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(std::io::Error::from)?;
    Ok(())
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Native journal entries (structured fields) on the journal socket.
    Journal,
    /// Plain text on stderr.
    Stderr,
}

/// What [`choose_log_target`] looks at; gathered by [`LogEnv::current`].
#[derive(Debug, Clone, Default)]
pub struct LogEnv {
    /// `VMWARDEN_LOG`: `journal`, `stderr` or unset/`auto`.
    pub override_target: Option<String>,
    /// `JOURNAL_STREAM`: `DEVICE:INODE` of the stream systemd connected to stdout/stderr.
    pub journal_stream: Option<String>,
    /// Device and inode of fd 2, if it is open.
    pub stderr_id: Option<(u64, u64)>,
    /// fd 2 is closed or is `/dev/null`: text written there is lost.
    pub stderr_discarded: bool,
    /// The journal socket exists.
    pub journal_socket: bool,
}

impl LogEnv {
    /// Reads the environment, fd 2 and the file system.
    pub fn current() -> LogEnv {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: fd 2 is only borrowed for an fstat; it is not closed or taken over.
        let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
        let meta = stderr
            .try_clone_to_owned()
            .ok()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata().ok());
        let null = std::fs::metadata("/dev/null").ok();
        let stderr_discarded = match (&meta, &null) {
            (None, _) => true,
            (Some(m), Some(n)) => m.rdev() == n.rdev() && m.dev() == n.dev() && m.ino() == n.ino(),
            (Some(_), None) => false,
        };
        LogEnv {
            override_target: std::env::var("VMWARDEN_LOG").ok(),
            journal_stream: std::env::var("JOURNAL_STREAM").ok(),
            stderr_id: meta.map(|m| (m.dev(), m.ino())),
            stderr_discarded,
            journal_socket: Path::new(JOURNAL_SOCKET).exists(),
        }
    }
}

/// Chooses the log destination:
/// 1. `VMWARDEN_LOG=journal` or `stderr` decides (journal only when its socket exists);
/// 2. otherwise the journal when stderr *is* the journal stream systemd set up
///    (`JOURNAL_STREAM` names the device and inode of fd 2; a variable inherited by a process
///    whose stderr went elsewhere, a terminal or a file, does not count);
/// 3. otherwise the journal when the journal socket exists and stderr is closed or
///    `/dev/null` (`StandardError=null`, a detached start), where text would be lost;
/// 4. otherwise plain text on stderr. In particular a daemon started by hand from a terminal
///    on a systemd host logs to that terminal even though the journal socket exists.
pub fn choose_log_target(env: &LogEnv) -> LogTarget {
    match env.override_target.as_deref() {
        Some("journal") if env.journal_socket => return LogTarget::Journal,
        Some("journal") | Some("stderr") => return LogTarget::Stderr,
        _ => {}
    }
    if !env.journal_socket {
        return LogTarget::Stderr;
    }
    let stream = env.journal_stream.as_deref().and_then(|s| {
        let (dev, ino) = s.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    if stream.is_some() && stream == env.stderr_id {
        return LogTarget::Journal;
    }
    if env.stderr_discarded {
        return LogTarget::Journal;
    }
    LogTarget::Stderr
}

/// Installs the global subscriber for [`choose_log_target`]'s choice and returns it. `RUST_LOG`
/// sets the filter (default `info`).
///
/// Journal entries carry every event field as a journal field of the same name, upper-cased
/// (no prefix): an audit event gives `MESSAGE_ID`, `VM`, `USER`, `ACTION`, `OUTCOME`, plus
/// `TARGET`, `CODE_FILE`, `CODE_LINE`, `PRIORITY` and `SYSLOG_IDENTIFIER=vmwardend`.
pub fn init_logging() -> LogTarget {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if choose_log_target(&LogEnv::current()) == LogTarget::Journal {
        if let Ok(layer) = tracing_journald::layer() {
            // tracing-journald prefixes user fields with "F_" by default; the journal's own
            // MESSAGE_ID and our VM/USER/ACTION fields must keep their plain names. A field
            // cannot impersonate a trusted journal field: leading underscores are stripped.
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier("vmwardend".into());
            let _ = tracing_subscriber::registry()
                .with(filter())
                .with(layer)
                .try_init();
            return LogTarget::Journal;
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .try_init();
    LogTarget::Stderr
}

/// Removes an environment variable. Only called from the start-up functions of this module,
/// which run before the process starts any thread.
fn clear_var(name: &str) {
    // SAFETY: called at start-up before any thread reads or writes the environment.
    unsafe { std::env::remove_var(name) };
}

/// Adopts a listening Unix socket passed by systemd (fd 3, `LISTEN_FDS=1`, `LISTEN_PID` equal
/// to our pid), the way `sd_listen_fds(3)` does, and clears `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES` in every case so that children do not inherit them.
///
/// `Ok(None)`: nothing was passed to this process (no variables, or `LISTEN_PID` names another
/// process): the daemon binds its own socket. `Err`: a socket was meant for us but is not one
/// listening Unix stream socket; the daemon refuses to start rather than bind over the path
/// systemd owns.
pub fn socket_from_systemd() -> Result<Option<StdUnixListener>, String> {
    // sd_notify::listen_fds checks LISTEN_PID, clears LISTEN_PID and LISTEN_FDS, and sets
    // close-on-exec so the control socket does not leak into qemu-img.
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(|e| format!("LISTEN_FDS: {e}"))?
        .collect();
    clear_var("LISTEN_FDNAMES");
    match fds.len() {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(format!(
                "LISTEN_FDS={n}: vmwardend takes exactly one socket (the control socket)"
            ))
        }
    }
    const FD: RawFd = 3;
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID matched); it is only queried
    // here, and taken over below once it proves to be what we expect.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(FD) };
    let stream = getsockopt(&borrowed, sockopt::SockType).map_err(|e| {
        format!("LISTEN_FDS=1 but fd 3 is not a socket ({e}); check vmwarden.socket")
    })? == SockType::Stream;
    let unix = getsockname::<UnixAddr>(FD).is_ok();
    let listening = getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false);
    if !(stream && unix && listening) {
        return Err(format!(
            "fd 3 from systemd is not a listening Unix stream socket (stream: {stream}, \
             unix: {unix}, listening: {listening}); check ListenStream= in vmwarden.socket"
        ));
    }
    // SAFETY: the fd is a listening Unix stream socket passed to this process; ownership is
    // taken exactly once (the variables that named it are gone).
    let l = unsafe { StdUnixListener::from_raw_fd(FD) };
    l.set_nonblocking(true)
        .map_err(|e| format!("Cannot make fd 3 non-blocking: {e}"))?;
    Ok(Some(l))
}

/// The path a listening socket is bound to, for log lines.
pub fn socket_path(l: &StdUnixListener) -> String {
    l.local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        .unwrap_or_else(|| format!("fd {}", l.as_raw_fd()))
}

/// systemd notifications (`sd_notify(3)`) through the `sd-notify` crate: READY, STOPPING,
/// STATUS and watchdog pings. Without `NOTIFY_SOCKET` every call is a no-op.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads the notification variables (left in place: the crate reads `NOTIFY_SOCKET` at
    /// each call, and our only child, qemu-img, ignores it).
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0;
        // watchdog_enabled checks WATCHDOG_PID against our pid.
        let watchdog = (enabled && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| Duration::from_micros(usec / 2));
        Notifier { enabled, watchdog }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, state: &[sd_notify::NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, state) {
                tracing::warn!(error = %e, "sd_notify failed");
            }
        }
    }

    /// `READY=1` with a status line. Send only once the control socket is listening.
    pub fn ready(&self, status: &str) {
        use sd_notify::NotifyState as N;
        self.send(&[N::Ready, N::Status(status), N::MainPid(std::process::id())]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        use sd_notify::NotifyState as N;
        self.send(&[N::Stopping, N::Status("stopping")]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send(&[sd_notify::NotifyState::Watchdog]);
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the manager asked for
    /// pings from this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harden_makes_the_process_undumpable_without_cores() {
        // Checked in a forked child so the test runner itself stays dumpable.
        // SAFETY: the child only makes syscalls and exits; it touches no lock another
        // thread could hold.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = super::harden().is_ok()
                    && !nix::sys::prctl::get_dumpable().unwrap_or(true)
                    && nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE)
                        .map(|l| l == (0, 0))
                        .unwrap_or(false);
                // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn audit_message_id_is_a_128_bit_hex_id() {
        assert_eq!(AUDIT_MESSAGE_ID.len(), 32);
        assert!(AUDIT_MESSAGE_ID
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    fn env(
        over: Option<&str>,
        stream: Option<&str>,
        stderr: Option<(u64, u64)>,
        null: bool,
        socket: bool,
    ) -> LogEnv {
        LogEnv {
            override_target: over.map(Into::into),
            journal_stream: stream.map(Into::into),
            stderr_id: stderr,
            stderr_discarded: null,
            journal_socket: socket,
        }
    }

    #[test]
    fn log_target_table() {
        use LogTarget::*;
        let cases = [
            // systemd service, stderr is the journal stream
            (env(None, Some("8:42"), Some((8, 42)), false, true), Journal),
            // inherited JOURNAL_STREAM, stderr redirected to a file or a terminal
            (env(None, Some("8:42"), Some((8, 7)), false, true), Stderr),
            // a shell on a systemd host: the socket exists, stderr is a terminal
            (env(None, None, Some((0, 5)), false, true), Stderr),
            // StandardError=null or started detached on a journald host
            (env(None, None, Some((0, 4)), true, true), Journal),
            (env(None, None, None, true, true), Journal),
            // no journald at all: whatever else holds, stderr
            (env(None, Some("8:42"), Some((8, 42)), false, false), Stderr),
            (env(None, None, None, true, false), Stderr),
            // garbage JOURNAL_STREAM
            (env(None, Some("x"), Some((8, 42)), false, true), Stderr),
            // overrides
            (
                env(Some("journal"), None, Some((0, 5)), false, true),
                Journal,
            ),
            (
                env(Some("journal"), None, Some((0, 5)), false, false),
                Stderr,
            ),
            (
                env(Some("stderr"), Some("8:42"), Some((8, 42)), false, true),
                Stderr,
            ),
            (
                env(Some("auto"), Some("8:42"), Some((8, 42)), false, true),
                Journal,
            ),
        ];
        for (i, (e, want)) in cases.iter().enumerate() {
            assert_eq!(choose_log_target(e), *want, "case {i}: {e:?}");
        }
    }
}
