//! A pub/sub route's Kafka side, resolved once when the route table is built: its settings and
//! the identity of the shared client its sessions use. A session adds who is calling
//! ([`KafkaAccess`]).

use super::cluster::KafkaCluster;
use super::kafka_pool::{KafkaIdentity, KafkaPool};
use crate::error::StartupError;
use crate::limits::ConnectionLimits;
use std::sync::Arc;
use streamgate_config::model::{Consumer, KafkaProxy, Route, SaslMechanism};
use streamgate_protocol::KafkaMessage;

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
    pub row_filter: Option<Arc<RowFilter>>,
}

/// The records a caller may receive at all: every part must hold. Applied to fetches,
/// subscriptions and event streams alike; a client's own filter can narrow it, never widen it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RowFilter {
    /// Each of these prefixes the key (the consumer's `record_filter`, as the operator wrote it).
    key_prefixes: Vec<Vec<u8>>,
    /// The caller's own keys (`key_prefix_from_claim`): the claim's value exactly, or followed
    /// by the route's delimiter (this second form is stored, the first is it less the delimiter).
    owned: Option<(Vec<u8>, usize)>,
    /// Each of these headers is present with this value.
    headers: Vec<(String, Vec<u8>)>,
}

impl RowFilter {
    /// The filter for a caller of `settings`' route: `consumer`'s record filter, and the route's
    /// claim-derived key prefix taken from `claims`. Errs (the caller is refused with 403) when
    /// the route derives a prefix from a claim the caller's token does not carry.
    pub(crate) fn for_caller(
        settings: &KafkaProxy,
        consumer: Option<&Consumer>,
        claims: Option<&serde_json::Value>,
    ) -> Result<Option<Arc<Self>>, String> {
        let mut filter = Self::default();
        if let Some(f) = consumer.and_then(|c| c.record_filter.as_ref()) {
            filter
                .key_prefixes
                .extend(f.key_prefix.iter().map(|p| p.as_bytes().to_vec()));
            filter.headers.extend(
                f.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
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
            filter.owned = Some((owned, exact));
        }
        if filter.key_prefixes.is_empty() && filter.owned.is_none() && filter.headers.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(filter)))
    }

    /// Whether the caller may receive `m`.
    pub(crate) fn passes(&self, m: &KafkaMessage) -> bool {
        self.key_prefixes.iter().all(|p| m.key.starts_with(p))
            && self.owned.as_ref().is_none_or(|(owned, exact)| {
                m.key.starts_with(owned) || m.key[..] == owned[..*exact]
            })
            && self.headers.iter().all(|(k, v)| {
                m.headers
                    .iter()
                    .any(|h| h.key == *k && h.value[..] == v[..])
            })
    }
}

impl KafkaAccess {
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
