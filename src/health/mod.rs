//! Active health checks: one task per backend (and per IPVS real server)
//! probes it every `interval`, and flips the health bit its pool reads after
//! `fall` consecutive failures or `rise` consecutive successes. Only flips
//! are logged.
//!
//! Passive checks (connect failures on live traffic) live with the backend
//! state in `balance`, since the proxy reports them on its own path.
//!
//! Checkers are rebuilt on every reload; health state lives in the backend's
//! [`BackendState`], which the new snapshot carries over by address, so a
//! reload neither resets a down backend to up nor the reverse.

mod probe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use probe::{Probe, ProbeError};

use crate::balance::{BackendState, Pool, Pools};
use crate::config::{Config, HealthCheck};

/// Health of IPVS real servers, published by their checkers for the IPVS
/// reconciler, which removes a down real server from the kernel (or sets
/// its weight to 0 with `inhibit_on_failure`; `ipvs::desired::apply_health`).
///
/// Keyed by (service name, real server address); carried across reloads by
/// that key. A real server without a check is absent (treat as up).
#[derive(Debug)]
pub struct IpvsHealth {
    states: ArcSwap<HashMap<(String, SocketAddr), Arc<BackendState>>>,
    /// Bumped on every flip, so the reconciler can wait for changes.
    changed: watch::Sender<u64>,
    /// Services with no real server up, as the reconciler last found them
    /// (for the metrics and the admin API).
    all_down: ArcSwap<Vec<String>>,
}

impl Default for IpvsHealth {
    fn default() -> Self {
        Self {
            states: ArcSwap::default(),
            changed: watch::channel(0).0,
            all_down: ArcSwap::default(),
        }
    }
}

impl IpvsHealth {
    /// Whether the real server `addr` of `service` passes its check; `None`
    /// when it has no check.
    pub fn is_up(&self, service: &str, addr: SocketAddr) -> Option<bool> {
        self.states
            .load()
            .get(&(service.to_string(), addr))
            .map(|s| s.healthy.load(Ordering::Relaxed))
    }

