//! The Kafka commands: list offset and fetch, with Kafka's semantics even where a broker is
//! sloppy (a fetch beyond the high watermark is `OFFSET_OUT_OF_RANGE`; a timestamp later than
//! every record is -1), topic names and the route's allow-list checked before Kafka is asked,
//! and fetch answers that never exceed the route's frame limit.

use crate::limits::AnswerHold;
use crate::pubsub::failure::{invalid_timestamp, KafkaFailure};
use crate::pubsub::kafka::reader::{Fetched, PartitionReader};
use crate::pubsub::target::KafkaAccess;
use crate::pubsub::wire::{FrameBudget, SizedRecord, WireFrame};
use prost::Message as _;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::OffsetAt;
use std::sync::Arc;
use std::time::Duration;
use streamgate_protocol::{
    pub_sub_resp::Resp, CmdKafkaFetch, CmdKafkaListOffset, ErrorCode, KafkaListOffsetResp,
    PubSubResp,
};

/// Answers a list-offset command.
pub(crate) async fn list_offset(
    access: &KafkaAccess,
    sequence: i64,
    cmd: CmdKafkaListOffset,
) -> PubSubResp {
    let answer = list_offset_inner(access, &cmd).await;
    access.forget_if_gone(&cmd.topic, cmd.partition, &answer);
    match answer {
        Ok(offset) => PubSubResp {
            sequence,
            resp: Some(Resp::KafkaListOffsetResp(KafkaListOffsetResp { offset })),
        },
        Err(f) => access.failed(sequence, "list offset", &cmd.topic, Some(cmd.partition), f),
    }
}

/// A command's answer ready to write, holding its place in the process's budget for answers not
/// yet written by their clients (`None`: nothing held).
pub(crate) type Reply = (WireFrame, Option<AnswerHold>);

/// `answer` held in the budget (or LIMIT_EXCEEDED when it is spent), counted and encoded.
pub(crate) fn reply(access: &KafkaAccess, command: &str, answer: PubSubResp) -> Reply {
    let (answer, held) = match hold(access, answer.sequence, answer.encoded_len()) {
        Ok(held) => (answer, Some(held)),
        Err(refused) => (refused, None),
    };
    crate::metrics::metrics().command(&access.target.route_id, command, &answer);
    (WireFrame::answer(&answer), held)
}

/// A place for `size` bytes in the process's budget for answers not yet written: a reader that
/// does not read keeps its answers, and the budget is shared by every session.
fn hold(access: &KafkaAccess, sequence: i64, size: usize) -> Result<AnswerHold, PubSubResp> {
    access.limits.hold_answer(size).ok_or_else(|| {
        let limit = access.limits.config().max_queued_answer_bytes;
        PubSubResp::error(
            sequence,
            ErrorCode::LimitExceeded,
            format!("the gateway holds its maximum of answers not yet read by their clients (max_queued_answer_bytes = {limit}): retry shortly"),
        )
    })
}

/// Answers a fetch command. The answer is encoded from the shared decoded records (no record is
/// cloned), its size for the budget known from choosing them.
pub(crate) async fn fetch(access: &KafkaAccess, sequence: i64, cmd: CmdKafkaFetch) -> Reply {
    let answer = fetch_inner(access, &cmd).await;
    access.forget_if_gone(&cmd.topic, cmd.partition, &answer);
    let failure = match answer {
        Ok(PullRead {
            fetched,
            from,
            reader,
            max_bytes,
        }) => match pick(access, &fetched, from) {
            Ok((records, size)) => {
                if let Some(last) = records.last() {
                    // The client's next fetch starts after this answer: start it now.
                    let timeout = access.target.settings.socket_timeout;
                    reader.read_ahead(last.offset().saturating_add(1), max_bytes, timeout);
                }
                let s = &access.target.settings;
                let envelope = FrameBudget::fetch_answer(s.max_frame_bytes).envelope();
                return match hold(access, sequence, size + envelope) {
                    Ok(held) => {
                        delivered(access, records.len(), size);
                        // The readable end: an answer without records says none is visible to
                        // this caller up to there.
                        let frame = WireFrame::fetch_answer(sequence, &records, fetched.end);
                        (frame, Some(held))
                    }
                    Err(refused) => reply(access, "fetch", refused),
                };
            }
            Err(f) => f,
        },
        Err(f) => f,
    };
    let answer = access.failed(
        sequence,
        "fetch message",
        &cmd.topic,
        Some(cmd.partition),
        failure,
    );
    reply(access, "fetch", answer)
}

/// Counts a fetch answered with `records` of `bytes` (encoded).
fn delivered(access: &KafkaAccess, records: usize, bytes: usize) {
    let metrics = crate::metrics::metrics();
    let route = &*access.target.route_id;
    metrics.command(route, "fetch", &PubSubResp::default());
    metrics
        .records_delivered
        .with_label_values(&[route])
        .inc_by(records as u64);
    metrics
        .record_bytes_delivered
        .with_label_values(&[route])
        .inc_by(bytes as u64);
}

fn check_target(access: &KafkaAccess, topic: &str, partition: i32) -> Result<(), KafkaFailure> {
    access.check_topic(topic)?;
    if partition < 0 {
        return Err(KafkaFailure::new(
            ErrorCode::NotFound,
            "not found partition",
        ));
    }
    Ok(())
}

