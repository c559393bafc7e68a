//! `[server]` (listeners, process settings, `[server.limits]`) and `[admin]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[server]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// Plain HTTP (and `ws://`) listeners.
    pub listen: Vec<SocketAddr>,
    /// HTTPS (and `wss://`) listeners.
    pub tls_listen: Vec<TlsListener>,
    /// Worker threads.
    pub threads: usize,
    /// How long in-flight work may finish after SIGTERM.
    pub grace_period: Duration,
    /// How long the final shutdown of services may take after the grace period.
    pub graceful_shutdown_timeout: Duration,
    /// Log line format, access log included.
    pub log_format: LogFormat,
    /// Pingora's per-connection read buffer on plain listeners (0 = none; saves memory per
    /// idle WebSocket).
    pub l4_read_buffer_bytes: usize,
    /// The Unix socket over which a new process takes the listening sockets over from this
    /// one (`streamgate --upgrade`, then SIGQUIT to the old process). `None`: `upgrade.sock` in
    /// the process's private runtime directory, chosen at start (see the README).
    pub upgrade_sock: Option<PathBuf>,
    /// Reload when the configuration file changes (checked every second), not only on SIGHUP.
    pub reload_on_change: bool,
    /// Drop `;` path parameters (`/admin;x/y` → `/admin/y`) before matching routes, as Java
    /// servlet containers do (APISIX's `normalize_uri_like_servlet`).
    pub normalize_uri_like_servlet: bool,
    /// Peers whose `X-Forwarded-For` is kept (and appended to); from anyone else it is replaced
    /// by the peer's address, so a client cannot choose the address a node sees.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Bounds on what clients may hold at once.
    pub limits: Limits,
}

/// `[server.limits]`: what one client, one consumer or everyone together may hold at once, so
/// that no one caller can exhaust the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Requests in progress plus open WebSocket sessions, all clients together.
    pub max_connections: usize,
    /// The same, per client IP address.
    pub max_connections_per_ip: usize,
    /// Open pub/sub sessions per consumer (callers an auth plugin recognised).
    pub max_sessions_per_consumer: usize,
    /// Request line plus headers.
    pub max_request_header_bytes: usize,
    /// Request body (HTTP routes).
    pub max_request_body_bytes: u64,
    /// How long a WebSocket relayed to an HTTP node may stay open, traffic or not (`None`: no
    /// cap), so that no connection outlives its credentials for ever.
    pub max_tunnel: Option<std::time::Duration>,
    /// Failed authentications (401) one client address may cause per minute, in bursts of as
    /// many; past it, requests to routes that authenticate get 429 before any check runs.
    pub max_auth_failures_per_minute: u32,
    /// Bytes of pub/sub answers ready but not yet written, all sessions together: past it a
    /// finished command is answered LIMIT_EXCEEDED instead of holding its records.
    pub max_queued_answer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_connections_per_ip: 1_000,
            max_sessions_per_consumer: 1_000,
            max_request_header_bytes: 32 * 1024,
            max_request_body_bytes: 100 << 20,
            max_tunnel: Some(std::time::Duration::from_secs(24 * 3600)),
            max_auth_failures_per_minute: 100,
            max_queued_answer_bytes: 1 << 30,
        }
    }
}

/// One `[[server.tls_listen]]`.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Address to bind.
    pub address: SocketAddr,
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Offer HTTP/2 through ALPN.
    pub http2: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Address of the admin listener: loopback unless `allow_remote` (it has no
    /// authentication, and `/metrics` names every route and consumer).
    pub listen: SocketAddr,
}
