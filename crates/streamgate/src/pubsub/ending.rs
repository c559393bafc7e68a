//! What ends a pub/sub session or event stream from outside its client, the same for both
//! transports: the gateway shutting down, a reload that no longer allows the caller or a topic it
//! read, the caller's credential expiring, the route's `max_session` passing. [`Outside`] watches
//! for all of them and says which came first as an [`Ending`]; each transport only renders it (a
//! WebSocket Close frame with the ending's code and reason; an `error` or `end` event).
//!
//! One difference is on purpose. A reload that still allows the caller but changes what it may
//! receive (its row filter) or the Kafka identity a route reads through renews the session's
//! access: a WebSocket session then ends only the subscriptions that read with the old rules (its
//! pulls go on under the new ones), while an event stream, which is one subscription, ends.

use super::target::{KafkaAccess, KafkaTarget, RecordMatcher, SessionCheck};
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Sleep;

/// What can end a session from outside, as the proxy hands it over.
pub(crate) struct Endings {
    /// Turns true when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// A new configuration to re-check the session against.
    pub recheck: watch::Receiver<Option<Arc<dyn SessionCheck>>>,
    /// When the caller's credential expires (a JWT's `exp`).
    pub credential_expires: Option<SystemTime>,
}

/// Why a session or stream ended from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The gateway shuts down (WebSocket Close 1001).
    Shutdown,
    /// A reload no longer allows the caller, a topic it read, or (for what must end) the records
    /// it may receive or the cluster it reads (Close 1008, or FORBIDDEN).
    Revoked(String),
    /// The caller's credential expired (Close 1008, or FORBIDDEN).
    Expired,
    /// The route's `max_session` passed (Close 1001).
    Lifetime,
}

impl Ending {
    /// What the client is told.
    pub(crate) fn reason(&self) -> &str {
        match self {
            Self::Shutdown => "shutting down",
            Self::Revoked(why) => why,
            Self::Expired => "credentials expired: reconnect with a fresh token",
            Self::Lifetime => "session lifetime reached: reconnect",
        }
    }

    /// Whether the caller was refused (a policy ending) rather than asked to come back.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, Self::Revoked(_) | Self::Expired)
    }

    /// The ending's label in the closed-session metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Revoked(_) => "revoked",
            Self::Expired => "expired",
            Self::Lifetime => "lifetime",
        }
    }
}

/// What [`Outside::next`] saw first.
pub(crate) enum Seen {
    /// The session must end.
    Ended(Ending),
    /// A reload still allows the session; this is its access under the new configuration.
    Renewed(KafkaAccess),
}

/// The watch over a running session's outside endings.
pub(crate) struct Outside {
    shutdown: watch::Receiver<bool>,
    recheck: watch::Receiver<Option<Arc<dyn SessionCheck>>>,
    expiry: Pin<Box<Sleep>>,
    lifetime: Pin<Box<Sleep>>,
}

impl Outside {
    /// Starts watching; `max_session` is the route's session lifetime, if it has one.
    pub(crate) fn new(endings: Endings, max_session: Option<Duration>) -> Self {
        let until = |at: Option<Duration>| {
            Box::pin(tokio::time::sleep(
                at.unwrap_or(Duration::from_secs(u32::MAX.into())),
            ))
        };
        let expiry = endings
            .credential_expires
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default());
        Outside {
            shutdown: endings.shutdown,
            recheck: endings.recheck,
            expiry: until(expiry),
            lifetime: until(max_session),
        }
    }

    /// Waits for the next thing from outside. `access` is the session's access now and
    /// `topics_read` the topics it read, which a reload must still allow. Cancel-safe: it may
    /// lose a `select!` and be called again.
    pub(crate) async fn next(
        &mut self,
        access: &KafkaAccess,
        topics_read: &HashSet<String>,
    ) -> Seen {
        loop {
            tokio::select! {
                biased;
                Ok(()) = self.shutdown.changed() => if *self.shutdown.borrow() {
                    return Seen::Ended(Ending::Shutdown);
                },
                Ok(()) = self.recheck.changed() => {
                    let check = self.recheck.borrow_and_update().clone();
                    if let Some(check) = check {
                        return match renewed(&*check, access, topics_read) {
                            Ok(access) => Seen::Renewed(access),
                            Err(why) => Seen::Ended(Ending::Revoked(why)),
                        };
                    }
                },
                () = &mut self.expiry => return Seen::Ended(Ending::Expired),
                () = &mut self.lifetime => return Seen::Ended(Ending::Lifetime),
            }
        }
    }
}

/// Why a reload ends a subscription or event stream whose caller may still read its topic.
pub(crate) const ROW_FILTER_CHANGED: &str =
    "forbidden: the records this caller may receive changed; subscribe again";
pub(crate) const IDENTITY_CHANGED: &str =
    "forbidden: the route now reads another Kafka cluster, or with other credentials; subscribe again";

/// Why what was started with `row_filter` on `target` cannot go on reading under `renewed` (the
/// same caller's access after a reload), if so: the records it may receive, or the cluster or
/// credentials it reads with, changed.
pub(crate) fn reads_differently(
    row_filter: &Option<Arc<RecordMatcher>>,
    target: &KafkaTarget,
    renewed: &KafkaAccess,
) -> Option<&'static str> {
    if *row_filter != renewed.row_filter {
        Some(ROW_FILTER_CHANGED)
    } else if !target.identity.same_as(&renewed.target.identity) {
        Some(IDENTITY_CHANGED)
    } else {
        None
    }
}

/// The session's access under a new configuration, or why it must end.
fn renewed(
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
