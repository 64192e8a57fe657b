//! The real [`Hypervisor`]: libvirt through the `virt` crate, the only module that names it.
//!
//! One connection, opened lazily and shared by every call; libvirt connections are
//! thread-safe, so calls run concurrently on clones of it. A process-wide event loop thread
//! drives keepalive and domain events, so a dead or wedged libvirtd is noticed and the
//! connection dropped; the next call reconnects. Once an event sink is set, a keeper thread
//! reconnects within a second of libvirtd coming back, without waiting for a call, and every
//! new connection registers for lifecycle events before anyone uses it. Bulk stats are one
//! `virConnectGetAllDomainStats` call, copied out and freed at once. LUKS passphrases live
//! in libvirt only as ephemeral, private secrets around the one call that needs them
//! (DESIGN 1, "Project keys").

use super::{
    xml, DiskSpec, DomainInfo, DomainSpec, DomainStats, DomainType, Hypervisor, HypervisorError,
    LifecycleEvent, StopReason,
};
use crate::model::{DriveId, VmId};
use std::ffi::{c_int, c_uint, c_void, CStr, CString};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::error::{Error as VirtError, ErrorDomain, ErrorNumber};
use virt::secret::Secret;
use virt::sys;

/// How often `detach_disk` looks at the live XML for the disk to be gone.
const DETACH_POLL: Duration = Duration::from_millis(100);

/// [`Hypervisor`] over a libvirt connection.
pub struct Libvirt {
    /// `[libvirt] domain_type` as configured.
    configured: DomainType,
    /// `auto` resolved on first use.
    resolved: OnceLock<DomainType>,
    /// The connection and its upkeep, shared with the keeper thread.
    link: Arc<Link>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt")
            .field("uri", &self.link.uri)
            .field("domain_type", &self.configured)
            .finish_non_exhaustive()
    }
}

impl Libvirt {
    /// Asks QEMU to unplug the device `alias` and returns at once; libvirt's
    /// `virDomainDetachDeviceFlags` instead blocks up to 5 s waiting for the guest, which
    /// would overrun a shorter timeout.
    fn request_detach_by_alias(
        &self,
        conn: &Connect,
        dom: &Domain,
        alias: &str,
    ) -> Result<(), HypervisorError> {
        let alias = CString::new(alias)
            .map_err(|_| HypervisorError::Failed("Device alias contains a NUL byte".to_owned()))?;
        ffi::detach_device_alias(dom, &alias)
            .map_err(|e| self.error(conn, "Detaching the drive failed", e))
    }

    /// A hypervisor on `uri` (e.g. `qemu:///system`). Does not connect: the first call does.
    pub fn new(uri: &str, domain_type: DomainType) -> Self {
        Self {
            configured: domain_type,
            resolved: OnceLock::new(),
            link: Arc::new(Link {
                uri: uri.to_owned(),
                conn: Mutex::new(None),
                opening: Mutex::new(None),
                sink: Mutex::new(None),
                keeper: Once::new(),
            }),
        }
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.link.uri
    }

