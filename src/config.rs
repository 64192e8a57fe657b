//! TOML configuration (`/etc/vmwarden/config.toml`): every key has a default, unknown keys
//! are refused, and every error names the key, the line and the column.

use crate::model::DomainType;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("Cannot read {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A key is unknown, has a bad value or the TOML is malformed.
    #[error("{path}: line {line}, column {column}: key `{key}`: {message}")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// The dotted key at fault (`section.key`), or the nearest section.
        key: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Socket and state locations.
    pub daemon: DaemonConfig,
    /// libvirt connection.
    pub libvirt: LibvirtConfig,
    /// Who is an admin and who may act for others.
    pub access: AccessConfig,
    /// Sharing limits.
    pub sharing: SharingConfig,
    /// Two-party unlock timing.
    pub keys: KeysConfig,
    /// Host idle-shutdown defaults and bounds.
    pub idle: IdleConfig,
    /// Control socket limits.
    pub limits: LimitsConfig,
    /// Where the registry, VMs, drives and audit live.
    pub store: StoreConfig,
    /// This agent's place in a fleet.
    pub fleet: FleetConfig,
    /// Where drive images live.
    pub storage: StorageConfig,
}

/// `[fleet]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// This host's name in the fleet; empty: the machine's hostname.
    pub host: String,
    /// How often the agent records that it is alive.
    #[serde(with = "duration")]
    pub heartbeat: Duration,
    /// A host without a heartbeat for this long is `down`.
    #[serde(with = "duration")]
    pub host_dead_after: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            heartbeat: Duration::from_secs(5),
            host_dead_after: Duration::from_secs(30),
        }
    }
}

impl FleetConfig {
    /// The host name in force: `host`, or the machine's hostname.
    pub fn host_name(&self) -> String {
        if !self.host.is_empty() {
            return self.host.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| valid_host(h))
            .unwrap_or_else(|| crate::store::DEFAULT_HOST.to_owned())
    }
}

/// A fleet host name: 1-63 letters, digits, `-`, `_` and `.`, starting with a letter or digit
/// (it lands in domain XML, SQL arguments and log lines; nothing there may need quoting).
pub fn valid_host(h: &str) -> bool {
    (1..=63).contains(&h.len())
        && h.starts_with(|c: char| c.is_ascii_alphanumeric())
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `[storage]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Drive images; empty: `state_dir/drives`. A fleet shares one POSIX mount at the same
    /// path on every host.
    pub drives_dir: PathBuf,
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (state_dir/state.db) or a `postgres://` URL shared by the agents of an
    /// enclave (DESIGN section 7).
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite".into(),
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL URL, when the store is not SQLite.
    pub fn postgres(&self) -> Option<&str> {
        (self.url != "sqlite").then_some(self.url.as_str())
    }
}

/// `[daemon]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Control socket path.
    pub socket: PathBuf,
    /// Group given to the socket so operators can reach it without root.
    pub socket_group: String,
    /// Socket permission bits, octal text.
    pub socket_mode: String,
    /// Holds state.db and drives/.
    pub state_dir: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: "/run/vmwarden/vmwarden.sock".into(),
            socket_group: "vmwarden".into(),
            socket_mode: "0660".into(),
            state_dir: "/var/lib/vmwarden".into(),
        }
    }
}

impl DaemonConfig {
    /// The socket mode as bits (validated at load).
    pub fn socket_mode_bits(&self) -> u32 {
        u32::from_str_radix(&self.socket_mode, 8).unwrap_or(0o660)
    }
}

/// `[libvirt]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LibvirtConfig {
    /// Connection URI.
    pub uri: String,
    /// `auto`, `kvm` or `qemu`.
    pub domain_type: DomainType,
    /// How long a stop waits for ACPI shutdown before destroying.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// How long a hot-detach waits for the guest to release the disk.
    #[serde(with = "duration")]
    pub detach_timeout: Duration,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        Self {
            uri: "qemu:///system".into(),
            domain_type: DomainType::Auto,
            shutdown_timeout: Duration::from_secs(120),
            detach_timeout: Duration::from_secs(10),
        }
    }
}

