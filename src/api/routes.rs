//! Handling one request: principal, route, body, [`Op`], the service call, the answer.
//! Handlers stay thin; the rules live in the service and below.

use super::conn::{ConnCtx, Deliveries, Slots, StreamSlot};
use super::error::ApiError;
use super::ops::{match_route, parse, Op};
use crate::model::{ObjectRef, UserName};
use crate::service::{CreatedProject, Delivery, Principal, Service, StopStarted};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::{mpsc, watch};

pub use super::ops::ROUTES;

/// Response body: a whole document (its length known, so it goes out with Content-Length),
/// one that must be delivered, or an event stream.
pub enum ApiBody {
    /// A complete body.
    Full(Option<Bytes>),
    /// A complete body whose delivery fires a ticket: armed when hyper takes the last byte,
    /// fired by the connection's next flush.
    Tracked {
        /// The bytes.
        data: Option<Bytes>,
        /// The ticket.
        delivery: Option<Delivery>,
        /// Where it waits for the flush.
        conn: Arc<Deliveries>,
    },
    /// Server-Sent Events, fed by a channel; the slot is held while the stream lives.
    Stream(mpsc::Receiver<Bytes>, Option<StreamSlot>),
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Tracked {
                data,
                delivery,
                conn,
            } => {
                let frame = data.take();
                if let Some(d) = delivery.take() {
                    conn.arm(d);
                }
                Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
            }
            ApiBody::Stream(rx, _) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ApiBody::Full(b) | ApiBody::Tracked { data: b, .. } => b.is_none(),
            ApiBody::Stream(..) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Full(b) | ApiBody::Tracked { data: b, .. } => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            ApiBody::Stream(..) => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for ApiBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiBody::Full(_) => "ApiBody::Full",
            ApiBody::Tracked { .. } => "ApiBody::Tracked",
            ApiBody::Stream(..) => "ApiBody::Stream",
        })
    }
}

/// Shared state of the HTTP layer.
#[derive(Debug)]
pub struct State {
    pub(super) svc: Arc<Service>,
    closing: watch::Sender<bool>,
    /// uid -> user name, refreshed after a minute (names are looked up through NSS).
    users_by_uid: Mutex<HashMap<u32, (String, Instant)>>,
    /// Rendered `GET /v1/vms` per principal, tagged with the store generation it reflects.
    vms_cache: Mutex<HashMap<UserName, (u64, Bytes)>>,
    pub(super) slots: Slots,
    pub(super) metrics: super::metrics::Metrics,
    /// The OpenAPI document, rendered once.
    openapi: Bytes,
}

impl State {
    /// Wraps the service.
    pub fn new(svc: Arc<Service>) -> Self {
        Self {
            slots: Slots::new(&svc.config().limits),
            openapi: bytes_of(&super::openapi::document(svc.config())),
            svc,
            closing: watch::channel(false).0,
            users_by_uid: Mutex::new(HashMap::new()),
            vms_cache: Mutex::new(HashMap::new()),
            metrics: Default::default(),
        }
    }

    /// Ends event streams so that draining connections can finish.
    pub fn closing(&self) {
        let _ = self.closing.send(true);
    }

