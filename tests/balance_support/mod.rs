//! Fixtures for the balance integration tests: backends that answer with
//! the address they were reached on, clients bound to a chosen source
//! address, and an in-process proxy.

#![allow(dead_code)] // each test file uses a different subset

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use vipd::app::Running;

/// What a backend connection received, reported when the client closed it.
#[derive(Debug)]
pub(crate) struct Received {
    /// The backend address the connection reached.
    pub(crate) backend: SocketAddr,
    /// Every byte the backend read.
    pub(crate) bytes: Vec<u8>,
}

/// Backends listening on `hosts`, all on one port. Each connection is
/// greeted with "<backend addr>\n", then read to EOF and reported on the
/// returned channel.
pub(crate) async fn backends(hosts: &[&str]) -> (u16, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    'retry: for _ in 0..20 {
        let first = TcpListener::bind((hosts[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for h in &hosts[1..] {
            match TcpListener::bind((*h, port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'retry,
            }
        }
        for l in listeners {
            tokio::spawn(serve(l, tx.clone()));
        }
        return (port, rx);
    }
    panic!("no common free port for {hosts:?}");
}

async fn serve(listener: TcpListener, tx: mpsc::UnboundedSender<Received>) {
    let backend = listener.local_addr().unwrap();
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = s.write_all(format!("{backend}\n").as_bytes()).await;
            let mut bytes = Vec::new();
            let _ = s.read_to_end(&mut bytes).await;
            let _ = tx.send(Received { backend, bytes });
        });
    }
}

/// A connection to `to` from `from` (port chosen by the kernel).
pub(crate) async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let from: IpAddr = from.parse().unwrap();
    let socket = if from.is_ipv4() {
        TcpSocket::new_v4().unwrap()
    } else {
        TcpSocket::new_v6().unwrap()
    };
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Connect from `from` to `to` and return the backend address the proxy
/// chose (the backend's greeting), leaving the connection closed.
pub(crate) async fn backend_for(from: &str, to: SocketAddr) -> SocketAddr {
    let stream = connect_from(from, to).await;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.unwrap();
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("greeting {line:?}"))
}

/// Parse a configuration text.
pub(crate) fn config(text: &str) -> vipd::config::Config {
    vipd::config::parse(text, Path::new("test.toml")).unwrap()
}

/// Start the proxy for `text`.
pub(crate) async fn start(text: &str) -> Arc<Running> {
    Running::start(config(text)).await.unwrap()
}