async fn list_offset_inner(
    access: &KafkaAccess,
    cmd: &CmdKafkaListOffset,
) -> Result<i64, KafkaFailure> {
    check_target(access, &cmd.topic, cmd.partition)?;
    let at = match cmd.timestamp {
        -1 => OffsetAt::Latest,
        -2 => OffsetAt::Earliest,
        ms if ms >= 0 => match Utc.timestamp_millis_opt(ms).single() {
            Some(t) => OffsetAt::Timestamp(t),
            None => return Err(invalid_timestamp(ms)),
        },
        ms => return Err(invalid_timestamp(ms)),
    };
    let timeout = access.target.settings.socket_timeout;
    let reader = access
        .pool
        .partition(&access.target.identity, &cmd.topic, cmd.partition, timeout)
        .await?;
    reader.offset_at(at, timeout).await
}

/// How many reads (each up to the fetch's `max_bytes`) one row-filtered fetch command makes past
/// records its caller may not see before it answers with nothing, so that what one command costs
/// the gateway stays bounded.
const HIDDEN_SCAN_READS: u32 = 64;

/// What one pull (fetch command) read: records from `from` on, the partition's reader and the byte
/// budget they were fetched with.
struct PullRead {
    fetched: Arc<Fetched>,
    from: i64,
    reader: Arc<PartitionReader>,
    max_bytes: i32,
}

async fn fetch_inner(access: &KafkaAccess, cmd: &CmdKafkaFetch) -> Result<PullRead, KafkaFailure> {
    check_target(access, &cmd.topic, cmd.partition)?;
    let s = &access.target.settings;
    if cmd.offset < 0 {
        return Err(KafkaFailure::out_of_range());
    }
    let frame_budget = FrameBudget::fetch_answer(s.max_frame_bytes).for_records();
    let mut max_bytes = s.fetch_max_bytes.min(frame_budget);
    if cmd.max_bytes > 0 {
        max_bytes = max_bytes.min(cmd.max_bytes as usize);
    }
    let mut wait = s.fetch_max_wait;
    if cmd.max_wait_ms > 0 {
        wait = wait.min(Duration::from_millis(cmd.max_wait_ms as u64));
    }
    let reader = access
        .pool
        .partition(
            &access.target.identity,
            &cmd.topic,
            cmd.partition,
            s.socket_timeout,
        )
        .await?;
    let max_bytes = i32::try_from(max_bytes.max(1)).unwrap_or(i32::MAX);
    let deadline = tokio::time::Instant::now() + wait;
    // With a row filter, records the caller may not see are skipped: read on past them until
    // some pass, or the readable end is reached and the wait is over (only the end is waited
    // at, as without a filter), or the scan budget is spent. The answer then has offset gaps.
    // The wait does not cut the reading short: an answer with nothing while hidden records
    // remain would send the client back to the same offset, and a client whose records lie
    // behind more hidden ones than a wait's worth of reading would never get past them.
    let mut from = cmd.offset;
    let mut filtered = 0u64;
    let mut reads_left = HIDDEN_SCAN_READS;
    let fetched = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let fetched = reader
            .fetch(from, max_bytes, left, s.socket_timeout)
            .await?;
        let Some(row_filter) = &access.row_filter else {
            break fetched;
        };
        let records = fetched.messages.iter().filter(|m| m.offset >= from);
        let mut hidden = 0u64;
        let mut passes = false;
        for m in records {
            if row_filter.passes(m) {
                passes = true;
                break;
            }
            hidden += 1;
        }
        filtered += hidden;
        reads_left -= 1;
        let more = fetched.next > from
            && reads_left > 0
            && (!fetched.at_end() || tokio::time::Instant::now() < deadline);
        if passes || !more {
            break fetched;
        }
        from = fetched.next;
    };
    if filtered > 0 {
        crate::metrics::metrics()
            .records_filtered
            .with_label_values(&[&*access.target.route_id])
            .inc_by(filtered);
    }
    // Beyond the log: OFFSET_OUT_OF_RANGE, as Kafka answers (some brokers answer nothing). A
    // new leader's high watermark may lag the old one's: the highest seen counts.
    let high_watermark = fetched.high_watermark.max(reader.known_high_watermark());
    if cmd.offset > high_watermark && !fetched.messages.iter().any(|m| m.offset >= from) {
        return Err(KafkaFailure::out_of_range());
    }
    Ok(PullRead {
        fetched,
        from,
        reader,
        max_bytes,
    })
}

/// The records of `fetched` from `from` on that the caller may see and the frame holds, with
/// their encoded size; TOO_LARGE when not even the first fits.
fn pick<'a>(
    access: &KafkaAccess,
    fetched: &'a Fetched,
    from: i64,
) -> Result<(Vec<SizedRecord<'a>>, usize), KafkaFailure> {
    let budget = FrameBudget::fetch_answer(access.target.settings.max_frame_bytes);
    let row_filter = access.row_filter.as_deref();
    let records = fetched
        .messages
        .iter()
        .filter(|m| m.offset >= from && row_filter.is_none_or(|f| f.passes(m)));
    let mut picked = Vec::with_capacity(fetched.messages.len());
    let mut used = 0usize;
    for message in records {
        let record = SizedRecord::new(message);
        let framed = record.framed_len();
        if used + framed > budget.for_records() {
            if picked.is_empty() {
                let why = budget.too_large(message.offset, framed);
                return Err(KafkaFailure::new(ErrorCode::TooLarge, why));
            }
            break;
        }
        used += framed;
        picked.push(record);
    }
    Ok((picked, used))
}
