//! Client-IP persistence with IPVS template semantics (`ipvsadm -p`, `-M`).
//!
//! Listeners naming the same `[[persistence]]` group share one
//! [`PersistenceTable`], like the services of one firewall mark share IPVS
//! templates: the client's address, masked to the group's prefix, maps to a
//! backend *host* (IP). Each listener's pool then uses its own backend with
//! that IP, so a client that reached 10.0.0.2:80 reaches 10.0.0.2:443.
//!
//! An entry lives while the client has connections through it and expires
//! `timeout` after the last one closed (the kernel restarts a template's
//! timer while it controls connections). Expiry is kept in a
//! `BTreeSet<(deadline, key)>`: insert, refresh and purge are O(log n). The
//! table is bounded: when full, the entry closest to expiry is evicted; when
//! every entry still has open connections, the new client is served without
//! being recorded.
//!
//! A client is rescheduled when its backend host is unhealthy or no longer
//! in the pool. On weight 0 (quiesced) it stays, as IPVS keeps templates to
//! quiesced servers, unless the group sets `expire_quiescent` (the kernel's
//! `expire_quiescent_template` sysctl).
//!
//! The lock is a plain `Mutex` held for a hash lookup and a scheduler pick,
//! never across an `.await`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

use super::{Lease, Pool};
use crate::config;
use crate::metrics::PersistenceStats;

/// Expired entries removed per selection at most, so that one selection
/// never pays for a large backlog (the rest goes on the next ones).
const PURGE_BATCH: usize = 64;

/// One persistence group's client table, shared by every listener that names
/// the group and carried across reloads.
#[derive(Debug)]
pub struct PersistenceTable {
    name: String,
    inner: Mutex<Inner>,
    /// Lookups that followed an entry (hits) or scheduled anew (misses).
    stats: PersistenceStats,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    timeout: Duration,
    prefix_v4: u8,
    prefix_v6: u8,
    max_entries: usize,
    expire_quiescent: bool,
}

impl From<&config::PersistenceGroup> for Settings {
    fn from(g: &config::PersistenceGroup) -> Self {
        Self {
            timeout: g.timeout,
            prefix_v4: g.prefix_v4.min(32),
            prefix_v6: g.prefix_v6.min(128),
            max_entries: g.max_entries.max(1),
            expire_quiescent: g.expire_quiescent,
        }
    }
}

impl Settings {
    /// The table key of `client`: its address masked to the group's prefix
    /// (IPv4-mapped IPv6 addresses count as IPv4).
    fn key(&self, client: IpAddr) -> IpAddr {
        match client.to_canonical() {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_v4))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_v6))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    fn prefix(&self, key: IpAddr) -> u8 {
        if key.is_ipv4() {
            self.prefix_v4
        } else {
            self.prefix_v6
        }
    }
}

#[derive(Debug)]
struct Entry {
    backend: IpAddr,
    /// Open connections holding the entry; while above 0 it cannot expire.
    refs: u32,
    /// Set, and present in `Inner::expiry`, exactly when `refs == 0`.
    expires: Option<Instant>,
    /// Distinguishes this entry from a later one for the same client, so
    /// that a connection outliving its entry does not release the new one.
    generation: u64,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    entries: HashMap<IpAddr, Entry>,
    expiry: BTreeSet<(Instant, IpAddr)>,
    next_generation: u64,
}

impl Inner {
    fn remove(&mut self, key: IpAddr) {
        if let Some(e) = self.entries.remove(&key) {
            if let Some(t) = e.expires {
                self.expiry.remove(&(t, key));
            }
        }
    }

    /// Remove up to `limit` entries that expired by `now`.
    fn purge(&mut self, now: Instant, limit: usize) -> usize {
        let mut n = 0;
        while n < limit {
            match self.expiry.first() {
                Some(&(t, key)) if t <= now => {
                    self.expiry.pop_first();
                    self.entries.remove(&key);
                    n += 1;
                }
                _ => break,
            }
        }
        n
    }

