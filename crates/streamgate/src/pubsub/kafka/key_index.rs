//! The key index at a partition's head: who waits for which key.
//!
//! A push subscription whose filter lists keys and that is near the head (inside the partition's
//! window of recent records, or a little behind it) registers here, under each of its keys. Each
//! chunk the window takes is then handed out record by record to the subscriptions of the
//! record's key alone (a hash look-up per record), waking only them, instead of every subscription at the head waking for
//! every batch and checking every record against its filter. So a record costs its readers, not
//! all subscribers: 100,000 subscribers of 1,000 keys cost 100 hand-overs per record, not 100,000
//! filter checks and wake-ups.
//!
//! Exactness: the window's chunks follow each other, and are handed out in log order from one
//! offset on ([`KeyIndex::dispatched`]), each record pushed into its slots before that offset
//! moves past it. A subscription registers with a floor (its position, or the hand-out's offset
//! if that is further: it reads up to there alone, from the window); past it, it reads the
//! offset first, then takes its slot's records: it has then been given every record of its keys
//! before that offset, and may move its position there (the others are not its keys). A slot
//! holds at most [`SLOT_RECORDS`]; one that would hold more (a subscription without credit, or a
//! slow client) leaves the hand-out at its first record not taken, and its subscription reads
//! from there alone, as any subscription behind the head does, until it is near the head again.
//!
//! The index pre-selects by key only: the subscription still applies its whole filter (prefix,
//! headers, the caller's row filter) to what it is handed.

use crate::sync::lock;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use streamgate_protocol::KafkaMessage;
use tokio::sync::Notify;

/// Records a slot holds for its subscription at most; a slot that would hold more leaves the
/// hand-out (its subscription reads on its own from there). Enough for a burst of one key
/// between two reads of a subscription with credit, small enough that a paused subscription
/// holds little (about 7 KiB of record descriptors; the bytes are the shared fetch buffers).
pub(crate) const SLOT_RECORDS: usize = 64;

/// How the key index wakes a subscription: one per subscription, shared by its slots, each of
/// which sets its own bit, so that a subscription woken looks only at the partitions with news.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    notify: Notify,
    news: AtomicU64,
}

impl Wake {
    /// Resolves once a slot has news (at once if one had since the last wait).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The bits of the slots with news since the last call.
    pub(crate) fn take_news(&self) -> u64 {
        self.news.swap(0, Ordering::AcqRel)
    }

    fn tell(&self, bit: u64) {
        self.news.fetch_or(bit, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// The subscriptions registered at one partition's head, by key.
#[derive(Debug)]
pub(crate) struct KeyIndex {
    /// Every record before this offset has been handed to the slots of its key (-1: nobody is
    /// registered). Moved forward only after a chunk is handed out.
    dispatched: AtomicI64,
    registry: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    by_key: HashMap<Bytes, Vec<Arc<Slot>>>,
    slots: usize,
}

/// One subscription's place in one partition's index.
#[derive(Debug)]
struct Slot {
    /// Records before this offset are not the slot's (it registered there).
    floor: i64,
    /// Told when a record arrives or the slot leaves the hand-out; shared by all the
    /// subscription's slots.
    wake: Arc<Wake>,
    /// The slot's bit in `wake`'s news.
    bit: u64,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    pending: VecDeque<KafkaMessage>,
    /// Dropped from the hand-out: the offset of the first record of its keys it was not given.
    left_at: Option<i64>,
}

/// What a subscription took from its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// The records appended were all those of its keys before this offset, and more may follow.
    Through(i64),
    /// The slot left the hand-out: the records appended were all those of its keys before this
    /// offset, and the subscription reads on its own from there.
    Left(i64),
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self {
            dispatched: AtomicI64::new(-1),
            registry: Mutex::default(),
        }
    }
}

impl KeyIndex {
    /// Where the hand-out stands, if anyone is registered: the window's next chunk must start
    /// there.
    pub(crate) fn dispatched(&self) -> Option<i64> {
        let d = self.dispatched.load(Ordering::Acquire);
        (d >= 0).then_some(d)
    }

    /// How many subscriptions are registered.
    pub(crate) fn registered(&self) -> usize {
        lock(&self.registry).slots
    }

