//! The settings of each route plugin (`[routes.plugins.NAME]`), `kafka-proxy` included.

use std::fmt;
use std::time::Duration;

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
    /// Cookie name, when tokens may come in a cookie (opt-in: a cookie rides along with any
    /// page's requests, so the route must also list the browser origins it trusts).
    pub cookie: Option<String>,
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
    /// Push subscriptions one connection may hold at once.
    pub max_subscriptions: usize,
    /// Row-level security from the caller's verified JWT: only records whose key is this
    /// claim's value, or starts with it followed by [`Self::key_prefix_delimiter`], are sent
    /// (the route must have `jwt-auth`).
    pub key_prefix_from_claim: Option<String>,
    /// What follows the claim's value in the keys a caller owns (required with
    /// `key_prefix_from_claim`): without it, a caller whose claim is `4` would also read `42:…`.
    pub key_prefix_delimiter: Option<String>,
    /// Which records of transactional producers readers see.
    pub isolation: Isolation,
    /// Group subscriptions; `None` = refused on this route.
    pub groups: Option<Groups>,
}

/// Group subscriptions on a route: where their broker-side group ids live and how members behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    /// Put in front of every broker-side group id (`group_prefix`).
    pub prefix: String,
    /// Globs over the client's group name (`allowed_groups`; `*` any run, `?` one character).
    pub allowed: Vec<String>,
    /// A JWT claim whose value, escaped, is the caller's own namespace (`group_from_claim`).
    pub from_claim: Option<String>,
    /// How long the coordinator waits for a member's heartbeat (`group_session_timeout_ms`).
    pub session_timeout: Duration,
    /// How often an AUTO subscription commits what it wrote (`auto_commit_interval_ms`).
    pub auto_commit_interval: Duration,
}

impl Groups {
    /// Whether a client may name `group` (already a valid group name).
    pub fn allows(&self, group: &str) -> bool {
        self.allowed.iter().any(|glob| glob_matches(glob, group))
    }
}

/// `*` matches any run of characters, `?` one; everything else itself.
fn glob_matches(glob: &str, text: &str) -> bool {
    let (glob, text): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point (the last `*`): linear in practice.
    let (mut g, mut t, mut star, mut mark) = (0, 0, None, 0);
    while t < text.len() {
        if g < glob.len() && (glob[g] == '?' || glob[g] == text[t]) {
            g += 1;
            t += 1;
        } else if g < glob.len() && glob[g] == '*' {
            star = Some(g);
            mark = t;
            g += 1;
        } else if let Some(s) = star {
            g = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|c| *c == '*')
}

/// `isolation`: Kafka's consumer setting of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Isolation {
    /// Only committed records: aborted transactions are left out, and nothing at or after the
    /// first record of an open transaction (the last stable offset) is read until it ends.
    #[default]
    ReadCommitted,
    /// Every record up to the high watermark, aborted or not yet committed ones included.
    ReadUncommitted,
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
            max_subscriptions: 16,
            key_prefix_from_claim: None,
            key_prefix_delimiter: None,
            isolation: Isolation::ReadCommitted,
            groups: None,
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

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn globs_match_runs_and_single_characters() {
        for (glob, text, want) in [
            ("*", "anything", true),
            ("*", "", true),
            ("team-*", "team-a", true),
            ("team-*", "teams", false),
            ("*-reader", "orders-reader", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("r?ad", "read", true),
            ("r?ad", "rad", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_matches(glob, text), want, "{glob} ~ {text}");
        }
    }
}
