//! A Kafka cluster as real clusters behave, made of one real broker and a proxy in front of it.
//!
//! The test broker is one node that never moves a leader, never aborts a transaction and answers
//! a fetch past its log with nothing. [`FaultyCluster`] listens on several loopback ports and
//! advertises each as a broker of its own in Metadata, all forwarding to the one real broker,
//! and rewrites answers where a real cluster would answer otherwise:
//!
//! - **Leadership.** Each partition has a leader among the advertised brokers; Fetch and
//!   ListOffsets sent to another one are answered NOT_LEADER_OR_FOLLOWER, as Kafka does.
//! - **Faults** (when [`FaultyCluster::arm`]ed, at seeded random points of Fetch answers): the
//!   leader moves ([`Fault::LeaderMove`]), no leader for a while ([`Fault::LeaderUnavailable`]:
//!   Metadata says LEADER_NOT_AVAILABLE), FENCED_LEADER_EPOCH, a high watermark lower than one
//!   answered before (a new leader that lags, [`Fault::LowerHighWatermark`]), a delay, or the
//!   connection reset.
//! - **Transactions** ([`FaultOptions::transactions`]): the broker stores transactional batches
//!   and markers but lists no aborted transactions and reports no last stable offset. The proxy
//!   reads the partition's log itself and answers read-committed Fetch and ListOffsets as Kafka
//!   computes them: the last stable offset (the first offset of the earliest open transaction),
//!   records cut there, and the aborted transactions the fetched range overlaps.
//! - **Offsets past the log** ([`FaultOptions::out_of_range`]): OFFSET_OUT_OF_RANGE, as Kafka
//!   answers, where the test broker answers nothing.
//! - **Topics without partitions** ([`FaultOptions::without_partitions`]), as right after creation.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    fetch_response::AbortedTransaction, ApiKey, BrokerId, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataResponse, ProducerId, RequestHeader,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::tap::read_frame;

/// Kafka's error codes the proxy answers with.
const OFFSET_OUT_OF_RANGE: i16 = 1;
const LEADER_NOT_AVAILABLE: i16 = 5;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const FENCED_LEADER_EPOCH: i16 = 74;

/// At most one fault this often, whatever the fetch rate: readers waiting at the head poll
/// every 20 ms per partition, and a fault per poll would keep a partition without a stable leader
/// for good, which no cluster does.
const FAULT_GAP: Duration = Duration::from_millis(200);

/// What the proxy does besides forwarding.
#[derive(Debug, Clone)]
pub struct FaultOptions {
    /// Brokers advertised (each a port of the proxy).
    pub brokers: usize,
    /// Seed of the fault schedule (printed by soaks so that a failure can be replayed).
    pub seed: u64,
    /// Chance that an armed proxy injects a fault into a Fetch answer, in percent.
    pub fault_percent: u32,
    /// Compute last stable offsets and aborted transactions from the log.
    pub transactions: bool,
    /// Answer a fetch past the log with OFFSET_OUT_OF_RANGE.
    pub out_of_range: bool,
    /// Topics listed in Metadata with no partitions.
    pub without_partitions: Vec<String>,
}

impl Default for FaultOptions {
    fn default() -> Self {
        Self {
            brokers: 3,
            seed: 1,
            fault_percent: 10,
            transactions: false,
            out_of_range: false,
            without_partitions: Vec::new(),
        }
    }
}

/// The faults a proxy injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The partition's leader moves to another broker; the fetch at the old one is answered
    /// NOT_LEADER_OR_FOLLOWER.
    LeaderMove,
    /// The partition has no leader for a moment (Metadata: LEADER_NOT_AVAILABLE), then another.
    LeaderUnavailable,
    /// FENCED_LEADER_EPOCH.
    FencedEpoch,
    /// A high watermark below one answered before, and no records past it.
    LowerHighWatermark,
    /// The answer is held back.
    Delay,
    /// The connection is closed instead of answering.
    Reset,
}

