//! A real TCP load balancer (Debian's HAProxy) in front of gateways, as the scale-out tests and
//! the multi-gateway group test use it: round robin, health checks on each gateway's `/readyz`
//! every 200 ms, a refused connection tried on another gateway.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use streamgate_testkit::free_port;

/// A running HAProxy; killed when dropped.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Balancer {
    /// Balances over `gateways`, each a listener and its admin listener (checked on `/readyz`).
    pub async fn start(gateways: &[(SocketAddr, SocketAddr)]) -> Balancer {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        let servers: String = gateways
            .iter()
            .enumerate()
            .map(|(i, (gw, admin))| {
                format!(
                    "    server gw{i} {gw} check port {} inter 200ms fall 1 rise 1\n",
                    admin.port()
                )
            })
            .collect();
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 1000\n\ndefaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n    retries 3\n    option redispatch\n\n\
                 frontend edge\n    bind {addr}\n    default_backend gateways\n\n\
                 backend gateways\n    balance roundrobin\n    option httpchk GET /readyz\n{servers}"
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(haproxy())
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy runs (make test installs Debian's package)");
        streamgate_testkit::wait_for_port(addr, Duration::from_secs(5))
            .await
            .expect("haproxy listens");
        Balancer {
            addr,
            _child: child,
            _dir: dir,
        }
    }
}

fn haproxy() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}
