//! One member of a Kafka consumer group, as Kafka's own consumers are: the classic group protocol
//! (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetFetch, OffsetCommit),
//! protocol type `consumer`, the standard subscription and assignment encoding and the `range`
//! assignor. A librdkafka or Java consumer in the same broker-side group shares partitions with it.
//!
//! The messages are `kafka-protocol`'s (generated from Kafka's schemas), carried by rskafka's
//! `Messenger` (TLS, SASL, version negotiation) over a connection of the member's own to its
//! coordinator: a broker answers one request per connection at a time, and a JoinGroup waits there
//! for the whole rebalance, so group traffic never shares the fetch connections. Records are read
//! as every other subscription reads them (the shared partition readers): membership only decides
//! which partitions and from where.

use super::fetch::{take_answer, Brokers, Connection};
use crate::pubsub::failure::KafkaFailure;
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    consumer_protocol_assignment, find_coordinator_request::FindCoordinatorRequest,
    find_coordinator_response::FindCoordinatorResponse, heartbeat_request::HeartbeatRequest,
    heartbeat_response::HeartbeatResponse, join_group_request, join_group_response,
    leave_group_request, leave_group_response::LeaveGroupResponse, offset_commit_request,
    offset_commit_response::OffsetCommitResponse, offset_fetch_request,
    offset_fetch_response::OffsetFetchResponse, sync_group_request, sync_group_response,
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, GroupId, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rskafka::protocol::api_key::ApiKey;
use rskafka::protocol::api_version::{ApiVersion, ApiVersionRange};
use rskafka::protocol::messages::{
    ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError, WriteVersionedType,
};
use rskafka::protocol::primitives::Int16;
use rskafka::protocol::traits::{ReadError, WriteError};
use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;
use streamgate_protocol::ErrorCode;

/// The only assignor this member offers (and, as leader, runs).
const ASSIGNOR: &str = "range";

/// Kafka's error codes a member acts on.
mod code {
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
}

/// What a member is: its broker-side group, the one topic it reads, its timeouts.
#[derive(Debug, Clone)]
pub(crate) struct GroupSpec {
    pub group_id: String,
    pub topic: String,
    /// The coordinator drops a member it has not heard from for this long.
    pub session_timeout: Duration,
}

/// One generation's assignment for this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub generation: i32,
    pub member_id: String,
    /// This member's partitions of the topic, ascending.
    pub partitions: Vec<i32>,
}

/// What a heartbeat or commit learnt about the group.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GroupError {
    /// The group is rebalancing, or this member's generation ended: join again.
    #[error("the group is rebalancing ({0})")]
    Rebalance(&'static str),
    /// Anything else: the coordinator could not be reached, or refused.
    #[error("{}", .0.reason)]
    Failed(KafkaFailure),
}

/// Beyond the rebalance timeout, how long a join keeps asking.
const JOIN_GRACE: Duration = Duration::from_secs(2);

/// A group member and its coordinator connection.
pub(crate) struct Member {
    brokers: Arc<Brokers>,
    spec: GroupSpec,
    coordinator: Option<Arc<Connection>>,
    member_id: String,
    generation: i32,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("group", &self.spec.group_id)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Member {
    pub(crate) fn new(brokers: Arc<Brokers>, spec: GroupSpec) -> Self {
        Member {
            brokers,
            spec,
            coordinator: None,
            member_id: String::new(),
            generation: -1,
        }
    }

    /// The broker-side group id.
    pub(crate) fn group_id(&self) -> &str {
        &self.spec.group_id
    }

    /// How often to heartbeat: a third of the session timeout at most, as Kafka's consumers do
    /// (their default is 3 s for 45 s; more often costs the coordinator little and notices a
    /// rebalance sooner).
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        (self.spec.session_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(3))
    }