impl Fault {
    /// Every kind, in the order the schedule picks from.
    pub const ALL: [Fault; 6] = [
        Fault::LeaderMove,
        Fault::LeaderUnavailable,
        Fault::FencedEpoch,
        Fault::LowerHighWatermark,
        Fault::Delay,
        Fault::Reset,
    ];
}

type Partition = (String, i32);

struct Shared {
    backend: u16,
    ports: Vec<u16>,
    options: FaultOptions,
    state: Mutex<State>,
    /// One connection of the proxy's own for reading logs (transactions), used one at a time.
    scanner: tokio::sync::Mutex<Option<TcpStream>>,
}

struct State {
    rng: u64,
    armed: bool,
    /// Node id (1-based) leading each partition; 1 when not yet moved.
    leaders: HashMap<Partition, i32>,
    leaderless_until: HashMap<Partition, Instant>,
    highest_watermark: HashMap<Partition, i64>,
    /// Partitions whose answers report this high watermark (and no records past it) until then.
    lagging: HashMap<Partition, (i64, Instant)>,
    injected: HashMap<Fault, u64>,
    last_fault: Option<Instant>,
}

impl State {
    fn next(&mut self, below: u64) -> u64 {
        // xorshift64*: enough for a schedule, and the same for the same seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1)
    }

    fn leader(&self, p: &Partition) -> i32 {
        self.leaders.get(p).copied().unwrap_or(1)
    }

    fn leaderless(&self, p: &Partition) -> bool {
        self.leaderless_until
            .get(p)
            .is_some_and(|until| Instant::now() < *until)
    }

    fn move_leader(&mut self, p: &Partition, brokers: usize) {
        let now = self.leader(p);
        let step = 1 + self.next(brokers.saturating_sub(1) as u64) as i32;
        let new = (now - 1 + step) % brokers as i32 + 1;
        self.leaders.insert(p.clone(), new);
    }
}

/// The proxy; its listeners stop when it is dropped.
pub struct FaultyCluster {
    /// Bootstrap address for clients (the first advertised broker).
    pub bootstrap: String,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultyCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyCluster")
            .field("bootstrap", &self.bootstrap)
            .field("ports", &self.shared.ports)
            .finish()
    }
}

impl Drop for FaultyCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FaultyCluster {
    /// A cluster of `options.brokers` advertised brokers in front of the broker on
    /// `127.0.0.1:backend_port`. Faults wait for [`Self::arm`].
    pub async fn start(backend_port: u16, options: FaultOptions) -> Self {
        let mut listeners = Vec::new();
        for _ in 0..options.brokers.max(1) {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a proxy port");
            listeners.push(listener);
        }
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("proxy address").port())
            .collect();
        let shared = Arc::new(Shared {
            backend: backend_port,
            ports: ports.clone(),
            state: Mutex::new(State {
                rng: options.seed.max(1),
                armed: false,
                leaders: HashMap::new(),
                leaderless_until: HashMap::new(),
                highest_watermark: HashMap::new(),
                lagging: HashMap::new(),
                injected: HashMap::new(),
                last_fault: None,
            }),
            options,
            scanner: tokio::sync::Mutex::new(None),
        });
        let tasks = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                let shared = Arc::clone(&shared);
                let node = i as i32 + 1;
                tokio::spawn(async move {
                    let mut connections = tokio::task::JoinSet::new();
                    while let Ok((client, _)) = listener.accept().await {
                        connections.spawn(serve(Arc::clone(&shared), node, client));
                    }
                })
            })
            .collect();
        Self {
            bootstrap: format!("127.0.0.1:{}", ports[0]),
            shared,
            tasks,
        }
    }

    /// Starts (or stops) injecting faults.
    pub fn arm(&self, on: bool) {
        self.state().armed = on;
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> HashMap<Fault, u64> {
        self.state().injected.clone()
    }

    /// Moves `topic`/`partition`'s leader to another broker now.
    pub fn move_leader(&self, topic: &str, partition: i32) {
        let brokers = self.shared.options.brokers;
        self.state()
            .move_leader(&(topic.to_string(), partition), brokers);
    }

    /// For `within`, Fetch answers for `topic`/`partition` report `high_watermark` and hold no
    /// records at or past it: a new leader that has not caught up yet.
    pub fn lag(&self, topic: &str, partition: i32, high_watermark: i64, within: Duration) {
        self.state().lagging.insert(
            (topic.to_string(), partition),
            (high_watermark, Instant::now() + within),
        );
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("proxy state")
    }
}

