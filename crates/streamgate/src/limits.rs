//! Concurrency limits: what all clients together, one client IP, or one consumer may hold at
//! once (`[server.limits]`).
//!
//! A request takes a [`Slot`] when it arrives and gives it back when its context is dropped; an
//! accepted WebSocket session carries its slot (and its consumer's [`ConsumerSlot`]) until it
//! closes. Counters live behind short, never-awaited locks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use streamgate_config::model::Limits;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections`: the gateway as a whole is full.
    Total,
    /// `max_connections_per_ip`: this client holds too much.
    PerIp,
    /// `max_sessions_per_consumer`: this consumer has too many sessions open.
    PerConsumer,
}

impl Refusal {
    /// The metric label and log name of the limit.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
            Refusal::PerConsumer => "max_sessions_per_consumer",
        }
    }
}

/// The live counts behind `[server.limits]`.
#[derive(Debug)]
pub struct ConnectionLimits {
    config: Limits,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    per_consumer: Mutex<HashMap<Arc<str>, usize>>,
}

/// A request's or session's place in the counts; given back on drop.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

/// A pub/sub session's place in its consumer's count; given back on drop.
#[derive(Debug)]
pub struct ConsumerSlot {
    limits: Arc<ConnectionLimits>,
    consumer: Arc<str>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConnectionLimits {
    /// Counts for `config`.
    pub fn new(config: Limits) -> Arc<Self> {
        Arc::new(Self {
            config,
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            per_consumer: Mutex::default(),
        })
    }

    /// The configured limits.
    pub fn config(&self) -> &Limits {
        &self.config
    }

    /// Takes a slot for a request from `ip`, or says which limit is full.
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Refusal> {
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
    pub fn acquire_consumer(self: &Arc<Self>, consumer: &str) -> Result<ConsumerSlot, Refusal> {
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

    /// Requests and sessions held right now, all clients together.
    pub fn held(&self) -> usize {
        self.total.load(Ordering::Acquire)
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
        assert_eq!(l.held(), 1);

        let c = l.acquire_consumer("app").expect("consumer");
        assert_eq!(l.acquire_consumer("app").unwrap_err(), Refusal::PerConsumer);
        drop(c);
        assert!(l.acquire_consumer("app").is_ok());
        assert!(lock(&l.per_consumer).is_empty(), "empty counts are removed");
    }
}
