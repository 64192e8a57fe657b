//! The hypervisor boundary: what the service needs from libvirt, as a trait.
//!
//! `libvirt` is the real implementation and the only module that names the `virt` crate.
//! The trait exists so that tests can inject faults real libvirt cannot produce on demand;
//! every behaviour is tested against real libvirtd + QEMU as well. Methods block: the service
//! calls them from `spawn_blocking`.

pub mod double;
pub mod image;
pub mod libvirt;
pub mod xml;

use crate::model::{DriveId, ProjectName, SecretBytes, VmId, VmName};
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the hypervisor layer.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// libvirtd cannot be reached; the API answers 503 and the next call reconnects.
    #[error("Hypervisor unavailable: {0}")]
    Unavailable(String),
    /// The domain does not exist (already stopped).
    #[error("Domain not found")]
    NoDomain,
    /// A domain with this id already runs.
    #[error("Domain already running")]
    AlreadyRunning,
    /// The guest did not release a hot-detached disk in time.
    #[error("The guest did not release the drive within {0:?}; stop the VM first, then detach")]
    DetachTimeout(Duration),
    /// libvirt refused the operation.
    #[error("Hypervisor: {0}")]
    Failed(String),
    /// Creating or removing an image failed.
    #[error("Image: {0}")]
    Image(String),
    /// The file system holding the images is full.
    #[error("No space left for the image: {0}")]
    NoSpace(String),
}

pub use crate::model::DomainType;

/// One disk of a domain.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// The drive, also used to derive the disk serial and the secret's description.
    pub drive: DriveId,
    /// Absolute path of the LUKS qcow2 image.
    pub path: PathBuf,
    /// The LUKS passphrase; lives in a libvirt secret only around the create/attach call.
    pub passphrase: SecretBytes,
}

/// Everything needed to create a transient domain.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    /// Domain name and UUID.
    pub id: VmId,
    /// Recorded in the vmwarden `<metadata>`.
    pub name: VmName,
    /// Recorded in the vmwarden `<metadata>`.
    pub project: ProjectName,
    /// The fleet host whose agent runs it, recorded in the vmwarden `<metadata>`.
    pub host: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disks in order; the first boots.
    pub disks: Vec<DiskSpec>,
    /// File that receives the first serial port's output.
    pub serial_log: PathBuf,
}

/// A running domain as libvirt reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// libvirt's domain name.
    pub name: String,
    /// The VM id when the domain carries vmwarden metadata and a UUID name.
    pub vm: Option<VmId>,
    /// The fleet host its vmwarden metadata names (none before fleets, or not ours).
    pub host: Option<String>,
    /// Whether the domain is running (as opposed to paused, crashed, ...).
    pub running: bool,
}

/// Activity counters of one domain, copied out of one bulk-stats sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStats {
    /// libvirt's domain name.
    pub name: String,
    /// The VM id when the name is one (vmwarden names domains by VM id).
    pub vm: Option<VmId>,
    /// `state.state` is running.
    pub running: bool,
    /// `cpu.time`: total CPU time in nanoseconds.
    pub cpu_time_ns: u64,
    /// Sum of `block.N.rd.bytes` and `block.N.wr.bytes`.
    pub block_bytes: u64,
    /// Sum of `net.N.rx.bytes` and `net.N.tx.bytes`.
    pub net_bytes: u64,
}

/// Why a domain stopped, from libvirt's lifecycle event detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered itself off.
    Shutdown,
    /// Destroyed (by vmwarden or by someone else).
    Destroyed,
    /// The guest crashed.
    Crashed,
    /// The QEMU process failed or died.
    Failed,
    /// Any other detail (migrated, saved, ...).
    Other,
}

impl StopReason {
    /// The reason as vmwarden records it.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Shutdown => "guest_shutdown",
            StopReason::Destroyed => "destroyed",
            StopReason::Crashed => "crashed",
            StopReason::Failed => "qemu_exited",
            StopReason::Other => "stopped",
        }
    }
}

