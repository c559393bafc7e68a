//! The token bucket behind every rate in the gateway: `limit-req` (per client, consumer or
//! route), failed authentications per client address, a pub/sub session's
//! `max_commands_per_second`, and topic re-listings per Kafka client.

use crate::sync::lock;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// Keyed buckets kept before the full ones are swept.
const SWEEP_ABOVE: usize = 10_000;

/// Token buckets by key, all at one rate and burst, behind one short lock (never held across an
/// await). A full bucket is the same as none, so once the map is large the full ones are
/// dropped: memory follows the keys that are actually being limited.
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    rate: f64,
    burst: f64,
    map: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq> Buckets<K> {
    /// Buckets refilled at `rate` per second up to `burst`.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            map: Mutex::default(),
        }
    }

    /// Takes a token from `key`'s bucket at `now`; when there is none, the seconds until
    /// there will be one.
    pub(crate) fn take(&self, key: K, now: Instant) -> Result<(), f64> {
        let (rate, burst) = (self.rate, self.burst);
        let mut map = lock(&self.map);
        if map.len() >= SWEEP_ABOVE {
            map.retain(|_, b| !b.is_full_at(rate, burst, now));
        }
        map.entry(key)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(rate, burst, now)
    }

    /// Without taking one: the seconds until `key` has a token, when it has none at `now`.
    pub(crate) fn wait(&self, key: &K, now: Instant) -> Option<f64> {
        lock(&self.map)
            .get(key)?
            .wait_at(self.rate, self.burst, now)
    }
}

/// Tokens refilled at `rate` per second up to `burst`; a full bucket is the same as a new one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens at `now`.
    pub(crate) fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            updated: now,
        }
    }

    /// Takes a token at `now`; when there is none, the seconds until there will be one.
    pub(crate) fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), f64> {
        self.tokens = self.tokens_at(rate, burst, now);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / rate)
        }
    }

    /// Without taking one: the seconds until a token is there, when none is at `now`.
    pub(crate) fn wait_at(&self, rate: f64, burst: f64, now: Instant) -> Option<f64> {
        let tokens = self.tokens_at(rate, burst, now);
        (tokens < 1.0).then(|| (1.0 - tokens) / rate)
    }

    /// Whether the bucket will be full again at `now` (and so can be forgotten).
    pub(crate) fn is_full_at(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens_at(rate, burst, now) >= burst
    }

    fn tokens_at(&self, rate: f64, burst: f64, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.updated).as_secs_f64() * rate;
        (self.tokens + refill).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(3.0, t0);
        for _ in 0..3 {
            assert!(bucket.take(2.0, 3.0, t0).is_ok());
        }
        let wait = bucket.take(2.0, 3.0, t0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "one token every 0.5 s: {wait}");
        let later = t0 + Duration::from_millis(500);
        assert!(bucket.take(2.0, 3.0, later).is_ok());
        assert!(bucket.take(2.0, 3.0, later).is_err());
        assert!(!bucket.is_full_at(2.0, 3.0, later));
        assert_eq!(bucket.wait_at(2.0, 3.0, later), Some(0.5));
        assert_eq!(
            bucket.wait_at(2.0, 3.0, later + Duration::from_millis(500)),
            None
        );
        assert!(bucket.is_full_at(2.0, 3.0, later + Duration::from_secs(2)));
    }
}
