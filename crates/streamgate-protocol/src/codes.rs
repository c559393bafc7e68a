//! The stable error classes carried in `ErrorResp.code` (documented in `proto/pubsub.proto`).

/// What kind of failure an `error_resp` reports, so clients can branch without parsing text.
///
/// The numbers are part of the wire contract: never renumber, only add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorCode {
    /// The frame was not a `PubSubReq`, carried no known command, or had invalid arguments.
    BadRequest = 1,
    /// The topic or partition does not exist.
    NotFound = 2,
    /// The topic is outside the route's (or consumer's) allow-list; Kafka was not asked.
    Forbidden = 3,
    /// The broker answered with a Kafka error, named at the end of the message.
    KafkaError = 4,
    /// No broker could be reached, or it did not answer within the socket timeout.
    Unavailable = 5,
    /// The TLS handshake with the broker failed.
    TlsError = 6,
    /// SASL authentication with the broker failed.
    AuthFailed = 7,
    /// A single record is larger than the route's frame limit.
    TooLarge = 8,
    /// Too many commands are in flight on this connection.
    LimitExceeded = 9,
    /// A gateway fault.
    Internal = 10,
    /// A commit for a group generation that has ended: commit again after the next assignment.
    Rebalancing = 11,
}

impl ErrorCode {
    /// Every class, in numeric order.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::Forbidden,
        ErrorCode::KafkaError,
        ErrorCode::Unavailable,
        ErrorCode::TlsError,
        ErrorCode::AuthFailed,
        ErrorCode::TooLarge,
        ErrorCode::LimitExceeded,
        ErrorCode::Internal,
        ErrorCode::Rebalancing,
    ];

    /// The class for a wire value; `None` for 0 (APISIX's "unspecified") and unknown numbers.
    pub fn from_i32(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|code| *code as i32 == value)
    }

    /// The upper-case name used in docs and logs, e.g. `NOT_FOUND`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::KafkaError => "KAFKA_ERROR",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::TlsError => "TLS_ERROR",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Rebalancing => "REBALANCING",
        }
    }
}
