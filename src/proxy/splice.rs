//! Forwarding between two TCP sockets (`tcp` listeners) as HAProxy's
//! `splice-auto` does: a burst is first read into a buffer on the stack and
//! sent (small exchanges cost one read and one send), and only a burst that
//! fills that buffer goes on with splice(2), from one socket into a pipe
//! and from the pipe into the other socket, never copied into user space.
//!
//! A direction borrows a pipe only while it has bytes to move and gives it
//! back once the pipe is empty and its socket has nothing more to read, so
//! an idle connection holds neither a pipe nor a buffer. Empty pipes wait
//! in a small per-thread pool for the next burst of any connection (a new
//! connection costs no pipe(2) call in steady state). Pipes are file
//! descriptors: at most a quarter of the process's descriptor limit (and
//! at most 4096 pipes) is spent on them (HAProxy's `maxpipes` is a quarter
//! of `maxconn`); past that, or when pipe(2) fails, a direction goes on
//! through the stack buffer.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Poll, ready};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

use super::copy::{Activity, Ended, Side, Transferred};

/// Most bytes one splice call moves: the default pipe capacity (16 pages).
const CHUNK: usize = 64 * 1024;
const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);
/// Empty pipes kept per worker thread between bursts.
const SPARE_PER_THREAD: usize = 64;
/// The stack buffer a burst is first read into: a burst that fills it goes
/// on through a pipe (HAProxy's `bufsize`, 16 KiB).
const COPY_BUFFER: usize = 16 * 1024;

/// Pipes open in the process: pooled and lent.
static OPEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SPARE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// Most pipes at once whatever the descriptor limit: a pipe that a
/// non-reading peer keeps full pins up to 64 KiB of kernel memory, so this
/// bounds that to 256 MiB.
const MAX_PIPES: u64 = 4096;

/// Pipes the process may hold open at once: a quarter of RLIMIT_NOFILE's
/// soft limit in descriptors (two per pipe), at most [`MAX_PIPES`]; read
/// once.
pub fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        usize::try_from((soft / 8).min(MAX_PIPES)).unwrap_or(0)
    })
}

/// Pipes open right now (pooled or carrying bytes).
pub fn open_pipes() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// A pipe counted in [`OPEN`]; dropping it closes it.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// An empty pipe from this thread's pool, or a new one within the
    /// budget; `None` when neither is possible.
    fn take() -> Option<Pipe> {
        if let Some(p) = SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten() {
            return Some(p);
        }
        if OPEN.fetch_add(1, Ordering::Relaxed) >= budget() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
            Ok((read, write)) => Some(Pipe { read, write }),
            Err(e) => {
                OPEN.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "no pipe for splice; copying in user space");
                None
            }
        }
    }

    /// Return an empty pipe to this thread's pool (or close it when the
    /// pool is full). A pipe that may hold bytes is dropped instead.
    fn give_back(self) {
        // During thread teardown the pool is gone: the pipe just closes.
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_PER_THREAD {
                s.push(self);
            }
        });
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

