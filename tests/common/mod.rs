//! Shared set-up of the integration tests: a gateway in front of real brokers.
#![allow(dead_code)]

pub mod balancer;
pub mod push;

use std::net::SocketAddr;
use std::path::Path;
use streamgate_testkit::{free_port, Broker, GatewayConfig, GatewayProcess};

/// The gateway binary, built up to date for these tests.
pub fn binary() -> &'static Path {
    streamgate_testkit::binary("streamgate")
}

/// A fresh loopback address for a gateway listener.
pub fn listen_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[allow(unused_imports)] // not every test file splices routes by hand
pub use streamgate_testkit::config::{kafka_route, kafka_upstream};

/// `[server]` for tests (see [`streamgate_testkit::config`]), ending in a blank line that tests
/// may replace to add server keys.
pub fn server_toml(addr: SocketAddr) -> String {
    format!("{}\n", streamgate_testkit::config::server_toml(addr, 2))
}

/// A gateway with one plaintext pub/sub route `/kafka` on `broker`, plus `extra` config.
pub async fn gateway_for(broker: &Broker, plugin: &str, extra: &str) -> GatewayProcess {
    GatewayConfig::new()
        .kafka_upstream("kafka", &broker.bootstrap, "")
        .kafka_route("kafka", "/kafka", "kafka", plugin)
        .table(extra)
        .start(binary())
        .await
}

/// A gateway whose one pub/sub route `uri` points at a loopback port where nothing listens.
pub async fn gateway_for_dead_broker(uri: &str, plugin: &str) -> GatewayProcess {
    let dead = format!("127.0.0.1:{}", free_port());
    GatewayConfig::new()
        .kafka_upstream("dead", &dead, "")
        .kafka_route("dead", uri, "dead", plugin)
        .start(binary())
        .await
}

/// A real HTTP client that ignores the environment's proxy settings.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
}

/// GETs `url` and returns its body as text.
pub async fn get_text(url: &str) -> String {
    http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Waits (up to `within`) until the admin listener's `/readyz` shows `line`; panics with what it
/// showed last otherwise.
pub async fn wait_readyz(admin: SocketAddr, line: &str, within: std::time::Duration, why: &str) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let text = get_text(&format!("http://{admin}/readyz")).await;
        if text.contains(line) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{why}: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// GETs `url` and returns its JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// The value of one sample (`name{labels}` exactly as exposed), 0 when absent.
pub async fn metric(admin: SocketAddr, sample: &str) -> f64 {
    let text = http()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits (up to 3 s) for a sample to reach `want`: a request is counted when its access log line
/// is written, just after the client has its answer. Returns the last value seen.
pub async fn settled(admin: SocketAddr, sample: &str, want: f64) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let value = metric(admin, sample).await;
        if value == want || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
