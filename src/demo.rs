//! `vipd demo`: two small built-in HTTP backends that answer with their own
//! name, so the embedded demo configuration works out of the box.

use std::convert::Infallible;
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

/// Serve `name` over HTTP/1.1 on an already bound listener until shutdown.
pub async fn serve_backend(listener: TcpListener, name: String, shutdown: Shutdown) {
    let addr = listener.local_addr().ok();
    info!(backend = %name, addr = ?addr, "demo backend listening");
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
                let body = format!(
                    "hello from {name} ({}), you asked for {} {} from {peer}\n",
                    addr.map(|a| a.to_string()).unwrap_or_default(),
                    req.method(),
                    req.uri()
                );
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain")
                            .header("x-backend", name_header(&body))
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

fn name_header(body: &str) -> String {
    body.split_whitespace().nth(2).unwrap_or("demo").to_string()
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
