//! Kafka's read contract as real clusters show it: transactions (aborted records, markers, the
//! last stable offset), leader moves and rolling restarts, and numbers a broker should never
//! send. The broker is the real test broker; where it cannot show what a cluster does, the
//! testkit's `FaultyCluster` in front of it answers as Kafka would (see its module comment).

mod common;

use common::*;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_resp::Resp, ClientError, CmdKafkaSubscribe, ErrorCode,
    PartitionOffset, PubSubClient,
};
use streamgate_testkit::{
    fixtures, unique_topic, Broker, Fault, FaultOptions, FaultyCluster, GatewayProcess, TxnWriter,
};

/// A gateway on `bootstrap` with one route `/kafka` (kafka-proxy body `plugin`) and an admin
/// listener; returns it and the admin address.
async fn gateway_on(bootstrap: &str, plugin: &str) -> (GatewayProcess, std::net::SocketAddr) {
    let addr = listen_addr();
    let admin = listen_addr();
    let config = format!(
        "{}[admin]\nlisten = \"{admin}\"\n\n{}{}",
        server_toml(addr),
        kafka_upstream("kafka", bootstrap, ""),
        kafka_route("kafka", "/kafka", "kafka", plugin),
    );
    (GatewayProcess::start(binary(), &config, addr).await, admin)
}

/// A `FaultyCluster` with `options` in front of `broker`, and a gateway on it (kafka-proxy body
/// `plugin`).
async fn behind(
    broker: &Broker,
    options: FaultOptions,
    plugin: &str,
) -> (FaultyCluster, GatewayProcess) {
    let cluster = FaultyCluster::start(broker.broker_port, options).await;
    let (gw, _) = gateway_on(&cluster.bootstrap, plugin).await;
    (cluster, gw)
}

fn subscribe(topic: &str, credit: u32) -> CmdKafkaSubscribe {
    CmdKafkaSubscribe {
        topic: topic.into(),
        from: StartFrom::Earliest as i32,
        credit_records: credit,
        ..Default::default()
    }
}

/// What a push subscription delivered: per partition (offset, value), and caught-up partitions.
#[derive(Debug, Default)]
struct Pushed {
    records: BTreeMap<i32, Vec<(i64, String)>>,
    caught_up: Vec<i32>,
}

/// Takes pushes of `subscription` until `done` holds; panics after `within`.
async fn pushes_until(
    c: &mut PubSubClient,
    subscription: i64,
    within: Duration,
    seen: &mut Pushed,
    done: impl Fn(&Pushed) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, c.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; delivered so far: {seen:?}"))
            .expect("a frame");
        assert_eq!(frame.sequence, subscription, "{frame:?}");
        match frame.resp {
            Some(Resp::KafkaRecordsPush(push)) => {
                for batch in push.batches {
                    let list = seen.records.entry(batch.partition).or_default();
                    for m in batch.messages {
                        list.push((m.offset, String::from_utf8_lossy(&m.value).into_owned()));
                    }
                    if batch.caught_up {
                        seen.caught_up.push(batch.partition);
                    }
                }
            }
            other => panic!("expected a push, got {other:?}; delivered so far: {seen:?}"),
        }
    }
}

/// Pull-reads `partition` from offset 0 as an APISIX client does (next offset = last + 1) until
/// an answer says it is at the end; returns (offset, value) of every record.
async fn pull_all(c: &mut PubSubClient, topic: &str, partition: i32) -> (Vec<(i64, String)>, i64) {
    let mut got = Vec::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "pull never ended: {got:?}");
        let answer = c.fetch(topic, partition, offset).await.expect("a fetch");
        if answer.messages.is_empty() {
            return (got, answer.high_watermark);
        }
        for m in answer.messages {
            offset = m.offset + 1;
            got.push((m.offset, String::from_utf8_lossy(&m.value).into_owned()));
        }
    }
}

