//! `vmwarden`: the command-line client of the control socket. Tables and sentences for
//! people, `--format json|yaml` for scripts. Every refusal is printed as the daemon's detail
//! and what to do about it (`vmwarden::cli::advice`); exit codes tell outcomes apart (see
//! `--help`). A closed pipe (`| head -1`) ends the process quietly by SIGPIPE, as with any
//! Unix filter.

mod follow;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{CommandFactory, Parser};
use hyper::Method;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use vmwarden::cli::client::{
    Cli, Cmd, DriveArg, DriveCmd, FleetCmd, Format, HostCmd, ManPage, ProjectCmd, ShareOut,
    ShellArg, UserCmd, VmArg, VmCmd,
};
use vmwarden::cli::{advice, render, yaml};
use vmwarden::client::ClientError;
use zeroize::Zeroizing;

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// The daemon refused: status, code, detail and the raw problem.
    Problem {
        status: u16,
        code: String,
        detail: String,
        raw: Bytes,
    },
    /// A usage error found before anything was sent (exit 2).
    Usage(String),
    /// Anything else (exit 1).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.into())
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn exit_code(status: u16) -> i32 {
    match status {
        404 => 3,
        401 | 403 => 4,
        409 | 423 => 5,
        502 | 503 => 6,
        400 | 405 | 408 | 413 => 7,
        _ => 1,
    }
}

/// What every command works with.
pub struct Ctx {
    c: vmwarden::client::Client,
    format: Format,
    yes: bool,
    quiet: bool,
    /// What the command named (`vm`, `drive`, `project`, `user`, `you`), to fill the
    /// placeholders of a refusal's advice.
    named: std::cell::RefCell<HashMap<&'static str, String>>,
}

impl Ctx {
    /// One request; a refusal becomes `Failure::Problem`.
    pub async fn call(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Value> {
        let r = self
            .c
            .call(method, path, body)
            .await
            .map_err(|e| self.unreachable(e))?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status >= 400 {
            return Err(Failure::Problem {
                status: r.status,
                code: v["code"].as_str().unwrap_or("error").to_owned(),
                detail: v["detail"]
                    .as_str()
                    .unwrap_or("The request failed")
                    .to_owned(),
                raw: r.body,
            });
        }
        Ok(v)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub fn unreachable(&self, e: ClientError) -> Failure {
        match e {
            ClientError::Connect { path, source } => {
                Failure::Other(anyhow::anyhow!(advice::unreachable(&path, &source)))
            }
            e => Failure::Other(e.into()),
        }
    }

    /// Remembers what the command names, for the advice of a refusal.
    fn note(&self, what: &'static str, value: impl ToString) {
        self.named.borrow_mut().insert(what, value.to_string());
    }

    /// The advice for a refusal, its placeholders filled with what the command named (and
    /// the project of the VM it named, asked for when the advice needs it).
    async fn advise(&self, code: &str, detail: &str) -> String {
        let mut text = advice::explain(code, detail);
        if text.contains("<project>") && !self.named.borrow().contains_key("project") {
            let vm = self.named.borrow().get("vm").cloned();
            if let Some(vm) = vm {
                if let Ok(v) = self.get(&format!("/v1/vms/{vm}")).await {
                    if let Some(p) = v["project"].as_str() {
                        self.note("project", p);
                    }
                }
            }
        }
        for (k, v) in self.named.borrow().iter() {
            text = text.replace(&format!("<{k}>"), v);
        }
        text
    }

    /// Prints an answer: JSON or YAML as is, or what `human` makes of it.
    fn show(&self, v: &Value, human: impl FnOnce(&Value) -> String) {
        if self.quiet {
            return;
        }
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(v).expect("json")),
            Format::Yaml => print!("{}", yaml::to_yaml(v)),
            Format::Table => print!("{}", human(v)),
        }
    }

    /// Prints a list: ids only with `-q`.
    fn show_list(&self, v: &Value, id: &str, human: impl FnOnce(&[Value]) -> String) {
        let rows = v.as_array().cloned().unwrap_or_default();
        if self.quiet {
            for r in &rows {
                println!("{}", r[id].as_str().unwrap_or_default());
            }
            return;
        }
        match self.format {
            Format::Table => print!("{}", human(&rows)),
            _ => self.show(v, |_| String::new()),
        }
    }

