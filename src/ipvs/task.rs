//! The IPVS tier of `vipd run`: reconciles the kernel table at start, on
//! reload (SIGHUP) and every `reconcile_interval`, and on shutdown keeps or
//! removes vipd's services according to `on_shutdown`.
//!
//! Netlink calls are blocking, so each pass runs in `spawn_blocking`; the
//! [`Reconciler`] (with its drain timestamps) travels with it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::{IpvsSocket, Reconciler, Service, desired, reconcile};
use crate::config::{self, Config, OnShutdown};

/// What the tier is asked to converge to.
#[derive(Debug, Clone)]
struct Desired {
    services: Vec<Service>,
    policy: super::Policy,
    interval: Duration,
    on_shutdown: OnShutdown,
}

impl Desired {
    fn of(cfg: &Config) -> Self {
        Desired {
            services: desired::services(cfg),
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
    source: Option<PathBuf>,
}

/// One pass off the async runtime: open a socket (so that a module loaded
/// after start is picked up), reconcile, log.
async fn pass(mut r: Reconciler, d: Arc<Desired>) -> (Reconciler, super::Result<()>) {
    let res = tokio::task::spawn_blocking(move || {
        r.set_policy(d.policy.clone());
        let res = IpvsSocket::open()
            .and_then(|mut sock| r.reconcile(&mut sock, &d.services, Instant::now()));
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
    res.expect("ipvs reconcile pass panicked")
}

impl IpvsTier {
    /// Reconciles once (failing if IPVS is unusable: module missing, no
    /// CAP_NET_ADMIN) and starts the periodic task. `None` when the config has
    /// no IPVS services and does not own the table.
    pub async fn start(cfg: &Config) -> super::Result<Option<Self>> {
        if cfg.ipvs.services.is_empty() && !cfg.ipvs.own_all {
            return Ok(None);
        }
        let d = Arc::new(Desired::of(cfg));
        for s in &d.services {
            if let Err(e) = s.validate() {
                warn!(error = %e, "ipvs service definition");
            }
        }
        let (r, res) = pass(Reconciler::new(d.policy.clone()), d.clone()).await;
        res?;
        info!(services = d.services.len(), "ipvs table reconciled");
        let (tx, mut rx) = watch::channel(d);
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut r = r;
            loop {
                let interval = rx.borrow().interval;
                tokio::select! {
                    _ = stopped.notified() => return r,
                    _ = tokio::time::sleep(interval) => {}
                    changed = rx.changed() => if changed.is_err() { return r },
                }
                let d = rx.borrow_and_update().clone();
                let (next, res) = pass(r, d).await;
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
            source: cfg.source.clone(),
        }))
    }

    /// Converges to a new config now (SIGHUP).
    pub fn reload(&self, cfg: &Config) {
        self.desired.send_replace(Arc::new(Desired::of(cfg)));
    }

    /// Re-reads the config file this tier was started from and converges to
    /// it; on a bad file the previous state stays in force.
    pub fn reload_from_source(&self) {
        let Some(path) = &self.source else { return };
        match config::load(path) {
            Ok(cfg) => self.reload(&cfg),
            Err(e) => {
                error!(error = %e, "ipvs: reload failed; the previous IPVS configuration stays")
            }
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
