//! Fetching a partition's records from its leader over the gateway's own broker connections.
//!
//! rskafka's `fetch_records` decodes every batch of an answer in full, however far it expands,
//! before anything can look at the size. So fetches take another road: one connection per
//! (identity, broker) built on rskafka's own `Messenger` (TLS, version negotiation, SASL and
//! pipelining as rskafka does them), a Fetch request whose answer keeps each partition's record
//! bytes undecoded, and [`batch::decode`](super::batch::decode) within the upstream's
//! `max_decompressed_bytes`. Leaders come from a Metadata request that never asks the broker to
//! create the topic. Listings and offset look-ups stay on rskafka's client.
//!
//! Read-committed as Kafka defines it: the answer's aborted transactions are applied while
//! decoding, and the last stable offset, not the high watermark, is where such a reader's log
//! ends for now. A cluster that is moving (leader elections, rolling restarts, dropped
//! connections) is waited out: retriable errors are retried with backoff until the caller's
//! deadline, looking the leader up again where it may have moved.

use super::batch::{self, AbortedTxn, BatchError, Budget};
use super::cluster::{sasl_config, KafkaCluster};
use crate::pubsub::failure::{bounded, is_retriable, Backoff, KafkaFailure};
use crate::sync::lock;
use bytes::{Buf, Bytes};
use rskafka::messenger::{Messenger, RequestError};
use rskafka::protocol::api_key::ApiKey;
use rskafka::protocol::api_version::{ApiVersion, ApiVersionRange};
use rskafka::protocol::error::Error as ProtocolError;
use rskafka::protocol::messages::{
    FetchRequest, FetchRequestPartition, FetchRequestTopic, IsolationLevel, MetadataRequest,
    MetadataRequestTopic, ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError,
    WriteVersionedType,
};
use rskafka::protocol::primitives::{Boolean, Int16, Int32, Int64, String_};
use rskafka::protocol::traits::ReadError;
use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamgate_config::model::{Isolation, Sasl};
use streamgate_protocol::ErrorCode;
use streamgate_protocol::KafkaMessage;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// The largest broker answer read off a fetch connection: fetches ask for at most the route's
/// `fetch_max_bytes` (a broker may exceed it by one batch), metadata answers are small.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A consumer's replica id in a Fetch request.
const CONSUMER: i32 = -1;

/// First and longest pause between attempts while the cluster is moving.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(25), Duration::from_secs(1));

/// A broker connection's byte stream, plain or TLS.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One broker connection (rskafka's messenger: TLS, versions, SASL, pipelining).
pub(crate) type Connection = Messenger<Box<dyn Stream>>;

/// The fetch connections of one Kafka identity (cluster, TLS, SASL, isolation), by broker
/// address.
pub(crate) struct Brokers {
    cluster: Arc<KafkaCluster>,
    sasl: Option<Sasl>,
    isolation: Isolation,
    connections: Mutex<HashMap<String, Arc<OnceCell<Arc<Connection>>>>>,
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Brokers")
            .field("upstream", &self.cluster.upstream_id)
            .field("connections", &lock(&self.connections).len())
            .finish()
    }
}

impl Brokers {
    pub(crate) fn new(
        cluster: Arc<KafkaCluster>,
        sasl: Option<Sasl>,
        isolation: Isolation,
    ) -> Self {
        Self {
            cluster,
            sasl,
            isolation,
            connections: Mutex::default(),
        }
    }

    /// The connection to `address`, connecting (TLS, versions, SASL) first if needed.
    async fn connection(&self, address: &str) -> Result<Arc<Connection>, KafkaFailure> {
        let cell = Arc::clone(
            lock(&self.connections)
                .entry(address.to_string())
                .or_default(),
        );
        let result = cell
            .get_or_try_init(|| self.connect(address))
            .await
            .cloned();
        if result.is_err() {
            self.forget(address, None);
        }
        result
    }

    /// Drops the connection to `address` (only `dead` when given: another caller may have
    /// replaced it already), so the next request connects again.
    fn forget(&self, address: &str, dead: Option<&Arc<Connection>>) {
        let mut connections = lock(&self.connections);
        let stale = connections.get(address).is_some_and(|cell| match dead {
            None => cell.get().is_none(),
            Some(dead) => cell.get().is_some_and(|c| Arc::ptr_eq(c, dead)),
        });
        if stale {
            connections.remove(address);
        }
    }

