//! A minimal async pub/sub client: one WebSocket, requests answered in order of their sequence.

use crate::{
    pub_sub_req::Req, pub_sub_resp::Resp, CmdKafkaCommit, CmdKafkaCredit, CmdKafkaFetch,
    CmdKafkaListOffset, CmdKafkaSubscribe, CmdKafkaUnsubscribe, CmdPing, ErrorCode, KafkaFetchResp,
    KafkaSubscribeResp, PubSubReq, PubSubResp,
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use std::collections::{HashSet, VecDeque};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    client_async,
    tungstenite::{client::IntoClientRequest, Message},
    MaybeTlsStream, WebSocketStream,
};

/// What can go wrong talking to a Streamgate pub/sub endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket connection or handshake failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The TCP connection could not be made.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address that was dialled.
        addr: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The URL is not a usable `ws://host:port/path` URL.
    #[error("invalid url {0:?}: expected ws://host:port/path")]
    InvalidUrl(String),
    /// The gateway closed the connection.
    #[error("connection closed by the gateway{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    /// The gateway sent a binary frame that is not a `PubSubResp`.
    #[error("undecodable response: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The gateway answered the command with `error_resp`.
    #[error("{message} (code {code})")]
    Server {
        /// The wire code (see [`ErrorCode`]).
        code: i32,
        /// The gateway's message, in APISIX's wording.
        message: String,
    },
    /// The gateway answered under another sequence than the command's while it was the only
    /// one outstanding: a stray or duplicate answer, which the protocol does not allow.
    #[error("an answer under sequence {got} while waiting for {expected}")]
    WrongSequence {
        /// The command's sequence.
        expected: i64,
        /// The answer's.
        got: i64,
    },
    /// The gateway answered with a response of another kind than the command asks for.
    #[error("unexpected response: {0:?}")]
    Unexpected(Box<PubSubResp>),
}

impl ClientError {
    /// The error class when the gateway answered with `error_resp`.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => ErrorCode::from_i32(*code),
            _ => None,
        }
    }
}

/// A pub/sub session over one WebSocket.
///
/// [`call`](Self::call) sends one command and waits for the answer carrying its sequence; the
/// typed helpers wrap it. Frames that answer nothing of ours (text, WebSocket pings) are skipped.
/// Pushes of open subscriptions that arrive while a call waits are kept, in order, for
/// [`recv`](Self::recv).
#[derive(Debug)]
pub struct PubSubClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_sequence: i64,
    /// Sequences of the subscriptions this client opened and has not seen end.
    subscriptions: HashSet<i64>,
    /// Frames of open subscriptions received while a call waited for its answer.
    pending: VecDeque<PubSubResp>,
}

