//! Bodies as they pass through: the request body with the vhost's size
//! limit and the client's read deadline, the response body from a backend
//! with its idle deadline, and the body sent to the client, which counts
//! bytes, tells the connection's send clock when it waits for the client,
//! and writes the access-log line when the exchange ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use tracing::warn;

use super::access::Exchange;
use super::upstream::Reusable;

/// Why the request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body grew past `max_body_size`.
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    /// The client sent nothing for `request_body_timeout`.
    #[error("no request body data from the client within {timeout:?}")]
    Timeout { timeout: Duration },
    /// Reading from the client failed.
    #[error("client: {0}")]
    Client(#[source] hyper::Error),
}

/// What the client did wrong with its request body, as [`Progress`] keeps
/// it (some backend connections, HTTP/2 ones, report only a reset stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    TooLarge { limit: u64 },
    Timeout { timeout: Duration },
    Failed,
}

/// Where a request body is: the phase, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A frame was handed to the backend connection, which has not asked
    /// for the next one: the backend is not taking the upload (or the head
    /// is still being written).
    Sending,
    /// The backend connection asked for more and the client has not sent it.
    WaitingForClient,
    /// The whole request was handed to the backend connection.
    Done,
    /// The client broke the body; nothing more will be sent.
    Failed(ClientFault),
}

const SENDING: u8 = 0;
const WAITING: u8 = 1;
const DONE: u8 = 2;
const TOO_LARGE: u8 = 3;
const TIMEOUT: u8 = 4;
const FAILED: u8 = 5;

/// How far a request body has got, shared by the body (polled by the
/// backend connection's task) and the request waiting for the response
/// head, so that the head's deadline runs from the moment the request was
/// fully sent and never while the client is the one holding it up.
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    phase: AtomicU8,
    /// When the phase last changed (a frame: `Sending` again), in ms since
    /// `epoch`.
    since_ms: AtomicU64,
    limit: u64,
    timeout: Duration,
}

