//! The gateway's one `ProxyHttp` implementation: the request path of every request.
//!
//! ```text
//!   request ─▶ request_filter: path check ─▶ route match ─▶ route plugins (settings on ctx)
//!                   │                              │ none: 404
//!                   │ kafka upstream               ▼ http/https upstream
//!                   ▼                              │ an upgrade (WebSocket): tunnel.rs relays it
//!          pubsub::serve: 101 + detached           ▼
//!          session, or 400                   upstream_peer: pick a healthy node (retries skip
//!                                                  nodes already tried)
//!                                                  ▼
//!                                            upstream_request_filter: X-Forwarded-*, Host,
//!                                            plugins' before_proxy
//!                                                  ▼
//!                                            streamed response ─▶ logging: access log line
//! ```
//!
//! Errors never panic the process: a failed upstream is a 502 (or 504 on a timeout) with a JSON
//! body, and a log line naming the route, upstream and node.

use crate::limits::{ConnectionLimits, Refusal, Slot};
use crate::plugins::Plugin;
use crate::pubsub::{KafkaCluster, KafkaRoute, PubSub};
use crate::router::{is_routable_path, Router};
use crate::tunnel::{Tunnel, Upgrades};
use crate::upstream::HttpUpstream;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamgate_config::model::{Balance, Consumer, HashOn, KafkaProxy, Route};

/// Where a route sends matching requests.
#[derive(Debug)]
pub enum Target {
    /// Proxied to HTTP(S) nodes.
    Http(Arc<HttpUpstream>),
    /// Served as a pub/sub WebSocket against Kafka brokers.
    Kafka(Arc<KafkaCluster>),
}

/// A route ready to serve: its settings, plugins and target.
#[derive(Debug)]
pub struct RouteRuntime {
    /// The checked route.
    pub config: Arc<Route>,
    /// Its plugins, in the order they run.
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// Where it sends requests.
    pub target: Target,
}

/// Per-request state, shared by every phase and by the route's plugins.
#[derive(Debug)]
pub struct RequestCtx {
    /// When the request arrived.
    pub started: Instant,
    /// The matched route.
    pub route: Option<Arc<RouteRuntime>>,
    /// Set by the `kafka-proxy` plugin: the route's Kafka settings.
    pub kafka: Option<Arc<KafkaProxy>>,
    /// Upstream nodes tried so far, the current one last.
    pub tried: Vec<SocketAddr>,
    /// A status the gateway answered itself (101, 400, 404) where Pingora records none.
    pub status: Option<u16>,
    /// The client's address, kept here because a detached WebSocket takes the connection away.
    pub client: Option<std::net::IpAddr>,
    /// Set by an auth plugin: who is calling.
    pub consumer: Option<Arc<Consumer>>,
    /// A query parameter that carries a credential: the access log writes its value as `***`.
    pub secret_query_param: Option<String>,
    /// This request's place in the connection limits; a pub/sub session takes it along.
    pub slot: Option<Slot>,
    /// Request body bytes seen so far.
    pub body_bytes: u64,
    /// Headers that every answer to this request must carry, the gateway's own refusals and
    /// errors included (CORS headers for an allowed origin).
    pub answer_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// The routes in force, with everything they point at: replaced whole on reload.
#[derive(Debug)]
pub struct RouteTable {
    router: Router,
    routes: Vec<Arc<RouteRuntime>>,
}

impl RouteTable {
    /// A table over routes given in file order (`routes[i].config.index == i`).
    pub fn new(routes: Vec<Arc<RouteRuntime>>) -> Self {
        let router = Router::new(routes.iter().map(|r| Arc::clone(&r.config)).collect());
        Self { router, routes }
    }