    async fn connect(&self, address: &str) -> Result<Arc<Connection>, KafkaFailure> {
        let cluster = &*self.cluster;
        let started = std::time::Instant::now();
        let work = async {
            let unreachable = |e: std::io::Error| {
                KafkaFailure::new(
                    ErrorCode::Unavailable,
                    format!("error connecting to broker {address:?}: {e}"),
                )
            };
            let tcp = TcpStream::connect(address).await.map_err(unreachable)?;
            // Latency matters more than packet count for small fetches.
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Stream> = match &cluster.tls {
                None => Box::new(tcp),
                Some((_, config)) => {
                    let host = address
                        .rsplit_once(':')
                        .map_or(address, |(host, _)| host)
                        .trim_start_matches('[')
                        .trim_end_matches(']');
                    let name =
                        rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                            KafkaFailure::new(
                                ErrorCode::TlsError,
                                format!("broker {address:?}: not a TLS server name: {e}"),
                            )
                        })?;
                    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                        .connect(name, tcp)
                        .await
                        .map_err(|e| {
                            KafkaFailure::new(
                                ErrorCode::TlsError,
                                format!("TLS handshake with broker {address:?} failed: {e}"),
                            )
                        })?;
                    Box::new(tls)
                }
            };
            let mut messenger = Messenger::new(stream, MAX_ANSWER_BYTES, Arc::from("streamgate"));
            messenger.sync_versions().await.map_err(|e| {
                KafkaFailure::new(
                    ErrorCode::Unavailable,
                    format!("broker {address:?}: API versions: {e}"),
                )
            })?;
            if let Some(sasl) = &self.sasl {
                messenger.do_sasl(sasl_config(sasl)).await.map_err(|e| {
                    KafkaFailure::new(
                        ErrorCode::AuthFailed,
                        format!("broker {address:?}: SASL authentication failed: {e}"),
                    )
                })?;
            }
            Ok(Arc::new(messenger))
        };
        let result = bounded(cluster.connect_timeout, work).await;
        crate::metrics::metrics()
            .kafka_connect_duration
            .observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            tracing::debug!(upstream = %cluster.upstream_id, broker = %address, "connected for fetches");
        }
        result
    }

    /// A connection of the caller's own to `address`, shared with nobody: a consumer group's
    /// coordinator connection, where a JoinGroup may wait for a whole rebalance.
    pub(crate) async fn dedicated(&self, address: &str) -> Result<Arc<Connection>, KafkaFailure> {
        self.connect(address).await
    }

    /// The first bootstrap broker that answers, and its (shared) connection.
    pub(crate) async fn any_broker(&self) -> Result<(String, Arc<Connection>), KafkaFailure> {
        let mut last = None;
        for address in &self.cluster.brokers {
            match self.connection(address).await {
                Ok(c) => return Ok((address.clone(), c)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            KafkaFailure::new(ErrorCode::Unavailable, "the upstream has no brokers")
        }))
    }

    /// How many partitions each of `topics` has (a topic the cluster does not know is left out).
    pub(crate) async fn partition_counts(
        &self,
        topics: &[String],
    ) -> Result<HashMap<String, i32>, KafkaFailure> {
        let (address, connection) = self.any_broker().await?;
        let request = MetadataRequest {
            topics: Some(
                topics
                    .iter()
                    .map(|t| MetadataRequestTopic {
                        name: String_(t.clone()),
                    })
                    .collect(),
            ),
            allow_auto_topic_creation: Some(Boolean(false)),
        };
        let answer = connection.request(request).await.map_err(|e| {
            self.forget(&address, Some(&connection));
            request_failure(&e)
        })?;
        Ok(answer
            .topics
            .into_iter()
            .filter(|t| t.error.is_none())
            .map(|t| (t.name.0, t.partitions.len() as i32))
            .collect())
    }

    /// The address of `topic`/`partition`'s leader, from the first bootstrap broker that answers
    /// a Metadata request for that one topic (sent with `allow_auto_topic_creation = false`).
    /// A leader being elected, or none listed, is [`Attempt::Retry`].
    async fn leader(&self, topic: &str, partition: i32) -> Result<String, Attempt> {
        let mut last = None;
        for address in &self.cluster.brokers {
            let connection = match self.connection(address).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let request = MetadataRequest {
                topics: Some(vec![MetadataRequestTopic {
                    name: String_(topic.to_string()),
                }]),
                allow_auto_topic_creation: Some(Boolean(false)),
            };
            let answer = match connection.request(request).await {
                Ok(a) => a,
                Err(e) => {
                    self.forget(address, Some(&connection));
                    last = Some(request_failure(&e));
                    continue;
                }
            };
            let found = answer.topics.iter().find(|t| t.name.0 == topic);
            let Some(found) = found else {
                return Err(Attempt::Final(KafkaFailure::new(
                    ErrorCode::NotFound,
                    "not found topic",
                )));
            };
            if let Some(e) = &found.error {
                return Err(Attempt::of(e));
            }
            let Some(p) = found
                .partitions
                .iter()
                .find(|p| p.partition_index.0 == partition)
            else {
                return Err(Attempt::Final(KafkaFailure::new(
                    ErrorCode::NotFound,
                    "not found partition",
                )));
            };
            // A partition between leaders answers LEADER_NOT_AVAILABLE with an error, or only
            // a leader id of -1 (or of a broker the answer does not list).
            if let Some(e) = &p.error {
                return Err(Attempt::of(e));
            }
            return answer
                .brokers
                .iter()
                .find(|b| b.node_id.0 == p.leader_id.0)
                .map(|b| format!("{}:{}", b.host.0, b.port.0))
                .ok_or_else(|| {
                    Attempt::Retry(KafkaFailure::new(
                        ErrorCode::Unavailable,
                        format!("partition {partition} of {topic} has no leader now"),
                    ))
                });
        }
        let last = last.unwrap_or_else(|| {
            KafkaFailure::new(ErrorCode::Unavailable, "the upstream has no brokers")
        });
        // Refused TLS or credentials do not get better by retrying.
        Err(match last.code {
            ErrorCode::TlsError | ErrorCode::AuthFailed => Attempt::Final(last),
            _ => Attempt::Retry(last),
        })
    }
}

