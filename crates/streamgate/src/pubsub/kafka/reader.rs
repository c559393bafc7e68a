//! Reading a partition over a shared broker connection without blocking other sessions.
//!
//! A broker answers one connection's requests in order, so a fetch that waits at the broker for
//! new records holds up every other session sharing that client. Fetches are therefore always
//! sent with no broker-side wait, and waiting happens here instead: sessions at the end of the
//! log subscribe to the partition's readable end (the high watermark, or the last stable offset
//! when reading committed records), which one poller per partition refreshes every
//! [`TAIL_POLL`] while anyone waits. Identical concurrent fetches (same offset and size) share a
//! single broker request and its decoded records, so sessions tailing the same partition cost one
//! broker fetch per new batch, not one each.
//!
//! The shared tail: the poller fetches the new records themselves (not just the watermark), and the
//! latest contiguous fetch results stay in a bounded window ([`WINDOW_CHUNKS`], [`WINDOW_BYTES`],
//! each result for [`WINDOW_TTL`]).
//! A pull session or push subscription that asks for an offset inside the window gets those
//! decoded records (shared, never copied per reader) without a broker request, however far apart
//! in time the readers ask; one behind the window reads on its own. So readers near the head cost
//! the broker one fetch loop per partition, whatever their number.
//!
//! The key index ([`super::key_index`]): push subscriptions that filter on keys and are near the
//! head register there, and each new chunk of the window (the poller's reads, or any reader's
//! that continue it) is handed out to the subscriptions of its records' keys. While anyone is
//! registered the window only ever grows by the next chunk, so that the hand-out sees the log
//! whole; the poller reads from the window's end, not from the furthest end anyone has seen.
//!
//! Reading ahead: a reader going through the log behind the head (a pull client catching up, a
//! push subscription replaying) gets its next fetch started as soon as one is answered, so the
//! broker reads while the gateway and the client handle the answer, instead of after.

pub(crate) use super::fetch::Fetched;
use super::fetch::PartitionFetcher;
use super::key_index::{KeyIndex, Registration, Wake};
use crate::pubsub::failure::{bounded, Backoff, KafkaFailure};
use crate::sync::lock;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamgate_protocol::ErrorCode;
use tokio::sync::watch;
use tokio::time::Instant;

/// First and longest pause between offset look-ups while the cluster is moving.
const LOOKUP_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_millis(500));

/// How often a partition with waiting sessions is polled for new records.
pub(crate) const TAIL_POLL: Duration = Duration::from_millis(20);

/// How long the key index's hand-out may stand still behind the known end before its
/// subscriptions read alone: longer than the window's reads take on a busy machine, so that
/// they do not all turn to the broker when it is merely slow.
const HAND_OUT_STALLED: Duration = Duration::from_secs(3);

/// How far behind the window (in records) a subscription may register in the key index: it
/// reads up to the hand-out alone meanwhile, while its slot keeps what arrives for it (up to
/// [`super::key_index::SLOT_RECORDS`] records of its keys). Further behind, it reads alone until
/// it is closer, rather than registering and leaving again while it replays.
const REGISTER_BEHIND: i64 = 10_000;

/// What the poller asks the broker for at the head: enough for a burst of new records.
const TAIL_FETCH_BYTES: i32 = 256 * 1024;

/// Fetch results kept at the head of a partition, at most.
const WINDOW_CHUNKS: usize = 64;

/// Record bytes kept at the head of a partition, at most (the oldest results go first).
const WINDOW_BYTES: usize = 4 << 20;

/// How long a fetch result serves other readers. Records at an offset never change, but a log can
/// be cut short under them (a topic deleted and created again, an unclean leader election): this
/// bounds how long the window could hide that.
const WINDOW_TTL: Duration = Duration::from_secs(1);

type SharedFetch = Shared<BoxFuture<'static, Result<Arc<Fetched>, KafkaFailure>>>;
type SharedLookup = Shared<BoxFuture<'static, Result<i64, KafkaFailure>>>;

