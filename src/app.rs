//! Composition root: bind every listener, start accept loops, health
//! checkers and the admin endpoint, handle signals (TERM/INT: drain and exit;
//! HUP: reload), and drain on shutdown.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, AdminError, AdminState, Control};
use crate::config::{self, Config, ConfigError};
use crate::health::{Checkers, IpvsHealth};
use crate::metrics::Metrics;
use crate::proxy::limits::Cap;
use crate::proxy::listener::{self, BindError};
use crate::proxy::{SharedSnapshot, Snapshot};
use crate::sd_notify;
use crate::shutdown::Shutdown;
use crate::tls::TlsError;

/// Why the app could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Ipvs(#[from] crate::ipvs::Error),
    #[error(
        "reload needs the configuration file path, and this configuration was not read from a file"
    )]
    NoSource,
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// Building the new snapshot panicked; the configuration in service is
    /// kept. Validation is meant to refuse every value that could do this.
    #[error("building the new configuration failed unexpectedly: {0}")]
    BuildPanicked(String),
}

/// Identity of a bound socket: a listener keeps its socket across reloads
/// while its name and address stay the same. Everything else (protocol,
/// pool, vhosts, timeouts) is read from the snapshot per connection, so it
/// changes with a reload; socket options (backlog, freebind, reuseport) apply
/// when the socket is bound.
type ListenerKey = (String, SocketAddr);

struct Bound {
    addr: SocketAddr,
    stop: CancellationToken,
    /// The accept loop; finished once the socket is closed.
    task: tokio::task::JoinHandle<()>,
}

/// The admin endpoint while it runs.
struct AdminBound {
    /// The configured address (port 0 stays 0 here; `addr` is the real one).
    configured: SocketAddr,
    addr: SocketAddr,
    stop: CancellationToken,
    state: Arc<AdminState>,
}

/// What a reload does to the admin endpoint, prepared (bound, token read)
/// before anything else changes so that a failure leaves all in place.
enum AdminPlan {
    Keep(Option<String>),
    Start(SocketAddr, TcpListener, Option<String>),
    Stop,
}

/// A running proxy: its listeners, its snapshot, and its shutdown handle.
pub struct Running {
    snapshot: SharedSnapshot,
    shutdown: Shutdown,
    global_limit: Arc<Cap>,
    listeners: Mutex<HashMap<ListenerKey, Bound>>,
    source: Option<PathBuf>,
    metrics: Arc<Metrics>,
    ipvs_health: Arc<IpvsHealth>,
    /// Health checkers of the current configuration; replaced on reload.
    checkers: std::sync::Mutex<Checkers>,
    admin: Mutex<Option<AdminBound>>,
    /// One reload at a time (SIGHUP and the admin API may race).
    reloading: Mutex<()>,
    /// How the admin endpoint reaches back (set once `start` has the Arc).
    control: OnceLock<Weak<dyn Control>>,
}

impl Control for Running {
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { Running::reload(self).await.map_err(|e| e.to_string()) })
    }
}

impl Running {
    /// Bind every listener of `config` and the admin endpoint, start health
    /// checkers, and start serving.
    pub async fn start(config: Config) -> Result<Arc<Self>, AppError> {
        let config = Arc::new(config);
        let first = build_snapshot(config.clone(), None)?;
        first.tls.log_summary();
        let plan = prepare_admin(&config, None).await?;
        let snapshot = Arc::new(ArcSwap::from_pointee(first));
        let running = Arc::new(Self {
            snapshot,
            shutdown: Shutdown::new(),
            global_limit: Arc::new(Cap::new(config.global.max_connections)),
            listeners: Mutex::new(HashMap::new()),
            source: config.source.clone(),
            metrics: Arc::new(Metrics::new()),
            ipvs_health: Arc::new(IpvsHealth::default()),
            checkers: std::sync::Mutex::new(Checkers::default()),
            admin: Mutex::new(None),
            reloading: Mutex::new(()),
            control: OnceLock::new(),
        });
        let weak: Weak<dyn Control> = Arc::downgrade(&running) as Weak<dyn Control>;
        let _ = running.control.set(weak);
        running.sync_listeners(&config).await?;
        running.restart_checkers(&config);
        running.commit_admin(plan).await;
        Ok(running)
    }

    /// Replace the health checkers with those of `config`; state carries
    /// over in the snapshot's backend states.
    fn restart_checkers(&self, config: &Config) {
        let snap = self.snapshot.load_full();
        let next = Checkers::start(config, &snap.pools, &self.ipvs_health);
        let mut cur = self.checkers.lock().unwrap_or_else(|e| e.into_inner());
        cur.stop();
        *cur = next;
    }

