//! Checking a configuration file's shape ([`crate::toml`]) into the model
//! ([`crate::model`]), by section. Every default is filled in here and every problem is
//! collected with its key path, position and a fix; nothing panics on any input.

mod consumer;
mod identity;
mod plugins;
mod route;
mod server;
mod upstream;

pub(crate) use plugins::build_kafka_proxy;

use crate::error::{line_col, Problem};
use crate::model::{Admin, Config, TopicPattern, Upstream};
use crate::toml as t;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Collects problems while the model is built.
pub(crate) struct Checker<'a> {
    text: &'a str,
    pub problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            problems: Vec::new(),
        }
    }

    fn at(
        &mut self,
        span: Option<&std::ops::Range<usize>>,
        key: String,
        message: String,
        fix: &str,
    ) {
        let location = span.map(|s| line_col(self.text, s.start));
        self.problems.push(Problem {
            key,
            location,
            message,
            fix: fix.to_string(),
        });
    }
}

/// Builds the checked model, or returns every problem found.
pub(crate) fn build(file: t::File, text: &str) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::new(text);
    let server = server::build_server(&mut c, file.server);
    let admin = file.admin.and_then(|a| {
        let listen = parse_addr(&mut c, None, "admin.listen", &a.listen.0)?;
        if !listen.ip().is_loopback() && !a.allow_remote.unwrap_or(false) {
            c.at(
                None,
                "admin.listen".into(),
                format!("{listen} is not a loopback address, and the admin listener has no authentication"),
                "listen on 127.0.0.1 or [::1] (scrape through a local agent or a tunnel), or set admin.allow_remote = true and restrict access at the network",
            );
            return None;
        }
        Some(Admin { listen })
    });

    let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    let mut upstream_list = Vec::new();
    for (i, spanned) in file.upstreams.into_iter().enumerate() {
        let span = spanned.span();
        let key = format!("upstreams[{i}]");
        let Some(upstream) = upstream::build_upstream(&mut c, &span, &key, spanned.into_inner())
        else {
            continue;
        };
        if upstreams.contains_key(&upstream.id) {
            c.at(
                Some(&span),
                format!("{key}.id"),
                format!("duplicate upstream id {:?}", upstream.id),
                "give every [[upstreams]] entry its own id",
            );
            continue;
        }
        let upstream = Arc::new(upstream);
        upstreams.insert(upstream.id.clone(), Arc::clone(&upstream));
        upstream_list.push(upstream);
    }

    let consumers = consumer::build_consumers(&mut c, file.consumers);
    let identity_providers = identity::build_identity_providers(&mut c, file.identity_providers);
    // Each provider signs callers in as the one consumer that names it.
    let mut named = HashSet::new();
    for consumer in &consumers {
        let Some(provider) = &consumer.jwt_provider else {
            continue;
        };
        let key = format!(
            "consumers[{:?}].plugins.jwt-auth.provider",
            consumer.username
        );
        if !identity_providers.iter().any(|p| &p.id == provider) {
            c.at(
                None,
                key,
                format!("no [[identity_providers]] entry has the id {provider:?}"),
                "name an identity provider defined in this file",
            );
        } else if !named.insert(provider.clone()) {
            c.at(
                None,
                key,
                format!("another consumer already signs in with provider {provider:?}"),
                "let one consumer stand for each provider (its claims tell the users apart)",
            );
        }
    }
    for p in &identity_providers {
        if !named.contains(&p.id) {
            c.at(
                None,
                format!("identity_providers[{:?}]", p.id),
                "no consumer names this provider, so its tokens would sign no one in".into(),
                "add provider = \"ID\" under a consumer's [consumers.plugins.jwt-auth]",
            );
        }
    }

    let mut routes = Vec::new();
    let mut route_ids = HashSet::new();
    for (i, spanned) in file.routes.into_iter().enumerate() {
        let span = spanned.span();
        let key = format!("routes[{i}]");
        let r = spanned.into_inner();
        if !route_ids.insert(r.id.0.clone()) {
            c.at(
                Some(&span),
                format!("{key}.id"),
                format!("duplicate route id {:?}", r.id.0),
                "give every [[routes]] entry its own id",
            );
        }
        if let Some(route) = route::build_route(&mut c, &span, &key, i, r, &upstreams) {
            if route.plugins.jwt_auth.is_some()
                && !consumers
                    .iter()
                    .any(|c| c.jwt.is_some() || c.jwt_provider.is_some())
            {
                c.at(
                    Some(&span),
                    format!("{key}.plugins.jwt-auth"),
                    "jwt-auth is on but no consumer has a jwt-auth credential, so every request would be refused".into(),
                    "add [consumers.plugins.jwt-auth] to a [[consumers]] entry",
                );
            }
            if route.plugins.key_auth.is_some() && !consumers.iter().any(|c| c.key.is_some()) {
                c.at(
                    Some(&span),
                    format!("{key}.plugins.key-auth"),
                    "key-auth is on but no consumer has a key, so every request would be refused"
                        .into(),
                    "add a [[consumers]] entry with [consumers.plugins.key-auth] key = \"...\"",
                );
            }
            if let Some(k) = &route.plugins.kafka_proxy {
                let budget = server.limits.max_queued_answer_bytes;
                if budget < k.max_frame_bytes {
                    c.at(
                        Some(&span),
                        format!("{key}.plugins.kafka-proxy.max_frame_bytes"),
                        format!("max_frame_bytes ({}) is larger than server.limits.max_queued_answer_bytes ({budget}), the gateway's whole budget for answers not yet read: an answer that large could never be sent", k.max_frame_bytes),
                        "lower max_frame_bytes, or raise server.limits.max_queued_answer_bytes",
                    );
                }
            }
            routes.push(Arc::new(route));
        }
    }

    if c.problems.is_empty() {
        Ok(Config {
            server,
            admin,
            upstreams: upstream_list,
            routes,
            consumers,
            identity_providers,
        })
    } else {
        Err(c.problems)
    }
}

