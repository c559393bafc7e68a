//! The Kafka commands: list offset and fetch, with Kafka's semantics even where a broker is
//! sloppy (a fetch beyond the high watermark is `OFFSET_OUT_OF_RANGE`; a timestamp later than
//! every record is -1), topic names and the route's allow-list checked before Kafka is asked,
//! and fetch answers that never exceed the route's frame limit.

use super::failure::KafkaFailure;
use super::reader::{Fetched, PartitionReader};
use super::target::KafkaAccess;
use super::wire::{Picked, WireFrame};
use crate::limits::AnswerHold;
use prost::Message as _;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::OffsetAt;
use std::sync::Arc;
use std::time::Duration;
use streamgate_protocol::{
    pub_sub_resp::Resp, CmdKafkaFetch, CmdKafkaListOffset, ErrorCode, KafkaListOffsetResp,
    PubSubResp,
};

/// Room kept in every frame for the response envelope (sequence, tags, high watermark).
const ENVELOPE_BYTES: usize = 40;

/// Answers a list-offset command.
pub(crate) async fn list_offset(
    access: &KafkaAccess,
    sequence: i64,
    cmd: CmdKafkaListOffset,
) -> PubSubResp {
    let answer = list_offset_inner(access, &cmd).await;
    forget_if_gone(access, &cmd.topic, cmd.partition, &answer);
    match answer {
        Ok(offset) => PubSubResp {
            sequence,
            resp: Some(Resp::KafkaListOffsetResp(KafkaListOffsetResp { offset })),
        },
        Err(f) => failed(
            access,
            sequence,
            "list offset",
            &cmd.topic,
            Some(cmd.partition),
            f,
        ),
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
    forget_if_gone(access, &cmd.topic, cmd.partition, &answer);
    let failure = match answer {
        Ok(Found {
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
                return match hold(access, sequence, size + ENVELOPE_BYTES) {
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
    let answer = failed(
        access,
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

/// The error answer for a failed command on `topic`/`partition`, in APISIX's wording.
pub(super) fn failed(
    access: &KafkaAccess,
    sequence: i64,
    what: &str,
    topic: &str,
    partition: Option<i32>,
    f: KafkaFailure,
) -> PubSubResp {
    // Broker addresses are the operator's business: a caller nobody authenticated is not told
    // where the brokers are (the gateway's log is).
    let reason = if access.consumer.is_none() {
        let scrubbed = without_addresses(&f.reason);
        if scrubbed != f.reason {
            tracing::debug!(route = %access.target.route_id, reason = %f.reason, "Kafka failure (addresses left out of the answer)");
        }
        scrubbed
    } else {
        f.reason
    };
    let message = match partition {
        Some(partition) => {
            format!("failed to {what}, topic: {topic}, partition: {partition}, err: {reason}")
        }
        None => format!("failed to {what}, topic: {topic}, err: {reason}"),
    };
    PubSubResp::error(sequence, f.code, message)
}

/// `text` with every `host:port` (and `[v6]:port`) written as `<broker>`.
fn without_addresses(text: &str) -> String {
    let is_host =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':');
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !is_host(chars[i]) {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // A run of host-like characters: an address when it ends in `:digits` after a host
        // with a letter, digit or bracket before the colon.
        let start = i;
        while i < chars.len() && is_host(chars[i]) {
            i += 1;
        }
        let whole: String = chars[start..i].iter().collect();
        // A sentence's full stop is not part of the address.
        let token = whole.trim_end_matches('.');
        let stop = &whole[token.len()..];
        let address = token.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !port.is_empty()
                && port.len() <= 5
                && port.chars().all(|c| c.is_ascii_digit())
                && host
                    .chars()
                    .any(|c| c.is_ascii_alphabetic() || c == '.' || c == '[')
        });
        out.push_str(if address { "<broker>" } else { token });
        out.push_str(stop);
    }
    out
}

/// A topic or partition the broker says does not exist is not asked for again by name.
pub(super) fn forget_if_gone<T>(
    access: &KafkaAccess,
    topic: &str,
    partition: i32,
    answer: &Result<T, KafkaFailure>,
) {
    if matches!(answer, Err(f) if f.code == ErrorCode::NotFound) {
        access
            .pool
            .forget(&access.target.identity, topic, partition);
    }
}

/// Why `topic` is not a name Kafka accepts (1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`),
/// if it is not. Checked before anything reaches the broker.
pub(super) fn invalid_topic(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("topic is empty")
    } else if topic.len() > 249 {
        Some("invalid topic name: longer than 249 characters")
    } else if topic == "." || topic == ".." {
        Some("invalid topic name: `.` and `..` are not topics")
    } else if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("invalid topic name: use only letters, digits, `.`, `_` and `-`")
    } else {
        None
    }
}

fn check_target(access: &KafkaAccess, topic: &str, partition: i32) -> Result<(), KafkaFailure> {
    if let Some(why) = invalid_topic(topic) {
        return Err(KafkaFailure::new(ErrorCode::BadRequest, why));
    }
    if let Some(why) = access.refusal(topic) {
        return Err(KafkaFailure::new(ErrorCode::Forbidden, why));
    }
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
    offset_at(&reader, at, timeout).await
}

/// Kafka's answer to "which offset is at `at`" for one partition, checked: -1 for a time later
/// than every record, even from a broker that answers an older record's offset.
pub(super) async fn offset_at(
    reader: &std::sync::Arc<super::reader::PartitionReader>,
    at: OffsetAt,
    timeout: Duration,
) -> Result<i64, KafkaFailure> {
    let started = std::time::Instant::now();
    let offset = kafka_call(timeout, reader.client().get_offset(at)).await;
    crate::metrics::metrics().kafka_call("list_offsets", started.elapsed());
    let offset = offset?;
    let OffsetAt::Timestamp(time) = at else {
        return Ok(offset);
    };
    if offset < 0 {
        return Ok(offset);
    }
    let wanted = time.timestamp_millis();
    // Kafka answers -1 when no record is that late; some brokers answer an offset whose record
    // is older than asked. Read the records there and check.
    let fetched = reader.fetch_now(offset, 64 * 1024, timeout).await?;
    let records = &fetched.messages;
    let first_late_enough = records
        .iter()
        .find(|m| m.offset >= offset && m.timestamp >= wanted);
    Ok(match first_late_enough {
        Some(m) => m.offset,
        None if records
            .last()
            .is_none_or(|m| m.offset.saturating_add(1) >= fetched.end) =>
        {
            -1
        }
        None => offset,
    })
}

pub(super) fn invalid_timestamp(ms: i64) -> KafkaFailure {
    KafkaFailure::new(
        ErrorCode::BadRequest,
        format!("invalid timestamp {ms}: use -1 (latest), -2 (earliest) or milliseconds since the epoch"),
    )
}

async fn kafka_call<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, rskafka::client::error::Error>>,
) -> Result<T, KafkaFailure> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| KafkaFailure::from_kafka(&e)),
        Err(_) => Err(KafkaFailure::timeout(timeout)),
    }
}

