//! Backend selection: pools of backends with live state, the schedulers
//! (IPVS semantics), and client-IP persistence. Pure selection: no I/O,
//! nothing spawned.
//!
//! A [`Pool`]'s backends and configured weights are fixed once built. Live
//! state (health, active connections, admin weight overrides) sits in
//! [`BackendState`] behind an `Arc`, carried across reloads by backend
//! address. A weight change in the file or a backend added or removed is
//! applied by building a new pool on reload ([`Pools::build`] with the
//! previous pools). Scheduler tables are built from the weights in force
//! (overrides included) and rebuilt on the next pick after an admin
//! override changes, as the kernel rebuilds on `ipvsadm -e`.
//!
//! Every scheduler skips backends that are unhealthy or have weight 0, the
//! way IPVS skips overloaded and quiesced real servers.
//!
//! Health, drain and slow-start state of a backend is kept in
//! [`BackendState`] (methods in `live.rs`) and consulted by
//! [`Backend::available`], so every scheduler honours it.

mod hash;
mod least;
mod live;
pub mod persist;
mod rr;

pub use live::{AllDown, Change};

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};

pub use hash::{Maglev, SourceHash};
pub use least::{LeastConnection, NeverQueue, PowerOfTwo, ShortestExpectedDelay, WeightedLeast};
pub use persist::{
    PersistenceEntry, PersistenceSummary, PersistenceTable, PersistenceTables, SUMMARY_RANK_LIMIT,
};
pub use rr::{RoundRobin, WeightedRoundRobin};

use crate::config::{self, SchedulerKind};
use crate::metrics::{BackendStats, Padded};

/// Live state of one backend, shared by the scheduler, the proxy, health
/// checks and metrics. Kept across reloads for backends that stay.
#[derive(Debug)]
pub struct BackendState {
    /// Set by health checks; unhealthy backends get no new connections.
    pub healthy: AtomicBool,
    /// Connections currently open to the backend: one exact gauge that
    /// least-connection schedulers read, alone on its cache lines so that
    /// its per-connection writes do not slow the read-mostly fields here.
    pub active: Padded<AtomicU64>,
    /// Traffic and check counters for metrics, one set per worker.
    pub stats: BackendStats,
    /// Weight set through the admin API, overriding the configured one;
    /// `live::NO_OVERRIDE` when unset. 0 drains the backend.
    pub weight_override: AtomicU32,
    /// When the backend last came up (ms on `live`'s clock), 0 if it has
    /// been up since it was first seen: the start of its slow-start ramp.
    pub up_since_ms: AtomicU64,
    /// Slow-start period of its pool in ms (0 = none), set at build.
    pub slow_start_ms: AtomicU64,
    /// Admission counter spreading a ramping backend's share evenly.
    pub ramp_tick: AtomicU64,
    /// Consecutive connect failures on live traffic (passive check).
    pub passive_failures: AtomicU32,
    /// Set when passive checks took it down and no active check will bring
    /// it back: it may be retried from this time (ms on `live`'s clock).
    pub retry_at_ms: AtomicU64,
    /// The weight generation of the pool the backend is in, bumped by a
    /// weight override so that the pool rebuilds its scheduler table.
    pub(crate) pool_weights: ArcSwapOption<AtomicU64>,
    /// What last changed the backend's state, for the status page; written
    /// only on a flip or an admin weight change, never on the pick path.
    pub(crate) last_change: std::sync::Mutex<Option<Change>>,
    /// Duration of the last active health check in microseconds (0 = none
    /// yet) and whether it passed.
    pub last_check_us: AtomicU64,
    /// Whether the last active health check passed.
    pub last_check_ok: AtomicBool,
}

impl Default for BackendState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            active: Padded(AtomicU64::new(0)),
            stats: BackendStats::default(),
            weight_override: AtomicU32::new(live::NO_OVERRIDE),
            up_since_ms: AtomicU64::new(0),
            slow_start_ms: AtomicU64::new(0),
            ramp_tick: AtomicU64::new(0),
            pool_weights: ArcSwapOption::empty(),
            last_change: std::sync::Mutex::new(None),
            last_check_us: AtomicU64::new(0),
            last_check_ok: AtomicBool::new(false),
            passive_failures: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
        }
    }
}

/// A backend as scheduled: address, weight and live state.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where connections go.
    pub address: SocketAddr,
    /// Relative share of new connections; 0 means quiesced (no new ones).
    pub weight: u32,
    /// Health and connection counts, shared with everything that observes it.
    pub state: Arc<BackendState>,
}

