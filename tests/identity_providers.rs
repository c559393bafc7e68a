//! Sign-in from an identity provider (README "Identity providers"): tokens verified with the keys
//! a provider publishes (a JWK set over HTTPS, found by OpenID discovery), served by the test
//! itself with keys made at test time (ES256, EdDSA, RS256), through the real gateway.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use streamgate_testkit::{
    fixtures, unique_topic, Broker, GatewayConfig, GatewayProcess, IdentityProvider, KeySetAnswer,
    SigningKey, TestCa, Upstream,
};

const AUDIENCE: &str = "streamgate";

fn now() -> i64 {
    fixtures::now_ms() / 1000
}

/// Claims of a good token for `sub` from `issuer`.
fn claims(issuer: &str, sub: &str) -> serde_json::Value {
    serde_json::json!({ "iss": issuer, "aud": AUDIENCE, "sub": sub, "exp": now() + 600, "iat": now() })
}

/// The provider's table: discovery at its issuer (no jwks_url), short refresh bounds.
fn provider_toml(provider: &IdentityProvider, ca: &TestCa, extra: &str) -> String {
    let refresh = if extra.contains("refresh_min_seconds") {
        ""
    } else {
        "refresh_min_seconds = 1\n"
    };
    format!(
        "[[identity_providers]]\nid = \"sso\"\nissuer = \"{}\"\naudiences = [\"{AUDIENCE}\"]\nca_file = \"{}\"\n{refresh}{extra}\n\n\
         [[consumers]]\nusername = \"sso-users\"\n[consumers.plugins.jwt-auth]\nprovider = \"sso\"\n",
        provider.issuer,
        ca.ca_file().display()
    )
}

/// A gateway with `/api/*` (jwt-auth) in front of a real HTTP upstream, signing in with the
/// provider; the admin listener at the returned address.
async fn gateway(
    provider: &IdentityProvider,
    ca: &TestCa,
    extra: &str,
) -> (GatewayProcess, Upstream, SocketAddr) {
    let web = Upstream::start("web").await;
    let admin = listen_addr();
    // The flood test sends hundreds of bad tokens from one address: past the default auth-failure
    // limit they would get 429 before their kid is looked at.
    let gw = GatewayConfig::new()
        .server_keys("limits = { max_auth_failures_per_minute = 100000 }")
        .admin(admin)
        .table(&provider_toml(provider, ca, extra))
        .table(&format!(
            "[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n[[routes]]\nid = \"api\"\nuri = \"/api/*\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\n",
            web.addr
        ))
        .start(binary())
        .await;
    (gw, web, admin)
}

