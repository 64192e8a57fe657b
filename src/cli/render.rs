//! What `vmwarden` prints for people: one purpose-built table per list (short ids, sizes in
//! M/G, local times with how long ago), detail views, one line per event, and the parsing
//! of `--since`/`--until`. Pure functions of the API's JSON and the current time, so every
//! table is tested without a daemon.

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use serde_json::Value;
use std::collections::HashMap;

/// Characters of an id that tables show (ids are UUIDs; 8 hex digits are unique in practice
/// and any unique prefix is accepted back).
pub const SHORT_ID: usize = 8;

/// The first characters of an id.
pub fn short_id(id: &str) -> String {
    id.chars().take(SHORT_ID).collect()
}

/// A size in MiB as `64M`, `2G`, `1.5G`, `16T`.
pub fn size(mib: u64) -> String {
    let units = [(1024 * 1024, "T"), (1024, "G")];
    for (per, unit) in units {
        if mib >= per {
            let whole = mib / per;
            let tenths = (mib % per) * 10 / per;
            return if tenths == 0 {
                format!("{whole}{unit}")
            } else {
                format!("{whole}.{tenths}{unit}")
            };
        }
    }
    format!("{mib}M")
}

/// A span as `45s`, `12m`, `1h12m`, `2d3h` (two units at most, rounded down).
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// `in 1h12m` or `5m ago`.
pub fn relative(at_ms: i64, now_ms: i64) -> String {
    if at_ms >= now_ms {
        format!("in {}", span(at_ms - now_ms))
    } else {
        format!("{} ago", span(now_ms - at_ms))
    }
}

fn local(ms: i64) -> DateTime<Local> {
    Local
        .timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(|| Local.timestamp_millis_opt(0).unwrap())
}

/// A local time: `14:03:22` today, `2026-11-28 14:03` otherwise.
pub fn time(ms: i64, now_ms: i64) -> String {
    let (t, now) = (local(ms), local(now_ms));
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M").to_string()
    }
}

/// `--since`/`--until`: a span back from now (`90s`, `1h`, `2d`, any humantime spelling) or
/// a local time (`2026-11-29 14:00[:00]`, `2026-11-29T14:00`, `2026-11-29`, `14:00` today).
pub fn parse_when(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms - d.as_millis() as i64);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let today = local(now_ms).date_naive();
    let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .or_else(|| {
            ["%H:%M:%S", "%H:%M"]
                .iter()
                .find_map(|f| NaiveTime::parse_from_str(s, f).ok())
                .map(|t| today.and_time(t))
        })
        .ok_or_else(|| {
            format!("{s:?} is neither a span back from now (1h, 2d) nor a time (2026-11-29T14:00:00Z, or local 2026-11-29 14:00, 14:00)")
        })?;
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.timestamp_millis())
        .ok_or_else(|| format!("{s:?} does not exist in the local time zone"))
}

/// The event kinds `events --kind` accepts.
pub fn event_kinds() -> clap::builder::PossibleValuesParser {
    let mut kinds: Vec<&'static str> = crate::service::EventKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    kinds.push("stream.dropped");
    clap::builder::PossibleValuesParser::new(kinds)
}

/// A table: upper-case headers, columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: vec![],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The columns' names.
    pub fn headers(&self) -> &[&'static str] {
        &self.headers
    }

    /// The rows.
    pub fn rows(&self) -> &[Vec<String>] {
        &self.rows
    }

    /// The text, one line per row; `(none)` for no rows.
    pub fn render(&self) -> String {
        if self.rows.is_empty() {
            return "(none)\n".into();
        }
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.headers[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", padded.join("  ").trim_end())
        };
        let mut out = line(self.headers.to_vec());
        for r in &self.rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        out
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(s).collect::<Vec<_>>().join(","),
        _ => "-".into(),
    }
}

/// The IDLE cell of a VM: `off`, `-` (not running), `in 1h12m` (idle, shuts down then), or
/// `in 2h+ (busy)` (not idle: it shuts down no sooner than that).
pub fn idle_cell(vm: &Value, status: Option<&Value>, now_ms: i64) -> String {
    if vm["idle"]["enabled"] == Value::Bool(false) {
        return "off".into();
    }
    if vm["state"] != "running" {
        return "-".into();
    }
    match status {
        Some(st) if st["enabled"] == Value::Bool(false) => "off".into(),
        Some(st) => match st["shutdown_at_ms"].as_i64() {
            Some(at) => relative(at, now_ms),
            None => format!("in {}+ (busy)", s(&st["after"])),
        },
        None => "on".into(),
    }
}

