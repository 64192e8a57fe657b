//! Wrapped passphrases fail closed: flipping any bits of a wrapped value, or unwrapping bytes
//! that were never wrapped, always fails authentication and never panics. Input: bit
//! positions to flip (two bytes each); no position leaves the value intact, which must open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vmwarden::keys::{new_passphrase, unwrap, wrap, Key32};
use vmwarden::model::{ProjectName, SecretBytes};

struct Fixed {
    key: Key32,
    project: ProjectName,
    pass: SecretBytes,
    wrapped: Vec<u8>,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let key = Key32::random();
        let project = ProjectName::parse("fuzz").unwrap();
        let pass = new_passphrase();
        let wrapped = wrap(&key, &project, "drive", &pass);
        Fixed {
            key,
            project,
            pass,
            wrapped,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixed();
    // Bytes that were never wrapped.
    assert!(unwrap(&f.key, &f.project, "drive", data).is_err() || data == f.wrapped.as_slice());
    let mut w = f.wrapped.clone();
    let bits = w.len() * 8;
    for pair in data.chunks_exact(2) {
        let at = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % bits;
        w[at / 8] ^= 1 << (at % 8);
    }
    match unwrap(&f.key, &f.project, "drive", &w) {
        Ok(p) => {
            assert_eq!(w, f.wrapped, "an altered value opened");
            assert_eq!(p, f.pass);
        }
        Err(_) => assert_ne!(w, f.wrapped, "the intact value did not open"),
    }
});