    #[cfg(test)]
    fn slot(&self) -> MutexGuard<'_, Option<Session>> {
        self.link.slot()
    }

    fn connection(&self) -> Result<Connect, HypervisorError> {
        self.link.connection()
    }

    fn forget_if_dead(&self, conn: &Connect) -> bool {
        self.link.forget_if_dead(conn)
    }

    /// Maps a libvirt error of the call `what` (a capitalised phrase such as "Creating the
    /// domain failed"); a failure of the connection itself drops it.
    fn error(&self, conn: &Connect, what: &str, e: VirtError) -> HypervisorError {
        let dead = self.forget_if_dead(conn);
        if dead || is_transport_error(&e) {
            if !dead {
                self.link.forget(conn);
            }
            return HypervisorError::Unavailable(format!(
                "Connection to libvirt lost: {}",
                message(&e)
            ));
        }
        if is_no_domain(&e) {
            return HypervisorError::NoDomain;
        }
        HypervisorError::Failed(format!("{what}: {}", message(&e)))
    }

    fn lookup(&self, conn: &Connect, id: VmId) -> Result<Domain, HypervisorError> {
        conn.lookup_domain_by_name(&id.to_string())
            .map_err(|e| self.error(conn, "Looking up the domain failed", e))
    }

    fn resolve_domain_type(&self, conn: &Connect) -> Result<DomainType, HypervisorError> {
        if self.configured != DomainType::Auto {
            return Ok(self.configured);
        }
        if let Some(t) = self.resolved.get() {
            return Ok(*t);
        }
        let t = match conn.domain_capabilities(None, Some("x86_64"), None, Some("kvm"), 0) {
            Ok(_) => DomainType::Kvm,
            Err(e) => {
                if self.forget_if_dead(conn) || is_transport_error(&e) {
                    return Err(self.error(conn, "Probing KVM failed", e));
                }
                tracing::info!(reason = %message(&e), "KVM not usable, domains use QEMU (TCG)");
                DomainType::Qemu
            }
        };
        let _ = self.resolved.set(t);
        Ok(*self.resolved.get().unwrap_or(&t))
    }

    /// One `virDomainListGetStats` call per running domain (benchmark baseline only).
    pub fn stats_per_domain(&self) -> Result<Vec<DomainStats>, HypervisorError> {
        let conn = self.connection()?;
        per_domain_stats(&conn)
            .map_err(|e| self.error(&conn, "Reading domain statistics failed", e))
    }

    /// Live XML of `dom`, or `None` when the domain has gone meanwhile.
    fn live_xml(&self, conn: &Connect, dom: &Domain) -> Result<Option<String>, HypervisorError> {
        match dom.xml_desc(0) {
            Ok(x) => Ok(Some(x)),
            Err(e) if is_no_domain(&e) || is_not_running(&e) => Ok(None),
            Err(e) => Err(self.error(conn, "Reading the domain XML failed", e)),
        }
    }
}

/// `libvirt` 11003000 -> `11.3.0`.
fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1_000) % 1_000, v % 1_000)
}

impl Hypervisor for Libvirt {
    fn ping(&self) -> Result<String, HypervisorError> {
        let conn = self.connection()?;
        let lib = conn
            .lib_version()
            .map_err(|e| self.error(&conn, "Reading the libvirt version failed", e))?;
        let driver = conn
            .driver_type()
            .map_err(|e| self.error(&conn, "Reading the driver type failed", e))?;
        let hyp = conn
            .hyp_version()
            .map_err(|e| self.error(&conn, "Reading the hypervisor version failed", e))?;
        Ok(format!(
            "libvirt {}, {driver} {}",
            version_string(lib),
            version_string(hyp)
        ))
    }

    fn domain_type(&self) -> Result<DomainType, HypervisorError> {
        if self.configured != DomainType::Auto {
            return Ok(self.configured);
        }
        if let Some(t) = self.resolved.get() {
            return Ok(*t);
        }
        let conn = self.connection()?;
        self.resolve_domain_type(&conn)
    }

    fn launch(&self, spec: &DomainSpec) -> Result<(), HypervisorError> {
        let started = Instant::now();
        let conn = self.connection()?;
        let domain_type = self.resolve_domain_type(&conn)?;
        match conn.lookup_domain_by_name(&spec.id.to_string()) {
            Ok(_) => return Err(HypervisorError::AlreadyRunning),
            Err(e) if is_no_domain(&e) => {}
            Err(e) => return Err(self.error(&conn, "Looking up the domain failed", e)),
        }
        let mut guard = SecretGuard::new(spec.id);
        for disk in &spec.disks {
            self.define_secret(&conn, &mut guard, disk)?;
        }
        let domain_xml = xml::domain_xml(spec, domain_type, &guard.uuids())?;
        let created = conn.create_domain_xml(&domain_xml, sys::VIR_DOMAIN_NONE);
        drop(guard);
        match created {
            Ok(_) => {
                tracing::info!(
                    vm = %spec.id,
                    disks = spec.disks.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "domain launched"
                );
                Ok(())
            }
            Err(e) if is_already_running(&e) => Err(HypervisorError::AlreadyRunning),
            Err(e) => Err(self.error(&conn, "Creating the domain failed", e)),
        }
    }