    /// Registers a subscription of `keys` whose position is `at`, to be handed its keys'
    /// records from the registration's [`Registration::floor`] on: `at`, or where the hand-out
    /// stands if that is further (the subscription reads up to there alone). `hand_from` is
    /// where the hand-out starts when nobody is registered yet. `wake` is told, with `bit`, when
    /// records arrive for it.
    pub(crate) fn register(
        self: &Arc<Self>,
        keys: &HashSet<Bytes>,
        at: i64,
        hand_from: i64,
        wake: &Arc<Wake>,
        bit: u64,
    ) -> Option<Registration> {
        if keys.is_empty() || at < 0 || hand_from < 0 {
            return None;
        }
        let mut registry = lock(&self.registry);
        if registry.slots == 0 {
            self.dispatched.store(hand_from, Ordering::Release);
        }
        let slot = Arc::new(Slot {
            floor: at.max(self.dispatched.load(Ordering::Acquire)),
            wake: Arc::clone(wake),
            bit,
            state: Mutex::default(),
        });
        for key in keys {
            registry
                .by_key
                .entry(key.clone())
                .or_default()
                .push(Arc::clone(&slot));
        }
        registry.slots += 1;
        crate::metrics::metrics().key_index_slots.inc();
        Some(Registration {
            index: Arc::clone(self),
            slot,
            keys: keys.iter().cloned().collect(),
        })
    }

    /// Hands the records of a chunk (a read's records in log order, from `from`, settled up to
    /// `next`) at and after the hand-out's offset to the slots of their keys, and moves the
    /// offset to `next`. A chunk that does not reach the offset is skipped; one that starts after
    /// it sends every slot back to reading alone.
    pub(crate) fn dispatch(&self, from: i64, messages: &[KafkaMessage], next: i64) {
        let registry = lock(&self.registry);
        let at = self.dispatched.load(Ordering::Acquire);
        if registry.slots == 0 || at < 0 || next <= at {
            return;
        }
        if from > at {
            // A gap (the window started again further on): nobody can be handed what lies in
            // it. Every slot reads alone from where the hand-out stood.
            registry.leave_all(at);
            self.dispatched.store(next, Ordering::Release);
            return;
        }
        let mut handed = 0;
        for m in messages.iter().filter(|m| m.offset >= at) {
            if let Some(slots) = registry.by_key.get(&m.key) {
                for slot in slots {
                    slot.offer(m);
                }
                handed += slots.len() as u64;
            }
        }
        self.dispatched.store(next, Ordering::Release);
        drop(registry);
        if handed > 0 {
            crate::metrics::metrics().key_index_records.inc_by(handed);
        }
    }

    /// Sends every slot back to reading alone from where the hand-out stands (it has stood
    /// still while the log went on).
    pub(crate) fn leave_all(&self) {
        let registry = lock(&self.registry);
        registry.leave_all(self.dispatched.load(Ordering::Acquire));
    }
}

impl Registry {
    /// Sends every slot back to reading alone from `at` (a slot listed under several keys is
    /// met once per key; leaving again changes nothing).
    fn leave_all(&self, at: i64) {
        for slot in self.by_key.values().flatten() {
            slot.leave(at);
        }
    }
}

impl Slot {
    fn offer(&self, m: &KafkaMessage) {
        if m.offset < self.floor {
            return;
        }
        let mut state = lock(&self.state);
        if state.left_at.is_some() {
            return;
        }
        if state.pending.len() >= SLOT_RECORDS {
            let first = state.pending.front().map_or(m.offset, |p| p.offset);
            state.left_at = Some(first);
            // What it was not given is read again from the log: hold none of it.
            state.pending = VecDeque::new();
        } else {
            // Keys and values are shared buffers: reference counts, not payloads, are copied.
            state.pending.push_back(m.clone());
        }
        drop(state);
        self.wake.tell(self.bit);
    }

    fn leave(&self, at: i64) {
        let mut state = lock(&self.state);
        if state.left_at.is_none() {
            let first = state.pending.front().map_or(at, |p| p.offset);
            state.left_at = Some(first.min(at).max(self.floor));
            state.pending = VecDeque::new();
        }
        drop(state);
        self.wake.tell(self.bit);
    }
}

/// A subscription's registration at one partition's head; dropping it leaves the index.
#[derive(Debug)]
pub(crate) struct Registration {
    index: Arc<KeyIndex>,
    slot: Arc<Slot>,
    keys: Vec<Bytes>,
}

impl Registration {
    /// Where the hand-out starts for this subscription: it reads the records before alone.
    pub(crate) fn floor(&self) -> i64 {
        self.slot.floor
    }

