//! The transports: a WebSocket session (the upgrade, the command loop, writing frames) and
//! Server-Sent Events. Each renders the reading modes' answers its own way; neither uses the
//! other.

pub(crate) mod sse;
pub(crate) mod upgrade;
pub(crate) mod websocket;
