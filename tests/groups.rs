//! Group subscriptions (docs/subscriptions.md, "Group subscriptions"): members of a Kafka
//! consumer group over WebSocket, positions kept by the broker's group coordinator.

mod common;

use common::balancer::Balancer;
use common::push::*;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::{CommitMode, StartFrom},
    pub_sub_resp::Resp,
    CmdKafkaSubscribe, ErrorCode, PubSubClient, PubSubResp,
};
use streamgate_testkit::{fixtures, unique_topic, Broker, GatewayConfig, GatewayProcess};

/// Group settings of the tests' route: a short session, so a dead member is noticed quickly.
const GROUPS: &str = "group_prefix = \"web.\"\nallowed_groups = [\"team-*\", \"resume-*\", \"solo\"]\ngroup_session_timeout_ms = 6000\nauto_commit_interval_ms = 500";

async fn group_gateway(broker: &Broker) -> GatewayProcess {
    gateway_for(broker, GROUPS, "").await
}

fn group_subscribe(topic: &str, group: &str, commit: CommitMode, credit: u32) -> CmdKafkaSubscribe {
    CmdKafkaSubscribe {
        topic: topic.to_string(),
        from: StartFrom::Earliest as i32,
        group: group.to_string(),
        commit: commit as i32,
        credit_records: credit,
        ..Default::default()
    }
}

/// What one member saw: records by partition, the assignments in order, the last cursor.
#[derive(Debug, Default)]
struct Member {
    records: BTreeMap<i32, Vec<(i64, String)>>,
    assigned: BTreeSet<i32>,
    generations: Vec<i32>,
    cursor: String,
}

