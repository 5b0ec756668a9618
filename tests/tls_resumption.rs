//! Session resumption: stateless tickets (TLS 1.3 and 1.2), session ids
//! from the server-side cache (TLS 1.2), and resumption across a reload.
//! Each test disables the other mechanism on the server so that a resumed
//! handshake proves the one under test.

mod tls_support;

use std::sync::Arc;

use rustls::HandshakeKind;
use rustls::client::{Resumption, Tls12Resumption};
use tls_support::*;

fn config(tls: &str) -> String {
    format!(
        r#"
[tls]
{tls}
[[listener]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "echo"
[[pool]]
name = "echo"
backends = [{{ address = "{{backend}}" }}]
[[vhost]]
name = "a"
hosts = ["a.test"]
pool = "echo"
certificates = [{{ cert = "a.crt", key = "a.key" }}]
"#
    )
}

struct Fixture {
    _dir: TempDir,
    running: Arc<vipd::app::Running>,
    addr: std::net::SocketAddr,
}

async fn start(tls: &str) -> Fixture {
    let dir = TempDir::new("tls-resume");
    write_pair(dir.path(), "a", &Pki::new().issue(&["a.test"], Alg::Ecdsa));
    let config = load_config(dir.path(), &config(tls), echo_backend().await);
    let running = vipd::app::Running::start(config).await.unwrap();
    let addr = running.local_addr("front").await.unwrap();
    Fixture {
        _dir: dir,
        running,
        addr,
    }
}

/// A client that keeps sessions (tickets and session ids).
fn resuming_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut cfg = client(versions);
    cfg.resumption = Resumption::in_memory_sessions(16);
    Arc::new(cfg)
}

/// Handshake, exchange data (so that TLS 1.3 tickets sent after the
/// handshake are read), close, and report how the handshake went.
async fn handshake(f: &Fixture, client: &Arc<rustls::ClientConfig>) -> HandshakeKind {
    let mut s = connect(f.addr, "a.test", client).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"data").await, b"data");
    s.get_ref().1.handshake_kind().unwrap()
}

#[tokio::test]
async fn a_second_tls_1_3_handshake_resumes_with_a_stateless_ticket() {
    let f = start("session_tickets = true\nsession_cache_size = 0").await;
    let client = resuming_client(TLS13_ONLY);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Resumed);
    // The listener's metrics count what the client saw (the server task
    // records before splicing, so both are in by the time data echoed).
    let stats = f.running.metrics().listener("front");
    use vipd::metrics::Handshake;
    assert_eq!(
        (
            stats.handshakes(Handshake::Full),
            stats.handshakes(Handshake::Resumed),
            stats.handshakes(Handshake::Failed)
        ),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn a_second_tls_1_2_handshake_resumes_with_a_stateless_ticket() {
    let f = start("session_tickets = true\nsession_cache_size = 0").await;
    let mut cfg = client(TLS12_ONLY);
    cfg.resumption =
        Resumption::in_memory_sessions(16).tls12_resumption(Tls12Resumption::SessionIdOrTickets);
    let client = Arc::new(cfg);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Resumed);
}

#[tokio::test]
async fn a_second_tls_1_2_handshake_resumes_by_session_id_when_tickets_are_off() {
    let f = start("session_tickets = false\nsession_cache_size = 1000").await;
    let mut cfg = client(TLS12_ONLY);
    cfg.resumption =
        Resumption::in_memory_sessions(16).tls12_resumption(Tls12Resumption::SessionIdOnly);
    let client = Arc::new(cfg);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Resumed);
}

#[tokio::test]
async fn a_tls_1_3_handshake_resumes_from_the_session_cache_when_tickets_are_off() {
    let f = start("session_tickets = false\nsession_cache_size = 1000").await;
    let client = resuming_client(TLS13_ONLY);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Resumed);
}

#[tokio::test]
async fn without_tickets_and_cache_every_handshake_is_full() {
    let f = start("session_tickets = false\nsession_cache_size = 0").await;
    for versions in [TLS13_ONLY, TLS12_ONLY] {
        let client = resuming_client(versions);
        assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
        assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
    }
}

#[tokio::test]
async fn tickets_and_cached_sessions_issued_before_a_reload_resume_after_it() {
    let tickets = start("session_tickets = true\nsession_cache_size = 0").await;
    let by_ticket = resuming_client(TLS13_ONLY);
    assert_eq!(handshake(&tickets, &by_ticket).await, HandshakeKind::Full);
    tickets.running.reload().await.unwrap();
    assert_eq!(
        handshake(&tickets, &by_ticket).await,
        HandshakeKind::Resumed
    );

    let ids = start("session_tickets = false\nsession_cache_size = 1000").await;
    let mut cfg = client(TLS12_ONLY);
    cfg.resumption =
        Resumption::in_memory_sessions(16).tls12_resumption(Tls12Resumption::SessionIdOnly);
    let by_id = Arc::new(cfg);
    assert_eq!(handshake(&ids, &by_id).await, HandshakeKind::Full);
    ids.running.reload().await.unwrap();
    assert_eq!(handshake(&ids, &by_id).await, HandshakeKind::Resumed);
}

#[tokio::test]
async fn a_cached_session_is_not_resumed_once_session_timeout_has_passed() {
    let f =
        start("session_tickets = false\nsession_cache_size = 1000\nsession_timeout = \"2s\"").await;
    let mut cfg = client(TLS12_ONLY);
    cfg.resumption =
        Resumption::in_memory_sessions(16).tls12_resumption(Tls12Resumption::SessionIdOnly);
    let client = Arc::new(cfg);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Resumed);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Resumed);
}

#[tokio::test]
async fn a_ticket_is_not_resumed_once_ticket_lifetime_has_passed() {
    let f = start("session_tickets = true\nsession_cache_size = 0\nticket_lifetime = \"2s\"").await;
    let client = resuming_client(TLS13_ONLY);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Resumed);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(handshake(&f, &client).await, HandshakeKind::Full);
}