    /// Joins (or re-joins) the group and waits for this generation's assignment. As leader it
    /// assigns every member's partitions with the range assignor.
    ///
    /// A rebalance may take as long as its members need to join again (up to the rebalance
    /// timeout, which is the session timeout here): Kafka holds a JoinGroup that long, other
    /// brokers (tansu) answer "rebalance in progress" at once, so the member asks again with a
    /// growing pause (50 ms to 1 s, as Kafka clients' retry backoff) until then.
    pub(crate) async fn join(&mut self) -> Result<Assignment, KafkaFailure> {
        let deadline = tokio::time::Instant::now() + self.spec.session_timeout + JOIN_GRACE;
        let mut pause = Duration::from_millis(50);
        loop {
            let asked_as = self.member_id.clone();
            match self.try_join().await {
                Ok(assignment) => return Ok(assignment),
                Err(JoinError::Again) if tokio::time::Instant::now() < deadline => {
                    // A member id handed out (or dropped) is used at once; a rebalance waits.
                    if self.member_id == asked_as {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
                Err(JoinError::Again) => {
                    return Err(KafkaFailure::new(
                        ErrorCode::Unavailable,
                        format!("group {:?} kept rebalancing", self.spec.group_id),
                    ))
                }
                Err(JoinError::Failed(f)) => return Err(f),
            }
        }
    }

    async fn try_join(&mut self) -> Result<Assignment, JoinError> {
        let coordinator = self.coordinator().await?;
        let subscription = encode_subscription(&self.spec.topic);
        let session_ms = millis(self.spec.session_timeout);
        let join = join_group_request::JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.spec.group_id.clone())))
            .with_session_timeout_ms(session_ms)
            .with_rebalance_timeout_ms(session_ms)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
            )
            .with_name(StrBytes::from_static_str(ASSIGNOR))
            .with_metadata(subscription)]);
        let joined: join_group_response::JoinGroupResponse = self.call(&coordinator, join).await?;
        match joined.error_code {
            0 => {}
            code::MEMBER_ID_REQUIRED => {
                // Kafka hands out the id first and asks to join again with it.
                self.member_id = joined.member_id.to_string();
                return Err(JoinError::Again);
            }
            code::UNKNOWN_MEMBER_ID | code::ILLEGAL_GENERATION => {
                self.member_id.clear();
                return Err(JoinError::Again);
            }
            code::REBALANCE_IN_PROGRESS => return Err(JoinError::Again),
            other => return Err(self.coordinator_error("JoinGroup", other)),
        }
        self.member_id = joined.member_id.to_string();
        self.generation = joined.generation_id;
        let assignments = if joined.leader == joined.member_id {
            let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for m in &joined.members {
                for topic in decode_subscription(m.metadata.clone()) {
                    wanted
                        .entry(topic)
                        .or_default()
                        .push(m.member_id.to_string());
                }
            }
            let topics: Vec<String> = wanted.keys().cloned().collect();
            let counts = self
                .brokers
                .partition_counts(&topics)
                .await
                .map_err(JoinError::Failed)?;
            range_assign(&wanted, &counts)
                .into_iter()
                .map(|(member, topics)| {
                    sync_group_request::SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(member))
                        .with_assignment(encode_assignment(&topics))
                })
                .collect()
        } else {
            Vec::new()
        };
        let sync = sync_group_request::SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.spec.group_id.clone())))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str(ASSIGNOR)))
            .with_assignments(assignments);
        let synced: sync_group_response::SyncGroupResponse = self.call(&coordinator, sync).await?;
        match synced.error_code {
            0 => {}
            code::UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                return Err(JoinError::Again);
            }
            code::REBALANCE_IN_PROGRESS | code::ILLEGAL_GENERATION => return Err(JoinError::Again),
            other => return Err(self.coordinator_error("SyncGroup", other)),
        }
        let mut partitions = decode_assignment(synced.assignment, &self.spec.topic);
        partitions.sort_unstable();
        partitions.dedup();
        Ok(Assignment {
            generation: self.generation,
            member_id: self.member_id.clone(),
            partitions,
        })
    }

    /// One heartbeat: `Ok` while the generation stands.
    pub(crate) async fn heartbeat(&mut self) -> Result<(), GroupError> {
        let coordinator = self.coordinator().await.map_err(JoinError::into_group)?;
        let beat = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.spec.group_id.clone())))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let answer: HeartbeatResponse = self
            .call(&coordinator, beat)
            .await
            .map_err(JoinError::into_group)?;
        self.generation_error(answer.error_code, "Heartbeat")
    }

    /// The group's committed offsets for `partitions` of the topic; a partition without one is
    /// left out.
    pub(crate) async fn committed(
        &mut self,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, KafkaFailure> {
        let coordinator = self.coordinator().await.map_err(JoinError::into_failure)?;
        let ask = offset_fetch_request::OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.spec.group_id.clone())))
            .with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(self.spec.topic.clone())))
                    .with_partition_indexes(partitions.to_vec()),
            ]));
        let answer: OffsetFetchResponse = self
            .call(&coordinator, ask)
            .await
            .map_err(JoinError::into_failure)?;
        if answer.error_code != 0 {
            return Err(self.failure("OffsetFetch", answer.error_code));
        }
        let mut offsets = HashMap::new();
        for topic in answer
            .topics
            .iter()
            .filter(|t| *t.name.0 == *self.spec.topic)
        {
            for p in &topic.partitions {
                if p.error_code != 0 {
                    return Err(self.failure("OffsetFetch", p.error_code));
                }
                if p.committed_offset >= 0 {
                    offsets.insert(p.partition_index, p.committed_offset);
                }
            }
        }
        Ok(offsets)
    }

    /// Commits `offsets` (partition, next offset to read) in this member's generation.
    pub(crate) async fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let coordinator = self.coordinator().await.map_err(JoinError::into_group)?;
        let commit = offset_commit_request::OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.spec.group_id.clone())))
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_retention_time_ms(-1)
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(self.spec.topic.clone())))
                    .with_partitions(
                        offsets
                            .iter()
                            .map(|&(partition, offset)| {
                                offset_commit_request::OffsetCommitRequestPartition::default()
                                    .with_partition_index(partition)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(-1)
                            })
                            .collect(),
                    ),
            ]);
        let answer: OffsetCommitResponse = self
            .call(&coordinator, commit)
            .await
            .map_err(JoinError::into_group)?;
        for p in answer.topics.iter().flat_map(|t| &t.partitions) {
            self.generation_error(p.error_code, "OffsetCommit")?;
        }
        Ok(())
    }

    /// Leaves the group, so that the others take its partitions at once. Best effort: a member
    /// that cannot say so is dropped by the coordinator after the session timeout.
    pub(crate) async fn leave(&mut self) {
        if self.member_id.is_empty() {
            return;
        }
        let Ok(coordinator) = self.coordinator().await else {
            return;
        };
        let leave = leave_group_request::LeaveGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.spec.group_id.clone())))
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_members(vec![leave_group_request::MemberIdentity::default()
                .with_member_id(StrBytes::from_string(self.member_id.clone()))]);
        let answer: Result<LeaveGroupResponse, _> = self.call(&coordinator, leave).await;
        if let Err(e) = answer {
            tracing::debug!(group = %self.spec.group_id, error = ?e, "LeaveGroup failed");
        }
        self.member_id.clear();
        self.generation = -1;
    }

    /// `Ok` for no error; a rebalance for the codes that end a generation.
    fn generation_error(&mut self, error: i16, what: &str) -> Result<(), GroupError> {
        match error {
            0 => Ok(()),
            code::REBALANCE_IN_PROGRESS => Err(GroupError::Rebalance("REBALANCE_IN_PROGRESS")),
            code::ILLEGAL_GENERATION => Err(GroupError::Rebalance("ILLEGAL_GENERATION")),
            code::UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                Err(GroupError::Rebalance("UNKNOWN_MEMBER_ID"))
            }
            code::NOT_COORDINATOR | code::COORDINATOR_NOT_AVAILABLE => {
                self.coordinator = None;
                Err(GroupError::Rebalance("NOT_COORDINATOR"))
            }
            other => Err(GroupError::Failed(self.failure(what, other))),
        }
    }

    fn coordinator_error(&mut self, what: &str, error: i16) -> JoinError {
        match error {
            code::NOT_COORDINATOR
            | code::COORDINATOR_NOT_AVAILABLE
            | code::COORDINATOR_LOAD_IN_PROGRESS => {
                self.coordinator = None;
                JoinError::Again
            }
            other => JoinError::Failed(self.failure(what, other)),
        }
    }

    fn failure(&self, what: &str, error: i16) -> KafkaFailure {
        let name = kafka_protocol::error::ResponseError::try_from_code(error)
            .map_or_else(|| error.to_string(), |e| format!("{e:?}"));
        KafkaFailure::new(
            ErrorCode::KafkaError,
            format!(
                "group {:?}: {what} failed: {}",
                self.spec.group_id,
                kafka_name(error).map_or(name, str::to_string)
            ),
        )
    }

    /// The coordinator's connection, found and opened when needed.
    async fn coordinator(&mut self) -> Result<Arc<Connection>, JoinError> {
        if let Some(c) = &self.coordinator {
            return Ok(Arc::clone(c));
        }
        let find = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(self.spec.group_id.clone()))
            .with_key_type(0);
        let (_, any) = self.brokers.any_broker().await.map_err(JoinError::Failed)?;
        let found: FindCoordinatorResponse = call(&any, find).await.map_err(JoinError::Failed)?;
        match found.error_code {
            0 => {}
            code::COORDINATOR_NOT_AVAILABLE | code::COORDINATOR_LOAD_IN_PROGRESS => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(JoinError::Again);
            }
            other => return Err(JoinError::Failed(self.failure("FindCoordinator", other))),
        }
        let address = format!("{}:{}", found.host, found.port);
        let connection = self
            .brokers
            .dedicated(&address)
            .await
            .map_err(JoinError::Failed)?;
        self.coordinator = Some(Arc::clone(&connection));
        Ok(connection)
    }

    async fn call<Q: Message>(
        &mut self,
        connection: &Arc<Connection>,
        request: Q,
    ) -> Result<Q::Response, JoinError> {
        call(connection, request).await.map_err(|f| {
            // A broken connection is opened again on the next call.
            self.coordinator = None;
            JoinError::Failed(f)
        })
    }
}

