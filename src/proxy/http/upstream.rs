//! Connections to backends: one connection pool per vipd pool, shared by
//! every client connection and thread, kept across reloads while the
//! pool's connection settings stay the same.
//!
//! The pass-through HTTP/1.1 codec ([`super::h1`]) takes plain TCP
//! connections ([`Upstream::checkout_raw`]) from idle lists sharded by
//! worker thread: each worker takes and returns connections under a lock
//! no other worker touches (uncontended), so the hot path shares no cache
//! line between cores, while the sweeper still closes what expires.
//!
//! HTTP/1.1 backends get a pool of idle keep-alive connections per backend
//! address (newest first, at most `max_idle`, closed after `idle_timeout`);
//! a connection goes back to it when its response body has been read to the
//! end. HTTP/2 backends get one shared connection per backend that carries
//! every request. Connecting happens before a request is handed over, so a
//! backend that cannot be reached gives the request back and it can go to
//! another backend, body and all.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use fnv::FnvBuildHasher;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::debug;

use super::body::{BodyError, ClientFault, Phase, Progress, RequestBody};
use crate::config;

type HashMap<K, V> = std::collections::HashMap<K, V, FnvBuildHasher>;

/// How long a pooled HTTP/1.1 connection may take to become ready for its
/// next request after its last response ended (normally no time at all).
const READY_WAIT: Duration = Duration::from_millis(100);

/// HTTP/2 backends: the most response data one stream may have in flight
/// unread (what a client that does not read its response holds), and far
/// more for the connection, which every client shares: with hyper's
/// defaults (2 MiB and 5 MiB) three clients that did not read used up the
/// connection's window and stalled every other response on it. Now it
/// takes 8192 such streams at once, each still cut off by `send_timeout`.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// The settings that shape a pool's connections; a reload that keeps them
/// keeps the pool's open connections.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    http2: bool,
}

impl Settings {
    fn of(p: &config::Pool) -> Self {
        Self {
            connect_timeout: p.connect_timeout,
            idle_timeout: p.idle_timeout,
            max_idle: p.max_idle,
            http2: p.http2,
        }
    }
}

/// The backend connections of one pool.
pub struct Upstream {
    conns: Arc<Conns>,
    /// Time allowed from the moment the request was fully sent until the
    /// response head arrives, and between two pieces of the response body.
    pub response_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.conns.settings)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

/// A request that could not be forwarded: why, and the request itself when
/// it was never handed to a backend (so it may go to another one).
pub struct Failed {
    pub error: ForwardError,
    pub request: Option<Request<RequestBody>>,
}

impl Upstream {
    fn new(p: &config::Pool, reuse: Option<&Upstream>) -> Self {
        let settings = Settings::of(p);
        let conns = match reuse {
            Some(old) if old.conns.settings == settings => old.conns.clone(),
            _ => Arc::new(Conns::new(settings)),
        };
        Self {
            conns,
            response_timeout: p.response_timeout,
        }
    }

    /// Whether requests go to backends over HTTP/2.
    pub fn http2(&self) -> bool {
        self.conns.settings.http2
    }

