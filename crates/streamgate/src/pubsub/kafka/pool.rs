//! Shared Kafka clients.
//!
//! One rskafka client per [`KafkaIdentity`] (bootstrap brokers, TLS settings, SASL identity) for
//! listings and offset look-ups, and beside it the identity's own fetch connections ([`Brokers`],
//! see fetch.rs), reused by every session of every route with the same three; two routes with
//! different credentials never share a connection. Identities are built once per route when the
//! route table is built, not per command. Partition clients are cached per client. Clients idle for
//! [`IDLE_CLIENT_TTL`] are dropped on a later lookup. Locks are held only to look up or insert an
//! entry, never across a network call.

use super::cluster::{sasl_config, KafkaCluster};
use super::fetch::{Brokers, PartitionFetcher};
use super::reader::PartitionReader;
use crate::pubsub::failure::{bounded, KafkaFailure};
use crate::rate::TokenBucket;
use crate::sync::lock;
use rskafka::client::partition::UnknownTopicHandling;
use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use streamgate_config::model::{Isolation, Sasl, UpstreamTls};
use streamgate_protocol::ErrorCode;
use tokio::sync::OnceCell;

/// Extra time past rskafka's own deadline before a connect attempt counts as hung.
const CAUSE_GRACE: Duration = Duration::from_secs(1);

/// How long an unused client is kept.
pub(crate) const IDLE_CLIENT_TTL: Duration = Duration::from_secs(300);

/// What one shared client is for: a cluster, the SASL identity a route speaks as, and which
/// records it reads (readers of another isolation see another log end).
pub(crate) struct KafkaIdentity {
    cluster: Arc<KafkaCluster>,
    sasl: Option<Sasl>,
    isolation: Isolation,
    key: ClientKey,
}

impl KafkaIdentity {
    /// The identity of a route on `cluster` that authenticates as `sasl` and reads with
    /// `isolation`.
    pub(crate) fn new(
        cluster: Arc<KafkaCluster>,
        sasl: Option<Sasl>,
        isolation: Isolation,
    ) -> Self {
        let key = ClientKey {
            brokers: cluster.brokers.clone(),
            tls: cluster.tls.as_ref().map(|(t, _)| t.clone()),
            sasl: sasl.clone(),
            broker_fetch_wait: cluster.broker_fetch_wait,
            max_decompressed_bytes: cluster.max_decompressed_bytes,
            isolation,
        };
        Self {
            cluster,
            sasl,
            isolation,
            key,
        }
    }
}

impl KafkaIdentity {
    /// Whether `other` reaches the same brokers the same way (TLS, credentials, isolation): a
    /// reader started under one must not go on under a configuration that names the other.
    pub(crate) fn same_as(&self, other: &KafkaIdentity) -> bool {
        self.key == other.key
    }
}

impl fmt::Debug for KafkaIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaIdentity")
            .field("cluster", &self.cluster)
            .field("sasl", &self.sasl)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    brokers: Vec<String>,
    tls: Option<UpstreamTls>,
    sasl: Option<Sasl>,
    /// Readers of the client fetch with it, so upstreams that differ in it share nothing.
    broker_fetch_wait: Duration,
    /// Likewise: readers decode within it.
    max_decompressed_bytes: usize,
    isolation: Isolation,
}

type PartitionKey = (String, i32);

struct ClientSlot {
    client: OnceCell<Arc<Client>>,
    /// The identity's own broker connections, which carry its fetches.
    brokers: Arc<Brokers>,
    partitions: Mutex<HashMap<PartitionKey, Arc<OnceCell<Arc<PartitionReader>>>>>,
    /// The cluster's topics and their partitions, as last listed, and when.
    topics: Mutex<Option<(Instant, Arc<TopicList>)>>,
    /// Listings asked for by names not in a fresh listing (a topic created a moment ago, or a
    /// name that does not exist).
    relists: Mutex<TokenBucket>,
    last_used: Mutex<Instant>,
}

/// Topic names and their partition numbers.
type TopicList = HashMap<String, std::collections::BTreeSet<i32>>;

/// How long a listing of the cluster's topics answers "does this topic exist?" for a name it
/// holds.
const TOPIC_LIST_TTL: Duration = Duration::from_secs(1);

/// A name missing from a fresh listing lists again (it may have been created a moment ago), at
/// most this often per second per client: clients choose names, and a listing names every topic.
const RELISTS_PER_SECOND: f64 = 10.0;