/// SSE events of one stream: (event, data) pairs until `done` holds.
async fn events_until(
    url: &str,
    within: Duration,
    done: impl Fn(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let response = http()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET the event stream");
    assert_eq!(response.status(), 200, "{url}");
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events: Vec<(String, serde_json::Value)> = Vec::new();
    let deadline = Instant::now() + within;
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.next()).await {
            Ok(Some(Ok(chunk))) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(other) => panic!("the stream ended ({other:?}) after {events:?}"),
            Err(_) => panic!("timed out after {events:?}"),
        }
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut kind = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                }
            }
            if let (Some(kind), Some(data)) = (kind, data) {
                events.push((kind, data));
            }
        }
    }
    events
}

fn record_values(events: &[(String, serde_json::Value)]) -> Vec<String> {
    events
        .iter()
        .filter(|(kind, _)| kind == "record")
        .map(|(_, d)| d["value"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Two producers' transactions interleaved in one partition, aborted and committed. Every
/// write is its own batch.
async fn transactional_log(broker: &Broker, topic: &str) -> Vec<&'static str> {
    let mut a = TxnWriter::new(broker.broker_port).await;
    let mut b = TxnWriter::new(broker.broker_port).await;
    a.write(topic, 0, &["a-aborted-1"]).await; // 0
    a.write(topic, 0, &["a-aborted-2"]).await; // 1
    b.write(topic, 0, &["b-committed-1"]).await; // 2
    a.end(topic, 0, false).await; // 3: a aborts
    b.end(topic, 0, true).await; // 4: b commits
    a.write(topic, 0, &["a-committed"]).await; // 5
    b.write(topic, 0, &["b-committed-2"]).await; // 6
    a.end(topic, 0, true).await; // 7: a commits
    b.end(topic, 0, true).await; // 8: b commits
    b.write(topic, 0, &["b-aborted"]).await; // 9
    b.end(topic, 0, false).await; // 10: b aborts
    vec!["b-committed-1", "a-committed", "b-committed-2"]
}

#[tokio::test]
async fn aborted_transactions_are_never_delivered_by_pull_push_or_sse() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("txn-aborted");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let committed = transactional_log(&broker, &topic).await;
    let options = FaultOptions {
        transactions: true,
        ..Default::default()
    };
    let (cluster, gw) = behind(&broker, options, "").await;

    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (pulled, end) = pull_all(&mut c, &topic, 0).await;
    let values: Vec<&str> = pulled.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, committed, "pull: {pulled:?}");
    assert_eq!(end, 11, "the end of a log with no open transaction");

    let (sub, _) = c.subscribe(subscribe(&topic, 100)).await.unwrap();
    let mut seen = Pushed::default();
    pushes_until(&mut c, sub, Duration::from_secs(10), &mut seen, |s| {
        !s.caught_up.is_empty()
    })
    .await;
    let values: Vec<&str> = seen.records[&0].iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, committed, "push: {seen:?}");
    assert_eq!(seen.caught_up, vec![0]);

    let url = gw.http_url(&format!("/kafka?topic={topic}&from=earliest"));
    let events = events_until(&url, Duration::from_secs(10), |e| {
        e.iter().any(|(kind, _)| kind == "caught_up")
    })
    .await;
    assert_eq!(record_values(&events), committed, "SSE: {events:?}");

    // A read_uncommitted route reads every record, aborted or not (markers are never records).
    let (gw, _) = gateway_on(&cluster.bootstrap, "isolation = \"read_uncommitted\"").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c.subscribe(subscribe(&topic, 100)).await.unwrap();
    let mut seen = Pushed::default();
    pushes_until(&mut c, sub, Duration::from_secs(10), &mut seen, |s| {
        !s.caught_up.is_empty()
    })
    .await;
    let offsets: Vec<i64> = seen.records[&0].iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        vec![0, 1, 2, 5, 6, 9],
        "read_uncommitted: {seen:?}"
    );
}

