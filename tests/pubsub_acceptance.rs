//! The acceptance cases of the pub/sub contract (APISIX's own test suite, PUBSUB.md §4),
//! run through the real gateway binary against a real broker with a real WebSocket client.

mod common;

use common::*;
use futures_util::SinkExt;
use streamgate_protocol::{
    pub_sub_req::Req, pub_sub_resp::Resp, CmdEmpty, CmdKafkaFetch, CmdPing, ErrorCode,
    PubSubClient, PubSubReq,
};
use streamgate_testkit::{
    fixtures, Broker, BrokerOptions, Engine, GatewayProcess, SaslUser, TestCa,
};
use tokio_tungstenite::tungstenite::Message;

async fn fixture_broker() -> Broker {
    let broker = Broker::start().await;
    fixtures::apisix_fixture(&broker.client().await).await;
    broker
}

async fn connect(gw: &GatewayProcess, path: &str) -> PubSubClient {
    PubSubClient::connect(&gw.ws_url(path))
        .await
        .expect("websocket handshake")
}

fn server_error(
    result: Result<impl std::fmt::Debug, streamgate_protocol::ClientError>,
) -> (Option<ErrorCode>, String) {
    match result {
        Err(streamgate_protocol::ClientError::Server { code, message }) => {
            (ErrorCode::from_i32(code), message)
        }
        other => panic!("expected an error_resp, got {other:?}"),
    }
}

#[tokio::test]
async fn a_plain_get_is_answered_400() {
    let broker = Broker::start().await;
    let gw = gateway_for(&broker, "", "").await;
    let resp = reqwest::get(gw.http_url("/kafka")).await.expect("GET");
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.expect("JSON body");
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap_or("")
            .contains("WebSocket"),
        "{body}"
    );
}

#[tokio::test]
async fn offsets_and_fetches_on_the_fixture_topic() {
    let broker = fixture_broker().await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = connect(&gw, "/kafka").await;

    assert_eq!(
        c.list_offset("test-consumer", 0, -2).await.unwrap(),
        0,
        "earliest"
    );
    assert_eq!(
        c.list_offset("test-consumer", 0, -1).await.unwrap(),
        30,
        "latest"
    );
    assert_eq!(
        c.list_offset("test-consumer", 0, 9_999_999_999_999)
            .await
            .unwrap(),
        -1,
        "later than every record"
    );
    assert_eq!(
        c.list_offset("test-consumer", 0, 1_500_000_000_000)
            .await
            .unwrap(),
        0,
        "earlier than every record"
    );

    let fetched = c.fetch("test-consumer", 0, 14).await.unwrap();
    assert_eq!(fetched.messages[0].offset, 14);
    assert_eq!(&fetched.messages[0].value[..], b"testmsg15");
    assert!(
        fetched
            .messages
            .windows(2)
            .all(|w| w[1].offset == w[0].offset + 1),
        "log order"
    );
    assert_eq!(fetched.high_watermark, 30);

    let (code, message) = server_error(c.fetch("test-consumer", 0, 999).await);
    assert_eq!(
        message,
        "failed to fetch message, topic: test-consumer, partition: 0, err: OFFSET_OUT_OF_RANGE"
    );
    assert_eq!(code, Some(ErrorCode::KafkaError));
}

