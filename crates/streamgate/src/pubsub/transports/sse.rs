//! Server-Sent Events on a pub/sub route: the same push subscription as the WebSocket's, written
//! as `text/event-stream` for clients that have only `EventSource` or `curl`.
//!
//! `GET /route?topic=T` with `Accept: text/event-stream` (or `?sse=1`). The query says what to
//! read (`partitions=0,2`, `from=earliest|latest|@MILLIS|0:15,1:7`, `key` (repeatable),
//! `key_prefix`, `header.NAME=VALUE`); a `Last-Event-ID` header (what `EventSource` sends when it
//! reconnects) resumes exactly after that event, since every event id is a resume cursor.
//!
//! The subscription starts before the answer: a refusal is the usual JSON answer with its status
//! (400, 403, 404, ...). Then a 200 `text/event-stream` (chunked on HTTP/1.1), and the response
//! leaves Pingora like a WebSocket after its 101 (on HTTP/2 the request's stream does, the connection
//! stays multiplexed): a task renders the subscription's pushes as events, and ends when the client
//! closes its connection or resets its stream.
//! Flow control is TCP's: credit is granted back as events are written, and a reader that takes
//! nothing for `send_timeout_ms` is disconnected (it resumes with its last id).

use crate::ctx::RequestCtx;
use crate::detach::ResponseBody;
use crate::pubsub::ending::{self, Ending, Endings, Outside, Seen};
use crate::pubsub::modes::cursor;
use crate::pubsub::modes::group;
use crate::pubsub::modes::push::{self, Granted, Outgoing, Written};
use crate::pubsub::target::KafkaAccess;
use crate::respond::{self, Answer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::time::Duration;
use streamgate_protocol::{
    cmd_kafka_subscribe::{CommitMode, StartFrom},
    pub_sub_resp::Resp,
    CmdKafkaSubscribe, ErrorCode, KafkaHeader, KafkaMessage, KafkaRecordsPush, PartitionOffset,
    RecordFilter,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Records an event stream may have pushed ahead of what it has written.
const CREDIT_WINDOW: u32 = 512;

/// A comment this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Whether the request asks for an event stream rather than a WebSocket.
pub(crate) fn wanted(req: &RequestHeader) -> bool {
    let accepts = req
        .headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    let asked = req
        .uri
        .query()
        .and_then(|q| crate::request::query_param(q, "sse"))
        .is_some_and(|v| v == "1" || v == "true");
    accepts || asked
}

/// The subscription a request's query (and `Last-Event-ID`) asks for, or why it is malformed.
pub(crate) fn subscribe_command(req: &RequestHeader) -> Result<CmdKafkaSubscribe, String> {
    let mut cmd = CmdKafkaSubscribe {
        credit_records: CREDIT_WINDOW,
        ..Default::default()
    };
    let mut filter = RecordFilter::default();
    let mut from = None;
    for (name, value) in crate::request::query_params(req.uri.query().unwrap_or("")) {
        match name.as_str() {
            "topic" => cmd.topic = value,
            "partitions" => {
                for p in value.split(',').filter(|p| !p.is_empty()) {
                    cmd.partitions.push(p.trim().parse().map_err(|_| {
                        format!("partitions={value}: expected partition numbers, e.g. 0,2")
                    })?);
                }
            }
            "from" => from = Some(value),
            // A group subscription with AUTO commits: the group holds the positions.
            "group" => {
                cmd.group = value;
                cmd.commit = CommitMode::Auto as i32;
            }
            "key" => filter.keys.push(Bytes::from(value.into_bytes())),
            "key_prefix" => filter.key_prefix = Bytes::from(value.into_bytes()),
            "sse" | "apikey" | "jwt" => {}
            other => {
                if let Some(header) = other.strip_prefix("header.") {
                    filter.headers.push(KafkaHeader {
                        key: header.to_string(),
                        value: Bytes::from(value.into_bytes()),
                    });
                }
            }
        }
    }
    if cmd.topic.is_empty() {
        return Err("the query must name a topic: ?topic=NAME".into());
    }
    match from.as_deref() {
        None | Some("latest") => cmd.from = StartFrom::Latest as i32,
        Some("earliest") => cmd.from = StartFrom::Earliest as i32,
        Some(at) if at.starts_with('@') => {
            cmd.from = StartFrom::Timestamp as i32;
            cmd.timestamp_ms = at[1..]
                .parse()
                .map_err(|_| format!("from={at}: expected @MILLISECONDS since the epoch"))?;
        }
        Some(offsets) => {
            // Partitions not named start at the latest offset.
            cmd.from = StartFrom::Latest as i32;
            for pair in offsets.split(',') {
                let (p, o) = pair
                    .split_once(':')
                    .and_then(|(p, o)| Some((p.trim().parse().ok()?, o.trim().parse().ok()?)))
                    .ok_or_else(|| {
                        format!("from={offsets}: expected earliest, latest, @MILLIS or PARTITION:OFFSET pairs such as 0:15,1:7")
                    })?;
                cmd.offsets.push(PartitionOffset {
                    partition: p,
                    offset: o,
                });
            }
        }
    }
    // With a group the group holds the positions: Last-Event-ID is not a resume point then.
    if let Some(last) = req
        .headers
        .get("last-event-id")
        .filter(|_| cmd.group.is_empty())
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
    {
        cmd.cursor = last.trim().to_string();
    }
    let any = filter.keys.is_empty() && filter.key_prefix.is_empty() && filter.headers.is_empty();
    if !any {
        cmd.filter = Some(filter);
    }
    Ok(cmd)
}

/// The HTTP status for a subscription refused before the stream started.
fn status_of(code: i32) -> u16 {
    match ErrorCode::from_i32(code) {
        Some(ErrorCode::BadRequest) => 400,
        Some(ErrorCode::NotFound) => 404,
        Some(ErrorCode::Forbidden) => 403,
        Some(ErrorCode::LimitExceeded) => 429,
        Some(ErrorCode::KafkaError) => 409,
        Some(ErrorCode::Unavailable) => 503,
        _ => 502,
    }
}

/// Serves an event stream: starts the subscription, answers a refusal with its status, else
/// writes the 200 and hands the connection to a task. Always answers (`Ok(true)`).
pub(crate) async fn serve(
    session: &mut Session,
    ctx: &mut RequestCtx,
    access: KafkaAccess,
    endings: Endings,
    slots: impl Send + 'static,
) -> pingora::Result<bool> {
    let cmd = subscribe_command(session.req_header())
        .and_then(|cmd| push::over_limits(&cmd).map_or(Ok(cmd), Err));
    let cmd = match cmd {
        Ok(cmd) => cmd,
        Err(why) => {
            respond::send(session, ctx, Answer::error(400, &why)).await?;
            return Ok(true);
        }
    };
    let (grants, receiver) = watch::channel(Granted {
        records: CREDIT_WINDOW.into(),
        bytes: 0,
    });
    let (sender, mut frames) = mpsc::channel(2);
    let topic = cmd.topic.clone();
    // A group subscription's commits are the gateway's own (AUTO): the stream sends none, so the
    // sending end only has to outlive the task.
    let (commits, asks) = mpsc::channel(1);
    let task = if cmd.group.is_empty() {
        tokio::spawn(push::run(access.clone(), 0, 1, cmd, receiver, sender))
    } else {
        let group_id = match group::group_id(&access, &cmd) {
            Ok(id) => id,
            Err(f) => {
                let status = status_of(f.code as i32);
                respond::send(session, ctx, Answer::error(status, &f.reason)).await?;
                return Ok(true);
            }
        };
        let written = std::sync::Arc::new(Written::default());
        tokio::spawn(group::run(
            access.clone(),
            0,
            1,
            cmd,
            group_id,
            receiver,
            sender,
            asks,
            written,
        ))
    };
    let started = match frames.recv().await.map(|out| out.frame.resp) {
        Some(Some(Resp::KafkaSubscribeResp(started))) => started,
        Some(Some(Resp::ErrorResp(e))) => {
            task.abort();
            let status = status_of(e.code);
            respond::send(session, ctx, Answer::error(status, &e.message)).await?;
            return Ok(true);
        }
        _ => {
            task.abort();
            let answer = Answer::error(502, "the subscription ended before it started");
            respond::send(session, ctx, answer).await?;
            return Ok(true);
        }
    };
    let mut resp = ResponseHeader::build(200, Some(4 + ctx.answer_headers.len()))?;
    resp.insert_header("content-type", "text/event-stream")?;
    resp.insert_header("cache-control", "no-cache")?;
    if !session.as_downstream().is_http2() {
        // HTTP/1.1 has the writer frame the body; HTTP/2 frames it itself.
        resp.insert_header("transfer-encoding", "chunked")?;
    }
    resp.insert_header("x-accel-buffering", "no")?;
    // A page on another origin reads the stream with EventSource only when the answer names its
    // origin (CORS). `PubSub::serve` already refused origins the route does not list.
    if let Some(origin) = session
        .req_header()
        .headers
        .get(http::header::ORIGIN)
        .cloned()
    {
        resp.insert_header("access-control-allow-origin", origin)?;
        resp.insert_header("access-control-allow-credentials", "true")?;
        resp.insert_header("vary", "origin")?;
    }
    for (name, value) in &ctx.answer_headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    respond::header(session, ctx, resp, false).await?;
    let body = crate::detach::detach_response(session).await?;
    crate::metrics::metrics()
        .sse_streams_opened
        .with_label_values(&[&*access.target.route_id])
        .inc();
    let route = std::sync::Arc::clone(&access.target.route_id);
    let send_timeout = access.target.settings.send_timeout;
    let max_session = access.target.settings.max_session;
    tokio::spawn(async move {
        let writer = Writer {
            body,
            send_timeout,
            grants,
            granted: u64::from(CREDIT_WINDOW),
            outstanding: CREDIT_WINDOW,
        };
        let why = writer
            .run(
                &access,
                &topic,
                started.cursor,
                &mut frames,
                endings,
                max_session,
            )
            .await;
        task.abort();
        drop(commits);
        drop(slots);
        tracing::debug!(route = %route, why, "event stream ended");
    });
    Ok(true)
}

/// The stream could not be written: the client went away, or took nothing for the send
/// timeout.
#[derive(Debug)]
struct Unwritten;

/// Writes one event stream.
struct Writer {
    body: ResponseBody,
    send_timeout: Duration,
    grants: watch::Sender<Granted>,
    /// Records granted so far, in total.
    granted: u64,
    /// Records granted and not yet written.
    outstanding: u32,
}

impl Writer {
    /// Writes events until the subscription or the client ends; returns why it ended.
    async fn run(
        mut self,
        access: &KafkaAccess,
        topic: &str,
        first_cursor: String,
        frames: &mut mpsc::Receiver<Box<Outgoing>>,
        endings: Endings,
        max_session: Option<Duration>,
    ) -> &'static str {
        let mut outside = Outside::new(endings, max_session);
        let read = std::collections::HashSet::from([topic.to_string()]);
        // Opening comment: proxies and clients see the stream start at once. `retry` has
        // EventSource reconnect after a second (with Last-Event-ID) when the stream drops.
        // The `id` is the start's cursor: EventSource keeps it as the last event id even though
        // the block dispatches no event, so a reconnect before the first record resumes here
        // rather than at `latest`.
        let opening = format!(": streamgate event stream\nid: {first_cursor}\nretry: 1000\n\n");
        if self.write(opening.as_bytes()).await.is_err() {
            return "client";
        }
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.reset();
        loop {
            tokio::select! {
                biased;
                seen = outside.next(access, &read) => {
                    // A reload that still allows the caller and the topic but changes the
                    // records it may receive, or the cluster it reads, ends the stream too: an
                    // event stream is one subscription (see `ending`).
                    let ending = match seen {
                        Seen::Ended(ending) => ending,
                        Seen::Renewed(renewed) => {
                            match ending::reads_differently(&access.row_filter, &access.target, &renewed) {
                                Some(why) => Ending::Revoked(why.to_string()),
                                None => continue,
                            }
                        }
                    };
                    if ending.is_refusal() {
                        let _ = self.error(ErrorCode::Forbidden as i32, ending.reason()).await;
                    } else {
                        let _ = self.end().await;
                    }
                    return ending.label();
                }
                () = client_gone(&mut self.body) => return "client",
                _ = keep_alive.tick() => {
                    if self.write(b": keep-alive\n\n").await.is_err() {
                        return "slow_reader";
                    }
                }
                out = frames.recv() => {
                    let Some(out) = out else {
                        let _ = self.end().await;
                        return "ended";
                    };
                    let Outgoing { frame, ends, hold, written: mark, .. } = *out;
                    let written = match frame.resp {
                        Some(Resp::KafkaRecordsPush(push)) => {
                            let cursor = mark.is_some().then(|| push.cursor.clone());
                            let done = self.push(topic, push).await;
                            if let (Some(mark), Ok(())) = (&mark, &done) {
                                mark.wrote(cursor.as_deref());
                            }
                            done
                        }
                        Some(Resp::KafkaAssignment(a)) => {
                            let assigned: Vec<serde_json::Value> = a
                                .assigned
                                .iter()
                                .map(|s| serde_json::json!({ "partition": s.partition, "offset": s.offset }))
                                .collect();
                            let data = serde_json::json!({
                                "generation": a.generation,
                                "assigned": assigned,
                                "revoked": a.revoked,
                            });
                            self.write(format!("event: assignment\ndata: {data}\n\n").as_bytes()).await
                        }
                        Some(Resp::ErrorResp(e)) => {
                            let _ = self.error(e.code, &e.message).await;
                            return "error";
                        }
                        _ => Ok(()),
                    };
                    drop(hold);
                    if written.is_err() {
                        return "slow_reader";
                    }
                    if ends {
                        let _ = self.end().await;
                        return "ended";
                    }
                }
            }
        }
    }

    /// One push as events: a `record` per record, its id the cursor after it; a `caught_up`
    /// when its batch says so. Then the records written are granted again.
    async fn push(&mut self, topic: &str, push: KafkaRecordsPush) -> Result<(), Unwritten> {
        // The push's cursor holds every partition's position after it; each record's id is that
        // with its own partition's position just after the record.
        let mut positions = cursor::decode(&push.cursor)
            .map(|c| c.positions)
            .unwrap_or_default();
        let mut text = String::new();
        let mut written = 0u32;
        for batch in &push.batches {
            for m in &batch.messages {
                if let Some(at) = positions.iter_mut().find(|(p, _)| *p == batch.partition) {
                    at.1 = m.offset.saturating_add(1);
                }
                let id = cursor::encode(topic, positions.iter().copied());
                text.push_str("id: ");
                text.push_str(&id);
                text.push_str("\nevent: record\ndata: ");
                text.push_str(&record_json(batch.partition, m));
                text.push_str("\n\n");
                written += 1;
            }
            if batch.caught_up {
                text.push_str(&format!(
                    "id: {}\nevent: caught_up\ndata: {{\"partition\":{}}}\n\n",
                    push.cursor, batch.partition
                ));
            }
        }
        self.write(text.as_bytes()).await?;
        // TCP took them: the subscription may push as many again.
        self.outstanding = self.outstanding.saturating_sub(written);
        if 2 * self.outstanding < CREDIT_WINDOW {
            self.granted += u64::from(CREDIT_WINDOW - self.outstanding);
            self.outstanding = CREDIT_WINDOW;
            let granted = self.granted;
            self.grants.send_modify(|g| g.records = granted);
        }
        Ok(())
    }

    async fn error(&mut self, code: i32, message: &str) -> Result<(), Unwritten> {
        let data = serde_json::json!({ "code": code, "message": message });
        self.write(format!("event: error\ndata: {data}\n\n").as_bytes())
            .await?;
        self.end().await
    }

    /// The end of the body: HTTP/1.1's last chunk, HTTP/2's end of stream.
    async fn end(&mut self) -> Result<(), Unwritten> {
        match &mut self.body {
            ResponseBody::Http1(_) => {
                self.raw(b"0\r\n\r\n").await?;
                if let ResponseBody::Http1(stream) = &mut self.body {
                    let _ = stream.shutdown().await;
                }
                Ok(())
            }
            ResponseBody::Http2(h2) => {
                let end = h2.write_body(Bytes::new(), true);
                match tokio::time::timeout(self.send_timeout, end).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(Unwritten),
                }
            }
        }
    }

    /// Writes `text` (one chunk on HTTP/1.1, one DATA frame on HTTP/2), within the send timeout.
    async fn write(&mut self, text: &[u8]) -> Result<(), Unwritten> {
        if let ResponseBody::Http2(h2) = &mut self.body {
            let write = h2.write_body(Bytes::copy_from_slice(text), false);
            return match tokio::time::timeout(self.send_timeout, write).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(Unwritten),
            };
        }
        let mut chunk = Vec::with_capacity(text.len() + 12);
        chunk.extend_from_slice(format!("{:x}\r\n", text.len()).as_bytes());
        chunk.extend_from_slice(text);
        chunk.extend_from_slice(b"\r\n");
        self.raw(&chunk).await
    }

    /// Writes bytes to an HTTP/1.1 connection as they are.
    async fn raw(&mut self, bytes: &[u8]) -> Result<(), Unwritten> {
        let ResponseBody::Http1(stream) = &mut self.body else {
            return Err(Unwritten);
        };
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.send_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Unwritten),
        }
    }
}

