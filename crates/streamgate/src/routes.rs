//! The route table: every route ready to serve, with its plugins and where it sends requests;
//! built from a checked configuration at start-up and again on each reload, then swapped in
//! whole ([`TableInForce`]).
//!
//! Building the table is where each route's settings are resolved once: plugins are built, HTTP
//! upstreams get their nodes and health checks, and kafka routes their [`KafkaTarget`] (settings
//! and shared-client identity). Requests then only look things up.

use crate::error::StartupError;
use crate::plugins::{self, Plugin};
use crate::pubsub::{KafkaCluster, KafkaTarget, SessionCheck};
use crate::upstream::{HealthTask, HttpUpstream};
use pingora::http::RequestHeader;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use streamgate_config::model::{self, Scheme};
use streamgate_config::Config;

/// Where a route sends matching requests.
#[derive(Debug)]
pub(crate) enum Target {
    /// Proxied to HTTP(S) nodes.
    Http(Arc<HttpUpstream>),
    /// Served as pub/sub WebSocket sessions against Kafka brokers.
    Kafka(Arc<KafkaTarget>),
}

/// A route ready to serve: its checked settings, plugins and target.
#[derive(Debug)]
pub(crate) struct Route {
    /// The checked route.
    pub config: Arc<model::Route>,
    /// Its plugins, in the order they run.
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// Where it sends requests.
    pub target: Target,
}

impl Route {
    /// The route's upstream id.
    pub(crate) fn upstream_id(&self) -> &str {
        &self.config.upstream.id
    }

    /// The HTTP upstream, for routes that proxy to one.
    pub(crate) fn http(&self) -> Option<&Arc<HttpUpstream>> {
        match &self.target {
            Target::Http(u) => Some(u),
            Target::Kafka(_) => None,
        }
    }
}

/// The routes in force, in file order (`routes[i].config.index == i`).
#[derive(Debug)]
pub(crate) struct RouteTable {
    routes: Vec<Arc<Route>>,
    secret_params: Arc<[String]>,
    /// Consumers by username, for re-checking open sessions after a reload.
    consumers: HashMap<String, Arc<model::Consumer>>,
}

impl RouteTable {
    /// Every query parameter name that carries a credential on some route (`key-auth` and
    /// `jwt-auth` `query`): masked in the access log of every request, matched or not.
    pub(crate) fn secret_params(&self) -> &Arc<[String]> {
        &self.secret_params
    }

    /// The route for a request whose normalised path is `path` (see [`crate::router::normalize`]),
    /// and for a CORS preflight the route of the method it asks for.
    pub(crate) fn find(&self, req: &RequestHeader, path: &str) -> Option<&Arc<Route>> {
        let host = crate::request::host(req);
        let configs = || self.routes.iter().map(|r| &*r.config);
        crate::router::best(configs(), host, req.method.as_str(), path)
            .or_else(|| {
                // A CORS preflight is an OPTIONS for the method it names: a route limited to
                // that method answers it (its cors plugin does).
                let asked = req
                    .headers
                    .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?;
                let asked = asked.to_str().ok()?;
                (req.method == http::Method::OPTIONS)
                    .then(|| crate::router::best(configs(), host, asked, path))
                    .flatten()
                    .filter(|&i| {
                        self.routes
                            .get(i)
                            .is_some_and(|r| r.config.plugins.cors.is_some())
                    })
            })
            .and_then(|i| self.routes.get(i))
    }
}

impl SessionCheck for RouteTable {
    /// A session goes on while its route still serves Kafka and its caller is still known with
    /// the same credentials (a route that now requires authentication ends anonymous sessions).
    fn recheck(
        &self,
        route_id: &str,
        consumer: Option<&model::Consumer>,
    ) -> Result<(Arc<KafkaTarget>, Option<Arc<model::Consumer>>), String> {
        let route = self
            .routes
            .iter()
            .find(|r| r.config.id == route_id)
            .ok_or("the route was removed by a configuration reload")?;
        let Target::Kafka(target) = &route.target else {
            return Err("the route no longer serves Kafka".into());
        };
        let plugins = &route.config.plugins;
        let authenticates = plugins.key_auth.is_some() || plugins.jwt_auth.is_some();
        let consumer = match consumer {
            None if authenticates => {
                return Err("the route now requires authentication".into());
            }
            None => None,
            Some(old) => match self.consumers.get(&old.username) {
                Some(new) if new.key == old.key && new.jwt == old.jwt => Some(Arc::clone(new)),
                _ => {
                    return Err(format!(
                        "consumer {:?} or its credentials were removed or changed",
                        old.username
                    ))
                }
            },
        };
        Ok((Arc::clone(target), consumer))
    }
}