#[tokio::test]
async fn unknown_topics_and_partitions() {
    let broker = fixture_broker().await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = connect(&gw, "/kafka").await;
    let (code, message) = server_error(c.list_offset("not-exist", 0, -1).await);
    assert_eq!(
        message,
        "failed to list offset, topic: not-exist, partition: 0, err: not found topic"
    );
    assert_eq!(code, Some(ErrorCode::NotFound));
    let (_, message) = server_error(c.fetch("not-exist", 0, 0).await);
    assert_eq!(
        message,
        "failed to fetch message, topic: not-exist, partition: 0, err: not found topic"
    );
    let (code, message) = server_error(c.fetch("test-consumer", 5, 0).await);
    assert_eq!(
        message,
        "failed to fetch message, topic: test-consumer, partition: 5, err: not found partition"
    );
    assert_eq!(code, Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn fetch_at_the_end_is_empty_and_prompt() {
    let broker = fixture_broker().await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = connect(&gw, "/kafka").await;
    let started = std::time::Instant::now();
    let fetched = c.fetch("test-consumer", 0, 30).await.unwrap();
    assert!(fetched.messages.is_empty());
    assert_eq!(fetched.high_watermark, 30);
    // The route waits at most 100 ms for new records; allow generous scheduling slack.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_broker_is_named_and_the_session_lives() {
    let gw = gateway_for_dead_broker("/kafka-invalid", "").await;
    let mut c = connect(&gw, "/kafka-invalid").await;
    let (code, message) = server_error(c.list_offset("test-consumer", 0, -1).await);
    assert!(
        message.starts_with("failed to list offset, topic: test-consumer, partition: 0, err: "),
        "{message}"
    );
    assert!(
        !message.contains("not found topic"),
        "must name the real cause: {message}"
    );
    assert!(
        message.to_lowercase().contains("connect") || message.contains("within"),
        "{message}"
    );
    assert_eq!(code, Some(ErrorCode::Unavailable));
    assert_eq!(&c.ping("still here").await.unwrap()[..], b"still here");
}

async fn tls_gateway(broker: &Broker, tls_table: &str, uri: &str) -> GatewayProcess {
    let addr = listen_addr();
    let config = format!(
        "{}{}{}",
        server_toml(addr),
        kafka_upstream("tls", &broker.bootstrap, tls_table),
        kafka_route("tls", uri, "tls", "")
    );
    GatewayProcess::start(binary(), &config, addr).await
}

#[tokio::test]
async fn tls_with_verification_off_and_with_the_ca() {
    let ca = TestCa::new();
    let broker = Broker::start_with(BrokerOptions {
        tls: Some(ca.clone()),
        ..Default::default()
    })
    .await;
    fixtures::apisix_fixture(&broker.client().await).await;

    let gw = tls_gateway(&broker, "[upstreams.tls]\nverify = false", "/kafka-tls").await;
    let mut c = connect(&gw, "/kafka-tls").await;
    assert_eq!(c.list_offset("test-consumer", 0, -1).await.unwrap(), 30);

    let with_ca = format!(
        "[upstreams.tls]\nverify = true\nca_file = \"{}\"",
        ca.ca_file().display()
    );
    let gw = tls_gateway(&broker, &with_ca, "/kafka-tlsv").await;
    let mut c = connect(&gw, "/kafka-tlsv").await;
    assert_eq!(c.list_offset("test-consumer", 0, -1).await.unwrap(), 30);
}

#[tokio::test]
async fn tls_verification_against_an_untrusted_certificate_names_the_failure() {
    let ca = TestCa::new();
    let broker = Broker::start_with(BrokerOptions {
        tls: Some(ca),
        ..Default::default()
    })
    .await;
    let gw = tls_gateway(&broker, "[upstreams.tls]\nverify = true", "/kafka-tlsv").await;
    let mut c = connect(&gw, "/kafka-tlsv").await;
    let (code, message) = server_error(c.list_offset("test-consumer", 0, -1).await);
    assert!(message.contains("certificate"), "{message}");
    assert_eq!(code, Some(ErrorCode::TlsError), "{message}");
}

#[tokio::test]
async fn sasl_plain_route() {
    // tansu accepts any PLAIN password; the tap in front checks it, as Kafka would.
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        users: vec![SaslUser {
            name: "admin".into(),
            password: "admin-secret".into(),
            mechanism: "scram512",
        }],
        tls: None,
        tap: true,
    })
    .await;
    fixtures::apisix_fixture(&broker.client().await).await;
    let addr = listen_addr();
    let plain = |password: &str| {
        format!(
            "sasl = {{ mechanism = \"PLAIN\", username = \"admin\", password = \"{password}\" }}"
        )
    };
    let config = format!(
        "{}{}{}{}",
        server_toml(addr),
        kafka_upstream("sasl", &broker.bootstrap, ""),
        kafka_route("sasl", "/kafka-sasl", "sasl", &plain("admin-secret")),
        kafka_route("wrong", "/kafka-wrong", "sasl", &plain("not-the-password")),
    );
    let gw = GatewayProcess::start(binary(), &config, addr).await;
    let mut c = connect(&gw, "/kafka-sasl").await;
    assert_eq!(c.list_offset("test-consumer", 0, -1).await.unwrap(), 30);
    let mut wrong = connect(&gw, "/kafka-wrong").await;
    let (code, message) = server_error(wrong.list_offset("test-consumer", 0, -1).await);
    assert_eq!(code, Some(ErrorCode::AuthFailed), "{message}");
}

