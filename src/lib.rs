//! vipd: a front-door load balancer for Linux.
//!
//! One config drives a user-space tier (TCP, TLS and HTTP proxying with
//! IPVS-style scheduling and persistence) and the kernel IPVS tier.
//!
//! # Layout
//! - [`config`]: parse and validate the TOML file into a typed model.
//! - [`authority`]: the one validator and normal form of host names
//!   (Host, `:authority`, SNI), a leaf used by [`tls`], [`proxy`] and
//!   [`admin`].
//! - [`balance`]: schedulers and pools (pure selection, no I/O).
//! - [`proxy`]: listeners, accept loops, connection caps, L4 forwarding,
//!   the HTTP proxy.
//! - [`tls`]: certificates, SNI resolution, rustls acceptors, reload, gen-cert.
//! - [`health`]: active health checks (and the IPVS health board).
//! - [`metrics`]: counters the data path increments.
//! - [`admin`]: admin HTTP endpoint: metrics, JSON views, drain, reload.
//! - [`sd_notify`]: systemd readiness notification.
//! - [`ipvs`]: the kernel IPVS tier over generic netlink, reconciled.
//! - [`shutdown`]: the shutdown signal and drain wait.
//! - [`app`]: composition root: binds, spawns, handles signals.
//! - [`demo`]: the built-in demo backends.
//! - [`privileges`]: dropping root after binding.

#![forbid(unsafe_code)]
#![allow(missing_docs)] // fields of the config model are documented in README.md

pub mod admin;
pub mod app;
pub mod authority;
pub mod balance;
pub mod config;
pub mod demo;
pub mod health;
pub mod ipvs;
pub mod metrics;
pub mod privileges;
pub mod proxy;
pub mod sd_notify;
pub mod shutdown;
pub mod tls;