    async fn commit_admin(&self, plan: AdminPlan) {
        let mut cur = self.admin.lock().await;
        match plan {
            AdminPlan::Keep(token) => {
                if let Some(a) = cur.as_ref() {
                    a.state.token.store(token.map(Arc::new));
                }
            }
            AdminPlan::Stop => {
                if let Some(a) = cur.take() {
                    info!(addr = %a.addr, "admin endpoint removed");
                    a.stop.cancel();
                }
            }
            AdminPlan::Start(configured, socket, token) => {
                if let Some(a) = cur.take() {
                    a.stop.cancel();
                }
                let addr = socket.local_addr().unwrap_or(configured);
                let state = Arc::new(AdminState {
                    snapshot: self.snapshot.clone(),
                    metrics: self.metrics.clone(),
                    ipvs_health: self.ipvs_health.clone(),
                    token: ArcSwapOption::new(token.map(Arc::new)),
                    control: self
                        .control
                        .get()
                        .cloned()
                        .unwrap_or_else(|| Weak::<Running>::new() as Weak<dyn Control>),
                    page: Default::default(),
                });
                let stop = CancellationToken::new();
                tokio::spawn(admin::run(socket, state.clone(), stop.clone()));
                *cur = Some(AdminBound {
                    configured,
                    addr,
                    stop,
                    state,
                });
            }
        }
    }

    /// Address the admin endpoint is bound to, if it runs.
    pub async fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.lock().await.as_ref().map(|a| a.addr)
    }

    /// The counter registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Health of IPVS real servers, for the IPVS reconciler.
    pub fn ipvs_health(&self) -> &Arc<IpvsHealth> {
        &self.ipvs_health
    }

    /// Bind listeners that are new in `config`, stop the ones it dropped.
    /// Binding happens before anything is stopped, so a bind failure leaves
    /// the running set untouched.
    async fn sync_listeners(&self, config: &Config) -> Result<(), AppError> {
        let mut current = self.listeners.lock().await;
        let wanted: Vec<(ListenerKey, &config::Listener)> = config
            .listeners
            .iter()
            .map(|l| ((l.name.clone(), l.bind), l))
            .collect();
        let mut fresh = Vec::new();
        for (key, l) in &wanted {
            if !current.contains_key(key) {
                fresh.push((key.clone(), listener::bind(l)?));
            }
        }
        let names: HashSet<&ListenerKey> = wanted.iter().map(|(k, _)| k).collect();
        current.retain(|key, bound| {
            let keep = names.contains(key);
            if !keep {
                info!(listener = %key.0, addr = %bound.addr, "listener removed; stopped accepting");
                bound.stop.cancel();
            }
            keep
        });
        for (key, socket) in fresh {
            let addr = socket.local_addr().unwrap_or(key.1);
            let stop = CancellationToken::new();
            let ctx = listener::Context {
                name: key.0.as_str().into(),
                snapshot: self.snapshot.clone(),
                global_limit: self.global_limit.clone(),
                shutdown: self.shutdown.clone(),
                stats: self.metrics.listener(&key.0),
            };
            info!(listener = %key.0, %addr, "listening");
            let token = stop.clone();
            let task = tokio::spawn(async move {
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = listener::run(socket, ctx) => {}
                }
            });
            current.insert(key, Bound { addr, stop, task });
        }
        Ok(())
    }

    /// Local address of the listener called `name` (useful with port 0).
    pub async fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        let current = self.listeners.lock().await;
        current
            .iter()
            .find(|(k, _)| k.0 == name)
            .map(|(_, b)| b.addr)
    }

    /// The shutdown handle.
    pub fn shutdown_handle(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Re-read the configuration file and every certificate and key, and
    /// apply them. On any error the running configuration and certificates
    /// stay in place. SIGHUP and `POST /api/reload` both come here; the
    /// outcome is counted in the metrics.
    pub async fn reload(&self) -> Result<(), AppError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = async {
            let path = self.source.clone().ok_or(AppError::NoSource)?;
            // Reading and checking a large file takes seconds: off the
            // workers, which keep serving (with `workers = 1` an admin
            // reload stalled every connection until it was done).
            let config = tokio::task::spawn_blocking(move || config::load(&path))
                .await
                .map_err(|e| AppError::BuildPanicked(e.to_string()))??;
            self.swap(config).await
        }
        .await;
        self.metrics
            .record_reload(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        let status = match &result {
            Ok(()) => "STATUS=configuration reloaded".to_string(),
            Err(_) => "STATUS=last reload failed; previous configuration in service".to_string(),
        };
        let _ = sd_notify::notify(&status);
        result
    }

    /// Apply a new configuration: read the admin token and bind a moved admin
    /// endpoint, bind new listeners, swap the snapshot, stop removed
    /// listeners, then restart health checkers (health state carries over by
    /// backend address).
    pub async fn apply(&self, config: Config) -> Result<(), AppError> {
        let _one_at_a_time = self.reloading.lock().await;
        self.swap(config).await
    }

    async fn swap(&self, config: Config) -> Result<(), AppError> {
        let config = Arc::new(config);
        let current = self.admin.lock().await.as_ref().map(|a| a.configured);
        let plan = prepare_admin(&config, Some(current)).await?;
        let previous = self.snapshot.load_full();
        let next = {
            let (config, previous) = (config.clone(), previous.clone());
            // off the workers too: certificates, tables and routes
            tokio::task::spawn_blocking(move || build_snapshot(config, Some(&previous)))
                .await
                .map_err(|e| AppError::BuildPanicked(e.to_string()))??
        };
        let next = Arc::new(next);
        self.snapshot.store(next.clone());
        if let Err(e) = self.sync_listeners(&config).await {
            previous.pools.claim_backends();
            self.snapshot.store(previous);
            return Err(e);
        }
        next.tls.log_summary();
        self.restart_checkers(&config);
        self.commit_admin(plan).await;
        self.metrics
            .retain_listeners(|n| config.listener(n).is_some());
        Ok(())
    }

    /// Stop accepting, wait for open connections up to the grace period.
    /// Returns true if every connection finished in time.
    pub async fn stop(&self) -> bool {
        self.shutdown.trigger();
        // Close every listening socket before draining, so that new
        // connections are refused rather than left in a backlog.
        for (_, bound) in self.listeners.lock().await.drain() {
            bound.stop.cancel();
            let _ = bound.task.await;
        }
        let grace = self.snapshot.load().config.global.grace_period;
        let open = self.shutdown.active();
        if open > 0 {
            info!(
                open,
                grace_s = grace.as_secs_f64(),
                "draining open connections"
            );
        }
        let drained = self.shutdown.drain(grace).await;
        if !drained {
            warn!(
                left = self.shutdown.active(),
                "grace period over; closing remaining connections"
            );
        }
        self.checkers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop();
        if let Some(a) = self.admin.lock().await.take() {
            a.stop.cancel();
        }
        drained
    }
}

