//! Row-level security at the edge: one topic shared by many users, each caller sees only its own
//! records, over fetch, subscribe and Server-Sent Events alike. The filter comes from the caller's
//! verified JWT claim (`key_prefix_from_claim`) or from its consumer (`record_filter`).

mod common;

use common::*;
use futures_util::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_resp::Resp, CmdKafkaSubscribe, PubSubClient,
};
use streamgate_testkit::{fixtures, unique_topic, Broker, BrokerOptions, Engine, GatewayProcess};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "row-filter-secret-0123456789";
const OTHER_SECRET: &str = "another-secret-0123456789ab";
const CAROL_KEY: &str = "carol-key-0123456789";

fn token(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn user(sub: &str) -> String {
    token(
        SECRET,
        serde_json::json!({ "key": "app", "sub": sub, "exp": fixtures::now_ms() / 1000 + 600 }),
    )
}

/// Orders of three customers on one topic (two partitions), keys `CUSTOMER:N`.
async fn orders(broker: &Broker, topic: &str) {
    let kafka = broker.client().await;
    fixtures::create_topic(&kafka, topic, 2).await;
    for (partition, customers) in [(0, ["alice", "bob", "carol"]), (1, ["bob", "alice", "bob"])] {
        let records = customers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let key = format!("{c}:{partition}-{i}");
                fixtures::record(
                    Some(key.as_bytes()),
                    Some(c.as_bytes()),
                    &[("tenant", c.as_bytes())],
                    None,
                )
            })
            .collect();
        fixtures::produce_each(&kafka, topic, partition, records).await;
    }
}

/// A gateway with `/orders` (jwt-auth, the key prefix from the `sub` claim) and `/carol`
/// (key-auth, carol's consumer filter on the tenant header).
async fn gateway(broker: &Broker) -> (GatewayProcess, SocketAddr) {
    gateway_waiting(broker, 100).await
}

/// [`gateway`] with `/carol`'s `fetch_max_wait_ms`.
async fn gateway_waiting(broker: &Broker, carol_wait_ms: u32) -> (GatewayProcess, SocketAddr) {
    let addr = listen_addr();
    let admin = listen_addr();
    let config = format!(
        "{}[admin]\nlisten = \"{admin}\"\n\n{}\
         [[routes]]\nid = \"orders\"\nuri = \"/orders\"\nupstream_id = \"kafka\"\n\
         [routes.plugins.jwt-auth]\n[routes.plugins.kafka-proxy]\nkey_prefix_from_claim = \"sub\"\nkey_prefix_delimiter = \":\"\nfetch_max_wait_ms = 100\nsocket_timeout_ms = 2000\n\n\
         [[routes]]\nid = \"carol\"\nuri = \"/carol\"\nupstream_id = \"kafka\"\n\
         [routes.plugins.key-auth]\n[routes.plugins.kafka-proxy]\nfetch_max_wait_ms = {carol_wait_ms}\nsocket_timeout_ms = 2000\n\n\
         [[consumers]]\nusername = \"app\"\n[consumers.plugins.jwt-auth]\nkey = \"app\"\nsecret = \"{SECRET}\"\n\n\
         [[consumers]]\nusername = \"other\"\n[consumers.plugins.jwt-auth]\nkey = \"other\"\nsecret = \"{OTHER_SECRET}\"\n\n\
         [[consumers]]\nusername = \"carol\"\nrecord_filter = {{ headers = {{ tenant = \"carol\" }} }}\n[consumers.plugins.key-auth]\nkey = \"{CAROL_KEY}\"\n",
        server_toml(addr),
        kafka_upstream("kafka", &broker.bootstrap, ""),
    );
    (GatewayProcess::start(binary(), &config, addr).await, admin)
}

async fn connect(gw: &GatewayProcess, path_and_query: &str) -> PubSubClient {
    let request = gw.ws_url(path_and_query).into_client_request().unwrap();
    PubSubClient::connect_request(request).await.unwrap()
}

