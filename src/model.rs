//! Plain data shared by every layer: validated names, ids, roles and policies.
//!
//! Names are checked once, here, when they enter the system; every other layer can then
//! trust them (a VM name is a label, never part of a path or of hand-built XML).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// Why a name was refused; the API turns it into a 400 (`invalid_parameter` in a path,
/// `invalid_body` in a body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid {kind} name {shown}: must match {pattern}")]
pub struct NameError {
    /// Which kind of name was refused (user, team, project, VM, drive).
    pub kind: &'static str,
    /// The refused value, debug-escaped so that control characters stay visible.
    pub shown: String,
    /// The pattern the name must match.
    pub pattern: &'static str,
}

fn check_name(
    kind: &'static str,
    pattern: &'static str,
    value: &str,
    max: usize,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
) -> Result<(), NameError> {
    let b = value.as_bytes();
    let ok = !b.is_empty() && b.len() <= max && first(b[0]) && b[1..].iter().all(|c| rest(*c));
    if ok {
        Ok(())
    } else {
        let mut shown = format!("{value:?}");
        if shown.len() > 80 {
            // At a character boundary: a name may hold any UTF-8 (the fuzzer found one that
            // split a character here).
            let cut = (0..=77)
                .rev()
                .find(|i| shown.is_char_boundary(*i))
                .unwrap_or(0);
            shown.truncate(cut);
            shown.push_str("...");
        }
        Err(NameError {
            kind,
            shown,
            pattern,
        })
    }
}

fn unix_first(c: u8) -> bool {
    c.is_ascii_lowercase() || c == b'_'
}
fn unix_rest(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-'
}
fn label_first(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}
fn label_rest(c: u8) -> bool {
    label_first(c) || c == b'-'
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $pattern:literal, $max:expr, $first:ident, $rest:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            /// The pattern every value of this type matches.
            pub const PATTERN: &'static str = $pattern;

            /// Validates `value` against the pattern.
            pub fn parse(value: &str) -> Result<Self, NameError> {
                check_name($kind, $pattern, value, $max, $first, $rest)?;
                Ok(Self(value.to_owned()))
            }

            /// The validated name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                name_schema(Self::PATTERN, $max, concat!("A ", $kind, " name"))
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}

/// The OpenAPI schema of a name: a string matching its pattern.
fn name_schema(
    pattern: &str,
    max: usize,
    description: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(max))
        .description(Some(description))
        .into()
}

name_type!(
    /// A Unix-style user name, the principal of every request.
    UserName, "user", "^[a-z_][a-z0-9_-]{0,31}$", 32, unix_first, unix_rest
);
/// The user name the audit log uses for the daemon itself; nobody may register it.
pub const DAEMON_USER: &str = "vmwardend";

impl UserName {
    /// The daemon's own name in the audit log.
    pub fn daemon() -> Self {
        Self(DAEMON_USER.to_owned())
    }

    /// Whether this is the reserved name of the daemon.
    pub fn is_reserved(&self) -> bool {
        self.0 == DAEMON_USER
    }
}

name_type!(
    /// A team name; sharing never crosses teams.
    TeamName, "team", "^[a-z_][a-z0-9_-]{0,31}$", 32, unix_first, unix_rest
);
name_type!(
    /// A project name; projects gate every access to their VMs and drives.
    ProjectName, "project", "^[a-z0-9][a-z0-9-]{0,62}$", 63, label_first, label_rest
);
name_type!(
    /// A VM label; files and domains are named by id, never by this.
    VmName, "VM", "^[a-z0-9][a-z0-9-]{0,62}$", 63, label_first, label_rest
);
name_type!(
    /// A drive label; the image file is named by the drive id.
    DriveName, "drive", "^[a-z0-9][a-z0-9-]{0,62}$", 63, label_first, label_rest
);

fn host_first(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}
fn host_rest(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
}
name_type!(
    /// A fleet host's name (`[fleet] host`).
    HostName, "host", "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", 63, host_first, host_rest
);

