//! WebSocket connections to HTTP upstreams.
//!
//! ```text
//! request_filter ── a valid WebSocket handshake without a body? ──no──▶ 400
//!        │ yes          (other upgrades, h2c say, would carry requests no route or plugin sees)
//!        ▼
//!  pick a node (retries skip nodes tried), forwarding headers, plugins' before_proxy
//!        ▼
//!  send the request on a fresh connection, read the answer
//!        │ 101 completing the handshake │ anything else (a 101 that does not: 502)
//!        ▼                              ▼
//!  101 to the client, detach both   the answer and its body to the client
//!  connections, relay bytes in a
//!  task until either side closes,
//!  both are idle for `timeouts.read`,
//!  max_tunnel_seconds pass or the
//!  credential (a JWT's exp) expires
//! ```
//!
//! Why not Pingora's own upgrade path: Pingora 0.9 ends the tunnel right after the 101 when the
//! upstream's answer is read before the request's own (empty) body is passed on
//! (cloudflare/pingora#946), so a fast upstream sometimes gets a WebSocket that closes at once.
//! Relaying here also frees Pingora's per-request state, as pub/sub sessions do.

use crate::ctx::RequestCtx;
use crate::limits::Slot;
use futures_util::FutureExt;
use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::Stream;
use pingora::proxy::{ProxyHttp, Session};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Buffer size of each relay direction.
const RELAY_BUFFER: usize = 8 * 1024;

/// What a relayed connection needs from its route.
#[derive(Debug, Clone)]
pub(crate) struct RelaySettings {
    /// Closes the tunnel when neither side sent a byte for this long (the upstream's `read`
    /// timeout).
    pub idle_timeout: Duration,
    /// Closes the tunnel this long after it opened, traffic or not (`[server.limits]
    /// max_tunnel_seconds`).
    pub max_lifetime: Option<Duration>,
    /// The route id, for log lines.
    pub route: String,
}

/// Serves a WebSocket handshake (already checked) to an HTTP route with the proxy's own phases:
/// `upstream_peer` picks the node, `fail_to_connect` decides retries, `upstream_request_filter`
/// adds forwarding headers and runs plugins, `response_filter` runs plugins on the node's
/// answer, and `fail_to_proxy` answers a failure. A 101 from the node becomes a relay outside
/// Pingora; any other answer is passed on with its body. Always answers (`Ok(true)`).
pub(crate) async fn serve<P>(
    proxy: &P,
    upgrades: &Upgrades,
    session: &mut Session,
    ctx: &mut P::CTX,
    settings: RelaySettings,
) -> pingora::Result<bool>
where
    P: ProxyHttp + Sync,
    P::CTX: AsMut<RequestCtx> + Send + Sync,
{
    let (mut node, mut answer) = match open(proxy, upgrades, session, ctx).await {
        Ok(opened) => opened,
        Err(e) => {
            proxy.fail_to_proxy(session, &e, ctx).await;
            return Ok(true);
        }
    };
    proxy.response_filter(session, &mut answer, ctx).await?;
    if answer.status != 101 || !node.was_upgraded() {
        // The node refused the upgrade (401, 404, ...): an ordinary answer.
        let mut done = node.is_body_done();
        crate::respond::header(session, ctx.as_mut(), answer, done).await?;
        while !done {
            let chunk = node.read_body_bytes().await.map_err(|e| e.into_up())?;
            done = chunk.is_none() || node.is_body_done();
            session.write_response_body(chunk, done).await?;
        }
        return Ok(true);
    }
    crate::respond::header(session, ctx.as_mut(), answer, false).await?;
    let (client, client_early) = crate::detach::detach(session).await?;
    let node_early = early_bytes(&mut node);
    // The tunnel ends at its lifetime cap, or when the credential it was opened with expires.
    let expires = ctx.as_mut().credential_expires.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        (Instant::now() + left, "the credential expired")
    });
    let capped = settings
        .max_lifetime
        .map(|cap| (Instant::now() + cap, "max_tunnel_seconds reached"));
    let deadline = match (expires, capped) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    let tunnel = Tunnel {
        client,
        client_early,
        node: node.into_inner(),
        node_early,
        idle_timeout: settings.idle_timeout,
        deadline,
        slot: ctx.as_mut().slot.take(),
        route: settings.route,
    };
    tokio::spawn(tunnel.run());
    Ok(true)
}

