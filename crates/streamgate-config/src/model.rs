//! The checked configuration model the gateway runs on.
//!
//! Built from [`crate::toml`]'s file shape by [`build`]: every default is filled in, every value is
//! range-checked, cross references (route to upstream) are resolved, and every problem found is
//! collected, so one run of `streamgate -t` lists them all. Nothing here touches the network.

use crate::error::{line_col, Problem};
use crate::toml as t;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
}

/// One `[[consumers]]`: an identity that auth plugins recognise.
#[derive(Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Unique name, in logs.
    pub username: String,
    /// Narrows the `kafka-proxy` allow-list of every route this consumer calls; `None` = no
    /// narrowing.
    pub topics: Option<Vec<TopicPattern>>,
    /// The consumer's `key-auth` key (never printed).
    pub key: Option<String>,
    /// The consumer's `jwt-auth` credential.
    pub jwt: Option<JwtCredential>,
}

/// How a consumer's tokens are signed.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtCredential {
    /// Matched against the token's `key` claim (or `iss` when there is no `key`).
    pub key: String,
    /// `HS256`, `HS512`, `RS256` or `ES256`.
    pub algorithm: String,
    /// The HMAC secret (HS*) or the PEM public key (RS256/ES256); never printed.
    pub verify_with: Vec<u8>,
}

impl fmt::Debug for JwtCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtCredential")
            .field("key", &self.key)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("username", &self.username)
            .field("topics", &self.topics)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("jwt", &self.jwt)
            .finish()
    }
}

impl Consumer {
    /// Whether this consumer may read `topic` (before the route's own allow-list).
    pub fn allows(&self, topic: &str) -> bool {
        self.topics
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(topic)))
    }
}

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
    /// one (`streamgate --upgrade`, then SIGQUIT to the old process).
    pub upgrade_sock: PathBuf,
    /// Reload when the configuration file changes (checked every second), not only on SIGHUP.
    pub reload_on_change: bool,
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_connections_per_ip: 1_000,
            max_sessions_per_consumer: 1_000,
            max_request_header_bytes: 32 * 1024,
            max_request_body_bytes: 100 << 20,
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
    /// Address of the admin listener.
    pub listen: SocketAddr,
}

/// What kind of peers an upstream's nodes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP over TLS.
    Https,
    /// Kafka brokers: routes to it serve pub/sub over WebSocket instead of proxying.
    Kafka,
}

/// One `[[upstreams]]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Unique id that routes refer to.
    pub id: String,
    /// Peer kind.
    pub scheme: Scheme,
    /// Nodes in file order; weight 0 means "configured but never picked".
    pub nodes: Vec<Node>,
    /// Node selection.
    pub balance: Balance,
    /// Per-attempt timeouts.
    pub timeouts: Timeouts,
    /// How many other nodes to try when connecting to one fails.
    pub retries: usize,
    /// The `Host` header sent upstream.
    pub host_policy: HostPolicy,
    /// TLS to the nodes (HTTPS and Kafka).
    pub tls: Option<UpstreamTls>,
    /// Active health checking (HTTP and HTTPS).
    pub health_check: Option<HealthCheck>,
}

/// A `host:port` node with its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Host name or IP literal (without IPv6 brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Relative share of requests.
    pub weight: u32,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Node selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin.
    RoundRobin,
    /// Consistent hashing on a request key, so the same key keeps its node.
    Chash(HashOn),
}

/// The request key for consistent hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The client's IP address.
    RemoteAddr,
    /// The request path and query.
    Uri,
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

/// Per-attempt timeouts to upstream nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connection set-up.
    pub connect: Duration,
    /// Between two writes to the node.
    pub send: Duration,
    /// Between two reads from the node.
    pub read: Duration,
}

/// The `Host` header sent to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// The client's Host header, unchanged.
    Pass,
    /// The node's `host:port`.
    Node,
    /// A fixed value.
    Rewrite(String),
}

/// `[upstreams.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// Verify the node's certificate chain and name.
    pub verify: bool,
    /// PEM roots to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Server name to send and verify (default: the node's host).
    pub sni: Option<String>,
    /// Client certificate and key (PEM), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// `[upstreams.health_check]`: an HTTP GET to each node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path requested; any 2xx or 3xx is healthy.
    pub path: String,
    /// Time between checks of a node.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive successes that bring a node back.
    pub healthy_threshold: usize,
    /// Consecutive failures that take a node out.
    pub unhealthy_threshold: usize,
}

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

/// `[routes.plugins.cors]`: Cross-Origin Resource Sharing for browsers calling an HTTP route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins (`scheme://host[:port]`, lower case); `None` = any (`*`).
    pub allow_origins: Option<Vec<String>>,
    /// Methods a preflight may ask for (upper case).
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (lower case); `None` = whatever it asks.
    pub allow_headers: Option<Vec<String>>,
    /// Response headers the page may read.
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age_seconds: u32,
    /// Whether the page may send cookies and read the answer with them.
    pub allow_credentials: bool,
}

/// `[routes.plugins.limit-req]`: a token bucket per key; requests beyond it are refused with
/// `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitReq {
    /// Sustained requests per second.
    pub rate: f64,
    /// Requests allowed at once (the bucket's size, at least 1).
    pub burst: f64,
    /// Whose requests share a bucket.
    pub key: LimitKey,
    /// The status of a refused request (429 unless set).
    pub rejected_code: u16,
}

/// What a `limit-req` bucket is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's IP address.
    RemoteAddr,
    /// The consumer an auth plugin recognised (the IP address for anonymous callers).
    Consumer,
    /// One bucket for the whole route.
    Route,
}

/// `[routes.plugins.jwt-auth]`: where callers put their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuth {
    /// Request header (`Authorization: Bearer <token>` or the bare token).
    pub header: String,
    /// Query parameter (for browsers' WebSocket handshakes).
    pub query: String,
    /// Cookie name.
    pub cookie: String,
}