/// Records decoded once, shared by every session that asked for them.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The offset asked for: records before it (the rest of their batch) are not for the asker.
    pub from: i64,
    /// Records in log order (keys and values are shared buffers, never copied per session).
    pub messages: Vec<KafkaMessage>,
    /// Where the next read starts: past every batch this answer settled, records or not
    /// (transaction markers, aborted transactions, batches emptied by compaction).
    pub next: i64,
    /// The partition's high watermark when the broker answered.
    pub high_watermark: i64,
    /// Where reading ends for now under the identity's isolation (the last stable offset when
    /// reading committed records): what readiness, "at the end", caught-up and the high
    /// watermark told to clients go by.
    pub end: i64,
    /// Key, value and header bytes of `messages`.
    pub record_bytes: usize,
    /// The fetch's byte budget. Batches are kept whole, so `record_bytes` may pass it; the result
    /// is still what any asker with this budget would get.
    pub max_bytes: i32,
}

impl Fetched {
    /// Whether the read reached the end of what is readable now.
    pub(crate) fn at_end(&self) -> bool {
        self.next >= self.end
    }
}

/// Fetches of one partition, sent to its leader (looked up once, and again when it moves).
pub(crate) struct PartitionFetcher {
    brokers: Arc<Brokers>,
    topic: String,
    partition: i32,
    leader: Mutex<Option<String>>,
}

impl std::fmt::Debug for PartitionFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionFetcher")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("leader", &*lock(&self.leader))
            .finish()
    }
}

impl PartitionFetcher {
    pub(crate) fn new(brokers: Arc<Brokers>, topic: &str, partition: i32) -> Self {
        Self {
            brokers,
            topic: topic.to_string(),
            partition,
            leader: Mutex::new(None),
        }
    }

