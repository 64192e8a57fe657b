//! Routing, request DTOs and response encoding. Handlers are thin: parse, call one service
//! operation, encode.

use super::error::ApiError;
use crate::model::{
    DriveId, DriveName, IdlePolicy, ProjectName, Role, SecretBytes, TeamName, User, UserName, VmId,
    VmName,
};
use crate::service::{AuditFilter, CreatedProject, NewVm, Principal, Service, VmPatch};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use zeroize::Zeroize;

/// Response body: a whole JSON document or an event stream.
pub enum ApiBody {
    /// A complete body.
    Full(Full<Bytes>),
    /// Server-Sent Events, fed by a channel.
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(f) => Pin::new(f).poll_frame(cx),
            ApiBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }
}

impl std::fmt::Debug for ApiBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiBody::Full(_) => "ApiBody::Full",
            ApiBody::Stream(_) => "ApiBody::Stream",
        })
    }
}

/// Shared state of the HTTP layer.
#[derive(Debug)]
pub struct State {
    svc: Arc<Service>,
    closing: watch::Sender<bool>,
    /// uid -> user name, refreshed after a minute (names are looked up through NSS).
    users_by_uid: Mutex<HashMap<u32, (String, Instant)>>,
    /// Rendered `GET /v1/vms` per principal, tagged with the store generation it reflects.
    vms_cache: Mutex<HashMap<UserName, (u64, Bytes)>>,
    metrics: Mutex<HashMap<(Method, &'static str, u16), u64>>,
    /// Launch attempts by outcome code (`ok` or the problem code).
    launches: Mutex<HashMap<&'static str, u64>>,
    /// Request latency per route.
    latency: Mutex<HashMap<&'static str, Histogram>>,
}

impl State {
    /// Wraps the service.
    pub fn new(svc: Arc<Service>) -> Self {
        Self {
            svc,
            closing: watch::channel(false).0,
            users_by_uid: Mutex::new(HashMap::new()),
            vms_cache: Mutex::new(HashMap::new()),
            metrics: Mutex::new(HashMap::new()),
            launches: Mutex::new(HashMap::new()),
            latency: Mutex::new(HashMap::new()),
        }
    }

    /// Ends event streams so that draining connections can finish.
    pub fn closing(&self) {
        let _ = self.closing.send(true);
    }