/// `[routes.plugins.key-auth]`: where callers put a consumer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAuth {
    /// Request header holding the key (lower case).
    pub header: String,
    /// Query parameter holding the key (browsers cannot set WebSocket headers).
    pub query: String,
    /// Remove the key from the request before it goes upstream.
    pub hide_credentials: bool,
}

/// `[routes.plugins.kafka-proxy]`: per-route Kafka settings of a pub/sub route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaProxy {
    /// SASL credentials for the brokers.
    pub sasl: Option<Sasl>,
    /// Allow-list; `None` = every topic.
    pub topics: Option<Vec<TopicPattern>>,
    /// Largest WebSocket message in either direction.
    pub max_frame_bytes: usize,
    /// Most record bytes one fetch asks the broker for.
    pub fetch_max_bytes: usize,
    /// Longest a fetch at the end of the log waits for records.
    pub fetch_max_wait: Duration,
    /// Longest a Kafka operation (connect, request, retries) may take.
    pub socket_timeout: Duration,
    /// Kafka commands that may run at once on one connection.
    pub max_in_flight: usize,
    /// Browser origins allowed to open the WebSocket (`scheme://host[:port]`, lower case);
    /// `None` = any. Handshakes without an `Origin` header (non-browser clients) are not affected.
    pub allowed_origins: Option<Vec<String>>,
    /// Frames a session may send per second (burst: as many at once); 0 = no limit.
    pub max_commands_per_second: u32,
    /// A session that sends nothing (not even a pong to the gateway's ping) this long is closed.
    pub idle_timeout: Duration,
    /// Sessions are closed (1001, reconnect) after this long; `None` = never.
    pub max_session: Option<Duration>,
    /// A client that does not take an answer within this long is disconnected (slow reader).
    pub send_timeout: Duration,
}

impl Default for KafkaProxy {
    fn default() -> Self {
        Self {
            sasl: None,
            topics: None,
            max_frame_bytes: 1 << 20,
            fetch_max_bytes: 1 << 20,
            fetch_max_wait: Duration::from_millis(500),
            socket_timeout: Duration::from_secs(5),
            max_in_flight: 16,
            allowed_origins: None,
            max_commands_per_second: 1_000,
            idle_timeout: Duration::from_secs(60),
            max_session: Some(Duration::from_secs(24 * 3600)),
            send_timeout: Duration::from_secs(30),
        }
    }
}

impl KafkaProxy {
    /// Whether the allow-list lets clients read `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        match &self.topics {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(topic)),
        }
    }
}

/// An allow-list entry: an exact topic name or a `prefix*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// This topic only.
    Exact(String),
    /// Topics starting with this text.
    Prefix(String),
}

impl TopicPattern {
    /// Whether `topic` is covered.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Exact(t) => t == topic,
            TopicPattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

/// SASL mechanism and credentials.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sasl {
    /// Mechanism.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (never printed).
    pub password: String,
}

impl fmt::Debug for Sasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// SASL mechanisms the gateway speaks to brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    /// PLAIN (use with TLS).
    Plain,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
}

/// Collects problems while the model is built.
pub(crate) struct Checker<'a> {
    text: &'a str,
    pub problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            problems: Vec::new(),
        }
    }

    fn at(
        &mut self,
        span: Option<&std::ops::Range<usize>>,
        key: String,
        message: String,
        fix: &str,
    ) {
        let location = span.map(|s| line_col(self.text, s.start));
        self.problems.push(Problem {
            key,
            location,
            message,
            fix: fix.to_string(),
        });
    }
}

/// Builds the checked model, or returns every problem found.
pub(crate) fn build(file: t::File, text: &str) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::new(text);
    let server = build_server(&mut c, file.server);
    let admin = file.admin.and_then(|a| {
        let listen = parse_addr(&mut c, None, "admin.listen", &a.listen.0)?;
        Some(Admin { listen })
    });

    let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    let mut upstream_list = Vec::new();
    for (i, spanned) in file.upstreams.into_iter().enumerate() {
        let span = spanned.span();
        let key = format!("upstreams[{i}]");
        let Some(upstream) = build_upstream(&mut c, &span, &key, spanned.into_inner()) else {
            continue;
        };
        if upstreams.contains_key(&upstream.id) {
            c.at(
                Some(&span),
                format!("{key}.id"),
                format!("duplicate upstream id {:?}", upstream.id),
                "give every [[upstreams]] entry its own id",
            );
            continue;
        }
        let upstream = Arc::new(upstream);
        upstreams.insert(upstream.id.clone(), Arc::clone(&upstream));
        upstream_list.push(upstream);
    }

    let consumers = build_consumers(&mut c, file.consumers);

    let mut routes = Vec::new();
    let mut route_ids = HashSet::new();
    for (i, spanned) in file.routes.into_iter().enumerate() {
        let span = spanned.span();
        let key = format!("routes[{i}]");
        let r = spanned.into_inner();
        if !route_ids.insert(r.id.0.clone()) {
            c.at(
                Some(&span),
                format!("{key}.id"),
                format!("duplicate route id {:?}", r.id.0),
                "give every [[routes]] entry its own id",
            );
        }
        if let Some(route) = build_route(&mut c, &span, &key, i, r, &upstreams) {
            if route.plugins.jwt_auth.is_some() && !consumers.iter().any(|c| c.jwt.is_some()) {
                c.at(
                    Some(&span),
                    format!("{key}.plugins.jwt-auth"),
                    "jwt-auth is on but no consumer has a jwt-auth credential, so every request would be refused".into(),
                    "add [consumers.plugins.jwt-auth] to a [[consumers]] entry",
                );
            }
            if route.plugins.key_auth.is_some() && !consumers.iter().any(|c| c.key.is_some()) {
                c.at(
                    Some(&span),
                    format!("{key}.plugins.key-auth"),
                    "key-auth is on but no consumer has a key, so every request would be refused"
                        .into(),
                    "add a [[consumers]] entry with [consumers.plugins.key-auth] key = \"...\"",
                );
            }
            routes.push(Arc::new(route));
        }
    }

    if c.problems.is_empty() {
        Ok(Config {
            server,
            admin,
            upstreams: upstream_list,
            routes,
            consumers,
        })
    } else {
        Err(c.problems)
    }
}

