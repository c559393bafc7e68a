//! A real HTTP/1.1 upstream server (hyper) for proxying tests.
//!
//! Routes: `/healthz` (200, or 503 after `set_healthy(false)`), `/sleep/MS` (answers after MS
//! milliseconds), `/bytes/N` (streams N bytes), `POST /count` (answers how many body bytes it
//! read), a WebSocket upgrade on any path (echoes every message), anything else: JSON naming the
//! server, the method, the path and the request headers. [`Upstream::start_static`] serves the
//! files of a folder instead (the demo page's test).

use crate::tls::TestCa;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running upstream; stops when dropped.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    name: String,
    healthy: AtomicBool,
    hits: AtomicUsize,
    static_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("state", &self.state)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Upstream {
    /// A plain HTTP upstream named `name` on a free loopback port.
    pub async fn start(name: &str) -> Upstream {
        Self::start_inner(name, None, None).await
    }

    /// A plain HTTP server of the files under `dir` (`/` serves `index.html`); other paths 404.
    pub async fn start_static(dir: &std::path::Path) -> Upstream {
        Self::start_inner("static", None, Some(dir.to_path_buf())).await
    }

    /// An HTTPS upstream presenting `ca`'s server certificate.
    pub async fn start_tls(name: &str, ca: &TestCa) -> Upstream {
        Self::start_inner(
            name,
            Some(tokio_rustls::TlsAcceptor::from(
                ca.server_config(&[b"http/1.1"]),
            )),
            None,
        )
        .await
    }

    async fn start_inner(
        name: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
        static_dir: Option<std::path::PathBuf>,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            hits: AtomicUsize::new(0),
            static_dir,
        });
        let task = serve(listener, Arc::clone(&state), tls.clone(), handle);
        Upstream {
            addr,
            state,
            tls,
            task,
        }
    }

    /// Stops listening and drops every open connection, like a node that went down.
    pub fn stop(&mut self) {
        self.task.abort();
    }

    /// Listens again on the same address after [`stop`](Self::stop).
    pub async fn restart(&mut self) {
        self.task.abort();
        let listener = TcpListener::bind(self.addr).await.expect("bind again");
        self.task = serve(listener, Arc::clone(&self.state), self.tls.clone(), handle);
    }
}

/// Accepts and serves connections until the task is aborted, which also drops them all: each
/// request goes to `handle` with the server's `shared` state (HTTP/1.1, upgrades allowed; over
/// TLS when `tls` is given). The upstreams and the identity provider of the tests use it.
pub(crate) fn serve<S, H, Fut, B>(
    listener: TcpListener,
    shared: Arc<S>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handle: H,
) -> JoinHandle<()>
where
    S: Send + Sync + 'static,
    H: Fn(Arc<S>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (tcp, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => return,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            {
                let state = Arc::clone(&shared);
                let tls = tls.clone();
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(tcp), service)
                                .with_upgrades()
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .with_upgrades()
                                    .await;
                            }
                        }
                    }
                });
            }
        }
    })
}

impl Upstream {
    /// Makes `/healthz` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests served, `/healthz` not counted.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        let ok = state.healthy.load(Ordering::SeqCst);
        return Ok(text(
            if ok { 200 } else { 503 },
            if ok { "ok" } else { "unhealthy" },
        ));
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(dir) = &state.static_dir {
        return Ok(static_file(dir, &path).await);
    }
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        return Ok(websocket_echo(req, &state.name));
    }
    if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        return Ok(text(200, &state.name));
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        let mut resp = Response::new(Repeat { left: n }.boxed());
        resp.headers_mut().insert("content-length", n.into());
        return Ok(resp);
    }
    if path == "/count" {
        let mut body = req.into_body();
        let mut count = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => count += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => return Ok(text(400, "broken body")),
            }
        }
        return Ok(text(200, &count.to_string()));
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let body = serde_json::json!({
        "name": state.name,
        "method": req.method().as_str(),
        "path": req.uri().to_string(),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    Ok(resp)
}

/// Answers a WebSocket handshake and echoes every data message on the upgraded connection.
///
/// Paths: `/ws/refuse` answers 403 instead of upgrading; `/ws/greet` first sends a text message
/// `{"name": ..., "headers": {...}}` (the request's headers), right behind the 101.
fn websocket_echo(req: Request<Incoming>, name: &str) -> Response<BoxBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    if req.uri().path() == "/ws/refuse" {
        return text(403, "no WebSocket for you");
    }
    let greeting = (req.uri().path() == "/ws/greet").then(|| {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        serde_json::json!({ "name": name, "headers": headers }).to_string()
    });
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return text(400, "no Sec-WebSocket-Key");
    };
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        if let Some(greeting) = greeting {
            if ws.send(Message::text(greeting)).await.is_err() {
                return;
            }
        }
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("upgrade", "websocket".parse().expect("header"));
    h.insert("connection", "Upgrade".parse().expect("header"));
    h.insert("sec-websocket-accept", key.parse().expect("header"));
    resp
}

/// A file under `dir` for a request path, with a content type from its extension.
async fn static_file(dir: &std::path::Path, path: &str) -> Response<BoxBody> {
    let relative = match path.trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    if relative.split('/').any(|s| s == ".." || s.is_empty()) {
        return text(404, "not found");
    }
    let Ok(body) = tokio::fs::read(dir.join(relative)).await else {
        return text(404, "not found");
    };
    let kind = match relative.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    resp.headers_mut()
        .insert("content-type", kind.parse().expect("header"));
    resp
}

fn text(status: u16, body: &str) -> Response<BoxBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    resp
}

/// A body of `left` bytes, made 64 KiB at a time as the client reads.
struct Repeat {
    left: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(64 * 1024);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n as usize])))))
    }
}
