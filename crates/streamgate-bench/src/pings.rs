//! 2. Protocol overhead: `cmd_ping` round trips vs a bare tokio-tungstenite echo server.

use crate::{gateway::*, measure::*, report::*, Cli};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use streamgate_protocol::PubSubClient;
use streamgate_testkit::{free_port, Broker};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub(crate) async fn echo_server(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true).ok();
        tokio::spawn(async move {
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
            else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_binary() && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// `connections` clients ping for `duration`; returns (pings/s, sorted latencies in µs).
pub(crate) async fn ping_load(
    url: &str,
    connections: usize,
    duration: Duration,
) -> Result<(f64, Vec<u32>), Box<dyn std::error::Error>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(PubSubClient::connect(url).await?);
    }
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let t = Instant::now();
                if c.ping(bytes::Bytes::from_static(b"bench")).await.is_err() {
                    break;
                }
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            let _ = c.close().await;
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r?);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((all.len() as f64 / secs, all))
}

pub(crate) async fn ping_overhead(
    cli: &Cli,
    gateway_bin: &Path,
    broker: &Broker,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let echo_port = free_port();
    let mut echo = Command::new(std::env::current_exe()?)
        .args(["echo-server", "--port", &echo_port.to_string()])
        .spawn()?;
    streamgate_testkit::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], echo_port)),
        Duration::from_secs(5),
    )
    .await?;
    let gw = start_gateway(gateway_bin, 1, &broker.bootstrap, "").await;
    // Server on core 0, this load generator on core 1.
    pin(echo.id(), "0");
    pin(gw.pid(), "0");
    pin(std::process::id(), "1");
    let echo_url = format!("ws://127.0.0.1:{echo_port}/");
    let duration = Duration::from_secs_f64((3.0 * cli.scale).max(1.0));
    for connections in [1usize, 100, 1000] {
        let (mut g_rate, mut e_rate, mut g_p50, mut e_p50, mut g_p99, mut e_p99) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for rep in 0..cli.reps {
            progress(&format!(
                "2: {connections} connections, repetition {}",
                rep + 1
            ));
            let (rate, lat) = ping_load(&gw.ws_url("/kafka"), connections, duration).await?;
            g_rate.push(rate);
            g_p50.push(percentile(&lat, 0.50));
            g_p99.push(percentile(&lat, 0.99));
            let (rate, lat) = ping_load(&echo_url, connections, duration).await?;
            e_rate.push(rate);
            e_p50.push(percentile(&lat, 0.50));
            e_p99.push(percentile(&lat, 0.99));
        }
        let name = format!("2. ping, {connections} conn.");
        let (g, e) = (stat(&g_rate), stat(&e_rate));
        report.row(
            &name,
            "round trips/s",
            fmt(g, 0),
            fmt(e, 0),
            format!("{:.0} %", g.median / e.median * 100.0),
        );
        let (g, e) = (stat(&g_p50), stat(&e_p50));
        report.row(
            &name,
            "p50 ms",
            fmt(g, 3),
            fmt(e, 3),
            format!("{:.2}×", g.median / e.median),
        );
        let (g, e) = (stat(&g_p99), stat(&e_p99));
        report.row(
            &name,
            "p99 ms",
            fmt(g, 3),
            fmt(e, 3),
            format!("{:.2}×", g.median / e.median),
        );
    }
    pin(std::process::id(), "0,1");
    let _ = echo.kill();
    let _ = echo.wait();
    Ok(())
}