/// Values of every record a fetch loop reads from both partitions.
async fn fetch_all(c: &mut PubSubClient, topic: &str) -> Vec<(i32, i64, String)> {
    let mut got = Vec::new();
    for partition in 0..2 {
        let mut offset = 0;
        loop {
            let batch = c.fetch(topic, partition, offset).await.unwrap();
            assert_eq!(batch.high_watermark, 3, "the true high watermark");
            for m in &batch.messages {
                got.push((
                    partition,
                    m.offset,
                    String::from_utf8_lossy(&m.value).into_owned(),
                ));
                offset = m.offset + 1;
            }
            if batch.messages.is_empty() {
                break;
            }
        }
    }
    got
}

/// Values of every record a subscription pushes until both partitions are caught up.
async fn subscribe_all(c: &mut PubSubClient, topic: &str, key_prefix: &str) -> Vec<String> {
    let (sub, _) = c
        .subscribe(CmdKafkaSubscribe {
            topic: topic.into(),
            from: StartFrom::Earliest as i32,
            credit_records: 100,
            filter: (!key_prefix.is_empty()).then(|| streamgate_protocol::RecordFilter {
                key_prefix: key_prefix.as_bytes().to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut values = Vec::new();
    let mut caught = 0;
    while caught < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(5), c.recv())
            .await
            .expect("pushes")
            .unwrap();
        assert_eq!(frame.sequence, sub);
        let Some(Resp::KafkaRecordsPush(push)) = frame.resp else {
            panic!("{frame:?}");
        };
        for b in push.batches {
            values.extend(
                b.messages
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.value).into_owned()),
            );
            caught += usize::from(b.caught_up);
        }
    }
    values
}

