//! Starting the gateway under test, and reading its admin counters.

use std::net::SocketAddr;
use std::path::Path;
use streamgate_testkit::{free_port, GatewayProcess};

pub(crate) fn gateway_config(
    addr: SocketAddr,
    threads: usize,
    broker: &str,
    extra: &str,
) -> String {
    format!(
        r#"[server]
listen = ["{addr}"]
threads = {threads}
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1

# Every benchmark client comes from 127.0.0.1: lift the per-client limits.
[server.limits]
max_connections = 1000000
max_connections_per_ip = 1000000

[[upstreams]]
id = "kafka"
scheme = "kafka"
nodes = {{ "{broker}" = 1 }}

[[routes]]
id = "kafka"
uri = "/kafka"
upstream_id = "kafka"
[routes.plugins.kafka-proxy]
max_frame_bytes = 67108864
fetch_max_bytes = 1048576
fetch_max_wait_ms = 200
max_in_flight = 64
max_commands_per_second = 0
idle_timeout_ms = 3600000

{extra}
"#
    )
}

pub(crate) async fn start_gateway(
    binary: &Path,
    threads: usize,
    broker: &str,
    extra: &str,
) -> GatewayProcess {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    GatewayProcess::start_with_env(
        binary,
        &gateway_config(addr, threads, broker, extra),
        addr,
        &[("STREAMGATE_LOG", "warn")],
    )
    .await
}

/// A counter from the gateway's `/readyz` (e.g. `kafka_broker_fetches`).
pub(crate) async fn admin_counter(
    admin: SocketAddr,
    name: &str,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut tcp = tokio::net::TcpStream::connect(admin).await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| format!("{name} not in /readyz").into())
}
