//! Host identity and envelopes (DESIGN section 7, "Fleet unlock"): each agent of a fleet has
//! an X25519 key pair; a pending half, or a project's rebuilt key, is sealed to every enrolled
//! host's public key in the age format, so the store alone never yields a key and only an
//! enrolled host's private key opens what it holds.
//!
//! The private key lives in `state_dir/host-key` (0600, created once) and in memory inside
//! `age`'s identity type, whose X25519 secret zeroizes on drop. An envelope's plaintext binds
//! the project and the kind of secret, so an envelope moved to another project or slot in the
//! store does not open as anything.

use super::Key32;
use crate::model::ProjectName;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;
use zeroize::Zeroizing;

/// What an envelope holds (its `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sealed {
    /// A pending admin half.
    AdminHalf,
    /// A pending member half.
    MemberHalf,
    /// The project's key, rebuilt and verified.
    Key,
}

impl Sealed {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Sealed::AdminHalf => "admin",
            Sealed::MemberHalf => "member",
            Sealed::Key => "key",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Sealed::AdminHalf),
            "member" => Some(Sealed::MemberHalf),
            "key" => Some(Sealed::Key),
            _ => None,
        }
    }
}

/// A host's public key as published in its host row (an age recipient, `age1...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPublic(String);

impl HostPublic {
    /// Parses a published key.
    pub fn parse(s: &str) -> Option<Self> {
        age::x25519::Recipient::from_str(s)
            .ok()
            .map(|_| Self(s.to_owned()))
    }

    /// The published text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What an operator compares before enrolling: `SHA256:` and the unpadded base64 of the
    /// SHA-256 of the published key (as OpenSSH prints host keys).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }
}

/// The fingerprint of a published key's text.
pub fn fingerprint(public: &str) -> String {
    format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(Sha256::digest(public.as_bytes()))
    )
}

/// This host's identity: the private key, in memory only for as long as the agent runs.
pub struct HostKey {
    secret: age::x25519::Identity,
    public: HostPublic,
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKey")
            .field("public", &self.public.0)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// Why the host key cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// The file could not be read or written.
    #[error("Host key {0}: {1}")]
    Io(String, std::io::Error),
    /// The file is not an age X25519 identity.
    #[error("Host key {0} is not an age X25519 identity")]
    Malformed(String),
    /// Others may read the file.
    #[error("Host key {0} is readable by others (mode {1:o}); it must be 0600")]
    Exposed(String, u32),
}

impl HostKey {
    /// A fresh identity (tests; the daemon keeps one in its state folder).
    pub fn generate() -> Self {
        let secret = age::x25519::Identity::generate();
        let public = HostPublic(secret.to_public().to_string());
        Self { secret, public }
    }

    /// Reads `path`, or creates it (0600, exclusively) at first start.
    pub fn load_or_create(path: &Path) -> Result<Self, HostKeyError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let shown = path.display().to_string();
        let io = |e| HostKeyError::Io(shown.clone(), e);
        match std::fs::File::open(path) {
            Ok(mut f) => {
                let mode = f.metadata().map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(HostKeyError::Exposed(shown, mode));
                }
                let mut text = Zeroizing::new(String::new());
                f.read_to_string(&mut text).map_err(io)?;
                let secret = age::x25519::Identity::from_str(text.trim())
                    .map_err(|_| HostKeyError::Malformed(shown.clone()))?;
                let public = HostPublic(secret.to_public().to_string());
                Ok(Self { secret, public })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                let text =
                    age::secrecy::ExposeSecret::expose_secret(&key.secret.to_string()).to_owned();
                let text = Zeroizing::new(text);
                f.write_all(text.as_bytes()).map_err(io)?;
                f.write_all(b"\n").map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public half, as published.
    pub fn public(&self) -> &HostPublic {
        &self.public
    }

    /// Opens an envelope sealed to this host for `project`, `kind` and expiry `expires_ms`
    /// (as its row says). Anything else (another host's envelope, another project's or slot's,
    /// an expiry changed in the store, an altered body) is `None`.
    pub fn open(
        &self,
        project: &ProjectName,
        kind: Sealed,
        expires_ms: i64,
        body: &[u8],
    ) -> Option<Key32> {
        let plain = Zeroizing::new(self.decrypt(body)?);
        let head = header(project, kind, expires_ms);
        let rest = plain.strip_prefix(head.as_slice())?;
        Key32::from_slice(rest)
    }

    fn decrypt(&self, body: &[u8]) -> Option<Vec<u8>> {
        let d = age::Decryptor::new_buffered(body).ok()?;
        let mut r = d
            .decrypt(std::iter::once(&self.secret as &dyn age::Identity))
            .ok()?;
        let mut out = Vec::with_capacity(128);
        r.read_to_end(&mut out).ok()?;
        Some(out)
    }
}

/// What the plaintext binds besides the secret: the project, the slot and the expiry, so a
/// writer of the store can neither move an envelope nor extend its life.
fn header(project: &ProjectName, kind: Sealed, expires_ms: i64) -> Vec<u8> {
    let mut h = b"vmwarden envelope v1\0".to_vec();
    h.extend_from_slice(project.as_str().as_bytes());
    h.push(0);
    h.extend_from_slice(kind.as_str().as_bytes());
    h.push(0);
    h.extend_from_slice(&expires_ms.to_be_bytes());
    h
}

/// Seals `secret` for `project` and `kind` to one host (one envelope per host, so that
/// un-enrolling a host is deleting its rows). Cannot fail: a `HostPublic` is a parsed X25519
/// recipient, and sealing to one writes into memory.
/// The buffers age fills while encrypting are freed without being wiped; the process's
/// allocator (`zeroizing-alloc`) zeroes every freed block, so no copy outlives the call.
pub fn seal(
    to: &HostPublic,
    project: &ProjectName,
    kind: Sealed,
    expires_ms: i64,
    secret: &Key32,
) -> Vec<u8> {
    let recipient =
        age::x25519::Recipient::from_str(&to.0).expect("a HostPublic is a parsed recipient");
    let mut plain = Zeroizing::new(header(project, kind, expires_ms));
    plain.extend_from_slice(&secret.0[..]);
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .expect("one X25519 recipient");
    let mut out = Vec::with_capacity(plain.len() + 256);
    let mut w = enc.wrap_output(&mut out).expect("writing to memory");
    w.write_all(&plain).expect("writing to memory");
    w.finish().expect("writing to memory");
    out
}
