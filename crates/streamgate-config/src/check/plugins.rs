//! Each route plugin's table: `cors`, `kafka-proxy` (and the browser origins both list).

use super::*;
use crate::model::*;
use crate::toml as t;

/// Browser origins, checked and normalised to lower case without a trailing `/`.
pub(super) fn origins(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    list: Vec<t::Text>,
) -> Vec<String> {
    list.into_iter()
        .enumerate()
        .filter_map(|(i, o)| {
            let o = o.0.trim_end_matches('/').to_ascii_lowercase();
            let scheme_ok = o.starts_with("https://") || o.starts_with("http://");
            let rest = o.split_once("://").map_or("", |(_, r)| r);
            if !scheme_ok || rest.is_empty() || rest.contains(['/', '*', ' ']) {
                c.at(
                    span,
                    format!("{key}[{i}]"),
                    format!("{o:?} is not an origin"),
                    "write scheme://host[:port], e.g. \"https://app.example.com\" (no path, no wildcard)",
                );
                return None;
            }
            Some(o)
        })
        .collect()
}

pub(super) fn build_cors(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    t: t::CorsToml,
) -> Cors {
    let any =
        |list: &Option<Vec<t::Text>>| list.as_ref().is_some_and(|l| l.len() == 1 && l[0].0 == "*");
    let allow_origins = if t.allow_origins.is_none() || any(&t.allow_origins) {
        None
    } else {
        Some(origins(
            c,
            span,
            &format!("{key}.allow_origins"),
            t.allow_origins.unwrap_or_default(),
        ))
    };
    let token = |c: &mut Checker<'_>, field: &str, i: usize, v: &str| {
        let ok = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
        if !ok {
            c.at(
                span,
                format!("{key}.{field}[{i}]"),
                format!("{v:?} is not a header or method name"),
                "use letters, digits and `-`",
            );
        }
        v.to_string()
    };
    let allow_methods = match t.allow_methods {
        None => ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
            .map(String::from)
            .to_vec(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, m)| token(c, "allow_methods", i, &m.0.to_ascii_uppercase()))
            .collect(),
    };
    let allow_headers = if t.allow_headers.is_none() || any(&t.allow_headers) {
        None
    } else {
        Some(
            t.allow_headers
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, h)| token(c, "allow_headers", i, &h.0.to_ascii_lowercase()))
                .collect(),
        )
    };
    let expose_headers = t
        .expose_headers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, h)| token(c, "expose_headers", i, &h.0))
        .collect();
    let max_age = t
        .max_age_seconds
        .and_then(|v| in_range(c, span, &format!("{key}.max_age_seconds"), v, 0, 86_400))
        .unwrap_or(5) as u32;
    let allow_credentials = t.allow_credentials.unwrap_or(false);
    if allow_credentials && allow_origins.is_none() {
        c.at(
            span,
            format!("{key}.allow_credentials"),
            "credentials cannot be allowed for every origin (browsers refuse `*` with credentials)"
                .into(),
            "list the origins in allow_origins, or set allow_credentials = false",
        );
    }
    Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age_seconds: max_age,
        allow_credentials,
    }
}