fn parse_addr(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    value: &str,
) -> Option<SocketAddr> {
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            c.at(
                span,
                key.to_string(),
                format!("{value:?} is not an IP:port address"),
                "write an IP literal and a port, e.g. \"127.0.0.1:9080\" or \"[::1]:9080\" (host names are not resolved for listeners)",
            );
            None
        }
    }
}

fn in_range(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    value: i64,
    min: i64,
    max: i64,
) -> Option<i64> {
    if (min..=max).contains(&value) {
        Some(value)
    } else {
        c.at(
            span,
            key.to_string(),
            format!("{value} is out of range"),
            &format!("use a whole number from {min} to {max}"),
        );
        None
    }
}

fn seconds(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    value: f64,
    max: f64,
) -> Option<Duration> {
    if value.is_finite() && value > 0.0 && value <= max {
        Some(Duration::from_secs_f64(value))
    } else {
        c.at(
            span,
            key.to_string(),
            format!("{value} is not a usable number of seconds"),
            &format!("use a positive number of seconds up to {max}, e.g. 0.5 or 30"),
        );
        None
    }
}

fn build_server(c: &mut Checker<'_>, s: t::ServerToml) -> Server {
    let listen = match s.listen {
        None => vec![SocketAddr::from(([127, 0, 0, 1], 9080))],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, a)| parse_addr(c, None, &format!("server.listen[{i}]"), &a.0))
            .collect(),
    };
    let tls_listen = s
        .tls_listen
        .into_iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let key = format!("server.tls_listen[{i}]");
            let address = parse_addr(c, None, &format!("{key}.address"), &l.address.0)?;
            let cert_file = readable_file(c, None, &format!("{key}.cert_file"), &l.cert_file.0);
            let key_file = readable_file(c, None, &format!("{key}.key_file"), &l.key_file.0);
            Some(TlsListener {
                address,
                cert_file: cert_file?,
                key_file: key_file?,
                http2: l.http2.unwrap_or(true),
            })
        })
        .collect::<Vec<_>>();
    if listen.is_empty() && tls_listen.is_empty() && c.problems.is_empty() {
        c.at(
            None,
            "server.listen".into(),
            "no listener is configured".into(),
            "add an address to server.listen or a [[server.tls_listen]] entry",
        );
    }
    let threads = s
        .threads
        .and_then(|v| in_range(c, None, "server.threads", v, 1, 256))
        .unwrap_or(2) as usize;
    let grace = s
        .grace_period_seconds
        .and_then(|v| in_range(c, None, "server.grace_period_seconds", v, 0, 3600))
        .unwrap_or(10) as u64;
    let final_timeout = s
        .graceful_shutdown_timeout_seconds
        .and_then(|v| {
            in_range(
                c,
                None,
                "server.graceful_shutdown_timeout_seconds",
                v,
                0,
                3600,
            )
        })
        .unwrap_or(5) as u64;
    let log_format = match s.log_format.as_ref().map(|t| t.0.as_str()) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.at(
                None,
                "server.log_format".into(),
                format!("unknown log format {other:?}"),
                "use \"text\" or \"json\"",
            );
            LogFormat::Text
        }
    };
    let l4 = s
        .l4_read_buffer_bytes
        .and_then(|v| in_range(c, None, "server.l4_read_buffer_bytes", v, 0, 1 << 20))
        .unwrap_or(0) as usize;
    let limits = build_limits(c, s.limits.unwrap_or_default());
    let upgrade_sock = PathBuf::from(
        s.upgrade_sock
            .map(|t| t.0)
            .unwrap_or_else(|| "/tmp/streamgate_upgrade.sock".into()),
    );
    Server {
        listen,
        tls_listen,
        threads,
        grace_period: Duration::from_secs(grace),
        graceful_shutdown_timeout: Duration::from_secs(final_timeout),
        log_format,
        l4_read_buffer_bytes: l4,
        upgrade_sock,
        reload_on_change: s.reload_on_change.unwrap_or(false),
        limits,
    }
}

/// Browser origins, checked and normalised to lower case without a trailing `/`.
fn origins(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    list: Vec<t::Text>,
) -> Vec<String> {
    list.into_iter()
        .enumerate()
        .filter_map(|(i, o)| {
            let o = o.0.trim_end_matches('/').to_ascii_lowercase();
            let scheme_ok = o.starts_with("https://") || o.starts_with("http://");
            let rest = o.split_once("://").map_or("", |(_, r)| r);
            if !scheme_ok || rest.is_empty() || rest.contains(['/', '*', ' ']) {
                c.at(
                    span,
                    format!("{key}[{i}]"),
                    format!("{o:?} is not an origin"),
                    "write scheme://host[:port], e.g. \"https://app.example.com\" (no path, no wildcard)",
                );
                return None;
            }
            Some(o)
        })
        .collect()
}

