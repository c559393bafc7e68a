//! One pub/sub connection: the command loop.
//!
//! Frames are read in one task. A ping is answered at once; Kafka commands run as tasks of their
//! own (at most `max_in_flight` at a time), so a ping never waits behind a slow fetch, and each
//! answer carries its request's sequence. A command task's result is its answer, collected by the
//! loop as tasks finish.
//!
//! Push subscriptions (modes/push.rs) are tasks too; their frames come through one small channel
//! per session, read after client frames, so a ping is answered before the next push. The loop
//! grants credit (no answer), ends subscriptions (the answer carries the cursor of the last push
//! actually written; anything not yet written is dropped), and ends those a reload no longer
//! allows, each with one error under its sequence.
//!
//! Limits (the route's `kafka-proxy` settings): frames beyond `max_commands_per_second` are
//! answered LIMIT_EXCEEDED; a client silent for `idle_timeout` (the gateway pings it halfway)
//! is closed; so is a session older than `max_session` (1001, reconnect). A client that does not
//! read: while an answer waits to be written the loop reads no more commands, at most
//! `max_in_flight` answers wait behind it, and after `send_timeout` the connection is dropped.

use crate::pubsub::ending::{self, Ending, Endings, Outside, Seen};
use crate::pubsub::modes::group::{self, CommitAsk};
use crate::pubsub::modes::pull::{self, Reply};
use crate::pubsub::modes::push::{self, Granted, Outgoing, Written};
use crate::pubsub::target::{KafkaAccess, KafkaTarget, RecordMatcher};
use crate::pubsub::wire::{self, WireFrame};
use crate::rate::TokenBucket;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use streamgate_protocol::{
    pub_sub_req::Req, pub_sub_resp::Resp, CmdKafkaCommit, CmdKafkaCredit, CmdKafkaSubscribe,
    CmdKafkaUnsubscribe, ErrorCode, KafkaUnsubscribeResp, PongResp, PubSubReq, PubSubResp,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// How long a closing session waits for the client's close reply.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// WebSocket buffers sized for small command frames: an idle session costs a few KiB. The read
/// buffer is written in full before each read (tungstenite zero-fills it), so its size is
/// resident per session; clients send commands of tens of bytes, and a larger frame gets room
/// for its declared length anyway. 1 KiB instead of 4 took an idle session from 10.5 to 7.5 KiB
/// (BENCHMARKS.md, "Per request").
pub(crate) fn websocket_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max_frame_bytes.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Frames from a session's subscriptions waiting to be written, at most (each subscription
/// waits for room: what a slow client holds back stays in Kafka). Frames travel boxed: a
/// channel's slots are allocated 32 at a time, whatever its capacity.
const PUSH_QUEUE: usize = 4;

/// A push subscription as its session sees it.
struct Subscribed {
    /// The session's own number for it: frames from an ended one are told apart from those of a
    /// new subscription under the same sequence.
    key: u64,
    topic: String,
    grants: watch::Sender<Granted>,
    byte_bound: bool,
    /// The resume point after the last frame written to the client.
    cursor: String,
    task: AbortHandle,
    /// The row filter the subscription's task applies (a reload that changes it ends it).
    row_filter: Option<Arc<RecordMatcher>>,
    /// The route's Kafka side the task reads through (a reload that moves the route to another
    /// cluster or other credentials ends it).
    target: Arc<KafkaTarget>,
    /// Its subscribe has been answered (the first frame written).
    answered: bool,
    /// A group subscription's commits go to its task through this.
    commits: Option<mpsc::Sender<CommitAsk>>,
}

/// The push subscriptions of one session.
struct Subscriptions {
    by_sequence: HashMap<i64, Subscribed>,
    tasks: JoinSet<()>,
    /// Made with the first subscription: a channel's buffer would cost every session that
    /// never subscribes a few KiB.
    sender: Option<mpsc::Sender<Box<Outgoing>>>,
    /// The receiving end of a channel just made, for the session loop to take.
    made: Option<mpsc::Receiver<Box<Outgoing>>>,
    /// The answer owed to a subscribe that was unsubscribed before it was answered: written
    /// before the unsubscribe's own answer, so every request gets its one answer.
    owed: Option<PubSubResp>,
    next_key: u64,
}

impl Subscriptions {
    fn end(&mut self, sequence: i64) -> Option<Subscribed> {
        let ended = self.by_sequence.remove(&sequence)?;
        ended.task.abort();
        Some(ended)
    }
}

/// Runs a session until the client leaves, the gateway shuts down, or the session may no
/// longer run.
pub(crate) async fn run<S>(mut ws: WebSocketStream<S>, mut access: KafkaAccess, endings: Endings)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = crate::metrics::metrics();
    // The session's own limits stay those it started with; allow-lists and credentials follow
    // reloads (`access` is replaced on each re-check).
    let target = Arc::clone(&access.target);
    let settings = &target.settings;
    // The topics this session read, re-checked when the configuration changes.
    let mut topics_read: HashSet<String> = HashSet::new();
    let mut outside = Outside::new(endings, settings.max_session);
    let mut tasks: JoinSet<Reply> = JoinSet::new();
    let mut pushes: Option<mpsc::Receiver<Box<Outgoing>>> = None;
    let mut subs = Subscriptions {
        by_sequence: HashMap::new(),
        tasks: JoinSet::new(),
        sender: None,
        made: None,
        owed: None,
        next_key: 0,
    };
    let mut rate = CommandRate::new(settings.max_commands_per_second);
    let mut last_heard = Instant::now();
    let mut pinged = false;
    // Checked four times per timeout: the ping goes out between half and three quarters of it,
    // leaving the client a quarter to answer.
    let mut idle_check = tokio::time::interval(settings.idle_timeout / 4);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle_check.reset();
    let (close, why): (Option<(CloseCode, Cow<'static, str>)>, Ended) = loop {
        tokio::select! {
            biased;
            seen = outside.next(&access, &topics_read) => match seen {
                Seen::Renewed(renewed) => {
                    access = renewed;
                    if let Err(why) = end_refused(&mut ws, &access, &mut subs, settings.send_timeout).await {
                        break (None, why);
                    }
                }
                Seen::Ended(ending) => {
                    if let Ending::Revoked(why) = &ending {
                        tracing::info!(route = %target.route_id, why, "a reload revoked a pub/sub session");
                    }
                    // Refusals are policy closes; the others ask the client to come back.
                    let code = if ending.is_refusal() { CloseCode::Policy } else { CloseCode::Away };
                    break (Some((code, ending.reason().to_string().into())), Ended::Outside(ending));
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => match joined {
                Ok((frame, hold)) => {
                    let sent = write_bounded(&mut ws, &frame, settings.send_timeout).await;
                    drop(hold);
                    if let Err(why) = sent {
                        break (None, why);
                    }
                }
                Err(e) => {
                    tracing::error!(route = %target.route_id, error = %e, "a pub/sub command task failed");
                }
            },
            _ = idle_check.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    break (Some((CloseCode::Away, "idle timeout: no frame or pong".into())), Ended::Idle);
                }
                if !pinged && last_heard.elapsed() >= settings.idle_timeout / 2 {
                    pinged = true;
                    let ping = ws.send(Message::Ping(bytes::Bytes::new()));
                    match tokio::time::timeout(settings.send_timeout, ping).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break (None, Ended::Client),
                        Err(_) => break (None, Ended::SlowReader),
                    }
                }
            }
            frame = ws.next() => {
                last_heard = Instant::now();
                pinged = false;
                match frame {
                    None => break (None, Ended::Client),
                    Some(Err(WsError::Capacity(e))) => {
                        tracing::debug!(route = %target.route_id, error = %e, "frame over the route's limit");
                        break (Some((CloseCode::Size, "frame larger than this route's max_frame_bytes".into())), Ended::FrameTooLarge);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(route = %target.route_id, error = %e, "websocket read failed");
                        break (None, Ended::Client);
                    }
                    Some(Ok(Message::Binary(data))) => {
                        let decoded = PubSubReq::decode(data);
                        // A ping is answered whatever the client spent: a pong never waits behind
                        // (or is refused for) anything the client started, and answering it costs
                        // what a refusal would.
                        let is_ping = matches!(&decoded, Ok(PubSubReq { req: Some(Req::CmdPing(_)), .. }));
                        let immediate = if !is_ping && !rate.allow() {
                            metrics.limited.with_label_values(&["commands_per_second"]).inc();
                            let sequence = decoded.as_ref().map_or(0, |r| r.sequence);
                            Some(rate_limited(sequence, settings.max_commands_per_second))
                        } else {
                            match decoded {
                                Err(_) => {
                                    let answer = PubSubResp::error(0, ErrorCode::BadRequest, "wrong command");
                                    metrics.command(&target.route_id, "undecodable", &answer);
                                    Some(answer)
                                }
                                Ok(req) => match req.req {
                                    Some(Req::CmdKafkaSubscribe(_) | Req::CmdKafkaCredit(_) | Req::CmdKafkaUnsubscribe(_) | Req::CmdKafkaCommit(_)) => {
                                        if let Some(Req::CmdKafkaUnsubscribe(u)) = &req.req {
                                            // A refusal already queued is the subscribe's answer.
                                            if let Err(why) = write_queued_answer(&mut ws, &mut subs, pushes.as_mut(), u.subscription, settings.send_timeout).await {
                                                break (None, why);
                                            }
                                        }
                                        let answer = dispatch_push(req, &access, &mut subs);
                                        if let Some(made) = subs.made.take() {
                                            pushes = Some(made);
                                        }
                                        if let Some(owed) = subs.owed.take() {
                                            if let Err(why) = send_bounded(&mut ws, &owed, settings.send_timeout).await {
                                                break (None, why);
                                            }
                                        }
                                        answer
                                    }
                                    _ => dispatch(req, &access, &mut tasks, &mut topics_read),
                                },
                            }
                        };
                        if let Some(answer) = immediate {
                            if let Err(why) = send_bounded(&mut ws, &answer, settings.send_timeout).await {
                                break (None, why);
                            }
                        }
                    }
                    // Pings are answered and close frames echoed by tungstenite; flush those
                    // replies now rather than with the next answer.
                    Some(Ok(Message::Ping(_) | Message::Close(_))) => {
                        if ws.flush().await.is_err() {
                            break (None, Ended::Client);
                        }
                    }
                    // Text frames carry no command (as in APISIX): ignored. Pongs only count
                    // as signs of life.
                    Some(Ok(_)) => {}
                }
            }
            Some(out) = async { pushes.as_mut()?.recv().await }, if pushes.is_some() => {
                if let Err(why) = deliver(&mut ws, &mut subs, *out, settings.send_timeout).await {
                    break (None, why);
                }
            }
            Some(_) = subs.tasks.join_next(), if !subs.tasks.is_empty() => {}
        }
    };
    tasks.abort_all();
    subs.tasks.abort_all();
    metrics
        .pubsub_sessions_closed
        .with_label_values(&[why.label()])
        .inc();
    if matches!(why, Ended::SlowReader) {
        tracing::info!(route = %target.route_id, "closed a pub/sub session whose client did not read its answers");
    }
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: close_reason(reason).into(),
        };
        // Bounded: a client that reads nothing must not keep the session (and its slots) alive.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            if ws.close(Some(frame)).await.is_ok() {
                // Wait for the client's close reply, reading (and dropping) what comes.
                while ws.next().await.is_some() {}
            }
        })
        .await;
    }
}

