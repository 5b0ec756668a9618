//! The last minutes of request and error rates per listener, sampled by the
//! admin endpoint every [`INTERVAL`] so that the status page's charts are
//! full the moment it opens. Bounded: [`KEEP`] samples per listener, and
//! only listeners the registry still has.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Per-listener rate history.
#[derive(Debug, Default)]
pub struct History(Mutex<Inner>);

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
            let now_counts = stats.requests.read();
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
            web.requests.record(200);
        }
        for _ in 0..2 {
            web.requests.record(503);
        }
        web.requests.record(404);
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