impl Drop for Running {
    /// A dropped `Running` (tests drop them without `stop`) takes its admin
    /// endpoint down too; health checkers stop with their `Checkers`.
    fn drop(&mut self) {
        if let Some(a) = self.admin.get_mut().take() {
            a.stop.cancel();
        }
    }
}

/// [`Snapshot::build`], with a panic turned into an error, so that a reload
/// can never take the process down (the release profile unwinds).
///
/// Unwinding here is sound: the build creates new objects, and the only
/// live state it touches, the previous pools' backend states, is handed
/// back to those pools before returning (persistence tables and mutexes
/// recover from poisoning).
fn build_snapshot(config: Arc<Config>, previous: Option<&Snapshot>) -> Result<Snapshot, AppError> {
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Snapshot::build(config, previous)
    }));
    match built {
        Ok(snapshot) => Ok(snapshot?),
        Err(panic) => {
            if let Some(p) = previous {
                p.pools.claim_backends();
            }
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(AppError::BuildPanicked(why))
        }
    }
}

/// Read the admin token and, if the admin address is new, bind it.
/// `current` is `None` at start, else the configured address running now.
async fn prepare_admin(
    config: &Config,
    current: Option<Option<SocketAddr>>,
) -> Result<AdminPlan, AppError> {
    let Some(cfg) = &config.admin else {
        return Ok(AdminPlan::Stop);
    };
    let token = match &cfg.token_file {
        Some(path) => Some(admin::read_token(path)?),
        None => None,
    };
    if current.flatten() == Some(cfg.listen) {
        return Ok(AdminPlan::Keep(token));
    }
    let socket = admin::bind(cfg.listen).await?;
    Ok(AdminPlan::Start(cfg.listen, socket, token))
}

/// Run until SIGTERM or SIGINT, reloading on SIGHUP.
pub async fn run(config: Config) -> Result<(), AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Register every handler before serving: tokio replaces the default
    // action, and a HUP that arrives early must not kill the process.
    let (mut term, mut int, mut hup) = (
        signal(SignalKind::terminate()).expect("register SIGTERM handler"),
        signal(SignalKind::interrupt()).expect("register SIGINT handler"),
        signal(SignalKind::hangup()).expect("register SIGHUP handler"),
    );
    let user = config.global.user.clone();
    let group = config.global.group.clone();
    let ipvs_config = config.clone();
    let running = Running::start(config).await?;
    // after binding (health checkers run) and before dropping root
    let ipvs =
        crate::ipvs::task::IpvsTier::start(&ipvs_config, Some(running.ipvs_health().clone()))
            .await?;
    if let Some(user) = user {
        crate::privileges::drop_to(&user, group.as_deref())?;
        info!(%user, "dropped privileges after binding");
    }
    info!("vipd started");
    match sd_notify::notify("READY=1") {
        Ok(true) => info!("notified systemd: ready"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)"),
    }
    loop {
        tokio::select! {
            _ = term.recv() => { info!(signal = "TERM", "shutting down"); break }
            _ = int.recv() => { info!(signal = "INT", "shutting down"); break }
            _ = hup.recv() => {
                // The IPVS tier follows the configuration the proxy committed,
                // so that a refused file changes neither tier.
                match running.reload().await {
                    Ok(()) => {
                        info!("reload complete");
                        if let Some(ipvs) = &ipvs {
                            ipvs.reload(&running.snapshot().config);
                        }
                    }
                    Err(e) => error!(error = %e, "reload failed; the previous configuration stays in service"),
                }
            }
        }
    }
    let _ = sd_notify::notify("STOPPING=1");
    running.stop().await;
    if let Some(ipvs) = ipvs {
        ipvs.stop().await;
    }
    info!("vipd stopped");
    Ok(())
}
