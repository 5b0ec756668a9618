//! Load-aware schedulers: `lc`, `wlc`, `sed`, `nq` (the formulas of
//! ip_vs_lc.c, ip_vs_wlc.c, ip_vs_sed.c and ip_vs_nq.c) and `p2c` (power of
//! two choices).
//!
//! The kernel's connection overhead is `activeconns * 256 + inactconns`,
//! where inactive connections are those in TIME_WAIT/FIN states that it still
//! tracks. A proxy has no such connections: a closed connection is gone. So
//! the overhead here is the number of open connections (`active`), and `lc`
//! and `wlc` compare `active` (and `active / weight`) exactly as the kernel
//! compares its overhead. `sed` and `nq` use `active + 1`, as the kernel does.
//! Ties go to the first backend in list order, as in the kernel.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, Scheduler, mix64};

/// The first available backend minimising `cost(b)`, compared as the
/// fractions `cost / weight` by cross-multiplication (as the kernel does).
fn least_by(backends: &[Backend], weighted: bool, cost: impl Fn(&Backend) -> u64) -> Option<usize> {
    let mut best: Option<(usize, u128, u128)> = None;
    for (i, b) in backends.iter().enumerate() {
        if !b.available() {
            continue;
        }
        let (c, w) = (
            u128::from(cost(b)),
            if weighted { u128::from(b.weight()) } else { 1 },
        );
        match best {
            // c/w < bc/bw, the kernel's `loh * dw > doh * lw`.
            Some((_, bc, bw)) if bc * w <= c * bw => {}
            _ => best = Some((i, c, w)),
        }
    }
    best.map(|(i, _, _)| i)
}

/// `lc` (`ipvsadm -s lc`): fewest open connections; weights only exclude 0.
#[derive(Debug, Default)]
pub struct LeastConnection;

impl Scheduler for LeastConnection {
    fn pick(&self, backends: &[Backend], _client: IpAddr) -> Option<usize> {
        least_by(backends, false, Backend::active)
    }
}

/// `wlc` (`ipvsadm -s wlc`, the IPVS default): fewest open connections per
/// unit of weight.
#[derive(Debug, Default)]
pub struct WeightedLeast;

impl Scheduler for WeightedLeast {
    fn pick(&self, backends: &[Backend], _client: IpAddr) -> Option<usize> {
        least_by(backends, true, Backend::active)
    }
}

/// `sed` (`ipvsadm -s sed`): shortest expected delay, `(active + 1) / weight`,
/// which sends to a heavy backend even when a light one is idle.
#[derive(Debug, Default)]
pub struct ShortestExpectedDelay;

impl Scheduler for ShortestExpectedDelay {
    fn pick(&self, backends: &[Backend], _client: IpAddr) -> Option<usize> {
        least_by(backends, true, |b| b.active() + 1)
    }
}

/// `nq` (`ipvsadm -s nq`): never queue. The first idle backend (no open
/// connection) wins outright; when none is idle, as `sed`.
#[derive(Debug, Default)]
pub struct NeverQueue;

impl Scheduler for NeverQueue {
    fn pick(&self, backends: &[Backend], _client: IpAddr) -> Option<usize> {
        if let Some(i) = backends
            .iter()
            .position(|b| b.available() && b.active() == 0)
        {
            return Some(i);
        }
        least_by(backends, true, |b| b.active() + 1)
    }
}

/// `p2c`: power of two choices. Draw two backends at random, each with
/// probability proportional to its weight, and take the one with fewer open
/// connections per unit of weight (the first drawn on a tie). Load-aware like
/// `wlc` at O(log n) per pick, without herding every new connection onto
/// the one least-loaded backend. Not an IPVS scheduler.
#[derive(Debug)]
pub struct PowerOfTwo {
    /// Running sum of weights, for sampling by weight with a binary search.
    cumulative: Vec<u64>,
    /// Random state (splitmix64 counter); one atomic add per draw.
    rng: AtomicU64,
}

/// How many weighted draws may land on unavailable backends before the pick
/// falls back to a full `wlc` scan.
const P2C_DRAWS: usize = 8;

impl PowerOfTwo {
    /// Build the weight table for `backends`.
    pub fn new(backends: &[Backend]) -> Self {
        let mut sum = 0u64;
        let cumulative = backends
            .iter()
            .map(|b| {
                sum += u64::from(b.weight());
                sum
            })
            .collect();
        Self {
            cumulative,
            rng: AtomicU64::new(0x853c_49e6_748f_ea9b),
        }
    }

