//! A plain TCP forwarder in front of a broker that records every byte clients send it, so a test
//! can prove what the gateway asked the broker (and what it never asked). Given users, it also
//! checks SASL/PLAIN passwords, which tansu 0.6.0 does not: a wrong one is answered with
//! SASL_AUTHENTICATION_FAILED (58) as Kafka does, and the connection is closed.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The forwarder; stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct Tap {
    /// The loopback port clients connect to.
    pub port: u16,
    recorded: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Tap {
    /// Forwards connections on a free loopback port to `127.0.0.1:backend_port`.
    pub async fn start(backend_port: u16) -> Tap {
        Self::start_checking(backend_port, Vec::new()).await
    }

    /// As [`start`](Self::start), checking SASL/PLAIN logins against `users` (name, password)
    /// when there are any.
    pub async fn start_checking(backend_port: u16, users: Vec<(String, String)>) -> Tap {
        let users = Arc::new(users);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the tap");
        let port = listener.local_addr().expect("tap address").port();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&recorded);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                let users = Arc::clone(&users);
                connections.spawn(async move {
                    let Ok(backend) = TcpStream::connect(("127.0.0.1", backend_port)).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut backend_read, mut backend_write) = backend.into_split();
                    // Requests one Kafka frame at a time, so a PLAIN login can be checked.
                    let (refusals, mut refused) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
                    let up = async {
                        let mut plain = false;
                        while let Some(frame) = read_frame(&mut client_read).await {
                            sink.lock().expect("tap record").extend_from_slice(&frame);
                            if !users.is_empty() {
                                if let Login::Refused(answer) =
                                    check_plain(&frame[4..], &mut plain, &users)
                                {
                                    let _ = refusals.send(answer).await;
                                    break;
                                }
                            }
                            if backend_write.write_all(&frame).await.is_err() {
                                break;
                            }
                        }
                        let _ = backend_write.shutdown().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            tokio::select! {
                                Some(answer) = refused.recv() => {
                                    let _ = client_write.write_all(&answer).await;
                                    break;
                                }
                                read = backend_read.read(&mut buf) => match read {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if client_write.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                },
                            }
                        }
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Tap {
            port,
            recorded,
            task,
        }
    }

    /// Everything clients sent through the tap so far.
    pub fn recorded(&self) -> Vec<u8> {
        self.recorded.lock().expect("tap record").clone()
    }
}

/// One Kafka request: its 4-byte size and the request itself.
pub(crate) async fn read_frame(read: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    read.read_exact(&mut size).await.ok()?;
    let len = usize::try_from(i32::from_be_bytes(size)).ok()?;
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&size);
    read.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

enum Login {
    Pass,
    /// The answer to send the client instead of forwarding its request.
    Refused(Vec<u8>),
}

/// Looks at one request: a SaslHandshake (17) for PLAIN arms the check, and the following
/// SaslAuthenticate (36) must carry a listed user's password.
fn check_plain(request: &[u8], plain: &mut bool, users: &[(String, String)]) -> Login {
    let mut r = Reader(request);
    let (Some(api_key), Some(version), Some(correlation)) = (r.i16(), r.i16(), r.i32()) else {
        return Login::Pass;
    };
    let Some(_client_id) = r.nullable_string() else {
        return Login::Pass;
    };
    match api_key {
        17 => {
            *plain = r.nullable_string().flatten().as_deref() == Some(b"PLAIN".as_slice());
            Login::Pass
        }
        36 if *plain => {
            let flexible = version >= 2;
            if flexible {
                r.skip_tags();
            }
            let auth = if flexible {
                r.compact_bytes()
            } else {
                r.bytes()
            };
            let mut parts = auth
                .unwrap_or_default()
                .split(|b| *b == 0)
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>();
            let password = parts.pop().unwrap_or_default();
            let user = parts.pop().unwrap_or_default();
            let known = users.iter().any(|(u, p)| {
                u.as_bytes() == user.as_slice() && p.as_bytes() == password.as_slice()
            });
            if known {
                Login::Pass
            } else {
                Login::Refused(authentication_failed(correlation, version))
            }
        }
        _ => Login::Pass,
    }
}

/// A SaslAuthenticate response with SASL_AUTHENTICATION_FAILED, in `version`'s encoding.
fn authentication_failed(correlation: i32, version: i16) -> Vec<u8> {
    let message = b"Authentication failed: invalid username or password";
    let mut body = correlation.to_be_bytes().to_vec();
    let flexible = version >= 2;
    if flexible {
        body.push(0); // response header tagged fields
    }
    body.extend_from_slice(&58i16.to_be_bytes());
    if flexible {
        body.push(u8::try_from(message.len() + 1).unwrap_or(u8::MAX));
        body.extend_from_slice(message);
        body.push(1); // empty compact auth_bytes
    } else {
        body.extend_from_slice(&(message.len() as i16).to_be_bytes());
        body.extend_from_slice(message);
        body.extend_from_slice(&0i32.to_be_bytes()); // empty auth_bytes
    }
    if version >= 1 {
        body.extend_from_slice(&0i64.to_be_bytes()); // session_lifetime_ms
    }
    if flexible {
        body.push(0); // body tagged fields
    }
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Big-endian Kafka primitives over a request.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn uvarint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    /// A nullable string: `Some(None)` for null.
    fn nullable_string(&mut self) -> Option<Option<Vec<u8>>> {
        let len = self.i16()?;
        if len < 0 {
            return Some(None);
        }
        self.take(len as usize).map(|b| Some(b.to_vec()))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = usize::try_from(self.i32()?).ok()?;
        self.take(len).map(<[u8]>::to_vec)
    }
    fn compact_bytes(&mut self) -> Option<Vec<u8>> {
        let len = usize::try_from(self.uvarint()?.checked_sub(1)?).ok()?;
        self.take(len).map(<[u8]>::to_vec)
    }
    fn skip_tags(&mut self) {
        let count = self.uvarint().unwrap_or(0);
        for _ in 0..count {
            let _tag = self.uvarint();
            let len = self.uvarint().unwrap_or(0) as usize;
            let _ = self.take(len);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
