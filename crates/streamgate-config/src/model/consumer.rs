//! `[[consumers]]`: the identities auth plugins recognise, and what each may read.

use super::TopicPattern;
use std::fmt;

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
    /// The `[[identity_providers]]` id whose tokens sign callers in as this consumer.
    pub jwt_provider: Option<String>,
    /// Records this consumer may receive at all, on every pub/sub route (row-level security);
    /// `None` = every record of the topics it may read.
    pub record_filter: Option<RecordFilter>,
}

/// An enforced record filter: every part given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordFilter {
    /// The record key starts with this.
    pub key_prefix: Option<String>,
    /// Each of these headers is present with exactly this value.
    pub headers: Vec<(String, String)>,
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
            .field("jwt_provider", &self.jwt_provider)
            .field("record_filter", &self.record_filter)
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
