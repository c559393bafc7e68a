//! The per-request context that route plugins, the responder and pub/sub share.
//!
//! Plugins put what they learn here (who is calling, headers every answer must carry); the
//! proxy and the pub/sub session read it. The matched route and the upstream attempts are the
//! proxy's own and live beside this in its context, so nothing here depends on routes or
//! plugins.

use crate::limits::Slot;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use streamgate_config::model::Consumer;

/// What a request has gathered so far, shared by every phase and by the route's plugins.
#[derive(Debug)]
pub(crate) struct RequestCtx {
    /// When the request arrived.
    pub started: Instant,
    /// The client's address, kept here because a detached WebSocket takes the connection away.
    pub client: Option<IpAddr>,
    /// The status of an answer the gateway wrote itself, where Pingora records none (a 101 on a
    /// detached connection). Set by [`crate::respond`], never by hand.
    pub status: Option<u16>,
    /// Set by an auth plugin: who is calling.
    pub consumer: Option<Arc<Consumer>>,
    /// Set by an auth plugin whose credential expires (a JWT's `exp`): a WebSocket opened with
    /// it is closed then.
    pub credential_expires: Option<std::time::SystemTime>,
    /// Set by `jwt-auth`: the verified token's claims (a route may filter records by one).
    pub claims: Option<Arc<serde_json::Value>>,
    /// The query parameters that carry credentials on any route (every `key-auth` and
    /// `jwt-auth` `query` name): the access log writes their values as `***`, whichever route
    /// the request reached, or none.
    pub secret_params: Arc<[String]>,
    /// This request's place in the connection limits; a detached session or tunnel takes it.
    pub slot: Option<Slot>,
    /// Headers that every answer to this request must carry, the gateway's own refusals and
    /// errors included (CORS headers for an allowed origin).
    pub answer_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl RequestCtx {
    /// The context of a request that just arrived.
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            client: None,
            status: None,
            consumer: None,
            credential_expires: None,
            claims: None,
            secret_params: Arc::new([]),
            slot: None,
            answer_headers: Vec::new(),
        }
    }
}