name_type!(
    /// How a request names a VM or a drive: its id, a unique prefix of its id, or its name,
    /// resolved among the objects the caller may see (DESIGN 1). Every id and name matches
    /// the same pattern (ids are lowercase hex and hyphens).
    ObjectRef, "VM or drive", "^[a-z0-9][a-z0-9-]{0,62}$", 63, label_first, label_rest
);

impl ObjectRef {
    /// The id this names outright, if it is a whole id.
    pub fn as_uuid(&self) -> Option<Uuid> {
        (self.0.len() == 36)
            .then(|| Uuid::parse_str(&self.0).ok())
            .flatten()
    }

    /// Whether `id` (hyphenated) starts with this reference.
    pub fn prefixes(&self, id: &str) -> bool {
        id.starts_with(&self.0)
    }

    /// A reference to an id.
    pub fn id(id: Uuid) -> Self {
        Self(id.hyphenated().to_string())
    }
}

/// A VM id; also the libvirt domain name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VmId(pub Uuid);

/// A drive id, as the API shows it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DriveId(pub Uuid);

/// The name of a drive's image file: random, distinct from the drive id and never in an API
/// answer, so that the process table (QEMU's argv) and the drives folder cannot be linked to
/// a drive by anyone who may not see it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StorageId(pub Uuid);

macro_rules! id_type {
    ($ty:ident) => {
        impl $ty {
            /// A fresh random id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{
                    KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type,
                };
                ObjectBuilder::new()
                    .schema_type(SchemaType::new(Type::String))
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .into()
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}
id_type!(VmId);
id_type!(DriveId);
id_type!(StorageId);

/// A role on a VM (DESIGN 1, "Roles on a VM").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Full control and direct drive access.
    Owner,
    /// May see, start, stop and keep alive; never sees drives.
    User,
}

impl Role {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::User => "user",
        }
    }
}

/// Lifecycle state of a VM as vmwarden reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// No domain exists.
    Stopped,
    /// A start is in progress: secrets defined, domain being created.
    Starting,
    /// A domain exists and runs (or is paused by libvirt).
    Running,
    /// A stop is in progress: ACPI sent, destroy after the timeout.
    Stopping,
    /// Shown, never stored: the fleet host holding the VM is down, so nobody knows.
    Unknown,
}

impl VmState {
    /// Every state, in the order lists show them.
    pub const ALL: [VmState; 5] = [
        VmState::Stopped,
        VmState::Starting,
        VmState::Running,
        VmState::Stopping,
        VmState::Unknown,
    ];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Unknown => "unknown",
        }
    }

    /// Reads the stored spelling; anything unknown is `Stopped` (the safe reading: the next
    /// reconcile asks libvirt).
    pub fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s && *v != VmState::Unknown)
            .unwrap_or(VmState::Stopped)
    }

    /// A start or stop is in flight.
    pub fn is_transitional(self) -> bool {
        matches!(self, VmState::Starting | VmState::Stopping)
    }
}

/// A VM's idle policy; absent fields inherit the host defaults from `[idle]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdlePolicy {
    /// Whether idle shutdown applies to this VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long the VM must be idle before it is shut down (`30m`, `2h`), within the host's
    /// bounds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_api_duration"
    )]
    #[schema(value_type = Option<String>, pattern = "^[0-9]{1,6}(ms|d|h|m|s)( [0-9]{1,6}(ms|d|h|m|s)){0,4}$", example = "2h")]
    pub after: Option<Duration>,
    /// CPU use (percent of one vCPU-second per second, summed over vCPUs) under which the VM counts as idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 10000.0)]
    pub cpu_percent: Option<f64>,
}

impl IdlePolicy {
    /// Reads a policy as the store keeps it. Rows written before the API had its own
    /// duration grammar hold humantime spellings ("1day"); they are read with humantime, so
    /// no stored policy is lost.
    pub fn from_stored(json: &str) -> Self {
        #[derive(Deserialize)]
        struct Legacy {
            #[serde(default)]
            enabled: Option<bool>,
            #[serde(default, with = "opt_duration")]
            after: Option<Duration>,
            #[serde(default)]
            cpu_percent: Option<f64>,
        }
        serde_json::from_str(json)
            .or_else(|_| {
                serde_json::from_str::<Legacy>(json).map(|l| IdlePolicy {
                    enabled: l.enabled,
                    after: l.after,
                    cpu_percent: l.cpu_percent,
                })
            })
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unreadable stored idle policy; host defaults apply");
                IdlePolicy::default()
            })
    }
}

