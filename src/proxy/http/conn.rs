//! One client connection: the seam between the two codecs, then hyper's
//! HTTP/1.1 + HTTP/2 server over the client stream, with vipd's own
//! header-read (slowloris), send and idle keep-alive timeouts, and graceful
//! shutdown.
//!
//! An HTTP/1.1 connection (no `h2` by ALPN) is served first by the
//! pass-through codec ([`super::h1`]) unless the listener's `http1_codec`
//! is `hyper`; when the codec meets a request it does not serve, hyper
//! takes the rest of the connection with the unserved bytes replayed.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection
//! waits for its next request, which would tie the idle timeout to the
//! header timeout. Instead, the stream is wrapped so that the first byte read
//! while no request is in flight starts the header clock, and a watchdog in
//! the connection task closes the connection when a clock runs out.
//!
//! The send clock runs while the client holds a response up: a write to the
//! client's socket has stalled, or (HTTP/2) a response body has handed hyper
//! a frame and hyper has not asked for the next one because the client's
//! flow-control window for that stream is shut.
//! When one write or one response body waits `send_timeout` for the client,
//! the connection is closed, which drops every response body on it and with
//! them their backend connections. A stream starved while another one moves
//! still counts: a client cannot hold backends with a decoy stream.
//!
//! Owed bodies are counted in generations the watchdog advances every half
//! `send_timeout`: a body counted two generations back has waited at least
//! `send_timeout`, so the check costs two atomic adds per response frame and
//! no lock.

use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Version;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::h1::{self, ClientIo};
use super::headers::Peer;
use super::route::Arrival;
use super::service;
use crate::config;
use crate::metrics::{Handshake, ListenerStats};
use crate::proxy::listener::Admission;
use crate::proxy::{HeldSnapshot, SharedSnapshot, Snapshot, SnapshotCache};
use crate::shutdown::Shutdown;

/// What every request of one connection shares.
pub struct Conn {
    /// The client: the TCP peer, or the address its PROXY header names.
    pub peer: Peer,
    /// Whether a PROXY header came first, from whom, and whether it named
    /// the client. Whether forwarding headers are believed is decided from
    /// the sender too, never from the PROXY header's claim alone.
    pub arrival: Arrival,
    /// The listener's name, which keys its routes in the snapshot.
    pub listener: Arc<str>,
    pub snapshot: SharedSnapshot,
    /// The connection's copy of `snapshot`, read per request through
    /// [`Conn::snapshot`].
    held: SnapshotCache,
    /// Whether the client came over TLS.
    pub https: bool,
    /// The TLS server name the client asked for, in the normal form of
    /// [`crate::authority`].
    pub sni: Option<Box<str>>,
    pub shutdown: Shutdown,
    /// Idle timeout of WebSocket tunnels started on this connection.
    pub idle_timeout: Duration,
    /// Longest wait for the client's next piece of a request body.
    pub request_body_timeout: Duration,
    pub state: ConnState,
    /// The listener's counters (requests by status class, latency).
    pub stats: Arc<ListenerStats>,
    /// The connection's slot under the listener's caps; a tunnel started
    /// on the connection keeps it until the tunnel closes.
    pub admission: Arc<Admission>,
}

impl Conn {
    /// The snapshot in service for a request starting now: the one the
    /// previous request used unless a reload has stored another since.
    pub fn snapshot(&self) -> HeldSnapshot {
        self.held.get(&self.snapshot)
    }
}

/// Activity clocks of one connection, in milliseconds since `epoch`.
pub struct ConnState {
    epoch: Instant,
    inflight: AtomicU32,
    requests: AtomicU64,
    /// When the last in-flight request ended (or the connection opened).
    idle_since: AtomicU64,
    /// 1 + when the first byte of the next request head arrived; 0 = none.
    head_since: AtomicU64,
    /// HTTP/2 streams share the connection, so no header clock applies
    /// once the connection speaks HTTP/2.
    h2: AtomicBool,
    /// 1 + when a write to the client began to stall; 0 = not stalled.
    write_stalled: AtomicU64,
    /// The current generation of owed response bodies, 0 to 2 (see the
    /// module doc).
    generation: AtomicU32,
    /// Response bodies that handed hyper a frame and wait to be asked for
    /// the next one, by the generation (mod 3) in which they began to wait.
    owed: [AtomicU32; 3],
}