/// The process-wide pool of Kafka clients.
#[derive(Default)]
pub(crate) struct KafkaPool {
    slots: Mutex<HashMap<ClientKey, Arc<ClientSlot>>>,
    last_sweep: Mutex<Option<Instant>>,
}

impl fmt::Debug for KafkaPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPool")
            .field("clients", &lock(&self.slots).len())
            .finish()
    }
}

impl KafkaPool {
    /// Fetch requests sent to brokers since start (after coalescing).
    pub(crate) fn broker_fetches(&self) -> u64 {
        crate::metrics::metrics().kafka_broker_fetches.get()
    }

    /// How many Kafka clients exist now.
    pub(crate) fn client_count(&self) -> usize {
        lock(&self.slots).len()
    }

    /// The reader for `topic`/`partition` through the client for `identity`, connecting first
    /// if needed. Every network step is bounded by `timeout`.
    pub(crate) async fn partition(
        &self,
        identity: &KafkaIdentity,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> Result<Arc<PartitionReader>, KafkaFailure> {
        let (slot, client) = self.client(identity, timeout).await?;
        let cluster = &*identity.cluster;
        let cell = {
            let mut parts = lock(&slot.partitions);
            Arc::clone(parts.entry((topic.to_string(), partition)).or_default())
        };
        bounded(timeout, async {
            cell.get_or_try_init(|| async {
                // rskafka's metadata request for one topic asks the broker to create it when
                // missing (allow_auto_topic_creation is written as true, with no setting), and
                // Kafka's default auto.create.topics.enable honours that. So a topic is looked
                // up in the listing of all topics (a request that creates nothing) first, and
                // only one that exists is ever named to the broker.
                exists(&slot, &client, topic, partition).await?;
                let fetcher = PartitionFetcher::new(Arc::clone(&slot.brokers), topic, partition);
                client
                    .partition_client(topic, partition, UnknownTopicHandling::Error)
                    .await
                    .map(|pc| {
                        Arc::new(PartitionReader::new(pc, fetcher, cluster.broker_fetch_wait))
                    })
                    .map_err(|e| KafkaFailure::from_kafka(&e))
            })
            .await
            .cloned()
        })
        .await
        .inspect_err(|_| {
            // Do not keep entries for topics that do not exist: clients choose the names.
            let mut parts = lock(&slot.partitions);
            if let Some(c) = parts.get(&(topic.to_string(), partition)) {
                if c.get().is_none() {
                    parts.remove(&(topic.to_string(), partition));
                }
            }
        })
    }

    /// The partitions of `topic` (NOT_FOUND when the cluster has no such topic), from a
    /// listing of all topics: naming a topic that way never creates it.
    pub(crate) async fn partitions_of(
        &self,
        identity: &KafkaIdentity,
        topic: &str,
        timeout: Duration,
    ) -> Result<Vec<i32>, KafkaFailure> {
        let (slot, client) = self.client(identity, timeout).await?;
        let list = bounded(timeout, listing(&slot, &client, topic)).await?;
        match list.get(topic) {
            None => Err(KafkaFailure::new(ErrorCode::NotFound, "not found topic")),
            Some(partitions) => Ok(partitions.iter().copied().collect()),
        }
    }

    /// The slot and shared client for `identity`, connecting first if needed.
    async fn client(
        &self,
        identity: &KafkaIdentity,
        timeout: Duration,
    ) -> Result<(Arc<ClientSlot>, Arc<Client>), KafkaFailure> {
        let (cluster, sasl) = (&*identity.cluster, identity.sasl.as_ref());
        let slot = self.slot(identity);
        let connect = timeout.min(cluster.connect_timeout);
        // rskafka gives up at `connect` with the real cause (refused, TLS, SASL); the outer bound
        // only catches a hang, so it must not race that answer.
        let client = bounded(connect + CAUSE_GRACE, async {
            slot.client
                .get_or_try_init(|| build_client(cluster, sasl, connect))
                .await
                .cloned()
        })
        .await?;
        Ok((slot, client))
    }

    /// The identity's broker connections (a group member opens its coordinator's through them).
    pub(crate) fn brokers(&self, identity: &KafkaIdentity) -> Arc<Brokers> {
        Arc::clone(&self.slot(identity).brokers)
    }

    /// Drops the reader of a topic the broker no longer knows (deleted since it was cached), so
    /// the next command checks the topic list again rather than naming it to the broker.
    pub(crate) fn forget(&self, identity: &KafkaIdentity, topic: &str, partition: i32) {
        let Some(slot) = lock(&self.slots).get(&identity.key).cloned() else {
            return;
        };
        lock(&slot.partitions).remove(&(topic.to_string(), partition));
        *lock(&slot.topics) = None;
    }

    fn slot(&self, identity: &KafkaIdentity) -> Arc<ClientSlot> {
        self.sweep_idle();
        let key = &identity.key;
        let mut slots = lock(&self.slots);
        let slot = match slots.get(key) {
            Some(slot) => slot,
            None => slots.entry(key.clone()).or_insert_with(|| {
                Arc::new(ClientSlot {
                    client: OnceCell::new(),
                    brokers: Arc::new(Brokers::new(
                        Arc::clone(&identity.cluster),
                        identity.sasl.clone(),
                        identity.isolation,
                    )),
                    partitions: Mutex::default(),
                    topics: Mutex::default(),
                    relists: Mutex::new(TokenBucket::full(
                        RELISTS_PER_SECOND,
                        std::time::Instant::now(),
                    )),
                    last_used: Mutex::new(Instant::now()),
                })
            }),
        };
        *lock(&slot.last_used) = Instant::now();
        Arc::clone(slot)
    }

    /// Drops clients nobody used for [`IDLE_CLIENT_TTL`], at most once a minute.
    fn sweep_idle(&self) {
        let now = Instant::now();
        {
            let mut last = lock(&self.last_sweep);
            if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(60)) {
                return;
            }
            *last = Some(now);
        }
        lock(&self.slots).retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || now.duration_since(*lock(&slot.last_used)) < IDLE_CLIENT_TTL
        });
    }
}

