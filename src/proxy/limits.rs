//! Admission limits: connection caps (`max_connections`, global and per
//! listener) that follow reloads, and per-client-IP limits on concurrent
//! connections and new connections per second, so one client cannot take
//! every slot of a listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A connection cap that a reload may move. Raising it frees slots at
/// once; lowering it takes slots back as the connections holding them
/// (tunnels included) close, and admits no one until those still open are
/// under the new cap.
#[derive(Debug)]
pub struct Cap {
    permits: Arc<Semaphore>,
    state: Mutex<CapState>,
}

#[derive(Debug)]
struct CapState {
    /// The cap in force.
    max: usize,
    /// Permits a lowering has yet to take back.
    owed: usize,
}

impl Cap {
    /// A cap of `max` connections.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            state: Mutex::new(CapState { max, owed: 0 }),
        }
    }

    /// Apply `max`. Idempotent: every accept loop sharing the cap calls it
    /// with the configuration it sees.
    pub fn set_max(&self, max: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if max > s.max {
            let more = max - s.max;
            let forgiven = more.min(s.owed);
            s.owed -= forgiven;
            self.permits.add_permits(more - forgiven);
        } else if max < s.max {
            let fewer = s.max - max;
            s.owed += fewer - self.permits.forget_permits(fewer);
        }
        s.max = max;
    }

    /// Wait for a slot; the permits a lowering owes are taken back first.
    /// `None` once the cap is closed.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            let permit = self.permits.clone().acquire_owned().await.ok()?;
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.owed == 0 {
                return Some(permit);
            }
            s.owed -= 1;
            permit.forget();
        }
    }
}

/// Why a client's connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("client has {0} connections open, the per-client limit")]
    TooManyConnections(usize),
    #[error("client opens connections faster than {0} per second")]
    TooFast(u32),
}

#[derive(Debug)]
struct Slot {
    active: usize,
    /// Token bucket for new connections; capacity = rate (one second's burst).
    tokens: f64,
    refilled: Instant,
}

/// Limits of one listener. Zero means "no limit". A reload may change
/// them ([`ClientLimiter::set_limits`]); the connections already counted,
/// tunnels included, count against the new ones.
#[derive(Debug)]
pub struct ClientLimiter {
    max_active: AtomicUsize,
    rate: AtomicU32,
    // A std Mutex: held for a map lookup only, never across an await.
    clients: Mutex<HashMap<IpAddr, Slot>>,
}

/// One admitted connection; dropping it frees the client's slot.
#[derive(Debug)]
pub struct ClientPermit {
    limiter: Arc<ClientLimiter>,
    ip: IpAddr,
}

/// Entries idle this long with a full bucket are forgotten.
const TABLE_SOFT_LIMIT: usize = 65_536;

impl ClientLimiter {
    /// A limiter, or `None` when both limits are off (no cost per connection).
    pub fn new(max_active: usize, rate: u32) -> Option<Arc<Self>> {
        (max_active > 0 || rate > 0).then(|| {
            Arc::new(Self {
                max_active: AtomicUsize::new(max_active),
                rate: AtomicU32::new(rate),
                clients: Mutex::new(HashMap::new()),
            })
        })
    }

    /// Apply the limits of a reloaded configuration (zero: off).
    pub fn set_limits(&self, max_active: usize, rate: u32) {
        self.max_active.store(max_active, Ordering::Relaxed);
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// Admit a new connection from `ip`, or say why not. An IPv4-mapped
    /// IPv6 address is the IPv4 client it maps.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ClientPermit, Refused> {
        let ip = ip.to_canonical();
        let now = Instant::now();
        let (max_active, rate_limit) = (
            self.max_active.load(Ordering::Relaxed),
            self.rate.load(Ordering::Relaxed),
        );
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= TABLE_SOFT_LIMIT {
            let rate = f64::from(rate_limit);
            clients.retain(|_, s| {
                s.active > 0
                    || (rate > 0.0
                        && s.tokens + now.duration_since(s.refilled).as_secs_f64() * rate < rate)
            });
        }
        let slot = clients.entry(ip).or_insert(Slot {
            active: 0,
            tokens: f64::from(rate_limit),
            refilled: now,
        });
        if max_active > 0 && slot.active >= max_active {
            return Err(Refused::TooManyConnections(slot.active));
        }
        if rate_limit > 0 {
            let rate = f64::from(rate_limit);
            slot.tokens =
                (slot.tokens + now.duration_since(slot.refilled).as_secs_f64() * rate).min(rate);
            slot.refilled = now;
            if slot.tokens < 1.0 {
                return Err(Refused::TooFast(rate_limit));
            }
            slot.tokens -= 1.0;
        }
        slot.active += 1;
        Ok(ClientPermit {
            limiter: self.clone(),
            ip,
        })
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut clients = self
            .limiter
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = clients.get_mut(&self.ip) {
            slot.active = slot.active.saturating_sub(1);
            if slot.active == 0 && self.limiter.rate.load(Ordering::Relaxed) == 0 {
                clients.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn no_limits_means_no_limiter() {
        assert!(ClientLimiter::new(0, 0).is_none());
    }

    #[tokio::test]
    async fn concurrent_connections_are_capped_per_client_and_freed_on_drop() {
        let l = ClientLimiter::new(2, 0).unwrap();
        let p1 = l.admit(A).unwrap();
        let _p2 = l.admit(A).unwrap();
        assert_eq!(l.admit(A).unwrap_err(), Refused::TooManyConnections(2));
        let _other = l.admit(B).expect("another client is not affected");
        drop(p1);
        l.admit(A).expect("a slot was freed");
    }

    #[tokio::test(start_paused = true)]
    async fn new_connections_per_second_are_capped_with_a_one_second_burst() {
        let l = ClientLimiter::new(0, 3).unwrap();
        let _held: Vec<_> = (0..3).map(|_| l.admit(A).unwrap()).collect();
        assert_eq!(l.admit(A).unwrap_err(), Refused::TooFast(3));
        tokio::time::advance(Duration::from_millis(340)).await;
        l.admit(A)
            .expect("one token refilled after a third of a second");
        assert_eq!(l.admit(A).unwrap_err(), Refused::TooFast(3));
    }

    #[tokio::test]
    async fn a_lowered_cap_takes_its_slots_back_before_admitting_anyone() {
        let cap = Cap::new(3);
        let mut held = [cap.acquire().await, cap.acquire().await];
        cap.set_max(1);
        cap.set_max(1);
        let wait = Duration::from_millis(50);
        drop(held[0].take());
        assert!(tokio::time::timeout(wait, cap.acquire()).await.is_err());
        drop(held[1].take());
        assert!(tokio::time::timeout(wait, cap.acquire()).await.is_ok());
        cap.set_max(2);
        let _one = cap.acquire().await.unwrap();
        assert!(tokio::time::timeout(wait, cap.acquire()).await.is_ok());
    }

    #[tokio::test]
    async fn new_limits_count_the_connections_already_admitted() {
        let l = ClientLimiter::new(3, 0).unwrap();
        let _held: Vec<_> = (0..2).map(|_| l.admit(A).unwrap()).collect();
        l.set_limits(2, 0);
        assert_eq!(l.admit(A).unwrap_err(), Refused::TooManyConnections(2));
        l.set_limits(0, 0);
        l.admit(A).expect("no limit any more");
    }

    #[tokio::test]
    async fn clients_without_connections_are_forgotten_when_only_concurrency_is_limited() {
        let l = ClientLimiter::new(5, 0).unwrap();
        drop(l.admit(A).unwrap());
        assert_eq!(l.tracked(), 0);
    }
}
