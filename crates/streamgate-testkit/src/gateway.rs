//! The real `streamgate` binary with a temporary config.

use crate::{listens_on, wait_for_port};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// A running gateway; killed when dropped. Its log is kept in a file for assertions.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Option<Child>,
    dir: TempDir,
    /// The first plain listener.
    pub addr: SocketAddr,
}

impl GatewayProcess {
    /// Starts `binary` with `config` (TOML), after writing it to a temp file; waits until
    /// `addr` (a listener of that config) accepts connections.
    pub async fn start(binary: &Path, config: &str, addr: SocketAddr) -> GatewayProcess {
        Self::start_with_env(binary, config, addr, &[]).await
    }

    /// As [`start`](Self::start), with extra environment variables.
    pub async fn start_with_env(
        binary: &Path,
        config: &str,
        addr: SocketAddr,
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("streamgate.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let mut cmd = Command::new(binary);
        cmd.arg("-c")
            .arg(&config_path)
            .env("STREAMGATE_LOG", "info,streamgate=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start streamgate");
        let mut gateway = GatewayProcess {
            child: Some(child),
            dir,
            addr,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            // Listening, and by this process: another test may have been handed the same
            // free port, and then its gateway answers while ours failed to bind.
            if wait_for_port(addr, Duration::from_millis(100))
                .await
                .is_ok()
                && listens_on(gateway.pid(), addr.port())
            {
                return gateway;
            }
            let exited = gateway
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || std::time::Instant::now() > deadline {
                let log = gateway.log();
                gateway.kill();
                panic!(
                    "the gateway did not start listening on {addr} ({exited:?}); its log:\n{log}"
                );
            }
        }
    }

    /// The base URL of the plain listener, e.g. `http://127.0.0.1:9080`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The WebSocket URL of a path on the plain listener.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Path of the gateway's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Resident memory of the gateway, in KiB. Panics when it cannot be read (the process is
    /// gone, or there is no `/proc`): a 0 would let every memory assertion pass unseen.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// The gateway's peak resident memory since start (`VmHWM`), in KiB: a short spike between
    /// two [`Self::rss_kib`] readings still shows here. Panics when it cannot be read.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    /// One `kB` line of the gateway's `/proc/<pid>/status`.
    fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read the gateway's memory from {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} line in {path}"))
    }

    /// Starts a second gateway with `config` in upgrade mode (`--upgrade`): it waits to take the
    /// listening sockets over from a running one. Returns at once; see [`Self::wait_log`].
    pub fn start_upgrade(binary: &Path, config: &str, addr: SocketAddr) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("streamgate.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .arg("--upgrade")
            .env("STREAMGATE_LOG", "info,streamgate=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start streamgate --upgrade");
        GatewayProcess {
            child: Some(child),
            dir,
            addr,
        }
    }

    /// Waits until the log contains `text`; false on timeout.
    pub async fn wait_log(&self, text: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.log().contains(text) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Sends a signal by name (`QUIT`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// The gateway's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("streamgate.toml")
    }

    /// Replaces the config file with `config` and sends SIGHUP (live reload).
    pub fn reload(&self, config: &str) {
        std::fs::write(self.dir.path().join("streamgate.toml"), config).expect("write config");
        let _ = Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status();
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit; returns its exit status code, or `None` on timeout.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Some(status.code().unwrap_or(-1));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