/// A domain lifecycle change reported by libvirt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// A domain started.
    Started {
        /// libvirt's domain name.
        name: String,
    },
    /// A domain stopped.
    Stopped {
        /// libvirt's domain name.
        name: String,
        /// Why.
        reason: StopReason,
    },
    /// The connection was (re)established and events re-registered: anything may have
    /// happened meanwhile, so the receiver should reconcile.
    Reconnected,
}

/// What the service needs from a hypervisor. Blocking.
pub trait Hypervisor: Send + Sync + 'static {
    /// Host-level check: version string of the hypervisor, or `Unavailable`.
    fn ping(&self) -> Result<String, HypervisorError>;
    /// The domain type launches use (`kvm` or `qemu`), resolved from `auto`.
    fn domain_type(&self) -> Result<DomainType, HypervisorError>;
    /// Creates the transient domain. Secrets are defined ephemeral and private just before
    /// the create call and undefined right after it, whether it worked or not.
    fn launch(&self, spec: &DomainSpec) -> Result<(), HypervisorError>;
    /// Asks the guest to power off (ACPI). `NoDomain` when it is not running.
    fn shutdown(&self, id: VmId) -> Result<(), HypervisorError>;
    /// Ends the domain at once. `NoDomain` when it is not running.
    fn destroy(&self, id: VmId) -> Result<(), HypervisorError>;
    /// Whether a domain for this VM exists.
    fn is_running(&self, id: VmId) -> Result<bool, HypervisorError>;
    /// Every domain on the connection, ours or not.
    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError>;
    /// Hot-attaches a disk to a running domain; the secret lives only around the call.
    fn attach_disk(&self, id: VmId, disk: &DiskSpec) -> Result<(), HypervisorError>;
    /// Hot-detaches a disk, waiting up to `timeout` for the guest to release it.
    fn detach_disk(
        &self,
        id: VmId,
        drive: DriveId,
        timeout: Duration,
    ) -> Result<(), HypervisorError>;
    /// Names of secrets defined by vmwarden that still exist (should always be empty).
    fn our_secrets(&self) -> Result<Vec<String>, HypervisorError>;
    /// One bulk-stats sample of every domain: a single `virConnectGetAllDomainStats` call.
    fn stats(&self) -> Result<Vec<DomainStats>, HypervisorError> {
        Err(HypervisorError::Failed(
            "Bulk stats are not supported here".into(),
        ))
    }
    /// Where lifecycle events go. The implementation registers for them on every
    /// (re)connection and sends `Reconnected` after each registration.
    fn set_event_sink(&self, _sink: tokio::sync::mpsc::UnboundedSender<LifecycleEvent>) {}
    /// Creates a LUKS-encrypted qcow2 image (QEMU's tools; libvirt cannot set the
    /// iter-time).
    fn create_image(
        &self,
        path: &std::path::Path,
        size_mib: u64,
        passphrase: &SecretBytes,
    ) -> Result<(), HypervisorError> {
        image::create_luks_qcow2(path, size_mib, passphrase)
    }
    /// Removes an image file; one that is already gone counts as removed.
    fn remove_image(&self, path: &std::path::Path) -> Result<(), HypervisorError> {
        image::remove_image(path)
    }
}

/// The group QEMU runs with (libvirt's `qemu.conf`, `group`; Debian's default is
/// `libvirt-qemu`): the drives folder admits it and nobody else.
pub fn qemu_group() -> Option<u32> {
    let conf = std::fs::read_to_string("/etc/libvirt/qemu.conf").unwrap_or_default();
    let configured = conf.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == "group").then(|| v.trim().trim_matches('"').to_owned())
    });
    let name = configured.unwrap_or_else(|| "libvirt-qemu".into());
    if let Ok(Some(g)) = nix::unistd::Group::from_name(&name) {
        return Some(g.gid.as_raw());
    }
    name.strip_prefix('+').and_then(|n| n.parse().ok())
}