/// Which clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    Header,
    Idle,
    /// A write to the client has stalled for `send_timeout`.
    Send,
    Busy,
}

/// The watchdog's timeouts of one connection.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
    send: Duration,
}

impl ConnState {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            inflight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            write_stalled: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            owed: Default::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A request head was read.
    pub fn request_started(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// Note the protocol version of a request.
    pub fn saw_version(&self, v: Version) {
        if v == Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    /// A request's response has been written (or abandoned).
    pub fn request_done(&self) {
        if self.inflight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A response body handed hyper a frame and is not at its end: it waits
    /// for the client now. Returns the token to give [`Self::response_pulled`].
    pub fn response_owed(&self) -> u32 {
        let g = self.generation.load(Ordering::Relaxed);
        self.owed[g as usize].fetch_add(1, Ordering::Relaxed);
        g
    }

    /// hyper asked for more from (or dropped) a body that was owed since
    /// generation `g`.
    pub fn response_pulled(&self, g: u32) {
        self.owed[g as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Advance the owed generation (every half `send_timeout`); true if a
    /// body counted two generations back still waits: it has waited for
    /// the client at least `send_timeout`.
    fn send_tick(&self) -> bool {
        let next = (self.generation.load(Ordering::Relaxed) + 1) % 3;
        // The bucket the next generation reuses holds the oldest bodies.
        if self.owed[next as usize].load(Ordering::Relaxed) > 0 {
            return true;
        }
        self.generation.store(next, Ordering::Relaxed);
        false
    }

    /// A write to the client returned: `stalled` if it could not proceed.
    fn wrote(&self, stalled: bool) {
        let since = self.write_stalled.load(Ordering::Relaxed);
        if stalled && since == 0 {
            self.write_stalled
                .store(self.now_ms() + 1, Ordering::Relaxed);
        } else if !stalled && since != 0 {
            self.write_stalled.store(0, Ordering::Relaxed);
        }
    }

    /// Since when a write to the client has been stalled, if one is.
    fn write_stalled_since(&self) -> Option<Instant> {
        let since = self.write_stalled.load(Ordering::Relaxed);
        (since != 0).then(|| self.epoch + Duration::from_millis(since - 1))
    }

    /// Bytes of a request head arrived (the header clock starts).
    pub(super) fn bytes_read(&self) {
        if self.inflight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// When the running clock expires, and which one it is. (The watchdog
    /// also wakes every half `send_timeout` for [`Self::send_tick`], so a
    /// write stall that begins while it sleeps is seen in time.)
    fn deadline(&self, t: Timeouts) -> (Instant, Clock) {
        let (at, clock) = self.request_deadline(t.header, t.idle);
        match self.write_stalled_since() {
            Some(since) if since + t.send < at => (since + t.send, Clock::Send),
            _ => (at, clock),
        }
    }

    fn request_deadline(&self, header: Duration, idle: Duration) -> (Instant, Clock) {
        if self.inflight.load(Ordering::Relaxed) > 0 {
            // Re-check later: a request in flight has its own timeouts.
            return (Instant::now() + header.min(idle), Clock::Busy);
        }
        let ms = Duration::from_millis;
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            return (self.epoch + ms(head - 1) + header, Clock::Header);
        }
        let since = self.epoch + ms(self.idle_since.load(Ordering::Relaxed));
        if self.requests.load(Ordering::Relaxed) == 0 {
            (since + header, Clock::Header)
        } else {
            (since + idle, Clock::Idle)
        }
    }
}

/// The client stream, reporting reads to the connection's clocks.
struct Watched<T> {
    inner: T,
    conn: Arc<Conn>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.state.bytes_read();
        }
        polled
    }
}

impl<T> Watched<T> {
    /// Report whether a write stalled, and pass its result on.
    fn wrote<R>(&self, polled: Poll<R>) -> Poll<R> {
        self.conn.state.wrote(polled.is_pending());
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The HTTP server settings of listener `l`. Built once per listener and
/// configuration ([`super::route::ListenerRoutes::server`]), not per
/// connection.
pub fn server_builder(l: &config::Listener) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        // One send(2) per response instead of writev(2) of head and body:
        // the copy of a small body costs less than the vectored syscall.
        .writev(false)
        // A request head must fit hyper's read buffer, so its cap is the
        // head limit (validation keeps it at hyper's minimum of 8 KiB or
        // more); the buffer grows only on demand.
        .max_buf_size(l.max_header_bytes)
        .max_headers(l.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(l.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// What [`serve`] needs besides the stream.
pub struct Accepted<'a> {
    /// The client (from the PROXY header, if any).
    pub peer: SocketAddr,
    /// Whether a PROXY header named `peer`, and who sent it.
    pub arrival: Arrival,
    pub listener: &'a config::Listener,
    pub snapshot: SharedSnapshot,
    pub shutdown: Shutdown,
    /// The TLS server name, for `https` listeners.
    pub sni: Option<&'a str>,
    /// The listener's counters.
    pub stats: Arc<ListenerStats>,
    /// The connection's slot under the listener's caps.
    pub admission: Arc<Admission>,
}

/// Serve an accepted connection: for `https` listeners, run the TLS
/// handshake first (ALPN may pick HTTP/2; the server also detects the
/// HTTP/2 preface itself), then serve HTTP on the stream.
pub async fn accept(stream: TcpStream, a: Accepted<'_>, snap: &Snapshot) {
    if a.listener.protocol != config::Protocol::Https {
        return serve(stream, a).await;
    }
    let Some(acceptor) = snap.tls.acceptor(&a.listener.name) else {
        warn!("listener has no TLS configuration; closing");
        return;
    };
    let started = Instant::now();
    // Boxed: the TLS stream (1.2 KiB) is moved into `serve` and from there
    // into hyper's connection, and each move leaves its old slot in this
    // task's future; a box makes every slot one pointer, which shrinks the
    // state an idle connection holds by several KiB.
    let tls = match acceptor.accept(stream).await {
        Ok(s) => Box::new(s),
        Err(e) => {
            a.stats
                .record_handshake(Handshake::Failed, started.elapsed());
            debug!(failure = %e, side = "client", "TLS handshake failed");
            return;
        }
    };
    let kind = match tls.get_ref().1.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => Handshake::Resumed,
        _ => Handshake::Full,
    };
    a.stats.record_handshake(kind, started.elapsed());
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_http(
        tls,
        Accepted {
            sni: sni.as_deref(),
            ..a
        },
        h2,
    )
    .await
}

/// Serve HTTP on one client stream until the client leaves, a timeout
/// closes it, or shutdown has drained it.
pub async fn serve<IO: ClientIo>(io: IO, a: Accepted<'_>) {
    serve_http(io, a, false).await
}

/// [`serve`], knowing whether ALPN chose HTTP/2 (then hyper serves it all).
async fn serve_http<IO: ClientIo>(mut io: IO, a: Accepted<'_>, h2: bool) {
    let cfg = a.listener;
    let https = cfg.protocol == config::Protocol::Https;
    let server = a
        .snapshot
        .load()
        .http
        .listener(&cfg.name)
        .map(|r| r.server.clone());
    let server = server.unwrap_or_else(|| Arc::new(server_builder(cfg)));
    let conn = Arc::new(Conn {
        peer: Peer::new(a.peer.ip(), https),
        arrival: a.arrival,
        listener: cfg.name.as_str().into(),
        held: SnapshotCache::new(&a.snapshot),
        snapshot: a.snapshot,
        https,
        // A name the normaliser refuses still takes part in the 421 check
        // (lower-cased), so it cannot switch the check off.
        sni: a.sni.map(|s| {
            crate::authority::server_name(s)
                .map_or_else(|| s.to_ascii_lowercase(), |n| n.into_owned())
                .into_boxed_str()
        }),
        shutdown: a.shutdown.clone(),
        idle_timeout: cfg.idle_timeout,
        request_body_timeout: cfg.request_body_timeout,
        state: ConnState::new(),
        stats: a.stats,
        admission: a.admission,
    });
    let timeouts = Timeouts {
        header: cfg.header_timeout,
        idle: cfg.idle_timeout,
        send: cfg.send_timeout,
    };
    let mut replay = Vec::new();
    if !h2 && cfg.http1_codec == config::Http1Codec::Vipd {
        let limits = h1::Limits {
            opened: conn.state.epoch,
            header: cfg.header_timeout,
            idle: cfg.idle_timeout,
            send: cfg.send_timeout,
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
        };
        match h1::serve(&mut io, &conn, &limits).await {
            h1::Served::Closed => return,
            h1::Served::HandOff(bytes) => replay = bytes,
        }
        // The head hyper reads next began arriving before the hand-off.
        if !replay.is_empty() {
            conn.state.bytes_read();
        }
    }
    // Boxed: the codec's connection (the common case) then does not carry
    // hyper's connection state in its task while it waits.
    let io = h1::Rewind::new(replay, io);
    Box::pin(serve_hyper(io, conn, server, timeouts, a.shutdown)).await
}

/// hyper's server over the rest of the connection, with the watchdog of
/// vipd's header, idle and send clocks.
async fn serve_hyper<IO: ClientIo>(
    io: h1::Rewind<IO>,
    conn: Arc<Conn>,
    server: Arc<auto::Builder<TokioExecutor>>,
    timeouts: Timeouts,
    shutdown: Shutdown,
) {
    let header_timeout = timeouts.header;
    let io = TokioIo::new(Watched {
        inner: io,
        conn: conn.clone(),
    });
    let svc_conn = conn.clone();
    // Boxed: HTTP/2 spawns a task per stream, and moving a small unresumed
    // box is cheaper than moving the whole request future into the task.
    let svc = service_fn(move |req| Box::pin(service::handle(svc_conn.clone(), req)));
    let mut served = pin!(server.serve_connection_with_upgrades(io, svc));
    let mut graceful = false;
    let mut hard_stop: Option<Instant> = None;
    let tick = (timeouts.send / 2).max(Duration::from_millis(1));
    let mut next_tick = Instant::now() + tick;
    loop {
        let (mut deadline, clock) = conn.state.deadline(timeouts);
        if let Some(h) = hard_stop {
            deadline = deadline.min(h);
        }
        deadline = deadline.min(next_tick);
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    log_connection_error(&*e);
                }
                return;
            }
            _ = shutdown.triggered(), if !graceful => {
                served.as_mut().graceful_shutdown();
                graceful = true;
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if hard_stop.is_some_and(|h| now >= h) {
                    debug!("connection did not close after a graceful shutdown; closing");
                    return;
                }
                if now >= next_tick {
                    next_tick = now + tick;
                    if conn.state.send_tick() {
                        warn!(side = "client", timeout_ms = timeouts.send.as_millis() as u64,
                            "a response waited longer than send_timeout for the client to take it; closing");
                        return;
                    }
                }
                let (current, clock_now) = conn.state.deadline(timeouts);
                if current > now || clock_now != clock {
                    continue;
                }
                match clock {
                    Clock::Header => {
                        warn!(side = "client", timeout_ms = header_timeout.as_millis() as u64,
                            "no complete request header within header_timeout; closing");
                        return;
                    }
                    Clock::Send => {
                        warn!(side = "client", timeout_ms = timeouts.send.as_millis() as u64,
                            "a write to the client stalled longer than send_timeout; closing");
                        return;
                    }
                    Clock::Idle if !graceful => {
                        debug!("idle keep-alive connection timed out; closing");
                        served.as_mut().graceful_shutdown();
                        graceful = true;
                        hard_stop = Some(now + header_timeout);
                    }
                    Clock::Idle | Clock::Busy => {}
                }
            }
        }
    }
}

fn log_connection_error(e: &(dyn std::error::Error + 'static)) {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => {
            warn!(side = "client", error = %h, "request head too large; answered 431 and closed");
        }
        Some(h) if h.is_parse() => {
            warn!(side = "client", error = %h, "malformed request; answered 400 and closed");
        }
        _ => debug!(side = "client", error = %e, "connection ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_owed_across_two_ticks_trips_the_next_and_one_pulled_in_time_never_does() {
        let s = ConnState::new();
        let starved = s.response_owed();
        assert!(!s.send_tick());
        // Another body moves all the time; it never trips anything.
        for _ in 0..10 {
            let g = s.response_owed();
            s.response_pulled(g);
        }
        assert!(!s.send_tick());
        assert!(s.send_tick(), "owed for two whole generations");
        s.response_pulled(starved);
        for _ in 0..6 {
            let g = s.response_owed();
            assert!(!s.send_tick());
            s.response_pulled(g);
        }
    }
}
