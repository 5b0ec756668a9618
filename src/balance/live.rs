//! Live backend state beyond the scheduler: health flips (active and
//! passive), admin weight overrides (drain), slow start, and what a pool does
//! when every backend is down.
//!
//! Everything here is atomics on [`BackendState`], read on the pick path
//! without locks. Times are milliseconds on one process clock ([`now_ms`]),
//! so that they fit in an `AtomicU64`; 0 means "unset".

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::{Backend, BackendState, Pool};
use crate::config;

/// `weight_override` value meaning "use the configured weight".
pub(super) const NO_OVERRIDE: u32 = u32::MAX;

/// Smallest share a backend gets at the very start of its slow start, in
/// thousandths, so that it does get some traffic to warm up with.
const RAMP_FLOOR_PERMILLE: u64 = 10;

/// Milliseconds since the process clock started, never 0. Uses tokio's clock
/// so that tests with paused time see ramps and cool-downs move.
pub(super) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// Longest cause text kept per backend: causes quote backend replies and
/// OS errors, which a hostile backend can make long.
const CAUSE_MAX: usize = 512;

/// The last change of a backend's state and why: shown next to its state
/// on the status page, as HAProxy's stats page shows `LASTCHG` and the
/// check status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The state it went to: `up`, `down`, `drained`, `weight` or `undrained`.
    pub to: &'static str,
    /// What did it: the check and its result, the passive failure, or who
    /// set the weight.
    pub cause: String,
    /// Unix time of the change, in seconds.
    pub unix: u64,
}

impl BackendState {
    /// Remember a state change and its cause (cut to a bounded length).
    pub fn record_change(&self, to: &'static str, cause: &str) {
        let mut cause = cause.to_string();
        if cause.len() > CAUSE_MAX {
            let mut cut = CAUSE_MAX;
            while !cause.is_char_boundary(cut) {
                cut -= 1;
            }
            cause.truncate(cut);
            cause.push('…');
        }
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let change = Change { to, cause, unix };
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Some(change);
    }

