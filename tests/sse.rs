//! Server-Sent Events on a pub/sub route (docs/subscriptions.md, "Server-Sent Events"): the same
//! subscription as the WebSocket push, read with a plain HTTP client and with curl. Real gateway,
//! real broker.

mod common;

use common::*;
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use streamgate_testkit::{fixtures, unique_topic, Broker, BrokerOptions, Engine};

/// One event of a stream.
#[derive(Debug, Clone, Default)]
struct Event {
    id: Option<String>,
    event: String,
    data: String,
}

/// Reads events from a response body.
struct Events {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    /// Comment lines seen (`: ...`).
    comments: usize,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    event: "message".into(),
                    ..Default::default()
                };
                // As EventSource does: a block without data dispatches no event.
                let mut is_comment = true;
                for line in block.lines() {
                    if !line.starts_with("data:") {
                        if line.starts_with(':') || line.starts_with("retry:") {
                            continue;
                        }
                    } else {
                        is_comment = false;
                    }
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data = v.to_string();
                    }
                }
                if is_comment {
                    self.comments += 1;
                    continue;
                }
                return Some(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(_) => return None,
                Err(_) => panic!("no event within {within:?}; buffered: {:?}", self.buffer),
            }
        }
    }

    /// Events until `n` records have come (other events included).
    async fn records(&mut self, n: usize) -> Vec<Event> {
        let mut all = Vec::new();
        while all.iter().filter(|e: &&Event| e.event == "record").count() < n {
            let e = self
                .next(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("the stream ended after {all:?}"));
            all.push(e);
        }
        all
    }
}

fn json(e: &Event) -> serde_json::Value {
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{e:?}: {err}"))
}

async fn open(url: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut req = http().get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    req.send().await.expect("GET the event stream")
}

async fn sqlite_broker() -> Broker {
    Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await
}

async fn produce(broker: &Broker, topic: &str, partition: i32, values: &[&str]) {
    let kafka = broker.client().await;
    let records = values
        .iter()
        .map(|v| fixtures::record(Some(b"k"), Some(v.as_bytes()), &[("h", b"1")], None))
        .collect();
    fixtures::produce_each(&kafka, topic, partition, records).await;
}

#[tokio::test]
async fn a_topic_as_events_then_live_then_resumed_exactly_with_last_event_id() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse");
    fixtures::create_topic(&kafka, &topic, 2).await;
    produce(&broker, &topic, 0, &["a0", "a1", "a2"]).await;
    produce(&broker, &topic, 1, &["b0"]).await;
    let gw = gateway_for(&broker, "", "").await;
    let url = gw.http_url(&format!("/kafka?topic={topic}&from=earliest"));
    let response = open(&url, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut events = Events::new(response);
    let mut seen = events.records(4).await;
    while seen.iter().filter(|e| e.event == "caught_up").count() < 2 {
        seen.push(
            events
                .next(Duration::from_secs(5))
                .await
                .expect("caught_up"),
        );
    }
    let records: Vec<serde_json::Value> = seen
        .iter()
        .filter(|e| e.event == "record")
        .map(json)
        .collect();
    let a: Vec<&str> = records
        .iter()
        .filter(|r| r["partition"] == 0)
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(a, vec!["a0", "a1", "a2"]);
    let first = records.iter().find(|r| r["value"] == "a0").unwrap();
    assert_eq!(first["offset"], 0);
    assert_eq!(first["key"], "k");
    assert_eq!(first["headers"]["h"], "1");
    assert!(first["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(seen.iter().all(|e| e
        .id
        .as_ref()
        .is_some_and(|id| !id.is_empty() && id.len() <= 1024)));

    // Live records follow without a request.
    produce(&broker, &topic, 0, &["a3"]).await;
    let live = events.records(1).await;
    let last = live.iter().rev().find(|e| e.event == "record").unwrap();
    assert_eq!(json(last)["value"], "a3");

    // Resume after a2 (the id of its event): exactly what the stream had after a2's event
    // (whatever of partition 1 came later in it, and a3), then what was produced since.
    let stream: Vec<&Event> = seen.iter().chain(live.iter()).collect();
    let at = stream
        .iter()
        .position(|e| e.event == "record" && json(e)["value"] == "a2")
        .unwrap();
    let after_a2 = stream[at].id.clone().unwrap();
    let mut want: Vec<String> = stream[at + 1..]
        .iter()
        .filter(|e| e.event == "record")
        .map(|e| json(e)["value"].as_str().unwrap().to_string())
        .chain(["a4".to_string(), "b1".to_string()])
        .collect();
    want.sort();
    drop(events);
    produce(&broker, &topic, 0, &["a4"]).await;
    produce(&broker, &topic, 1, &["b1"]).await;
    let mut resumed = Events::new(
        open(
            &gw.http_url(&format!("/kafka?topic={topic}")),
            Some(&after_a2),
        )
        .await,
    );
    let got = resumed.records(want.len()).await;
    let mut values: Vec<String> = got
        .iter()
        .filter(|e| e.event == "record")
        .map(|e| json(e)["value"].as_str().unwrap().to_string())
        .collect();
    values.sort();
    assert_eq!(values, want, "exactly what followed a2's event");
    let more = tokio::time::timeout(
        Duration::from_millis(500),
        resumed.next(Duration::from_secs(1)),
    )
    .await;
    assert!(
        more.is_err()
            || more
                .as_ref()
                .unwrap()
                .as_ref()
                .is_some_and(|e| e.event != "record"),
        "nothing repeated: {more:?}"
    );
}

