//! `tcp` listeners move bytes with splice(2) through pipes: byte-exact both
//! ways at once, half-close each way, the idle timeout, resets, a backend
//! that never reads, and idle connections that hold no pipe, over real
//! loopback sockets (and the real binary where its log or its descriptors
//! are observed).

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn tcp_config(backend: SocketAddr, idle: &str) -> String {
    format!(
        r#"
[global]
grace_period = "1s"

[[listener]]
name = "l4"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "p"
idle_timeout = "{idle}"

[[pool]]
name = "p"
connect_timeout = "1s"
backends = [{{ address = "{backend}" }}]
"#
    )
}

/// `len` bytes of a pattern that differs per `seed`.
fn payload(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// FNV-1a over `data`: a checksum both ends compute.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A backend that, on its one connection, sends `send` while reading
/// everything the client sends, and reports what it read.
async fn sending_backend(send: Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&send).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let got = read_all(&mut r).await;
        writer.await.unwrap();
        got
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_megabytes_cross_both_ways_at_once_with_matching_checksums() {
    let down = payload(20 << 20, 7);
    let up = payload(20 << 20, 99);
    let (backend, received) = sending_backend(down.clone()).await;
    let running = start(&tcp_config(backend, "30s")).await;
    let addr = running.local_addr("l4").await.unwrap();

    let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let sent = up.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let got = tokio::time::timeout(Duration::from_secs(60), read_all(&mut r))
        .await
        .expect("transfer finished");
    writer.await.unwrap();
    let at_backend = received.await.unwrap();
    assert_eq!(got.len(), down.len());
    assert_eq!(checksum(&got), checksum(&down), "backend to client");
    assert_eq!(at_backend.len(), up.len());
    assert_eq!(checksum(&at_backend), checksum(&up), "client to backend");
}

#[tokio::test]
async fn the_backend_ending_its_side_first_leaves_the_client_sending() {
    // The backend greets, ends its side, then reads until the client's EOF
    // and reports how much it got on a second connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let rest = read_all(&mut s).await;
        tx.send(rest).unwrap();
    });
    let running = start(&tcp_config(backend, "30s")).await;
    let addr = running.local_addr("l4").await.unwrap();

    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut greeting))
        .await
        .expect("EOF passed on to the client")
        .unwrap();
    assert_eq!(greeting, b"bye");
    // After the backend's EOF the client still sends, a lot.
    let after = payload(3 << 20, 5);
    c.write_all(&after).await.unwrap();
    c.shutdown().await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("backend got the client's EOF")
        .unwrap();
    assert_eq!(rest.len(), after.len());
    assert_eq!(checksum(&rest), checksum(&after));
}

#[tokio::test]
async fn a_client_ending_its_side_first_still_gets_the_whole_answer() {
    let answer = payload(3 << 20, 11);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let sent = answer.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let req = read_all(&mut s).await;
        assert_eq!(req, b"request");
        s.write_all(&sent).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let running = start(&tcp_config(backend, "30s")).await;
    let addr = running.local_addr("l4").await.unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"request").await.unwrap();
    c.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), read_all(&mut c))
        .await
        .expect("answer after half-close");
    assert_eq!(got.len(), answer.len());
    assert_eq!(checksum(&got), checksum(&answer));
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout_on_both_sides() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&b).await.unwrap();
        // Then silent; report when vipd closes this side.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        tx.send(Instant::now()).unwrap();
    });
    let running = start(&tcp_config(backend, "500ms")).await;
    let addr = running.local_addr("l4").await.unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).await.unwrap();
    let silent_from = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("closed by the idle timeout")
        .unwrap();
    let took = silent_from.elapsed();
    assert!(rest.is_empty());
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    let backend_closed = tokio::time::timeout(Duration::from_secs(3), rx)
        .await
        .expect("backend side closed too")
        .unwrap();
    assert!(backend_closed >= silent_from + Duration::from_millis(450));
}

