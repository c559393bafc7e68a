//! A Kafka cluster as a kafka upstream describes it, and the SASL settings in rskafka's form: what
//! both the shared clients (pool.rs) and the fetch connections (fetch.rs) connect with.

use crate::error::StartupError;
use rskafka::client::{Credentials, SaslConfig};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use streamgate_config::model::{Sasl, SaslMechanism, Upstream, UpstreamTls};

/// A Kafka cluster as one kafka upstream names it.
pub(crate) struct KafkaCluster {
    /// The upstream id (for logs).
    pub upstream_id: String,
    /// Bootstrap brokers, `host:port`, sorted.
    pub brokers: Vec<String>,
    /// TLS settings and the client configuration built from them.
    pub tls: Option<(UpstreamTls, Arc<rustls::ClientConfig>)>,
    /// The upstream's `timeout.connect`: bounds connecting (and SASL) to the brokers, within
    /// the route's socket timeout.
    pub connect_timeout: Duration,
    /// The upstream's `broker_fetch_wait_ms`.
    pub broker_fetch_wait: Duration,
    /// The upstream's `max_decompressed_bytes`: what one fetch answer's batches may expand to.
    pub max_decompressed_bytes: usize,
}

impl KafkaCluster {
    /// The cluster a kafka upstream names: its weighted nodes as bootstrap brokers, and its TLS
    /// client configuration (CA and client certificate files are read here).
    pub(crate) fn new(upstream: &Upstream) -> Result<Self, StartupError> {
        let mut brokers: Vec<String> = upstream
            .nodes
            .iter()
            .filter(|n| n.weight > 0)
            .map(|n| n.to_string())
            .collect();
        brokers.sort();
        let tls = match &upstream.tls {
            None => None,
            Some(t) => Some((
                t.clone(),
                crate::tls::kafka_client_config(t).map_err(|why| StartupError::Upstream {
                    id: upstream.id.clone(),
                    what: "tls".into(),
                    why,
                })?,
            )),
        };
        Ok(Self {
            upstream_id: upstream.id.clone(),
            brokers,
            tls,
            connect_timeout: upstream.timeouts.connect,
            broker_fetch_wait: upstream.broker_fetch_wait,
            max_decompressed_bytes: upstream.max_decompressed_bytes,
        })
    }
}

impl fmt::Debug for KafkaCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaCluster")
            .field("upstream_id", &self.upstream_id)
            .field("brokers", &self.brokers)
            .field("tls", &self.tls.as_ref().map(|(t, _)| t))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// rskafka's form of a route's SASL settings.
pub(crate) fn sasl_config(s: &Sasl) -> SaslConfig {
    let credentials = Credentials::new(s.username.clone(), s.password.clone());
    match s.mechanism {
        SaslMechanism::Plain => SaslConfig::Plain(credentials),
        SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
        SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
    }
}
