//! `vmwarden`'s command line. Names are checked here, before anything is sent: a VM, drive,
//! project or user name that the daemon would refuse is a usage error (exit 2) naming the
//! rule, and `--role` takes only its two values.

use crate::model::{DriveName, ObjectRef, ProjectName, TeamName, UserName, VmName};
use clap::{Parser, Subcommand, ValueEnum};
use clap_complete::engine::ArgValueCompleter;
use std::path::PathBuf;

const CLIENT_AFTER_HELP: &str = "\
VMs and drives are named by their name, a unique prefix of their id, or their id; --project \
narrows a name to one project.

Exit status: 0 ok, 1 other failure, 2 usage (or a refused confirmation), 3 not found, \
4 denied, 5 conflict or locked, 6 hypervisor unavailable (and `health` when degraded), \
7 invalid input.

Your identity is your Unix user (the daemon reads the peer credentials of the socket). \
Members of the socket's group (vmwarden by default) and root may connect. Project key \
shares are read from a file or stdin, never from the command line.

Shell completion (names of your VMs and drives included): \
`source <(vmwarden completion bash)`, or zsh, or fish.";

fn user(s: &str) -> Result<UserName, String> {
    UserName::parse(s).map_err(|e| e.to_string())
}
fn project(s: &str) -> Result<ProjectName, String> {
    ProjectName::parse(s).map_err(|e| e.to_string())
}
fn team(s: &str) -> Result<TeamName, String> {
    TeamName::parse(s).map_err(|e| e.to_string())
}
fn label(s: &str) -> Result<VmName, String> {
    VmName::parse(s).map_err(|e| e.to_string())
}
fn drive_label(s: &str) -> Result<DriveName, String> {
    DriveName::parse(s).map_err(|e| e.to_string())
}
fn reference(s: &str) -> Result<ObjectRef, String> {
    ObjectRef::parse(s).map_err(|e| e.to_string())
}

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables and sentences for people.
    Table,
    /// The API's JSON (one object per line for `events`).
    Json,
    /// The same data as YAML.
    Yaml,
}

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
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Same as --format json.
    #[arg(long, global = true)]
    pub json: bool,
    /// Act for this user (orchestrators only).
    #[arg(long = "as", global = true, value_name = "USER", value_parser = user)]
    pub act_as: Option<UserName>,
    /// Answer yes to confirmation prompts (needed when stdin is not a terminal).
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
    /// Lists print ids only; other commands print nothing on success.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

impl Cli {
    /// The output format, `--json` included.
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

/// A VM named on the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct VmArg {
    /// VM name, id prefix or id.
    #[arg(value_name = "VM", value_parser = reference, add = ArgValueCompleter::new(crate::cli::complete::vms))]
    pub vm: ObjectRef,
    /// The project the name is in (when names repeat across projects).
    #[arg(long, value_parser = project)]
    pub project: Option<ProjectName>,
}

/// A drive named on the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct DriveArg {
    /// Drive name, id prefix or id.
    #[arg(value_name = "DRIVE", value_parser = reference, add = ArgValueCompleter::new(crate::cli::complete::drives))]
    pub drive: ObjectRef,
    /// The project the name is in (when names repeat across projects).
    #[arg(long, value_parser = project)]
    pub project: Option<ProjectName>,
}

/// A role on a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// May start, stop and use the VM; never its drives.
    User,
    /// Full control, drives included.
    Owner,
}

/// VM states, for `vm list --state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Not running.
    Stopped,
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Being stopped.
    Stopping,
    /// Paused by libvirt.
    Paused,
    /// Crashed.
    Crashed,
}

