//! Group subscriptions: a push subscription whose partitions and positions a Kafka consumer
//! group holds (docs/subscriptions.md, "Group subscriptions").
//!
//! The subscription's task is one group member (`kafka::group::Member`). Each generation it
//! joins, starts the assigned partitions at the group's committed offsets (or the subscribe's
//! `from` where there are none), tells the client (the subscribe answer, later a
//! `KafkaAssignment`), and pushes as a plain subscription does while it heartbeats. When the
//! coordinator starts a rebalance it stops pushing, waits until its session has written every
//! frame it handed over, commits what was written (AUTO), and joins again. When the task ends
//! for any reason (unsubscribe, close, revocation) it commits (AUTO) and leaves the group, so the
//! other members take its partitions at once.

use super::cursor;
use super::push::{self, GaugeGuard, Granted, Outgoing, Pushing, Written};
use crate::pubsub::failure::KafkaFailure;
use crate::pubsub::kafka::group::{GroupError, GroupSpec, Member};
use crate::pubsub::kafka::reader::PartitionReader;
use crate::pubsub::target::KafkaAccess;
use rskafka::client::partition::OffsetAt;
use std::collections::HashMap;
use std::sync::Arc;
use streamgate_protocol::{
    cmd_kafka_subscribe::CommitMode, pub_sub_resp::Resp, CmdKafkaSubscribe, ErrorCode,
    KafkaAssignment, KafkaCommitResp, KafkaSubscribeResp, PartitionOffset, PubSubResp,
};
use tokio::sync::{mpsc, watch};

/// Commits a client may have waiting for one subscription.
pub(crate) const COMMIT_QUEUE: usize = 16;

/// A client's commit, on its way to the subscription's task.
#[derive(Debug)]
pub(crate) struct CommitAsk {
    /// The commit's own sequence, which its answer carries.
    pub sequence: i64,
    pub cursor: String,
}

/// The broker-side group id for a subscribe that names a group, or why it may not: BAD_REQUEST
/// beside partitions or a cursor or for a malformed name, FORBIDDEN when the route has no groups,
/// the name is outside `allowed_groups`, or the caller has no claim for its namespace.
pub(crate) fn group_id(
    access: &KafkaAccess,
    cmd: &CmdKafkaSubscribe,
) -> Result<String, KafkaFailure> {
    let bad = |why: &str| Err(KafkaFailure::new(ErrorCode::BadRequest, why));
    let name = &cmd.group;
    if !cmd.partitions.is_empty() {
        return bad(
            "a group subscription takes the partitions the group assigns: leave `partitions` empty",
        );
    }
    if !cmd.cursor.is_empty() {
        return bad("a group subscription resumes where the group committed: leave `cursor` empty");
    }
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad("a group name is 1 to 100 characters of A-Za-z0-9._-");
    }
    let forbidden = |why: String| Err(KafkaFailure::new(ErrorCode::Forbidden, why));
    let Some(groups) = &access.target.settings.groups else {
        return forbidden(
            "forbidden: this route has no group subscriptions (no group_prefix)".into(),
        );
    };
    if !groups.allows(name) {
        return forbidden(format!(
            "forbidden: group {name:?} is not in this route's allowed_groups"
        ));
    }
    let mut id = groups.prefix.clone();
    if let Some(claim) = &groups.from_claim {
        let value = access
            .claims
            .as_deref()
            .and_then(|claims| claims.get(claim))
            .and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return forbidden(format!(
                "forbidden: the token has no {claim:?} claim to name this caller's groups"
            ));
        };
        id.push_str(&escape_claim(&value));
        id.push('.');
    }
    id.push_str(name);
    Ok(id)
}

/// A claim's value as a group-id part: every byte outside `A-Za-z0-9_-` as `%XX`, so the part
/// holds no `.` and no two values give the same part.
fn escape_claim(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the task keeps of its membership, for the end: whatever stops the task (an unsubscribe
/// aborts it) drops this, which commits what was written (AUTO) and leaves the group from a task
/// of its own.
struct Membership {
    member: Option<Member>,
    written: Arc<Written>,
    auto: bool,
    assigned: Vec<i32>,
    topic: String,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let Some(mut member) = self.member.take() else {
            return;
        };
        let offsets = if self.auto {
            written_offsets(&self.written, &self.topic, &self.assigned)
        } else {
            Vec::new()
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = member.commit(&offsets).await {
                    tracing::debug!(group = member.group_id(), error = %e, "the last commit failed");
                }
                member.leave().await;
            });
        }
    }
}

