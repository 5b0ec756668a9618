//! Converts the validated config's `[ipvs]` section into kernel-level desired
//! state: `Vec<Service>` and the reconcile [`Policy`], and applies the real
//! servers' health to it ([`apply_health`]): the one place where vipd
//! decides between removing a failed real server, quiescing it, and what a
//! service does when none is left.

use std::net::SocketAddr;

use crate::config::{self, Config, OnAllDown};

use super::{Dest, Family, Forward, Policy, Protocol, Service, ServiceKey};

/// The IPVS services the config asks for, with persistence groups resolved
/// into timeout and netmask.
pub fn services(cfg: &Config) -> Vec<Service> {
    cfg.ipvs.services.iter().map(|s| service(cfg, s)).collect()
}

fn forward(f: config::Forwarding) -> Forward {
    match f {
        config::Forwarding::Dr => Forward::Dr,
        config::Forwarding::Nat => Forward::Nat,
        config::Forwarding::Tunnel => Forward::Tunnel,
    }
}

fn service(cfg: &Config, s: &config::IpvsService) -> Service {
    let key = match s.virtual_service {
        config::IpvsVirtual::Address { protocol, address } => ServiceKey::Addr {
            protocol: match protocol {
                config::IpvsProtocol::Tcp => Protocol::Tcp,
                config::IpvsProtocol::Udp => Protocol::Udp,
                config::IpvsProtocol::Sctp => Protocol::Sctp,
            },
            addr: address,
        },
        config::IpvsVirtual::Fwmark { mark, family } => ServiceKey::Fwmark {
            mark,
            family: match family {
                config::Family::Inet => Family::Inet,
                config::Family::Inet6 => Family::Inet6,
            },
        },
    };
    let mut svc = Service::new(key, s.scheduler.as_str());
    if let Some(group) = s
        .persistence
        .as_deref()
        .and_then(|n| cfg.persistence_group(n))
    {
        // ipvsadm -p takes whole seconds, at least 1
        svc.timeout = Some(
            u32::try_from(group.timeout.as_secs())
                .unwrap_or(u32::MAX)
                .max(1),
        );
        svc.netmask = match key.family() {
            Family::Inet => group.prefix_v4,
            Family::Inet6 => group.prefix_v6,
        };
    }
    svc.dests = s
        .real_servers
        .iter()
        .map(|r| Dest {
            addr: r.address,
            forward: forward(s.forwarding),
            weight: r.weight,
            upper_threshold: r.upper_threshold,
            lower_threshold: r.lower_threshold,
        })
        .collect();
    svc
}

/// The config names of the services, in the order of [`services`] (health
/// checks report real servers by service name).
pub fn names(cfg: &Config) -> Vec<String> {
    cfg.ipvs.services.iter().map(|s| s.name.clone()).collect()
}

/// What one service does with real servers its check reports down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnFailure {
    /// Keep a failed real server at weight 0 (keepalived's
    /// `inhibit_on_failure`) instead of removing it.
    pub inhibit: bool,
    /// What happens when no real server is up (the pools' `on_all_down`).
    pub all_down: AllDown,
}

/// `on_all_down` of one service, with the sorry server as a real server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllDown {
    /// Keep every real server at its configured weight, as if healthy.
    FailOpen,
    /// Add this real server while no other is up.
    Sorry(Dest),
    /// Leave the service without a usable real server.
    Refuse,
}

/// The name of an `on_all_down` setting, as in the config file.
pub fn on_failure_name(setting: OnAllDown) -> &'static str {
    match setting {
        OnAllDown::FailOpen => "fail_open",
        OnAllDown::Sorry(_) => "sorry",
        OnAllDown::Refuse => "refuse",
    }
}

/// The failure handling of every service, in the order of [`services`].
pub fn on_failure(cfg: &Config) -> Vec<OnFailure> {
    cfg.ipvs
        .services
        .iter()
        .map(|s| OnFailure {
            inhibit: s.inhibit_on_failure,
            all_down: match s.on_all_down {
                OnAllDown::FailOpen => AllDown::FailOpen,
                OnAllDown::Refuse => AllDown::Refuse,
                OnAllDown::Sorry(addr) => AllDown::Sorry(Dest {
                    addr,
                    forward: forward(s.forwarding),
                    weight: 1,
                    upper_threshold: 0,
                    lower_threshold: 0,
                }),
            },
        })
        .collect()
}

/// Applies health checks to the desired services, as keepalived does: a real
/// server reported down is removed at once (listed in
/// [`Service::evicted`], so that it does not drain and its persistence
/// templates die with it), or quiesced to weight 0 with `inhibit`. A
/// service whose every real server with a weight is down follows its
/// [`AllDown`]. `is_up(service name, address)` is `None` when unchecked.
/// Returns, per service, whether it is all down.
pub fn apply_health(
    services: &mut [Service],
    names: &[String],
    rules: &[OnFailure],
    is_up: impl Fn(&str, SocketAddr) -> Option<bool>,
) -> Vec<bool> {
    services
        .iter_mut()
        .zip(names)
        .zip(rules)
        .map(|((svc, name), rule)| {
            let down: Vec<SocketAddr> = svc
                .dests
                .iter()
                .filter(|d| is_up(name, d.addr) == Some(false))
                .map(|d| d.addr)
                .collect();
            let serving = svc.dests.iter().filter(|d| d.weight > 0);
            let all_down = serving.clone().next().is_some()
                && serving.into_iter().all(|d| down.contains(&d.addr));
            if all_down && rule.all_down == AllDown::FailOpen {
                return true;
            }
            if rule.inhibit {
                for d in svc.dests.iter_mut().filter(|d| down.contains(&d.addr)) {
                    d.weight = 0;
                }
            } else {
                svc.dests.retain(|d| !down.contains(&d.addr));
                svc.evicted.extend(down);
            }
            if let AllDown::Sorry(sorry) = &rule.all_down {
                if all_down {
                    svc.dests.push(sorry.clone());
                } else {
                    svc.evicted.push(sorry.addr);
                }
            }
            all_down
        })
        .collect()
}

/// Ownership and drain settings from `[ipvs]`.
pub fn policy(cfg: &Config) -> Policy {
    Policy {
        own_all: cfg.ipvs.own_all,
        drain_period: cfg.ipvs.drain_period,
    }
}

#[cfg(test)]
mod tests;
