//! `limit-req`: a request rate per client IP, consumer or route (a token bucket each).
//! Requests over it are refused with 429 (or the configured status) and `Retry-After`.
//!
//! Buckets are kept in one map per route behind a lock that is never held across an await. A
//! full bucket is the same as no bucket, so when the map grows large the full ones are dropped:
//! memory follows the callers that are actually being limited.

use super::Plugin;
use crate::ctx::RequestCtx;
use crate::limits::client_key;
use crate::rate::Buckets;
use crate::respond::{self, Answer};
use async_trait::async_trait;
use pingora::proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use streamgate_config::model::{LimitKey, LimitReq};

/// Whose requests share a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    Ip(Option<IpAddr>),
    Consumer(Arc<str>),
    Route,
}

/// The plugin on one route.
#[derive(Debug)]
pub(crate) struct LimitReqPlugin {
    settings: LimitReq,
    buckets: Buckets<BucketKey>,
}

impl LimitReqPlugin {
    /// The plugin with its checked settings.
    pub(crate) fn new(settings: LimitReq) -> Self {
        Self {
            buckets: Buckets::new(settings.rate, settings.burst),
            settings,
        }
    }

    /// Takes a token for `key` at `now`; when there is none, the seconds until there is one.
    fn take(&self, key: BucketKey, now: Instant) -> Result<(), f64> {
        self.buckets.take(key, now)
    }
}

#[async_trait]
impl Plugin for LimitReqPlugin {
    fn name(&self) -> &'static str {
        "limit-req"
    }

    async fn access(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        let key = match self.settings.key {
            LimitKey::RemoteAddr => BucketKey::Ip(ctx.client.map(client_key)),
            LimitKey::Consumer => match &ctx.consumer {
                Some(c) => BucketKey::Consumer(c.username.as_str().into()),
                None => BucketKey::Ip(ctx.client.map(client_key)),
            },
            LimitKey::Route => BucketKey::Route,
        };
        let Err(wait) = self.take(key, Instant::now()) else {
            return Ok(false);
        };
        crate::metrics::metrics()
            .limited
            .with_label_values(&["limit-req"])
            .inc();
        let status = self.settings.rejected_code;
        let retry_after = wait.ceil().max(1.0) as u64;
        let message = format!(
            "{status} Too Many Requests: this route allows {} requests per second; retry after {retry_after} s",
            self.settings.rate
        );
        let answer = Answer::error(status, &message).retry_after(retry_after);
        respond::send(session, ctx, answer).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let plugin = LimitReqPlugin::new(LimitReq {
            rate: 2.0,
            burst: 3.0,
            key: LimitKey::RemoteAddr,
            rejected_code: 429,
        });
        let t0 = Instant::now();
        let me = || BucketKey::Ip(Some([127, 0, 0, 1].into()));
        for _ in 0..3 {
            assert!(plugin.take(me(), t0).is_ok());
        }
        let wait = plugin.take(me(), t0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "one token every 0.5 s: {wait}");
        assert!(
            plugin.take(BucketKey::Route, t0).is_ok(),
            "other keys are separate"
        );
        assert!(plugin.take(me(), t0 + Duration::from_millis(500)).is_ok());
        assert!(plugin.take(me(), t0 + Duration::from_millis(500)).is_err());
    }
}
