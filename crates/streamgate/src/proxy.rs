//! The gateway's one `ProxyHttp` implementation: the request path of every request. Each phase
//! delegates to the module that owns the work; this file only says in which order it happens.
//!
//! ```text
//!   request ─▶ request_filter: admission (limits.rs: 503/429/431/413) ─▶ path normalised
//!                   (router.rs: 400 for what cannot be)
//!                   ─▶ route match (routes.rs, router.rs: 404) ─▶ route plugins (plugins/:
//!                   may answer 401/403/429/204 themselves, put the consumer on the context)
//!                   │
//!                   ├─ kafka route ─▶ pubsub::serve: 403/400/429, or 101 + a detached session
//!                   ├─ upgrade to an http route ─▶ 400 unless a WebSocket handshake;
//!                   │     tunnel::serve relays it itself
//!                   ▼ http route
//!             upstream_peer: a healthy node not yet tried (upstream.rs)
//!                   ▼
//!             upstream_request_filter: X-Forwarded-*, Host, plugins' before_proxy
//!                   ▼
//!             response_filter: plugins' response ─▶ streamed response
//!                   ▼
//!             logging: access log line and request metrics (access_log.rs)
//! ```
//!
//! Errors never panic the process: a failed upstream is a 502 (or 504 on a timeout) with a JSON
//! body, and a log line naming the route, upstream and node.

use crate::access_log::{self, Served};
use crate::ctx::RequestCtx;
use crate::limits::ConnectionLimits;
use crate::pubsub::PubSub;
use crate::request;
use crate::respond::{self, Answer};
use crate::routes::{Route, TableInForce, Target};
use crate::tunnel::{RelaySettings, Upgrades};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

/// Answers the request from the gateway itself (`Ok(true)`: answered). The answer's future is
/// boxed so that it is allocated only when there is one: `async_trait` allocates and copies each
/// `request_filter` future whole, and an inline answer made that 10 KiB for every request
/// (BENCHMARKS.md, "Per request").
async fn answered(
    session: &mut Session,
    ctx: &mut RequestCtx,
    answer: Answer<'_>,
) -> pingora::Result<bool> {
    Box::pin(respond::send(session, ctx, answer)).await?;
    Ok(true)
}

/// The gateway: the route table in force, the pub/sub side and the connection limits.
#[derive(Debug)]
pub(crate) struct Gateway {
    routes: Arc<TableInForce>,
    pubsub: Arc<PubSub>,
    limits: Arc<ConnectionLimits>,
    upgrades: Upgrades,
    /// `[server] normalize_uri_like_servlet`.
    servlet_paths: bool,
    /// `[server] trusted_proxies`.
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl Gateway {
    /// A gateway serving whatever table `routes` holds.
    pub(crate) fn new(
        routes: Arc<TableInForce>,
        pubsub: Arc<PubSub>,
        limits: Arc<ConnectionLimits>,
        server: &streamgate_config::model::Server,
    ) -> Self {
        Self {
            routes,
            pubsub,
            limits,
            upgrades: Upgrades::default(),
            servlet_paths: server.normalize_uri_like_servlet,
            trusted_proxies: server.trusted_proxies.clone(),
        }
    }
}

/// Pingora's per-request state for the gateway: what plugins see, and the proxy's own.
#[derive(Debug)]
pub(crate) struct ProxyCtx {
    /// Shared with plugins, the responder and pub/sub.
    req: RequestCtx,
    /// The matched route, kept to the end of the request even if a reload replaces the table.
    route: Option<Arc<Route>>,
    /// Upstream nodes tried so far, the current one last.
    tried: Vec<SocketAddr>,
    /// Request body bytes seen so far.
    body_bytes: u64,
}

impl AsMut<RequestCtx> for ProxyCtx {
    fn as_mut(&mut self) -> &mut RequestCtx {
        &mut self.req
    }
}

impl ProxyCtx {
    fn route_id(&self) -> Option<&str> {
        self.route.as_ref().map(|r| r.config.id.as_str())
    }

