//! Kafka pub/sub over WebSocket: the routes whose upstream has `scheme = "kafka"`.
//!
//! ```text
//! request_filter ── handshake valid? ──no──▶ 400
//!                        │ yes
//!                        ▼
//!              101, detach the TCP stream from Pingora (upgrade.rs)
//!                        │
//!                        ▼  tokio task, one per connection
//!              session loop (session.rs) ── ping ──▶ pong
//!                        │ list offset / fetch (commands.rs), concurrently
//!                        ▼
//!              partition readers (reader.rs): coalesced fetches, tail polling
//!                        ▼
//!              shared Kafka clients (kafka_pool.rs) ──▶ brokers
//! ```
//!
//! Detached sessions no longer see Pingora's shutdown, so [`ShutdownRelay`] (a Pingora
//! background service) passes the signal on and sessions send Close 1001.

mod commands;
mod failure;
mod kafka_pool;
mod reader;
mod session;
mod upgrade;

pub use commands::KafkaRoute;
pub use kafka_pool::{KafkaCluster, KafkaPool};

use crate::proxy::{respond_json, RequestCtx};
use async_trait::async_trait;
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The pub/sub side of the gateway, shared by all routes.
#[derive(Debug)]
pub struct PubSub {
    /// Kafka clients shared across sessions and routes.
    pub pool: Arc<KafkaPool>,
    shutdown: Arc<watch::Sender<bool>>,
    active: Arc<AtomicUsize>,
}

impl Default for PubSub {
    fn default() -> Self {
        Self {
            pool: Arc::default(),
            shutdown: Arc::new(watch::channel(false).0),
            active: Arc::default(),
        }
    }
}

impl PubSub {
    /// The service that tells open sessions when the gateway shuts down.
    pub fn shutdown_relay(&self) -> ShutdownRelay {
        ShutdownRelay {
            sessions: Arc::clone(&self.shutdown),
        }
    }

    /// Open pub/sub sessions right now.
    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Serves a request to a pub/sub route: a 400 when it is not a WebSocket handshake, else
    /// the 101 and a detached session. Always answers the request (returns `Ok(true)`).
    pub async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: KafkaRoute,
        limits: &Arc<crate::limits::ConnectionLimits>,
    ) -> pingora::Result<bool> {
        if !upgrade::origin_allowed(session, route.settings.allowed_origins.as_deref()) {
            ctx.status = Some(403);
            respond_json(
                session,
                ctx,
                403,
                "403 Forbidden: this origin may not open this WebSocket",
            )
            .await?;
            return Ok(true);
        }
        if let Some(problem) = upgrade::handshake_problem(session) {
            ctx.status = Some(400);
            respond_json(session, ctx, 400, problem).await?;
            return Ok(true);
        }
        let consumer_slot = match &route.consumer {
            None => None,
            Some(consumer) => match limits.acquire_consumer(&consumer.username) {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    crate::metrics::metrics()
                        .limited
                        .with_label_values(&[refusal.name()])
                        .inc();
                    ctx.status = Some(429);
                    crate::proxy::respond_refusal(
                        session,
                        ctx,
                        429,
                        "429 Too Many Requests: this consumer has too many pub/sub sessions open",
                        Some(1),
                    )
                    .await?;
                    return Ok(true);
                }
            },
        };
        let (stream, early) = upgrade::accept_and_detach(session).await?;
        ctx.status = Some(101);
        // The session holds its places in the limits until it closes.
        let slots = (ctx.slot.take(), consumer_slot);
        crate::metrics::metrics()
            .pubsub_sessions_opened
            .with_label_values(&[&*route.route_id])
            .inc();
        let config = session::websocket_config(route.settings.max_frame_bytes);
        let shutdown = self.shutdown.subscribe();
        let active = Arc::clone(&self.active);
        active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let ws =
                WebSocketStream::from_partially_read(stream, early, Role::Server, Some(config))
                    .await;
            let route_id = Arc::clone(&route.route_id);
            session::run(ws, route, shutdown).await;
            drop(slots);
            active.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(route = %route_id, "pub/sub session ended");
        });
        Ok(true)
    }
}

/// Relays Pingora's shutdown signal to detached pub/sub sessions.
#[derive(Debug)]
pub struct ShutdownRelay {
    sessions: Arc<watch::Sender<bool>>,
}

#[async_trait]
impl BackgroundService for ShutdownRelay {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        tracing::info!(
            sessions = self.sessions.receiver_count(),
            "closing pub/sub sessions (1001)"
        );
        let _ = self.sessions.send(true);
    }
}
