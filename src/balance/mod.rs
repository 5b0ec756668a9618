//! Backend selection: pools of backends with live state, and the scheduler
//! seam. Pure selection: no I/O, nothing spawned.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::config;

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
}

impl Default for BackendState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
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
    /// Whether the backend may receive new connections.
    pub fn available(&self) -> bool {
        self.weight > 0 && self.state.healthy.load(Ordering::Relaxed)
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
}

impl Pool {
    /// Build from config, carrying live state of backends that `previous` had.
    pub fn new(cfg: &config::Pool, previous: Option<&Pool>) -> Self {
        let backends = cfg
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
        Self {
            name: cfg.name.clone(),
            backends,
            scheduler: Box::new(RoundRobin::default()),
        }
    }

    /// Choose a backend for `client`; the lease counts the connection as
    /// active until dropped.
    pub fn select(&self, client: IpAddr) -> Option<Lease> {
        let i = self.scheduler.pick(&self.backends, client)?;
        Some(Lease::new(&self.backends[i]))
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