/// `vm list`: NAME, ID, PROJECT, ROLE, STATE, VCPUS, MEMORY, IDLE. `idle` holds the idle
/// status of running VMs by id.
pub fn vms(vms: &[Value], idle: &HashMap<String, Value>, now_ms: i64) -> Table {
    let mut t = Table::new(&[
        "NAME", "ID", "PROJECT", "ROLE", "STATE", "VCPUS", "MEMORY", "IDLE",
    ]);
    for v in vms {
        let id = s(&v["id"]);
        t.row(vec![
            s(&v["name"]),
            short_id(&id),
            s(&v["project"]),
            s(&v["role"]),
            s(&v["state"]),
            s(&v["vcpus"]),
            size(v["memory_mib"].as_u64().unwrap_or(0)),
            idle_cell(v, idle.get(&id), now_ms),
        ]);
    }
    t
}

/// `drive list`: NAME, ID, PROJECT, SIZE, OWNERS, ATTACHED (the VM's name when known).
pub fn drives(drives: &[Value], vm_names: &HashMap<String, String>) -> Table {
    let mut t = Table::new(&["NAME", "ID", "PROJECT", "SIZE", "OWNERS", "ATTACHED"]);
    for d in drives {
        t.row(vec![
            s(&d["name"]),
            short_id(&s(&d["id"])),
            s(&d["project"]),
            size(d["size_mib"].as_u64().unwrap_or(0)),
            list(&d["owners"]),
            attached(&d["attached_to"], vm_names),
        ]);
    }
    t
}

fn attached(v: &Value, vm_names: &HashMap<String, String>) -> String {
    match v.as_str() {
        None => "-".into(),
        Some(id) => vm_names.get(id).cloned().unwrap_or_else(|| short_id(id)),
    }
}

/// The KEY cell of a project.
pub fn key_cell(p: &Value, now_ms: i64) -> String {
    let until = p["until_ms"]
        .as_i64()
        .map(|u| format!(" until {} ({})", time(u, now_ms), relative(u, now_ms)));
    if p["locked"] == Value::Bool(false) {
        return format!("unlocked{}", until.unwrap_or_default());
    }
    match p["waiting_for"].as_array().map(Vec::as_slice) {
        Some([half]) => format!(
            "locked, waiting for the {} share{}",
            s(half),
            until.unwrap_or_default()
        ),
        _ => "locked".into(),
    }
}

/// `project list`: NAME, MEMBERS, KEY.
pub fn projects(projects: &[Value], now_ms: i64) -> Table {
    let mut t = Table::new(&["NAME", "MEMBERS", "KEY"]);
    for p in projects {
        t.row(vec![
            s(&p["name"]),
            list(&p["members"]),
            key_cell(p, now_ms),
        ]);
    }
    t
}

/// `user list`: NAME, TEAM, ADMIN.
pub fn users(users: &[Value]) -> Table {
    let mut t = Table::new(&["NAME", "TEAM", "ADMIN"]);
    for u in users {
        t.row(vec![s(&u["name"]), s(&u["team"]), admin_cell(u)]);
    }
    t
}

/// `yes`, `yes (config)` for an admin by `[access] admins` only, or `no`.
pub fn admin_cell(u: &Value) -> String {
    match (u["admin"].as_bool(), u["admin_in_registry"].as_bool()) {
        (Some(true), Some(false)) => "yes (config)".into(),
        (Some(true), _) => "yes".into(),
        _ => "no".into(),
    }
}

/// `host vms`: NAME, ID, PROJECT, STATE, VCPUS, MEMORY, IDLE.
pub fn host_vms(vms: &[Value]) -> Table {
    let mut t = Table::new(&["NAME", "ID", "PROJECT", "STATE", "VCPUS", "MEMORY", "IDLE"]);
    for v in vms {
        t.row(vec![
            s(&v["name"]),
            short_id(&s(&v["id"])),
            s(&v["project"]),
            s(&v["state"]),
            s(&v["vcpus"]),
            size(v["memory_mib"].as_u64().unwrap_or(0)),
            if v["idle_enabled"] == Value::Bool(true) {
                "on".into()
            } else {
                "off".into()
            },
        ]);
    }
    t
}

