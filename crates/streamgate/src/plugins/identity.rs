//! Identity providers' key sets (`[[identity_providers]]`): fetched at start-up by URL (or found
//! by OpenID discovery), cached, refreshed on the provider's cache headers within the configured
//! bounds, and refetched at once when a token names a key the set does not hold, at most once per
//! `refresh_min` so that made-up `kid`s cannot make the gateway hammer the provider. When the
//! provider cannot be reached the last good keys stay in use, and the log, a metric and `/readyz`
//! say so.
//!
//! One thread of its own runs every provider's fetches (a small runtime beside Pingora's), so a
//! slow provider never holds a request thread; requests only read the current set, or wait for
//! a refetch they asked for, never longer than a fetch's timeout.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use streamgate_config::model::IdentityProvider;
use tokio::sync::{watch, Notify};

/// One key of a provider's set.
pub(crate) struct ProviderKey {
    pub key: DecodingKey,
    /// The `alg` the set pins the key to, if it does.
    pub algorithm: Option<Algorithm>,
}

/// A provider's keys by `kid`, as of one fetch.
#[derive(Default)]
pub(crate) struct KeySet {
    pub keys: HashMap<String, Arc<ProviderKey>>,
}

/// Why a fetch failed, said the way the log and `/readyz` say it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("{url}: {why}")]
    Http { url: String, why: String },
    #[error("{url}: the document is larger than max_document_bytes ({limit})")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: not a {what}: {why}")]
    Malformed {
        url: String,
        what: &'static str,
        why: String,
    },
    #[error("{url}: no usable signing key (RSA, EC P-256/P-384 or Ed25519, not for encryption)")]
    NoKeys { url: String },
}

/// Where a provider stands, for `/readyz` and the start-up check.
#[derive(Debug, Clone, Default)]
pub(crate) struct Standing {
    /// Fetches tried so far.
    pub attempts: u64,
    /// Keys in use now.
    pub keys: usize,
    /// The last fetch's failure, while the last good keys (if any) stay in use.
    pub failing: Option<String>,
}

/// One provider: its settings, its current keys, and the way requests ask for a refetch.
pub(crate) struct Provider {
    pub spec: Arc<IdentityProvider>,
    /// `spec.algorithms`, parsed once.
    pub algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<KeySet>>,
    standing: Mutex<Standing>,
    /// When the last fetch started (refetches for unknown `kid`s wait `refresh_min` after it).
    last_attempt: Mutex<Option<Instant>>,
    /// A fetch is under way (a token with an unknown `kid` waits for it: after a reload, a new
    /// provider's first fetch).
    in_flight: std::sync::atomic::AtomicBool,
    /// Wakes the fetch task for an unknown `kid`.
    wake: Arc<Notify>,
    /// Counts finished fetches, so a request that asked for one can wait for it.
    fetched: watch::Sender<u64>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("id", &self.spec.id)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// The keys in use now.
    pub(crate) fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn standing(&self) -> Standing {
        self.standing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A token named a key the set does not hold: wait for the fetch under way, or refetch now
    /// unless a fetch started less than `refresh_min` ago, and wait (at most the fetch timeout)
    /// for it. Returns the keys then in use.
    pub(crate) async fn refetch_for_unknown_key(&self) -> Arc<KeySet> {
        // Subscribed first, so a fetch that ends between the checks below still counts.
        let mut done = self.fetched.subscribe();
        let in_flight = self.in_flight.load(std::sync::atomic::Ordering::Acquire);
        let due = {
            let last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            last.is_none_or(|at| at.elapsed() >= self.spec.refresh_min)
        };
        if in_flight || due {
            if !in_flight {
                self.wake.notify_one();
            }
            // Discovery and the key set: two requests.
            let _ = tokio::time::timeout(2 * self.spec.timeout, done.changed()).await;
        }
        self.keys()
    }
}

/// Every configured provider, kept across reloads while its settings stay the same (so a reload
/// neither refetches nor drops good keys), with the thread that fetches for them.
pub(crate) struct Providers {
    by_id: Mutex<HashMap<String, Arc<Provider>>>,
    runtime: Mutex<Option<tokio::runtime::Handle>>,
}

impl Default for Providers {
    fn default() -> Self {
        Self {
            by_id: Mutex::new(HashMap::new()),
            runtime: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers").finish_non_exhaustive()
    }
}

impl Providers {
    /// The providers of a configuration: the running one for unchanged settings, a new one
    /// (whose first fetch starts now) otherwise. Providers no longer configured stop fetching
    /// once no route table holds them.
    pub(crate) fn for_config(
        &self,
        specs: &[Arc<IdentityProvider>],
        start_fetching: bool,
    ) -> Vec<Arc<Provider>> {
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(specs.len());
        let mut kept = HashMap::new();
        for spec in specs {
            let provider = match by_id.get(&spec.id) {
                Some(p) if *p.spec == **spec => Arc::clone(p),
                _ => {
                    let provider = Arc::new(Provider {
                        spec: Arc::clone(spec),
                        // The config check allows only names jsonwebtoken knows.
                        algorithms: spec
                            .algorithms
                            .iter()
                            .filter_map(|a| Algorithm::from_str(a).ok())
                            .collect(),
                        keys: RwLock::new(Arc::new(KeySet::default())),
                        standing: Mutex::new(Standing::default()),
                        last_attempt: Mutex::new(None),
                        in_flight: std::sync::atomic::AtomicBool::new(false),
                        wake: Arc::new(Notify::new()),
                        fetched: watch::channel(0).0,
                    });
                    if start_fetching {
                        self.spawn(Arc::downgrade(&provider));
                    }
                    provider
                }
            };
            kept.insert(spec.id.clone(), Arc::clone(&provider));
            out.push(provider);
        }
        *by_id = kept;
        out
    }