impl Member {
    fn take(&mut self, frame: PubSubResp) {
        match frame.resp {
            Some(Resp::KafkaRecordsPush(push)) => {
                for batch in push.batches {
                    assert!(
                        self.assigned.contains(&batch.partition),
                        "a push for partition {} outside the assignment {:?}",
                        batch.partition,
                        self.assigned
                    );
                    for m in batch.messages {
                        let value = String::from_utf8_lossy(&m.value).into_owned();
                        self.records
                            .entry(batch.partition)
                            .or_default()
                            .push((m.offset, value));
                    }
                }
                self.cursor = push.cursor;
            }
            Some(Resp::KafkaAssignment(a)) => {
                for p in &a.revoked {
                    assert!(self.assigned.remove(p), "revoked {p}, never assigned");
                }
                self.assigned = a.assigned.iter().map(|s| s.partition).collect();
                self.generations.push(a.generation);
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }

    fn values(&self) -> BTreeSet<String> {
        self.records
            .values()
            .flatten()
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Reads frames of `sequence` into `member` until `done` holds or `within` passes.
async fn read_until(
    c: &mut PubSubClient,
    member: &mut Member,
    within: Duration,
    done: impl Fn(&Member) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(member) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out; member saw {member:?}");
        match tokio::time::timeout(left, c.recv()).await {
            Ok(Ok(frame)) => member.take(frame),
            Ok(Err(e)) => panic!("connection failed: {e}"),
            Err(_) => panic!("timed out; member saw {member:?}"),
        }
    }
}

/// Waits a moment after a member's close before the same group is joined again. The gateway
/// sends LeaveGroup as the session ends; if tansu 0.6 gets it after a new member's first
/// JoinGroup, it keeps the leaver as the forming group's leader (`Inner<Forming>::leave` removes
/// the member but not `state.leader`), and the group never forms. Kafka elects another leader.
async fn let_the_leaver_leave() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn topic_with(broker: &Broker, partitions: i32, per_partition: usize) -> String {
    let kafka = broker.client().await;
    let topic = unique_topic("groups");
    fixtures::create_topic(&kafka, &topic, partitions).await;
    for p in 0..partitions {
        produce(broker, &topic, p, &format!("p{p}-"), per_partition).await;
    }
    topic
}

#[tokio::test]
async fn two_members_split_the_partitions_and_a_close_hands_them_over() {
    let broker = sqlite_broker().await;
    let topic = topic_with(&broker, 6, 5).await;
    let gw = group_gateway(&broker).await;
    let mut a = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sa, started) = a
        .subscribe(group_subscribe(
            &topic,
            "team-split",
            CommitMode::Manual,
            1000,
        ))
        .await
        .unwrap();
    assert!(started.generation >= 0, "{started:?}");
    assert!(!started.member_id.is_empty());
    assert_eq!(
        started.partitions.len(),
        6,
        "alone, a member gets all: {started:?}"
    );
    let mut ma = Member {
        assigned: started.partitions.iter().map(|s| s.partition).collect(),
        ..Default::default()
    };
    read_until(&mut a, &mut ma, Duration::from_secs(10), |m| {
        m.values().len() == 30
    })
    .await;
    // Commit what A read, then B joins: the partitions split 3 and 3.
    a.commit(sa, &ma.cursor.clone()).await.unwrap();
    let mut b = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (_sb, b_started) = b
        .subscribe(group_subscribe(
            &topic,
            "team-split",
            CommitMode::Manual,
            1000,
        ))
        .await
        .unwrap();
    let mb_assigned: BTreeSet<i32> = b_started.partitions.iter().map(|s| s.partition).collect();
    assert_eq!(mb_assigned.len(), 3, "{b_started:?}");
    for s in &b_started.partitions {
        assert_eq!(s.offset, 5, "B starts at the group's commit: {b_started:?}");
    }
    read_until(&mut a, &mut ma, Duration::from_secs(15), |m| {
        m.assigned.len() == 3
    })
    .await;
    assert!(
        ma.assigned.is_disjoint(&mb_assigned),
        "{ma:?} {mb_assigned:?}"
    );
    // New records reach their partition's owner only.
    for p in 0..6 {
        produce(&broker, &topic, p, &format!("new{p}-"), 2).await;
    }
    let mut mb = Member {
        assigned: mb_assigned.clone(),
        ..Default::default()
    };
    read_until(&mut b, &mut mb, Duration::from_secs(10), |m| {
        m.values().len() == 6
    })
    .await;
    read_until(&mut a, &mut ma, Duration::from_secs(10), |m| {
        m.values().iter().filter(|v| v.starts_with("new")).count() == 6
    })
    .await;
    // B leaves: A gets all six at once (LeaveGroup), without waiting for the session timeout.
    let closed = Instant::now();
    b.close().await.unwrap();
    read_until(&mut a, &mut ma, Duration::from_secs(5), |m| {
        m.assigned.len() == 6
    })
    .await;
    assert!(closed.elapsed() < Duration::from_secs(5));
    // B committed nothing: A reads B's partitions from A's commit (offset 5), new records too.
    read_until(&mut a, &mut ma, Duration::from_secs(10), |m| {
        m.values().iter().filter(|v| v.starts_with("new")).count() == 12
    })
    .await;
}

#[tokio::test]
async fn a_member_resumes_on_another_gateway_exactly_after_the_commit() {
    let broker = sqlite_broker().await;
    let topic = topic_with(&broker, 2, 10).await;
    let admin = listen_addr();
    let first = gateway_for(&broker, GROUPS, &format!("[admin]\nlisten = \"{admin}\"\n")).await;
    let second = group_gateway(&broker).await;
    let mut c = PubSubClient::connect(&first.ws_url("/kafka"))
        .await
        .unwrap();
    let (s, started) = c
        .subscribe(group_subscribe(&topic, "resume-m", CommitMode::Manual, 3))
        .await
        .unwrap();
    assert_eq!(started.partitions.len(), 2);
    let mut m = Member {
        assigned: [0, 1].into(),
        ..Default::default()
    };
    read_until(&mut c, &mut m, Duration::from_secs(10), |m| {
        m.values().len() == 3
    })
    .await;
    c.commit(s, &m.cursor.clone()).await.unwrap();
    let committed: BTreeMap<i32, i64> = m
        .records
        .iter()
        .map(|(p, list)| (*p, list.last().unwrap().0 + 1))
        .collect();
    // The committed lag shows per group name (no prefix, no user) and partition.
    for (p, offset) in &committed {
        let sample = format!(
            "streamgate_group_committed_lag_records{{group=\"resume-m\",partition=\"{p}\",route=\"kafka\"}}"
        );
        let want = (10 - offset) as f64;
        assert_eq!(settled(admin, &sample, want).await, want, "{sample}");
    }
    c.close().await.unwrap();
    let_the_leaver_leave().await;
    let mut c = PubSubClient::connect(&second.ws_url("/kafka"))
        .await
        .unwrap();
    let (_s, resumed) = c
        .subscribe(group_subscribe(
            &topic,
            "resume-m",
            CommitMode::Manual,
            1000,
        ))
        .await
        .unwrap();
    for start in &resumed.partitions {
        let want = committed.get(&start.partition).copied().unwrap_or(0);
        assert_eq!(
            start.offset, want,
            "{resumed:?} after committing {committed:?}"
        );
    }
    let mut again = Member {
        assigned: [0, 1].into(),
        ..Default::default()
    };
    read_until(&mut c, &mut again, Duration::from_secs(10), |m| {
        m.values().len() == 17
    })
    .await;
    assert!(
        again.values().is_disjoint(&m.values()),
        "nothing read twice after a commit"
    );
}

#[tokio::test]
async fn auto_commits_the_position_on_close() {
    let broker = sqlite_broker().await;
    let topic = topic_with(&broker, 1, 10).await;
    let gw = group_gateway(&broker).await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    c.subscribe(group_subscribe(&topic, "resume-auto", CommitMode::Auto, 4))
        .await
        .unwrap();
    let mut m = Member {
        assigned: [0].into(),
        ..Default::default()
    };
    read_until(&mut c, &mut m, Duration::from_secs(10), |m| {
        m.values().len() == 4
    })
    .await;
    c.close().await.unwrap();
    // The commit and LeaveGroup run after the session ends: the next member starts at 4.
    let_the_leaver_leave().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
        let (_, started) = c
            .subscribe(group_subscribe(
                &topic,
                "resume-auto",
                CommitMode::Manual,
                0,
            ))
            .await
            .unwrap();
        if started.partitions[0].offset == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "AUTO did not commit 4: {started:?}"
        );
        c.close().await.unwrap();
        let_the_leaver_leave().await;
    }
}