/// What the proxy must know of a request to rewrite its answer.
struct Asked {
    key: i16,
    version: i16,
    /// Fetch: read committed; ListOffsets: likewise.
    committed: bool,
    /// Fetch: the offset asked per partition.
    offsets: HashMap<Partition, i64>,
}

async fn serve(shared: Arc<Shared>, node: i32, client: TcpStream) {
    let Ok(backend) = TcpStream::connect(("127.0.0.1", shared.backend)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut backend_read, mut backend_write) = backend.into_split();
    let (asked_tx, mut asked_rx) = mpsc::unbounded_channel::<Asked>();
    let up = async {
        while let Some(frame) = read_frame(&mut client_read).await {
            let Some(asked) = asked_of(&frame[4..]) else {
                break;
            };
            if asked_tx.send(asked).is_err() || backend_write.write_all(&frame).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        while let Some(frame) = read_frame(&mut backend_read).await {
            let Some(asked) = asked_rx.recv().await else {
                break;
            };
            let answer = match rewrite(&shared, node, &asked, Bytes::from(frame)).await {
                Answer::Send(bytes) => bytes,
                Answer::Delay(bytes, by) => {
                    tokio::time::sleep(by).await;
                    bytes
                }
                Answer::Reset => break,
            };
            if client_write.write_all(&answer).await.is_err() {
                break;
            }
        }
    };
    // Either side ending ends both (a reset closes the client's connection).
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// The request's key, version and, for Fetch and ListOffsets, what the rewrite needs.
fn asked_of(request: &[u8]) -> Option<Asked> {
    let mut buf = Bytes::copy_from_slice(request);
    let header = kafka_protocol::protocol::decode_request_header_from_buffer(&mut buf).ok()?;
    let (key, version) = (header.request_api_key, header.request_api_version);
    let mut asked = Asked {
        key,
        version,
        committed: false,
        offsets: HashMap::new(),
    };
    if key == ApiKey::Fetch as i16 {
        let fetch = FetchRequest::decode(&mut buf, version).ok()?;
        asked.committed = fetch.isolation_level == 1;
        for t in fetch.topics {
            for p in t.partitions {
                asked
                    .offsets
                    .insert((t.topic.0.to_string(), p.partition), p.fetch_offset);
            }
        }
    } else if key == ApiKey::ListOffsets as i16 {
        let list = ListOffsetsRequest::decode(&mut buf, version).ok()?;
        asked.committed = list.isolation_level == 1;
    }
    Some(asked)
}

enum Answer {
    Send(Vec<u8>),
    Delay(Vec<u8>, Duration),
    Reset,
}

/// The answer to send the client for the broker's `frame` (size included).
async fn rewrite(shared: &Shared, node: i32, asked: &Asked, frame: Bytes) -> Answer {
    let mut body = frame.slice(4..);
    let Ok(key) = ApiKey::try_from(asked.key) else {
        return Answer::Send(frame.to_vec());
    };
    let header_version = key.response_header_version(asked.version);
    let Ok(header) = ResponseHeader::decode(&mut body, header_version) else {
        return Answer::Send(frame.to_vec());
    };
    let version = asked.version;
    match key {
        ApiKey::Metadata => match MetadataResponse::decode(&mut body, version) {
            Ok(mut answer) => {
                metadata(shared, &mut answer);
                Answer::Send(encode(&header, header_version, &answer, version))
            }
            Err(_) => Answer::Send(frame.to_vec()),
        },
        ApiKey::ListOffsets => match ListOffsetsResponse::decode(&mut body, version) {
            Ok(mut answer) => {
                list_offsets(shared, node, asked, &mut answer).await;
                Answer::Send(encode(&header, header_version, &answer, version))
            }
            Err(_) => Answer::Send(frame.to_vec()),
        },
        ApiKey::Fetch => match FetchResponse::decode(&mut body, version) {
            Ok(mut answer) => {
                let fault = fetch(shared, node, asked, &mut answer).await;
                let bytes = encode(&header, header_version, &answer, version);
                match fault {
                    Some(Fault::Reset) => Answer::Reset,
                    Some(Fault::Delay) => {
                        let by = 50 + shared.state.lock().expect("state").next(450);
                        Answer::Delay(bytes, Duration::from_millis(by))
                    }
                    _ => Answer::Send(bytes),
                }
            }
            Err(_) => Answer::Send(frame.to_vec()),
        },
        _ => Answer::Send(frame.to_vec()),
    }
}

fn encode(
    header: &ResponseHeader,
    header_version: i16,
    body: &impl Encodable,
    version: i16,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i32(0);
    header
        .encode(&mut out, header_version)
        .expect("encode a response header");
    body.encode(&mut out, version).expect("encode a response");
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.to_vec()
}

fn metadata(shared: &Shared, answer: &mut MetadataResponse) {
    let nodes: Vec<BrokerId> = (1..=shared.ports.len() as i32).map(BrokerId).collect();
    answer.brokers = shared
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            kafka_protocol::messages::metadata_response::MetadataResponseBroker::default()
                .with_node_id(BrokerId(i as i32 + 1))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(i32::from(*port))
        })
        .collect();
    answer.controller_id = BrokerId(1);
    let state = shared.state.lock().expect("state");
    for topic in &mut answer.topics {
        let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        if shared.options.without_partitions.contains(&name) {
            topic.partitions.clear();
            continue;
        }
        for p in &mut topic.partitions {
            let key = (name.clone(), p.partition_index);
            p.replica_nodes = nodes.clone();
            p.isr_nodes = nodes.clone();
            if state.leaderless(&key) {
                p.error_code = LEADER_NOT_AVAILABLE;
                p.leader_id = BrokerId(-1);
            } else if p.error_code == 0 {
                p.leader_id = BrokerId(state.leader(&key));
            }
        }
    }
}

