//! `key-auth`: callers present a consumer's key in a header or (for browsers, which cannot set
//! headers on a WebSocket handshake) a query parameter. A missing or unknown key is refused with
//! 401 before anything else happens: no upstream is contacted, no WebSocket is upgraded, Kafka is
//! not touched. The recognised consumer goes on the request context, where pub/sub sessions
//! apply its topic allow-list.

use super::Plugin;
use crate::proxy::{respond_message, RequestCtx};
use async_trait::async_trait;
use pingora::proxy::Session;
use std::collections::HashMap;
use std::sync::Arc;
use streamgate_config::model::{Consumer, KeyAuth};

/// Consumers by their key.
pub type KeyIndex = Arc<HashMap<String, Arc<Consumer>>>;

/// The `key-auth` plugin of one route.
pub struct KeyAuthPlugin {
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
    pub fn new(settings: KeyAuth, consumers: KeyIndex) -> Self {
        Self {
            settings,
            consumers,
        }
    }
}

/// Builds the key index of all consumers with a `key-auth` key.
pub fn key_index(consumers: &[Arc<Consumer>]) -> KeyIndex {
    Arc::new(
        consumers
            .iter()
            .filter_map(|c| c.key.clone().map(|k| (k, Arc::clone(c))))
            .collect(),
    )
}

/// The value of query parameter `name`, percent-decoded.
pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string without parameter `name`.
fn without_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect::<Vec<_>>()
        .join("&")
}

#[async_trait]
impl Plugin for KeyAuthPlugin {
    fn name(&self) -> &'static str {
        "key-auth"
    }

    async fn access(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        ctx.secret_query_param = Some(self.settings.query.clone());
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
            ctx.status = Some(401);
            respond_message(session, ctx, 401, "Missing API key found in request").await?;
            return Ok(true);
        };
        let Some(consumer) = self.consumers.get(&key) else {
            ctx.status = Some(401);
            respond_message(session, ctx, 401, "Invalid API key in request").await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_and_decoded() {
        assert_eq!(
            query_param("a=1&apikey=s%3Dcret%2B&b=2", "apikey").as_deref(),
            Some("s=cret+")
        );
        assert_eq!(query_param("apikey=a+b", "apikey").as_deref(), Some("a b"));
        assert_eq!(query_param("xapikey=1", "apikey"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(without_param("a=1&apikey=s&b=2", "apikey"), "a=1&b=2");
    }
}
