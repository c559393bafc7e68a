//! Route plugins: per-route behaviour that runs at fixed phases of a request.
//!
//! Each route has an ordered list of plugins built from its `[routes.plugins.NAME]` tables when
//! the route table is built. A plugin reads the request and puts what it learns on the
//! per-request context ([`RequestCtx`]: the consumer, headers every answer carries), where the
//! proxy or the pub/sub session picks it up; it can also answer the request itself. Phases
//! mirror Pingora's `ProxyHttp`, and every method has a no-op default so a plugin implements
//! only what it uses.
//!
//! `kafka-proxy` is a settings table, not a plugin: the route table resolves it once into the
//! route's Kafka target ([`crate::pubsub::KafkaTarget`]).

mod cors;
mod identity;
mod jwt_auth;
mod key_auth;
mod limit_req;

pub(crate) use identity::Providers;
pub(crate) use jwt_auth::{jwt_index, JwtIndex};
pub(crate) use key_auth::{key_index, KeyIndex};

use cors::CorsPlugin;
use jwt_auth::JwtAuthPlugin;
use key_auth::KeyAuthPlugin;
use limit_req::LimitReqPlugin;

use crate::ctx::RequestCtx;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::sync::Arc;
use streamgate_config::model::Route;

/// A route plugin.
#[async_trait]
pub(crate) trait Plugin: Send + Sync + std::fmt::Debug {
    /// The name used in the config file, e.g. `kafka-proxy`.
    fn name(&self) -> &'static str;

    /// Runs once the route matched, before the request is proxied, relayed or upgraded to
    /// pub/sub, in the route's plugin order.
    ///
    /// It may read the request and put settings on `ctx`. If it sends a response itself (to
    /// refuse the request, say), it returns `Ok(true)` and no later plugin or phase runs;
    /// `Ok(false)` lets the request go on.
    async fn access(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> pingora::Result<bool> {
        Ok(false)
    }

    /// Runs just before an HTTP request is sent to the upstream node, relayed upgrades included
    /// (not for pub/sub routes).
    ///
    /// It may change the request headers that the node receives.
    async fn before_proxy(
        &self,
        _session: &mut Session,
        _upstream_request: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// Runs when an upstream's response header arrives, before it goes to the client (HTTP
    /// routes; not for answers the gateway or a plugin wrote itself).
    ///
    /// It may change the response headers the client receives.
    fn response(
        &self,
        _session: &Session,
        _response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        Ok(())
    }
}

/// The plugins a route turns on, in the order they run: CORS first (browsers send preflights
/// without credentials), then authentication, so a refused request costs nothing else; then
/// rate limits (which may count per consumer).
pub(crate) fn for_route(route: &Route, keys: &KeyIndex, tokens: &JwtIndex) -> Vec<Arc<dyn Plugin>> {
    let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
    if let Some(settings) = &route.plugins.cors {
        plugins.push(Arc::new(CorsPlugin::new(settings.clone())));
    }
    if let Some(settings) = &route.plugins.jwt_auth {
        plugins.push(Arc::new(JwtAuthPlugin::new(
            settings.clone(),
            Arc::clone(tokens),
        )));
    }
    if let Some(settings) = &route.plugins.key_auth {
        plugins.push(Arc::new(KeyAuthPlugin::new(
            settings.clone(),
            Arc::clone(keys),
        )));
    }
    if let Some(settings) = &route.plugins.limit_req {
        plugins.push(Arc::new(LimitReqPlugin::new(settings.clone())));
    }
    plugins
}
