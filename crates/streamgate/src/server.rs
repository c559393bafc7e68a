//! Assembling the Pingora server from a checked configuration: the proxy service with its
//! listeners, live reload, the pub/sub shutdown relay and the admin listener.

use crate::admin::AdminApp;
use crate::error::StartupError;
use crate::proxy::Gateway;
use crate::pubsub::PubSub;
use crate::reload::Reloader;
use crate::routes::TableInForce;
use crate::upstream::HealthTask;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;
use streamgate_config::Config;

/// Everything built from a configuration, before any socket is bound.
pub struct Prepared {
    gateway: Gateway,
    pubsub: Arc<PubSub>,
    /// Identity providers' key sets, kept across reloads.
    providers: Arc<crate::plugins::Providers>,
    /// The route table in force (the reloader replaces it).
    routes: Arc<TableInForce>,
    /// Health checks of the table's upstreams, to run while it is in force.
    health: Vec<HealthTask>,
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
    prepare_fetching(config, false)
}

/// [`prepare`], fetching identity providers' keys when `fetch` (a real start).
fn prepare_fetching(config: &Config, fetch: bool) -> Result<Prepared, StartupError> {
    for l in &config.server.tls_listen {
        let at = |why| StartupError::Listener {
            address: l.address.to_string(),
            why,
        };
        crate::tls::read_certs(&l.cert_file).map_err(at)?;
        crate::tls::read_key(&l.key_file).map_err(at)?;
    }
    let pubsub = Arc::new(PubSub::default());
    let providers = Arc::new(crate::plugins::Providers::default());
    let (table, health) = crate::routes::build(config, &providers, fetch)?;
    let routes = TableInForce::new(table);
    Ok(Prepared {
        gateway: Gateway::new(
            Arc::clone(&routes),
            Arc::clone(&pubsub),
            crate::limits::ConnectionLimits::new(config.server.limits.clone()),
            &config.server,
        ),
        pubsub,
        providers,
        routes,
        health,
    })
}

/// The Unix socket for Pingora's zero-downtime upgrade. Whoever can connect to it receives the
/// listening sockets, so it lives in a directory only this user can enter: the configured
/// path's directory, or by default `upgrade.sock` in `$RUNTIME_DIRECTORY` (systemd's
/// `RuntimeDirectory=`), else `$XDG_RUNTIME_DIR/streamgate`, else `/run/streamgate` for root,
/// else `streamgate-UID` in the temporary directory. A default directory is created with mode
/// 0700; any directory that others can write to, or that another user owns, is refused.
fn upgrade_socket(
    configured: Option<&std::path::Path>,
) -> Result<std::path::PathBuf, StartupError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let refuse = |dir: &std::path::Path, why: String| StartupError::Listener {
        address: format!("upgrade socket in {}", dir.display()),
        why,
    };
    // The owner of /proc/self is this process's effective user.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let path = match configured {
        Some(path) => path.to_path_buf(),
        None => {
            let env_dir = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
            let dir = if let Some(dir) = env_dir("RUNTIME_DIRECTORY") {
                std::path::PathBuf::from(dir)
            } else if let Some(dir) = env_dir("XDG_RUNTIME_DIR") {
                std::path::PathBuf::from(dir).join("streamgate")
            } else if me == Some(0) {
                std::path::PathBuf::from("/run/streamgate")
            } else {
                std::env::temp_dir().join(format!("streamgate-{}", me.unwrap_or(0)))
            };
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| refuse(&dir, format!("cannot create it: {e}")))?;
            }
            dir.join("upgrade.sock")
        }
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let meta = std::fs::metadata(dir).map_err(|e| refuse(dir, format!("cannot read it: {e}")))?;
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(refuse(
            dir,
            "others can write to it, so another user could take the socket over and receive the listening sockets: use a private directory (mode 0700)".into(),
        ));
    }
    if me.is_some_and(|me| meta.uid() != me && meta.uid() != 0) {
        return Err(refuse(
            dir,
            format!("it belongs to user {}, not to this one", meta.uid()),
        ));
    }
    Ok(path)
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
    let prepared = prepare_fetching(config, true)?;
    if !upgrade {
        check_bindable(config)?;
    }
    // Tokens of an identity provider are verified with its published keys: without them every
    // such token would be refused, so the start waits for them (unless start_without_keys).
    if let Some((id, why)) = prepared.providers.wait_first_fetch().into_iter().next() {
        return Err(StartupError::Provider { id, why });
    }
    let conf = ServerConf {
        upgrade_sock: upgrade_socket(config.server.upgrade_sock.as_deref())?
            .to_string_lossy()
            .into_owned(),
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
        Arc::clone(&prepared.pubsub),
        Arc::clone(&prepared.providers),
        prepared.health,
    );
    server.add_service(background_service("config reload", reloader));
    server.add_service(background_service("pub/sub shutdown relay", relay));
    if let Some(admin) = &config.admin {
        let mut service = Service::new(
            "admin".to_string(),
            AdminApp {
                pubsub: Arc::clone(&prepared.pubsub),
                providers: Arc::clone(&prepared.providers),
            },
        );
        service.add_tcp(&admin.listen.to_string());
        server.add_service(service);
    }
    Ok(server)
}