#[tokio::test]
async fn refusals_before_the_stream_are_json_with_their_status() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-ref");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let gw = gateway_for(
        &broker,
        &format!("topics = [\"{topic}\", \"sse-absent*\"]"),
        "",
    )
    .await;
    for (query, last_id, status, words) in [
        ("", None, 400, "topic"),
        ("?topic=sse-absent-1", None, 404, "not found topic"),
        ("?topic=secret", None, 403, "allow-list"),
        (
            &*format!("?topic={topic}&from=soon"),
            None,
            400,
            "from=soon",
        ),
        (&*format!("?topic={topic}"), Some("garbage"), 400, "cursor"),
        (
            &*format!("?topic={topic}&partitions=3"),
            None,
            404,
            "partition",
        ),
    ] {
        let response = open(&gw.http_url(&format!("/kafka{query}")), last_id).await;
        assert_eq!(response.status(), status, "{query}");
        let body: serde_json::Value = response.json().await.expect("JSON");
        let message = body["error_msg"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{query}: {message}");
    }
    // A page on another origin may read it (CORS), one the route does not list may not.
    let listed = gateway_for(
        &broker,
        &format!("topics = [\"{topic}\"]\nallowed_origins = [\"https://app.example\"]"),
        "",
    )
    .await;
    let url = listed.http_url(&format!("/kafka?topic={topic}&sse=1"));
    let response = http()
        .get(&url)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    drop(response);
    let response = http()
        .get(&url)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "an origin the route does not list");
    // ?sse=1 works without the Accept header.
    let response = http()
        .get(gw.http_url(&format!("/kafka?topic={topic}&sse=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn binary_keys_and_values_are_base64_and_filters_apply() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-bin");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let records = vec![
        fixtures::record(
            Some(b"eu-1"),
            Some(&[0xff, 0x00]),
            &[("kind", b"order")],
            None,
        ),
        fixtures::record(Some(b"us-1"), Some(b"skip"), &[("kind", b"order")], None),
        fixtures::record(Some(&[0xfe]), Some(b"skip too"), &[], None),
        fixtures::record(Some(b"eu-2"), Some(b"text"), &[("kind", b"order")], None),
    ];
    fixtures::produce_each(&kafka, &topic, 0, records).await;
    let gw = gateway_for(&broker, "", "").await;
    let url = gw.http_url(&format!(
        "/kafka?topic={topic}&from=earliest&key_prefix=eu-&header.kind=order"
    ));
    let mut events = Events::new(open(&url, None).await);
    let got = events.records(2).await;
    let records: Vec<serde_json::Value> = got
        .iter()
        .filter(|e| e.event == "record")
        .map(json)
        .collect();
    assert_eq!(records[0]["value"]["base64"], "/wA=");
    assert_eq!(records[0]["key"], "eu-1");
    assert_eq!(records[1]["value"], "text");
    assert_eq!(records[1]["offset"], 3);
}

#[tokio::test]
async fn auth_plugins_apply_to_event_streams() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-auth");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let extra = "[[consumers]]\nusername = \"reader\"\n[consumers.plugins.key-auth]\nkey = \"reader-key-0123456789\"\n";
    let addr = listen_addr();
    let config = format!(
        "{}{}[[routes]]\nid = \"kafka\"\nuri = \"/kafka\"\nupstream_id = \"kafka\"\n[routes.plugins.key-auth]\n[routes.plugins.kafka-proxy]\nsocket_timeout_ms = 2000\n\n{extra}",
        server_toml(addr),
        kafka_upstream("kafka", &broker.bootstrap, ""),
    );
    let gw = streamgate_testkit::GatewayProcess::start(binary(), &config, addr).await;
    let response = open(&gw.http_url(&format!("/kafka?topic={topic}")), None).await;
    assert_eq!(response.status(), 401);
    let response = open(
        &gw.http_url(&format!(
            "/kafka?topic={topic}&apikey=reader-key-0123456789"
        )),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn curl_reads_the_stream() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-curl");
    fixtures::create_topic(&kafka, &topic, 1).await;
    produce(&broker, &topic, 0, &["one", "two"]).await;
    let gw = gateway_for(&broker, "", "").await;
    let url = gw.http_url(&format!("/kafka?topic={topic}&from=earliest&sse=1"));
    // curl -N stops after 3 s; the stream never ends on its own.
    let out = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "3", &url])
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("event: record"), "{text}");
    assert!(
        text.contains(r#""value":"one""#) && text.contains(r#""value":"two""#),
        "{text}"
    );
    assert!(
        text.contains("event: caught_up\ndata: {\"partition\":0}"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_disconnected() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-slow");
    fixtures::create_topic(&kafka, &topic, 1).await;
    // 8 MiB of records.
    for _ in 0..8 {
        let records = (0..16)
            .map(|_| fixtures::record(None, Some(&vec![b'x'; 64 * 1024]), &[], None))
            .collect();
        fixtures::produce_batch(&kafka, &topic, 0, records, fixtures::Codec::NoCompression).await;
    }
    let admin = listen_addr();
    let gw = gateway_for(
        &broker,
        "send_timeout_ms = 1000",
        &format!("[admin]\nlisten = \"{admin}\"\n"),
    )
    .await;
    // A raw connection that asks and then reads nothing.
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /kafka?topic={topic}&from=earliest HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    wait_readyz(
        admin,
        "pubsub_sessions 1\n",
        Duration::from_secs(3),
        "the stream started",
    )
    .await;
    wait_readyz(
        admin,
        "pubsub_sessions 0\n",
        Duration::from_secs(15),
        "a reader that reads nothing is dropped after send_timeout_ms",
    )
    .await;
    drop(tcp);
}

#[tokio::test]
async fn event_streams_over_http2_on_a_tls_listener() {
    use streamgate_testkit::TestCa;
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-h2");
    fixtures::create_topic(&kafka, &topic, 1).await;
    produce(&broker, &topic, 0, &["one", "two"]).await;
    let ca = TestCa::new();
    let plain = listen_addr();
    let admin = listen_addr();
    let tls = listen_addr();
    let config = format!(
        "{}[[server.tls_listen]]\naddress = \"{tls}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[admin]\nlisten = \"{admin}\"\n\n{}{}",
        server_toml(plain),
        ca.cert_file().display(),
        ca.key_file().display(),
        kafka_upstream("kafka", &broker.bootstrap, ""),
        kafka_route("kafka", "/kafka", "kafka", ""),
    );
    let _gw = streamgate_testkit::GatewayProcess::start(binary(), &config, plain).await;
    streamgate_testkit::wait_for_port(tls, Duration::from_secs(5))
        .await
        .unwrap();
    let https = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/kafka?topic={topic}&from=earliest",
        tls.port()
    );
    let response = https
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN chose h2"
    );
    let mut events = Events::new(response);
    let got = events.records(2).await;
    let values: Vec<String> = got
        .iter()
        .filter(|e| e.event == "record")
        .map(|e| json(e)["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, vec!["one", "two"]);
    // Live over the same HTTP/2 stream.
    produce(&broker, &topic, 0, &["three"]).await;
    let live = events.records(1).await;
    assert!(live
        .iter()
        .any(|e| e.event == "record" && json(e)["value"] == "three"));
    // The client goes: the stream ends at the gateway.
    drop(events);
    wait_readyz(
        admin,
        "pubsub_sessions 0\n",
        Duration::from_secs(10),
        "the stream ends when its client goes",
    )
    .await;
}

#[tokio::test]
async fn a_group_stream_resumes_from_the_groups_commit_not_last_event_id() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-group");
    fixtures::create_topic(&kafka, &topic, 1).await;
    produce(&broker, &topic, 0, &["r0", "r1", "r2", "r3"]).await;
    let groups =
        "group_prefix = \"web.\"\ngroup_session_timeout_ms = 6000\nauto_commit_interval_ms = 500";
    let gw = gateway_for(&broker, groups, "").await;
    let url = gw.http_url(&format!("/kafka?topic={topic}&from=earliest&group=reader"));
    let mut events = Events::new(open(&url, None).await);
    let seen = events.records(4).await;
    let last_id = seen.iter().rev().find_map(|e| e.id.clone()).expect("an id");
    drop(events);
    // The stream's end commits what it wrote (AUTO) and leaves the group; then more arrive.
    produce(&broker, &topic, 0, &["r4", "r5"]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let values = loop {
        // A Last-Event-ID from the first record would mean "after r0": with a group it is ignored.
        let first_id = seen.iter().find_map(|e| e.id.clone()).unwrap();
        let mut events = Events::new(open(&url, Some(&first_id)).await);
        let next = events.records(1).await;
        let values: Vec<String> = next
            .iter()
            .filter(|e| e.event == "record")
            .map(|e| json(e)["value"].as_str().unwrap().to_string())
            .collect();
        if values == ["r4"] || Instant::now() > deadline {
            break values;
        }
        // The old member's commit and LeaveGroup run after its stream ended: try again.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        values,
        ["r4"],
        "resumed from the group's commit (last id {last_id})"
    );
    // Groups are refused where the route has none, with the status of FORBIDDEN.
    let plain = gateway_for(&broker, "", "").await;
    let response = open(
        &plain.http_url(&format!("/kafka?topic={topic}&group=reader")),
        None,
    )
    .await;
    assert_eq!(response.status(), 403);
}
