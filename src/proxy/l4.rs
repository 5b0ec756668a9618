//! Layer-4 forwarding: a client stream spliced to a backend connection as a
//! plain byte stream, both directions and half-close preserved.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Snapshot, proxy_protocol};
use crate::balance::{Lease, PersistenceTable};
use crate::config;
use crate::metrics::ListenerStats;

/// Bytes moved by one forwarded connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// Client to backend.
    pub upstream: u64,
    /// Backend to client.
    pub downstream: u64,
}

/// Why forwarding ended early, with the side at fault.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no backend of pool {pool:?} is available")]
    NoBackend { pool: String },
    #[error("backend {addr}: connect failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("backend {addr}: connect timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
}

/// Who a connection is from and where it was addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client: the TCP peer, or the source a PROXY header carried. It
    /// is the identity used for persistence, hashing and logs.
    pub client: SocketAddr,
    /// The address the client connected to (the PROXY header's destination
    /// when there was one).
    pub local: SocketAddr,
}

/// Connect to a backend of `pool` for `client`, trying up to three backends
/// (as HAProxy's `retries` with `redispatch`) when a connect fails. Every
/// outcome is reported to the backend's passive health check. No
/// persistence and no PROXY header: listeners use [`connect_for`].
pub async fn connect(
    pool_cfg: &config::Pool,
    snap: &Snapshot,
    client: SocketAddr,
) -> Result<(TcpStream, Lease), ForwardError> {
    connect_with(pool_cfg, snap, None, client, None).await
}

/// Connect to a backend of `pool` for a connection of `listener`, as
/// [`connect`] does, but through the listener's persistence group when it
/// names one, and sending a PROXY v2 header with `origin` when the pool has
/// `send_proxy`.
pub async fn connect_for(
    listener: &config::Listener,
    pool_cfg: &config::Pool,
    snap: &Snapshot,
    origin: Origin,
) -> Result<(TcpStream, Lease), ForwardError> {
    let table = listener
        .persistence
        .as_deref()
        .and_then(|g| snap.persistence.get(g));
    connect_with(pool_cfg, snap, table, origin.client, Some(origin)).await
}

async fn connect_with(
    pool_cfg: &config::Pool,
    snap: &Snapshot,
    persistence: Option<&Arc<PersistenceTable>>,
    client: SocketAddr,
    origin: Option<Origin>,
) -> Result<(TcpStream, Lease), ForwardError> {
    let no_backend = || ForwardError::NoBackend {
        pool: pool_cfg.name.clone(),
    };
    let pool = snap.pools.get(&pool_cfg.name).ok_or_else(no_backend)?;
    let attempts = pool.backends.len().clamp(1, 3);
    let mut last = no_backend();
    for _ in 0..attempts {
        let selected = match persistence {
            Some(table) => pool.select_persistent(client.ip(), table),
            None => pool.select(client.ip()),
        };
        let Some(lease) = selected else {
            break;
        };
        let addr = lease.address;
        let state = lease.state().clone();
        let began = Instant::now();
        let connected = tokio::time::timeout(pool_cfg.connect_timeout, async {
            let mut stream = TcpStream::connect(addr).await?;
            if let (true, Some(o)) = (pool_cfg.send_proxy, origin) {
                stream
                    .write_all(&proxy_protocol::encode_v2(o.client, o.local))
                    .await?;
            }
            Ok::<_, io::Error>(stream)
        })
        .await;
        match connected {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                state.stats.record_connect(began.elapsed());
                if state.connect_succeeded() {
                    pool.log_flip(
                        addr,
                        true,
                        "passive check: connect succeeded after cool-down",
                    );
                }
                return Ok((stream, lease));
            }
            Ok(Err(source)) => {
                warn!(backend = %addr, error = %source, side = "backend", "connect failed");
                last = ForwardError::Connect { addr, source };
            }
            Err(_) => {
                warn!(backend = %addr, side = "backend", "connect timed out");
                last = ForwardError::ConnectTimeout {
                    addr,
                    timeout: pool_cfg.connect_timeout,
                };
            }
        }
        // A persistent client is rescheduled rather than sent back to a
        // backend that just refused it.
        lease.connect_failed();
        if state.connect_failed(pool_cfg) {
            let cause = format!(
                "passive check: {} consecutive connect failures; last: {last}",
                pool_cfg.passive_fall
            );
            pool.log_flip(addr, false, &cause);
        }
    }
    Err(last)
}

/// Forward a `tcp` listener's connection to a backend of its pool.
pub async fn forward(
    client: TcpStream,
    origin: Origin,
    listener: &config::Listener,
    snap: &Snapshot,
    stats: &ListenerStats,
) {
    splice(client, origin, listener, snap, stats, Instant::now()).await
}

/// Connect a backend of the listener's pool and copy both ways until the
/// connection ends, then count its bytes and log one line. Shared by `tcp`
/// listeners and by `tls` listeners after the handshake (`started` is when
/// the client connection was accepted).
pub async fn splice<C>(
    client: C,
    origin: Origin,
    listener: &config::Listener,
    snap: &Snapshot,
    stats: &ListenerStats,
    started: Instant,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some(pool_cfg) = listener.pool.as_deref().and_then(|p| snap.config.pool(p)) else {
        warn!("listener has no pool; closing");
        return;
    };
    let (backend, lease) = match connect_for(listener, pool_cfg, snap, origin).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, side = "backend", "closing client connection: no backend reachable");
            return;
        }
    };
    let result = pipe(client, backend, listener.idle_timeout).await;
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(t) => {
            stats.add_bytes(t.upstream, t.downstream);
            lease.state().stats.add_bytes(t.upstream, t.downstream);
            info!(backend = %lease.address, bytes_in = t.upstream, bytes_out = t.downstream,
                duration_ms = ms, "connection closed")
        }
        Err(e) => {
            info!(backend = %lease.address, error = %e, duration_ms = ms, "connection ended with error")
        }
    }
}

/// Copy buffer of a busy direction: large, for bulk throughput.
const BUFFER: usize = 32 * 1024;
/// Copy buffer a direction starts with: small, so that an idle connection
/// costs little memory. It grows to `BUFFER` once a read fills it.
const START_BUFFER: usize = 2 * 1024;

/// Copy both ways between `a` (client) and `b` (backend) until both sides
/// have finished. EOF from one side is passed on as a write shutdown to the
/// other (half-close), and the other direction keeps flowing. The connection
/// is cut when neither side sends anything for `idle`.
pub async fn pipe<A, B>(a: A, b: B, idle: Duration) -> io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let up = copy_half(ar, bw, start, &last);
    let down = copy_half(br, aw, start, &last);
    let watchdog = async {
        loop {
            let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return io::Error::new(io::ErrorKind::TimedOut, "idle timeout");
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => {
            let (upstream, downstream) = r?;
            Ok(Transferred { upstream, downstream })
        }
        e = watchdog => Err(e),
    }
}

async fn copy_half<R, W>(mut r: R, mut w: W, start: Instant, last: &AtomicU64) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; START_BUFFER];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == buf.len() && buf.len() < BUFFER {
            buf.resize(BUFFER, 0);
        }
        if n == 0 {
            // The peer may already be gone; the other direction reports that.
            let _ = w.shutdown().await;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