/// The table in force. Requests take a reference at their start and keep it to their end, so a
/// reload never changes a request (or an open WebSocket session) midway.
#[derive(Debug)]
pub(crate) struct TableInForce(RwLock<Arc<RouteTable>>);

impl TableInForce {
    /// Starts with `table`.
    pub(crate) fn new(table: RouteTable) -> Arc<Self> {
        Arc::new(Self(RwLock::new(Arc::new(table))))
    }

    /// The table in force now.
    pub(crate) fn current(&self) -> Arc<RouteTable> {
        Arc::clone(&crate::sync::read(&self.0))
    }

    /// Puts `table` in force for every request that starts from now on, and returns it.
    pub(crate) fn replace(&self, table: RouteTable) -> Arc<RouteTable> {
        let table = Arc::new(table);
        *crate::sync::write(&self.0) = Arc::clone(&table);
        table
    }
}

/// Builds the routes with their plugins, upstreams and consumers: what a reload replaces.
/// Resolves nodes and loads TLS files, so a bad file is an error here, not at a request.
/// Returns the health checks of the table's HTTP upstreams, to run while it is in force.
///
/// `providers` keeps the identity providers' key sets across reloads; `fetch` starts fetching
/// for providers new to it (not for `streamgate -t`, which only checks).
pub(crate) fn build(
    config: &Config,
    providers: &plugins::Providers,
    fetch: bool,
) -> Result<(RouteTable, Vec<HealthTask>), StartupError> {
    let mut health = Vec::new();
    let mut http: HashMap<&str, Arc<HttpUpstream>> = HashMap::new();
    let mut kafka: HashMap<&str, Arc<KafkaCluster>> = HashMap::new();
    for upstream in &config.upstreams {
        match upstream.scheme {
            Scheme::Http | Scheme::Https => {
                let (u, service) = HttpUpstream::build(Arc::clone(upstream))?;
                http.insert(&upstream.id, Arc::new(u));
                health.extend(service);
            }
            Scheme::Kafka => {
                kafka.insert(&upstream.id, Arc::new(KafkaCluster::new(upstream)?));
            }
        }
    }
    let keys = plugins::key_index(&config.consumers);
    let in_force = providers.for_config(&config.identity_providers, fetch);
    let tokens = plugins::jwt_index(&config.consumers, &in_force)?;
    let mut routes = Vec::with_capacity(config.routes.len());
    for (i, route) in config.routes.iter().enumerate() {
        debug_assert_eq!(route.index, i);
        let id = route.upstream.id.as_str();
        let target = match route.upstream.scheme {
            Scheme::Kafka => match kafka.get(id) {
                Some(cluster) => Some(Target::Kafka(Arc::new(KafkaTarget::new(
                    route,
                    Arc::clone(cluster),
                )?))),
                None => None,
            },
            Scheme::Http | Scheme::Https => http.get(id).map(|h| Target::Http(Arc::clone(h))),
        };
        let Some(target) = target else {
            return Err(StartupError::Upstream {
                id: id.to_string(),
                what: format!("route {:?}", route.id),
                why: "the upstream was not prepared".into(),
            });
        };
        routes.push(Arc::new(Route {
            config: Arc::clone(route),
            plugins: plugins::for_route(route, &keys, &tokens),
            target,
        }));
    }
    let mut secret_params: Vec<String> = config
        .routes
        .iter()
        .flat_map(|r| {
            let key = r.plugins.key_auth.as_ref().map(|k| k.query.clone());
            let jwt = r.plugins.jwt_auth.as_ref().map(|j| j.query.clone());
            key.into_iter().chain(jwt)
        })
        .collect();
    secret_params.sort();
    secret_params.dedup();
    let table = RouteTable {
        routes,
        secret_params: secret_params.into(),
        consumers: config
            .consumers
            .iter()
            .map(|c| (c.username.clone(), Arc::clone(c)))
            .collect(),
    };
    Ok((table, health))
}