    /// Asks before something that cannot be undone: `--yes`, or `y` on a terminal.
    fn confirm(&self, what: &str) -> Result<()> {
        if self.yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(Failure::Usage(format!(
                "Not asking on a non-terminal: add --yes to {what}"
            )));
        }
        eprint!("{}? [y/N] ", capitalize(what));
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            Ok(())
        } else {
            Err(Failure::Usage("Nothing done".into()))
        }
    }

    /// A spinner on stderr while `f` runs, only when stderr is a terminal.
    async fn busy<T>(&self, msg: String, f: impl std::future::Future<Output = T>) -> T {
        let bar = (std::io::stderr().is_terminal() && !self.quiet).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_message(msg);
            b.enable_steady_tick(std::time::Duration::from_millis(100));
            b
        });
        let out = f.await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        out
    }

    /// The path segment naming a VM: the name, prefix or id as given, or, with `--project`,
    /// the id of the one VM of that name or prefix in the project.
    async fn vm_ref(&self, a: &VmArg) -> Result<String> {
        self.note("vm", &a.vm);
        if let Some(p) = &a.project {
            self.note("project", p);
        }
        match &a.project {
            None => Ok(a.vm.to_string()),
            Some(p) => {
                self.in_project("/v1/vms", "VM", a.vm.as_str(), p.as_str())
                    .await
            }
        }
    }

    async fn drive_ref(&self, a: &DriveArg) -> Result<String> {
        self.note("drive", &a.drive);
        if let Some(p) = &a.project {
            self.note("project", p);
        }
        match &a.project {
            None => Ok(a.drive.to_string()),
            Some(p) => {
                self.in_project("/v1/drives", "drive", a.drive.as_str(), p.as_str())
                    .await
            }
        }
    }

    async fn in_project(&self, list: &str, what: &str, r: &str, project: &str) -> Result<String> {
        let all = self.get(list).await?;
        let found: Vec<&Value> = all
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["project"] == project)
            .filter(|v| v["name"] == r || v["id"].as_str().is_some_and(|id| id.starts_with(r)))
            .collect();
        match found.as_slice() {
            [one] => Ok(one["id"].as_str().unwrap_or_default().to_owned()),
            [] => Err(Failure::Problem {
                status: 404,
                code: format!("{}_not_found", what.to_lowercase()),
                detail: format!("No {what} {r} in project {project} that you can see"),
                raw: Bytes::new(),
            }),
            many => Err(Failure::Problem {
                status: 409,
                code: "ambiguous".into(),
                detail: format!(
                    "{r} names {} {what}s in project {project}: {}",
                    many.len(),
                    many.iter()
                        .map(|v| v["id"].as_str().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                raw: Bytes::new(),
            }),
        }
    }

    /// VM ids to names, of the VMs the caller sees (and, for admins, of the host's).
    async fn vm_names(&self) -> HashMap<String, String> {
        let mut names = HashMap::new();
        for path in ["/v1/vms", "/v1/host/vms"] {
            if let Ok(Value::Array(vs)) = self.get(path).await {
                for v in vs {
                    if let (Some(id), Some(n)) = (v["id"].as_str(), v["name"].as_str()) {
                        names.insert(id.to_owned(), n.to_owned());
                    }
                }
            }
        }
        names
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

fn body(v: Value) -> Option<Bytes> {
    Some(Bytes::from(serde_json::to_vec(&v).expect("json")))
}

fn main() {
    // SAFETY: restoring the default action of SIGPIPE before any thread exists: a write to a
    // closed pipe then ends the process quietly, as for any Unix filter (Rust ignores
    // SIGPIPE by default and would panic on the write instead).
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let format = cli.format();
    let ctx = Ctx {
        c: vmwarden::client::Client::new(cli.socket.clone())
            .act_as(cli.act_as.as_ref().map(|u| u.to_string())),
        format,
        yes: cli.yes,
        quiet: cli.quiet,
        named: Default::default(),
    };
    if let Some(u) = &cli.act_as {
        ctx.note("you", u);
    }
    let code = match rt.block_on(run(&ctx, cli.cmd)) {
        Ok(c) => c,
        Err(Failure::Problem {
            status,
            code,
            detail,
            raw,
        }) => {
            if format == Format::Json && !raw.is_empty() {
                println!("{}", String::from_utf8_lossy(&raw));
            }
            eprintln!("vmwarden: {}", rt.block_on(ctx.advise(&code, &detail)));
            exit_code(status)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("vmwarden: {m}");
            2
        }
        Err(Failure::Other(e)) => {
            eprintln!("vmwarden: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(ctx: &Ctx, cmd: Cmd) -> Result<i32> {
    let now = now_ms();
    match cmd {
        Cmd::Health => {
            let h = ctx.get("/v1/health").await?;
            let ok = h["status"] == "ok";
            ctx.show(&h, |h| match ok {
                true => format!(
                    "ok: vmwarden {}, libvirt {}\n",
                    h["version"].as_str().unwrap_or("?"),
                    h["hypervisor"].as_str().unwrap_or("?")
                ),
                false => format!(
                    "degraded: {}\n",
                    h["reason"]
                        .as_str()
                        .unwrap_or("the hypervisor does not answer")
                ),
            });
            return Ok(if ok { 0 } else { 6 });
        }
        Cmd::Status => return status(ctx, now).await,
        Cmd::Me => {
            let v = ctx.get("/v1/me").await?;
            ctx.show(&v, render::me);
        }
        Cmd::User(u) => user(ctx, u).await?,
        Cmd::Project(p) => project(ctx, p, now).await?,
        Cmd::Drive(d) => drive(ctx, d).await?,
        Cmd::Vm(v) => vm(ctx, v, now).await?,
        Cmd::Host(h) => host(ctx, h).await?,
        Cmd::Fleet(FleetCmd::Hosts) => {
            let v = ctx.get("/v1/fleet/hosts").await?;
            let now = now_ms();
            ctx.show_list(&v, "name", |r| render::fleet_hosts(r, now).render());
        }
        Cmd::Fleet(FleetCmd::Vms) => {
            let v = ctx.get("/v1/fleet/vms").await?;
            ctx.show_list(&v, "id", |r| render::fleet_vms(r).render());
        }
        Cmd::Fleet(FleetCmd::Enroll { host, fingerprint }) => {
            let v = ctx
                .call(
                    Method::POST,
                    &format!("/v1/fleet/hosts/{host}/enroll"),
                    body(json!({ "fingerprint": fingerprint })),
                )
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "Host {host} is enrolled ({}); it receives project keys from the next unlock on.\n",
                    v["fingerprint"].as_str().unwrap_or("")
                )
            });
        }
        Cmd::Fleet(FleetCmd::Unenroll { host }) => {
            let v = ctx
                .call(
                    Method::DELETE,
                    &format!("/v1/fleet/hosts/{host}/enroll"),
                    None,
                )
                .await?;
            ctx.show(&v, |_| {
                format!("Host {host} is not enrolled; it holds no envelope any more.\n")
            });
        }
        Cmd::Fleet(FleetCmd::Fence { host }) => {
            ctx.confirm(&format!(
                "fence host {host}: you state that it is powered off, and its VMs may start elsewhere"
            ))?;
            let v = ctx
                .call(
                    Method::POST,
                    &format!("/v1/fleet/hosts/{host}/fence"),
                    body(json!({})),
                )
                .await?;
            ctx.show(&v, |v| {
                let n = v["released"].as_array().map_or(0, |a| a.len());
                format!("Host {host} is fenced; {n} VMs it held may start on another host.\n")
            });
        }
        Cmd::Audit {
            vm,
            user,
            since,
            until,
            limit,
        } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(v) = vm {
                q.push(format!("vm={v}"));
            }
            if let Some(u) = user {
                q.push(format!("user={u}"));
            }
            for (k, v) in [("since", since), ("until", until)] {
                if let Some(v) = v {
                    let ms = render::parse_when(&v, now)
                        .map_err(|e| Failure::Usage(format!("--{k}: {e}")))?;
                    q.push(format!("{k}={}", ms.max(0)));
                }
            }
            let rows = ctx.get(&format!("/v1/audit?{}", q.join("&"))).await?;
            let names = ctx.vm_names().await;
            ctx.show_list(&rows, "id", |r| render::audit(r, &names, now).render());
        }
        Cmd::Events { vm, project, kind } => {
            return follow::events(ctx, vm, project, kind).await;
        }
        Cmd::Completion { shell } => {
            completion(shell)?;
        }
        Cmd::Man { page } => {
            let text = match page {
                ManPage::Vmwarden => man(Cli::command(), "1")?,
                ManPage::Vmwardend => man(vmwarden::cli::daemon_args::Args::command(), "8")?,
                ManPage::Config => vmwarden::cli::config_man::page(),
            };
            print!("{text}");
        }
    }
    Ok(0)
}

fn man(cmd: clap::Command, section: &str) -> Result<String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("vmwarden")
        .source(format!("vmwarden {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The registration script of dynamic completion: the shell calls `vmwarden` back with
/// `COMPLETE=<shell>` for candidates, VM and drive names included.
fn completion(shell: ShellArg) -> Result<()> {
    use clap_complete::env::EnvCompleter;
    let exe = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| {
            if p.components().count() > 1 {
                std::fs::canonicalize(p).ok()
            } else {
                None
            }
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "vmwarden".into());
    let mut out = std::io::stdout();
    let r = match shell {
        ShellArg::Bash => clap_complete::env::Bash
            .write_registration("COMPLETE", "vmwarden", "vmwarden", &exe, &mut out),
        ShellArg::Zsh => clap_complete::env::Zsh
            .write_registration("COMPLETE", "vmwarden", "vmwarden", &exe, &mut out),
        ShellArg::Fish => clap_complete::env::Fish
            .write_registration("COMPLETE", "vmwarden", "vmwarden", &exe, &mut out),
    };
    r?;
    Ok(())
}

async fn status(ctx: &Ctx, now: i64) -> Result<i32> {
    let health = ctx.get("/v1/health").await?;
    let me = ctx.get("/v1/me").await?;
    let admin = me["admin"] == true;
    let vms = if admin {
        ctx.get("/v1/host/vms").await?
    } else {
        ctx.get("/v1/vms").await?
    };
    let projects = ctx.get("/v1/projects").await?;
    let mut by_state: std::collections::BTreeMap<String, usize> = Default::default();
    for v in vms.as_array().into_iter().flatten() {
        *by_state
            .entry(v["state"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let ok = health["status"] == "ok";
    let v = json!({
        "health": health,
        "vms_by_state": by_state,
        "vms_seen_as": if admin { "host" } else { "role holder" },
        "projects": projects,
    });
    ctx.show(&v, |_| {
        let mut out = String::new();
        out.push_str(&format!(
            "Daemon:    vmwarden {}, {}\n",
            health["version"].as_str().unwrap_or("?"),
            if ok {
                "ok".to_owned()
            } else {
                format!("degraded: {}", health["reason"].as_str().unwrap_or("?"))
            }
        ));
        out.push_str(&format!(
            "libvirt:   {}\n",
            health["hypervisor"].as_str().unwrap_or("?")
        ));
        let total: usize = by_state.values().sum();
        let states: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
        out.push_str(&format!(
            "VMs:       {} ({} {})\n",
            if states.is_empty() {
                "none".to_owned()
            } else {
                states.join(", ")
            },
            total,
            if admin {
                "on this host"
            } else {
                "you hold a role on"
            }
        ));
        let ps: Vec<String> = projects
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {}",
                    p["name"].as_str().unwrap_or("?"),
                    render::key_cell(p, now)
                )
            })
            .collect();
        out.push_str(&format!(
            "Projects:  {}\n",
            if ps.is_empty() {
                "none".to_owned()
            } else {
                ps.join("\n           ")
            }
        ));
        out
    });
    Ok(if ok { 0 } else { 6 })
}

async fn user(ctx: &Ctx, u: UserCmd) -> Result<()> {
    if let UserCmd::Put { name, .. } | UserCmd::Delete { name } = &u {
        ctx.note("user", name);
    }
    match u {
        UserCmd::List => {
            let v = ctx.get("/v1/users").await?;
            ctx.show_list(&v, "name", |r| render::users(r).render());
        }
        UserCmd::Put { name, team, admin } => {
            let v = ctx
                .call(
                    Method::PUT,
                    &format!("/v1/users/{name}"),
                    body(json!({"team": team, "admin": admin})),
                )
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "User {name} {} (team {}, admin: {}).\n",
                    change_words(&v["change"]),
                    v["team"].as_str().unwrap_or("?"),
                    render::admin_cell(v)
                )
            });
        }
        UserCmd::Delete { name } => {
            ctx.confirm(&format!("delete user {name}"))?;
            let v = ctx
                .call(Method::DELETE, &format!("/v1/users/{name}"), None)
                .await?;
            ctx.show(&v, |v| {
                format!("User {name} {}.\n", change_words(&v["change"]))
            });
        }
    }
    Ok(())
}

