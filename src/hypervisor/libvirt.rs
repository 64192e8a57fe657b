//! The real [`Hypervisor`]: libvirt through the `virt` crate, the only module that names it.
//!
//! One connection, opened lazily and shared by every call; libvirt connections are
//! thread-safe, so calls run concurrently on clones of it. A process-wide event loop thread
//! drives keepalive, so a dead or wedged libvirtd is noticed and the connection dropped; the
//! next call reconnects. LUKS passphrases live in libvirt only as ephemeral, private secrets
//! around the one call that needs them (DESIGN 1, "Project keys").

use super::{xml, DiskSpec, DomainInfo, DomainSpec, DomainType, Hypervisor, HypervisorError};
use crate::model::{DriveId, VmId};
use std::ffi::CString;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::error::{Error as VirtError, ErrorDomain, ErrorNumber};
use virt::secret::Secret;
use virt::sys;

/// Keepalive: a probe every 5 s, the connection declared dead after 3 unanswered ones, so a
/// wedged libvirtd costs a call at most about 20 s instead of hanging it forever.
const KEEPALIVE_INTERVAL_S: i32 = 5;
const KEEPALIVE_COUNT: u32 = 3;

/// How long a call waits for a new connection. Opening one has no keepalive yet, so on a
/// libvirtd that accepts but never answers (stopped, deadlocked) it would wait forever.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `detach_disk` looks at the live XML for the disk to be gone.
const DETACH_POLL: Duration = Duration::from_millis(100);

/// Longest libvirt message kept in an error (QEMU's stderr can be long).
const MAX_MESSAGE: usize = 400;

static EVENT_LOOP: Once = Once::new();
static EVENT_LOOP_OK: OnceLock<bool> = OnceLock::new();

/// Registers libvirt's default event loop and runs it in its own thread, once per process.
/// Keepalive (and domain events) need it, and it must be registered before the first
/// connection opens to be used by it.
fn start_event_loop() -> bool {
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

fn code_is(e: &VirtError, n: ErrorNumber) -> bool {
    e.code().is_known_and(|c| c == n)
}

/// libvirt's message, shortened: when QEMU refused to start, libvirt relays QEMU's stderr
/// (timestamps, the whole offending option in JSON) and the cause is at the very end.
fn message(e: &VirtError) -> String {
    let mut m = shorten(e.message());
    if m.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push_str("...");
    }
    m
}

fn shorten(raw: &str) -> String {
    let raw = raw.trim();
    let Some(qemu_at) = raw.rfind("qemu-system-") else {
        return raw.to_owned();
    };
    let last = &raw[qemu_at..];
    // "qemu-system-x86_64: -blockdev {...}: Invalid password, ..." -> the text after the
    // program name, and after the echoed option when there is one.
    let Some((_, rest)) = last.split_once(": ") else {
        return raw.to_owned();
    };
    let cause = if rest.starts_with('-') {
        rest.split_once(": ").map_or(rest, |(_, c)| c)
    } else {
        rest
    };
    let cause = cause.trim();
    if cause.is_empty() {
        raw.to_owned()
    } else {
        format!("QEMU: {cause}")
    }
}

fn is_no_domain(e: &VirtError) -> bool {
    code_is(e, ErrorNumber::NoDomain)
}

/// The domain exists but is not running: for a transient domain, one on its way out.
fn is_not_running(e: &VirtError) -> bool {
    code_is(e, ErrorNumber::OperationInvalid) && e.message().contains("not running")
}

fn is_already_running(e: &VirtError) -> bool {
    let m = e.message();
    (code_is(e, ErrorNumber::OperationFailed) || code_is(e, ErrorNumber::OperationInvalid))
        && (m.contains("already exists") || m.contains("already active"))
}

/// Errors that say the transport, not the request, failed.
fn is_transport_error(e: &VirtError) -> bool {
    code_is(e, ErrorNumber::NoConnect)
        || (e.domain().is_known_and(|d| d == ErrorDomain::Rpc)
            && (code_is(e, ErrorNumber::SystemError)
                || (code_is(e, ErrorNumber::InternalError)
                    && e.message().contains("client socket is closed"))))
}

/// Libvirt secrets defined for one call; dropping the guard undefines them, so every path
/// out of a launch or attach, early returns and panics included, removes them.
struct SecretGuard {
    vm: VmId,
    secrets: Vec<(Uuid, Secret)>,
}

impl SecretGuard {
    fn new(vm: VmId) -> Self {
        Self {
            vm,
            secrets: Vec::new(),
        }
    }

    fn uuids(&self) -> Vec<Uuid> {
        self.secrets.iter().map(|(u, _)| *u).collect()
    }
}