impl PubSubClient {
    /// Opens a session to `url` (`ws://host:port/path`).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let request = url.into_client_request()?;
        Self::connect_request(request).await
    }

    /// Opens a session with a prepared handshake request (for extra headers such as `apikey`).
    pub async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Self, ClientError> {
        let uri = request.uri();
        if uri.scheme_str() != Some("ws") {
            return Err(ClientError::InvalidUrl(uri.to_string()));
        }
        let host = uri
            .host()
            .ok_or_else(|| ClientError::InvalidUrl(uri.to_string()))?;
        let addr = format!("{}:{}", host, uri.port_u16().unwrap_or(80));
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        tcp.set_nodelay(true).ok();
        let (ws, _response) = client_async(request, MaybeTlsStream::Plain(tcp)).await?;
        Ok(Self {
            ws,
            next_sequence: 1,
            subscriptions: HashSet::new(),
            pending: VecDeque::new(),
        })
    }

    /// The underlying WebSocket, for sending raw frames (tests of malformed input).
    pub fn websocket(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }

    /// The sequence the next command sent through this client will carry.
    pub fn next_sequence(&self) -> i64 {
        self.next_sequence
    }

    /// Sends one request as it is, without waiting for its answer.
    pub async fn send(&mut self, request: &PubSubReq) -> Result<(), ClientError> {
        self.ws
            .send(Message::Binary(request.encode_to_vec().into()))
            .await?;
        Ok(())
    }

    /// Receives the next response, whatever its sequence (pushes kept during a call first).
    pub async fn recv(&mut self) -> Result<PubSubResp, ClientError> {
        let frame = match self.pending.pop_front() {
            Some(frame) => frame,
            None => self.recv_wire().await?,
        };
        if matches!(frame.resp, Some(Resp::ErrorResp(_))) {
            // An error under a subscription's sequence ends it.
            self.subscriptions.remove(&frame.sequence);
        }
        Ok(frame)
    }

    async fn recv_wire(&mut self) -> Result<PubSubResp, ClientError> {
        loop {
            match self.ws.next().await {
                None => return Err(ClientError::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Binary(data))) => return Ok(PubSubResp::decode(data)?),
                Some(Ok(Message::Close(frame))) => {
                    return Err(ClientError::Closed(
                        frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)),
                    ))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Sends `command` under a fresh sequence and returns the response that carries it. The
    /// next answer must be that one: anything else is [`ClientError::WrongSequence`] (use
    /// [`send`](Self::send) and [`recv`](Self::recv) to pipeline).
    pub async fn call(&mut self, command: Req) -> Result<PubSubResp, ClientError> {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.send(&PubSubReq::new(sequence, command)).await?;
        self.answer_to(sequence).await
    }

    /// The answer under `sequence`; frames of open subscriptions before it are kept for
    /// [`recv`](Self::recv), anything else is [`ClientError::WrongSequence`].
    async fn answer_to(&mut self, sequence: i64) -> Result<PubSubResp, ClientError> {
        loop {
            let response = self.recv_wire().await?;
            if response.sequence == sequence {
                return Ok(response);
            }
            if self.subscriptions.contains(&response.sequence) {
                self.pending.push_back(response);
                continue;
            }
            return Err(ClientError::WrongSequence {
                expected: sequence,
                got: response.sequence,
            });
        }
    }

    /// Opens a push subscription; returns its number (the subscribe's sequence, which its
    /// pushes carry) and where it starts. Pushes then arrive through [`recv`](Self::recv) as
    /// far as the credit granted allows.
    pub async fn subscribe(
        &mut self,
        subscribe: CmdKafkaSubscribe,
    ) -> Result<(i64, KafkaSubscribeResp), ClientError> {
        let sequence = self.next_sequence;
        self.subscriptions.insert(sequence);
        let response = self.call(Req::CmdKafkaSubscribe(subscribe)).await;
        match response {
            Ok(PubSubResp {
                resp: Some(Resp::KafkaSubscribeResp(r)),
                ..
            }) => Ok((sequence, r)),
            Ok(other) => {
                self.subscriptions.remove(&sequence);
                Err(unexpected(other))
            }
            Err(e) => {
                self.subscriptions.remove(&sequence);
                Err(e)
            }
        }
    }

    /// Grants `records` more records (and `bytes` more record bytes, for a byte-bounded
    /// subscription). Not answered when it succeeds.
    pub async fn credit(
        &mut self,
        subscription: i64,
        records: u32,
        bytes: u64,
    ) -> Result<(), ClientError> {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        let credit = CmdKafkaCredit {
            subscription,
            records,
            bytes,
        };
        self.send(&PubSubReq::new(sequence, Req::CmdKafkaCredit(credit)))
            .await
    }

    /// Ends a subscription and returns the cursor after the last record it delivered. Pushes
    /// that arrived before the answer are kept for [`recv`](Self::recv): they were delivered,
    /// and the cursor counts them.
    pub async fn unsubscribe(&mut self, subscription: i64) -> Result<String, ClientError> {
        let response = self
            .call(Req::CmdKafkaUnsubscribe(CmdKafkaUnsubscribe {
                subscription,
            }))
            .await?;
        self.subscriptions.remove(&subscription);
        match response.resp {
            Some(Resp::KafkaUnsubscribeResp(r)) => Ok(r.cursor),
            _ => Err(unexpected(response)),
        }
    }

    /// Commits a group subscription's position: `cursor` from its answer or a push. Returns
    /// once the broker acknowledged; REBALANCING when the group moved on meanwhile.
    pub async fn commit(&mut self, subscription: i64, cursor: &str) -> Result<(), ClientError> {
        let response = self
            .call(Req::CmdKafkaCommit(CmdKafkaCommit {
                subscription,
                cursor: cursor.to_string(),
            }))
            .await?;
        match response.resp {
            Some(Resp::KafkaCommitResp(_)) => Ok(()),
            _ => Err(unexpected(response)),
        }
    }

    /// Round-trips `state` through the gateway.
    pub async fn ping(&mut self, state: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        let response = self
            .call(Req::CmdPing(CmdPing {
                state: state.into(),
            }))
            .await?;
        match response.resp {
            Some(Resp::PongResp(pong)) => Ok(pong.state),
            _ => Err(unexpected(response)),
        }
    }

    /// The offset for `timestamp` (-1 = high watermark, -2 = log start, else milliseconds).
    pub async fn list_offset(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        let response = self
            .call(Req::CmdKafkaListOffset(CmdKafkaListOffset {
                topic: topic.into(),
                partition,
                timestamp,
            }))
            .await?;
        match response.resp {
            Some(Resp::KafkaListOffsetResp(r)) => Ok(r.offset),
            _ => Err(unexpected(response)),
        }
    }

    /// Records from `offset` on, with the route's default size and wait.
    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<KafkaFetchResp, ClientError> {
        self.fetch_with(CmdKafkaFetch {
            topic: topic.into(),
            partition,
            offset,
            ..Default::default()
        })
        .await
    }

    /// A fetch with every field set by the caller (`max_bytes`, `max_wait_ms`).
    pub async fn fetch_with(
        &mut self,
        fetch: CmdKafkaFetch,
    ) -> Result<KafkaFetchResp, ClientError> {
        let response = self.call(Req::CmdKafkaFetch(fetch)).await?;
        match response.resp {
            Some(Resp::KafkaFetchResp(r)) => Ok(r),
            _ => Err(unexpected(response)),
        }
    }

    /// Sends a close frame and waits for the gateway's close reply.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        while let Some(frame) = self.ws.next().await {
            if frame.is_err() {
                break;
            }
        }
        Ok(())
    }
}

fn unexpected(response: PubSubResp) -> ClientError {
    match response.resp {
        Some(Resp::ErrorResp(e)) => ClientError::Server {
            code: e.code,
            message: e.message,
        },
        _ => ClientError::Unexpected(Box::new(response)),
    }
}