    /// Record `key -> backend` with one connection; `None` when the table is
    /// full of entries that all have open connections.
    fn insert(&mut self, key: IpAddr, backend: IpAddr) -> Option<u64> {
        if self.entries.len() >= self.settings.max_entries {
            let (_, oldest) = self.expiry.pop_first()?;
            self.entries.remove(&oldest);
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.entries.insert(
            key,
            Entry {
                backend,
                refs: 1,
                expires: None,
                generation,
            },
        );
        Some(generation)
    }
}

/// One row of [`PersistenceTable::list`]: which backend host a client prefix
/// sticks to, the admin view of `ipvsadm -Lc` templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistenceEntry {
    /// The client prefix (address masked to the group's netmask).
    pub client: IpNet,
    /// The backend host the prefix sticks to.
    pub backend: IpAddr,
    /// Connections currently open through the entry.
    pub connections: u32,
    /// Time left once no connection is open; `None` while some are, as the
    /// entry then cannot expire.
    pub expires_in: Option<Duration>,
}

/// A row ordered by its client prefix alone (prefixes are unique keys).
struct ByClient(PersistenceEntry);

impl PartialEq for ByClient {
    fn eq(&self, other: &Self) -> bool {
        self.0.client == other.0.client
    }
}

impl Eq for ByClient {}

impl PartialOrd for ByClient {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByClient {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.client.cmp(&other.0.client)
    }
}

/// A connection's hold on a persistence entry, released when the connection's
/// [`Lease`] drops.
#[derive(Debug)]
pub(super) struct Hold {
    table: Arc<PersistenceTable>,
    key: IpAddr,
    generation: u64,
}

impl Hold {
    /// Remove the entry this hold is on (its backend refused a connection).
    pub(super) fn forget(self) {
        let mut inner = self.table.lock();
        let current = inner.entries.get(&self.key).map(|e| e.generation);
        if current == Some(self.generation) {
            inner.remove(self.key);
        }
        // Dropping `self` now finds no entry of its generation: a no-op.
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.table.release(self.key, self.generation);
    }
}

