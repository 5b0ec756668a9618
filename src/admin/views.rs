//! JSON views of the running state, for `GET /api/...` and the status page.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::AdminState;
use crate::balance::{Backend, Pool};
use crate::ipvs;
use crate::metrics::Handshake;
use crate::tls::reload::EXPIRY_WARN_DAYS;

/// Client prefixes per persistence group on the status page.
const TOP_PREFIXES: usize = 5;

/// One backend as the admin API shows it.
#[derive(Debug, Serialize)]
pub(super) struct BackendView {
    pub(super) address: String,
    /// "up", "down" or "drained" (up by health but weight 0).
    pub(super) status: &'static str,
    pub(super) healthy: bool,
    pub(super) configured_weight: u32,
    pub(super) weight_override: Option<u32>,
    /// Weight in force (override or configured).
    pub(super) weight: u32,
    /// Weight in force scaled by the slow-start ramp.
    pub(super) effective_weight: f64,
    pub(super) slow_start_permille: u64,
    /// Open connections: a drained backend is safe to remove at 0.
    pub(super) active_connections: u64,
    pub(super) total_connections: u64,
    pub(super) connect_failures: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) checks_passed: u64,
    pub(super) checks_failed: u64,
    pub(super) flips: u64,
    /// The last change of state and its cause (check and result, passive
    /// failure, or who drained it); `None` if nothing changed since start.
    pub(super) last_change: Option<ChangeView>,
    /// Duration of the last active check in milliseconds, if one ran.
    pub(super) last_check_ms: Option<f64>,
    /// Whether that check passed.
    pub(super) last_check_ok: Option<bool>,
}

/// [`crate::balance::Change`] as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct ChangeView {
    to: &'static str,
    cause: String,
    unix: u64,
}

impl BackendView {
    pub(super) fn of(b: &Backend) -> Self {
        let s = &b.state;
        let healthy = s.is_healthy();
        let weight = b.weight();
        let status = match (healthy, weight) {
            (false, _) => "down",
            (true, 0) => "drained",
            (true, _) => "up",
        };
        Self {
            address: b.address.to_string(),
            status,
            healthy,
            configured_weight: b.weight,
            weight_override: s.weight_override(),
            weight,
            effective_weight: b.effective_weight(),
            slow_start_permille: s.ramp_permille(),
            active_connections: s.active.load(Ordering::Relaxed),
            total_connections: s.stats.selected(),
            connect_failures: s.stats.connect_failures(),
            bytes_in: s.stats.bytes_in(),
            bytes_out: s.stats.bytes_out(),
            checks_passed: s.stats.checks_passed(),
            checks_failed: s.stats.checks_failed(),
            flips: s.stats.flips(),
            last_change: s.last_change().map(|c| ChangeView {
                to: c.to,
                cause: c.cause,
                unix: c.unix,
            }),
            last_check_ms: match s.last_check_us.load(Ordering::Relaxed) {
                0 => None,
                us => Some(us as f64 / 1000.0),
            },
            last_check_ok: (s.last_check_us.load(Ordering::Relaxed) != 0)
                .then(|| s.last_check_ok.load(Ordering::Relaxed)),
        }
    }
}

/// One pool with its backends.
#[derive(Debug, Serialize)]
pub(super) struct PoolView {
    pub(super) name: String,
    pub(super) scheduler: &'static str,
    pub(super) health_check: Option<&'static str>,
    pub(super) on_all_down: &'static str,
    pub(super) all_down: bool,
    pub(super) backends: Vec<BackendView>,
    pub(super) sorry: Option<BackendView>,
}

pub(super) fn pool(state: &AdminState, p: &Pool) -> PoolView {
    let snap = state.snapshot.load();
    let cfg = snap.config.pool(&p.name);
    PoolView {
        name: p.name.clone(),
        scheduler: cfg.map_or("?", |c| c.scheduler.as_str()),
        health_check: cfg.and_then(|c| c.health.as_ref()).map(|h| match h.kind {
            crate::config::HealthKind::Tcp => "tcp",
            crate::config::HealthKind::Http => "http",
            crate::config::HealthKind::Https => "https",
            crate::config::HealthKind::Tls => "tls",
        }),
        on_all_down: p.on_all_down.as_str(),
        all_down: p.all_down(),
        backends: p.backends.iter().map(BackendView::of).collect(),
        sorry: p.sorry().map(BackendView::of),
    }
}

