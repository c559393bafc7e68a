//! Records written byte for byte, for what Kafka's record format allows and client libraries
//! smooth over: a header name repeated in one record (rskafka and kafka-protocol keep headers in
//! maps), null keys, values and header values.

use crate::kafka_faults::call;
use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

/// One record as its bytes will say it.
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// In this order, repeats kept.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Writes `records` as one uncompressed v2 batch to `topic`/`partition` of the broker on
/// `127.0.0.1:port`; returns the offset of the first.
pub async fn produce_raw(port: u16, topic: &str, partition: i32, records: &[RawRecord]) -> i64 {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the broker");
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![
            kafka_protocol::messages::produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    kafka_protocol::messages::produce_request::PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(batch(records))),
                ]),
        ]);
    let answer: ProduceResponse = call(&mut stream, ApiKey::Produce, 3, &request)
        .await
        .expect("Produce answered");
    let part = &answer.responses[0].partition_responses[0];
    assert_eq!(part.error_code, 0, "Produce: {answer:?}");
    part.base_offset
}

/// `records` as a v2 record batch (no producer id, no compression).
pub fn batch(records: &[RawRecord]) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut record = vec![0u8]; // attributes
        varint(&mut record, 0); // timestamp delta
        varint(&mut record, i as i64); // offset delta
        field(&mut record, r.key.as_deref());
        field(&mut record, r.value.as_deref());
        varint(&mut record, r.headers.len() as i64);
        for (name, value) in &r.headers {
            field(&mut record, Some(name.as_bytes()));
            field(&mut record, value.as_deref());
        }
        varint(&mut body, record.len() as i64);
        body.extend_from_slice(&record);
    }
    // From the attributes on: what the CRC covers.
    let mut tail = Vec::new();
    tail.extend_from_slice(&0i16.to_be_bytes()); // attributes
    tail.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes()); // last offset delta
    tail.extend_from_slice(&now.to_be_bytes()); // first timestamp
    tail.extend_from_slice(&now.to_be_bytes()); // max timestamp
    tail.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    tail.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    tail.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    tail.extend_from_slice(&(records.len() as i32).to_be_bytes());
    tail.extend_from_slice(&body);
    let mut out = Vec::new();
    out.extend_from_slice(&0i64.to_be_bytes()); // base offset
    out.extend_from_slice(&((4 + 1 + 4 + tail.len()) as i32).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out.push(2); // magic
    out.extend_from_slice(&crc32c::crc32c(&tail).to_be_bytes());
    out.extend_from_slice(&tail);
    Bytes::from(out)
}

fn varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A length-prefixed field; -1 for null.
fn field(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => varint(out, -1),
        Some(b) => {
            varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}
