//! Starting the gateway under test, and reading its admin counters.

use std::net::SocketAddr;
use std::path::Path;
use streamgate_testkit::{GatewayConfig, GatewayProcess};

/// The gateway under test: every benchmark client comes from 127.0.0.1, so the per-client limits
/// are lifted; frames, fetches and commands are as large and as many as the scenarios need.
pub(crate) fn gateway_config(threads: usize, broker: &str, extra: &str) -> GatewayConfig {
    GatewayConfig::new()
        .threads(threads)
        .table("[server.limits]\nmax_connections = 1000000\nmax_connections_per_ip = 1000000")
        .kafka_upstream("kafka", broker, "")
        .kafka_route(
            "kafka",
            "/kafka",
            "kafka",
            "max_frame_bytes = 67108864\nfetch_max_bytes = 1048576\nfetch_max_wait_ms = 200\n\
             socket_timeout_ms = 5000\nmax_in_flight = 64\nmax_commands_per_second = 0\n\
             idle_timeout_ms = 3600000\ngroup_prefix = \"bench.\"",
        )
        .table(extra)
}

pub(crate) async fn start_gateway(
    binary: &Path,
    threads: usize,
    broker: &str,
    extra: &str,
) -> GatewayProcess {
    gateway_config(threads, broker, extra)
        .start_with_env(binary, &[("STREAMGATE_LOG", "warn")])
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
