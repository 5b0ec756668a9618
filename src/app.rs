//! Composition root: bind every listener, start accept loops, handle
//! signals (TERM/INT: drain and exit; HUP: reload), and drain on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError};
use crate::proxy::listener::{self, BindError};
use crate::proxy::{SharedSnapshot, Snapshot};
use crate::shutdown::Shutdown;

/// Why the app could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "reload needs the configuration file path, and this configuration was not read from a file"
    )]
    NoSource,
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

/// A running proxy: its listeners, its snapshot, and its shutdown handle.
pub struct Running {
    snapshot: SharedSnapshot,
    shutdown: Shutdown,
    global_limit: Arc<Semaphore>,
    listeners: Mutex<HashMap<ListenerKey, Bound>>,
    source: Option<PathBuf>,
    /// Serialises reloads (SIGHUP and admin requests may race).
    reloading: Mutex<()>,
}

impl Running {
    /// Bind every listener of `config` and start serving.
    pub async fn start(config: Config) -> Result<Arc<Self>, AppError> {
        let config = Arc::new(config);
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(config.clone(), None)));
        let running = Arc::new(Self {
            snapshot,
            shutdown: Shutdown::new(),
            global_limit: Arc::new(Semaphore::new(config.global.max_connections)),
            listeners: Mutex::new(HashMap::new()),
            source: config.source.clone(),
            reloading: Mutex::new(()),
        });
        running.sync_listeners(&config).await?;
        Ok(running)
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
        current.retain(|key, bound| {
            let keep = wanted.iter().any(|(k, _)| k == key);
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

    /// Re-read the configuration file and apply it. On any error the running
    /// configuration stays in place.
    pub async fn reload(&self) -> Result<(), AppError> {
        let _one_at_a_time = self.reloading.lock().await;
        let path = self.source.as_ref().ok_or(AppError::NoSource)?;
        let config = config::load(path)?;
        self.swap(config).await
    }

    /// Apply a new configuration: bind new listeners first, then swap the
    /// snapshot, then stop removed listeners.
    pub async fn apply(&self, config: Config) -> Result<(), AppError> {
        let _one_at_a_time = self.reloading.lock().await;
        self.swap(config).await
    }

    async fn swap(&self, config: Config) -> Result<(), AppError> {
        let config = Arc::new(config);
        let previous = self.snapshot.load_full();
        let next = Snapshot::build(config.clone(), Some(&previous));
        self.snapshot.store(Arc::new(next));
        if let Err(e) = self.sync_listeners(&config).await {
            self.snapshot.store(previous);
            return Err(e);
        }
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
        drained
    }
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
    let running = Running::start(config).await?;
    info!("vipd started");
    loop {
        tokio::select! {
            _ = term.recv() => { info!(signal = "TERM", "shutting down"); break }
            _ = int.recv() => { info!(signal = "INT", "shutting down"); break }
            _ = hup.recv() => match running.reload().await {
                Ok(()) => info!("reload complete"),
                Err(e) => error!(error = %e, "reload failed; the previous configuration stays in service"),
            },
        }
    }
    running.stop().await;
    info!("vipd stopped");
    Ok(())
}
