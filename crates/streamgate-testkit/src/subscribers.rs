//! Many push subscriptions over few WebSocket connections, as the scale test and the
//! filtered-subscribers benchmark open them: small client buffers, an optional loopback source
//! address per connection (so that 127.0.0.0/8, not one address's ports, bounds the count), and
//! credit granted in a window as records arrive.

use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use streamgate_protocol::{
    pub_sub_req::Req, pub_sub_resp::Resp, CmdKafkaCredit, CmdKafkaSubscribe, KafkaMessage,
    KafkaSubscribeResp, Message as _, PubSubReq, PubSubResp,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One connection's subscriptions and how it reads them.
pub struct Connection {
    /// The gateway's listener.
    pub addr: SocketAddr,
    /// Bind the connection to this loopback address first (`None`: the system's choice).
    pub source: Option<IpAddr>,
    /// The pub/sub route's path, e.g. `/kafka`.
    pub path: String,
    /// The subscribes to send, each with its credit in `credit_records`; subscription `i` is
    /// sent under sequence `i + 1`.
    pub subscribes: Vec<CmdKafkaSubscribe>,
    /// Granted again once half of each subscription's credit is used.
    pub credit_window: u32,
}

/// What a connection saw of one of its subscriptions.
pub enum Event<'a> {
    /// The subscribe's answer (where each partition starts).
    Subscribed(&'a KafkaSubscribeResp),
    /// A record pushed.
    Record(&'a KafkaMessage),
}

/// Opens the connection, subscribes (one permit of `ready` once every subscription is
/// answered), then hands each answer and record to `on_event(subscription index, event)` until
/// `stop`. An error frame or a closed connection is an error.
pub async fn run(
    c: Connection,
    ready: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
    mut on_event: impl FnMut(usize, Event<'_>),
) -> Result<(), String> {
    let mut ws = connect(c.addr, c.source, &c.path).await?;
    let mut outstanding = Vec::with_capacity(c.subscribes.len());
    for (i, subscribe) in c.subscribes.into_iter().enumerate() {
        outstanding.push(subscribe.credit_records);
        send(
            &mut ws,
            PubSubReq::new(i as i64 + 1, Req::CmdKafkaSubscribe(subscribe)),
        )
        .await?;
    }
    let mut answered = 0;
    let mut sequence = outstanding.len() as i64;
    while !stop.load(Ordering::Relaxed) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), recv(&mut ws)).await {
            Err(_) => continue,
            Ok(frame) => frame?,
        };
        let index = usize::try_from(frame.sequence - 1)
            .ok()
            .filter(|i| *i < outstanding.len());
        match (frame.resp, index) {
            (Some(Resp::KafkaSubscribeResp(answer)), Some(i)) => {
                on_event(i, Event::Subscribed(&answer));
                answered += 1;
                if answered == outstanding.len() {
                    ready.add_permits(1);
                }
            }
            (Some(Resp::KafkaRecordsPush(push)), Some(i)) => {
                for batch in &push.batches {
                    for m in &batch.messages {
                        on_event(i, Event::Record(m));
                        outstanding[i] = outstanding[i].saturating_sub(1);
                    }
                }
                if 2 * outstanding[i] < c.credit_window {
                    sequence += 1;
                    let credit = CmdKafkaCredit {
                        subscription: i as i64 + 1,
                        records: c.credit_window - outstanding[i],
                        bytes: 0,
                    };
                    send(
                        &mut ws,
                        PubSubReq::new(sequence, Req::CmdKafkaCredit(credit)),
                    )
                    .await?;
                    outstanding[i] = c.credit_window;
                }
            }
            (Some(Resp::ErrorResp(e)), _) => return Err(format!("error frame: {e:?}")),
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).ok();
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}{path}"),
        tcp,
        Some(config),
    )
    .await
    .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

async fn send(ws: &mut WebSocketStream<TcpStream>, req: PubSubReq) -> Result<(), String> {
    ws.send(Message::Binary(req.encode_to_vec().into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

async fn recv(ws: &mut WebSocketStream<TcpStream>) -> Result<PubSubResp, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => {
                return PubSubResp::decode(data).map_err(|e| format!("decode: {e}"))
            }
            Some(Ok(_)) => continue,
            other => return Err(format!("connection ended: {other:?}")),
        }
    }
}

/// The `n`th loopback source address of 127.0.0.0/8 past 127.0.0.1, a new one every `per`
/// connections (each address has its own ~28,000 ephemeral ports).
pub fn loopback_source(n: usize, per: usize) -> IpAddr {
    let i = (n / per.max(1)) as u32 + 2;
    IpAddr::from([127, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}
