//! `[[upstreams]]`: nodes, balancing, timeouts, TLS and health checks.

use super::*;
use crate::model::*;
use crate::toml as t;

/// Splits `host:port` (IPv6 in brackets).
pub(super) fn parse_node(text: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in an IPv6 node".to_string())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "missing `:port` after the IPv6 address".to_string())?;
        (host, port)
    } else {
        text.rsplit_once(':')
            .ok_or_else(|| "missing `:port`".to_string())?
    };
    if host.is_empty()
        || host.contains(char::is_whitespace)
        || (host.contains(':') && !text.starts_with('['))
    {
        return Err("the host part is empty or malformed".into());
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port from 1 to 65535"))?;
    Ok((host.to_string(), port))
}

pub(super) fn build_upstream(
    c: &mut Checker<'_>,
    span: &std::ops::Range<usize>,
    key: &str,
    u: t::UpstreamToml,
) -> Option<Upstream> {
    let before = c.problems.len();
    let span = Some(span);
    let id = u.id.0;
    if id.is_empty() {
        c.at(
            span,
            format!("{key}.id"),
            "empty id".into(),
            "give the upstream a name",
        );
    }
    let scheme = match u.scheme.as_ref().map(|s| s.0.as_str()) {
        None | Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some("kafka") => Scheme::Kafka,
        Some(other) => {
            c.at(
                span,
                format!("{key}.scheme"),
                format!("unknown scheme {other:?}"),
                "use \"http\", \"https\" or \"kafka\"",
            );
            Scheme::Http
        }
    };
    let mut nodes = Vec::new();
    for (text, weight) in &u.nodes {
        let node_key = format!("{key}.nodes.{text:?}");
        match parse_node(text) {
            Ok((host, port)) => {
                if let Some(w) = in_range(c, span, &node_key, *weight, 0, 10_000) {
                    nodes.push(Node {
                        host,
                        port,
                        weight: w as u32,
                    });
                }
            }
            Err(why) => c.at(
                span,
                node_key,
                format!("{text:?} is not host:port ({why})"),
                "write nodes as \"host:port\" = weight, e.g. { \"127.0.0.1:8080\" = 1 }",
            ),
        }
    }
    if u.nodes.is_empty() {
        c.at(
            span,
            format!("{key}.nodes"),
            "no nodes".into(),
            "list at least one node: nodes = { \"127.0.0.1:8080\" = 1 }",
        );
    } else if !nodes.is_empty() && nodes.iter().all(|n| n.weight == 0) {
        c.at(
            span,
            format!("{key}.nodes"),
            "every node has weight 0, so no request could be sent anywhere".into(),
            "give at least one node a weight of 1 or more",
        );
    }
    let balance = match u.balance.as_ref().map(|s| s.0.as_str()) {
        None | Some("roundrobin") => {
            if u.hash_on.is_some() || u.key.is_some() {
                c.at(
                    span,
                    format!("{key}.hash_on"),
                    "hash_on and key only apply to type = \"chash\"".into(),
                    "set type = \"chash\" or remove hash_on/key",
                );
            }
            Balance::RoundRobin
        }
        Some("chash") => {
            let name = u.key.as_ref().map(|k| k.0.clone());
            let hash_on = match (u.hash_on.as_ref().map(|s| s.0.as_str()), name) {
                (None | Some("remote_addr"), None) => HashOn::RemoteAddr,
                (Some("uri"), None) => HashOn::Uri,
                (Some("header"), Some(n)) if !n.is_empty() => {
                    HashOn::Header(n.to_ascii_lowercase())
                }
                (Some("cookie"), Some(n)) if !n.is_empty() => HashOn::Cookie(n),
                (Some(kind @ ("header" | "cookie")), _) => {
                    c.at(
                        span,
                        format!("{key}.key"),
                        format!("hash_on = {kind:?} needs the {kind} name in `key`"),
                        "add key = \"NAME\"",
                    );
                    HashOn::RemoteAddr
                }
                (Some(other), _) => {
                    c.at(
                        span,
                        format!("{key}.hash_on"),
                        format!("cannot hash on {other:?} (or `key` given where none is used)"),
                        "use \"remote_addr\", \"uri\", \"header\" (with key) or \"cookie\" (with key)",
                    );
                    HashOn::RemoteAddr
                }
                (None, Some(_)) => {
                    c.at(
                        span,
                        format!("{key}.key"),
                        "`key` without hash_on".into(),
                        "set hash_on = \"header\" or \"cookie\"",
                    );
                    HashOn::RemoteAddr
                }
            };
            Balance::Chash(hash_on)
        }
        Some(other) => {
            c.at(
                span,
                format!("{key}.type"),
                format!("unknown balancing type {other:?}"),
                "use \"roundrobin\" or \"chash\"",
            );
            Balance::RoundRobin
        }
    };
    let mut timeouts = Timeouts {
        connect: Duration::from_secs(6),
        send: Duration::from_secs(60),
        read: Duration::from_secs(60),
    };
    if let Some(t) = &u.timeout {
        for (name, value, slot) in [
            ("connect", t.connect, &mut timeouts.connect),
            ("send", t.send, &mut timeouts.send),
            ("read", t.read, &mut timeouts.read),
        ] {
            if let Some(v) = value {
                if let Some(d) = seconds(c, span, &format!("{key}.timeout.{name}"), v, 3600.0) {
                    *slot = d;
                }
            }
        }
    }
    let retries = u
        .retries
        .and_then(|r| in_range(c, span, &format!("{key}.retries"), r, 0, 100))
        .map(|r| r as usize)
        .unwrap_or(1);
    let host_policy = match (
        u.pass_host.as_ref().map(|s| s.0.as_str()),
        u.upstream_host.as_ref().map(|s| s.0.clone()),
    ) {
        (None | Some("pass"), None) => HostPolicy::Pass,
        (Some("node"), None) => HostPolicy::Node,
        (Some("rewrite"), Some(h)) if !h.is_empty() => HostPolicy::Rewrite(h),
        (Some("rewrite"), _) => {
            c.at(
                span,
                format!("{key}.upstream_host"),
                "pass_host = \"rewrite\" needs upstream_host".into(),
                "add upstream_host = \"the.host.to.send\"",
            );
            HostPolicy::Pass
        }
        (_, Some(_)) => {
            c.at(
                span,
                format!("{key}.upstream_host"),
                "upstream_host only applies with pass_host = \"rewrite\"".into(),
                "set pass_host = \"rewrite\" or remove upstream_host",
            );
            HostPolicy::Pass
        }
        (Some(other), None) => {
            c.at(
                span,
                format!("{key}.pass_host"),
                format!("unknown pass_host {other:?}"),
                "use \"pass\", \"node\" or \"rewrite\"",
            );
            HostPolicy::Pass
        }
    };
    let tls = u.tls.map(|tls| {
        if scheme == Scheme::Http {
            c.at(
                span,
                format!("{key}.tls"),
                "[upstreams.tls] on an http upstream".into(),
                "set scheme = \"https\" (or \"kafka\"), or remove the tls table",
            );
        }
        let ca_file = tls
            .ca_file
            .and_then(|f| readable_file(c, span, &format!("{key}.tls.ca_file"), &f.0));
        let client_cert = match (tls.client_cert_file, tls.client_key_file) {
            (None, None) => None,
            (Some(cert), Some(k)) => {
                let cert = readable_file(c, span, &format!("{key}.tls.client_cert_file"), &cert.0);
                let k = readable_file(c, span, &format!("{key}.tls.client_key_file"), &k.0);
                cert.zip(k)
            }
            _ => {
                c.at(
                    span,
                    format!("{key}.tls"),
                    "client_cert_file and client_key_file go together".into(),
                    "set both, or neither",
                );
                None
            }
        };
        UpstreamTls {
            verify: tls.verify.unwrap_or(true),
            ca_file,
            sni: tls.sni.map(|s| s.0).filter(|s| !s.is_empty()),
            client_cert,
        }
    });
    let tls = match (scheme, tls) {
        (Scheme::Https, None) => Some(UpstreamTls {
            verify: true,
            ca_file: None,
            sni: None,
            client_cert: None,
        }),
        (_, tls) => tls,
    };
    let broker_fetch_wait = match u.broker_fetch_wait_ms {
        None => Duration::ZERO,
        Some(ms) => {
            if scheme != Scheme::Kafka {
                c.at(
                    span,
                    format!("{key}.broker_fetch_wait_ms"),
                    "only a kafka upstream fetches from brokers".into(),
                    "remove broker_fetch_wait_ms from this upstream",
                );
            }
            in_range(c, span, &format!("{key}.broker_fetch_wait_ms"), ms, 0, 100)
                .map_or(Duration::ZERO, |ms| Duration::from_millis(ms as u64))
        }
    };
    let max_decompressed_bytes = match u.max_decompressed_bytes {
        None => DEFAULT_MAX_DECOMPRESSED_BYTES,
        Some(bytes) => {
            if scheme != Scheme::Kafka {
                c.at(
                    span,
                    format!("{key}.max_decompressed_bytes"),
                    "only a kafka upstream decodes record batches".into(),
                    "remove max_decompressed_bytes from this upstream",
                );
            }
            in_range(
                c,
                span,
                &format!("{key}.max_decompressed_bytes"),
                bytes,
                1 << 20,
                1 << 30,
            )
            .map_or(DEFAULT_MAX_DECOMPRESSED_BYTES, |b| b as usize)
        }
    };
    let health_check = u.health_check.map(|h| {
        if scheme == Scheme::Kafka {
            c.at(
                span,
                format!("{key}.health_check"),
                "health checks are HTTP requests; a kafka upstream has none".into(),
                "remove [upstreams.health_check] from this upstream",
            );
        }
        let path = h.path.map(|p| p.0).unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            c.at(
                span,
                format!("{key}.health_check.path"),
                format!("{path:?} does not start with /"),
                "write an absolute path such as \"/healthz\"",
            );
        }
        let hk = format!("{key}.health_check");
        HealthCheck {
            path,
            interval: h
                .interval_seconds
                .and_then(|v| seconds(c, span, &format!("{hk}.interval_seconds"), v, 3600.0))
                .unwrap_or(Duration::from_secs(5)),
            timeout: h
                .timeout_seconds
                .and_then(|v| seconds(c, span, &format!("{hk}.timeout_seconds"), v, 600.0))
                .unwrap_or(Duration::from_secs(1)),
            healthy_threshold: h
                .healthy_threshold
                .and_then(|v| in_range(c, span, &format!("{hk}.healthy_threshold"), v, 1, 100))
                .unwrap_or(2) as usize,
            unhealthy_threshold: h
                .unhealthy_threshold
                .and_then(|v| in_range(c, span, &format!("{hk}.unhealthy_threshold"), v, 1, 100))
                .unwrap_or(2) as usize,
        }
    });
    if c.problems.len() > before {
        return None;
    }
    Some(Upstream {
        id,
        scheme,
        nodes,
        balance,
        timeouts,
        retries,
        host_policy,
        tls,
        health_check,
        broker_fetch_wait,
        max_decompressed_bytes,
    })
}