#[tokio::test]
async fn groups_outside_the_routes_namespace_and_bent_subscribes_are_refused() {
    let broker = sqlite_broker().await;
    let topic = topic_with(&broker, 2, 3).await;
    let gw = group_gateway(&broker).await;
    let plain = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let cases = [
        (
            CmdKafkaSubscribe {
                partitions: vec![0],
                ..group_subscribe(&topic, "team-x", CommitMode::Manual, 1)
            },
            ErrorCode::BadRequest,
            "partitions",
        ),
        (
            CmdKafkaSubscribe {
                cursor: "x".into(),
                ..group_subscribe(&topic, "team-x", CommitMode::Manual, 1)
            },
            ErrorCode::BadRequest,
            "cursor",
        ),
        (
            group_subscribe(&topic, "backend-billing", CommitMode::Manual, 1),
            ErrorCode::Forbidden,
            "allowed_groups",
        ),
        (
            group_subscribe(&topic, "team/../x", CommitMode::Manual, 1),
            ErrorCode::BadRequest,
            "A-Za-z0-9._-",
        ),
    ];
    for (cmd, code, says) in cases {
        let (got, text) = error_of(c.subscribe(cmd).await);
        assert_eq!(got, code, "{text}");
        assert!(text.contains(says), "{text}");
    }
    let mut p = PubSubClient::connect(&plain.ws_url("/kafka"))
        .await
        .unwrap();
    let (got, text) = error_of(
        p.subscribe(group_subscribe(&topic, "team-x", CommitMode::Manual, 1))
            .await,
    );
    assert_eq!(got, ErrorCode::Forbidden, "{text}");
    assert!(text.contains("group_prefix"), "{text}");
    // A commit beyond what was pushed, or for another topic, is refused.
    let (s, _) = c
        .subscribe(group_subscribe(&topic, "solo", CommitMode::Manual, 1))
        .await
        .unwrap();
    let mut m = Member {
        assigned: [0, 1].into(),
        ..Default::default()
    };
    read_until(&mut c, &mut m, Duration::from_secs(10), |m| {
        m.values().len() == 1
    })
    .await;
    let (p0, at) = m.records.iter().map(|(p, l)| (*p, l[0].0)).next().unwrap();
    let beyond = cursor_for(&topic, &[(p0, at + 2)]);
    let (got, text) = error_of(c.commit(s, &beyond).await);
    assert_eq!(got, ErrorCode::BadRequest, "{text}");
    assert!(
        text.contains("beyond what this subscription pushed"),
        "{text}"
    );
    let (got, _) = error_of(c.commit(s, &cursor_for("other", &[(0, 1)])).await);
    assert_eq!(got, ErrorCode::BadRequest);
    // A plain subscription does not commit.
    let (plain_sub, _) = c
        .subscribe(subscribe(&topic, StartFrom::Latest, 0))
        .await
        .unwrap();
    let (got, text) = error_of(c.commit(plain_sub, &m.cursor.clone()).await);
    assert_eq!(got, ErrorCode::BadRequest, "{text}");
}