fn change_words(c: &Value) -> &'static str {
    match c.as_str() {
        Some("created") => "registered",
        Some("updated") => "updated",
        Some("removed") => "removed",
        _ => "unchanged (already so)",
    }
}

#[derive(Serialize)]
struct ShareBody<'a> {
    share: &'a str,
}

async fn project(ctx: &Ctx, p: ProjectCmd, now: i64) -> Result<()> {
    match &p {
        ProjectCmd::Create { name, .. } => ctx.note("project", name),
        ProjectCmd::List => {}
        ProjectCmd::Unlock { project, .. }
        | ProjectCmd::Lock { project }
        | ProjectCmd::Resplit { project, .. }
        | ProjectCmd::Delete { project } => ctx.note("project", project),
        ProjectCmd::AddMember { project, user }
        | ProjectCmd::RemoveMember { project, user, .. } => {
            ctx.note("project", project);
            ctx.note("user", user);
        }
    }
    match p {
        ProjectCmd::Create {
            name,
            members,
            shares,
        } => {
            let out = ShareFiles::open(shares)?;
            let r = ctx
                .call(
                    Method::POST,
                    "/v1/projects",
                    body(json!({"name": name, "members": members})),
                )
                .await;
            out.finish(ctx, r, &format!("Project {name} created"))?;
        }
        ProjectCmd::List => {
            let v = ctx.get("/v1/projects").await?;
            ctx.show_list(&v, "name", |r| render::projects(r, now).render());
        }
        ProjectCmd::Unlock {
            project,
            share_file,
        } => {
            let share = read_share(share_file)?;
            let mut b = Zeroizing::new(Vec::with_capacity(share.len() + 16));
            serde_json::to_writer(&mut *b, &ShareBody { share: &share })
                .map_err(anyhow::Error::from)?;
            let v = ctx
                .call(
                    Method::POST,
                    &format!("/v1/projects/{project}/unlock"),
                    Some(Bytes::from(b.to_vec())),
                )
                .await?;
            ctx.show(&v, |v| {
                format!("Project {project}: {}.\n", render::key_cell(v, now))
            });
        }
        ProjectCmd::Lock { project } => {
            let v = ctx
                .call(Method::POST, &format!("/v1/projects/{project}/lock"), None)
                .await?;
            ctx.show(&v, |v| {
                format!("Project {project}: {}.\n", render::key_cell(v, now))
            });
        }
        ProjectCmd::Resplit { project, shares } => {
            ctx.confirm(&format!(
                "re-key project {project} (the old shares stop working once the new pair has unlocked it)"
            ))?;
            let out = ShareFiles::open(shares)?;
            let r = ctx
                .busy(
                    format!("Re-keying {project}"),
                    ctx.call(
                        Method::POST,
                        &format!("/v1/projects/{project}/resplit"),
                        None,
                    ),
                )
                .await;
            out.finish(ctx, r, &format!("Project {project} re-keyed"))?;
        }
        ProjectCmd::AddMember { project, user } => {
            let v = ctx
                .call(
                    Method::PUT,
                    &format!("/v1/projects/{project}/members/{user}"),
                    None,
                )
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "{user} {} project {project}.\n",
                    match v["change"].as_str() {
                        Some("created") => "added to",
                        _ => "was already a member of",
                    }
                )
            });
        }
        ProjectCmd::RemoveMember {
            project,
            user,
            force,
            transfer_to,
        } => {
            let mut q = vec![];
            if force {
                ctx.confirm(&format!(
                    "remove {user} from project {project}, handing what they own to {}",
                    transfer_to
                        .as_ref()
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "the other owners".into())
                ))?;
                q.push("force=true".to_owned());
            }
            if let Some(t) = &transfer_to {
                q.push(format!("transfer_to={t}"));
            }
            let qs = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            let v = ctx
                .call(
                    Method::DELETE,
                    &format!("/v1/projects/{project}/members/{user}{qs}"),
                    None,
                )
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "{user} {} project {project}.\n",
                    match v["change"].as_str() {
                        Some("removed") => "removed from",
                        _ => "was not a member of",
                    }
                )
            });
        }
        ProjectCmd::Delete { project } => {
            ctx.confirm(&format!("delete project {project} and forget its key"))?;
            let v = ctx
                .call(Method::DELETE, &format!("/v1/projects/{project}"), None)
                .await?;
            ctx.show(&v, |v| {
                format!("Project {project} {}.\n", change_words(&v["change"]))
            });
        }
    }
    Ok(())
}

