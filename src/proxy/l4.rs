//! Layer-4 forwarding: a client stream joined to a backend connection as a
//! plain byte stream, both directions and half-close preserved: connecting
//! the backend (retries, passive checks, PROXY header), then
//! [`splice`](super::splice) for `tcp` listeners or [`copy`](super::copy)
//! for TLS terminated by `tls` listeners.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use super::copy::{Transferred, pipe};
use super::{Snapshot, copy, proxy_protocol, splice};
use crate::balance::{Lease, PersistenceTable};
use crate::config;
use crate::metrics::ListenerStats;

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
    /// when there was one). Only a PROXY header sent to the backend reads
    /// it; when the pool sends none, it is the listener's bind address.
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
        let began = Instant::now();
        let connected = tokio::time::timeout(pool_cfg.connect_timeout, async {
            let mut stream = connect_socket(addr).await?;
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
                let state = lease.state();
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
        let went_down = lease.state().connect_failed(pool_cfg);
        // A persistent client is rescheduled rather than sent back to a
        // backend that just refused it.
        lease.connect_failed();
        if went_down {
            let cause = format!(
                "passive check: {} consecutive connect failures; last: {last}",
                pool_cfg.passive_fall
            );
            pool.log_flip(addr, false, &cause);
        }
    }
    Err(last)
}

/// A TCP connection to `addr` with TCP_NODELAY, in as few syscalls as
/// HAProxy's: socket(2) already non-blocking, the option set before
/// connect(2), and the outcome read from the readiness event itself; only
/// a failed connect asks the socket for its error (tokio's own connect
/// calls getsockopt(SO_ERROR) every time).
async fn connect_socket(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    // Writable without an error or hang-up: the handshake completed.
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionReset, "closed while connecting")
        }));
    }
    Ok(stream)
}

/// Forward a `tcp` listener's connection to a backend of its pool, both
/// ways with splice(2): no byte is copied into user space.
pub async fn forward(
    mut client: TcpStream,
    origin: Origin,
    listener: &config::Listener,
    snap: &Snapshot,
    stats: &ListenerStats,
) {
    let started = Instant::now();
    let Some((mut backend, lease)) = backend_for(listener, snap, origin).await else {
        return;
    };
    let (moved, end) = splice::splice_both(&mut client, &mut backend, listener.idle_timeout).await;
    let logged = snap.config.global.access_log != config::AccessLog::Off;
    finish(moved, end, &lease, stats, started, logged);
}

/// Connect a backend of the listener's pool and copy both ways until the
/// connection ends, then count its bytes and log one line. For `tls`
/// listeners after the handshake (`started` is when the client connection
/// was accepted).
pub async fn serve<C>(
    mut client: C,
    origin: Origin,
    listener: &config::Listener,
    snap: &Snapshot,
    stats: &ListenerStats,
    started: Instant,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some((mut backend, lease)) = backend_for(listener, snap, origin).await else {
        return;
    };
    let (moved, end) = copy::copy_both(&mut client, &mut backend, listener.idle_timeout).await;
    let logged = snap.config.global.access_log != config::AccessLog::Off;
    finish(moved, end, &lease, stats, started, logged);
}

/// A connected backend of the listener's pool, or `None` (logged) when the
/// client is to be closed.
async fn backend_for(
    listener: &config::Listener,
    snap: &Snapshot,
    origin: Origin,
) -> Option<(TcpStream, Lease)> {
    let Some(pool_cfg) = listener.pool.as_deref().and_then(|p| snap.config.pool(p)) else {
        warn!("listener has no pool; closing");
        return None;
    };
    match connect_for(listener, pool_cfg, snap, origin).await {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, side = "backend", "closing client connection: no backend reachable");
            None
        }
    }
}

/// Count a finished connection's bytes (also when it ended early) and log
/// how it ended, with the side at fault. A connection that ended well is
/// logged at info only while access logging is on (`access_log = "off"`
/// turns its line down to debug, as HAProxy logs nothing per connection
/// without `option tcplog`).
fn finish(
    moved: Transferred,
    end: Result<(), copy::Ended>,
    lease: &Lease,
    stats: &ListenerStats,
    started: Instant,
    logged: bool,
) {
    stats.add_bytes(moved.upstream, moved.downstream);
    lease
        .state()
        .stats
        .add_bytes(moved.upstream, moved.downstream);
    let ms = started.elapsed().as_millis() as u64;
    let (up, down) = (moved.upstream, moved.downstream);
    match end {
        Ok(()) if logged => info!(backend = %lease.address, bytes_in = up, bytes_out = down,
            duration_ms = ms, "connection closed"),
        Ok(()) => debug!(backend = %lease.address, bytes_in = up, bytes_out = down,
            duration_ms = ms, "connection closed"),
        Err(e) => match e.side() {
            Some(side) => info!(backend = %lease.address, error = %e, side = side.as_str(),
                bytes_in = up, bytes_out = down, duration_ms = ms, "connection ended with error"),
            None => info!(backend = %lease.address, error = %e, bytes_in = up, bytes_out = down,
                duration_ms = ms, "connection ended with error"),
        },
    }
}
