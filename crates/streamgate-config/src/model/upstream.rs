//! `[[upstreams]]`: nodes, balancing, timeouts, TLS and health checks.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Kafka: how long a fetch may wait at the broker for records (0: never, the gateway waits
    /// itself; see the README before raising it).
    pub broker_fetch_wait: Duration,
    /// Kafka: how many bytes the compressed record batches of one broker fetch answer may expand
    /// to; a batch past it is refused with TOO_LARGE rather than decompressed.
    pub max_decompressed_bytes: usize,
}

/// The default of an upstream's `max_decompressed_bytes`: 32 MiB, far above what a fetch of the
/// largest `fetch_max_bytes` decodes to at any real compression ratio.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 32 << 20;

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
