//! Live reload: on SIGHUP the configuration file is read and checked again; if it is valid, the
//! route table (routes, plugins and their settings, upstreams, consumers) is replaced at once for
//! every request that starts afterwards. Requests in progress keep the table they started with
//! until they end; open pub/sub sessions are re-checked against the new one (their caller's
//! credentials and the topics they read: allowed, they go on under the new allow-lists; not,
//! they are closed with 1008 and the reason). An invalid file changes nothing and every problem is
//! logged. Listeners, threads, `[server.limits]` and `[admin]` are fixed at start-up: a change to
//! them is reported as needing a restart (or Pingora's zero-downtime upgrade, see the README).
//!
//! With `[server] reload_on_change = true` the file is also checked every second and reloaded
//! when its modification time or size changes.
//!
//! Each table's HTTP health checks run as tasks of this service until the table is replaced.

use crate::pubsub::PubSub;
use crate::routes::TableInForce;
use crate::sync::lock;
use crate::upstream::HealthTask;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use streamgate_config::Config;
use tokio::sync::watch;

/// The background service that owns reloads and the health checks of the table in force.
pub(crate) struct Reloader {
    file: PathBuf,
    fixed: String,
    watch: bool,
    routes: Arc<TableInForce>,
    pubsub: Arc<PubSub>,
    providers: Arc<crate::plugins::Providers>,
    first_health: Mutex<Vec<HealthTask>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The parts of a configuration that only a restart changes, as comparable text.
fn fixed_parts(config: &Config) -> String {
    format!("{:?}\n{:?}", config.server, config.admin)
}

impl Reloader {
    /// A reloader of `file`, whose start-up configuration was `config` with `routes` built from
    /// it and `health` checks to run.
    pub(crate) fn new(
        file: PathBuf,
        config: &Config,
        routes: Arc<TableInForce>,
        pubsub: Arc<PubSub>,
        providers: Arc<crate::plugins::Providers>,
        health: Vec<HealthTask>,
    ) -> Self {
        Self {
            file,
            fixed: fixed_parts(config),
            watch: config.server.reload_on_change,
            routes,
            pubsub,
            providers,
            first_health: Mutex::new(health),
        }
    }

    /// Reads, checks and applies the file; returns the new health checks, or `None` when the
    /// file was refused (and logged).
    fn reload(&self) -> Option<Vec<HealthTask>> {
        let metrics = crate::metrics::metrics();
        let config = match streamgate_config::load(&self.file) {
            Ok(config) => config,
            Err(e) => {
                metrics.reloads.with_label_values(&["refused"]).inc();
                tracing::error!(
                    "configuration reload refused, the current configuration stays in force:\n{e}"
                );
                return None;
            }
        };
        let (table, health) = match crate::routes::build(&config, &self.providers, true) {
            Ok(built) => built,
            Err(e) => {
                metrics.reloads.with_label_values(&["refused"]).inc();
                tracing::error!(
                    "configuration reload refused, the current configuration stays in force: {}: {e}",
                    self.file.display()
                );
                return None;
            }
        };
        if fixed_parts(&config) != self.fixed {
            tracing::warn!(
                "[server] or [admin] changed in {}: listeners, threads, limits and the admin \
                 listener change only with a restart; the routes were reloaded",
                self.file.display()
            );
        }
        let table = self.routes.replace(table);
        self.pubsub.recheck_sessions(table);
        metrics.reloads.with_label_values(&["applied"]).inc();
        tracing::info!(
            file = %self.file.display(),
            routes = config.routes.len(),
            upstreams = config.upstreams.len(),
            consumers = config.consumers.len(),
            "configuration reloaded"
        );
        Some(health)
    }
}

/// What tells a changed file: its modification time and size.
fn file_stamp(file: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Runs `tasks` until `retire` turns true.
fn start_health(tasks: Vec<HealthTask>, retire: &watch::Sender<bool>) {
    for task in tasks {
        let stop = retire.subscribe();
        tokio::spawn(async move { task.start(stop).await });
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut retire = watch::channel(false).0;
        let first = std::mem::take(&mut *lock(&self.first_health));
        start_health(first, &retire);
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => Some(signal),
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGHUP: live reload is off");
                    None
                }
            };
        let mut stamp = file_stamp(&self.file);
        let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                Some(()) = async { hangups.as_mut()?.recv().await } => "SIGHUP",
                _ = poll.tick(), if self.watch => {
                    let now = file_stamp(&self.file);
                    if now == stamp || now.is_none() {
                        continue;
                    }
                    "the file changed"
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        let _ = retire.send(true);
                        return;
                    }
                    continue;
                }
            };
            stamp = file_stamp(&self.file);
            tracing::info!(file = %self.file.display(), "{why}: reloading the configuration");
            if let Some(health) = self.reload() {
                let next = watch::channel(false).0;
                start_health(health, &next);
                let _ = std::mem::replace(&mut retire, next).send(true);
            }
        }
    }
}