/// A cursor as the gateway writes them (docs/subscriptions.md, "Cursors").
fn cursor_for(topic: &str, positions: &[(i32, i64)]) -> String {
    streamgate_testkit::cursor(topic, positions)
}

/// A librdkafka consumer (confluent-kafka, tests/python/group_member.py) in a consumer group.
struct KafkaMember {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    assigned: BTreeSet<i32>,
    /// (partition, offset, value) in arrival order.
    records: Vec<(i32, i64, String)>,
    committed: Option<BTreeMap<i32, i64>>,
}

impl KafkaMember {
    fn start(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Self {
        use tokio::io::AsyncBufReadExt;
        let python = std::env::var("STREAMGATE_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = streamgate_testkit::workspace_root().join("tests/python/group_member.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .args([&broker.bootstrap, group, topic])
            .args(["--partitions", &partitions.to_string(), "--seconds", "90"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the librdkafka consumer (make test installs confluent-kafka)");
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        KafkaMember {
            child,
            lines,
            assigned: BTreeSet::new(),
            records: Vec::new(),
            committed: None,
        }
    }

    /// Reads its events until `done` holds (or panics after `within`).
    async fn read_until(&mut self, within: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(left, self.lines.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "librdkafka member timed out: {:?} {:?}",
                        self.assigned,
                        self.records.len()
                    )
                })
                .expect("read its output")
                .expect("it is still running");
            let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
            if let Some(list) = event.get("assigned") {
                self.assigned = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap() as i32)
                    .collect();
            } else if let Some(list) = event.get("revoked") {
                for p in list.as_array().unwrap() {
                    self.assigned.remove(&(p.as_i64().unwrap() as i32));
                }
            } else if let Some(r) = event.get("record") {
                let r = r.as_array().unwrap();
                self.records.push((
                    r[0].as_i64().unwrap() as i32,
                    r[1].as_i64().unwrap(),
                    r[2].as_str().unwrap().to_string(),
                ));
            } else if let Some(c) = event.get("committed") {
                self.committed = Some(
                    c.as_object()
                        .unwrap()
                        .iter()
                        .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
                        .collect(),
                );
            }
        }
    }

    /// Asks it to stop, and reads the committed offsets it reports from the broker.
    async fn stop(&mut self) -> BTreeMap<i32, i64> {
        drop(self.child.stdin.take());
        self.read_until(Duration::from_secs(20), |m| m.committed.is_some())
            .await;
        self.committed.clone().unwrap()
    }
}