impl Backend {
    /// A healthy backend with fresh state (tests, benches).
    pub fn new(address: SocketAddr, weight: u32) -> Self {
        Self {
            address,
            weight,
            state: Arc::default(),
        }
    }

    /// Whether the backend may receive a new connection: up, not drained,
    /// and (while ramping after coming up) admitted by its slow-start share.
    pub fn available(&self) -> bool {
        self.is_up() && self.state.slow_start_admits()
    }

    /// Whether health checks currently pass (weight not considered).
    pub fn healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    /// Connections currently open.
    pub fn active(&self) -> u64 {
        self.state.active.load(Ordering::Relaxed)
    }
}

/// Chooses a backend for a new connection. Implementations hold a table
/// built once per backend-set change (and again on [`Scheduler::reweigh`]),
/// over the same `backends` slice that `pick` then receives; `pick` must not
/// block, lock or allocate.
pub trait Scheduler: Send + Sync + fmt::Debug {
    /// Index into `backends` of the chosen one, skipping unavailable
    /// backends; `None` when no backend is available.
    fn pick(&self, backends: &[Backend], client: IpAddr) -> Option<usize>;

    /// Adopt the weights now in force (an admin override changed one).
    /// Schedulers that read weights on every pick have nothing to do.
    fn reweigh(&self, _backends: &[Backend]) {}
}

/// A scheduler whose table depends on the weights (`sh`, `mh`, `p2c`):
/// rebuilt from the weights in force when they change, as the kernel
/// rebuilds it when a destination is edited. Picks pay one `ArcSwap` load.
struct Rebuilt<S> {
    current: ArcSwap<S>,
    build: Build<S>,
}

/// How a [`Rebuilt`] scheduler makes its table.
type Build<S> = Box<dyn Fn(&[Backend]) -> S + Send + Sync>;

impl<S: Scheduler + 'static> Rebuilt<S> {
    fn boxed(
        backends: &[Backend],
        build: impl Fn(&[Backend]) -> S + Send + Sync + 'static,
    ) -> Box<dyn Scheduler> {
        Box::new(Self {
            current: ArcSwap::from_pointee(build(backends)),
            build: Box::new(build),
        })
    }
}

impl<S: Scheduler> fmt::Debug for Rebuilt<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.current.load().fmt(f)
    }
}

impl<S: Scheduler> Scheduler for Rebuilt<S> {
    fn pick(&self, backends: &[Backend], client: IpAddr) -> Option<usize> {
        self.current.load().pick(backends, client)
    }

    fn reweigh(&self, backends: &[Backend]) {
        self.current.store(Arc::new((self.build)(backends)));
    }
}

/// Build the scheduler `kind` for `backends`. `mh_table_size` is the Maglev
/// lookup table size (a prime), used by `mh` only.
pub fn scheduler(
    kind: SchedulerKind,
    backends: &[Backend],
    mh_table_size: u32,
) -> Box<dyn Scheduler> {
    match kind {
        SchedulerKind::Rr => Box::new(RoundRobin::default()),
        SchedulerKind::Wrr => Box::new(WeightedRoundRobin::new(backends)),
        SchedulerKind::Lc => Box::new(LeastConnection),
        SchedulerKind::Wlc => Box::new(WeightedLeast),
        SchedulerKind::Sed => Box::new(ShortestExpectedDelay),
        SchedulerKind::Nq => Box::new(NeverQueue),
        SchedulerKind::Sh => Rebuilt::boxed(backends, SourceHash::new),
        SchedulerKind::Mh => Rebuilt::boxed(backends, move |b| Maglev::new(b, mh_table_size)),
        SchedulerKind::P2c => Rebuilt::boxed(backends, PowerOfTwo::new),
        // kernel-only schedulers: `vipd check` refuses them for pools
        SchedulerKind::Lblc
        | SchedulerKind::Lblcr
        | SchedulerKind::Dh
        | SchedulerKind::Fo
        | SchedulerKind::Ovf => Box::new(WeightedRoundRobin::new(backends)),
    }
}

/// A named set of backends and its scheduler.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name in the configuration.
    pub name: String,
    /// Backends in configuration order (the order schedulers walk).
    pub backends: Vec<Backend>,
    kind: SchedulerKind,
    mh_table_size: u32,
    scheduler: Box<dyn Scheduler>,
    /// Bumped by an admin weight override on one of `backends`.
    weights_generation: Arc<AtomicU64>,
    /// The generation the scheduler last adopted.
    weights_seen: AtomicU64,
    /// What to do when no backend is up.
    pub on_all_down: AllDown,
    /// Slow-start period it was built with (reload compares it).
    slow_start: std::time::Duration,
}