    /// The user name of a uid, cached for a minute. NSS may go to the network (LDAP), so a
    /// lookup runs on the blocking pool.
    pub async fn peer_name(&self, uid: u32) -> Option<String> {
        if let Some((n, at)) = self.users_by_uid.lock().unwrap().get(&uid) {
            if at.elapsed() < std::time::Duration::from_secs(60) {
                return Some(n.clone());
            }
        }
        let name = tokio::task::spawn_blocking(move || {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .await
        .ok()??;
        self.users_by_uid
            .lock()
            .unwrap()
            .insert(uid, (name.clone(), Instant::now()));
        Some(name)
    }
}

fn bytes_of<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("DTOs serialize"))
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response<ApiBody> {
    let mut r = Response::new(ApiBody::Full(Some(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<ApiBody> {
    json_bytes(status, bytes_of(v))
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
    if let ApiError::Method { allow, .. } = e {
        if let Ok(v) = HeaderValue::from_str(allow) {
            r.headers_mut().insert(ALLOW, v);
        }
    }
    r
}

/// The answer to `POST /v1/projects` and `POST /v1/projects/{project}/resplit`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedProjectView<'a> {
    /// The project.
    #[serde(flatten)]
    project: &'a crate::service::ProjectView,
    /// The admin half of the key, shown this once.
    #[schema(pattern = "^vmw-admin-[A-Za-z0-9_-]{43}$")]
    admin_share: &'a str,
    /// The member half of the key, shown this once.
    #[schema(pattern = "^vmw-member-[A-Za-z0-9_-]{43}$")]
    member_share: &'a str,
    /// What to do with them.
    note: &'static str,
}

impl std::fmt::Debug for CreatedProjectView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedProjectView")
            .field("project", &self.project.name)
            .finish_non_exhaustive()
    }
}

/// The one answer that carries shares: delivered through the connection so the service
/// learns whether it arrived.
fn created_project(c: CreatedProject, conn: &ConnCtx) -> Response<ApiBody> {
    let a = std::str::from_utf8(c.admin_share.expose()).expect("ascii token");
    let m = std::str::from_utf8(c.member_share.expose()).expect("ascii token");
    let body = bytes_of(&CreatedProjectView {
        project: &c.project,
        admin_share: a,
        member_share: m,
        note: "These shares are shown once. Give the member share to the project's members.",
    });
    let mut r = Response::new(ApiBody::Tracked {
        data: Some(body),
        delivery: Some(c.delivery),
        conn: conn.deliveries.clone(),
    });
    *r.status_mut() = StatusCode::CREATED;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    // The connection reads nothing after this answer: whether the peer read it is told by
    // the socket alone (see `conn::Deliveries`).
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The answer when a handler task panicked.
pub fn internal_error() -> Response<ApiBody> {
    problem(&ApiError::Service(crate::service::ServiceError::Task))
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
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Response<ApiBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (route, resp) = dispatch(&st, &conn, req).await;
    let mut code = "ok";
    let resp = resp.unwrap_or_else(|e| {
        let (status, c) = super::error::status_and_code(&e);
        code = c;
        if cfg!(debug_assertions) && !declared(&method, route, status.as_u16(), Some(c)) {
            return undeclared(&method, route, status.as_u16(), c);
        }
        if status.is_server_error() {
            tracing::warn!(route, %status, code, error = %e, "request failed");
        } else {
            tracing::debug!(route, %status, code, "request refused");
        }
        problem(&e)
    });
    let resp = if cfg!(debug_assertions)
        && resp.status().is_success()
        && !declared(&method, route, resp.status().as_u16(), None)
    {
        undeclared(&method, route, resp.status().as_u16(), "ok")
    } else {
        resp
    };
    st.metrics.record(
        &method,
        route,
        resp.status().as_u16(),
        code,
        started.elapsed(),
    );
    tracing::debug!(
        route,
        path = %path.chars().take(200).collect::<String>(),
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

fn declared(method: &Method, route: &str, status: u16, code: Option<&str>) -> bool {
    super::openapi::declared(method.as_str(), route, status, code)
}

/// Debug builds only: an answer the OpenAPI document does not declare for its route becomes a
/// loud 500, so that any test that meets it fails and names the gap.
fn undeclared(method: &Method, route: &str, status: u16, code: &str) -> Response<ApiBody> {
    tracing::error!(%method, route, status, code, "answer not declared in the OpenAPI document");
    let body = serde_json::json!({
        "type": "https://vmwarden.invalid/problems/undeclared",
        "title": "Internal Server Error",
        "status": 500,
        "detail": format!("{method} {route} answered {status} {code}, which its OpenAPI entry does not declare"),
        "code": "undeclared",
    });
    let mut r = json(StatusCode::INTERNAL_SERVER_ERROR, &body);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// Steps 3-6 of the request flow (see the module doc of `api`). Returns the route label.
async fn dispatch(
    st: &Arc<State>,
    conn: &Arc<ConnCtx>,
    req: Request<Incoming>,
) -> (&'static str, Result<Response<ApiBody>, ApiError>) {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/v1/health") => {
            return (
                "/v1/health",
                Ok(json(StatusCode::OK, &st.svc.health().await)),
            )
        }
        (&Method::GET, "/v1/openapi.json") => {
            return (
                "/v1/openapi.json",
                Ok(json_bytes(StatusCode::OK, st.openapi.clone())),
            )
        }
        _ => {}
    }
    // An unregistered peer learns nothing, not even whether its input was well-formed.
    let who = match principal(st, conn.uid, &req).await {
        Ok(w) => w,
        Err(e) => return ("unmatched", Err(e)),
    };
    let (route, params) = match match_route(&method, &path) {
        Ok(r) => r,
        Err(e) => return ("unmatched", Err(e)),
    };
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        match read_body(st, req).await {
            Ok(b) => b,
            Err(e) => return (route, Err(e)),
        }
    } else {
        drop(req);
        Vec::new()
    };
    let op = match parse(route, &method, &params, &query, body) {
        Ok(op) => op,
        Err(e) => return (route, Err(e)),
    };
    (route, execute(st, conn, who, op).await)
}

/// Who is asking: the peer (SO_PEERCRED), or the user an orchestrator acts for.
struct Who {
    p: Principal,
    peer: UserName,
    acting: Option<UserName>,
}

async fn principal(st: &State, uid: Option<u32>, req: &Request<Incoming>) -> Result<Who, ApiError> {
    let uid = uid.ok_or(ApiError::UnknownPeer(u32::MAX))?;
    let peer_name = st.peer_name(uid).await.ok_or(ApiError::UnknownPeer(uid))?;
    // A peer whose Unix name is not a valid vmwarden name cannot be registered.
    let peer = UserName::parse(&peer_name).map_err(|_| ApiError::UnknownPeer(uid))?;
    let acting = match req.headers().get("vmwarden-user") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| UserName::parse(s).ok())
                .ok_or_else(|| ApiError::BadActingUser("not a valid user name".into()))?,
        ),
        None => None,
    };
    let p = st.svc.principal(peer.clone(), acting.clone()).await?;
    if p.team.is_none() && !p.admin {
        return Err(ApiError::Service(crate::service::unregistered(&p.name)));
    }
    Ok(Who { p, peer, acting })
}

