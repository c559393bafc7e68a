//! An identity provider served over HTTPS for tests: an OpenID discovery document and a JWK set
//! (keys made at test time), whose keys can rotate, whose answers can turn bad or stop, and which
//! counts what it is asked; plus tokens signed with its keys.

use crate::{free_port, TestCa};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A signing key of the provider.
pub struct SigningKey {
    /// Its `kid`.
    pub kid: String,
    /// ES256 or EdDSA.
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    /// Its public half as a JWK.
    pub jwk: serde_json::Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new P-256 key (ES256).
    pub fn es256(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let raw = pair.public_key_raw();
        // An uncompressed point: 0x04, x, y.
        let (x, y) = raw[1..].split_at(32);
        SigningKey {
            kid: kid.to_string(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            }),
        }
    }

    /// A new 2048-bit RSA key (RS256), made by `openssl` (ring cannot generate RSA keys).
    pub fn rs256(kid: &str) -> SigningKey {
        let dir = tempfile::tempdir().expect("temp dir");
        let pem = dir.path().join("key.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem)
            .output()
            .expect("openssl runs (make test installs it)");
        assert!(made.status.success(), "openssl genpkey: {made:?}");
        let modulus = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&pem)
            .output()
            .expect("openssl rsa -modulus");
        let hex = String::from_utf8_lossy(&modulus.stdout);
        let hex = hex.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex modulus"))
            .collect();
        let private = std::fs::read(&pem).expect("read the key");
        SigningKey {
            kid: kid.to_string(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(&private).expect("RSA key"),
            jwk: serde_json::json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB",
            }),
        }
    }

    /// A new Ed25519 key (EdDSA).
    pub fn eddsa(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        SigningKey {
            kid: kid.to_string(),
            algorithm: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
            }),
        }
    }

    /// A token with these claims, signed with this key (its `kid` in the header).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A token signed with this key but naming another `kid`.
    pub fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// What the provider answers for its key set.
#[derive(Debug, Clone)]
pub enum KeySetAnswer {
    /// The JWK set of these keys (their JWKs), with this `Cache-Control`.
    Keys(Vec<serde_json::Value>, Option<String>),
    /// This body, as is.
    Body(String),
    /// This status, no keys.
    Status(u16),
}

#[derive(Debug)]
struct State {
    issuer: String,
    discovery_issuer: Option<String>,
    keys: Mutex<KeySetAnswer>,
    key_set_requests: AtomicUsize,
    discovery_requests: AtomicUsize,
}

/// The provider: `https://127.0.0.1:PORT` is its issuer, `/.well-known/openid-configuration`
/// its discovery document, `/jwks` its key set.
#[derive(Debug)]
pub struct IdentityProvider {
    /// Its issuer (and base URL).
    pub issuer: String,
    /// Its port.
    pub port: u16,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
    ca: Arc<TestCa>,
}

impl IdentityProvider {
    /// Serves the keys' JWKs over HTTPS with a certificate of `ca`.
    pub async fn start(ca: &Arc<TestCa>, keys: &[&SigningKey]) -> IdentityProvider {
        let port = free_port();
        let issuer = format!("https://127.0.0.1:{port}");
        let state = Arc::new(State {
            issuer: issuer.clone(),
            discovery_issuer: None,
            keys: Mutex::new(KeySetAnswer::Keys(
                keys.iter().map(|k| k.jwk.clone()).collect(),
                None,
            )),
            key_set_requests: AtomicUsize::new(0),
            discovery_requests: AtomicUsize::new(0),
        });
        let mut provider = IdentityProvider {
            issuer,
            port,
            state,
            task: None,
            ca: Arc::clone(ca),
        };
        provider.resume().await;
        provider
    }

    /// The key set's URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// From now on the key set is `answer`.
    pub fn answer(&self, answer: KeySetAnswer) {
        *self.state.keys.lock().expect("state") = answer;
    }

    /// From now on the key set holds these keys.
    pub fn publish(&self, keys: &[&SigningKey]) {
        self.answer(KeySetAnswer::Keys(
            keys.iter().map(|k| k.jwk.clone()).collect(),
            None,
        ));
    }

    /// How many times the key set was asked for.
    pub fn key_set_requests(&self) -> usize {
        self.state.key_set_requests.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was asked for.
    pub fn discovery_requests(&self) -> usize {
        self.state.discovery_requests.load(Ordering::SeqCst)
    }

    /// Stops listening: connections are refused until [`Self::resume`].
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        self.stop();
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the provider's port");
        let acceptor = tokio_rustls::TlsAcceptor::from(self.ca.server_config(&[b"http/1.1"]));
        self.task = Some(crate::http_upstream::serve(
            listener,
            Arc::clone(&self.state),
            Some(acceptor),
            answer,
        ));
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    state: Arc<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let json = |status: u16, body: String, cache: Option<String>| {
        let mut response = hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json");
        if let Some(cache) = cache {
            response = response.header("cache-control", cache);
        }
        Ok(response
            .body(Full::new(Bytes::from(body)))
            .expect("response"))
    };
    match req.uri().path() {
        "/.well-known/openid-configuration" => {
            state.discovery_requests.fetch_add(1, Ordering::SeqCst);
            let issuer = state.discovery_issuer.as_deref().unwrap_or(&state.issuer);
            let doc = serde_json::json!({
                "issuer": issuer,
                "jwks_uri": format!("{}/jwks", state.issuer),
                "id_token_signing_alg_values_supported": ["ES256", "EdDSA"],
            });
            json(200, doc.to_string(), None)
        }
        "/jwks" => {
            state.key_set_requests.fetch_add(1, Ordering::SeqCst);
            let answer = state.keys.lock().expect("state").clone();
            match answer {
                KeySetAnswer::Keys(keys, cache) => {
                    json(200, serde_json::json!({ "keys": keys }).to_string(), cache)
                }
                KeySetAnswer::Body(body) => json(200, body, None),
                KeySetAnswer::Status(status) => json(status, "{}".into(), None),
            }
        }
        _ => json(404, "{}".into(), None),
    }
}
