//! One client connection served by the pass-through codec: read a head,
//! route it, exchange it with a backend in this task, stream the response
//! back, and wait for the next head holding no buffer.
//!
//! Deadlines (as on the hyper path, README "Timeouts"): the first head is
//! due `header_timeout` after the connection opened, a later one
//! `idle_timeout` for its first byte then `header_timeout` for the rest;
//! every write to the client gets `send_timeout`; the backend gets
//! `connect_timeout` to connect and `response_timeout` for the response
//! head from the fully sent request and between two reads of the body. A
//! connection is given back to the pool only after a complete response
//! that ended exactly where its framing said, to a request sent in full.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, Uri, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout, timeout_at};
use tracing::{debug, warn};

use super::framing::Chunked;
use super::parse::{self, Framing, Parsed};
use super::write::{self, ResponseExtras};
use super::{ClientIo, HEAD_CHUNK};
use crate::proxy::HeldSnapshot;
use crate::proxy::http::access::{Exchange, Record};
use crate::proxy::http::conn::Conn;
use crate::proxy::http::plan::{self, Plan, RequestView};
use crate::proxy::http::route::VhostRoute;
use crate::proxy::http::service::passive_check;
use crate::proxy::http::upstream::{ForwardError, Upstream};

/// The listener's limits and deadlines, for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// When the connection opened (the first head's clock).
    pub opened: Instant,
    pub header: Duration,
    pub idle: Duration,
    pub send: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// How the codec left the connection.
pub enum Served {
    /// Closed (or to be closed): the client left, a deadline passed, the
    /// exchange ended the connection, or shutdown.
    Closed,
    /// Not for this codec: hyper serves the rest, these bytes first.
    HandOff(Vec<u8>),
}

/// Backend reads while streaming a body.
const BODY_CHUNK: usize = 16 * 1024;

/// Serve requests on `io` until the connection ends or hyper must take it.
pub async fn serve<IO: ClientIo>(io: &mut IO, conn: &Arc<Conn>, lim: &Limits) -> Served {
    let mut buf = Vec::new();
    let mut first = true;
    let mut served = false;
    // One timer for every wait between requests, moved only when it fires
    // early (see `wait_for_head`), instead of one registered and
    // cancelled per request.
    let wait = tokio::time::sleep_until(lim.opened + lim.header);
    tokio::pin!(wait);
    loop {
        if buf.is_empty() && !wait_for_head(io, conn, lim, &mut buf, first, wait.as_mut()).await {
            return Served::Closed;
        }
        let deadline = if first {
            lim.opened + lim.header
        } else {
            Instant::now() + lim.header
        };
        first = false;
        let prepared = loop {
            match prepare(conn, &buf, lim) {
                Prep::Ready(p) => break p,
                // hyper would read the HTTP/2 preface as the start of a
                // connection: after an HTTP/1.1 exchange it is an error.
                Prep::Unusual if served && buf.starts_with(b"PRI ") => {
                    debug!(
                        side = "client",
                        "HTTP/2 preface after an HTTP/1.1 request; closing"
                    );
                    return Served::Closed;
                }
                Prep::Unusual => return Served::HandOff(buf),
                Prep::Partial => {}
            }
            buf.reserve(HEAD_CHUNK);
            match timeout_at(deadline, io.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Served::Closed,
                Err(_) => {
                    warn!(
                        side = "client",
                        timeout_ms = lim.header.as_millis() as u64,
                        "no complete request header within header_timeout; closing"
                    );
                    return Served::Closed;
                }
            }
        };
        // The part of the body already read goes with the head; the rest is
        // read from the client as the backend takes it.
        let head_len = prepared.head_len;
        let in_buf =
            (buf.len() - head_len).min(usize::try_from(prepared.body).unwrap_or(usize::MAX));
        let keep = exchange(io, conn, lim, prepared, &buf[head_len..head_len + in_buf]).await;
        served = true;
        buf.drain(..head_len + in_buf);
        if !keep {
            let _ = timeout(lim.send, io.shutdown()).await;
            return Served::Closed;
        }
        if buf.is_empty() {
            // Idle: hold no buffer until the next request.
            buf = Vec::new();
        }
    }
}