/// `[access]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Unix names that are admins.
    pub admins: Vec<String>,
    /// Unix names that act for the user named in `Vmwarden-User`.
    pub orchestrators: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            admins: vec!["root".into()],
            orchestrators: vec![],
        }
    }
}

/// `[sharing]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SharingConfig {
    /// Most owners a VM may have.
    pub max_owners: usize,
}

impl Default for SharingConfig {
    fn default() -> Self {
        Self { max_owners: 2 }
    }
}

/// `[keys]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// How long the first half of an unlock waits for the second.
    #[serde(with = "duration")]
    pub unlock_window: Duration,
    /// How long an unlocked key stays in memory.
    #[serde(with = "duration")]
    pub unlock_ttl: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            unlock_window: Duration::from_secs(600),
            unlock_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// `[idle]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdleConfig {
    /// Host-wide switch.
    pub enabled: bool,
    /// Default idle period before shutdown.
    #[serde(with = "duration")]
    pub after: Duration,
    /// Default CPU threshold.
    pub cpu_percent: f64,
    /// Disk + network threshold (KiB/s) under which a VM counts as idle.
    pub io_kib_per_sec: f64,
    /// Warning lead time.
    #[serde(with = "duration")]
    pub warn_before: Duration,
    /// ACPI grace before destroy.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Bulk-stats period.
    #[serde(with = "duration")]
    pub sample_interval: Duration,
    /// Longest `after` an owner may set.
    #[serde(with = "duration")]
    pub max_after: Duration,
    /// Whether owners may switch idle shutdown off for their VM.
    pub owners_may_disable: bool,
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            after: Duration::from_secs(2 * 3600),
            cpu_percent: 5.0,
            io_kib_per_sec: 64.0,
            warn_before: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(120),
            sample_interval: Duration::from_secs(30),
            max_after: Duration::from_secs(24 * 3600),
            owners_may_disable: false,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Time a client has to send its request head (also how long an idle keep-alive
    /// connection stays open).
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// Time a client has to take an answer the socket could not send at once.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// Concurrent request connections of unprivileged peers (root, `access.admins` and
    /// `access.orchestrators` have a pool of the same size of their own).
    pub max_connections: usize,
    /// Concurrent connections of one unprivileged peer uid.
    pub max_connections_per_peer: usize,
    /// Concurrent event streams, counted apart from request connections.
    pub max_streams: usize,
    /// Concurrent event streams of one principal (the acting user, for orchestrators).
    pub max_streams_per_user: usize,
    /// The most vCPUs a VM may have on this host.
    pub max_vcpus: u32,
    /// The most memory (MiB, at least 16) a VM may have on this host.
    pub max_memory_mib: u64,
    /// The largest drive (MiB) this host creates.
    pub max_drive_mib: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 65536,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 256,
            max_connections_per_peer: 32,
            max_streams: 1024,
            max_streams_per_user: 8,
            max_vcpus: 64,
            max_memory_mib: 1024 * 1024,
            max_drive_mib: 16 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            located(text, path, offset, did_you_mean(e.message()))
        })?;
        let mut cfg = cfg;
        // Relative paths are relative to the config file, so a checkout can carry a config
        // that keeps everything inside it (config/dev.toml).
        if let Some(base) = path.parent().and_then(|p| std::path::absolute(p).ok()) {
            for p in [
                &mut cfg.daemon.socket,
                &mut cfg.daemon.state_dir,
                &mut cfg.storage.drives_dir,
            ] {
                if p.is_relative() && !p.as_os_str().is_empty() {
                    *p = normalize(&base.join(&*p));
                }
            }
        }
        cfg.validate(text, path)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let fail = |section: &str, key: &str, message: String| {
            let offset = find_key(text, section, key).unwrap_or(0);
            let mut err = located(text, path, offset, message);
            if let ConfigError::Invalid { key: k, .. } = &mut err {
                *k = format!("{section}.{key}");
            }
            err
        };
        if u32::from_str_radix(&self.daemon.socket_mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .is_none()
        {
            return Err(fail(
                "daemon",
                "socket_mode",
                "Must be octal permission bits such as \"0660\"".into(),
            ));
        }
        if !self.daemon.socket.is_absolute() {
            return Err(fail("daemon", "socket", "Must be an absolute path".into()));
        }
        if let Some(url) = self.store.postgres() {
            // The error never repeats the URL: it may carry a password.
            let scheme = url.starts_with("postgres://") || url.starts_with("postgresql://");
            if !scheme || url.parse::<postgres::Config>().is_err() {
                return Err(fail(
                    "store",
                    "url",
                    "Must be \"sqlite\" or a postgres:// URL".into(),
                ));
            }
        }
        if !self.fleet.host.is_empty() && !valid_host(&self.fleet.host) {
            return Err(fail(
                "fleet",
                "host",
                "Must be 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
                    .into(),
            ));
        }
        if self.fleet.host_dead_after < self.fleet.heartbeat * 3 {
            return Err(fail(
                "fleet",
                "host_dead_after",
                "Must be at least three heartbeats".into(),
            ));
        }
        if !self.daemon.state_dir.is_absolute() {
            return Err(fail(
                "daemon",
                "state_dir",
                "Must be an absolute path".into(),
            ));
        }
        if self.sharing.max_owners == 0 {
            return Err(fail("sharing", "max_owners", "Must be at least 1".into()));
        }
        let i = &self.idle;
        // Every duration has bounds a host can live with: a zero or a millisecond timeout
        // would stop things before they start, a year-long unlock would never lock.
        let (ms, s, m, h, d) = (
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(3600),
            Duration::from_secs(86_400),
        );
        for (section, key, value, min, max) in [
            (
                "libvirt",
                "shutdown_timeout",
                self.libvirt.shutdown_timeout,
                s,
                h,
            ),
            (
                "libvirt",
                "detach_timeout",
                self.libvirt.detach_timeout,
                s,
                10 * m,
            ),
            ("keys", "unlock_window", self.keys.unlock_window, 10 * s, d),
            ("fleet", "heartbeat", self.fleet.heartbeat, 100 * ms, m),
            ("fleet", "host_dead_after", self.fleet.host_dead_after, s, h),
            ("keys", "unlock_ttl", self.keys.unlock_ttl, 10 * s, 30 * d),
            ("idle", "sample_interval", i.sample_interval, s, 10 * m),
            ("idle", "after", i.after, 2 * s, 30 * d),
            ("idle", "warn_before", i.warn_before, Duration::ZERO, d),
            ("idle", "shutdown_timeout", i.shutdown_timeout, s, h),
            ("idle", "max_after", i.max_after, 2 * s, 30 * d),
            (
                "limits",
                "header_timeout",
                self.limits.header_timeout,
                100 * ms,
                10 * m,
            ),
            (
                "limits",
                "write_timeout",
                self.limits.write_timeout,
                100 * ms,
                10 * m,
            ),
        ] {
            if value < min || value > max {
                return Err(fail(
                    section,
                    key,
                    format!(
                        "Must be between {} and {}",
                        format_duration(min),
                        format_duration(max)
                    ),
                ));
            }
        }
        // Names in [access] may be registry users that are not Unix users, so only their
        // form is checked: a name that cannot be a user never matches anyone.
        for (key, names) in [
            ("admins", &self.access.admins),
            ("orchestrators", &self.access.orchestrators),
        ] {
            for n in names {
                if let Err(e) = crate::model::UserName::parse(n) {
                    return Err(fail(
                        "access",
                        key,
                        format!("{n:?} is not a user name: {e}"),
                    ));
                }
            }
        }
        if !(0.0..=100.0 * 1024.0).contains(&i.cpu_percent) || i.cpu_percent.is_nan() {
            return Err(fail("idle", "cpu_percent", "Must be a percentage".into()));
        }
        if i.io_kib_per_sec.is_nan() || i.io_kib_per_sec < 0.0 {
            return Err(fail(
                "idle",
                "io_kib_per_sec",
                "Must be zero or more".into(),
            ));
        }
        if i.after < i.sample_interval * 2 {
            return Err(fail(
                "idle",
                "after",
                "Must be at least two idle.sample_interval (idleness is measured between samples)"
                    .into(),
            ));
        }
        for (key, n) in [
            (
                "max_connections_per_peer",
                self.limits.max_connections_per_peer,
            ),
            ("max_streams", self.limits.max_streams),
            ("max_streams_per_user", self.limits.max_streams_per_user),
            ("max_vcpus", self.limits.max_vcpus as usize),
            ("max_drive_mib", self.limits.max_drive_mib as usize),
        ] {
            if n == 0 {
                return Err(fail("limits", key, "Must be at least 1".into()));
            }
        }
        if i.after > i.max_after {
            return Err(fail(
                "idle",
                "after",
                "Must not exceed idle.max_after".into(),
            ));
        }
        if i.warn_before >= i.after {
            return Err(fail(
                "idle",
                "warn_before",
                "Must be shorter than idle.after".into(),
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(fail(
                "limits",
                "max_connections",
                "Must be at least 1".into(),
            ));
        }
        if self.limits.max_memory_mib < 16 {
            return Err(fail(
                "limits",
                "max_memory_mib",
                "Must be at least 16".into(),
            ));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(fail(
                "limits",
                "max_body_bytes",
                "Must be at least 1024".into(),
            ));
        }
        Ok(())
    }

    /// What only this host can tell: that `daemon.socket_group` exists. Run by
    /// `--check-config` and before the daemon binds its socket.
    pub fn check_host(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let g = &self.daemon.socket_group;
        if !g.is_empty() && !matches!(nix::unistd::Group::from_name(g), Ok(Some(_))) {
            let offset = find_key(text, "daemon", "socket_group").unwrap_or(0);
            let mut err = located(
                text,
                path,
                offset,
                format!("Group {g:?} does not exist on this host (create it, or set \"\" to keep the daemon's group)"),
            );
            if let ConfigError::Invalid { key, .. } = &mut err {
                *key = "daemon.socket_group".into();
            }
            return Err(err);
        }
        Ok(())
    }

    /// Reads, validates and checks a config file against this host.
    pub fn load_checked(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::parse(&text, path)?;
        cfg.check_host(&text, path)?;
        Ok(cfg)
    }

    /// Where drive images live.
    pub fn drives_dir(&self) -> PathBuf {
        if self.storage.drives_dir.as_os_str().is_empty() {
            self.daemon.state_dir.join("drives")
        } else {
            self.storage.drives_dir.clone()
        }
    }

    /// Where serial logs live.
    pub fn logs_dir(&self) -> PathBuf {
        self.daemon.state_dir.join("logs")
    }

    /// The SQLite file.
    pub fn db_path(&self) -> PathBuf {
        self.daemon.state_dir.join("state.db")
    }
}

/// Removes `.` and `..` components without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Turns a byte offset into line/column and finds the key written at that place.
fn located(text: &str, path: &Path, offset: usize, message: String) -> ConfigError {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    let mut section = String::new();
    for l in text[..line_start].lines() {
        let t = l.trim();
        if t.starts_with('[') && t.ends_with(']') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
    }
    let this_line = text[line_start..].lines().next().unwrap_or("");
    let key = match this_line.split_once('=') {
        Some((k, _)) if !this_line.trim_start().starts_with('[') => k.trim().to_owned(),
        _ => String::new(),
    };
    let header = this_line.trim();
    if header.starts_with('[') && header.ends_with(']') {
        // An error at a table header is about that table (an unknown `[store]`), not about
        // the table before it.
        section = header
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned();
    }
    let key = match (section.is_empty(), key.is_empty()) {
        (true, true) => {
            let t = this_line.trim();
            t.trim_matches(|c| c == '[' || c == ']').to_owned()
        }
        (true, false) => key,
        (false, true) => section,
        (false, false) => format!("{section}.{key}"),
    };
    ConfigError::Invalid {
        path: path.to_owned(),
        key,
        line,
        column,
        message: capitalise(message.trim()),
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`", with the nearest known name.
fn did_you_mean(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let nearest = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::damerau_levenshtein(unknown, k), k))
        .filter(|(dist, k)| *dist <= 2.max(k.len() / 3))
        .min();
    match nearest {
        Some((_, k)) => format!("{message}; did you mean `{k}`?"),
        None => message.to_owned(),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Byte offset of `key =` inside `[section]`, for errors found after parsing.
fn find_key(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        } else if current == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim() == key {
                    let indent = line.len() - line.trim_start().len();
                    return Some(offset + indent);
                }
            }
        }
        offset += line.len();
    }
    None
}

pub use crate::model::{duration, format_duration, opt_duration, parse_duration};

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_every_default() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.keys.unlock_window, Duration::from_secs(600));
        assert_eq!(c.idle.after, Duration::from_secs(7200));
        assert_eq!(c.limits.max_body_bytes, 65536);
        assert_eq!(c.sharing.max_owners, 2);
        assert_eq!(c.access.admins, vec!["root".to_string()]);
    }

    #[test]
    fn documented_default_file_equals_built_in_defaults() {
        let text = include_str!("../config/vmwarden.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_key_line_and_column() {
        let e = parse("[daemon]\nsocket = \"/x\"\n  sokcet = \"/y\"\n").unwrap_err();
        match e {
            ConfigError::Invalid {
                key,
                line,
                column,
                message,
                ..
            } => {
                assert_eq!(key, "daemon.sokcet");
                assert_eq!(line, 3);
                assert_eq!(column, 3);
                assert!(message.contains("Unknown field `sokcet`"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_duration_names_key() {
        let e = parse("[keys]\nunlock_window = \"10 parsecs\"\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("keys.unlock_window"), "{s}");
        assert!(s.contains("line 2"), "{s}");
        assert!(s.contains("Bad duration"), "{s}");
    }

    #[test]
    fn bad_value_after_parse_names_key() {
        let e = parse("[sharing]\n\nmax_owners = 0\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("sharing.max_owners") && s.contains("line 3, column 1"),
            "{s}"
        );
        let e = parse("[daemon]\nsocket_mode = \"999\"\n").unwrap_err();
        assert!(e.to_string().contains("daemon.socket_mode"));
        let e = parse("[idle]\nafter = \"30h\"\n").unwrap_err();
        assert!(e.to_string().contains("idle.after"));
    }

    /// Idle bounds that cannot work are refused: idleness is measured between two samples,
    /// and a zero timeout would destroy without asking the guest.
    #[test]
    fn idle_bounds_that_cannot_work_are_refused() {
        for (text, key) in [
            (
                "[idle]\nafter = \"50s\"\nwarn_before = \"10s\"\nsample_interval = \"30s\"\n",
                "idle.after",
            ),
            (
                "[idle]\nshutdown_timeout = \"0s\"\n",
                "idle.shutdown_timeout",
            ),
            (
                "[libvirt]\nshutdown_timeout = \"0s\"\n",
                "libvirt.shutdown_timeout",
            ),
            ("[limits]\nwrite_timeout = \"0s\"\n", "limits.write_timeout"),
            (
                "[limits]\nmax_streams_per_user = 0\n",
                "limits.max_streams_per_user",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(parse(
            "[idle]\nafter = \"60s\"\nwarn_before = \"10s\"\nsample_interval = \"30s\"\n"
        )
        .is_ok());
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let c = Config::parse(
            "[daemon]\nstate_dir = \"../dev-state\"\n",
            Path::new("/srv/x/config/dev.toml"),
        )
        .unwrap();
        assert_eq!(c.daemon.state_dir, PathBuf::from("/srv/x/dev-state"));
    }

    #[test]
    fn unknown_section_and_wrong_type_are_refused() {
        assert!(parse("[nope]\na = 1\n")
            .unwrap_err()
            .to_string()
            .contains("nope"));
        let e = parse("[limits]\nmax_connections = \"many\"\n").unwrap_err();
        assert!(e.to_string().contains("limits.max_connections"), "{e}");
    }

    /// What check-config refuses, one row each: the key named and what it says.
    #[test]
    fn check_config_bounds_names_typos_and_tables() {
        let rows = [
            (
                "[libvirt]\nshutdown_timeout = \"0s\"\n",
                "libvirt.shutdown_timeout",
                "between 1s and 1h",
            ),
            (
                "[idle]\nsample_interval = \"1ms\"\n",
                "idle.sample_interval",
                "between 1s and 10m",
            ),
            (
                "[keys]\nunlock_window = \"1y\"\n",
                "keys.unlock_window",
                "between 10s and 1day",
            ),
            (
                "[limits]\nheader_timeout = \"1h\"\n",
                "limits.header_timeout",
                "between 100ms and 10m",
            ),
            (
                "[access]\nadmins = [\"Root\"]\n",
                "access.admins",
                "\"Root\" is not a user name",
            ),
            (
                "[access]\norchestrators = [\"a b\"]\n",
                "access.orchestrators",
                "not a user name",
            ),
            (
                "[daemon]\nsocket_grup = \"x\"\n",
                "daemon.socket_grup",
                "did you mean `socket_group`?",
            ),
            (
                "[idle]\nowners_may_disabel = true\n",
                "idle.owners_may_disabel",
                "did you mean `owners_may_disable`?",
            ),
            (
                "[limits]\nmax_body_bytes = 70000\n\n[network]\nurl = \"x\"\n",
                "network",
                "line 4",
            ),
            (
                "[store]\nurl = \"mysql://db/vmwarden\"\n",
                "store.url",
                "Must be \"sqlite\" or a postgres:// URL",
            ),
            (
                "[daemon]\nsocket_mode = \"0660\"\n[idle]\nafter = \"1s\"\n",
                "idle.after",
                "between 2s and 30days",
            ),
        ];
        for (text, key, says) in rows {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("key `{key}`")), "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
        // A PostgreSQL URL, on a Unix socket too; an error never repeats the URL (a password).
        for url in [
            "postgres://vmwarden@db.example/vmwarden",
            "postgres://vmwarden@%2Frun%2Fpostgresql/vmwarden",
        ] {
            let c = parse(&format!("[store]\nurl = \"{url}\"\n")).unwrap();
            assert_eq!(c.store.postgres(), Some(url));
        }
        let e = parse("[store]\nurl = \"postgres://u:s3cret@h/d?sslmode=bogus\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        // A key too far from any known one gets no guess.
        let e = parse("[daemon]\nxyzzy = 1\n").unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn a_socket_group_must_exist_on_the_host() {
        let text = "[daemon]\nsocket_group = \"no-such-group-here\"\n";
        let c = parse(text).unwrap();
        let e = c
            .check_host(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `daemon.socket_group`")
                && e.contains("line 2")
                && e.contains("does not exist"),
            "{e}"
        );
        let text = "[daemon]\nsocket_group = \"root\"\n";
        parse(text)
            .unwrap()
            .check_host(text, Path::new("c.toml"))
            .unwrap();
        let text = "[daemon]\nsocket_group = \"\"\n";
        parse(text)
            .unwrap()
            .check_host(text, Path::new("c.toml"))
            .unwrap();
    }
}