/// Every pool, by name.
pub(super) fn pools(state: &AdminState) -> Vec<PoolView> {
    let snap = state.snapshot.load_full();
    let mut v: Vec<_> = snap.pools.iter().map(|p| pool(state, p)).collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// One listener with its counters.
#[derive(Debug, Serialize)]
pub(super) struct ListenerView {
    name: String,
    bind: String,
    protocol: &'static str,
    pool: Option<String>,
    vhosts: Vec<String>,
    connections_accepted: u64,
    connections_active: i64,
    bytes_in: u64,
    bytes_out: u64,
    requests: serde_json::Value,
    tls_handshakes: serde_json::Value,
}

pub(super) fn listeners(state: &AdminState) -> Vec<ListenerView> {
    let snap = state.snapshot.load_full();
    snap.config
        .listeners
        .iter()
        .map(|l| {
            let s = state.metrics.listener(&l.name);
            let classes = s.requests();
            let requests: serde_json::Map<_, _> = crate::metrics::StatusClasses::LABELS
                .iter()
                .zip(classes)
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            ListenerView {
                name: l.name.clone(),
                bind: l.bind.to_string(),
                protocol: l.protocol.as_str(),
                pool: l.pool.clone(),
                vhosts: l.vhosts.clone(),
                connections_accepted: s.accepted(),
                connections_active: s.active(),
                bytes_in: s.bytes_in(),
                bytes_out: s.bytes_out(),
                requests: requests.into(),
                tls_handshakes: serde_json::json!({
                    "full": s.handshakes(Handshake::Full),
                    "resumed": s.handshakes(Handshake::Resumed),
                    "failed": s.handshakes(Handshake::Failed),
                }),
            }
        })
        .collect()
}

/// Persistence groups with their counters and entries (the admin view of
/// `ipvsadm -Lc` templates).
pub(super) fn persistence(state: &AdminState) -> serde_json::Value {
    let snap = state.snapshot.load_full();
    let groups: Vec<_> = snap
        .config
        .persistence
        .iter()
        .filter_map(|g| snap.persistence.get(&g.name).map(|t| (g, t)))
        .map(|(g, t)| {
            let entries: Vec<_> = t
                .list()
                .into_iter()
                .map(|e| {
                    serde_json::json!({
                        "client": e.client.to_string(),
                        "backend": e.backend.to_string(),
                        "connections": e.connections,
                        "expires_in_s": e.expires_in.map(|d| d.as_secs_f64()),
                    })
                })
                .collect();
            serde_json::json!({
                "name": g.name,
                "timeout_s": g.timeout.as_secs_f64(),
                "expire_quiescent": g.expire_quiescent,
                "size": entries.len(),
                "hits": t.stats().hits.load(Ordering::Relaxed),
                "misses": t.stats().misses.load(Ordering::Relaxed),
                "entries": entries,
            })
        })
        .collect();
    serde_json::json!({ "groups": groups })
}

/// Certificates in service (from the TLS state of the snapshot), with days
/// left before they expire.
pub(super) fn certificates(state: &AdminState) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let snap = state.snapshot.load_full();
    let certs: Vec<_> = snap
        .tls
        .certificates()
        .iter()
        .map(|c| {
            serde_json::json!({
                "vhost": c.vhost,
                "index": c.index,
                "names": c.cert.names,
                "key_type": c.cert.key_type,
                "sha256": c.cert.sha256,
                "not_after": c.cert.not_after,
                "not_after_unix": c.cert.not_after_unix,
                "days_left": (c.cert.not_after_unix - now).div_euclid(86_400),
                "expiring_soon": c.cert.not_after_unix - now < EXPIRY_WARN_DAYS * 86_400,
            })
        })
        .collect();
    serde_json::json!({ "certificates": certs, "warn_days": EXPIRY_WARN_DAYS })
}

/// What the kernel holds for each configured IPVS service, read over
/// generic netlink; an error (no IPVS, no CAP_NET_ADMIN) is reported as text.
pub(super) type KernelTable = Result<Vec<(ipvs::KernelService, Vec<ipvs::KernelDest>)>, String>;

/// Read the kernel IPVS table, off the async threads. `None` when the
/// configuration has no IPVS service (nothing to ask the kernel).
pub(super) async fn read_kernel_ipvs(state: &AdminState) -> Option<KernelTable> {
    if state.snapshot.load().config.ipvs.services.is_empty() {
        return None;
    }
    let read = || -> Result<_, ipvs::Error> {
        let mut socket = ipvs::socket::IpvsSocket::open()?;
        let services = socket.services()?;
        let mut out = Vec::with_capacity(services.len());
        for s in services {
            let dests = socket.dests(&s.key)?;
            out.push((s, dests));
        }
        Ok(out)
    };
    Some(match tokio::task::spawn_blocking(read).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("kernel read task failed: {e}")),
    })
}

