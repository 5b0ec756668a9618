//! `tls` listeners: terminate TLS in the connection's task (under the
//! listener's `handshake_timeout`), then forward the plaintext to a backend
//! of the listener's pool as a byte stream.

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Snapshot, l4};
use crate::config;

/// Handshake with the client, connect a backend, and splice the two.
pub async fn forward(
    client: TcpStream,
    origin: l4::Origin,
    listener: &config::Listener,
    snap: &Snapshot,
) {
    let started = Instant::now();
    let Some(acceptor) = snap.tls.acceptor(&listener.name) else {
        warn!("listener has no TLS configuration; closing");
        return;
    };
    let tls = match acceptor.accept(client).await {
        Ok(s) => s,
        Err(e) => {
            debug!(peer = %origin.client, failure = %e, side = "client", "TLS handshake failed");
            return;
        }
    };
    {
        let conn = tls.get_ref().1;
        debug!(
            sni = conn.server_name().unwrap_or("-"),
            version = ?conn.protocol_version(),
            resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
            "TLS handshake complete"
        );
    }
    let Some(pool_cfg) = listener.pool.as_deref().and_then(|p| snap.config.pool(p)) else {
        warn!("listener has no pool; closing");
        return;
    };
    let (backend, lease) = match l4::connect_for(listener, pool_cfg, snap, origin).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, side = "backend", "closing client connection: no backend reachable");
            return;
        }
    };
    let result = l4::pipe(tls, backend, listener.idle_timeout).await;
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(t) => info!(backend = %lease.address, bytes_in = t.upstream, bytes_out = t.downstream,
            duration_ms = ms, "connection closed"),
        Err(e) => {
            info!(backend = %lease.address, error = %e, duration_ms = ms, "connection ended with error")
        }
    }
}