fn build_cors(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    t: t::CorsToml,
) -> Cors {
    let any =
        |list: &Option<Vec<t::Text>>| list.as_ref().is_some_and(|l| l.len() == 1 && l[0].0 == "*");
    let allow_origins = if t.allow_origins.is_none() || any(&t.allow_origins) {
        None
    } else {
        Some(origins(
            c,
            span,
            &format!("{key}.allow_origins"),
            t.allow_origins.unwrap_or_default(),
        ))
    };
    let token = |c: &mut Checker<'_>, field: &str, i: usize, v: &str| {
        let ok = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
        if !ok {
            c.at(
                span,
                format!("{key}.{field}[{i}]"),
                format!("{v:?} is not a header or method name"),
                "use letters, digits and `-`",
            );
        }
        v.to_string()
    };
    let allow_methods = match t.allow_methods {
        None => ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
            .map(String::from)
            .to_vec(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, m)| token(c, "allow_methods", i, &m.0.to_ascii_uppercase()))
            .collect(),
    };
    let allow_headers = if t.allow_headers.is_none() || any(&t.allow_headers) {
        None
    } else {
        Some(
            t.allow_headers
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, h)| token(c, "allow_headers", i, &h.0.to_ascii_lowercase()))
                .collect(),
        )
    };
    let expose_headers = t
        .expose_headers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, h)| token(c, "expose_headers", i, &h.0))
        .collect();
    let max_age = t
        .max_age_seconds
        .and_then(|v| in_range(c, span, &format!("{key}.max_age_seconds"), v, 0, 86_400))
        .unwrap_or(5) as u32;
    let allow_credentials = t.allow_credentials.unwrap_or(false);
    if allow_credentials && allow_origins.is_none() {
        c.at(
            span,
            format!("{key}.allow_credentials"),
            "credentials cannot be allowed for every origin (browsers refuse `*` with credentials)"
                .into(),
            "list the origins in allow_origins, or set allow_credentials = false",
        );
    }
    Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age_seconds: max_age,
        allow_credentials,
    }
}

fn build_limits(c: &mut Checker<'_>, l: t::LimitsToml) -> Limits {
    let d = Limits::default();
    let mut num = |name: &str, value: Option<i64>, min: i64, max: i64, default: i64| {
        value
            .and_then(|v| in_range(c, None, &format!("server.limits.{name}"), v, min, max))
            .unwrap_or(default)
    };
    Limits {
        max_connections: num(
            "max_connections",
            l.max_connections,
            1,
            10_000_000,
            d.max_connections as i64,
        ) as usize,
        max_connections_per_ip: num(
            "max_connections_per_ip",
            l.max_connections_per_ip,
            1,
            10_000_000,
            d.max_connections_per_ip as i64,
        ) as usize,
        max_sessions_per_consumer: num(
            "max_sessions_per_consumer",
            l.max_sessions_per_consumer,
            1,
            10_000_000,
            d.max_sessions_per_consumer as i64,
        ) as usize,
        max_request_header_bytes: num(
            "max_request_header_bytes",
            l.max_request_header_bytes,
            1024,
            1 << 20,
            d.max_request_header_bytes as i64,
        ) as usize,
        max_request_body_bytes: num(
            "max_request_body_bytes",
            l.max_request_body_bytes,
            0,
            i64::MAX,
            d.max_request_body_bytes as i64,
        ) as u64,
    }
}

fn readable_file(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    path: &str,
) -> Option<PathBuf> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Some(PathBuf::from(path)),
        Ok(_) => {
            c.at(
                span,
                key.into(),
                format!("{path:?} is not a file"),
                "name a PEM file",
            );
            None
        }
        Err(e) => {
            c.at(
                span,
                key.into(),
                format!("cannot read {path:?}: {e}"),
                "check the path; relative paths are resolved from the gateway's working directory",
            );
            None
        }
    }
}

/// Splits `host:port` (IPv6 in brackets).
pub(crate) fn parse_node(text: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in an IPv6 node".to_string())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "missing `:port` after the IPv6 address".to_string())?;
        (host, port)
    } else {
        text.rsplit_once(':')
            .ok_or_else(|| "missing `:port`".to_string())?
    };
    if host.is_empty()
        || host.contains(char::is_whitespace)
        || (host.contains(':') && !text.starts_with('['))
    {
        return Err("the host part is empty or malformed".into());
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port from 1 to 65535"))?;
    Ok((host.to_string(), port))
}

