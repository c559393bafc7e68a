//! The external shape of `streamgate.toml`, exactly as users write it.
//!
//! These structs mirror the file and nothing else: serde fills them, unknown keys are rejected, and
//! `${NAME}` in any string is replaced from the environment as it is read. No checks across keys
//! happen here; [`crate::model`] turns this shape into the checked model the gateway runs on.

use serde::{de, Deserialize, Deserializer};
use std::collections::BTreeMap;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub server: ServerToml,
    pub admin: Option<AdminToml>,
    #[serde(default)]
    pub upstreams: Vec<Spanned<UpstreamToml>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteToml>>,
    #[serde(default)]
    pub consumers: Vec<Spanned<ConsumerToml>>,
    #[serde(default)]
    pub identity_providers: Vec<Spanned<IdentityProviderToml>>,
}

/// `[[identity_providers]]`: a provider whose published keys verify `jwt-auth` tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityProviderToml {
    pub id: Text,
    pub issuer: Text,
    pub jwks_url: Option<Text>,
    pub audiences: Option<Vec<Text>>,
    pub algorithms: Option<Vec<Text>>,
    pub leeway_seconds: Option<i64>,
    pub refresh_min_seconds: Option<i64>,
    pub refresh_max_seconds: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub max_document_bytes: Option<i64>,
    pub ca_file: Option<Text>,
    pub start_without_keys: Option<bool>,
}

/// `[[consumers]]`: who may call routes that turn an auth plugin on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerToml {
    pub username: Text,
    pub topics: Option<Vec<Text>>,
    pub record_filter: Option<RecordFilterToml>,
    #[serde(default)]
    pub plugins: ConsumerPluginsToml,
}

/// `[consumers.record_filter]`: the only records this consumer may receive.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordFilterToml {
    pub key_prefix: Option<Text>,
    pub headers: Option<std::collections::BTreeMap<String, Text>>,
}