#[tokio::test]
async fn traffic_one_way_only_keeps_a_connection_past_its_idle_timeout() {
    // The backend sends a byte every 100 ms for 2 s; the client never sends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(b"t").await.unwrap();
        }
        s.shutdown().await.unwrap();
        let _ = read_all(&mut s).await;
    });
    let running = start(&tcp_config(backend, "500ms")).await;
    let addr = running.local_addr("l4").await.unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), read_all(&mut c))
        .await
        .expect("stream ended");
    assert_eq!(
        got,
        vec![b't'; 20],
        "every tick arrived, none cut by the idle timeout"
    );
}

/// vipd's log, after `needle` shows up in it.
fn log_with(vipd: &Vipd, needle: &str) -> String {
    vipd.wait_for(needle, Duration::from_secs(10));
    vipd.log()
}

/// Send a TCP RST instead of a FIN when `s` is dropped.
fn reset_on_drop(s: &std::net::TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

#[test]
fn a_client_reset_mid_transfer_closes_the_backend_and_is_logged_against_the_client() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Stream to the client while reading what it sends, until vipd
        // closes this side.
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || while w.write_all(&[7u8; 16 * 1024]).is_ok() {});
        let mut buf = vec![0u8; 64 * 1024];
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break Instant::now(),
                Ok(_) => {}
            }
        };
        tx.send(ended).unwrap();
    });
    let vipd = Vipd::run(&tcp_config(backend, "30s"));
    let addr = vipd.listening(&["l4"])["l4"];
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(&payload(1 << 20, 3)).unwrap();
    let mut some = [0u8; 4096];
    c.read_exact(&mut some).unwrap();
    reset_on_drop(&c);
    let reset_at = Instant::now();
    drop(c);
    let ended = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("backend connection closed after the client's reset");
    assert!(ended.duration_since(reset_at) < Duration::from_secs(3));
    let log = log_with(&vipd, "connection ended with error");
    let line = log
        .lines()
        .find(|l| l.contains("connection ended with error"))
        .unwrap();
    assert!(line.contains("side=\"client\""), "{line}");
    assert!(
        line.contains("reset by peer") || line.contains("Broken pipe"),
        "{line}"
    );
}

#[test]
fn a_backend_reset_mid_transfer_closes_the_client_and_is_logged_against_the_backend() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&payload(256 << 10, 1)).unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        reset_on_drop(&s);
    });
    let vipd = Vipd::run(&tcp_config(backend, "30s"));
    let addr = vipd.listening(&["l4"])["l4"];
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"stop").unwrap();
    // The client sees its connection end (FIN or RST), promptly.
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(got.len() <= 256 << 10);
    let log = log_with(&vipd, "connection ended with error");
    let line = log
        .lines()
        .find(|l| l.contains("connection ended with error"))
        .unwrap();
    assert!(line.contains("side=\"backend\""), "{line}");
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Descriptors of `pid` that are pipes.
fn pipe_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("pipe:"))
        .count()
}

