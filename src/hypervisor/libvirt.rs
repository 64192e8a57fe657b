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

/// How often the keeper looks at the connection once an event sink is set. `is_alive` is a
/// local check, so a healthy connection costs nothing; a lost one is reopened (and events
/// re-registered) within this interval of libvirtd answering again.
const KEEPER_INTERVAL: Duration = Duration::from_secs(1);

/// The bulk-stats groups idle detection reads (DESIGN 1, "Idle shutdown").
const STATS_GROUPS: c_uint = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_BLOCK
    | sys::VIR_DOMAIN_STATS_INTERFACE;

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
    /// `[libvirt] domain_type` as configured.
    configured: DomainType,
    /// `auto` resolved on first use.
    resolved: OnceLock<DomainType>,
    /// The connection and its upkeep, shared with the keeper thread.
    link: Arc<Link>,
}

/// The shared connection, how it is (re)opened, and where its lifecycle events go.
struct Link {
    /// Connection URI, e.g. `qemu:///system`.
    uri: String,
    /// The open connection, if any, with its event registration.
    conn: Mutex<Option<Session>>,
    /// An open still running in its own thread after a caller gave up waiting for it; the
    /// next caller takes its result instead of starting another. Held while a connection
    /// is opened or its events registered, so that those happen once at a time.
    opening: Mutex<Option<Receiver<Result<Connect, VirtError>>>>,
    /// Where lifecycle events go, once the service has said so.
    sink: Mutex<Option<Sink>>,
    /// Starts the keeper thread once.
    keeper: Once,
}

/// An event sink and its generation, which tells whether a registration sends to it.
#[derive(Clone)]
struct Sink {
    generation: u64,
    tx: UnboundedSender<LifecycleEvent>,
}

/// One open connection as the shared slot holds it.
struct Session {
    conn: Connect,
    /// The lifecycle callback registered on `conn`, deregistered when the session is
    /// dropped: the callback holds a reference to the connection, which would otherwise
    /// never close.
    events: Option<Registration>,
}

/// A lifecycle callback registered on a connection.
#[derive(Clone, Copy)]
struct Registration {
    /// libvirt's callback id.
    id: c_int,
    /// The [`Sink::generation`] whose sender the callback owns.
    generation: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(reg) = self.events.take() {
            deregister_lifecycle(&self.conn, reg.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutex here only ever holds a whole value or none; a panic elsewhere cannot leave
    // one half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn same_connection(a: &Connect, b: &Connect) -> bool {
    // SAFETY: `as_ptr` only reads the wrapped pointer; nothing is dereferenced.
    unsafe { a.as_ptr() == b.as_ptr() }
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

// ---------------------------------------------------------------------------------------
// Lifecycle events

/// The callback signature libvirt uses for `VIR_DOMAIN_EVENT_ID_LIFECYCLE`.
type LifecycleCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;

/// The generic signature `virConnectDomainEventRegisterAny` takes for every event id.
type GenericCallback = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// The lifecycle change an (event, detail) pair means, without the domain name; `None` for
/// kinds vmwarden does not follow (defined, suspended, resumed, ...). `CRASHED` is ignored:
/// with `on_crash=destroy` a crash is followed by `STOPPED`.
fn lifecycle_kind(event: c_int, detail: c_int) -> Option<Option<StopReason>> {
    let event = c_uint::try_from(event).ok()?;
    match event {
        sys::VIR_DOMAIN_EVENT_STARTED => Some(None),
        sys::VIR_DOMAIN_EVENT_STOPPED => {
            let reason = match c_uint::try_from(detail) {
                Ok(sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN) => StopReason::Shutdown,
                Ok(sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED) => StopReason::Destroyed,
                Ok(sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED) => StopReason::Crashed,
                Ok(sys::VIR_DOMAIN_EVENT_STOPPED_FAILED) => StopReason::Failed,
                _ => StopReason::Other,
            };
            Some(Some(reason))
        }
        _ => None,
    }
}

fn lifecycle_event(name: String, kind: Option<StopReason>) -> LifecycleEvent {
    match kind {
        None => LifecycleEvent::Started { name },
        Some(reason) => LifecycleEvent::Stopped { name, reason },
    }
}

/// The name of `dom`, or `None` for a null domain.
///
/// # Safety
/// `dom` is null or a valid `virDomainPtr` for the duration of the call.
unsafe fn domain_name(dom: sys::virDomainPtr) -> Option<String> {
    if dom.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees `dom` is valid; the returned string belongs to it.
    let name = unsafe { sys::virDomainGetName(dom) };
    if name.is_null() {
        return None;
    }
    // SAFETY: libvirt returns a NUL-terminated string that lives as long as `dom`, and it is
    // copied before this function returns.
    let name = unsafe { CStr::from_ptr(name) };
    Some(name.to_string_lossy().into_owned())
}

/// Runs on the libvirt event loop thread for every lifecycle event of the connection.
unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let Some(kind) = lifecycle_kind(event, detail) else {
        return 0;
    };
    // SAFETY: `opaque` is the `Box<UnboundedSender>` handed over in `register_lifecycle`;
    // libvirt frees it (through `free_sink`) only after the last callback has returned.
    let Some(tx) = (unsafe { opaque.cast::<UnboundedSender<LifecycleEvent>>().as_ref() }) else {
        return 0;
    };
    // SAFETY: libvirt passes a domain that is valid for the duration of the callback.
    if let Some(name) = unsafe { domain_name(dom) } {
        // A closed receiver means nobody listens any more: nothing to do.
        let _ = tx.send(lifecycle_event(name, kind));
    }
    0
}

/// libvirt's free callback for the opaque pointer of [`on_lifecycle`].
unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from `Box::into_raw` in `register_lifecycle`, and libvirt
        // calls this once, after which it never passes the pointer again.
        drop(unsafe { Box::from_raw(opaque.cast::<UnboundedSender<LifecycleEvent>>()) });
    }
}