/// Sends an upgrade request to a node (retrying connect failures on other nodes as the
/// upstream's `retries` allow) and reads its answer.
async fn open<P>(
    proxy: &P,
    upgrades: &Upgrades,
    session: &mut Session,
    ctx: &mut P::CTX,
) -> pingora::Result<(HttpSession, ResponseHeader)>
where
    P: ProxyHttp + Sync,
    P::CTX: Send + Sync,
{
    loop {
        let peer = proxy.upstream_peer(session, ctx).await?;
        let mut req = session.req_header().clone();
        for hop_by_hop in ["keep-alive", "proxy-connection", "te", "trailer"] {
            req.remove_header(hop_by_hop);
        }
        proxy
            .upstream_request_filter(session, &mut req, ctx)
            .await?;
        let mut node = match upgrades.connect(&peer).await {
            Ok(node) => node,
            Err(e) => {
                let e = proxy.fail_to_connect(session, &peer, ctx, e.into_up());
                if e.retry() {
                    continue;
                }
                return Err(e);
            }
        };
        let key = req.headers.get("sec-websocket-key").cloned();
        let answer = exchange(&mut node, req).await.map_err(|e| e.into_up())?;
        if answer.status == 101 {
            check_accept(&answer, key.as_ref())?;
        }
        return Ok((node, answer));
    }
}

/// Connections to upstream nodes for upgrade requests: always fresh, never pooled.
pub(crate) struct Upgrades {
    connector: Connector,
}

impl std::fmt::Debug for Upgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrades").finish_non_exhaustive()
    }
}

impl Default for Upgrades {
    fn default() -> Self {
        Self {
            connector: Connector::new(None),
        }
    }
}

impl Upgrades {
    /// A new connection to `peer`, with its TLS and timeout settings.
    async fn connect(&self, peer: &HttpPeer) -> pingora::Result<HttpSession> {
        let (session, _reused) = self.connector.get_http_session(peer).await?;
        Ok(session)
    }
}

/// Refuses a node's 101 that does not complete the client's WebSocket handshake (RFC 6455
/// §4.2.2): anything else speaking behind a 101 would be relayed unseen.
fn check_accept(answer: &ResponseHeader, key: Option<&http::HeaderValue>) -> pingora::Result<()> {
    let expected = key.map(|k| derive_accept_key(k.as_bytes()));
    let accept = answer
        .headers
        .get("sec-websocket-accept")
        .and_then(|v| v.to_str().ok());
    let websocket = answer
        .headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if websocket && expected.is_some() && accept == expected.as_deref() {
        return Ok(());
    }
    Err(pingora::Error::create(
        pingora::ErrorType::InvalidHTTPHeader,
        pingora::ErrorSource::Upstream,
        Some("the node answered 101 without a valid WebSocket handshake (Upgrade, Sec-WebSocket-Accept)".into()),
        None,
    ))
}

/// Sends `req` and reads the node's final answer (informational answers other than 101 are
/// skipped).
async fn exchange(
    upstream: &mut HttpSession,
    req: RequestHeader,
) -> pingora::Result<ResponseHeader> {
    upstream.write_request_header(Box::new(req)).await?;
    loop {
        upstream.read_response().await?;
        let status = upstream.get_status().map_or(0, |s| s.as_u16());
        if status == 101 || status >= 200 {
            break;
        }
    }
    upstream.resp_header().cloned().ok_or_else(|| {
        pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "no response header")
    })
}

/// What the node sent after its 101 that was already read with the header.
fn early_bytes(upstream: &mut HttpSession) -> Vec<u8> {
    let mut early = Vec::new();
    // The read is cancel-safe: stop at the first one that would wait.
    while let Some(Ok(Some(chunk))) = upstream.read_body_bytes().now_or_never() {
        early.extend_from_slice(&chunk);
    }
    early
}

