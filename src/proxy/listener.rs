//! Binding listeners (socket2) and the accept loop shared by every protocol.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::limits::{ClientLimiter, ClientPermit};
use super::{SharedSnapshot, proxy_protocol};
use crate::config;
use crate::metrics::{ActiveGuard, ListenerStats};
use crate::shutdown::Shutdown;

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {name:?}: cannot {step} {addr}: {source}{hint}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    pub step: &'static str,
    #[source]
    pub source: io::Error,
    pub hint: &'static str,
}

/// Bind a listener's socket as configured: SO_REUSEADDR, optional
/// SO_REUSEPORT and IP_FREEBIND (for a VIP that is not on this host yet),
/// IPv6-only for IPv6 addresses, and the configured backlog.
pub fn bind(cfg: &config::Listener) -> Result<TcpListener, BindError> {
    let err = |step, source: io::Error| {
        let hint = match source.raw_os_error() {
            Some(libc::EADDRNOTAVAIL) => {
                " (the address is not on this host; set `freebind = true` to bind a VIP before it arrives)"
            }
            Some(libc::EADDRINUSE) => " (another process or listener uses this address and port)",
            Some(libc::EACCES) => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
            _ => "",
        };
        BindError {
            name: cfg.name.clone(),
            addr: cfg.bind,
            step,
            source,
            hint,
        }
    };
    let addr = cfg.bind;
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )
    .map_err(|e| err("create a socket for", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| err("set SO_REUSEADDR on", e))?;
    if cfg.reuseport {
        socket
            .set_reuse_port(true)
            .map_err(|e| err("set SO_REUSEPORT on", e))?;
    }
    if addr.is_ipv6() {
        socket
            .set_only_v6(true)
            .map_err(|e| err("set IPV6_V6ONLY on", e))?;
    }
    if cfg.freebind {
        if addr.is_ipv6() {
            socket
                .set_freebind_ipv6(true)
                .map_err(|e| err("set IPV6_FREEBIND on", e))?;
        } else {
            socket
                .set_freebind(true)
                .map_err(|e| err("set IP_FREEBIND on", e))?;
        }
    }
    socket
        .set_nonblocking(true)
        .map_err(|e| err("make non-blocking", e))?;
    socket.bind(&addr.into()).map_err(|e| err("bind", e))?;
    let backlog = i32::try_from(cfg.backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(|e| err("listen on", e))?;
    TcpListener::from_std(socket.into()).map_err(|e| err("register", e))
}

/// What an accept loop needs besides its socket.
#[derive(Clone)]
pub struct Context {
    /// The listener's name, which keys its config in the snapshot.
    pub name: Arc<str>,
    pub snapshot: SharedSnapshot,
    /// Cap over all listeners.
    pub global_limit: Arc<Semaphore>,
    pub shutdown: Shutdown,
    /// This listener's counters, resolved once at bind.
    pub stats: Arc<ListenerStats>,
}

/// The slot one accepted connection takes: its global, listener and
/// per-client permits and its place in the active gauge. Whatever serves
/// the connection holds it, including a tunnel that outlives the HTTP
/// exchange that upgraded it, so the slot frees only when the client's
/// connection really closes.
pub struct Admission {
    _global: OwnedSemaphorePermit,
    _listener: OwnedSemaphorePermit,
    _client: Option<ClientPermit>,
    _active: ActiveGuard,
}

/// Accept connections until shutdown, handing each to its own task.
///
/// The loop waits for a connection slot (global and per-listener caps) before
/// accepting, so a full proxy leaves new connections in the kernel backlog
/// instead of accepting and dropping them. Running out of file descriptors
/// backs off instead of spinning.
pub async fn run(listener: TcpListener, ctx: Context) {
    // Limits are read once: changing them takes a new listener name or a restart.
    let (limit, per_client) = {
        let snap = ctx.snapshot.load();
        let cfg = snap.config.listeners.iter().find(|l| *l.name == *ctx.name);
        (
            Arc::new(Semaphore::new(cfg.map_or(10_000, |l| l.max_connections))),
            cfg.and_then(|l| {
                ClientLimiter::new(l.max_connections_per_client, l.connection_rate_per_client)
            }),
        )
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        let permits = tokio::select! {
            _ = ctx.shutdown.triggered() => break,
            p = async {
                let g = ctx.global_limit.clone().acquire_owned().await;
                let l = limit.clone().acquire_owned().await;
                (g, l)
            } => p,
        };
        let (Ok(global), Ok(local)) = permits else {
            break;
        };
        let accepted = tokio::select! {
            _ = ctx.shutdown.triggered() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) if is_resource_exhaustion(&e) => {
                error!(listener = %ctx.name, error = %e, backoff_ms = backoff.as_millis() as u64,
                    "accept failed: out of resources; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                debug!(listener = %ctx.name, error = %e, "accept failed");
                continue;
            }
        };
        let client_permit = match per_client.as_ref().map(|l| l.admit(peer.ip())) {
            Some(Err(why)) => {
                info!(listener = %ctx.name, client = %peer, reason = %why, "connection refused: per-client limit");
                continue;
            }
            Some(Ok(p)) => Some(p),
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let ctx2 = ctx.clone();
        let span = info_span!("conn", listener = %ctx.name, client = %peer);
        let admission = Arc::new(Admission {
            _global: global,
            _listener: local,
            _client: client_permit,
            _active: ctx.stats.open(),
        });
        ctx.shutdown.spawn(
            async move {
                handle(stream, peer, ctx2, admission).await;
            }
            .instrument(span),
        );
    }
    debug!(listener = %ctx.name, "stopped accepting");
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, ctx: Context, admission: Arc<Admission>) {
    let snap = ctx.snapshot.load_full();
    let Some(cfg) = snap.config.listeners.iter().find(|l| *l.name == *ctx.name) else {
        warn!("listener removed from the configuration; closing connection");
        return;
    };
    let local = stream.local_addr().unwrap_or(cfg.bind);
    let mut origin = super::l4::Origin {
        client: peer,
        local,
    };
    if cfg.proxy_protocol {
        match read_proxy_header(&mut stream, peer, cfg).await {
            Some(header) => {
                origin.client = header.source.unwrap_or(peer);
                origin.local = header.destination.unwrap_or(local);
            }
            None => return,
        }
    }
    let span = info_span!("origin", client = %origin.client);
    let serve = async {
        match cfg.protocol {
            config::Protocol::Tcp => {
                super::l4::forward(stream, origin, cfg, &snap, &ctx.stats).await
            }
            config::Protocol::Tls => {
                super::terminate::forward(stream, origin, cfg, &snap, &ctx.stats).await
            }
            config::Protocol::Http | config::Protocol::Https => {
                let accepted = super::http::Accepted {
                    peer: origin.client,
                    proxied_by: cfg.proxy_protocol.then_some(peer.ip()),
                    listener: cfg,
                    snapshot: ctx.snapshot.clone(),
                    shutdown: ctx.shutdown.clone(),
                    sni: None,
                    stats: ctx.stats.clone(),
                    admission,
                };
                super::http::accept(stream, accepted, &snap).await
            }
        }
    };
    if origin.client == peer {
        serve.await
    } else {
        serve.instrument(span).await
    }
}

/// Read the PROXY header a `proxy_protocol` listener requires, within the
/// listener's `header_timeout`. `None` (connection to be closed, nothing
/// forwarded) when the peer is not a trusted proxy or the header is missing,
/// late or malformed. An empty `trusted_proxies` trusts no one (`vipd
/// check` refuses that combination, so it cannot be configured).
async fn read_proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    cfg: &config::Listener,
) -> Option<proxy_protocol::ProxyHeader> {
    let trusted = cfg.trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
    if !trusted {
        warn!(peer = %peer, "closing connection: PROXY protocol peer is not in trusted_proxies");
        return None;
    }
    match tokio::time::timeout(cfg.header_timeout, proxy_protocol::read_header(stream)).await {
        Ok(Ok(header)) => Some(header),
        Ok(Err(e)) => {
            warn!(error = %e, side = "client", "closing connection: invalid PROXY protocol header");
            None
        }
        Err(_) => {
            warn!(
                timeout_ms = cfg.header_timeout.as_millis() as u64,
                side = "client",
                "closing connection: no PROXY protocol header in time"
            );
            None
        }
    }
}
