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

use std::sync::Arc;

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
