//! HTTP(S) upstreams at run time: node selection, health, and the peer to connect to.
//!
//! Built once at start-up from the checked model. Selection uses Pingora's load balancer (weighted
//! round robin, or Ketama consistent hashing), which skips nodes that active health checks took
//! out. Retries exclude nodes already tried for the request. An upstream of one node skips the
//! selector and asks the node's health directly: same answer, a fraction of the work.

use crate::error::StartupError;
use futures_util::FutureExt;
use pingora::lb::{
    discovery,
    health_check::HttpHealthCheck,
    selection::{Consistent, RoundRobin},
    Backend, Backends, LoadBalancer,
};
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::proxy::Session;
use pingora::utils::tls::{CertKey, WrappedX509};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use streamgate_config::model::{Balance, HashOn, HostPolicy, Node, Scheme, Upstream};

/// One HTTP(S) upstream, ready to pick nodes.
pub(crate) struct HttpUpstream {
    /// The checked settings.
    pub config: Arc<Upstream>,
    balancer: Balancer,
    /// The only node, when there is one (most upstreams): choosing it needs no walk through
    /// Pingora's selector, whose iterator costs more per request than the rest of node choice.
    only: Option<Backend>,
    /// Enough selector steps to walk every weighted slot once.
    max_steps: usize,
    nodes: HashMap<SocketAddr, Node>,
    tls: Option<PeerTls>,
    /// Keeps this upstream's pooled connections to itself. Pingora's reuse key leaves out the
    /// trusted CA, so without it a connection verified for one upstream could be reused by
    /// another that trusts different roots.
    pool_key: u64,
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("id", &self.config.id)
            .finish_non_exhaustive()
    }
}

enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Chash(Arc<LoadBalancer<Consistent>>),
}

struct PeerTls {
    verify: bool,
    sni: Option<String>,
    ca: Option<Arc<[WrappedX509]>>,
    client_cert: Option<Arc<CertKey>>,
}

/// An upstream's active health checks, to run (until retired) while its configuration is in
/// force; see [`crate::reload`].
pub(crate) type HealthTask =
    Arc<dyn pingora::services::background::BackgroundService + Send + Sync>;