async fn drive(ctx: &Ctx, d: DriveCmd) -> Result<()> {
    match d {
        DriveCmd::Create {
            name,
            project,
            size_mib,
        } => {
            ctx.note("project", &project);
            ctx.note("drive", &name);
            let v = ctx
                .busy(
                    format!("Creating drive {name} ({})", render::size(size_mib)),
                    ctx.call(
                        Method::POST,
                        "/v1/drives",
                        body(json!({"project": project, "name": name, "size_mib": size_mib})),
                    ),
                )
                .await?;
            let names = HashMap::new();
            ctx.show(&v, |v| render::drive(v, &names));
        }
        DriveCmd::List { project } => {
            let mut v = ctx.get("/v1/drives").await?;
            if let (Some(p), Value::Array(a)) = (&project, &mut v) {
                a.retain(|d| d["project"] == p.as_str());
            }
            let names = ctx.vm_names().await;
            ctx.show_list(&v, "id", |r| render::drives(r, &names).render());
        }
        DriveCmd::Show(a) => {
            let r = ctx.drive_ref(&a).await?;
            let v = ctx.get(&format!("/v1/drives/{r}")).await?;
            let names = ctx.vm_names().await;
            ctx.show(&v, |v| render::drive(v, &names));
        }
        DriveCmd::Delete(a) => {
            let r = ctx.drive_ref(&a).await?;
            ctx.confirm(&format!("delete drive {} and its data", a.drive))?;
            let v = ctx
                .call(Method::DELETE, &format!("/v1/drives/{r}"), None)
                .await?;
            ctx.show(&v, |_| format!("Drive {} deleted.\n", a.drive));
        }
    }
    Ok(())
}