/// Shells for `completion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShellArg {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// Pages for `man`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ManPage {
    /// vmwarden(1), this command.
    Vmwarden,
    /// vmwardend(8), the daemon.
    Vmwardend,
    /// vmwarden.toml(5), the daemon's configuration.
    #[value(name = "vmwarden.toml")]
    Config,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Daemon and hypervisor status (exit 6 when degraded).
    Health,
    /// Host summary: health, libvirt, VMs by state, projects and their keys.
    Status,
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
    /// The fleet's hosts and VMs (admins; with SQLite, this host alone).
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Audit log, newest first.
    Audit {
        /// Only this VM.
        #[arg(long, value_parser = reference, add = ArgValueCompleter::new(crate::cli::complete::vms))]
        vm: Option<ObjectRef>,
        /// Only this actor.
        #[arg(long, value_parser = user)]
        user: Option<UserName>,
        /// From this time: a duration back from now (`1h`, `2d`) or a local time
        /// (`2026-11-29 14:00`, `14:00`).
        #[arg(long)]
        since: Option<String>,
        /// Until this time, as --since.
        #[arg(long)]
        until: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
        limit: u32,
    },
    /// Follow events as they happen, one line each.
    Events {
        /// Only this VM.
        #[arg(long, value_parser = reference, add = ArgValueCompleter::new(crate::cli::complete::vms))]
        vm: Option<ObjectRef>,
        /// Only this project.
        #[arg(long, value_parser = project)]
        project: Option<ProjectName>,
        /// Only these kinds (`vm.state`, `project.unlocked`, ...; repeatable).
        #[arg(long, value_parser = crate::cli::render::event_kinds())]
        kind: Vec<String>,
    },
    /// Print the shell completion script (dynamic: it asks vmwarden for names).
    Completion {
        /// The shell.
        shell: ShellArg,
    },
    /// Print a manual page (roff) to stdout: `vmwarden man | man -l -`.
    Man {
        /// Which page.
        #[arg(default_value = "vmwarden")]
        page: ManPage,
    },
}

/// `vmwarden user ...`.
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// List users.
    List,
    /// Register or update a user.
    Put {
        /// User name.
        #[arg(value_parser = user)]
        name: UserName,
        /// Team.
        #[arg(long, value_parser = team)]
        team: TeamName,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
    },
    /// Remove a user (asks first).
    Delete {
        /// User name.
        #[arg(value_parser = user)]
        name: UserName,
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
        #[arg(value_parser = project)]
        name: ProjectName,
        /// Member (repeatable).
        #[arg(long = "member", value_parser = user)]
        members: Vec<UserName>,
        /// Where the shares go.
        #[command(flatten)]
        shares: ShareOut,
    },
    /// Projects with their members and key state.
    #[command(alias = "status")]
    List,
    /// Submit your share, read from FILE or stdin (never from the command line).
    Unlock {
        /// Project.
        #[arg(value_parser = project)]
        project: ProjectName,
        /// File holding the share; `-` or absent reads stdin.
        #[arg(long)]
        share_file: Option<PathBuf>,
    },
    /// Forget the project key now.
    Lock {
        /// Project.
        #[arg(value_parser = project)]
        project: ProjectName,
    },
    /// Re-key an unlocked project (asks first); the new share pair goes where `create` puts
    /// it.
    Resplit {
        /// Project.
        #[arg(value_parser = project)]
        project: ProjectName,
        /// Where the shares go.
        #[command(flatten)]
        shares: ShareOut,
    },
    /// Add a member.
    AddMember {
        /// Project.
        #[arg(value_parser = project)]
        project: ProjectName,
        /// User.
        #[arg(value_parser = user)]
        user: UserName,
    },
    /// Remove a member: their user roles go at once; an owner is refused unless
    /// --force (asks first), which hands what they alone own to --transfer-to.
    RemoveMember {
        /// Project.
        #[arg(value_parser = project)]
        project: ProjectName,
        /// User.
        #[arg(value_parser = user)]
        user: UserName,
        /// Hand over what the member owns instead of refusing.
        #[arg(long)]
        force: bool,
        /// Who takes what the member alone owns (a member of the VMs' team).
        #[arg(long, value_parser = user)]
        transfer_to: Option<UserName>,
    },
    /// Delete a project that holds no VMs and no drives (asks first).
    Delete {
        /// Project.
        #[arg(value_parser = project)]
        project: ProjectName,
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
        #[arg(value_parser = drive_label)]
        name: DriveName,
        /// Project.
        #[arg(long, value_parser = project)]
        project: ProjectName,
        /// Size in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
    },
    /// Drives you own.
    List {
        /// Only this project.
        #[arg(long, value_parser = project)]
        project: Option<ProjectName>,
    },
    /// One drive.
    Show(DriveArg),
    /// Delete a detached drive and its image (asks first).
    Delete(DriveArg),
}

