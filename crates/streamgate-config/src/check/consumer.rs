//! `[[consumers]]`: names, keys, JWT credentials and topic allow-lists.

use super::*;
use crate::model::*;
use crate::toml as t;

pub(super) fn build_consumers(
    c: &mut Checker<'_>,
    list: Vec<::toml::Spanned<t::ConsumerToml>>,
) -> Vec<Arc<Consumer>> {
    let mut names = HashSet::new();
    let mut keys: HashSet<String> = HashSet::new();
    let mut jwt_keys: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for (i, spanned) in list.into_iter().enumerate() {
        let span = spanned.span();
        let span = Some(&span);
        let key = format!("consumers[{i}]");
        let t = spanned.into_inner();
        let before = c.problems.len();
        let username = t.username.0;
        if username.is_empty() {
            c.at(
                span,
                format!("{key}.username"),
                "empty username".into(),
                "name the consumer",
            );
        } else if !names.insert(username.clone()) {
            c.at(
                span,
                format!("{key}.username"),
                format!("duplicate consumer {username:?}"),
                "give every [[consumers]] entry its own username",
            );
        }
        let topics = t
            .topics
            .map(|list| topic_patterns(c, span, &format!("{key}.topics"), list));
        let api_key = t.plugins.key_auth.map(|k| k.key.0);
        if let Some(k) = &api_key {
            if k.len() < 8 {
                c.at(
                    span,
                    format!("{key}.plugins.key-auth.key"),
                    "the key is shorter than 8 characters: too easy to guess".into(),
                    "use a long random value, e.g. from `openssl rand -hex 24`, taken from the environment with \"${NAME}\"",
                );
            } else if !keys.insert(k.clone()) {
                c.at(
                    span,
                    format!("{key}.plugins.key-auth.key"),
                    "another consumer has the same key, so requests could not tell them apart"
                        .into(),
                    "give every consumer its own key",
                );
            }
        }
        let mut jwt_provider = None;
        let jwt = t.plugins.jwt_auth.and_then(|j| {
            let jk = format!("{key}.plugins.jwt-auth");
            if let Some(provider) = j.provider {
                if j.key.is_some() || j.algorithm.is_some() || j.secret.is_some() || j.public_key_file.is_some() {
                    c.at(
                        span,
                        jk,
                        "provider is given beside key, algorithm, secret or public_key_file".into(),
                        "a consumer's tokens come either from an identity provider (provider = \"ID\", its keys fetched) or from a key of its own (key and secret or public_key_file), not both",
                    );
                } else {
                    jwt_provider = Some(provider.0);
                }
                return None;
            }
            let Some(jwt_key) = j.key else {
                c.at(
                    span,
                    format!("{jk}.key"),
                    "missing key".into(),
                    "give the value of the `key` claim (or `iss`) this consumer's tokens carry, or provider = \"ID\" for tokens from an [[identity_providers]] entry",
                );
                return None;
            };
            let algorithm = j
                .algorithm
                .map(|a| a.0.to_ascii_uppercase())
                .unwrap_or_else(|| "HS256".into());
            let verify_with = match (algorithm.as_str(), j.secret, j.public_key_file) {
                ("HS256" | "HS512", Some(secret), None) if secret.0.len() >= 16 => {
                    Some(secret.0.into_bytes())
                }
                ("HS256" | "HS512", Some(_), None) => {
                    c.at(
                        span,
                        format!("{jk}.secret"),
                        "the secret is shorter than 16 characters".into(),
                        "use a long random secret from the environment (\"${NAME}\")",
                    );
                    None
                }
                ("RS256" | "ES256", None, Some(file)) => match std::fs::read(&file.0) {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        c.at(
                            span,
                            format!("{jk}.public_key_file"),
                            format!("cannot read {:?}: {e}", file.0),
                            "name the PEM public key that verifies this consumer's tokens",
                        );
                        None
                    }
                },
                ("HS256" | "HS512" | "RS256" | "ES256", _, _) => {
                    c.at(
                        span,
                        jk.clone(),
                        format!(
                            "{algorithm} needs {}",
                            if algorithm.starts_with("HS") {
                                "`secret` (and no public_key_file)"
                            } else {
                                "`public_key_file` (and no secret)"
                            }
                        ),
                        "set exactly the key material the algorithm uses",
                    );
                    None
                }
                (other, _, _) => {
                    c.at(
                        span,
                        format!("{jk}.algorithm"),
                        format!("unsupported algorithm {other:?}"),
                        "use HS256, HS512, RS256 or ES256",
                    );
                    None
                }
            }?;
            if !jwt_keys.insert(jwt_key.0.clone()) {
                c.at(
                    span,
                    format!("{jk}.key"),
                    format!("another consumer's tokens use the key {:?}", jwt_key.0),
                    "give every consumer its own jwt-auth key",
                );
                return None;
            }
            Some(JwtCredential {
                key: jwt_key.0,
                algorithm,
                verify_with,
            })
        });
        let record_filter = t.record_filter.and_then(|f| {
            let filter = RecordFilter {
                key_prefix: f.key_prefix.map(|p| p.0),
                headers: f
                    .headers
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            };
            if filter.key_prefix.as_deref().is_none_or(str::is_empty) && filter.headers.is_empty() {
                c.at(
                    span,
                    format!("{key}.record_filter"),
                    "an empty record filter lets every record through".into(),
                    "give key_prefix or headers, or remove record_filter",
                );
                return None;
            }
            Some(filter)
        });
        if c.problems.len() == before {
            out.push(Arc::new(Consumer {
                username,
                topics,
                key: api_key,
                jwt,
                jwt_provider,
                record_filter,
            }));
        }
    }
    out
}