    /// The route for a request, and for a CORS preflight the route of the method it asks for.
    fn find(&self, req: &RequestHeader) -> Option<&Arc<RouteRuntime>> {
        let host = request_host(req);
        let path = req.uri.path();
        self.router
            .find(host, req.method.as_str(), path)
            .or_else(|| {
                // A CORS preflight is an OPTIONS for the method it names: a route limited to
                // that method answers it (its cors plugin does).
                let asked = req
                    .headers
                    .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?;
                (req.method == http::Method::OPTIONS)
                    .then(|| self.router.find(host, asked.to_str().ok()?, path))
                    .flatten()
                    .filter(|r| r.plugins.cors.is_some())
            })
            .and_then(|r| self.routes.get(r.index))
    }
}

/// The table in force. Requests take a reference at their start and keep it to their end, so a
/// reload never changes a request (or an open WebSocket session) midway.
#[derive(Debug)]
pub struct LiveRoutes(std::sync::RwLock<Arc<RouteTable>>);

impl LiveRoutes {
    /// Starts with `table`.
    pub fn new(table: RouteTable) -> Arc<Self> {
        Arc::new(Self(std::sync::RwLock::new(Arc::new(table))))
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<RouteTable> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts `table` in force for every request that starts from now on.
    pub fn replace(&self, table: RouteTable) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
    }
}

/// The gateway: route table, upstreams and the pub/sub side.
#[derive(Debug)]
pub struct Gateway {
    routes: Arc<LiveRoutes>,
    pubsub: Arc<PubSub>,
    limits: Arc<ConnectionLimits>,
    upgrades: Upgrades,
}

impl Gateway {
    /// A gateway serving whatever table `routes` holds.
    pub fn new(
        routes: Arc<LiveRoutes>,
        pubsub: Arc<PubSub>,
        limits: Arc<ConnectionLimits>,
    ) -> Self {
        Self {
            routes,
            pubsub,
            limits,
            upgrades: Upgrades::default(),
        }
    }

    /// Refuses a request over `[server.limits]`: 503 when the gateway is full, 429 for one
    /// client or consumer holding too much, 431/413 for oversized headers or bodies. `Ok(true)`
    /// means it answered.
    async fn enforce_limits(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let refusal = match self.limits.acquire(ctx.client) {
            Ok(slot) => {
                ctx.slot = Some(slot);
                request_size_refusal(session.req_header(), self.limits.config())
            }
            Err(Refusal::Total) => Some((
                503,
                Refusal::Total.name(),
                "503 Service Unavailable: the gateway is at its connection limit; retry shortly",
            )),
            Err(other) => Some((
                429,
                other.name(),
                "429 Too Many Requests: this client has too many requests or sessions open",
            )),
        };
        let Some((status, which, message)) = refusal else {
            return Ok(false);
        };
        crate::metrics::metrics()
            .limited
            .with_label_values(&[which])
            .inc();
        ctx.status = Some(status);
        let retry = matches!(status, 429 | 503).then_some(1);
        respond_refusal(session, ctx, status, message, retry).await?;
        Ok(true)
    }

    /// Serves an upgrade request (WebSocket) to an HTTP route itself, see [`crate::tunnel`]:
    /// a 101 from the node becomes a relay outside Pingora, any other answer is passed on with
    /// its body. Always answers (`Ok(true)`).
    async fn relay_upgrade(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let (mut node, mut answer) = match self.open_upgrade(session, ctx).await {
            Ok(opened) => opened,
            Err(e) => {
                self.fail_to_proxy(session, &e, ctx).await;
                return Ok(true);
            }
        };
        self.response_filter(session, &mut answer, ctx).await?;
        if answer.status != 101 || !node.was_upgraded() {
            // The node refused the upgrade (401, 404, ...): an ordinary answer.
            let mut done = node.is_body_done();
            session
                .write_response_header(Box::new(answer), done)
                .await?;
            while !done {
                let chunk = node.read_body_bytes().await.map_err(|e| e.into_up())?;
                done = chunk.is_none() || node.is_body_done();
                session.write_response_body(chunk, done).await?;
            }
            return Ok(true);
        }
        session
            .write_response_header(Box::new(answer), false)
            .await?;
        let (client, client_early) = crate::detach::detach(session).await?;
        ctx.status = Some(101);
        let node_early = crate::tunnel::early_bytes(&mut node);
        let tunnel = Tunnel {
            client,
            client_early,
            node: node.into_inner(),
            node_early,
            idle_timeout: Self::http_upstream(ctx)
                .map_or(Duration::from_secs(60), |u| u.config.timeouts.read),
            slot: ctx.slot.take(),
            route: ctx
                .route
                .as_ref()
                .map(|r| r.config.id.to_string())
                .unwrap_or_default(),
        };
        tokio::spawn(tunnel.run());
        Ok(true)
    }