/// Values of the records an event stream sends until both partitions are caught up.
async fn events_all(url: &str) -> Vec<String> {
    let response = http()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while text.matches("event: caught_up").count() < 2 {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next())
            .await
            .expect("events")
            .expect("open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v["value"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn each_user_gets_only_its_own_records_over_every_transport() {
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await;
    let topic = unique_topic("orders");
    orders(&broker, &topic).await;
    let (gw, admin) = gateway(&broker).await;

    for (sub, who, count) in [("alice", "alice", 2), ("bob", "bob", 3)] {
        let jwt = user(sub);
        // Pull: only its records, with offset gaps and the true high watermark.
        let mut c = connect(&gw, &format!("/orders?jwt={jwt}")).await;
        let fetched = fetch_all(&mut c, &topic).await;
        assert!(
            fetched.iter().all(|(_, _, v)| v == who),
            "{who}: {fetched:?}"
        );
        assert_eq!(fetched.len(), count, "{who}: {fetched:?}");
        // Push: the same, and a client filter can narrow but never widen it.
        let pushed = subscribe_all(&mut c, &topic, "").await;
        assert_eq!(pushed.len(), count, "{who}: {pushed:?}");
        assert!(pushed.iter().all(|v| v == who));
        let other = if who == "alice" { "bob:" } else { "alice:" };
        let widened = subscribe_all(&mut c, &topic, other).await;
        assert!(
            widened.is_empty(),
            "{who} asked for {other} and got {widened:?}"
        );
        // Server-Sent Events.
        let url = gw.http_url(&format!("/orders?topic={topic}&from=earliest&jwt={jwt}"));
        let streamed = events_all(&url).await;
        assert_eq!(streamed.len(), count, "{who}: {streamed:?}");
        assert!(streamed.iter().all(|v| v == who));
    }

    // A consumer's own record filter (carol, by header, with key-auth).
    let mut c = connect(&gw, &format!("/carol?apikey={CAROL_KEY}")).await;
    let fetched = fetch_all(&mut c, &topic).await;
    assert_eq!(
        fetched,
        vec![(0, 2, "carol".to_string())],
        "carol sees carol's one record"
    );

    // Counted, without naming anyone.
    let text = get_text(&format!("http://{admin}/metrics")).await;
    let filtered = text
        .lines()
        .find(|l| l.starts_with("streamgate_pubsub_records_filtered_total{route=\"orders\"}"))
        .unwrap_or_else(|| panic!("no filtered count: {text}"));
    assert!(!filtered.ends_with(" 0"), "{filtered}");
    assert!(
        !text.contains("alice") && !text.contains("bob:"),
        "metrics name no user"
    );
}

/// With `key_prefix_delimiter = ":"`, the claim `4` owns the key `4` and keys `4:...`, never
/// `42:...`: a bare prefix would have given user 4 user 42's records.
#[tokio::test]
async fn a_claim_owns_its_keys_not_every_key_it_prefixes() {
    let broker = Broker::start().await;
    let topic = unique_topic("owners");
    let kafka = broker.client().await;
    fixtures::create_topic(&kafka, &topic, 2).await;
    for partition in 0..2 {
        let records = ["4:a", "42:b", "4", "42", "4x", "424:c"]
            .iter()
            .map(|key| fixtures::record(Some(key.as_bytes()), Some(key.as_bytes()), &[], None))
            .collect();
        fixtures::produce_each(&kafka, &topic, partition, records).await;
    }
    let (gw, _) = gateway(&broker).await;
    for (sub, mine) in [("4", ["4:a", "4"]), ("42", ["42:b", "42"])] {
        let jwt = user(sub);
        let mut c = connect(&gw, &format!("/orders?jwt={jwt}")).await;
        let mut fetched: Vec<String> = Vec::new();
        for partition in 0..2 {
            let batch = c.fetch(&topic, partition, 0).await.unwrap();
            fetched.extend(
                batch
                    .messages
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.key).into_owned()),
            );
        }
        assert_eq!(fetched, [mine, mine].concat(), "pull for {sub}");
        let mut pushed = subscribe_all(&mut c, &topic, "").await;
        pushed.sort();
        let mut want = [mine, mine].concat();
        want.sort();
        assert_eq!(pushed, want, "push for {sub}");
        let url = gw.http_url(&format!("/orders?topic={topic}&from=earliest&jwt={jwt}"));
        let mut streamed = events_all(&url).await;
        streamed.sort();
        assert_eq!(streamed, want, "SSE for {sub}");
    }
}

