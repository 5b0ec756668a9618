//! Bodies as they pass through: the request body with the vhost's size
//! limit, and the response body that counts bytes, holds the backend lease
//! and writes the access-log line when the exchange ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::access::Exchange;
use super::upstream::Reusable;

/// Why the request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body grew past `max_body_size`.
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    /// Reading from the client failed.
    #[error("client: {0}")]
    Client(#[source] hyper::Error),
}

/// A client's request body on its way to a backend, cut off at a limit.
pub struct RequestBody {
    /// None for an empty body (a request re-sent to another backend).
    inner: Option<Incoming>,
    limit: u64,
    seen: u64,
}

impl RequestBody {
    /// Wrap `inner`, failing once more than `limit` bytes arrive.
    pub fn new(inner: Incoming, limit: Option<u64>) -> Self {
        Self {
            inner: Some(inner),
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            inner: None,
            limit: u64::MAX,
            seen: 0,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    if self.seen > self.limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit: self.limit })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
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

/// A response body streamed from a backend, holding the backend connection
/// until the body has been read: then the connection goes back to its pool.
/// A body abandoned half-way closes the connection instead.
pub struct BackendBody {
    body: Incoming,
    conn: Option<Reusable>,
    ended: bool,
}

impl BackendBody {
    /// The body of a response that came over `conn` (None: not reusable).
    pub fn new(body: Incoming, conn: Option<Reusable>) -> Self {
        Self {
            body,
            conn,
            ended: false,
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Ok(_))) => self.ended = self.body.is_end_stream(),
            _ => {}
        }
        polled
    }
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        if self.ended || self.body.is_end_stream() {
            if let Some(conn) = self.conn.take() {
                conn.release();
            }
        }
    }
}

/// The body sent to the client. It owns the request's [`Exchange`], so the
/// exchange ends (access log, backend lease released, connection idle again)
/// when hyper has written or dropped the body.
pub struct ResponseBody {
    source: Source,
    exchange: Exchange,
}

impl ResponseBody {
    /// A body from `source` that ends `exchange` when dropped.
    pub fn new(source: Source, exchange: Exchange) -> Self {
        Self { source, exchange }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Backend(b) => b.poll_frame(cx),
            Source::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.exchange.record.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Backend(b) => b.body.is_end_stream(),
            Source::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Backend(b) => b.body.size_hint(),
            Source::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
