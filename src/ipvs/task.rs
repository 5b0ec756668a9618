//! The IPVS tier of `vipd run`: reconciles the kernel table at start, on
//! reload (SIGHUP, with the configuration the proxy committed), every
//! `reconcile_interval` and whenever a health check flips (a real server
//! that is down leaves the kernel, or gets weight 0 with
//! `inhibit_on_failure`; a service with none up follows `on_all_down`,
//! logged at each transition), and on shutdown keeps or removes vipd's
//! services according to `on_shutdown`.
//!
//! Netlink calls are blocking, so each pass runs in `spawn_blocking`; the
//! [`Reconciler`] (with its drain timestamps) travels with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::desired::OnFailure;
use super::{IpvsSocket, Reconciler, Service, desired, reconcile};
use crate::config::{Config, OnShutdown};
use crate::health::IpvsHealth;

/// What the tier is asked to converge to.
#[derive(Debug, Clone)]
struct Desired {
    services: Vec<Service>,
    /// Config names of `services` (health reports by name).
    names: Vec<String>,
    /// What each service does with failed real servers.
    rules: Vec<OnFailure>,
    policy: super::Policy,
    interval: Duration,
    on_shutdown: OnShutdown,
}

impl Desired {
    fn of(cfg: &Config) -> Self {
        Desired {
            services: desired::services(cfg),
            names: desired::names(cfg),
            rules: desired::on_failure(cfg),
            policy: desired::policy(cfg),
            interval: cfg.ipvs.reconcile_interval.max(Duration::from_secs(1)),
            on_shutdown: cfg.ipvs.on_shutdown,
        }
    }
}

/// Handle to the running IPVS reconcile task.
#[derive(Debug)]
pub struct IpvsTier {
    desired: watch::Sender<Arc<Desired>>,
    stop: Arc<Notify>,
    task: JoinHandle<Reconciler>,
}

/// The services to converge to: the config's, with the real servers' health
/// applied. Logs each service entering or leaving "all down" and publishes
/// the set on the health board.
fn effective(d: &Desired, health: Option<&IpvsHealth>) -> Vec<Service> {
    let mut services = d.services.clone();
    let Some(h) = health else { return services };
    let all = desired::apply_health(&mut services, &d.names, &d.rules, |name, addr| {
        h.is_up(name, addr)
    });
    let mut now_down = Vec::new();
    for ((name, rule), down) in d.names.iter().zip(&d.rules).zip(all) {
        if down {
            now_down.push(name.clone());
        }
        match (h.is_all_down(name), down) {
            (false, true) => match &rule.all_down {
                desired::AllDown::FailOpen => error!(service = %name, on_all_down = "fail_open",
                    "ALL IPVS REAL SERVERS DOWN: failing open, every real server keeps its configured weight"),
                desired::AllDown::Sorry(s) => {
                    error!(service = %name, on_all_down = "sorry", sorry = %s.addr,
                    "ALL IPVS REAL SERVERS DOWN: the sorry server takes every new connection")
                }
                desired::AllDown::Refuse => error!(service = %name, on_all_down = "refuse",
                    "ALL IPVS REAL SERVERS DOWN: the service has no real server, new connections fail"),
            },
            (true, false) => warn!(service = %name, "IPVS service has a real server up again"),
            _ => {}
        }
    }
    now_down.sort();
    h.set_all_down(now_down);
    services
}

/// A persistent service whose real servers are health-checked relies on two
/// sysctls (per network namespace) that the kernel leaves off: warn when
/// they are, naming the command that sets them.
fn warn_sysctls(cfg: &Config) {
    let checked_persistent = |inhibit: bool| {
        cfg.ipvs
            .services
            .iter()
            .filter(|s| s.health.is_some() && s.persistence.is_some())
            .filter(move |s| !inhibit || s.inhibit_on_failure)
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
    };
    let off = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/vs/{name}"))
            .is_ok_and(|v| v.trim() == "0")
    };
    let services = checked_persistent(false);
    if !services.is_empty() && off("expire_nodest_conn") {
        warn!(services = ?services,
            "net.ipv4.vs.expire_nodest_conn is 0: connections to a real server removed after a              failed check hang until they time out; set it with `sysctl -w net.ipv4.vs.expire_nodest_conn=1`");
    }
    let services = checked_persistent(true);
    if !services.is_empty() && off("expire_quiescent_template") {
        warn!(services = ?services,
            "net.ipv4.vs.expire_quiescent_template is 0: with inhibit_on_failure, clients with a              persistence template keep going to a failed real server until it expires; set it with              `sysctl -w net.ipv4.vs.expire_quiescent_template=1`");
    }
}

