//! The baselines of scenario 5: nginx, bare Pingora (alone and doing a proxy's duties), and wrk, which loads them all.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A `ProxyHttp` that only picks the one node: what Pingora costs before any gateway code. With
/// `duties`, it also does the work any proxy must (see [`Cmd::BarePingora`]), through the same
/// Pingora calls the gateway makes, so that the gateway's cost can be told from the cost of the
/// job itself.
pub(crate) struct BareProxy {
    pub(crate) node: SocketAddr,
    pub(crate) duties: bool,
}

#[async_trait::async_trait]
impl pingora::proxy::ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut pingora::proxy::Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<pingora::upstreams::peer::HttpPeer>> {
        let mut peer = pingora::upstreams::peer::HttpPeer::new(self.node, false, String::new());
        if self.duties {
            // The gateway's defaults (`[upstreams.timeouts]`).
            peer.options.connection_timeout = Some(Duration::from_secs(6));
            peer.options.total_connection_timeout = Some(Duration::from_secs(6));
            peer.options.read_timeout = Some(Duration::from_secs(60));
            peer.options.write_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut pingora::proxy::Session,
        upstream: &mut pingora::http::RequestHeader,
        _ctx: &mut (),
    ) -> pingora::Result<()> {
        if !self.duties {
            return Ok(());
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let ip = http::HeaderValue::from_str(&ip.to_string())
                .map_err(|_| pingora::Error::new(pingora::ErrorType::InvalidHTTPHeader))?;
            upstream.insert_header("x-forwarded-for", ip.clone())?;
            upstream.insert_header("x-real-ip", ip)?;
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        if let Some(host) = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned()
        {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }
}

/// Serves [`BareProxy`] until killed.
pub(crate) fn bare_pingora(listen: SocketAddr, node: SocketAddr, duties: bool) -> ! {
    let conf = pingora::server::configuration::ServerConf {
        threads: 1,
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(
        pingora::server::configuration::Opt::default(),
        conf,
    );
    server.bootstrap();
    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, BareProxy { node, duties });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever()
}

/// A child process, killed when dropped (also on an early return).
pub(crate) struct Running {
    pub(crate) child: std::process::Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn nginx(
    dir: &Path,
    name: &str,
    server_block: &str,
) -> Result<Running, Box<dyn std::error::Error>> {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::create_dir_all(dir.join(format!("{name}-tmp")))?;
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\nerror_log {dir}/{name}-error.log;\npid {dir}/{name}.pid;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/{name}-tmp;\n  proxy_temp_path {dir}/{name}-tmp;\n  fastcgi_temp_path {dir}/{name}-tmp;\n  uwsgi_temp_path {dir}/{name}-tmp;\n  scgi_temp_path {dir}/{name}-tmp;\n  {server_block}\n}}\n",
            dir = dir.display()
        ),
    )?;
    let child = Command::new("nginx")
        .args([
            "-c",
            &conf.display().to_string(),
            "-p",
            &dir.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("nginx: {e} (apt-get install nginx)"))?;
    Ok(Running { child })
}

/// Runs wrk against `url`; returns (requests/s, p50 ms, p99 ms).
pub(crate) fn wrk(url: &str, seconds: u64) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c50",
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .map_err(|e| format!("wrk: {e} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |v: &str| -> f64 {
        let v = v.trim();
        if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().unwrap_or(0.0) / 1000.0
        } else if let Some(x) = v.strip_suffix("ms") {
            x.parse().unwrap_or(0.0)
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>().unwrap_or(0.0) * 1000.0
        } else {
            0.0
        }
    };
    let mut rps = 0.0;
    let (mut p50, mut p99) = (0.0, 0.0);
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = ms(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = ms(v);
        }
    }
    if rps == 0.0 || text.contains("Non-2xx") {
        return Err(format!("wrk against {url} failed:\n{text}").into());
    }
    Ok((rps, p50, p99))
}
