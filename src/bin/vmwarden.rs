//! `vmwarden`: the command-line client of the control socket. Human tables by default,
//! `--json` for scripts. Exit codes tell outcomes apart: 0 ok, 1 other failure, 2 usage,
//! 3 not found, 4 denied, 5 conflict or locked, 6 hypervisor unavailable, 7 invalid input.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;
use vmwarden::cli::client::{Cli, Cmd, DriveCmd, HostCmd, ProjectCmd, ShareOut, UserCmd, VmCmd};
use vmwarden::client::Reply;
use zeroize::Zeroizing;

/// The client: a request on a fresh connection; share bodies leave zeroizing memory only
/// for the one copy hyper sends.
struct Client(vmwarden::client::Client);

impl Client {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        Ok(self
            .0
            .send(method, path, None, body.map(|b| Bytes::from(b.to_vec())))
            .await?)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> anyhow::Result<Reply> {
        Ok(self
            .0
            .call(method, path, body.map(|b| Bytes::from(b.to_vec())))
            .await?)
    }
}

fn exit_code(status: u16) -> i32 {
    match status {
        404 => 3,
        401 | 403 => 4,
        409 | 423 => 5,
        503 => 6,
        400 | 405 | 408 | 413 => 7,
        _ => 1,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(_) => "{…}".into(),
        other => other.to_string(),
    }
}

fn print_human(v: &Value) {
    match v {
        Value::Array(rows) if rows.is_empty() => println!("(none)"),
        Value::Array(rows) => {
            let cols: Vec<String> = match &rows[0] {
                Value::Object(o) => o
                    .iter()
                    .filter(|(_, v)| !v.is_object())
                    .map(|(k, _)| k.clone())
                    .collect(),
                _ => {
                    for r in rows {
                        println!("{}", scalar(r));
                    }
                    return;
                }
            };
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| cols.iter().map(|c| scalar(&r[c])).collect())
                .collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].len())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |vals: Vec<String>| {
                let s: Vec<String> = vals
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect();
                println!("{}", s.join("  ").trim_end());
            };
            line(cols.iter().map(|c| c.to_uppercase()).collect());
            for r in cells {
                line(r);
            }
        }
        Value::Object(o) => {
            let w = o.keys().map(|k| k.len()).max().unwrap_or(0);
            for (k, v) in o {
                match v {
                    Value::Array(a) if a.iter().any(|x| x.is_object()) => {
                        println!("{k:<w$}:");
                        print_human(v);
                    }
                    _ => println!("{k:<w$}: {}", scalar(v)),
                }
            }
        }
        other => println!("{}", scalar(other)),
    }
}

fn read_share(file: Option<PathBuf>) -> anyhow::Result<Zeroizing<String>> {
    let mut s = Zeroizing::new(String::new());
    match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::File::open(&p)
                .with_context(|| format!("Cannot open {}", p.display()))?
                .read_to_string(&mut s)?;
        }
        _ => {
            std::io::stdin().read_to_string(&mut s)?;
        }
    }
    let trimmed = Zeroizing::new(s.trim().to_owned());
    if trimmed.is_empty() {
        bail!("No share given: pass --share-file FILE or pipe the share on stdin");
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
    fn open(o: ShareOut) -> anyhow::Result<Self> {
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
            _ => bail!(
                "The shares are shown only once: give both --admin-share-file and \
                 --member-share-file (created 0600), or --show-shares to print them"
            ),
        }
    }

    fn finish(self, r: Reply, json_out: bool) -> anyhow::Result<i32> {
        let mut v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status >= 400 {
            if let Some(files) = &self.files {
                for (p, _) in files {
                    let _ = std::fs::remove_file(p);
                }
            }
            return Ok(report_error(r.status, &v, &r.body, json_out));
        }
        let Some(files) = self.files else {
            println!("{}", String::from_utf8_lossy(&r.body));
            return Ok(0);
        };
        for ((path, mut f), key) in files.into_iter().zip(["admin_share", "member_share"]) {
            use std::io::Write;
            let share = Zeroizing::new(v[key].as_str().unwrap_or_default().to_owned());
            f.write_all(share.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
                .and_then(|_| f.sync_all())
                .with_context(|| format!("Cannot write {}", path.display()))?;
            v[key] = Value::Null;
            if let Value::Object(o) = &mut v {
                o.remove(key);
                o.insert(format!("{key}_file"), json!(path.display().to_string()));
            }
        }
        if json_out {
            println!("{v}");
        } else {
            print_human(&v);
        }
        Ok(0)
    }
}

