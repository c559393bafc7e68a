//! Test support for Streamgate: real parts on loopback, nothing mocked.
//!
//! * [`Broker`]: a real Kafka-protocol broker process (tansu, see `tools/test-broker/`) on a free
//!   127.0.0.1 port, plaintext or with SASL (PLAIN and SCRAM users), optionally behind a TLS
//!   terminator whose CA is made at test time ([`TestCa`]). Killed on drop.
//! * [`fixtures`]: topics with unique names and records produced as the contract's fixtures need.
//! * [`Upstream`]: a real HTTP(S) server for proxying tests.
//! * [`GatewayProcess`]: the `streamgate` binary with a temporary config, killed on drop.
//! * [`fuzz`]: a seeded generator for the fuzz tests.
//! * [`sessions`]: thousands of idle WebSocket sessions at once.
#![deny(rust_2018_idioms, unsafe_code)]
#![allow(clippy::new_without_default)]

mod broker;
pub mod fixtures;
pub mod fuzz;
mod gateway;
mod http_upstream;
pub mod sessions;
mod tls;

pub use broker::{Broker, BrokerOptions, Engine, SaslUser};
pub use gateway::GatewayProcess;
pub use http_upstream::Upstream;
pub use tls::{TestCa, TlsTerminator};

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback port")
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "nothing accepted connections on {addr} within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
