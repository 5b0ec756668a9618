//! Converts the validated config's `[ipvs]` section into kernel-level desired
//! state: `Vec<Service>` and the reconcile [`Policy`].

use crate::config::{self, Config};

use super::{Dest, Family, Forward, Policy, Protocol, Service, ServiceKey};

/// The IPVS services the config asks for, with persistence groups resolved
/// into timeout and netmask.
pub fn services(cfg: &Config) -> Vec<Service> {
    cfg.ipvs.services.iter().map(|s| service(cfg, s)).collect()
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
    let forward = match s.forwarding {
        config::Forwarding::Dr => Forward::Dr,
        config::Forwarding::Nat => Forward::Nat,
        config::Forwarding::Tunnel => Forward::Tunnel,
    };
    let mut svc = Service::new(key, s.scheduler.clone());
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
            forward,
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

/// Quiesces (weight 0: no new connections, open ones finish) every real
/// server whose health check reports it down, as health checks do for
/// user-space pools; `is_up(service name, address)` is `None` when unchecked.
pub fn apply_health(
    services: &mut [Service],
    names: &[String],
    is_up: impl Fn(&str, std::net::SocketAddr) -> Option<bool>,
) {
    for (svc, name) in services.iter_mut().zip(names) {
        for d in &mut svc.dests {
            if is_up(name, d.addr) == Some(false) {
                d.weight = 0;
            }
        }
    }
}

/// Ownership and drain settings from `[ipvs]`.
pub fn policy(cfg: &Config) -> Policy {
    Policy {
        own_all: cfg.ipvs.own_all,
        drain_period: cfg.ipvs.drain_period,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_dr_config_with_a_persistent_fwmark_group_becomes_kernel_services() {
        let toml = r#"
[[persistence]]
name = "web"
timeout = "300s"
netmask = "255.255.255.0"

[ipvs]
own_all = true
drain_period = "5s"

[[ipvs.service]]
name = "web80"
address = "198.51.100.100:80"
scheduler = "wrr"
forwarding = "dr"
real_servers = [ { address = "198.51.100.11:80", weight = 1 }, { address = "198.51.100.12:80", weight = 2 } ]

[[ipvs.service]]
name = "sticky"
fwmark = 99
scheduler = "rr"
persistence = "web"
forwarding = "dr"
real_servers = [ { address = "198.51.100.11:0" } ]
"#;
        let cfg = config::parse(toml, Path::new("test.toml")).expect("valid config");
        let svcs = services(&cfg);
        let lines: Vec<String> = crate::ipvs::Reconciler::new(policy(&cfg))
            .plan(&svcs, &[], tokio::time::Instant::now())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "ipvsadm -A -t 198.51.100.100:80 -s wrr",
                "ipvsadm -a -t 198.51.100.100:80 -r 198.51.100.11:80 -g -w 1",
                "ipvsadm -a -t 198.51.100.100:80 -r 198.51.100.12:80 -g -w 2",
                "ipvsadm -A -f 99 -s rr -p 300 -M 255.255.255.0",
                "ipvsadm -a -f 99 -r 198.51.100.11:0 -g -w 1",
            ]
        );
        assert_eq!(
            policy(&cfg),
            Policy {
                own_all: true,
                drain_period: std::time::Duration::from_secs(5)
            }
        );
        assert_eq!(names(&cfg), ["web80", "sticky"]);
    }

    #[test]
    fn real_servers_reported_down_get_weight_zero_and_unchecked_ones_keep_theirs() {
        let key = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: "198.51.100.100:80".parse().unwrap(),
        };
        let mut svc = Service::new(key, "wrr");
        let rs = |a: &str, weight| Dest {
            addr: a.parse().unwrap(),
            forward: Forward::Dr,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        };
        svc.dests = vec![
            rs("198.51.100.11:80", 3),
            rs("198.51.100.12:80", 2),
            rs("198.51.100.13:80", 1),
        ];
        let mut services = vec![svc];
        apply_health(&mut services, &["web".to_string()], |name, addr| {
            assert_eq!(name, "web");
            match addr.ip().to_string().as_str() {
                "198.51.100.11" => Some(false),
                "198.51.100.12" => Some(true),
                _ => None,
            }
        });
        let weights: Vec<u32> = services[0].dests.iter().map(|d| d.weight).collect();
        assert_eq!(weights, [0, 2, 1]);
    }
}