/// Wait for the first bytes of a head: the first within `header_timeout`
/// of the connection's opening, a later one within `idle_timeout`. False:
/// close (the client left, a clock ran out, or shutdown).
///
/// `timer` is the connection's: when it fires before this wait's
/// deadline (it was set for an earlier wait) it is moved to the deadline,
/// and when it is set later than the deadline it is moved back. So a busy
/// keep-alive connection touches the timer wheel about once an
/// `idle_timeout`, not once a request.
async fn wait_for_head<IO: ClientIo>(
    io: &mut IO,
    conn: &Conn,
    lim: &Limits,
    buf: &mut Vec<u8>,
    first: bool,
    mut timer: Pin<&mut Sleep>,
) -> bool {
    let until = if first {
        lim.opened + lim.header
    } else {
        Instant::now() + lim.idle
    };
    if timer.deadline() > until {
        timer.as_mut().reset(until);
    }
    let read = io.idle_read(buf);
    tokio::pin!(read);
    loop {
        tokio::select! {
            read = &mut read => return matches!(read, Ok(n) if n > 0),
            () = timer.as_mut() => {
                if Instant::now() < until {
                    timer.as_mut().reset(until);
                    continue;
                }
                if first {
                    warn!(side = "client", timeout_ms = lim.header.as_millis() as u64,
                        "no complete request header within header_timeout; closing");
                } else {
                    debug!("idle keep-alive connection timed out; closing");
                }
                return false;
            }
            () = conn.shutdown.triggered() => return false,
        }
    }
}

/// A routed request, ready to go to its backend.
struct Prepared {
    head_len: usize,
    /// The request body's length (Content-Length).
    body: u64,
    /// The client asked to close after it.
    close: bool,
    head_method: bool,
    plan: Plan,
    vhost: Arc<VhostRoute>,
    snap: HeldSnapshot,
    record: Record,
    /// The head for the backend.
    out: Vec<u8>,
}

enum Prep {
    Partial,
    Unusual,
    Ready(Box<Prepared>),
}

/// Parse and route the head at the start of `buf`. Anything the codec does
/// not serve, and every local answer, is `Unusual` (hyper answers it).
fn prepare(conn: &Conn, buf: &[u8], lim: &Limits) -> Prep {
    let mut fields = parse::fields();
    let max_fields = lim.max_headers.min(parse::MAX_FIELDS);
    let head = match parse::request(buf, &mut fields, lim.max_header_bytes, max_fields) {
        Parsed::Done(h) => h,
        Parsed::Partial => return Prep::Partial,
        Parsed::Unusual => return Prep::Unusual,
    };
    let body = match head.framing {
        Framing::Empty => 0,
        Framing::Length(n) => n,
        Framing::Chunked | Framing::Close => return Prep::Unusual,
    };
    let (Ok(method), Ok(uri)) = (
        Method::from_bytes(head.method.as_bytes()),
        Uri::try_from(head.target),
    ) else {
        return Prep::Unusual;
    };
    let snap = conn.snapshot();
    let view = RequestView {
        method: head.method,
        version: Version::HTTP_11,
        scheme: None,
        authority: None,
        path: head.target.split('?').next().unwrap_or("/"),
        path_and_query: Some(head.target),
        host: Some(head.host),
        more_hosts: false,
        headers: head.fields.len(),
        body_hint: body,
    };
    let mut vhost = None;
    let Ok(plan) = plan::plan(conn, &snap, &view, &mut vhost) else {
        return Prep::Unusual;
    };
    let Some(vhost) = vhost.filter(|_| !plan.upstream.http2()) else {
        return Prep::Unusual;
    };
    let mut out = Vec::with_capacity(head.len + 256);
    write::request(&mut out, &head, plan.host.as_bytes(), &conn.peer, plan.opts);
    let record = Record {
        start: Instant::now(),
        client: conn.peer.ip,
        vhost: Some(vhost.name.clone()),
        method,
        uri,
        version: Version::HTTP_11,
        status: 499,
        bytes: 0,
        upstream: None,
    };
    Prep::Ready(Box::new(Prepared {
        head_len: head.len,
        body,
        close: head.close,
        head_method: head.method == "HEAD",
        plan,
        vhost,
        snap,
        record,
        out,
    }))
}