    /// Sends an upgrade request to a node (retrying connect failures on other nodes as the
    /// upstream's `retries` allow) and reads its answer.
    async fn open_upgrade(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<(HttpSession, ResponseHeader)> {
        loop {
            let peer = self.upstream_peer(session, ctx).await?;
            let mut req = session.req_header().clone();
            for hop_by_hop in ["keep-alive", "proxy-connection", "te", "trailer"] {
                req.remove_header(hop_by_hop);
            }
            self.upstream_request_filter(session, &mut req, ctx).await?;
            let mut node = match self.upgrades.connect(&peer).await {
                Ok(node) => node,
                Err(e) => {
                    let e = self.fail_to_connect(session, &peer, ctx, e.into_up());
                    if e.retry() {
                        continue;
                    }
                    return Err(e);
                }
            };
            let answer = crate::tunnel::exchange(&mut node, req)
                .await
                .map_err(|e| e.into_up())?;
            return Ok((node, answer));
        }
    }

    fn http_upstream(ctx: &RequestCtx) -> Option<&Arc<HttpUpstream>> {
        match &ctx.route.as_ref()?.target {
            Target::Http(u) => Some(u),
            Target::Kafka(_) => None,
        }
    }
}

/// Sends a complete JSON error response `{"error_msg": message}`.
pub async fn respond_json(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    message: &str,
) -> pingora::Result<()> {
    let body = serde_json::json!({ "error_msg": message });
    respond_body(session, ctx, status, body, None).await
}

/// Sends a JSON refusal `{"error_msg": message}`, with `Retry-After: seconds` when given.
pub async fn respond_refusal(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    message: &str,
    retry_after: Option<u64>,
) -> pingora::Result<()> {
    let body = serde_json::json!({ "error_msg": message });
    respond_body(session, ctx, status, body, retry_after).await
}

/// Sends `{"message": message}`, the shape APISIX's auth plugins answer with.
pub async fn respond_message(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    message: &str,
) -> pingora::Result<()> {
    let body = serde_json::json!({ "message": message });
    respond_body(session, ctx, status, body, None).await
}

/// Writes a whole JSON answer, with the headers plugins asked every answer to carry (CORS).
async fn respond_body(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    body: serde_json::Value,
    retry_after: Option<u64>,
) -> pingora::Result<()> {
    let body = body.to_string();
    let mut resp = ResponseHeader::build(status, Some(4 + ctx.answer_headers.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if let Some(seconds) = retry_after {
        resp.insert_header("retry-after", seconds.to_string())?;
    }
    for (name, value) in &ctx.answer_headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// The status, limit name and message for a request whose headers or declared body exceed
/// `[server.limits]`.
fn request_size_refusal(
    req: &RequestHeader,
    limits: &streamgate_config::model::Limits,
) -> Option<(u16, &'static str, &'static str)> {
    // The request line's target, measured without formatting it.
    let target = req.uri.authority().map_or(0, |a| a.as_str().len())
        + req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let header_bytes = target
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let declared_body = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if header_bytes > limits.max_request_header_bytes {
        Some((
            431,
            "max_request_header_bytes",
            "431 Request Header Fields Too Large: the request line and headers exceed this gateway's limit",
        ))
    } else if declared_body.is_some_and(|n| n > limits.max_request_body_bytes) {
        Some((
            413,
            "max_request_body_bytes",
            "413 Payload Too Large: the request body exceeds this gateway's limit",
        ))
    } else {
        None
    }
}

/// A status code as a metric label, without allocating for the codes the gateway sees.
fn status_label(status: u16) -> &'static str {
    match status {
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        413 => "413",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        0 => "0",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The request URI for the access log, with a credential-carrying query parameter masked.
fn redacted_uri(uri: &http::Uri, secret: Option<&str>) -> String {
    match (uri.query(), secret) {
        (Some(query), Some(name)) => {
            let masked: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k == name => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{}?{}", uri.path(), masked.join("&"))
        }
        _ => uri.to_string(),
    }
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
}

fn hash_key(session: &Session, balance: &Balance) -> Vec<u8> {
    let req = session.req_header();
    match balance {
        Balance::RoundRobin => Vec::new(),
        Balance::Chash(HashOn::RemoteAddr) => client_ip(session)
            .map(|ip| ip.to_string().into_bytes())
            .unwrap_or_default(),
        Balance::Chash(HashOn::Uri) => req
            .uri
            .path_and_query()
            .map(|p| p.as_str().as_bytes().to_vec())
            .unwrap_or_default(),
        Balance::Chash(HashOn::Header(name)) => req
            .headers
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        Balance::Chash(HashOn::Cookie(name)) => cookie(req, name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: None,
            kafka: None,
            tried: Vec::new(),
            status: None,
            client: None,
            consumer: None,
            secret_query_param: None,
            slot: None,
            body_bytes: 0,
            answer_headers: Vec::new(),
        }
    }

    /// Matches the route and runs its plugins; answers 400/404 itself, and hands pub/sub routes
    /// to the WebSocket session (which always answers). `Ok(false)` means "proxy it".
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.client = client_ip(session);
        if self.enforce_limits(session, ctx).await? {
            return Ok(true);
        }
        let req = session.req_header();
        let path = req.uri.path();
        if !is_routable_path(path) {
            ctx.status = Some(400);
            respond_json(
                session,
                ctx,
                400,
                "400 Bad Request: the path has `.` or `..` segments",
            )
            .await?;
            return Ok(true);
        }
        let found = self.routes.current().find(req).cloned();
        let Some(route) = found else {
            ctx.status = Some(404);
            respond_json(session, ctx, 404, "404 Route Not Found").await?;
            return Ok(true);
        };
        ctx.route = Some(Arc::clone(&route));
        for plugin in &route.plugins {
            if plugin.access(session, ctx).await? {
                return Ok(true);
            }
        }
        match &route.target {
            Target::Http(_) if crate::tunnel::relays(session.req_header()) => {
                self.relay_upgrade(session, ctx).await
            }
            Target::Http(_) => Ok(false),
            Target::Kafka(cluster) => {
                let settings = ctx.kafka.clone().unwrap_or_default();
                let kafka_route = KafkaRoute {
                    route_id: route.config.id.as_str().into(),
                    pool: Arc::clone(&self.pubsub.pool),
                    cluster: Arc::clone(cluster),
                    settings,
                    consumer: ctx.consumer.clone(),
                };
                self.pubsub
                    .serve(session, ctx, kafka_route, &self.limits)
                    .await
            }
        }
    }

    /// Counts the request body against `max_request_body_bytes` (chunked bodies declare no
    /// length up front).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > self.limits.config().max_request_body_bytes {
            crate::metrics::metrics()
                .limited
                .with_label_values(&["max_request_body_bytes"])
                .inc();
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "the request body exceeds max_request_body_bytes",
            ));
        }
        Ok(())
    }