impl Pool {
    /// Build from config, carrying live state of backends that `previous` had.
    pub fn new(cfg: &config::Pool, previous: Option<&Pool>) -> Self {
        let before: HashMap<_, _> = previous
            .iter()
            .flat_map(|p| p.backends.iter().map(|o| (o.address, o)))
            .collect();
        let backends: Vec<Backend> = cfg
            .backends
            .iter()
            .map(|b| Backend {
                address: b.address,
                weight: b.weight,
                state: before
                    .get(&b.address)
                    .map(|o| o.state.clone())
                    .unwrap_or_default(),
            })
            .collect();
        for b in &backends {
            b.state.configure(cfg);
        }
        let mut pool = Self::from_backends(&cfg.name, backends, cfg.scheduler, cfg.mh_table_size);
        pool.on_all_down = AllDown::new(cfg, previous.map(|p| &p.on_all_down));
        pool.slow_start = cfg.slow_start;
        pool
    }

    /// Build from backends directly (tests, benches).
    pub fn from_backends(
        name: &str,
        backends: Vec<Backend>,
        kind: SchedulerKind,
        mh_table_size: u32,
    ) -> Self {
        let scheduler = scheduler(kind, &backends, mh_table_size);
        let pool = Self {
            name: name.to_owned(),
            backends,
            kind,
            mh_table_size,
            scheduler,
            weights_generation: Arc::new(AtomicU64::new(0)),
            weights_seen: AtomicU64::new(0),
            on_all_down: AllDown::Refuse,
            slow_start: std::time::Duration::ZERO,
        };
        pool.attach_backends();
        pool
    }

    /// Point this pool's backends at its weight generation.
    fn attach_backends(&self) {
        for b in &self.backends {
            b.state
                .pool_weights
                .store(Some(self.weights_generation.clone()));
        }
    }

    /// Make admin weight overrides of this pool's backends reach this pool,
    /// and rebuild its table on the next pick. Backend state is shared with
    /// the pool it was carried from on reload, so a reload that is rolled
    /// back calls this on the pools it keeps.
    pub fn claim_backends(&self) {
        self.attach_backends();
        self.weights_generation.fetch_add(1, Ordering::Release);
    }

    /// The scheduling algorithm.
    pub fn scheduler_kind(&self) -> SchedulerKind {
        self.kind
    }

    /// Whether `cfg` describes exactly this pool's scheduling (same
    /// backends, weights, order and scheduler), so the pool, with its
    /// scheduler position, can be kept across a reload.
    fn same_as(&self, cfg: &config::Pool) -> bool {
        self.kind == cfg.scheduler
            && self.mh_table_size == cfg.mh_table_size
            && self.slow_start == cfg.slow_start
            && self.on_all_down.matches(cfg.on_all_down)
            && self.backends.len() == cfg.backends.len()
            && self
                .backends
                .iter()
                .zip(&cfg.backends)
                .all(|(b, c)| b.address == c.address && b.weight == c.weight)
    }

    /// Index of the backend the scheduler picks for `client`, without
    /// claiming it.
    pub fn pick(&self, client: IpAddr) -> Option<usize> {
        let generation = self.weights_generation.load(Ordering::Acquire);
        if self.weights_seen.load(Ordering::Relaxed) != generation
            && self.weights_seen.swap(generation, Ordering::Relaxed) != generation
        {
            // An admin weight override changed since the scheduler last
            // looked (rare): one pick adopts the weights in force.
            self.scheduler.reweigh(&self.backends);
        }
        self.scheduler.pick(&self.backends, client)
    }

    /// Choose a backend for `client`; the lease counts the connection as
    /// active until dropped. When no backend is up, [`Pool::on_all_down`]
    /// decides (see [`AllDown`]).
    pub fn select(&self, client: IpAddr) -> Option<Lease> {
        if let Some(i) = self.pick(client) {
            return Some(Lease::new(&self.backends[i], None));
        }
        self.fallback().map(|b| Lease::new(b, None))
    }

    /// Choose a backend for `client` through the persistence table `table`:
    /// the backend host the client's prefix already sticks to when it can
    /// still take connections, otherwise a scheduled one that the client then
    /// sticks to.
    pub fn select_persistent(
        &self,
        client: IpAddr,
        table: &Arc<PersistenceTable>,
    ) -> Option<Lease> {
        table.select(self, client)
    }
}

/// One connection's claim on a backend; dropping it ends the connection's
/// count in the backend's active total and, with persistence, releases the
/// client's hold on its persistence entry (which starts its timeout once no
/// connection holds it).
#[derive(Debug)]
pub struct Lease {
    /// The chosen backend.
    pub address: SocketAddr,
    state: Arc<BackendState>,
    sticky: Option<persist::Hold>,
}