fn out_of_range() -> KafkaFailure {
    KafkaFailure::new(ErrorCode::KafkaError, "OFFSET_OUT_OF_RANGE")
}

/// What a fetch command found: records from `from` on, the partition's reader and the byte
/// budget they were fetched with.
struct Found {
    fetched: Arc<Fetched>,
    from: i64,
    reader: Arc<PartitionReader>,
    max_bytes: i32,
}

async fn fetch_inner(access: &KafkaAccess, cmd: &CmdKafkaFetch) -> Result<Found, KafkaFailure> {
    check_target(access, &cmd.topic, cmd.partition)?;
    let s = &access.target.settings;
    if cmd.offset < 0 {
        return Err(out_of_range());
    }
    let frame_budget = s.max_frame_bytes.saturating_sub(ENVELOPE_BYTES);
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
    // With a row filter, records the caller may not see are skipped: read on past them (waiting
    // at the end of the log as usual) until some pass, the readable end is reached or the wait
    // is over. The answer then has offset gaps.
    let mut from = cmd.offset;
    let mut filtered = 0u64;
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
        let more = fetched.next > from && tokio::time::Instant::now() < deadline;
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
        return Err(out_of_range());
    }
    Ok(Found {
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
) -> Result<(Vec<Picked<'a>>, usize), KafkaFailure> {
    let max_frame_bytes = access.target.settings.max_frame_bytes;
    let frame_budget = max_frame_bytes.saturating_sub(ENVELOPE_BYTES);
    let row_filter = access.row_filter.as_deref();
    let records = fetched
        .messages
        .iter()
        .filter(|m| m.offset >= from && row_filter.is_none_or(|f| f.passes(m)));
    let mut picked = Vec::with_capacity(fetched.messages.len());
    let mut used = 0usize;
    for message in records {
        let record = Picked::new(message);
        let framed = record.framed_len();
        if used + framed > frame_budget {
            if picked.is_empty() {
                return Err(KafkaFailure::new(
                    ErrorCode::TooLarge,
                    format!(
                        "record at offset {} needs {} bytes, more than this route's max_frame_bytes of {max_frame_bytes}",
                        message.offset,
                        framed + ENVELOPE_BYTES,
                    ),
                ));
            }
            break;
        }
        used += framed;
        picked.push(record);
    }
    Ok((picked, used))
}

#[cfg(test)]
mod tests {
    use super::without_addresses;

    #[test]
    fn addresses_are_left_out() {
        assert_eq!(
            without_addresses("Connection error: error connecting to broker \"127.0.0.1:9092\": Connection refused (os error 111)"),
            "Connection error: error connecting to broker \"<broker>\": Connection refused (os error 111)"
        );
        assert_eq!(
            without_addresses("kafka-1.internal:9093 and [::1]:9092, then b-2.example.com:19092."),
            "<broker> and <broker>, then <broker>."
        );
        assert_eq!(
            without_addresses("OFFSET_OUT_OF_RANGE"),
            "OFFSET_OUT_OF_RANGE"
        );
        assert_eq!(
            without_addresses("no answer within 2000 ms: at 12:30"),
            "no answer within 2000 ms: at 12:30"
        );
    }
}