fn api_duration(s: &str, flag: &str) -> Result<String> {
    let d =
        vmwarden::model::parse_duration(s).map_err(|e| Failure::Usage(format!("{flag}: {e}")))?;
    Ok(vmwarden::model::format_api_duration(d))
}

async fn vm(ctx: &Ctx, v: VmCmd, now: i64) -> Result<()> {
    let show = |ctx: &Ctx, v: &Value| ctx.show(v, |v| render::vm(v, now));
    match v {
        VmCmd::Create {
            name,
            project,
            vcpus,
            memory_mib,
            drives,
            idle_after,
        } => {
            ctx.note("project", &project);
            ctx.note("vm", &name);
            let mut b = json!({"name": name, "project": project, "vcpus": vcpus,
                "memory_mib": memory_mib, "drives": drives});
            if let Some(a) = idle_after {
                b["idle"] = json!({"after": api_duration(&a, "--idle-after")?});
            }
            let v = ctx.call(Method::POST, "/v1/vms", body(b)).await?;
            show(ctx, &v);
        }
        VmCmd::List { project, state } => {
            let mut v = ctx.get("/v1/vms").await?;
            if let Value::Array(a) = &mut v {
                if let Some(p) = &project {
                    a.retain(|x| x["project"] == p.as_str());
                }
                if let Some(s) = state {
                    let s = format!("{s:?}").to_lowercase();
                    a.retain(|x| x["state"] == s.as_str());
                }
            }
            // The list leaves idle clocks out (so that it can be cached); running VMs are
            // asked one by one, at once.
            let mut idle = HashMap::new();
            if ctx.format == Format::Table && !ctx.quiet {
                let running: Vec<String> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["state"] == "running")
                    .filter_map(|x| x["id"].as_str().map(str::to_owned))
                    .collect();
                let answers = futures_util::future::join_all(
                    running
                        .iter()
                        .map(|id| ctx.get_owned(format!("/v1/vms/{id}"))),
                )
                .await;
                for (id, a) in running.into_iter().zip(answers) {
                    if let Ok(a) = a {
                        idle.insert(id, a["idle_status"].clone());
                    }
                }
            }
            ctx.show_list(&v, "id", |r| render::vms(r, &idle, now).render());
        }
        VmCmd::Show(a) => {
            let r = ctx.vm_ref(&a).await?;
            let v = ctx.get(&format!("/v1/vms/{r}")).await?;
            show(ctx, &v);
        }
        VmCmd::Update {
            vm,
            vcpus,
            memory_mib,
            idle_after,
            idle,
        } => {
            let r = ctx.vm_ref(&vm).await?;
            let mut b = serde_json::Map::new();
            if let Some(v) = vcpus {
                b.insert("vcpus".into(), json!(v));
            }
            if let Some(m) = memory_mib {
                b.insert("memory_mib".into(), json!(m));
            }
            if idle_after.is_some() || idle.is_some() {
                let mut i = serde_json::Map::new();
                if let Some(a) = idle_after {
                    i.insert("after".into(), json!(api_duration(&a, "--idle-after")?));
                }
                if let Some(e) = idle {
                    i.insert("enabled".into(), json!(e));
                }
                b.insert("idle".into(), Value::Object(i));
            }
            let v = ctx
                .call(
                    Method::PATCH,
                    &format!("/v1/vms/{r}"),
                    body(Value::Object(b)),
                )
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "VM {} {}.\n{}",
                    vm.vm,
                    change_words(&v["change"]),
                    render::vm(v, now)
                )
            });
        }
        VmCmd::Delete(a) => {
            let r = ctx.vm_ref(&a).await?;
            ctx.confirm(&format!("delete VM {} (its drives stay)", a.vm))?;
            let v = ctx
                .call(Method::DELETE, &format!("/v1/vms/{r}"), None)
                .await?;
            ctx.show(&v, |_| format!("VM {} deleted.\n", a.vm));
        }
        VmCmd::Start(a) => {
            let r = ctx.vm_ref(&a).await?;
            let v = ctx
                .busy(
                    format!("Starting {}", a.vm),
                    ctx.call(Method::POST, &format!("/v1/vms/{r}/start"), None),
                )
                .await?;
            show(ctx, &v);
        }
        VmCmd::Stop { vm, force, no_wait } => {
            let r = ctx.vm_ref(&vm).await?;
            follow::stop(
                ctx,
                &format!("/v1/vms/{r}/stop"),
                vm.vm.as_str(),
                force,
                no_wait,
            )
            .await?;
        }
        VmCmd::Keepalive(a) => {
            let r = ctx.vm_ref(&a).await?;
            let v = ctx
                .call(Method::POST, &format!("/v1/vms/{r}/keepalive"), None)
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "VM {}: idle clock restarted ({}).\n",
                    a.vm,
                    render::idle_cell(v, v.get("idle_status"), now)
                )
            });
        }
        VmCmd::Attach { vm, drive } => {
            ctx.note("drive", &drive);
            let r = ctx.vm_ref(&vm).await?;
            let v = ctx
                .busy(
                    format!("Attaching {drive} to {}", vm.vm),
                    ctx.call(Method::PUT, &format!("/v1/vms/{r}/drives/{drive}"), None),
                )
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "Drive {drive} {} VM {}.\n",
                    said(v, "was already attached to", "attached to"),
                    vm.vm
                )
            });
        }
        VmCmd::Detach { vm, drive } => {
            ctx.note("drive", &drive);
            let r = ctx.vm_ref(&vm).await?;
            let v = ctx
                .busy(
                    format!(
                        "Detaching {drive} from {} (the guest must let it go)",
                        vm.vm
                    ),
                    ctx.call(Method::DELETE, &format!("/v1/vms/{r}/drives/{drive}"), None),
                )
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "Drive {drive} {} VM {}.\n",
                    said(v, "was not attached to", "detached from"),
                    vm.vm
                )
            });
        }
        VmCmd::Share {
            vm,
            user,
            role,
            confirm_drive_access,
        } => {
            ctx.note("user", &user);
            let r = ctx.vm_ref(&vm).await?;
            let role = format!("{role:?}").to_lowercase();
            let v = ctx
                .call(
                    Method::PUT,
                    &format!("/v1/vms/{r}/members/{user}"),
                    body(json!({"role": role, "confirm_drive_access": confirm_drive_access})),
                )
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "{user} {} {} {role} of VM {}.\n",
                    said(v, "was already", "is now"),
                    if role == "owner" { "an" } else { "a" },
                    vm.vm
                )
            });
        }
        VmCmd::Unshare { vm, user } => {
            ctx.note("user", &user);
            let r = ctx.vm_ref(&vm).await?;
            let v = ctx
                .call(Method::DELETE, &format!("/v1/vms/{r}/members/{user}"), None)
                .await?;
            ctx.show(&v, |v| {
                format!(
                    "{user} {} VM {}.\n",
                    said(v, "had no role on", "no longer has a role on"),
                    vm.vm
                )
            });
        }
        VmCmd::Members(a) => {
            let r = ctx.vm_ref(&a).await?;
            let v = ctx.get(&format!("/v1/vms/{r}/members")).await?;
            ctx.show(&v, |v| render::members(v).render());
        }
        VmCmd::Logs { vm, follow } => {
            let r = ctx.vm_ref(&vm).await?;
            follow::logs(ctx, &r, follow).await?;
        }
    }
    Ok(())
}

