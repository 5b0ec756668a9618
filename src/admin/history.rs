//! What the admin endpoint keeps for the status page between requests: the
//! last minutes of request and error rates per listener ([`History`]),
//! sampled every [`INTERVAL`] so that the page's charts are full the moment
//! it opens (bounded: [`KEEP`] samples per listener, and only listeners the
//! registry still has), and the persistence summary of the last
//! [`SUMMARY_MAX_AGE`] ([`Cached`]), so that open pages polling every
//! 1.5 s do not each scan the persistence tables under their locks.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::Metrics;

/// Time between samples.
pub(super) const INTERVAL: Duration = Duration::from_secs(2);

/// Samples kept per listener: five minutes.
pub(super) const KEEP: usize = 150;

/// Rates over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Sample {
    /// Unix time at the end of the interval.
    pub(super) t: f64,
    /// Responses per second, all classes.
    pub(super) req: f64,
    /// 4xx and 5xx responses per second.
    pub(super) err: f64,
    /// Responses per second by class, 1xx to 5xx.
    pub(super) classes: [f64; 5],
}

#[derive(Debug, Default)]
struct Inner {
    /// Counters at the previous sample: time and responses by class.
    last: HashMap<String, (f64, [u64; 5])>,
    samples: HashMap<String, VecDeque<Sample>>,
}

/// The page's server-side state.
#[derive(Debug, Default)]
pub struct PageState {
    /// Per-listener rates.
    pub(super) rates: History,
    /// The last persistence summary.
    pub(super) persistence: Cached,
}

/// How long a persistence summary is served before it is computed again.
pub(super) const SUMMARY_MAX_AGE: Duration = Duration::from_secs(2);

/// A value computed at most once per [`SUMMARY_MAX_AGE`].
#[derive(Debug, Default)]
pub(super) struct Cached(Mutex<Option<(Instant, serde_json::Value)>>);

impl Cached {
    /// The cached value if it is fresh, else `compute()`'s, kept. Callers
    /// that arrive while one computes wait for it rather than scan again.
    pub(super) fn get(&self, compute: impl FnOnce() -> serde_json::Value) -> serde_json::Value {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some((at, v)) if at.elapsed() < SUMMARY_MAX_AGE => v.clone(),
            _ => {
                let v = compute();
                *slot = Some((Instant::now(), v.clone()));
                v
            }
        }
    }
}

/// Per-listener rate history.
#[derive(Debug, Default)]
pub(super) struct History(Mutex<Inner>);

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read every listener's response counters and append one sample per
    /// listener (the first reading of a listener only sets its baseline).
    pub(super) fn sample(&self, metrics: &Metrics) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.sample_at(metrics, now);
    }

    fn sample_at(&self, metrics: &Metrics, now: f64) {
        let listeners = metrics.listeners();
        let mut inner = self.lock();
        let Inner { last, samples } = &mut *inner;
        last.retain(|name, _| listeners.iter().any(|(n, _)| n == name));
        samples.retain(|name, _| last.contains_key(name));
        for (name, stats) in &listeners {
            let now_counts = stats.requests();
            let Some((t, before)) = last.insert(name.clone(), (now, now_counts)) else {
                continue;
            };
            let dt = now - t;
            if dt <= 0.0 {
                continue;
            }
            let classes: [f64; 5] =
                std::array::from_fn(|i| now_counts[i].saturating_sub(before[i]) as f64 / dt);
            let ring = samples.entry(name.clone()).or_default();
            if ring.len() == KEEP {
                ring.pop_front();
            }
            ring.push_back(Sample {
                t: now,
                req: classes.iter().sum(),
                err: classes[3] + classes[4],
                classes,
            });
        }
    }

    /// Every listener's samples, oldest first.
    pub(super) fn read(&self) -> HashMap<String, Vec<Sample>> {
        self.lock()
            .samples
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().copied().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_rates_over_the_interval_and_the_ring_is_bounded() {
        let m = Metrics::new();
        let web = m.listener("web");
        let h = History::default();
        h.sample_at(&m, 100.0);
        assert!(h.read().is_empty(), "the first reading is a baseline");
        for _ in 0..6 {
            web.record_request(200, std::time::Duration::ZERO);
        }
        for _ in 0..2 {
            web.record_request(503, std::time::Duration::ZERO);
        }
        web.record_request(404, std::time::Duration::ZERO);
        h.sample_at(&m, 102.0);
        assert_eq!(
            h.read()["web"],
            [Sample {
                t: 102.0,
                req: 4.5,
                err: 1.5,
                classes: [0.0, 3.0, 0.0, 0.5, 1.0],
            }]
        );
        for i in 0..KEEP + 10 {
            h.sample_at(&m, 104.0 + 2.0 * i as f64);
        }
        let ring = &h.read()["web"];
        assert_eq!(ring.len(), KEEP);
        assert_eq!(ring.last().unwrap().req, 0.0);
    }
}
