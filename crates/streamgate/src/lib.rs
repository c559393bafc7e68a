//! Streamgate: an edge proxy on Pingora that routes HTTP to upstreams and serves Kafka topics
//! to WebSocket clients (Apache APISIX's pub/sub protocol).
//!
//! The request path, one module each: [`proxy`] (the one `ProxyHttp`, phases in order) admits
//! the request ([`limits`]), finds its route ([`routes`], matching in [`router`]), runs the
//! route's [`plugins`] (their findings on the request context, [`ctx`]), then hands it to an
//! HTTP upstream ([`upstream`]; [`tunnel`] for WebSocket upgrades) or to [`pubsub`] (WebSocket
//! sessions on shared Kafka clients). [`server`] assembles them into a Pingora server from a
//! checked [`streamgate_config::Config`]; [`reload`] swaps the route table.
//!
//! Dependencies point one way (docs/architecture.md; `tests/module_layers.rs` checks it): small
//! modules at the bottom (`ctx`, `respond`, `request`, `rate`, `sync`, `metrics`, ...), the
//! plugins, pub/sub and the tunnel above them, the route table above those, then the proxy,
//! and `server` on top. Nothing imports `proxy`.
#![deny(
    rust_2018_idioms,
    unsafe_code,
    missing_docs,
    rustdoc::broken_intra_doc_links
)]
#![warn(missing_debug_implementations, clippy::clone_on_ref_ptr)]

mod access_log;
mod admin;
mod ctx;
mod detach;
mod error;
mod forwarded;
mod limits;
mod metrics;
mod plugins;
mod proxy;
mod pubsub;
mod rate;
mod reload;
mod request;
mod respond;
mod router;
mod routes;
mod server;
mod sync;
mod tls;
mod tunnel;
mod upstream;

pub use error::StartupError;
pub use server::{build, prepare, Prepared};