fn build_upstream(
    c: &mut Checker<'_>,
    span: &std::ops::Range<usize>,
    key: &str,
    u: t::UpstreamToml,
) -> Option<Upstream> {
    let before = c.problems.len();
    let span = Some(span);
    let id = u.id.0;
    if id.is_empty() {
        c.at(
            span,
            format!("{key}.id"),
            "empty id".into(),
            "give the upstream a name",
        );
    }
    let scheme = match u.scheme.as_ref().map(|s| s.0.as_str()) {
        None | Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some("kafka") => Scheme::Kafka,
        Some(other) => {
            c.at(
                span,
                format!("{key}.scheme"),
                format!("unknown scheme {other:?}"),
                "use \"http\", \"https\" or \"kafka\"",
            );
            Scheme::Http
        }
    };
    let mut nodes = Vec::new();
    for (text, weight) in &u.nodes {
        let node_key = format!("{key}.nodes.{text:?}");
        match parse_node(text) {
            Ok((host, port)) => {
                if let Some(w) = in_range(c, span, &node_key, *weight, 0, 10_000) {
                    nodes.push(Node {
                        host,
                        port,
                        weight: w as u32,
                    });
                }
            }
            Err(why) => c.at(
                span,
                node_key,
                format!("{text:?} is not host:port ({why})"),
                "write nodes as \"host:port\" = weight, e.g. { \"127.0.0.1:8080\" = 1 }",
            ),
        }
    }
    if u.nodes.is_empty() {
        c.at(
            span,
            format!("{key}.nodes"),
            "no nodes".into(),
            "list at least one node: nodes = { \"127.0.0.1:8080\" = 1 }",
        );
    } else if !nodes.is_empty() && nodes.iter().all(|n| n.weight == 0) {
        c.at(
            span,
            format!("{key}.nodes"),
            "every node has weight 0, so no request could be sent anywhere".into(),
            "give at least one node a weight of 1 or more",
        );
    }
    let balance = match u.balance.as_ref().map(|s| s.0.as_str()) {
        None | Some("roundrobin") => {
            if u.hash_on.is_some() || u.key.is_some() {
                c.at(
                    span,
                    format!("{key}.hash_on"),
                    "hash_on and key only apply to type = \"chash\"".into(),
                    "set type = \"chash\" or remove hash_on/key",
                );
            }
            Balance::RoundRobin
        }
        Some("chash") => {
            let name = u.key.as_ref().map(|k| k.0.clone());
            let hash_on = match (u.hash_on.as_ref().map(|s| s.0.as_str()), name) {
                (None | Some("remote_addr"), None) => HashOn::RemoteAddr,
                (Some("uri"), None) => HashOn::Uri,
                (Some("header"), Some(n)) if !n.is_empty() => {
                    HashOn::Header(n.to_ascii_lowercase())
                }
                (Some("cookie"), Some(n)) if !n.is_empty() => HashOn::Cookie(n),
                (Some(kind @ ("header" | "cookie")), _) => {
                    c.at(
                        span,
                        format!("{key}.key"),
                        format!("hash_on = {kind:?} needs the {kind} name in `key`"),
                        "add key = \"NAME\"",
                    );
                    HashOn::RemoteAddr
                }
                (Some(other), _) => {
                    c.at(
                        span,
                        format!("{key}.hash_on"),
                        format!("cannot hash on {other:?} (or `key` given where none is used)"),
                        "use \"remote_addr\", \"uri\", \"header\" (with key) or \"cookie\" (with key)",
                    );
                    HashOn::RemoteAddr
                }
                (None, Some(_)) => {
                    c.at(
                        span,
                        format!("{key}.key"),
                        "`key` without hash_on".into(),
                        "set hash_on = \"header\" or \"cookie\"",
                    );
                    HashOn::RemoteAddr
                }
            };
            Balance::Chash(hash_on)
        }
        Some(other) => {
            c.at(
                span,
                format!("{key}.type"),
                format!("unknown balancing type {other:?}"),
                "use \"roundrobin\" or \"chash\"",
            );
            Balance::RoundRobin
        }
    };
    let mut timeouts = Timeouts {
        connect: Duration::from_secs(6),
        send: Duration::from_secs(60),
        read: Duration::from_secs(60),
    };
    if let Some(t) = &u.timeout {
        for (name, value, slot) in [
            ("connect", t.connect, &mut timeouts.connect),
            ("send", t.send, &mut timeouts.send),
            ("read", t.read, &mut timeouts.read),
        ] {
            if let Some(v) = value {
                if let Some(d) = seconds(c, span, &format!("{key}.timeout.{name}"), v, 3600.0) {
                    *slot = d;
                }
            }
        }
    }
    let retries = u
        .retries
        .and_then(|r| in_range(c, span, &format!("{key}.retries"), r, 0, 100))
        .map(|r| r as usize)
        .unwrap_or(1);
    let host_policy = match (
        u.pass_host.as_ref().map(|s| s.0.as_str()),
        u.upstream_host.as_ref().map(|s| s.0.clone()),
    ) {
        (None | Some("pass"), None) => HostPolicy::Pass,
        (Some("node"), None) => HostPolicy::Node,
        (Some("rewrite"), Some(h)) if !h.is_empty() => HostPolicy::Rewrite(h),
        (Some("rewrite"), _) => {
            c.at(
                span,
                format!("{key}.upstream_host"),
                "pass_host = \"rewrite\" needs upstream_host".into(),
                "add upstream_host = \"the.host.to.send\"",
            );
            HostPolicy::Pass
        }
        (_, Some(_)) => {
            c.at(
                span,
                format!("{key}.upstream_host"),
                "upstream_host only applies with pass_host = \"rewrite\"".into(),
                "set pass_host = \"rewrite\" or remove upstream_host",
            );
            HostPolicy::Pass
        }
        (Some(other), None) => {
            c.at(
                span,
                format!("{key}.pass_host"),
                format!("unknown pass_host {other:?}"),
                "use \"pass\", \"node\" or \"rewrite\"",
            );
            HostPolicy::Pass
        }
    };
    let tls = u.tls.map(|tls| {
        if scheme == Scheme::Http {
            c.at(
                span,
                format!("{key}.tls"),
                "[upstreams.tls] on an http upstream".into(),
                "set scheme = \"https\" (or \"kafka\"), or remove the tls table",
            );
        }
        let ca_file = tls
            .ca_file
            .and_then(|f| readable_file(c, span, &format!("{key}.tls.ca_file"), &f.0));
        let client_cert = match (tls.client_cert_file, tls.client_key_file) {
            (None, None) => None,
            (Some(cert), Some(k)) => {
                let cert = readable_file(c, span, &format!("{key}.tls.client_cert_file"), &cert.0);
                let k = readable_file(c, span, &format!("{key}.tls.client_key_file"), &k.0);
                cert.zip(k)
            }
            _ => {
                c.at(
                    span,
                    format!("{key}.tls"),
                    "client_cert_file and client_key_file go together".into(),
                    "set both, or neither",
                );
                None
            }
        };
        UpstreamTls {
            verify: tls.verify.unwrap_or(true),
            ca_file,
            sni: tls.sni.map(|s| s.0).filter(|s| !s.is_empty()),
            client_cert,
        }
    });
    let tls = match (scheme, tls) {
        (Scheme::Https, None) => Some(UpstreamTls {
            verify: true,
            ca_file: None,
            sni: None,
            client_cert: None,
        }),
        (_, tls) => tls,
    };
    let health_check = u.health_check.map(|h| {
        if scheme == Scheme::Kafka {
            c.at(
                span,
                format!("{key}.health_check"),
                "health checks are HTTP requests; a kafka upstream has none".into(),
                "remove [upstreams.health_check] from this upstream",
            );
        }
        let path = h.path.map(|p| p.0).unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            c.at(
                span,
                format!("{key}.health_check.path"),
                format!("{path:?} does not start with /"),
                "write an absolute path such as \"/healthz\"",
            );
        }
        let hk = format!("{key}.health_check");
        HealthCheck {
            path,
            interval: h
                .interval_seconds
                .and_then(|v| seconds(c, span, &format!("{hk}.interval_seconds"), v, 3600.0))
                .unwrap_or(Duration::from_secs(5)),
            timeout: h
                .timeout_seconds
                .and_then(|v| seconds(c, span, &format!("{hk}.timeout_seconds"), v, 600.0))
                .unwrap_or(Duration::from_secs(1)),
            healthy_threshold: h
                .healthy_threshold
                .and_then(|v| in_range(c, span, &format!("{hk}.healthy_threshold"), v, 1, 100))
                .unwrap_or(2) as usize,
            unhealthy_threshold: h
                .unhealthy_threshold
                .and_then(|v| in_range(c, span, &format!("{hk}.unhealthy_threshold"), v, 1, 100))
                .unwrap_or(2) as usize,
        }
    });
    if c.problems.len() > before {
        return None;
    }
    Some(Upstream {
        id,
        scheme,
        nodes,
        balance,
        timeouts,
        retries,
        host_policy,
        tls,
        health_check,
    })
}

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