/// Registers [`on_lifecycle`] for every domain of `conn`, sending to a clone of `tx` that
/// libvirt owns from now on. Returns the callback id.
fn register_lifecycle(
    conn: &Connect,
    tx: &UnboundedSender<LifecycleEvent>,
) -> Result<c_int, VirtError> {
    let opaque = Box::into_raw(Box::new(tx.clone())).cast::<c_void>();
    // SAFETY: libvirt calls a callback registered for VIR_DOMAIN_EVENT_ID_LIFECYCLE with the
    // lifecycle signature; the generic type only carries it (VIR_DOMAIN_EVENT_CALLBACK in C).
    let cb = unsafe {
        std::mem::transmute::<LifecycleCallback, GenericCallback>(on_lifecycle as LifecycleCallback)
    };
    // SAFETY: `conn` holds a valid virConnectPtr for the call; a null domain means every
    // domain; `opaque` stays valid until libvirt hands it to `free_sink`.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(cb),
            opaque,
            Some(free_sink),
        )
    };
    if id < 0 {
        let e = VirtError::last_error();
        // SAFETY: a failed registration does not take ownership of `opaque` (libvirt never
        // calls the free callback then), so it is still ours to free, once.
        unsafe { free_sink(opaque) };
        return Err(e);
    }
    Ok(id)
}

