//! vipd: a front-door load balancer for Linux.
//!
//! One config drives a user-space tier (TCP, TLS and HTTP proxying with
//! IPVS-style scheduling and persistence) and the kernel IPVS tier.
//!
//! # Layout
//! - [`config`]: parse and validate the TOML file into a typed model.
//! - [`balance`]: schedulers and pools (pure selection, no I/O).
//! - [`proxy`]: listeners, accept loops, L4 forwarding.
//! - [`ipvs`]: the kernel IPVS tier over generic netlink, reconciled.
//! - [`tls`]: certificates, SNI resolution, rustls acceptors, reload, gen-cert.
//! - [`shutdown`]: the shutdown signal and drain wait.
//! - [`app`]: composition root: binds, spawns, handles signals.
//! - [`demo`]: the built-in demo backends.
//! - [`privileges`]: dropping root after binding.

#![forbid(unsafe_code)]
#![allow(missing_docs)] // fields of the config model are documented in README.md

pub mod app;
pub mod balance;
pub mod config;
pub mod demo;
pub mod ipvs;
pub mod privileges;
pub mod proxy;
pub mod shutdown;
pub mod tls;
