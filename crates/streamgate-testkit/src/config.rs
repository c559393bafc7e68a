//! Gateway configurations for tests and benchmarks, written once.
//!
//! A [`GatewayConfig`] is the TOML a test hands the real binary: a `[server]` on a free loopback
//! port with short shutdown periods, then whatever tables the test adds, in the order TOML needs
//! (the server's own keys first). The section helpers are public too, for tests that splice TOML
//! by hand to show what a user would write.

use crate::{free_port, GatewayProcess};
use std::net::SocketAddr;
use std::path::Path;

/// A gateway configuration being put together; [`GatewayConfig::start`] runs it.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    listen: SocketAddr,
    threads: usize,
    server: String,
    tables: String,
}

impl GatewayConfig {
    /// One plain listener on a free loopback port, two threads, one-second shutdown periods.
    pub fn new() -> Self {
        Self::on(SocketAddr::from(([127, 0, 0, 1], free_port())))
    }

    /// As [`new`](Self::new), listening on `listen`.
    pub fn on(listen: SocketAddr) -> Self {
        GatewayConfig {
            listen,
            threads: 2,
            server: String::new(),
            tables: String::new(),
        }
    }

    /// The listener the gateway will accept on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Worker threads (`[server] threads`).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// More `[server]` keys, e.g. `"reload_on_change = true"`.
    pub fn server_keys(mut self, keys: &str) -> Self {
        self.server.push_str(keys);
        self.server.push('\n');
        self
    }

    /// An admin listener (`/metrics`, `/readyz`) at `addr`.
    pub fn admin(self, addr: SocketAddr) -> Self {
        self.table(&format!("[admin]\nlisten = \"{addr}\"\n"))
    }

    /// A kafka upstream `id` on `bootstrap`, with extra lines (e.g. a tls table).
    pub fn kafka_upstream(self, id: &str, bootstrap: &str, extra: &str) -> Self {
        self.table(&kafka_upstream(id, bootstrap, extra))
    }

    /// A pub/sub route `id` at `uri` to `upstream`; see [`kafka_route`].
    pub fn kafka_route(self, id: &str, uri: &str, upstream: &str, plugin: &str) -> Self {
        self.table(&kafka_route(id, uri, upstream, plugin))
    }

    /// Any other tables, as TOML.
    pub fn table(mut self, toml: &str) -> Self {
        self.tables.push_str(toml);
        if !toml.ends_with('\n') {
            self.tables.push('\n');
        }
        self.tables.push('\n');
        self
    }

    /// The whole file.
    pub fn to_toml(&self) -> String {
        format!(
            "{}{}\n{}",
            server_toml(self.listen, self.threads),
            self.server,
            self.tables
        )
    }

    /// Starts `binary` with this configuration and waits until it listens.
    pub async fn start(&self, binary: &Path) -> GatewayProcess {
        GatewayProcess::start(binary, &self.to_toml(), self.listen).await
    }

    /// As [`start`](Self::start), with extra environment variables.
    pub async fn start_with_env(&self, binary: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::start_with_env(binary, &self.to_toml(), self.listen, env).await
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// `[server]` with one plain listener, `threads` workers and short shutdown periods.
pub fn server_toml(addr: SocketAddr, threads: usize) -> String {
    format!("[server]\nlisten = [\"{addr}\"]\nthreads = {threads}\ngrace_period_seconds = 1\ngraceful_shutdown_timeout_seconds = 1\n")
}

/// A kafka upstream `id` on `bootstrap`, with extra lines (e.g. a tls table).
pub fn kafka_upstream(id: &str, bootstrap: &str, extra: &str) -> String {
    format!("[[upstreams]]\nid = \"{id}\"\nscheme = \"kafka\"\nnodes = {{ \"{bootstrap}\" = 1 }}\n{extra}\n")
}

/// A route `id` at `uri` to upstream `upstream`, with a kafka-proxy table body. Unless the body
/// sets them, fetches wait at most 100 ms and Kafka calls give up after 2 s, so tests are quick.
pub fn kafka_route(id: &str, uri: &str, upstream: &str, plugin: &str) -> String {
    let mut body = plugin.to_string();
    for (key, value) in [("fetch_max_wait_ms", "100"), ("socket_timeout_ms", "2000")] {
        if !plugin.contains(key) {
            body.push_str(&format!("\n{key} = {value}"));
        }
    }
    format!("[[routes]]\nid = \"{id}\"\nuri = \"{uri}\"\nupstream_id = \"{upstream}\"\n[routes.plugins.kafka-proxy]\n{body}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_keys_come_before_any_table() {
        let toml = GatewayConfig::on(SocketAddr::from(([127, 0, 0, 1], 9)))
            .admin(SocketAddr::from(([127, 0, 0, 1], 10)))
            .server_keys("reload_on_change = true")
            .kafka_upstream("k", "127.0.0.1:1", "")
            .kafka_route("k", "/k", "k", "topics = [\"t\"]")
            .to_toml();
        let reload = toml.find("reload_on_change").unwrap();
        assert!(reload < toml.find("[admin]").unwrap(), "{toml}");
        assert!(toml.find("[[upstreams]]").unwrap() < toml.find("[[routes]]").unwrap());
        assert!(toml.contains("fetch_max_wait_ms = 100"));
    }
}
