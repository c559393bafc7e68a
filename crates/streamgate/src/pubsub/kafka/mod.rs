//! The Kafka tier: shared clients and the identity they speak as, the gateway's own broker
//! connections and Fetch request, record-batch decoding, the shared partition reader with its key
//! index, and consumer-group membership. It knows nothing of reading modes or transports.

pub(crate) mod batch;
pub(crate) mod cluster;
pub(crate) mod fetch;
pub(crate) mod group;
pub(crate) mod key_index;
pub(crate) mod pool;
pub(crate) mod reader;

pub(crate) use cluster::KafkaCluster;
pub(crate) use pool::KafkaPool;
