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

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
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

    let hidden: serde_json::Value = http()
        .get(gw.http_url(&format!("/hidden/x?a=1&apikey={MOBILE_KEY}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