/// A backend that answered: its connection, and the response head's facts
/// (the head for the client is in the caller's buffer).
struct Answered {
    stream: TcpStream,
    addr: SocketAddr,
    framing: Framing,
    /// The backend closes after this response (or is HTTP/1.0).
    backend_close: bool,
    code: u16,
    /// The response head's length at the start of the backend buffer.
    head_len: usize,
    /// The backend answered before it had the whole request body.
    early: bool,
}

/// Exchange one request with a backend and stream the answer back. True:
/// the client connection stays open for its next request.
async fn exchange<IO: ClientIo>(
    io: &mut IO,
    conn: &Arc<Conn>,
    lim: &Limits,
    p: Box<Prepared>,
    first_body: &[u8],
) -> bool {
    let Prepared {
        body,
        close,
        head_method,
        plan,
        vhost,
        snap,
        record,
        mut out,
        ..
    } = *p;
    let mut ex = Exchange::begin(conn.clone(), record, snap.config.global.access_log);
    let attempts = plan.pool.backends.len().clamp(1, 3);
    let mut attempt = 1;
    let mut lease = plan.lease;
    let mut backend = Vec::new();
    out.extend_from_slice(first_body);
    let mut upload = Upload {
        io: &mut *io,
        left: body - first_body.len() as u64,
        streamed: false,
        timeout: conn.request_body_timeout,
    };
    let hsts = conn
        .https
        .then(|| vhost.hsts.as_ref())
        .flatten()
        .map(|v| v.as_bytes());
    let asked = Asked {
        head_method,
        idempotent: ex.record.method.is_idempotent(),
        close: close || conn.shutdown.is_triggered(),
        via: plan.opts.via,
        hsts,
    };
    let answered = loop {
        let addr = lease.address;
        ex.record.upstream = Some(addr);
        let state = lease.state().clone();
        ex.lease = Some(lease);
        let sent = send(
            &plan.upstream,
            addr,
            &mut out,
            &mut backend,
            asked,
            &mut upload,
        )
        .await;
        let e = match sent {
            Ok(a) => {
                if state.connect_succeeded() {
                    plan.pool.log_flip(
                        addr,
                        true,
                        "passive check: request succeeded after cool-down",
                    );
                }
                break Ok(a);
            }
            Err(e) => e,
        };
        if !matches!(e, ForwardError::ClientBodyTimeout { .. }) {
            // (A stalled body has logged itself.)
            warn!(side = e.side(), error = %e, attempt, "request failed");
        }
        passive_check(&snap, &plan.pool, addr, &state, &e);
        if !e.is_connect() || upload.streamed {
            break Err(e);
        }
        if let Some(l) = ex.lease.take() {
            l.connect_failed();
        }
        let other = (attempt < attempts)
            .then(|| plan::select(&plan.pool, plan.persistence.as_ref(), conn.peer.ip))
            .flatten();
        let Some(other) = other else { break Err(e) };
        lease = other;
        attempt += 1;
    };
    // A body not read to its end leaves nothing to find the next request by.
    let unread = upload.left > 0;
    let a = match answered {
        Ok(a) => a,
        Err(e) => {
            out.clear();
            let status = e.status();
            let close = close || unread || e.side() == "client";
            write::local(&mut out, status, plan::error_text(status), close, hsts);
            if head_method {
                // The same head, no body (RFC 9110 9.3.2), as hyper does.
                out.truncate(out.len() - plan::error_text(status).len());
            }
            ex.record.status = status.as_u16();
            conn.stats
                .record_request(ex.record.status, ex.record.start.elapsed());
            return write_client(io, lim, &out).await && !close;
        }
    };
    let client_close = asked.close || a.framing == Framing::Close || unread;
    ex.record.status = a.code;
    conn.stats.record_request(a.code, ex.record.start.elapsed());
    if let Some(lease) = &ex.lease {
        lease.state().stats.record_response(a.code);
    }
    let Answered {
        mut stream,
        addr,
        framing,
        backend_close,
        head_len,
        early,
        ..
    } = a;
    let mut body = Body::new(framing);
    // The body bytes that came with the head go out with it, in one write.
    let rest = &backend[head_len..];
    let fed = match body.feed(rest) {
        Ok(f) => f,
        Err(e) => return cut_off(addr, e),
    };
    out.extend_from_slice(&rest[..fed.forward]);
    let mut leftover = rest.len() - fed.consumed;
    if body.done() && body.chunked() {
        out.extend_from_slice(b"\r\n");
    }
    ex.record.bytes += fed.forward as u64;
    if !write_client(io, lim, &out).await {
        return false;
    }
    drop(out);
    let idle = plan.upstream.response_timeout;
    while !body.done() {
        backend.clear();
        backend.reserve(BODY_CHUNK);
        let n = match timeout(idle, stream.read_buf(&mut backend)).await {
            Err(_) => {
                warn!(side = "backend", backend = %addr, timeout_ms = idle.as_millis() as u64,
                    "backend response body stalled longer than response_timeout; closing both sides");
                return false;
            }
            Ok(Err(e)) => return cut_off(addr, e),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            if framing == Framing::Close {
                break;
            }
            return cut_off(addr, "the backend closed the connection mid-body");
        }
        let fed = match body.feed(&backend) {
            Ok(f) => f,
            Err(e) => return cut_off(addr, e),
        };
        leftover = backend.len() - fed.consumed;
        ex.record.bytes += fed.forward as u64;
        if !write_client(io, lim, &backend[..fed.forward]).await {
            return false;
        }
        if body.done() && body.chunked() && !write_client(io, lim, b"\r\n").await {
            return false;
        }
    }
    // A connection goes back only at the exact end of a response its
    // backend did not close; bytes after it are a backend out of step.
    if !backend_close && !early && leftover == 0 && framing != Framing::Close {
        plan.upstream.release_raw(addr, stream);
    }
    drop(ex);
    !client_close
}