async fn host(ctx: &Ctx, h: HostCmd) -> Result<()> {
    match h {
        HostCmd::Vms => {
            let v = ctx.get("/v1/host/vms").await?;
            ctx.show_list(&v, "id", |r| render::host_vms(r).render());
        }
        HostCmd::Stop { vm, force, no_wait } => {
            ctx.note("vm", &vm);
            follow::stop(
                ctx,
                &format!("/v1/host/vms/{vm}/stop"),
                vm.as_str(),
                force,
                no_wait,
            )
            .await?;
        }
    }
    Ok(())
}

impl Ctx {
    async fn get_owned(&self, path: String) -> Result<Value> {
        self.get(&path).await
    }
}

fn read_share(file: Option<PathBuf>) -> Result<Zeroizing<String>> {
    let mut s = Zeroizing::new(String::new());
    match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::File::open(&p)
                .with_context(|| format!("Cannot open {}", p.display()))?
                .read_to_string(&mut s)?;
        }
        _ => {
            if std::io::stdin().is_terminal() {
                eprintln!("Paste the share, then press Enter and Ctrl-D:");
            }
            std::io::stdin().read_to_string(&mut s)?;
        }
    }
    let trimmed = Zeroizing::new(s.trim().to_owned());
    if trimmed.is_empty() {
        return Err(Failure::Usage(
            "No share given: pass --share-file FILE or pipe the share on stdin".into(),
        ));
    }
    Ok(trimmed)
}