    /// The request target for backend `addr`: origin-form for HTTP/1.1,
    /// absolute for HTTP/2, with `host` (the authority the request was
    /// routed by, also its Host) as `:authority`, so that the backend reads
    /// one host whichever it looks at (RFC 9113 8.3.1). Without one, the
    /// backend's address.
    pub fn target(&self, addr: SocketAddr, host: Option<&Authority>, path: PathAndQuery) -> Uri {
        if !self.http2() {
            return Uri::from(path);
        }
        let authority = host.cloned().unwrap_or_else(|| {
            Authority::try_from(addr.to_string()).expect("a socket address is an authority")
        });
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).expect("scheme, authority and path make a URI")
    }

    /// A plain TCP connection to `addr` for the pass-through codec: an idle
    /// one of this worker's (true: reused, so it may turn out closed), or a
    /// new one within `connect_timeout`.
    pub async fn checkout_raw(&self, addr: SocketAddr) -> Result<(TcpStream, bool), ForwardError> {
        if let Some(s) = self.conns.take_raw(addr) {
            return Ok((s, true));
        }
        let io = self.conns.connect(addr).await?;
        Ok((io.into_inner(), false))
    }

    /// Give back a connection whose response was read in full, exactly to
    /// its end, after a request sent in full.
    pub fn release_raw(&self, addr: SocketAddr, stream: TcpStream) {
        self.conns.put_raw(addr, stream);
    }

    /// Send `req` to backend `addr` over a pooled or new connection and wait
    /// for the response head. With the response comes the connection to give
    /// back (HTTP/1.1) once the response body has been read to its end.
    ///
    /// The head is due `response_timeout` after the request was fully sent
    /// (or after the backend stopped taking the body); time the client takes
    /// to upload is not counted (the body has its own deadline).
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Reusable>), Failed> {
        loop {
            let checkout = match self.conns.checkout(addr).await {
                Ok(c) => c,
                Err(error) => {
                    return Err(Failed {
                        error,
                        request: Some(req),
                    });
                }
            };
            let Checkout { mut sender, reused } = checkout;
            let progress = req.body().progress();
            let sent = head_in_time(self.response_timeout, progress.as_deref(), sender.send(req));
            let sent = sent.await;
            let mut e = match sent {
                Ok(Ok(resp)) => {
                    let give_back = match sender {
                        Sender::H1(conn) => Some(Reusable {
                            conn,
                            progress,
                            addr,
                            conns: Arc::downgrade(&self.conns),
                        }),
                        Sender::H2(_) => None,
                    };
                    return Ok((resp, give_back));
                }
                Ok(Err(e)) => e,
                Err(Late::Backend) => {
                    let timeout = self.response_timeout;
                    return Err(Failed {
                        error: ForwardError::ResponseTimeout { addr, timeout },
                        request: None,
                    });
                }
                Err(Late::Client(fault)) => {
                    return Err(Failed {
                        error: fault.into(),
                        request: None,
                    });
                }
            };
            match e.take_message() {
                // A pooled connection the backend had closed: the request
                // was never written, so send it again.
                Some(back) if reused => {
                    debug!(backend = %addr, error = %e.error(), "pooled connection was closed; retrying");
                    req = back;
                }
                request => {
                    let error = ForwardError::classify(e.error(), addr);
                    // An HTTP/2 backend stream reset because the body failed
                    // does not carry the body's error: the client's fault
                    // still is the client's.
                    let phase = progress.as_ref().map(|p| p.phase().0);
                    let error = match (phase, error) {
                        (Some(Phase::Failed(fault)), e) if e.side() == "backend" => fault.into(),
                        // The backend dropped the connection mid-upload: it
                        // may be refusing that upload (a 413 lost to the
                        // reset), which any client can provoke.
                        (
                            Some(Phase::Sending | Phase::WaitingForClient),
                            ForwardError::Backend { addr, reason },
                        ) => ForwardError::UploadAborted { addr, reason },
                        (_, e) => e,
                    };
                    return Err(Failed { error, request });
                }
            }
        }
    }
}

/// Why no response head came in time.
enum Late {
    /// `response_timeout` passed after the request was fully sent, or
    /// while the backend did not take the body.
    Backend,
    /// The client broke the body and the backend connection did not (yet)
    /// report it.
    Client(ClientFault),
}

/// Wait for `exchange` (the response head) with the head deadline of
/// `progress`: none while the backend waits on the client, `timeout` after
/// the body was fully sent, or after the backend last took a piece of it.
/// Without a body to track, the head is due `timeout` after sending.
async fn head_in_time<F: std::future::Future>(
    timeout: Duration,
    progress: Option<&Progress>,
    exchange: F,
) -> Result<F::Output, Late> {
    let Some(progress) = progress else {
        return tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Late::Backend);
    };
    let started = Instant::now();
    let mut exchange = std::pin::pin!(exchange);
    loop {
        let (phase, since) = progress.phase();
        // A phase entered later than now has its deadline at least
        // `timeout` away, so looking again after `timeout` is soon enough.
        let wake = match phase {
            Phase::Sending | Phase::Done => since.max(started) + timeout,
            Phase::WaitingForClient => Instant::now() + timeout,
            Phase::Failed(fault) => return Err(Late::Client(fault)),
        };
        tokio::select! {
            out = exchange.as_mut() => return Ok(out),
            () = tokio::time::sleep_until(wake) => {}
        }
        let (now_phase, now_since) = progress.phase();
        if now_phase == phase && now_since == since && phase != Phase::WaitingForClient {
            return Err(Late::Backend);
        }
    }
}