fn report_error(status: u16, v: &Value, raw: &[u8], json_out: bool) -> i32 {
    if json_out {
        println!("{}", String::from_utf8_lossy(raw));
    } else {
        let detail = v["detail"].as_str().unwrap_or("request failed");
        let code = v["code"].as_str().unwrap_or("error");
        eprintln!("vmwarden: {detail} ({code}, HTTP {status})");
    }
    exit_code(status)
}

fn body(v: Value) -> Option<Zeroizing<Vec<u8>>> {
    Some(Zeroizing::new(serde_json::to_vec(&v).expect("json")))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmwarden: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let c = Client(vmwarden::client::Client::new(cli.socket.clone()).act_as(cli.act_as.clone()));
    use Method as M;
    let (method, path, req): (Method, String, Option<Zeroizing<Vec<u8>>>) = match cli.cmd {
        Cmd::Health => (M::GET, "/v1/health".into(), None),
        Cmd::Me => (M::GET, "/v1/me".into(), None),
        Cmd::User(u) => match u {
            UserCmd::List => (M::GET, "/v1/users".into(), None),
            UserCmd::Put { name, team, admin } => (
                M::PUT,
                format!("/v1/users/{name}"),
                body(json!({"team": team, "admin": admin})),
            ),
            UserCmd::Delete { name } => (M::DELETE, format!("/v1/users/{name}"), None),
        },
        Cmd::Project(p) => match p {
            ProjectCmd::Create {
                name,
                members,
                shares,
            } => {
                let out = ShareFiles::open(shares)?;
                let r = c
                    .call(
                        M::POST,
                        "/v1/projects",
                        body(json!({"name": name, "members": members})),
                    )
                    .await?;
                return out.finish(r, cli.json);
            }
            ProjectCmd::Status => (M::GET, "/v1/projects".into(), None),
            ProjectCmd::Unlock {
                project,
                share_file,
            } => {
                let share = read_share(share_file)?;
                let mut b = Zeroizing::new(Vec::with_capacity(share.len() + 16));
                serde_json::to_writer(&mut *b, &json!({"share": &*share}))?;
                (M::POST, format!("/v1/projects/{project}/unlock"), Some(b))
            }
            ProjectCmd::Lock { project } => (M::POST, format!("/v1/projects/{project}/lock"), None),
            ProjectCmd::Resplit { project, shares } => {
                let out = ShareFiles::open(shares)?;
                let r = c
                    .call(M::POST, &format!("/v1/projects/{project}/resplit"), None)
                    .await?;
                return out.finish(r, cli.json);
            }
            ProjectCmd::AddMember { project, user } => (
                M::PUT,
                format!("/v1/projects/{project}/members/{user}"),
                None,
            ),
            ProjectCmd::RemoveMember {
                project,
                user,
                force,
                transfer_to,
            } => {
                let mut q = vec![];
                if force {
                    q.push("force=true".to_string());
                }
                if let Some(t) = transfer_to {
                    q.push(format!("transfer_to={t}"));
                }
                let q = if q.is_empty() {
                    String::new()
                } else {
                    format!("?{}", q.join("&"))
                };
                (
                    M::DELETE,
                    format!("/v1/projects/{project}/members/{user}{q}"),
                    None,
                )
            }
            ProjectCmd::Delete { project } => (M::DELETE, format!("/v1/projects/{project}"), None),
        },
        Cmd::Drive(d) => match d {
            DriveCmd::Create {
                name,
                project,
                size_mib,
            } => (
                M::POST,
                "/v1/drives".into(),
                body(json!({"project": project, "name": name, "size_mib": size_mib})),
            ),
            DriveCmd::List => (M::GET, "/v1/drives".into(), None),
            DriveCmd::Show { id } => (M::GET, format!("/v1/drives/{id}"), None),
            DriveCmd::Delete { id } => (M::DELETE, format!("/v1/drives/{id}"), None),
        },
        Cmd::Vm(v) => match v {
            VmCmd::Create {
                name,
                project,
                vcpus,
                memory_mib,
                drives,
            } => (
                M::POST,
                "/v1/vms".into(),
                body(
                    json!({"name": name, "project": project, "vcpus": vcpus, "memory_mib": memory_mib, "drives": drives}),
                ),
            ),
            VmCmd::List => (M::GET, "/v1/vms".into(), None),
            VmCmd::Show { id } => (M::GET, format!("/v1/vms/{id}"), None),
            VmCmd::Update {
                id,
                vcpus,
                memory_mib,
                idle_after,
            } => {
                let mut b = serde_json::Map::new();
                if let Some(v) = vcpus {
                    b.insert("vcpus".into(), json!(v));
                }
                if let Some(m) = memory_mib {
                    b.insert("memory_mib".into(), json!(m));
                }
                if let Some(a) = idle_after {
                    // Any humantime spelling ("90min", "1 day") on the command line; the API
                    // takes its own narrower grammar.
                    let d = vmwarden::model::parse_duration(&a)
                        .map_err(|e| anyhow::anyhow!("--idle-after: {e}"))?;
                    b.insert(
                        "idle".into(),
                        json!({"after": vmwarden::model::format_api_duration(d)}),
                    );
                }
                (M::PATCH, format!("/v1/vms/{id}"), body(Value::Object(b)))
            }
            VmCmd::Delete { id } => (M::DELETE, format!("/v1/vms/{id}"), None),
            VmCmd::Start { id } => (M::POST, format!("/v1/vms/{id}/start"), None),
            VmCmd::Stop { id, force, no_wait } => (
                M::POST,
                format!("/v1/vms/{id}/stop"),
                body(json!({"force": force, "wait": !no_wait})),
            ),
            VmCmd::Keepalive { id } => (M::POST, format!("/v1/vms/{id}/keepalive"), None),
            VmCmd::Attach { id, drive } => (M::PUT, format!("/v1/vms/{id}/drives/{drive}"), None),
            VmCmd::Detach { id, drive } => {
                (M::DELETE, format!("/v1/vms/{id}/drives/{drive}"), None)
            }
            VmCmd::Share {
                id,
                user,
                role,
                confirm_drive_access,
            } => (
                M::PUT,
                format!("/v1/vms/{id}/members/{user}"),
                body(json!({"role": role, "confirm_drive_access": confirm_drive_access})),
            ),
            VmCmd::Unshare { id, user } => {
                (M::DELETE, format!("/v1/vms/{id}/members/{user}"), None)
            }
            VmCmd::Members { id } => (M::GET, format!("/v1/vms/{id}/members"), None),
        },
        Cmd::Host(h) => match h {
            HostCmd::Vms => (M::GET, "/v1/host/vms".into(), None),
            HostCmd::Stop { id, force } => (
                M::POST,
                format!("/v1/host/vms/{id}/stop"),
                body(json!({"force": force})),
            ),
        },
        Cmd::Audit {
            vm,
            user,
            since,
            until,
        } => {
            let mut q = vec![];
            if let Some(v) = vm {
                q.push(format!("vm={v}"));
            }
            if let Some(u) = user {
                q.push(format!("user={u}"));
            }
            if let Some(s) = since {
                q.push(format!("since={s}"));
            }
            if let Some(u) = until {
                q.push(format!("until={u}"));
            }
            let qs = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            (M::GET, format!("/v1/audit{qs}"), None)
        }
        Cmd::Events => return follow_events(&c).await,
    };
    let r = c.call(method, &path, req).await?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status >= 400 {
        return Ok(report_error(r.status, &v, &r.body, cli.json));
    }
    if cli.json || v.is_null() {
        println!("{}", String::from_utf8_lossy(&r.body));
    } else {
        print_human(&v);
    }
    Ok(0)
}

async fn follow_events(c: &Client) -> anyhow::Result<i32> {
    let mut resp = c.send(Method::GET, "/v1/events", None).await?;
    if resp.status().as_u16() >= 400 {
        let b = resp.into_body().collect().await?.to_bytes();
        eprintln!("vmwarden: {}", String::from_utf8_lossy(&b));
        return Ok(4);
    }
    use std::io::Write;
    while let Some(frame) = resp.body_mut().frame().await {
        if let Ok(data) = frame?.into_data() {
            std::io::stdout().write_all(&data)?;
            std::io::stdout().flush()?;
        }
    }
    Ok(0)
}
