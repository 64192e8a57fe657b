//! Project keys: generation, the two labelled shares, the verifier, the two-party unlock
//! state machine and the wrapping of drive passphrases (AES-256-GCM under the project key).
//!
//! Nothing here touches the disk. The key K exists only in memory between a successful unlock
//! and `lock`, the TTL or daemon exit; the shares exist only in the response that created them
//! and, for one half, in memory while it waits for the other.

use crate::model::{ProjectName, SecretBytes, UserName};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zeroize::{Zeroize, Zeroizing};

pub mod host;

const ADMIN_LABEL: &str = "vmw-admin-";
const MEMBER_LABEL: &str = "vmw-member-";
const WRAP_VERSION: u8 = 1;

/// Errors of the key layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The share is not a vmwarden share token at all.
    #[error("Share is malformed: expected a token starting with vmw-admin- or vmw-member-")]
    Malformed,
    /// An admin share from a non-admin, or a member share from a non-member.
    #[error("The {0} share must be submitted by {1}")]
    WrongSubmitter(&'static str, &'static str),
    /// Both halves combined do not give the project's key; both were discarded.
    #[error("The shares do not match this project's key; both halves were discarded")]
    InvalidShare,
    /// The same half is already waiting.
    #[error("The {0} share is already submitted; waiting for the {1} share")]
    HalfAlreadyPending(&'static str, &'static str),
    /// One principal tried to submit both halves.
    #[error("Both halves came from {0}; the other half must come from a different person")]
    SamePrincipal(String),
    /// The project key is not in memory.
    #[error("Project {project} is locked: {waiting}")]
    Locked {
        /// The project.
        project: String,
        /// Who must submit which share.
        waiting: String,
    },
    /// A wrapped passphrase failed authentication (tampered, wrong project or wrong drive).
    #[error("Wrapped passphrase of drive {0} failed authentication; the stored value was altered")]
    Unwrap(String),
}

impl KeyError {
    /// The stable API code (also written in audit outcomes).
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Malformed => "malformed_share",
            KeyError::WrongSubmitter(..) => "wrong_submitter",
            KeyError::InvalidShare => "invalid_share",
            KeyError::HalfAlreadyPending(..) => "half_already_pending",
            KeyError::SamePrincipal(_) => "two_people_required",
            KeyError::Locked { .. } => "project_locked",
            KeyError::Unwrap(_) => "drive_secret_invalid",
        }
    }
}

/// Which half of the key a share is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Half {
    /// A, held by the creating admin.
    Admin,
    /// M = K xor A, held by the project's members.
    Member,
}

impl Half {
    fn name(self) -> &'static str {
        match self {
            Half::Admin => "admin",
            Half::Member => "member",
        }
    }
    fn other(self) -> Half {
        match self {
            Half::Admin => Half::Member,
            Half::Member => Half::Admin,
        }
    }
    fn who(self) -> &'static str {
        match self {
            Half::Admin => "an admin",
            Half::Member => "a project member",
        }
    }
}

/// A 256-bit secret: zeroized on drop, `[REDACTED]` in Debug, mlocked where allowed.
pub struct Key32(Box<[u8; 32]>);

impl Key32 {
    fn zeroed() -> Self {
        let b = Box::new([0u8; 32]);
        // mlock keeps the key out of swap; it fails without CAP_IPC_LOCK or RLIMIT_MEMLOCK
        // room, which is allowed ("where allowed"), so the error is ignored.
        // SAFETY: the pointer and length describe the boxed array; mlock only pins the pages
        // that hold it and keeps no reference to the memory.
        let _ = unsafe {
            nix::sys::mman::mlock(
                std::ptr::NonNull::new_unchecked(b.as_ptr() as *mut libc::c_void),
                32,
            )
        };
        Self(b)
    }

    /// A fresh random key.
    pub fn random() -> Self {
        let mut k = Self::zeroed();
        rand::rngs::OsRng.fill_bytes(&mut k.0[..]);
        k
    }