/// The positions after what was written, for the assigned partitions.
fn written_offsets(written: &Written, topic: &str, assigned: &[i32]) -> Vec<(i32, i64)> {
    match cursor::decode(&written.cursor()) {
        Ok(c) if c.topic == topic => c
            .positions
            .into_iter()
            .filter(|(p, _)| assigned.contains(p))
            .collect(),
        _ => Vec::new(),
    }
}

/// Why a generation ended.
enum Next {
    /// Join again.
    Rejoin,
    /// The subscription is over (its error, if any, already sent).
    Over,
}

/// Runs a group subscription until it ends with an error or its task is aborted.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    access: KafkaAccess,
    key: u64,
    sequence: i64,
    mut cmd: CmdKafkaSubscribe,
    group_id: String,
    mut grants: watch::Receiver<Granted>,
    out: mpsc::Sender<Box<Outgoing>>,
    mut commits: mpsc::Receiver<CommitAsk>,
    written: Arc<Written>,
) {
    let topic = cmd.topic.clone();
    let route = Arc::clone(&access.target.route_id);
    let metrics = crate::metrics::metrics();
    let fail = |f: KafkaFailure| {
        let frame = access.failed(sequence, "subscribe", &topic, None, f);
        push::ending(key, sequence, frame)
    };
    if let Err(f) = access.check_topic(&topic) {
        let _ = out.send(Box::new(fail(f))).await;
        return;
    }
    let Some(groups) = access.target.settings.groups.clone() else {
        return;
    };
    let spec = GroupSpec {
        group_id,
        topic: topic.clone(),
        session_timeout: groups.session_timeout,
    };
    let mut membership = Membership {
        member: Some(Member::new(
            access.pool.brokers(&access.target.identity),
            spec,
        )),
        written: Arc::clone(&written),
        auto: cmd.commit == CommitMode::Auto as i32,
        assigned: Vec::new(),
        topic: topic.clone(),
    };
    let _member = GaugeGuard::new(metrics.group_members.with_label_values(&[&*route]));
    let mut lag = CommittedLag {
        route: Arc::clone(&route),
        name: cmd.group.clone(),
        reported: HashMap::new(),
    };
    let pushing = Pushing::new(
        &access,
        key,
        sequence,
        &topic,
        &mut cmd,
        Some(Arc::clone(&written)),
    );
    let mut used = Granted::default();
    let mut first = true;
    let send_limit = access.target.settings.send_timeout;
    loop {
        let Some(member) = membership.member.as_mut() else {
            return;
        };
        // Joining may wait for the whole rebalance; commits asked meanwhile are for a
        // generation that has ended.
        let joined = {
            let join = member.join();
            tokio::pin!(join);
            loop {
                tokio::select! {
                    biased;
                    joined = &mut join => break joined,
                    Some(ask) = commits.recv() => {
                        let _ = out.send(Box::new(commit_answer(key, sequence, ask.sequence, Err(rebalancing())))).await;
                    }
                }
            }
        };
        let assignment = match joined {
            Ok(a) => a,
            Err(f) => {
                let _ = out.send(Box::new(fail(f))).await;
                return;
            }
        };
        if !first {
            metrics.group_rebalances.with_label_values(&[&*route]).inc();
        }
        let mut committed = if assignment.partitions.is_empty() {
            HashMap::new()
        } else {
            match member.committed(&assignment.partitions).await {
                Ok(c) => c,
                Err(f) => {
                    let _ = out.send(Box::new(fail(f))).await;
                    return;
                }
            }
        };
        let parts = if assignment.partitions.is_empty() {
            Vec::new()
        } else {
            let resumable = match in_log(&access, &topic, &committed).await {
                Ok(r) => r,
                Err((partition, f)) => {
                    let frame = access.failed(sequence, "subscribe", &topic, Some(partition), f);
                    let _ = out.send(Box::new(push::ending(key, sequence, frame))).await;
                    return;
                }
            };
            for (partition, offset) in &committed {
                if !resumable.contains_key(partition) {
                    tracing::info!(route = %route, group = member.group_id(), partition, offset, "the group's commit lies outside the partition's log; starting it by the subscribe's `from`, as Kafka consumers reset");
                }
            }
            let mut offsets: Vec<PartitionOffset> = resumable
                .iter()
                .map(|(&partition, &offset)| PartitionOffset { partition, offset })
                .collect();
            offsets.extend(
                cmd.offsets
                    .iter()
                    .filter(|o| {
                        assignment.partitions.contains(&o.partition)
                            && !resumable.contains_key(&o.partition)
                    })
                    .cloned(),
            );
            let start = CmdKafkaSubscribe {
                topic: topic.clone(),
                partitions: assignment.partitions.clone(),
                from: cmd.from,
                timestamp_ms: cmd.timestamp_ms,
                offsets,
                ..Default::default()
            };
            match Box::pin(push::start(&access, &start)).await {
                Ok(parts) => parts,
                Err((partition, f)) => {
                    let frame = access.failed(sequence, "subscribe", &topic, partition, f);
                    let _ = out.send(Box::new(push::ending(key, sequence, frame))).await;
                    return;
                }
            }
        };
        let readers: Vec<(i32, Arc<PartitionReader>)> = parts
            .iter()
            .map(|p| {
                let (partition, reader) = p.reader();
                (partition, Arc::clone(reader))
            })
            .collect();
        lag.report(&readers, &committed);
        let starts = push::starts_of(&parts);
        let start_cursor = push::cursor_of(&topic, &parts);
        written.restart(start_cursor.clone());
        let revoked: Vec<i32> = membership
            .assigned
            .iter()
            .copied()
            .filter(|p| !assignment.partitions.contains(p))
            .collect();
        membership.assigned = assignment.partitions.clone();
        // Commits asked before this frame are for the generation that ended.
        while let Ok(ask) = commits.try_recv() {
            let _ = out
                .send(Box::new(commit_answer(
                    key,
                    sequence,
                    ask.sequence,
                    Err(rebalancing()),
                )))
                .await;
        }
        let resp = if first {
            Resp::KafkaSubscribeResp(KafkaSubscribeResp {
                partitions: starts,
                cursor: start_cursor,
                generation: assignment.generation,
                member_id: assignment.member_id.clone(),
            })
        } else {
            Resp::KafkaAssignment(KafkaAssignment {
                generation: assignment.generation,
                assigned: starts,
                revoked,
            })
        };
        first = false;
        let frame = push::frame(
            key,
            sequence,
            PubSubResp {
                sequence,
                resp: Some(resp),
            },
        );
        if out.send(Box::new(frame)).await.is_err() {
            return;
        }
        tracing::debug!(route = %route, group = member.group_id(), generation = assignment.generation, partitions = ?assignment.partitions, "group subscription assigned");
        let next = {
            let delivery = pushing.deliver(parts, &mut grants, &mut used, &out);
            tokio::pin!(delivery);
            let mut beat = tokio::time::interval(member.heartbeat_interval());
            beat.reset();
            let mut auto = tokio::time::interval(groups.auto_commit_interval);
            auto.reset();
            loop {
                // The member's own events wait behind a gate: the select is polled on every
                // push, and re-polling two timers and a channel each time cost group
                // subscriptions a tenth of their throughput (BENCHMARKS.md).
                let event = Gated::new(async {
                    tokio::select! {
                        _ = beat.tick() => Event::Beat,
                        _ = auto.tick(), if membership.auto => Event::AutoCommit,
                        Some(ask) = commits.recv() => Event::Ask(ask),
                    }
                });
                let event = tokio::select! {
                    () = &mut delivery => break Next::Over,
                    event = event => event,
                };
                match event {
                    Event::Beat => match member.heartbeat().await {
                        Ok(()) => lag.report(&readers, &committed),
                        Err(GroupError::Rebalance(why)) => {
                            tracing::debug!(route = %route, group = member.group_id(), why, "group rebalancing");
                            break Next::Rejoin;
                        }
                        Err(GroupError::Failed(f)) => {
                            tracing::info!(route = %route, group = member.group_id(), reason = %f.reason, "heartbeat failed; joining again");
                            break Next::Rejoin;
                        }
                    },
                    Event::AutoCommit => {
                        let offsets = written_offsets(&written, &topic, &membership.assigned);
                        match member.commit(&offsets).await {
                            Ok(()) => {
                                metrics
                                    .group_commits
                                    .with_label_values(&[&*route, "ok"])
                                    .inc();
                                committed.extend(offsets.iter().copied());
                            }
                            Err(GroupError::Rebalance(_)) => break Next::Rejoin,
                            Err(GroupError::Failed(f)) => {
                                metrics
                                    .group_commits
                                    .with_label_values(&[&*route, "refused"])
                                    .inc();
                                tracing::info!(route = %route, group = member.group_id(), reason = %f.reason, "auto commit failed");
                            }
                        }
                    }
                    Event::Ask(ask) => {
                        let answer =
                            asked(member, &ask, &topic, &membership.assigned, &written).await;
                        if let Ok(offsets) = &answer {
                            committed.extend(offsets.iter().copied());
                        }
                        let answer = answer.map(|_| ());
                        let outcome = if answer.is_ok() { "ok" } else { "refused" };
                        metrics
                            .group_commits
                            .with_label_values(&[&*route, outcome])
                            .inc();
                        let rejoin = matches!(&answer, Err(f) if f.code == ErrorCode::Rebalancing);
                        let _ = out
                            .send(Box::new(commit_answer(key, sequence, ask.sequence, answer)))
                            .await;
                        if rejoin {
                            break Next::Rejoin;
                        }
                    }
                }
            }
        };
        match next {
            Next::Over => return,
            Next::Rejoin => {
                // Nothing more is pushed; once the session wrote what it was handed, what it
                // wrote is committed before the group moves partitions.
                written.drained(send_limit).await;
                if membership.auto {
                    let offsets = written_offsets(&written, &topic, &membership.assigned);
                    if let Some(member) = membership.member.as_mut() {
                        let _ = member.commit(&offsets).await;
                    }
                }
            }
        }
    }
}