/// `fleet hosts`: HOST, STATE, VERSION, VMS, LAST SEEN, STARTED, ENROLLED, FINGERPRINT.
pub fn fleet_hosts(hosts: &[Value], now_ms: i64) -> Table {
    let mut t = Table::new(&[
        "HOST",
        "STATE",
        "VERSION",
        "VMS",
        "LAST SEEN",
        "STARTED",
        "ENROLLED",
        "FINGERPRINT",
    ]);
    for h in hosts {
        t.row(vec![
            s(&h["name"]),
            s(&h["state"]),
            s(&h["version"]),
            s(&h["vms"]),
            relative(h["last_seen_ms"].as_i64().unwrap_or(0), now_ms),
            relative(h["started_ms"].as_i64().unwrap_or(0), now_ms),
            if h["enrolled"] == true { "yes" } else { "no" }.to_owned(),
            h["fingerprint"].as_str().unwrap_or("-").to_owned(),
        ]);
    }
    t
}

/// `fleet vms`: NAME, ID, PROJECT, HOST, STATE, VCPUS, MEMORY.
pub fn fleet_vms(vms: &[Value]) -> Table {
    let mut t = Table::new(&["NAME", "ID", "PROJECT", "HOST", "STATE", "VCPUS", "MEMORY"]);
    for v in vms {
        t.row(vec![
            s(&v["name"]),
            short_id(&s(&v["id"])),
            s(&v["project"]),
            v["host"].as_str().unwrap_or("-").to_owned(),
            s(&v["state"]),
            s(&v["vcpus"]),
            size(v["memory_mib"].as_u64().unwrap_or(0)),
        ]);
    }
    t
}

/// `audit`: TIME, AGO, ACTOR, ACTION, VM, TARGET (blank when it is the VM), OUTCOME, DETAIL.
pub fn audit(rows: &[Value], vm_names: &HashMap<String, String>, now_ms: i64) -> Table {
    let mut t = Table::new(&[
        "TIME", "AGO", "ACTOR", "ACTION", "VM", "TARGET", "OUTCOME", "DETAIL",
    ]);
    for r in rows {
        let at = r["at_ms"].as_i64().unwrap_or(0);
        let vm = r["vm"].as_str().unwrap_or("");
        let target = s(&r["target"]);
        t.row(vec![
            time(at, now_ms),
            relative(at, now_ms),
            s(&r["actor"]),
            s(&r["action"]),
            if vm.is_empty() {
                "-".into()
            } else {
                attached(&r["vm"], vm_names)
            },
            if target == vm || target.is_empty() {
                "-".into()
            } else {
                target
            },
            s(&r["outcome"]),
            if r["detail"].as_str().unwrap_or("").is_empty() {
                "-".into()
            } else {
                s(&r["detail"])
            },
        ]);
    }
    t
}

/// `vm members`: USER, ROLE.
pub fn members(m: &Value) -> Table {
    let mut t = Table::new(&["USER", "ROLE"]);
    for (role, key) in [("owner", "owners"), ("user", "users")] {
        for u in m[key].as_array().into_iter().flatten() {
            t.row(vec![s(u), role.into()]);
        }
    }
    t
}

fn fields(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{:<w$}  {v}\n", format!("{k}:")))
        .collect()
}