#[tokio::test]
async fn ping_empty_text_and_garbage_frames() {
    let broker = Broker::start().await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = connect(&gw, "/kafka").await;
    assert_eq!(&c.ping("test").await.unwrap()[..], b"test");

    let (code, message) = server_error(
        c.call(Req::CmdEmpty(CmdEmpty {}))
            .await
            .map(|r| match r.resp {
                Some(Resp::ErrorResp(e)) => {
                    Err::<(), _>(streamgate_protocol::ClientError::Server {
                        code: e.code,
                        message: e.message,
                    })
                }
                other => panic!("{other:?}"),
            })
            .and_then(|r| r),
    );
    assert_eq!(message, "unknown command");
    assert_eq!(code, Some(ErrorCode::BadRequest));

    // A text frame gets nothing back; the next ping is answered (and is the next frame).
    c.websocket()
        .send(Message::Text("hello".into()))
        .await
        .unwrap();
    assert_eq!(&c.ping("after text").await.unwrap()[..], b"after text");

    // Bytes that are not a PubSubReq.
    let garbage = vec![
        0x21, 0x40, 0x23, 0x24, 0x25, 0x5e, 0x26, 0x2a, 0xe4, 0xb8, 0xad, 0xe6, 0x96, 0x87,
    ];
    c.websocket()
        .send(Message::Binary(garbage.into()))
        .await
        .unwrap();
    let answer = c.recv().await.unwrap();
    assert_eq!(answer.sequence, 0);
    match answer.resp {
        Some(Resp::ErrorResp(e)) => {
            assert_eq!(e.message, "wrong command");
            assert_eq!(e.code, ErrorCode::BadRequest as i32);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(&c.ping("still open").await.unwrap()[..], b"still open");

    // A valid frame without a command (an empty frame) is answered, not left hanging.
    c.websocket()
        .send(Message::Binary(Vec::new().into()))
        .await
        .unwrap();
    let answer = c.recv().await.unwrap();
    assert!(
        matches!(answer.resp, Some(Resp::ErrorResp(ref e)) if e.message == "unknown command"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn sequences_are_echoed_exactly_and_back_to_back_requests_both_answered() {
    let broker = fixture_broker().await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = connect(&gw, "/kafka").await;
    let big = 1i64 << 62;
    c.send(&PubSubReq::new(
        big,
        Req::CmdPing(CmdPing { state: "x".into() }),
    ))
    .await
    .unwrap();
    assert_eq!(c.recv().await.unwrap().sequence, big);

    c.send(&PubSubReq::new(
        7,
        Req::CmdKafkaFetch(CmdKafkaFetch {
            topic: "test-consumer".into(),
            partition: 0,
            offset: 0,
            ..Default::default()
        }),
    ))
    .await
    .unwrap();
    c.send(&PubSubReq::new(
        8,
        Req::CmdPing(CmdPing { state: "y".into() }),
    ))
    .await
    .unwrap();
    let mut seen = vec![
        c.recv().await.unwrap().sequence,
        c.recv().await.unwrap().sequence,
    ];
    seen.sort();
    assert_eq!(seen, vec![7, 8]);
}

#[tokio::test]
async fn websocket_ping_and_close_handshake() {
    let broker = Broker::start().await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = connect(&gw, "/kafka").await;
    let ws = c.websocket();
    ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    use futures_util::StreamExt;
    let pong = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("pong in time");
    assert!(
        matches!(pong, Some(Ok(Message::Pong(ref p))) if &p[..] == b"are you there"),
        "{pong:?}"
    );

    ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("close reply");
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close frame with a status code, got {other:?}"),
    }
}
