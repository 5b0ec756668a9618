//! Round robin (`rr`, ip_vs_rr.c) and weighted round robin (`wrr`,
//! ip_vs_wrr.c), lock-free: the scheduler position lives in one atomic word
//! that each pick advances with a compare-and-swap, so concurrent picks see
//! the kernel's sequence without a lock and without allocating.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, Scheduler, gcd_weight};

/// `rr`: each pick takes the next available backend after the previous pick,
/// in list order, as ip_vs_rr does (weights only exclude weight 0).
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// Index of the previous pick + 1; 0 before the first pick.
    next: AtomicU64,
}

impl Scheduler for RoundRobin {
    fn pick(&self, backends: &[Backend], _client: IpAddr) -> Option<usize> {
        let n = backends.len();
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = cur as usize % n.max(1);
            let i = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| backends[i].available())?;
            match self.next.compare_exchange_weak(
                cur,
                i as u64 + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(i),
                Err(now) => cur = now,
            }
        }
    }
}

/// `wrr`: the kernel's interleaved weighted round robin. A current weight
/// `cw` starts at the maximum weight; each pick takes the next backend in
/// list order whose weight is at least `cw`; at the end of the list `cw`
/// drops by the gcd of the weights, and below 1 it restarts at the maximum.
/// Weights {4, 3, 2} give A A B A B C A B C.
///
/// Unavailable backends are skipped the way the kernel skips overloaded ones.
/// Where the kernel would walk through weight levels that no available
/// backend reaches (possible here only when a heavy backend is unhealthy), the
/// walk jumps straight to the next level that one reaches: the same picks,
/// with each pick costing at most two passes over the list.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// `cw` in the high 32 bits, index of the previous pick + 1 in the low
    /// 32 (0: before the first backend, the kernel's list head).
    state: AtomicU64,
    /// gcd of the weights (`mark->di`) in the high 32 bits, max weight -
    /// (gcd - 1) (`mark->mw`; 0 when every weight is 0) in the low 32.
    /// Atomic so that a weight override can change them in place.
    params: AtomicU64,
}

impl WeightedRoundRobin {
    /// Build for `backends` as ip_vs_wrr_init_svc does.
    pub fn new(backends: &[Backend]) -> Self {
        let (di, mw) = Self::params(backends);
        Self {
            state: AtomicU64::new(pack(mw, 0)),
            params: AtomicU64::new(pack(di, mw as usize)),
        }
    }

    /// `(di, mw)` for the weights in force.
    fn params(backends: &[Backend]) -> (u32, u32) {
        let di = gcd_weight(backends);
        let max = backends.iter().map(Backend::weight).max().unwrap_or(0);
        (di, if max == 0 { 0 } else { max - (di - 1) })
    }

    /// The pick that follows `state`, and the state after it.
    fn step(&self, backends: &[Backend], state: u64) -> Option<(usize, u64)> {
        let n = backends.len();
        let params = self.params.load(Ordering::Relaxed);
        let (di, mw) = (i64::from((params >> 32) as u32), i64::from(params as u32));
        if mw == 0 || n == 0 {
            return None;
        }
        let mut cw = i64::from((state >> 32) as u32);
        let mut i = ((state & 0xffff_ffff) as usize).min(n);
        let mut scanned = 0usize;
        // Highest weight among available backends seen in this call.
        let mut best = 0i64;
        loop {
            if i == n {
                i = 0;
                let everyone_seen = scanned >= n;
                if everyone_seen && best == 0 {
                    return None;
                }
                cw -= di;
                if cw <= 0 {
                    cw = mw;
                }
                if everyone_seen && best < cw {
                    // Skip the levels nobody available reaches: the highest
                    // level mw - k*di that is <= best.
                    let k = (mw - best + di - 1) / di;
                    cw = mw - k * di;
                }
                continue;
            }
            let b = &backends[i];
            scanned += 1;
            if b.available() {
                let w = i64::from(b.weight());
                best = best.max(w);
                if w >= cw {
                    return Some((i, pack(cw as u32, i + 1)));
                }
            }
            i += 1;
        }
    }
}

fn pack(cw: u32, next: usize) -> u64 {
    (u64::from(cw) << 32) | (next as u64 & 0xffff_ffff)
}

impl Scheduler for WeightedRoundRobin {
    fn pick(&self, backends: &[Backend], _client: IpAddr) -> Option<usize> {
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (i, next) = self.step(backends, cur)?;
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(i),
                Err(now) => cur = now,
            }
        }
    }

    /// New `di` and `mw`, and the sequence restarts, as ip_vs_wrr_dest_changed
    /// does when a destination's weight is edited.
    fn reweigh(&self, backends: &[Backend]) {
        let (di, mw) = Self::params(backends);
        self.params.store(pack(di, mw as usize), Ordering::Relaxed);
        self.state.store(pack(mw, 0), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn sequence(s: &dyn Scheduler, b: &[Backend], n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'A' + s.pick(b, client(0)).unwrap() as u8))
            .collect()
    }

    #[test]
    fn rr_takes_backends_in_turn_and_skips_unavailable_ones_without_doubling() {
        let b = backends(&[1, 1, 1]);
        let rr = RoundRobin::default();
        assert_eq!(sequence(&rr, &b, 6), "ABCABC");
        b[1].state.healthy.store(false, Ordering::Relaxed);
        // The kernel continues after the previous pick: A C A C, never C C.
        assert_eq!(sequence(&rr, &b, 4), "ACAC");
    }

    #[test]
    fn wrr_with_weights_4_3_2_follows_the_kernel_sequence() {
        let b = backends(&[4, 3, 2]);
        let wrr = WeightedRoundRobin::new(&b);
        assert_eq!(sequence(&wrr, &b, 18), "AABABCABCAABABCABC");
    }

    #[test]
    fn wrr_uses_the_gcd_as_step_as_the_kernel_does() {
        // di = 2, mw = 4 - 1 = 3: levels 3 then 1.
        let b = backends(&[4, 2]);
        let wrr = WeightedRoundRobin::new(&b);
        assert_eq!(sequence(&wrr, &b, 6), "AABAAB");
        let b = backends(&[5, 1, 3]);
        let wrr = WeightedRoundRobin::new(&b);
        // Levels 5 4 3 2 1: A, A, AC, AC, ABC.
        assert_eq!(sequence(&wrr, &b, 9), "AAACACABC");
    }

    #[test]
    fn wrr_skips_an_unhealthy_heavy_backend_as_if_it_were_not_listed() {
        let b = backends(&[1000, 2, 1]);
        b[0].state.healthy.store(false, Ordering::Relaxed);
        let wrr = WeightedRoundRobin::new(&b);
        assert_eq!(sequence(&wrr, &b, 6), "BBCBBC");
    }

    #[test]
    fn wrr_distribution_matches_weights_over_100k_picks() {
        let w = [5, 3, 1, 7];
        let b = backends(&w);
        let c = counts(&WeightedRoundRobin::new(&b), &b, 100_000, false);
        assert_weighted(&c, &w);
    }

    #[test]
    fn rr_distribution_is_even_over_100k_picks() {
        let b = backends(&[5, 3, 1]);
        let c = counts(&RoundRobin::default(), &b, 99_999, false);
        assert_eq!(c, vec![33_333; 3]);
    }

    #[test]
    fn wrr_with_every_weight_zero_picks_nothing() {
        let b = backends(&[0, 0]);
        assert_eq!(WeightedRoundRobin::new(&b).pick(&b, client(0)), None);
    }
}