/// Writes one frame of a subscription, unless the subscription ended meanwhile (then it is
/// dropped unwritten), and keeps the subscription's state: answered, its cursor, ended.
async fn deliver<S>(
    ws: &mut WebSocketStream<S>,
    subs: &mut Subscriptions,
    out: Outgoing,
    limit: Duration,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Outgoing {
        key,
        subscription: sequence,
        frame,
        ends,
        hold,
        written,
    } = out;
    if subs.by_sequence.get(&sequence).is_none_or(|s| s.key != key) {
        return Ok(());
    }
    let sent = send_bounded(ws, &frame, limit).await;
    drop(hold);
    sent?;
    if let Some(written) = written {
        let cursor = match &frame.resp {
            Some(Resp::KafkaRecordsPush(push)) => Some(push.cursor.as_str()),
            _ => None,
        };
        written.wrote(cursor);
    }
    if ends {
        subs.end(sequence);
    } else if let Some(sub) = subs.by_sequence.get_mut(&sequence) {
        sub.answered = true;
        // The frame is written: its cursor is where a resume starts now.
        match frame.resp {
            Some(Resp::KafkaRecordsPush(push)) => sub.cursor = push.cursor,
            Some(Resp::KafkaSubscribeResp(started)) => sub.cursor = started.cursor,
            _ => {}
        }
    }
    Ok(())
}