/// What the member itself has to do between pushes.
enum Event {
    Beat,
    AutoCommit,
    Ask(CommitAsk),
}

/// A future polled only when its own waker fired (and the first time): beside a future woken
/// often (the delivery), a select then costs one atomic load per wake-up, not a poll of every
/// timer and channel in it.
struct Gated<F> {
    inner: std::pin::Pin<Box<F>>,
    gate: Arc<Gate>,
}

struct Gate {
    woken: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake();
    }
}

impl<F: std::future::Future> Gated<F> {
    /// Polled at its first poll, then only when woken.
    fn new(inner: F) -> Self {
        Gated {
            inner: Box::pin(inner),
            gate: Arc::new(Gate {
                woken: std::sync::atomic::AtomicBool::new(true),
                task: futures_util::task::AtomicWaker::new(),
            }),
        }
    }
}

impl<F: std::future::Future> std::future::Future for Gated<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.gate.task.register(cx.waker());
        if !self
            .gate
            .woken
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return std::task::Poll::Pending;
        }
        let waker = std::task::Waker::from(Arc::clone(&self.gate));
        self.inner
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
    }
}

/// The group's commits that lie within their partition's log (from its first offset to its
/// high watermark): a commit outside it (the records were deleted by retention, or the topic was
/// recreated) is not a place to resume, and its partition starts by the subscribe's `from`, as a
/// Kafka consumer's `auto.offset.reset` does.
async fn in_log(
    access: &KafkaAccess,
    topic: &str,
    committed: &HashMap<i32, i64>,
) -> Result<HashMap<i32, i64>, (i32, KafkaFailure)> {
    let timeout = access.target.settings.socket_timeout;
    let checks = committed.iter().map(|(&partition, &offset)| async move {
        let reader = access
            .pool
            .partition(&access.target.identity, topic, partition, timeout)
            .await
            .map_err(|f| (partition, f))?;
        let first = reader
            .offset_at(OffsetAt::Earliest, timeout)
            .await
            .map_err(|f| (partition, f))?;
        let end = reader
            .offset_at(OffsetAt::Latest, timeout)
            .await
            .map_err(|f| (partition, f))?;
        let past = push::past_end(&reader, offset, end, timeout)
            .await
            .map_err(|f| (partition, f))?;
        Ok::<_, (i32, KafkaFailure)>((offset >= first && !past).then_some((partition, offset)))
    });
    let checked = futures_util::future::join_all(checks).await;
    let mut resumable = HashMap::new();
    for check in checked {
        if let Some((partition, offset)) = check? {
            resumable.insert(partition, offset);
        }
    }
    Ok(resumable)
}