    /// Lets the route's plugins change the upstream's response headers (CORS, say).
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(route) = ctx.route.clone() {
            for plugin in &route.plugins {
                plugin.response(session, upstream_response, ctx)?;
            }
        }
        Ok(())
    }

    /// Picks a healthy node not yet tried for this request.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(upstream) = Self::http_upstream(ctx) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no HTTP upstream for this request",
            ));
        };
        let key = hash_key(session, &upstream.config.balance);
        let Some(addr) = upstream.select(&key, &ctx.tried) else {
            let what = if ctx.tried.is_empty() {
                "no healthy node"
            } else {
                "no other healthy node to retry on"
            };
            return Err(Error::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some(format!("upstream {}: {what}", upstream.config.id).into()),
                None,
            ));
        };
        let peer = upstream.peer(addr);
        ctx.tried.push(addr);
        Ok(Box::new(peer))
    }

    /// Connecting failed: retry on another node while the upstream's `retries` allow.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(upstream) = Self::http_upstream(ctx) {
            crate::metrics::metrics()
                .upstream_failures
                .with_label_values(&[upstream.config.id.as_str(), "connect"])
                .inc();
            tracing::warn!(
                route = ctx.route.as_ref().map(|r| r.config.id.as_str()).unwrap_or(""),
                upstream = %upstream.config.id,
                node = %peer._address,
                error = %e,
                "connecting to the upstream node failed"
            );
            if ctx.tried.len() <= upstream.config.retries {
                e.set_retry(true);
            }
        }
        e
    }

    /// Sets forwarding headers and the Host policy, then runs the plugins' `before_proxy`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let original_host = request_host(session.req_header()).map(str::to_string);
        if let Some(ip) = client_ip(session) {
            let ip = ip.to_string();
            let forwarded_for = match session
                .req_header()
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
                _ => ip.clone(),
            };
            upstream_request.insert_header("x-forwarded-for", forwarded_for)?;
            upstream_request.insert_header("x-real-ip", ip)?;
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream_request.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        if let Some(host) = &original_host {
            upstream_request.insert_header("x-forwarded-host", host.as_str())?;
        }
        if let (Some(upstream), Some(node)) = (Self::http_upstream(ctx), ctx.tried.last()) {
            if let Some(host) = upstream.host_header(node) {
                upstream_request.insert_header(http::header::HOST, host)?;
            }
        }
        if let Some(route) = ctx.route.clone() {
            for plugin in &route.plugins {
                plugin.before_proxy(session, upstream_request, ctx).await?;
            }
        }
        Ok(())
    }

    /// Answers a failed proxy attempt: 504 for upstream timeouts, 502 for other upstream
    /// failures, each with a JSON body; logs the route, upstream and node.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        let code = match (e.esource(), e.etype()) {
            (_, HTTPStatus(code)) => *code,
            (
                ErrorSource::Upstream,
                ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout,
            ) => 504,
            (ErrorSource::Upstream, _) => 502,
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => 0,
            (ErrorSource::Downstream, ReadTimedout) => 408,
            (ErrorSource::Downstream, _) => 400,
            (ErrorSource::Internal | ErrorSource::Unset, _) => 500,
        };
        let route = ctx
            .route
            .as_ref()
            .map(|r| r.config.id.as_str())
            .unwrap_or("");
        let upstream = Self::http_upstream(ctx)
            .map(|u| u.config.id.as_str())
            .unwrap_or("");
        let node = ctx.tried.last().map(|a| a.to_string()).unwrap_or_default();
        if e.esource() == &ErrorSource::Upstream && !upstream.is_empty() {
            // Connect failures were counted per attempt in fail_to_connect.
            let kind = match e.etype() {
                ConnectNoRoute => Some("no_healthy_node"),
                ConnectTimedout | ConnectRefused | ConnectError | TLSHandshakeFailure
                | TLSHandshakeTimedout => None,
                ReadTimedout | WriteTimedout => Some("timeout"),
                _ => Some("other"),
            };
            if let Some(kind) = kind {
                crate::metrics::metrics()
                    .upstream_failures
                    .with_label_values(&[upstream, kind])
                    .inc();
            }
        }
        if code >= 500 {
            tracing::error!(route, upstream, node, status = code, error = %e, "proxying failed");
        } else {
            tracing::debug!(route, upstream, node, status = code, error = %e, "client side of the request failed");
        }
        if code > 0 && session.response_written().is_none() {
            let message = match code {
                502 => "502 Bad Gateway",
                504 => "504 Gateway Timeout",
                408 => "408 Request Timeout",
                413 => "413 Payload Too Large: the request body exceeds this gateway's limit",
                400 => "400 Bad Request",
                _ => "500 Internal Server Error",
            };
            if let Err(write) = respond_json(session, ctx, code, message).await {
                tracing::debug!(error = %write, "could not send the error response");
            }
            ctx.status = Some(code);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Our own log lines replace Pingora's per-error log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// Writes the access log line.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.status)
            .unwrap_or(0);
        let route_id = ctx.route.as_ref().map_or("-", |r| r.config.id.as_str());
        let metrics = crate::metrics::metrics();
        metrics
            .http_requests
            .with_label_values(&[route_id, status_label(status)])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[route_id])
            .observe(ctx.started.elapsed().as_secs_f64());
        let upstream = ctx.route.as_ref().map(|r| match &r.target {
            Target::Http(u) => u.config.id.as_str(),
            Target::Kafka(k) => k.upstream_id.as_str(),
        });
        tracing::info!(
            target: "streamgate::access",
            client = %ctx.client.or_else(|| client_ip(session)).map(|i| i.to_string()).unwrap_or_default(),
            method = %req.method,
            uri = %redacted_uri(&req.uri, ctx.secret_query_param.as_deref()),
            host = request_host(req).unwrap_or(""),
            route = route_id,
            consumer = ctx.consumer.as_ref().map(|c| c.username.as_str()).unwrap_or("-"),
            upstream = upstream.unwrap_or("-"),
            node = %ctx.tried.last().map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            status,
            bytes = session.body_bytes_sent(),
            duration_ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
            error = e.map(|e| e.to_string()).unwrap_or_default(),
            "access"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_across_headers_and_pairs() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.append_header("cookie", "a=1; jwt=tok.en.sig")
            .expect("header");
        req.append_header("cookie", "user=alice").expect("header");
        assert_eq!(cookie(&req, "jwt"), Some("tok.en.sig"));
        assert_eq!(cookie(&req, "user"), Some("alice"));
        assert_eq!(cookie(&req, "j"), None);
        assert_eq!(
            redacted_uri(&"/k?a=1&jwt=s3cret".parse().unwrap(), Some("jwt")),
            "/k?a=1&jwt=***"
        );
    }
}