/// A connection ready to carry one request.
struct Checkout {
    sender: Sender,
    /// Whether it came from the pool (and may have been closed meanwhile).
    reused: bool,
}

enum Sender {
    H1(H1),
    H2(http2::SendRequest<RequestBody>),
}

/// An HTTP/1.1 backend connection: its sender, and the task that drives it,
/// to close the connection when it must not live on (hyper would otherwise
/// go on writing a request body to a backend that has stopped reading).
struct H1 {
    sender: http1::SendRequest<RequestBody>,
    task: AbortHandle,
}

type TrySendError = hyper::client::conn::TrySendError<Request<RequestBody>>;

impl Sender {
    async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError> {
        match self {
            Sender::H1(c) => c.sender.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// An HTTP/1.1 connection that carried a response: once the response body
/// has been read to its end it goes back to its pool ([`Self::release`]),
/// otherwise it is closed ([`Self::close`]).
pub struct Reusable {
    conn: H1,
    /// The request body's progress (None: the request had no body).
    progress: Option<Arc<Progress>>,
    addr: SocketAddr,
    conns: Weak<Conns>,
}

impl Reusable {
    /// Put the connection back in its pool: the response was read in full.
    /// If the backend answered before it had taken the whole request body,
    /// close it instead: hyper would go on writing the rest of the upload
    /// to a backend that has answered and may never read again, holding
    /// the connection and the client's body without a deadline.
    pub fn release(self) {
        let sent = self
            .progress
            .as_ref()
            .is_none_or(|p| p.phase().0 == Phase::Done);
        match self.conns.upgrade() {
            Some(conns) if sent => conns.put_idle(self.addr, self.conn),
            _ => {
                if !sent {
                    debug!(backend = %self.addr, "backend answered before taking the whole request body; closing its connection");
                }
                self.close();
            }
        }
    }

    /// Close the connection now, whatever it is doing (a response body cut
    /// off, or an upload the backend no longer takes).
    pub fn close(self) {
        self.conn.task.abort();
    }
}

/// An idle HTTP/1.1 connection.
struct Idle {
    conn: H1,
    since: Instant,
}

/// Shards of the raw idle lists: more than the workers of most hosts.
const RAW_SHARDS: usize = 16;

/// The shard of the calling worker thread.
fn raw_shard() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % RAW_SHARDS;
    }
    SHARD.with(|s| *s)
}

/// An idle plain TCP connection of the pass-through codec.
struct RawIdle {
    stream: TcpStream,
    since: Instant,
}

type RawLists = Mutex<HashMap<SocketAddr, Vec<RawIdle>>>;

/// The connections of one pool, by backend address.
struct Conns {
    settings: Settings,
    /// Pass-through codec: idle connections, oldest first, per worker.
    raw: [RawLists; RAW_SHARDS],
    /// HTTP/1.1: idle connections, oldest first.
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    /// HTTP/2: the shared connection of each backend.
    shared: Mutex<HashMap<SocketAddr, http2::SendRequest<RequestBody>>>,
    /// Whether the task that closes expired idle connections runs.
    sweeping: std::sync::atomic::AtomicBool,
}

impl Conns {
    fn new(settings: Settings) -> Self {
        Self {
            settings,
            raw: std::array::from_fn(|_| Mutex::default()),
            idle: Mutex::default(),
            shared: Mutex::default(),
            sweeping: false.into(),
        }
    }

    async fn checkout(self: &Arc<Self>, addr: SocketAddr) -> Result<Checkout, ForwardError> {
        if self.settings.http2 {
            return self.checkout_h2(addr).await;
        }
        while let Some(mut conn) = self.take_idle(addr) {
            let s = &mut conn.sender;
            let ready = s.is_ready()
                || (!s.is_closed()
                    && matches!(
                        tokio::time::timeout(READY_WAIT, s.ready()).await,
                        Ok(Ok(()))
                    ));
            if ready {
                return Ok(Checkout {
                    sender: Sender::H1(conn),
                    reused: true,
                });
            }
            conn.task.abort();
        }
        let io = self.connect(addr).await?;
        let (sender, conn) = http1::Builder::new()
            // One send(2) per request (head and body copied together)
            // instead of writev(2), as haproxy does.
            .writev(false)
            .handshake(io)
            .await
            .map_err(handshake_failed(addr))?;
        let task = drive(addr, conn.with_upgrades());
        Ok(Checkout {
            sender: Sender::H1(H1 { sender, task }),
            reused: false,
        })
    }