/// One partition of one shared client.
pub(crate) struct PartitionReader {
    /// rskafka's client of the partition, for offset look-ups.
    client: Arc<PartitionClient>,
    /// Fetches go to the leader over the gateway's own connections, decoded within a budget.
    fetcher: Arc<PartitionFetcher>,
    /// How long a fetch may wait at the broker, in ms (the upstream's `broker_fetch_wait_ms`).
    broker_wait_ms: i32,
    /// The furthest end of the readable log seen (see [`Fetched::end`]); readers at the head
    /// wait on it.
    end: watch::Sender<i64>,
    /// The highest high watermark seen: a lagging new leader does not make an offset that was
    /// readable before look out of range.
    high_watermark: AtomicI64,
    poller_running: Mutex<bool>,
    in_flight: Mutex<HashMap<(i64, i32), SharedFetch>>,
    /// The latest contiguous fetch results, oldest first: `window[i].next() == window[i + 1].from`.
    window: Mutex<VecDeque<(Instant, Arc<Fetched>)>>,
    /// Results read ahead ([`Self::read_ahead`]), oldest first, until [`WINDOW_TTL`] old. Apart
    /// from the window, so that readers at different places of the partition do not push out
    /// each other's.
    ahead: Mutex<VecDeque<(Instant, Arc<Fetched>)>>,
    /// Subscriptions near the head by key, handed the records of each chunk the window takes.
    keys: Arc<KeyIndex>,
    /// The earliest (0) and latest (1) offset look-ups in flight, shared by their askers.
    lookups: Mutex<[Option<SharedLookup>; 2]>,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReader")
            .field("topic", &self.client.topic())
            .field("partition", &self.client.partition())
            .field("end", &*self.end.borrow())
            .finish()
    }
}

impl PartitionReader {
    /// A reader over `client`; every broker fetch it sends is counted in the process's
    /// `streamgate_kafka_broker_fetches_total`.
    pub(crate) fn new(
        client: PartitionClient,
        fetcher: PartitionFetcher,
        broker_wait: Duration,
    ) -> Self {
        Self {
            client: Arc::new(client),
            fetcher: Arc::new(fetcher),
            broker_wait_ms: i32::try_from(broker_wait.as_millis()).unwrap_or(i32::MAX),
            end: watch::channel(-1).0,
            high_watermark: AtomicI64::new(-1),
            poller_running: Mutex::new(false),
            in_flight: Mutex::default(),
            window: Mutex::default(),
            ahead: Mutex::default(),
            keys: Arc::default(),
            lookups: Mutex::default(),
        }
    }

    /// Registers a subscription of `keys` whose position `at` is near the head: inside the
    /// window (where what it reads alone up to the hand-out costs no broker fetch), at most
    /// [`REGISTER_BEHIND`] records before it, or at the known end (see [`KeyIndex::register`]).
    /// The poller runs while anyone is registered.
    pub(crate) fn register_keys(
        self: &Arc<Self>,
        keys: &HashSet<Bytes>,
        at: i64,
        wake: &Arc<Wake>,
        bit: u64,
        timeout: Duration,
    ) -> Option<Registration> {
        let known_end = self.known_end();
        let (start, end) = self.window_span().unwrap_or((known_end, known_end));
        // Inside the window, or a little behind it (a busy gateway's subscriptions often are,
        // the window holding one second): what it reads alone up to the hand-out is bounded.
        if at < start.min(known_end).saturating_sub(REGISTER_BEHIND) {
            return None;
        }
        let registration = self.keys.register(keys, at, end, wake, bit)?;
        self.ensure_poller(timeout);
        Some(registration)
    }

    /// The furthest readable end seen so far (-1 before the first answer).
    pub(crate) fn known_end(&self) -> i64 {
        *self.end.borrow()
    }

