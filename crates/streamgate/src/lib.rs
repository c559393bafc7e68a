//! Streamgate: an edge proxy on Pingora that routes HTTP to upstreams and serves Kafka topics
//! to WebSocket clients (Apache APISIX's pub/sub protocol).
//!
//! The request path, one module each: [`router`] (which route) → [`plugins`] (per-route
//! settings on the request context) → [`proxy`] (the one `ProxyHttp`) → [`upstream`] (HTTP
//! nodes; [`tunnel`] for WebSocket upgrades) or [`pubsub`] (WebSocket sessions on shared Kafka
//! clients). [`server`] assembles
//! them into a Pingora server from a checked [`streamgate_config::Config`].
#![deny(rust_2018_idioms, unsafe_code, rustdoc::broken_intra_doc_links)]
#![warn(missing_debug_implementations, clippy::clone_on_ref_ptr)]

pub mod admin;
pub mod detach;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod plugins;
pub mod proxy;
pub mod pubsub;
pub mod reload;
pub mod router;
pub mod server;
pub mod tls;
pub mod tunnel;
pub mod upstream;

pub use error::StartupError;