    async fn checkout_h2(&self, addr: SocketAddr) -> Result<Checkout, ForwardError> {
        let shared = self.lock_shared().get(&addr).cloned();
        if let Some(sender) = shared.filter(|s| s.is_ready()) {
            return Ok(Checkout {
                sender: Sender::H2(sender),
                reused: true,
            });
        }
        let io = self.connect(addr).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .handshake(io)
            .await
            .map_err(handshake_failed(addr))?;
        drive(addr, conn);
        self.lock_shared().insert(addr, sender.clone());
        Ok(Checkout {
            sender: Sender::H2(sender),
            reused: false,
        })
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, ForwardError> {
        let timeout = self.settings.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ForwardError::Connect {
                    addr,
                    reason: e.to_string(),
                });
            }
            Err(_) => return Err(ForwardError::ConnectTimeout { addr }),
        };
        // Small requests and responses go out at once.
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    /// The newest idle connection to `addr` that has not expired.
    fn take_idle(&self, addr: SocketAddr) -> Option<H1> {
        let mut idle = self.lock_idle();
        let list = idle.get_mut(&addr)?;
        let newest = list.pop()?;
        if newest.since.elapsed() >= self.settings.idle_timeout {
            // The newest expired, so have all the others.
            list.clear();
            return None;
        }
        Some(newest.conn)
    }

    fn put_idle(self: &Arc<Self>, addr: SocketAddr, conn: H1) {
        if conn.sender.is_closed() || self.settings.max_idle == 0 {
            return;
        }
        let mut idle = self.lock_idle();
        let list = idle.entry(addr).or_default();
        if list.len() >= self.settings.max_idle {
            // Keep the newest; the oldest closes.
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        self.start_sweeping();
    }

    /// Close idle connections once they pass `idle_timeout`, even if no
    /// request comes to the pool again. One task per pool, started by the
    /// first connection put back; it ends with the pool.
    fn start_sweeping(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = (self.settings.idle_timeout / 2).max(Duration::from_millis(500));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(conns) = weak.upgrade() else { return };
                let limit = conns.settings.idle_timeout;
                conns.lock_idle().retain(|_, list| {
                    list.retain(|i| i.since.elapsed() < limit && !i.conn.sender.is_closed());
                    !list.is_empty()
                });
                for shard in &conns.raw {
                    lock(shard).retain(|_, list| {
                        list.retain(|i| i.since.elapsed() < limit);
                        !list.is_empty()
                    });
                }
            }
        });
    }

    /// The newest live idle raw connection to `addr` of this worker.
    fn take_raw(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut lists = lock(&self.raw[raw_shard()]);
        let list = lists.get_mut(&addr)?;
        while let Some(newest) = list.pop() {
            if newest.since.elapsed() >= self.settings.idle_timeout {
                // The newest expired, so have all the others.
                list.clear();
                return None;
            }
            // Closed by the backend (or it sent something unasked): gone.
            let mut probe = [0u8; 1];
            match newest.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(newest.stream),
                _ => continue,
            }
        }
        None
    }

    fn put_raw(self: &Arc<Self>, addr: SocketAddr, stream: TcpStream) {
        if self.settings.max_idle == 0 {
            return;
        }
        let mut lists = lock(&self.raw[raw_shard()]);
        let list = lists.entry(addr).or_default();
        if list.len() >= self.settings.max_idle {
            list.remove(0);
        }
        list.push(RawIdle {
            stream,
            since: Instant::now(),
        });
        drop(lists);
        self.start_sweeping();
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_shared(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, http2::SendRequest<RequestBody>>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handshake that fails on a new connection counts as failing to connect:
/// the request was not handed over.
fn handshake_failed(addr: SocketAddr) -> impl FnOnce(hyper::Error) -> ForwardError {
    move |e| ForwardError::Connect {
        addr,
        reason: e.to_string(),
    }
}

/// Run a backend connection (hyper's connection future) in its own task;
/// aborting the task closes the connection.
fn drive<F>(addr: SocketAddr, conn: F) -> AbortHandle
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(backend = %addr, error = %e, "backend connection ended with an error");
        }
    })
    .abort_handle()
}

/// The connection pools of every pool, by pool name.
#[derive(Debug, Default)]
pub struct Upstreams {
    by_pool: HashMap<String, Arc<Upstream>>,
}