/// GET /api/x with a bearer token: the status and the body.
async fn call(gw: &GatewayProcess, token: &str) -> (u16, String) {
    let response = http()
        .get(gw.http_url("/api/x"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_providers_tokens_sign_in_and_every_bent_token_is_refused() {
    let ca = TestCa::new();
    let es = SigningKey::es256("es-1");
    let ed = SigningKey::eddsa("ed-1");
    let rs = SigningKey::rs256("rs-1");
    let provider = IdentityProvider::start(&ca, &[&es, &ed, &rs]).await;
    let (gw, _web, _admin) = gateway(&provider, &ca, "").await;
    assert!(
        provider.discovery_requests() >= 1,
        "keys found by discovery"
    );

    let good = claims(&provider.issuer, "alice");
    assert_eq!(call(&gw, &es.sign(&good)).await.0, 200, "ES256");
    assert_eq!(call(&gw, &ed.sign(&good)).await.0, 200, "EdDSA");
    assert_eq!(call(&gw, &rs.sign(&good)).await.0, 200, "RS256");

    let refused = |what: &'static str, token: String, says: &'static str| {
        let gw = &gw;
        async move {
            let (status, body) = call(gw, &token).await;
            assert_eq!(status, 401, "{what}: {body}");
            assert!(body.contains(says), "{what}: {body}");
        }
    };
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = "another-app".into();
    refused("wrong aud", es.sign(&wrong_aud), "not for this gateway").await;
    let mut expired = good.clone();
    expired["exp"] = (now() - 3600).into();
    refused("expired", es.sign(&expired), "expired").await;
    let mut early = good.clone();
    early["nbf"] = (now() + 3600).into();
    refused("not yet valid", es.sign(&early), "not valid yet").await;
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    refused("no exp", es.sign(&no_exp), "exp").await;
    // Another issuer is not this provider: no consumer has such a key either.
    let mut other_iss = good.clone();
    other_iss["iss"] = "https://evil.example".into();
    refused("wrong iss", es.sign(&other_iss), "Invalid user key").await;
    // A key the set does not hold (signed with a key of our own, naming an unknown kid).
    let stranger = SigningKey::es256("stranger");
    refused("unknown kid", stranger.sign(&good), "unknown key id").await;
    // The right kid, another key: the signature fails.
    refused(
        "forged signature",
        stranger.sign_as("es-1", &good),
        "failed to verify",
    )
    .await;
    // alg none: no signature at all.
    let b64 = |v: &serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&serde_json::json!({ "alg": "none", "typ": "JWT", "kid": "es-1" })),
        b64(&good)
    );
    refused("alg none", none, "JWT token invalid").await;
    // Algorithm confusion: an HMAC "signed" with what the provider publishes (the public JWK).
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("es-1".into());
    let public = es.jwk.to_string();
    let confused = jsonwebtoken::encode(
        &header,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    refused(
        "HS256 with the public key",
        confused,
        "algorithm HS256 is not accepted",
    )
    .await;
    let x = es.jwk["x"].as_str().unwrap().to_string();
    let confused_x = jsonwebtoken::encode(
        &header,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
    )
    .unwrap();
    refused(
        "HS256 with the key's x",
        confused_x,
        "algorithm HS256 is not accepted",
    )
    .await;
}

#[tokio::test]
async fn keys_rotate_without_a_reload() {
    let ca = TestCa::new();
    let old = SigningKey::es256("2026-11");
    let new = SigningKey::es256("2026-12");
    let provider = IdentityProvider::start(&ca, &[&old]).await;
    let (gw, _web, _admin) = gateway(&provider, &ca, "").await;
    let good = claims(&provider.issuer, "alice");
    assert_eq!(call(&gw, &old.sign(&good)).await.0, 200);

    // The provider rotates: the new key published, the old one removed. A token of the new key
    // names a kid the gateway has not seen: it refetches (refresh_min is 1 s) and accepts it.
    provider.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = call(&gw, &new.sign(&good)).await;
    assert_eq!(
        status, 200,
        "the rotated key is fetched on its first token: {body}"
    );
    // The old key is gone from the set the gateway holds now.
    let (status, body) = call(&gw, &old.sign(&good)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unknown key id"), "{body}");
}

#[tokio::test]
async fn a_flood_of_unknown_kids_refetches_at_most_once_per_interval() {
    let ca = TestCa::new();
    let key = SigningKey::es256("real");
    let provider = IdentityProvider::start(&ca, &[&key]).await;
    let (gw, _web, _admin) = gateway(&provider, &ca, "refresh_min_seconds = 2").await;
    let good = claims(&provider.issuer, "mallory");
    // Wait out the start-up fetch's interval, so that the flood may cause one refetch.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = provider.key_set_requests();
    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        let token = key.sign_as(&format!("forged-{i}"), &good);
        let url = gw.http_url("/api/x");
        calls.spawn(async move {
            http()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap().unwrap(), 401);
    }
    let flooded = started.elapsed();
    let refetches = provider.key_set_requests() - before;
    // One refetch per started interval of the flood (on a busy machine it may outlast one).
    let allowed = 1 + (flooded.as_millis() / 2000) as usize;
    assert!(
        (1..=allowed).contains(&refetches),
        "300 tokens with unknown kids over {flooded:?}: {refetches} refetches, at most {allowed} allowed"
    );
}

#[tokio::test]
async fn a_provider_that_goes_down_leaves_the_last_keys_in_use() {
    let ca = TestCa::new();
    let key = SigningKey::es256("k1");
    let mut provider = IdentityProvider::start(&ca, &[&key]).await;
    let (gw, _web, admin) = gateway(&provider, &ca, "refresh_max_seconds = 1").await;
    let good = claims(&provider.issuer, "alice");
    assert_eq!(call(&gw, &key.sign(&good)).await.0, 200);
    provider.stop();
    // The next scheduled refresh (1 s) fails; the keys it had stay in use.
    let stale = "streamgate_identity_provider_stale{provider=\"sso\"}";
    assert_eq!(
        settled_within(admin, stale, 1.0, Duration::from_secs(10)).await,
        1.0
    );
    assert_eq!(
        call(&gw, &key.sign(&good)).await.0,
        200,
        "last good keys in use"
    );
    let readyz = http()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200, "still serving with the last keys");
    let text = readyz.text().await.unwrap();
    assert!(
        text.contains("identity_provider_stale{provider=\"sso\"} 1"),
        "{text}"
    );
    assert!(
        gw.log().contains("the last good keys stay in use"),
        "{}",
        gw.log()
    );
    // Back up: the next refresh clears it.
    provider.resume().await;
    assert_eq!(
        settled_within(admin, stale, 0.0, Duration::from_secs(10)).await,
        0.0
    );
}

/// Starts the gateway binary on `config` and returns how it exited (or that it ran) and its log.
async fn start_outcome(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("streamgate.toml");
    std::fs::write(&file, config).unwrap();
    let mut child = tokio::process::Command::new(binary())
        .arg("-c")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    let code = match exited {
        Ok(status) => status.unwrap().code(),
        Err(_) => None,
    };
    let _ = child.start_kill();
    let output = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    (code, log)
}

#[tokio::test]
async fn a_bad_or_absent_key_set_stops_the_start_unless_told_otherwise() {
    let ca = TestCa::new();
    let key = SigningKey::es256("k1");
    let provider = IdentityProvider::start(&ca, &[&key]).await;
    let config = |extra: &str| {
        let addr = listen_addr();
        format!(
            "{}\n{}",
            streamgate_testkit::config::server_toml(addr, 1),
            provider_toml(&provider, &ca, extra)
        ) + "[[upstreams]]\nid = \"web\"\nnodes = { \"127.0.0.1:9\" = 1 }\n\n[[routes]]\nid = \"api\"\nuri = \"/api/*\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\n"
    };
    for (answer, says) in [
        (
            KeySetAnswer::Body("this is not json".into()),
            "not a JWK set",
        ),
        (
            KeySetAnswer::Body(format!(
                "{{\"keys\": [], \"pad\": \"{}\"}}",
                "x".repeat(4096)
            )),
            "larger than max_document_bytes",
        ),
        (KeySetAnswer::Keys(vec![], None), "no usable signing key"),
        (
            KeySetAnswer::Keys(
                vec![serde_json::json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" })],
                None,
            ),
            "no usable signing key",
        ),
        (KeySetAnswer::Status(503), "answered 503"),
    ] {
        provider.answer(answer);
        let (code, log) = start_outcome(&config("max_document_bytes = 2048")).await;
        assert_eq!(code, Some(1), "the start fails: {log}");
        assert!(log.contains(says), "{says}: {log}");
        assert!(log.contains("start_without_keys"), "{log}");
    }
    // Told to start without keys: it runs, refuses the provider's tokens, and says it is not
    // ready; once the keys are there, it signs in.
    provider.answer(KeySetAnswer::Status(503));
    let admin = listen_addr();
    let web = Upstream::start("web").await;
    let gw = GatewayConfig::new()
        .admin(admin)
        .table(&provider_toml(&provider, &ca, "start_without_keys = true"))
        .table(&format!(
            "[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n[[routes]]\nid = \"api\"\nuri = \"/api/*\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\n",
            web.addr
        ))
        .start(binary())
        .await;
    let readyz = http()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    let good = claims(&provider.issuer, "alice");
    assert_eq!(call(&gw, &key.sign(&good)).await.0, 401);
    provider.publish(&[&key]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        call(&gw, &key.sign(&good)).await.0,
        200,
        "the token's kid makes the gateway fetch the keys now published"
    );
}

#[tokio::test]
async fn a_providers_claims_drive_row_filters_and_group_namespaces() {
    let ca = TestCa::new();
    let key = SigningKey::es256("k1");
    let provider = IdentityProvider::start(&ca, &[&key]).await;
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("orders");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let records = ["alice:1", "bob:1", "alice:2"]
        .iter()
        .map(|k| fixtures::record(Some(k.as_bytes()), Some(k.as_bytes()), &[], None))
        .collect();
    fixtures::produce_each(&kafka, &topic, 0, records).await;
    let gw = GatewayConfig::new()
        .table(&provider_toml(&provider, &ca, ""))
        .kafka_upstream("kafka", &broker.bootstrap, "")
        .kafka_route(
            "kafka",
            "/kafka",
            "kafka",
            "key_prefix_from_claim = \"sub\"\nkey_prefix_delimiter = \":\"\ngroup_prefix = \"web.\"\ngroup_from_claim = \"sub\"",
        )
        .table("[routes.plugins.jwt-auth]\n")
        .start(binary())
        .await;
    let token = key.sign(&claims(&provider.issuer, "alice"));
    let mut c =
        streamgate_protocol::PubSubClient::connect(&gw.ws_url(&format!("/kafka?jwt={token}")))
            .await
            .expect("a provider's token opens the session");
    let batch = c.fetch(&topic, 0, 0).await.unwrap();
    let values: Vec<_> = batch
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect();
    assert_eq!(
        values,
        ["alice:1", "alice:2"],
        "only the token's user's records"
    );
    // A group of this user lives in the user's namespace: the claim is part of the group id.
    let (_sub, started) = c
        .subscribe(streamgate_protocol::CmdKafkaSubscribe {
            topic: topic.clone(),
            group: "laptop".into(),
            credit_records: 10,
            from: streamgate_protocol::cmd_kafka_subscribe::StartFrom::Earliest as i32,
            ..Default::default()
        })
        .await
        .expect("the user's group subscription");
    assert_eq!(started.partitions.len(), 1);

    // The token's exp ends the session, as any token's does (1008, "credentials expired").
    let mut short = claims(&provider.issuer, "alice");
    short["exp"] = (now() + 2).into();
    let token = key.sign(&short);
    let mut c =
        streamgate_protocol::PubSubClient::connect(&gw.ws_url(&format!("/kafka?jwt={token}")))
            .await
            .expect("a token valid for 2 s opens the session");
    let started = std::time::Instant::now();
    let reason = loop {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "still open past exp"
        );
        match c.ping("a").await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(streamgate_protocol::ClientError::Closed(Some(r))) => break r,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        reason.starts_with("1008") && reason.contains("credentials expired"),
        "{reason}"
    );
}

/// Waits up to `within` for a metric sample to reach `want`; returns the last value seen.
async fn settled_within(admin: SocketAddr, sample: &str, want: f64, within: Duration) -> f64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let value = metric(admin, sample).await;
        if value == want || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_reload_applies_a_providers_new_settings() {
    let ca = TestCa::new();
    let key = SigningKey::es256("k1");
    let provider = IdentityProvider::start(&ca, &[&key]).await;
    let (gw, _web, _admin) = gateway(&provider, &ca, "").await;
    let mut for_reports = claims(&provider.issuer, "alice");
    for_reports["aud"] = "reports".into();
    let token = key.sign(&for_reports);
    assert_eq!(
        call(&gw, &token).await.0,
        401,
        "aud reports is not accepted yet"
    );
    // The operator adds the audience; the reloaded provider fetches its keys and accepts it.
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    gw.reload(&config.replace(
        &format!("audiences = [\"{AUDIENCE}\"]"),
        &format!("audiences = [\"{AUDIENCE}\", \"reports\"]"),
    ));
    assert!(
        gw.wait_log("configuration reloaded", Duration::from_secs(10))
            .await,
        "{}",
        gw.log()
    );
    let (status, body) = call(&gw, &token).await;
    assert_eq!(status, 200, "{body}");
}