/// A response body cut off by its backend: the client connection closes
/// (the client sees a short body), the backend connection too.
fn cut_off(addr: SocketAddr, why: impl std::fmt::Display) -> bool {
    warn!(side = "backend", backend = %addr, error = %why, "response body cut off; closing both sides");
    false
}

/// Write to the client within `send_timeout`. False: the client is gone
/// or did not take it in time (logged).
async fn write_client<IO: ClientIo>(io: &mut IO, lim: &Limits, bytes: &[u8]) -> bool {
    let written = timeout(lim.send, async {
        io.write_all(bytes).await?;
        io.flush().await
    });
    match written.await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(side = "client", error = %e, "writing to the client failed");
            false
        }
        Err(_) => {
            warn!(
                side = "client",
                timeout_ms = lim.send.as_millis() as u64,
                "a write to the client stalled longer than send_timeout; closing"
            );
            false
        }
    }
}

/// What the client's response head needs to know of its request.
#[derive(Clone, Copy)]
struct Asked<'a> {
    head_method: bool,
    /// The method is idempotent (RFC 9110 9.2.2): the request may be sent
    /// again when a pooled connection closes without an answer, as the
    /// backend may have acted on it (RFC 9112 9.3.1).
    idempotent: bool,
    /// The client asked to close, or vipd is shutting down.
    close: bool,
    via: bool,
    hsts: Option<&'a [u8]>,
}