fn rebalancing() -> KafkaFailure {
    KafkaFailure::new(
        ErrorCode::Rebalancing,
        "the group is rebalancing: commit again after the next assignment",
    )
}

/// Commits what a client asked for: each partition its cursor names that this member holds,
/// never beyond what was written.
async fn asked(
    member: &mut Member,
    ask: &CommitAsk,
    topic: &str,
    assigned: &[i32],
    written: &Written,
) -> Result<Vec<(i32, i64)>, KafkaFailure> {
    let bad = |why: String| Err(KafkaFailure::new(ErrorCode::BadRequest, why));
    let c = match cursor::decode(&ask.cursor) {
        Ok(c) => c,
        Err(why) => return bad(format!("bad cursor: {why}")),
    };
    if c.topic != topic {
        return bad(format!(
            "bad cursor: it is for topic {:?}, not {topic:?}",
            c.topic
        ));
    }
    let pushed: HashMap<i32, i64> = cursor::decode(&written.cursor())
        .map(|w| w.positions.into_iter().collect())
        .unwrap_or_default();
    let mut offsets = Vec::new();
    for (partition, offset) in c.positions {
        if !assigned.contains(&partition) {
            continue;
        }
        if pushed.get(&partition).is_none_or(|&p| offset > p) {
            return bad(format!(
                "bad cursor: partition {partition} at {offset} is beyond what this subscription pushed"
            ));
        }
        offsets.push((partition, offset));
    }
    member.commit(&offsets).await.map_err(|e| match e {
        GroupError::Rebalance(_) => rebalancing(),
        GroupError::Failed(f) => f,
    })?;
    Ok(offsets)
}

