//! `[[identity_providers]]`: where tokens signed by an identity provider (Keycloak, Auth0, Okta,
//! Entra ID, Dex, Cognito) are verified from: the provider's published key set, fetched by URL.

use std::path::PathBuf;
use std::time::Duration;

/// The signature algorithms a provider's tokens may use. Never `none` and never an HMAC: a key
/// set holds public keys, and an HMAC "signed" with a public key proves nothing.
pub const PROVIDER_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// One identity provider whose tokens sign callers in as the consumer that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProvider {
    /// Unique name; a consumer's `jwt-auth` names it with `provider`.
    pub id: String,
    /// The exact `iss` of its tokens, which also picks this provider for a token.
    pub issuer: String,
    /// Where its key set (JWKS) is; `None`: found by OpenID discovery at
    /// `{issuer}/.well-known/openid-configuration` (`jwks_uri`).
    pub jwks_url: Option<String>,
    /// A token's `aud` must name one of these.
    pub audiences: Vec<String>,
    /// Accepted `alg` values, from [`PROVIDER_ALGORITHMS`].
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Keys are refetched no more often than this, also when a token names an unknown `kid`.
    pub refresh_min: Duration,
    /// ... and at least this often, whatever the provider's cache headers say.
    pub refresh_max: Duration,
    /// Bound on each fetch (connect, TLS, answer).
    pub timeout: Duration,
    /// A discovery or key-set document larger than this is refused.
    pub max_document_bytes: usize,
    /// CA certificates (PEM) that verify the provider's HTTPS; the system's roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Start even when the keys cannot be fetched at start-up (tokens are refused until they
    /// are); otherwise the start fails.
    pub start_without_keys: bool,
}