/// Send the head in `out` to `addr` and read the response head into `buf`;
/// then `out` holds the head for the client. A pooled connection the
/// backend had closed is replaced: when the write fails, or, for an
/// idempotent request only, when it closes with no answer (it may have
/// acted on the request); informational responses are skipped.
async fn send<IO: ClientIo>(
    upstream: &Upstream,
    addr: SocketAddr,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    asked: Asked<'_>,
    upload: &mut Upload<'_, IO>,
) -> Result<Answered, ForwardError> {
    let head_method = asked.head_method;
    let limit = upstream.response_timeout;
    let backend = |reason: String| ForwardError::Backend { addr, reason };
    'connection: loop {
        let (mut stream, reused) = upstream.checkout_raw(addr).await?;
        match timeout(limit, stream.write_all(out.as_slice())).await {
            Err(_) => {
                return Err(ForwardError::ResponseTimeout {
                    addr,
                    timeout: limit,
                });
            }
            Ok(Err(_)) if reused => continue 'connection,
            Ok(Err(e)) => return Err(backend(e.to_string())),
            Ok(Ok(())) => {}
        }
        buf.clear();
        let early = upload.pump(&mut stream, addr, limit, buf).await?;
        // A backend that drops the connection mid-upload may be refusing
        // the upload (a 413 lost to the reset), which any client can
        // provoke: not a passive check failure.
        let backend = |reason: String| {
            if upload.left > 0 {
                ForwardError::UploadAborted { addr, reason }
            } else {
                ForwardError::Backend { addr, reason }
            }
        };
        let deadline = Instant::now() + limit;
        loop {
            // Parse what has come (1xx heads are dropped from the front).
            loop {
                let mut fields = parse::fields();
                match parse::response(buf, &mut fields, head_method) {
                    Ok(None) => break,
                    Err(e) => return Err(backend(e.to_string())),
                    Ok(Some(h)) if h.code == 101 => {
                        return Err(backend("switched protocols without being asked to".into()));
                    }
                    Ok(Some(h)) if h.code < 200 => {
                        let n = h.len;
                        buf.drain(..n);
                    }
                    Ok(Some(h)) => {
                        let extras = ResponseExtras {
                            via: asked.via,
                            hsts: asked.hsts,
                            close: asked.close || h.framing == Framing::Close,
                        };
                        out.clear();
                        write::response(out, &h, extras);
                        return Ok(Answered {
                            framing: h.framing,
                            backend_close: h.close,
                            code: h.code,
                            head_len: h.len,
                            early,
                            stream,
                            addr,
                        });
                    }
                }
            }
            buf.reserve(BODY_CHUNK);
            match timeout_at(deadline, stream.read_buf(buf)).await {
                Err(_) => {
                    return Err(ForwardError::ResponseTimeout {
                        addr,
                        timeout: limit,
                    });
                }
                Ok(Ok(0) | Err(_))
                    if reused && buf.is_empty() && !upload.streamed && asked.idempotent =>
                {
                    continue 'connection;
                }
                Ok(Ok(0)) => {
                    return Err(backend("connection closed before message completed".into()));
                }
                Ok(Err(e)) => return Err(backend(e.to_string())),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Most informational heads skipped while a request body is uploaded.
const MAX_INFORMATIONAL: usize = 8;

/// Drop the complete informational heads (not `101`) at the front of
/// `buf`; how many.
fn drop_informational(buf: &mut Vec<u8>) -> usize {
    let mut dropped = 0;
    loop {
        let mut fields = parse::fields();
        let n = match parse::response(buf, &mut fields, false) {
            Ok(Some(h)) if h.code < 200 && h.code != 101 => h.len,
            _ => return dropped,
        };
        buf.drain(..n);
        dropped += 1;
    }
}

/// A response body's framing while it streams.
enum Body {
    Length(u64),
    Chunked(Chunked),
    Close,
    Empty,
}

impl Body {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunked::new()),
            Framing::Close => Self::Close,
            Framing::Empty => Self::Empty,
        }
    }

    fn done(&self) -> bool {
        match self {
            Self::Length(n) => *n == 0,
            Self::Chunked(c) => c.done(),
            Self::Close => false,
            Self::Empty => true,
        }
    }

    fn chunked(&self) -> bool {
        matches!(self, Self::Chunked(_))
    }

    fn feed(&mut self, input: &[u8]) -> Result<super::framing::Fed, super::framing::ChunkError> {
        use super::framing::Fed;
        Ok(match self {
            Self::Length(left) => {
                let n = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                Fed {
                    consumed: n,
                    forward: n,
                }
            }
            Self::Chunked(c) => {
                let mut fed = Fed {
                    consumed: 0,
                    forward: 0,
                };
                // The decoder stops where the trailers start: go on
                // consuming (not forwarding) to the body's end.
                while fed.consumed < input.len() && !c.done() {
                    let more = c.feed(&input[fed.consumed..])?;
                    if fed.forward == fed.consumed {
                        fed.forward += more.forward;
                    }
                    fed.consumed += more.consumed;
                    if more.consumed == 0 {
                        break;
                    }
                }
                fed
            }
            Self::Close => Fed {
                consumed: input.len(),
                forward: input.len(),
            },
            Self::Empty => Fed {
                consumed: 0,
                forward: 0,
            },
        })
    }
}