    fn random(&self) -> u64 {
        mix64(self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
    }

    /// A backend drawn by weight that is currently available.
    fn draw(&self, backends: &[Backend], total: u64) -> Option<usize> {
        (0..P2C_DRAWS).find_map(|_| {
            let r = self.random() % total;
            let i = self.cumulative.partition_point(|&c| c <= r);
            backends.get(i).filter(|b| b.available()).map(|_| i)
        })
    }
}

impl Scheduler for PowerOfTwo {
    fn pick(&self, backends: &[Backend], _client: IpAddr) -> Option<usize> {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 || self.cumulative.len() != backends.len() {
            return None;
        }
        let (Some(a), Some(b)) = (self.draw(backends, total), self.draw(backends, total)) else {
            return least_by(backends, true, Backend::active);
        };
        let (ba, bb) = (&backends[a], &backends[b]);
        // active_b / weight_b < active_a / weight_a
        let b_less = u128::from(bb.active()) * u128::from(ba.weight())
            < u128::from(ba.active()) * u128::from(bb.weight());
        Some(if b_less { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn set_active(b: &[Backend], active: &[u64]) {
        for (b, a) in b.iter().zip(active) {
            b.state.active.store(*a, Ordering::Relaxed);
        }
    }

    #[test]
    fn lc_picks_the_fewest_connections_and_the_first_on_a_tie() {
        let b = backends(&[1, 5, 1]);
        set_active(&b, &[3, 2, 2]);
        assert_eq!(LeastConnection.pick(&b, client(0)), Some(1));
        set_active(&b, &[3, 3, 2]);
        assert_eq!(LeastConnection.pick(&b, client(0)), Some(2));
    }

    #[test]
    fn wlc_compares_connections_per_weight() {
        let b = backends(&[1, 3, 2]);
        // 2/1, 5/3, 3/2: the third is lowest.
        set_active(&b, &[2, 5, 3]);
        assert_eq!(WeightedLeast.pick(&b, client(0)), Some(2));
        // 0/1 ties 0/3 and 0/2: first wins.
        set_active(&b, &[0, 0, 0]);
        assert_eq!(WeightedLeast.pick(&b, client(0)), Some(0));
    }

    #[test]
    fn sed_sends_to_a_heavy_busy_backend_before_a_light_idle_one() {
        let b = backends(&[1, 10]);
        // (0+1)/1 = 1 > (5+1)/10 = 0.6
        set_active(&b, &[0, 5]);
        assert_eq!(ShortestExpectedDelay.pick(&b, client(0)), Some(1));
        assert_eq!(WeightedLeast.pick(&b, client(0)), Some(0));
    }

    #[test]
    fn nq_takes_an_idle_backend_first_then_behaves_as_sed() {
        let b = backends(&[10, 1, 1]);
        set_active(&b, &[5, 1, 0]);
        assert_eq!(NeverQueue.pick(&b, client(0)), Some(2));
        set_active(&b, &[5, 1, 1]);
        // 6/10 < 2/1
        assert_eq!(NeverQueue.pick(&b, client(0)), Some(0));
    }

    #[test]
    fn load_aware_schedulers_spread_held_connections_by_weight_over_100k_picks() {
        let w = [4, 3, 2];
        for s in [
            &WeightedLeast as &dyn Scheduler,
            &ShortestExpectedDelay,
            &NeverQueue,
        ] {
            let b = backends(&w);
            assert_weighted(&counts(s, &b, 99_999, true), &w);
        }
        let b = backends(&w);
        let c = counts(&LeastConnection, &b, 99_999, true);
        assert_eq!(c, vec![33_333; 3]);
    }

    #[test]
    fn p2c_draws_by_weight_when_idle_and_balances_held_connections_by_weight() {
        // Draws are random: a 10% share over 100k picks has a 0.95%
        // relative standard deviation, so count over 1M picks.
        let w = [4, 3, 2, 1];
        let b = backends(&w);
        assert_weighted(&counts(&PowerOfTwo::new(&b), &b, 1_000_000, false), &w);
        let b = backends(&w);
        assert_weighted(&counts(&PowerOfTwo::new(&b), &b, 1_000_000, true), &w);
    }

    #[test]
    fn p2c_prefers_the_less_loaded_of_two() {
        let b = backends(&[1, 1]);
        set_active(&b, &[100, 0]);
        let p = PowerOfTwo::new(&b);
        let to_first = (0..1000)
            .filter(|_| p.pick(&b, client(0)) == Some(0))
            .count();
        // Only when both draws hit the first backend: about a quarter.
        assert!((150..350).contains(&to_first), "{to_first}");
    }
}
