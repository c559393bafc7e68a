//! A pub/sub route's Kafka side, resolved once when the route table is built: its settings and
//! the identity of the shared client its sessions use. A session adds who is calling
//! ([`KafkaAccess`]).

use super::failure::KafkaFailure;
use crate::error::StartupError;
use crate::limits::ConnectionLimits;
use crate::pubsub::kafka::cluster::KafkaCluster;
use crate::pubsub::kafka::pool::{KafkaIdentity, KafkaPool};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use streamgate_config::model::{Consumer, KafkaProxy, Route, SaslMechanism};
use streamgate_protocol::{ErrorCode, KafkaMessage, PubSubResp, RecordFilter};

/// The Kafka side of one route to a kafka upstream.
#[derive(Debug)]
pub(crate) struct KafkaTarget {
    /// The route id (for logs and metrics).
    pub route_id: Arc<str>,
    /// The route's checked `kafka-proxy` settings.
    pub settings: KafkaProxy,
    /// The shared client it reads through.
    pub identity: KafkaIdentity,
}

impl KafkaTarget {
    /// The target of `route`, whose upstream is `cluster`.
    pub(crate) fn new(route: &Route, cluster: Arc<KafkaCluster>) -> Result<Self, StartupError> {
        // The configuration gives every route to a kafka upstream its kafka-proxy settings
        // (defaults when the table is absent), so a missing one is a bug, reported as such.
        let settings = route
            .plugins
            .kafka_proxy
            .clone()
            .ok_or_else(|| StartupError::Upstream {
                id: route.upstream.id.clone(),
                what: format!("route {:?}", route.id),
                why: "a kafka route without kafka-proxy settings".into(),
            })?;
        if settings
            .sasl
            .as_ref()
            .is_some_and(|s| s.mechanism == SaslMechanism::Plain)
            && cluster.tls.is_none()
        {
            tracing::warn!(
                route = %route.id,
                upstream = %route.upstream.id,
                "SASL PLAIN without TLS: the route's Kafka password crosses the network in clear text; give the upstream a [upstreams.tls] table or use SCRAM"
            );
        }
        Ok(Self {
            route_id: route.id.as_str().into(),
            identity: KafkaIdentity::new(cluster, settings.sasl.clone(), settings.isolation),
            settings,
        })
    }
}

/// What one session's Kafka commands run against: its route's target, who is calling, and the
/// shared clients.
#[derive(Debug, Clone)]
pub(crate) struct KafkaAccess {
    /// The route's Kafka side.
    pub target: Arc<KafkaTarget>,
    /// The consumer an auth plugin recognised, whose allow-list narrows the route's.
    pub consumer: Option<Arc<Consumer>>,
    /// The process's Kafka clients.
    pub pool: Arc<KafkaPool>,
    /// The process's limits (the budget for answers waiting to be written).
    pub limits: Arc<ConnectionLimits>,
    /// The caller's verified JWT claims, when a token was presented (for the row filter).
    pub claims: Option<Arc<serde_json::Value>>,
    /// The records this caller may receive at all (row-level security), from its consumer's
    /// `record_filter` and the route's `key_prefix_from_claim`; `None` = every record.
    pub row_filter: Option<Arc<RecordMatcher>>,
}

/// Which records pass: every part given must hold. The one matcher behind both filters a record
/// meets: the caller's row filter (the records it may receive at all, from the operator's
/// settings; applied to fetches, subscriptions and event streams alike) and a subscription's own
/// filter (the client's, which can narrow the row filter, never widen it).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RecordMatcher {
    /// The key is one of these (empty: any key); a set, so a record costs one look-up.
    keys: HashSet<Bytes>,
    /// Each of these prefixes the key.
    key_prefixes: Vec<Bytes>,
    /// The caller's own keys (`key_prefix_from_claim`): the claim's value exactly, or followed
    /// by the route's delimiter (this second form is stored, the first is it less the delimiter).
    owned: Option<(Bytes, usize)>,
    /// Each of these headers is present with this value.
    headers: Vec<(String, Bytes)>,
}