    /// Every checked real server: `(service, address, up)`, sorted.
    pub fn all(&self) -> Vec<(String, SocketAddr, bool)> {
        let mut v: Vec<_> = self
            .states
            .load()
            .iter()
            .map(|((s, a), st)| (s.clone(), *a, st.healthy.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }

    /// Whether the service had no real server up at the last reconcile pass.
    pub fn is_all_down(&self, service: &str) -> bool {
        self.all_down.load().iter().any(|s| s == service)
    }

    /// Records the services that have no real server up (sorted names).
    pub fn set_all_down(&self, services: Vec<String>) {
        self.all_down.store(Arc::new(services));
    }

    /// A receiver that sees a new value after every flip.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Rebuild the map for `config`, keeping states of real servers that stay.
    fn rebuild(&self, config: &Config) -> Vec<(String, SocketAddr, Arc<BackendState>)> {
        let old = self.states.load_full();
        let mut next = HashMap::new();
        let mut out = Vec::new();
        for s in &config.ipvs.services {
            if s.health.is_none() {
                continue;
            }
            for rs in &s.real_servers {
                let key = (s.name.clone(), rs.address);
                let state = old.get(&key).cloned().unwrap_or_default();
                out.push((s.name.clone(), rs.address, state.clone()));
                next.insert(key, state);
            }
        }
        self.states.store(Arc::new(next));
        out
    }
}

/// Where a checker reports flips.
#[derive(Debug, Clone)]
enum Owner {
    Pool(Arc<Pool>),
    Ipvs {
        service: String,
        board: Arc<IpvsHealth>,
    },
}

impl Owner {
    fn flipped(&self, addr: SocketAddr, up: bool, cause: &str) {
        match self {
            Owner::Pool(p) => p.log_flip(addr, up, cause),
            Owner::Ipvs { service, board } => {
                if up {
                    info!(service = %service, real_server = %addr, cause, "IPVS real server is up");
                } else {
                    warn!(service = %service, real_server = %addr, cause, "IPVS real server is down");
                }
                board.changed.send_modify(|n| *n += 1);
            }
        }
    }
}

/// The running checkers of one configuration generation. Dropping it (or
/// calling [`Checkers::stop`]) stops them.
#[derive(Debug, Default)]
pub struct Checkers {
    stop: CancellationToken,
    count: usize,
}

impl Checkers {
    /// Start a checker for every backend of every pool with a `health`
    /// section, and every real server of IPVS services with one.
    pub fn start(config: &Config, pools: &Pools, ipvs: &Arc<IpvsHealth>) -> Self {
        let stop = CancellationToken::new();
        let mut count = 0;
        for cfg in &config.pools {
            let (Some(check), Some(pool)) = (&cfg.health, pools.get(&cfg.name)) else {
                continue;
            };
            let probe = Arc::new(Probe::new(check));
            for b in &pool.backends {
                let owner = Owner::Pool(pool.clone());
                tokio::spawn(watch(
                    probe.clone(),
                    b.address,
                    b.state.clone(),
                    owner,
                    stop.clone(),
                ));
                count += 1;
            }
        }
        let targets = ipvs.rebuild(config);
        for (service, addr, state) in targets {
            let Some(check) = config
                .ipvs
                .services
                .iter()
                .find(|s| s.name == service)
                .and_then(|s| s.health.as_ref())
            else {
                continue;
            };
            if addr.port() == 0 && check.port.is_none() {
                warn!(service = %service, real_server = %addr,
                    "real server has no port to check; it is reported up");
                continue;
            }
            let owner = Owner::Ipvs {
                service,
                board: ipvs.clone(),
            };
            let probe = Arc::new(Probe::new(check));
            tokio::spawn(watch(probe, addr, state, owner, stop.clone()));
            count += 1;
        }
        Self { stop, count }
    }

    /// Number of checker tasks started.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no checker runs.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stop every checker of this generation.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Consecutive-result counting, as keepalived and HAProxy do: successes
/// count only while the backend is down, failures only while it is up.
#[derive(Debug, Default)]
struct Thresholds {
    successes: u32,
    failures: u32,
}

impl Thresholds {
    /// Feed one result; `Some(up)` when the backend should flip.
    fn observe(&mut self, ok: bool, currently_up: bool, check: &HealthCheck) -> Option<bool> {
        if ok {
            self.failures = 0;
            if currently_up {
                self.successes = 0;
                return None;
            }
            self.successes += 1;
            (self.successes >= check.rise).then_some(true)
        } else {
            self.successes = 0;
            if !currently_up {
                self.failures = 0;
                return None;
            }
            self.failures += 1;
            (self.failures >= check.fall).then_some(false)
        }
    }
}

/// The check's name, as in the config file.
fn kind(check: &HealthCheck) -> &'static str {
    match check.kind {
        crate::config::HealthKind::Tcp => "tcp",
        crate::config::HealthKind::Http => "http",
        crate::config::HealthKind::Https => "https",
        crate::config::HealthKind::Tls => "tls",
    }
}

/// Probe one backend every interval until stopped.
async fn watch(
    probe: Arc<Probe>,
    addr: SocketAddr,
    state: Arc<BackendState>,
    owner: Owner,
    stop: CancellationToken,
) {
    let check = probe.settings().clone();
    let mut counts = Thresholds::default();
    loop {
        let began = std::time::Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = probe.run(addr) => r,
        };
        let ok = result.is_ok();
        let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        state.last_check_us.store(took.max(1), Ordering::Relaxed);
        state.last_check_ok.store(ok, Ordering::Relaxed);
        state.stats.record_check(ok);
        if let Err(e) = &result {
            debug!(backend = %addr, error = %e, "health check failed");
        }
        let up = state.healthy.load(Ordering::Relaxed);
        match counts.observe(ok, up, &check) {
            Some(true) if state.mark_up() => {
                let cause = format!(
                    "{} check: {} consecutive checks passed",
                    kind(&check),
                    check.rise
                );
                owner.flipped(addr, true, &cause);
            }
            Some(false) if state.mark_down() => {
                let why = result.err().map(|e| e.to_string()).unwrap_or_default();
                let cause = format!(
                    "{} check: {} consecutive checks failed; last: {why}",
                    kind(&check),
                    check.fall
                );
                owner.flipped(addr, false, &cause);
            }
            _ => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthKind;
    use std::time::Duration;

    fn check(rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            kind: HealthKind::Tcp,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
            rise,
            fall,
            path: "/".into(),
            host: None,
            expect_status: (200, 399),
            expect_body: None,
            port: None,
        }
    }

    #[test]
    fn an_up_backend_flips_down_after_fall_consecutive_failures_only() {
        let c = check(2, 3);
        let mut t = Thresholds::default();
        assert_eq!(t.observe(false, true, &c), None);
        assert_eq!(t.observe(false, true, &c), None);
        assert_eq!(t.observe(true, true, &c), None);
        assert_eq!(t.observe(false, true, &c), None);
        assert_eq!(t.observe(false, true, &c), None);
        assert_eq!(t.observe(false, true, &c), Some(false));
    }

    #[test]
    fn a_down_backend_flips_up_after_rise_consecutive_successes_only() {
        let c = check(2, 3);
        let mut t = Thresholds::default();
        assert_eq!(t.observe(true, false, &c), None);
        assert_eq!(t.observe(false, false, &c), None);
        assert_eq!(t.observe(true, false, &c), None);
        assert_eq!(t.observe(true, false, &c), Some(true));
    }
}
