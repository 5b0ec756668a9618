//! Bounds on the sizes of collections, which the per-field ranges do not
//! cover: how many routes the listeners build together, how often the health
//! checks probe in all, how many clients the persistence groups hold, and
//! name lookups in constant time for files of 100 000 sections.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::{Checker, Skeleton, show};
use crate::config::file::RawListener;
use crate::config::model::*;

/// The sections of one kind, by name, so that checking a reference takes
/// constant time: a file may define 100 000 pools and as many vhosts.
pub(super) struct Defined<'a, T> {
    /// In file order.
    pub(super) all: &'a [T],
    by_name: HashMap<&'a str, &'a T>,
}

impl<'a, T> Defined<'a, T> {
    pub(super) fn new(all: &'a [T], name: fn(&T) -> &str) -> Self {
        let mut by_name = HashMap::with_capacity(all.len());
        for x in all {
            by_name.entry(name(x)).or_insert(x);
        }
        Self { all, by_name }
    }

    pub(super) fn get(&self, name: &str) -> Option<&'a T> {
        self.by_name.get(name).copied()
    }
}

/// Most (listener, host name) pairs the listeners may serve in all. Each
/// listener keeps its own table of the host names it serves (a TLS one also
/// its own certificate resolver): 5 000 listeners serving 5 000 vhosts each,
/// a 600 KB file, took gigabytes.
const MAX_LISTENER_HOSTS: usize = 1_000_000;

/// How many routes the listeners checked so far left for the next ones.
pub(super) struct RouteBudget {
    left: usize,
    /// Whether a listener went over (reported once).
    over: bool,
    /// Host names of every vhost: what a listener without `vhosts` serves.
    all: usize,
}

impl RouteBudget {
    pub(super) fn new(vhosts: &[Vhost]) -> Self {
        Self {
            left: MAX_LISTENER_HOSTS,
            over: false,
            all: vhosts.iter().map(|v| v.hosts.len()).sum(),
        }
    }
}

/// The vhosts a listener serves: those it lists, or every vhost when it
/// lists none (HTTP and TLS listeners).
pub(super) fn served_vhosts(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    p: &str,
    raw: &RawListener,
    protocol: Protocol,
    vhosts: &Defined<Vhost>,
    routes: &mut RouteBudget,
) -> Vec<String> {
    let mut served = Vec::new();
    let mut hosts = 0;
    let mut seen = HashSet::new();
    for v in &raw.vhosts {
        if !seen.insert(v.as_str()) {
            c.report(
                span,
                p,
                Some("vhosts"),
                format!("vhost {v:?} is listed twice"),
                "list each vhost once",
            );
        } else if let Some(x) = vhosts.get(v) {
            served.push(v.clone());
            hosts += x.hosts.len();
        } else {
            c.report(
                span,
                p,
                Some("vhosts"),
                format!("no vhost is named {v:?}"),
                "define a [[vhost]] with that name or remove it from the list",
            );
        }
    }
    let every = raw.vhosts.is_empty() && (protocol.is_http() || protocol.is_tls());
    if every {
        hosts = routes.all;
    }
    let Some(left) = routes.left.checked_sub(hosts) else {
        // once: the listeners after this one are over too
        if !std::mem::replace(&mut routes.over, true) {
            c.report(
                span,
                p,
                Some("vhosts"),
                format!(
                    "the listeners together serve over {MAX_LISTENER_HOSTS} host names (this one adds {hosts}); each keeps its own table of the names it serves"
                ),
                "list in `vhosts` only the vhosts each listener serves, or serve them from fewer listeners",
            );
        }
        return Vec::new();
    };
    routes.left = left;
    if every {
        served = vhosts.all.iter().map(|v| v.name.clone()).collect();
        if served.is_empty() {
            c.report(
                span,
                p,
                None,
                format!(
                    "a {} listener needs at least one [[vhost]]",
                    protocol.as_str()
                ),
                "define a [[vhost]] (hosts, pool, and certificates for TLS)",
            );
        }
    }
    served
}

/// Most health probes per second, over every pool and IPVS service: each is
/// a connection (and a TLS handshake or HTTP exchange), and 200 000
/// backends checked every 100 ms would take every core.
const MAX_PROBE_RATE: f64 = 10_000.0;

/// The health checks together stay under [`MAX_PROBE_RATE`]; reported once,
/// at the check that goes over.
pub(super) fn check_probe_rate(
    c: &mut Checker<'_>,
    s: &Skeleton,
    pools: &[Pool],
    ipvs: &Ipvs,
    ipvs_span: &Range<usize>,
) {
    let checked = pools
        .iter()
        .zip(&s.pool)
        .map(|(p, t)| {
            (
                format!("pool {:?}", p.name),
                t.span(),
                p.backends.len(),
                &p.health,
            )
        })
        .chain(ipvs.services.iter().map(|v| {
            let at = format!("ipvs.service {:?}", v.name);
            (at, ipvs_span.clone(), v.real_servers.len(), &v.health)
        }));
    let mut rate = 0.0;
    for (path, span, servers, health) in checked {
        let Some(h) = health else { continue };
        rate += servers as f64 / h.interval.as_secs_f64();
        if rate > MAX_PROBE_RATE {
            c.report(
                &span,
                &format!("{path}.health"),
                Some("interval"),
                format!(
                    "the health checks would probe over {MAX_PROBE_RATE} servers per second in all ({servers} here every {})",
                    show(h.interval)
                ),
                "raise `interval` (servers / interval = probes per second), or check fewer servers",
            );
            return;
        }
    }
}

/// Most clients persistence tables hold, per group and over all groups:
/// an entry takes about 100 bytes, and clients (an IPv6 one has 2^64
/// addresses to come from) fill a table up to its `max_entries`.
pub(super) const MAX_CLIENTS: usize = 10_000_000;

/// The groups' `max_entries` add up to at most [`MAX_CLIENTS`]; reported
/// once, at the group that goes over.
pub(super) fn check_clients_total(c: &mut Checker<'_>, s: &Skeleton, groups: &[PersistenceGroup]) {
    let mut total = 0;
    for (g, t) in groups.iter().zip(&s.persistence) {
        total += g.max_entries;
        if total > MAX_CLIENTS {
            c.report(
                &t.span(),
                &format!("persistence {:?}", g.name),
                Some("max_entries"),
                format!("the persistence groups would hold over {MAX_CLIENTS} clients in all"),
                "lower `max_entries` so that the groups' add up to at most 10000000",
            );
            return;
        }
    }
}