pub(crate) fn build_kafka_proxy(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    mut k: t::KafkaProxyToml,
) -> Option<KafkaProxy> {
    let before = c.problems.len();
    let d = KafkaProxy::default();
    let sasl = k.sasl.map(|s| {
        let mechanism = match s.mechanism.as_ref().map(|m| m.0.to_ascii_uppercase()) {
            None => SaslMechanism::Plain,
            Some(m) if m == "PLAIN" => SaslMechanism::Plain,
            Some(m) if m == "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
            Some(m) if m == "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
            Some(m) => {
                c.at(
                    span,
                    format!("{key}.sasl.mechanism"),
                    format!("unknown SASL mechanism {m:?}"),
                    "use \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\"",
                );
                SaslMechanism::Plain
            }
        };
        for (field, value) in [("username", &s.username.0), ("password", &s.password.0)] {
            if value.is_empty() {
                c.at(
                    span,
                    format!("{key}.sasl.{field}"),
                    format!("sasl.{field} is empty"),
                    "set it, or take it from the environment with \"${NAME}\"",
                );
            }
        }
        Sasl {
            mechanism,
            username: s.username.0,
            password: s.password.0,
        }
    });
    let groups_toml = GroupsToml {
        group_prefix: k.group_prefix.take(),
        allowed_groups: k.allowed_groups.take(),
        group_from_claim: k.group_from_claim.take(),
        group_session_timeout_ms: k.group_session_timeout_ms,
        auto_commit_interval_ms: k.auto_commit_interval_ms,
    };
    let topics = k
        .topics
        .map(|list| topic_patterns(c, span, &format!("{key}.topics"), list));
    let allowed_origins = k
        .allowed_origins
        .map(|list| origins(c, span, &format!("{key}.allowed_origins"), list));
    let mut num = |name: &str, value: Option<i64>, min: i64, max: i64, default: i64| {
        value
            .and_then(|v| in_range(c, span, &format!("{key}.{name}"), v, min, max))
            .unwrap_or(default)
    };
    let max_frame_bytes = num(
        "max_frame_bytes",
        k.max_frame_bytes,
        1024,
        256 << 20,
        d.max_frame_bytes as i64,
    );
    let fetch_max_bytes = num(
        "fetch_max_bytes",
        k.fetch_max_bytes,
        1,
        256 << 20,
        d.fetch_max_bytes as i64,
    );
    let wait = num(
        "fetch_max_wait_ms",
        k.fetch_max_wait_ms,
        0,
        60_000,
        d.fetch_max_wait.as_millis() as i64,
    );
    let socket = num(
        "socket_timeout_ms",
        k.socket_timeout_ms,
        100,
        600_000,
        d.socket_timeout.as_millis() as i64,
    );
    let in_flight = num(
        "max_in_flight",
        k.max_in_flight,
        1,
        1024,
        d.max_in_flight as i64,
    );
    let commands = num(
        "max_commands_per_second",
        k.max_commands_per_second,
        0,
        1_000_000,
        d.max_commands_per_second.into(),
    );
    let idle = num(
        "idle_timeout_ms",
        k.idle_timeout_ms,
        1_000,
        86_400_000,
        d.idle_timeout.as_millis() as i64,
    );
    let lifetime = num(
        "max_session_seconds",
        k.max_session_seconds,
        0,
        30 * 86_400,
        d.max_session.map_or(0, |l| l.as_secs() as i64),
    );
    let send_timeout = num(
        "send_timeout_ms",
        k.send_timeout_ms,
        100,
        600_000,
        d.send_timeout.as_millis() as i64,
    );
    let subscriptions = num(
        "max_subscriptions",
        k.max_subscriptions,
        0,
        1024,
        d.max_subscriptions as i64,
    );
    let session = num(
        "group_session_timeout_ms",
        k.group_session_timeout_ms,
        1_000,
        1_800_000,
        30_000,
    );
    let commit_interval = num(
        "auto_commit_interval_ms",
        k.auto_commit_interval_ms,
        100,
        3_600_000,
        5_000,
    );
    let groups = build_groups(c, span, key, &groups_toml).map(|mut g| {
        g.session_timeout = Duration::from_millis(session as u64);
        g.auto_commit_interval = Duration::from_millis(commit_interval as u64);
        g
    });
    let key_prefix_from_claim = k.key_prefix_from_claim.map(|t| t.0);
    if key_prefix_from_claim.as_deref() == Some("") {
        c.at(
            span,
            format!("{key}.key_prefix_from_claim"),
            "empty claim name".into(),
            "name the JWT claim whose value prefixes the caller's record keys, e.g. \"sub\"",
        );
    }
    let key_prefix_delimiter = k.key_prefix_delimiter.map(|t| t.0);
    match (&key_prefix_from_claim, key_prefix_delimiter.as_deref()) {
        (Some(_), None | Some("")) => c.at(
            span,
            format!("{key}.key_prefix_delimiter"),
            "key_prefix_from_claim needs a delimiter: without one, a caller whose claim is \"4\" would also read keys \"42:...\"".into(),
            "set key_prefix_delimiter to what follows the claim in your keys, e.g. \":\" for keys \"CLAIM:...\"",
        ),
        (None, Some(_)) => c.at(
            span,
            format!("{key}.key_prefix_delimiter"),
            "key_prefix_delimiter without key_prefix_from_claim does nothing".into(),
            "set key_prefix_from_claim too, or remove key_prefix_delimiter",
        ),
        _ => {}
    }
    let isolation = match k.isolation.as_ref().map(|t| t.0.as_str()) {
        None | Some("read_committed") => Isolation::ReadCommitted,
        Some("read_uncommitted") => Isolation::ReadUncommitted,
        Some(other) => {
            c.at(
                span,
                format!("{key}.isolation"),
                format!("unknown isolation {other:?}"),
                "use \"read_committed\" (the default: no aborted or uncommitted records) or \"read_uncommitted\"",
            );
            Isolation::ReadCommitted
        }
    };
    if c.problems.len() > before {
        return None;
    }
    Some(KafkaProxy {
        groups,
        isolation,
        key_prefix_from_claim,
        key_prefix_delimiter,
        max_subscriptions: subscriptions as usize,
        max_commands_per_second: commands as u32,
        idle_timeout: Duration::from_millis(idle as u64),
        max_session: (lifetime > 0).then(|| Duration::from_secs(lifetime as u64)),
        send_timeout: Duration::from_millis(send_timeout as u64),
        sasl,
        topics,
        max_frame_bytes: max_frame_bytes as usize,
        fetch_max_bytes: fetch_max_bytes as usize,
        fetch_max_wait: Duration::from_millis(wait as u64),
        socket_timeout: Duration::from_millis(socket as u64),
        max_in_flight: in_flight as usize,
        allowed_origins,
    })
}

