//! One push subscription: where it starts, and the loop that pushes records as far as the
//! client's credit allows.
//!
//! A subscription is a task of its own. It resolves its start (partitions, offsets, the high
//! watermarks that define "caught up"), hands the session its answer, then loops: wait for
//! credit, pick a partition with records past its position (round robin), read them through the
//! partition's shared reader (near the head that is the shared tail window, not a broker request),
//! filter, and hand the session one push. Pushes go through a small channel, so a session that is
//! busy writing makes its subscriptions wait rather than queue: what waits for a slow or paused
//! client is at most one push per subscription.
//!
//! At the head, a subscription whose filter lists keys registers in the partition's key index
//! ([`crate::pubsub::kafka::key_index`]) and is handed its keys' records instead of reading
//! every record: a record then costs its readers, not every subscriber. It reads on its own
//! again when it falls behind (no credit, a slow client), and registers again at the head.
//!
//! Exactness: a position only moves past records the push carries or the filter left out, and the
//! cursor in each push is the position after it. The session remembers the cursor of the last push
//! it actually wrote; an unsubscribe drops whatever was not written and answers with that cursor.
//!
//! Credit is counted as totals granted (a `watch` the session adds to) against totals used (kept
//! here): no lock, and granting never waits.

use super::cursor;
use crate::limits::AnswerHold;
use crate::pubsub::failure::invalid_timestamp;
use crate::pubsub::failure::{Backoff, KafkaFailure};
use crate::pubsub::kafka::batch::record_size;
use crate::pubsub::kafka::key_index::{Registration, Taken as Handed, Wake};
use crate::pubsub::kafka::reader::PartitionReader;
use crate::pubsub::target::{KafkaAccess, RecordMatcher};
use crate::pubsub::wire::FrameBudget;
use futures_util::future::join_all;
use prost::Message as _;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::OffsetAt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_resp::Resp, CmdKafkaSubscribe, ErrorCode, KafkaMessage,
    KafkaPartitionRecords, KafkaRecordsPush, KafkaSubscribeResp, PartitionStart, PubSubResp,
    RecordFilter,
};
use tokio::sync::{mpsc, watch};

/// Credit granted to a subscription so far, in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Granted {
    /// Records.
    pub records: u64,
    /// Record bytes; only counted when the subscription has a byte bound.
    pub bytes: u64,
}

/// What a subscription hands its session to write.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The session's own number for the subscription (sequences may be reused by clients).
    pub key: u64,
    /// The subscription's sequence (a commit's answer carries the commit's own).
    pub subscription: i64,
    /// Told when the frame is written (group subscriptions commit what was written).
    pub written: Option<Arc<Written>>,
    /// The frame: the subscribe answer, a push (each carries the resume point once written), or
    /// the error that ends the subscription.
    pub frame: PubSubResp,
    /// The subscription ends with this frame.
    pub ends: bool,
    /// The frame's place in the process's budget for frames not yet read by their clients.
    pub hold: Option<AnswerHold>,
}

/// What a session has written of a group subscription's frames: the cursor after the last push
/// written (what AUTO commits), and how many of the frames handed over are written, so that the
/// subscription can wait until all are before it commits and tells of a new assignment.
#[derive(Debug, Default)]
pub(crate) struct Written {
    state: std::sync::Mutex<WrittenState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct WrittenState {
    cursor: String,
    queued: u64,
    written: u64,
}

impl Written {
    /// A frame carrying this is on its way to the session.
    pub(crate) fn queued(&self) {
        crate::sync::lock(&self.state).queued += 1;
    }

    /// The session wrote a frame carrying this; `cursor` is the push's, if it was one.
    pub(crate) fn wrote(&self, cursor: Option<&str>) {
        let mut state = crate::sync::lock(&self.state);
        state.written += 1;
        if let Some(cursor) = cursor {
            state.cursor.clear();
            state.cursor.push_str(cursor);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// The cursor after the last push written.
    pub(crate) fn cursor(&self) -> String {
        crate::sync::lock(&self.state).cursor.clone()
    }

    /// Starts over from `cursor` (a new assignment's start), once nothing is on its way.
    pub(crate) fn restart(&self, cursor: String) {
        crate::sync::lock(&self.state).cursor = cursor;
    }

    /// Waits until every frame handed over is written (or `limit` passes: a session that does
    /// not write ends anyway).
    pub(crate) async fn drained(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let wait = self.changed.notified();
                {
                    let state = crate::sync::lock(&self.state);
                    if state.written >= state.queued {
                        return;
                    }
                }
                wait.await;
            }
        })
        .await;
    }
}

/// How long a subscription at the head waits before looking again on its own (the poller
/// normally wakes it much sooner).
const HEAD_RECHECK: Duration = Duration::from_secs(1);

