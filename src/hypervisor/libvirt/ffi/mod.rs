//! Every `unsafe` block of the libvirt module: what the `virt` crate does not wrap safely
//! (domain events, bulk statistics, detach by alias, comparing connections), each wrapped
//! once here with its SAFETY argument, so the rest of the module is safe Rust.

use super::*;

pub(super) mod events;
pub(super) mod stats;

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

pub(super) fn same_connection(a: &Connect, b: &Connect) -> bool {
    // SAFETY: `as_ptr` only reads the wrapped pointer; nothing is dereferenced.
    unsafe { a.as_ptr() == b.as_ptr() }
}

/// Asks libvirt to unplug the device `alias` of `dom` without waiting for the guest.
pub(super) fn detach_device_alias(dom: &Domain, alias: &CStr) -> Result<(), VirtError> {
    // SAFETY: `dom` owns a reference to a valid virDomainPtr for the whole call, `alias` is a
    // NUL-terminated string that outlives it, and libvirt copies what it keeps.
    let rc = unsafe {
        sys::virDomainDetachDeviceAlias(dom.as_ptr(), alias.as_ptr(), sys::VIR_DOMAIN_AFFECT_LIVE)
    };
    if rc < 0 {
        return Err(VirtError::last_error());
    }
    Ok(())
}