/// What an operation answered, built into a response by the connection's task.
enum Reply {
    Json(StatusCode, Bytes),
    Shares(CreatedProject),
}

fn ok<T: Serialize>(v: &T) -> Result<Reply, ApiError> {
    Ok(Reply::Json(StatusCode::OK, bytes_of(v)))
}

fn change<T: Serialize>(c: T) -> Result<Reply, ApiError> {
    ok(&serde_json::json!({ "change": c }))
}

/// Step 5: runs the operation. One with side effects runs in a task of its own: a client
/// that hangs up drops only the wait for the answer, never the operation.
async fn execute(
    st: &Arc<State>,
    conn: &Arc<ConnCtx>,
    who: Who,
    op: Op,
) -> Result<Response<ApiBody>, ApiError> {
    let svc = st.svc.clone();
    let reply = match op {
        Op::Events => return events(st, conn, who).await,
        Op::Metrics => return super::metrics::render(st, &who.p).await,
        Op::Vms => return vms(st, &who.p).await,
        op if op.mutates() => tokio::spawn(run(svc, who.p, op))
            .await
            .map_err(|_| ApiError::Service(crate::service::ServiceError::Task))??,
        op => run(svc, who.p, op).await?,
    };
    Ok(match reply {
        Reply::Json(status, body) => json_bytes(status, body),
        Reply::Shares(c) => created_project(c, conn),
    })
}