/// A commit's answer, carried with the subscription's frames (so it is written in order with
/// them) under the commit's own sequence.
fn commit_answer(
    key: u64,
    subscription: i64,
    sequence: i64,
    answer: Result<(), KafkaFailure>,
) -> Outgoing {
    let frame = match answer {
        Ok(()) => PubSubResp {
            sequence,
            resp: Some(Resp::KafkaCommitResp(KafkaCommitResp {})),
        },
        Err(f) => PubSubResp::error(sequence, f.code, format!("commit failed: {}", f.reason)),
    };
    push::frame(key, subscription, frame)
}

/// A member's share of `streamgate_group_committed_lag_records`, taken back when it ends.
struct CommittedLag {
    route: Arc<str>,
    name: String,
    reported: HashMap<i32, i64>,
}

impl CommittedLag {
    /// Reports, for each assigned partition, the records between `committed` and its reader's
    /// readable end; partitions no longer assigned report nothing.
    fn report(&mut self, readers: &[(i32, Arc<PartitionReader>)], committed: &HashMap<i32, i64>) {
        let mut now: HashMap<i32, i64> = HashMap::new();
        for (partition, reader) in readers {
            if let Some(&offset) = committed.get(partition) {
                now.insert(*partition, reader.known_end().saturating_sub(offset).max(0));
            }
        }
        let partitions: std::collections::HashSet<i32> =
            now.keys().chain(self.reported.keys()).copied().collect();
        for partition in partitions {
            let delta = now.get(&partition).copied().unwrap_or(0)
                - self.reported.get(&partition).copied().unwrap_or(0);
            if delta != 0 {
                crate::metrics::metrics()
                    .group_committed_lag
                    .with_label_values(&[&*self.route, &self.name, &partition.to_string()])
                    .add(delta);
            }
        }
        self.reported = now;
    }
}

impl Drop for CommittedLag {
    fn drop(&mut self) {
        self.report(&[], &HashMap::new());
    }
}

#[cfg(test)]
mod tests {
    use super::escape_claim;

    #[test]
    fn claims_are_escaped_so_namespaces_never_overlap() {
        assert_eq!(escape_claim("alice"), "alice");
        assert_eq!(escape_claim("a.b"), "a%2Eb");
        assert_eq!(escape_claim("a%2Eb"), "a%252Eb");
        assert_eq!(escape_claim("é"), "%C3%A9");
    }
}
