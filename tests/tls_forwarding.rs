//! `tls` listeners: after the handshake, bytes are copied both ways (the
//! copy that holds no buffer while idle): byte-exact at once both ways,
//! half-close, and a client that reads slowly (the bytes the client cannot
//! take yet are kept until it does).

mod tls_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CONFIG: &str = r#"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "p"
default_vhost = "a"
idle_timeout = "30s"

[[pool]]
name = "p"
backends = [{ address = "{backend}" }]

[[vhost]]
name = "a"
hosts = ["a.test"]
pool = "p"
certificates = [{ cert = "a.crt", key = "a.key" }]
"#;

fn payload(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A backend that sends `send` while reading everything it is sent, and
/// reports what it read.
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
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        got
    });
    (addr, task)
}

async fn start_front(backend: SocketAddr) -> (Arc<vipd::app::Running>, SocketAddr, TempDir) {
    let pki = Pki::new();
    let dir = TempDir::new("tls-fwd");
    write_pair(dir.path(), "a", &pki.issue(&["a.test"], Alg::Ecdsa));
    let config = load_config(dir.path(), CONFIG, backend);
    let running = vipd::app::Running::start(config).await.unwrap();
    let addr = running.local_addr("front").await.unwrap();
    (running, addr, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_megabytes_cross_a_tls_listener_both_ways_at_once_byte_exact() {
    let down = payload(8 << 20, 1);
    let up = payload(8 << 20, 2);
    let (backend, received) = sending_backend(down.clone()).await;
    let (_running, addr, _dir) = start_front(backend).await;
    let client = Arc::new(client(TLS13_AND_12));
    let s = connect(addr, "a.test", &client).await.unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let sent = up.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got))
        .await
        .expect("transfer finished")
        .unwrap();
    writer.await.unwrap();
    assert!(
        got == down,
        "backend to client: {} of {} bytes, or they differ",
        got.len(),
        down.len()
    );
    let at_backend = received.await.unwrap();
    assert!(
        at_backend == up,
        "client to backend: {} of {} bytes, or they differ",
        at_backend.len(),
        up.len()
    );
}

#[tokio::test]
async fn a_tls_client_that_reads_slowly_still_gets_every_byte_in_order() {
    let down = payload(2 << 20, 9);
    let (backend, _received) = sending_backend(down.clone()).await;
    let (_running, addr, _dir) = start_front(backend).await;
    let client = Arc::new(client(TLS13_AND_12));
    let mut s = connect(addr, "a.test", &client).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Let the backend fill every buffer on the way before reading at all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("data keeps coming")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() % (256 * 1024) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        got == down,
        "{} of {} bytes, or they differ",
        got.len(),
        down.len()
    );
}

#[tokio::test]
async fn a_tls_client_ending_its_side_first_still_gets_the_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
    let (_running, addr, _dir) = start_front(backend).await;
    let client = Arc::new(client(TLS13_AND_12));
    let mut s = connect(addr, "a.test", &client).await.unwrap();
    s.write_all(&payload(100_000, 3)).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .expect("reply after the client's close_notify")
        .unwrap();
    assert_eq!(reply, b"got 100000 bytes");
}