impl Upstreams {
    /// Build the connections of each pool, reusing `previous` pools (and
    /// their open connections) whose settings did not change.
    pub fn build(config: &config::Config, previous: Option<&Upstreams>) -> Self {
        let by_pool = config
            .pools
            .iter()
            .map(|p| {
                let old = previous.and_then(|u| u.get(&p.name));
                (
                    p.name.clone(),
                    Arc::new(Upstream::new(p, old.map(|o| &**o))),
                )
            })
            .collect();
        Self { by_pool }
    }

    /// The connections of the pool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_pool.get(name)
    }
}

impl From<ClientFault> for ForwardError {
    fn from(f: ClientFault) -> Self {
        match f {
            ClientFault::TooLarge { limit } => Self::BodyTooLarge { limit },
            ClientFault::Timeout { timeout } => Self::ClientBodyTimeout { timeout },
            ClientFault::Failed => Self::ClientBody("the client's body ended in an error".into()),
        }
    }
}

/// Why a request could not be forwarded, with the side at fault.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request body grew past the vhost's `max_body_size` (client).
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// Reading the request body from the client failed (client).
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    /// The client sent no request body data for `request_body_timeout`
    /// (client).
    #[error("no request body data from the client within {timeout:?}")]
    ClientBodyTimeout { timeout: Duration },
    /// The backend did not accept the connection in time (backend).
    #[error("backend {addr}: connect timed out")]
    ConnectTimeout { addr: SocketAddr },
    /// The backend refused the connection (backend).
    #[error("backend {addr}: connect failed: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// No response head within the pool's `response_timeout` (backend).
    #[error("backend {addr}: no response within {timeout:?}")]
    ResponseTimeout { addr: SocketAddr, timeout: Duration },
    /// The backend reset, closed, or sent something that is not HTTP (backend).
    #[error("backend {addr}: {reason}")]
    Backend { addr: SocketAddr, reason: String },
    /// The backend closed or reset the connection before it had taken the
    /// whole request body (backend, but no passive check failure: a backend
    /// refusing an upload, as nginx over `client_max_body_size` answers 413
    /// and closes, loses its answer to the reset, and any client could
    /// provoke that at will).
    #[error("backend {addr} dropped the connection during the upload: {reason}")]
    UploadAborted { addr: SocketAddr, reason: String },
}

impl ForwardError {
    /// Classify an error of a request sent to `addr` (the connection was
    /// made, so it is about the exchange, not connecting).
    pub fn classify(e: &hyper::Error, addr: SocketAddr) -> Self {
        let mut source: Option<&(dyn StdError + 'static)> = e.source();
        let mut innermost = None;
        while let Some(s) = source {
            if let Some(b) = s.downcast_ref::<BodyError>() {
                return match b {
                    BodyError::TooLarge { limit } => Self::BodyTooLarge { limit: *limit },
                    BodyError::Timeout { timeout } => Self::ClientBodyTimeout { timeout: *timeout },
                    BodyError::Client(c) => Self::ClientBody(c.to_string()),
                };
            }
            innermost = Some(s);
            source = s.source();
        }
        let reason = match innermost {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        };
        Self::Backend { addr, reason }
    }

    /// The status the client gets.
    pub fn status(&self) -> hyper::StatusCode {
        use hyper::StatusCode as S;
        match self {
            Self::BodyTooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            Self::ClientBody(_) => S::BAD_REQUEST,
            Self::ClientBodyTimeout { .. } => S::REQUEST_TIMEOUT,
            Self::ConnectTimeout { .. } | Self::ResponseTimeout { .. } => S::GATEWAY_TIMEOUT,
            Self::Connect { .. } | Self::Backend { .. } | Self::UploadAborted { .. } => {
                S::BAD_GATEWAY
            }
        }
    }

    /// Whether connecting failed, so the request was never sent.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }

    /// Whether the backend failed the exchange after the connection was
    /// made (reset, closed, not HTTP, or no response head in time after the
    /// request was fully sent): a passive health check failure. What the
    /// client does wrong never is.
    pub fn is_backend_failure(&self) -> bool {
        matches!(self, Self::Backend { .. } | Self::ResponseTimeout { .. })
    }

    /// Which side caused the failure: `client` or `backend`.
    pub fn side(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } | Self::ClientBody(_) | Self::ClientBodyTimeout { .. } => {
                "client"
            }
            _ => "backend",
        }
    }
}