async fn run(svc: Arc<Service>, p: Principal, op: Op) -> Result<Reply, ApiError> {
    let p = &p;
    let vm = |r: ObjectRef| {
        let svc = svc.clone();
        async move { svc.resolve_vm(p, &r).await }
    };
    let drive = |r: ObjectRef| {
        let svc = svc.clone();
        async move { svc.resolve_drive(p, &r).await }
    };
    match op {
        Op::Me => ok(&svc.me(p).await?),
        Op::Users => ok(&svc.users(p).await?),
        Op::PutUser { name, team, admin } => ok(&svc
            .put_user(p, crate::model::User { name, team, admin })
            .await?),
        Op::DeleteUser(name) => change(svc.delete_user(p, name).await?),
        Op::Projects => ok(&svc.projects(p).await?),
        Op::CreateProject { name, members } => {
            Ok(Reply::Shares(svc.create_project(p, name, members).await?))
        }
        Op::DeleteProject(project) => change(svc.delete_project(p, project).await?),
        Op::AddMember(project, user) => change(svc.add_member(p, project, user).await?),
        Op::RemoveMember(project, user, exit) => {
            change(svc.remove_member(p, project, user, exit).await?)
        }
        Op::Unlock(project, share) => ok(&svc.unlock(p, project, share).await?),
        Op::Lock(project) => ok(&svc.lock(p, project).await?),
        Op::Resplit(project) => Ok(Reply::Shares(svc.resplit(p, project).await?)),
        Op::Drives => ok(&svc.drives(p).await?),
        Op::CreateDrive {
            project,
            name,
            size_mib,
        } => Ok(Reply::Json(
            StatusCode::CREATED,
            bytes_of(&svc.create_drive(p, project, name, size_mib).await?),
        )),
        Op::Drive(r) => ok(&svc.drive(p, drive(r).await?).await?),
        Op::DeleteDrive(r) => {
            svc.delete_drive(p, drive(r).await?).await?;
            change("removed")
        }
        Op::CreateVm(mut req, drives) => {
            for r in drives {
                req.drives.push(drive(r).await?);
            }
            Ok(Reply::Json(
                StatusCode::CREATED,
                bytes_of(&svc.create_vm(p, req).await?),
            ))
        }
        Op::Vm(r) => ok(&svc.vm(p, vm(r).await?).await?),
        Op::UpdateVm(r, patch) => ok(&svc.update_vm(p, vm(r).await?, patch).await?),
        Op::DeleteVm(r) => {
            svc.delete_vm(p, vm(r).await?).await?;
            change("removed")
        }
        Op::Members(r) => ok(&svc.members(p, vm(r).await?).await?),
        Op::Share {
            vm: r,
            user,
            role,
            confirm,
        } => ok(&svc.share(p, vm(r).await?, user, role, confirm).await?),
        Op::Unshare(r, user) => ok(&svc.unshare(p, vm(r).await?, user).await?),
        Op::Start(r) => ok(&svc.start(p, vm(r).await?).await?),
        Op::Stop { vm: r, force, wait } => {
            let (started, view) = svc.stop(p, vm(r).await?, force, wait).await?;
            Ok(Reply::Json(stop_status(started, wait), bytes_of(&view)))
        }
        Op::Keepalive(r) => ok(&svc.keepalive(p, vm(r).await?).await?),
        Op::ConsoleLog(r, offset) => ok(&svc.console_log(p, vm(r).await?, offset).await?),
        Op::Attach(v, d) => ok(&svc.attach(p, vm(v).await?, drive(d).await?).await?),
        Op::Detach(v, d) => ok(&svc.detach(p, vm(v).await?, drive(d).await?).await?),
        Op::HostVms => ok(&svc.host_vms(p).await?),
        Op::FleetHosts => ok(&svc.fleet_hosts(p).await?),
        Op::FleetVms => ok(&svc.fleet_vms(p).await?),
        Op::Enroll(h, fingerprint) => ok(&svc.enroll(p, h.to_string(), fingerprint).await?),
        Op::Unenroll(h) => ok(&svc.unenroll(p, h.to_string()).await?),
        Op::Fence(h) => ok(&svc.fence(p, h.to_string()).await?),
        Op::HostStop { vm: r, force, wait } => {
            let id = svc.resolve_host_vm(p, &r).await?;
            let (started, host) = svc.host_stop(p, id, force, wait).await?;
            Ok(Reply::Json(stop_status(started, wait), bytes_of(&host)))
        }
        Op::Audit(mut f, r) => {
            if let Some(r) = r {
                f.vm = Some(if p.admin {
                    svc.resolve_host_vm(p, &r).await?
                } else {
                    vm(r).await?
                });
            }
            ok(&svc.audit_log(p, f).await?)
        }
        Op::Vms | Op::Events | Op::Metrics => unreachable!("answered by the HTTP layer"),
    }
}

/// 202 when the stop goes on after the answer.
fn stop_status(started: StopStarted, wait: bool) -> StatusCode {
    match (started, wait) {
        (StopStarted::Stopping, false) => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    }
}

/// `GET /v1/vms`: orchestrators poll this; the rendered list is reused until the store
/// changes.
async fn vms(st: &State, p: &Principal) -> Result<Response<ApiBody>, ApiError> {
    let g = st.svc.generation();
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
            let b = bytes_of(&st.svc.vms(p).await?);
            let mut cache = st.vms_cache.lock().unwrap();
            if cache.len() >= 4096 {
                cache.clear();
            }
            cache.insert(p.name.clone(), (g, b.clone()));
            b
        }
    };
    Ok(json_bytes(StatusCode::OK, body))
}

/// `GET /v1/events`: each event goes only to callers who may see its object, decided afresh
/// per event so a share or an unshare applies at once. A reader that falls behind is dropped
/// with a final `stream.dropped` event instead of slowing the others. A stream holds a
/// stream slot (bounded per principal) instead of its connection's request slot.
async fn events(st: &State, conn: &ConnCtx, who: Who) -> Result<Response<ApiBody>, ApiError> {
    st.svc.me(&who.p).await?;
    let slot = st
        .slots
        .stream(&who.p.name)
        .ok_or_else(|| ApiError::TooManyStreams(st.svc.config().limits.max_streams_per_user))?;
    drop(conn.slot.lock().unwrap().take());
    let Who { p, peer, acting } = who;
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
            if !svc.may_see(&p, &ev).await {
                continue;
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
    let mut r = Response::new(ApiBody::Stream(body_rx, Some(slot)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    // The connection gave its request slot to the stream: it ends with it.
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(r)
}