    /// Records from `offset` on: the broker answers up to `max_bytes` after waiting up to
    /// `wait_ms` for some; decoding keeps at most `max_bytes` of records and expands at most the
    /// upstream's `max_decompressed_bytes`. Retriable failures (a moved or missing leader, a
    /// dropped connection, a broker restarting) are retried with backoff, the leader looked up
    /// again, until `deadline`; then the last one is answered as UNAVAILABLE.
    pub(crate) async fn fetch(
        &self,
        offset: i64,
        max_bytes: i32,
        wait_ms: i32,
        deadline: Instant,
    ) -> Result<Fetched, KafkaFailure> {
        let mut backoff = Backoff::new(RETRY_BACKOFF.0, RETRY_BACKOFF.1);
        loop {
            match self.fetch_once(offset, max_bytes, wait_ms).await {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Retry(e)) => {
                    *lock(&self.leader) = None;
                    if Instant::now() + backoff.pause() >= deadline {
                        return Err(KafkaFailure::new(ErrorCode::Unavailable, e.reason));
                    }
                    tracing::debug!(topic = %self.topic, partition = self.partition, reason = %e.reason, "fetch retried");
                    crate::metrics::metrics().kafka_fetch_retries.inc();
                    backoff.wait().await;
                }
            }
        }
    }

    async fn fetch_once(
        &self,
        offset: i64,
        max_bytes: i32,
        wait_ms: i32,
    ) -> Result<Fetched, Attempt> {
        let known = lock(&self.leader).clone();
        let address = match known {
            Some(a) => a,
            None => {
                let a = self.brokers.leader(&self.topic, self.partition).await?;
                *lock(&self.leader) = Some(a.clone());
                a
            }
        };
        let connection = self
            .brokers
            .connection(&address)
            .await
            .map_err(|e| match e.code {
                // Refused TLS or credentials do not get better by retrying.
                ErrorCode::TlsError | ErrorCode::AuthFailed => Attempt::Final(e),
                _ => Attempt::Retry(e),
            })?;
        let max_bytes = max_bytes.max(1);
        let request = RawFetch(FetchRequest {
            replica_id: Int32(CONSUMER),
            max_wait_ms: Int32(wait_ms),
            min_bytes: Int32(1),
            max_bytes: Some(Int32(max_bytes)),
            isolation_level: Some(match self.brokers.isolation {
                Isolation::ReadCommitted => IsolationLevel::ReadCommitted,
                Isolation::ReadUncommitted => IsolationLevel::ReadUncommitted,
            }),
            topics: vec![FetchRequestTopic {
                topic: String_(self.topic.clone()),
                partitions: vec![FetchRequestPartition {
                    partition: Int32(self.partition),
                    fetch_offset: Int64(offset),
                    partition_max_bytes: Int32(max_bytes),
                }],
            }],
        });
        let answer = match connection.request(request).await {
            Ok(a) => a,
            Err(e) => {
                self.brokers.forget(&address, Some(&connection));
                return Err(Attempt::Retry(request_failure(&e)));
            }
        };
        let part = answer
            .partitions
            .into_iter()
            .find(|p| p.topic == self.topic && p.partition == self.partition)
            .ok_or_else(|| {
                Attempt::Final(KafkaFailure::new(
                    ErrorCode::KafkaError,
                    "the broker's fetch answer does not name the partition asked for",
                ))
            })?;
        if let Some(e) = ProtocolError::new(part.error_code) {
            return Err(Attempt::of(&e));
        }
        let budget = Budget {
            from: offset,
            max_record_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_decompressed: self.brokers.cluster.max_decompressed_bytes,
        };
        let end = match self.brokers.isolation {
            // A broker that does not know transactions answers -1 (or nothing sensible).
            Isolation::ReadCommitted
                if (0..=part.high_watermark).contains(&part.last_stable_offset) =>
            {
                part.last_stable_offset
            }
            _ => part.high_watermark,
        };
        let decoded = batch::decode(part.records, budget, &part.aborted).map_err(|e| {
            Attempt::Final(match e {
                BatchError::TooLarge { .. } => {
                    crate::metrics::metrics().kafka_batches_refused.inc();
                    KafkaFailure::new(ErrorCode::TooLarge, e.to_string())
                }
                BatchError::Malformed { .. } => {
                    KafkaFailure::new(ErrorCode::KafkaError, e.to_string())
                }
            })
        })?;
        Ok(Fetched {
            from: offset,
            messages: decoded.messages,
            next: decoded.next,
            high_watermark: part.high_watermark,
            end,
            record_bytes: decoded.record_bytes,
            max_bytes,
        })
    }
}

/// How an attempt failed: `Retry` when the cluster may serve it once it has settled (a leader
/// elected, a broker back, a connection made again).
enum Attempt {
    Retry(KafkaFailure),
    Final(KafkaFailure),
}

impl Attempt {
    /// A broker's error code, retriable as Kafka's clients take it or not.
    fn of(e: &ProtocolError) -> Self {
        let failure = KafkaFailure::from_protocol(e);
        if is_retriable(e) {
            Self::Retry(failure)
        } else {
            Self::Final(failure)
        }
    }
}

fn request_failure(e: &RequestError) -> KafkaFailure {
    KafkaFailure::new(
        ErrorCode::Unavailable,
        format!("the broker connection failed: {e}"),
    )
}

/// rskafka's Fetch request (v4), answered as [`FetchResponse`]: record bytes left undecoded.
struct RawFetch(FetchRequest);