/// Before an unsubscribe of `subscription` is handled: when its subscribe is not answered yet
/// but its task has ended, the answer (a refusal such as NOT_FOUND or FORBIDDEN) is waiting in
/// the queue. It is written now, with every frame queued before it, so the subscribe keeps its
/// real answer and the unsubscribe then names a subscription that no longer exists.
async fn write_queued_answer<S>(
    ws: &mut WebSocketStream<S>,
    subs: &mut Subscriptions,
    pushes: Option<&mut mpsc::Receiver<Box<Outgoing>>>,
    subscription: i64,
    limit: Duration,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(key) = subs
        .by_sequence
        .get(&subscription)
        .filter(|s| !s.answered && s.task.is_finished())
        .map(|s| s.key)
    else {
        return Ok(());
    };
    let Some(pushes) = pushes else {
        return Ok(());
    };
    while let Ok(out) = pushes.try_recv() {
        let its_answer = out.subscription == subscription && out.key == key;
        deliver(ws, subs, *out, limit).await?;
        if its_answer {
            break;
        }
    }
    Ok(())
}

/// Why a session ended; its label in `streamgate_pubsub_sessions_closed_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// The client closed the connection, or writing to it failed.
    Client,
    /// The client took nothing for `send_timeout`.
    SlowReader,
    /// Something outside the session ended it: shutdown, a reload, expiry, lifetime.
    Outside(Ending),
    /// Nothing heard for `idle_timeout` (Close 1001).
    Idle,
    /// A frame over `max_frame_bytes` (Close 1009).
    FrameTooLarge,
}

