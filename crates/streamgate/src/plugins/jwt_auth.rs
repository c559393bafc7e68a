//! `jwt-auth`: callers present a JSON Web Token, in the `Authorization` header (`Bearer
//! <token>`), a query parameter (browsers' WebSocket handshakes) or, where the route opts in and
//! lists the browser origins it trusts, a cookie. Two kinds of token sign a caller in:
//!
//! - a token of an identity provider (`[[identity_providers]]`, picked by the token's `iss`):
//!   verified with the provider's published key its `kid` names (see [`super::identity`]), with
//!   the `alg` among the provider's algorithms (never `none`, never an HMAC), `iss`, `aud`,
//!   `exp` (required) and `nbf` checked with the provider's leeway; the caller is the consumer
//!   that names the provider, and the token's claims are the user's;
//! - a token signed for one consumer: its `key` claim (or `iss`) names the consumer, whose secret
//!   (HS256/HS512) or public key (RS256/ES256) verifies it; `exp` (required) and `nbf` enforced.
//!
//! A WebSocket (pub/sub session or relayed tunnel) opened with a token ends when the token's
//! `exp` passes. Anything else is refused with 401 before upstreams, upgrades or Kafka.

use super::identity::Provider;
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

/// Who a token may sign in as: consumers by their JWT `key` claim, and identity providers (with
/// the consumer that names each) by issuer.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    by_key: HashMap<String, JwtConsumer>,
    by_issuer: HashMap<String, (Arc<Provider>, Arc<Consumer>)>,
}

/// The routes' shared [`Tokens`].
pub(crate) type JwtIndex = Arc<Tokens>;

/// Builds the JWT index; a public key that does not parse stops the start.
pub(crate) fn jwt_index(
    consumers: &[Arc<Consumer>],
    providers: &[Arc<Provider>],
) -> Result<JwtIndex, StartupError> {
    let mut by_issuer = HashMap::new();
    for consumer in consumers {
        let Some(id) = &consumer.jwt_provider else {
            continue;
        };
        if let Some(provider) = providers.iter().find(|p| &p.spec.id == id) {
            by_issuer.insert(
                provider.spec.issuer.clone(),
                (Arc::clone(provider), Arc::clone(consumer)),
            );
        }
    }
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
    Ok(Arc::new(Tokens {
        by_key: index,
        by_issuer,
    }))
}

/// The `jwt-auth` plugin of one route.
pub(crate) struct JwtAuthPlugin {
    settings: JwtAuth,
    tokens: JwtIndex,
}

impl std::fmt::Debug for JwtAuthPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthPlugin")
            .field("settings", &self.settings)
            .field("consumers", &self.tokens.by_key.len())
            .field("providers", &self.tokens.by_issuer.len())
            .finish()
    }
}

impl JwtAuthPlugin {
    /// The plugin for a route.
    pub(crate) fn new(settings: JwtAuth, tokens: JwtIndex) -> Self {
        Self { settings, tokens }
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

    /// What a token claims to be, before its signature is checked: its `key` and `iss`.
    fn claimed(token: &str) -> Result<(Option<String>, Option<String>), &'static str> {
        let mut peek = Validation::default();
        peek.insecure_disable_signature_validation();
        peek.validate_exp = false;
        peek.validate_aud = false;
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
        Ok((claim("key"), claim("iss")))
    }

    /// Verifies a token signed by a consumer's own key.
    fn verify_own(&self, token: &str, key: &str) -> Result<Verified, &'static str> {
        let entry = self
            .tokens
            .by_key
            .get(key)
            .ok_or("Invalid user key in JWT token")?;
        let mut validation = Validation::new(entry.algorithm);
        validation.validate_nbf = true;
        jsonwebtoken::decode::<serde_json::Value>(token, &entry.key, &validation)
            .map(|data| Verified {
                consumer: Arc::clone(&entry.consumer),
                expires: expiry(&data.claims),
                claims: data.claims,
            })
            .map_err(|_| "failed to verify jwt")
    }
}

/// A token's verdict: who it signs in, until when, with which claims.
struct Verified {
    consumer: Arc<Consumer>,
    expires: Option<std::time::SystemTime>,
    claims: serde_json::Value,
}

/// Verifies a token of an identity provider: the algorithm first (so `none` and HMACs never
/// reach a key), then the key its `kid` names (refetched once if unknown), then signature,
/// issuer, audience, expiry and not-before.
async fn verify_provided(
    token: &str,
    provider: &Provider,
    consumer: &Arc<Consumer>,
) -> Result<Verified, String> {
    let spec = &provider.spec;
    let header = jsonwebtoken::decode_header(token).map_err(|_| "JWT token invalid".to_string())?;
    if !provider.algorithms.contains(&header.alg) {
        return Err(format!(
            "algorithm {:?} is not accepted for tokens of {:?}",
            header.alg, spec.issuer
        ));
    }
    let kid = header
        .kid
        .as_deref()
        .ok_or("the token names no key (kid)")?;
    let mut keys = provider.keys();
    if !keys.keys.contains_key(kid) {
        keys = provider.refetch_for_unknown_key().await;
    }
    let key = keys
        .keys
        .get(kid)
        .ok_or_else(|| format!("unknown key id {kid:?} for {:?}", spec.issuer))?;
    if key.algorithm.is_some_and(|a| a != header.alg) {
        return Err(format!("key {kid:?} is not for {:?}", header.alg));
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_nbf = true;
    validation.leeway = spec.leeway.as_secs();
    validation.set_issuer(&[spec.issuer.as_str()]);
    validation.set_audience(&spec.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation).map_err(
        |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                "the token has expired".to_string()
            }
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                "the token is not valid yet (nbf)".to_string()
            }
            jsonwebtoken::errors::ErrorKind::InvalidAudience => format!(
                "the token is not for this gateway (aud is not one of {:?})",
                spec.audiences
            ),
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer".to_string(),
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim) => {
                format!("the token has no {claim} claim")
            }
            _ => "failed to verify jwt".to_string(),
        },
    )?;
    Ok(Verified {
        consumer: Arc::clone(consumer),
        expires: expiry(&data.claims),
        claims: data.claims,
    })
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
        let verdict = match Self::claimed(&token) {
            Err(message) => Err(message.to_string()),
            // A consumer's own `key` claim first, then the issuer: an identity provider's, or
            // (as before providers) a consumer key given as `iss`.
            Ok((Some(key), _)) if self.tokens.by_key.contains_key(&key) => {
                self.verify_own(&token, &key).map_err(str::to_string)
            }
            Ok((_, Some(iss))) if self.tokens.by_issuer.contains_key(&iss) => {
                let (provider, consumer) = &self.tokens.by_issuer[&iss];
                verify_provided(&token, provider, consumer).await
            }
            Ok((key, iss)) => match key.or(iss) {
                Some(key) => self.verify_own(&token, &key).map_err(str::to_string),
                None => Err("missing user key in JWT token".to_string()),
            },
        };
        match verdict {
            Ok(verified) => {
                ctx.consumer = Some(verified.consumer);
                ctx.credential_expires = verified.expires;
                ctx.claims = Some(Arc::new(verified.claims));
                Ok(false)
            }
            Err(message) => {
                respond::send(session, ctx, Answer::auth(401, &message)).await?;
                Ok(true)
            }
        }
    }
}