impl RequestBody for RawFetch {
    type ResponseBody = FetchResponse;
    const API_KEY: ApiKey = ApiKey::Fetch;
    const API_VERSION_RANGE: ApiVersionRange =
        ApiVersionRange::new(ApiVersion(Int16(4)), ApiVersion(Int16(4)));
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        <FetchRequest as RequestBody>::FIRST_TAGGED_FIELD_IN_REQUEST_VERSION;
}

impl<W: std::io::Write> WriteVersionedType<W> for RawFetch {
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        self.0.write_versioned(writer, version)
    }
}

/// A Fetch v4 answer with each partition's records as the bytes the broker sent.
struct FetchResponse {
    partitions: Vec<PartitionResponse>,
}

struct PartitionResponse {
    topic: String,
    partition: i32,
    error_code: i16,
    high_watermark: i64,
    last_stable_offset: i64,
    aborted: Vec<AbortedTxn>,
    records: Bytes,
}

impl ReadVersionedType<Cursor<Vec<u8>>> for FetchResponse {
    fn read_versioned(
        reader: &mut Cursor<Vec<u8>>,
        _version: ApiVersion,
    ) -> Result<Self, ReadVersionedError> {
        let mut answer = take_answer(reader);
        read_fetch_answer(&mut answer).map_err(|what| {
            ReadVersionedError::ReadError(ReadError::Malformed(
                format!("fetch answer: {what}").into(),
            ))
        })
    }
}

/// The rest of an answer rskafka's messenger read, taken rather than copied (a fetch answer's
/// records stay slices of it). The messenger checks that the whole answer was read by comparing
/// the cursor's position with the buffer's length, both zero once it is taken.
pub(crate) fn take_answer(reader: &mut Cursor<Vec<u8>>) -> Bytes {
    let mut answer = Bytes::from(std::mem::take(reader.get_mut()));
    answer.advance(
        usize::try_from(reader.position())
            .unwrap_or(usize::MAX)
            .min(answer.len()),
    );
    reader.set_position(0);
    answer
}

fn read_fetch_answer(buf: &mut Bytes) -> Result<FetchResponse, &'static str> {
    let _throttle_ms = get_i32(buf)?;
    let mut partitions = Vec::new();
    for _ in 0..count(buf)? {
        let topic = get_string(buf)?;
        for _ in 0..count(buf)? {
            let partition = get_i32(buf)?;
            let error_code = get_i16(buf)?;
            let high_watermark = get_i64(buf)?;
            let last_stable_offset = get_i64(buf)?;
            // Each entry is read before it is kept: a claimed count costs nothing.
            let mut aborted = Vec::new();
            for _ in 0..count(buf)? {
                aborted.push(AbortedTxn {
                    producer_id: get_i64(buf)?,
                    first_offset: get_i64(buf)?,
                });
            }
            let records = match get_i32(buf)? {
                -1 => Bytes::new(),
                n => take(
                    buf,
                    usize::try_from(n).map_err(|_| "negative records length")?,
                )?,
            };
            partitions.push(PartitionResponse {
                topic: topic.clone(),
                partition,
                error_code,
                high_watermark,
                last_stable_offset,
                aborted,
                records,
            });
        }
    }
    if !buf.is_empty() {
        return Err("bytes left after the answer");
    }
    Ok(FetchResponse { partitions })
}

fn take(buf: &mut Bytes, n: usize) -> Result<Bytes, &'static str> {
    if buf.len() < n {
        return Err("cut short");
    }
    Ok(buf.split_to(n))
}

fn get_i16(buf: &mut Bytes) -> Result<i16, &'static str> {
    Ok(take(buf, 2)?.get_i16())
}

fn get_i32(buf: &mut Bytes) -> Result<i32, &'static str> {
    Ok(take(buf, 4)?.get_i32())
}

fn get_i64(buf: &mut Bytes) -> Result<i64, &'static str> {
    Ok(take(buf, 8)?.get_i64())
}

/// An array's length (-1, null, as none).
fn count(buf: &mut Bytes) -> Result<usize, &'static str> {
    Ok(usize::try_from(get_i32(buf)?).unwrap_or(0))
}

fn get_string(buf: &mut Bytes) -> Result<String, &'static str> {
    let n = usize::try_from(get_i16(buf)?).map_err(|_| "null topic name")?;
    String::from_utf8(take(buf, n)?.to_vec()).map_err(|_| "topic name is not UTF-8")
}
