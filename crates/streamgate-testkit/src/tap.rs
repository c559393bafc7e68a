//! A plain TCP forwarder in front of a broker that records every byte clients send it, so a test
//! can prove what the gateway asked the broker (and what it never asked).

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
                connections.spawn(async move {
                    let Ok(backend) = TcpStream::connect(("127.0.0.1", backend_port)).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut backend_read, mut backend_write) = backend.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            sink.lock()
                                .expect("tap record")
                                .extend_from_slice(&buf[..n]);
                            if backend_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = backend_write.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut backend_read, &mut client_write).await;
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

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
