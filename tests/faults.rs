//! Faults under load, through the real gateway: the broker killed and restarted while 100
//! sessions read from it.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamgate_protocol::{ErrorCode, PubSubClient};
use streamgate_testkit::{fixtures, Broker, BrokerOptions, Engine};

const SESSIONS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_under_100_sessions_gives_clear_errors_and_they_all_recover() {
    let mut broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await;
    let client = broker.client().await;
    fixtures::create_topic(&client, "orders", 1).await;
    let first = (0..10)
        .map(|i| fixtures::value(&format!("before-{i}")))
        .collect();
    fixtures::produce_each(&client, "orders", 0, first).await;
    drop(client);
    let admin = listen_addr();
    let extra = format!("[admin]\nlisten = \"{admin}\"\n");
    let gw = gateway_for(&broker, "socket_timeout_ms = 1000", &extra).await;
    let pid = gw.pid();

    // Each session tails the partition; it records every error class it is answered with and
    // stops once it has read offset 19 (ten records produced after the restart).
    let errors = Arc::new(std::sync::Mutex::new(
        Vec::<(Option<ErrorCode>, String)>::new(),
    ));
    let done = Arc::new(AtomicUsize::new(0));
    let mut sessions = tokio::task::JoinSet::new();
    for _ in 0..SESSIONS {
        let url = gw.ws_url("/kafka");
        let (errors, done) = (Arc::clone(&errors), Arc::clone(&done));
        sessions.spawn(async move {
            let mut c = PubSubClient::connect(&url).await.expect("connect");
            let mut next = 0;
            while next < 20 {
                match c.fetch("orders", 0, next).await {
                    Ok(batch) => {
                        for m in &batch.messages {
                            assert_eq!(m.offset, next, "records arrive in order without gaps");
                            next += 1;
                        }
                    }
                    Err(e) => {
                        let class = e.code();
                        errors.lock().unwrap().push((class, e.to_string()));
                        assert!(
                            class.is_some(),
                            "a Kafka failure is an error_resp, the session stays: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    broker.stop();
    let stopped = Instant::now();
    while errors.lock().unwrap().len() < SESSIONS && stopped.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = errors.lock().unwrap().len();
    assert!(
        during >= SESSIONS,
        "every session hears of the outage ({during} errors)"
    );

    broker.restart().await;
    let client = broker.client().await;
    let after = (10..20)
        .map(|i| fixtures::value(&format!("after-{i}")))
        .collect();
    fixtures::produce_each(&client, "orders", 0, after).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < SESSIONS {
        assert!(
            Instant::now() < deadline,
            "{} of {SESSIONS} sessions recovered",
            done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Some(joined) = sessions.join_next().await {
        joined.expect("a session task");
    }
    assert_eq!(gw.pid(), pid, "no gateway restart");
    let errors = errors.lock().unwrap();
    for (class, message) in errors.iter() {
        assert!(
            matches!(
                class,
                Some(ErrorCode::Unavailable | ErrorCode::KafkaError | ErrorCode::NotFound)
            ),
            "a broker outage reads as one: {message}"
        );
        assert!(
            message.starts_with("failed to fetch message, topic: orders, partition: 0, err: "),
            "{message}"
        );
    }
    let unavailable = errors
        .iter()
        .filter(|(c, _)| *c == Some(ErrorCode::Unavailable))
        .count();
    assert!(
        unavailable * 2 >= errors.len(),
        "mostly UNAVAILABLE: {unavailable} of {}",
        errors.len()
    );
}