    fn from_slice(s: &[u8]) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        let mut k = Self::zeroed();
        k.0.copy_from_slice(s);
        Some(k)
    }

    fn xor(&self, other: &Key32) -> Key32 {
        let mut k = Self::zeroed();
        for i in 0..32 {
            k.0[i] = self.0[i] ^ other.0[i];
        }
        k
    }

    /// The raw bytes, for tests that plant a canary and then search for it.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for Key32 {
    fn drop(&mut self) {
        self.0.zeroize();
        // No munlock: mlock is per page and not counted, and another key may share this
        // page. The page stays locked until the allocator returns it, which is harmless.
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// A freshly generated key with its two shares, returned once by project creation.
#[derive(Debug)]
pub struct NewKey {
    /// K, needed to compute the verifier and wrap passphrases.
    pub key: Key32,
    /// The admin's labelled token.
    pub admin_share: SecretBytes,
    /// The members' labelled token.
    pub member_share: SecretBytes,
}

/// Generates K = A xor M and the two labelled tokens.
pub fn generate() -> NewKey {
    split(Key32::random())
}

/// Splits an existing key into a fresh pair of shares.
pub fn split(key: Key32) -> NewKey {
    let a = Key32::random();
    let m = key.xor(&a);
    NewKey {
        admin_share: token(ADMIN_LABEL, &a),
        member_share: token(MEMBER_LABEL, &m),
        key,
    }
}

fn token(label: &str, k: &Key32) -> SecretBytes {
    let mut s = Zeroizing::new(String::with_capacity(64));
    s.push_str(label);
    URL_SAFE_NO_PAD.encode_string(&k.0[..], &mut s);
    SecretBytes::new(s.as_bytes().to_vec())
}

/// Decodes a share's body: URL-safe base64 without padding, as written, but accepting any
/// value in the unused low bits of the last character. The document gives a share as
/// `[A-Za-z0-9_-]{43}`, and every string of that form is then a well-formed share (it is
/// the key check that refuses a wrong one).
const SHARE_DECODER: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

/// The pattern of a share token, as the OpenAPI document gives it.
pub const SHARE_PATTERN: &str = "^vmw-(admin|member)-[A-Za-z0-9_-]{43}$";

/// Parses a labelled share token.
pub fn parse_share(token: &[u8]) -> Result<(Half, Key32), KeyError> {
    let text = std::str::from_utf8(token)
        .map_err(|_| KeyError::Malformed)?
        .trim();
    let (half, body) = if let Some(b) = text.strip_prefix(ADMIN_LABEL) {
        (Half::Admin, b)
    } else if let Some(b) = text.strip_prefix(MEMBER_LABEL) {
        (Half::Member, b)
    } else {
        return Err(KeyError::Malformed);
    };
    let raw = Zeroizing::new(
        SHARE_DECODER
            .decode(body)
            .map_err(|_| KeyError::Malformed)?,
    );
    let key = Key32::from_slice(&raw).ok_or(KeyError::Malformed)?;
    Ok((half, key))
}

/// Rebuilds K from the two tokens (the key holders' view; the daemon only does this inside
/// the keyring after an unlock).
pub fn combine(admin_token: &[u8], member_token: &[u8]) -> Result<Key32, KeyError> {
    let (h1, a) = parse_share(admin_token)?;
    let (h2, m) = parse_share(member_token)?;
    if h1 != Half::Admin || h2 != Half::Member {
        return Err(KeyError::Malformed);
    }
    Ok(a.xor(&m))
}

/// The stored verifier: HMAC-SHA256 under K of a fixed label and the project name. It proves
/// a rebuilt K is right without revealing anything about K.
pub fn verifier(key: &Key32, project: &ProjectName) -> Vec<u8> {
    scrubbed(|| verifier_mac(key, project).finalize().into_bytes().to_vec())
}

/// Compares in constant time.
fn verify(key: &Key32, project: &ProjectName, stored: &[u8]) -> bool {
    scrubbed(|| verifier_mac(key, project).verify_slice(stored).is_ok())
}

/// Runs `f` (which builds a cipher or a MAC from K), then overwrites the stack below the
/// caller's frame. A key schedule is built on the stack and moved (AES-256's first two round
/// keys are K itself, HMAC pads K into a block): the cipher zeroizes itself when dropped, but
/// the frames it was built and moved through are dead memory that keeps those bytes until
/// something else runs as deep. Hand-written: the one crate that did this, `clear_on_drop`,
/// is unmaintained.
fn scrubbed<T>(f: impl FnOnce() -> T) -> T {
    #[inline(never)]
    fn run<T>(f: impl FnOnce() -> T) -> T {
        f()
    }
    #[inline(never)]
    fn scrub() {
        let mut below = [0u8; 32 * 1024];
        below.zeroize();
        std::hint::black_box(&below);
    }
    let out = run(f);
    scrub();
    out
}

fn verifier_mac(key: &Key32, project: &ProjectName) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0[..]).expect("any key length");
    mac.update(b"vmwarden key verifier v1\0");
    mac.update(project.as_str().as_bytes());
    mac
}

