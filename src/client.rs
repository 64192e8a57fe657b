//! The one HTTP/1.1 client of the control socket, used by the `vmwarden` CLI, the tests and
//! the benchmarks: a request on a fresh connection (`Client::call`, `Client::send` for a
//! streamed answer), or many on one kept-alive connection (`Connection`). An orchestrator
//! acts for a user with the `Vmwarden-User` header (`Client::act_as`, or per call).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("Cannot connect to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed during the exchange.
    #[error("Connection to the daemon failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (an invalid header value).
    #[error("Invalid request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A client of one control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    act_as: Option<String>,
}

fn request(
    method: Method,
    path: &str,
    user: Option<&str>,
    body: Option<Bytes>,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "vmwarden");
    if let Some(u) = user {
        req = req.header("vmwarden-user", u);
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    Ok(req.body(Full::new(body))?)
}

async fn whole(resp: Response<Incoming>) -> Result<Reply, ClientError> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

impl Client {
    /// A client of `socket`, acting as the peer itself.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            act_as: None,
        }
    }

    /// Acts for `user` (orchestrators only): every request carries `Vmwarden-User`.
    pub fn act_as(mut self, user: Option<String>) -> Self {
        self.act_as = user;
        self
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One kept-alive connection for many requests.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Connection {
            sender,
            act_as: self.act_as.clone(),
        })
    }

    /// One request on a fresh connection; the answer's body is left to stream (events).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        user: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, ClientError> {
        let user = user.or(self.act_as.as_deref());
        let mut conn = self.connect().await?;
        Ok(conn
            .sender
            .send_request(request(method, path, user, body)?)
            .await?)
    }

    /// One request on a fresh connection, as `user` (or the client's own principal).
    pub async fn call_as(
        &self,
        method: Method,
        path: &str,
        user: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Reply, ClientError> {
        whole(self.send(method, path, user, body).await?).await
    }

    /// One request on a fresh connection.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Reply, ClientError> {
        self.call_as(method, path, None, body).await
    }
}

/// One kept-alive connection.
#[derive(Debug)]
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    act_as: Option<String>,
}

impl Connection {
    /// One request on this connection, as `user` (or the client's principal).
    pub async fn call_as(
        &mut self,
        method: Method,
        path: &str,
        user: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Reply, ClientError> {
        let user = user.or(self.act_as.as_deref());
        self.sender.ready().await?;
        whole(
            self.sender
                .send_request(request(method, path, user, body)?)
                .await?,
        )
        .await
    }
}