/// The group keys of a kafka-proxy table, taken out before its other fields are.
struct GroupsToml {
    group_prefix: Option<t::Text>,
    allowed_groups: Option<Vec<t::Text>>,
    group_from_claim: Option<t::Text>,
    group_session_timeout_ms: Option<i64>,
    auto_commit_interval_ms: Option<i64>,
}

/// A group name a client may send, or a group glob's characters: `A-Za-z0-9._-`.
pub(crate) fn is_group_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The group keys of a kafka-proxy table; `None` when the route has no `group_prefix` (then the
/// other group keys are refused: they would do nothing).
fn build_groups(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    k: &GroupsToml,
) -> Option<Groups> {
    let Some(prefix) = k.group_prefix.as_ref().map(|t| t.0.clone()) else {
        for (name, set) in [
            ("allowed_groups", k.allowed_groups.is_some()),
            ("group_from_claim", k.group_from_claim.is_some()),
            (
                "group_session_timeout_ms",
                k.group_session_timeout_ms.is_some(),
            ),
            (
                "auto_commit_interval_ms",
                k.auto_commit_interval_ms.is_some(),
            ),
        ] {
            if set {
                c.at(
                    span,
                    format!("{key}.{name}"),
                    format!("{name} without group_prefix does nothing: group subscriptions are off"),
                    "set group_prefix (e.g. \"web.\") to turn group subscriptions on, or remove the key",
                );
            }
        }
        return None;
    };
    if prefix.is_empty() || prefix.len() > 100 || !prefix.chars().all(is_group_char) {
        c.at(
            span,
            format!("{key}.group_prefix"),
            format!("{prefix:?} is not a group prefix"),
            "use 1 to 100 characters of A-Za-z0-9._- (e.g. \"web.\"), so clients' groups never share ids with your services' groups",
        );
    }
    let allowed: Vec<String> = match &k.allowed_groups {
        None => vec!["*".to_string()],
        Some(list) => {
            if list.is_empty() {
                c.at(
                    span,
                    format!("{key}.allowed_groups"),
                    "an empty list forbids every group".into(),
                    "list the group names clients may use (globs: \"*\", \"team-*\"), or remove group_prefix",
                );
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, glob)| {
                    let glob = &glob.0;
                    let ok = !glob.is_empty()
                        && glob.chars().all(|ch| is_group_char(ch) || ch == '*' || ch == '?');
                    if !ok {
                        c.at(
                            span,
                            format!("{key}.allowed_groups[{i}]"),
                            format!("{glob:?} is not a group glob"),
                            "use A-Za-z0-9._- with * (any run) and ? (one character), e.g. \"team-*\"",
                        );
                    }
                    ok.then(|| glob.clone())
                })
                .collect()
        }
    };
    let from_claim = k.group_from_claim.as_ref().map(|t| t.0.clone());
    if from_claim.as_deref() == Some("") {
        c.at(
            span,
            format!("{key}.group_from_claim"),
            "empty claim name".into(),
            "name the JWT claim whose value is each user's group namespace, e.g. \"sub\"",
        );
    }
    Some(Groups {
        prefix,
        allowed,
        from_claim,
        session_timeout: Duration::from_secs(30),
        auto_commit_interval: Duration::from_secs(5),
    })
}
