//! `jwt-auth`: callers present a JSON Web Token signed for a consumer, in the `Authorization`
//! header (`Bearer <token>`), a query parameter (browsers' WebSocket handshakes) or, where the
//! route opts in and lists the browser origins it trusts, a cookie. The
//! token's `key` claim (or `iss`) names the consumer; its signature is checked with that
//! consumer's secret (HS256/HS512) or public key (RS256/ES256), and `exp` (required) and `nbf`
//! are enforced. A WebSocket (pub/sub session or relayed tunnel) opened with a token ends when the
//! token's `exp` passes. Anything else is refused with 401 before upstreams, upgrades or Kafka.

use super::Plugin;
use crate::ctx::RequestCtx;
use crate::error::StartupError;
use crate::request::{cookie, query_param};
use crate::respond::{self, Answer};
use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::proxy::Session;
use std::collections::HashMap;
use std::sync::Arc;
use streamgate_config::model::{Consumer, JwtAuth};

/// A consumer with the key that verifies its tokens.
pub(crate) struct JwtConsumer {
    consumer: Arc<Consumer>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for JwtConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConsumer")
            .field("consumer", &self.consumer.username)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Consumers by their JWT `key` claim.
pub(crate) type JwtIndex = Arc<HashMap<String, JwtConsumer>>;

/// Builds the JWT index; a public key that does not parse stops the start.
pub(crate) fn jwt_index(consumers: &[Arc<Consumer>]) -> Result<JwtIndex, StartupError> {
    let mut index = HashMap::new();
    for consumer in consumers {
        let Some(jwt) = &consumer.jwt else { continue };
        let bad = |e: jsonwebtoken::errors::Error| StartupError::Consumer {
            username: consumer.username.clone(),
            why: format!("jwt-auth public_key_file: {e}"),
        };
        let (algorithm, key) = match jwt.algorithm.as_str() {
            "HS512" => (Algorithm::HS512, DecodingKey::from_secret(&jwt.verify_with)),
            "RS256" => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(&jwt.verify_with).map_err(bad)?,
            ),
            "ES256" => (
                Algorithm::ES256,
                DecodingKey::from_ec_pem(&jwt.verify_with).map_err(bad)?,
            ),
            _ => (Algorithm::HS256, DecodingKey::from_secret(&jwt.verify_with)),
        };
        index.insert(
            jwt.key.clone(),
            JwtConsumer {
                consumer: Arc::clone(consumer),
                algorithm,
                key,
            },
        );
    }
    Ok(Arc::new(index))
}

/// The `jwt-auth` plugin of one route.
pub(crate) struct JwtAuthPlugin {
    settings: JwtAuth,
    consumers: JwtIndex,
}

impl std::fmt::Debug for JwtAuthPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthPlugin")
            .field("settings", &self.settings)
            .field("consumers", &self.consumers.len())
            .finish()
    }
}

impl JwtAuthPlugin {
    /// The plugin for a route.
    pub(crate) fn new(settings: JwtAuth, consumers: JwtIndex) -> Self {
        Self {
            settings,
            consumers,
        }
    }

    fn token(&self, session: &Session) -> Option<String> {
        let req = session.req_header();
        let header = req
            .headers
            .get(self.settings.header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .unwrap_or(v)
                    .trim()
                    .to_string()
            });
        let query = || {
            req.uri
                .query()
                .and_then(|q| query_param(q, &self.settings.query))
        };
        let cookie = || {
            let name = self.settings.cookie.as_deref()?;
            cookie(req, name).map(str::to_string)
        };
        header
            .filter(|t| !t.is_empty())
            .or_else(query)
            .or_else(cookie)
    }

    /// Which consumer a token names, before its signature is checked.
    fn claimed_key(token: &str) -> Result<String, &'static str> {
        let mut peek = Validation::default();
        peek.insecure_disable_signature_validation();
        peek.validate_exp = false;
        peek.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_secret(b""), &peek)
                .map_err(|_| "JWT token invalid")?;
        let claim = |name: &str| {
            data.claims
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        claim("key")
            .or_else(|| claim("iss"))
            .ok_or("missing user key in JWT token")
    }
}

/// When a verified token's `exp` claim (seconds since the epoch, required) passes.
fn expiry(claims: &serde_json::Value) -> Option<std::time::SystemTime> {
    let exp = claims.get("exp")?.as_f64()?;
    let exp = std::time::Duration::try_from_secs_f64(exp).ok()?;
    std::time::UNIX_EPOCH.checked_add(exp)
}

#[async_trait]
impl Plugin for JwtAuthPlugin {
    fn name(&self) -> &'static str {
        "jwt-auth"
    }

    async fn access(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        let Some(token) = self.token(session) else {
            let answer = Answer::auth(401, "Missing JWT token in request");
            respond::send(session, ctx, answer).await?;
            return Ok(true);
        };
        let verdict = Self::claimed_key(&token).and_then(|key| {
            let entry = self
                .consumers
                .get(&key)
                .ok_or("Invalid user key in JWT token")?;
            let mut validation = Validation::new(entry.algorithm);
            validation.validate_nbf = true;
            jsonwebtoken::decode::<serde_json::Value>(&token, &entry.key, &validation)
                .map(|data| {
                    let expires = expiry(&data.claims);
                    (Arc::clone(&entry.consumer), expires, data.claims)
                })
                .map_err(|_| "failed to verify jwt")
        });
        match verdict {
            Ok((consumer, expires, claims)) => {
                ctx.consumer = Some(consumer);
                ctx.credential_expires = expires;
                ctx.claims = Some(Arc::new(claims));
                Ok(false)
            }
            Err(message) => {
                respond::send(session, ctx, Answer::auth(401, message)).await?;
                Ok(true)
            }
        }
    }
}