    fn http_upstream(&self) -> Option<&Arc<crate::upstream::HttpUpstream>> {
        self.route.as_ref()?.http()
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = ProxyCtx;

    fn new_ctx(&self) -> ProxyCtx {
        ProxyCtx {
            req: RequestCtx::new(),
            route: None,
            tried: Vec::new(),
            body_bytes: 0,
        }
    }

    /// Runs first, once the request header is read. Admits the request into the connection
    /// limits, normalises the path (the node gets the normalised one), matches the route and
    /// runs its plugins; answers refusals (503, 429, 431, 413), a path that cannot be
    /// normalised (400), no route (404) and whatever a plugin refuses itself. Serves
    /// kafka routes (pub/sub) and upgrade requests to http routes (relay) without Pingora's
    /// proxying. `Ok(true)` means the request was answered; `Ok(false)` means "proxy it".
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut ProxyCtx,
    ) -> pingora::Result<bool> {
        ctx.req.client = request::client_ip(session);
        let table = self.routes.current();
        ctx.req.secret_params = Arc::clone(table.secret_params());
        match self.limits.admit(ctx.req.client, session.req_header()) {
            Ok(slot) => ctx.req.slot = Some(slot),
            Err(refused) => {
                let mut answer = Answer::error(refused.status, refused.message);
                if let Some(seconds) = refused.retry_after() {
                    answer = answer.retry_after(seconds);
                }
                return answered(session, &mut ctx.req, answer).await;
            }
        }
        let req = session.req_header();
        let path = match crate::router::normalize(req.uri.path(), self.servlet_paths) {
            Ok(path) => path,
            Err(why) => {
                let message = format!("400 Bad Request: {why}");
                return answered(session, &mut ctx.req, Answer::error(400, &message)).await;
            }
        };
        let found = table.find(req, &path.matched).cloned();
        if let Cow::Owned(normal) = path.forward {
            // The node gets the path the route was matched on.
            let uri = match req.uri.query() {
                Some(query) => format!("{normal}?{query}"),
                None => normal,
            };
            match uri.parse() {
                Ok(uri) => session.req_header_mut().set_uri(uri),
                Err(_) => {
                    let answer = Answer::error(400, "400 Bad Request: the path is malformed");
                    return answered(session, &mut ctx.req, answer).await;
                }
            }
        }
        let Some(route) = found else {
            let answer = Answer::error(404, "404 Route Not Found");
            return answered(session, &mut ctx.req, answer).await;
        };
        ctx.route = Some(Arc::clone(&route));
        let authenticates =
            route.config.plugins.key_auth.is_some() || route.config.plugins.jwt_auth.is_some();
        if authenticates {
            // Guessing credentials costs the guesser: past its failed attempts an address is
            // refused before any check runs.
            if let Some(seconds) = self.limits.auth_blocked(ctx.req.client) {
                let message = format!("429 Too Many Requests: too many failed authentications from this address; retry after {seconds} s");
                let answer = Answer::error(429, &message).retry_after(seconds);
                return answered(session, &mut ctx.req, answer).await;
            }
        }
        for plugin in &route.plugins {
            if plugin.access(session, &mut ctx.req).await? {
                tracing::debug!(route = %route.config.id, plugin = plugin.name(), "a plugin answered the request");
                return Ok(true);
            }
        }
        match &route.target {
            // Boxed, like `answered`: these futures are large and only these requests need them.
            Target::Kafka(target) => {
                Box::pin(
                    self.pubsub
                        .serve(session, &mut ctx.req, target, &self.limits),
                )
                .await
            }
            Target::Http(upstream) if request::asks_upgrade(session.req_header()) => {
                // Only WebSocket is relayed: another protocol (h2c, say) would turn the
                // connection into a pipe carrying requests no route or plugin sees.
                let req = session.req_header();
                let not_websocket =
                    "400 Bad Request: only WebSocket upgrades are relayed (`Upgrade: websocket`)";
                let problem =
                    request::websocket_handshake_problem(req, not_websocket).or_else(|| {
                        request::declares_body(req)
                            .then_some("400 Bad Request: a WebSocket handshake carries no body")
                    });
                if let Some(problem) = problem {
                    return answered(session, &mut ctx.req, Answer::error(400, problem)).await;
                }
                let settings = RelaySettings {
                    idle_timeout: upstream.config.timeouts.read,
                    max_lifetime: self.limits.config().max_tunnel,
                    route: route.config.id.clone(),
                };
                Box::pin(crate::tunnel::serve(
                    self,
                    &self.upgrades,
                    session,
                    ctx,
                    settings,
                ))
                .await
            }
            Target::Http(_) => Ok(false),
        }
    }