    /// The highest high watermark seen so far (-1 before the first answer).
    pub(crate) fn known_high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Relaxed)
    }

    /// Resolves once the readable end is beyond `offset`, polling the broker meanwhile
    /// (callers bound the wait). Errors of the polls are left to the caller's next fetch.
    pub(crate) async fn wait_beyond(self: &Arc<Self>, offset: i64, timeout: Duration) {
        let mut end = self.end.subscribe();
        if *end.borrow() > offset {
            return;
        }
        self.ensure_poller(timeout);
        if end.wait_for(|end| *end > offset).await.is_err() {
            // The reader went away: nothing will move; let the caller's bound end the wait.
            std::future::pending::<()>().await;
        }
    }

    /// Records from `offset` on, reading on past batches that hold none for a reader (markers,
    /// aborted transactions) and waiting up to `wait` for some to arrive at the end of the
    /// readable log. The result's `from` is where its records start to count: `offset`, or
    /// later when batches without records were passed. Each broker request is bounded by
    /// `timeout`; passing batches without records stops after `timeout` too (a log of nothing
    /// but markers is answered in parts).
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        offset: i64,
        max_bytes: i32,
        wait: Duration,
        timeout: Duration,
    ) -> Result<Arc<Fetched>, KafkaFailure> {
        let started = Instant::now();
        let deadline = started + wait;
        let mut from = offset;
        loop {
            let fetched = self.fetch_now(from, max_bytes, timeout).await?;
            if fetched.messages.iter().any(|m| m.offset >= from) {
                return Ok(fetched);
            }
            if !fetched.at_end() {
                // Batches without records for a reader: read on from after them.
                if fetched.next > from && started.elapsed() < timeout {
                    from = fetched.next;
                    continue;
                }
                return Ok(fetched);
            }
            // Only the end of the log is worth waiting at.
            if Instant::now() >= deadline {
                return Ok(fetched);
            }
            if fetched.next < self.known_end() {
                // The log went further before: a new leader still catching up. Look again
                // shortly rather than at once.
                tokio::time::sleep_until(deadline.min(Instant::now() + TAIL_POLL)).await;
            } else {
                let wait = self.wait_beyond(fetched.next, timeout);
                if tokio::time::timeout_at(deadline, wait).await.is_err() {
                    return Ok(fetched);
                }
            }
            from = fetched.next;
        }
    }

    /// One broker fetch with no broker-side wait; identical concurrent calls share it.
    pub(crate) async fn fetch_now(
        self: &Arc<Self>,
        offset: i64,
        max_bytes: i32,
        timeout: Duration,
    ) -> Result<Arc<Fetched>, KafkaFailure> {
        if let Some(hit) = self.kept(offset, max_bytes) {
            // One read ahead that continues the window joins it (and so is handed out).
            if self.window_end() == Some(hit.from) {
                self.remember(&hit);
            }
            return Ok(hit);
        }
        let key = (offset, max_bytes);
        let shared = self.join(key, timeout).0;
        self.settle(key, shared, false).await
    }

    /// Starts the fetch at `next` that a reader going through the log will send once it has
    /// handled what it was just given (`next`: after the last record it got), so that it finds
    /// that fetch done or under way. APISIX clients send one fetch at a time: without this, the
    /// broker's time, the gateway's and the client's add up for every answer instead of
    /// overlapping. Never at the head, where the poller serves; one fetch ahead of each asker (a
    /// reader that stops leaves one unread result, gone after [`WINDOW_TTL`]); results read ahead
    /// are bounded like the window ([`WINDOW_CHUNKS`], [`WINDOW_BYTES`]).
    pub(crate) fn read_ahead(self: &Arc<Self>, next: i64, max_bytes: i32, timeout: Duration) {
        if next >= self.known_end() || self.kept(next, max_bytes).is_some() {
            return;
        }
        let key = (next, max_bytes);
        let (shared, started) = self.join(key, timeout);
        if started {
            let reader = Arc::clone(self);
            tokio::spawn(async move {
                // An error is the next asker's to see, if it asks.
                let _ = reader.settle(key, shared, true).await;
            });
        }
    }

    /// The broker fetch for `key` in flight, started now if none is (then `true`).
    fn join(&self, key: (i64, i32), timeout: Duration) -> (SharedFetch, bool) {
        let mut in_flight = lock(&self.in_flight);
        if let Some(f) = in_flight.get(&key) {
            return (f.clone(), false);
        }
        // Entries whose every waiter went away are never polled again: drop them.
        in_flight.retain(|_, f| f.strong_count().is_some_and(|n| n > 1));
        let request = broker_fetch(
            Arc::clone(&self.fetcher),
            key.0,
            key.1,
            self.broker_wait_ms,
            timeout,
        )
        .boxed()
        .shared();
        in_flight.insert(key, request.clone());
        (request, true)
    }

    /// Waits for a fetch from [`Self::join`], then takes it out of the in-flight ones and keeps
    /// its result: with those read ahead when it was (`ahead`), else in the window.
    async fn settle(
        &self,
        key: (i64, i32),
        shared: SharedFetch,
        ahead: bool,
    ) -> Result<Arc<Fetched>, KafkaFailure> {
        let result = shared.clone().await;
        {
            let mut in_flight = lock(&self.in_flight);
            if in_flight.get(&key).is_some_and(|f| f.ptr_eq(&shared)) {
                in_flight.remove(&key);
            }
        }
        if let Ok(f) = &result {
            self.observe(f.end, f.high_watermark);
            if ahead {
                keep(&mut lock(&self.ahead), f);
            } else {
                self.remember(f);
            }
        }
        result
    }

    /// A kept result that answers a fetch of `max_bytes` from `offset`: one read ahead from there
    /// for a budget no larger (what the broker would answer now), else one of the window within
    /// the budget (a result for a larger one would have to be cut, and a fetch that starts inside
    /// a broker batch re-reads and re-decompresses the whole batch).
    fn kept(&self, offset: i64, max_bytes: i32) -> Option<Arc<Fetched>> {
        let within = usize::try_from(max_bytes).unwrap_or(0);
        self.read_already(offset)
            .filter(|hit| hit.max_bytes <= max_bytes || hit.record_bytes <= within)
            .or_else(|| {
                self.in_window(offset)
                    .filter(|hit| hit.record_bytes <= within)
            })
    }

    /// The result read ahead from `offset`, if any.
    fn read_already(&self, offset: i64) -> Option<Arc<Fetched>> {
        let mut ahead = lock(&self.ahead);
        expire(&mut ahead);
        ahead
            .iter()
            .rev()
            .find(|(_, f)| f.from == offset)
            .map(|(_, f)| Arc::clone(f))
    }

    /// The window's result holding `offset`, if any.
    fn in_window(&self, offset: i64) -> Option<Arc<Fetched>> {
        let mut window = lock(&self.window);
        expire(&mut window);
        let (_, first) = window.front()?;
        if offset < first.from || offset >= window.back()?.1.next {
            return None;
        }
        // Chunks are contiguous: the one holding `offset` is the last one starting at or before it.
        let at = window.partition_point(|(_, f)| f.from <= offset);
        window.get(at.checked_sub(1)?).map(|(_, f)| Arc::clone(f))
    }

    /// Where the window's records start and end, if it holds any.
    fn window_span(&self) -> Option<(i64, i64)> {
        let mut window = lock(&self.window);
        expire(&mut window);
        Some((window.front()?.1.from, window.back()?.1.next))
    }

    /// Where the window's records end, if it holds any.
    fn window_end(&self) -> Option<i64> {
        self.window_span().map(|(_, end)| end)
    }

    /// Keeps `fetched` in the window when it continues it (or starts a new head past it).
    fn remember(&self, fetched: &Arc<Fetched>) {
        if fetched.next <= fetched.from {
            return;
        }
        let mut window = lock(&self.window);
        let handing = self.keys.dispatched();
        match (window.back().map(|(_, last)| last.next), handing) {
            (Some(end), _) if fetched.from < end => return,
            // While the key index hands out the window's chunks, the window does not start
            // again further on (its subscriptions would all have to read alone): the poller
            // reads on from where it stands.
            (Some(end), Some(_)) if fetched.from > end => return,
            (None, Some(at)) if fetched.from > at || fetched.next <= at => return,
            (Some(end), None) if fetched.from > end => window.clear(),
            _ => {}
        }
        keep(&mut window, fetched);
        drop(window);
        // The window's chunks follow each other: handing them out in turn hands out the log.
        self.keys
            .dispatch(fetched.from, &fetched.messages, fetched.next);
    }

    /// Records a readable end and a high watermark (from a fetch, or an offset look-up); only
    /// ever moves them forward.
    pub(crate) fn observe(&self, end: i64, high_watermark: i64) {
        self.end.send_if_modified(|current| {
            let newer = end > *current;
            if newer {
                *current = end;
            }
            newer
        });
        self.high_watermark
            .fetch_max(high_watermark, Ordering::Relaxed);
    }

    /// Kafka's answer to "which offset is at `at`" for one partition, checked: -1 for a time later
    /// than every record, even from a broker that answers an older record's offset.
    pub(crate) async fn offset_at(
        self: &Arc<Self>,
        at: OffsetAt,
        timeout: Duration,
    ) -> Result<i64, KafkaFailure> {
        let reader = self;
        let OffsetAt::Timestamp(time) = at else {
            // A burst of subscribes asks the same: one look-up in flight answers them all (its
            // answer is at most that look-up's round trip older than a fresh one).
            let kind = usize::from(at == OffsetAt::Latest);
            let shared = {
                let mut lookups = lock(&self.lookups);
                match &lookups[kind] {
                    Some(l) if l.peek().is_none() => l.clone(),
                    _ => {
                        let l = lookup(Arc::clone(&self.client), at, timeout)
                            .boxed()
                            .shared();
                        lookups[kind] = Some(l.clone());
                        l
                    }
                }
            };
            let result = shared.clone().await;
            let mut lookups = lock(&self.lookups);
            if lookups[kind].as_ref().is_some_and(|l| l.ptr_eq(&shared)) {
                lookups[kind] = None;
            }
            return result;
        };
        let offset = lookup(Arc::clone(&self.client), at, timeout).await?;
        if offset < 0 {
            return Ok(offset);
        }
        let wanted = time.timestamp_millis();
        // Kafka answers -1 when no record is that late; some brokers answer an offset whose record
        // is older than asked. Read the records there and check.
        let fetched = reader.fetch_now(offset, 64 * 1024, timeout).await?;
        let records = &fetched.messages;
        let first_late_enough = records
            .iter()
            .find(|m| m.offset >= offset && m.timestamp >= wanted);
        Ok(match first_late_enough {
            Some(m) => m.offset,
            None if records
                .last()
                .is_none_or(|m| m.offset.saturating_add(1) >= fetched.end) =>
            {
                -1
            }
            None => offset,
        })
    }

    /// Starts the partition's poller unless it runs; it stops when nobody waits.
    fn ensure_poller(self: &Arc<Self>, timeout: Duration) {
        let mut running = lock(&self.poller_running);
        if *running {
            return;
        }
        *running = true;
        let reader = Arc::clone(self);
        tokio::spawn(async move {
            let mut more = false;
            // Where the key index's hand-out stood, and since when, while the log went on.
            let mut hand_out: Option<(i64, Instant)> = None;
            loop {
                if !more {
                    tokio::time::sleep(TAIL_POLL).await;
                }
                more = false;
                {
                    let mut running = lock(&reader.poller_running);
                    if reader.end.receiver_count() == 0 && reader.keys.registered() == 0 {
                        *running = false;
                        // Nobody waits at the head: its records need not stay decoded.
                        lock(&reader.window).clear();
                        return;
                    }
                }
                // The new records themselves, kept in the window for every waiting reader (and
                // so handed to the key index's subscriptions), read from where the window ends
                // so that it stays one unbroken stretch of the log (other readers' fetches may
                // have seen the end move further already). Errors are left to the waiting
                // sessions' own deadlines; keep polling.
                let from = reader
                    .window_end()
                    .or_else(|| reader.keys.dispatched())
                    .unwrap_or_else(|| reader.known_end().max(0));
                if let Ok(fetched) = reader.fetch_now(from, TAIL_FETCH_BYTES, timeout).await {
                    // Behind the head (a burst larger than one read): read on at once.
                    more = fetched.next > from && !fetched.at_end();
                }
                // The hand-out stands still while the log goes on (the window's reads fail):
                // its subscriptions read alone rather than wait on it.
                hand_out = match (reader.keys.dispatched(), hand_out) {
                    (Some(at), _) if at >= reader.known_end() => None,
                    (Some(at), Some((was, since))) if at == was => {
                        if since.elapsed() >= HAND_OUT_STALLED {
                            tracing::debug!(at, "the key index's hand-out stood still: its subscriptions read alone");
                            reader.keys.leave_all();
                            None
                        } else {
                            Some((was, since))
                        }
                    }
                    (Some(at), _) => Some((at, Instant::now())),
                    (None, _) => None,
                };
            }
        });
    }
}

