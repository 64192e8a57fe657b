//! Process-level set-up for `vmwardend`: hardening, logging, systemd notification and socket
//! activation. Kept out of `main` so tests can drive the same code.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;

/// Makes the process undumpable and disables core files, so keys in memory cannot be read
/// through ptrace by same-uid processes or land in a core dump.
pub fn harden() -> std::io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(std::io::Error::from)?;
    Ok(())
}

/// Logs to journald with structured fields when stderr is connected to the journal
/// (JOURNAL_STREAM), otherwise plain text to stderr. `RUST_LOG` sets the filter.
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some()
        && std::path::Path::new("/run/systemd/journal/socket").exists();
    if journald {
        if let Ok(layer) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer.with_syslog_identifier("vmwardend".into()))
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .try_init();
}

/// Adopts a listening Unix socket passed by systemd (LISTEN_FDS/LISTEN_PID, fd 3), after
/// checking that it is meant for this process and is a Unix stream socket. The variables are
/// cleared so that children do not inherit them.
pub fn socket_from_systemd() -> Option<StdUnixListener> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds: u32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called at start-up before any thread reads the environment.
        unsafe { std::env::remove_var(v) };
    }
    if !pid_ok || fds != 1 {
        return None;
    }
    const FD: RawFd = 3;
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    // SAFETY: systemd passed fd 3 to us (LISTEN_PID matched); we only query it here.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(FD) };
    let stream = getsockopt(&borrowed, sockopt::SockType).ok()? == SockType::Stream;
    let unix = getsockname::<UnixAddr>(FD).is_ok();
    let listening = getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false);
    if !(stream && unix && listening) {
        tracing::warn!("LISTEN_FDS socket is not a listening Unix stream socket; ignoring it");
        return None;
    }
    // SAFETY: the fd is a listening Unix stream socket passed to this process; we take
    // ownership of it exactly once.
    let l = unsafe { StdUnixListener::from_raw_fd(FD) };
    l.set_nonblocking(true).ok()?;
    Some(l)
}

/// Sends a systemd notification when NOTIFY_SOCKET is set; a no-op otherwise.
pub fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, state) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

/// The watchdog interval systemd asked for, if any (half of WATCHDOG_USEC).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(std::time::Duration::from_micros(usec / 2))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
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
}