    /// Every provider in force, for `/readyz`.
    pub(crate) fn all(&self) -> Vec<Arc<Provider>> {
        let by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = by_id.values().cloned().collect();
        all.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        all
    }

    /// Waits (blocking: before the server runs) until every provider's first fetch finished.
    /// Returns the providers that have no keys and may not start without them.
    pub(crate) fn wait_first_fetch(&self) -> Vec<(String, String)> {
        let mut missing = Vec::new();
        for provider in self.all() {
            let deadline = Instant::now() + 2 * provider.spec.timeout + Duration::from_secs(1);
            while provider.standing().attempts == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let standing = provider.standing();
            if standing.keys == 0 && !provider.spec.start_without_keys {
                let why = standing
                    .failing
                    .unwrap_or_else(|| "no answer within its timeout".into());
                missing.push((provider.spec.id.clone(), why));
            }
        }
        missing
    }

    fn spawn(&self, provider: Weak<Provider>) {
        let mut runtime = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        let handle = match runtime.as_ref() {
            Some(handle) => handle.clone(),
            None => {
                let (tx, rx) = std::sync::mpsc::channel();
                let started = std::thread::Builder::new()
                    .name("identity-providers".into())
                    .spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build();
                        match rt {
                            Ok(rt) => {
                                let _ = tx.send(Some(rt.handle().clone()));
                                rt.block_on(std::future::pending::<()>());
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot start the identity providers' runtime");
                                let _ = tx.send(None);
                            }
                        }
                    });
                let handle = started.ok().and_then(|_| rx.recv().ok().flatten());
                let Some(handle) = handle else {
                    tracing::error!("identity providers' keys will not be fetched");
                    return;
                };
                *runtime = Some(handle.clone());
                handle
            }
        };
        handle.spawn(keep_fresh(provider));
    }
}

/// Fetches a provider's keys until it is no longer configured: at once, then when its cache
/// headers say (within `refresh_min`..`refresh_max`), `refresh_min` after a failure, or when a
/// request asks because of an unknown `kid` (never sooner than `refresh_min` after the last).
async fn keep_fresh(provider: Weak<Provider>) {
    let Some(spec) = provider.upgrade().map(|p| Arc::clone(&p.spec)) else {
        return;
    };
    let metrics = crate::metrics::metrics();
    let client = match client(&spec) {
        Ok(client) => client,
        Err(why) => {
            tracing::error!(provider = %spec.id, why, "cannot build the identity provider's HTTP client");
            if let Some(p) = provider.upgrade() {
                let mut standing = p.standing.lock().unwrap_or_else(|e| e.into_inner());
                standing.attempts += 1;
                standing.failing = Some(why);
            }
            return;
        }
    };
    loop {
        let Some(p) = provider.upgrade() else { return };
        let started = tokio::time::Instant::now();
        *p.last_attempt.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        p.in_flight
            .store(true, std::sync::atomic::Ordering::Release);
        let result = fetch(&spec, &client).await;
        let next = match result {
            Ok((set, max_age)) => {
                let count = set.keys.len();
                *p.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                {
                    let mut standing = p.standing.lock().unwrap_or_else(|e| e.into_inner());
                    if standing.failing.is_some() {
                        tracing::info!(provider = %spec.id, keys = count, "identity provider reachable again");
                    }
                    standing.attempts += 1;
                    standing.keys = count;
                    standing.failing = None;
                }
                metrics
                    .provider_fetches
                    .with_label_values(&[&spec.id, "ok"])
                    .inc();
                metrics
                    .provider_keys
                    .with_label_values(&[&spec.id])
                    .set(count as i64);
                metrics.provider_stale.with_label_values(&[&spec.id]).set(0);
                tracing::debug!(provider = %spec.id, keys = count, "identity provider keys fetched");
                max_age
                    .unwrap_or(spec.refresh_max)
                    .clamp(spec.refresh_min, spec.refresh_max)
            }
            Err(e) => {
                let kept = p.keys().keys.len();
                tracing::warn!(
                    provider = %spec.id,
                    error = %e,
                    keys_in_use = kept,
                    "identity provider keys could not be fetched; the last good keys stay in use"
                );
                {
                    let mut standing = p.standing.lock().unwrap_or_else(|e| e.into_inner());
                    standing.attempts += 1;
                    standing.failing = Some(e.to_string());
                }
                metrics
                    .provider_fetches
                    .with_label_values(&[&spec.id, "failed"])
                    .inc();
                metrics.provider_stale.with_label_values(&[&spec.id]).set(1);
                spec.refresh_min
            }
        };
        p.in_flight
            .store(false, std::sync::atomic::Ordering::Release);
        p.fetched.send_modify(|n| *n += 1);
        let due = tokio::time::Instant::now() + next;
        let earliest = started + spec.refresh_min;
        // Only a weak reference is held while waiting: a reload that drops the provider ends
        // this task at its next wake-up.
        let wake = Arc::clone(&p.wake);
        drop(p);
        let asked = async {
            wake.notified().await;
            tokio::time::sleep_until(earliest).await;
        };
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = asked => {}
        }
    }
}