    fn shutdown(&self, id: VmId) -> Result<(), HypervisorError> {
        let conn = self.connection()?;
        let dom = self.lookup(&conn, id)?;
        match dom.shutdown() {
            Ok(()) => Ok(()),
            Err(e) if is_not_running(&e) => Err(HypervisorError::NoDomain),
            Err(e) => Err(self.error(&conn, "Shutting the domain down failed", e)),
        }
    }

    fn destroy(&self, id: VmId) -> Result<(), HypervisorError> {
        let conn = self.connection()?;
        let dom = self.lookup(&conn, id)?;
        match dom.destroy() {
            Ok(()) => Ok(()),
            Err(e) if is_not_running(&e) => Err(HypervisorError::NoDomain),
            Err(e) => Err(self.error(&conn, "Destroying the domain failed", e)),
        }
    }

    fn is_running(&self, id: VmId) -> Result<bool, HypervisorError> {
        let conn = self.connection()?;
        match conn.lookup_domain_by_name(&id.to_string()) {
            Ok(dom) => match dom.is_active() {
                Ok(active) => Ok(active),
                Err(e) if is_no_domain(&e) => Ok(false),
                Err(e) => Err(self.error(&conn, "Reading the domain state failed", e)),
            },
            Err(e) if is_no_domain(&e) => Ok(false),
            Err(e) => Err(self.error(&conn, "Looking up the domain failed", e)),
        }
    }

    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        let conn = self.connection()?;
        let domains = conn
            .list_all_domains(0)
            .map_err(|e| self.error(&conn, "Listing domains failed", e))?;
        let mut out = Vec::with_capacity(domains.len());
        for dom in domains {
            // A domain that ends between the listing and these calls is simply left out.
            let name = match dom.name() {
                Ok(n) => n,
                Err(e) if is_no_domain(&e) => continue,
                Err(e) => return Err(self.error(&conn, "Reading a domain name failed", e)),
            };
            let state = match dom.info() {
                Ok(info) => info.state,
                Err(e) if is_no_domain(&e) => continue,
                Err(e) => return Err(self.error(&conn, "Reading a domain state failed", e)),
            };
            let (ours, host) = match dom.metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(xml::METADATA_NS),
                0,
            ) {
                Ok(m) => (true, xml::metadata_host(&m)),
                Err(e) if code_is(&e, ErrorNumber::NoDomainMetadata) => (false, None),
                Err(e) if is_no_domain(&e) => continue,
                Err(e) => return Err(self.error(&conn, "Reading domain metadata failed", e)),
            };
            let vm = if ours {
                name.parse::<VmId>().ok()
            } else {
                None
            };
            let running =
                state.is_known_and(|s| matches!(s, DomainState::Running | DomainState::Blocked));
            out.push(DomainInfo {
                name,
                vm,
                host,
                running,
            });
        }
        Ok(out)
    }

    fn attach_disk(&self, id: VmId, disk: &DiskSpec) -> Result<(), HypervisorError> {
        let conn = self.connection()?;
        let dom = self.lookup(&conn, id)?;
        let live = self
            .live_xml(&conn, &dom)?
            .ok_or(HypervisorError::NoDomain)?;
        let disks = xml::live_disks(&live)?;
        if xml::disk_of_drive(&disks, disk.drive).is_some() {
            return Err(HypervisorError::Failed(
                "The drive is already attached to this domain".to_owned(),
            ));
        }
        let target = xml::first_free_target(&disks);
        let mut guard = SecretGuard::new(id);
        let secret = self.define_secret(&conn, &mut guard, disk)?;
        let device = xml::disk_xml(disk, &target, secret)?;
        let attached = dom.attach_device_flags(&device, sys::VIR_DOMAIN_AFFECT_LIVE);
        drop(guard);
        match attached {
            Ok(()) => {
                tracing::info!(vm = %id, drive = %disk.drive, target = %target, "drive attached");
                Ok(())
            }
            Err(e) if is_not_running(&e) => Err(HypervisorError::NoDomain),
            Err(e) => Err(self.error(&conn, "Attaching the drive failed", e)),
        }
    }

    fn detach_disk(
        &self,
        id: VmId,
        drive: DriveId,
        timeout: Duration,
    ) -> Result<(), HypervisorError> {
        let deadline = Instant::now() + timeout;
        let conn = self.connection()?;
        let dom = self.lookup(&conn, id)?;
        let live = self
            .live_xml(&conn, &dom)?
            .ok_or(HypervisorError::NoDomain)?;
        let disks = xml::live_disks(&live)?;
        let Some(disk) = xml::disk_of_drive(&disks, drive).cloned() else {
            // Nothing to release: the goal state already holds.
            return Ok(());
        };
        let requested = match disk.alias.as_deref() {
            Some(alias) => self.request_detach_by_alias(&conn, &dom, alias),
            None => dom
                .detach_device_flags(&xml::detach_xml(&disk)?, sys::VIR_DOMAIN_AFFECT_LIVE)
                .map_err(|e| {
                    if is_not_running(&e) {
                        HypervisorError::NoDomain
                    } else {
                        self.error(&conn, "Detaching the drive failed", e)
                    }
                }),
        };
        match requested {
            Ok(()) => {}
            // The domain ended meanwhile, and with it every hold on the drive.
            Err(HypervisorError::NoDomain) => return Ok(()),
            Err(e) => return Err(e),
        }
        loop {
            let Some(live) = self.live_xml(&conn, &dom)? else {
                return Ok(());
            };
            if xml::disk_of_drive(&xml::live_disks(&live)?, drive).is_none() {
                tracing::info!(vm = %id, drive = %drive, "drive detached");
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HypervisorError::DetachTimeout(timeout));
            }
            std::thread::sleep(DETACH_POLL.min(deadline - now));
        }
    }

    fn our_secrets(&self) -> Result<Vec<String>, HypervisorError> {
        let conn = self.connection()?;
        Ok(self
            .our_secret_handles(&conn)?
            .into_iter()
            .map(|(uuid, _, _)| uuid)
            .collect())
    }

    fn stats(&self) -> Result<Vec<DomainStats>, HypervisorError> {
        let conn = self.connection()?;
        all_domain_stats(&conn)
            .map_err(|e| self.error(&conn, "Reading domain statistics failed", e))
    }

    /// Registers on the open connection at once (opening one if libvirtd answers), sends
    /// `Reconnected`, and from then on keeps a connection open: a lost one is reopened and
    /// re-registered within a second of libvirtd answering again. Blocks like the other
    /// methods while a connection is being opened.
    fn set_event_sink(&self, sink: UnboundedSender<LifecycleEvent>) {
        {
            let mut current = lock(&self.link.sink);
            let generation = current.as_ref().map_or(1, |s| s.generation + 1);
            *current = Some(Sink {
                generation,
                tx: sink,
            });
        }
        if let Err(e) = self.link.maintain() {
            tracing::warn!(error = %e, "libvirt unreachable; events registered once it answers");
        }
        self.link.start_keeper();
    }
}

mod connection;
mod errors;
mod ffi;
mod secrets;

use connection::*;
use errors::*;
use ffi::events::*;
use ffi::stats::*;
use ffi::*;
use secrets::*;

#[cfg(test)]
mod tests;
