//! Kafka pub/sub over WebSocket and Server-Sent Events: the routes whose upstream has
//! `scheme = "kafka"`. Three tiers, each using only those below (`tests/module_layers.rs`):
//!
//! ```text
//! request_filter ─▶ PubSub::serve ── origin listed? ──no──▶ 403
//!                        │ WebSocket handshake or event-stream request? ──no──▶ 400
//!                        │ consumer under max_sessions_per_consumer? ──no──▶ 429
//!                        ▼
//! transports/   websocket.rs: 101, the TCP stream detached from Pingora (upgrade.rs), a task
//!                        │   per connection: the command loop (a ping answered at once)
//!               sse.rs: 200 text/event-stream, the response detached, a task per stream
//!                        │   (what ends either besides its client: ending.rs)
//!                        ▼
//! modes/        pull.rs: list offset / fetch, concurrently; answers encoded once (wire.rs)
//!               push.rs: subscriptions with credit, one task each; resume points (cursor.rs)
//!                        │   (the route's Kafka side, the caller, the row filter: target.rs)
//!                        ▼
//! kafka/        reader.rs: a partition's shared reader: coalesced fetches, the tail poller,
//!                        │   the window of recent records, reading ahead
//!               fetch.rs: Fetch to the partition's leader over the gateway's own connections,
//!                        │   record batches decoded within a budget (batch.rs)
//!               pool.rs: shared clients per identity (cluster.rs) ──▶ brokers
//! ```
//!
//! A route's Kafka side ([`KafkaTarget`]: settings and client identity) is resolved once when
//! the route table is built; a session adds the caller ([`target::KafkaAccess`]).
//!
//! Detached sessions no longer see Pingora's shutdown, so [`ShutdownRelay`] (a Pingora
//! background service) passes the signal on and sessions send Close 1001.

mod ending;
mod failure;
mod kafka;
mod modes;
mod target;
mod transports;
mod wire;

pub(crate) use kafka::{KafkaCluster, KafkaPool};
pub(crate) use target::{KafkaTarget, SessionCheck};

use crate::ctx::RequestCtx;
use crate::limits::ConnectionLimits;
use crate::respond::{self, Answer};
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
pub(crate) struct PubSub {
    /// Kafka clients shared across sessions and routes.
    pool: Arc<KafkaPool>,
    shutdown: Arc<watch::Sender<bool>>,
    /// The configuration open sessions re-check themselves against after a reload.
    recheck: watch::Sender<Option<Arc<dyn SessionCheck>>>,
    active: Arc<AtomicUsize>,
}

impl Default for PubSub {
    fn default() -> Self {
        Self {
            pool: Arc::default(),
            shutdown: Arc::new(watch::channel(false).0),
            recheck: watch::channel(None).0,
            active: Arc::default(),
        }
    }
}

impl PubSub {
    /// The service that tells open sessions when the gateway shuts down.
    pub(crate) fn shutdown_relay(&self) -> ShutdownRelay {
        ShutdownRelay {
            sessions: Arc::clone(&self.shutdown),
        }
    }

    /// Has every open session re-check its caller and the topics it read against `check` (the
    /// route table a reload just put in force): allowed, it goes on under the new settings;
    /// not, it is closed with 1008 and the reason.
    pub(crate) fn recheck_sessions(&self, check: Arc<dyn SessionCheck>) {
        self.recheck.send_replace(Some(check));
    }

    /// The Kafka clients shared across sessions and routes.
    pub(crate) fn pool(&self) -> &KafkaPool {
        &self.pool
    }

    /// Open pub/sub sessions right now.
    pub(crate) fn active_sessions(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Serves a request to a pub/sub route of `target`: 403 for a browser origin the route
    /// does not list or a caller whose row filter cannot be built, 400 when it is neither a
    /// WebSocket handshake nor an event-stream request, 429 when the consumer has its maximum of
    /// sessions open; else the 101 and a detached session, or an event stream. Always answers
    /// the request (returns `Ok(true)`).
    pub(crate) async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        target: &Arc<KafkaTarget>,
        limits: &Arc<ConnectionLimits>,
    ) -> pingora::Result<bool> {
        let settings = &target.settings;
        if !transports::upgrade::origin_allowed(session, settings.allowed_origins.as_deref()) {
            let message =
                "403 Forbidden: this origin may not read this route (WebSocket or event stream)";
            respond::send(session, ctx, Answer::error(403, message)).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let event_stream = req.method == http::Method::GET
            && !crate::request::asks_upgrade(req)
            && transports::sse::wanted(req);
        let not_websocket = "this route serves Kafka pub/sub over WebSocket (send `Connection: Upgrade` and `Upgrade: websocket`) or as Server-Sent Events (GET with `Accept: text/event-stream` and ?topic=NAME)";
        if let Some(problem) = crate::request::websocket_handshake_problem(req, not_websocket)
            .filter(|_| !event_stream)
        {
            respond::send(session, ctx, Answer::error(400, problem)).await?;
            return Ok(true);
        }
        // Row-level security is settled before Kafka is asked anything.
        let row_filter = match target::RecordMatcher::for_caller(
            settings,
            ctx.consumer.as_deref(),
            ctx.claims.as_deref(),
        ) {
            Ok(filter) => filter,
            Err(why) => {
                respond::send(session, ctx, Answer::error(403, &why)).await?;
                return Ok(true);
            }
        };
        let consumer_slot = match &ctx.consumer {
            None => None,
            Some(consumer) => match limits.acquire_consumer(&consumer.username) {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    crate::metrics::metrics()
                        .limited
                        .with_label_values(&[refusal.name()])
                        .inc();
                    let message =
                        "429 Too Many Requests: this consumer has too many pub/sub sessions open";
                    let answer = Answer::error(429, message).retry_after(1);
                    respond::send(session, ctx, answer).await?;
                    return Ok(true);
                }
            },
        };
        let access = target::KafkaAccess {
            target: Arc::clone(target),
            consumer: ctx.consumer.clone(),
            pool: Arc::clone(&self.pool),
            limits: Arc::clone(limits),
            claims: ctx.claims.clone(),
            row_filter,
        };
        let endings = ending::Endings {
            shutdown: self.shutdown.subscribe(),
            recheck: self.recheck.subscribe(),
            credential_expires: ctx.credential_expires,
        };
        if event_stream {
            // The stream holds its places in the limits until it ends.
            let slots = (
                ctx.slot.take(),
                consumer_slot,
                ActiveGuard::new(&self.active),
            );
            return transports::sse::serve(session, ctx, access, endings, slots).await;
        }
        let (stream, early) = transports::upgrade::accept_and_detach(session, ctx).await?;
        // The session holds its places in the limits until it closes.
        let slots = (
            ctx.slot.take(),
            consumer_slot,
            ActiveGuard::new(&self.active),
        );
        crate::metrics::metrics()
            .pubsub_sessions_opened
            .with_label_values(&[&*target.route_id])
            .inc();
        let config = transports::websocket::websocket_config(settings.max_frame_bytes);
        tokio::spawn(async move {
            let ws =
                WebSocketStream::from_partially_read(stream, early, Role::Server, Some(config))
                    .await;
            let route_id = Arc::clone(&access.target.route_id);
            transports::websocket::run(ws, access, endings).await;
            drop(slots);
            tracing::debug!(route = %route_id, "pub/sub session ended");
        });
        Ok(true)
    }
}

/// Counts an open session or event stream among the active ones until dropped.
#[derive(Debug)]
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Relays Pingora's shutdown signal to detached pub/sub sessions.
#[derive(Debug)]
pub(crate) struct ShutdownRelay {
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