#[test]
fn a_backend_that_never_reads_bounds_what_the_client_can_push_and_vipd_memory() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(20));
        drop(s);
    });
    let vipd = Vipd::run(&tcp_config(backend, "30s"));
    let addr = vipd.listening(&["l4"])["l4"];
    let pid = vipd.child.id();
    let before = rss_kib(pid);
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_nonblocking(true).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    let mut pushed = 0usize;
    let mut last_progress = Instant::now();
    let started = Instant::now();
    // Push until nothing more is taken for half a second.
    while last_progress.elapsed() < Duration::from_millis(500)
        && started.elapsed() < Duration::from_secs(15)
    {
        match c.write(&chunk) {
            Ok(n) => {
                pushed += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    let grown = rss_kib(pid).saturating_sub(before);
    // Kernel socket buffers on loopback (both hops) and one pipe: tens of
    // MiB at most, never unbounded.
    assert!(
        pushed < 64 << 20,
        "client pushed {pushed} bytes into a non-reader"
    );
    assert!(grown < 4 * 1024, "vipd grew by {grown} KiB");
    assert!(vipd_alive(pid));
}

fn vipd_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn small_exchanges_take_no_pipe_and_a_bulk_one_splices_through_a_few_pooled_pipes() {
    let backend = echo_thread();
    let vipd = Vipd::run(&tcp_config(backend, "30s"));
    let addr = vipd.listening(&["l4"])["l4"];
    let pid = vipd.child.id();
    let baseline = pipe_fds(pid);
    let mut held = Vec::new();
    for i in 0..100u32 {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = payload(2048, i);
        c.write_all(&msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
        held.push(c);
    }
    // splice-auto: a burst smaller than the copy buffer goes by read and
    // send, so 100 small exchanges open no pipe at all.
    assert_eq!(
        pipe_fds(pid),
        baseline,
        "a pipe was opened for 2 KiB exchanges"
    );
    // A 40 MiB burst fills the copy buffer and goes on through pipes.
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let msg = payload(40 << 20, 7);
    let mut w = c.try_clone().unwrap();
    let sent = msg.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), msg.len());
    assert_eq!(checksum(&back), checksum(&msg));
    std::thread::sleep(Duration::from_millis(200));
    let pipes = pipe_fds(pid) - baseline;
    // The bulk exchange spliced; its pipes went back to the pool, and the
    // 100 idle connections hold none.
    assert!(
        pipes >= 2,
        "the 40 MiB exchange never used a pipe ({pipes} pipe fds)"
    );
    assert!(
        pipes <= 16,
        "{pipes} pipe fds for 100 idle connections: pipes are held while idle"
    );
    drop(held);
}

#[test]
fn without_a_pipe_to_spare_a_connection_is_copied_in_user_space() {
    // 32 descriptors: a budget of 4 pipes. Four connections whose backend
    // never reads each keep a full pipe; a fifth must copy in user space.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        while let Ok((s, _)) = stalled.accept() {
            keep.push(s);
        }
    });
    let echo = echo_thread();
    let dir = tempdir();
    let path = dir.join("vipd.toml");
    let text = format!(
        "{}\n[[listener]]\nname = \"echo\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"e\"\n\n[[pool]]\nname = \"e\"\nbackends = [{{ address = \"{echo}\" }}]\n",
        tcp_config(stalled_addr, "30s")
    );
    std::fs::write(&path, text).unwrap();
    let script = format!(
        "ulimit -n 32 && exec {} run -c {}",
        env!("CARGO_BIN_EXE_vipd"),
        path.display()
    );
    let vipd = Vipd::spawn(
        Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null()),
        dir,
    );
    let addrs = vipd.listening(&["l4", "echo"]);
    let pid = vipd.child.id();
    // (vipd's stdout and stderr are pipes too.)
    let base = pipe_fds(pid);
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let mut c = std::net::TcpStream::connect(addrs["l4"]).unwrap();
        c.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 256 * 1024];
        let until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < until {
            if c.write(&chunk).is_err() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        stuck.push(c);
    }
    // Each stalled connection takes its pipe once a read fills the stack
    // buffer; on a loaded machine the last may take a moment.
    let until = Instant::now() + Duration::from_secs(10);
    while pipe_fds(pid) < base + 8 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pipes = pipe_fds(pid);
    assert_eq!(
        pipes,
        base + 8,
        "the four stalled connections hold the budget's 4 pipes"
    );
    let mut c = std::net::TcpStream::connect(addrs["echo"]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let msg = payload(2 << 20, 42);
    let mut w = c.try_clone().unwrap();
    let sent = msg.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), msg.len());
    assert_eq!(checksum(&back), checksum(&msg));
    assert_eq!(pipe_fds(pid), pipes, "no pipe beyond the budget was opened");
    drop(stuck);
}

#[test]
fn with_access_log_off_only_connections_that_end_badly_are_logged() {
    let backend = echo_thread();
    let quiet = tcp_config(backend, "30s").replace("[global]", "[global]\naccess_log = \"off\"");
    for (text, well_logged) in [(tcp_config(backend, "30s"), true), (quiet, false)] {
        let vipd = Vipd::run(&text);
        let addr = vipd.listening(&["l4"])["l4"];
        let mut good = std::net::TcpStream::connect(addr).unwrap();
        good.write_all(b"ping").unwrap();
        good.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        good.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"ping");
        // Then one that the client resets: always logged, and after the first.
        let mut bad = std::net::TcpStream::connect(addr).unwrap();
        bad.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        bad.read_exact(&mut b).unwrap();
        reset_on_drop(&bad);
        drop(bad);
        let log = log_with(&vipd, "connection ended with error");
        assert_eq!(log.contains("connection closed"), well_logged, "{log}");
    }
}
