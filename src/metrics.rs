//! Counters the data path increments and the admin endpoint reads.
//!
//! Hot-path cost is a few relaxed atomic adds on memory no other worker
//! writes: every listener and backend gets its own pre-resolved stats handle
//! ([`ListenerStats`], [`BackendStats`]) when it is bound or built, and each
//! handle keeps one cache-line-padded set of counters per worker thread
//! ([`Shards`]), summed when `/metrics` or `/api/status` reads them. Two
//! workers serving requests of the same listener therefore never write the
//! same cache line for a counter. Names and labels are attached only at
//! scrape time, by the admin module, which walks the live snapshot. This
//! module is a leaf: it imports nothing from the crate.

use std::cell::Cell;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds, in seconds, of the latency histogram buckets (a final
/// `+Inf` bucket is implied). Covers loopback handshakes to slow backends.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Most shards a counter set gets, whatever `workers` says.
const MAX_SHARDS: usize = 64;

static SHARDS: OnceLock<usize> = OnceLock::new();

/// Size the per-worker counters for `workers` runtime worker threads (0:
/// one per CPU, as the runtime does). Call it before any stats handle is
/// made (`main` does, before building the runtime); later calls change
/// nothing, so every handle has the same number of shards.
pub fn set_workers(workers: usize) {
    let _ = SHARDS.set(clamp_shards(workers));
}

fn clamp_shards(workers: usize) -> usize {
    let n = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    n.clamp(1, MAX_SHARDS)
}

/// How many shards every counter set has.
fn shard_count() -> usize {
    *SHARDS.get_or_init(|| clamp_shards(0))
}

/// The shard of the calling thread. Threads take indexes in the order they
/// first record something, so the runtime's worker threads (the ones that
/// serve traffic) take distinct shards; a thread beyond the shard count
/// shares one, which stays correct (the counters are atomic) and only costs
/// speed. (tokio's `on_thread_start` also runs for blocking-pool threads,
/// so numbering threads there would hand shards to threads that never
/// count anything.)
fn shard_index() -> usize {
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    INDEX.with(|i| {
        let mut v = i.get();
        if v == usize::MAX {
            v = NEXT.fetch_add(1, Ordering::Relaxed) % shard_count();
            i.set(v);
        }
        v
    })
}

/// A value alone on its cache lines (128 bytes: x86's adjacent-line
/// prefetcher pulls lines in pairs), so that writes to it never invalidate
/// a neighbour another core is using.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One `T` per worker thread, each on its own cache lines: a thread writes
/// its own shard ([`Shards::local`]), readers sum over all of them.
#[derive(Debug)]
pub struct Shards<T> {
    cells: Box<[Padded<T>]>,
}

impl<T: Default> Default for Shards<T> {
    fn default() -> Self {
        Self {
            cells: (0..shard_count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> Shards<T> {
    /// The calling thread's shard.
    pub fn local(&self) -> &T {
        let i = shard_index();
        // Every set has `shard_count()` cells; `get` only guards the bound.
        self.cells.get(i).unwrap_or(&self.cells[0])
    }

    /// Every shard, for summing.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.cells.iter().map(|c| &c.0)
    }

    /// The sum over all shards of one counter.
    fn sum(&self, get: impl Fn(&T) -> &AtomicU64) -> u64 {
        self.iter()
            .map(|t| get(t).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Add one to a counter of the local shard.
fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One shard of a latency histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations in microseconds (whole microseconds keep it atomic).
    sum_us: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        bump(&self.buckets[i]);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// A histogram as read: the sum over every shard.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramRead {
    /// Sum of observations in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// Per-bucket counts with their upper bounds; the last bound is
    /// `f64::MAX`, which the text encoder writes as `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramRead {
    /// Sum the histograms `shards`.
    pub fn of<'a>(shards: impl Iterator<Item = &'a Histogram>) -> Self {
        let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
        let mut sum_us = 0u64;
        for h in shards {
            for (c, b) in counts.iter_mut().zip(&h.buckets) {
                *c = c.wrapping_add(b.load(Ordering::Relaxed));
            }
            sum_us = sum_us.wrapping_add(h.sum_us.load(Ordering::Relaxed));
        }
        let buckets = counts
            .iter()
            .enumerate()
            .map(|(i, &n)| (LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::MAX), n))
            .collect();
        Self {
            sum: sum_us as f64 / 1e6,
            count: counts.iter().fold(0, |a, &n| a.wrapping_add(n)),
            buckets,
        }
    }
}

/// One shard of HTTP responses counted by status class.
#[derive(Debug, Default)]
pub struct StatusClasses([AtomicU64; 5]);

impl StatusClasses {
    /// The label values, index-aligned with [`StatusClasses::sum`].
    pub const LABELS: [&'static str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

    /// Count a response with `status` (codes outside 100..=599 count as 5xx).
    pub fn record(&self, status: u16) {
        let i = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 4,
        };
        bump(&self.0[i]);
    }

    /// Counts per class summed over `shards`, in the order of
    /// [`StatusClasses::LABELS`].
    pub fn sum<'a>(shards: impl Iterator<Item = &'a StatusClasses>) -> [u64; 5] {
        let mut out = [0u64; 5];
        for s in shards {
            for (o, c) in out.iter_mut().zip(&s.0) {
                *o = o.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
        out
    }
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A full handshake.
    Full,
    /// Resumed from a session ticket or the session cache.
    Resumed,
    /// Failed or timed out.
    Failed,
}

/// One worker's counters of a listener.
#[derive(Debug, Default)]
struct ListenerCounters {
    accepted: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    requests: StatusClasses,
    request_latency: Histogram,
    /// Full, resumed, failed.
    tls: [AtomicU64; 3],
    handshake_latency: Histogram,
}

/// Counters of one listener, resolved once when it is bound and kept across
/// reloads while the listener keeps its name.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open now: one exact gauge (written once per connection,
    /// never per request), which reloads read to forget removed listeners.
    active: Padded<AtomicI64>,
    counters: Shards<ListenerCounters>,
}

impl ListenerStats {
    /// Count an accepted connection; the guard counts it active until dropped.
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        bump(&self.counters.local().accepted);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Count a finished TLS handshake.
    pub fn record_handshake(&self, outcome: Handshake, took: Duration) {
        let c = self.counters.local();
        bump(&c.tls[outcome as usize]);
        c.handshake_latency.observe(took);
    }

    /// Count an HTTP response and its latency.
    pub fn record_request(&self, status: u16, took: Duration) {
        let c = self.counters.local();
        c.requests.record(status);
        c.request_latency.observe(took);
    }

    /// Add a finished connection's byte counts.
    pub fn add_bytes(&self, from_client: u64, to_client: u64) {
        let c = self.counters.local();
        c.bytes_in.fetch_add(from_client, Ordering::Relaxed);
        c.bytes_out.fetch_add(to_client, Ordering::Relaxed);
    }

    /// Connections accepted.
    pub fn accepted(&self) -> u64 {
        self.counters.sum(|c| &c.accepted)
    }

    /// Connections open now.
    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Bytes received from clients.
    pub fn bytes_in(&self) -> u64 {
        self.counters.sum(|c| &c.bytes_in)
    }

    /// Bytes sent to clients.
    pub fn bytes_out(&self) -> u64 {
        self.counters.sum(|c| &c.bytes_out)
    }

    /// HTTP responses sent, by status class ([`StatusClasses::LABELS`]).
    pub fn requests(&self) -> [u64; 5] {
        StatusClasses::sum(self.counters.iter().map(|c| &c.requests))
    }

    /// HTTP request latency, request head received to response head sent.
    pub fn request_latency(&self) -> HistogramRead {
        HistogramRead::of(self.counters.iter().map(|c| &c.request_latency))
    }

    /// TLS handshakes that ended as `outcome`.
    pub fn handshakes(&self, outcome: Handshake) -> u64 {
        self.counters.sum(|c| &c.tls[outcome as usize])
    }

    /// TLS handshake latency.
    pub fn handshake_latency(&self) -> HistogramRead {
        HistogramRead::of(self.counters.iter().map(|c| &c.handshake_latency))
    }
}

/// Keeps a connection counted in [`ListenerStats::active`] until dropped.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ListenerStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's counters of a backend.
#[derive(Debug, Default)]
struct BackendCounters {
    selected: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    connect_failures: AtomicU64,
    connect_latency: Histogram,
    responses: StatusClasses,
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    flips: AtomicU64,
}

/// Traffic counters of one backend, owned by its live state so that they
/// survive reloads with it. (Connections open now are an exact gauge on the
/// backend's state, which least-connection schedulers read.)
#[derive(Debug, Default)]
pub struct BackendStats {
    counters: Shards<BackendCounters>,
}

impl BackendStats {
    /// Add a finished connection's byte counts.
    pub fn add_bytes(&self, to_backend: u64, from_backend: u64) {
        let c = self.counters.local();
        c.bytes_out.fetch_add(to_backend, Ordering::Relaxed);
        c.bytes_in.fetch_add(from_backend, Ordering::Relaxed);
    }

    /// Count one pick of the backend by the scheduler (one per attempt).
    pub fn record_selected(&self) {
        bump(&self.counters.local().selected);
    }

    /// Count an HTTP response received from the backend.
    pub fn record_response(&self, status: u16) {
        self.counters.local().responses.record(status);
    }

    /// Count a connection established to the backend and its connect time.
    pub fn record_connect(&self, took: Duration) {
        self.counters.local().connect_latency.observe(took);
    }

    /// Count a connect attempt that failed or timed out.
    pub fn record_connect_failure(&self) {
        bump(&self.counters.local().connect_failures);
    }

    /// Count an active health check's result.
    pub fn record_check(&self, passed: bool) {
        let c = self.counters.local();
        bump(if passed {
            &c.checks_passed
        } else {
            &c.checks_failed
        });
    }

    /// Count an up/down transition (active or passive).
    pub fn record_flip(&self) {
        bump(&self.counters.local().flips);
    }

    /// Times the scheduler picked the backend.
    pub fn selected(&self) -> u64 {
        self.counters.sum(|c| &c.selected)
    }

    /// Bytes sent to the backend.
    pub fn bytes_out(&self) -> u64 {
        self.counters.sum(|c| &c.bytes_out)
    }

    /// Bytes received from the backend.
    pub fn bytes_in(&self) -> u64 {
        self.counters.sum(|c| &c.bytes_in)
    }

    /// Connect attempts that failed or timed out.
    pub fn connect_failures(&self) -> u64 {
        self.counters.sum(|c| &c.connect_failures)
    }

    /// Time to establish a TCP connection to the backend.
    pub fn connect_latency(&self) -> HistogramRead {
        HistogramRead::of(self.counters.iter().map(|c| &c.connect_latency))
    }

    /// HTTP responses received, by status class ([`StatusClasses::LABELS`]).
    pub fn responses(&self) -> [u64; 5] {
        StatusClasses::sum(self.counters.iter().map(|c| &c.responses))
    }

    /// Active health checks that passed.
    pub fn checks_passed(&self) -> u64 {
        self.counters.sum(|c| &c.checks_passed)
    }

    /// Active health checks that failed.
    pub fn checks_failed(&self) -> u64 {
        self.counters.sum(|c| &c.checks_failed)
    }

    /// Up/down transitions.
    pub fn flips(&self) -> u64 {
        self.counters.sum(|c| &c.flips)
    }
}

/// Hits and misses of one persistence group's client table (owned by the
/// table, so carried across reloads with it); its size is read from the
/// table at scrape time.
#[derive(Debug, Default)]
pub struct PersistenceStats {
    /// Connections that followed a live entry.
    pub hits: AtomicU64,
    /// Connections that found no usable entry and were scheduled.
    pub misses: AtomicU64,
}

/// Result of the last reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads attempted since start.
    pub attempts: u64,
    /// Reloads that failed (the old configuration stayed in service).
    pub failures: u64,
    /// Whether the last attempt succeeded (true before any attempt).
    pub last_ok: bool,
    /// Unix time of the last attempt, 0 before any.
    pub last_unix: u64,
    /// Full error text of the last attempt when it failed; `None` once a
    /// later reload succeeded (the page shows the problem still in force).
    pub last_error: Option<String>,
}

/// The process-wide registry: per-listener stats by name and reload status. (Certificate expiry is read from
/// the TLS state in the snapshot at scrape time.)
///
/// Lookups here take a short lock and happen at bind, build and reload
/// time only; the data path holds the returned `Arc`s.
#[derive(Debug)]
pub struct Metrics {
    listeners: Mutex<HashMap<String, Arc<ListenerStats>>>,
    reload: Mutex<ReloadStatus>,
    /// Unix time the process started.
    pub started_unix: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listeners: Mutex::default(),
            reload: Mutex::new(ReloadStatus {
                attempts: 0,
                failures: 0,
                last_ok: true,
                last_unix: 0,
                last_error: None,
            }),
            started_unix: unix_now(),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Lock a registry map; a panic while holding it cannot leave the map
/// inconsistent (every critical section is a single insert or read).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stats handle of listener `name`, created on first use.
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        lock(&self.listeners)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Stats of every listener seen, by name.
    pub fn listeners(&self) -> Vec<(String, Arc<ListenerStats>)> {
        let mut v: Vec<_> = lock(&self.listeners)
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Forget listeners that are no longer configured, once their last
    /// connection has closed: a removed listener's tunnels and keep-alive
    /// connections stay in its gauge (and in the same stats if a reload
    /// adds it back) until they end.
    pub fn retain_listeners(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.listeners).retain(|k, s| keep(k) || s.active() > 0);
    }

    /// Record the outcome of a reload (SIGHUP or admin API).
    pub fn record_reload(&self, result: Result<(), String>) {
        let mut r = lock(&self.reload);
        r.attempts += 1;
        r.last_unix = unix_now();
        r.last_ok = result.is_ok();
        r.last_error = result.err();
        if r.last_error.is_some() {
            r.failures += 1;
        }
    }

    /// Reload counters and the last outcome.
    pub fn reload_status(&self) -> ReloadStatus {
        lock(&self.reload).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_observations_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(9));
        let HistogramRead {
            sum,
            count,
            buckets,
        } = HistogramRead::of([&h].into_iter());
        assert_eq!(count, 3);
        assert_eq!(sum, 9.0033);
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 1));
        assert_eq!(buckets[12], (f64::MAX, 1));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 3);
    }

    #[test]
    fn status_classes_count_by_hundreds_and_odd_codes_as_5xx() {
        let s = StatusClasses::default();
        for code in [101, 200, 204, 302, 404, 503, 999] {
            s.record(code);
        }
        assert_eq!(StatusClasses::sum([&s].into_iter()), [1, 2, 1, 1, 2]);
    }

    #[test]
    fn counters_written_by_many_threads_at_once_sum_exactly() {
        let listener = Arc::new(ListenerStats::default());
        let backend = Arc::new(BackendStats::default());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (l, b) = (listener.clone(), backend.clone());
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let status = if i % 2 == 0 { 200 } else { 503 };
                        l.record_request(status, Duration::from_micros(100 + t));
                        l.add_bytes(1, 2);
                        b.record_selected();
                        b.record_response(status);
                        b.add_bytes(3, 4);
                        drop(l.open());
                    }
                    l.record_handshake(Handshake::Resumed, Duration::from_millis(2));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(listener.requests(), [0, 40_000, 0, 0, 40_000]);
        let latency = listener.request_latency();
        assert_eq!(latency.count, 80_000);
        assert_eq!(latency.buckets[0], (0.0005, 80_000));
        // 10 000 observations of (100 + t) us for each t in 0..8
        assert_eq!(latency.sum, 8.28);
        assert_eq!(
            (listener.bytes_in(), listener.bytes_out()),
            (80_000, 160_000)
        );
        assert_eq!((listener.accepted(), listener.active()), (80_000, 0));
        assert_eq!(listener.handshakes(Handshake::Resumed), 8);
        assert_eq!(listener.handshakes(Handshake::Full), 0);
        assert_eq!(listener.handshake_latency().count, 8);
        assert_eq!(backend.selected(), 80_000);
        assert_eq!(backend.responses(), [0, 40_000, 0, 0, 40_000]);
        assert_eq!(
            (backend.bytes_out(), backend.bytes_in()),
            (240_000, 320_000)
        );
    }

    #[test]
    fn every_shard_sits_on_its_own_cache_lines() {
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 128);
        let s = Shards::<ListenerCounters>::default();
        let addrs: Vec<usize> = s.iter().map(|c| c as *const _ as usize).collect();
        assert_eq!(addrs.len(), shard_count());
        for w in addrs.windows(2) {
            assert!(w[1] - w[0] >= 128 && w[1] % 128 == 0, "{addrs:?}");
        }
    }

    #[test]
    fn reload_status_keeps_the_last_error_until_a_reload_succeeds() {
        let m = Metrics::new();
        m.record_reload(Err("bad".into()));
        let r = m.reload_status();
        assert_eq!((r.attempts, r.failures, r.last_ok), (1, 1, false));
        assert_eq!(r.last_error.as_deref(), Some("bad"));
        m.record_reload(Ok(()));
        let r = m.reload_status();
        assert_eq!((r.attempts, r.failures, r.last_ok), (2, 1, true));
        assert_eq!(r.last_error, None);
    }
}
