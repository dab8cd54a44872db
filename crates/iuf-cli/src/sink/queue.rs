//! The bounded queue in front of each sink: events wait here, in order, while the broker or the
//! endpoint is away; when it is full the oldest event is dropped, counted and logged.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::Event;

/// What a sink has done, as counters `serve` exposes in `/metrics` (shared handles: a clone
/// counts into the same metric).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Events the destination acknowledged (MQTT PUBACK, HTTP 2xx).
    pub delivered: Counter,
    /// Events dropped: the oldest when the queue was full, those refused for good by the
    /// endpoint, and those still queued when the program stopped.
    pub dropped: Counter,
    /// Failed attempts (connection refused, lost, timed out, a status that asks for a retry).
    pub retries: Counter,
    /// Events waiting.
    pub queued: Gauge,
}

/// One event in a queue, numbered in the order it was sent.
#[derive(Debug, Clone)]
pub struct Queued {
    pub seq: u64,
    pub event: Arc<Event>,
}

struct Inner {
    items: VecDeque<Queued>,
    next_seq: u64,
    /// No more events will come; the sink stops once the queue is empty or `deadline` passed.
    closed: bool,
    deadline: Option<Instant>,
    /// Drops not yet reported in the log (reported at most once a second).
    unreported: u64,
    last_report: Option<Instant>,
}

/// Told the [`Event::number`] of each numbered event the destination took (or refused for
/// good): `watch` keeps it on disk, to send again after a kill what was never delivered.
pub type OnDelivered = Arc<dyn Fn(u64) + Send + Sync>;

/// A bounded FIFO shared by the program (pushing) and one sink's thread (delivering the front).
pub struct Queue {
    name: &'static str,
    on_delivered: std::sync::OnceLock<OnDelivered>,
    capacity: usize,
    inner: Mutex<Inner>,
    changed: Condvar,
    pub stats: Stats,
}

impl Queue {
    pub fn new(name: &'static str, capacity: usize, stats: Stats) -> Self {
        Self {
            name,
            on_delivered: std::sync::OnceLock::new(),
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                next_seq: 0,
                closed: false,
                deadline: None,
                unreported: 0,
                last_report: None,
            }),
            changed: Condvar::new(),
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves a queue that is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event`; when the queue is full the oldest event is dropped (counted, logged).
    pub fn push(&self, event: Arc<Event>) {
        let mut q = self.lock();
        if q.closed {
            return;
        }
        if q.items.len() >= self.capacity {
            q.items.pop_front();
            self.stats.dropped.inc();
            q.unreported += 1;
            let now = Instant::now();
            if q.last_report
                .is_none_or(|t| now - t >= Duration::from_secs(1))
            {
                tracing::error!(
                    "{} sink: queue full ({} events waiting for the destination): dropped the \
                     oldest {} event(s) ({} dropped in all; raise --sink-queue to keep more)",
                    self.name,
                    self.capacity,
                    q.unreported,
                    self.stats.dropped.get()
                );
                q.unreported = 0;
                q.last_report = Some(now);
            }
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.items.push_back(Queued { seq, event });
        self.stats.queued.set(q.items.len() as i64);
        drop(q);
        self.changed.notify_all();
    }

    /// The oldest event, waiting at most `wait` for one; `None` also when the queue is closed
    /// and empty (see [`Queue::finished`]).
    pub fn front(&self, wait: Duration) -> Option<Queued> {
        let mut q = self.lock();
        if q.items.is_empty() && !q.closed {
            q = self
                .changed
                .wait_timeout(q, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        q.items.front().cloned()
    }

    /// Sets what is told of each numbered event delivered (once; later calls change nothing).
    pub fn on_delivered(&self, f: OnDelivered) {
        let _ = self.on_delivered.set(f);
    }

    /// Removes event `seq` from the front (unless it was dropped meanwhile); its number, if it
    /// has one, goes to the [`OnDelivered`] hook.
    fn settle(&self, seq: u64) -> bool {
        let mut q = self.lock();
        if q.items.front().is_none_or(|f| f.seq != seq) {
            return false;
        }
        let done = q.items.pop_front();
        self.stats.queued.set(q.items.len() as i64);
        drop(q);
        if let (Some(n), Some(f)) = (done.and_then(|d| d.event.number), self.on_delivered.get()) {
            f(n);
        }
        true
    }

    /// Removes event `seq` once delivered (unless it was dropped meanwhile) and counts it.
    pub fn delivered(&self, seq: u64) {
        self.settle(seq);
        self.stats.delivered.inc();
    }

    /// Removes event `seq` that the destination refused for good, counting it as dropped.
    pub fn rejected(&self, seq: u64) {
        if self.settle(seq) {
            self.stats.dropped.inc();
        }
    }

    /// Whether the sink should stop: closed and empty, or past the closing deadline.
    pub fn finished(&self) -> bool {
        let q = self.lock();
        q.closed && (q.items.is_empty() || q.deadline.is_some_and(|d| Instant::now() >= d))
    }

    /// Whether the closing deadline has passed (a sink waiting to retry stops waiting).
    pub fn past_deadline(&self) -> bool {
        self.lock().deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// No more events; the sink delivers what is queued until `deadline`.
    pub fn close(&self, deadline: Instant) {
        let mut q = self.lock();
        q.closed = true;
        q.deadline = Some(deadline);
        drop(q);
        self.changed.notify_all();
    }

    /// Events still queued, counted as dropped (called once the sink has stopped).
    pub fn abandon(&self) -> usize {
        let mut q = self.lock();
        let n = q.items.len();
        q.items.clear();
        self.stats.queued.set(0);
        self.stats.dropped.inc_by(n as u64);
        n
    }

    /// Sleeps `d`, waking early when the queue is closed (to try once more before the deadline).
    pub fn sleep(&self, d: Duration) {
        let q = self.lock();
        if q.closed {
            let left = q.deadline.map_or(Duration::ZERO, |t| {
                t.saturating_duration_since(Instant::now())
            });
            let _ = self.changed.wait_timeout(q, d.min(left));
            return;
        }
        let _ = self.changed.wait_timeout(q, d);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> Arc<Event> {
        Arc::new(Event::new("verdict", serde_json::json!({ "n": n })))
    }

    /// Guarantee: a full queue drops its oldest events, counts them, and keeps the newest in
    /// order; a delivered event is removed only if it is still the front.
    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let q = Queue::new("test", 3, Stats::default());
        for n in 0..5 {
            q.push(event(n));
        }
        assert_eq!(q.stats.dropped.get(), 2);
        assert_eq!(q.stats.queued.get(), 3);
        let f = q.front(Duration::ZERO).unwrap();
        assert_eq!(f.seq, 2);
        assert_eq!(f.event.text, r#"{"kind":"verdict","n":2}"#);
        q.delivered(f.seq);
        q.delivered(f.seq); // a second acknowledgement removes nothing more
        assert_eq!(q.front(Duration::ZERO).unwrap().seq, 3);
        assert_eq!(q.stats.queued.get(), 2);
        q.close(Instant::now());
        assert!(q.finished());
        assert_eq!(q.abandon(), 2);
        assert_eq!(q.stats.dropped.get(), 4);
    }
}
