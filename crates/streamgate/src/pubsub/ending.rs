//! What ends a pub/sub session or event stream besides its client and its own limits, the same
//! for both transports: the gateway shutting down, a reload that no longer allows the caller
//! or a topic it read (or that changes what it may receive, or the Kafka identity it reads
//! through), the caller's credential expiring. Each transport renders the end its own way
//! (a WebSocket Close frame or an error under a subscription's sequence; an `error` event).

use super::target::{KafkaAccess, RecordMatcher, SessionCheck};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::watch;

/// What else ends a session, besides its client and its own limits.
pub(crate) struct Endings {
    /// Turns true when the gateway shuts down (Close 1001).
    pub shutdown: watch::Receiver<bool>,
    /// A new configuration to re-check the session against (Close 1008 when it no longer
    /// allows the session's caller or a topic it read).
    pub recheck: watch::Receiver<Option<Arc<dyn SessionCheck>>>,
    /// When the caller's credential expires (a JWT's `exp`; Close 1008).
    pub credential_expires: Option<std::time::SystemTime>,
}

/// Why a reload ends a subscription or event stream whose caller may still read its topic.
pub(crate) const ROW_FILTER_CHANGED: &str =
    "forbidden: the records this caller may receive changed; subscribe again";
pub(crate) const IDENTITY_CHANGED: &str =
    "forbidden: the route now reads another Kafka cluster, or with other credentials; subscribe again";

/// The session's access under a new configuration, or why it must end.
pub(crate) fn renewed(
    check: &dyn SessionCheck,
    access: &KafkaAccess,
    topics_read: &HashSet<String>,
) -> Result<KafkaAccess, String> {
    let (target, consumer) = check.recheck(&access.target.route_id, access.consumer.as_deref())?;
    // The row filter follows the new settings and consumer; a caller the new ones refuse ends.
    let row_filter = RecordMatcher::for_caller(
        &target.settings,
        consumer.as_deref(),
        access.claims.as_deref(),
    )?;
    let renewed = KafkaAccess {
        target,
        consumer,
        pool: Arc::clone(&access.pool),
        limits: Arc::clone(&access.limits),
        claims: access.claims.clone(),
        row_filter,
    };
    for topic in topics_read {
        if let Some(why) = renewed.refusal(topic) {
            return Err(format!("topic {topic:?} is no longer allowed ({why})"));
        }
    }
    Ok(renewed)
}