/// One pass off the async runtime: open a socket (so that a module loaded
/// after start is picked up), reconcile, log. A pass that panics is an
/// error, and the next pass starts from a fresh reconciler (forgetting
/// drain timestamps) instead of the tier stopping for good.
async fn pass(
    mut r: Reconciler,
    d: Arc<Desired>,
    health: Option<Arc<IpvsHealth>>,
) -> (Reconciler, super::Result<()>) {
    let policy = d.policy.clone();
    let res = tokio::task::spawn_blocking(move || {
        r.set_policy(d.policy.clone());
        let services = effective(&d, health.as_deref());
        let res = IpvsSocket::open()
            .and_then(|mut sock| r.reconcile(&mut sock, &services, Instant::now()));
        let res = res.map(|report| {
            for op in &report.applied {
                info!(op = %op, "ipvs change applied");
            }
            for (op, e) in &report.failed {
                warn!(op = %op, error = %e, "ipvs change failed");
            }
        });
        (r, res)
    })
    .await;
    res.unwrap_or_else(|e| {
        let e = std::io::Error::other(format!("the reconcile pass panicked: {e}"));
        (Reconciler::new(policy), Err(super::Error::Io(e)))
    })
}

impl IpvsTier {
    /// Reconciles once (failing if IPVS is unusable: module missing, no
    /// CAP_NET_ADMIN) and starts the periodic task, which also runs a pass
    /// whenever `health` reports a real server flip. `None` when the config
    /// has no IPVS services and does not own the table.
    pub async fn start(
        cfg: &Config,
        health: Option<Arc<IpvsHealth>>,
    ) -> super::Result<Option<Self>> {
        if cfg.ipvs.services.is_empty() && !cfg.ipvs.own_all {
            return Ok(None);
        }
        let d = Arc::new(Desired::of(cfg));
        if let Some(user) = &cfg.global.user {
            // setuid() drops CAP_NET_ADMIN, which every IPVS command needs
            warn!(
                %user,
                "global.user drops root after binding: later IPVS passes (interval, SIGHUP, \
                 on_shutdown = \"remove\") will fail with \"permission denied\""
            );
        }
        for s in &d.services {
            if let Err(e) = s.validate() {
                warn!(error = %e, "ipvs service definition");
            }
        }
        // subscribe before the first pass, so that a flip during it is not lost
        let mut flips = health.as_ref().map(|h| h.subscribe());
        let (r, res) = pass(Reconciler::new(d.policy.clone()), d.clone(), health.clone()).await;
        res?;
        info!(services = d.services.len(), "ipvs table reconciled");
        // after the first pass, which may have loaded ip_vs (and its sysctls)
        warn_sysctls(cfg);
        let (tx, mut rx) = watch::channel(d);
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut r = r;
            loop {
                let interval = rx.borrow().interval;
                let flipped = async {
                    match flips.as_mut() {
                        Some(f) => f.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stopped.notified() => return r,
                    _ = tokio::time::sleep(interval) => {}
                    changed = rx.changed() => if changed.is_err() { return r },
                    alive = flipped => if !alive { flips = None },
                }
                let d = rx.borrow_and_update().clone();
                let (next, res) = pass(r, d, health.clone()).await;
                r = next;
                if let Err(e) = res {
                    error!(error = %e, "ipvs reconcile failed; retrying at the next interval");
                }
            }
        });
        Ok(Some(IpvsTier {
            desired: tx,
            stop,
            task,
        }))
    }

    /// Converges to a new config now (SIGHUP). Should turning the config
    /// into kernel services panic, the error is logged and the services in
    /// force stay (`Desired::of` only reads `cfg`, so unwinding is sound).
    pub fn reload(&self, cfg: &Config) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Desired::of(cfg))) {
            Ok(d) => {
                self.desired.send_replace(Arc::new(d));
            }
            Err(_) => error!(
                "ipvs: building the new IPVS configuration failed unexpectedly; the previous one stays"
            ),
        }
    }

    /// Stops the task; with `on_shutdown = "remove"` deletes vipd's services.
    pub async fn stop(self) {
        self.stop.notify_one();
        let Ok(r) = self.task.await else { return };
        let d = self.desired.borrow().clone();
        if d.on_shutdown == OnShutdown::Keep {
            info!("ipvs services left in the kernel (on_shutdown = \"keep\")");
            return;
        }
        let res = tokio::task::spawn_blocking(move || -> super::Result<()> {
            let mut sock = IpvsSocket::open()?;
            let actual = sock.services()?;
            let report = reconcile::apply(&mut sock, r.shutdown_plan(&d.services, &actual));
            for op in &report.applied {
                info!(op = %op, "ipvs service removed on shutdown");
            }
            for (op, e) in &report.failed {
                warn!(op = %op, error = %e, "ipvs removal failed");
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = res {
            error!(error = %e, "ipvs: could not remove services on shutdown");
        }
    }
}
