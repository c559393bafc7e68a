//! Push subscriptions: where they start and how they resume. Every partition, then live records,
//! then an exact resume from any cursor; starts from a time and from the latest offset; a
//! randomized run of credit, unsubscribes and resumes across two gateways.

mod common;

use bytes::Bytes;
use common::push::*;
use common::*;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_resp::Resp, CmdKafkaSubscribe, KafkaHeader,
    PubSubClient, PubSubResp, RecordFilter,
};
use streamgate_testkit::fixtures;
use streamgate_testkit::unique_topic;

#[tokio::test]
async fn every_partition_then_live_records_then_an_exact_resume() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-all");
    fixtures::create_topic(&kafka, &topic, 3).await;
    for p in 0..3 {
        produce(&broker, &topic, p, "old", 5).await;
    }
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, started) = c
        .subscribe(subscribe(&topic, StartFrom::Earliest, 1_000))
        .await
        .unwrap();
    let mut starts: Vec<(i32, i64, i64)> = started
        .partitions
        .iter()
        .map(|p| (p.partition, p.offset, p.high_watermark))
        .collect();
    starts.sort_unstable();
    assert_eq!(starts, vec![(0, 0, 5), (1, 0, 5), (2, 0, 5)]);
    assert!(!started.cursor.is_empty());

    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(10), |s| {
        s.count() == 15 && s.caught_up.len() == 3
    })
    .await;
    let mut caught: Vec<i32> = seen.caught_up.clone();
    caught.sort_unstable();
    assert_eq!(caught, vec![0, 1, 2], "one caught-up batch per partition");
    for p in 0..3 {
        let values: Vec<&[u8]> = seen.records[&p].iter().map(|r| &r.2[..]).collect();
        assert_eq!(
            values,
            vec![&b"old0"[..], b"old1", b"old2", b"old3", b"old4"]
        );
    }

    // Live: produced after the subscription caught up, pushed without a request.
    for p in 0..3 {
        produce(&broker, &topic, p, "live", 2).await;
    }
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(10), |s| {
        s.count() == 21
    })
    .await;
    assert_eq!(
        seen.caught_up.len(),
        3,
        "caught up is said once per partition"
    );

    let cursor = c.unsubscribe(sub).await.unwrap();
    // Whatever was pushed before the answer was delivered and is in the cursor.
    while let Ok(Ok(frame)) = tokio::time::timeout(Duration::from_millis(100), c.recv()).await {
        seen.take(sub, frame);
    }
    assert_eq!(seen.count(), 21);
    for p in 0..3 {
        produce(&broker, &topic, p, "after", 3).await;
    }
    // Resume on a new connection (any gateway would do: the cursor holds the positions).
    let gw2 = gateway_for(&broker, "", "").await;
    let mut c2 = PubSubClient::connect(&gw2.ws_url("/kafka")).await.unwrap();
    let (sub2, resumed) = c2
        .subscribe(CmdKafkaSubscribe {
            cursor,
            ..subscribe(&topic, StartFrom::Earliest, 1_000)
        })
        .await
        .unwrap();
    assert!(resumed.partitions.iter().all(|p| p.offset == 7));
    let mut after = Seen::default();
    receive_until(&mut c2, sub2, &mut after, Duration::from_secs(10), |s| {
        s.count() == 9
    })
    .await;
    for p in 0..3 {
        let values: Vec<&[u8]> = after.records[&p].iter().map(|r| &r.2[..]).collect();
        assert_eq!(
            values,
            vec![&b"after0"[..], b"after1", b"after2"],
            "exactly what came after"
        );
    }
    nothing_for(&mut c2, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn from_a_time_and_from_latest() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-time");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let records = fixtures::records_at(&[1_000_000, 2_000_000, 3_000_000]);
    fixtures::produce_each(&kafka, &topic, 0, records).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (_, started) = c
        .subscribe(CmdKafkaSubscribe {
            timestamp_ms: 1_500_000,
            ..subscribe(&topic, StartFrom::Timestamp, 0)
        })
        .await
        .unwrap();
    assert_eq!(started.partitions[0].offset, 1);
    let (sub, started) = c
        .subscribe(subscribe(&topic, StartFrom::Latest, 10))
        .await
        .unwrap();
    assert_eq!(started.partitions[0].offset, 3);
    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.caught_up == [0]
    })
    .await;
    assert_eq!(seen.count(), 0, "latest: nothing old");
}

