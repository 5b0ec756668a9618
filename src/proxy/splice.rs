//! Zero-copy forwarding between two TCP sockets (`tcp` listeners): bytes
//! go from one socket into a pipe and from the pipe into the other socket
//! with splice(2), so they are never copied into user space.
//!
//! A direction borrows a pipe only while it has bytes to move and gives it
//! back once the pipe is empty and its socket has nothing more to read, so
//! an idle connection holds neither a pipe nor a buffer. Empty pipes wait
//! in a small per-thread pool for the next burst of any connection (a new
//! connection costs no pipe(2) call in steady state). Pipes are file
//! descriptors: at most a quarter of the process's descriptor limit (and
//! at most 4096 pipes) is spent on them (HAProxy's `maxpipes` is a quarter
//! of `maxconn`); past that, or when pipe(2) fails, a direction copies
//! through a user-space buffer for the burst instead.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::copy::{Activity, Ended, Side, Transferred};

/// Most bytes one splice call moves: the default pipe capacity (16 pages).
const CHUNK: usize = 64 * 1024;
const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);
/// Empty pipes kept per worker thread between bursts.
const SPARE_PER_THREAD: usize = 64;
/// Bytes a direction without a pipe copies through user space at once.
const FALLBACK_BUFFER: usize = 16 * 1024;

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

/// Move everything `from` sends to `to` until `from` ends its side, then
/// pass the end on (see [`Ends::pass_on`]). `total` counts the bytes that
/// reached `to`.
async fn carry(
    from: &TcpStream,
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
        from.readable().await.map_err(read_err)?;
        let Some(pipe) = Pipe::take() else {
            if copy_burst(from, to, sides, total, activity).await? {
                ends.pass_on(to);
                return Ok(());
            }
            continue;
        };
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

/// Without a pipe: copy what `from` has now through a buffer that lives
/// for this burst only. `Ok(true)` when `from` ended its side.
async fn copy_burst(
    from: &TcpStream,
    to: &TcpStream,
    sides: (Side, Side),
    total: &mut u64,
    activity: &Activity,
) -> Result<bool, Ended> {
    let mut buf = vec![0u8; FALLBACK_BUFFER];
    loop {
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Ended::Failed {
                    side: sides.0,
                    reading: true,
                    source,
                });
            }
        };
        let mut off = 0;
        while off < n {
            match to.try_write(&buf[off..n]) {
                Ok(k) => off += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Ended::Failed {
                        side: sides.1,
                        reading: false,
                        source,
                    });
                }
            }
            if off < n {
                to.writable().await.map_err(|source| Ended::Failed {
                    side: sides.1,
                    reading: false,
                    source,
                })?;
            }
        }
        *total += n as u64;
        activity.touch();
    }
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
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
) -> (Transferred, Result<(), Ended>) {
    let activity = Activity::new();
    let ends = Ends(AtomicBool::new(false));
    let (mut up, mut down) = (0u64, 0u64);
    let end = {
        let up_side = (Side::Client, Side::Backend);
        let down_side = (Side::Backend, Side::Client);
        let both = async {
            tokio::try_join!(
                carry(client, backend, up_side, &mut up, &activity, &ends),
                carry(backend, client, down_side, &mut down, &activity, &ends),
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