async fn list_offsets(shared: &Shared, node: i32, asked: &Asked, answer: &mut ListOffsetsResponse) {
    for topic in &mut answer.topics {
        let name = topic.name.0.to_string();
        for p in &mut topic.partitions {
            let key = (name.clone(), p.partition_index);
            let leads = {
                let state = shared.state.lock().expect("state");
                state.leader(&key) == node && !state.leaderless(&key)
            };
            if !leads {
                p.error_code = NOT_LEADER_OR_FOLLOWER;
                p.offset = -1;
                continue;
            }
            // Latest under read_committed is the last stable offset.
            if shared.options.transactions && asked.committed && p.error_code == 0 && p.offset >= 0
            {
                if let Some(log) = scan(shared, &key).await {
                    if p.offset >= log.high_watermark {
                        p.offset = log.last_stable;
                    }
                }
            }
        }
    }
}

/// Rewrites a Fetch answer; returns the fault injected into it, if any.
async fn fetch(
    shared: &Shared,
    node: i32,
    asked: &Asked,
    answer: &mut FetchResponse,
) -> Option<Fault> {
    let mut injected = None;
    for topic in &mut answer.responses {
        let name = topic.topic.0.to_string();
        for p in &mut topic.partitions {
            let key = (name.clone(), p.partition_index);
            let offset = asked.offsets.get(&key).copied().unwrap_or(0);
            let (leads, fault) = {
                let mut state = shared.state.lock().expect("state");
                let leads = state.leader(&key) == node && !state.leaderless(&key);
                let quiet = state.last_fault.is_none_or(|at| at.elapsed() >= FAULT_GAP);
                let fault = (leads
                    && injected.is_none()
                    && p.error_code == 0
                    && state.armed
                    && quiet
                    && state.next(100) < u64::from(shared.options.fault_percent))
                .then(|| Fault::ALL[state.next(Fault::ALL.len() as u64) as usize]);
                (leads, fault)
            };
            if !leads {
                refuse(p, NOT_LEADER_OR_FOLLOWER);
                continue;
            }
            if p.error_code != 0 {
                continue;
            }
            if shared.options.transactions && asked.committed {
                if let Some(log) = scan(shared, &key).await {
                    p.last_stable_offset = log.last_stable;
                    let records = p.records.take().unwrap_or_default();
                    let records = cut(records, log.last_stable);
                    let upper = end_of(&records).unwrap_or(offset);
                    let aborted: Vec<AbortedTransaction> = log
                        .aborted
                        .iter()
                        .filter(|t| t.last >= offset && t.first < upper)
                        .map(|t| {
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(t.producer))
                                .with_first_offset(t.first)
                        })
                        .collect();
                    p.aborted_transactions = Some(aborted);
                    p.records = (!records.is_empty()).then_some(records);
                }
            }
            let lagging = shared
                .state
                .lock()
                .expect("state")
                .lagging
                .get(&key)
                .filter(|(_, until)| Instant::now() < *until)
                .map(|(hw, _)| *hw);
            if let Some(lower) = lagging {
                lower_to(p, lower);
            }
            if shared.options.out_of_range && offset > p.high_watermark {
                refuse(p, OFFSET_OUT_OF_RANGE);
                continue;
            }
            let Some(fault) = fault else {
                let mut state = shared.state.lock().expect("state");
                let highest = state.highest_watermark.entry(key).or_insert(-1);
                *highest = (*highest).max(p.high_watermark);
                continue;
            };
            let mut state = shared.state.lock().expect("state");
            match fault {
                Fault::LeaderMove => {
                    state.move_leader(&key, shared.options.brokers);
                    refuse(p, NOT_LEADER_OR_FOLLOWER);
                }
                Fault::LeaderUnavailable => {
                    let pause = Duration::from_millis(50 + state.next(250));
                    state
                        .leaderless_until
                        .insert(key.clone(), Instant::now() + pause);
                    state.move_leader(&key, shared.options.brokers);
                    refuse(p, NOT_LEADER_OR_FOLLOWER);
                }
                Fault::FencedEpoch => refuse(p, FENCED_LEADER_EPOCH),
                Fault::LowerHighWatermark => {
                    let highest = state.highest_watermark.get(&key).copied().unwrap_or(-1);
                    if highest <= 0 {
                        continue;
                    }
                    let lower = (highest - 1 - state.next(3) as i64).max(0);
                    lower_to(p, lower);
                }
                Fault::Delay | Fault::Reset => {}
            }
            *state.injected.entry(fault).or_default() += 1;
            state.last_fault = Some(Instant::now());
            injected = Some(fault);
        }
    }
    injected
}

