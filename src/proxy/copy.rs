//! Copying both ways between two byte streams that are not plain sockets
//! (TLS terminated by `tls` listeners, upgraded HTTP tunnels), with no
//! buffer held while the connection is idle and no lock between the two
//! directions.
//!
//! Both directions are driven by one future that owns both streams (as
//! tokio's `copy_bidirectional`), so nothing is split behind a lock. Reads
//! go into a buffer on the stack of the poll call; only bytes the writer
//! cannot take yet are moved to the heap, and that copy is freed as soon as
//! it is written. An idle connection therefore holds no copy buffer.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Bytes moved by one forwarded connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// Client to backend.
    pub upstream: u64,
    /// Backend to client.
    pub downstream: u64,
}

/// The side of a forwarded connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    /// The `side` field of log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

/// Why a forwarded connection ended before both sides closed.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// Reading from or writing to `side` failed.
    #[error("{} {}: {source}", side.as_str(), if *reading { "read" } else { "write" })]
    Failed {
        side: Side,
        reading: bool,
        #[source]
        source: io::Error,
    },
    /// Neither side sent anything for the listener's `idle_timeout`.
    #[error("idle timeout: nothing moved either way for {0:?}")]
    Idle(Duration),
}

impl Ended {
    /// The side at fault, if one is.
    pub fn side(&self) -> Option<Side> {
        match self {
            Ended::Failed { side, .. } => Some(*side),
            Ended::Idle(_) => None,
        }
    }
}

/// When bytes last moved either way; shared by the two directions and the
/// idle watchdog of one connection (never by two connections).
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) -> Ended {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + idle;
            if Instant::now() >= deadline {
                return Ended::Idle(idle);
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Largest read of one poll: a TLS record's plaintext.
const READ: usize = 16 * 1024;

/// One direction's state.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written: allocated only while the writer
    /// pushes back, freed once written.
    pending: Option<Box<[u8]>>,
    pos: usize,
    /// Written since the last flush (TLS buffers records until flushed).
    unflushed: bool,
    eof: bool,
    done: bool,
    total: u64,
}

impl Half {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        sides: (Side, Side),
        activity: &Activity,
    ) -> Poll<Result<(), Ended>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let (from, to) = sides;
        let write_err = |source| Ended::Failed {
            side: to,
            reading: false,
            source,
        };
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(buf) = &self.pending {
                while self.pos < buf.len() {
                    let n =
                        ready!(w.as_mut().poll_write(cx, &buf[self.pos..])).map_err(write_err)?;
                    if n == 0 {
                        return Poll::Ready(Err(write_err(io::ErrorKind::WriteZero.into())));
                    }
                    self.pos += n;
                    self.total += n as u64;
                    self.unflushed = true;
                    activity.touch();
                }
                self.pending = None;
                self.pos = 0;
            }
            if self.eof {
                if self.unflushed {
                    ready!(w.as_mut().poll_flush(cx)).map_err(write_err)?;
                    self.unflushed = false;
                }
                // The peer may already be gone; the other direction says so.
                let _ = ready!(w.as_mut().poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); READ];
            let mut rb = ReadBuf::uninit(&mut stack);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(source)) => {
                    return Poll::Ready(Err(Ended::Failed {
                        side: from,
                        reading: true,
                        source,
                    }));
                }
                Poll::Pending => {
                    if self.unflushed {
                        ready!(w.as_mut().poll_flush(cx)).map_err(write_err)?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
            let data = rb.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            let mut off = 0;
            while off < data.len() {
                match w.as_mut().poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(write_err(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.total += n as u64;
                        self.unflushed = true;
                        activity.touch();
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(write_err(e))),
                    Poll::Pending => {
                        // The writer's waker is registered: keep the rest
                        // until it can take it.
                        self.pending = Some(data[off..].into());
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// Copy both ways between `a` (client) and `b` (backend) until both sides
/// have finished. EOF from one side is passed on as a write shutdown to the
/// other (half-close), and the other direction keeps flowing. The
/// connection is cut when neither side sends anything for `idle`. The byte
/// counts are those moved, also when the connection ended early.
pub async fn copy_both<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> (Transferred, Result<(), Ended>)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let activity = Activity::new();
    let mut up = Half::default();
    let mut down = Half::default();
    let end = {
        let both = poll_fn(|cx| {
            let u = up.poll_copy(
                cx,
                Pin::new(&mut *a),
                Pin::new(&mut *b),
                (Side::Client, Side::Backend),
                &activity,
            )?;
            let d = down.poll_copy(
                cx,
                Pin::new(&mut *b),
                Pin::new(&mut *a),
                (Side::Backend, Side::Client),
                &activity,
            )?;
            match (u, d) {
                (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
                _ => Poll::Pending,
            }
        });
        tokio::select! {
            r = both => r,
            e = activity.idle_for(idle) => Err(e),
        }
    };
    let moved = Transferred {
        upstream: up.total,
        downstream: down.total,
    };
    (moved, end)
}

/// [`copy_both`] for callers that only log the outcome: the error names
/// the side at fault.
pub async fn pipe<A, B>(mut a: A, mut b: B, idle: Duration) -> io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match copy_both(&mut a, &mut b, idle).await {
        (moved, Ok(())) => Ok(moved),
        (_, Err(e @ Ended::Idle(_))) => Err(io::Error::new(io::ErrorKind::TimedOut, e)),
        (_, Err(e)) => Err(io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn bytes_cross_a_writer_that_takes_a_few_at_a_time_in_order() {
        // 64-byte pipes on both hops: nearly every write is partial.
        let (mut client, mut a) = duplex(64);
        let (mut b, mut backend) = duplex(64);
        let copier =
            tokio::spawn(async move { copy_both(&mut a, &mut b, Duration::from_secs(30)).await });
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let up = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&up).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert!(got == sent, "client to backend differs");
        backend.write_all(b"done").await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        let (moved, end) = copier.await.unwrap();
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(
            moved,
            Transferred {
                upstream: 200_000,
                downstream: 4
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_moving_either_way_ends_with_the_idle_timeout_and_the_bytes_so_far() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut backend) = duplex(1024);
        let copier =
            tokio::spawn(async move { copy_both(&mut a, &mut b, Duration::from_secs(5)).await });
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        backend.read_exact(&mut buf).await.unwrap();
        let (moved, end) = copier.await.unwrap();
        assert!(
            matches!(end, Err(Ended::Idle(d)) if d == Duration::from_secs(5)),
            "{end:?}"
        );
        assert_eq!(
            moved,
            Transferred {
                upstream: 5,
                downstream: 0
            }
        );
    }
}
