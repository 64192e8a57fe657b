//! Share tokens: any bytes either decode into a labelled 32-byte half or are refused as
//! malformed, never panic; every string of the documented form (`SHARE_PATTERN`) decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmwarden::keys::{combine, parse_share};

/// `^vmw-(admin|member)-[A-Za-z0-9_-]{43}$`, by hand.
fn documented(s: &[u8]) -> bool {
    let body = s
        .strip_prefix(b"vmw-admin-")
        .or_else(|| s.strip_prefix(b"vmw-member-"));
    body.is_some_and(|b| {
        b.len() == 43
            && b
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
    })
}

fuzz_target!(|data: &[u8]| {
    match parse_share(data) {
        Ok((_, key)) => {
            assert_eq!(key.expose().len(), 32);
            // Two halves of the same shape rebuild a key or are refused, never panic.
            let _ = combine(data, data);
        }
        Err(_) => assert!(!documented(data), "a documented token was refused"),
    }
});