/// A registered principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// The Unix user name.
    pub name: UserName,
    /// The one team the user belongs to.
    pub team: TeamName,
    /// Registry-level admin flag (config `access.admins` also grants admin).
    pub admin: bool,
}

/// A VM configuration with its roles, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    /// Stable id, also the libvirt domain name.
    pub id: VmId,
    /// Human label, unique per project.
    pub name: VmName,
    /// Project whose membership gates access.
    pub project: ProjectName,
    /// The creator's team; sharing stays inside it.
    pub team: TeamName,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Owners in grant order (the creator first).
    pub owners: Vec<UserName>,
    /// Users with launch-only access.
    pub users: Vec<UserName>,
    /// Attached drives in attach order.
    pub drives: Vec<DriveId>,
    /// Per-VM idle overrides.
    pub idle: IdlePolicy,
    /// Last known state.
    pub state: VmState,
    /// Why the VM last changed state (start, stop, idle, admin, crashed, ...).
    pub state_reason: String,
    /// The fleet host that holds the VM while it is not stopped (its agent alone acts on it).
    pub host: Option<String>,
}

impl Vm {
    /// The caller's role on this VM, if any.
    pub fn role_of(&self, user: &UserName) -> Option<Role> {
        if self.owners.contains(user) {
            Some(Role::Owner)
        } else if self.users.contains(user) {
            Some(Role::User)
        } else {
            None
        }
    }
}

/// A LUKS-encrypted qcow2 image, as stored (the wrapped passphrase stays in the store).
#[derive(Debug, Clone, PartialEq)]
pub struct Drive {
    /// Stable id.
    pub id: DriveId,
    /// The image file's name (`<storage>.qcow2`).
    pub storage: StorageId,
    /// Human label.
    pub name: DriveName,
    /// Project whose key wraps the passphrase.
    pub project: ProjectName,
    /// Virtual size.
    pub size_mib: u64,
    /// Users with direct access to the drive.
    pub owners: Vec<UserName>,
    /// The VM the drive is attached to, if any.
    pub attached_to: Option<VmId>,
}

/// Parses durations such as "10m", "2h", "500ms", "1h 30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("Bad duration {s:?}: {e}"))
}

/// Formats a duration the way the config writes it.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// serde adapter for required durations.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes "10m".
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads "10m".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// The pattern of a duration in the API: up to five `<number><unit>` parts separated by
/// single spaces, units `d`, `h`, `m`, `s` and `ms`.
pub const API_DURATION_PATTERN: &str = "^[0-9]{1,6}(ms|d|h|m|s)( [0-9]{1,6}(ms|d|h|m|s)){0,4}$";

/// Parses a duration in the API's grammar ([`API_DURATION_PATTERN`]). Written by hand because
/// humantime's grammar is wider than a schema pattern can say ("1 day", "2hours"): the API
/// takes exactly the language its document names, so a document-valid duration is never
/// refused as malformed and anything else always is. Six digits per part cannot overflow.
pub fn parse_api_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "Bad duration {:?}: expected parts like 30m or 1h 30m (units d, h, m, s, ms)",
            s.chars().take(40).collect::<String>()
        )
    };
    let parts: Vec<&str> = s.split(' ').collect();
    if parts.len() > 5 {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    for part in parts {
        let digits = part.bytes().take_while(u8::is_ascii_digit).count();
        let (n, unit) = part.split_at(digits);
        if n.is_empty() || n.len() > 6 {
            return Err(bad());
        }
        let n: u64 = n.parse().map_err(|_| bad())?;
        total += match unit {
            "d" => Duration::from_secs(n * 86_400),
            "h" => Duration::from_secs(n * 3_600),
            "m" => Duration::from_secs(n * 60),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return Err(bad()),
        };
    }
    Ok(total)
}

/// Writes a duration in the API's grammar: `1d 2h`, `30m`, `0s` (below a millisecond is
/// dropped).
pub fn format_api_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
        (u64::from(d.subsec_millis()), "ms"),
    ];
    let out: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if out.is_empty() {
        "0s".into()
    } else {
        out.join(" ")
    }
}