#[tokio::test]
async fn a_log_that_ends_in_a_marker_ends_and_says_caught_up() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("txn-marker");
    fixtures::create_topic(&kafka, &topic, 2).await;
    let mut w = TxnWriter::new(broker.broker_port).await;
    w.write(&topic, 0, &["r0"]).await;
    w.write(&topic, 0, &["r1"]).await;
    assert_eq!(
        w.end(&topic, 0, true).await,
        2,
        "the marker is the log's last offset"
    );
    fixtures::produce_each(&kafka, &topic, 1, vec![fixtures::value("p1-0")]).await;
    let (gw, admin) = gateway_on(&broker.bootstrap, "").await;

    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c.subscribe(subscribe(&topic, 100)).await.unwrap();
    let mut seen = Pushed::default();
    pushes_until(&mut c, sub, Duration::from_secs(5), &mut seen, |s| {
        s.caught_up.len() == 2
    })
    .await;
    assert_eq!(seen.records[&0], vec![(0, "r0".into()), (1, "r1".into())]);
    assert_eq!(seen.records[&1], vec![(0, "p1-0".into())]);

    let url = gw.http_url(&format!("/kafka?topic={topic}&partitions=0&from=earliest"));
    let events = events_until(&url, Duration::from_secs(5), |e| {
        e.iter().any(|(kind, _)| kind == "caught_up")
    })
    .await;
    assert_eq!(record_values(&events), vec!["r0", "r1"]);

    // A pull at the marker answers nothing visible up to the end it reports.
    let answer = c.fetch(&topic, 0, 2).await.unwrap();
    assert!(answer.messages.is_empty(), "{answer:?}");
    assert_eq!(answer.high_watermark, 3);

    // At the end, the subscription waits on the shared poller rather than fetching every
    // turn: one partition's poll is at most 50 broker fetches a second, whatever the readers.
    let mut more = Vec::new();
    for _ in 0..4 {
        let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
        let (sub, _) = c
            .subscribe(CmdKafkaSubscribe {
                partitions: vec![0],
                ..subscribe(&topic, 100)
            })
            .await
            .unwrap();
        let mut seen = Pushed::default();
        pushes_until(&mut c, sub, Duration::from_secs(5), &mut seen, |s| {
            !s.caught_up.is_empty()
        })
        .await;
        more.push(c);
    }
    let sample = "streamgate_kafka_broker_fetches_total";
    let before = metric(admin, sample).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fetches = metric(admin, sample).await - before;
    assert!(
        fetches <= 2.0 * 2.0 * 55.0,
        "{fetches} broker fetches in 2 s for 6 readers of 2 idle partitions"
    );
}