impl PersistenceTable {
    /// An empty table for `group`.
    pub fn new(group: &config::PersistenceGroup) -> Self {
        Self {
            name: group.name.clone(),
            inner: Mutex::new(Inner {
                settings: Settings::from(group),
                entries: HashMap::new(),
                expiry: BTreeSet::new(),
                next_generation: 0,
            }),
            stats: PersistenceStats::default(),
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hit and miss counters, for metrics.
    pub fn stats(&self) -> &PersistenceStats {
        &self.stats
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves the table consistent enough to use:
        // every mutation keeps `entries` and `expiry` in step.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Choose a backend of `pool` for `client`, sticking to the backend host
    /// the client's prefix already uses when it can take the connection.
    pub(super) fn select(self: &Arc<Self>, pool: &Pool, client: IpAddr) -> Option<Lease> {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.purge(now, PURGE_BATCH);
        let key = inner.settings.key(client);
        if let Some(e) = inner.entries.get_mut(&key) {
            let live = e.expires.is_none_or(|t| t > now);
            let quiescent_ok = !inner.settings.expire_quiescent;
            let usable = pool.backends.iter().position(|b| {
                b.address.ip() == e.backend
                    && b.state.is_healthy()
                    && (b.weight() > 0 || quiescent_ok)
            });
            if let (true, Some(i)) = (live, usable) {
                e.refs += 1;
                if let Some(t) = e.expires.take() {
                    inner.expiry.remove(&(t, key));
                }
                let hold = Hold {
                    table: self.clone(),
                    key,
                    generation: e.generation,
                };
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Some(Lease::new(&pool.backends[i], Some(hold)));
            }
            inner.remove(key);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let Some(i) = pool.pick(client) else {
            // Nobody up: the pool's all-down policy answers, unrecorded.
            return pool.fallback().map(|b| Lease::new(b, None));
        };
        let backend = &pool.backends[i];
        let hold = inner
            .insert(key, backend.address.ip())
            .map(|generation| Hold {
                table: self.clone(),
                key,
                generation,
            });
        Some(Lease::new(backend, hold))
    }

    /// A connection through the entry closed; the last one starts its timeout.
    fn release(&self, key: IpAddr, generation: u64) {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let timeout = inner.settings.timeout;
        let Some(e) = inner.entries.get_mut(&key) else {
            return;
        };
        if e.generation != generation {
            return;
        }
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            let t = now + timeout;
            e.expires = Some(t);
            inner.expiry.insert((t, key));
        }
    }

    /// Apply reloaded settings and keep only entries whose backend host is in
    /// `hosts`. A changed netmask empties the table, since its keys were
    /// masked with the old one.
    fn update(&self, group: &config::PersistenceGroup, hosts: &HashSet<IpAddr>) {
        let settings = Settings::from(group);
        let mut inner = self.lock();
        if (settings.prefix_v4, settings.prefix_v6)
            != (inner.settings.prefix_v4, inner.settings.prefix_v6)
        {
            inner.entries.clear();
            inner.expiry.clear();
        }
        inner.settings = settings;
        let gone: Vec<IpAddr> = inner
            .entries
            .iter()
            .filter(|(_, e)| !hosts.contains(&e.backend))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            inner.remove(key);
        }
        while inner.entries.len() > inner.settings.max_entries {
            let Some((_, key)) = inner.expiry.pop_first() else {
                break;
            };
            inner.entries.remove(&key);
        }
    }

    /// Remove every expired entry; returns how many. Selection already purges
    /// a few at a time; this is for a periodic sweep.
    pub fn purge_expired(&self) -> usize {
        self.lock().purge(Instant::now(), usize::MAX)
    }

    /// Number of entries, including expired ones not purged yet.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live entry for `client`'s prefix.
    pub fn lookup(&self, client: IpAddr) -> Option<PersistenceEntry> {
        let inner = self.lock();
        let key = inner.settings.key(client);
        let e = inner.entries.get(&key)?;
        row(&inner.settings, key, e, Instant::now())
    }

    /// The first `limit` live entries by client prefix and the number of
    /// live entries (`vipd persistence list`). One pass under the lock
    /// keeps the `limit` smallest prefixes in a heap, so a table of
    /// millions costs `limit` rows of memory, not millions.
    pub fn list_first(&self, limit: usize) -> (Vec<PersistenceEntry>, usize) {
        use std::collections::BinaryHeap;
        let now = Instant::now();
        let mut first: BinaryHeap<ByClient> = BinaryHeap::with_capacity(limit.min(1024) + 1);
        let mut live = 0;
        {
            let inner = self.lock();
            for row in inner
                .entries
                .iter()
                .filter_map(|(k, e)| row(&inner.settings, *k, e, now))
            {
                live += 1;
                first.push(ByClient(row));
                if first.len() > limit {
                    first.pop();
                }
            }
        }
        let rows = first.into_sorted_vec().into_iter().map(|r| r.0).collect();
        (rows, live)
    }

    /// Every live entry, sorted by client prefix (admin listing).
    pub fn list(&self) -> Vec<PersistenceEntry> {
        let now = Instant::now();
        let inner = self.lock();
        let mut out: Vec<PersistenceEntry> = inner
            .entries
            .iter()
            .filter_map(|(k, e)| row(&inner.settings, *k, e, now))
            .collect();
        out.sort_by_key(|e| e.client);
        out
    }
}

/// A group's size and its busiest client prefixes: what the status page
/// shows without listing every entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistenceSummary {
    /// Entries in the table (expired ones not yet purged included).
    pub entries: usize,
    /// Up to the asked number of prefixes with the most open connections,
    /// most first (ties by prefix); empty when the table is too big to rank.
    pub top: Vec<PersistenceEntry>,
    /// False when the table held more than [`SUMMARY_RANK_LIMIT`] entries
    /// and was not ranked.
    pub ranked: bool,
}

/// Largest table [`PersistenceTable::summary`] ranks: the pass holds the
/// table's lock, which every new connection of the group takes, and a
/// million entries took 140-170 ms on a loaded 2-core machine
/// (`cargo bench --bench balance -- summary_top5`); 100k keeps it near
/// 15 ms at worst.
pub const SUMMARY_RANK_LIMIT: usize = 100_000;

impl PersistenceTable {
    /// The table's size and its `top` busiest client prefixes. One pass
    /// under the lock keeping `top` candidates, with no allocation per
    /// entry, and none above [`SUMMARY_RANK_LIMIT`] entries (the full
    /// listing is [`PersistenceTable::list`]).
    pub fn summary(&self, top: usize) -> PersistenceSummary {
        let now = Instant::now();
        let inner = self.lock();
        if inner.entries.len() > SUMMARY_RANK_LIMIT {
            return PersistenceSummary {
                entries: inner.entries.len(),
                top: Vec::new(),
                ranked: false,
            };
        }
        // (connections, key), kept sorted most-connections first.
        let mut best: Vec<(u32, IpAddr)> = Vec::with_capacity(top + 1);
        for (k, e) in &inner.entries {
            if e.expires.is_some_and(|t| t <= now) {
                continue;
            }
            let worse = |b: &(u32, IpAddr)| b.0 > e.refs || (b.0 == e.refs && b.1 < *k);
            let at = best.partition_point(worse);
            if at < top {
                best.insert(at, (e.refs, *k));
                best.truncate(top);
            }
        }
        let top = best
            .iter()
            .filter_map(|(_, k)| row(&inner.settings, *k, inner.entries.get(k)?, now))
            .collect();
        PersistenceSummary {
            entries: inner.entries.len(),
            top,
            ranked: true,
        }
    }
}

fn row(s: &Settings, key: IpAddr, e: &Entry, now: Instant) -> Option<PersistenceEntry> {
    let expires_in = match e.expires {
        Some(t) if t <= now => return None,
        Some(t) => Some(t - now),
        None => None,
    };
    Some(PersistenceEntry {
        client: IpNet::new(key, s.prefix(key)).ok()?,
        backend: e.backend,
        connections: e.refs,
        expires_in,
    })
}

/// Every persistence group's table, by name. Built on each reload from the
/// previous one, so a group keeps its table (and its clients) across reloads.
#[derive(Debug, Default)]
pub struct PersistenceTables {
    by_name: HashMap<String, Arc<PersistenceTable>, fnv::FnvBuildHasher>,
}

impl PersistenceTables {
    /// Tables for `config`'s groups: the previous table of a group that
    /// stays (settings updated, entries to backend hosts that left the
    /// group's pools dropped), a new one otherwise.
    pub fn build(config: &config::Config, previous: Option<&PersistenceTables>) -> Self {
        let by_name = config
            .persistence
            .iter()
            .map(|g| {
                let table = match previous.and_then(|p| p.get(&g.name)) {
                    Some(t) => {
                        t.update(g, &group_hosts(config, &g.name));
                        t.clone()
                    }
                    None => Arc::new(PersistenceTable::new(g)),
                };
                (g.name.clone(), table)
            })
            .collect();
        Self { by_name }
    }

    /// The table of the group called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<PersistenceTable>> {
        self.by_name.get(name)
    }

    /// Every table.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<PersistenceTable>> {
        self.by_name.values()
    }
}

/// Backend hosts of every pool that a listener naming `group` can use.
fn group_hosts(config: &config::Config, group: &str) -> HashSet<IpAddr> {
    let mut pools: HashSet<&str> = HashSet::new();
    for l in config
        .listeners
        .iter()
        .filter(|l| l.persistence.as_deref() == Some(group))
    {
        pools.extend(l.pool.as_deref());
        for v in l.vhosts.iter().filter_map(|v| config.vhost(v)) {
            pools.extend(v.pool.as_deref());
            pools.extend(v.routes.iter().map(|r| r.pool.as_str()));
        }
    }
    pools
        .iter()
        .filter_map(|p| config.pool(p))
        .flat_map(|p| p.backends.iter().map(|b| b.address.ip()))
        .collect()
}

#[cfg(test)]
mod tests;
