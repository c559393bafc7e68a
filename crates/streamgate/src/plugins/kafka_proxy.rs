//! `kafka-proxy`: the per-route Kafka settings of a pub/sub route (SASL identity, topic
//! allow-list, limits). It only puts them on the request context; the pub/sub session applies
//! them. Every route to a kafka upstream has it, with defaults when the table is absent.

use super::Plugin;
use crate::proxy::RequestCtx;
use async_trait::async_trait;
use pingora::proxy::Session;
use std::sync::Arc;
use streamgate_config::model::KafkaProxy;

/// The `kafka-proxy` plugin with its checked settings.
#[derive(Debug)]
pub struct KafkaProxyPlugin {
    settings: Arc<KafkaProxy>,
}

impl KafkaProxyPlugin {
    /// A plugin instance for one route.
    pub fn new(settings: KafkaProxy) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }
}

#[async_trait]
impl Plugin for KafkaProxyPlugin {
    fn name(&self) -> &'static str {
        "kafka-proxy"
    }

    async fn access(&self, _session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        ctx.kafka = Some(Arc::clone(&self.settings));
        Ok(false)
    }
}