#[tokio::test]
async fn websocket_members_and_a_librdkafka_consumer_share_one_group() {
    let broker = sqlite_broker().await;
    let topic = topic_with(&broker, 6, 3).await;
    let gw = group_gateway(&broker).await;
    // Two WebSocket members first, then librdkafka joins the same broker-side group.
    let mut a = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sa, a_started) = a
        .subscribe(group_subscribe(
            &topic,
            "team-mixed",
            CommitMode::Manual,
            10_000,
        ))
        .await
        .unwrap();
    let mut ma = Member {
        assigned: a_started.partitions.iter().map(|s| s.partition).collect(),
        ..Default::default()
    };
    let mut b = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sb, b_started) = b
        .subscribe(group_subscribe(
            &topic,
            "team-mixed",
            CommitMode::Manual,
            10_000,
        ))
        .await
        .unwrap();
    let mut mb = Member {
        assigned: b_started.partitions.iter().map(|s| s.partition).collect(),
        ..Default::default()
    };
    let mut c = KafkaMember::start(&broker, "web.team-mixed", &topic, 6);
    c.read_until(Duration::from_secs(30), |m| !m.assigned.is_empty())
        .await;
    // Everyone settles on one generation: three members, two partitions each.
    read_until(&mut a, &mut ma, Duration::from_secs(20), |m| {
        m.assigned.len() == 2
    })
    .await;
    read_until(&mut b, &mut mb, Duration::from_secs(20), |m| {
        m.assigned.len() == 2
    })
    .await;
    assert_eq!(c.assigned.len(), 2, "{:?}", c.assigned);
    let all: BTreeSet<i32> = ma
        .assigned
        .iter()
        .chain(&mb.assigned)
        .chain(&c.assigned)
        .copied()
        .collect();
    assert_eq!(
        all,
        (0..6).collect(),
        "A {:?} B {:?} C {:?}",
        ma.assigned,
        mb.assigned,
        c.assigned
    );
    // More records everywhere; every member commits what it got.
    for p in 0..6 {
        produce(&broker, &topic, p, &format!("more{p}-"), 4).await;
    }
    let mores = |v: &BTreeSet<String>| v.iter().filter(|v| v.starts_with("more")).count();
    read_until(&mut a, &mut ma, Duration::from_secs(15), |m| {
        mores(&m.values()) == 8
    })
    .await;
    read_until(&mut b, &mut mb, Duration::from_secs(15), |m| {
        mores(&m.values()) == 8
    })
    .await;
    c.read_until(Duration::from_secs(15), |m| {
        m.records.iter().filter(|r| r.2.starts_with("more")).count() >= 8
    })
    .await;
    a.commit(sa, &ma.cursor.clone()).await.unwrap();
    b.commit(sb, &mb.cursor.clone()).await.unwrap();
    // B leaves: its two partitions go to A and C at once, from B's commit.
    b.close().await.unwrap();
    read_until(&mut a, &mut ma, Duration::from_secs(15), |m| {
        m.assigned.len() == 3
    })
    .await;
    c.read_until(Duration::from_secs(15), |m| m.assigned.len() == 3)
        .await;
    for p in 0..6 {
        produce(&broker, &topic, p, &format!("last{p}-"), 2).await;
    }
    let lasts = |v: &BTreeSet<String>| v.iter().filter(|v| v.starts_with("last")).count();
    read_until(&mut a, &mut ma, Duration::from_secs(15), |m| {
        lasts(&m.values()) == 6
    })
    .await;
    c.read_until(Duration::from_secs(15), |m| {
        m.records.iter().filter(|r| r.2.starts_with("last")).count() >= 6
    })
    .await;
    a.commit(sa, &ma.cursor.clone()).await.unwrap();
    // Nothing produced was skipped: the union of what everyone got is everything.
    let mut got: BTreeSet<String> = ma.values().union(&mb.values()).cloned().collect();
    got.extend(c.records.iter().map(|r| r.2.clone()));
    for p in 0..6 {
        for (prefix, n) in [
            (format!("p{p}-"), 3),
            (format!("more{p}-"), 4),
            (format!("last{p}-"), 2),
        ] {
            for i in 0..n {
                assert!(
                    got.contains(&format!("{prefix}{i}")),
                    "{prefix}{i} was never delivered"
                );
            }
        }
    }
    // The broker's own OffsetFetch (through librdkafka) sees what the members committed: every
    // partition at the end of its log (3 + 4 + 2 records).
    let committed = c.stop().await;
    assert_eq!(
        committed,
        (0..6).map(|p| (p, 9)).collect(),
        "committed as the broker reports it"
    );
}

