//! Turning Kafka client errors into the contract's error classes and plain descriptions.

use rskafka::client::error::{Error as KafkaError, ProtocolError};
use std::time::Duration;
use streamgate_protocol::ErrorCode;

/// A failed Kafka operation: its class and the `err:` text of the error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KafkaFailure {
    /// The error class sent as `ErrorResp.code`.
    pub code: ErrorCode,
    /// What happened, e.g. `not found topic` or `OFFSET_OUT_OF_RANGE`.
    pub reason: String,
}

impl KafkaFailure {
    /// A failure with a fixed class and reason.
    pub(crate) fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// The brokers did not answer in time.
    pub(crate) fn timeout(after: Duration) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!(
                "no answer from the Kafka brokers within {} ms",
                after.as_millis()
            ),
        )
    }

    /// Classifies an rskafka error.
    pub(crate) fn from_kafka(e: &KafkaError) -> Self {
        match e {
            KafkaError::ServerError { protocol_error, .. } => Self::from_protocol(protocol_error),
            KafkaError::InvalidResponse(text)
                if text.contains("Could not find metadata for partition") =>
            {
                Self::new(ErrorCode::NotFound, "not found partition")
            }
            KafkaError::Timeout => {
                Self::new(ErrorCode::Unavailable, "the broker did not answer in time")
            }
            other => Self::from_description(other.to_string()),
        }
    }

    /// Kafka's OFFSET_OUT_OF_RANGE: an offset outside the partition's log.
    pub(crate) fn out_of_range() -> Self {
        Self::from_protocol(&ProtocolError::OffsetOutOfRange)
    }

    /// Whether this is Kafka's OFFSET_OUT_OF_RANGE (the broker's answer, or ours).
    pub(crate) fn is_out_of_range(&self) -> bool {
        self.code == ErrorCode::KafkaError
            && self.reason == kafka_name(&ProtocolError::OffsetOutOfRange)
    }

    /// Classifies an error code a broker answered with.
    pub(crate) fn from_protocol(e: &ProtocolError) -> Self {
        match e {
            ProtocolError::UnknownTopicOrPartition => {
                Self::new(ErrorCode::NotFound, "not found topic")
            }
            ProtocolError::TopicAuthorizationFailed
            | ProtocolError::ClusterAuthorizationFailed
            | ProtocolError::SaslAuthenticationFailed => {
                Self::new(ErrorCode::AuthFailed, kafka_name(e))
            }
            // The cluster is moving (a leader election, a rolling restart): not there now.
            retriable if is_retriable(retriable) => {
                Self::new(ErrorCode::Unavailable, kafka_name(retriable))
            }
            other => Self::new(ErrorCode::KafkaError, kafka_name(other)),
        }
    }

    /// Classifies a connection-level failure by what its description says, since rskafka
    /// wraps TLS and SASL failures in retry and transport errors.
    fn from_description(description: String) -> Self {
        let lower = description.to_ascii_lowercase();
        let code = if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake failure")
        {
            ErrorCode::TlsError
        } else if lower.contains("sasl")
            || lower.contains("authentication")
            || lower.contains("scram")
        {
            ErrorCode::AuthFailed
        } else {
            ErrorCode::Unavailable
        };
        Self::new(code, description)
    }
}

/// Whether Kafka calls `e` retriable (its clients' `RetriableException`s, less
/// UNKNOWN_TOPIC_OR_PARTITION, which the gateway answers as NOT_FOUND): the same request may
/// succeed once leadership settles or a broker is back.
pub(crate) fn is_retriable(e: &ProtocolError) -> bool {
    matches!(
        e,
        ProtocolError::LeaderNotAvailable
            | ProtocolError::NotLeaderOrFollower
            | ProtocolError::RequestTimedOut
            | ProtocolError::ReplicaNotAvailable
            | ProtocolError::NetworkException
            | ProtocolError::CoordinatorLoadInProgress
            | ProtocolError::CoordinatorNotAvailable
            | ProtocolError::NotCoordinator
            | ProtocolError::NotEnoughReplicas
            | ProtocolError::NotEnoughReplicasAfterAppend
            | ProtocolError::KafkaStorageError
            | ProtocolError::FencedLeaderEpoch
            | ProtocolError::UnknownLeaderEpoch
            | ProtocolError::OffsetNotAvailable
            | ProtocolError::PreferredLeaderNotAvailable
    )
}

