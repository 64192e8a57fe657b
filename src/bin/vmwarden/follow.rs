//! Commands that follow something as it happens: the event stream, a stop to its end, and a
//! VM's serial console.

use super::{Ctx, Failure, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use serde_json::{json, Value};
use std::io::Write;
use vmwarden::cli::client::Format;
use vmwarden::cli::{render, yaml};
use vmwarden::model::{ObjectRef, ProjectName};

/// Server-Sent Events read off a response body, one parsed event at a time.
struct Stream {
    body: Incoming,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(ctx: &Ctx) -> Result<Stream> {
        let resp = ctx
            .c
            .send(Method::GET, "/v1/events", None, None)
            .await
            .map_err(|e| ctx.unreachable(e))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let raw = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            return Err(Failure::Problem {
                status,
                code: v["code"].as_str().unwrap_or("error").to_owned(),
                detail: v["detail"]
                    .as_str()
                    .unwrap_or("The stream was refused")
                    .to_owned(),
                raw,
            });
        }
        Ok(Stream {
            body: resp.into_body(),
            buf: vec![],
        })
    }

    /// The next event as `{kind, ..., data}`; `None` when the stream ends.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let (mut kind, mut data) = (None, String::new());
                for line in text.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = Some(k.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                let Some(kind) = kind else { continue };
                let mut v: Value = serde_json::from_str(&data).unwrap_or(json!({"data": data}));
                if v.get("kind").is_none() {
                    v["kind"] = json!(kind);
                    let d = v.clone();
                    v["data"] = d;
                }
                return Some(v);
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                _ => return None,
            }
        }
    }
}

fn now_ms() -> i64 {
    super::now_ms()
}

