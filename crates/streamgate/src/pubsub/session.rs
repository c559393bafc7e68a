//! One pub/sub connection: the command loop.
//!
//! Frames are read in one task. A ping is answered at once; Kafka commands run as tasks of their
//! own (at most `max_in_flight` at a time), so a ping never waits behind a slow fetch, and each
//! answer carries its request's sequence. A command task's result is its answer, collected by the
//! loop as tasks finish: no per-session channel. The loop can also send frames that no request
//! triggered (reserved for push subscriptions), from any branch of its `select!`.

use super::commands::{self, KafkaRoute};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use streamgate_protocol::{
    pub_sub_req::Req, pub_sub_resp::Resp, ErrorCode, PongResp, PubSubReq, PubSubResp,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// How long a closing session waits for the client's close reply.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// WebSocket buffers sized for small command frames: an idle session costs a few KiB.
pub fn websocket_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max_frame_bytes.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Runs a session until the client leaves or the gateway shuts down.
pub async fn run<S>(
    mut ws: WebSocketStream<S>,
    route: KafkaRoute,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut tasks: JoinSet<PubSubResp> = JoinSet::new();
    let close = loop {
        tokio::select! {
            biased;
            Ok(()) = shutdown.changed() => if *shutdown.borrow() {
                break Some((CloseCode::Away, "shutting down"));
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => match joined {
                Ok(answer) => {
                    if send(&mut ws, &answer).await.is_err() {
                        break None;
                    }
                }
                Err(e) => {
                    tracing::error!(route = %route.route_id, error = %e, "a pub/sub command task failed");
                }
            },
            frame = ws.next() => match frame {
                None => break None,
                Some(Err(WsError::Capacity(e))) => {
                    tracing::debug!(route = %route.route_id, error = %e, "frame over the route's limit");
                    break Some((CloseCode::Size, "frame larger than this route's max_frame_bytes"));
                }
                Some(Err(e)) => {
                    tracing::debug!(route = %route.route_id, error = %e, "websocket read failed");
                    break None;
                }
                Some(Ok(Message::Binary(data))) => {
                    let immediate = match PubSubReq::decode(data) {
                        Err(_) => Some(PubSubResp::error(0, ErrorCode::BadRequest, "wrong command")),
                        Ok(req) => dispatch(req, &route, &mut tasks),
                    };
                    if let Some(answer) = immediate {
                        if send(&mut ws, &answer).await.is_err() {
                            break None;
                        }
                    }
                }
                // Pings are answered and close frames echoed by tungstenite; flush those
                // replies now rather than with the next answer.
                Some(Ok(Message::Ping(_) | Message::Close(_))) => {
                    if ws.flush().await.is_err() {
                        break None;
                    }
                }
                // Text frames carry no command (as in APISIX): ignored.
                Some(Ok(_)) => {}
            }
        }
    };
    tasks.abort_all();
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if ws.close(Some(frame)).await.is_ok() {
            // Wait briefly for the client's close reply, reading (and dropping) what comes.
            let _ = tokio::time::timeout(CLOSE_WAIT, async { while ws.next().await.is_some() {} })
                .await;
        }
    }
}

/// Handles one request: returns an answer to send now, or starts a Kafka command task.
fn dispatch(
    req: PubSubReq,
    route: &KafkaRoute,
    tasks: &mut JoinSet<PubSubResp>,
) -> Option<PubSubResp> {
    let sequence = req.sequence;
    let unknown = || {
        Some(PubSubResp::error(
            sequence,
            ErrorCode::BadRequest,
            "unknown command",
        ))
    };
    let cmd = match req.req {
        None | Some(Req::CmdEmpty(_)) => return unknown(),
        Some(Req::CmdPing(ping)) => {
            return Some(PubSubResp {
                sequence,
                resp: Some(Resp::PongResp(PongResp { state: ping.state })),
            })
        }
        Some(cmd) => cmd,
    };
    if tasks.len() >= route.settings.max_in_flight {
        return Some(PubSubResp::error(
            sequence,
            ErrorCode::LimitExceeded,
            format!(
                "too many commands in flight on this connection (limit {}): wait for an answer before sending more",
                route.settings.max_in_flight
            ),
        ));
    }
    let route = route.clone();
    tasks.spawn(async move {
        match cmd {
            Req::CmdKafkaListOffset(c) => commands::list_offset(&route, sequence, c).await,
            Req::CmdKafkaFetch(c) => commands::fetch(&route, sequence, c).await,
            // Answered inline above; never spawned.
            Req::CmdEmpty(_) | Req::CmdPing(_) => {
                PubSubResp::error(sequence, ErrorCode::Internal, "command dispatched twice")
            }
        }
    });
    None
}

/// Answers larger than this go out as several frames of one WebSocket message (RFC 6455 §5.4;
/// every client reassembles them). tungstenite shifts its whole send buffer forward after each
/// partial socket write, so a 1 MiB frame cost several MiB of memmove; 64 KiB fragments keep that
/// work proportional to the answer (measured in BENCHMARKS.md, scenario 1).
const FRAGMENT_BYTES: usize = 64 * 1024;

async fn send<S>(ws: &mut WebSocketStream<S>, answer: &PubSubResp) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let encoded = bytes::Bytes::from(answer.encode_to_vec());
    if encoded.len() <= FRAGMENT_BYTES {
        return ws.send(Message::Binary(encoded)).await;
    }
    let mut start = 0;
    while start < encoded.len() {
        let end = (start + FRAGMENT_BYTES).min(encoded.len());
        let opcode = if start == 0 {
            Data::Binary
        } else {
            Data::Continue
        };
        let last = end == encoded.len();
        let fragment = Frame::message(encoded.slice(start..end), OpCode::Data(opcode), last);
        ws.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    ws.flush().await
}