/// Pauses between attempts while the cluster is away or moving: doubling from a first pause up
/// to a longest one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    longest: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, longest: Duration) -> Self {
        Self {
            first,
            next: first,
            longest,
        }
    }

    /// The pause the next wait takes.
    pub(crate) fn pause(&self) -> Duration {
        self.next
    }

    /// Waits the next pause, then doubles it (up to the longest).
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.longest);
    }

    /// Back to the first pause, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// `work`, or UNAVAILABLE naming `timeout` when it takes longer.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, KafkaFailure>>,
) -> Result<T, KafkaFailure> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(KafkaFailure::timeout(timeout)))
}

/// Kafka's own spelling of an error code, e.g. `OFFSET_OUT_OF_RANGE`.
pub(crate) fn kafka_name(e: &ProtocolError) -> String {
    let camel = format!("{e:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        if c == '(' {
            break;
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `text` with every `host:port` (and `[v6]:port`) written as `<broker>`.
pub(crate) fn without_addresses(text: &str) -> String {
    let is_host =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':');
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !is_host(chars[i]) {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // A run of host-like characters: an address when it ends in `:digits` after a host
        // with a letter, digit or bracket before the colon.
        let start = i;
        while i < chars.len() && is_host(chars[i]) {
            i += 1;
        }
        let whole: String = chars[start..i].iter().collect();
        // A sentence's full stop is not part of the address.
        let token = whole.trim_end_matches('.');
        let stop = &whole[token.len()..];
        let address = token.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !port.is_empty()
                && port.len() <= 5
                && port.chars().all(|c| c.is_ascii_digit())
                && host
                    .chars()
                    .any(|c| c.is_ascii_alphabetic() || c == '.' || c == '[')
        });
        out.push_str(if address { "<broker>" } else { token });
        out.push_str(stop);
    }
    out
}

/// The BAD_REQUEST for a timestamp that is neither -1, -2 nor a time.
pub(crate) fn invalid_timestamp(ms: i64) -> KafkaFailure {
    KafkaFailure::new(
        ErrorCode::BadRequest,
        format!("invalid timestamp {ms}: use -1 (latest), -2 (earliest) or milliseconds since the epoch"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_names_match_the_kafka_protocol_spelling() {
        assert_eq!(
            kafka_name(&ProtocolError::OffsetOutOfRange),
            "OFFSET_OUT_OF_RANGE"
        );
        assert_eq!(
            kafka_name(&ProtocolError::UnknownTopicOrPartition),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(
            kafka_name(&ProtocolError::NotLeaderOrFollower),
            "NOT_LEADER_OR_FOLLOWER"
        );
    }

    #[test]
    fn connection_failures_are_classified_by_cause() {
        let tls = KafkaFailure::from_description(
            "Connection error: invalid peer certificate: UnknownIssuer".into(),
        );
        assert_eq!(tls.code, ErrorCode::TlsError);
        let sasl = KafkaFailure::from_description("Sasl handshake failed: early eof".into());
        assert_eq!(sasl.code, ErrorCode::AuthFailed);
        let down = KafkaFailure::from_description(
            "error connecting to broker \"127.0.0.1:1\": Connection refused".into(),
        );
        assert_eq!(down.code, ErrorCode::Unavailable);
    }

    #[test]
    fn addresses_are_left_out() {
        assert_eq!(
            without_addresses("Connection error: error connecting to broker \"127.0.0.1:9092\": Connection refused (os error 111)"),
            "Connection error: error connecting to broker \"<broker>\": Connection refused (os error 111)"
        );
        assert_eq!(
            without_addresses("kafka-1.internal:9093 and [::1]:9092, then b-2.example.com:19092."),
            "<broker> and <broker>, then <broker>."
        );
        assert_eq!(
            without_addresses("OFFSET_OUT_OF_RANGE"),
            "OFFSET_OUT_OF_RANGE"
        );
        assert_eq!(
            without_addresses("no answer within 2000 ms: at 12:30"),
            "no answer within 2000 ms: at 12:30"
        );
    }
}