impl RecordMatcher {
    /// The row filter for a caller of `settings`' route: `consumer`'s record filter, and the
    /// keys the caller owns by its token's claim. Errs (the caller is refused with 403) when the
    /// route derives them from a claim the caller's token does not carry. `None`: every record.
    pub(crate) fn for_caller(
        settings: &KafkaProxy,
        consumer: Option<&Consumer>,
        claims: Option<&serde_json::Value>,
    ) -> Result<Option<Arc<Self>>, String> {
        let mut filter = Self::default();
        if let Some(f) = consumer.and_then(|c| c.record_filter.as_ref()) {
            filter
                .key_prefixes
                .extend(f.key_prefix.iter().map(|p| Bytes::from(p.clone())));
            filter.headers.extend(
                f.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Bytes::from(v.clone()))),
            );
        }
        if let Some(claim) = &settings.key_prefix_from_claim {
            let value = claims
                .and_then(|c| c.get(claim))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    format!("403 Forbidden: this route shows each caller only its own records, by the token's `{claim}` claim, and the token has none")
                })?;
            // A bare prefix would give the caller whose claim is `4` the keys `42:...` too.
            let delimiter = settings.key_prefix_delimiter.as_deref().unwrap_or_default();
            let mut owned = value.into_bytes();
            let exact = owned.len();
            owned.extend_from_slice(delimiter.as_bytes());
            filter.owned = Some((Bytes::from(owned), exact));
        }
        Ok((!filter.is_empty()).then(|| Arc::new(filter)))
    }

    /// A subscription's own filter: the key is one of `keys` (when given), starts with
    /// `key_prefix`, and every listed header is present with that value.
    pub(crate) fn of_client(filter: RecordFilter) -> Self {
        Self {
            keys: filter.keys.into_iter().collect(),
            key_prefixes: Some(filter.key_prefix)
                .filter(|p| !p.is_empty())
                .into_iter()
                .collect(),
            owned: None,
            headers: filter
                .headers
                .into_iter()
                .map(|h| (h.key, h.value))
                .collect(),
        }
    }

    /// Whether it lets every record through.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.key_prefixes.is_empty()
            && self.owned.is_none()
            && self.headers.is_empty()
    }

    /// The keys a record's key must be one of, when the filter lists any (the key index
    /// pre-selects records by them).
    pub(crate) fn keys(&self) -> Option<&HashSet<Bytes>> {
        (!self.keys.is_empty()).then_some(&self.keys)
    }

    /// Whether `m` passes.
    pub(crate) fn passes(&self, m: &KafkaMessage) -> bool {
        (self.keys.is_empty() || self.keys.contains(&m.key))
            && self.key_prefixes.iter().all(|p| m.key.starts_with(p))
            && self.owned.as_ref().is_none_or(|(owned, exact)| {
                m.key.starts_with(owned) || m.key[..] == owned[..*exact]
            })
            && self
                .headers
                .iter()
                .all(|(k, v)| m.headers.iter().any(|h| h.key == *k && h.value == *v))
    }
}

impl KafkaAccess {
    /// The error answer for a failed command on `topic`/`partition`, in APISIX's wording.
    pub(crate) fn failed(
        &self,
        sequence: i64,
        what: &str,
        topic: &str,
        partition: Option<i32>,
        f: KafkaFailure,
    ) -> PubSubResp {
        // Broker addresses are the operator's business: a caller nobody authenticated is not told
        // where the brokers are (the gateway's log is).
        let reason = if self.consumer.is_none() {
            let scrubbed = super::failure::without_addresses(&f.reason);
            if scrubbed != f.reason {
                tracing::debug!(route = %self.target.route_id, reason = %f.reason, "Kafka failure (addresses left out of the answer)");
            }
            scrubbed
        } else {
            f.reason
        };
        let message = match partition {
            Some(partition) => {
                format!("failed to {what}, topic: {topic}, partition: {partition}, err: {reason}")
            }
            None => format!("failed to {what}, topic: {topic}, err: {reason}"),
        };
        PubSubResp::error(sequence, f.code, message)
    }

    /// A topic or partition the broker says does not exist is not asked for again by name.
    pub(crate) fn forget_if_gone<T>(
        &self,
        topic: &str,
        partition: i32,
        answer: &Result<T, KafkaFailure>,
    ) {
        if matches!(answer, Err(f) if f.code == ErrorCode::NotFound) {
            self.pool.forget(&self.target.identity, topic, partition);
        }
    }

    /// The one topic check of every command and subscription, before Kafka is asked anything:
    /// BAD_REQUEST for a name Kafka would refuse, FORBIDDEN for a topic outside the route's or
    /// the consumer's allow-list.
    pub(crate) fn check_topic(&self, topic: &str) -> Result<(), KafkaFailure> {
        if let Some(why) = invalid_topic(topic) {
            return Err(KafkaFailure::new(ErrorCode::BadRequest, why));
        }
        match self.refusal(topic) {
            Some(why) => Err(KafkaFailure::new(ErrorCode::Forbidden, why)),
            None => Ok(()),
        }
    }

    /// Why this caller may not read `topic` on this route, if it may not: the route's
    /// allow-list, then the consumer's.
    pub(crate) fn refusal(&self, topic: &str) -> Option<&'static str> {
        if !self.target.settings.allows(topic) {
            return Some("forbidden: the topic is not in this route's allow-list");
        }
        if self.consumer.as_ref().is_some_and(|c| !c.allows(topic)) {
            return Some("forbidden: the topic is not in this consumer's allow-list");
        }
        None
    }
}

/// What a configuration reload says of an open session: the route table in force answers it
/// (the session holds no reference to the table, only its route id and caller).
pub(crate) trait SessionCheck: Send + Sync + std::fmt::Debug {
    /// The session's route's Kafka side and caller under the new configuration, or why the
    /// session must end (its route is gone, or its consumer or credentials were removed or
    /// changed).
    fn recheck(
        &self,
        route_id: &str,
        consumer: Option<&Consumer>,
    ) -> Result<(Arc<KafkaTarget>, Option<Arc<Consumer>>), String>;
}

/// Why `topic` is not a name Kafka accepts (1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`),
/// if it is not. Checked before anything reaches the broker.
fn invalid_topic(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("topic is empty")
    } else if topic.len() > 249 {
        Some("invalid topic name: longer than 249 characters")
    } else if topic == "." || topic == ".." {
        Some("invalid topic name: `.` and `..` are not topics")
    } else if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("invalid topic name: use only letters, digits, `.`, `_` and `-`")
    } else {
        None
    }
}