/// Reports `lower` as the high watermark, with no records at or past it.
fn lower_to(p: &mut kafka_protocol::messages::fetch_response::PartitionData, lower: i64) {
    p.high_watermark = p.high_watermark.min(lower);
    p.last_stable_offset = p.last_stable_offset.min(lower);
    let records = p.records.take().unwrap_or_default();
    let records = cut(records, lower);
    p.records = (!records.is_empty()).then_some(records);
}

fn refuse(p: &mut kafka_protocol::messages::fetch_response::PartitionData, code: i16) {
    p.error_code = code;
    p.high_watermark = -1;
    p.last_stable_offset = -1;
    p.aborted_transactions = None;
    p.records = None;
}

/// `records` (whole v2 batches) without the batches that start at or after `offset`.
fn cut(records: Bytes, offset: i64) -> Bytes {
    let mut at = 0usize;
    while records.len() >= at + 12 {
        let base = i64::from_be_bytes(records[at..at + 8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(records[at + 8..at + 12].try_into().expect("4 bytes"));
        let whole = 12 + usize::try_from(len).unwrap_or(0);
        if base >= offset || records.len() < at + whole {
            break;
        }
        at += whole;
    }
    records.slice(..at)
}

/// The offset after the last whole batch of `records`.
fn end_of(records: &Bytes) -> Option<i64> {
    let mut at = 0usize;
    let mut end = None;
    while records.len() >= at + 27 {
        let base = i64::from_be_bytes(records[at..at + 8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(records[at + 8..at + 12].try_into().expect("4 bytes"));
        let delta = i32::from_be_bytes(records[at + 23..at + 27].try_into().expect("4 bytes"));
        let whole = 12 + usize::try_from(len).unwrap_or(0);
        if records.len() < at + whole {
            break;
        }
        end = Some(base + i64::from(delta) + 1);
        at += whole;
    }
    end
}

/// A partition's transactions, as read from its log.
struct Log {
    high_watermark: i64,
    last_stable: i64,
    aborted: Vec<Aborted>,
}

struct Aborted {
    producer: i64,
    first: i64,
    /// The abort marker's offset.
    last: i64,
}

/// Reads the whole of `partition`'s log (read uncommitted) and works out its transactions.
async fn scan(shared: &Shared, partition: &Partition) -> Option<Log> {
    let mut connection = shared.scanner.lock().await;
    if connection.is_none() {
        *connection = Some(
            TcpStream::connect(("127.0.0.1", shared.backend))
                .await
                .ok()?,
        );
    }
    let stream = connection.as_mut()?;
    let result = scan_on(stream, partition).await;
    if result.is_none() {
        *connection = None;
    }
    result
}

async fn scan_on(stream: &mut TcpStream, (topic, partition): &Partition) -> Option<Log> {
    let mut open: HashMap<i64, i64> = HashMap::new();
    let mut aborted = Vec::new();
    let mut offset = 0i64;
    loop {
        let request = kafka_protocol::messages::FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(16 << 20)
            .with_isolation_level(0)
            .with_topics(vec![
                kafka_protocol::messages::fetch_request::FetchTopic::default()
                    .with_topic(kafka_protocol::messages::TopicName(StrBytes::from_string(
                        topic.clone(),
                    )))
                    .with_partitions(vec![
                        kafka_protocol::messages::fetch_request::FetchPartition::default()
                            .with_partition(*partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(16 << 20),
                    ]),
            ]);
        let answer: FetchResponse = call(stream, ApiKey::Fetch, 4, &request).await?;
        let part = answer.responses.first()?.partitions.first()?;
        if part.error_code != 0 {
            return None;
        }
        let high_watermark = part.high_watermark;
        let mut records = part.records.clone().unwrap_or_default();
        let mut moved = false;
        if !records.is_empty() {
            let sets = RecordBatchDecoder::decode_all(&mut records).ok()?;
            for set in sets {
                for r in set.records {
                    offset = offset.max(r.offset + 1);
                    moved = true;
                    if r.control {
                        let kind = r.key.as_ref().filter(|k| k.len() >= 4).map(|k| k[3]);
                        if let Some(first) = open.remove(&r.producer_id) {
                            if kind == Some(0) {
                                aborted.push(Aborted {
                                    producer: r.producer_id,
                                    first,
                                    last: r.offset,
                                });
                            }
                        }
                    } else if r.transactional {
                        open.entry(r.producer_id).or_insert(r.offset);
                    }
                }
            }
        }
        if !moved || offset >= high_watermark {
            let last_stable = open.values().copied().min().unwrap_or(high_watermark);
            return Some(Log {
                high_watermark,
                last_stable,
                aborted,
            });
        }
    }
}

/// Sends one request on `stream` and reads its answer.
pub(crate) async fn call<R: Encodable, A: Decodable>(
    stream: &mut TcpStream,
    key: ApiKey,
    version: i16,
    request: &R,
) -> Option<A> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("streamgate-testkit")));
    let mut out = BytesMut::new();
    out.put_i32(0);
    header
        .encode(&mut out, key.request_header_version(version))
        .ok()?;
    request.encode(&mut out, version).ok()?;
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&out).await.ok()?;
    let frame = read_frame(stream).await?;
    let mut body = Bytes::from(frame).slice(4..);
    ResponseHeader::decode(&mut body, key.response_header_version(version)).ok()?;
    let answer = A::decode(&mut body, version).ok()?;
    (!body.has_remaining()).then_some(answer)
}

/// A producer that writes transactions with raw Produce requests: transactional batches and
/// their commit or abort markers, as a transaction coordinator would have the leader write them.
/// The test broker hands out producer ids (InitProducerId) but has no EndTxn.
pub struct TxnWriter {
    stream: TcpStream,
    producer_id: i64,
    epoch: i16,
    sequences: HashMap<Partition, i32>,
}

impl std::fmt::Debug for TxnWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnWriter")
            .field("producer_id", &self.producer_id)
            .finish()
    }
}