/// The rest of a request body, read from the client as the backend takes
/// it: at most `left` bytes, so a pipelined request after it stays unread.
struct Upload<'a, IO> {
    io: &'a mut IO,
    left: u64,
    /// Bytes were read from the client (the request cannot be sent again).
    streamed: bool,
    /// `request_body_timeout`: longest wait for the client's next piece.
    timeout: Duration,
}

impl<IO: ClientIo> Upload<'_, IO> {
    /// Copy the rest of the body to `stream`; each piece is due from the
    /// client within `request_body_timeout` and taken by the backend within
    /// `limit` (its `response_timeout`). True: the backend answered (or
    /// closed) first, its first bytes are in `buf`, and the upload stops.
    async fn pump(
        &mut self,
        stream: &mut TcpStream,
        addr: SocketAddr,
        limit: Duration,
        buf: &mut Vec<u8>,
    ) -> Result<bool, ForwardError> {
        if self.left == 0 {
            return Ok(false);
        }
        let mut chunk = vec![
            0u8;
            usize::try_from(self.left)
                .unwrap_or(BODY_CHUNK)
                .min(BODY_CHUNK)
        ];
        // Informational heads dropped while the upload goes on.
        let mut informational = 0;
        while self.left > 0 {
            let want = usize::try_from(self.left)
                .unwrap_or(chunk.len())
                .min(chunk.len());
            let read = tokio::select! {
                biased;
                ready = stream.readable() => {
                    buf.reserve(BODY_CHUNK);
                    match (ready, stream.try_read_buf(buf)) {
                        (Ok(()), Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        // A `100 Continue` nobody asked for (some backends
                        // send one anyway) is not an answer: go on with the
                        // upload, a few times (then the head loop and its
                        // deadline deal with a flood).
                        (Ok(()), Ok(n)) if n > 0 && informational < MAX_INFORMATIONAL => {
                            informational += drop_informational(buf);
                            if buf.is_empty() {
                                continue;
                            }
                            return Ok(true);
                        }
                        _ => return Ok(true),
                    }
                }
                read = timeout(self.timeout, self.io.read(&mut chunk[..want])) => read,
            };
            let n = match read {
                Err(_) => {
                    warn!(
                        side = "client",
                        timeout_ms = self.timeout.as_millis() as u64,
                        "request body stalled longer than request_body_timeout; answering 408 and closing"
                    );
                    return Err(ForwardError::ClientBodyTimeout {
                        timeout: self.timeout,
                    });
                }
                Ok(Ok(0)) => {
                    return Err(ForwardError::ClientBody(
                        "the client closed the connection mid-body".into(),
                    ));
                }
                Ok(Err(e)) => return Err(ForwardError::ClientBody(e.to_string())),
                Ok(Ok(n)) => n,
            };
            self.streamed = true;
            self.left -= n as u64;
            match timeout(limit, stream.write_all(&chunk[..n])).await {
                Err(_) => {
                    return Err(ForwardError::ResponseTimeout {
                        addr,
                        timeout: limit,
                    });
                }
                Ok(Err(e)) => {
                    return Err(ForwardError::UploadAborted {
                        addr,
                        reason: e.to_string(),
                    });
                }
                Ok(Ok(())) => {}
            }
        }
        Ok(false)
    }
}
