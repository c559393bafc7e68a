//! `[[routes]]`: what a route matches and the plugins it turns on.

use super::{Cors, JwtAuth, KafkaProxy, KeyAuth, LimitReq, Upstream};
use std::sync::Arc;

/// One `[[routes]]`.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique id, in logs and metrics.
    pub id: String,
    /// Position in the file (ties in matching go to the earlier route).
    pub index: usize,
    /// Paths it matches.
    pub paths: Vec<PathPattern>,
    /// Hosts it matches; empty = any.
    pub hosts: Vec<HostPattern>,
    /// Methods it matches (upper case); empty = any.
    pub methods: Vec<String>,
    /// Higher wins among equally specific matches.
    pub priority: i32,
    /// Where matching requests go.
    pub upstream: Arc<Upstream>,
    /// Plugin settings, checked.
    pub plugins: Plugins,
}

/// A route path: exact, or a prefix written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// Matches this path only.
    Exact(String),
    /// Matches every path that starts with this text (`/api/*` is the prefix `/api/`).
    Prefix(String),
}

/// A route host: exact, or `*.example.com` for any subdomain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches this host (lower case).
    Exact(String),
    /// Matches hosts ending in this suffix, e.g. `.example.com`.
    Wildcard(String),
}

/// The plugins a route turns on, with their settings.
#[derive(Debug, Clone, Default)]
pub struct Plugins {
    /// `kafka-proxy`.
    pub kafka_proxy: Option<KafkaProxy>,
    /// `key-auth`.
    pub key_auth: Option<KeyAuth>,
    /// `jwt-auth`.
    pub jwt_auth: Option<JwtAuth>,
    /// `limit-req`.
    pub limit_req: Option<LimitReq>,
    /// `cors`.
    pub cors: Option<Cors>,
}