/// Why a join did not give an assignment.
#[derive(Debug)]
enum JoinError {
    /// Join again (a new member id, a rebalance, a moved coordinator).
    Again,
    Failed(KafkaFailure),
}

impl JoinError {
    fn into_group(self) -> GroupError {
        match self {
            JoinError::Again => GroupError::Rebalance("coordinator moving"),
            JoinError::Failed(f) => GroupError::Failed(f),
        }
    }

    fn into_failure(self) -> KafkaFailure {
        match self {
            JoinError::Again => {
                KafkaFailure::new(ErrorCode::Unavailable, "the group's coordinator is moving")
            }
            JoinError::Failed(f) => f,
        }
    }
}

/// Kafka's names for the errors a member may report.
fn kafka_name(error: i16) -> Option<&'static str> {
    Some(match error {
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        22 => "ILLEGAL_GENERATION",
        23 => "INCONSISTENT_GROUP_PROTOCOL",
        24 => "INVALID_GROUP_ID",
        25 => "UNKNOWN_MEMBER_ID",
        26 => "INVALID_SESSION_TIMEOUT",
        27 => "REBALANCE_IN_PROGRESS",
        30 => "GROUP_AUTHORIZATION_FAILED",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        _ => return None,
    })
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// The standard consumer protocol's subscription (version 0): the topics a member reads.
fn encode_subscription(topic: &str) -> Bytes {
    let subscription = ConsumerProtocolSubscription::default()
        .with_topics(vec![StrBytes::from_string(topic.to_string())]);
    versioned(&subscription, 0)
}