fn build_route(
    c: &mut Checker<'_>,
    span: &std::ops::Range<usize>,
    key: &str,
    index: usize,
    r: t::RouteToml,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
) -> Option<Route> {
    let before = c.problems.len();
    let span = Some(span);
    if r.id.0.is_empty() {
        c.at(
            span,
            format!("{key}.id"),
            "empty id".into(),
            "give the route a name",
        );
    }
    let raw_paths: Vec<(String, String)> = match (r.uri, r.uris) {
        (Some(u), None) => vec![(format!("{key}.uri"), u.0)],
        (None, Some(list)) if !list.is_empty() => list
            .into_iter()
            .enumerate()
            .map(|(i, u)| (format!("{key}.uris[{i}]"), u.0))
            .collect(),
        (Some(_), Some(_)) => {
            c.at(
                span,
                format!("{key}.uris"),
                "both uri and uris are set".into(),
                "keep one of them",
            );
            vec![]
        }
        _ => {
            c.at(
                span,
                format!("{key}.uri"),
                "the route matches no path".into(),
                "add uri = \"/path\" (exact) or \"/path/*\" (prefix), or uris = [...]",
            );
            vec![]
        }
    };
    let mut paths = Vec::new();
    for (k, p) in raw_paths {
        let star = p.find('*');
        if !p.starts_with('/') || star.is_some_and(|s| s != p.len() - 1) {
            c.at(
                span,
                k,
                format!("{p:?} is not a route path"),
                "start with / and use * only at the end: \"/a/b\" (exact) or \"/a/*\" (prefix)",
            );
        } else if let Some(prefix) = p.strip_suffix('*') {
            paths.push(PathPattern::Prefix(prefix.to_string()));
        } else {
            paths.push(PathPattern::Exact(p));
        }
    }
    let hosts = r
        .hosts
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let h = h.0.to_ascii_lowercase();
            let ok = !h.is_empty()
                && !h.contains(['/', ':', ' '])
                && !h.chars().skip(1).any(|ch| ch == '*');
            if !ok || (h.starts_with('*') && !h.starts_with("*.")) {
                c.at(
                    span,
                    format!("{key}.hosts[{i}]"),
                    format!("{h:?} is not a host name"),
                    "write \"api.example.com\", or \"*.example.com\" for every subdomain (no port)",
                );
                return None;
            }
            Some(match h.strip_prefix('*') {
                Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
                None => HostPattern::Exact(h),
            })
        })
        .collect();
    let methods = r
        .methods
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let upper = m.0.to_ascii_uppercase();
            if METHODS.contains(&upper.as_str()) {
                Some(upper)
            } else {
                c.at(
                    span,
                    format!("{key}.methods[{i}]"),
                    format!("unknown method {:?}", m.0),
                    &format!("use one of {}", METHODS.join(", ")),
                );
                None
            }
        })
        .collect();
    let priority = r
        .priority
        .and_then(|p| {
            in_range(
                c,
                span,
                &format!("{key}.priority"),
                p,
                i32::MIN as i64,
                i32::MAX as i64,
            )
        })
        .unwrap_or(0) as i32;
    let upstream = upstreams.get(&r.upstream_id.0).cloned();
    if upstream.is_none() {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        c.at(
            span,
            format!("{key}.upstream_id"),
            format!("no upstream has id {:?}", r.upstream_id.0),
            &if known.is_empty() {
                "define it in an [[upstreams]] entry".to_string()
            } else {
                format!("use one of: {}", known.join(", "))
            },
        );
    }
    let key_auth = r.plugins.key_auth.map(|k| {
        let name = |value: Option<t::Text>, default: &str, field: &str, c: &mut Checker<'_>| {
            let v = value.map(|t| t.0).unwrap_or_else(|| default.to_string());
            if v.is_empty()
                || !v
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                c.at(
                    span,
                    format!("{key}.plugins.key-auth.{field}"),
                    format!("{v:?} is not a usable {field} name"),
                    "use letters, digits, `-` and `_`",
                );
            }
            v
        };
        KeyAuth {
            header: name(k.header, "apikey", "header", c).to_ascii_lowercase(),
            query: name(k.query, "apikey", "query", c),
            hide_credentials: k.hide_credentials.unwrap_or(false),
        }
    });
    let jwt_auth = r.plugins.jwt_auth.map(|j| JwtAuth {
        header: j
            .header
            .map(|t| t.0)
            .unwrap_or_else(|| "authorization".into())
            .to_ascii_lowercase(),
        query: j.query.map(|t| t.0).unwrap_or_else(|| "jwt".into()),
        cookie: j.cookie.map(|t| t.0).unwrap_or_else(|| "jwt".into()),
    });
    let limit_req = r.plugins.limit_req.and_then(|l| {
        let at = format!("{key}.plugins.limit-req");
        let rate_ok = l.rate.is_finite() && l.rate > 0.0 && l.rate <= 1e9;
        if !rate_ok {
            c.at(
                span,
                format!("{at}.rate"),
                format!("{} is not a usable rate", l.rate),
                "use requests per second above 0, e.g. 10 or 0.5",
            );
        }
        let burst = l.burst.unwrap_or(l.rate.max(1.0));
        if !(burst.is_finite() && (0.0..=1e9).contains(&burst)) {
            c.at(
                span,
                format!("{at}.burst"),
                format!("{burst} is not a usable burst"),
                "use 0 or more requests allowed at once above the rate",
            );
        }
        let limit_key = match l.key.as_ref().map(|t| t.0.as_str()) {
            None | Some("remote_addr") => LimitKey::RemoteAddr,
            Some("consumer") => LimitKey::Consumer,
            Some("route") => LimitKey::Route,
            Some(other) => {
                c.at(
                    span,
                    format!("{at}.key"),
                    format!("unknown key {other:?}"),
                    "use \"remote_addr\", \"consumer\" or \"route\"",
                );
                LimitKey::RemoteAddr
            }
        };
        let rejected_code = match l.rejected_code {
            None => 429,
            Some(code) => in_range(c, span, &format!("{at}.rejected_code"), code, 400, 599)? as u16,
        };
        Some(LimitReq {
            rate: l.rate,
            burst: burst.max(1.0),
            key: limit_key,
            rejected_code,
        })
    });
    let cors = r
        .plugins
        .cors
        .map(|t| build_cors(c, span, &format!("{key}.plugins.cors"), t));
    let kafka_proxy = r
        .plugins
        .kafka_proxy
        .map(|k| build_kafka_proxy(c, span, &format!("{key}.plugins.kafka-proxy"), k));
    if let (Some(u), Some(_)) = (&upstream, &cors) {
        if u.scheme == Scheme::Kafka {
            c.at(
                span,
                format!("{key}.plugins.cors"),
                "CORS does not apply to WebSocket handshakes".into(),
                "remove it and list browser origins in the kafka-proxy key allowed_origins",
            );
        }
    }
    if let (Some(u), Some(_)) = (&upstream, &kafka_proxy) {
        if u.scheme != Scheme::Kafka {
            c.at(
                span,
                format!("{key}.plugins.kafka-proxy"),
                format!("upstream {:?} is not a kafka upstream", u.id),
                "point the route at an upstream with scheme = \"kafka\", or remove the plugin",
            );
        }
    }
    if c.problems.len() > before {
        return None;
    }
    let upstream = upstream?;
    let kafka_proxy = match (upstream.scheme, kafka_proxy) {
        (Scheme::Kafka, None) => Some(KafkaProxy::default()),
        (_, k) => k.flatten(),
    };
    Some(Route {
        id: r.id.0,
        index,
        paths,
        hosts,
        methods,
        priority,
        upstream,
        plugins: Plugins {
            kafka_proxy,
            key_auth,
            jwt_auth,
            limit_req,
            cors,
        },
    })
}