/// serde adapter for durations in API bodies ([`API_DURATION_PATTERN`]).
pub mod api_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes "1h 30m".
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_api_duration(*d))
    }

    /// Reads "1h 30m".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_api_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// serde adapter for optional durations in API bodies.
pub mod opt_api_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes "10m" or nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_api_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads "10m" (or null).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| super::parse_api_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// serde adapter for optional durations.
pub mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes "10m" or nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads "10m".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_durations_take_exactly_the_documented_grammar() {
        for (text, secs) in [
            ("30m", 1800.0),
            ("1h 30m", 5400.0),
            ("1d", 86400.0),
            ("250ms", 0.25),
            ("999999d", 999999.0 * 86400.0),
            (
                "1d 25h 61m 61s 1001ms",
                86400.0 + 90000.0 + 3660.0 + 61.0 + 1.001,
            ),
        ] {
            let d = parse_api_duration(text).unwrap();
            assert!((d.as_secs_f64() - secs).abs() < 1e-6, "{text}");
            assert_eq!(parse_api_duration(&format_api_duration(d)).unwrap(), d);
        }
        for bad in [
            "",
            "1day",
            "1 h",
            "1h  30m",
            "1h,30m",
            "h",
            "1234567s",
            "1h 1h 1h 1h 1h 1h",
            "-1s",
            " 1s",
        ] {
            assert!(parse_api_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            format_api_duration(Duration::from_secs(90_061)),
            "1d 1h 1m 1s"
        );
        assert_eq!(format_api_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn stored_idle_policies_in_the_old_spelling_still_read() {
        let p = IdlePolicy::from_stored(r#"{"after":"1day 2h"}"#);
        assert_eq!(p.after, Some(Duration::from_secs(26 * 3600)));
        let p = IdlePolicy::from_stored(r#"{"enabled":false,"after":"30m"}"#);
        assert_eq!(
            (p.enabled, p.after),
            (Some(false), Some(Duration::from_secs(1800)))
        );
    }

    /// Found by the request-parsing fuzzer: a long bad name whose shortened echo would have
    /// split a multi-byte character.
    #[test]
    fn a_long_bad_name_is_shortened_at_a_character_boundary() {
        let name = format!("{}b\u{14f}ercent", "0".repeat(75));
        let e = VmName::parse(&name).unwrap_err().to_string();
        assert!(e.contains("..."), "{e}");
        for n in 60..90 {
            let name = format!("{}\u{14f}\u{14f}\u{14f}", "x".repeat(n));
            assert!(VmName::parse(&name).is_err());
        }
    }

    #[test]
    fn names_refuse_xml_and_path_characters() {
        for bad in [
            "", "a<b", "a'b", "a/b", "..", "../x", "A", "-a", "a b", "a\nb", "a&b", "a\"b",
        ] {
            assert!(VmName::parse(bad).is_err(), "{bad:?} accepted");
            assert!(UserName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(VmName::parse(&"a".repeat(64)).is_err());
        assert!(VmName::parse(&"a".repeat(63)).is_ok());
        assert!(UserName::parse(&"a".repeat(33)).is_err());
        assert!(UserName::parse("_svc-1").is_ok());
        assert!(VmName::parse("9web-1").is_ok());
        assert!(UserName::parse("9web").is_err());
    }

    #[test]
    fn name_error_escapes_the_value() {
        let e = VmName::parse("a\nb").unwrap_err();
        assert!(e.to_string().contains("\\n"), "{e}");
    }
}

/// Secret bytes (a key, a share, a LUKS passphrase): zeroized on drop, `[REDACTED]` in Debug,
/// and deliberately neither `Serialize` nor `Display`, so it cannot slip into a log or a body.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`; the caller's buffer moves in, no copy stays behind.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret, for the one call that needs it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// libvirt domain type (`[libvirt] domain_type`): kept here, with the plain data, because
/// the config names it and the hypervisor resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    /// `kvm` when usable, else `qemu`.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's TCG emulation.
    Qemu,
}