#[tokio::test]
async fn a_claim_makes_each_users_groups_their_own() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const SECRET: &str = "groups-secret-0123456789abcdef";
    let jwt = |sub: &str| {
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({ "key": "app", "sub": sub, "exp": fixtures::now_ms() / 1000 + 600 }),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let broker = sqlite_broker().await;
    let topic = topic_with(&broker, 1, 10).await;
    let gw = streamgate_testkit::GatewayConfig::new()
        .kafka_upstream("kafka", &broker.bootstrap, "")
        .table(&format!(
            "[[routes]]\nid = \"kafka\"\nuri = \"/kafka\"\nupstream_id = \"kafka\"\n\
             [routes.plugins.jwt-auth]\n[routes.plugins.kafka-proxy]\n{GROUPS}\ngroup_from_claim = \"sub\"\n\
             fetch_max_wait_ms = 100\nsocket_timeout_ms = 2000\n\n\
             [[consumers]]\nusername = \"app\"\n[consumers.plugins.jwt-auth]\nkey = \"app\"\nsecret = \"{SECRET}\""
        ))
        .start(binary())
        .await;
    let url = |sub: &str| gw.ws_url(&format!("/kafka?jwt={}", jwt(sub)));
    // Alice reads three records of her "solo" group and commits them.
    let mut alice = PubSubClient::connect(&url("alice")).await.unwrap();
    let (s, started) = alice
        .subscribe(group_subscribe(&topic, "solo", CommitMode::Manual, 3))
        .await
        .unwrap();
    assert_eq!(started.partitions[0].offset, 0);
    let mut m = Member {
        assigned: [0].into(),
        ..Default::default()
    };
    read_until(&mut alice, &mut m, Duration::from_secs(10), |m| {
        m.values().len() == 3
    })
    .await;
    alice.commit(s, &m.cursor.clone()).await.unwrap();
    alice.close().await.unwrap();
    // Bob's "solo" is another group: his own namespace, none of Alice's position.
    let mut bob = PubSubClient::connect(&url("bob")).await.unwrap();
    let (_, bobs) = bob
        .subscribe(group_subscribe(&topic, "solo", CommitMode::Manual, 0))
        .await
        .unwrap();
    assert_eq!(bobs.partitions[0].offset, 0, "{bobs:?}");
    // Alice's own group is where she left it.
    let mut again = PubSubClient::connect(&url("alice")).await.unwrap();
    let (_, hers) = again
        .subscribe(group_subscribe(&topic, "solo", CommitMode::Manual, 0))
        .await
        .unwrap();
    assert_eq!(hers.partitions[0].offset, 3, "{hers:?}");
    // The broker-side id is prefix + claim + "." + name, as Kafka's own tools show it.
    let mut kafka_tool = KafkaMember::start(&broker, "web.alice.solo", &topic, 1);
    drop(again);
    let committed = kafka_tool.stop().await;
    assert_eq!(committed.get(&0), Some(&3), "{committed:?}");
}

