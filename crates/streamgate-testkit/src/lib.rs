//! Test support for Streamgate: real parts on loopback, nothing mocked.
//!
//! * [`binary`]: the workspace's programs (the gateway, `streamgate-consume`), built up to date.
//! * [`Broker`]: a real Kafka-protocol broker process (tansu, see `tools/test-broker/`) on a free
//!   127.0.0.1 port, plaintext or with SASL (PLAIN and SCRAM users), optionally behind a TLS
//!   terminator whose CA is made at test time ([`TestCa`]). Killed on drop.
//! * [`fixtures`]: topics with unique names and records produced as the contract's fixtures need.
//! * [`Upstream`]: a real HTTP(S) server for proxying tests.
//! * [`GatewayConfig`]: the TOML a test gives the gateway, put together from a few calls.
//! * [`GatewayProcess`]: the `streamgate` binary with a temporary config, killed on drop.
//! * [`fuzz`]: a seeded generator for the fuzz tests.
//! * [`sessions`]: thousands of idle WebSocket sessions at once.
//! * [`FaultyCluster`]: the broker seen as a cluster of several, with leader moves, faults,
//!   transactions and Kafka's answers where the test broker's differ; [`TxnWriter`] writes
//!   transactions with raw Produce requests; [`produce_raw`] writes records byte for byte.
#![deny(rust_2018_idioms, unsafe_code)]
#![allow(clippy::new_without_default)]

mod binary;
mod broker;
pub mod config;
pub mod fixtures;
pub mod fuzz;
mod gateway;
mod http_upstream;
mod identity;
mod kafka_faults;
mod raw_records;
pub mod sessions;
pub mod subscribers;
mod tap;
mod tls;

pub use binary::{binary, workspace_root};
pub use broker::{Broker, BrokerOptions, Engine, SaslUser};
pub use config::GatewayConfig;
pub use gateway::GatewayProcess;
pub use http_upstream::Upstream;
pub use identity::{IdentityProvider, KeySetAnswer, SigningKey};
pub use kafka_faults::{Fault, FaultOptions, FaultyCluster, TxnWriter};
pub use raw_records::{produce_raw, RawRecord};
pub use tap::Tap;
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

/// Whether process `pid` holds a listening TCP socket on `port` (Linux: `/proc/net/tcp{,6}` and
/// the process's file descriptors).
///
/// A port from [`free_port`] is free only when asked: two tests running at once can be handed the
/// same one, and then "something accepts connections on it" says nothing about *our* process.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address (hex ip:port), state 0A = LISTEN, inode in column 10.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let listening_here = *state == "0A"
                && local
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port);
            if listening_here {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.contains(target.to_string_lossy().as_ref()))
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

/// A resume cursor as every gateway writes it (version 1: topic, partition count, each partition
/// and next offset as varints, CRC-32C; URL-safe base64 without padding), for tests that need
/// one the gateway did not hand out.
pub fn cursor(topic: &str, positions: &[(i32, i64)]) -> String {
    use base64::Engine as _;
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut raw = vec![1u8];
    varint(topic.len() as u64, &mut raw);
    raw.extend_from_slice(topic.as_bytes());
    varint(positions.len() as u64, &mut raw);
    for &(partition, offset) in positions {
        varint(u64::from(partition as u32), &mut raw);
        varint(offset as u64, &mut raw);
    }
    let sum = crc32c::crc32c(&raw);
    raw.extend_from_slice(&sum.to_le_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

#[cfg(test)]
mod tests {
    #[test]
    fn listens_on_names_the_owner_of_a_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(super::listens_on(std::process::id(), port));
        // PID 1 is not this process.
        assert!(!super::listens_on(1, port));
        drop(listener);
        assert!(!super::listens_on(std::process::id(), port));
    }
}
