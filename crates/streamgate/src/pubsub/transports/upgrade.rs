//! The WebSocket handshake of a pub/sub route, and detaching the connection from Pingora.
//!
//! Pingora's `is_upgrade_req` only checks that an `Upgrade` header exists, so the handshake is
//! validated first ([`crate::request::websocket_handshake_problem`], RFC 6455 §4.2.1). After the
//! 101 the TCP stream is taken out of Pingora's session ([`crate::detach`]).

use crate::ctx::RequestCtx;
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Whether a browser page at the request's `Origin` may open this WebSocket. Browsers always send
/// `Origin` on WebSocket handshakes, and cookies or query-string credentials ride along, so a
/// route that lists origins refuses every other one (cross-site WebSocket hijacking).
pub(crate) fn origin_allowed(session: &Session, allowed: Option<&[String]>) -> bool {
    let Some(allowed) = allowed else { return true };
    match session
        .req_header()
        .headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(origin) => crate::request::origin_listed(origin, allowed),
    }
}

/// Answers 101 and takes the connection out of Pingora's session.
///
/// Returns the stream and the bytes the client already sent after the handshake (a client may
/// send its first frame in the same TCP write). Call only for a valid handshake.
pub(crate) async fn accept_and_detach(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora::Result<(Stream, Vec<u8>)> {
    let key = session
        .req_header()
        .headers
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let mut resp = ResponseHeader::build(101, Some(3))?;
    resp.insert_header("upgrade", "websocket")?;
    resp.insert_header("connection", "Upgrade")?;
    resp.insert_header("sec-websocket-accept", key)?;
    crate::respond::header(session, ctx, resp, false).await?;
    crate::detach::detach(session).await
}