/// First and longest pause before reading again after the brokers could not be reached.
const OUTAGE_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// What one subscribe may list, at most. A subscription keeps its filter for as long as it runs
/// and checks every record against it, so these bound what a client can make the gateway hold:
/// a subscription at every limit holds about 150 KiB (its keys in a hash set), a connection at
/// `max_subscriptions` (16) about 2.4 MiB, a small multiple of the frames that asked for it.
pub(crate) mod limits {
    /// Keys in `filter.keys`.
    pub const KEYS: usize = 1_000;
    /// Bytes of all keys in `filter.keys` together.
    pub const KEY_BYTES: usize = 64 * 1024;
    /// Bytes of `filter.key_prefix`.
    pub const KEY_PREFIX_BYTES: usize = 1024;
    /// Pairs in `filter.headers`.
    pub const HEADERS: usize = 32;
    /// Bytes of all header names and values in `filter.headers` together.
    pub const HEADER_BYTES: usize = 8 * 1024;
    /// Entries in `partitions`, and in `offsets` (where each partition may appear once).
    pub const PARTITIONS: usize = 1_024;
}

/// Why a subscribe lists more than a subscription may hold ([`limits`]), naming the limit; the
/// transports refuse it before anything starts (BAD_REQUEST, or 400 for an event stream).
pub(crate) fn over_limits(cmd: &CmdKafkaSubscribe) -> Option<String> {
    // With a cursor, the cursor's partitions apply and the other start fields are ignored.
    let starts_listed = cmd.cursor.is_empty();
    if starts_listed && cmd.partitions.len() > limits::PARTITIONS {
        return Some(format!(
            "partitions lists {} entries, more than the {} a subscribe may",
            cmd.partitions.len(),
            limits::PARTITIONS
        ));
    }
    if starts_listed {
        if cmd.offsets.len() > limits::PARTITIONS {
            return Some(format!(
                "offsets lists {} entries, more than the {} a subscribe may",
                cmd.offsets.len(),
                limits::PARTITIONS
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(cmd.offsets.len());
        if let Some(twice) = cmd.offsets.iter().find(|o| !seen.insert(o.partition)) {
            return Some(format!(
                "offsets names partition {} more than once (one start per partition)",
                twice.partition
            ));
        }
    }
    let f = cmd.filter.as_ref()?;
    let key_bytes: usize = f.keys.iter().map(|k| k.len()).sum();
    let header_bytes: usize = f.headers.iter().map(|h| h.key.len() + h.value.len()).sum();
    let over = |what: &str, got: usize, limit: usize| {
        Some(format!(
            "{what} is {got}, more than the {limit} a subscription may filter on"
        ))
    };
    if f.keys.len() > limits::KEYS {
        return over("the number of filter.keys", f.keys.len(), limits::KEYS);
    }
    if key_bytes > limits::KEY_BYTES {
        return over("the bytes of filter.keys", key_bytes, limits::KEY_BYTES);
    }
    if f.key_prefix.len() > limits::KEY_PREFIX_BYTES {
        return over(
            "the bytes of filter.key_prefix",
            f.key_prefix.len(),
            limits::KEY_PREFIX_BYTES,
        );
    }
    if f.headers.len() > limits::HEADERS {
        return over(
            "the number of filter.headers",
            f.headers.len(),
            limits::HEADERS,
        );
    }
    if header_bytes > limits::HEADER_BYTES {
        return over(
            "the bytes of filter.headers",
            header_bytes,
            limits::HEADER_BYTES,
        );
    }
    None
}

/// One subscribed partition.
pub(crate) struct SubscribedPartition {
    partition: i32,
    reader: Arc<PartitionReader>,
    /// The offset of the next record to look at.
    next: i64,
    /// The high watermark at subscribe time.
    caught_up_at: i64,
    caught_up: bool,
    /// Not read yet: read once before waiting at the head, whatever the watermark says.
    probed: bool,
    /// Handed its records by the key index, at the head.
    keyed: Option<Keyed>,
}

/// A partition whose records of the subscription's keys the key index hands out.
struct Keyed {
    registration: Registration,
    /// Records handed out and not pushed yet, in log order.
    held: VecDeque<KafkaMessage>,
    /// Every record of the subscription's keys before this offset is in `held` or was pushed.
    through: i64,
    /// Out of the hand-out: the partition reads on its own once `held` is pushed.
    left: bool,
}

/// Runs a subscription until it ends with an error or its task is aborted (unsubscribe, session
/// end). The subscribe answer, then every push, go to `out` under `sequence`.
pub(crate) async fn run(
    access: KafkaAccess,
    key: u64,
    sequence: i64,
    mut cmd: CmdKafkaSubscribe,
    mut grants: watch::Receiver<Granted>,
    out: mpsc::Sender<Box<Outgoing>>,
) {
    let route = Arc::clone(&access.target.route_id);
    let metrics = crate::metrics::metrics();
    let _open = GaugeGuard::new(metrics.subscriptions_open.with_label_values(&[&*route]));
    let topic = cmd.topic.clone();
    // Boxed: the start's futures would otherwise stay part of every paused subscription's task.
    let parts = match Box::pin(start(&access, &cmd)).await {
        Ok(parts) => parts,
        Err((partition, f)) => {
            let frame = access.failed(sequence, "subscribe", &topic, partition, f);
            crate::metrics::metrics().command(&route, "subscribe", &frame);
            let _ = out.send(Box::new(ending(key, sequence, frame))).await;
            return;
        }
    };
    let starts = starts_of(&parts);
    let first_cursor = cursor_of(&topic, &parts);
    let answer = PubSubResp {
        sequence,
        resp: Some(Resp::KafkaSubscribeResp(KafkaSubscribeResp {
            partitions: starts,
            cursor: first_cursor,
            ..Default::default()
        })),
    };
    if out
        .send(Box::new(frame(key, sequence, answer)))
        .await
        .is_err()
    {
        return;
    }
    let pushing = Pushing::new(&access, key, sequence, &topic, &mut cmd, None);
    // The rest of the request (partitions, offsets, cursor) is not needed once started.
    drop(cmd);
    let mut used = Granted::default();
    pushing.deliver(parts, &mut grants, &mut used, &out).await;
}

impl SubscribedPartition {
    /// The partition and its shared reader.
    pub(crate) fn reader(&self) -> (i32, &Arc<PartitionReader>) {
        (self.partition, &self.reader)
    }

    /// Takes what the key index handed out (called when the partition's slot has news).
    fn take_handed(&mut self) {
        let Some(keyed) = &mut self.keyed else {
            return;
        };
        match keyed.registration.take(&mut keyed.held) {
            Handed::Through(at) => keyed.through = at,
            Handed::Left(at) => {
                keyed.through = at;
                keyed.left = true;
            }
        }
        self.settle_handed();
    }

    /// Moves the position past the records of other keys once everything handed out is pushed;
    /// back to reading alone once out of the index.
    fn settle_handed(&mut self) {
        let Some(keyed) = &mut self.keyed else {
            return;
        };
        if self.next < keyed.registration.floor() {
            // Still reading alone up to where the hand-out starts; out of the index before
            // getting there, what was handed out is read alone again.
            if keyed.left {
                self.keyed = None;
            }
            return;
        }
        if keyed.held.is_empty() {
            self.next = self.next.max(keyed.through);
            if keyed.left {
                self.keyed = None;
            }
        }
    }

    /// Registers in the key index (told with `bit`) when the filter lists keys and the position
    /// is near the head (see [`PartitionReader::register_keys`]).
    fn register_near_head(
        &mut self,
        filter: &Filter,
        wake: &Arc<Wake>,
        bit: u64,
        timeout: Duration,
    ) {
        if self.keyed.is_some() || !self.probed {
            return;
        }
        let Some(keys) = filter.own.keys() else {
            return;
        };
        if let Some(registration) = self
            .reader
            .register_keys(keys, self.next, wake, bit, timeout)
        {
            self.keyed = Some(Keyed {
                through: registration.floor(),
                registration,
                held: VecDeque::new(),
                left: false,
            });
        }
    }

    /// Records this subscription has still to read in the partition: those handed out and not
    /// pushed yet in the key index (whose position moves only when it has news), else every
    /// record past its position.
    fn lag(&self) -> i64 {
        match &self.keyed {
            Some(keyed) if !self.reads_alone() => keyed.held.len() as i64,
            _ => self.reader.known_end().saturating_sub(self.next).max(0),
        }
    }

    /// Where reading alone stops: where the key index's hand-out starts, if registered.
    fn alone_until(&self) -> Option<i64> {
        self.keyed.as_ref().map(|k| k.registration.floor())
    }

    /// Whether the partition reads alone now (not registered, or not yet where the hand-out
    /// starts).
    fn reads_alone(&self) -> bool {
        self.alone_until().is_none_or(|floor| self.next < floor)
    }

    /// Whether there is something to read: records handed out, or (reading alone) records past
    /// the position, or a first read still to do.
    fn ready(&self) -> bool {
        match &self.keyed {
            Some(keyed) if !self.reads_alone() => !keyed.held.is_empty(),
            _ => !self.probed || self.next < self.reader.known_end(),
        }
    }
}

/// Where each partition starts, for a subscribe answer or an assignment.
pub(crate) fn starts_of(parts: &[SubscribedPartition]) -> Vec<PartitionStart> {
    parts
        .iter()
        .map(|p| PartitionStart {
            partition: p.partition,
            offset: p.next,
            high_watermark: p.caught_up_at,
        })
        .collect()
}

/// Pushes of one subscription: what they are for and what they pass.
pub(crate) struct Pushing<'a> {
    access: &'a KafkaAccess,
    key: u64,
    sequence: i64,
    topic: &'a str,
    filter: Filter,
    byte_bound: bool,
    /// Attached to every push, for the session to tell when it is written.
    written: Option<Arc<Written>>,
}

impl<'a> Pushing<'a> {
    /// The pushes `cmd` asks for (its filter is taken; the caller's row filter always applies).
    pub(crate) fn new(
        access: &'a KafkaAccess,
        key: u64,
        sequence: i64,
        topic: &'a str,
        cmd: &mut CmdKafkaSubscribe,
        written: Option<Arc<Written>>,
    ) -> Self {
        Pushing {
            access,
            key,
            sequence,
            topic,
            filter: Filter::new(
                cmd.filter.take().unwrap_or_default(),
                access.row_filter.clone(),
            ),
            byte_bound: cmd.credit_bytes > 0,
            written,
        }
    }

    /// Pushes records of `parts` as far as credit allows, until the subscription ends with an
    /// error or its session goes away (or the caller stops polling this).
    pub(crate) async fn deliver(
        &self,
        mut parts: Vec<SubscribedPartition>,
        grants: &mut watch::Receiver<Granted>,
        used: &mut Granted,
        out: &mpsc::Sender<Box<Outgoing>>,
    ) {
        let (access, key, sequence, topic, filter, byte_bound) = (
            self.access,
            self.key,
            self.sequence,
            self.topic,
            &self.filter,
            self.byte_bound,
        );
        let route = Arc::clone(&access.target.route_id);
        let metrics = crate::metrics::metrics();
        // Looked up once: a label look-up per push would cost a hash and a lock each.
        let label = [&*route];
        let counters = Counters {
            pushed: metrics.records_pushed.with_label_values(&label),
            delivered: metrics.records_delivered.with_label_values(&label),
            pushed_bytes: metrics.record_bytes_pushed.with_label_values(&label),
            slow: metrics
                .subscriptions_stalled
                .with_label_values(&[&*route, "slow_reader"]),
        };
        let (filtered, paused) = (
            metrics.records_filtered.with_label_values(&label),
            metrics
                .subscriptions_stalled
                .with_label_values(&[&*route, "credit"]),
        );
        if parts.is_empty() {
            return std::future::pending().await;
        }
        // Partitions that start at the watermark are caught up before any record: say so now, even
        // without credit.
        let already: Vec<KafkaPartitionRecords> = parts
            .iter_mut()
            .filter(|p| p.next >= p.caught_up_at)
            .map(|p| {
                p.caught_up = true;
                KafkaPartitionRecords {
                    partition: p.partition,
                    messages: Vec::new(),
                    high_watermark: p.caught_up_at.max(p.reader.known_end()),
                    caught_up: true,
                }
            })
            .collect();
        if !already.is_empty() {
            let cursor = cursor_of(topic, &parts);
            if self
                .send(out, push(key, sequence, already, cursor))
                .await
                .is_err()
            {
                return;
            }
        }

        let mut lag = Lag::new(
            metrics
                .subscription_lag
                .with_label_values(&[&*route, topic]),
        );
        let settings = &access.target.settings;
        let mut turn = 0usize;
        let mut outage = Backoff::new(OUTAGE_BACKOFF.0, OUTAGE_BACKOFF.1);
        // Offsets grow, and their cursor with them: room for every offset at its longest.
        let cursor_len = cursor::encode(topic, parts.iter().map(|p| (p.partition, i64::MAX))).len();
        let frame_budget = FrameBudget::push(settings.max_frame_bytes, cursor_len);
        let fetch_bytes = i32::try_from(
            settings
                .fetch_max_bytes
                .min(frame_budget.for_records())
                .max(1),
        )
        .unwrap_or(i32::MAX);
        // Told by the key index when it hands out records for this subscription, with the
        // bit of each partition that has news (partition i has bit i % 64).
        let wake = Arc::new(Wake::default());
        let bit = |i: usize| 1u64 << (i % 64);
        loop {
            let news = wake.take_news();
            if news != 0 {
                for (i, part) in parts.iter_mut().enumerate() {
                    if news & bit(i) != 0 {
                        part.take_handed();
                    }
                }
            }
            lag.set(parts.iter().map(SubscribedPartition::lag).sum());
            // Credit first: a paused subscription holds no records and asks the broker nothing.
            let has_credit =
                |g: &Granted| g.records > used.records && (!byte_bound || g.bytes > used.bytes);
            if !has_credit(&grants.borrow()) {
                let _paused = GaugeGuard::new(paused.clone());
                if grants.wait_for(has_credit).await.is_err() {
                    return;
                }
            }
            // A partition with records to read, taking turns so that none starves the others.
            let ready = (0..parts.len())
                .map(|i| (turn + i) % parts.len())
                .find(|&i| parts[i].ready());
            let Some(i) = ready else {
                for (i, part) in parts.iter_mut().enumerate() {
                    part.register_near_head(filter, &wake, bit(i), settings.socket_timeout);
                }
                Box::pin(wait_at_head(&parts, &wake, settings.socket_timeout)).await;
                continue;
            };
            turn = i + 1;
            let part = &mut parts[i];
            let granted = *grants.borrow();
            let credit = Credit {
                records: granted.records - used.records,
                bytes: byte_bound.then(|| granted.bytes.saturating_sub(used.bytes)),
            };
            let position = part.next;
            // What this turn read: records the key index handed out (no read, and only this
            // subscription's keys), or a read of the partition's log.
            let (taken, fetched) = if !part.reads_alone() {
                let Some(keyed) = &mut part.keyed else {
                    continue;
                };
                let mut held = std::mem::take(&mut keyed.held);
                let through = keyed.through;
                let taken = take(
                    part,
                    held.make_contiguous(),
                    through,
                    filter,
                    credit,
                    frame_budget,
                );
                while held.front().is_some_and(|m| m.offset < part.next) {
                    held.pop_front();
                }
                if let Some(keyed) = &mut part.keyed {
                    keyed.held = held;
                }
                part.settle_handed();
                (taken, None)
            } else {
                part.register_near_head(filter, &wake, bit(i), settings.socket_timeout);
                part.probed = true;
                let fetched = match Box::pin(part.reader.fetch_now(
                    part.next,
                    fetch_bytes,
                    settings.socket_timeout,
                ))
                .await
                {
                    Ok(fetched) => {
                        outage.reset();
                        fetched
                    }
                    Err(f) if matches!(f.code, ErrorCode::Unavailable) => {
                        // The brokers are away: wait and read again from the same position.
                        tracing::debug!(route = %route, topic, partition = part.partition, reason = %f.reason, "subscription waits for the brokers");
                        outage.wait().await;
                        continue;
                    }
                    Err(f) => {
                        let partition = part.partition;
                        access.forget_if_gone(topic, partition, &Err::<(), _>(f.clone()));
                        end(out, access, key, sequence, topic, Some(partition), f).await;
                        return;
                    }
                };
                // Registered in the key index: alone only up to where its hand-out starts.
                let (messages, settled) = match part.alone_until() {
                    Some(floor) => {
                        let cut = fetched.messages.partition_point(|m| m.offset < floor);
                        (&fetched.messages[..cut], fetched.next.min(floor))
                    }
                    None => (&fetched.messages[..], fetched.next),
                };
                let taken = take(part, messages, settled, filter, credit, frame_budget);
                (taken, Some(fetched))
            };
            let batch = match taken {
                Ok(batch) => batch,
                Err(f) => {
                    end(out, access, key, sequence, topic, Some(part.partition), f).await;
                    return;
                }
            };
            if batch.filtered > 0 {
                filtered.inc_by(batch.filtered);
            }
            if batch.records.is_empty() && !batch.caught_up {
                if batch.short_of_credit {
                    // The next record needs more bytes than are granted: wait for a grant.
                    drop(fetched);
                    let _paused = GaugeGuard::new(paused.clone());
                    if grants.changed().await.is_err() {
                        return;
                    }
                } else if fetched.is_some()
                    && part.next == position
                    && part.next < part.reader.known_end()
                {
                    // Nothing read although the log went further before: a new leader whose high
                    // watermark still lags, or a broker catching up. Only a broker's own
                    // OFFSET_OUT_OF_RANGE ends a subscription: look again shortly.
                    tokio::time::sleep(crate::pubsub::kafka::reader::TAIL_POLL).await;
                }
                // Otherwise the position moved past batches without records for this reader
                // (markers, aborted or filtered records), or reached the end: the readable end
                // (or the key index) decides when to read again.
                continue;
            }
            let mut high_watermark = part.reader.known_high_watermark();
            if let Some(fetched) = fetched {
                // The next read of this partition starts now, while this push is on its way.
                part.reader
                    .read_ahead(part.next, fetch_bytes, settings.socket_timeout);
                high_watermark = high_watermark.max(fetched.high_watermark);
            }
            if self
                .send_batch(out, &parts, i, batch, high_watermark, used, &counters)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Pushes `batch`, taken from `parts[i]`, with the cursor after it; `Err` when the
    /// subscription is over (ended with an error, or its session gone).
    #[allow(clippy::too_many_arguments)]
    async fn send_batch(
        &self,
        out: &mpsc::Sender<Box<Outgoing>>,
        parts: &[SubscribedPartition],
        i: usize,
        batch: Taken,
        high_watermark: i64,
        used: &mut Granted,
        counters: &Counters,
    ) -> Result<(), ()> {
        let (access, key, sequence, topic) = (self.access, self.key, self.sequence, self.topic);
        used.records += batch.records.len() as u64;
        used.bytes += batch.bytes as u64;
        counters.pushed.inc_by(batch.records.len() as u64);
        counters.delivered.inc_by(batch.records.len() as u64);
        counters.pushed_bytes.inc_by(batch.bytes as u64);
        let partition = parts[i].partition;
        let records = KafkaPartitionRecords {
            partition,
            messages: batch.records,
            high_watermark,
            caught_up: batch.caught_up,
        };
        let cursor = cursor_of(topic, parts);
        let mut frame = push(key, sequence, vec![records], cursor);
        frame.written = self.written.clone();
        // Pushes waiting to be written count against the process's budget like answers do;
        // when it is spent, the subscription waits rather than failing.
        let size = frame.frame.encoded_len();
        let budget = access.limits.config().max_queued_answer_bytes;
        if size > budget {
            // The budget would never have room for it (the config check refuses a budget below
            // max_frame_bytes, so this is a safety net, not a path).
            let why = format!("a push of {size} bytes is larger than the gateway's whole budget for answers not yet read (max_queued_answer_bytes = {budget})");
            let f = KafkaFailure::new(ErrorCode::TooLarge, why);
            end(out, access, key, sequence, topic, Some(partition), f).await;
            return Err(());
        }
        frame.hold = loop {
            if let Some(hold) = access.limits.hold_answer(size) {
                break Some(hold);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Some(w) = &self.written {
            w.queued();
        }
        // A full channel: the session is still writing earlier frames to a slow client.
        let frame = match out.try_send(Box::new(frame)) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        let _slow = GaugeGuard::new(counters.slow.clone());
        out.send(frame).await.map_err(|_| ())
    }

    /// Sends a frame of this subscription, counted when it will be told written.
    async fn send(&self, out: &mpsc::Sender<Box<Outgoing>>, mut frame: Outgoing) -> Result<(), ()> {
        if let Some(w) = &self.written {
            frame.written = Some(Arc::clone(w));
            w.queued();
        }
        out.send(Box::new(frame)).await.map_err(|_| ())
    }
}

/// A subscription's counters, looked up once: a label look-up per push would cost a hash and a
/// lock each.
struct Counters {
    pushed: prometheus::IntCounter,
    delivered: prometheus::IntCounter,
    pushed_bytes: prometheus::IntCounter,
    slow: prometheus::IntGauge,
}

/// A subscription's share of the route's and topic's lag; taken back when it ends.
struct Lag {
    gauge: prometheus::IntGauge,
    value: i64,
}

impl Lag {
    fn new(gauge: prometheus::IntGauge) -> Self {
        Self { gauge, value: 0 }
    }

    fn set(&mut self, value: i64) {
        if value != self.value {
            self.gauge.add(value - self.value);
            self.value = value;
        }
    }
}

impl Drop for Lag {
    fn drop(&mut self) {
        self.gauge.sub(self.value);
    }
}

/// What may still be pushed.
#[derive(Debug, Clone, Copy)]
struct Credit {
    records: u64,
    /// `None`: no byte bound.
    bytes: Option<u64>,
}

/// The records one push carries from one partition.
#[derive(Debug, Default)]
struct Taken {
    records: Vec<KafkaMessage>,
    /// Their bytes as credit counts them.
    bytes: usize,
    filtered: u64,
    /// The partition reached its subscribe-time watermark with this batch.
    caught_up: bool,
    /// The next record that passes the filter needs more credit than is left.
    short_of_credit: bool,
}

/// Takes what credit and the frame allow from `messages` (a read's, or those the key index
/// handed out), moving `part` past what it takes and what the filter leaves out, and, when it
/// takes all, to `settled`: past every batch the read settled (so markers and batches without
/// records for this reader never hold a position back), or every record of other keys.
fn take(
    part: &mut SubscribedPartition,
    messages: &[KafkaMessage],
    settled: i64,
    filter: &Filter,
    credit: Credit,
    frame_budget: FrameBudget,
) -> Result<Taken, KafkaFailure> {
    let mut batch = Taken::default();
    let mut framed_total = 0usize;
    let from = part.next;
    let mut took_all = true;
    for m in messages.iter().filter(|m| m.offset >= from) {
        if !filter.passes(m) {
            batch.filtered += 1;
            part.next = m.offset.saturating_add(1);
            continue;
        }
        if batch.records.len() as u64 >= credit.records {
            batch.short_of_credit = true;
            took_all = false;
            break;
        }
        let size = record_size(m);
        if credit
            .bytes
            .is_some_and(|left| (batch.bytes + size) as u64 > left)
        {
            batch.short_of_credit = true;
            took_all = false;
            break;
        }
        let framed = FrameBudget::framed_len(m.encoded_len());
        if framed_total + framed > frame_budget.for_records() {
            if batch.records.is_empty() {
                let why = frame_budget.too_large(m.offset, framed);
                return Err(KafkaFailure::new(ErrorCode::TooLarge, why));
            }
            took_all = false;
            break;
        }
        framed_total += framed;
        batch.bytes += size;
        // Keys and values are shared buffers: reference counts, not payloads, are copied.
        batch.records.push(m.clone());
        part.next = m.offset.saturating_add(1);
    }
    if took_all {
        part.next = part.next.max(settled);
    }
    if !part.caught_up && part.next >= part.caught_up_at {
        part.caught_up = true;
        batch.caught_up = true;
    }
    Ok(batch)
}

/// Waits until some partition has records past its position (reading alone) or the key index
/// hands out records (`wake`), or a while passes.
async fn wait_at_head(parts: &[SubscribedPartition], wake: &Wake, timeout: Duration) {
    let alone: Vec<_> = parts
        .iter()
        .filter(|p| p.reads_alone())
        .map(|p| Box::pin(p.reader.wait_beyond(p.next, timeout)))
        .collect();
    let only_keyed = alone.is_empty();
    let beyond = async {
        if alone.is_empty() {
            // `select_all` of nothing would panic: only the key index wakes this one.
            std::future::pending::<()>().await;
        }
        futures_util::future::select_all(alone).await;
    };
    let woken = async {
        tokio::select! {
            () = wake.notified() => {}
            () = beyond => {}
        }
    };
    if only_keyed {
        // Only the key index wakes a subscription all of whose partitions it hands out (also
        // when its hand-out stalls): no timer for each of 100,000 such subscriptions.
        woken.await;
    } else {
        // One timer for the whole wait, not one per partition.
        let _ = tokio::time::timeout(HEAD_RECHECK, woken).await;
    }
}

/// The cursor after everything the positions in `parts` have passed.
pub(crate) fn cursor_of(topic: &str, parts: &[SubscribedPartition]) -> String {
    cursor::encode(topic, parts.iter().map(|p| (p.partition, p.next)))
}

/// Whether `offset` lies past the end of a partition's log whose offset look-up said `end`.
/// Look-ups of some brokers (and of new leaders) lag behind, so a fetch there confirms it against
/// the highest high watermark seen; the broker's own OFFSET_OUT_OF_RANGE answer says yes too.
pub(crate) async fn past_end(
    reader: &Arc<PartitionReader>,
    offset: i64,
    end: i64,
    timeout: Duration,
) -> Result<bool, KafkaFailure> {
    if offset <= end {
        return Ok(false);
    }
    match reader.fetch_now(offset, 1, timeout).await {
        Ok(fetched) => Ok(offset > reader.known_high_watermark().max(fetched.high_watermark)),
        Err(f) if f.is_out_of_range() => Ok(true),
        Err(f) => Err(f),
    }
}

pub(crate) fn frame(key: u64, subscription: i64, frame: PubSubResp) -> Outgoing {
    Outgoing {
        key,
        subscription,
        written: None,
        frame,
        ends: false,
        hold: None,
    }
}

fn push(key: u64, sequence: i64, batches: Vec<KafkaPartitionRecords>, cursor: String) -> Outgoing {
    let push = PubSubResp {
        sequence,
        resp: Some(Resp::KafkaRecordsPush(KafkaRecordsPush { batches, cursor })),
    };
    frame(key, sequence, push)
}

/// Ends the subscription with the error `f` on `partition`, under its sequence.
async fn end(
    out: &mpsc::Sender<Box<Outgoing>>,
    access: &KafkaAccess,
    key: u64,
    sequence: i64,
    topic: &str,
    partition: Option<i32>,
    f: KafkaFailure,
) {
    let frame = access.failed(sequence, "subscribe", topic, partition, f);
    let _ = out.send(Box::new(ending(key, sequence, frame))).await;
}

pub(crate) fn ending(key: u64, subscription: i64, frame: PubSubResp) -> Outgoing {
    Outgoing {
        key,
        subscription,
        written: None,
        frame,
        ends: true,
        hold: None,
    }
}

/// Where the subscription starts, or why it may not (with the partition to name).
pub(crate) async fn start(
    access: &KafkaAccess,
    cmd: &CmdKafkaSubscribe,
) -> Result<Vec<SubscribedPartition>, (Option<i32>, KafkaFailure)> {
    let bad = |why: String| (None, KafkaFailure::new(ErrorCode::BadRequest, why));
    access.check_topic(&cmd.topic).map_err(|f| (None, f))?;
    let resumed = if cmd.cursor.is_empty() {
        None
    } else {
        let c = cursor::decode(&cmd.cursor).map_err(|why| bad(format!("bad cursor: {why}")))?;
        if c.topic != cmd.topic {
            return Err(bad(format!(
                "bad cursor: it is for topic {:?}, not {:?}",
                c.topic, cmd.topic
            )));
        }
        Some(c)
    };
    let timeout = access.target.settings.socket_timeout;
    let existing = access
        .pool
        .partitions_of(&access.target.identity, &cmd.topic, timeout)
        .await
        .map_err(|f| (None, f))?;
    if existing.is_empty() {
        // Listed without partitions (as right after creation): nothing to read yet.
        return Err((
            None,
            KafkaFailure::new(
                ErrorCode::NotFound,
                "not found topic: it has no partitions yet",
            ),
        ));
    }
    // (partition, exact start if any)
    let mut chosen: Vec<(i32, Option<i64>)> = Vec::new();
    if let Some(c) = &resumed {
        for &(partition, offset) in &c.positions {
            if !existing.contains(&partition) {
                return Err(bad(format!(
                    "bad cursor: partition {partition} of {:?} no longer exists",
                    cmd.topic
                )));
            }
            chosen.push((partition, Some(offset)));
        }
        if chosen.is_empty() {
            return Err(bad("bad cursor: it names no partition".into()));
        }
    } else {
        let wanted: Vec<i32> = if cmd.partitions.is_empty() {
            existing.clone()
        } else {
            let mut wanted = cmd.partitions.clone();
            wanted.sort_unstable();
            wanted.dedup();
            wanted
        };
        for partition in wanted {
            if !existing.contains(&partition) {
                return Err((
                    Some(partition),
                    KafkaFailure::new(ErrorCode::NotFound, "not found partition"),
                ));
            }
            let exact = cmd
                .offsets
                .iter()
                .find(|o| o.partition == partition)
                .map(|o| o.offset);
            if exact.is_some_and(|o| o < 0) {
                return Err((
                    Some(partition),
                    KafkaFailure::new(ErrorCode::BadRequest, "offsets must be 0 or more"),
                ));
            }
            chosen.push((partition, exact));
        }
        if let Some(stray) = cmd
            .offsets
            .iter()
            .find(|o| !chosen.iter().any(|(p, _)| *p == o.partition))
        {
            return Err((
                Some(stray.partition),
                KafkaFailure::new(
                    ErrorCode::BadRequest,
                    "an exact offset names a partition that is not subscribed",
                ),
            ));
        }
    }
    // With a cursor every partition has an exact start: `from` and `timestamp_ms` are ignored.
    let from = match &resumed {
        Some(_) => StartFrom::Latest,
        None => StartFrom::try_from(cmd.from)
            .map_err(|_| bad(format!("unknown `from` {}", cmd.from)))?,
    };
    let at = match from {
        StartFrom::Latest => OffsetAt::Latest,
        StartFrom::Earliest => OffsetAt::Earliest,
        StartFrom::Timestamp => match Utc.timestamp_millis_opt(cmd.timestamp_ms).single() {
            Some(t) if cmd.timestamp_ms >= 0 => OffsetAt::Timestamp(t),
            _ => return Err((None, invalid_timestamp(cmd.timestamp_ms))),
        },
    };
    let starts = chosen.into_iter().map(|(partition, exact)| async move {
        let reader = access
            .pool
            .partition(&access.target.identity, &cmd.topic, partition, timeout)
            .await
            .map_err(|f| (Some(partition), f))?;
        // The latest offset a read-committed look-up gives: the last stable offset.
        let high_watermark = reader
            .offset_at(OffsetAt::Latest, timeout)
            .await
            .map_err(|f| (Some(partition), f))?;
        reader.observe(high_watermark, high_watermark);
        let next = match exact {
            // Past the end of the log: Kafka's answer is OFFSET_OUT_OF_RANGE, given now.
            Some(offset) => {
                let past = past_end(&reader, offset, high_watermark, timeout)
                    .await
                    .map_err(|f| (Some(partition), f))?;
                if past {
                    return Err((Some(partition), KafkaFailure::out_of_range()));
                }
                offset
            }
            None if at == OffsetAt::Latest => high_watermark,
            None => match reader.offset_at(at, timeout).await {
                // No record that late: start at the head.
                Ok(-1) => high_watermark,
                Ok(offset) => offset,
                Err(f) => return Err((Some(partition), f)),
            },
        };
        Ok(SubscribedPartition {
            partition,
            reader,
            next,
            caught_up_at: high_watermark,
            caught_up: false,
            probed: false,
            keyed: None,
        })
    });
    let parts: Vec<SubscribedPartition> = join_all(starts)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    // A cursor must fit in 1 KiB while the offsets grow for years.
    let grown = cursor::encode(
        &cmd.topic,
        parts
            .iter()
            .map(|p| (p.partition, p.next.saturating_mul(256).max(1 << 40))),
    );
    if grown.len() > cursor::MAX_CURSOR_CHARS {
        return Err(bad(format!(
            "too many partitions for one subscription ({}): its cursor would not fit in 1 KiB; subscribe to fewer partitions in each",
            parts.len()
        )));
    }
    Ok(parts)
}

/// A subscription's record filter: the client's, and the caller's row filter, which the
/// client's can narrow but never widen.
#[derive(Debug)]
struct Filter {
    own: RecordMatcher,
    row: Option<Arc<RecordMatcher>>,
}

impl Filter {
    fn new(filter: RecordFilter, row: Option<Arc<RecordMatcher>>) -> Self {
        Self {
            own: RecordMatcher::of_client(filter),
            row,
        }
    }

    /// Both must pass.
    fn passes(&self, m: &KafkaMessage) -> bool {
        self.row.as_ref().is_none_or(|row| row.passes(m)) && self.own.passes(m)
    }
}

/// Decrements a gauge when dropped, also when the task is aborted.
pub(crate) struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    pub(crate) fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use streamgate_protocol::KafkaHeader;

    fn message(offset: i64, key: &str, headers: &[(&str, &str)]) -> KafkaMessage {
        KafkaMessage {
            offset,
            timestamp: 0,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            nulls: 0,
            headers: headers
                .iter()
                .map(|(k, v)| KafkaHeader {
                    key: k.to_string(),
                    value: Bytes::copy_from_slice(v.as_bytes()),
                })
                .collect(),
        }
    }

    #[test]
    fn every_part_of_a_filter_must_pass() {
        let filter = Filter::new(
            RecordFilter {
                keys: vec![Bytes::from_static(b"eu-1"), Bytes::from_static(b"us-1")],
                key_prefix: Bytes::from_static(b"eu"),
                headers: vec![KafkaHeader {
                    key: "kind".into(),
                    value: Bytes::from_static(b"order"),
                }],
            },
            None,
        );
        assert!(filter.passes(&message(0, "eu-1", &[("kind", "order"), ("x", "y")])));
        assert!(
            !filter.passes(&message(0, "us-1", &[("kind", "order")])),
            "prefix"
        );
        assert!(
            !filter.passes(&message(0, "eu-2", &[("kind", "order")])),
            "keys"
        );
        assert!(
            !filter.passes(&message(0, "eu-1", &[("kind", "refund")])),
            "header value"
        );
        assert!(!filter.passes(&message(0, "eu-1", &[])), "header missing");
        assert!(Filter::new(RecordFilter::default(), None).passes(&message(0, "", &[])));
    }
}