    fn peer_name(&self, uid: u32) -> Option<String> {
        if let Some((n, at)) = self.users_by_uid.lock().unwrap().get(&uid) {
            if at.elapsed() < std::time::Duration::from_secs(60) {
                return Some(n.clone());
            }
        }
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()?
            .name;
        self.users_by_uid
            .lock()
            .unwrap()
            .insert(uid, (name.clone(), Instant::now()));
        Some(name)
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// A Prometheus histogram: cumulative counts per bucket, sum and count.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// Every route: (method, path pattern). The OpenAPI document is checked against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/me"),
    ("GET", "/v1/users"),
    ("PUT", "/v1/users/{name}"),
    ("DELETE", "/v1/users/{name}"),
    ("GET", "/v1/projects"),
    ("POST", "/v1/projects"),
    ("PUT", "/v1/projects/{project}/members/{user}"),
    ("DELETE", "/v1/projects/{project}/members/{user}"),
    ("POST", "/v1/projects/{project}/unlock"),
    ("POST", "/v1/projects/{project}/lock"),
    ("POST", "/v1/projects/{project}/resplit"),
    ("GET", "/v1/drives"),
    ("POST", "/v1/drives"),
    ("GET", "/v1/drives/{id}"),
    ("DELETE", "/v1/drives/{id}"),
    ("GET", "/v1/vms"),
    ("POST", "/v1/vms"),
    ("GET", "/v1/vms/{id}"),
    ("PATCH", "/v1/vms/{id}"),
    ("DELETE", "/v1/vms/{id}"),
    ("GET", "/v1/vms/{id}/members"),
    ("PUT", "/v1/vms/{id}/members/{user}"),
    ("DELETE", "/v1/vms/{id}/members/{user}"),
    ("POST", "/v1/vms/{id}/start"),
    ("POST", "/v1/vms/{id}/stop"),
    ("POST", "/v1/vms/{id}/keepalive"),
    ("PUT", "/v1/vms/{id}/drives/{drive}"),
    ("DELETE", "/v1/vms/{id}/drives/{drive}"),
    ("GET", "/v1/host/vms"),
    ("POST", "/v1/host/vms/{id}/stop"),
    ("GET", "/v1/events"),
    ("GET", "/v1/audit"),
    ("GET", "/metrics"),
];

/// The OpenAPI document served at /v1/openapi.json.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Finds the route pattern for a path, and the path parameters.
pub fn match_route(method: &Method, path: &str) -> Result<(&'static str, Vec<String>), ApiError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let mut path_known = false;
    for (m, pat) in ROUTES {
        let psegs: Vec<&str> = pat.split('/').skip(1).collect();
        if psegs.len() != segs.len() {
            continue;
        }
        let mut params = vec![];
        let ok = psegs.iter().zip(&segs).all(|(p, s)| {
            if p.starts_with('{') {
                params.push((*s).to_owned());
                !s.is_empty()
            } else {
                p == s
            }
        });
        if ok {
            path_known = true;
            if *m == method.as_str() {
                return Ok((pat, params));
            }
        }
    }
    if path_known {
        Err(ApiError::Method(method.to_string()))
    } else {
        Err(ApiError::NoRoute(path.chars().take(200).collect()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutUser {
    team: TeamName,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProject {
    name: ProjectName,
    #[serde(default)]
    members: Vec<UserName>,
}

/// The unlock body: the share goes straight into zeroizing memory.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unlock {
    share: ShareField,
}

struct ShareField(SecretBytes);

impl<'de> Deserialize<'de> for ShareField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ShareField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a share token string")
            }
            fn visit_str<E>(self, v: &str) -> Result<ShareField, E> {
                Ok(ShareField(SecretBytes::new(v.as_bytes().to_vec())))
            }
            fn visit_string<E>(self, mut v: String) -> Result<ShareField, E> {
                let s = ShareField(SecretBytes::new(v.as_bytes().to_vec()));
                v.zeroize();
                Ok(s)
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDrive {
    project: ProjectName,
    name: DriveName,
    size_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVm {
    name: VmName,
    project: ProjectName,
    vcpus: u32,
    memory_mib: u64,
    #[serde(default)]
    drives: Vec<DriveId>,
    #[serde(default)]
    idle: Option<IdlePolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchVm {
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
    idle: Option<IdlePolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Share {
    role: Role,
    #[serde(default)]
    confirm_drive_access: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Stop {
    #[serde(default)]
    force: bool,
}

#[derive(Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    project: &'a crate::service::ProjectView,
    admin_share: &'a str,
    member_share: &'a str,
    note: &'static str,
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<ApiBody> {
    let body = serde_json::to_vec(v).expect("DTOs serialize");
    let mut r = Response::new(ApiBody::Full(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn problem(e: &ApiError) -> Response<ApiBody> {
    let (p, retry) = e.problem();
    let mut r = json(StatusCode::from_u16(p.status).expect("valid"), &p);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(s) = retry {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

fn created_project(c: CreatedProject) -> Result<Response<ApiBody>, ApiError> {
    let a = std::str::from_utf8(c.admin_share.expose()).expect("ascii token");
    let m = std::str::from_utf8(c.member_share.expose()).expect("ascii token");
    Ok(json(
        StatusCode::CREATED,
        &Created {
            project: &c.project,
            admin_share: a,
            member_share: m,
            note: "These shares are shown once. Give the member share to the project's members.",
        },
    ))
}

fn ok<T: Serialize>(v: &T) -> Result<Response<ApiBody>, ApiError> {
    Ok(json(StatusCode::OK, v))
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}

fn param<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| ApiError::BadParam(format!("Invalid {what} in path: {e}")))
}

async fn read_body(st: &State, req: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    let limits = &st.svc.config().limits;
    let max = limits.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(ApiError::TooLarge(max));
        }
    }
    let collected = tokio::time::timeout(
        limits.header_timeout,
        Limited::new(req.into_body(), max).collect(),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout)?
    .map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            ApiError::TooLarge(max)
        } else {
            ApiError::BadJson(format!("Body could not be read: {e}"))
        }
    })?;
    // One buffer, owned by the caller (which zeroizes bodies that carry shares); `Vec::from`
    // reuses the collected allocation instead of copying it.
    Ok(Vec::from(collected.to_bytes()))
}

/// Handles one request; never fails (errors become problem+json).
pub async fn handle(
    st: Arc<State>,
    peer_uid: Option<u32>,
    req: Request<Incoming>,
) -> Response<ApiBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (route, resp) = match match_route(&method, &path) {
        Ok((route, params)) => (route, dispatch(&st, peer_uid, route, params, req).await),
        Err(e) => ("unmatched", Err(e)),
    };
    let mut code = "ok";
    let resp = resp.unwrap_or_else(|e| {
        let (status, c) = super::error::status_and_code(&e);
        code = c;
        if status.is_server_error() {
            tracing::warn!(route, %status, code, error = %e, "request failed");
        } else {
            tracing::debug!(route, %status, code, "request refused");
        }
        problem(&e)
    });
    if route == "/v1/vms/{id}/start" {
        *st.launches.lock().unwrap().entry(code).or_default() += 1;
    }
    st.latency
        .lock()
        .unwrap()
        .entry(route)
        .or_default()
        .observe(started.elapsed().as_secs_f64());
    let key = (method, route, resp.status().as_u16());
    *st.metrics.lock().unwrap().entry(key).or_default() += 1;
    tracing::debug!(
        route,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

async fn dispatch(
    st: &State,
    peer_uid: Option<u32>,
    route: &'static str,
    params: Vec<String>,
    req: Request<Incoming>,
) -> Result<Response<ApiBody>, ApiError> {
    let svc = &st.svc;
    match route {
        "/v1/health" => return Ok(json(StatusCode::OK, &svc.health().await)),
        "/v1/openapi.json" => {
            let mut r = Response::new(ApiBody::Full(Full::new(Bytes::from_static(
                OPENAPI.as_bytes(),
            ))));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Ok(r);
        }
        _ => {}
    }
    let uid = peer_uid.ok_or(ApiError::UnknownPeer(u32::MAX))?;
    let peer_name = st.peer_name(uid).ok_or(ApiError::UnknownPeer(uid))?;
    let acting = match req.headers().get("vmwarden-user") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadActingUser("not text".into()))
                .and_then(|s| {
                    UserName::parse(s).map_err(|e| ApiError::BadActingUser(e.to_string()))
                })?,
        ),
        None => None,
    };
    // A peer whose Unix name is not a valid vmwarden name cannot be registered.
    let peer = match UserName::parse(&peer_name) {
        Ok(n) => n,
        Err(_) => return Err(ApiError::UnknownPeer(uid)),
    };
    let p = svc.principal(peer.clone(), acting.clone()).await?;
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        read_body(st, req).await?
    } else {
        drop(req);
        Vec::new()
    };
    match (method.as_str(), route) {
        ("GET", "/v1/me") => ok(&svc.me(&p).await?),
        ("GET", "/v1/users") => ok(&svc.users(&p).await?),
        ("PUT", "/v1/users/{name}") => {
            let name: UserName = param(&params[0], "user name")?;
            let b: PutUser = parse_json(&body)?;
            ok(&svc
                .put_user(
                    &p,
                    User {
                        name,
                        team: b.team,
                        admin: b.admin,
                    },
                )
                .await?)
        }
        ("DELETE", "/v1/users/{name}") => {
            let name: UserName = param(&params[0], "user name")?;
            ok(&serde_json::json!({"change": svc.delete_user(&p, name).await?}))
        }
        ("GET", "/v1/projects") => ok(&svc.projects(&p).await?),
        ("POST", "/v1/projects") => {
            let b: CreateProject = parse_json(&body)?;
            created_project(svc.create_project(&p, b.name, b.members).await?)
        }
        ("PUT" | "DELETE", "/v1/projects/{project}/members/{user}") => {
            let project: ProjectName = param(&params[0], "project name")?;
            let user: UserName = param(&params[1], "user name")?;
            if method == Method::PUT {
                let _: Empty = parse_json(&body)?;
            }
            let change = svc
                .set_member(&p, project, user, method == Method::PUT)
                .await?;
            ok(&serde_json::json!({ "change": change }))
        }
        ("POST", "/v1/projects/{project}/unlock") => {
            let project: ProjectName = param(&params[0], "project name")?;
            let mut body = body;
            let parsed = parse_json::<Unlock>(&body);
            body.zeroize();
            let b = parsed.map_err(|_| {
                // serde's message could quote the body; say only what is wrong.
                ApiError::BadJson("expected {\"share\": \"vmw-...\"} and nothing else".into())
            })?;
            ok(&svc.unlock(&p, project, b.share.0).await?)
        }
        ("POST", "/v1/projects/{project}/lock") => {
            let project: ProjectName = param(&params[0], "project name")?;
            let _: Empty = parse_json(&body)?;
            ok(&svc.lock(&p, project).await?)
        }
        ("POST", "/v1/projects/{project}/resplit") => {
            let project: ProjectName = param(&params[0], "project name")?;
            let _: Empty = parse_json(&body)?;
            created_project(svc.resplit(&p, project).await?)
        }
        ("GET", "/v1/drives") => ok(&svc.drives(&p).await?),
        ("POST", "/v1/drives") => {
            let b: CreateDrive = parse_json(&body)?;
            Ok(json(
                StatusCode::CREATED,
                &svc.create_drive(&p, b.project, b.name, b.size_mib).await?,
            ))
        }
        ("GET", "/v1/drives/{id}") => ok(&svc.drive(&p, param(&params[0], "drive id")?).await?),
        ("DELETE", "/v1/drives/{id}") => {
            svc.delete_drive(&p, param(&params[0], "drive id")?).await?;
            ok(&serde_json::json!({"change": "removed"}))
        }
        ("GET", "/v1/vms") => {
            // Orchestrators poll this; the rendered list is reused until the store changes.
            let g = svc.generation();
            let cached = st
                .vms_cache
                .lock()
                .unwrap()
                .get(&p.name)
                .filter(|(cg, _)| *cg == g)
                .map(|(_, b)| b.clone());
            let body = match cached {
                Some(b) => b,
                None => {
                    let b = Bytes::from(
                        serde_json::to_vec(&svc.vms(&p).await?).expect("DTOs serialize"),
                    );
                    let mut cache = st.vms_cache.lock().unwrap();
                    if cache.len() >= 4096 {
                        cache.clear();
                    }
                    cache.insert(p.name.clone(), (g, b.clone()));
                    b
                }
            };
            let mut r = Response::new(ApiBody::Full(Full::new(body)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(r)
        }
        ("POST", "/v1/vms") => {
            let b: CreateVm = parse_json(&body)?;
            let v = svc
                .create_vm(
                    &p,
                    NewVm {
                        name: b.name,
                        project: b.project,
                        vcpus: b.vcpus,
                        memory_mib: b.memory_mib,
                        drives: b.drives,
                        idle: b.idle,
                    },
                )
                .await?;
            Ok(json(StatusCode::CREATED, &v))
        }
        ("GET", "/v1/vms/{id}") => ok(&svc.vm(&p, param(&params[0], "VM id")?).await?),
        ("PATCH", "/v1/vms/{id}") => {
            let id: VmId = param(&params[0], "VM id")?;
            let b: PatchVm = parse_json(&body)?;
            ok(&svc
                .update_vm(
                    &p,
                    id,
                    VmPatch {
                        vcpus: b.vcpus,
                        memory_mib: b.memory_mib,
                        idle: b.idle,
                    },
                )
                .await?)
        }
        ("DELETE", "/v1/vms/{id}") => {
            svc.delete_vm(&p, param(&params[0], "VM id")?).await?;
            ok(&serde_json::json!({"change": "removed"}))
        }
        ("GET", "/v1/vms/{id}/members") => {
            ok(&svc.members(&p, param(&params[0], "VM id")?).await?)
        }
        ("PUT", "/v1/vms/{id}/members/{user}") => {
            let id: VmId = param(&params[0], "VM id")?;
            let user: UserName = param(&params[1], "user name")?;
            let b: Share = parse_json(&body)?;
            ok(&svc
                .share(&p, id, user, b.role, b.confirm_drive_access)
                .await?)
        }
        ("DELETE", "/v1/vms/{id}/members/{user}") => {
            let id: VmId = param(&params[0], "VM id")?;
            let user: UserName = param(&params[1], "user name")?;
            ok(&svc.unshare(&p, id, user).await?)
        }
        ("POST", "/v1/vms/{id}/start") => {
            let id: VmId = param(&params[0], "VM id")?;
            let _: Empty = parse_json(&body)?;
            ok(&svc.start(&p, id).await?)
        }
        ("POST", "/v1/vms/{id}/stop") => {
            let id: VmId = param(&params[0], "VM id")?;
            let b: Stop = parse_json(&body)?;
            ok(&svc.stop(&p, id, b.force).await?)
        }
        ("POST", "/v1/vms/{id}/keepalive") => {
            let id: VmId = param(&params[0], "VM id")?;
            let _: Empty = parse_json(&body)?;
            ok(&svc.keepalive(&p, id).await?)
        }
        ("PUT" | "DELETE", "/v1/vms/{id}/drives/{drive}") => {
            let id: VmId = param(&params[0], "VM id")?;
            let drive: DriveId = param(&params[1], "drive id")?;
            if method == Method::PUT {
                let _: Empty = parse_json(&body)?;
                ok(&svc.attach(&p, id, drive).await?)
            } else {
                ok(&svc.detach(&p, id, drive).await?)
            }
        }
        ("GET", "/v1/host/vms") => ok(&svc.host_vms(&p).await?),
        ("POST", "/v1/host/vms/{id}/stop") => {
            let id: VmId = param(&params[0], "VM id")?;
            let b: Stop = parse_json(&body)?;
            svc.host_stop(&p, id, b.force).await?;
            ok(&serde_json::json!({"id": id, "state": "stopped", "reason": "admin"}))
        }
        ("GET", "/v1/audit") => {
            let f = audit_filter(&query)?;
            ok(&svc.audit_log(&p, f).await?)
        }
        ("GET", "/v1/events") => events(st, p, peer, acting).await,
        ("GET", "/metrics") => metrics(st, &p).await,
        _ => Err(ApiError::NoRoute(route.into())),
    }
}

/// An empty JSON object: endpoints without a body still refuse unknown fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn audit_filter(query: &str) -> Result<AuditFilter, ApiError> {
    let mut f = AuditFilter {
        limit: 1000,
        ..Default::default()
    };
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "vm" => f.vm = Some(param(v, "vm")?),
            "user" => f.actor = Some(param::<UserName>(v, "user")?.to_string()),
            "since" => f.since_ms = Some(param(v, "since (ms since epoch)")?),
            "until" => f.until_ms = Some(param(v, "until (ms since epoch)")?),
            "limit" => f.limit = param(v, "limit")?,
            other => {
                return Err(ApiError::BadParam(format!(
                    "Unknown query parameter {:?}",
                    other.chars().take(40).collect::<String>()
                )))
            }
        }
    }
    Ok(f)
}

async fn metrics(st: &State, p: &Principal) -> Result<Response<ApiBody>, ApiError> {
    let vms = st.svc.host_vms(p).await?;
    let mut out = String::new();
    out.push_str("# HELP vmwarden_vms VMs by state.\n# TYPE vmwarden_vms gauge\n");
    for state in ["running", "stopped"] {
        let n = vms.iter().filter(|v| v.state.as_str() == state).count();
        out.push_str(&format!("vmwarden_vms{{state=\"{state}\"}} {n}\n"));
    }
    out.push_str("# HELP vmwarden_http_requests_total API requests by route and status.\n# TYPE vmwarden_http_requests_total counter\n");
    let mut rows: Vec<_> = st
        .metrics
        .lock()
        .unwrap()
        .iter()
        .map(|((m, r, s), n)| (format!("{m} {r}"), *s, *n))
        .collect();
    rows.sort();
    for (route, status, n) in rows {
        out.push_str(&format!(
            "vmwarden_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"
        ));
    }
    out.push_str("# HELP vmwarden_launches_total VM launches by outcome code.\n# TYPE vmwarden_launches_total counter\n");
    let mut launches: Vec<_> = st
        .launches
        .lock()
        .unwrap()
        .iter()
        .map(|(c, n)| (*c, *n))
        .collect();
    launches.sort();
    for (code, n) in launches {
        out.push_str(&format!("vmwarden_launches_total{{code=\"{code}\"}} {n}\n"));
    }
    out.push_str("# HELP vmwarden_idle_shutdowns_total VMs shut down for inactivity.\n# TYPE vmwarden_idle_shutdowns_total counter\n");
    out.push_str(&format!(
        "vmwarden_idle_shutdowns_total {}\n",
        st.svc.idle_shutdowns()
    ));
    out.push_str("# HELP vmwarden_http_request_duration_seconds API request latency by route.\n# TYPE vmwarden_http_request_duration_seconds histogram\n");
    let mut hist: Vec<_> = st
        .latency
        .lock()
        .unwrap()
        .iter()
        .map(|(r, h)| (*r, h.clone()))
        .collect();
    hist.sort_by_key(|(r, _)| *r);
    for (route, h) in hist {
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "vmwarden_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}\n",
                h.counts[i]
            ));
        }
        out.push_str(&format!(
            "vmwarden_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n",
            h.count
        ));
        out.push_str(&format!(
            "vmwarden_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n",
            h.sum
        ));
        out.push_str(&format!(
            "vmwarden_http_request_duration_seconds_count{{route=\"{route}\"}} {}\n",
            h.count
        ));
    }
    let up = st.svc.health().await.status == "ok";
    out.push_str("# HELP vmwarden_libvirt_connected Whether libvirt answers.\n# TYPE vmwarden_libvirt_connected gauge\n");
    out.push_str(&format!("vmwarden_libvirt_connected {}\n", up as u8));
    let mut r = Response::new(ApiBody::Full(Full::new(Bytes::from(out))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

/// `GET /v1/events`: each event goes only to callers who may see its object, decided afresh
/// per event so a share or an unshare applies at once. A reader that falls behind is dropped
/// with a final `stream.dropped` event instead of slowing the others.
async fn events(
    st: &State,
    p: Principal,
    peer: UserName,
    acting: Option<UserName>,
) -> Result<Response<ApiBody>, ApiError> {
    st.svc.me(&p).await?;
    let mut rx = st.svc.subscribe();
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    let svc = st.svc.clone();
    let mut closing = st.closing.subscribe();
    let mut generation = svc.generation();
    let mut p = p;
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b": vmwarden events\n\n")).await;
        loop {
            let ev = tokio::select! {
                r = rx.recv() => r,
                _ = closing.changed() => break,
                _ = tx.closed() => break,
            };
            let ev = match ev {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let _ = tx.try_send(Bytes::from(format!(
                        "event: stream.dropped\ndata: {{\"reason\":\"slow_reader\",\"missed\":{n}}}\n\n"
                    )));
                    break;
                }
                Err(_) => break,
            };
            // The caller's registry entry may change while the stream is open (unregistered,
            // no longer admin): resolve it again whenever the store changed.
            let g = svc.generation();
            if g != generation {
                generation = g;
                match svc.principal(peer.clone(), acting.clone()).await {
                    Ok(fresh) if svc.me(&fresh).await.is_ok() => p = fresh,
                    _ => break,
                }
            }
            if !visible(&svc, &p, &ev).await {
                continue;
            }
            // Drive events go to the drive's owners only: to a user of the VM, its drives
            // do not exist.
            if let Some(d) = ev.drive {
                if svc.drive(&p, d).await.is_err() {
                    continue;
                }
            }
            // A reader that lets its buffer fill up is dropped; the last free slot carries
            // the notice, so it learns why rather than seeing a silent end.
            if tx.capacity() <= 1 {
                let _ = tx.try_send(Bytes::from_static(
                    b"event: stream.dropped\ndata: {\"reason\":\"slow_reader\"}\n\n",
                ));
                break;
            }
            let data = serde_json::to_string(&ev).expect("events serialize");
            let frame = Bytes::from(format!("event: {}\ndata: {data}\n\n", ev.kind));
            if tx.try_send(frame).is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(ApiBody::Stream(body_rx));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(r)
}

async fn visible(svc: &Service, p: &Principal, ev: &crate::service::Event) -> bool {
    if let Some(audience) = &ev.audience {
        return audience.contains(&p.name);
    }
    if let Some(vm) = ev.vm {
        return svc.vm(p, vm).await.is_ok();
    }
    if let Some(project) = &ev.project {
        return svc
            .projects(p)
            .await
            .map(|ps| ps.iter().any(|x| &x.name == project))
            .unwrap_or(false);
    }
    p.admin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_params_and_methods() {
        let (r, p) = match_route(&Method::GET, "/v1/vms/abc").unwrap();
        assert_eq!((r, p), ("/v1/vms/{id}", vec!["abc".to_string()]));
        assert!(matches!(
            match_route(&Method::POST, "/v1/health"),
            Err(ApiError::Method(_))
        ));
        assert!(matches!(
            match_route(&Method::GET, "/v1/nope"),
            Err(ApiError::NoRoute(_))
        ));
        assert!(matches!(
            match_route(&Method::GET, "/v1/vms//members"),
            Err(ApiError::NoRoute(_))
        ));
    }

    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = vec![];
        for (path, ops) in paths {
            for m in ops.as_object().unwrap().keys() {
                documented.push((m.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn audit_filter_refuses_unknown_parameters() {
        assert!(audit_filter("vm=x").is_err());
        assert!(audit_filter("bogus=1").is_err());
        let f = audit_filter("user=alice&since=5&limit=3").unwrap();
        assert_eq!(
            (f.actor.as_deref(), f.since_ms, f.limit),
            (Some("alice"), Some(5), 3)
        );
    }
}