fn client(spec: &IdentityProvider) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(spec.timeout)
        .connect_timeout(spec.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("streamgate/", env!("CARGO_PKG_VERSION")));
    if let Some(file) = &spec.ca_file {
        let pem = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// One fetch: discovery (without `jwks_url`), then the key set. Returns the keys and how long
/// the provider said they may be cached.
async fn fetch(
    spec: &IdentityProvider,
    client: &reqwest::Client,
) -> Result<(KeySet, Option<Duration>), FetchError> {
    let jwks_url = match &spec.jwks_url {
        Some(url) => url.clone(),
        None => {
            let url = format!(
                "{}/.well-known/openid-configuration",
                spec.issuer.trim_end_matches('/')
            );
            let (body, _) = get(client, &url, spec.max_document_bytes).await?;
            let malformed = |why: String| FetchError::Malformed {
                url: url.clone(),
                what: "discovery document",
                why,
            };
            let doc: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
            // OpenID Connect Discovery 1.0, 4.3: the document's issuer is the one asked about.
            if doc.get("issuer").and_then(|v| v.as_str()) != Some(spec.issuer.as_str()) {
                return Err(malformed(format!(
                    "its issuer is {}, not {:?}",
                    doc.get("issuer")
                        .map_or("missing".into(), |v| v.to_string()),
                    spec.issuer
                )));
            }
            let jwks = doc
                .get("jwks_uri")
                .and_then(|v| v.as_str())
                .ok_or_else(|| malformed("no jwks_uri".into()))?;
            if !fetchable(jwks) {
                return Err(malformed(format!(
                    "jwks_uri {jwks:?} is not https:// (or http:// to this machine)"
                )));
            }
            jwks.to_string()
        }
    };
    let (body, max_age) = get(client, &jwks_url, spec.max_document_bytes).await?;
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| FetchError::Malformed {
        url: jwks_url.clone(),
        what: "JWK set",
        why: e.to_string(),
    })?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        // Signing keys only; symmetric ("oct") keys never: a key set is public.
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            || matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
        {
            continue;
        }
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let algorithm = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid.clone(), Arc::new(ProviderKey { key, algorithm }));
            }
            Err(e) => {
                tracing::debug!(provider = %spec.id, kid, error = %e, "a key of the set is not usable");
            }
        }
    }
    if keys.is_empty() {
        return Err(FetchError::NoKeys { url: jwks_url });
    }
    Ok((KeySet { keys }, max_age))
}

/// GETs `url`, refusing an answer that is not 200 or grows beyond `limit` bytes.
async fn get(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
    let http = |why: String| FetchError::Http {
        url: url.to_string(),
        why,
    };
    let mut response = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| http(error_chain(&e)))?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(http(format!("answered {}", response.status())));
    }
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(FetchError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    let max_age = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| http(error_chain(&e)))? {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

/// The `max-age` of a `Cache-Control` value (`no-store` and `no-cache` count as 0).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|part| {
        let lower = part.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        let seconds = lower.strip_prefix("max-age=")?.trim_matches('"');
        seconds.parse::<u64>().ok().map(Duration::from_secs)
    })
}

/// An address keys may be fetched from: https://, or http:// to this machine.
fn fetchable(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => u.host().is_some(),
        Ok(u) if u.scheme() == "http" => match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// An error with its causes (reqwest's own message leaves out why a connection failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn only_https_or_this_machine() {
        assert!(fetchable("https://sso.example.com/certs"));
        assert!(fetchable("http://127.0.0.1:8080/certs"));
        assert!(fetchable("http://localhost/certs"));
        assert!(!fetchable("http://sso.example.com/certs"));
        assert!(!fetchable("file:///etc/passwd"));
    }
}