/// Counters and the kernel's rate estimates (what `ipvsadm -Ln --stats`
/// and `--rate` print).
fn stats_json(s: &ipvs::Stats) -> serde_json::Value {
    serde_json::json!({
        "conns": s.conns, "inpkts": s.inpkts, "outpkts": s.outpkts,
        "inbytes": s.inbytes, "outbytes": s.outbytes, "cps": s.cps,
        "inpps": s.inpps, "outpps": s.outpps, "inbps": s.inbps, "outbps": s.outbps,
    })
}

/// IPVS services from the configuration with their real servers' health
/// and, when the kernel could be read, its counters for them.
pub(super) fn ipvs(state: &AdminState, kernel: Option<KernelTable>) -> serde_json::Value {
    let snap = state.snapshot.load_full();
    let desired = ipvs::desired::services(&snap.config);
    let services: Vec<_> = snap
        .config
        .ipvs
        .services
        .iter()
        .zip(&desired)
        .map(|(s, want)| {
            let in_kernel = match &kernel {
                Some(Ok(table)) => table.iter().find(|(k, _)| k.key == want.key),
                _ => None,
            };
            let real: Vec<_> = s
                .real_servers
                .iter()
                .map(|r| {
                    let kd =
                        in_kernel.and_then(|(_, ds)| ds.iter().find(|d| d.dest.addr == r.address));
                    serde_json::json!({
                        "address": r.address.to_string(),
                        "weight": r.weight,
                        "healthy": state.ipvs_health.is_up(&s.name, r.address),
                        "kernel": kd.map(|d| serde_json::json!({
                            "weight": d.dest.weight,
                            "active_conns": d.active_conns,
                            "inactive_conns": d.inactive_conns,
                            "persist_conns": d.persist_conns,
                            "stats": stats_json(&d.stats),
                        })),
                    })
                })
                .collect();
            serde_json::json!({
                "name": s.name,
                "scheduler": s.scheduler.as_str(),
                "on_all_down": ipvs::desired::on_failure_name(s.on_all_down),
                "all_down": state.ipvs_health.is_all_down(&s.name),
                "real_servers": real,
                "kernel_stats": in_kernel.map(|(k, _)| stats_json(&k.stats)),
            })
        })
        .collect();
    let kernel_error = match &kernel {
        Some(Err(e)) => Some(e.clone()),
        _ => None,
    };
    serde_json::json!({ "services": services, "kernel_error": kernel_error })
}

/// Persistence groups in brief: size, hits, misses and the busiest client
/// prefixes (the full listing is `/api/persistence`).
pub(super) fn persistence_summary(state: &AdminState) -> Vec<serde_json::Value> {
    let snap = state.snapshot.load_full();
    snap.config
        .persistence
        .iter()
        .filter_map(|g| snap.persistence.get(&g.name).map(|t| (g, t)))
        .map(|(g, t)| {
            let s = t.summary(TOP_PREFIXES);
            let top: Vec<_> = s
                .top
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "client": e.client.to_string(),
                        "backend": e.backend.to_string(),
                        "connections": e.connections,
                        "expires_in_s": e.expires_in.map(|d| d.as_secs_f64()),
                    })
                })
                .collect();
            serde_json::json!({
                "name": g.name,
                "timeout_s": g.timeout.as_secs_f64(),
                "entries": s.entries,
                "ranked": s.ranked,
                "hits": t.stats().hits.load(Ordering::Relaxed),
                "misses": t.stats().misses.load(Ordering::Relaxed),
                "top": top,
            })
        })
        .collect()
}

/// Everything the status page shows, in one document (`GET /api/status`):
/// version, the last reload (time, result, the full error text while it
/// stands), listeners, pools, certificates, persistence and the IPVS tier.
pub(super) async fn status(state: &AdminState) -> serde_json::Value {
    let r = state.metrics.reload_status();
    let kernel = read_kernel_ipvs(state).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now_unix": now,
        "started_unix": state.metrics.started_unix,
        "reloads": r.attempts,
        "reload_failures": r.failures,
        "last_reload_ok": r.last_ok,
        "last_reload_unix": r.last_unix,
        "last_reload_error": r.last_error,
        "listeners": listeners(state),
        "history": state.page.rates.read(),
        "history_interval_s": super::history::INTERVAL.as_secs_f64(),
        "pools": pools(state),
        "certificates": certificates(state),
        "persistence": state.page.persistence.get(|| persistence_summary(state).into()),
        "ipvs": ipvs(state, kernel),
    })
}
