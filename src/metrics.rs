//! Counters the data path increments and the admin endpoint reads.
//!
//! Hot-path cost is a few relaxed atomic adds: every listener and backend gets
//! its own pre-resolved stats handle ([`ListenerStats`], [`BackendStats`]) when
//! it is bound or built, so a connection or request never looks up a label
//! map. Names and labels are attached only at scrape time, by the admin
//! module, which walks the live snapshot. This module is a leaf: it imports
//! nothing from the crate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds, in seconds, of the latency histogram buckets (a final
/// `+Inf` bucket is implied). Covers loopback handshakes to slow backends.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram over [`LATENCY_BUCKETS`], lock-free.
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
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// `(sum in seconds, count, per-bucket counts with upper bounds)`; the
    /// last bound is `f64::MAX`, which the text encoder writes as `+Inf`.
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = b.load(Ordering::Relaxed);
                count += n;
                (LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::MAX), n)
            })
            .collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// HTTP responses counted by status class.
#[derive(Debug, Default)]
pub struct StatusClasses([AtomicU64; 5]);

impl StatusClasses {
    /// The label values, index-aligned with [`StatusClasses::read`].
    pub const LABELS: [&'static str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

    /// Count a response with `status` (codes outside 100..=599 count as 5xx).
    pub fn record(&self, status: u16) {
        let i = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 4,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts per class, in the order of [`StatusClasses::LABELS`].
    pub fn read(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
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

/// Counters of one listener, resolved once when it is bound and kept across
/// reloads while the listener keeps its name.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicI64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// HTTP responses sent, by status class.
    pub requests: StatusClasses,
    /// HTTP request latency, request head received to response head sent.
    pub request_latency: Histogram,
    /// TLS handshakes completed in full.
    pub tls_full: AtomicU64,
    /// TLS handshakes resumed.
    pub tls_resumed: AtomicU64,
    /// TLS handshakes failed or timed out.
    pub tls_failed: AtomicU64,
    /// TLS handshake latency.
    pub handshake_latency: Histogram,
}

impl ListenerStats {
    /// Count an accepted connection; the guard counts it active until dropped.
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Count a finished TLS handshake.
    pub fn record_handshake(&self, outcome: Handshake, took: Duration) {
        let c = match outcome {
            Handshake::Full => &self.tls_full,
            Handshake::Resumed => &self.tls_resumed,
            Handshake::Failed => &self.tls_failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.handshake_latency.observe(took);
    }

    /// Count an HTTP response and its latency.
    pub fn record_request(&self, status: u16, took: Duration) {
        self.requests.record(status);
        self.request_latency.observe(took);
    }

    /// Add a finished connection's byte counts.
    pub fn add_bytes(&self, from_client: u64, to_client: u64) {
        self.bytes_in.fetch_add(from_client, Ordering::Relaxed);
        self.bytes_out.fetch_add(to_client, Ordering::Relaxed);
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

/// Traffic counters of one backend, owned by its live state so that they
/// survive reloads with it. (Active and total connections are counted by the
/// backend's lease.)
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Bytes sent to the backend.
    pub bytes_out: AtomicU64,
    /// Bytes received from the backend.
    pub bytes_in: AtomicU64,
    /// Connect attempts that failed or timed out.
    pub connect_failures: AtomicU64,
    /// Time to establish a TCP connection to the backend.
    pub connect_latency: Histogram,
    /// HTTP responses received from the backend, by status class.
    pub responses: StatusClasses,
    /// Active health checks that passed.
    pub checks_passed: AtomicU64,
    /// Active health checks that failed.
    pub checks_failed: AtomicU64,
    /// Up/down transitions (active and passive).
    pub flips: AtomicU64,
}

impl BackendStats {
    /// Add a finished connection's byte counts.
    pub fn add_bytes(&self, to_backend: u64, from_backend: u64) {
        self.bytes_out.fetch_add(to_backend, Ordering::Relaxed);
        self.bytes_in.fetch_add(from_backend, Ordering::Relaxed);
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
        lock(&self.listeners).retain(|k, s| keep(k) || s.active.load(Ordering::Relaxed) > 0);
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
        let (sum, count, buckets) = h.read();
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
        assert_eq!(s.read(), [1, 2, 1, 1, 2]);
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
