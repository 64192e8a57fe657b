//! `vmwardend`'s command line.
use clap::Parser;
use std::path::PathBuf;

const DAEMON_AFTER_HELP: &str = "\
Files: /etc/vmwarden/config.toml (configuration), /run/vmwarden/vmwarden.sock (control \
socket), /var/lib/vmwarden (state.db, drives/, logs/).

Under systemd (vmwarden.service, vmwarden.socket) the daemon takes the control socket from \
LISTEN_FDS, reports READY=1 and watchdog pings on NOTIFY_SOCKET once the socket is bound and \
the store is open, and writes native journal entries when its stderr is the journal \
(JOURNAL_STREAM). Started by hand it binds the configured socket itself and logs plain text \
to stderr. RUST_LOG sets the log filter (default: info). VMWARDEN_LOG=journal|stderr \
overrides the log destination.";

/// vmwarden daemon: enforces VM sharing rules over libvirt.
#[derive(Parser, Debug)]
#[command(name = "vmwardend", version, about, after_long_help = DAEMON_AFTER_HELP)]
pub struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/vmwarden/config.toml")]
    pub config: PathBuf,
    /// Only validate the configuration file and exit.
    #[arg(long, value_name = "PATH")]
    pub check_config: Option<PathBuf>,
}