impl Lease {
    fn new(backend: &Backend, sticky: Option<persist::Hold>) -> Self {
        backend.state.active.fetch_add(1, Ordering::Relaxed);
        backend.state.stats.record_selected();
        Self {
            address: backend.address,
            state: backend.state.clone(),
            sticky,
        }
    }

    /// Give the lease up because connecting to its backend failed: with
    /// persistence, the client's entry to that backend is removed so that
    /// the next selection reschedules instead of retrying the same host.
    pub fn connect_failed(mut self) {
        if let Some(hold) = self.sticky.take() {
            hold.forget();
        }
    }

    /// The live state of the leased backend (stats, passive reports).
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }

    /// Whether the choice went through a persistence table.
    pub fn is_persistent(&self) -> bool {
        self.sticky.is_some()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        // `sticky` releases its hold when dropped.
    }
}

/// Every pool of a configuration, by name.
#[derive(Debug, Default)]
pub struct Pools {
    by_name: HashMap<String, Arc<Pool>, fnv::FnvBuildHasher>,
}

impl Pools {
    /// Build all pools, carrying backend state over from `previous`. A pool
    /// whose backends, weights and scheduler did not change is kept as is,
    /// so its scheduler continues where it was (rr/wrr position).
    pub fn build(config: &config::Config, previous: Option<&Pools>) -> Self {
        let by_name = config
            .pools
            .iter()
            .map(|cfg| {
                let prev = previous.and_then(|p| p.get(&cfg.name));
                let pool = match prev {
                    Some(p) if p.same_as(cfg) => p.clone(),
                    _ => Arc::new(Pool::new(cfg, prev.map(|p| &**p))),
                };
                (cfg.name.clone(), pool)
            })
            .collect();
        Self { by_name }
    }

    /// The pool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.by_name.get(name)
    }

    /// Every pool.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.by_name.values()
    }

    /// [`Pool::claim_backends`] for every pool (after a rolled-back reload).
    pub fn claim_backends(&self) {
        self.iter().for_each(|p| p.claim_backends());
    }
}

