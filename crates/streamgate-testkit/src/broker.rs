//! Real broker processes for tests.

use crate::tap::Tap;
use crate::tls::{TestCa, TlsTerminator};
use crate::{free_port, wait_for_port};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// The storage engine of a test broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// In memory: fast, snappy works; `Latest` is wrong after multi-record batches.
    Memory,
    /// sqlite in the broker's temp dir: needed for SCRAM; never send it snappy.
    Sqlite,
}

/// A SASL user the broker knows.
#[derive(Debug, Clone)]
pub struct SaslUser {
    /// Name.
    pub name: String,
    /// Password.
    pub password: String,
    /// `scram256` or `scram512`.
    pub mechanism: &'static str,
}

/// How to start a broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Storage engine.
    pub engine: Engine,
    /// When non-empty, clients must authenticate (SCRAM users are created; PLAIN accepts any
    /// password in tansu 0.6.0).
    pub users: Vec<SaslUser>,
    /// Put a TLS terminator in front, with a certificate from this CA.
    pub tls: Option<Arc<TestCa>>,
    /// Put a recording [`Tap`] in front (plaintext only), advertised so that every client
    /// connection passes through it: see [`Broker::sent_to_broker`]. With `users`, the tap also
    /// refuses PLAIN logins whose password is not the user's (SASL_AUTHENTICATION_FAILED).
    pub tap: bool,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            engine: Engine::Memory,
            users: Vec::new(),
            tls: None,
            tap: false,
        }
    }
}

/// A running broker; killed (with its TLS terminator) when dropped.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    binary: PathBuf,
    dir: TempDir,
    options: BrokerOptions,
    /// The port the broker itself listens on (plaintext).
    pub broker_port: u16,
    /// The address clients bootstrap from: the TLS port when TLS is on.
    pub bootstrap: String,
    tls: Option<TlsTerminator>,
    tap: Option<Tap>,
}

/// The broker binary: `$STREAMGATE_TEST_BROKER`, or what `scripts/install-test-broker.sh`
/// installs (a no-op when it is cached already).
pub fn broker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STREAMGATE_TEST_BROKER") {
        return PathBuf::from(path);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-test-broker.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/install-test-broker.sh");
    assert!(out.status.success(), "installing the test broker failed");
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        text.lines()
            .last()
            .expect("the script prints the binary path")
            .trim(),
    )
}

impl Broker {
    /// A plaintext, memory-engine broker.
    pub async fn start() -> Broker {
        Self::start_with(BrokerOptions::default()).await
    }

    /// A broker as `options` say.
    pub async fn start_with(options: BrokerOptions) -> Broker {
        let binary = broker_binary();
        let dir = tempfile::tempdir().expect("temp dir for the broker");
        let broker_port = free_port();
        let (bootstrap, tls, tap) = match (&options.tls, options.tap) {
            (None, false) => (format!("127.0.0.1:{broker_port}"), None, None),
            (None, true) => {
                // With users, the tap also checks PLAIN passwords (tansu accepts any).
                let users = options
                    .users
                    .iter()
                    .map(|u| (u.name.clone(), u.password.clone()))
                    .collect();
                let tap = Tap::start_checking(broker_port, users).await;
                // Clients reconnect to the advertised address, so advertise the tap's port.
                (format!("127.0.0.1:{}", tap.port), None, Some(tap))
            }
            (Some(ca), _) => {
                let terminator = TlsTerminator::start(ca, broker_port).await;
                // Clients reconnect to the advertised address, so advertise the TLS port.
                (
                    format!("localhost:{}", terminator.port),
                    Some(terminator),
                    None,
                )
            }
        };
        let mut broker = Broker {
            child: None,
            binary,
            dir,
            options,
            broker_port,
            bootstrap,
            tls,
            tap,
        };
        if !broker.options.users.is_empty() {
            // Users can only be created while authentication is off.
            broker.spawn(false).await;
            for user in broker.options.users.clone() {
                broker.tansu(&[
                    "user",
                    "create",
                    &user.name,
                    &user.password,
                    "--mechanism",
                    user.mechanism,
                ]);
            }
            broker.stop();
        }
        broker.spawn(!broker.options.users.is_empty()).await;
        broker
    }