fn build_consumers(
    c: &mut Checker<'_>,
    list: Vec<::toml::Spanned<t::ConsumerToml>>,
) -> Vec<Arc<Consumer>> {
    let mut names = HashSet::new();
    let mut keys: HashSet<String> = HashSet::new();
    let mut jwt_keys: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for (i, spanned) in list.into_iter().enumerate() {
        let span = spanned.span();
        let span = Some(&span);
        let key = format!("consumers[{i}]");
        let t = spanned.into_inner();
        let before = c.problems.len();
        let username = t.username.0;
        if username.is_empty() {
            c.at(
                span,
                format!("{key}.username"),
                "empty username".into(),
                "name the consumer",
            );
        } else if !names.insert(username.clone()) {
            c.at(
                span,
                format!("{key}.username"),
                format!("duplicate consumer {username:?}"),
                "give every [[consumers]] entry its own username",
            );
        }
        let topics = t
            .topics
            .map(|list| topic_patterns(c, span, &format!("{key}.topics"), list));
        let api_key = t.plugins.key_auth.map(|k| k.key.0);
        if let Some(k) = &api_key {
            if k.len() < 8 {
                c.at(
                    span,
                    format!("{key}.plugins.key-auth.key"),
                    "the key is shorter than 8 characters: too easy to guess".into(),
                    "use a long random value, e.g. from `openssl rand -hex 24`, taken from the environment with \"${NAME}\"",
                );
            } else if !keys.insert(k.clone()) {
                c.at(
                    span,
                    format!("{key}.plugins.key-auth.key"),
                    "another consumer has the same key, so requests could not tell them apart"
                        .into(),
                    "give every consumer its own key",
                );
            }
        }
        let jwt = t.plugins.jwt_auth.and_then(|j| {
            let jk = format!("{key}.plugins.jwt-auth");
            let algorithm = j
                .algorithm
                .map(|a| a.0.to_ascii_uppercase())
                .unwrap_or_else(|| "HS256".into());
            let verify_with = match (algorithm.as_str(), j.secret, j.public_key_file) {
                ("HS256" | "HS512", Some(secret), None) if secret.0.len() >= 16 => {
                    Some(secret.0.into_bytes())
                }
                ("HS256" | "HS512", Some(_), None) => {
                    c.at(
                        span,
                        format!("{jk}.secret"),
                        "the secret is shorter than 16 characters".into(),
                        "use a long random secret from the environment (\"${NAME}\")",
                    );
                    None
                }
                ("RS256" | "ES256", None, Some(file)) => match std::fs::read(&file.0) {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        c.at(
                            span,
                            format!("{jk}.public_key_file"),
                            format!("cannot read {:?}: {e}", file.0),
                            "name the PEM public key that verifies this consumer's tokens",
                        );
                        None
                    }
                },
                ("HS256" | "HS512" | "RS256" | "ES256", _, _) => {
                    c.at(
                        span,
                        jk.clone(),
                        format!(
                            "{algorithm} needs {}",
                            if algorithm.starts_with("HS") {
                                "`secret` (and no public_key_file)"
                            } else {
                                "`public_key_file` (and no secret)"
                            }
                        ),
                        "set exactly the key material the algorithm uses",
                    );
                    None
                }
                (other, _, _) => {
                    c.at(
                        span,
                        format!("{jk}.algorithm"),
                        format!("unsupported algorithm {other:?}"),
                        "use HS256, HS512, RS256 or ES256",
                    );
                    None
                }
            }?;
            if !jwt_keys.insert(j.key.0.clone()) {
                c.at(
                    span,
                    format!("{jk}.key"),
                    format!("another consumer's tokens use the key {:?}", j.key.0),
                    "give every consumer its own jwt-auth key",
                );
                return None;
            }
            Some(JwtCredential {
                key: j.key.0,
                algorithm,
                verify_with,
            })
        });
        if c.problems.len() == before {
            out.push(Arc::new(Consumer {
                username,
                topics,
                key: api_key,
                jwt,
            }));
        }
    }
    out
}

