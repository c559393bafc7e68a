//! The checked configuration model the gateway runs on, one page per concern.
//!
//! Built from [`crate::toml`]'s file shape by the checks in `check/`: every default is filled
//! in, every value is range-checked, cross references (route to upstream) are resolved, and
//! every problem found is collected, so one run of `streamgate -t` lists them all. Nothing here
//! touches the network.

mod consumer;
mod identity;
mod plugins;
mod route;
mod server;
mod upstream;

pub use consumer::{Consumer, JwtCredential, RecordFilter};
pub use identity::{IdentityProvider, PROVIDER_ALGORITHMS};
pub use plugins::{
    Cors, Groups, Isolation, JwtAuth, KafkaProxy, KeyAuth, LimitKey, LimitReq, Sasl, SaslMechanism,
    TopicPattern,
};
pub use route::{HostPattern, PathPattern, Plugins, Route};
pub use server::{Admin, Limits, LogFormat, Server, TlsListener};
pub use upstream::{
    Balance, HashOn, HealthCheck, HostPolicy, Node, Scheme, Timeouts, Upstream, UpstreamTls,
    DEFAULT_MAX_DECOMPRESSED_BYTES,
};

use std::sync::Arc;

/// A whole, valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners and process settings.
    pub server: Server,
    /// The optional admin listener (metrics and health).
    pub admin: Option<Admin>,
    /// Upstreams, in file order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Routes, in file order.
    pub routes: Vec<Arc<Route>>,
    /// Consumers, in file order.
    pub consumers: Vec<Arc<Consumer>>,
    /// Identity providers whose tokens `jwt-auth` verifies, in file order.
    pub identity_providers: Vec<Arc<IdentityProvider>>,
}