/// The standard consumer protocol's assignment (version 0).
fn encode_assignment(topics: &BTreeMap<String, Vec<i32>>) -> Bytes {
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        topics
            .iter()
            .map(|(topic, partitions)| {
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(partitions.clone())
            })
            .collect(),
    );
    versioned(&assignment, 0)
}

/// A consumer-protocol message: its version, then its body in that version.
fn versioned<M: Encodable>(message: &M, version: i16) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(&version.to_be_bytes());
    // Encoding a message built here in a version that has all its fields cannot fail.
    if message.encode(&mut out, version).is_err() {
        out.truncate(2);
    }
    out.freeze()
}

/// A member's subscribed topics; none when its metadata cannot be read. Newer versions only add
/// fields, so a version past the newest known one is read as that one.
fn decode_subscription(mut metadata: Bytes) -> Vec<String> {
    if metadata.len() < 2 {
        return Vec::new();
    }
    let version = metadata.get_i16().clamp(0, 3);
    ConsumerProtocolSubscription::decode(&mut metadata, version)
        .map(|s| s.topics.into_iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// This member's partitions of `topic` in an assignment.
fn decode_assignment(mut assignment: Bytes, topic: &str) -> Vec<i32> {
    if assignment.len() < 2 {
        return Vec::new();
    }
    let version = assignment.get_i16().clamp(0, 3);
    ConsumerProtocolAssignment::decode(&mut assignment, version)
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .filter(|t| *t.topic.0 == *topic)
                .flat_map(|t| t.partitions)
                .collect()
        })
        .unwrap_or_default()
}

