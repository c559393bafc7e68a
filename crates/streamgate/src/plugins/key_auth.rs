//! `key-auth`: callers present a consumer's key in a header or (for browsers, which cannot set
//! headers on a WebSocket handshake) a query parameter. A missing or unknown key is refused with
//! 401 before anything else happens: no upstream is contacted, no WebSocket is upgraded, Kafka is
//! not touched. The recognised consumer goes on the request context, where pub/sub sessions
//! apply its topic allow-list.

use super::Plugin;
use crate::ctx::RequestCtx;
use crate::request::{query_param, without_param};
use crate::respond::{self, Answer};
use async_trait::async_trait;
use pingora::proxy::Session;
use std::collections::HashMap;
use std::sync::Arc;
use streamgate_config::model::{Consumer, KeyAuth};

/// Consumers by their key.
pub(crate) type KeyIndex = Arc<HashMap<String, Arc<Consumer>>>;

/// The `key-auth` plugin of one route.
pub(crate) struct KeyAuthPlugin {
    settings: KeyAuth,
    consumers: KeyIndex,
}

impl std::fmt::Debug for KeyAuthPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAuthPlugin")
            .field("settings", &self.settings)
            .field("consumers", &self.consumers.len())
            .finish()
    }
}

impl KeyAuthPlugin {
    /// The plugin for a route, over every consumer that has a key.
    pub(crate) fn new(settings: KeyAuth, consumers: KeyIndex) -> Self {
        Self {
            settings,
            consumers,
        }
    }
}

/// Builds the key index of all consumers with a `key-auth` key.
pub(crate) fn key_index(consumers: &[Arc<Consumer>]) -> KeyIndex {
    Arc::new(
        consumers
            .iter()
            .filter_map(|c| c.key.clone().map(|k| (k, Arc::clone(c))))
            .collect(),
    )
}

#[async_trait]
impl Plugin for KeyAuthPlugin {
    fn name(&self) -> &'static str {
        "key-auth"
    }

    async fn access(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        let req = session.req_header();
        let from_header = req
            .headers
            .get(self.settings.header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let from_query = || {
            req.uri
                .query()
                .and_then(|q| query_param(q, &self.settings.query))
        };
        let Some(key) = from_header.clone().or_else(from_query) else {
            let answer = Answer::auth(401, "Missing API key found in request");
            respond::send(session, ctx, answer).await?;
            return Ok(true);
        };
        let Some(consumer) = self.consumers.get(&key) else {
            respond::send(
                session,
                ctx,
                Answer::auth(401, "Invalid API key in request"),
            )
            .await?;
            return Ok(true);
        };
        ctx.consumer = Some(Arc::clone(consumer));
        if self.settings.hide_credentials {
            let req = session.req_header_mut();
            if from_header.is_some() {
                req.remove_header(self.settings.header.as_str());
            } else if let Some(query) = req.uri.query() {
                let rest = without_param(query, &self.settings.query);
                let path = req.uri.path();
                let uri = if rest.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}?{rest}")
                };
                if let Ok(uri) = uri.parse() {
                    req.set_uri(uri);
                }
            }
        }
        Ok(false)
    }
}