/// Allow-list entries: exact names or `prefix*`.
fn topic_patterns(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    list: Vec<t::Text>,
) -> Vec<TopicPattern> {
    if list.is_empty() {
        c.at(
            span,
            key.to_string(),
            "an empty allow-list forbids every topic".into(),
            "list the topics clients may read, or remove `topics` to allow all",
        );
    }
    list.into_iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let t = t.0;
            let star = t.find('*');
            if t.is_empty() || t == "*" || star.is_some_and(|s| s != t.len() - 1) {
                c.at(
                    span,
                    format!("{key}[{i}]"),
                    format!("{t:?} is not a topic name or prefix"),
                    "write \"orders\" (exact) or \"audit-*\" (prefix); remove `topics` to allow every topic",
                );
                return None;
            }
            Some(match t.strip_suffix('*') {
                Some(p) => TopicPattern::Prefix(p.to_string()),
                None => TopicPattern::Exact(t),
            })
        })
        .collect()
}

pub(crate) fn build_kafka_proxy(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    k: t::KafkaProxyToml,
) -> Option<KafkaProxy> {
    let before = c.problems.len();
    let d = KafkaProxy::default();
    let sasl = k.sasl.map(|s| {
        let mechanism = match s.mechanism.as_ref().map(|m| m.0.to_ascii_uppercase()) {
            None => SaslMechanism::Plain,
            Some(m) if m == "PLAIN" => SaslMechanism::Plain,
            Some(m) if m == "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
            Some(m) if m == "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
            Some(m) => {
                c.at(
                    span,
                    format!("{key}.sasl.mechanism"),
                    format!("unknown SASL mechanism {m:?}"),
                    "use \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\"",
                );
                SaslMechanism::Plain
            }
        };
        for (field, value) in [("username", &s.username.0), ("password", &s.password.0)] {
            if value.is_empty() {
                c.at(
                    span,
                    format!("{key}.sasl.{field}"),
                    format!("sasl.{field} is empty"),
                    "set it, or take it from the environment with \"${NAME}\"",
                );
            }
        }
        Sasl {
            mechanism,
            username: s.username.0,
            password: s.password.0,
        }
    });
    let topics = k
        .topics
        .map(|list| topic_patterns(c, span, &format!("{key}.topics"), list));
    let allowed_origins = k
        .allowed_origins
        .map(|list| origins(c, span, &format!("{key}.allowed_origins"), list));
    let mut num = |name: &str, value: Option<i64>, min: i64, max: i64, default: i64| {
        value
            .and_then(|v| in_range(c, span, &format!("{key}.{name}"), v, min, max))
            .unwrap_or(default)
    };
    let max_frame_bytes = num(
        "max_frame_bytes",
        k.max_frame_bytes,
        1024,
        256 << 20,
        d.max_frame_bytes as i64,
    );
    let fetch_max_bytes = num(
        "fetch_max_bytes",
        k.fetch_max_bytes,
        1,
        256 << 20,
        d.fetch_max_bytes as i64,
    );
    let wait = num(
        "fetch_max_wait_ms",
        k.fetch_max_wait_ms,
        0,
        60_000,
        d.fetch_max_wait.as_millis() as i64,
    );
    let socket = num(
        "socket_timeout_ms",
        k.socket_timeout_ms,
        100,
        600_000,
        d.socket_timeout.as_millis() as i64,
    );
    let in_flight = num(
        "max_in_flight",
        k.max_in_flight,
        1,
        1024,
        d.max_in_flight as i64,
    );
    let commands = num(
        "max_commands_per_second",
        k.max_commands_per_second,
        0,
        1_000_000,
        d.max_commands_per_second.into(),
    );
    let idle = num(
        "idle_timeout_ms",
        k.idle_timeout_ms,
        1_000,
        86_400_000,
        d.idle_timeout.as_millis() as i64,
    );
    let lifetime = num(
        "max_session_seconds",
        k.max_session_seconds,
        0,
        30 * 86_400,
        d.max_session.map_or(0, |l| l.as_secs() as i64),
    );
    let send_timeout = num(
        "send_timeout_ms",
        k.send_timeout_ms,
        100,
        600_000,
        d.send_timeout.as_millis() as i64,
    );
    if c.problems.len() > before {
        return None;
    }
    Some(KafkaProxy {
        max_commands_per_second: commands as u32,
        idle_timeout: Duration::from_millis(idle as u64),
        max_session: (lifetime > 0).then(|| Duration::from_secs(lifetime as u64)),
        send_timeout: Duration::from_millis(send_timeout as u64),
        sasl,
        topics,
        max_frame_bytes: max_frame_bytes as usize,
        fetch_max_bytes: fetch_max_bytes as usize,
        fetch_max_wait: Duration::from_millis(wait as u64),
        socket_timeout: Duration::from_millis(socket as u64),
        max_in_flight: in_flight as usize,
        allowed_origins,
    })
}
