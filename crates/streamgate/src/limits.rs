//! Concurrency limits: what all clients together, one client IP, or one consumer may hold at
//! once (`[server.limits]`).
//!
//! A request is admitted ([`ConnectionLimits::admit`]) when it arrives: it takes a [`Slot`] and
//! gives it back when its context is dropped; an accepted WebSocket session or relayed tunnel
//! carries its slot (and a session its consumer's [`ConsumerSlot`]) until it closes. Counters
//! live behind short, never-awaited locks.

use crate::rate::Buckets;
use crate::sync::lock;
use pingora::http::RequestHeader;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use streamgate_config::model::Limits;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections`: the gateway as a whole is full.
    Total,
    /// `max_connections_per_ip`: this client holds too much.
    PerIp,
    /// `max_sessions_per_consumer`: this consumer has too many sessions open.
    PerConsumer,
}

impl Refusal {
    /// The metric label and log name of the limit.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
            Refusal::PerConsumer => "max_sessions_per_consumer",
        }
    }
}

/// The live counts behind `[server.limits]`.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    config: Limits,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    per_consumer: Mutex<HashMap<Arc<str>, usize>>,
    /// Failed authentications per client address: a token taken per 401.
    auth_failures: Buckets<IpAddr>,
    /// Bytes of pub/sub answers ready and not yet written, all sessions together.
    queued_answers: AtomicUsize,
}

/// An answer's place in `max_queued_answer_bytes`, given back when it is written (dropped).
#[derive(Debug)]
pub(crate) struct AnswerHold {
    limits: Arc<ConnectionLimits>,
    bytes: usize,
}

impl Drop for AnswerHold {
    fn drop(&mut self) {
        self.limits
            .queued_answers
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A request's or session's place in the counts; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl Slot {
    /// Counts a failed authentication (a 401) from this request's client.
    pub(crate) fn auth_failed(&self) {
        if let Some(ip) = self.ip {
            let _ = self
                .limits
                .auth_failures
                .take(ip, std::time::Instant::now());
        }
    }
}

/// A pub/sub session's place in its consumer's count; given back on drop.
#[derive(Debug)]
pub(crate) struct ConsumerSlot {
    limits: Arc<ConnectionLimits>,
    consumer: Arc<str>,
}

/// A request refused at admission, ready to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    /// 503 (the gateway is full), 429 (this client holds too much), 431 or 413 (too large).
    pub status: u16,
    /// The limit's name, as in `[server.limits]` and the `streamgate_limited_total` label.
    pub limit: &'static str,
    /// What the client is told.
    pub message: &'static str,
}

impl Refused {
    /// Seconds after which a retry may succeed, for the limits that free up by themselves.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        matches!(self.status, 429 | 503).then_some(1)
    }
}

impl ConnectionLimits {
    /// Counts for `config`.
    pub(crate) fn new(config: Limits) -> Arc<Self> {
        let auth_burst = f64::from(config.max_auth_failures_per_minute);
        Arc::new(Self {
            config,
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            per_consumer: Mutex::default(),
            auth_failures: Buckets::new(auth_burst / 60.0, auth_burst),
            queued_answers: AtomicUsize::new(0),
        })
    }

    /// The configured limits.
    pub(crate) fn config(&self) -> &Limits {
        &self.config
    }

    /// Admits a request from `client`: its slot, or why it is refused (the gateway or this
    /// client is full, or its headers or declared body are over the limits). Refusals are
    /// counted in `streamgate_limited_total`.
    pub(crate) fn admit(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        req: &RequestHeader,
    ) -> Result<Slot, Refused> {
        let admitted = match self.acquire(client) {
            Ok(slot) => match oversized(req, &self.config) {
                None => Ok(slot),
                Some(refused) => Err(refused),
            },
            Err(Refusal::Total) => Err(Refused {
                status: 503,
                limit: Refusal::Total.name(),
                message:
                    "503 Service Unavailable: the gateway is at its connection limit; retry shortly",
            }),
            Err(other) => Err(Refused {
                status: 429,
                limit: other.name(),
                message:
                    "429 Too Many Requests: this client has too many requests or sessions open",
            }),
        };
        if let Err(refused) = &admitted {
            crate::metrics::metrics()
                .limited
                .with_label_values(&[refused.limit])
                .inc();
        }
        admitted
    }

    /// Holds `bytes` of an answer until it is written, or refuses when the answers of all
    /// sessions together would pass `max_queued_answer_bytes` (counted in
    /// `streamgate_limited_total`): slow readers cannot make the gateway buffer without bound.
    pub(crate) fn hold_answer(self: &Arc<Self>, bytes: usize) -> Option<AnswerHold> {
        let limit = self.config.max_queued_answer_bytes;
        let admitted = self
            .queued_answers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok();
        if !admitted {
            crate::metrics::metrics()
                .limited
                .with_label_values(&["max_queued_answer_bytes"])
                .inc();
            return None;
        }
        Some(AnswerHold {
            limits: Arc::clone(self),
            bytes,
        })
    }

    /// When `client` used up its failed authentications: the seconds until it may try again.
    /// Counted in `streamgate_limited_total{limit="max_auth_failures_per_minute"}`.
    pub(crate) fn auth_blocked(&self, client: Option<IpAddr>) -> Option<u64> {
        let ip = client.map(client_key)?;
        let wait = self.auth_failures.wait(&ip, std::time::Instant::now())?;
        crate::metrics::metrics()
            .limited
            .with_label_values(&["max_auth_failures_per_minute"])
            .inc();
        Some(wait.ceil().max(1.0) as u64)
    }

    /// Takes a slot for a request from `ip`, or says which limit is full.
    pub(crate) fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Refusal> {
        let ip = ip.map(client_key);
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.config.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        if let Some(ip) = ip {
            let mut per_ip = lock(&self.per_ip);
            let held = per_ip.entry(ip).or_insert(0);
            if *held >= self.config.max_connections_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *held += 1;
        }
        Ok(Slot {
            limits: Arc::clone(self),
            ip,
        })
    }

    /// Takes a session slot for `consumer`, or refuses when it has its maximum open.
    pub(crate) fn acquire_consumer(
        self: &Arc<Self>,
        consumer: &str,
    ) -> Result<ConsumerSlot, Refusal> {
        let mut per_consumer = lock(&self.per_consumer);
        let consumer: Arc<str> = match per_consumer.get_key_value(consumer) {
            Some((k, _)) => Arc::clone(k),
            None => consumer.into(),
        };
        let held = per_consumer.entry(Arc::clone(&consumer)).or_insert(0);
        if *held >= self.config.max_sessions_per_consumer {
            return Err(Refusal::PerConsumer);
        }
        *held += 1;
        Ok(ConsumerSlot {
            limits: Arc::clone(self),
            consumer,
        })
    }
}

/// What one client is counted as: its IPv4 address, or the /64 network of its IPv6 address (one
/// host usually holds a whole /64, and could otherwise take a fresh address per connection).
/// An IPv4-mapped IPv6 address counts as the IPv4 address.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// The refusal for a request whose headers or declared body exceed `limits`.
fn oversized(req: &RequestHeader, limits: &Limits) -> Option<Refused> {
    // The request line's target, measured without formatting it.
    let target = req.uri.authority().map_or(0, |a| a.as_str().len())
        + req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let header_bytes = target
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let declared_body = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if header_bytes > limits.max_request_header_bytes {
        Some(Refused {
            status: 431,
            limit: "max_request_header_bytes",
            message: "431 Request Header Fields Too Large: the request line and headers exceed this gateway's limit",
        })
    } else if declared_body.is_some_and(|n| n > limits.max_request_body_bytes) {
        Some(Refused {
            status: 413,
            limit: "max_request_body_bytes",
            message: "413 Payload Too Large: the request body exceeds this gateway's limit",
        })
    } else {
        None
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = lock(&self.limits.per_ip);
            if let Some(held) = per_ip.get_mut(&ip) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Drop for ConsumerSlot {
    fn drop(&mut self) {
        let mut per_consumer = lock(&self.limits.per_consumer);
        if let Some(held) = per_consumer.get_mut(&self.consumer) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                per_consumer.remove(&self.consumer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize, per_consumer: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            max_sessions_per_consumer: per_consumer,
            ..Limits::default()
        })
    }

    #[test]
    fn slots_are_counted_and_given_back() {
        let l = limits(3, 2, 1);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = l.acquire(Some(a)).expect("first");
        let s2 = l.acquire(Some(a)).expect("second");
        assert_eq!(l.acquire(Some(a)).unwrap_err(), Refusal::PerIp);
        let s3 = l.acquire(Some(b)).expect("another client");
        assert_eq!(l.acquire(Some(b)).unwrap_err(), Refusal::Total);
        drop(s1);
        let _s4 = l.acquire(Some(a)).expect("a slot came back");
        drop((s2, s3));
        assert_eq!(l.total.load(Ordering::Acquire), 1);

        // IPv6 clients count per /64; IPv4-mapped addresses as the IPv4 address.
        let v6 = |s: &str| -> IpAddr { s.parse().expect("address") };
        let l6 = limits(10, 2, 1);
        let _a = l6.acquire(Some(v6("2001:db8:1:2::1"))).expect("first");
        let _b = l6
            .acquire(Some(v6("2001:db8:1:2:ffff::9")))
            .expect("same /64");
        assert_eq!(
            l6.acquire(Some(v6("2001:db8:1:2:abcd::1"))).unwrap_err(),
            Refusal::PerIp,
            "a third address in the same /64 is the same client"
        );
        assert!(
            l6.acquire(Some(v6("2001:db8:1:3::1"))).is_ok(),
            "another /64"
        );
        assert_eq!(client_key(v6("::ffff:10.0.0.1")), v6("10.0.0.1"));

        // Answers waiting to be written share one budget, given back as each is written.
        let budget = ConnectionLimits::new(Limits {
            max_queued_answer_bytes: 100,
            ..Limits::default()
        });
        let first = budget.hold_answer(60).expect("within the budget");
        assert!(budget.hold_answer(50).is_none(), "60 + 50 > 100");
        let second = budget.hold_answer(40).expect("exactly the budget");
        drop(first);
        assert!(budget.hold_answer(50).is_some(), "the first was given back");
        drop(second);
        assert_eq!(budget.queued_answers.load(Ordering::Acquire), 0);

        let c = l.acquire_consumer("app").expect("consumer");
        assert_eq!(l.acquire_consumer("app").unwrap_err(), Refusal::PerConsumer);
        drop(c);
        assert!(l.acquire_consumer("app").is_ok());
        assert!(lock(&l.per_consumer).is_empty(), "empty counts are removed");
    }
}