/// Resolves when the client has gone: its HTTP/1.1 connection closed (an event-stream client
/// sends nothing after its request), or its HTTP/2 stream was reset.
async fn client_gone(body: &mut ResponseBody) {
    match body {
        ResponseBody::Http1(stream) => {
            let mut byte = [0u8; 1];
            while let Ok(n) = stream.read(&mut byte).await {
                if n == 0 {
                    return;
                }
            }
        }
        ResponseBody::Http2(h2) => {
            let _ = h2.idle().await;
        }
    }
}

/// `{"partition":P,"offset":O,"timestamp":T,"key":K,"value":V,"headers":H}`. Keys, values and
/// header values are strings when they are UTF-8, else `{"base64":"..."}`; a null key or value
/// is `null`. `H` is an object of names and values, or, when the record repeats a header name,
/// a list of `[name, value]` pairs in the record's order, so nothing is lost.
fn record_json(partition: i32, m: &KafkaMessage) -> String {
    let bytes = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(text) => serde_json::Value::from(text),
        Err(_) => serde_json::json!({ "base64": STANDARD.encode(b) }),
    };
    let nullable = |b: &[u8], null: bool| {
        if null {
            serde_json::Value::Null
        } else {
            bytes(b)
        }
    };
    let repeats = m
        .headers
        .iter()
        .enumerate()
        .any(|(i, h)| m.headers[..i].iter().any(|earlier| earlier.key == h.key));
    let headers: serde_json::Value = if repeats {
        m.headers
            .iter()
            .map(|h| serde_json::json!([h.key, bytes(&h.value)]))
            .collect::<Vec<_>>()
            .into()
    } else {
        m.headers
            .iter()
            .map(|h| (h.key.clone(), bytes(&h.value)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    serde_json::json!({
        "partition": partition,
        "offset": m.offset,
        "timestamp": m.timestamp,
        "key": nullable(&m.key, m.nulls & 1 != 0),
        "value": nullable(&m.value, m.nulls & 2 != 0),
        "headers": headers,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).expect("request");
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v).expect("header");
        }
        req
    }

    #[test]
    fn the_query_says_what_to_read() {
        let req = request(
            "/kafka?topic=orders&partitions=0,2&from=0:15,2:7&key=a&key=b&key_prefix=eu&header.kind=order",
            &[],
        );
        let cmd = subscribe_command(&req).expect("valid");
        assert_eq!(cmd.topic, "orders");
        assert_eq!(cmd.partitions, vec![0, 2]);
        assert_eq!(cmd.from, StartFrom::Latest as i32);
        assert_eq!(cmd.offsets.len(), 2);
        assert_eq!((cmd.offsets[1].partition, cmd.offsets[1].offset), (2, 7));
        let f = cmd.filter.expect("a filter");
        assert_eq!(f.keys.len(), 2);
        assert_eq!(&f.key_prefix[..], b"eu");
        assert_eq!(f.headers[0].key, "kind");

        let at = subscribe_command(&request("/k?topic=t&from=@1700000000000", &[])).expect("time");
        assert_eq!(
            (at.from, at.timestamp_ms),
            (StartFrom::Timestamp as i32, 1_700_000_000_000)
        );
        let resumed =
            subscribe_command(&request("/k?topic=t", &[("last-event-id", "abc")])).expect("id");
        assert_eq!(resumed.cursor, "abc");
        assert!(subscribe_command(&request("/k?from=earliest", &[])).is_err());
        assert!(subscribe_command(&request("/k?topic=t&from=soon", &[])).is_err());
        assert!(subscribe_command(&request("/k?topic=t&partitions=x", &[])).is_err());
    }

    #[test]
    fn an_event_stream_is_asked_for_by_accept_or_query() {
        assert!(wanted(&request(
            "/k?topic=t",
            &[("accept", "text/event-stream")]
        )));
        assert!(wanted(&request("/k?topic=t&sse=1", &[])));
        assert!(!wanted(&request("/k?topic=t", &[("accept", "*/*")])));
    }

    #[test]
    fn keys_and_values_are_text_or_base64() {
        let m = KafkaMessage {
            offset: 3,
            timestamp: 9,
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(&[0xff, 0]),
            headers: vec![],
            nulls: 0,
        };
        assert_eq!(
            record_json(1, &m),
            r#"{"headers":{},"key":"k","offset":3,"partition":1,"timestamp":9,"value":{"base64":"/wA="}}"#
        );
    }

    #[test]
    fn nulls_and_repeated_headers_are_kept() {
        let header = |k: &str, v: &'static [u8]| KafkaHeader {
            key: k.into(),
            value: Bytes::from_static(v),
        };
        let m = KafkaMessage {
            offset: 3,
            timestamp: 9,
            key: Bytes::new(),
            value: Bytes::new(),
            headers: vec![header("a", b"1"), header("b", b"2"), header("a", b"3")],
            nulls: 1,
        };
        assert_eq!(
            record_json(1, &m),
            r#"{"headers":[["a","1"],["b","2"],["a","3"]],"key":null,"offset":3,"partition":1,"timestamp":9,"value":""}"#
        );
    }
}