#[tokio::test]
async fn an_open_transaction_holds_readers_at_the_last_stable_offset_without_spinning() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("txn-open");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let mut a = TxnWriter::new(broker.broker_port).await;
    let mut b = TxnWriter::new(broker.broker_port).await;
    a.write(&topic, 0, &["first"]).await; // 0
    a.end(&topic, 0, true).await; // 1
    b.write(&topic, 0, &["open-1"]).await; // 2: the last stable offset while b is open
    a.write(&topic, 0, &["after-open"]).await; // 3
    a.end(&topic, 0, true).await; // 4
    let cluster = FaultyCluster::start(
        broker.broker_port,
        FaultOptions {
            transactions: true,
            ..Default::default()
        },
    )
    .await;
    // Four routes that differ only in fetch_max_bytes: one reader of the partition (one shared
    // poller), but readers whose fetches are not the same request, so a reader that fetched
    // again and again instead of waiting would show in the count.
    let addr = listen_addr();
    let admin = listen_addr();
    let mut config = format!(
        "{}[admin]\nlisten = \"{admin}\"\n\n{}",
        server_toml(addr),
        kafka_upstream("kafka", &cluster.bootstrap, "")
    );
    for i in 0..4 {
        let plugin = format!("fetch_max_bytes = {}", 10_000 + i);
        config.push_str(&kafka_route(
            &format!("r{i}"),
            &format!("/kafka{i}"),
            "kafka",
            &plugin,
        ));
    }
    let gw = GatewayProcess::start(binary(), &config, addr).await;

    let mut c = PubSubClient::connect(&gw.ws_url("/kafka0")).await.unwrap();
    let started = Instant::now();
    let answer = c.fetch(&topic, 0, 2).await.unwrap();
    assert!(answer.messages.is_empty(), "{answer:?}");
    assert_eq!(
        answer.high_watermark, 2,
        "the last stable offset is the end"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "a pull at the last stable offset waits there like at the end of the log"
    );

    let mut readers = Vec::new();
    for i in 0..4 {
        let url = gw.ws_url(&format!("/kafka{i}"));
        let mut c = PubSubClient::connect(&url).await.unwrap();
        let (sub, start) = c.subscribe(subscribe(&topic, 100)).await.unwrap();
        assert_eq!(start.partitions[0].high_watermark, 2, "{start:?}");
        let mut seen = Pushed::default();
        pushes_until(&mut c, sub, Duration::from_secs(5), &mut seen, |s| {
            !s.caught_up.is_empty()
        })
        .await;
        assert_eq!(seen.records[&0], vec![(0, "first".into())]);
        readers.push((c, sub, seen));
    }
    let sample = "streamgate_kafka_broker_fetches_total";
    let before = metric(admin, sample).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fetches = metric(admin, sample).await - before;
    println!("open transaction: {fetches} broker fetches in 2 s");
    assert!(
        fetches <= 2.0 * 60.0,
        "{fetches} broker fetches in 2 s: readers spin at the last stable offset"
    );

    // The transaction commits: everyone reads on, in log order.
    b.end(&topic, 0, true).await; // 5
    for (c, sub, seen) in &mut readers {
        pushes_until(c, *sub, Duration::from_secs(5), seen, |s| {
            s.records[&0].len() == 3
        })
        .await;
        assert_eq!(
            seen.records[&0],
            vec![
                (0, "first".into()),
                (2, "open-1".into()),
                (3, "after-open".into())
            ]
        );
    }
}