/// Whether `topic` and `partition` exist, from a listing of the cluster's topics: the last one
/// when it is fresh and holds the name, else a new one (for missing names at most
/// [`RELISTS_PER_SECOND`]).
async fn exists(
    slot: &ClientSlot,
    client: &Client,
    topic: &str,
    partition: i32,
) -> Result<(), KafkaFailure> {
    let list = listing(slot, client, topic).await?;
    match list.get(topic) {
        None => Err(KafkaFailure::new(ErrorCode::NotFound, "not found topic")),
        Some(partitions) if !partitions.contains(&partition) => Err(KafkaFailure::new(
            ErrorCode::NotFound,
            "not found partition",
        )),
        Some(_) => Ok(()),
    }
}

/// A listing of the cluster's topics to look `topic` up in: the last one when it is fresh and
/// holds the name, else a new one (for missing names at most [`RELISTS_PER_SECOND`]).
async fn listing(
    slot: &ClientSlot,
    client: &Client,
    topic: &str,
) -> Result<Arc<TopicList>, KafkaFailure> {
    let fresh = lock(&slot.topics)
        .as_ref()
        .filter(|(at, _)| at.elapsed() < TOPIC_LIST_TTL)
        .map(|(_, list)| Arc::clone(list));
    let list = match fresh {
        Some(list)
            if list.contains_key(topic)
                || lock(&slot.relists)
                    .take(
                        RELISTS_PER_SECOND,
                        RELISTS_PER_SECOND,
                        std::time::Instant::now(),
                    )
                    .is_err() =>
        {
            list
        }
        _ => {
            let listed = client
                .list_topics()
                .await
                .map_err(|e| KafkaFailure::from_kafka(&e))?;
            let list: Arc<TopicList> =
                Arc::new(listed.into_iter().map(|t| (t.name, t.partitions)).collect());
            *lock(&slot.topics) = Some((Instant::now(), Arc::clone(&list)));
            list
        }
    };
    Ok(list)
}

async fn build_client(
    cluster: &KafkaCluster,
    sasl: Option<&Sasl>,
    timeout: Duration,
) -> Result<Arc<Client>, KafkaFailure> {
    let mut builder = ClientBuilder::new(cluster.brokers.clone())
        .client_id("streamgate")
        .backoff_config(backoff(timeout));
    if let Some((_, config)) = &cluster.tls {
        builder = builder.tls_config(Arc::clone(config));
    }
    if let Some(s) = sasl {
        builder = builder.sasl_config(sasl_config(s));
    }
    let started = std::time::Instant::now();
    let client = builder.build().await;
    crate::metrics::metrics()
        .kafka_connect_duration
        .observe(started.elapsed().as_secs_f64());
    let client = client.map_err(|e| KafkaFailure::from_kafka(&e))?;
    tracing::debug!(upstream = %cluster.upstream_id, "connected a Kafka client");
    Ok(Arc::new(client))
}

/// rskafka retries forever by default; bound every operation by the route's socket timeout.
pub(crate) fn backoff(timeout: Duration) -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        base: 2.0,
        deadline: Some(timeout),
    }
}
