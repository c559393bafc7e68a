//! `[[routes]]`: paths, hosts, methods, the upstream, and the plugins' tables.

use super::plugins::{build_cors, build_kafka_proxy};
use super::*;
use crate::model::*;
use crate::toml as t;

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

pub(super) fn build_route(
    c: &mut Checker<'_>,
    span: &std::ops::Range<usize>,
    key: &str,
    index: usize,
    r: t::RouteToml,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
) -> Option<Route> {
    let before = c.problems.len();
    let span = Some(span);
    if r.id.0.is_empty() {
        c.at(
            span,
            format!("{key}.id"),
            "empty id".into(),
            "give the route a name",
        );
    }
    let raw_paths: Vec<(String, String)> = match (r.uri, r.uris) {
        (Some(u), None) => vec![(format!("{key}.uri"), u.0)],
        (None, Some(list)) if !list.is_empty() => list
            .into_iter()
            .enumerate()
            .map(|(i, u)| (format!("{key}.uris[{i}]"), u.0))
            .collect(),
        (Some(_), Some(_)) => {
            c.at(
                span,
                format!("{key}.uris"),
                "both uri and uris are set".into(),
                "keep one of them",
            );
            vec![]
        }
        _ => {
            c.at(
                span,
                format!("{key}.uri"),
                "the route matches no path".into(),
                "add uri = \"/path\" (exact) or \"/path/*\" (prefix), or uris = [...]",
            );
            vec![]
        }
    };
    let mut paths = Vec::new();
    for (k, p) in raw_paths {
        let star = p.find('*');
        if !p.starts_with('/') || star.is_some_and(|s| s != p.len() - 1) {
            c.at(
                span,
                k,
                format!("{p:?} is not a route path"),
                "start with / and use * only at the end: \"/a/b\" (exact) or \"/a/*\" (prefix)",
            );
        } else if let Some(prefix) = p.strip_suffix('*') {
            paths.push(PathPattern::Prefix(prefix.to_string()));
        } else {
            paths.push(PathPattern::Exact(p));
        }
    }
    let hosts = r
        .hosts
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let h = h.0.to_ascii_lowercase();
            let ok = !h.is_empty()
                && !h.contains(['/', ':', ' '])
                && !h.chars().skip(1).any(|ch| ch == '*');
            if !ok || (h.starts_with('*') && !h.starts_with("*.")) {
                c.at(
                    span,
                    format!("{key}.hosts[{i}]"),
                    format!("{h:?} is not a host name"),
                    "write \"api.example.com\", or \"*.example.com\" for every subdomain (no port)",
                );
                return None;
            }
            Some(match h.strip_prefix('*') {
                Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
                None => HostPattern::Exact(h),
            })
        })
        .collect();
    let methods = r
        .methods
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let upper = m.0.to_ascii_uppercase();
            if METHODS.contains(&upper.as_str()) {
                Some(upper)
            } else {
                c.at(
                    span,
                    format!("{key}.methods[{i}]"),
                    format!("unknown method {:?}", m.0),
                    &format!("use one of {}", METHODS.join(", ")),
                );
                None
            }
        })
        .collect();
    let priority = r
        .priority
        .and_then(|p| {
            in_range(
                c,
                span,
                &format!("{key}.priority"),
                p,
                i32::MIN as i64,
                i32::MAX as i64,
            )
        })
        .unwrap_or(0) as i32;
    let upstream = upstreams.get(&r.upstream_id.0).cloned();
    if upstream.is_none() {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        c.at(
            span,
            format!("{key}.upstream_id"),
            format!("no upstream has id {:?}", r.upstream_id.0),
            &if known.is_empty() {
                "define it in an [[upstreams]] entry".to_string()
            } else {
                format!("use one of: {}", known.join(", "))
            },
        );
    }
    let key_auth = r.plugins.key_auth.map(|k| {
        let name = |value: Option<t::Text>, default: &str, field: &str, c: &mut Checker<'_>| {
            let v = value.map(|t| t.0).unwrap_or_else(|| default.to_string());
            if v.is_empty()
                || !v
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                c.at(
                    span,
                    format!("{key}.plugins.key-auth.{field}"),
                    format!("{v:?} is not a usable {field} name"),
                    "use letters, digits, `-` and `_`",
                );
            }
            v
        };
        KeyAuth {
            header: name(k.header, "apikey", "header", c).to_ascii_lowercase(),
            query: name(k.query, "apikey", "query", c),
            hide_credentials: k.hide_credentials.unwrap_or(false),
        }
    });
    let jwt_auth = r.plugins.jwt_auth.map(|j| JwtAuth {
        header: j
            .header
            .map(|t| t.0)
            .unwrap_or_else(|| "authorization".into())
            .to_ascii_lowercase(),
        query: j.query.map(|t| t.0).unwrap_or_else(|| "jwt".into()),
        cookie: j.cookie.map(|t| t.0),
    });
    let limit_req = r.plugins.limit_req.and_then(|l| {
        let at = format!("{key}.plugins.limit-req");
        let rate_ok = l.rate.is_finite() && l.rate > 0.0 && l.rate <= 1e9;
        if !rate_ok {
            c.at(
                span,
                format!("{at}.rate"),
                format!("{} is not a usable rate", l.rate),
                "use requests per second above 0, e.g. 10 or 0.5",
            );
        }
        let burst = l.burst.unwrap_or(l.rate.max(1.0));
        if !(burst.is_finite() && (0.0..=1e9).contains(&burst)) {
            c.at(
                span,
                format!("{at}.burst"),
                format!("{burst} is not a usable burst"),
                "use 0 or more requests allowed at once above the rate",
            );
        }
        let limit_key = match l.key.as_ref().map(|t| t.0.as_str()) {
            None | Some("remote_addr") => LimitKey::RemoteAddr,
            Some("consumer") => LimitKey::Consumer,
            Some("route") => LimitKey::Route,
            Some(other) => {
                c.at(
                    span,
                    format!("{at}.key"),
                    format!("unknown key {other:?}"),
                    "use \"remote_addr\", \"consumer\" or \"route\"",
                );
                LimitKey::RemoteAddr
            }
        };
        let rejected_code = match l.rejected_code {
            None => 429,
            Some(code) => in_range(c, span, &format!("{at}.rejected_code"), code, 400, 599)? as u16,
        };
        Some(LimitReq {
            rate: l.rate,
            burst: burst.max(1.0),
            key: limit_key,
            rejected_code,
        })
    });
    let cors = r
        .plugins
        .cors
        .map(|t| build_cors(c, span, &format!("{key}.plugins.cors"), t));
    let kafka_proxy = r
        .plugins
        .kafka_proxy
        .map(|k| build_kafka_proxy(c, span, &format!("{key}.plugins.kafka-proxy"), k));
    if let (Some(u), Some(_)) = (&upstream, &cors) {
        if u.scheme == Scheme::Kafka {
            c.at(
                span,
                format!("{key}.plugins.cors"),
                "CORS does not apply to WebSocket handshakes".into(),
                "remove it and list browser origins in the kafka-proxy key allowed_origins",
            );
        }
    }
    if let (Some(u), Some(_)) = (&upstream, &kafka_proxy) {
        if u.scheme != Scheme::Kafka {
            c.at(
                span,
                format!("{key}.plugins.kafka-proxy"),
                format!("upstream {:?} is not a kafka upstream", u.id),
                "point the route at an upstream with scheme = \"kafka\", or remove the plugin",
            );
        }
    }
    if let (
        Some(u),
        Some(JwtAuth {
            cookie: Some(_), ..
        }),
    ) = (&upstream, &jwt_auth)
    {
        // A cookie is sent with requests from any page, so only a route that names the
        // browser origins it trusts may accept one (cross-site request and WebSocket forgery).
        let origins_listed = match u.scheme {
            Scheme::Kafka => kafka_proxy
                .as_ref()
                .and_then(|k| k.as_ref())
                .is_some_and(|k| k.allowed_origins.is_some()),
            Scheme::Http | Scheme::Https => {
                cors.as_ref().is_some_and(|c| c.allow_origins.is_some())
            }
        };
        if !origins_listed {
            let fix = if u.scheme == Scheme::Kafka {
                "list the pages' origins in this route's kafka-proxy allowed_origins, or remove cookie"
            } else {
                "list the pages' origins in this route's cors allow_origins, or remove cookie"
            };
            c.at(
                span,
                format!("{key}.plugins.jwt-auth.cookie"),
                "a token cookie is sent with requests from any site, and this route lists no browser origins".into(),
                fix,
            );
        }
    }
    let claim_filter = kafka_proxy
        .as_ref()
        .and_then(|k| k.as_ref())
        .is_some_and(|k| k.key_prefix_from_claim.is_some());
    let claim_groups = kafka_proxy
        .as_ref()
        .and_then(|k| k.as_ref())
        .and_then(|k| k.groups.as_ref())
        .is_some_and(|g| g.from_claim.is_some());
    if claim_groups && jwt_auth.is_none() {
        c.at(
            span,
            format!("{key}.plugins.kafka-proxy.group_from_claim"),
            "the group namespace comes from a JWT claim, and this route verifies no JWT".into(),
            "add [routes.plugins.jwt-auth] to the route, or remove group_from_claim",
        );
    }
    if claim_filter && jwt_auth.is_none() {
        c.at(
            span,
            format!("{key}.plugins.kafka-proxy.key_prefix_from_claim"),
            "the record filter comes from a JWT claim, and this route verifies no JWT".into(),
            "add [routes.plugins.jwt-auth] to the route, or remove key_prefix_from_claim",
        );
    }
    if c.problems.len() > before {
        return None;
    }
    let upstream = upstream?;
    let kafka_proxy = match (upstream.scheme, kafka_proxy) {
        (Scheme::Kafka, None) => Some(KafkaProxy::default()),
        (_, k) => k.flatten(),
    };
    Some(Route {
        id: r.id.0,
        index,
        paths,
        hosts,
        methods,
        priority,
        upstream,
        plugins: Plugins {
            kafka_proxy,
            key_auth,
            jwt_auth,
            limit_req,
            cors,
        },
    })
}