/// `vm show` (and what `vm create`, `start`, `stop`, `update`, `attach` print).
pub fn vm(v: &Value, now_ms: i64) -> String {
    let idle = &v["idle"];
    let policy = match (idle["enabled"].as_bool(), idle["after"].as_str()) {
        (Some(false), _) => "off".to_owned(),
        (_, Some(a)) => format!("after {a} idle"),
        _ => "host default".to_owned(),
    };
    let mut rows = vec![
        ("Name", s(&v["name"])),
        ("ID", s(&v["id"])),
        ("Project", s(&v["project"])),
        ("Team", s(&v["team"])),
        ("Your role", s(&v["role"])),
        (
            "State",
            match v["state_reason"].as_str() {
                Some(r) if !r.is_empty() => format!("{} ({r})", s(&v["state"])),
                _ => s(&v["state"]),
            },
        ),
        ("vCPUs", s(&v["vcpus"])),
        ("Memory", size(v["memory_mib"].as_u64().unwrap_or(0))),
        ("Idle policy", policy),
    ];
    if v["state"] == "running" {
        rows.push((
            "Idle shutdown",
            idle_cell(v, v.get("idle_status").filter(|s| !s.is_null()), now_ms),
        ));
    }
    let mut out = fields(&rows);
    if let Some(ds) = v["drives"].as_array() {
        out.push_str("Drives:\n");
        let mut t = Table::new(&["NAME", "ID", "SIZE", "OWNERS"]);
        for d in ds {
            t.row(vec![
                s(&d["name"]),
                short_id(&s(&d["id"])),
                size(d["size_mib"].as_u64().unwrap_or(0)),
                list(&d["owners"]),
            ]);
        }
        for line in t.render().lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// `drive show`.
pub fn drive(d: &Value, vm_names: &HashMap<String, String>) -> String {
    fields(&[
        ("Name", s(&d["name"])),
        ("ID", s(&d["id"])),
        ("Project", s(&d["project"])),
        ("Size", size(d["size_mib"].as_u64().unwrap_or(0))),
        ("Owners", list(&d["owners"])),
        ("Attached to", attached(&d["attached_to"], vm_names)),
    ])
}

/// `me`.
pub fn me(m: &Value) -> String {
    fields(&[
        ("Name", s(&m["name"])),
        ("Team", s(&m["team"])),
        (
            "Admin",
            if m["admin"] == Value::Bool(true) {
                "yes".into()
            } else {
                "no".into()
            },
        ),
        ("Projects", list(&m["projects"])),
    ])
}

/// One line per event: local time, kind, and what happened in words. `names` maps VM ids to
/// names (an id not in it is shown short).
pub fn event_line(ev: &Value, names: &HashMap<String, String>, now_ms: i64) -> String {
    let at = ev["at_ms"].as_i64().unwrap_or(now_ms);
    let kind = ev["kind"].as_str().unwrap_or("?");
    let d = &ev["data"];
    let vm = || {
        let id = ev["vm"].as_str().or_else(|| d["id"].as_str()).unwrap_or("");
        let name = names
            .get(id)
            .cloned()
            .or_else(|| d["name"].as_str().map(str::to_owned));
        match name {
            Some(n) => format!("VM {n} ({})", short_id(id)),
            None => format!("VM {}", short_id(id)),
        }
    };
    let project = || {
        s(ev.get("project")
            .filter(|p| !p.is_null())
            .unwrap_or(&d["project"]))
    };
    let what = match kind {
        "vm.state" => {
            let mut w = format!("{} is {}", vm(), s(&d["state"]));
            match (d["reason"].as_str(), d["via"].as_str()) {
                (Some(r), Some("acpi")) => w.push_str(&format!(" ({r}, ACPI shutdown)")),
                (Some(r), Some("destroy")) => w.push_str(&format!(" ({r}, destroyed)")),
                (Some(r), _) => w.push_str(&format!(" ({r})")),
                _ => {}
            }
            w
        }
        "vm.created" => format!("{} created in project {}", vm(), project()),
        "vm.deleted" => format!("{} deleted", vm()),
        "vm.shared" => format!("{}: {} is now {}", vm(), s(&d["user"]), s(&d["role"])),
        "vm.unshared" => match d["reason"].as_str() {
            Some(r) => format!("{}: {} no longer has a role ({r})", vm(), s(&d["user"])),
            None => format!("{}: {} no longer has a role", vm(), s(&d["user"])),
        },
        "vm.idle_warning" => match d["deadline_ms"].as_i64() {
            Some(at) => format!(
                "{} is idle: it shuts down at {} ({}) unless kept alive",
                vm(),
                time(at, now_ms),
                relative(at, now_ms)
            ),
            None => format!("{} is idle", vm()),
        },
        "vm.idle_shutdown" => format!("{} is shut down for inactivity", vm()),
        "drive.attached" => format!(
            "drive {} attached to {}",
            short_id(ev["drive"].as_str().unwrap_or("")),
            vm()
        ),
        "drive.detached" => format!(
            "drive {} detached from {}",
            short_id(ev["drive"].as_str().unwrap_or("")),
            vm()
        ),
        "project.unlock_pending" => {
            format!(
                "project {}: one share is in, waiting for the other",
                project()
            )
        }
        "project.unlocked" => format!("project {} unlocked", project()),
        "project.locked" => match d["reason"].as_str() {
            Some("ttl") => format!("project {} locked (its unlock time ran out)", project()),
            _ => format!("project {} locked", project()),
        },
        "project.member_removed" => {
            format!("project {}: {} removed", project(), s(&d["user"]))
        }
        "project.deleted" => format!("project {} deleted", project()),
        "stream.dropped" => "the daemon dropped this stream: it fell behind".into(),
        _ => d.to_string(),
    };
    format!("{}  {kind:<22}  {what}", time(at, now_ms))
}

#[cfg(test)]
mod tests;