/// A small deterministic generator: the seed is printed, so a failure can be replayed with
/// `PUSH_SEED=<seed>`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// How a segment of the randomized test hands its position to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ResumeFrom {
    /// The unsubscribe answer's cursor.
    Unsubscribe,
    /// The last push's cursor, the connection dropped without a word.
    Push,
    /// The subscribe answer's cursor (nothing was pushed before the connection dropped).
    Answer,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_credit_unsubscribe_and_resume_deliver_the_filtered_log_exactly() {
    let seed = std::env::var("PUSH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fixtures::now_ms() as u64 | 1);
    println!("PUSH_SEED={seed}");
    let mut rng = Rng(seed);
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-exact");
    const PARTITIONS: i32 = 3;
    const PER_PARTITION: usize = 120;
    fixtures::create_topic(&kafka, &topic, PARTITIONS).await;
    // Two gateways: a cursor from one is resumed on the other.
    let gateways = [
        gateway_for(&broker, "", "").await,
        gateway_for(&broker, "", "").await,
    ];

    // The producer writes while the client subscribes, pauses and resumes.
    let producer = {
        let kafka = broker.client().await;
        let topic = topic.clone();
        let mut rng = Rng(seed.rotate_left(17) | 1);
        tokio::spawn(async move {
            let mut clients = Vec::new();
            for p in 0..PARTITIONS {
                clients.push(
                    kafka
                        .partition_client(
                            &topic,
                            p,
                            rskafka::client::partition::UnknownTopicHandling::Error,
                        )
                        .await
                        .unwrap(),
                );
            }
            for i in 0..PER_PARTITION * PARTITIONS as usize {
                let p = i % PARTITIONS as usize;
                let key = format!("k{}", rng.below(10));
                let header: &[u8] = if rng.below(3) == 0 { b"0" } else { b"1" };
                let record = fixtures::record(
                    Some(key.as_bytes()),
                    Some(format!("v{i}").as_bytes()),
                    &[("h", header)],
                    None,
                );
                clients[p]
                    .produce(
                        vec![record],
                        rskafka::client::partition::Compression::NoCompression,
                    )
                    .await
                    .unwrap();
                if rng.below(2) == 0 {
                    tokio::time::sleep(Duration::from_millis(rng.below(25))).await;
                }
            }
        })
    };
    let filter = RecordFilter {
        keys: (1..=6)
            .map(|k| Bytes::from(format!("k{k}").into_bytes()))
            .collect(),
        headers: vec![KafkaHeader {
            key: "h".into(),
            value: Bytes::from_static(b"1"),
        }],
        ..Default::default()
    };
    let passes = |key: &[u8], headers: &[(String, Vec<u8>)]| {
        filter.keys.iter().any(|k| &k[..] == key)
            && headers.iter().any(|(k, v)| k == "h" && v == b"1")
    };

    let mut got: BTreeMap<i32, Vec<(i64, Bytes)>> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    let mut used = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut expected: Option<BTreeMap<i32, Vec<(i64, Bytes)>>> = None;
    let mut segment = 0u64;
    loop {
        segment += 1;
        if expected.is_none() && producer.is_finished() {
            // The whole log, read directly, filtered as asked.
            let mut all = BTreeMap::new();
            for p in 0..PARTITIONS {
                let pc = kafka
                    .partition_client(
                        &topic,
                        p,
                        rskafka::client::partition::UnknownTopicHandling::Error,
                    )
                    .await
                    .unwrap();
                let mut list = Vec::new();
                let mut offset = 0;
                while list.len() < PER_PARTITION {
                    let (records, _) = pc.fetch_records(offset, 1..1_000_000, 100).await.unwrap();
                    for r in records {
                        if r.offset < offset {
                            continue;
                        }
                        offset = r.offset + 1;
                        let headers: Vec<(String, Vec<u8>)> =
                            r.record.headers.into_iter().collect();
                        let key = r.record.key.unwrap_or_default();
                        if passes(&key, &headers) {
                            list.push((r.offset, Bytes::from(r.record.value.unwrap_or_default())));
                        } else {
                            list.push((-1, Bytes::new()));
                        }
                    }
                }
                list.retain(|(o, _)| *o >= 0);
                all.insert(p, list);
            }
            expected = Some(all);
        }
        if let Some(want) = &expected {
            if &got == want {
                break;
            }
            for (p, list) in &got {
                let want = &want[p];
                assert!(
                    list.len() <= want.len() && list[..] == want[..list.len()],
                    "PUSH_SEED={seed}: partition {p} is not the log so far (a gap or a record the filter should have left out)"
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "PUSH_SEED={seed}: not done after 90 s; got {} records",
            got.values().map(Vec::len).sum::<usize>()
        );
        // Forced first segments use each way of resuming at least once; then at random.
        let ending = match segment {
            1 => ResumeFrom::Unsubscribe,
            2 => ResumeFrom::Push,
            3 => ResumeFrom::Answer,
            _ => match rng.below(3) {
                0 => ResumeFrom::Unsubscribe,
                1 => ResumeFrom::Push,
                _ => ResumeFrom::Answer,
            },
        };
        let gw = &gateways[(segment % 2) as usize];
        let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
        let credit = if ending == ResumeFrom::Answer {
            0
        } else {
            rng.below(20) as u32
        };
        let credit_bytes = if rng.below(2) == 0 {
            0
        } else {
            40 + rng.below(400)
        };
        let (sub, started) = c
            .subscribe(CmdKafkaSubscribe {
                cursor: cursor.clone().unwrap_or_default(),
                credit_bytes,
                filter: Some(filter.clone()),
                ..subscribe(&topic, StartFrom::Earliest, credit)
            })
            .await
            .unwrap_or_else(|e| panic!("PUSH_SEED={seed}: subscribe: {e}"));
        let mut last = started.cursor;
        let mut pushed_records = 0;
        let take = |frame: PubSubResp,
                    got: &mut BTreeMap<i32, Vec<(i64, Bytes)>>,
                    last: &mut String|
         -> usize {
            assert_eq!(frame.sequence, sub, "PUSH_SEED={seed}");
            let Some(Resp::KafkaRecordsPush(push)) = frame.resp else {
                panic!("PUSH_SEED={seed}: expected a push, got {frame:?}");
            };
            let mut n = 0;
            for batch in push.batches {
                let list = got.entry(batch.partition).or_default();
                for m in batch.messages {
                    if let Some((before, _)) = list.last() {
                        assert!(
                            m.offset > *before,
                            "PUSH_SEED={seed}: partition {} offset {} delivered after {before} (a duplicate)",
                            batch.partition,
                            m.offset
                        );
                    }
                    list.push((m.offset, m.value));
                    n += 1;
                }
            }
            *last = push.cursor;
            n
        };
        if ending != ResumeFrom::Answer {
            for _ in 0..1 + rng.below(6) {
                if rng.below(2) == 0 {
                    c.credit(sub, rng.below(15) as u32, rng.below(300))
                        .await
                        .unwrap();
                }
                let window = Duration::from_millis(5 + rng.below(60));
                while let Ok(frame) = tokio::time::timeout(window, c.recv()).await {
                    pushed_records += take(frame.unwrap(), &mut got, &mut last);
                }
            }
            // A push must have come (a drop "after a push" needs one): grant until it does.
            if ending == ResumeFrom::Push && pushed_records == 0 {
                c.credit(sub, 50, 5_000).await.unwrap();
                if let Ok(frame) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await
                {
                    take(frame.unwrap(), &mut got, &mut last);
                }
            }
        }
        match ending {
            ResumeFrom::Unsubscribe => {
                let answer = c.unsubscribe(sub).await.unwrap();
                // Pushes that arrived before the answer were delivered: the cursor counts them.
                while let Some(frame) = next_kept(&mut c).await {
                    take(frame, &mut got, &mut last);
                }
                last = answer;
            }
            ResumeFrom::Push | ResumeFrom::Answer => drop(c),
        }
        used.insert(ending);
        cursor = Some(last);
    }
    producer.await.unwrap();
    let total: usize = got.values().map(Vec::len).sum();
    println!("PUSH_SEED={seed}: {segment} segments, {total} records delivered exactly, resumed from {used:?}");
    assert_eq!(used.len(), 3, "every kind of cursor was resumed from");
    assert!(
        total > 50,
        "the filter leaves enough records to mean something: {total}"
    );
}