    /// Appends the records handed out to this subscription to `held` and says up to where they
    /// are all of its keys' records.
    pub(crate) fn take(&self, held: &mut VecDeque<KafkaMessage>) -> Taken {
        // The offset first: every record before it is in the slot by now.
        let dispatched = self.index.dispatched.load(Ordering::Acquire);
        let mut state = lock(&self.slot.state);
        let last = state.pending.back().map(|m| m.offset.saturating_add(1));
        if held.is_empty() {
            std::mem::swap(held, &mut state.pending);
        } else {
            held.extend(state.pending.drain(..));
        }
        if let Some(left_at) = state.left_at {
            return Taken::Left(left_at);
        }
        drop(state);
        Taken::Through(
            dispatched
                .max(self.slot.floor)
                .max(last.unwrap_or(i64::MIN)),
        )
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = lock(&self.index.registry);
        for key in &self.keys {
            if let Some(slots) = registry.by_key.get_mut(key) {
                slots.retain(|s| !Arc::ptr_eq(s, &self.slot));
                if slots.is_empty() {
                    registry.by_key.remove(key);
                }
            }
        }
        registry.slots = registry.slots.saturating_sub(1);
        crate::metrics::metrics().key_index_slots.dec();
        if registry.slots == 0 {
            self.index.dispatched.store(-1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, key: &'static str) -> KafkaMessage {
        KafkaMessage {
            offset,
            key: Bytes::from_static(key.as_bytes()),
            ..Default::default()
        }
    }

    fn keys(list: &[&'static str]) -> HashSet<Bytes> {
        list.iter()
            .map(|k| Bytes::from_static(k.as_bytes()))
            .collect()
    }

    #[test]
    fn records_go_to_their_keys_and_positions_move_past_the_rest() {
        let index = Arc::new(KeyIndex::default());
        let wake = Arc::new(Wake::default());
        let a = index
            .register(&keys(&["a"]), 10, 10, &wake, 1)
            .expect("first");
        let b = index
            .register(&keys(&["b", "c"]), 10, 10, &wake, 2)
            .expect("same place");
        index.dispatch(
            10,
            &[
                record(10, "a"),
                record(11, "b"),
                record(12, "x"),
                record(13, "c"),
            ],
            14,
        );
        assert_eq!(wake.take_news(), 3, "both were told");
        let mut held = VecDeque::new();
        assert_eq!(a.take(&mut held), Taken::Through(14));
        assert_eq!(held.iter().map(|m| m.offset).collect::<Vec<_>>(), [10]);
        held.clear();
        assert_eq!(b.take(&mut held), Taken::Through(14));
        assert_eq!(held.iter().map(|m| m.offset).collect::<Vec<_>>(), [11, 13]);
        // Behind the hand-out: read up to it alone first.
        let late = index
            .register(&keys(&["a"]), 12, 0, &wake, 4)
            .expect("late");
        assert_eq!(late.floor(), 14);
        drop(late);
        // A chunk that starts past the hand-out's offset leaves a gap: everyone reads alone
        // from where the hand-out stood.
        index.dispatch(20, &[record(20, "a")], 21);
        held.clear();
        assert_eq!(a.take(&mut held), Taken::Left(14));
        assert!(held.is_empty());
        drop((a, b));
        assert_eq!(index.registered(), 0);
    }

    #[test]
    fn a_full_slot_leaves_at_its_first_record_not_taken() {
        let index = Arc::new(KeyIndex::default());
        let wake = Arc::new(Wake::default());
        let a = index
            .register(&keys(&["a"]), 0, 0, &wake, 1)
            .expect("first");
        let end = SLOT_RECORDS as i64 + 3;
        let many: Vec<_> = (0..end).map(|o| record(o, "a")).collect();
        index.dispatch(0, &many[..2], 2);
        let mut held = VecDeque::new();
        assert_eq!(a.take(&mut held), Taken::Through(2));
        index.dispatch(2, &many[2..], end);
        held.clear();
        assert_eq!(a.take(&mut held), Taken::Left(2));
        assert!(held.is_empty(), "what it was not given is read again");
    }
}