impl HttpUpstream {
    /// Resolves the nodes, loads TLS files and builds the balancer. Returns the health checks to
    /// run when the upstream has them configured.
    pub(crate) fn build(config: Arc<Upstream>) -> Result<(Self, Option<HealthTask>), StartupError> {
        let at = |what: &str, why: String| StartupError::Upstream {
            id: config.id.clone(),
            what: what.to_string(),
            why,
        };
        let mut nodes = HashMap::new();
        let mut backends = BTreeSet::new();
        for node in config.nodes.iter().filter(|n| n.weight > 0) {
            let addr = (node.host.as_str(), node.port)
                .to_socket_addrs()
                .map_err(|e| at(&format!("node {node}"), format!("cannot resolve: {e}")))?
                .next()
                .ok_or_else(|| at(&format!("node {node}"), "resolves to no address".into()))?;
            nodes.insert(addr, node.clone());
            backends.insert(Backend {
                addr: PeerAddr::Inet(addr),
                weight: node.weight as usize,
                ext: Default::default(),
            });
        }
        let tls = match &config.tls {
            None => None,
            Some(t) => Some(PeerTls {
                verify: t.verify,
                sni: t.sni.clone(),
                ca: t
                    .ca_file
                    .as_deref()
                    .map(crate::tls::pingora_ca)
                    .transpose()
                    .map_err(|e| at("tls.ca_file", e))?,
                client_cert: t
                    .client_cert
                    .as_ref()
                    .map(|(c, k)| crate::tls::pingora_client_cert(c, k))
                    .transpose()
                    .map_err(|e| at("tls.client_cert_file", e))?,
            }),
        };
        let only = match backends.len() {
            1 => backends.first().cloned(),
            _ => None,
        };
        let max_steps = nodes
            .values()
            .map(|n| n.weight as usize)
            .sum::<usize>()
            .max(1)
            * 2;
        let backends = Backends::new(discovery::Static::new(backends));
        let health = config.health_check.as_ref().map(|h| {
            let host = config.nodes[0].host.clone();
            let tls_on = config.scheme == Scheme::Https;
            let mut check = HttpHealthCheck::new(&host, tls_on);
            check.consecutive_success = h.healthy_threshold;
            check.consecutive_failure = h.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(h.timeout);
            check.peer_template.options.read_timeout = Some(h.timeout);
            if let Some(t) = &tls {
                check.peer_template.options.verify_cert = t.verify;
                check.peer_template.options.ca = t.ca.clone();
                if let Some(sni) = &t.sni {
                    check.peer_template.sni = sni.clone();
                }
            }
            // The request line's path; `set_uri` only fails on an invalid URI, which the
            // config check already rejected (it must start with "/").
            if let Ok(uri) = h.path.parse() {
                check.req.set_uri(uri);
            }
            (Box::new(check), h.interval)
        });
        fn finish<S>(
            lb: LoadBalancer<S>,
            health: Option<(Box<HttpHealthCheck>, std::time::Duration)>,
        ) -> (Arc<LoadBalancer<S>>, Option<HealthTask>)
        where
            S: pingora::lb::selection::BackendSelection + Send + Sync + 'static,
            S::Iter: pingora::lb::selection::BackendIter,
        {
            // A static discovery never blocks or fails: this fills the selector at once.
            let _ = lb.update().now_or_never();
            match health {
                None => (Arc::new(lb), None),
                Some((check, interval)) => {
                    let mut lb = lb;
                    lb.set_health_check(check);
                    lb.health_check_frequency = Some(interval);
                    let lb = Arc::new(lb);
                    let task: HealthTask = Arc::clone(&lb) as HealthTask;
                    (lb, Some(task))
                }
            }
        }
        let pool_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            config.id.hash(&mut h);
            config.tls.hash(&mut h);
            h.finish()
        };
        let (balancer, service) = match config.balance {
            Balance::RoundRobin => {
                let (lb, s) = finish(LoadBalancer::<RoundRobin>::from_backends(backends), health);
                (Balancer::RoundRobin(lb), s)
            }
            Balance::Chash(_) => {
                let (lb, s) = finish(LoadBalancer::<Consistent>::from_backends(backends), health);
                (Balancer::Chash(lb), s)
            }
        };
        Ok((
            Self {
                config,
                balancer,
                only,
                max_steps,
                nodes,
                tls,
                pool_key,
            },
            service,
        ))
    }

    /// A healthy node not in `tried`, chosen by the balancing policy for this request.
    pub(crate) fn select(&self, session: &Session, tried: &[SocketAddr]) -> Option<SocketAddr> {
        if let Some(only) = &self.only {
            // Without health checks every node stays ready: skip the look-up.
            let ready = self.config.health_check.is_none() || self.backends().ready(only);
            return usable(only, ready, tried)
                .then(|| only.addr.as_inet().copied())
                .flatten();
        }
        let key = self.hash_key(session);
        self.select_by(&key, tried)
    }

    /// What consistent hashing hashes for this request (nothing for round robin).
    fn hash_key(&self, session: &Session) -> Vec<u8> {
        let req = session.req_header();
        match &self.config.balance {
            Balance::RoundRobin => Vec::new(),
            Balance::Chash(HashOn::RemoteAddr) => crate::request::client_ip(session)
                .map(|ip| ip.to_string().into_bytes())
                .unwrap_or_default(),
            Balance::Chash(HashOn::Uri) => req
                .uri
                .path_and_query()
                .map(|p| p.as_str().as_bytes().to_vec())
                .unwrap_or_default(),
            Balance::Chash(HashOn::Header(name)) => req
                .headers
                .get(name.as_str())
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
            Balance::Chash(HashOn::Cookie(name)) => crate::request::cookie(req, name)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    /// A healthy node not in `tried`, chosen by the balancing policy for `key`.
    fn select_by(&self, key: &[u8], tried: &[SocketAddr]) -> Option<SocketAddr> {
        let accept = |b: &Backend, healthy: bool| usable(b, healthy, tried);
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, self.max_steps, accept),
            Balancer::Chash(lb) => lb.select_with(key, self.max_steps, accept),
        }?;
        backend.addr.as_inet().copied()
    }

    /// The nodes and their health, as the balancer sees them.
    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Chash(lb) => lb.backends(),
        }
    }

    /// The peer for `addr`, with this upstream's timeouts and TLS settings.
    pub(crate) fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let sni = match &self.tls {
            Some(t) => t.sni.clone().unwrap_or_else(|| {
                self.nodes
                    .get(&addr)
                    .map(|n| n.host.clone())
                    .unwrap_or_default()
            }),
            None => String::new(),
        };
        let mut peer = HttpPeer::new(addr, self.tls.is_some(), sni);
        peer.group_key = self.pool_key;
        let t = &self.config.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.send);
        if let Some(tls) = &self.tls {
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            peer.options.ca = tls.ca.clone();
            peer.client_cert_key = tls.client_cert.clone();
        }
        peer
    }

    /// The `Host` header to send to `addr`, or `None` to pass the client's.
    pub(crate) fn host_header(&self, addr: &SocketAddr) -> Option<String> {
        match &self.config.host_policy {
            HostPolicy::Pass => None,
            HostPolicy::Node => self.nodes.get(addr).map(|n| {
                let default_port = if self.config.scheme == Scheme::Https {
                    443
                } else {
                    80
                };
                if n.port == default_port {
                    n.host.clone()
                } else {
                    n.to_string()
                }
            }),
            HostPolicy::Rewrite(h) => Some(h.clone()),
        }
    }
}

/// Whether a request may go to `b`: the node is ready (`healthy`) and not already tried for it.
/// The one rule for both the lone-node shortcut and Pingora's selector.
fn usable(b: &Backend, healthy: bool, tried: &[SocketAddr]) -> bool {
    healthy && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
}