/// Kafka's `RangeAssignor`: per topic, its members in member-id order each take a run of
/// consecutive partitions, the first `count % members` one more. Every member is in the result,
/// with nothing assigned if need be.
fn range_assign(
    wanted: &BTreeMap<String, Vec<String>>,
    counts: &HashMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for members in wanted.values() {
        for m in members {
            out.entry(m.clone()).or_default();
        }
    }
    for (topic, members) in wanted {
        let Some(&count) = counts.get(topic) else {
            continue;
        };
        let mut members = members.clone();
        members.sort();
        members.dedup();
        let n = members.len() as i32;
        if n == 0 {
            continue;
        }
        let (each, extra) = (count / n, count % n);
        for (i, member) in members.iter().enumerate() {
            let i = i as i32;
            let start = each * i + i.min(extra);
            let len = each + i32::from(i < extra);
            if len > 0 {
                out.entry(member.clone())
                    .or_default()
                    .insert(topic.clone(), (start..start + len).collect());
            }
        }
    }
    out
}

/// A `kafka-protocol` request, with what rskafka's messenger needs to send it: its API key, the
/// versions the gateway speaks (the highest both sides know is used) and the first version with
/// tagged fields (which decides the header versions).
pub(crate) trait Message: Encodable + Clone + Send {
    type Response: Decodable + Send;
    const KEY: ApiKey;
    const VERSIONS: (i16, i16);
    const FLEXIBLE_FROM: i16;

    /// Leaves out what `version` does not have (`kafka-protocol` refuses to encode a field set
    /// in a version without it).
    fn fit(&mut self, _version: i16) {}
}

macro_rules! message {
    ($request:ty => $response:ty, $key:ident, $min:literal..=$max:literal, flexible $flex:literal $(, fit $fit:expr)?) => {
        impl Message for $request {
            type Response = $response;
            const KEY: ApiKey = ApiKey::$key;
            const VERSIONS: (i16, i16) = ($min, $max);
            const FLEXIBLE_FROM: i16 = $flex;
            $(
                fn fit(&mut self, version: i16) {
                    let fit: fn(&mut Self, i16) = $fit;
                    fit(self, version)
                }
            )?
        }
    };
}

// Versions: from the oldest Kafka 4 still serves to the newest whose fields this file sets;
// FindCoordinator stops before v4 (batched keys), LeaveGroup is read in either form.
message!(FindCoordinatorRequest => FindCoordinatorResponse, FindCoordinator, 1..=3, flexible 3);
message!(join_group_request::JoinGroupRequest => join_group_response::JoinGroupResponse, JoinGroup, 2..=7, flexible 6);
message!(sync_group_request::SyncGroupRequest => sync_group_response::SyncGroupResponse, SyncGroup, 1..=5, flexible 4,
fit |m, v| if v < 5 {
    m.protocol_type = None;
    m.protocol_name = None;
});
message!(HeartbeatRequest => HeartbeatResponse, Heartbeat, 1..=4, flexible 4);
message!(leave_group_request::LeaveGroupRequest => LeaveGroupResponse, LeaveGroup, 1..=4, flexible 4,
fit |m, v| if v < 3 {
    m.members.clear();
} else {
    m.member_id = StrBytes::default();
});
message!(offset_fetch_request::OffsetFetchRequest => OffsetFetchResponse, OffsetFetch, 1..=7, flexible 6);
message!(offset_commit_request::OffsetCommitRequest => OffsetCommitResponse, OffsetCommit, 2..=8, flexible 8);