impl Drop for SecretGuard {
    fn drop(&mut self) {
        for (uuid, secret) in self.secrets.drain(..) {
            match secret.undefine() {
                Ok(()) => tracing::debug!(vm = %self.vm, secret = %uuid, "secret undefined"),
                // Ephemeral secrets die with libvirtd at the latest; `our_secrets` reports
                // any that outlive a call so that the service can purge them.
                Err(e) => tracing::warn!(
                    vm = %self.vm,
                    secret = %uuid,
                    error = %e.message(),
                    "cannot undefine a launch secret"
                ),
            }
        }
    }
}

/// [`Hypervisor`] over a libvirt connection.
pub struct Libvirt {
    uri: String,
    configured: DomainType,
    resolved: OnceLock<DomainType>,
    conn: Mutex<Option<Connect>>,
    /// An open still running in its own thread after a caller gave up waiting for it; the
    /// next caller takes its result instead of starting another.
    opening: Mutex<Option<Receiver<Result<Connect, VirtError>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Both mutexes only ever hold a whole value or none; a panic elsewhere cannot leave one
    // half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens a connection in a thread of its own, so that the caller can stop waiting.
fn spawn_open(uri: &str) -> Result<Receiver<Result<Connect, VirtError>>, HypervisorError> {
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

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt")
            .field("uri", &self.uri)
            .field("domain_type", &self.configured)
            .finish_non_exhaustive()
    }
}

impl Libvirt {
    /// A hypervisor on `uri` (e.g. `qemu:///system`). Does not connect: the first call does.
    pub fn new(uri: &str, domain_type: DomainType) -> Self {
        Self {
            uri: uri.to_owned(),
            configured: domain_type,
            resolved: OnceLock::new(),
            conn: Mutex::new(None),
            opening: Mutex::new(None),
        }
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn slot(&self) -> MutexGuard<'_, Option<Connect>> {
        lock(&self.conn)
    }

    /// The shared connection if it is alive; a dead one is dropped.
    fn live_connection(&self) -> Option<Connect> {
        let mut slot = self.slot();
        if let Some(conn) = slot.as_ref() {
            // is_alive asks the client library, not the daemon: no round trip.
            if conn.is_alive().unwrap_or(false) {
                return Some(conn.clone());
            }
            tracing::info!(uri = %self.uri, "libvirt connection lost, reconnecting");
            *slot = None;
        }
        None
    }

