//! The reading modes: pull (the APISIX commands, list offset and fetch) and push
//! (subscriptions with credit, resumed from cursors). Transports use them; they never use a
//! transport, and neither uses the other.

pub(crate) mod cursor;
pub(crate) mod pull;
pub(crate) mod push;
