//! Backend selection: pools of backends with live state, and the scheduler
//! seam. Pure selection: no I/O, nothing spawned.
//!
//! Health, drain and slow-start state of a backend is kept in
//! [`BackendState`] (methods in `live.rs`) and consulted by
//! [`Backend::available`], so every scheduler honours it.

mod live;

pub use live::AllDown;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::config;
use crate::metrics::BackendStats;

/// Live state of one backend, shared by the scheduler, the proxy, health
/// checks and metrics. Kept across reloads for backends that stay.
#[derive(Debug)]
pub struct BackendState {
    /// Set by health checks; unhealthy backends get no new connections.
    pub healthy: AtomicBool,
    /// Connections currently open to the backend.
    pub active: AtomicU64,
    /// Connections ever opened to the backend.
    pub total: AtomicU64,
    /// Traffic and check counters for metrics.
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
}

impl Default for BackendState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            stats: BackendStats::default(),
            weight_override: AtomicU32::new(live::NO_OVERRIDE),
            up_since_ms: AtomicU64::new(0),
            slow_start_ms: AtomicU64::new(0),
            ramp_tick: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
        }
    }
}

/// A backend as scheduled: address, weight and live state.
#[derive(Debug, Clone)]
pub struct Backend {
    pub address: SocketAddr,
    pub weight: u32,
    pub state: Arc<BackendState>,
}

impl Backend {
    /// Whether the backend may receive a new connection: up, not drained,
    /// and (while ramping after coming up) admitted by its slow-start share.
    pub fn available(&self) -> bool {
        self.is_up() && self.state.slow_start_admits()
    }
}

/// Chooses a backend for a new connection. Implementations hold an immutable
/// table built once per backend-set change; `pick` must not block or allocate.
pub trait Scheduler: Send + Sync + fmt::Debug {
    /// Index into `backends` of the chosen one, skipping unavailable backends.
    fn pick(&self, backends: &[Backend], client: IpAddr) -> Option<usize>;
}

/// Round robin over available backends, weights used only to exclude weight 0.
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl Scheduler for RoundRobin {
    fn pick(&self, backends: &[Backend], _client: IpAddr) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| backends[i].available())
    }
}

/// A named set of backends and its scheduler.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<Backend>,
    scheduler: Box<dyn Scheduler>,
    /// What to do when no backend is up.
    pub on_all_down: AllDown,
}

impl Pool {
    /// Build from config, carrying live state of backends that `previous` had.
    pub fn new(cfg: &config::Pool, previous: Option<&Pool>) -> Self {
        let backends: Vec<Backend> = cfg
            .backends
            .iter()
            .map(|b| Backend {
                address: b.address,
                weight: b.weight,
                state: previous
                    .and_then(|p| p.backends.iter().find(|o| o.address == b.address))
                    .map(|o| o.state.clone())
                    .unwrap_or_default(),
            })
            .collect();
        for b in &backends {
            b.state.configure(cfg);
        }
        Self {
            name: cfg.name.clone(),
            on_all_down: AllDown::new(cfg, previous.map(|p| &p.on_all_down)),
            backends,
            scheduler: Box::new(RoundRobin::default()),
        }
    }

    /// Choose a backend for `client`; the lease counts the connection as
    /// active until dropped. When no backend is up, [`Pool::on_all_down`]
    /// decides (see [`AllDown`]).
    pub fn select(&self, client: IpAddr) -> Option<Lease> {
        if let Some(i) = self.scheduler.pick(&self.backends, client) {
            return Some(Lease::new(&self.backends[i]));
        }
        self.fallback().map(Lease::new)
    }
}

/// One connection's claim on a backend; dropping it ends the connection's
/// count in the backend's active total.
#[derive(Debug)]
pub struct Lease {
    pub address: SocketAddr,
    state: Arc<BackendState>,
}

impl Lease {
    /// The live state of the leased backend (stats, passive reports).
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }
}

impl Lease {
    fn new(backend: &Backend) -> Self {
        backend.state.active.fetch_add(1, Ordering::Relaxed);
        backend.state.total.fetch_add(1, Ordering::Relaxed);
        Self {
            address: backend.address,
            state: backend.state.clone(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every pool of a configuration, by name.
#[derive(Debug, Default)]
pub struct Pools {
    by_name: HashMap<String, Arc<Pool>>,
}

impl Pools {
    /// Build all pools, carrying backend state over from `previous`.
    pub fn build(config: &config::Config, previous: Option<&Pools>) -> Self {
        let by_name = config
            .pools
            .iter()
            .map(|cfg| {
                let prev = previous.and_then(|p| p.get(&cfg.name));
                (
                    cfg.name.clone(),
                    Arc::new(Pool::new(cfg, prev.map(|p| &**p))),
                )
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
}
