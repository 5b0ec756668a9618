//! The L7 HTTP proxy of `http` and `https` listeners.
//!
//! Clients speak HTTP/1.1 (keep-alive, pipelining) or HTTP/2 (ALPN on TLS,
//! prior knowledge on plain TCP). Each request is routed by Host to a vhost
//! (exact name, then `*.` wildcard, then the listener's default) and by path
//! prefix to a pool, rewritten (hop-by-hop headers out, forwarding headers
//! in), and sent over a pooled keep-alive connection to a backend chosen by
//! the pool's scheduler.
//!
//! - [`route`]: vhost and path tables, rebuilt per configuration.
//! - [`upstream`]: the per-pool backend clients, kept across reloads.
//! - [`conn`]: one client connection, its timeouts and shutdown.
//! - [`service`]: the request path.
//! - [`headers`]: hop-by-hop and forwarding headers.
//! - [`body`]: body limits, byte counts, the end of an exchange.
//! - [`access`]: the access log.

pub mod access;
pub mod body;
pub mod conn;
pub mod headers;
pub mod route;
pub mod service;
pub mod upstream;

pub use conn::{Accepted, accept, serve};
pub use route::{Arrival, Routes};
pub use upstream::Upstreams;