#[tokio::test]
async fn members_on_two_gateways_behind_a_balancer_share_partitions_and_survive_a_kill() {
    // Two gateways behind HAProxy, as in the scale-out test; a member through each. Kafka's
    // coordinator is the only shared state: killing one gateway (no LeaveGroup) moves its
    // member's partitions to the other after the session timeout, and the killed member's
    // client comes back through the balancer and takes its share again.
    let broker = sqlite_broker().await;
    let topic = topic_with(&broker, 4, 5).await;
    let gateways: Vec<(SocketAddr, SocketAddr)> =
        (0..2).map(|_| (listen_addr(), listen_addr())).collect();
    let mut running = Vec::new();
    for (addr, admin) in &gateways {
        let gateway = GatewayConfig::on(*addr)
            .admin(*admin)
            .kafka_upstream("kafka", &broker.bootstrap, "")
            .kafka_route("kafka", "/kafka", "kafka", GROUPS)
            .start(binary())
            .await;
        running.push(Some(gateway));
    }
    let balancer = Balancer::start(&gateways).await;
    let url = format!("ws://{}/kafka", balancer.addr);
    let members_on = |i: usize| {
        settled(
            gateways[i].1,
            "streamgate_group_members{route=\"kafka\"}",
            1.0,
        )
    };

    let mut a = PubSubClient::connect(&url).await.unwrap();
    let (sa, started) = a
        .subscribe(group_subscribe(&topic, "team-lb", CommitMode::Manual, 1000))
        .await
        .unwrap();
    assert_eq!(
        started.partitions.len(),
        4,
        "alone, a member gets all: {started:?}"
    );
    let mut ma = Member {
        assigned: started.partitions.iter().map(|s| s.partition).collect(),
        ..Default::default()
    };
    read_until(&mut a, &mut ma, Duration::from_secs(10), |m| {
        m.values().len() == 20
    })
    .await;
    a.commit(sa, &ma.cursor.clone()).await.unwrap();
    let a_gateway = if members_on(0).await == 1.0 { 0 } else { 1 };
    let b_gateway = 1 - a_gateway;

    // B through the balancer lands on the other gateway (round robin; a health check that
    // missed under load may send it to A's, so it comes back until it lands there) and gets half.
    let mut landed = None;
    for _ in 0..10 {
        let mut b = PubSubClient::connect(&url).await.unwrap();
        let (sb, b_started) = b
            .subscribe(group_subscribe(&topic, "team-lb", CommitMode::Manual, 1000))
            .await
            .unwrap();
        if members_on(b_gateway).await == 1.0 {
            landed = Some((b, sb, b_started));
            break;
        }
        b.close().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (b, _sb, b_started) =
        landed.expect("the balancer sent the second member to the other gateway");
    let b_assigned: BTreeSet<i32> = b_started.partitions.iter().map(|s| s.partition).collect();
    assert_eq!(b_assigned.len(), 2, "{b_started:?}");
    for s in &b_started.partitions {
        assert_eq!(s.offset, 5, "B starts at the group's commit: {b_started:?}");
    }
    read_until(&mut a, &mut ma, Duration::from_secs(20), |m| {
        m.assigned.len() == 2
    })
    .await;
    assert!(
        ma.assigned.is_disjoint(&b_assigned),
        "{ma:?} {b_assigned:?}"
    );

    // SIGKILL B's gateway: nothing leaves the group for B, so only B's session timing out
    // (6 s here) tells the coordinator; A's next heartbeat is then answered "rebalance in
    // progress" and A joins again: a new assignment frame.
    // (Frames still on their way from B's join are read first: they are not the kill's.)
    drain(&mut a, &mut ma, Duration::from_secs(2)).await;
    let killed = Instant::now();
    drop(running[b_gateway].take());
    drop(b);
    let seen = ma.generations.len();
    read_until(&mut a, &mut ma, Duration::from_secs(30), |m| {
        m.generations.len() > seen
    })
    .await;
    let noticed = killed.elapsed();
    assert!(
        noticed >= Duration::from_secs(4),
        "A was reassigned {noticed:?} after the kill, before B's session could time out: something left the group for the killed member"
    );
    if ma.assigned.len() == 4 {
        // Kafka: the new generation gives A everything. B committed nothing, so A reads B's
        // partitions from the group's commit.
        produce_new(&broker, &topic).await;
        read_until(&mut a, &mut ma, Duration::from_secs(10), |m| {
            m.values().iter().filter(|v| v.starts_with("new")).count() == 8
        })
        .await;
    } else {
        // tansu 0.6 drops the silent member inside the heartbeat without re-forming the group,
        // so A's rejoin gets the old generation and assignment back (tansu-broker 0.6.0,
        // coordinator/group/administrator.rs, `Inner<Formed>::heartbeat`): B's partitions wait
        // for the group's next change. Kafka re-forms the group here.
        assert_eq!(ma.assigned.len(), 2, "{ma:?}");
        println!("tansu: B's partitions wait for the next member ({noticed:?} after the kill)");
    }

    // B's client comes back through the balancer (only A's gateway is up): the group re-forms
    // without the dead member, B takes half, from the group's commit (nothing skipped).
    let seen = ma.generations.len();
    let mut b = PubSubClient::connect(&url).await.unwrap();
    let (_sb, b_started) = b
        .subscribe(group_subscribe(&topic, "team-lb", CommitMode::Manual, 1000))
        .await
        .unwrap();
    let b_assigned: BTreeSet<i32> = b_started.partitions.iter().map(|s| s.partition).collect();
    assert_eq!(
        b_assigned.len(),
        2,
        "the dead member is gone from the group: {b_started:?}"
    );
    // A's own new assignment (A may still hold an old one of the same size: wait for the frame).
    read_until(&mut a, &mut ma, Duration::from_secs(20), |m| {
        m.generations.len() > seen
    })
    .await;
    assert_eq!(ma.assigned.len(), 2, "{ma:?}");
    assert!(
        ma.assigned.is_disjoint(&b_assigned),
        "{ma:?} {b_assigned:?}"
    );
    assert_eq!(
        settled(
            gateways[a_gateway].1,
            "streamgate_group_members{route=\"kafka\"}",
            2.0
        )
        .await,
        2.0,
        "both members on the surviving gateway"
    );
    let mut mb = Member {
        assigned: b_assigned.clone(),
        ..Default::default()
    };
    if !ma.values().iter().any(|v| v.starts_with("new")) {
        produce_new(&broker, &topic).await;
    }
    read_until(&mut b, &mut mb, Duration::from_secs(10), |m| {
        m.records.values().map(Vec::len).sum::<usize>() >= 2 * b_assigned.len()
    })
    .await;
    for (p, records) in &mb.records {
        assert_eq!(
            records[0].0, 5,
            "partition {p} goes on from the group's commit: {mb:?}"
        );
    }
    println!("a killed gateway's member was noticed after {noticed:?}");
}

/// Reads whatever frames come within `quiet` of each other into `member`.
async fn drain(c: &mut PubSubClient, member: &mut Member, quiet: Duration) {
    while let Ok(frame) = tokio::time::timeout(quiet, c.recv()).await {
        member.take(frame.expect("the connection stays up"));
    }
}

/// Two new records on each of the four partitions, `new{p}-{i}`.
async fn produce_new(broker: &Broker, topic: &str) {
    for p in 0..4 {
        produce(broker, topic, p, &format!("new{p}-"), 2).await;
    }
}

#[tokio::test]
async fn a_commit_outside_the_log_starts_the_partition_by_from() {
    // A commit past the end of a partition's log (written by a tool, or left from a topic since
    // recreated) is not a place to resume: the partition starts by the subscribe's `from`, as a
    // Kafka consumer's auto.offset.reset does, and the other partition at its commit.
    let broker = sqlite_broker().await;
    let topic = topic_with(&broker, 2, 3).await;
    let gw = group_gateway(&broker).await;
    // A group of its own per case: each starts from the same commits, and the second member
    // does not join while the first is still leaving (that is another test's subject).
    for (from, p0, group) in [
        (StartFrom::Earliest, 0, "team-reset-e"),
        (StartFrom::Latest, 3, "team-reset-l"),
    ] {
        let python = std::env::var("STREAMGATE_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = streamgate_testkit::workspace_root().join("tests/python/group_member.py");
        let committed = tokio::process::Command::new(python)
            .arg(script)
            .args([&broker.bootstrap, &format!("web.{group}"), &topic])
            .args(["--partitions", "2", "--commit", "0:1000,1:2"])
            .output()
            .await
            .expect("run the librdkafka committer");
        let said = String::from_utf8_lossy(&committed.stdout);
        assert!(
            said.contains("\"0\": 1000") && said.contains("\"1\": 2"),
            "{said}{}",
            String::from_utf8_lossy(&committed.stderr)
        );
        let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
        let mut subscribe = group_subscribe(&topic, group, CommitMode::Manual, 10);
        subscribe.from = from as i32;
        let (_s, started) = c
            .subscribe(subscribe)
            .await
            .unwrap_or_else(|e| panic!("{from:?}: a commit outside the log is not an error: {e}"));
        let starts: BTreeMap<i32, i64> = started
            .partitions
            .iter()
            .map(|s| (s.partition, s.offset))
            .collect();
        assert_eq!(
            starts,
            BTreeMap::from([(0, p0), (1, 2)]),
            "{from:?}: partition 0 by `from`, partition 1 at its commit"
        );
        c.close().await.unwrap();
    }
    assert!(
        gw.log().contains("lies outside the partition's log"),
        "{}",
        gw.log()
    );
}