#[tokio::test]
async fn tokens_without_the_claim_or_for_another_consumer_are_refused_before_kafka() {
    let broker = Broker::start().await;
    let topic = unique_topic("orders");
    orders(&broker, &topic).await;
    let (gw, admin) = gateway(&broker).await;
    let status = |url: String, sse: bool| async move {
        let mut req = http().get(url);
        if sse {
            req = req.header("accept", "text/event-stream");
        } else {
            req = req
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        req.send().await.unwrap().status().as_u16()
    };
    let no_claim = token(
        SECRET,
        serde_json::json!({ "key": "app", "exp": fixtures::now_ms() / 1000 + 600 }),
    );
    // Signed for the other consumer's key but naming "app"; and an HS512 token for HS256.
    let wrong_key = token(
        OTHER_SECRET,
        serde_json::json!({ "key": "app", "sub": "alice:", "exp": fixtures::now_ms() / 1000 + 600 }),
    );
    let wrong_alg = encode(
        &Header::new(Algorithm::HS512),
        &serde_json::json!({ "key": "app", "sub": "alice:", "exp": fixtures::now_ms() / 1000 + 600 }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for sse in [false, true] {
        let url = |jwt: &str| gw.http_url(&format!("/orders?topic={topic}&jwt={jwt}"));
        assert_eq!(
            status(url(&no_claim), sse).await,
            403,
            "no `sub` claim (sse {sse})"
        );
        assert_eq!(
            status(url(&wrong_key), sse).await,
            401,
            "another consumer's secret"
        );
        assert_eq!(status(url(&wrong_alg), sse).await, 401, "another algorithm");
    }
    let readyz = get_text(&format!("http://{admin}/readyz")).await;
    assert!(
        readyz.contains("kafka_clients 0\n") && readyz.contains("kafka_broker_fetches 0\n"),
        "Kafka was never asked: {readyz}"
    );
}

#[tokio::test]
async fn a_reload_that_changes_a_consumers_filter_applies_to_open_sessions() {
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await;
    let topic = unique_topic("orders");
    orders(&broker, &topic).await;
    let (gw, _admin) = gateway(&broker).await;
    let mut pull = connect(&gw, &format!("/carol?apikey={CAROL_KEY}")).await;
    assert_eq!(fetch_all(&mut pull, &topic).await.len(), 1);
    let mut push = connect(&gw, &format!("/carol?apikey={CAROL_KEY}")).await;
    let (sub, _) = push
        .subscribe(CmdKafkaSubscribe {
            topic: topic.clone(),
            from: StartFrom::Latest as i32,
            credit_records: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let stream = http()
        .get(gw.http_url(&format!("/carol?topic={topic}&apikey={CAROL_KEY}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();

    // Carol now sees bob's records instead.
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    gw.reload(&config.replace("tenant = \"carol\"", "tenant = \"bob\""));
    // The subscription ends under its sequence (after the caught-up markers of the start).
    let ended = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), push.recv())
            .await
            .expect("the subscription ends")
            .unwrap();
        if let Some(Resp::ErrorResp(e)) = frame.resp {
            assert_eq!(frame.sequence, sub);
            break e;
        }
    };
    assert_eq!(ended.code, 3, "{}", ended.message);
    assert!(
        ended.message.contains("subscribe again"),
        "{}",
        ended.message
    );
    // The event stream ends with an error event.
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("event: error") {
        match tokio::time::timeout_at(deadline.into(), body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no error event: {other:?}; {text}"),
        }
    }
    // Pull commands on the open session use the new filter.
    let fetched = fetch_all(&mut pull, &topic).await;
    assert!(
        fetched.len() == 3 && fetched.iter().all(|(_, _, v)| v == "bob"),
        "{fetched:?}"
    );
}

#[tokio::test]
async fn a_filtered_fetch_reads_past_hidden_records_however_short_its_wait() {
    // Twenty records carol may not see, each its own batch, then hers. With no wait and one batch
    // per read, a fetch must still read on to her record: an empty answer would send her back to
    // the same offset, where the same reads end the same way, for ever.
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await;
    let topic = unique_topic("hidden");
    let kafka = broker.client().await;
    fixtures::create_topic(&kafka, &topic, 1).await;
    let mut records: Vec<_> = (0..20)
        .map(|i| {
            let key = format!("bob:{i}");
            fixtures::record(
                Some(key.as_bytes()),
                Some(b"bob"),
                &[("tenant", b"bob")],
                None,
            )
        })
        .collect();
    records.push(fixtures::record(
        Some(b"carol:20"),
        Some(b"carol"),
        &[("tenant", b"carol")],
        None,
    ));
    fixtures::produce_each(&kafka, &topic, 0, records).await;
    let (gw, _admin) = gateway_waiting(&broker, 0).await;
    let mut pull = connect(&gw, &format!("/carol?apikey={CAROL_KEY}")).await;
    let answer = pull
        .fetch_with(streamgate_protocol::CmdKafkaFetch {
            topic: topic.clone(),
            partition: 0,
            offset: 0,
            max_bytes: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let got: Vec<_> = answer
        .messages
        .iter()
        .map(|m| (m.offset, m.value.clone()))
        .collect();
    assert_eq!(
        got,
        vec![(20, b"carol".to_vec().into())],
        "{answer:?}\n{}",
        gw.log()
    );
}
