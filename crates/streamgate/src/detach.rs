//! Taking an upgraded connection out of Pingora's session.
//!
//! After a 101 the gateway serves the connection in its own task (a pub/sub session, or a
//! relay to an HTTP upstream), so `request_filter` returns at once and Pingora frees its
//! per-request state: an idle upgraded connection then costs a few KiB instead of the whole
//! request context.

use bytes::BytesMut;
use futures_util::FutureExt;
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

    // Leave Pingora a finished stand-in session so its logging phase still sees the request.
    let mut placeholder = ServerSession::new_http1(Box::new(Cursor::new(request_line(session))));
    placeholder.read_request().await?;
    let original = std::mem::replace(session.as_downstream_mut(), placeholder);
    match original {
        ServerSession::H1(h1) => Ok((h1.into_inner(), early.to_vec())),
        _ => Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "an upgrade on a connection that is not HTTP/1.1",
        )),
    }
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