    fn storage_url(&self) -> String {
        match self.options.engine {
            Engine::Memory => "memory://tansu/".into(),
            // tansu resolves the path from its working directory, the broker's temp dir.
            Engine::Sqlite => "sqlite://tansu.db".into(),
        }
    }

    fn advertised(&self) -> String {
        format!("tcp://{}", self.bootstrap)
    }

    async fn spawn(&mut self, authentication: bool) {
        let mut cmd = Command::new(&self.binary);
        cmd.current_dir(self.dir.path())
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.broker_port))
            .arg("--advertised-listener-url")
            .arg(if authentication || self.options.users.is_empty() {
                self.advertised()
            } else {
                // While users are created, talk to the broker directly.
                format!("tcp://127.0.0.1:{}", self.broker_port)
            })
            .arg("--storage-engine")
            .arg(self.storage_url())
            .arg("--silent")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if authentication {
            cmd.arg("--authentication");
        }
        let child = cmd.spawn().expect("start the test broker");
        let pid = child.id();
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.broker_port)
            .parse()
            .expect("addr");
        wait_for_port(addr, Duration::from_secs(10))
            .await
            .expect("broker port opens");
        // Another test may have been handed the same free port: make sure it is ours.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !crate::listens_on(pid, self.broker_port) {
            assert!(
                std::time::Instant::now() < deadline,
                "another process listens on the broker's port {}",
                self.broker_port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs a tansu subcommand against this broker (while authentication is off).
    fn tansu(&self, args: &[&str]) {
        let status = Command::new(&self.binary)
            .current_dir(self.dir.path())
            .args(args)
            .arg("--broker")
            .arg(format!("tcp://127.0.0.1:{}", self.broker_port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run tansu");
        assert!(status.success(), "tansu {args:?} failed");
    }

    /// Kills the broker process (the TLS terminator stays); [`restart`](Self::restart) brings
    /// it back on the same port. With the memory engine its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again after [`stop`](Self::stop).
    pub async fn restart(&mut self) {
        self.stop();
        let auth = !self.options.users.is_empty();
        self.spawn(auth).await;
    }

    /// Every byte clients sent the broker so far (with [`BrokerOptions::tap`]; empty without).
    pub fn sent_to_broker(&self) -> Vec<u8> {
        self.tap.as_ref().map(Tap::recorded).unwrap_or_default()
    }

    /// The TLS port clients use, when TLS is on.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(|t| t.port)
    }

    /// The CA clients must trust, when TLS is on.
    pub fn ca(&self) -> Option<&Arc<TestCa>> {
        self.options.tls.as_ref()
    }

    /// An rskafka client as `user` (or unauthenticated), over TLS when the broker has it.
    pub async fn client_as(
        &self,
        sasl: Option<SaslConfig>,
    ) -> Result<Client, rskafka::client::error::Error> {
        let mut builder = ClientBuilder::new(vec![self.bootstrap.clone()]).backoff_config(
            rskafka::BackoffConfig {
                deadline: Some(Duration::from_secs(10)),
                ..Default::default()
            },
        );
        if let Some(ca) = &self.options.tls {
            builder = builder.tls_config(ca.client_config());
        }
        if let Some(s) = sasl {
            builder = builder.sasl_config(s);
        }
        builder.build().await
    }

    /// An rskafka client with the broker's first user (if any), for fixtures.
    pub async fn client(&self) -> Client {
        let sasl = self.options.users.first().map(|u| {
            let creds = Credentials::new(u.name.clone(), u.password.clone());
            match u.mechanism {
                "scram256" => SaslConfig::ScramSha256(creds),
                _ => SaslConfig::ScramSha512(creds),
            }
        });
        let mut last = None;
        for _ in 0..50 {
            match self.client_as(sasl.clone()).await {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "cannot connect to the test broker at {}: {last:?}",
            self.bootstrap
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