    /// Runs for each chunk of a proxied request's body. Counts it against
    /// `max_request_body_bytes` (chunked bodies declare no length up front); over it, the
    /// request fails with 413.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut ProxyCtx,
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

    /// Runs when the node's response header arrives, before it goes to the client. The
    /// route's plugins may change it (CORS headers, say).
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut ProxyCtx,
    ) -> pingora::Result<()> {
        if let Some(route) = &ctx.route {
            for plugin in &route.plugins {
                plugin.response(session, upstream_response, &mut ctx.req)?;
            }
        }
        Ok(())
    }

    /// Runs before each connection attempt to a node. Picks a healthy node of the route's
    /// upstream not yet tried for this request; none left is a 502.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut ProxyCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(upstream) = ctx.http_upstream() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no HTTP upstream for this request",
            ));
        };
        let Some(addr) = upstream.select(session, &ctx.tried) else {
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

    /// Runs when connecting to a node failed. Counts and logs it, and marks the error for a
    /// retry on another node while the upstream's `retries` allow.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut ProxyCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(upstream) = ctx.http_upstream() {
            crate::metrics::metrics()
                .upstream_failures
                .with_label_values(&[upstream.config.id.as_str(), "connect"])
                .inc();
            tracing::warn!(
                route = ctx.route_id().unwrap_or(""),
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

    /// Runs once connected, before the request header goes to the node. Sets the forwarding
    /// headers (`X-Forwarded-For` kept and appended to only from `trusted_proxies`, else
    /// replaced) and the upstream's Host policy, then runs the plugins' `before_proxy`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut ProxyCtx,
    ) -> pingora::Result<()> {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        crate::forwarded::set(
            upstream_request,
            session.req_header(),
            ctx.req.client,
            tls,
            &self.trusted_proxies,
        )?;
        // Only an h2c upgrade uses it, and the gateway relays no h2c.
        upstream_request.remove_header("http2-settings");
        if let (Some(upstream), Some(node)) = (ctx.http_upstream(), ctx.tried.last()) {
            if let Some(host) = upstream.host_header(node) {
                upstream_request.insert_header(http::header::HOST, host)?;
            }
        }
        if let Some(route) = &ctx.route {
            for plugin in &route.plugins {
                plugin
                    .before_proxy(session, upstream_request, &mut ctx.req)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs when proxying failed for good (no retry left). Answers 504 for upstream timeouts
    /// and 502 for other upstream failures, each with a JSON body, unless a response already
    /// started; logs the route, upstream and node.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut ProxyCtx,
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
        let route = ctx.route_id().unwrap_or("");
        let upstream = ctx.http_upstream().map_or("", |u| u.config.id.as_str());
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
            let answer = Answer::error(code, message);
            if let Err(write) = respond::send(session, &mut ctx.req, answer).await {
                tracing::debug!(error = %write, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Our own log lines replace Pingora's per-error log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &ProxyCtx, _error: &Error) -> bool {
        true
    }

    /// Runs last, for every request (for an upgraded connection: once it is handed to its own
    /// task). Writes the access log line and the request metrics.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut ProxyCtx) {
        let served = Served {
            route: ctx.route_id(),
            upstream: ctx.route.as_ref().map(|r| r.upstream_id()),
            node: ctx.tried.last().copied(),
        };
        access_log::write(session, e, &ctx.req, served);
    }
}