impl TxnWriter {
    /// A producer with a fresh id from the broker on `127.0.0.1:port`.
    pub async fn new(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the broker");
        let request = kafka_protocol::messages::InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let answer: kafka_protocol::messages::InitProducerIdResponse =
            call(&mut stream, ApiKey::InitProducerId, 4, &request)
                .await
                .expect("InitProducerId answered");
        assert_eq!(answer.error_code, 0, "InitProducerId: {answer:?}");
        Self {
            stream,
            producer_id: answer.producer_id.0,
            epoch: answer.producer_epoch,
            sequences: HashMap::new(),
        }
    }

    /// The producer id the broker handed out.
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// Writes `values` as one transactional batch; returns the offset of the first.
    pub async fn write(&mut self, topic: &str, partition: i32, values: &[&str]) -> i64 {
        let records: Vec<(Option<Bytes>, Option<Bytes>)> = values
            .iter()
            .map(|v| (None, Some(Bytes::copy_from_slice(v.as_bytes()))))
            .collect();
        self.produce(topic, partition, records, false).await
    }

    /// Writes the transaction's commit (or abort) marker; returns its offset.
    pub async fn end(&mut self, topic: &str, partition: i32, commit: bool) -> i64 {
        // A control record: key = version 0, type (0 abort, 1 commit); value = version 0,
        // coordinator epoch 0.
        let key = Bytes::from(vec![0, 0, 0, u8::from(commit)]);
        let value = Bytes::from(vec![0, 0, 0, 0, 0, 0]);
        self.produce(topic, partition, vec![(Some(key), Some(value))], true)
            .await
    }