/// `vmwarden events`: one line per event (or one JSON object per line).
pub async fn events(
    ctx: &Ctx,
    vm: Option<ObjectRef>,
    project: Option<ProjectName>,
    kinds: Vec<String>,
) -> Result<i32> {
    let vm_id = match &vm {
        Some(r) => Some(
            ctx.get(&format!("/v1/vms/{r}"))
                .await?
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        None => None,
    };
    let mut names = ctx.vm_names().await;
    let mut s = Stream::open(ctx).await?;
    let mut out = std::io::stdout();
    while let Some(ev) = s.next().await {
        let kind = ev["kind"].as_str().unwrap_or("").to_owned();
        if let (Some(id), Some(n)) = (ev["data"]["id"].as_str(), ev["data"]["name"].as_str()) {
            names.insert(id.to_owned(), n.to_owned());
        }
        let ev_vm = ev["vm"].as_str().or_else(|| ev["data"]["id"].as_str());
        if vm_id.as_deref().is_some_and(|id| ev_vm != Some(id)) {
            continue;
        }
        if project.as_ref().is_some_and(|p| {
            ev["project"]
                .as_str()
                .or_else(|| ev["data"]["project"].as_str())
                != Some(p.as_str())
        }) {
            continue;
        }
        if !kinds.is_empty() && !kinds.contains(&kind) {
            continue;
        }
        let line = match ctx.format {
            Format::Json => format!("{}\n", serde_json::to_string(&ev).expect("json")),
            Format::Yaml => format!("---\n{}", yaml::to_yaml(&ev)),
            Format::Table => format!("{}\n", render::event_line(&ev, &names, now_ms())),
        };
        out.write_all(line.as_bytes())?;
        out.flush()?;
    }
    Ok(0)
}

/// `vm stop` and `host stop`: asks for the stop without waiting, then follows the VM's
/// state to the end on the event stream and says how it ended. With `no_wait`, returns once
/// the stop has begun.
pub async fn stop(ctx: &Ctx, path: &str, label: &str, force: bool, no_wait: bool) -> Result<i32> {
    // Subscribed before the stop, so its end cannot be missed.
    let stream = if no_wait {
        None
    } else {
        Stream::open(ctx).await.ok()
    };
    let body = Some(Bytes::from(
        serde_json::to_vec(&json!({"force": force, "wait": false})).expect("json"),
    ));
    let r = ctx
        .c
        .call(Method::POST, path, body)
        .await
        .map_err(|e| ctx.unreachable(e))?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status >= 400 {
        return Err(Failure::Problem {
            status: r.status,
            code: v["code"].as_str().unwrap_or("error").to_owned(),
            detail: v["detail"].as_str().unwrap_or("The stop failed").to_owned(),
            raw: r.body,
        });
    }
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    if r.status == 200 {
        ctx.show(&v, |_| format!("VM {label} is already stopped.\n"));
        return Ok(0);
    }
    if no_wait {
        ctx.show(&v, |_| format!("VM {label} is stopping.\n"));
        return Ok(0);
    }
    let wait = async {
        match stream {
            Some(mut s) => {
                while let Some(ev) = s.next().await {
                    if ev["kind"] != "vm.state" || ev["data"]["id"] != id.as_str() {
                        continue;
                    }
                    match ev["data"]["state"].as_str() {
                        Some("stopped") => return Ok(ev["data"].clone()),
                        Some("running") => {
                            return Err(Failure::Problem {
                                status: 502,
                                code: "hypervisor_error".into(),
                                detail: format!(
                                    "The stop of VM {label} failed; it is still running"
                                ),
                                raw: Bytes::new(),
                            })
                        }
                        _ => {}
                    }
                }
                poll_stopped(ctx, &id).await
            }
            None => poll_stopped(ctx, &id).await,
        }
    };
    let end = ctx
        .busy(
            format!(
                "Stopping {label} ({})",
                if force {
                    "destroying"
                } else {
                    "ACPI shutdown, destroyed after the host's timeout"
                }
            ),
            wait,
        )
        .await?;
    let how = match (end["via"].as_str(), force) {
        (Some("acpi"), _) => "the guest shut down (ACPI)".to_owned(),
        (Some("destroy"), true) => "destroyed (--force)".to_owned(),
        (Some("destroy"), false) => {
            "destroyed: the guest ignored ACPI until the host's shutdown timeout".to_owned()
        }
        _ => match end["reason"].as_str() {
            Some(r) => format!("stopped ({r})"),
            None => "stopped".to_owned(),
        },
    };
    let out = json!({"id": id, "state": "stopped", "via": end["via"], "reason": end["reason"]});
    ctx.show(&out, |_| format!("VM {label} stopped: {how}.\n"));
    Ok(0)
}

/// Without an event stream: asks for the VM's state until it is stopped.
async fn poll_stopped(ctx: &Ctx, id: &str) -> Result<Value> {
    loop {
        let path = format!("/v1/vms/{id}");
        let v = match ctx.get(&path).await {
            Ok(v) => v,
            // An admin without a role sees the VM in the host inventory only.
            Err(_) => ctx
                .get("/v1/host/vms")
                .await?
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["id"] == id)
                .cloned()
                .unwrap_or(Value::Null),
        };
        if v["state"] == "stopped" || v.is_null() {
            return Ok(json!({"reason": v["state_reason"]}));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `vm logs`: the serial console log, then (`--follow`) what it writes next.
pub async fn logs(ctx: &Ctx, vm: &str, follow: bool) -> Result<i32> {
    let mut offset = 0u64;
    let mut out = std::io::stdout();
    loop {
        let v = ctx
            .get(&format!("/v1/vms/{vm}/log?offset={offset}"))
            .await?;
        let next = v["next"].as_u64().unwrap_or(offset);
        if v["offset"].as_u64() == Some(0) && offset > 0 && next < offset {
            // A new log (the VM restarted): start over.
            offset = 0;
            continue;
        }
        out.write_all(v["text"].as_str().unwrap_or("").as_bytes())?;
        out.flush()?;
        let more = next > offset;
        offset = next;
        if !more {
            if !follow {
                return Ok(0);
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}