    /// A live connection: the shared one, or a new one when there is none or it died.
    fn connection(&self) -> Result<Connect, HypervisorError> {
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
        tracing::info!(uri = %self.uri, "connected to libvirt");
        *self.slot() = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the shared connection if it is dead, so the next call reconnects.
    fn forget_if_dead(&self, conn: &Connect) -> bool {
        if conn.is_alive().unwrap_or(false) {
            return false;
        }
        let mut slot = self.slot();
        if slot
            .as_ref()
            .is_some_and(|c| !c.is_alive().unwrap_or(false))
        {
            *slot = None;
        }
        true
    }

    /// Maps a libvirt error of the call `what` (a capitalised phrase such as "Creating the
    /// domain failed"); a failure of the connection itself drops it.
    fn error(&self, conn: &Connect, what: &str, e: VirtError) -> HypervisorError {
        let dead = self.forget_if_dead(conn);
        if dead || is_transport_error(&e) {
            if !dead {
                *self.slot() = None;
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

    /// Defines an ephemeral, private secret holding `disk`'s passphrase, owned by `guard`.
    fn define_secret(
        &self,
        conn: &Connect,
        guard: &mut SecretGuard,
        disk: &DiskSpec,
    ) -> Result<Uuid, HypervisorError> {
        let uuid = Uuid::new_v4();
        let secret = conn
            .define_secret_xml(&xml::secret_xml(uuid, disk.drive)?, 0)
            .map_err(|e| self.error(conn, "Defining the drive secret failed", e))?;
        // In the guard before the value is set: a secret must not survive a failed set.
        guard.secrets.push((uuid, secret.clone()));
        secret
            .set_value(disk.passphrase.expose(), 0)
            .map_err(|e| self.error(conn, "Setting the drive secret failed", e))?;
        Ok(uuid)
    }

    /// Undefines every secret vmwarden defined that still exists, and returns how many.
    /// For start-up, when no launch or attach can be in flight: secrets outlive a call only
    /// when the connection died under it.
    pub fn purge_our_secrets(&self) -> Result<usize, HypervisorError> {
        let conn = self.connection()?;
        let mut n = 0;
        for (uuid, secret) in self.our_secret_handles(&conn)? {
            match secret.undefine() {
                Ok(()) => n += 1,
                Err(e) if code_is(&e, ErrorNumber::NoSecret) => {}
                Err(e) => return Err(self.error(&conn, "Undefining a stale secret failed", e)),
            }
            tracing::info!(secret = %uuid, "stale vmwarden secret undefined");
        }
        Ok(n)
    }

    fn our_secret_handles(&self, conn: &Connect) -> Result<Vec<(String, Secret)>, HypervisorError> {
        let all = conn
            .list_all_secrets(0)
            .map_err(|e| self.error(conn, "Listing secrets failed", e))?;
        let mut ours = Vec::new();
        for secret in all {
            let desc = match secret.xml_desc(0) {
                Ok(x) => xml::secret_description(&x)?,
                // Undefined between the listing and now: not there any more.
                Err(e) if code_is(&e, ErrorNumber::NoSecret) => continue,
                Err(e) => return Err(self.error(conn, "Reading a secret failed", e)),
            };
            if desc.as_deref().is_some_and(xml::is_our_secret_description) {
                let uuid = secret
                    .uuid_string()
                    .map_err(|e| self.error(conn, "Reading a secret failed", e))?;
                ours.push((uuid, secret));
            }
        }
        Ok(ours)
    }

    /// Live XML of `dom`, or `None` when the domain has gone meanwhile.
    fn live_xml(&self, conn: &Connect, dom: &Domain) -> Result<Option<String>, HypervisorError> {
        match dom.xml_desc(0) {
            Ok(x) => Ok(Some(x)),
            Err(e) if is_no_domain(&e) || is_not_running(&e) => Ok(None),
            Err(e) => Err(self.error(conn, "Reading the domain XML failed", e)),
        }
    }

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
        // SAFETY: `dom` owns a reference to a valid virDomainPtr for the whole call, `alias`
        // is a NUL-terminated string that outlives it, and libvirt copies what it keeps.
        let rc = unsafe {
            sys::virDomainDetachDeviceAlias(
                dom.as_ptr(),
                alias.as_ptr(),
                sys::VIR_DOMAIN_AFFECT_LIVE,
            )
        };
        if rc < 0 {
            return Err(self.error(conn, "Detaching the drive failed", VirtError::last_error()));
        }
        Ok(())
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
            let ours = match dom.metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(xml::METADATA_NS),
                0,
            ) {
                Ok(_) => true,
                Err(e) if code_is(&e, ErrorNumber::NoDomainMetadata) => false,
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
            out.push(DomainInfo { name, vm, running });
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
            .map(|(uuid, _)| uuid)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_start_failures_keep_only_the_cause() {
        let raw = "internal error: QEMU unexpectedly closed the monitor (vm='x'): \
                   2026-11-29T02:01:34.207397Z qemu-system-x86_64: -blockdev {\"node-name\":\
                   \"libvirt-1-format\",\"encrypt\":{\"format\":\"luks\"}}: Invalid password, \
                   cannot unlock any keyslot";
        assert_eq!(
            shorten(raw),
            "QEMU: Invalid password, cannot unlock any keyslot"
        );
        let kvm = "internal error: QEMU unexpectedly closed the monitor (vm='x'): 2026-11-29T01:55:02Z \
                   qemu-system-x86_64: -accel kvm: Could not access KVM kernel module: No such file or \
                   directory\n2026-11-29T01:55:02Z qemu-system-x86_64: -accel kvm: failed to initialize \
                   kvm: No such file or directory";
        assert_eq!(
            shorten(kvm),
            "QEMU: failed to initialize kvm: No such file or directory"
        );
        let plain =
            "Cannot access storage file '/d/a.qcow2' (as uid:64055, gid:64055): Permission denied";
        assert_eq!(shorten(plain), plain);
        assert_eq!(shorten("  qemu-system-x86_64  "), "qemu-system-x86_64");
    }

    #[test]
    fn versions_read_like_libvirt_prints_them() {
        assert_eq!(version_string(11_003_000), "11.3.0");
        assert_eq!(version_string(10_000_002), "10.0.2");
    }

    #[test]
    fn new_does_not_connect_and_debug_is_short() {
        let lv = Libvirt::new("qemu+unix:///system?socket=/nonexistent", DomainType::Auto);
        assert!(lv.slot().is_none());
        let dbg = format!("{lv:?}");
        assert!(dbg.contains("Libvirt") && dbg.contains("Auto"), "{dbg}");
    }

    #[test]
    fn unreachable_libvirt_is_unavailable_and_fast() {
        let lv = Libvirt::new(
            "qemu+unix:///system?socket=/nonexistent/sock",
            DomainType::Auto,
        );
        let t = Instant::now();
        match lv.ping() {
            Err(HypervisorError::Unavailable(m)) => assert!(m.starts_with("Cannot connect"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            lv.domain_type(),
            Err(HypervisorError::Unavailable(_))
        ));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
