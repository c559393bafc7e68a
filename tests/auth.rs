//! Access control: consumers and `key-auth`, on HTTP and pub/sub routes, through the real gateway.

mod common;

use common::*;
use streamgate_protocol::{ErrorCode, PubSubClient};
use streamgate_testkit::{fixtures, unique_topic, Broker, GatewayProcess, Upstream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CONSUMERS: &str = r#"
[[consumers]]
username = "mobile-app"
topics = ["orders"]
[consumers.plugins.key-auth]
key = "${STREAMGATE_TEST_MOBILE_KEY}"

[[consumers]]
username = "auditor"
[consumers.plugins.key-auth]
key = "auditor-key-0123456789"
"#;

const MOBILE_KEY: &str = "mobile-key-9f8e7d6c5b4a";

async fn gateway(broker: &Broker, upstream: &Upstream) -> GatewayProcess {
    let addr = listen_addr();
    let config = [
        server_toml(addr),
        format!("[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n", upstream.addr),
        kafka_upstream("kafka", &broker.bootstrap, ""),
        "[[routes]]\nid = \"api\"\nuri = \"/api/*\"\nupstream_id = \"web\"\n[routes.plugins.key-auth]\n\n".into(),
        "[[routes]]\nid = \"events\"\nuri = \"/kafka\"\nupstream_id = \"kafka\"\n[routes.plugins.kafka-proxy]\ntopics = [\"orders\", \"audit-*\"]\nfetch_max_wait_ms = 100\n[routes.plugins.key-auth]\n\n".into(),
        "[[routes]]\nid = \"hidden\"\nuri = \"/hidden/*\"\nupstream_id = \"web\"\n[routes.plugins.key-auth]\nhide_credentials = true\n\n".into(),
        CONSUMERS.into(),
    ]
    .concat();
    GatewayProcess::start_with_env(
        binary(),
        &config,
        addr,
        &[("STREAMGATE_TEST_MOBILE_KEY", MOBILE_KEY)],
    )
    .await
}

#[tokio::test]
async fn http_routes_need_a_known_key_in_the_header_or_the_query() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let gw = gateway(&broker, &web).await;

    let missing = http().get(gw.http_url("/api/x")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.text().await.unwrap(),
        r#"{"message":"Missing API key found in request"}"#
    );
    let wrong = http()
        .get(gw.http_url("/api/x"))
        .header("apikey", "nope-nope-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.text().await.unwrap(),
        r#"{"message":"Invalid API key in request"}"#
    );
    assert_eq!(web.hits(), 0, "refused requests never reach the upstream");

    let ok = http()
        .get(gw.http_url("/api/x"))
        .header("apikey", MOBILE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(
        body["headers"]["apikey"], MOBILE_KEY,
        "kept unless hide_credentials"
    );
    let by_query = http()
        .get(gw.http_url(&format!("/api/x?apikey={MOBILE_KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);

    let hidden: serde_json::Value =
        get_json(&gw.http_url(&format!("/hidden/x?a=1&apikey={MOBILE_KEY}"))).await;
    assert_eq!(
        hidden["path"], "/hidden/x?a=1",
        "hide_credentials strips the key"
    );
    let hidden: serde_json::Value = http()
        .get(gw.http_url("/hidden/x"))
        .header("apikey", MOBILE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(hidden["headers"].get("apikey").is_none(), "{hidden}");

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = gw.log();
    assert!(
        log.contains("consumer=\"mobile-app\"") || log.contains("consumer=mobile-app"),
        "access log names the consumer"
    );
    assert!(!log.contains(MOBILE_KEY), "keys never reach the log");
}

#[tokio::test]
async fn pubsub_routes_refuse_before_the_upgrade_and_consumers_narrow_the_allow_list() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let web = Upstream::start("web").await;
    for topic in ["orders", "audit-2026"] {
        fixtures::create_topic(&kafka, topic, 1).await;
        fixtures::produce_each(&kafka, topic, 0, vec![fixtures::value("x")]).await;
    }
    let gw = gateway(&broker, &web).await;

    // No key: the handshake itself is answered 401, nothing is upgraded.
    let err = PubSubClient::connect(&gw.ws_url("/kafka"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("401"), "{err}");

    // A browser puts the key in the query string.
    let mut mobile = PubSubClient::connect(&gw.ws_url(&format!("/kafka?apikey={MOBILE_KEY}")))
        .await
        .unwrap();
    assert_eq!(mobile.list_offset("orders", 0, -1).await.unwrap(), 1);
    match mobile.list_offset("audit-2026", 0, -1).await {
        Err(e) => {
            assert_eq!(e.code(), Some(ErrorCode::Forbidden));
            assert!(
                e.to_string().contains("not in this consumer's allow-list"),
                "{e}"
            );
        }
        other => panic!("the consumer's allow-list must narrow the route's: {other:?}"),
    }

    // A service sets the header; this consumer has no list of its own, so the route's applies.
    let mut request = gw.ws_url("/kafka").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("apikey", "auditor-key-0123456789".parse().unwrap());
    let mut auditor = PubSubClient::connect_request(request).await.unwrap();
    assert_eq!(auditor.list_offset("audit-2026", 0, -1).await.unwrap(), 1);
    let topic = unique_topic("elsewhere");
    assert_eq!(
        auditor.list_offset(&topic, 0, -1).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
}

mod jwt {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    const SECRET: &str = "hs256-secret-for-tests-0123456789";

    fn now() -> i64 {
        fixtures::now_ms() / 1000
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    /// A WebSocket opened with a token lives no longer than the token: pub/sub sessions get
    /// Close 1008 at `exp`, relayed tunnels are closed then.
    #[tokio::test]
    async fn websockets_end_when_their_token_expires() {
        let broker = Broker::start().await;
        let web = Upstream::start("web").await;
        let addr = listen_addr();
        let config = [
            server_toml(addr),
            format!("[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n", web.addr),
            kafka_upstream("kafka", &broker.bootstrap, ""),
            "[[routes]]\nid = \"ws\"\nuri = \"/ws\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\n\n".into(),
            "[[routes]]\nid = \"events\"\nuri = \"/kafka\"\nupstream_id = \"kafka\"\n[routes.plugins.jwt-auth]\n[routes.plugins.kafka-proxy]\nfetch_max_wait_ms = 100\n\n".into(),
            format!("[[consumers]]\nusername = \"svc\"\n[consumers.plugins.jwt-auth]\nkey = \"svc\"\nsecret = \"{SECRET}\"\n\n"),
        ]
        .concat();
        let gw = GatewayProcess::start(binary(), &config, addr).await;
        let short = hs256(serde_json::json!({ "key": "svc", "exp": now() + 2 }));
        let long = hs256(serde_json::json!({ "key": "svc", "exp": now() + 300 }));
        let mut expiring = PubSubClient::connect(&gw.ws_url(&format!("/kafka?jwt={short}")))
            .await
            .unwrap();
        let mut lasting = PubSubClient::connect(&gw.ws_url(&format!("/kafka?jwt={long}")))
            .await
            .unwrap();
        let (mut tunnel, _) =
            tokio_tungstenite::connect_async(gw.ws_url(&format!("/ws?jwt={short}")))
                .await
                .expect("the relayed WebSocket opens");
        assert_eq!(&expiring.ping("a").await.unwrap()[..], b"a");
        let started = std::time::Instant::now();
        let reason = loop {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(6),
                "still open past exp"
            );
            match expiring.ping("a").await {
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                Err(streamgate_protocol::ClientError::Closed(Some(r))) => break r,
                Err(e) => panic!("{e}"),
            }
        };
        assert!(
            reason.starts_with("1008") && reason.contains("credentials expired"),
            "{reason}"
        );
        assert_eq!(
            &lasting.ping("b").await.unwrap()[..],
            b"b",
            "a longer token lives on"
        );
        // The tunnel is cut at the same moment: the node's echo stops and the stream ends.
        use futures_util::{SinkExt, StreamExt};
        let _ = tunnel
            .send(tokio_tungstenite::tungstenite::Message::text("late"))
            .await;
        let end = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            loop {
                match tunnel.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the tunnel ends");
        assert!(!matches!(end, Some(Ok(_))), "{end:?}");
        assert!(gw.log().contains("the credential expired"), "{}", gw.log());
    }

    #[tokio::test]
    async fn tokens_are_verified_per_consumer_with_hs256_and_es256() {
        let broker = Broker::start().await;
        let kafka = broker.client().await;
        fixtures::create_topic(&kafka, "orders", 1).await;
        let web = Upstream::start("web").await;
        // An ES256 key pair made now: the consumer gets the public half.
        let es = rcgen::KeyPair::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("es256.pub.pem");
        std::fs::write(&public, es.public_key_pem()).unwrap();
        let es_token = |claims: serde_json::Value| {
            encode(
                &Header::new(Algorithm::ES256),
                &claims,
                &EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap()
        };

        let addr = listen_addr();
        let config = [
            server_toml(addr),
            format!("[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n", web.addr),
            kafka_upstream("kafka", &broker.bootstrap, ""),
            "[[routes]]\nid = \"api\"\nuri = \"/api/*\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\n\n".into(),
            "[[routes]]\nid = \"page\"\nuri = \"/page/*\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\ncookie = \"jwt\"\n[routes.plugins.cors]\nallow_origins = [\"https://app.example\"]\n\n".into(),
            "[[routes]]\nid = \"events\"\nuri = \"/kafka\"\nupstream_id = \"kafka\"\n[routes.plugins.jwt-auth]\n[routes.plugins.kafka-proxy]\nfetch_max_wait_ms = 100\n\n".into(),
            format!("[[consumers]]\nusername = \"svc\"\n[consumers.plugins.jwt-auth]\nkey = \"svc\"\nsecret = \"{SECRET}\"\n\n"),
            format!("[[consumers]]\nusername = \"phone\"\n[consumers.plugins.jwt-auth]\nkey = \"phone\"\nalgorithm = \"ES256\"\npublic_key_file = \"{}\"\n", public.display()),
        ]
        .concat();
        let gw = GatewayProcess::start(binary(), &config, addr).await;
        let get = |auth: Option<String>| {
            let mut req = http().get(gw.http_url("/api/x"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.send()
        };
        let message =
            |r: reqwest::Response| async move { (r.status().as_u16(), r.text().await.unwrap()) };

        let valid = hs256(serde_json::json!({ "key": "svc", "exp": now() + 300 }));
        assert_eq!(
            get(Some(format!("Bearer {valid}"))).await.unwrap().status(),
            200
        );
        assert_eq!(
            message(get(None).await.unwrap()).await,
            (401, r#"{"message":"Missing JWT token in request"}"#.into())
        );
        let expired = hs256(serde_json::json!({ "key": "svc", "exp": now() - 3600 }));
        assert_eq!(
            message(get(Some(format!("Bearer {expired}"))).await.unwrap())
                .await
                .0,
            401
        );
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({ "key": "svc", "exp": now() + 300 }),
            &EncodingKey::from_secret(b"not-the-secret-at-all-0000"),
        )
        .unwrap();
        assert_eq!(
            message(get(Some(format!("Bearer {forged}"))).await.unwrap()).await,
            (401, r#"{"message":"failed to verify jwt"}"#.into())
        );
        let stranger = hs256(serde_json::json!({ "key": "nobody", "exp": now() + 300 }));
        assert_eq!(
            message(get(Some(format!("Bearer {stranger}"))).await.unwrap()).await,
            (401, r#"{"message":"Invalid user key in JWT token"}"#.into())
        );
        let no_exp = hs256(serde_json::json!({ "key": "svc" }));
        assert_eq!(
            message(get(Some(format!("Bearer {no_exp}"))).await.unwrap())
                .await
                .0,
            401,
            "exp is required"
        );
        // An HS256 token claiming the ES256 consumer must not pass (no algorithm confusion).
        let confused = hs256(serde_json::json!({ "key": "phone", "exp": now() + 300 }));
        assert_eq!(
            message(get(Some(format!("Bearer {confused}"))).await.unwrap())
                .await
                .0,
            401
        );
        assert_eq!(web.hits(), 1, "only the valid request reached the upstream");

        // A cookie rides along with requests from any site: it is read only where the route
        // opts in (and lists the origins it trusts).
        let with_cookie = |path: &str| {
            http()
                .get(gw.http_url(path))
                .header("cookie", format!("theme=dark; jwt={valid}"))
                .send()
        };
        assert_eq!(
            message(with_cookie("/api/x").await.unwrap()).await,
            (401, r#"{"message":"Missing JWT token in request"}"#.into())
        );
        assert_eq!(with_cookie("/page/x").await.unwrap().status(), 200);
        assert_eq!(web.hits(), 2);

        // A browser's WebSocket: the ES256 token in the query string.
        let phone = es_token(serde_json::json!({ "key": "phone", "exp": now() + 300 }));
        let mut c = PubSubClient::connect(&gw.ws_url(&format!("/kafka?jwt={phone}")))
            .await
            .unwrap();
        assert_eq!(c.list_offset("orders", 0, -1).await.unwrap(), 0);
        assert!(
            PubSubClient::connect(&gw.ws_url("/kafka")).await.is_err(),
            "no token, no upgrade"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!gw.log().contains(&phone), "tokens never reach the log");
    }
}

#[tokio::test]
async fn only_listed_browser_origins_may_open_the_websocket() {
    let broker = Broker::start().await;
    let gw = gateway_for(
        &broker,
        "allowed_origins = [\"https://app.example.com\"]",
        "",
    )
    .await;
    let with_origin = |origin: &str| {
        let mut request = gw.ws_url("/kafka").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        request
    };
    let mut ok = PubSubClient::connect_request(with_origin("https://APP.example.com"))
        .await
        .expect("listed origin");
    assert_eq!(&ok.ping("o").await.unwrap()[..], b"o");
    let err = PubSubClient::connect_request(with_origin("https://evil.example"))
        .await
        .expect_err("unlisted origin");
    assert!(err.to_string().contains("403"), "{err}");
    // Non-browser clients send no Origin and are not affected.
    let mut plain = PubSubClient::connect(&gw.ws_url("/kafka"))
        .await
        .expect("no origin");
    assert_eq!(&plain.ping("p").await.unwrap()[..], b"p");
}
