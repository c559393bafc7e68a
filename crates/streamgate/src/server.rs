//! Assembling the Pingora server from a checked configuration.

use crate::admin::AdminApp;
use crate::error::StartupError;
use crate::plugins;
use crate::proxy::{Gateway, LiveRoutes, RouteRuntime, RouteTable, Target};
use crate::pubsub::{KafkaCluster, PubSub};
use crate::reload::Reloader;
use crate::upstream::{HealthTask, HttpUpstream};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::collections::HashMap;
use std::sync::Arc;
use streamgate_config::model::{Scheme, Upstream};
use streamgate_config::Config;

/// Everything built from a configuration, before any socket is bound.
pub struct Prepared {
    /// The proxy logic.
    pub gateway: Gateway,
    /// Shared pub/sub state.
    pub pubsub: Arc<PubSub>,
    /// The route table in force (the reloader replaces it).
    pub routes: Arc<LiveRoutes>,
    /// Health checks of the table's upstreams, to run while it is in force.
    pub health: Vec<HealthTask>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

/// Resolves nodes and loads every TLS file the configuration names. `streamgate -t` runs this
/// too, so a check catches what would stop the start.
pub fn prepare(config: &Config) -> Result<Prepared, StartupError> {
    for l in &config.server.tls_listen {
        let at = |why| StartupError::Listener {
            address: l.address.to_string(),
            why,
        };
        crate::tls::read_certs(&l.cert_file).map_err(at)?;
        crate::tls::read_key(&l.key_file).map_err(at)?;
    }
    let pubsub = Arc::new(PubSub::default());
    let (table, health) = route_table(config)?;
    let routes = LiveRoutes::new(table);
    Ok(Prepared {
        gateway: Gateway::new(
            Arc::clone(&routes),
            Arc::clone(&pubsub),
            crate::limits::ConnectionLimits::new(config.server.limits.clone()),
        ),
        pubsub,
        routes,
        health,
    })
}

/// Builds the routes with their plugins, upstreams and consumers: what a reload replaces.
/// Resolves nodes and loads TLS files, so a bad file is an error here, not at a request.
pub fn route_table(config: &Config) -> Result<(RouteTable, Vec<HealthTask>), StartupError> {
    let mut health = Vec::new();
    let mut http: HashMap<String, Arc<HttpUpstream>> = HashMap::new();
    let mut kafka: HashMap<String, Arc<KafkaCluster>> = HashMap::new();
    for upstream in &config.upstreams {
        match upstream.scheme {
            Scheme::Http | Scheme::Https => {
                let (u, service) = HttpUpstream::build(Arc::clone(upstream))?;
                http.insert(upstream.id.clone(), Arc::new(u));
                health.extend(service);
            }
            Scheme::Kafka => {
                kafka.insert(upstream.id.clone(), Arc::new(kafka_cluster(upstream)?));
            }
        }
    }
    let keys = plugins::key_index(&config.consumers);
    let tokens = plugins::jwt_index(&config.consumers)?;
    let mut routes = Vec::with_capacity(config.routes.len());
    for (i, route) in config.routes.iter().enumerate() {
        debug_assert_eq!(route.index, i);
        let target = match route.upstream.scheme {
            Scheme::Kafka => kafka
                .get(&route.upstream.id)
                .map(|k| Target::Kafka(Arc::clone(k))),
            _ => http
                .get(&route.upstream.id)
                .map(|h| Target::Http(Arc::clone(h))),
        };
        let Some(target) = target else {
            return Err(StartupError::Upstream {
                id: route.upstream.id.clone(),
                what: format!("route {:?}", route.id),
                why: "the upstream was not prepared".into(),
            });
        };
        routes.push(Arc::new(RouteRuntime {
            config: Arc::clone(route),
            plugins: plugins::for_route(route, &keys, &tokens),
            target,
        }));
    }
    Ok((RouteTable::new(routes), health))
}

fn kafka_cluster(upstream: &Upstream) -> Result<KafkaCluster, StartupError> {
    let mut brokers: Vec<String> = upstream
        .nodes
        .iter()
        .filter(|n| n.weight > 0)
        .map(|n| n.to_string())
        .collect();
    brokers.sort();
    let tls = match &upstream.tls {
        None => None,
        Some(t) => Some((
            t.clone(),
            crate::tls::kafka_client_config(t).map_err(|why| StartupError::Upstream {
                id: upstream.id.clone(),
                what: "tls".into(),
                why,
            })?,
        )),
    };
    Ok(KafkaCluster {
        upstream_id: upstream.id.clone(),
        brokers,
        tls,
        connect_timeout: upstream.timeouts.connect,
    })
}

/// Checks that every listener address can be bound now, so a taken port is a clear error at
/// start-up rather than a failure inside Pingora's threads.
fn check_bindable(config: &Config) -> Result<(), StartupError> {
    let admin = config.admin.iter().map(|a| a.listen);
    let tls = config.server.tls_listen.iter().map(|l| l.address);
    for addr in config.server.listen.iter().copied().chain(tls).chain(admin) {
        std::net::TcpListener::bind(addr).map_err(|e| StartupError::Listener {
            address: addr.to_string(),
            why: format!("cannot listen: {e}"),
        })?;
    }
    Ok(())
}

/// Builds the Pingora server: listeners, the proxy, health checks and live reload (from
/// `config_file`, on SIGHUP), the pub/sub shutdown relay and the admin listener. With `upgrade`,
/// the listening sockets are taken over from the running gateway (Pingora's zero-downtime
/// upgrade: that process hands them over on SIGQUIT) instead of being bound.
pub fn build(
    config: &Config,
    config_file: &std::path::Path,
    upgrade: bool,
) -> Result<Server, StartupError> {
    let prepared = prepare(config)?;
    if !upgrade {
        check_bindable(config)?;
    }
    let conf = ServerConf {
        upgrade_sock: config.server.upgrade_sock.to_string_lossy().into_owned(),
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout.as_secs()),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let relay = prepared.pubsub.shutdown_relay();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        prepared.gateway,
        "streamgate",
    );
    for addr in &config.server.listen {
        let l4 = L4BufferSettings {
            read: Some(config.server.l4_read_buffer_bytes),
            write: None,
        };
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(l4));
    }
    for l in &config.server.tls_listen {
        let at = |why: String| StartupError::Listener {
            address: l.address.to_string(),
            why,
        };
        let cert = l
            .cert_file
            .to_str()
            .ok_or_else(|| at("certificate path is not UTF-8".into()))?;
        let key = l
            .key_file
            .to_str()
            .ok_or_else(|| at("key path is not UTF-8".into()))?;
        let mut settings = TlsSettings::intermediate(cert, key).map_err(|e| at(e.to_string()))?;
        if l.http2 {
            settings.enable_h2();
        }
        proxy.add_listener(ListenerConfig::tcp(l.address.to_string()).tls(settings));
    }
    server.add_service(proxy);
    let reloader = Reloader::new(
        config_file.to_path_buf(),
        config,
        Arc::clone(&prepared.routes),
        prepared.health,
    );
    server.add_service(background_service("config reload", reloader));
    server.add_service(background_service("pub/sub shutdown relay", relay));
    if let Some(admin) = &config.admin {
        let mut service = Service::new(
            "admin".to_string(),
            AdminApp {
                pubsub: Arc::clone(&prepared.pubsub),
            },
        );
        service.add_tcp(&admin.listen.to_string());
        server.add_service(service);
    }
    Ok(server)
}