/// Where the shares of a new project or re-key go. The files are created (0600, never over
/// an existing file) before the request, so an answer that arrives always has somewhere to
/// go: the shares exist only in that answer.
struct ShareFiles {
    files: Option<[(PathBuf, std::fs::File); 2]>,
}

impl ShareFiles {
    fn open(o: ShareOut) -> Result<Self> {
        let create = |p: &PathBuf| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("Cannot create {} (it must not exist yet)", p.display()))
        };
        match (o.admin_share_file, o.member_share_file) {
            (Some(a), Some(m)) => {
                let fa = create(&a)?;
                let fm = create(&m).inspect_err(|_| {
                    let _ = std::fs::remove_file(&a);
                })?;
                Ok(Self {
                    files: Some([(a, fa), (m, fm)]),
                })
            }
            (None, None) if o.show_shares => Ok(Self { files: None }),
            _ => Err(Failure::Usage(
                "The shares are shown only once: give both --admin-share-file and \
                 --member-share-file (created 0600), or --show-shares to print them"
                    .into(),
            )),
        }
    }

    fn finish(self, ctx: &Ctx, r: Result<Value>, done: &str) -> Result<()> {
        let mut v = match r {
            Ok(v) => v,
            Err(e) => {
                if let Some(files) = &self.files {
                    for (p, _) in files {
                        let _ = std::fs::remove_file(p);
                    }
                }
                return Err(e);
            }
        };
        let Some(files) = self.files else {
            // --show-shares: the person asked to see them.
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            return Ok(());
        };
        let mut written = vec![];
        for ((path, mut f), key) in files.into_iter().zip(["admin_share", "member_share"]) {
            let share = Zeroizing::new(v[key].as_str().unwrap_or_default().to_owned());
            f.write_all(share.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
                .and_then(|_| f.sync_all())
                .with_context(|| format!("Cannot write {}", path.display()))?;
            if let Value::Object(o) = &mut v {
                o.remove(key);
                o.insert(format!("{key}_file"), json!(path.display().to_string()));
            }
            written.push(path);
        }
        ctx.show(&v, |_| {
            format!(
                "{done}. The admin share is in {}, the member share in {}: give the member \
                 share to a project member. They are shown only this once.\n",
                written[0].display(),
                written[1].display()
            )
        });
        Ok(())
    }
}

/// The words for an answer's `change`: one text when nothing changed, another when it did.
fn said<'a>(v: &Value, unchanged: &'a str, changed: &'a str) -> &'a str {
    if v["change"] == "unchanged" {
        unchanged
    } else {
        changed
    }
}