impl Progress {
    fn new(limit: u64, timeout: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            phase: AtomicU8::new(SENDING),
            since_ms: AtomicU64::new(0),
            limit,
            timeout,
        }
    }

    /// The phase and when it began.
    pub fn phase(&self) -> (Phase, Instant) {
        let since = self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        let phase = match self.phase.load(Ordering::Relaxed) {
            SENDING => Phase::Sending,
            WAITING => Phase::WaitingForClient,
            DONE => Phase::Done,
            TOO_LARGE => Phase::Failed(ClientFault::TooLarge { limit: self.limit }),
            TIMEOUT => Phase::Failed(ClientFault::Timeout {
                timeout: self.timeout,
            }),
            _ => Phase::Failed(ClientFault::Failed),
        };
        (phase, since)
    }

    /// Enter `phase` now. `Done` and failures are final, so the moment the
    /// body ended stays the one first recorded.
    fn enter(&self, phase: u8) {
        let current = self.phase.load(Ordering::Relaxed);
        if current >= DONE || (current == phase && phase == WAITING) {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        self.since_ms.store(now, Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }
}

/// The idle deadline of a body in transit: it starts when the body is
/// polled and the other side has nothing for it, and a frame resets it, so
/// only time spent waiting on that side counts. Its timer is allocated on
/// the first wait and reused after.
#[derive(Default)]
struct StallClock {
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl StallClock {
    /// A frame came: the next wait starts a fresh deadline.
    fn progressed(&mut self) {
        self.waiting = false;
    }

    /// Nothing came: start a deadline of `limit` if this wait is a new one
    /// (calling `started`), and be Ready once it has passed.
    fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        limit: Duration,
        started: impl FnOnce(),
    ) -> Poll<()> {
        use std::future::Future as _;
        if !self.waiting {
            self.waiting = true;
            started();
            let deadline = Instant::now() + limit;
            match self.sleep.as_mut() {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let sleep = self.sleep.as_mut().expect("armed above");
        sleep.as_mut().poll(cx)
    }
}

/// A client's request body on its way to a backend, cut off at a size
/// limit, and failed when the client sends nothing for
/// `request_body_timeout` while the backend connection waits for it.
pub struct RequestBody {
    inner: Incoming,
    seen: u64,
    /// None for a body that is empty from the start (most requests): it
    /// has nothing to track.
    progress: Option<Arc<Progress>>,
    /// Runs while the backend connection waits on the client.
    stall: StallClock,
}

impl RequestBody {
    /// Wrap `inner`, failing once more than `limit` bytes arrive or when
    /// the client sends nothing for `timeout`.
    pub fn new(inner: Incoming, limit: Option<u64>, timeout: Duration) -> Self {
        let done = inner.is_end_stream();
        Self {
            inner,
            seen: 0,
            progress: (!done).then(|| Arc::new(Progress::new(limit.unwrap_or(u64::MAX), timeout))),
            stall: StallClock::default(),
        }
    }

    /// The body's progress, for whoever waits for the response head; None
    /// when the body was empty (so the request is sent with its head).
    pub fn progress(&self) -> Option<Arc<Progress>> {
        self.progress.clone()
    }

    fn enter(&self, phase: u8) {
        if let Some(p) = &self.progress {
            p.enter(phase);
        }
    }

    /// The client is late: arm the clock on the first wait, and fail once
    /// it runs out.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<BodyError> {
        let Some(progress) = &self.progress else {
            // An empty body is never waited for.
            return Poll::Pending;
        };
        let timeout = progress.timeout;
        std::task::ready!(
            self.stall
                .poll_expired(cx, timeout, || progress.enter(WAITING))
        );
        self.enter(TIMEOUT);
        warn!(
            side = "client",
            timeout_ms = timeout.as_millis() as u64,
            "request body stalled longer than request_body_timeout; answering 408 and closing"
        );
        Poll::Ready(BodyError::Timeout { timeout })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                this.stall.progressed();
                if let Some(trailers) = frame.trailers_mut() {
                    super::headers::strip_request_trailers(trailers);
                }
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    let limit = this.progress.as_ref().map_or(u64::MAX, |p| p.limit);
                    if this.seen > limit {
                        this.enter(TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
                    }
                }
                let next = if this.inner.is_end_stream() {
                    DONE
                } else {
                    SENDING
                };
                this.enter(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.enter(FAILED);
                Poll::Ready(Some(Err(BodyError::Client(e))))
            }
            Poll::Ready(None) => {
                this.enter(DONE);
                Poll::Ready(None)
            }
            Poll::Pending => match this.poll_stall(cx) {
                Poll::Ready(e) => Poll::Ready(Some(Err(e))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.enter(DONE);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a response body comes from.
pub enum Source {
    /// Streamed from a backend.
    Backend(BackendBody),
    /// Made by the proxy (errors, redirects).
    Local(Option<Bytes>),
}

impl Source {
    /// A body made by the proxy.
    pub fn local(text: &'static str) -> Self {
        if text.is_empty() {
            Source::Local(None)
        } else {
            Source::Local(Some(Bytes::from_static(text.as_bytes())))
        }
    }
}

/// Why a response body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The backend connection failed mid-body.
    #[error("backend {addr}: {source}")]
    Backend {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The backend sent nothing for `response_timeout` mid-body.
    #[error("backend {addr}: no response body data within {timeout:?}")]
    Stalled { addr: SocketAddr, timeout: Duration },
}

/// A response body streamed from a backend, holding the backend connection
/// until the body has been read: then the connection goes back to its pool.
/// A body abandoned half-way, failed, or stalled for longer than the pool's
/// `response_timeout` while the client waits for it, closes the connection
/// instead (like nginx's `proxy_read_timeout`).
pub struct BackendBody {
    body: Incoming,
    conn: Option<Reusable>,
    ended: bool,
    addr: SocketAddr,
    idle: Duration,
    /// Runs only while hyper waits on the backend, never while hyper has
    /// not asked for more because the client is slow.
    stall: StallClock,
}

impl BackendBody {
    /// The body of a response that came from `addr` over `conn` (None: not
    /// reusable), allowed to stall for `idle` between frames.
    pub fn new(body: Incoming, conn: Option<Reusable>, addr: SocketAddr, idle: Duration) -> Self {
        Self {
            body,
            conn,
            ended: false,
            addr,
            idle,
            stall: StallClock::default(),
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        let addr = self.addr;
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.stall.progressed();
                self.ended = self.body.is_end_stream();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(source))) => {
                Poll::Ready(Some(Err(ResponseError::Backend { addr, source })))
            }
            Poll::Pending => {
                let timeout = self.idle;
                std::task::ready!(self.stall.poll_expired(cx, timeout, || {}));
                warn!(
                    side = "backend",
                    backend = %addr,
                    timeout_ms = timeout.as_millis() as u64,
                    "backend response body stalled longer than response_timeout; closing both sides"
                );
                Poll::Ready(Some(Err(ResponseError::Stalled { addr, timeout })))
            }
        }
    }
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.ended || self.body.is_end_stream() {
            conn.release();
        } else {
            conn.close();
        }
    }
}

/// The body sent to the client. It owns the request's [`Exchange`], so the
/// exchange ends (access log, backend lease released, connection idle again)
/// when hyper has written or dropped the body.
///
/// On HTTP/2, between handing hyper a frame and hyper asking for the next
/// one, the body is "owed" to the client: hyper holds the frame until the
/// client's flow-control window lets it out, and the connection's send
/// clock runs. Frames are handed out at most one DATA frame (16 KiB) at a
/// time, so that the wait measures the client's window updates, not how
/// long a large backend chunk takes to drain. (HTTP/1 stalls show on the
/// socket itself.)
pub struct ResponseBody {
    source: Source,
    exchange: Exchange,
    /// Of a larger backend chunk, what is still to be handed out (HTTP/2).
    rest: Bytes,
    h2: bool,
    /// While owed: the connection's token for it.
    owed: Option<u32>,
}

/// The most handed to hyper at once on HTTP/2: one default-size DATA frame.
const H2_SLICE: usize = 16 * 1024;

impl ResponseBody {
    /// A body from `source` that ends `exchange` when dropped.
    pub fn new(source: Source, exchange: Exchange) -> Self {
        let h2 = exchange.record.version == hyper::Version::HTTP_2;
        Self {
            source,
            exchange,
            rest: Bytes::new(),
            h2,
            owed: None,
        }
    }

    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        if !self.rest.is_empty() {
            let n = self.rest.len().min(H2_SLICE);
            return Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))));
        }
        let polled = match &mut self.source {
            Source::Backend(b) => b.poll_frame(cx),
            Source::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if !self.h2 {
            return polled;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) if data.len() > H2_SLICE => {
                    self.rest = data.split_off(H2_SLICE);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(other) => Poll::Ready(Some(Ok(other))),
            },
            other => other,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        let this = &mut *self;
        if let Some(g) = this.owed.take() {
            this.exchange.conn().state.response_pulled(g);
        }
        let polled = this.poll_source(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.exchange.record.bytes += data.len() as u64;
            }
            if this.h2 && !this.is_end_stream() {
                this.owed = Some(this.exchange.conn().state.response_owed());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
            && match &self.source {
                Source::Backend(b) => b.body.is_end_stream(),
                Source::Local(bytes) => bytes.is_none(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        let hint = match &self.source {
            Source::Backend(b) => b.body.size_hint(),
            Source::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        };
        if self.rest.is_empty() {
            return hint;
        }
        let rest = self.rest.len() as u64;
        let mut total = SizeHint::new();
        total.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            total.set_upper(upper + rest);
        }
        total
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(g) = self.owed.take() {
            self.exchange.conn().state.response_pulled(g);
        }
    }
}
