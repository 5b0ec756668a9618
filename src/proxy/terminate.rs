//! `tls` listeners: terminate TLS in the connection's task (under the
//! listener's `handshake_timeout`), then forward the plaintext to a backend
//! of the listener's pool as a byte stream.

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Snapshot, l4};
use crate::config;
use crate::metrics::{Handshake, ListenerStats};

/// Handshake with the client, connect a backend, and splice the two.
pub async fn forward(
    client: TcpStream,
    origin: l4::Origin,
    listener: &config::Listener,
    snap: &Snapshot,
    stats: &ListenerStats,
) {
    let started = Instant::now();
    let Some(acceptor) = snap.tls.acceptor(&listener.name) else {
        warn!("listener has no TLS configuration; closing");
        return;
    };
    let tls = match acceptor.accept(client).await {
        Ok(s) => s,
        Err(e) => {
            stats.record_handshake(Handshake::Failed, started.elapsed());
            debug!(peer = %origin.client, failure = %e, side = "client", "TLS handshake failed");
            return;
        }
    };
    {
        let conn = tls.get_ref().1;
        let kind = match conn.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        };
        stats.record_handshake(kind, started.elapsed());
        debug!(
            sni = conn.server_name().unwrap_or("-"),
            version = ?conn.protocol_version(),
            alpn = conn.alpn_protocol().map(String::from_utf8_lossy).as_deref().unwrap_or("-"),
            resumed = kind == Handshake::Resumed,
            "TLS handshake complete"
        );
    }
    l4::serve(tls, origin, listener, snap, stats, started).await
}
