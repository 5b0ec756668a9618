//! `vipd demo`: two small built-in HTTP backends that echo what they
//! received (method, target, Host, X-Forwarded-For, X-Forwarded-Proto and
//! the peer), so the embedded demo configuration works out of the box and
//! shows what vipd forwards.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::shutdown::Shutdown;

/// Headers a demo backend echoes, in this order.
const ECHOED: [&str; 3] = ["host", "x-forwarded-for", "x-forwarded-proto"];

/// The answer of backend `name` at `addr` to `req` from `peer`: a line
/// naming the backend and the request, then one line per echoed header
/// (`(none)` when absent). Header values are printed with non-printable
/// bytes escaped, as they are client input.
pub fn echo(name: &str, addr: SocketAddr, peer: SocketAddr, req: &Request<impl Sized>) -> String {
    let mut body = format!(
        "hello from {name} ({addr}), you asked for {} {} from {peer}\n",
        req.method(),
        req.uri()
    );
    for h in ECHOED {
        let values: Vec<String> = req
            .headers()
            .get_all(h)
            .iter()
            .map(|v| v.as_bytes().escape_ascii().to_string())
            .collect();
        let shown = if values.is_empty() {
            "(none)".to_string()
        } else {
            values.join(" | ")
        };
        let _ = writeln!(body, "  {h}: {shown}");
    }
    body
}

/// Serve `name` over HTTP/1.1 on an already bound listener until shutdown.
pub async fn serve_backend(listener: TcpListener, name: String, shutdown: Shutdown) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    info!(backend = %name, %addr, "demo backend listening");
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.triggered() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => { debug!(error = %e, "demo backend accept failed"); continue }
            },
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = echo(&name, addr, peer, &req);
                let name = name.clone();
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain")
                            .header("x-backend", name)
                            .body(Full::new(Bytes::from(body)))
                            .expect("static response parts are valid"),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// Bind the demo backends named in the demo configuration.
pub async fn start_backends(
    addrs: &[SocketAddr],
    shutdown: &Shutdown,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut bound = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let listener = TcpListener::bind(addr).await?;
        bound.push(listener.local_addr()?);
        tokio::spawn(serve_backend(
            listener,
            format!("backend-{}", i + 1),
            shutdown.clone(),
        ));
    }
    Ok(bound)
}