    async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: Vec<(Option<Bytes>, Option<Bytes>)>,
        control: bool,
    ) -> i64 {
        let key = (topic.to_string(), partition);
        let sequence = self.sequences.get(&key).copied().unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let batch: Vec<kafka_protocol::records::Record> = records
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| kafka_protocol::records::Record {
                transactional: true,
                control,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: self.producer_id,
                producer_epoch: self.epoch,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: i as i64,
                sequence: sequence + i as i32,
                timestamp: now,
                key,
                value,
                headers: Default::default(),
            })
            .collect();
        let count = batch.len() as i32;
        let mut encoded = BytesMut::new();
        kafka_protocol::records::RecordBatchEncoder::encode(
            &mut encoded,
            &batch,
            &kafka_protocol::records::RecordEncodeOptions {
                version: 2,
                compression: kafka_protocol::records::Compression::None,
            },
        )
        .expect("encode a batch");
        let request = kafka_protocol::messages::ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5_000)
            .with_topic_data(vec![
                kafka_protocol::messages::produce_request::TopicProduceData::default()
                    .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(
                        topic.to_string(),
                    )))
                    .with_partition_data(vec![
                        kafka_protocol::messages::produce_request::PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(encoded.freeze())),
                    ]),
            ]);
        let answer: kafka_protocol::messages::ProduceResponse =
            call(&mut self.stream, ApiKey::Produce, 3, &request)
                .await
                .expect("Produce answered");
        let part = &answer.responses[0].partition_responses[0];
        assert_eq!(part.error_code, 0, "Produce: {answer:?}");
        self.sequences.insert(key, sequence + count);
        part.base_offset
    }
}