impl Ended {
    fn label(&self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::SlowReader => "slow_reader",
            Self::Outside(ending) => ending.label(),
            Self::Idle => "idle",
            Self::FrameTooLarge => "frame_too_large",
        }
    }
}

/// A close frame carries at most 123 bytes of reason (RFC 6455 §5.5): longer ones are cut at a
/// character boundary.
fn close_reason(reason: Cow<'static, str>) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// Handles one request: returns an answer to send now, or starts a Kafka command task.
fn dispatch(
    req: PubSubReq,
    access: &KafkaAccess,
    tasks: &mut JoinSet<Reply>,
    topics_read: &mut HashSet<String>,
) -> Option<PubSubResp> {
    let sequence = req.sequence;
    let metrics = crate::metrics::metrics();
    let cmd = match req.req {
        None | Some(Req::CmdEmpty(_)) => {
            let answer = PubSubResp::error(sequence, ErrorCode::BadRequest, "unknown command");
            metrics.command(&access.target.route_id, "unknown", &answer);
            return Some(answer);
        }
        Some(Req::CmdPing(ping)) => {
            let answer = PubSubResp {
                sequence,
                resp: Some(Resp::PongResp(PongResp { state: ping.state })),
            };
            metrics.command(&access.target.route_id, "ping", &answer);
            return Some(answer);
        }
        Some(cmd) => cmd,
    };
    let (kind, topic) = match &cmd {
        Req::CmdKafkaListOffset(c) => ("list_offset", c.topic.as_str()),
        Req::CmdKafkaFetch(c) => ("fetch", c.topic.as_str()),
        // Subscriptions are dispatched by `dispatch_push`.
        _ => ("unknown", ""),
    };
    // Remembered for re-checks after a reload: only topics it may read now (a refused one
    // gets its FORBIDDEN answer and nothing more).
    if !topic.is_empty() && !topics_read.contains(topic) && access.refusal(topic).is_none() {
        topics_read.insert(topic.to_string());
    }
    if tasks.len() >= access.target.settings.max_in_flight {
        metrics.limited.with_label_values(&["in_flight"]).inc();
        metrics.command(
            &access.target.route_id,
            kind,
            &PubSubResp::error(sequence, ErrorCode::LimitExceeded, ""),
        );
        return Some(PubSubResp::error(
            sequence,
            ErrorCode::LimitExceeded,
            format!(
                "too many commands in flight on this connection (limit {}): wait for an answer before sending more",
                access.target.settings.max_in_flight
            ),
        ));
    }
    let access = access.clone();
    tasks.spawn(async move {
        match cmd {
            Req::CmdKafkaListOffset(c) => {
                let answer = pull::list_offset(&access, sequence, c).await;
                pull::reply(&access, kind, answer)
            }
            Req::CmdKafkaFetch(c) => pull::fetch(&access, sequence, c).await,
            // Answered inline above or by `dispatch_push`; never spawned.
            _ => {
                let answer =
                    PubSubResp::error(sequence, ErrorCode::Internal, "command dispatched twice");
                pull::reply(&access, kind, answer)
            }
        }
    });
    None
}

/// Handles a subscribe, credit or unsubscribe: returns an answer to send now, or starts a
/// subscription.
fn dispatch_push(
    req: PubSubReq,
    access: &KafkaAccess,
    subs: &mut Subscriptions,
) -> Option<PubSubResp> {
    let sequence = req.sequence;
    let route = &*access.target.route_id;
    let metrics = crate::metrics::metrics();
    match req.req {
        Some(Req::CmdKafkaSubscribe(cmd)) => {
            let refusal = subscribe(sequence, cmd, access, subs);
            if let Some(answer) = &refusal {
                metrics.command(route, "subscribe", answer);
            }
            refusal
        }
        Some(Req::CmdKafkaCredit(CmdKafkaCredit {
            subscription,
            records,
            bytes,
        })) => {
            let Some(sub) = subs.by_sequence.get(&subscription) else {
                let answer = PubSubResp::error(
                    sequence,
                    ErrorCode::BadRequest,
                    format!("no subscription {subscription} on this connection (credit names the subscribe's sequence)"),
                );
                metrics.command(route, "credit", &answer);
                return Some(answer);
            };
            let byte_bound = sub.byte_bound;
            sub.grants.send_modify(|g| {
                g.records = g.records.saturating_add(records.into());
                if byte_bound {
                    g.bytes = g.bytes.saturating_add(bytes);
                }
            });
            metrics.command(route, "credit", &PubSubResp::default());
            None
        }
        Some(Req::CmdKafkaCommit(CmdKafkaCommit {
            subscription,
            cursor,
        })) => {
            let refusal = match subs.by_sequence.get(&subscription) {
                None => Some((ErrorCode::BadRequest, format!("no subscription {subscription} on this connection (commit names the subscribe's sequence)"))),
                Some(Subscribed { commits: None, .. }) => Some((ErrorCode::BadRequest, format!("subscription {subscription} has no group: only group subscriptions commit"))),
                Some(Subscribed { commits: Some(commits), .. }) => match commits.try_send(CommitAsk { sequence, cursor }) {
                    Ok(()) => None,
                    Err(_) => Some((ErrorCode::LimitExceeded, format!("subscription {subscription} has {} commits waiting: wait for their answers", group::COMMIT_QUEUE))),
                },
            };
            let answer = refusal.map(|(code, why)| PubSubResp::error(sequence, code, why));
            if let Some(answer) = &answer {
                metrics.command(route, "commit", answer);
            }
            answer
        }
        Some(Req::CmdKafkaUnsubscribe(CmdKafkaUnsubscribe { subscription })) => {
            let answer = match subs.end(subscription) {
                Some(ended) => {
                    if !ended.answered {
                        subs.owed = Some(PubSubResp::error(
                            subscription,
                            ErrorCode::BadRequest,
                            "unsubscribed before the subscription started",
                        ));
                    }
                    PubSubResp {
                        sequence,
                        resp: Some(Resp::KafkaUnsubscribeResp(KafkaUnsubscribeResp {
                            cursor: ended.cursor,
                        })),
                    }
                }
                None => PubSubResp::error(
                    sequence,
                    ErrorCode::BadRequest,
                    format!("no subscription {subscription} on this connection"),
                ),
            };
            metrics.command(route, "unsubscribe", &answer);
            Some(answer)
        }
        _ => Some(PubSubResp::error(
            sequence,
            ErrorCode::Internal,
            "not a subscription command",
        )),
    }
}

/// Starts a subscription under `sequence`, or says why not.
fn subscribe(
    sequence: i64,
    cmd: CmdKafkaSubscribe,
    access: &KafkaAccess,
    subs: &mut Subscriptions,
) -> Option<PubSubResp> {
    let limit = access.target.settings.max_subscriptions;
    if let Some(why) = push::over_limits(&cmd) {
        return Some(PubSubResp::error(sequence, ErrorCode::BadRequest, why));
    }
    if subs.by_sequence.contains_key(&sequence) {
        return Some(PubSubResp::error(
            sequence,
            ErrorCode::BadRequest,
            format!("sequence {sequence} already names an open subscription: use a new sequence"),
        ));
    }
    if subs.by_sequence.len() >= limit {
        crate::metrics::metrics()
            .limited
            .with_label_values(&["subscriptions"])
            .inc();
        return Some(PubSubResp::error(
            sequence,
            ErrorCode::LimitExceeded,
            format!("this connection holds its maximum of subscriptions (max_subscriptions = {limit}): unsubscribe one first"),
        ));
    }
    let granted = Granted {
        records: cmd.credit_records.into(),
        bytes: cmd.credit_bytes,
    };
    let (grants, receiver) = watch::channel(granted);
    let key = subs.next_key;
    subs.next_key += 1;
    let topic = cmd.topic.clone();
    let byte_bound = cmd.credit_bytes > 0;
    let sender = match &subs.sender {
        Some(sender) => sender.clone(),
        None => {
            let (sender, receiver) = mpsc::channel(PUSH_QUEUE);
            subs.sender = Some(sender.clone());
            subs.made = Some(receiver);
            sender
        }
    };
    let (task, commits) = if cmd.group.is_empty() {
        let task = subs.tasks.spawn(push::run(
            access.clone(),
            key,
            sequence,
            cmd,
            receiver,
            sender,
        ));
        (task, None)
    } else {
        let group_id = match group::group_id(access, &cmd) {
            Ok(id) => id,
            Err(f) => return Some(access.failed(sequence, "subscribe", &topic, None, f)),
        };
        let (commits, asks) = mpsc::channel(group::COMMIT_QUEUE);
        let task = subs.tasks.spawn(group::run(
            access.clone(),
            key,
            sequence,
            cmd,
            group_id,
            receiver,
            sender,
            asks,
            Arc::new(Written::default()),
        ));
        (task, Some(commits))
    };
    subs.by_sequence.insert(
        sequence,
        Subscribed {
            key,
            topic,
            grants,
            byte_bound,
            cursor: String::new(),
            task,
            row_filter: access.row_filter.clone(),
            target: Arc::clone(&access.target),
            answered: false,
            commits,
        },
    );
    None
}

/// Ends, each with a FORBIDDEN error under its sequence, the subscriptions whose topic `access`
/// (just renewed by a reload) no longer allows, or whose row filter it changed.
async fn end_refused<S>(
    ws: &mut WebSocketStream<S>,
    access: &KafkaAccess,
    subs: &mut Subscriptions,
    limit: Duration,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The topic no longer allowed, or the caller's row filter or the route's Kafka identity
    // changed (the task reads with the ones it started with): the subscription ends and the
    // client subscribes again.
    let refused: Vec<(i64, String, &'static str)> = subs
        .by_sequence
        .iter()
        .filter_map(|(seq, sub)| {
            let why = access
                .refusal(&sub.topic)
                .or_else(|| ending::reads_differently(&sub.row_filter, &sub.target, access))?;
            Some((*seq, sub.topic.clone(), why))
        })
        .collect();
    for (sequence, topic, why) in refused {
        subs.end(sequence);
        let answer = PubSubResp::error(
            sequence,
            ErrorCode::Forbidden,
            format!(
                "subscription ended, topic: {topic}, err: {why} (after a configuration reload)"
            ),
        );
        send_bounded(ws, &answer, limit).await?;
    }
    Ok(())
}

/// A session's frame rate: `per_second` sustained, as many at once; 0 means no limit.
#[derive(Debug)]
struct CommandRate {
    per_second: f64,
    bucket: TokenBucket,
}

impl CommandRate {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        Self {
            per_second,
            bucket: TokenBucket::full(per_second, std::time::Instant::now()),
        }
    }

    /// Takes a token if there is one.
    fn allow(&mut self) -> bool {
        self.per_second <= 0.0
            || self
                .bucket
                .take(self.per_second, self.per_second, std::time::Instant::now())
                .is_ok()
    }
}

/// The LIMIT_EXCEEDED answer to a frame over the command rate, under the frame's sequence (0
/// when it does not decode).
fn rate_limited(sequence: i64, limit: u32) -> PubSubResp {
    PubSubResp::error(
        sequence,
        ErrorCode::LimitExceeded,
        format!("too many commands per second on this connection (limit {limit}/s): slow down"),
    )
}

/// Sends an answer within `limit`; a client that does not read is given up on.
async fn send_bounded<S>(
    ws: &mut WebSocketStream<S>,
    answer: &PubSubResp,
    limit: Duration,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write_bounded(ws, &WireFrame::answer(answer), limit).await
}

/// Writes an encoded answer within `limit`; a client that does not read is given up on.
async fn write_bounded<S>(
    ws: &mut WebSocketStream<S>,
    frame: &WireFrame,
    limit: Duration,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut write = std::pin::pin!(wire::write(ws, frame));
    // Most writes finish at once (the socket has room): those need no timer. 100,000 filtered
    // subscribers take 200,000 pushes a second, and a timer each showed in their profile.
    if let std::task::Poll::Ready(written) = futures_util::poll!(write.as_mut()) {
        return written.map_err(|_| Ended::Client);
    }
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::Client),
        Err(_) => Err(Ended::SlowReader),
    }
}
