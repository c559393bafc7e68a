//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! One process-wide set: every phase that has something to count reaches it through
//! [`metrics()`], so no handle has to be threaded through Pingora's phases or detached sessions.
//! Label values are bounded: route and upstream ids come from the configuration, statuses and
//! error classes from fixed sets.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;
use std::time::Duration;
use streamgate_protocol::{pub_sub_resp::Resp, PubSubResp};

/// Latency buckets in seconds, from 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric the gateway exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status (101 for accepted WebSocket sessions).
    pub http_requests: IntCounterVec,
    /// Time from the request's arrival to its access log line, by route.
    pub http_duration: HistogramVec,
    /// Failed attempts to reach an HTTP upstream node, by upstream and kind.
    pub upstream_failures: IntCounterVec,
    /// Requests refused by a limit, by which limit.
    pub limited: IntCounterVec,
    /// Pub/sub sessions open now.
    pub pubsub_sessions: IntGauge,
    /// Pub/sub sessions opened, by route.
    pub pubsub_sessions_opened: IntCounterVec,
    /// Pub/sub sessions ended, by reason: `client` when the client closed or its connection
    /// failed, the others when the gateway closed it.
    pub pubsub_sessions_closed: IntCounterVec,
    /// Pub/sub commands answered, by route, command and result.
    pub pubsub_commands: IntCounterVec,
    /// Records sent to pub/sub clients, by route.
    pub records_delivered: IntCounterVec,
    /// Record bytes (keys, values, headers) sent to pub/sub clients, by route.
    pub record_bytes_delivered: IntCounterVec,
    /// Server-Sent Events streams started, by route.
    pub sse_streams_opened: IntCounterVec,
    /// Push subscriptions open now, by route.
    pub subscriptions_open: IntGaugeVec,
    /// Group subscriptions (consumer-group members) open now, by route.
    pub group_members: IntGaugeVec,
    /// Key-set fetches from identity providers, by provider and result (`ok`, `failed`).
    pub provider_fetches: IntCounterVec,
    /// Keys an identity provider's set holds now, by provider.
    pub provider_keys: IntGaugeVec,
    /// 1 while an identity provider's last fetch failed (the last good keys stay in use).
    pub provider_stale: IntGaugeVec,
    /// Group commits, by route and result (`ok`, `refused`).
    pub group_commits: IntCounterVec,
    /// Rebalances group subscriptions went through, by route.
    pub group_rebalances: IntCounterVec,
    /// Records between the group's committed offsets and the readable end, by route, group name
    /// (the client's, without prefix or user namespace) and partition, summed over members.
    pub group_committed_lag: IntGaugeVec,
    /// Push subscriptions stalled, by route and reason (`credit`, `slow_reader`).
    pub subscriptions_stalled: IntGaugeVec,
    /// Records behind the head, summed over open subscriptions, by route and topic.
    pub subscription_lag: IntGaugeVec,
    /// Records pushed to subscriptions, by route.
    pub records_pushed: IntCounterVec,
    /// Record bytes (as credit counts them) pushed to subscriptions, by route.
    pub record_bytes_pushed: IntCounterVec,
    /// Records left out by subscription filters, by route.
    pub records_filtered: IntCounterVec,
    /// Upgraded connections (WebSocket) relayed to HTTP upstreams, open now.
    pub tunnels: IntGauge,
    /// Shared Kafka clients open now.
    pub kafka_clients: IntGauge,
    /// Fetch requests sent to brokers (many client fetches may share one).
    pub kafka_broker_fetches: IntCounter,
    /// Subscriptions' places in partitions' key indexes now (one per subscription and partition).
    pub key_index_slots: IntGauge,
    /// Records the key indexes handed to subscriptions.
    pub key_index_records: IntCounter,
    /// Fetches tried again because the cluster was moving (leader elections, restarts).
    pub kafka_fetch_retries: IntCounter,
    /// Record batches refused because they expand past the upstream's max_decompressed_bytes.
    pub kafka_batches_refused: IntCounter,
    /// Kafka request latency, by operation.
    pub kafka_duration: HistogramVec,
    /// Time to build a Kafka client or a fetch connection (connect, TLS, SASL, metadata).
    pub kafka_connect_duration: Histogram,
    /// Configuration reloads, by result (applied, refused).
    pub reloads: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let metric = HistogramVec::new(opts, labels).expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let metric =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };
        let count = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique");
            metric
        };
        let kafka_connect_duration = Histogram::with_opts(
            HistogramOpts::new(
                "streamgate_kafka_connect_duration_seconds",
                "Time to build a shared Kafka client or fetch connection: connect, TLS, SASL and metadata.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(kafka_connect_duration.clone()))
            .expect("metric names are unique");
        Metrics {
            http_requests: counter(
                "streamgate_http_requests_total",
                "Requests answered, by route and status (101: a WebSocket session was accepted).",
                &["route", "status"],
            ),
            http_duration: histogram(
                "streamgate_http_request_duration_seconds",
                "Time from a request's arrival to its last byte or its WebSocket upgrade.",
                &["route"],
            ),
            upstream_failures: counter(
                "streamgate_upstream_failures_total",
                "Failed attempts to reach an HTTP upstream node, by kind (connect, timeout, other).",
                &["upstream", "kind"],
            ),
            limited: counter(
                "streamgate_limited_total",
                "Requests, sessions and commands refused by a limit, by limit.",
                &["limit"],
            ),
            pubsub_sessions: gauge(
                "streamgate_pubsub_sessions",
                "Pub/sub WebSocket sessions open now.",
            ),
            tunnels: gauge(
                "streamgate_tunnels",
                "Upgraded connections (WebSocket and others) relayed to HTTP upstreams, open now.",
            ),
            pubsub_sessions_opened: counter(
                "streamgate_pubsub_sessions_opened_total",
                "Pub/sub WebSocket sessions accepted, by route.",
                &["route"],
            ),
            pubsub_sessions_closed: counter(
                "streamgate_pubsub_sessions_closed_total",
                "Pub/sub sessions ended, by reason: client (the client closed or its connection failed), or closed by the gateway for shutdown, idle, lifetime, slow_reader or frame_too_large.",
                &["reason"],
            ),
            pubsub_commands: counter(
                "streamgate_pubsub_commands_total",
                "Pub/sub commands answered, by route, command and result (ok or the error class).",
                &["route", "command", "result"],
            ),
            records_delivered: counter(
                "streamgate_pubsub_records_total",
                "Kafka records sent to pub/sub clients.",
                &["route"],
            ),
            record_bytes_delivered: counter(
                "streamgate_pubsub_record_bytes_total",
                "Encoded bytes of the Kafka records sent to pub/sub clients.",
                &["route"],
            ),
            sse_streams_opened: counter(
                "streamgate_sse_streams_opened_total",
                "Server-Sent Events streams accepted (a 200 was sent), by route.",
                &["route"],
            ),
            subscriptions_open: gauges(
                "streamgate_pubsub_subscriptions",
                "Push subscriptions open now, by route.",
                &["route"],
            ),
            group_members: gauges(
                "streamgate_group_members",
                "Group subscriptions (each a consumer-group member) open now, by route.",
                &["route"],
            ),
            provider_fetches: counter(
                "streamgate_identity_provider_fetches_total",
                "Key-set fetches from identity providers, by provider and result (ok, failed).",
                &["provider", "result"],
            ),
            provider_keys: gauges(
                "streamgate_identity_provider_keys",
                "Keys an identity provider's key set holds now.",
                &["provider"],
            ),
            provider_stale: gauges(
                "streamgate_identity_provider_stale",
                "1 while an identity provider's last key fetch failed (the last good keys stay in use).",
                &["provider"],
            ),
            group_commits: counter(
                "streamgate_group_commits_total",
                "Offset commits of group subscriptions (the client's and AUTO ones), by route and result: ok, or refused (the broker refused, or the client's cursor was bad).",
                &["route", "result"],
            ),
            group_committed_lag: gauges(
                "streamgate_group_committed_lag_records",
                "Records between each group subscription's committed offset and the readable end of its assigned partitions, by route, group name as clients give it (no prefix, no user namespace: bounded labels) and partition, summed over members.",
                &["route", "group", "partition"],
            ),
            group_rebalances: counter(
                "streamgate_group_rebalances_total",
                "New assignments group subscriptions received after their first, by route.",
                &["route"],
            ),
            subscriptions_stalled: gauges(
                "streamgate_pubsub_subscriptions_stalled",
                "Push subscriptions stalled now, by route and reason: credit (waiting for their client to grant more) or slow_reader (their last push not yet taken by the client's connection).",
                &["route", "reason"],
            ),
            subscription_lag: gauges(
                "streamgate_subscription_lag_records",
                "Records between each open subscription's position and the partition's high watermark, summed by route and topic (sessions and users are not named).",
                &["route", "topic"],
            ),
            records_pushed: counter(
                "streamgate_pubsub_records_pushed_total",
                "Kafka records pushed to subscriptions (also counted in streamgate_pubsub_records_total).",
                &["route"],
            ),
            record_bytes_pushed: counter(
                "streamgate_pubsub_record_bytes_pushed_total",
                "Record bytes (key, value, header names and values) pushed to subscriptions: what byte credit counts.",
                &["route"],
            ),
            records_filtered: counter(
                "streamgate_pubsub_records_filtered_total",
                "Kafka records a subscription's filter left out (they use no credit).",
                &["route"],
            ),
            kafka_clients: gauge(
                "streamgate_kafka_clients",
                "Shared Kafka clients open now (one per brokers, TLS settings and SASL identity).",
            ),
            kafka_broker_fetches: count(
                "streamgate_kafka_broker_fetches_total",
                "Fetch requests sent to Kafka brokers (identical concurrent client fetches share one).",
            ),
            key_index_slots: gauge(
                "streamgate_pubsub_key_index_slots",
                "Push subscriptions handed their keys' records by a partition's key index now, one per subscription and partition.",
            ),
            key_index_records: count(
                "streamgate_pubsub_key_index_records_total",
                "Records the partitions' key indexes handed to the push subscriptions of their keys.",
            ),
            kafka_fetch_retries: count(
                "streamgate_kafka_fetch_retries_total",
                "Fetches tried again after a retriable Kafka error (a leader moving, a broker restarting, a dropped connection).",
            ),
            kafka_batches_refused: count(
                "streamgate_kafka_batches_refused_total",
                "Record batches refused because they decompress past the upstream's max_decompressed_bytes.",
            ),
            kafka_duration: histogram(
                "streamgate_kafka_request_duration_seconds",
                "Latency of Kafka requests, by operation (fetch, list_offsets).",
                &["operation"],
            ),
            kafka_connect_duration,
            reloads: counter(
                "streamgate_config_reloads_total",
                "Configuration reloads on SIGHUP, by result (applied, refused).",
                &["result"],
            ),
            registry,
        }
    }

    /// Counts an answered pub/sub command.
    pub(crate) fn command(&self, route: &str, command: &str, answer: &PubSubResp) {
        let result = match &answer.resp {
            Some(Resp::ErrorResp(e)) => streamgate_protocol::ErrorCode::from_i32(e.code)
                .map_or("unknown_error", |c| c.name()),
            _ => "ok",
        };
        self.pubsub_commands
            .with_label_values(&[route, command, result])
            .inc();
    }

    /// Records a Kafka request's latency.
    pub(crate) fn kafka_call(&self, operation: &str, took: Duration) {
        self.kafka_duration
            .with_label_values(&[operation])
            .observe(took.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamgate_protocol::ErrorCode;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = metrics();
        m.command(
            "r",
            "fetch",
            &PubSubResp::error(1, ErrorCode::Forbidden, "no"),
        );
        m.http_requests.with_label_values(&["r", "200"]).inc();
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains(
            "streamgate_pubsub_commands_total{command=\"fetch\",result=\"FORBIDDEN\",route=\"r\"} 1"
        ));
        assert!(text.contains("streamgate_http_requests_total{route=\"r\",status=\"200\"} 1"));
        m.kafka_call("fetch", Duration::from_millis(3));
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains(
            "streamgate_kafka_request_duration_seconds_bucket{operation=\"fetch\",le=\"0.005\"} 1"
        ));
    }
}