/// `vmwarden vm ...`.
#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Create a VM configuration.
    Create {
        /// VM name.
        #[arg(value_parser = label)]
        name: VmName,
        /// Project.
        #[arg(long, value_parser = project)]
        project: ProjectName,
        /// vCPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Memory in MiB.
        #[arg(long, default_value_t = 64)]
        memory_mib: u64,
        /// Drive to attach: name, id prefix or id (repeatable).
        #[arg(long = "drive", value_parser = reference, add = ArgValueCompleter::new(crate::cli::complete::drives))]
        drives: Vec<ObjectRef>,
        /// Idle period before shutdown (`30m`, `2h`).
        #[arg(long)]
        idle_after: Option<String>,
    },
    /// VMs you hold a role on.
    List {
        /// Only this project.
        #[arg(long, value_parser = project)]
        project: Option<ProjectName>,
        /// Only VMs in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// One VM.
    Show(VmArg),
    /// Change size or idle policy.
    Update {
        /// The VM.
        #[command(flatten)]
        vm: VmArg,
        /// vCPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Idle period before shutdown (`30m`, `2h`).
        #[arg(long)]
        idle_after: Option<String>,
        /// Turn idle shutdown on or off (if the host lets owners).
        #[arg(long)]
        idle: Option<bool>,
    },
    /// Delete a stopped VM (asks first).
    Delete(VmArg),
    /// Start.
    Start(VmArg),
    /// Stop: ACPI, then destroyed after the host's timeout. Follows the stop to its end
    /// and says how it ended.
    Stop {
        /// The VM.
        #[command(flatten)]
        vm: VmArg,
        /// Destroy at once.
        #[arg(long)]
        force: bool,
        /// Return once the stop has begun (state `stopping`).
        #[arg(long)]
        no_wait: bool,
    },
    /// Restart the idle clock.
    Keepalive(VmArg),
    /// Attach a drive you own.
    Attach {
        /// The VM.
        #[command(flatten)]
        vm: VmArg,
        /// Drive name, id prefix or id.
        #[arg(value_name = "DRIVE", value_parser = reference, add = ArgValueCompleter::new(crate::cli::complete::drives))]
        drive: ObjectRef,
    },
    /// Detach a drive (you keep it).
    Detach {
        /// The VM.
        #[command(flatten)]
        vm: VmArg,
        /// Drive name, id prefix or id.
        #[arg(value_name = "DRIVE", value_parser = reference, add = ArgValueCompleter::new(crate::cli::complete::drives))]
        drive: ObjectRef,
    },
    /// Share with a user or co-owner.
    Share {
        /// The VM.
        #[command(flatten)]
        vm: VmArg,
        /// User.
        #[arg(value_parser = user)]
        user: UserName,
        /// The role.
        #[arg(long, value_enum, default_value_t = RoleArg::User)]
        role: RoleArg,
        /// Acknowledge that co-ownership hands over the drives.
        #[arg(long)]
        confirm_drive_access: bool,
    },
    /// Remove a user or co-owner.
    Unshare {
        /// The VM.
        #[command(flatten)]
        vm: VmArg,
        /// User.
        #[arg(value_parser = user)]
        user: UserName,
    },
    /// Owners and users.
    Members(VmArg),
    /// The serial console log (owners).
    Logs {
        /// The VM.
        #[command(flatten)]
        vm: VmArg,
        /// Keep printing what the console writes.
        #[arg(short, long)]
        follow: bool,
    },
}

/// `vmwarden fleet ...`.
#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// Every host: state (up, down), version, last heartbeat, VMs held.
    Hosts,
    /// Every VM of the fleet with the host holding it, without drive details.
    Vms,
    /// Enroll a host: from now on it receives project keys (sealed to its host key).
    Enroll {
        /// The host (`[fleet] host`).
        host: String,
        /// Its fingerprint as read on the host itself (its agent logs it at start).
        fingerprint: String,
    },
    /// Un-enroll a host: its envelopes are deleted at once.
    Unenroll {
        /// The host.
        host: String,
    },
    /// Fence a host that is down, stating that it is powered off: its VMs may start
    /// elsewhere.
    Fence {
        /// The host.
        host: String,
    },
}

/// `vmwarden host ...`.
#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Every VM on the host, without drive details.
    Vms,
    /// Stop any VM (resource management).
    Stop {
        /// VM name, id prefix or id.
        #[arg(value_name = "VM", value_parser = reference)]
        vm: ObjectRef,
        /// Destroy at once.
        #[arg(long)]
        force: bool,
        /// Return once the stop has begun.
        #[arg(long)]
        no_wait: bool,
    },
}
