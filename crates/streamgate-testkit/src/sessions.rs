//! Many idle WebSocket sessions at once, as the scale test and the connection-cost benchmark
//! open them: small client buffers, so that the client side stays cheap too.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// An open client session.
pub type Session = WebSocketStream<TcpStream>;

/// Opens `count` sessions to `ws://addr{path}` (at most 256 handshakes at a time); each sends
/// `hello` as one binary message and waits for one binary answer before it counts as open.
pub async fn open_sessions(
    addr: SocketAddr,
    path: &str,
    count: usize,
    hello: &[u8],
) -> Result<Vec<Session>, String> {
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (gate, url, hello) = (
            Arc::clone(&gate),
            format!("ws://{addr}{path}"),
            hello.to_vec(),
        );
        tasks.spawn(async move {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let config = WebSocketConfig::default()
                .read_buffer_size(1024)
                .write_buffer_size(0);
            let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
                .await
                .map_err(|e| e.to_string())?;
            ws.send(Message::Binary(hello.into()))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(_))) => return Ok(ws),
                    Some(Ok(_)) => continue,
                    other => return Err(format!("no answer: {other:?}")),
                }
            }
        });
    }
    let mut open = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        open.push(joined.map_err(|e| e.to_string())??);
    }
    Ok(open)
}

/// Closes every session (close frame, then reads until the server's close).
pub async fn close_sessions(sessions: Vec<Session>) {
    let mut closing = tokio::task::JoinSet::new();
    for mut ws in sessions {
        closing.spawn(async move {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
    while closing.join_next().await.is_some() {}
}
