//! `[server]`, `[server.limits]` and their listeners.

use super::*;
use crate::model::*;
use crate::toml as t;

pub(super) fn build_server(c: &mut Checker<'_>, s: t::ServerToml) -> Server {
    let listen = match s.listen {
        None => vec![SocketAddr::from(([127, 0, 0, 1], 9080))],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, a)| parse_addr(c, None, &format!("server.listen[{i}]"), &a.0))
            .collect(),
    };
    let tls_listen = s
        .tls_listen
        .into_iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let key = format!("server.tls_listen[{i}]");
            let address = parse_addr(c, None, &format!("{key}.address"), &l.address.0)?;
            let cert_file = readable_file(c, None, &format!("{key}.cert_file"), &l.cert_file.0);
            let key_file = readable_file(c, None, &format!("{key}.key_file"), &l.key_file.0);
            Some(TlsListener {
                address,
                cert_file: cert_file?,
                key_file: key_file?,
                http2: l.http2.unwrap_or(true),
            })
        })
        .collect::<Vec<_>>();
    if listen.is_empty() && tls_listen.is_empty() && c.problems.is_empty() {
        c.at(
            None,
            "server.listen".into(),
            "no listener is configured".into(),
            "add an address to server.listen or a [[server.tls_listen]] entry",
        );
    }
    let threads = s
        .threads
        .and_then(|v| in_range(c, None, "server.threads", v, 1, 256))
        .unwrap_or(2) as usize;
    let grace = s
        .grace_period_seconds
        .and_then(|v| in_range(c, None, "server.grace_period_seconds", v, 0, 3600))
        .unwrap_or(10) as u64;
    let final_timeout = s
        .graceful_shutdown_timeout_seconds
        .and_then(|v| {
            in_range(
                c,
                None,
                "server.graceful_shutdown_timeout_seconds",
                v,
                0,
                3600,
            )
        })
        .unwrap_or(5) as u64;
    let log_format = match s.log_format.as_ref().map(|t| t.0.as_str()) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.at(
                None,
                "server.log_format".into(),
                format!("unknown log format {other:?}"),
                "use \"text\" or \"json\"",
            );
            LogFormat::Text
        }
    };
    let l4 = s
        .l4_read_buffer_bytes
        .and_then(|v| in_range(c, None, "server.l4_read_buffer_bytes", v, 0, 1 << 20))
        .unwrap_or(0) as usize;
    let limits = build_limits(c, s.limits.unwrap_or_default());
    let upgrade_sock = s.upgrade_sock.map(|t| PathBuf::from(t.0));
    Server {
        listen,
        tls_listen,
        threads,
        grace_period: Duration::from_secs(grace),
        graceful_shutdown_timeout: Duration::from_secs(final_timeout),
        log_format,
        l4_read_buffer_bytes: l4,
        upgrade_sock,
        reload_on_change: s.reload_on_change.unwrap_or(false),
        normalize_uri_like_servlet: s.normalize_uri_like_servlet.unwrap_or(false),
        trusted_proxies: s
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let text = t.0.trim();
                let net = text.parse::<ipnet::IpNet>().ok().or_else(|| {
                    text.parse::<std::net::IpAddr>()
                        .ok()
                        .map(ipnet::IpNet::from)
                });
                if net.is_none() {
                    c.at(
                        None,
                        format!("server.trusted_proxies[{i}]"),
                        format!("{text:?} is not an IP address or CIDR range"),
                        "write an address or a range, e.g. \"10.0.0.5\" or \"10.0.0.0/8\"",
                    );
                }
                net
            })
            .collect(),
        limits,
    }
}

pub(super) fn build_limits(c: &mut Checker<'_>, l: t::LimitsToml) -> Limits {
    let d = Limits::default();
    let mut num = |name: &str, value: Option<i64>, min: i64, max: i64, default: i64| {
        value
            .and_then(|v| in_range(c, None, &format!("server.limits.{name}"), v, min, max))
            .unwrap_or(default)
    };
    Limits {
        max_connections: num(
            "max_connections",
            l.max_connections,
            1,
            10_000_000,
            d.max_connections as i64,
        ) as usize,
        max_connections_per_ip: num(
            "max_connections_per_ip",
            l.max_connections_per_ip,
            1,
            10_000_000,
            d.max_connections_per_ip as i64,
        ) as usize,
        max_sessions_per_consumer: num(
            "max_sessions_per_consumer",
            l.max_sessions_per_consumer,
            1,
            10_000_000,
            d.max_sessions_per_consumer as i64,
        ) as usize,
        max_request_header_bytes: num(
            "max_request_header_bytes",
            l.max_request_header_bytes,
            1024,
            1 << 20,
            d.max_request_header_bytes as i64,
        ) as usize,
        max_request_body_bytes: num(
            "max_request_body_bytes",
            l.max_request_body_bytes,
            0,
            i64::MAX,
            d.max_request_body_bytes as i64,
        ) as u64,
        max_auth_failures_per_minute: num(
            "max_auth_failures_per_minute",
            l.max_auth_failures_per_minute,
            1,
            1_000_000,
            d.max_auth_failures_per_minute as i64,
        ) as u32,
        max_queued_answer_bytes: num(
            "max_queued_answer_bytes",
            l.max_queued_answer_bytes,
            64 * 1024,
            1 << 40,
            d.max_queued_answer_bytes as i64,
        ) as usize,
        max_tunnel: match l.max_tunnel_seconds {
            None => d.max_tunnel,
            Some(0) => None,
            Some(v) => in_range(
                c,
                None,
                "server.limits.max_tunnel_seconds",
                v,
                0,
                365 * 86400,
            )
            .map(|s| std::time::Duration::from_secs(s as u64))
            .or(d.max_tunnel),
        },
    }
}
