//! Self-tests of the test broker harness, against the broker directly with rskafka: every
//! listener kind connects, produce and fetch round-trip, wrong credentials and untrusted TLS
//! are refused. If these fail, the gateway tests built on the harness mean nothing.

use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::{Credentials, SaslConfig};
use streamgate_testkit::fixtures::{self, Codec};
use streamgate_testkit::{unique_topic, Broker, BrokerOptions, Engine, SaslUser, TestCa};

fn scram_user() -> SaslUser {
    SaslUser {
        name: "alice".into(),
        password: "alice-secret".into(),
        mechanism: "scram256",
    }
}

#[tokio::test]
async fn plaintext_produce_and_fetch_round_trip() {
    let broker = Broker::start().await;
    let client = broker.client().await;
    let topic = unique_topic("harness");
    fixtures::create_topic(&client, &topic, 2).await;
    let records = vec![
        fixtures::record(
            Some(b"k1"),
            Some(b"v1"),
            &[("h", b"1")],
            Some(1_700_000_000_000),
        ),
        fixtures::record(None, None, &[], Some(1_700_000_000_001)),
    ];
    let offsets = fixtures::produce_batch(&client, &topic, 1, records.clone(), Codec::Gzip).await;
    assert_eq!(offsets, vec![0, 1]);
    let pc = client
        .partition_client(&topic, 1, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let (fetched, hw) = pc.fetch_records(0, 1..1_000_000, 100).await.unwrap();
    assert_eq!(hw, 2);
    assert_eq!(fetched.len(), 2);
    assert_eq!(fetched[0].record, records[0]);
    assert_eq!(fetched[1].record, records[1]);
    assert_eq!(pc.get_offset(OffsetAt::Earliest).await.unwrap(), 0);
}

#[tokio::test]
async fn topics_are_not_auto_created() {
    let broker = Broker::start().await;
    let client = broker.client().await;
    let err = client
        .partition_client("not-exist", 0, UnknownTopicHandling::Error)
        .await
        .expect_err("unknown topic");
    assert!(err.to_string().contains("UnknownTopicOrPartition"), "{err}");
}

#[tokio::test]
async fn scram_users_connect_and_wrong_passwords_are_refused() {
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        users: vec![scram_user()],
        tls: None,
        tap: false,
    })
    .await;
    let good = SaslConfig::ScramSha256(Credentials::new("alice".into(), "alice-secret".into()));
    let client = broker.client_as(Some(good)).await.expect("right password");
    let topic = unique_topic("sasl");
    fixtures::create_topic(&client, &topic, 1).await;
    assert_eq!(
        fixtures::produce_each(&client, &topic, 0, vec![fixtures::value("x")]).await,
        vec![0]
    );

    let bad = SaslConfig::ScramSha256(Credentials::new("alice".into(), "WRONG".into()));
    let err = broker
        .client_as(Some(bad))
        .await
        .expect_err("wrong password");
    assert!(err.to_string().to_lowercase().contains("sasl"), "{err}");
    assert!(
        broker.client_as(None).await.is_err(),
        "no credentials on an authenticated listener"
    );
}

#[tokio::test]
async fn plain_users_connect() {
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        users: vec![scram_user()],
        tls: None,
        tap: false,
    })
    .await;
    let plain = SaslConfig::Plain(Credentials::new("admin".into(), "admin-secret".into()));
    let client = broker.client_as(Some(plain)).await.expect("PLAIN login");
    client
        .list_topics()
        .await
        .expect("metadata after PLAIN login");
}

#[tokio::test]
async fn tls_with_the_right_ca_connects_and_without_it_is_refused() {
    let ca = TestCa::new();
    let broker = Broker::start_with(BrokerOptions {
        tls: Some(ca.clone()),
        ..Default::default()
    })
    .await;
    let client = broker.client().await;
    let topic = unique_topic("tls");
    fixtures::create_topic(&client, &topic, 1).await;
    assert_eq!(
        fixtures::produce_each(&client, &topic, 0, vec![fixtures::value("over tls")]).await,
        vec![0]
    );

    // A different CA does not vouch for the broker's certificate.
    let other = TestCa::new();
    let err = rskafka::client::ClientBuilder::new(vec![broker.bootstrap.clone()])
        .tls_config(other.client_config())
        .backoff_config(rskafka::BackoffConfig {
            deadline: Some(std::time::Duration::from_secs(2)),
            ..Default::default()
        })
        .build()
        .await
        .expect_err("untrusted certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn tls_and_scram_together() {
    let ca = TestCa::new();
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        users: vec![scram_user()],
        tls: Some(ca),
        tap: false,
    })
    .await;
    let client = broker.client().await;
    client
        .list_topics()
        .await
        .expect("metadata over TLS + SCRAM");
}

#[tokio::test]
async fn the_broker_can_be_stopped_and_restarted() {
    let mut broker = Broker::start().await;
    broker.stop();
    let addr = format!("127.0.0.1:{}", broker.broker_port);
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "stopped broker still listens"
    );
    broker.restart().await;
    let client = broker.client().await;
    client.list_topics().await.expect("metadata after restart");
}