fn aad(project: &ProjectName, drive: &str) -> Vec<u8> {
    let mut a = b"vmwarden drive passphrase v1\0".to_vec();
    a.extend_from_slice(project.as_str().as_bytes());
    a.push(0);
    a.extend_from_slice(drive.as_bytes());
    a
}

/// A fresh drive passphrase: 256 random bits as base64 text (QEMU and libvirt take it as-is).
pub fn new_passphrase() -> SecretBytes {
    let raw = Key32::random();
    let mut s = Zeroizing::new(String::with_capacity(44));
    STANDARD.encode_string(&raw.0[..], &mut s);
    SecretBytes::new(s.as_bytes().to_vec())
}

/// Wraps a passphrase: version byte, 96-bit random nonce, AES-256-GCM ciphertext and tag,
/// with the project name and drive id as associated data.
pub fn wrap(key: &Key32, project: &ProjectName, drive: &str, passphrase: &SecretBytes) -> Vec<u8> {
    scrubbed(|| wrap_with(key, project, drive, passphrase))
}

fn wrap_with(key: &Key32, project: &ProjectName, drive: &str, passphrase: &SecretBytes) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(&key.0[..]).expect("32-byte key");
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: passphrase.expose(),
                aad: &aad(project, drive),
            },
        )
        .expect("AES-GCM encryption of a short buffer cannot fail");
    let mut out = Vec::with_capacity(1 + 12 + ct.len());
    out.push(WRAP_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Unwraps a passphrase into zeroizing memory; any alteration fails authentication.
pub fn unwrap(
    key: &Key32,
    project: &ProjectName,
    drive: &str,
    wrapped: &[u8],
) -> Result<SecretBytes, KeyError> {
    scrubbed(|| unwrap_with(key, project, drive, wrapped))
}

fn unwrap_with(
    key: &Key32,
    project: &ProjectName,
    drive: &str,
    wrapped: &[u8],
) -> Result<SecretBytes, KeyError> {
    let bad = || KeyError::Unwrap(drive.to_owned());
    if wrapped.len() < 1 + 12 + 16 || wrapped[0] != WRAP_VERSION {
        return Err(bad());
    }
    let cipher = Aes256Gcm::new_from_slice(&key.0[..]).expect("32-byte key");
    let pt = cipher
        .decrypt(
            Nonce::from_slice(&wrapped[1..13]),
            Payload {
                msg: &wrapped[13..],
                aad: &aad(project, drive),
            },
        )
        .map_err(|_| bad())?;
    Ok(SecretBytes::new(pt))
}

/// Who submitted what, as the keyring needs to judge it.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// The principal.
    pub name: UserName,
    /// Whether the principal is an admin.
    pub admin: bool,
    /// Whether the principal is a member of the project.
    pub member: bool,
}

/// A project's unlock state, reported by `GET /v1/projects` and the unlock answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LockStatus {
    /// Whether K is absent from memory.
    pub locked: bool,
    /// Halves still awaited (empty when unlocked).
    pub waiting_for: Vec<Half>,
    /// Halves submitted and waiting.
    pub pending: Vec<Half>,
    /// Until when (ms since the epoch) the key stays in memory, or the submitted half waits
    /// for the other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
}

