//! Topics and records as the tests need them.

use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::Record;
use std::collections::BTreeMap;

pub use rskafka::client::partition::Compression as Codec;

/// Creates `name` with `partitions` partitions.
pub async fn create_topic(client: &Client, name: &str, partitions: i32) {
    client
        .controller_client()
        .expect("controller client")
        .create_topic(name, partitions, 1, 5_000)
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
}

/// A record with a value, an optional key and headers, stamped `timestamp_ms`
/// (or now when `None`).
pub fn record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    timestamp_ms: Option<i64>,
) -> Record {
    Record {
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect::<BTreeMap<_, _>>(),
        timestamp: Utc
            .timestamp_millis_opt(timestamp_ms.unwrap_or_else(now_ms))
            .single()
            .expect("valid timestamp"),
    }
}

/// A record holding just `value`.
pub fn value(value: &str) -> Record {
    record(None, Some(value.as_bytes()), &[], None)
}

/// Records with the value `x` and these timestamps (ms since the epoch), for look-ups by time.
pub fn records_at(timestamps: &[i64]) -> Vec<Record> {
    timestamps
        .iter()
        .map(|ts| record(None, Some(b"x"), &[], Some(*ts)))
        .collect()
}

/// Produces every record in a batch of its own; returns their offsets.
pub async fn produce_each(
    client: &Client,
    topic: &str,
    partition: i32,
    records: Vec<Record>,
) -> Vec<i64> {
    let pc = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    let mut offsets = Vec::new();
    for r in records {
        offsets.extend(
            pc.produce(vec![r], Compression::NoCompression)
                .await
                .expect("produce"),
        );
    }
    offsets
}

/// Produces all records in one batch with `codec`; returns their offsets.
pub async fn produce_batch(
    client: &Client,
    topic: &str,
    partition: i32,
    records: Vec<Record>,
    codec: Compression,
) -> Vec<i64> {
    let pc = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    pc.produce(records, codec).await.expect("produce batch")
}

/// The contract's acceptance fixture: topic `test-consumer`, one partition, `testmsg1` ..
/// `testmsg30` each in a batch of its own (offsets 0..29).
pub async fn apisix_fixture(client: &Client) {
    create_topic(client, "test-consumer", 1).await;
    let records = (1..=30).map(|i| value(&format!("testmsg{i}"))).collect();
    let offsets = produce_each(client, "test-consumer", 0, records).await;
    assert_eq!(offsets, (0..30).collect::<Vec<i64>>(), "fixture offsets");
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
