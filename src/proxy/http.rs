//! The L7 HTTP proxy of `http` and `https` listeners.
//!
//! Clients speak HTTP/1.1 (keep-alive, pipelining) or HTTP/2 (ALPN on TLS,
//! prior knowledge on plain TCP). Each request names exactly one host (the
//! target's authority, else Host, in [`crate::authority`]'s normal form;
//! two that disagree are a 400), which must agree with the TLS SNI and
//! routes it to a vhost (exact name, then `*.` wildcard, then the
//! listener's default); its path prefix picks a pool. It is rewritten
//! (hop-by-hop headers and an untrusted client's address claims out,
//! forwarding headers in, that one host as the only Host) and sent over a
//! pooled keep-alive connection to a backend chosen by the pool's
//! scheduler. Every phase has a deadline (request head, request body,
//! send, response head, response body, idle), the side that misses it is
//! the one logged, and only failures the backend caused count in its
//! passive checks.
//!
//! - [`route`]: vhost and path tables, rebuilt per configuration.
//! - [`upstream`]: the per-pool backend clients, kept across reloads.
//! - [`h1`]: the pass-through HTTP/1.1 codec, served in the connection's
//!   task.
//! - [`conn`]: one client connection (the seam between the codecs), its header, send and idle deadlines,
//!   and shutdown.
//! - [`plan`]: routing a request head (either codec's) to a backend or a
//!   local answer.
//! - [`service`]: the hyper request path: forward, tunnels.
//! - [`headers`]: hop-by-hop, forwarding and upgrade headers, trailers.
//! - [`body`]: body limits and idle deadlines, byte counts, the end of an
//!   exchange.
//! - [`access`]: the access log.

pub mod access;
pub mod body;
pub mod conn;
pub mod h1;
pub mod headers;
pub mod plan;
pub mod route;
pub mod service;
pub mod upstream;

pub use conn::{Accepted, accept, serve};
pub use route::{Arrival, Routes};
pub use upstream::Upstreams;