/// Sends `request` on `connection` and reads its answer.
async fn call<Q: Message>(
    connection: &Connection,
    request: Q,
) -> Result<Q::Response, KafkaFailure> {
    connection
        .request(Wire(request))
        .await
        .map(|answer| answer.0)
        .map_err(|e| {
            KafkaFailure::new(
                ErrorCode::Unavailable,
                format!("the group coordinator's connection failed: {e}"),
            )
        })
}

/// A request on its way through rskafka's messenger.
struct Wire<Q>(Q);

/// Its answer, decoded by `kafka-protocol`.
struct WireAnswer<A>(A);

impl<Q: Message> RequestBody for Wire<Q> {
    type ResponseBody = WireAnswer<Q::Response>;
    const API_KEY: ApiKey = Q::KEY;
    const API_VERSION_RANGE: ApiVersionRange = ApiVersionRange::new(
        ApiVersion(Int16(Q::VERSIONS.0)),
        ApiVersion(Int16(Q::VERSIONS.1)),
    );
    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(Q::FLEXIBLE_FROM));
}

impl<Q: Message> WriteVersionedType<Vec<u8>> for Wire<Q> {
    fn write_versioned(
        &self,
        writer: &mut Vec<u8>,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let mut out = BytesMut::new();
        let mut message = self.0.clone();
        message.fit(version.0 .0);
        message
            .encode(&mut out, version.0 .0)
            .map_err(|e| WriteVersionedError::WriteError(WriteError::Malformed(e.into())))?;
        writer.extend_from_slice(&out);
        Ok(())
    }
}

impl<A: Decodable> ReadVersionedType<Cursor<Vec<u8>>> for WireAnswer<A> {
    fn read_versioned(
        reader: &mut Cursor<Vec<u8>>,
        version: ApiVersion,
    ) -> Result<Self, ReadVersionedError> {
        let mut answer = take_answer(reader);
        A::decode(&mut answer, version.0 .0)
            .map(WireAnswer)
            .map_err(|e| ReadVersionedError::ReadError(ReadError::Malformed(e.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(t, ms)| (t.to_string(), ms.iter().map(|m| m.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_gives_runs_and_the_first_members_one_more() {
        let counts = HashMap::from([("t".to_string(), 7)]);
        let out = range_assign(&wanted(&[("t", &["b", "a", "c"])]), &counts);
        assert_eq!(out["a"]["t"], vec![0, 1, 2]);
        assert_eq!(out["b"]["t"], vec![3, 4]);
        assert_eq!(out["c"]["t"], vec![5, 6]);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_without() {
        let counts = HashMap::from([("t".to_string(), 2)]);
        let out = range_assign(&wanted(&[("t", &["a", "b", "c"])]), &counts);
        assert_eq!(out["a"]["t"], vec![0]);
        assert_eq!(out["b"]["t"], vec![1]);
        assert!(out["c"].is_empty());
    }

    #[test]
    fn the_consumer_protocol_round_trips() {
        let sub = encode_subscription("orders");
        assert_eq!(&sub[..2], &[0, 0]);
        assert_eq!(decode_subscription(sub), vec!["orders".to_string()]);
        let topics = BTreeMap::from([
            ("orders".to_string(), vec![0, 2]),
            ("other".to_string(), vec![1]),
        ]);
        assert_eq!(
            decode_assignment(encode_assignment(&topics), "orders"),
            vec![0, 2]
        );
        assert!(decode_assignment(Bytes::from_static(b"\x00"), "orders").is_empty());
    }
}
