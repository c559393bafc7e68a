//! The reading modes: pull (the APISIX commands, list offset and fetch), push (subscriptions
//! with credit, resumed from cursors) and group (push subscriptions whose partitions and
//! positions a Kafka consumer group holds; built on push). Transports use them; they never use a
//! transport, and pull and push never use each other.

pub(crate) mod cursor;
pub(crate) mod group;
pub(crate) mod pull;
pub(crate) mod push;
