//! L4 (`tcp` listener) forwarding over real loopback sockets.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tcp_config(backends: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        r#"
[global]
grace_period = "5s"

[[listener]]
name = "l4"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "p"

[[pool]]
name = "p"
scheduler = "rr"
connect_timeout = "1s"
backends = [{}]
"#,
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_cross_the_proxy_both_ways_byte_exact() {
    let backend = echo_backend().await;
    let running = start(&tcp_config(&[backend])).await;
    let addr = running.local_addr("l4").await.unwrap();

    let payload: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let echoed = read_all(&mut r).await;
    writer.await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ from the payload");
}

#[tokio::test]
async fn half_close_lets_the_backend_answer_after_the_client_stops_sending() {
    // The backend reads the whole request (until EOF), then answers with its length.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        s.write_all(format!("got {} bytes", req.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let running = start(&tcp_config(&[backend])).await;
    let addr = running.local_addr("l4").await.unwrap();

    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"hello, backend").await.unwrap();
    c.shutdown().await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), read_all(&mut c))
        .await
        .expect("reply after half-close");
    assert_eq!(reply, b"got 14 bytes");
}

#[tokio::test]
async fn round_robin_alternates_between_backends() {
    let (a, _) = named_backend("A").await;
    let (b, _) = named_backend("B").await;
    let running = start(&tcp_config(&[a, b])).await;
    let addr = running.local_addr("l4").await.unwrap();
    let mut seen = String::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        seen.push_str(&String::from_utf8(read_all(&mut c).await).unwrap());
    }
    assert_eq!(seen, "ABAB");
}

#[tokio::test]
async fn a_refused_backend_is_skipped_for_the_next_one() {
    let dead = closed_port().await;
    let (live, count) = named_backend("live").await;
    let running = start(&tcp_config(&[dead, live])).await;
    let addr = running.local_addr("l4").await.unwrap();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_all(&mut c).await, b"live");
    }
    assert_eq!(*count.lock().unwrap(), 3);
}

#[test]
fn a_refused_backend_closes_the_client_promptly_and_is_logged() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dead = rt.block_on(closed_port());
    let vipd = Vipd::run(&tcp_config(&[dead]));
    let addr = vipd.listening(&["l4"])["l4"];
    let started = std::time::Instant::now();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut c, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the client connection is closed without data");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        started.elapsed()
    );
    let line = vipd.wait_for("connect failed", Duration::from_secs(5));
    assert!(line.contains(&format!("backend={dead}")), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    vipd.wait_for("no backend reachable", Duration::from_secs(5));
}

#[test]
fn sigterm_drains_an_open_connection_then_exits_zero() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(echo_backend());
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    let mut vipd = Vipd::run(&tcp_config(&[backend]));
    let addr = vipd.listening(&["l4"])["l4"];

    let mut open = std::net::TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    use std::io::{Read, Write};
    open.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"before");

    vipd.signal("TERM");
    vipd.wait_for("draining open connections", Duration::from_secs(5));
    // New connections are refused once the listener is closed.
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener still accepts after SIGTERM"
    );
    // The open connection still works during the grace period.
    open.write_all(b"during").unwrap();
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");
    assert_eq!(
        vipd.child.try_wait().unwrap(),
        None,
        "exited before the drain"
    );
    // Closing it lets vipd finish.
    open.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    assert_eq!(vipd.wait_exit(Duration::from_secs(4)), Some(0));
    // The log is read by another thread: its last line may come after the exit.
    vipd.wait_for("vipd stopped", Duration::from_secs(2));
}