    /// The last recorded change, if any since the backend was first seen.
    pub fn last_change(&self) -> Option<Change> {
        self.last_change
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Take the per-pool settings this state needs on the pick path.
    pub(super) fn configure(&self, pool: &config::Pool) {
        let ms = u64::try_from(pool.slow_start.as_millis()).unwrap_or(u64::MAX);
        self.slow_start_ms.store(ms, Ordering::Relaxed);
    }

    /// Healthy, or taken down by passive checks and due for a retry.
    pub fn is_healthy(&self) -> bool {
        if self.healthy.load(Ordering::Relaxed) {
            return true;
        }
        let retry = self.retry_at_ms.load(Ordering::Relaxed);
        retry != 0 && now_ms() >= retry
    }

    /// Mark the backend up; true if that is a change. A backend coming up
    /// starts its slow-start ramp.
    pub fn mark_up(&self) -> bool {
        self.passive_failures.store(0, Ordering::Relaxed);
        self.retry_at_ms.store(0, Ordering::Relaxed);
        if self.healthy.swap(true, Ordering::Relaxed) {
            return false;
        }
        self.ramp_tick.store(0, Ordering::Relaxed);
        self.up_since_ms.store(now_ms(), Ordering::Relaxed);
        self.stats.record_flip();
        true
    }

    /// Mark the backend down; true if that is a change.
    pub fn mark_down(&self) -> bool {
        let flipped = self.healthy.swap(false, Ordering::Relaxed);
        if flipped {
            self.stats.record_flip();
        }
        flipped
    }

    /// The admin weight override, if one is set.
    pub fn weight_override(&self) -> Option<u32> {
        match self.weight_override.load(Ordering::Relaxed) {
            NO_OVERRIDE => None,
            w => Some(w),
        }
    }

    /// Set (or with `None` clear) the admin weight override. Weight 0 drains:
    /// open connections continue, new ones go elsewhere.
    pub fn set_weight_override(&self, weight: Option<u32>) {
        let w = weight.map_or(NO_OVERRIDE, |w| w.min(NO_OVERRIDE - 1));
        if self.weight_override.swap(w, Ordering::Relaxed) != w {
            // The pool rebuilds tables that depend on weights (`wrr`, `sh`,
            // `mh`, `p2c`) on its next pick.
            if let Some(generation) = self.pool_weights.load_full() {
                generation.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Fraction of its weight, in thousandths, that the backend gets now:
    /// 1000 unless it is inside its slow-start period after coming up.
    pub fn ramp_permille(&self) -> u64 {
        let period = self.slow_start_ms.load(Ordering::Relaxed);
        let since = self.up_since_ms.load(Ordering::Relaxed);
        if period == 0 || since == 0 {
            return 1000;
        }
        let elapsed = now_ms().saturating_sub(since);
        if elapsed >= period {
            return 1000;
        }
        (elapsed * 1000 / period).max(RAMP_FLOOR_PERMILLE)
    }

    /// Whether a ramping backend takes this pick. Admission is spread evenly
    /// (the k-th offer is taken when `floor(k*f)` steps up), so a backend at
    /// 30% of its ramp takes exactly 3 of every 10 offers.
    pub fn slow_start_admits(&self) -> bool {
        let f = self.ramp_permille();
        if f >= 1000 {
            return true;
        }
        let k = self.ramp_tick.fetch_add(1, Ordering::Relaxed);
        (k + 1) * f / 1000 > k * f / 1000
    }

    /// Passive check: a connect to the backend failed on live traffic. After
    /// `pool.passive_fall` consecutive failures it is marked down; true if
    /// this call took it down. Without an active check to bring it back, it
    /// is retried after `pool.passive_cooldown`.
    pub fn connect_failed(&self, pool: &config::Pool) -> bool {
        self.stats.record_connect_failure();
        self.passive_failure(pool)
    }

    /// Passive check: one more consecutive failure on live traffic (a
    /// failed connect, through [`Self::connect_failed`], or an HTTP exchange
    /// the backend broke after connecting: reset or closed before a response
    /// head, or no head within `response_timeout`, as nginx's `max_fails`
    /// counts `error` and `timeout`). True if it took the backend down.
    pub fn passive_failure(&self, pool: &config::Pool) -> bool {
        if pool.passive_fall == 0 {
            return false;
        }
        let n = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < pool.passive_fall {
            return false;
        }
        if pool.health.is_none() {
            let cool = u64::try_from(pool.passive_cooldown.as_millis()).unwrap_or(u64::MAX / 2);
            self.retry_at_ms.store(now_ms() + cool, Ordering::Relaxed);
        }
        self.mark_down()
    }

    /// Passive check: a connect succeeded. Clears the failure count, and
    /// brings back a backend that passive checks had taken down; true if this
    /// call brought it back.
    pub fn connect_succeeded(&self) -> bool {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
        if self.retry_at_ms.load(Ordering::Relaxed) != 0 && !self.healthy.load(Ordering::Relaxed) {
            return self.mark_up();
        }
        false
    }
}

impl Backend {
    /// The weight in force: the admin override if set, else the configured one.
    pub fn weight(&self) -> u32 {
        self.state.weight_override().unwrap_or(self.weight)
    }

    /// Healthy and not drained (weight in force above 0).
    pub fn is_up(&self) -> bool {
        self.weight() > 0 && self.state.is_healthy()
    }

    /// The weight in force scaled by the slow-start ramp, for display and for
    /// weighted schedulers that read it.
    pub fn effective_weight(&self) -> f64 {
        if !self.is_up() {
            return 0.0;
        }
        f64::from(self.weight()) * self.state.ramp_permille() as f64 / 1000.0
    }
}

/// What a pool does when none of its backends is up.
#[derive(Debug)]
pub enum AllDown {
    /// Keep sending to every backend with a weight above 0, round robin, as
    /// if all were healthy (a failed health check endpoint should not take
    /// the whole service down).
    FailOpen {
        /// Round-robin cursor over the pool's backends.
        cursor: AtomicUsize,
    },
    /// Send everything to the sorry backend.
    Sorry(Backend),
    /// Refuse new connections.
    Refuse,
}

impl AllDown {
    /// From the pool's config, keeping the sorry backend's live state.
    pub(super) fn new(cfg: &config::Pool, previous: Option<&AllDown>) -> Self {
        match cfg.on_all_down {
            config::OnAllDown::FailOpen => AllDown::FailOpen {
                cursor: AtomicUsize::new(0),
            },
            config::OnAllDown::Refuse => AllDown::Refuse,
            config::OnAllDown::Sorry(address) => {
                let state = match previous {
                    Some(AllDown::Sorry(b)) if b.address == address => b.state.clone(),
                    _ => Default::default(),
                };
                AllDown::Sorry(Backend {
                    address,
                    weight: 1,
                    state,
                })
            }
        }
    }

    /// Whether this is what `setting` would build (same kind, same sorry address).
    pub(super) fn matches(&self, setting: config::OnAllDown) -> bool {
        match (self, setting) {
            (AllDown::FailOpen { .. }, config::OnAllDown::FailOpen)
            | (AllDown::Refuse, config::OnAllDown::Refuse) => true,
            (AllDown::Sorry(b), config::OnAllDown::Sorry(a)) => b.address == a,
            _ => false,
        }
    }

    /// The setting's name, as in the config file.
    pub fn as_str(&self) -> &'static str {
        match self {
            AllDown::FailOpen { .. } => "fail_open",
            AllDown::Sorry(_) => "sorry",
            AllDown::Refuse => "refuse",
        }
    }
}

impl Pool {
    /// No scheduler pick: prefer a backend that is up but was refused by its
    /// slow-start share, then apply [`Pool::on_all_down`].
    pub(super) fn fallback(&self) -> Option<&Backend> {
        if let Some(b) = self.backends.iter().find(|b| b.is_up()) {
            return Some(b);
        }
        match &self.on_all_down {
            AllDown::Refuse => None,
            AllDown::Sorry(b) => Some(b),
            AllDown::FailOpen { cursor } => {
                let n = self.backends.len();
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &self.backends[(start + i) % n])
                    .find(|b| b.weight() > 0)
            }
        }
    }

    /// Whether no backend of the pool is up.
    pub fn all_down(&self) -> bool {
        !self.backends.iter().any(Backend::is_up)
    }

    /// The sorry backend, if the pool has one.
    pub fn sorry(&self) -> Option<&Backend> {
        match &self.on_all_down {
            AllDown::Sorry(b) => Some(b),
            _ => None,
        }
    }

    /// Log a health flip of `backend` and, loudly, the pool losing or
    /// regaining its last backend. Called by whoever flipped it (the active
    /// checker or the proxy's passive check), once per flip.
    pub fn log_flip(&self, backend: SocketAddr, up: bool, cause: &str) {
        if let Some(b) = self
            .backends
            .iter()
            .chain(self.sorry())
            .find(|b| b.address == backend)
        {
            b.state.record_change(if up { "up" } else { "down" }, cause);
        }
        if up {
            info!(pool = %self.name, %backend, cause, "backend is up");
            let others_up = self
                .backends
                .iter()
                .filter(|b| b.is_up())
                .any(|b| b.address != backend);
            if !others_up {
                warn!(pool = %self.name, %backend, "pool has a backend up again");
            }
        } else {
            warn!(pool = %self.name, %backend, cause, "backend is down");
            if self.all_down() {
                match &self.on_all_down {
                    AllDown::FailOpen { .. } => error!(pool = %self.name,
                        "ALL BACKENDS DOWN: failing open, sending to every backend regardless of health"),
                    AllDown::Sorry(b) => error!(pool = %self.name, sorry = %b.address,
                        "ALL BACKENDS DOWN: sending every new connection to the sorry backend"),
                    AllDown::Refuse => error!(pool = %self.name,
                        "ALL BACKENDS DOWN: refusing new connections"),
                }
            }
        }
    }
}
