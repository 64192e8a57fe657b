//! Command-line definitions of both binaries, kept in the library so that the man pages and
//! shell completions (`examples/gen_assets.rs`, run by `make deb`) are generated from the very
//! structures the binaries parse.

/// `vmwarden`, the client of the control socket.
pub mod client {
    use clap::{Parser, Subcommand};
    use std::path::PathBuf;

    const CLIENT_AFTER_HELP: &str = "\
Exit status: 0 ok, 1 other failure, 2 usage, 3 not found, 4 denied, 5 conflict or locked, \
6 hypervisor unavailable, 7 invalid input.

Your identity is your Unix user (the daemon reads the peer credentials of the socket). \
Members of the socket's group (vmwarden by default) and root may connect. Project key \
shares are read from a file or stdin, never from the command line.";

    /// Client of the vmwarden control socket.
    #[derive(Parser, Debug)]
    #[command(name = "vmwarden", version, after_long_help = CLIENT_AFTER_HELP)]
    pub struct Cli {
        /// Control socket.
        #[arg(
            long,
            global = true,
            env = "VMWARDEN_SOCKET",
            default_value = "/run/vmwarden/vmwarden.sock"
        )]
        pub socket: PathBuf,
        /// Print raw JSON.
        #[arg(long, global = true)]
        pub json: bool,
        /// Act for this user (orchestrators only).
        #[arg(long = "as", global = true, value_name = "USER")]
        pub act_as: Option<String>,
        /// What to do.
        #[command(subcommand)]
        pub cmd: Cmd,
    }

    /// Top-level commands.
    #[derive(Subcommand, Debug)]
    pub enum Cmd {
        /// Daemon and hypervisor status.
        Health,
        /// Who you are to vmwarden.
        Me,
        /// User registry (admins).
        #[command(subcommand)]
        User(UserCmd),
        /// Projects, keys and members.
        #[command(subcommand)]
        Project(ProjectCmd),
        /// Encrypted drives.
        #[command(subcommand)]
        Drive(DriveCmd),
        /// Virtual machines.
        #[command(subcommand)]
        Vm(VmCmd),
        /// Host inventory (admins).
        #[command(subcommand)]
        Host(HostCmd),
        /// Audit log.
        Audit {
            /// Only this VM.
            #[arg(long)]
            vm: Option<String>,
            /// Only this actor.
            #[arg(long)]
            user: Option<String>,
            /// From this time (ms since the epoch).
            #[arg(long)]
            since: Option<i64>,
            /// Until this time (ms since the epoch).
            #[arg(long)]
            until: Option<i64>,
        },
        /// Follow the event stream.
        Events,
    }

    /// `vmwarden user ...`.
    #[derive(Subcommand, Debug)]
    pub enum UserCmd {
        /// List users.
        List,
        /// Register or update a user.
        Put {
            /// User name.
            name: String,
            /// Team.
            #[arg(long)]
            team: String,
            /// Make the user an admin.
            #[arg(long)]
            admin: bool,
        },
        /// Remove a user.
        Delete {
            /// User name.
            name: String,
        },
    }

    /// `vmwarden project ...`.
    #[derive(Subcommand, Debug)]
    pub enum ProjectCmd {
        /// Create a project. Its two key shares exist only in this answer: they go to the
        /// two files (created 0600; neither may exist yet), or to the terminal with
        /// --show-shares.
        Create {
            /// Project name.
            name: String,
            /// Member (repeatable).
            #[arg(long = "member")]
            members: Vec<String>,
            /// Where the shares go.
            #[command(flatten)]
            shares: ShareOut,
        },
        /// Projects with lock status.
        #[command(alias = "list")]
        Status,
        /// Submit your share, read from FILE or stdin (never from the command line).
        Unlock {
            /// Project.
            project: String,
            /// File holding the share; `-` or absent reads stdin.
            #[arg(long)]
            share_file: Option<PathBuf>,
        },
        /// Forget the project key now.
        Lock {
            /// Project.
            project: String,
        },
        /// Re-key an unlocked project; the new share pair goes where `create` puts it.
        Resplit {
            /// Project.
            project: String,
            /// Where the shares go.
            #[command(flatten)]
            shares: ShareOut,
        },
        /// Add a member.
        AddMember {
            /// Project.
            project: String,
            /// User.
            user: String,
        },
        /// Remove a member: their user roles go at once; an owner is refused unless
        /// --force, which hands what they alone own to --transfer-to.
        RemoveMember {
            /// Project.
            project: String,
            /// User.
            user: String,
            /// Hand over what the member owns instead of refusing.
            #[arg(long)]
            force: bool,
            /// Who takes what the member alone owns (a member of the VMs' team).
            #[arg(long)]
            transfer_to: Option<String>,
        },
        /// Delete a project that holds no VMs and no drives.
        Delete {
            /// Project.
            project: String,
        },
    }

    /// Where new key shares go.
    #[derive(clap::Args, Debug)]
    pub struct ShareOut {
        /// Write the admin share to this new file (mode 0600).
        #[arg(long, value_name = "FILE")]
        pub admin_share_file: Option<PathBuf>,
        /// Write the member share to this new file (mode 0600).
        #[arg(long, value_name = "FILE")]
        pub member_share_file: Option<PathBuf>,
        /// Print the shares (to a terminal nobody else can read).
        #[arg(long)]
        pub show_shares: bool,
    }

    /// `vmwarden drive ...`.
    #[derive(Subcommand, Debug)]
    pub enum DriveCmd {
        /// Create a LUKS-encrypted qcow2 drive.
        Create {
            /// Drive name.
            name: String,
            /// Project.
            #[arg(long)]
            project: String,
            /// Size in MiB.
            #[arg(long, default_value_t = 64)]
            size_mib: u64,
        },
        /// Drives you own.
        List,
        /// One drive.
        Show {
            /// Drive id.
            id: String,
        },
        /// Delete a detached drive.
        Delete {
            /// Drive id.
            id: String,
        },
    }

    /// `vmwarden vm ...`.
    #[derive(Subcommand, Debug)]
    pub enum VmCmd {
        /// Create a VM configuration.
        Create {
            /// VM name.
            name: String,
            /// Project.
            #[arg(long)]
            project: String,
            /// vCPUs.
            #[arg(long, default_value_t = 1)]
            vcpus: u32,
            /// Memory in MiB.
            #[arg(long, default_value_t = 64)]
            memory_mib: u64,
            /// Drive id to attach (repeatable).
            #[arg(long = "drive")]
            drives: Vec<String>,
        },
        /// VMs you hold a role on.
        List,
        /// One VM.
        Show {
            /// VM id.
            id: String,
        },
        /// Change size or idle policy.
        Update {
            /// VM id.
            id: String,
            /// vCPUs.
            #[arg(long)]
            vcpus: Option<u32>,
            /// Memory in MiB.
            #[arg(long)]
            memory_mib: Option<u64>,
            /// Idle period before shutdown, e.g. 2h.
            #[arg(long)]
            idle_after: Option<String>,
        },
        /// Delete a stopped VM.
        Delete {
            /// VM id.
            id: String,
        },
        /// Start.
        Start {
            /// VM id.
            id: String,
        },
        /// Stop (ACPI, then destroy after the timeout).
        Stop {
            /// VM id.
            id: String,
            /// Destroy at once.
            #[arg(long)]
            force: bool,
            /// Return once the stop has begun (state `stopping`).
            #[arg(long)]
            no_wait: bool,
        },
        /// Restart the idle clock.
        Keepalive {
            /// VM id.
            id: String,
        },
        /// Attach a drive you own.
        Attach {
            /// VM id.
            id: String,
            /// Drive id.
            drive: String,
        },
        /// Detach a drive (you keep it).
        Detach {
            /// VM id.
            id: String,
            /// Drive id.
            drive: String,
        },
        /// Share with a user or co-owner.
        Share {
            /// VM id.
            id: String,
            /// User.
            user: String,
            /// `user` or `owner`.
            #[arg(long, default_value = "user")]
            role: String,
            /// Acknowledge that co-ownership hands over the drives.
            #[arg(long)]
            confirm_drive_access: bool,
        },
        /// Remove a user or co-owner.
        Unshare {
            /// VM id.
            id: String,
            /// User.
            user: String,
        },
        /// Owners and users.
        Members {
            /// VM id.
            id: String,
        },
    }

    /// `vmwarden host ...`.
    #[derive(Subcommand, Debug)]
    pub enum HostCmd {
        /// Every VM on the host, without drive details.
        Vms,
        /// Stop any VM (resource management).
        Stop {
            /// VM id.
            id: String,
            /// Destroy at once.
            #[arg(long)]
            force: bool,
        },
    }
}

/// `vmwardend`, the daemon.
pub mod daemon_args {
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
}
