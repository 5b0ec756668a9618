//! The user-space data path: bound listeners, accept loops, and forwarding.
//!
//! Listener tasks read everything that may change on reload from one
//! [`Snapshot`] behind an `ArcSwap`, so that a reload swaps config and pools
//! together and open connections keep the snapshot they started with.
//! The TLS state (certificates, rustls configs) is part of the snapshot, so
//! a reload whose certificates fail to load swaps nothing at all.

pub mod copy;
pub mod http;
pub mod l4;
pub mod limits;
pub mod listener;
pub mod proxy_protocol;
pub mod splice;
pub mod terminate;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::balance::{PersistenceTables, Pools};
use crate::config::Config;
use crate::tls::{TlsError, TlsState};

/// Everything a connection needs that a reload may replace, swapped as one.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub pools: Pools,
    /// Certificates and per-listener TLS acceptors.
    pub tls: Arc<TlsState>,
    /// Client-IP persistence tables by group name. The tables themselves are
    /// shared with the previous snapshot (same `Arc` per group), so clients
    /// keep their backends across reloads.
    pub persistence: PersistenceTables,
    /// Vhost and path routing of every HTTP listener.
    pub http: http::Routes,
    /// Backend clients of HTTP listeners; their idle connections outlive
    /// reloads that keep a pool's connection settings.
    pub upstreams: http::Upstreams,
}

impl Snapshot {
    /// Build the snapshot for `config`, carrying live state from `previous`
    /// (pool state, TLS session tickets and cache). Every certificate is
    /// read from disk again; if any fails, nothing is built.
    pub fn build(config: Arc<Config>, previous: Option<&Snapshot>) -> Result<Self, TlsError> {
        let tls = Arc::new(TlsState::build(&config, previous.map(|p| &*p.tls))?);
        let pools = Pools::build(&config, previous.map(|p| &p.pools));
        // After the fallible TLS build: reusing a table updates it in place.
        let persistence = PersistenceTables::build(&config, previous.map(|p| &p.persistence));
        let http = http::Routes::build(&config);
        let upstreams = http::Upstreams::build(&config, previous.map(|p| &p.upstreams));
        Ok(Self {
            config,
            pools,
            tls,
            persistence,
            http,
            upstreams,
        })
    }
}

/// The shared, swappable snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// A snapshot held by one connection: the outer `Arc` is the connection's
/// own, so cloning it per request writes only memory that connection uses.
pub type HeldSnapshot = Arc<Arc<Snapshot>>;

/// One connection's copy of the snapshot in service, so that a request
/// does not take a reference on the process-wide `Arc<Snapshot>` (whose
/// count every worker would then write on every request).
///
/// [`SnapshotCache::get`] compares the snapshot in service with the held
/// one by address, through an `ArcSwap::load` that writes only the calling
/// thread's own slots, and takes a new copy only after a reload stored
/// another one: an open connection sees a reload at its next request, as
/// with a `load_full` per request. The held `Arc` keeps the old snapshot
/// alive, so its address cannot be reused by a newer one while compared.
#[derive(Debug)]
pub struct SnapshotCache {
    // A std Mutex: held for a pointer compare and an `Arc` clone, never
    // across an await; only the connection's own requests take it.
    held: Mutex<HeldSnapshot>,
}

impl SnapshotCache {
    /// A cache holding the snapshot in service now.
    pub fn new(shared: &SharedSnapshot) -> Self {
        Self {
            held: Mutex::new(Arc::new(shared.load_full())),
        }
    }

    /// The snapshot in service, from the held copy unless a reload
    /// replaced it.
    pub fn get(&self, shared: &SharedSnapshot) -> HeldSnapshot {
        let current = shared.load();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&**held, &*current) {
            *held = Arc::new(Arc::clone(&current));
        }
        Arc::clone(&held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(text: &str) -> Arc<Snapshot> {
        let config = crate::config::parse(text, std::path::Path::new("t.toml")).unwrap();
        Arc::new(Snapshot::build(Arc::new(config), None).unwrap())
    }

    const CONFIG: &str = "[[pool]]\nname = \"p\"\nbackends = [{ address = \"127.0.0.1:9\" }]\n";

    #[test]
    fn a_connection_keeps_its_copy_until_a_reload_stores_another_snapshot() {
        let first = snapshot(CONFIG);
        let shared: SharedSnapshot = Arc::new(ArcSwap::new(first.clone()));
        let cache = SnapshotCache::new(&shared);
        let a = cache.get(&shared);
        let b = cache.get(&shared);
        assert!(Arc::ptr_eq(&a, &b), "no reload: the same held copy");
        assert!(Arc::ptr_eq(&*a, &first));
        // Requests do not take references on the process-wide snapshot:
        // only the swap, the test and the one held copy do.
        assert_eq!(Arc::strong_count(&first), 3);
        let second = snapshot(CONFIG);
        shared.store(second.clone());
        let c = cache.get(&shared);
        assert!(
            Arc::ptr_eq(&*c, &second),
            "the next request sees the reload"
        );
        assert!(
            Arc::ptr_eq(&*a, &first),
            "a request in flight keeps its own"
        );
    }
}
