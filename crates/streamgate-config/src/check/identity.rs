//! `[[identity_providers]]`: issuers, key-set URLs, audiences, algorithms and refresh bounds.

use super::*;
use crate::model::{IdentityProvider, PROVIDER_ALGORITHMS};

pub(super) fn build_identity_providers(
    c: &mut Checker<'_>,
    list: Vec<::toml::Spanned<t::IdentityProviderToml>>,
) -> Vec<Arc<IdentityProvider>> {
    let mut ids = HashSet::new();
    let mut issuers = HashSet::new();
    let mut out = Vec::new();
    for (i, spanned) in list.into_iter().enumerate() {
        let span = spanned.span();
        let span = Some(&span);
        let key = format!("identity_providers[{i}]");
        let t = spanned.into_inner();
        let before = c.problems.len();
        let id = t.id.0;
        if id.is_empty() || !ids.insert(id.clone()) {
            c.at(
                span,
                format!("{key}.id"),
                format!("empty or duplicate provider id {id:?}"),
                "give every [[identity_providers]] entry its own id",
            );
        }
        let issuer = t.issuer.0;
        web_url(c, span, &format!("{key}.issuer"), &issuer);
        if !issuers.insert(issuer.clone()) {
            c.at(
                span,
                format!("{key}.issuer"),
                format!("another provider has the issuer {issuer:?}, so a token could not tell them apart"),
                "list each issuer once",
            );
        }
        let jwks_url = t.jwks_url.map(|u| u.0);
        if let Some(url) = &jwks_url {
            web_url(c, span, &format!("{key}.jwks_url"), url);
        }
        let audiences: Vec<String> = t
            .audiences
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.0)
            .collect();
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            c.at(
                span,
                format!("{key}.audiences"),
                "no audiences: a token the provider issued for any other application would sign in here".into(),
                "list the `aud` values of tokens meant for this gateway, e.g. audiences = [\"streamgate\"] (the client id in Keycloak, the API identifier in Auth0)",
            );
        }
        let algorithms: Vec<String> = match t.algorithms {
            None => PROVIDER_ALGORITHMS.iter().map(|a| a.to_string()).collect(),
            Some(list) => list
                .into_iter()
                .enumerate()
                .filter_map(|(j, a)| {
                    let found = PROVIDER_ALGORITHMS
                        .iter()
                        .find(|known| known.eq_ignore_ascii_case(&a.0));
                    if found.is_none() {
                        c.at(
                            span,
                            format!("{key}.algorithms[{j}]"),
                            format!("{:?} is not an algorithm a key set verifies", a.0),
                            "use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA (never none, never an HMAC)",
                        );
                    }
                    found.map(|a| a.to_string())
                })
                .collect(),
        };
        if algorithms.is_empty() {
            c.at(
                span,
                format!("{key}.algorithms"),
                "no algorithms: every token would be refused".into(),
                "list the algorithms the provider signs with, or leave algorithms out for all it may use",
            );
        }
        let number = |c: &mut Checker<'_>, name: &str, value: Option<i64>, default, min, max| {
            in_range(
                c,
                span,
                &format!("{key}.{name}"),
                value.unwrap_or(default),
                min,
                max,
            )
        };
        let leeway = number(c, "leeway_seconds", t.leeway_seconds, 30, 0, 300);
        let refresh_min = number(c, "refresh_min_seconds", t.refresh_min_seconds, 60, 1, 3600);
        let refresh_max = number(
            c,
            "refresh_max_seconds",
            t.refresh_max_seconds,
            3600,
            1,
            86_400,
        );
        if let (Some(min), Some(max)) = (refresh_min, refresh_max) {
            if max < min {
                c.at(
                    span,
                    format!("{key}.refresh_max_seconds"),
                    format!("{max} is below refresh_min_seconds ({min})"),
                    "make the longest interval at least the shortest",
                );
            }
        }
        let timeout = number(c, "timeout_ms", t.timeout_ms, 5000, 100, 60_000);
        let max_document_bytes = number(
            c,
            "max_document_bytes",
            t.max_document_bytes,
            256 * 1024,
            1024,
            16 * 1024 * 1024,
        );
        let ca_file = t
            .ca_file
            .and_then(|f| readable_file(c, span, &format!("{key}.ca_file"), &f.0));
        if c.problems.len() != before {
            continue;
        }
        let (
            Some(leeway),
            Some(refresh_min),
            Some(refresh_max),
            Some(timeout),
            Some(max_document_bytes),
        ) = (
            leeway,
            refresh_min,
            refresh_max,
            timeout,
            max_document_bytes,
        )
        else {
            continue;
        };
        out.push(Arc::new(IdentityProvider {
            id,
            issuer,
            jwks_url,
            audiences,
            algorithms,
            leeway: Duration::from_secs(leeway as u64),
            refresh_min: Duration::from_secs(refresh_min as u64),
            refresh_max: Duration::from_secs(refresh_max as u64),
            timeout: Duration::from_millis(timeout as u64),
            max_document_bytes: max_document_bytes as usize,
            ca_file,
            start_without_keys: t.start_without_keys.unwrap_or(false),
        }));
    }
    out
}

/// An address keys are fetched from: HTTPS, or plain HTTP only to this machine (a provider
/// beside the gateway, or a test's): keys fetched in the clear could be swapped on the way.
fn web_url(c: &mut Checker<'_>, span: Option<&std::ops::Range<usize>>, key: &str, value: &str) {
    let problem = match url::Url::parse(value) {
        Err(e) => Some(format!("{value:?} is not a URL ({e})")),
        Ok(u) if u.scheme() == "https" && u.host().is_some() => None,
        Ok(u) if u.scheme() == "http" => {
            let loopback = match u.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            (!loopback).then(|| format!("{value:?} is plain HTTP to another machine"))
        }
        Ok(_) => Some(format!("{value:?} is not an https:// URL")),
    };
    if let Some(message) = problem {
        c.at(
            span,
            key.to_string(),
            message,
            "use the provider's https:// address (plain http:// only to 127.0.0.1, [::1] or localhost)",
        );
    }
}