/// One upgraded connection, ready to relay.
#[derive(Debug)]
struct Tunnel {
    /// The client's connection, detached from Pingora.
    client: Stream,
    /// Bytes the client sent after its request, already read.
    client_early: Vec<u8>,
    /// The node's connection, after its 101.
    node: Stream,
    /// Bytes the node sent after its 101, already read.
    node_early: Vec<u8>,
    /// Closes the tunnel when neither side sent a byte for this long.
    idle_timeout: Duration,
    /// Closes the tunnel then, whatever the traffic, and why.
    deadline: Option<(Instant, &'static str)>,
    /// The request's place in the connection limits, held until the tunnel closes.
    slot: Option<Slot>,
    /// For log lines.
    route: String,
}

impl Tunnel {
    /// Relays bytes both ways until either side closes, a write fails, or the tunnel is idle.
    async fn run(self) {
        let Tunnel {
            client,
            client_early,
            node,
            node_early,
            idle_timeout,
            deadline,
            slot,
            route,
        } = self;
        let gauge = &crate::metrics::metrics().tunnels;
        gauge.inc();
        let epoch = Instant::now();
        let last_read = AtomicU64::new(0);
        let mut client = Stamped {
            inner: client,
            epoch,
            last_read: &last_read,
        };
        let mut node = Stamped {
            inner: node,
            epoch,
            last_read: &last_read,
        };
        let outcome = async {
            if !client_early.is_empty() {
                node.write_all(&client_early).await?;
                node.flush().await?;
            }
            if !node_early.is_empty() {
                client.write_all(&node_early).await?;
                client.flush().await?;
            }
            let until_deadline = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                moved = tokio::io::copy_bidirectional_with_sizes(
                    &mut client, &mut node, RELAY_BUFFER, RELAY_BUFFER,
                ) => moved.map(Ended::Closed),
                () = idle(epoch, &last_read, idle_timeout) => Ok(Ended::Idle),
                () = until_deadline => Ok(Ended::Deadline),
            }
        }
        .await;
        match outcome {
            Ok(Ended::Closed((up, down))) => {
                tracing::debug!(
                    route,
                    bytes_to_node = up,
                    bytes_to_client = down,
                    "tunnel closed"
                )
            }
            Ok(Ended::Idle) => tracing::debug!(route, ?idle_timeout, "tunnel idle, closed"),
            Ok(Ended::Deadline) => tracing::info!(
                route,
                why = deadline.map_or("", |(_, why)| why),
                "tunnel closed at its deadline"
            ),
            Err(e) => tracing::debug!(route, error = %e, "tunnel ended"),
        }
        // Close both sides (best effort), then give back the slot.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = client.shutdown().await;
            let _ = node.shutdown().await;
        })
        .await;
        drop(slot);
        gauge.dec();
    }
}

/// Why a relay stopped.
enum Ended {
    /// A side closed: the bytes moved to the node and to the client.
    Closed((u64, u64)),
    /// Neither side sent anything for the idle timeout.
    Idle,
    /// The lifetime cap or the credential's expiry.
    Deadline,
}

/// Resolves once nothing was read from either side for `timeout`.
async fn idle(epoch: Instant, last_read: &AtomicU64, timeout: Duration) {
    loop {
        let last = Duration::from_millis(last_read.load(Ordering::Relaxed));
        let quiet = epoch.elapsed().saturating_sub(last);
        if quiet >= timeout {
            return;
        }
        tokio::time::sleep(timeout - quiet).await;
    }
}

/// A stream that notes when it last delivered bytes.
struct Stamped<'a> {
    inner: Stream,
    epoch: Instant,
    last_read: &'a AtomicU64,
}

impl AsyncRead for Stamped<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.epoch.elapsed().as_millis() as u64;
            self.last_read.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Stamped<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(101, None).expect("response");
        for (k, v) in headers {
            resp.append_header(k.to_string(), *v).expect("header");
        }
        resp
    }

    #[test]
    fn a_101_must_complete_the_clients_websocket_handshake() {
        // RFC 6455's own example key and accept value.
        let key = http::HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let good = answer(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(check_accept(&good, Some(&key)).is_ok());
        let wrong = answer(&[("upgrade", "websocket"), ("sec-websocket-accept", "nope")]);
        assert!(check_accept(&wrong, Some(&key)).is_err());
        let h2c = answer(&[
            ("upgrade", "h2c"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(check_accept(&h2c, Some(&key)).is_err());
        assert!(check_accept(&answer(&[("upgrade", "websocket")]), Some(&key)).is_err());
        assert!(check_accept(&good, None).is_err());
    }
}