enum Slot {
    Pending {
        half: Half,
        share: Key32,
        from: UserName,
        expires: Instant,
    },
    Unlocked {
        key: Key32,
        /// The key of a staged re-key, until its pair is delivered or dropped.
        next: Option<Key32>,
        until: Instant,
    },
}

/// What an unlock call changed, so the service can emit the right event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockOutcome {
    /// The first half now waits for the second.
    Pending,
    /// Both halves matched the current verifier; K is in memory.
    Unlocked,
    /// Both halves matched a staged re-key's verifier: its pair was delivered, and K' is in
    /// memory. The service promotes the re-key before applying this.
    UnlockedStaged,
    /// The project was already unlocked; nothing changed.
    AlreadyUnlocked,
}

/// The verifiers a rebuilt key is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Verifiers<'a> {
    /// The project's current verifier.
    pub current: &'a [u8],
    /// A staged re-key's verifier, if any.
    pub staged: Option<&'a [u8]>,
}

/// A keyring change that `Keyring::evaluate` computed and `Keyring::apply` makes: the
/// service records the attempt in between, so the keyring never changes unless its audit
/// row was written.
pub struct Transition {
    project: ProjectName,
    /// `None`: leave the slot as it is; `Some(None)`: clear it; `Some(Some(s))`: set it.
    change: Option<Option<Slot>>,
    /// What the caller is told.
    pub outcome: Result<UnlockOutcome, KeyError>,
}

/// What a transition leaves in the keyring, for sealing it to the fleet's hosts.
#[derive(Debug)]
pub enum Sealing<'a> {
    /// Nothing changes.
    Keep,
    /// The project's slot empties (both halves discarded).
    Clear,
    /// A half now waits: seal it, with who sent it.
    Pending {
        /// Which half.
        half: Half,
        /// The half itself.
        share: &'a Key32,
        /// Its submitter.
        from: &'a UserName,
    },
    /// K was rebuilt and verified: seal it.
    Key(&'a Key32),
}

impl Transition {
    /// What this transition leaves in the keyring.
    pub fn sealing(&self) -> Sealing<'_> {
        match &self.change {
            None => Sealing::Keep,
            Some(None) => Sealing::Clear,
            Some(Some(Slot::Pending {
                half, share, from, ..
            })) => Sealing::Pending {
                half: *half,
                share,
                from,
            },
            Some(Some(Slot::Unlocked { key, .. })) => Sealing::Key(key),
        }
    }
}

/// A project's key state as its envelopes give it (fleet), opened by this host.
#[derive(Debug)]
pub enum Restored {
    /// No envelope of this host: locked.
    Locked,
    /// One half waits.
    Pending {
        /// Which half.
        half: Half,
        /// The half.
        share: Key32,
        /// Who submitted it.
        from: UserName,
        /// How long it still waits.
        left: Duration,
    },
    /// K, until the envelope expires.
    Unlocked {
        /// K.
        key: Key32,
        /// How long it still may be used.
        left: Duration,
    },
}

impl fmt::Debug for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transition")
            .field("project", &self.project)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

/// In-memory key state of every project. Locked is the absence of an entry, so a restart
/// (an empty map) leaves every project locked.
#[derive(Default)]
pub struct Keyring {
    slots: Mutex<HashMap<ProjectName, Slot>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keyring([REDACTED])")
    }
}

fn locked_error(project: &ProjectName, slot: Option<&Slot>) -> KeyError {
    let waiting = match slot {
        Some(Slot::Pending { half, .. }) => format!(
            "the {} share is in; {} must submit the {} share",
            half.name(),
            half.other().who(),
            half.other().name()
        ),
        _ => "an admin must submit the admin share and a project member the member share".into(),
    };
    KeyError::Locked {
        project: project.to_string(),
        waiting,
    }
}

impl Keyring {
    /// An empty keyring: every project locked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops expired pending halves and keys (zeroizing them).
    fn expire(map: &mut HashMap<ProjectName, Slot>, now: Instant) {
        map.retain(|_, s| match s {
            Slot::Pending { expires, .. } => *expires > now,
            Slot::Unlocked { until, .. } => *until > now,
        });
    }