/// splitmix64's finalizer: a bijective 64-bit mix with full avalanche. The
/// hash schedulers and p2c use it so that results are the same on every
/// host and every build (several vipd instances behind ECMP must agree).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Greatest common divisor of the positive weights in force (1 when there
/// are none), as ip_vs_wrr_gcd_weight.
pub(crate) fn gcd_weight(backends: &[Backend]) -> u32 {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = backends
        .iter()
        .map(Backend::weight)
        .filter(|&w| w > 0)
        .fold(0, gcd);
    g.max(1)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the scheduler tests.
    use super::*;
    use std::net::Ipv4Addr;

    /// Backends 10.0.0.1:80, 10.0.0.2:80, ... with the given weights.
    pub(crate) fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let ip = Ipv4Addr::from(0x0a00_0001 + i as u32);
                Backend::new(SocketAddr::new(ip.into(), 80), w)
            })
            .collect()
    }

    /// The `i`th test client address, 100.64.0.0 + i.
    pub(crate) fn client(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i))
    }

    /// How many of `picks` picks of `s` land on each backend, with no
    /// connection kept open (`hold = false`) or every one kept (`hold`).
    pub(crate) fn counts(s: &dyn Scheduler, b: &[Backend], picks: u32, hold: bool) -> Vec<u32> {
        let mut out = vec![0; b.len()];
        for i in 0..picks {
            let k = s.pick(b, client(i)).expect("a backend is available");
            out[k] += 1;
            if hold {
                b[k].state.active.fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }

    /// Assert each share is within 1% (relative) of its weight's share.
    pub(crate) fn assert_weighted(counts: &[u32], weights: &[u32]) {
        let total: u32 = counts.iter().sum();
        let wsum: u32 = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let want = f64::from(total) * f64::from(*w) / f64::from(wsum);
            let off = (f64::from(*c) - want).abs() / want;
            assert!(
                off <= 0.01,
                "counts {counts:?} are not within 1% of weights {weights:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn pool_cfg(kind: SchedulerKind, weights: &[u32]) -> config::Pool {
        config::Pool {
            name: "p".into(),
            scheduler: kind,
            mh_table_size: 65_537,
            backends: backends(weights)
                .iter()
                .map(|b| config::Backend {
                    address: b.address,
                    weight: b.weight,
                })
                .collect(),
            health: None,
            connect_timeout: std::time::Duration::from_secs(1),
            response_timeout: std::time::Duration::from_secs(1),
            send_proxy: false,
            http2: false,
            slow_start: std::time::Duration::ZERO,
            on_all_down: config::OnAllDown::Refuse,
            passive_fall: 3,
            passive_cooldown: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            max_idle: 32,
        }
    }

    #[test]
    fn every_scheduler_skips_unhealthy_and_weight_zero_backends() {
        for (kind, name) in SchedulerKind::POOL {
            let pool = Pool::new(&pool_cfg(kind, &[1, 0, 1]), None);
            pool.backends[0]
                .state
                .healthy
                .store(false, Ordering::Relaxed);
            for i in 0..200 {
                assert_eq!(pool.pick(client(i)), Some(2), "scheduler {name}");
            }
            pool.backends[2]
                .state
                .healthy
                .store(false, Ordering::Relaxed);
            assert_eq!(pool.pick(client(0)), None, "scheduler {name}");
        }
    }

    #[test]
    fn an_admin_weight_override_reshapes_the_wrr_sequence_at_once() {
        let pool = Pool::new(&pool_cfg(SchedulerKind::Wrr, &[1, 1]), None);
        let picks = |n| {
            (0..n)
                .map(|i| pool.pick(client(i)).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(4), [0, 1, 0, 1]);
        pool.backends[0].state.set_weight_override(Some(3));
        // ip_vs_wrr with weights {3, 1}, restarted as the kernel restarts
        // it when a destination's weight is edited.
        assert_eq!(picks(8), [0, 0, 0, 1, 0, 0, 0, 1]);
        pool.backends[0].state.set_weight_override(None);
        assert_eq!(picks(4), [0, 1, 0, 1]);
    }

    #[test]
    fn weight_table_schedulers_follow_an_admin_weight_override() {
        let kinds = [
            SchedulerKind::Wrr,
            SchedulerKind::Sh,
            SchedulerKind::Mh,
            SchedulerKind::P2c,
        ];
        for kind in kinds {
            let pool = Pool::new(&pool_cfg(kind, &[1, 1]), None);
            pool.backends[1].state.set_weight_override(Some(3));
            let mut counts = [0u32; 2];
            for i in 0..40_000 {
                counts[pool.pick(client(i)).unwrap()] += 1;
            }
            let share = f64::from(counts[1]) / 40_000.0;
            assert!(
                (share - 0.75).abs() < 0.03,
                "{kind:?}: backend 1 got {share} of picks with weights {{1, 3}}: {counts:?}"
            );
        }
    }

    #[test]
    fn a_lease_counts_the_connection_until_dropped() {
        let pool = Pool::new(&pool_cfg(SchedulerKind::Rr, &[1]), None);
        let lease = pool.select(client(1)).unwrap();
        assert_eq!(pool.backends[0].active(), 1);
        drop(lease);
        assert_eq!(pool.backends[0].active(), 0);
        assert_eq!(pool.backends[0].state.stats.selected(), 1);
    }

    #[test]
    fn the_active_gauge_shares_no_cache_line_with_the_fields_picks_read() {
        let state = Arc::new(BackendState::default());
        let line = |p: *const u8| p as usize / 128;
        let active = line((&*state.active as *const AtomicU64).cast());
        let read_by_picks = [
            (&state.healthy as *const AtomicBool).cast::<u8>(),
            (&state.weight_override as *const AtomicU32).cast(),
            (&state.slow_start_ms as *const AtomicU64).cast(),
            (&state.retry_at_ms as *const AtomicU64).cast(),
        ];
        for p in read_by_picks {
            assert_ne!(line(p), active);
        }
    }

    #[test]
    fn reload_keeps_an_unchanged_pool_and_carries_state_into_a_changed_one() {
        let a = pool_cfg(SchedulerKind::Wrr, &[4, 3, 2]);
        let mut config = crate::config::parse(
            "[[pool]]\nname = \"p\"\nbackends = [{ address = \"10.0.0.1:80\" }]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        config.pools = vec![a.clone()];
        let first = Pools::build(&config, None);
        let p1 = first.get("p").unwrap().clone();
        p1.backends[1].state.healthy.store(false, Ordering::Relaxed);
        let same = Pools::build(&config, Some(&first));
        assert!(Arc::ptr_eq(same.get("p").unwrap(), &p1));
        config.pools = vec![pool_cfg(SchedulerKind::Wrr, &[4, 3, 2, 1])];
        let changed = Pools::build(&config, Some(&same));
        let p2 = changed.get("p").unwrap();
        assert!(!Arc::ptr_eq(p2, &p1));
        assert!(Arc::ptr_eq(&p2.backends[1].state, &p1.backends[1].state));
        assert!(!p2.backends[1].healthy());
        assert!(p2.backends[3].healthy());
    }
}