/// A seeded soak: push, SSE and pull readers of a topic whose leaders move, vanish, fence, lag
/// and reset connections while it is produced to; each reader ends with exactly the produced
/// sequence. STREAMGATE_SOAK_SEED replays a run.
#[tokio::test]
async fn leader_moves_and_restarts_lose_and_repeat_nothing() {
    let seed: u64 = std::env::var("STREAMGATE_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fixtures::now_ms() as u64);
    println!("soak seed: {seed} (STREAMGATE_SOAK_SEED={seed} replays it)");
    const PARTITIONS: i32 = 2;
    const PER_PARTITION: usize = 150;
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("leader-moves");
    fixtures::create_topic(&kafka, &topic, PARTITIONS).await;
    let cluster = FaultyCluster::start(
        broker.broker_port,
        FaultOptions {
            seed,
            fault_percent: 12,
            ..Default::default()
        },
    )
    .await;
    let (gw, _) = gateway_on(&cluster.bootstrap, "socket_timeout_ms = 5000").await;
    // A reader at the head for the whole run keeps the shared poller fetching after the others
    // are done, so that faults go on until each kind was injected.
    let mut keeper = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    keeper
        .subscribe(CmdKafkaSubscribe {
            from: StartFrom::Latest as i32,
            ..subscribe(&topic, 1_000_000)
        })
        .await
        .unwrap();
    cluster.arm(true);

    let expected: Vec<String> = (0..PER_PARTITION).map(|i| format!("v{i}")).collect();
    let producer = {
        let (kafka, topic) = (broker.client().await, topic.clone());
        tokio::spawn(async move {
            for i in 0..PER_PARTITION {
                for p in 0..PARTITIONS {
                    let record = fixtures::value(&format!("v{i}"));
                    fixtures::produce_each(&kafka, &topic, p, vec![record]).await;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    let push = {
        let (url, topic) = (gw.ws_url("/kafka"), topic.clone());
        tokio::spawn(async move {
            let mut c = PubSubClient::connect(&url).await.unwrap();
            let (sub, _) = c.subscribe(subscribe(&topic, 1_000_000)).await.unwrap();
            let mut seen = Pushed::default();
            pushes_until(&mut c, sub, Duration::from_secs(90), &mut seen, |s| {
                s.records.values().map(Vec::len).sum::<usize>() >= PER_PARTITION * 2
            })
            .await;
            seen
        })
    };
    let sse = {
        let url = gw.http_url(&format!("/kafka?topic={topic}&from=earliest"));
        tokio::spawn(async move {
            events_until(&url, Duration::from_secs(90), |e| {
                e.iter().filter(|(kind, _)| kind == "record").count() >= PER_PARTITION * 2
            })
            .await
        })
    };
    let pulls: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let (url, topic) = (gw.ws_url("/kafka"), topic.clone());
            tokio::spawn(async move {
                let mut c = PubSubClient::connect(&url).await.unwrap();
                let mut got = Vec::new();
                let mut offset = 0;
                let deadline = Instant::now() + Duration::from_secs(90);
                while got.len() < PER_PARTITION {
                    assert!(Instant::now() < deadline, "pull {p}: {got:?}");
                    match c.fetch(&topic, p, offset).await {
                        Ok(answer) => {
                            for m in answer.messages {
                                assert_eq!(m.offset, offset, "pull {p}: offsets in order");
                                offset = m.offset + 1;
                                got.push(String::from_utf8_lossy(&m.value).into_owned());
                            }
                        }
                        // Past the route's broker timeout the cluster counts as gone for one
                        // answer; the reader asks again, as a client would.
                        Err(ClientError::Server { code, message })
                            if code == ErrorCode::Unavailable as i32 =>
                        {
                            println!("pull {p}: {message}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("pull {p} at {offset}: {e:?}"),
                    }
                }
                got
            })
        })
        .collect();

    producer.await.unwrap();
    let seen = push.await.expect("the push reader");
    let events = sse.await.expect("the SSE reader");
    for p in 0..PARTITIONS {
        let values: Vec<String> = seen.records[&p].iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(values, expected, "push, partition {p}");
        let offsets: Vec<i64> = seen.records[&p].iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..PER_PARTITION as i64).collect::<Vec<_>>());
        let values: Vec<String> = events
            .iter()
            .filter(|(kind, d)| kind == "record" && d["partition"] == p)
            .map(|(_, d)| d["value"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(values, expected, "SSE, partition {p}");
    }
    for (p, pull) in pulls.into_iter().enumerate() {
        assert_eq!(
            pull.await.expect("a pull reader"),
            expected,
            "pull, partition {p}"
        );
    }
    // Faults go on (the keeper waits at the head) until each kind was injected at least once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let injected = cluster.injected();
        if Fault::ALL
            .iter()
            .all(|f| injected.get(f).copied().unwrap_or(0) > 0)
        {
            println!("faults injected: {injected:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every fault was injected: {injected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

#[tokio::test]
async fn a_new_leader_whose_high_watermark_lags_is_waited_out() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("lagging-leader");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let values: Vec<_> = (0..5).map(|i| fixtures::value(&format!("r{i}"))).collect();
    fixtures::produce_each(&kafka, &topic, 0, values).await;
    let (cluster, gw) = behind(&broker, FaultOptions::default(), "").await;

    // A subscription paused at offset 2 of 5, and a pull reader at the end.
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c.subscribe(subscribe(&topic, 2)).await.unwrap();
    let mut seen = Pushed::default();
    pushes_until(&mut c, sub, Duration::from_secs(5), &mut seen, |s| {
        s.records.get(&0).is_some_and(|r| r.len() == 2)
    })
    .await;
    let mut puller = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (pulled, end) = pull_all(&mut puller, &topic, 0).await;
    assert_eq!((pulled.len(), end), (5, 5));
    // Records read stay shared for a second: past that, reads go to the (new) leader.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    cluster.move_leader(&topic, 0);
    cluster.lag(&topic, 0, 1, Duration::from_millis(1_500));
    c.credit(sub, 10, 0).await.unwrap();
    let answer = puller
        .fetch(&topic, 0, 5)
        .await
        .expect("not OFFSET_OUT_OF_RANGE");
    assert!(answer.messages.is_empty(), "{answer:?}");
    pushes_until(&mut c, sub, Duration::from_secs(10), &mut seen, |s| {
        s.records[&0].len() == 5
    })
    .await;
    let offsets: Vec<i64> = seen.records[&0].iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    fixtures::produce_each(&kafka, &topic, 0, vec![fixtures::value("r5")]).await;
    let answer = puller.fetch(&topic, 0, 5).await.unwrap();
    assert_eq!(answer.messages.len(), 1, "{answer:?}");
}

#[tokio::test]
async fn only_the_brokers_own_out_of_range_ends_a_subscription() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("own-oor");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let values: Vec<_> = (0..4).map(|i| fixtures::value(&format!("r{i}"))).collect();
    fixtures::produce_each(&kafka, &topic, 0, values).await;
    let options = FaultOptions {
        out_of_range: true,
        ..Default::default()
    };
    let (_cluster, gw) = behind(&broker, options, "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c
        .subscribe(CmdKafkaSubscribe {
            offsets: vec![PartitionOffset {
                partition: 0,
                offset: 2,
            }],
            ..subscribe(&topic, 100)
        })
        .await
        .unwrap();
    let mut seen = Pushed::default();
    pushes_until(&mut c, sub, Duration::from_secs(5), &mut seen, |s| {
        !s.caught_up.is_empty()
    })
    .await;
    // A fetch past the log gets the broker's OFFSET_OUT_OF_RANGE: the subscribe says so.
    match c
        .subscribe(CmdKafkaSubscribe {
            offsets: vec![PartitionOffset {
                partition: 0,
                offset: 40,
            }],
            ..subscribe(&topic, 100)
        })
        .await
    {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::KafkaError as i32, "{message}");
            assert!(message.contains("OFFSET_OUT_OF_RANGE"), "{message}");
        }
        other => panic!("expected OFFSET_OUT_OF_RANGE, got {other:?}"),
    }
    assert_eq!(&c.ping("alive").await.unwrap()[..], b"alive");
}

#[tokio::test]
async fn a_topic_without_partitions_is_not_found_and_hurts_nobody() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("no-partitions");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let options = FaultOptions {
        without_partitions: vec![topic.clone()],
        ..Default::default()
    };
    let (_cluster, gw) = behind(&broker, options, "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    match c.subscribe(subscribe(&topic, 10)).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::NotFound as i32, "{message}");
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    let status = http()
        .get(gw.http_url(&format!("/kafka?topic={topic}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    assert_eq!(&c.ping("alive").await.unwrap()[..], b"alive");
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

#[tokio::test]
async fn the_largest_offset_is_out_of_range_not_an_overflow() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("max-offset");
    fixtures::create_topic(&kafka, &topic, 1).await;
    fixtures::produce_each(&kafka, &topic, 0, vec![fixtures::value("r0")]).await;
    let (gw, _) = gateway_on(&broker.bootstrap, "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    match c.fetch(&topic, 0, i64::MAX).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::KafkaError as i32, "{message}");
            assert!(message.contains("OFFSET_OUT_OF_RANGE"), "{message}");
        }
        other => panic!("expected OFFSET_OUT_OF_RANGE, got {other:?}"),
    }
    let max = PartitionOffset {
        partition: 0,
        offset: i64::MAX,
    };
    match c
        .subscribe(CmdKafkaSubscribe {
            offsets: vec![max],
            ..subscribe(&topic, 10)
        })
        .await
    {
        Err(ClientError::Server { message, .. }) => {
            assert!(message.contains("OFFSET_OUT_OF_RANGE"), "{message}")
        }
        other => panic!("expected OFFSET_OUT_OF_RANGE, got {other:?}"),
    }
    let url = gw.http_url(&format!("/kafka?topic={topic}&from=0:{}", i64::MAX));
    let response = http()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(Duration::from_secs(5), response.text())
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(text.contains("OFFSET_OUT_OF_RANGE"), "{text}");
    assert_eq!(&c.ping("alive").await.unwrap()[..], b"alive");
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}