fn splice_fd(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    loop {
        match splice(from.as_fd(), None, to.as_fd(), None, len, FLAGS) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// What one copy step did.
enum Step {
    /// Moved a read that left the buffer short: the socket is drained.
    Drained,
    /// A read filled the buffer: more is likely waiting, splice the rest.
    Filled,
    /// `from` ended its side.
    Eof,
}

/// Move everything `from` sends to `to` until `from` ends its side, then
/// pass the end on (see [`Ends::pass_on`]). `total` counts the bytes that
/// reached `to`.
///
/// HAProxy's `splice-auto`: a burst is first read into a buffer on the
/// stack and sent (one read and one send for a small exchange, where
/// splice needs an extra call to learn the socket is empty); only when a
/// read fills that buffer does the rest of the burst go through a pipe.
/// Without a pipe to spare, the burst goes on through the stack buffer.
async fn carry(
    from: &mut ReadHalf<'_>,
    to: &TcpStream,
    sides: (Side, Side),
    total: &mut u64,
    activity: &Activity,
    ends: &Ends,
) -> Result<(), Ended> {
    let read_err = |source| Ended::Failed {
        side: sides.0,
        reading: true,
        source,
    };
    let write_err = |source| Ended::Failed {
        side: sides.1,
        reading: false,
        source,
    };
    loop {
        match copy_step(from, to, sides, total, activity).await? {
            Step::Eof => {
                ends.pass_on(to);
                return Ok(());
            }
            Step::Drained => continue,
            Step::Filled => {}
        }
        let Some(pipe) = Pipe::take() else {
            continue;
        };
        let from: &TcpStream = from.as_ref();
        // The pipe is empty at the top of this loop, so a splice into it
        // that would block means `from` has nothing to read.
        loop {
            let n = match from.try_io(Interest::READABLE, || splice_fd(from, &pipe.write, CHUNK)) {
                Ok(0) => {
                    pipe.give_back();
                    ends.pass_on(to);
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(read_err(e)),
            };
            let mut left = n;
            while left > 0 {
                match to.try_io(Interest::WRITABLE, || splice_fd(&pipe.read, to, left)) {
                    Ok(k) => left -= k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        to.writable().await.map_err(write_err)?
                    }
                    Err(e) => return Err(write_err(e)),
                }
            }
            *total += n as u64;
            activity.touch();
        }
        pipe.give_back();
    }
}

/// Read once from `from` into a buffer on the stack of this poll (an idle
/// connection holds no buffer) and send it to `to`. Only what `to` cannot
/// take at once is moved to the heap, until written. A short read tells
/// tokio the socket is drained, so no read is spent learning it.
async fn copy_step(
    from: &mut ReadHalf<'_>,
    to: &TcpStream,
    sides: (Side, Side),
    total: &mut u64,
    activity: &Activity,
) -> Result<Step, Ended> {
    let write_err = |source| Ended::Failed {
        side: sides.1,
        reading: false,
        source,
    };
    let (step, rest) = poll_fn(|cx| {
        let mut stack = [MaybeUninit::<u8>::uninit(); COPY_BUFFER];
        let mut rb = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut *from).poll_read(cx, &mut rb)).map_err(|source| Ended::Failed {
            side: sides.0,
            reading: true,
            source,
        })?;
        let data = rb.filled();
        if data.is_empty() {
            return Poll::Ready(Ok((Step::Eof, None)));
        }
        let step = if data.len() == COPY_BUFFER {
            Step::Filled
        } else {
            Step::Drained
        };
        let mut off = 0;
        while off < data.len() {
            match to.try_write(&data[off..]) {
                Ok(k) => off += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(write_err(e))),
            }
        }
        *total += off as u64;
        activity.touch();
        let rest = (off < data.len()).then(|| Box::<[u8]>::from(&data[off..]));
        Poll::Ready(Ok((step, rest)))
    })
    .await?;
    if let Some(rest) = rest {
        let mut off = 0;
        while off < rest.len() {
            to.writable().await.map_err(write_err)?;
            match to.try_write(&rest[off..]) {
                Ok(k) => {
                    off += k;
                    *total += k as u64;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(write_err(e)),
            }
        }
        activity.touch();
    }
    Ok(step)
}

/// How many directions of a connection have seen their EOF.
struct Ends(AtomicBool);

impl Ends {
    /// Pass an EOF on to `to` as a write shutdown (half-close), unless the
    /// other direction ended already: then both sockets are closed next,
    /// and closing them sends the FIN (both receive queues are empty, so
    /// it is a FIN, not a reset), one shutdown(2) fewer per connection.
    /// The peer may already be gone; the other direction reports that.
    fn pass_on(&self, to: &TcpStream) {
        if !self.0.swap(true, Ordering::Relaxed) {
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
        }
    }
}

/// Splice both ways between `client` and `backend` until both sides have
/// finished, with half-close passed on, or until nothing moved either way
/// for `idle`. The byte counts are those moved, also when it ended early.
pub async fn splice_both(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle: Duration,
) -> (Transferred, Result<(), Ended>) {
    let (mut client_rx, client_tx) = client.split();
    let (mut backend_rx, backend_tx) = backend.split();
    let (client_tx, backend_tx): (&TcpStream, &TcpStream) =
        (client_tx.as_ref(), backend_tx.as_ref());
    let activity = Activity::new();
    let ends = Ends(AtomicBool::new(false));
    let (mut up, mut down) = (0u64, 0u64);
    let end = {
        let up_side = (Side::Client, Side::Backend);
        let down_side = (Side::Backend, Side::Client);
        let both = async {
            tokio::try_join!(
                carry(
                    &mut client_rx,
                    backend_tx,
                    up_side,
                    &mut up,
                    &activity,
                    &ends
                ),
                carry(
                    &mut backend_rx,
                    client_tx,
                    down_side,
                    &mut down,
                    &activity,
                    &ends
                ),
            )
        };
        tokio::select! {
            r = both => r.map(|_| ()),
            e = activity.idle_for(idle) => Err(e),
        }
    };
    let moved = Transferred {
        upstream: up,
        downstream: down,
    };
    (moved, end)
}