/// Drops the results older than [`WINDOW_TTL`] from `results` (the window, or those read ahead).
fn expire(results: &mut VecDeque<(Instant, Arc<Fetched>)>) {
    while results
        .front()
        .is_some_and(|(at, _)| at.elapsed() >= WINDOW_TTL)
    {
        results.pop_front();
    }
}

/// Adds `fetched` to `results` (the window, or those read ahead), the oldest going first past
/// [`WINDOW_CHUNKS`] results or [`WINDOW_BYTES`] of records.
fn keep(results: &mut VecDeque<(Instant, Arc<Fetched>)>, fetched: &Arc<Fetched>) {
    results.push_back((Instant::now(), Arc::clone(fetched)));
    let mut bytes: usize = results.iter().map(|(_, f)| f.record_bytes).sum();
    while results.len() > WINDOW_CHUNKS || (bytes > WINDOW_BYTES && results.len() > 1) {
        if let Some((_, old)) = results.pop_front() {
            bytes -= old.record_bytes;
        }
    }
}

/// Kafka's answer to "which offset is at `at`", asked until the route's timeout while the cluster
/// moves: the shared client gives up on its own after the upstream's connect timeout; a leader
/// being elected or a broker restarting is waited out for the route's whole timeout, as fetches
/// are.
async fn lookup(
    client: Arc<PartitionClient>,
    at: OffsetAt,
    timeout: Duration,
) -> Result<i64, KafkaFailure> {
    let started = std::time::Instant::now();
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(LOOKUP_BACKOFF.0, LOOKUP_BACKOFF.1);
    let offset = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match kafka_call(left, client.get_offset(at)).await {
            Err(f)
                if f.code == ErrorCode::Unavailable
                    && Instant::now() + backoff.pause() < deadline =>
            {
                tracing::debug!(reason = %f.reason, "offset look-up retried");
                backoff.wait().await;
            }
            result => break result,
        }
    };
    crate::metrics::metrics().kafka_call("list_offsets", started.elapsed());
    offset
}

async fn kafka_call<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, rskafka::client::error::Error>>,
) -> Result<T, KafkaFailure> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| KafkaFailure::from_kafka(&e)),
        Err(_) => Err(KafkaFailure::timeout(timeout)),
    }
}

async fn broker_fetch(
    fetcher: Arc<PartitionFetcher>,
    offset: i64,
    max_bytes: i32,
    broker_wait_ms: i32,
    timeout: Duration,
) -> Result<Arc<Fetched>, KafkaFailure> {
    let metrics = crate::metrics::metrics();
    metrics.kafka_broker_fetches.inc();
    let started = std::time::Instant::now();
    let deadline = Instant::now() + timeout;
    let result = bounded(
        timeout,
        fetcher.fetch(offset, max_bytes, broker_wait_ms, deadline),
    )
    .await;
    metrics.kafka_call("fetch", started.elapsed());
    Ok(Arc::new(result?))
}
