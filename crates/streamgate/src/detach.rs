//! Taking an upgraded connection out of Pingora's session.
//!
//! After a 101 the gateway serves the connection in its own task (a pub/sub session, or a
//! relay to an HTTP upstream), so `request_filter` returns at once and Pingora frees its
//! per-request state: an idle upgraded connection then costs a few KiB instead of the whole
//! request context.

use bytes::BytesMut;
use futures_util::FutureExt;
use pingora::protocols::http::v2::server::HttpSession as H2Session;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use std::io::Cursor;

/// Takes the client connection out of `session`, once the 101 is written.
///
/// Returns the stream and the bytes the client already sent after its request (a client may
/// send its first frame in the same TCP write as the handshake).
pub(crate) async fn detach(session: &mut Session) -> pingora::Result<(Stream, Vec<u8>)> {
    // Bytes Pingora read past the headers; the read is cancel-safe, so stop at the first
    // read that would wait.
    let mut early = BytesMut::new();
    while let Some(Ok(Some(chunk))) = session.read_request_body().now_or_never() {
        early.extend_from_slice(&chunk);
    }
    match take_downstream(session).await? {
        ServerSession::H1(h1) => Ok((h1.into_inner(), early.to_vec())),
        _ => Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "an upgrade on a connection that is not HTTP/1.1",
        )),
    }
}

/// A response the gateway goes on writing after `request_filter` returned (an event stream).
pub(crate) enum ResponseBody {
    /// HTTP/1.1: the connection itself; the writer frames the body (chunked).
    Http1(Stream),
    /// HTTP/2: the request's stream; the connection stays with Pingora, which multiplexes it.
    Http2(Box<H2Session>),
}

/// Takes the response's body out of `session`, once its header is written.
pub(crate) async fn detach_response(session: &mut Session) -> pingora::Result<ResponseBody> {
    match take_downstream(session).await? {
        ServerSession::H1(h1) => Ok(ResponseBody::Http1(h1.into_inner())),
        ServerSession::H2(h2) => Ok(ResponseBody::Http2(Box::new(h2))),
        _ => Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "a streamed response on a connection that is neither HTTP/1.1 nor HTTP/2",
        )),
    }
}

/// Swaps the client's session for a finished stand-in, so Pingora's logging phase still sees the
/// request, and returns the real one.
async fn take_downstream(session: &mut Session) -> pingora::Result<ServerSession> {
    let mut placeholder = ServerSession::new_http1(Box::new(Cursor::new(request_line(session))));
    placeholder.read_request().await?;
    Ok(std::mem::replace(session.as_downstream_mut(), placeholder))
}

fn request_line(session: &Session) -> Vec<u8> {
    let req = session.req_header();
    let mut raw = format!("{} {} HTTP/1.1\r\n", req.method, req.uri).into_bytes();
    if let Some(host) = req.headers.get("host") {
        raw.extend_from_slice(b"host: ");
        raw.extend_from_slice(host.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw
}