/// `[consumers.plugins.NAME]`: a consumer's credentials, one table per auth plugin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerPluginsToml {
    #[serde(rename = "key-auth")]
    pub key_auth: Option<ConsumerKeyAuthToml>,
    #[serde(rename = "jwt-auth")]
    pub jwt_auth: Option<ConsumerJwtToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerJwtToml {
    pub key: Option<Text>,
    pub provider: Option<Text>,
    pub algorithm: Option<Text>,
    pub secret: Option<Text>,
    pub public_key_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerKeyAuthToml {
    pub key: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerToml {
    pub listen: Option<Vec<Text>>,
    #[serde(default)]
    pub tls_listen: Vec<TlsListenToml>,
    pub threads: Option<i64>,
    pub grace_period_seconds: Option<i64>,
    pub graceful_shutdown_timeout_seconds: Option<i64>,
    pub log_format: Option<Text>,
    pub l4_read_buffer_bytes: Option<i64>,
    pub upgrade_sock: Option<Text>,
    pub reload_on_change: Option<bool>,
    pub normalize_uri_like_servlet: Option<bool>,
    pub trusted_proxies: Option<Vec<Text>>,
    pub limits: Option<LimitsToml>,
}

/// `[server.limits]`: bounds on what clients may hold at once.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsToml {
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub max_sessions_per_consumer: Option<i64>,
    pub max_request_header_bytes: Option<i64>,
    pub max_request_body_bytes: Option<i64>,
    pub max_tunnel_seconds: Option<i64>,
    pub max_auth_failures_per_minute: Option<i64>,
    pub max_queued_answer_bytes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsListenToml {
    pub address: Text,
    pub cert_file: Text,
    pub key_file: Text,
    pub http2: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminToml {
    pub listen: Text,
    pub allow_remote: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamToml {
    pub id: Text,
    pub scheme: Option<Text>,
    pub nodes: BTreeMap<String, i64>,
    #[serde(rename = "type")]
    pub balance: Option<Text>,
    pub hash_on: Option<Text>,
    pub key: Option<Text>,
    pub timeout: Option<TimeoutToml>,
    pub retries: Option<i64>,
    pub pass_host: Option<Text>,
    pub upstream_host: Option<Text>,
    pub tls: Option<UpstreamTlsToml>,
    pub health_check: Option<HealthCheckToml>,
    pub broker_fetch_wait_ms: Option<i64>,
    pub max_decompressed_bytes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutToml {
    pub connect: Option<f64>,
    pub send: Option<f64>,
    pub read: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsToml {
    pub verify: Option<bool>,
    pub ca_file: Option<Text>,
    pub sni: Option<Text>,
    pub client_cert_file: Option<Text>,
    pub client_key_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckToml {
    pub path: Option<Text>,
    pub interval_seconds: Option<f64>,
    pub timeout_seconds: Option<f64>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteToml {
    pub id: Text,
    pub uri: Option<Text>,
    pub uris: Option<Vec<Text>>,
    pub hosts: Option<Vec<Text>>,
    pub methods: Option<Vec<Text>>,
    pub priority: Option<i64>,
    pub upstream_id: Text,
    #[serde(default)]
    pub plugins: PluginsToml,
}

/// `[routes.plugins.NAME]`: one optional table per known plugin, so a misspelt name is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PluginsToml {
    #[serde(rename = "kafka-proxy")]
    pub kafka_proxy: Option<KafkaProxyToml>,
    #[serde(rename = "key-auth")]
    pub key_auth: Option<KeyAuthToml>,
    #[serde(rename = "jwt-auth")]
    pub jwt_auth: Option<JwtAuthToml>,
    #[serde(rename = "limit-req")]
    pub limit_req: Option<LimitReqToml>,
    pub cors: Option<CorsToml>,
}

/// `[routes.plugins.cors]`: which browser origins may call an HTTP route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorsToml {
    pub allow_origins: Option<Vec<Text>>,
    pub allow_methods: Option<Vec<Text>>,
    pub allow_headers: Option<Vec<Text>>,
    pub expose_headers: Option<Vec<Text>>,
    pub max_age_seconds: Option<i64>,
    pub allow_credentials: Option<bool>,
}

/// `[routes.plugins.limit-req]`: a request rate per client, consumer or route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitReqToml {
    pub rate: f64,
    pub burst: Option<f64>,
    pub key: Option<Text>,
    pub rejected_code: Option<i64>,
}

/// `[routes.plugins.jwt-auth]`: callers must present a token signed for a consumer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtAuthToml {
    pub header: Option<Text>,
    pub query: Option<Text>,
    pub cookie: Option<Text>,
}

/// `[routes.plugins.key-auth]`: callers must present a consumer's key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyAuthToml {
    pub header: Option<Text>,
    pub query: Option<Text>,
    pub hide_credentials: Option<bool>,
}

/// `[routes.plugins.kafka-proxy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KafkaProxyToml {
    pub sasl: Option<SaslToml>,
    pub topics: Option<Vec<Text>>,
    pub max_frame_bytes: Option<i64>,
    pub fetch_max_bytes: Option<i64>,
    pub fetch_max_wait_ms: Option<i64>,
    pub socket_timeout_ms: Option<i64>,
    pub max_in_flight: Option<i64>,
    pub allowed_origins: Option<Vec<Text>>,
    pub max_commands_per_second: Option<i64>,
    pub idle_timeout_ms: Option<i64>,
    pub max_session_seconds: Option<i64>,
    pub send_timeout_ms: Option<i64>,
    pub max_subscriptions: Option<i64>,
    pub key_prefix_from_claim: Option<Text>,
    pub key_prefix_delimiter: Option<Text>,
    pub isolation: Option<Text>,
    pub group_prefix: Option<Text>,
    pub allowed_groups: Option<Vec<Text>>,
    pub group_from_claim: Option<Text>,
    pub group_session_timeout_ms: Option<i64>,
    pub auto_commit_interval_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SaslToml {
    pub mechanism: Option<Text>,
    pub username: Text,
    pub password: Text,
}

/// A string value with `${NAME}` references replaced from the environment.
///
/// Expansion happens while deserializing, so a missing variable is reported with the line and key
/// of the string that names it, and a value can never inject TOML syntax.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Text(pub String);

impl std::fmt::Debug for Text {
    // Values may hold expanded secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Text(..)")
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        expand_env(&raw, |name| std::env::var(name).ok())
            .map(Text)
            .map_err(de::Error::custom)
    }
}

/// Replaces each `${NAME}` in `raw` with `lookup(NAME)`; `$${` stands for a literal `${`.
pub(crate) fn expand_env(
    raw: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(literal) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(reference) = after.strip_prefix("${") {
            let Some(end) = reference.find('}') else {
                return Err(format!(
                    "unclosed `${{` in {raw:?}: write `${{NAME}}` for an environment variable, or `$${{` for a literal `${{`"
                ));
            };
            let name = &reference[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable reference: names use letters, digits and `_`"
                ));
            }
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(format!(
                        "environment variable `{name}` is not set (referenced as `${{{name}}}`); export it before starting the gateway"
                    ))
                }
            }
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand_env;

    fn env(name: &str) -> Option<String> {
        (name == "PASS").then(|| "s3cret".to_string())
    }

    #[test]
    fn expands_references_and_keeps_the_rest() {
        assert_eq!(expand_env("a-${PASS}-b", env).as_deref(), Ok("a-s3cret-b"));
        assert_eq!(expand_env("$5 and $x", env).as_deref(), Ok("$5 and $x"));
        assert_eq!(expand_env("$${PASS}", env).as_deref(), Ok("${PASS}"));
    }

    #[test]
    fn missing_or_malformed_references_are_named() {
        let missing = expand_env("${NOPE}", env).unwrap_err();
        assert!(missing.contains("`NOPE` is not set"), "{missing}");
        assert!(expand_env("${PASS", env).unwrap_err().contains("unclosed"));
        assert!(expand_env("${A-B}", env)
            .unwrap_err()
            .contains("not a valid"));
    }
}
