//! The admin listener: metrics, liveness and readiness for load balancers and orchestrators.
//!
//! Bound only where `[admin] listen` says (loopback in the shipped config). `/metrics` is the
//! Prometheus text exposition ([`crate::metrics`]); `/healthz` answers 200 while the process
//! runs; `/readyz` answers 200 once the configuration is loaded and the listeners are up, which
//! is the case whenever this service runs, unless an identity provider has no keys at all (its
//! tokens would all be refused: 503); a provider whose last fetch failed but whose last good keys
//! are in use is listed as stale. Anything else is a 404 naming the three.

use crate::pubsub::PubSub;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// Serves `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug)]
pub(crate) struct AdminApp {
    /// For the session and client counts.
    pub pubsub: Arc<PubSub>,
    /// For the identity providers' standing.
    pub providers: Arc<crate::plugins::Providers>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, body) = match session.req_header().uri.path() {
            "/healthz" => (200, "ok\n".to_string()),
            "/metrics" => {
                let m = crate::metrics::metrics();
                m.pubsub_sessions.set(self.pubsub.active_sessions() as i64);
                m.kafka_clients
                    .set(self.pubsub.pool().client_count() as i64);
                let body = m.render();
                return Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_default();
            }
            "/readyz" => {
                let mut ready = true;
                let mut providers = String::new();
                for p in self.providers.all() {
                    let standing = p.standing();
                    ready &= standing.keys > 0;
                    providers.push_str(&format!(
                        "identity_provider_keys{{provider=\"{}\"}} {}\n",
                        p.spec.id, standing.keys
                    ));
                    if let Some(why) = &standing.failing {
                        providers.push_str(&format!(
                            "identity_provider_stale{{provider=\"{}\"}} 1 # {}\n",
                            p.spec.id,
                            why.replace('\n', " ")
                        ));
                    }
                }
                (
                    if ready { 200 } else { 503 },
                    format!(
                        "{}\npubsub_sessions {}\nkafka_clients {}\nkafka_broker_fetches {}\n{providers}",
                        if ready { "ready" } else { "not ready: an identity provider has no keys" },
                        self.pubsub.active_sessions(),
                        self.pubsub.pool().client_count(),
                        self.pubsub.pool().broker_fetches()
                    ),
                )
            }
            _ => (
                404,
                "not found: try /healthz, /readyz or /metrics\n".to_string(),
            ),
        };
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .header("content-length", body.len())
            .body(body.into_bytes())
            .unwrap_or_default()
    }
}