fn parse_addr(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    value: &str,
) -> Option<SocketAddr> {
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            c.at(
                span,
                key.to_string(),
                format!("{value:?} is not an IP:port address"),
                "write an IP literal and a port, e.g. \"127.0.0.1:9080\" or \"[::1]:9080\" (host names are not resolved for listeners)",
            );
            None
        }
    }
}

fn in_range(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    value: i64,
    min: i64,
    max: i64,
) -> Option<i64> {
    if (min..=max).contains(&value) {
        Some(value)
    } else {
        c.at(
            span,
            key.to_string(),
            format!("{value} is out of range"),
            &format!("use a whole number from {min} to {max}"),
        );
        None
    }
}

fn seconds(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    value: f64,
    max: f64,
) -> Option<Duration> {
    if value.is_finite() && value > 0.0 && value <= max {
        Some(Duration::from_secs_f64(value))
    } else {
        c.at(
            span,
            key.to_string(),
            format!("{value} is not a usable number of seconds"),
            &format!("use a positive number of seconds up to {max}, e.g. 0.5 or 30"),
        );
        None
    }
}

fn readable_file(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    path: &str,
) -> Option<PathBuf> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Some(PathBuf::from(path)),
        Ok(_) => {
            c.at(
                span,
                key.into(),
                format!("{path:?} is not a file"),
                "name a PEM file",
            );
            None
        }
        Err(e) => {
            c.at(
                span,
                key.into(),
                format!("cannot read {path:?}: {e}"),
                "check the path; relative paths are resolved from the gateway's working directory",
            );
            None
        }
    }
}

/// Allow-list entries: exact names or `prefix*`.
fn topic_patterns(
    c: &mut Checker<'_>,
    span: Option<&std::ops::Range<usize>>,
    key: &str,
    list: Vec<t::Text>,
) -> Vec<TopicPattern> {
    if list.is_empty() {
        c.at(
            span,
            key.to_string(),
            "an empty allow-list forbids every topic".into(),
            "list the topics clients may read, or remove `topics` to allow all",
        );
    }
    list.into_iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let t = t.0;
            let star = t.find('*');
            if t.is_empty() || t == "*" || star.is_some_and(|s| s != t.len() - 1) {
                c.at(
                    span,
                    format!("{key}[{i}]"),
                    format!("{t:?} is not a topic name or prefix"),
                    "write \"orders\" (exact) or \"audit-*\" (prefix); remove `topics` to allow every topic",
                );
                return None;
            }
            Some(match t.strip_suffix('*') {
                Some(p) => TopicPattern::Prefix(p.to_string()),
                None => TopicPattern::Exact(t),
            })
        })
        .collect()
}