    /// Zeroizes whatever has expired; the daemon calls it periodically so that memory is
    /// cleared on time even when nobody asks.
    /// Returns the projects whose unlocked key expired.
    pub fn sweep(&self, now: Instant) -> Vec<ProjectName> {
        let mut map = self.slots.lock().unwrap();
        let expired = map
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Unlocked { until, .. } if *until <= now))
            .map(|(p, _)| p.clone())
            .collect();
        Self::expire(&mut map, now);
        expired
    }

    /// The project's unlock status.
    pub fn status(&self, project: &ProjectName, now: Instant) -> LockStatus {
        let mut map = self.slots.lock().unwrap();
        Self::expire(&mut map, now);
        // The slots count in monotonic time; callers read wall-clock times.
        let wall = |at: Instant| {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as i64;
            Some(ms + at.saturating_duration_since(now).as_millis() as i64)
        };
        match map.get(project) {
            None => LockStatus {
                locked: true,
                waiting_for: vec![Half::Admin, Half::Member],
                pending: vec![],
                until_ms: None,
            },
            Some(Slot::Pending { half, expires, .. }) => LockStatus {
                locked: true,
                waiting_for: vec![half.other()],
                pending: vec![*half],
                until_ms: wall(*expires),
            },
            Some(Slot::Unlocked { until, .. }) => LockStatus {
                locked: false,
                waiting_for: vec![],
                pending: vec![],
                until_ms: wall(*until),
            },
        }
    }

    /// Judges one half without changing anything: the caller records the attempt, then
    /// `apply`s the result. Calls for one project must not interleave (the service holds a
    /// per-project lock from here to `apply`).
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate(
        &self,
        project: &ProjectName,
        verifiers: Verifiers<'_>,
        token: &[u8],
        who: &Submitter,
        window: Duration,
        ttl: Duration,
        now: Instant,
    ) -> Transition {
        let outcome = |o| Transition {
            project: project.clone(),
            change: None,
            outcome: o,
        };
        let (half, share) = match parse_share(token) {
            Ok(x) => x,
            Err(e) => return outcome(Err(e)),
        };
        match half {
            Half::Admin if !who.admin => {
                return outcome(Err(KeyError::WrongSubmitter("admin", "an admin")))
            }
            Half::Member if !who.member => {
                return outcome(Err(KeyError::WrongSubmitter("member", "a project member")))
            }
            _ => {}
        }
        let mut map = self.slots.lock().unwrap();
        Self::expire(&mut map, now);
        let set = |slot: Option<Slot>, o| Transition {
            project: project.clone(),
            change: Some(slot),
            outcome: o,
        };
        match map.get(project) {
            None => set(
                Some(Slot::Pending {
                    half,
                    share,
                    from: who.name.clone(),
                    expires: now + window,
                }),
                Ok(UnlockOutcome::Pending),
            ),
            Some(Slot::Unlocked { .. }) => outcome(Ok(UnlockOutcome::AlreadyUnlocked)),
            Some(Slot::Pending {
                half: h,
                share: first,
                from,
                ..
            }) => {
                if *h == half {
                    return outcome(Err(KeyError::HalfAlreadyPending(
                        h.name(),
                        h.other().name(),
                    )));
                }
                if *from == who.name {
                    return outcome(Err(KeyError::SamePrincipal(from.to_string())));
                }
                let key = first.xor(&share);
                // `share` drops here, zeroized; on mismatch `key` drops too, and the waiting
                // half is discarded with it.
                let matched = if verify(&key, project, verifiers.current) {
                    UnlockOutcome::Unlocked
                } else if verifiers.staged.is_some_and(|v| verify(&key, project, v)) {
                    UnlockOutcome::UnlockedStaged
                } else {
                    return set(None, Err(KeyError::InvalidShare));
                };
                set(
                    Some(Slot::Unlocked {
                        key,
                        next: None,
                        until: now + ttl,
                    }),
                    Ok(matched),
                )
            }
        }
    }

    /// Makes an evaluated change.
    pub fn apply(&self, t: Transition) -> Result<UnlockOutcome, KeyError> {
        let Transition {
            project,
            change,
            outcome,
        } = t;
        let mut map = self.slots.lock().unwrap();
        match change {
            None => {}
            Some(None) => {
                map.remove(&project);
            }
            Some(Some(slot)) => {
                map.insert(project, slot);
            }
        }
        outcome
    }

    /// Replaces a project's slot by what its envelopes say. A staged K' survives when K is
    /// the same (a re-key in flight on this agent).
    pub fn restore(&self, project: &ProjectName, r: Restored, now: Instant) {
        let mut map = self.slots.lock().unwrap();
        match r {
            Restored::Locked => {
                map.remove(project);
            }
            Restored::Pending {
                half,
                share,
                from,
                left,
            } => {
                map.insert(
                    project.clone(),
                    Slot::Pending {
                        half,
                        share,
                        from,
                        expires: now + left,
                    },
                );
            }
            Restored::Unlocked { key, left } => {
                if let Some(Slot::Unlocked {
                    key: held, until, ..
                }) = map.get_mut(project)
                {
                    if held.0[..] == key.0[..] {
                        *until = now + left;
                        return;
                    }
                }
                map.insert(
                    project.clone(),
                    Slot::Unlocked {
                        key,
                        next: None,
                        until: now + left,
                    },
                );
            }
        }
    }

    /// Forgets every project's state (zeroizing it): it is opened again from the envelopes
    /// when next needed.
    pub fn forget_all(&self) {
        self.slots.lock().unwrap().clear();
    }

    /// Forgets K, a staged K' and any pending half at once. Returns whether anything was
    /// held.
    pub fn lock(&self, project: &ProjectName) -> bool {
        self.slots.lock().unwrap().remove(project).is_some()
    }

    /// Runs `f` with K, or explains who must submit which share.
    pub fn with_key<T>(
        &self,
        project: &ProjectName,
        now: Instant,
        f: impl FnOnce(&Key32) -> T,
    ) -> Result<T, KeyError> {
        self.with_keys(project, now, |k, _| f(k))
    }

    /// Runs `f` with K and a staged K' (if any), or explains who must submit which share.
    pub fn with_keys<T>(
        &self,
        project: &ProjectName,
        now: Instant,
        f: impl FnOnce(&Key32, Option<&Key32>) -> T,
    ) -> Result<T, KeyError> {
        let mut map = self.slots.lock().unwrap();
        Self::expire(&mut map, now);
        match map.get(project) {
            Some(Slot::Unlocked { key, next, .. }) => Ok(f(key, next.as_ref())),
            other => Err(locked_error(project, other)),
        }
    }

    /// Holds K' of a staged re-key beside K (the project must be unlocked).
    pub fn stage(&self, project: &ProjectName, key: Key32, now: Instant) -> Result<(), KeyError> {
        let mut map = self.slots.lock().unwrap();
        Self::expire(&mut map, now);
        match map.get_mut(project) {
            Some(Slot::Unlocked { next, .. }) => {
                *next = Some(key);
                Ok(())
            }
            other => Err(locked_error(project, other.map(|s| &*s))),
        }
    }

    /// Makes the staged K' the key (its pair was delivered); K is zeroized. Nothing happens
    /// when nothing is staged (the project locked meanwhile).
    pub fn promote(&self, project: &ProjectName) {
        if let Some(Slot::Unlocked { key, next, .. }) = self.slots.lock().unwrap().get_mut(project)
        {
            if let Some(n) = next.take() {
                *key = n;
            }
        }
    }

    /// Forgets a staged K' (its pair was never delivered).
    pub fn unstage(&self, project: &ProjectName) {
        if let Some(Slot::Unlocked { next, .. }) = self.slots.lock().unwrap().get_mut(project) {
            *next = None;
        }
    }

    /// Copies K out for a re-key (the caller drops it, zeroized).
    pub fn clone_key(&self, project: &ProjectName, now: Instant) -> Result<Key32, KeyError> {
        self.with_key(project, now, |k| {
            Key32::from_slice(&k.0[..]).expect("32 bytes")
        })
    }
}

#[cfg(test)]
mod tests;