/// Removes a lifecycle callback; libvirt then frees its sender and drops its reference to
/// the connection. On a dead connection the call reports an error after doing so locally.
fn deregister_lifecycle(conn: &Connect, id: c_int) {
    // SAFETY: `conn` holds a valid virConnectPtr and `id` was returned by a registration on
    // it that has not been removed yet (each `Registration` is dropped once).
    let rc = unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id) };
    if rc < 0 {
        tracing::debug!(
            error = %VirtError::last_error().message(),
            "lifecycle callback deregistered on a closed connection"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Bulk stats

/// The list `virConnectGetAllDomainStats` returns, freed with everything in it on drop.
struct StatsRecords(*mut sys::virDomainStatsRecordPtr);

impl Drop for StatsRecords {
    fn drop(&mut self) {
        // SAFETY: the pointer is null or the list libvirt returned, freed exactly once here;
        // nothing borrowed from it outlives `all_domain_stats`.
        unsafe { sys::virDomainStatsRecordListFree(self.0) };
    }
}

/// What [`DomainStats`] keeps of one record's typed parameters.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counters {
    running: bool,
    cpu_time_ns: u64,
    block_bytes: u64,
    net_bytes: u64,
}

/// Whether `rest` is `<index><suffix>` for one of `suffixes`, as in `0.rd.bytes`.
fn indexed(rest: &[u8], suffixes: &[&[u8]]) -> bool {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && suffixes.contains(&&rest[digits..])
}

impl Counters {
    fn add(&mut self, field: &[u8], value: u64) {
        if field == b"state.state" {
            // Paused, shut off, crashed, ... are not running; blocked is (as in `list`).
            self.running = value == u64::from(sys::VIR_DOMAIN_RUNNING)
                || value == u64::from(sys::VIR_DOMAIN_BLOCKED);
        } else if field == b"cpu.time" {
            self.cpu_time_ns = value;
        } else if let Some(rest) = field.strip_prefix(b"block.") {
            if indexed(rest, &[b".rd.bytes", b".wr.bytes"]) {
                self.block_bytes = self.block_bytes.saturating_add(value);
            }
        } else if let Some(rest) = field.strip_prefix(b"net.") {
            if indexed(rest, &[b".rx.bytes", b".tx.bytes"]) {
                self.net_bytes = self.net_bytes.saturating_add(value);
            }
        }
    }
}

/// The name of a typed parameter, without its NUL.
fn param_field(p: &sys::virTypedParameter) -> &[u8] {
    // SAFETY: `c_char` and `u8` have the same size and alignment, and the slice covers
    // exactly the array borrowed from `p`.
    let raw = unsafe { std::slice::from_raw_parts(p.field.as_ptr().cast::<u8>(), p.field.len()) };
    CStr::from_bytes_until_nul(raw).map_or(raw, CStr::to_bytes)
}

/// The value of an integer typed parameter; `None` for other types and negative numbers.
fn param_u64(p: &sys::virTypedParameter) -> Option<u64> {
    let v = &p.value;
    match c_uint::try_from(p.type_).ok()? {
        sys::VIR_TYPED_PARAM_ULLONG => {
            // SAFETY: `type_` says libvirt wrote this union member.
            Some(unsafe { v.ul })
        }
        sys::VIR_TYPED_PARAM_LLONG => {
            // SAFETY: `type_` says libvirt wrote this union member.
            u64::try_from(unsafe { v.l }).ok()
        }
        sys::VIR_TYPED_PARAM_UINT => {
            // SAFETY: `type_` says libvirt wrote this union member.
            Some(u64::from(unsafe { v.ui }))
        }
        sys::VIR_TYPED_PARAM_INT => {
            // SAFETY: `type_` says libvirt wrote this union member.
            u64::try_from(unsafe { v.i }).ok()
        }
        _ => None,
    }
}

/// One bulk-stats sample of every domain on `conn`: a single `virConnectGetAllDomainStats`
/// call, copied into owned values, the records freed before returning. (The `virt` crate's
/// `get_all_domain_stats` frees only the outer array.)
fn all_domain_stats(conn: &Connect) -> Result<Vec<DomainStats>, VirtError> {
    let mut raw: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` holds a valid virConnectPtr for the call and `raw` is a valid place
    // for the returned list, which `StatsRecords` then owns.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), STATS_GROUPS, &mut raw, 0) };
    if n < 0 {
        return Err(VirtError::last_error());
    }
    Ok(fold_records(StatsRecords(raw), n))
}

/// The same counters, one `virDomainListGetStats` call per domain: what a sampler without
/// the bulk call would do. Only the benchmark uses it, to show what the bulk call saves.
fn per_domain_stats(conn: &Connect) -> Result<Vec<DomainStats>, VirtError> {
    let domains = conn.list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)?;
    let mut out = Vec::with_capacity(domains.len());
    for d in &domains {
        let mut raw: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
        // SAFETY: `one` is a NULL-terminated array holding a domain pointer that `domains`
        // keeps alive for the call; `raw` receives a list that `StatsRecords` then owns.
        let n = unsafe {
            let mut one = [d.as_ptr(), std::ptr::null_mut()];
            sys::virDomainListGetStats(one.as_mut_ptr(), STATS_GROUPS, &mut raw, 0)
        };
        if n < 0 {
            return Err(VirtError::last_error());
        }
        out.extend(fold_records(StatsRecords(raw), n));
    }
    Ok(out)
}

/// Copies the counters out of a stats list and frees it.
fn fold_records(records: StatsRecords, n: c_int) -> Vec<DomainStats> {
    let n = if records.0.is_null() {
        0
    } else {
        usize::try_from(n).unwrap_or(0)
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: on success the list holds `n` record pointers (then a NULL), alive until
        // `records` drops at the end of this function.
        let rec = unsafe { *records.0.add(i) };
        // SAFETY: each non-null entry points to a record libvirt filled in.
        let Some(rec) = (unsafe { rec.as_ref() }) else {
            break;
        };
        // SAFETY: the record holds a reference to its domain while the list lives.
        let Some(name) = (unsafe { domain_name(rec.dom) }) else {
            continue;
        };
        let params: &[sys::virTypedParameter] = match usize::try_from(rec.nparams) {
            Ok(len) if len > 0 && !rec.params.is_null() => {
                // SAFETY: `params` points to `nparams` typed parameters owned by the record.
                unsafe { std::slice::from_raw_parts(rec.params, len) }
            }
            _ => &[],
        };
        let mut c = Counters::default();
        for p in params {
            if let Some(v) = param_u64(p) {
                c.add(param_field(p), v);
            }
        }
        let vm = name.parse::<VmId>().ok();
        out.push(DomainStats {
            name,
            vm,
            running: c.running,
            cpu_time_ns: c.cpu_time_ns,
            block_bytes: c.block_bytes,
            net_bytes: c.net_bytes,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------
// The connection

impl Link {
    fn slot(&self) -> MutexGuard<'_, Option<Session>> {
        lock(&self.conn)
    }

    fn sink(&self) -> Option<Sink> {
        lock(&self.sink).clone()
    }

    /// The shared connection if it is alive; a dead one is dropped.
    fn live_connection(&self) -> Option<Connect> {
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
    fn ensure_events(&self) {
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
    fn maintain(&self) -> Result<(), HypervisorError> {
        self.connection()?;
        self.ensure_events();
        Ok(())
    }

    /// Starts the thread that keeps the connection open while an event sink is set. It
    /// holds only a weak reference and ends within a round of the `Libvirt` being dropped.
    fn start_keeper(self: &Arc<Self>) {
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
    fn forget_if_dead(&self, conn: &Connect) -> bool {
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
    fn forget(&self, conn: &Connect) {
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

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt")
            .field("uri", &self.link.uri)
            .field("domain_type", &self.configured)
            .finish_non_exhaustive()
    }
}

impl Libvirt {
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

    /// One `virDomainListGetStats` call per running domain (benchmark baseline only).
    pub fn stats_per_domain(&self) -> Result<Vec<DomainStats>, HypervisorError> {
        let conn = self.connection()?;
        per_domain_stats(&conn)
            .map_err(|e| self.error(&conn, "Reading domain statistics failed", e))
    }

    /// Undefines every secret vmwarden defined that still exists, and returns how many.
    /// For start-up, when no launch or attach can be in flight: secrets outlive a call only
    /// when the connection died under it.
    ///
    /// `mine` gets each secret's description (`vmwarden drive <id>`) and says whether this
    /// daemon owns it: several daemons may share one libvirtd (tests do), and another one's
    /// launch in flight must keep its secret.
    pub fn purge_our_secrets(&self, mine: impl Fn(&str) -> bool) -> Result<usize, HypervisorError> {
        let conn = self.connection()?;
        let mut n = 0;
        for (uuid, secret, desc) in self.our_secret_handles(&conn)? {
            if !mine(&desc) {
                continue;
            }
            match secret.undefine() {
                Ok(()) => n += 1,
                Err(e) if code_is(&e, ErrorNumber::NoSecret) => {}
                Err(e) => return Err(self.error(&conn, "Undefining a stale secret failed", e)),
            }
            tracing::info!(secret = %uuid, "stale vmwarden secret undefined");
        }
        Ok(n)
    }

    fn our_secret_handles(
        &self,
        conn: &Connect,
    ) -> Result<Vec<(String, Secret, String)>, HypervisorError> {
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
            if let Some(desc) = desc.filter(|d| xml::is_our_secret_description(d)) {
                let uuid = secret
                    .uuid_string()
                    .map_err(|e| self.error(conn, "Reading a secret failed", e))?;
                ours.push((uuid, secret, desc));
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
    fn counters_sum_disks_and_interfaces_and_skip_the_rest() {
        let mut c = Counters::default();
        let running = u64::from(sys::VIR_DOMAIN_RUNNING);
        for (field, v) in [
            (&b"state.state"[..], running),
            (b"state.reason", 1),
            (b"cpu.time", 5_000),
            (b"cpu.user", 7),
            (b"block.count", 2),
            (b"block.0.name", 9),
            (b"block.0.rd.bytes", 100),
            (b"block.0.wr.bytes", 20),
            (b"block.0.rd.reqs", 1_000),
            (b"block.1.rd.bytes", 3),
            (b"block.12.wr.bytes", 4),
            (b"block..rd.bytes", 1_000),
            (b"net.count", 1),
            (b"net.0.rx.bytes", 50),
            (b"net.0.tx.bytes", 5),
            (b"net.0.rx.pkts", 1_000),
        ] {
            c.add(field, v);
        }
        assert_eq!(
            c,
            Counters {
                running: true,
                cpu_time_ns: 5_000,
                block_bytes: 127,
                net_bytes: 55,
            }
        );
        for (state, running) in [
            (sys::VIR_DOMAIN_PAUSED, false),
            (sys::VIR_DOMAIN_SHUTOFF, false),
            (sys::VIR_DOMAIN_BLOCKED, true),
        ] {
            c.add(b"state.state", u64::from(state));
            assert_eq!(c.running, running, "{state}");
        }
        c.add(b"block.0.rd.bytes", u64::MAX);
        assert_eq!(c.block_bytes, u64::MAX);
    }

    #[test]
    fn lifecycle_events_map_to_reasons() {
        let ev = |e: c_uint, d: c_uint| lifecycle_kind(e as c_int, d as c_int);
        assert_eq!(ev(sys::VIR_DOMAIN_EVENT_STARTED, 0), Some(None));
        for (detail, reason) in [
            (sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, StopReason::Shutdown),
            (
                sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
                StopReason::Destroyed,
            ),
            (sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED, StopReason::Crashed),
            (sys::VIR_DOMAIN_EVENT_STOPPED_FAILED, StopReason::Failed),
            (sys::VIR_DOMAIN_EVENT_STOPPED_SAVED, StopReason::Other),
            (sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED, StopReason::Other),
        ] {
            assert_eq!(
                ev(sys::VIR_DOMAIN_EVENT_STOPPED, detail),
                Some(Some(reason))
            );
        }
        for kind in [
            sys::VIR_DOMAIN_EVENT_DEFINED,
            sys::VIR_DOMAIN_EVENT_SUSPENDED,
            sys::VIR_DOMAIN_EVENT_RESUMED,
            sys::VIR_DOMAIN_EVENT_SHUTDOWN,
            sys::VIR_DOMAIN_EVENT_CRASHED,
        ] {
            assert_eq!(ev(kind, 0), None, "{kind}");
        }
        assert_eq!(lifecycle_kind(-1, 0), None);
    }

    #[test]
    fn test_driver_stats_report_state_only() {
        // test:///default is one state per process, shared with the other tests here: look
        // only at its "test" domain, which nothing stops.
        let lv = Libvirt::new("test:///default", DomainType::Auto);
        let stats = lv.stats().unwrap();
        let test = stats.iter().find(|s| s.name == "test");
        assert_eq!(
            test,
            Some(&DomainStats {
                name: "test".to_owned(),
                vm: None,
                running: true,
                cpu_time_ns: 0,
                block_bytes: 0,
                net_bytes: 0,
            }),
            "{stats:?}"
        );
    }

    /// The next event within 5 s, skipping those about domains other than `name`'s (other
    /// tests may share test:///default).
    fn next_event(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<LifecycleEvent>,
        name: Option<&str>,
    ) -> Option<LifecycleEvent> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match rx.try_recv() {
                Ok(ev) => {
                    let about = match &ev {
                        LifecycleEvent::Started { name } | LifecycleEvent::Stopped { name, .. } => {
                            Some(name.as_str())
                        }
                        LifecycleEvent::Reconnected => None,
                    };
                    if about == name {
                        return Some(ev);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        None
    }

    /// Senders alive: the test's own plus the ones libvirt holds.
    fn wait_senders(tx: &UnboundedSender<LifecycleEvent>, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while tx.strong_count() != n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        tx.strong_count()
    }

    #[test]
    fn test_driver_events_reach_the_sink_and_are_released() {
        let lv = Libvirt::new("test:///default", DomainType::Auto);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // A sink set before any connection: set_event_sink connects and registers.
        lv.set_event_sink(tx.clone());
        assert_eq!(next_event(&mut rx, None), Some(LifecycleEvent::Reconnected));
        // Ours, the sink's, the callback's.
        assert_eq!(wait_senders(&tx, 3), 3);
        // Domains of its own: test:///default is shared by every connection of the process.
        let name = format!("events-{}", Uuid::new_v4());
        let xml = format!(
            "<domain type='test'><name>{name}</name><memory>1024</memory>\
             <os><type>hvm</type></os></domain>"
        );
        let conn = lv.connection().unwrap();
        let dom = conn.create_domain_xml(&xml, 0).unwrap();
        assert_eq!(
            next_event(&mut rx, Some(&name)),
            Some(LifecycleEvent::Started { name: name.clone() })
        );
        dom.destroy().unwrap();
        assert_eq!(
            next_event(&mut rx, Some(&name)),
            Some(LifecycleEvent::Stopped {
                name: name.clone(),
                reason: StopReason::Destroyed,
            })
        );
        let dom = conn.create_domain_xml(&xml, 0).unwrap();
        assert_eq!(
            next_event(&mut rx, Some(&name)),
            Some(LifecycleEvent::Started { name: name.clone() })
        );

        // A new sink replaces the registration; the old callback's sender is freed.
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
        lv.set_event_sink(tx2.clone());
        assert_eq!(
            next_event(&mut rx2, None),
            Some(LifecycleEvent::Reconnected)
        );
        assert_eq!(wait_senders(&tx, 1), 1);
        assert_eq!(wait_senders(&tx2, 3), 3);
        dom.destroy().unwrap();
        assert_eq!(
            next_event(&mut rx2, Some(&name)),
            Some(LifecycleEvent::Stopped {
                name: name.clone(),
                reason: StopReason::Destroyed,
            })
        );
        // The old sink hears nothing more.
        assert!(rx.try_recv().is_err());

        // Dropping the hypervisor deregisters: libvirt frees its sender.
        drop(conn);
        drop(lv);
        assert_eq!(wait_senders(&tx2, 1), 1);
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
        assert!(matches!(lv.stats(), Err(HypervisorError::Unavailable(_))));
        // A sink on an unreachable libvirtd: nothing registered, nothing blocks, and the
        // keeper lets go of the sink when the hypervisor is dropped.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        lv.set_event_sink(tx.clone());
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(rx.try_recv().is_err());
        assert_eq!(tx.strong_count(), 2);
        drop(lv);
        assert_eq!(wait_senders(&tx, 1), 1);
    }
}
