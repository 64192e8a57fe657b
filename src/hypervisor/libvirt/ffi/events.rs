//! Domain lifecycle events: a C callback that forwards to a channel, registered and
//! deregistered per connection.

use super::*;

/// The callback signature libvirt uses for `VIR_DOMAIN_EVENT_ID_LIFECYCLE`.
pub(in crate::hypervisor::libvirt) type LifecycleCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;

/// The generic signature `virConnectDomainEventRegisterAny` takes for every event id.
pub(in crate::hypervisor::libvirt) type GenericCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// The lifecycle change an (event, detail) pair means, without the domain name; `None` for
/// kinds vmwarden does not follow (defined, suspended, resumed, ...). `CRASHED` is ignored:
/// with `on_crash=destroy` a crash is followed by `STOPPED`.
pub(in crate::hypervisor::libvirt) fn lifecycle_kind(
    event: c_int,
    detail: c_int,
) -> Option<Option<StopReason>> {
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

pub(in crate::hypervisor::libvirt) fn lifecycle_event(
    name: String,
    kind: Option<StopReason>,
) -> LifecycleEvent {
    match kind {
        None => LifecycleEvent::Started { name },
        Some(reason) => LifecycleEvent::Stopped { name, reason },
    }
}

/// Runs on the libvirt event loop thread for every lifecycle event of the connection.
pub(in crate::hypervisor::libvirt) unsafe extern "C" fn on_lifecycle(
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
pub(in crate::hypervisor::libvirt) unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from `Box::into_raw` in `register_lifecycle`, and libvirt
        // calls this once, after which it never passes the pointer again.
        drop(unsafe { Box::from_raw(opaque.cast::<UnboundedSender<LifecycleEvent>>()) });
    }
}

/// Registers [`on_lifecycle`] for every domain of `conn`, sending to a clone of `tx` that
/// libvirt owns from now on. Returns the callback id.
pub(in crate::hypervisor::libvirt) fn register_lifecycle(
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
pub(in crate::hypervisor::libvirt) fn deregister_lifecycle(conn: &Connect, id: c_int) {
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
