//! What libvirt errors mean to vmwarden: a lost connection, a missing domain, a domain
//! already running, and the short message an error keeps.

use super::*;

/// Longest libvirt message kept in an error (QEMU's stderr can be long).
pub(super) const MAX_MESSAGE: usize = 400;

pub(super) fn code_is(e: &VirtError, n: ErrorNumber) -> bool {
    e.code().is_known_and(|c| c == n)
}

/// libvirt's message, shortened: when QEMU refused to start, libvirt relays QEMU's stderr
/// (timestamps, the whole offending option in JSON) and the cause is at the very end.
pub(super) fn message(e: &VirtError) -> String {
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

pub(super) fn shorten(raw: &str) -> String {
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

pub(super) fn is_no_domain(e: &VirtError) -> bool {
    code_is(e, ErrorNumber::NoDomain)
}

/// The domain exists but is not running: for a transient domain, one on its way out.
pub(super) fn is_not_running(e: &VirtError) -> bool {
    code_is(e, ErrorNumber::OperationInvalid) && e.message().contains("not running")
}

pub(super) fn is_already_running(e: &VirtError) -> bool {
    let m = e.message();
    (code_is(e, ErrorNumber::OperationFailed) || code_is(e, ErrorNumber::OperationInvalid))
        && (m.contains("already exists") || m.contains("already active"))
}

/// Errors that say the transport, not the request, failed.
pub(super) fn is_transport_error(e: &VirtError) -> bool {
    code_is(e, ErrorNumber::NoConnect)
        || (e.domain().is_known_and(|d| d == ErrorDomain::Rpc)
            && (code_is(e, ErrorNumber::SystemError)
                || (code_is(e, ErrorNumber::InternalError)
                    && e.message().contains("client socket is closed"))))
}
