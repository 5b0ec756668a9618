//! Binding listeners (socket2) and the accept loop shared by every protocol.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::limits::{Cap, ClientLimiter, ClientPermit};
use super::{SharedSnapshot, Snapshot, proxy_protocol};
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
/// IPv6-only for IPv6 addresses, TCP_NODELAY (accepted sockets inherit it
/// on Linux: no setsockopt(2) per connection), and the configured backlog.
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
        .set_nodelay(true)
        .map_err(|e| err("set TCP_NODELAY on", e))?;
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
    pub global_limit: Arc<Cap>,
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

/// The listener's caps, kept in step with reloads: `max_connections` (its
/// own and the global one) and the per-client limits of the configuration
/// in service apply to every connection open, tunnels included, not only
/// to those accepted after.
struct Caps {
    limit: Cap,
    per_client: Option<Arc<ClientLimiter>>,
    /// The listener takes PROXY headers: the per-client limits count the
    /// client the header names, once it is read, not the balancer.
    behind_proxy: bool,
    /// The snapshot the caps were last read from.
    seen: Option<Arc<Snapshot>>,
}

impl Caps {
    /// Read the caps of listener `name` (and the global cap) from the
    /// configuration in service, if it changed since the last call.
    fn follow(&mut self, ctx: &Context) {
        let snap = ctx.snapshot.load();
        if self.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &snap)) {
            return;
        }
        let snap = Arc::clone(&snap);
        // A listener the new configuration drops keeps its caps until its
        // accept loop is stopped.
        let Some(cfg) = snap.config.listener(&ctx.name) else {
            return;
        };
        ctx.global_limit.set_max(snap.config.global.max_connections);
        self.limit.set_max(cfg.max_connections);
        self.behind_proxy = cfg.proxy_protocol;
        let (active, rate) = (
            cfg.max_connections_per_client,
            cfg.connection_rate_per_client,
        );
        match &self.per_client {
            Some(l) => l.set_limits(active, rate),
            // Turned on by a reload: connections from now on are counted.
            None => self.per_client = ClientLimiter::new(active, rate),
        }
        self.seen = Some(snap);
    }
}

/// Accept connections until shutdown, handing each to its own task.
///
/// The loop waits for a listener slot before accepting and for a global
/// slot right after, so a full proxy leaves new connections in the kernel
/// backlog instead of accepting and dropping them. Running out of file descriptors
/// backs off instead of spinning. A reload's new caps apply from the next
/// accept on, counting the connections already open.
pub async fn run(listener: TcpListener, ctx: Context) {
    // One reference count per connection instead of one per field.
    let ctx = Arc::new(ctx);
    let mut caps = Caps {
        limit: Cap::new(0),
        per_client: None,
        behind_proxy: false,
        seen: None,
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        caps.follow(&ctx);
        // The listener's own slot is taken before accepting; the global
        // one only after, so that listeners waiting for a connection do
        // not sit on global slots (with a global cap below the number of
        // listeners, an idle listener would starve a busy one).
        let local = tokio::select! {
            _ = ctx.shutdown.triggered() => break,
            p = caps.limit.acquire() => p,
        };
        let Some(local) = local else { break };
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
        // A full proxy holds this one connection here until a slot frees;
        // the others wait in the kernel backlog.
        let global = tokio::select! {
            _ = ctx.shutdown.triggered() => break,
            p = ctx.global_limit.acquire() => p,
        };
        let Some(global) = global else { break };
        caps.follow(&ctx);
        // Behind a balancer, the client is known only once its PROXY
        // header is read: `handle` admits it then.
        let deferred = caps.per_client.clone().filter(|_| caps.behind_proxy);
        let limiter = caps.per_client.as_ref().filter(|_| !caps.behind_proxy);
        let client_permit = match limiter.map(|l| l.admit(peer.ip())) {
            Some(Err(why)) => {
                info!(listener = %ctx.name, client = %peer, reason = %why, "connection refused: per-client limit");
                continue;
            }
            Some(Ok(p)) => Some(p),
            None => None,
        };
        let ctx2 = Arc::clone(&ctx);
        let span = info_span!("conn", listener = %ctx.name, client = %peer);
        let admission = Admission {
            _global: global,
            _listener: local,
            _client: client_permit,
            _active: ctx.stats.open(),
        };
        ctx.shutdown.spawn(
            async move {
                handle(stream, peer, ctx2, admission, deferred).await;
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

/// Serve one accepted connection. `deferred` is the per-client limiter of
/// a PROXY protocol listener, applied to the client its header names.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    mut admission: Admission,
    deferred: Option<Arc<ClientLimiter>>,
) {
    let snap = ctx.snapshot.load_full();
    let Some(cfg) = snap.config.listener(&ctx.name) else {
        warn!("listener removed from the configuration; closing connection");
        return;
    };
    // The address the client reached is read (getsockname(2)) only for
    // a PROXY header to the backend, the one place it goes; otherwise the
    // bind address stands in.
    let sends_proxy = cfg
        .pool
        .as_deref()
        .and_then(|p| snap.config.pool(p))
        .is_some_and(|p| p.send_proxy);
    let local = match sends_proxy {
        true => stream.local_addr().unwrap_or(cfg.bind),
        false => cfg.bind,
    };
    let mut origin = super::l4::Origin {
        client: peer,
        local,
    };
    let mut arrival = super::http::Arrival::Direct;
    if cfg.proxy_protocol {
        match read_proxy_header(&mut stream, peer, cfg).await {
            Some(header) => {
                arrival = match header.source {
                    Some(_) => super::http::Arrival::Proxied(peer.ip()),
                    None => super::http::Arrival::Unnamed,
                };
                origin.client = header.source.unwrap_or(peer);
                origin.local = header.destination.unwrap_or(local);
            }
            None => return,
        }
    }
    if let Some(limiter) = deferred {
        match limiter.admit(origin.client.ip()) {
            Ok(permit) => admission._client = Some(permit),
            Err(why) => {
                info!(client = %origin.client, reason = %why, "connection refused: per-client limit");
                return;
            }
        }
    }
    // A client named by a PROXY header gets its own span; a direct one is
    // already in the connection's.
    let span = if origin.client == peer {
        tracing::Span::none()
    } else {
        info_span!("origin", client = %origin.client)
    };
    // The TLS and HTTP paths are boxed: an L4 connection's task then has
    // the size of the L4 path alone (it is most of what an idle one costs).
    match cfg.protocol {
        config::Protocol::Tcp => {
            super::l4::forward(stream, origin, cfg, &snap, &ctx.stats)
                .instrument(span)
                .await
        }
        config::Protocol::Tls => {
            Box::pin(super::terminate::forward(
                stream, origin, cfg, &snap, &ctx.stats,
            ))
            .instrument(span)
            .await
        }
        config::Protocol::Http | config::Protocol::Https => {
            let accepted = super::http::Accepted {
                peer: origin.client,
                arrival,
                listener: cfg,
                snapshot: ctx.snapshot.clone(),
                shutdown: ctx.shutdown.clone(),
                sni: None,
                stats: ctx.stats.clone(),
                admission: Arc::new(admission),
            };
            Box::pin(super::http::accept(stream, accepted, &snap))
                .instrument(span)
                .await
        }
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
