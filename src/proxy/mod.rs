//! The user-space data path: bound listeners, accept loops, and forwarding.
//!
//! Listener tasks read everything that may change on reload from one
//! [`Snapshot`] behind an `ArcSwap`, so that a reload swaps config and pools
//! together and open connections keep the snapshot they started with.

pub mod l4;
pub mod limits;
pub mod listener;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::balance::Pools;
use crate::config::Config;

/// Everything a connection needs that a reload may replace, swapped as one.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub pools: Pools,
}

impl Snapshot {
    /// Build the snapshot for `config`, carrying live state from `previous`.
    pub fn build(config: Arc<Config>, previous: Option<&Snapshot>) -> Self {
        let pools = Pools::build(&config, previous.map(|p| &p.pools));
        Self { config, pools }
    }
}

/// The shared, swappable snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
