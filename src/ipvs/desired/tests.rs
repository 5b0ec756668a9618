//! Unit tests for the config conversion and the health decisions.

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

fn rs(a: &str, weight: u32) -> Dest {
    Dest {
        addr: a.parse().unwrap(),
        forward: Forward::Dr,
        weight,
        upper_threshold: 0,
        lower_threshold: 0,
    }
}

/// A wrr service of .11 (weight 3), .12 (2) and .13 (1).
fn three() -> Vec<Service> {
    let key = ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: "198.51.100.100:80".parse().unwrap(),
    };
    let mut svc = Service::new(key, "wrr");
    svc.dests = vec![
        rs("198.51.100.11:80", 3),
        rs("198.51.100.12:80", 2),
        rs("198.51.100.13:80", 1),
    ];
    vec![svc]
}

fn rule(inhibit: bool, all_down: AllDown) -> Vec<OnFailure> {
    vec![OnFailure { inhibit, all_down }]
}

/// Health where the listed last octets are down and the others unchecked.
fn down(octets: &'static [&'static str]) -> impl Fn(&str, SocketAddr) -> Option<bool> {
    move |name, addr| {
        assert_eq!(name, "web");
        let ip = addr.ip().to_string();
        octets
            .iter()
            .any(|o| ip.ends_with(&format!(".{o}")))
            .then_some(false)
    }
}

fn weights(s: &Service) -> Vec<(String, u32)> {
    s.dests
        .iter()
        .map(|d| (d.addr.to_string(), d.weight))
        .collect()
}

fn web() -> Vec<String> {
    vec!["web".to_string()]
}

#[test]
fn a_real_server_reported_down_is_removed_at_once_and_unchecked_ones_stay() {
    let mut s = three();
    let all = apply_health(&mut s, &web(), &rule(false, AllDown::Refuse), down(&["11"]));
    assert_eq!(all, [false]);
    assert_eq!(
        weights(&s[0]),
        [
            ("198.51.100.12:80".to_string(), 2),
            ("198.51.100.13:80".to_string(), 1)
        ]
    );
    assert_eq!(s[0].evicted, ["198.51.100.11:80".parse().unwrap()]);
}

#[test]
fn with_inhibit_on_failure_a_down_real_server_stays_at_weight_zero() {
    let mut s = three();
    apply_health(&mut s, &web(), &rule(true, AllDown::Refuse), down(&["11"]));
    let w: Vec<u32> = s[0].dests.iter().map(|d| d.weight).collect();
    assert_eq!(w, [0, 2, 1]);
    assert!(s[0].evicted.is_empty());
}

#[test]
fn all_down_with_fail_open_keeps_every_configured_weight() {
    let mut s = three();
    let all = apply_health(
        &mut s,
        &web(),
        &rule(false, AllDown::FailOpen),
        down(&["11", "12", "13"]),
    );
    assert_eq!(all, [true]);
    assert_eq!(s, three());
}

#[test]
fn all_down_with_refuse_removes_every_real_server() {
    let mut s = three();
    let all = apply_health(
        &mut s,
        &web(),
        &rule(false, AllDown::Refuse),
        down(&["11", "12", "13"]),
    );
    assert_eq!(all, [true]);
    assert!(s[0].dests.is_empty());
    assert_eq!(s[0].evicted.len(), 3);
}

#[test]
fn all_down_with_sorry_adds_the_sorry_server_and_removes_it_once_one_is_back() {
    let sorry = AllDown::Sorry(rs("198.51.100.99:80", 1));
    let mut s = three();
    let all = apply_health(
        &mut s,
        &web(),
        &rule(false, sorry.clone()),
        down(&["11", "12", "13"]),
    );
    assert_eq!(all, [true]);
    assert_eq!(weights(&s[0]), [("198.51.100.99:80".to_string(), 1)]);
    let mut s = three();
    let all = apply_health(&mut s, &web(), &rule(false, sorry), down(&["11", "12"]));
    assert_eq!(all, [false]);
    assert_eq!(weights(&s[0]), [("198.51.100.13:80".to_string(), 1)]);
    assert_eq!(
        s[0].evicted,
        [
            "198.51.100.11:80".parse().unwrap(),
            "198.51.100.12:80".parse().unwrap(),
            "198.51.100.99:80".parse().unwrap(),
        ]
    );
}

#[test]
fn a_drained_real_server_that_is_up_does_not_save_the_service_from_all_down() {
    let mut s = three();
    s[0].dests[2].weight = 0; // admin drain of .13
    let all = apply_health(
        &mut s,
        &web(),
        &rule(true, AllDown::Refuse),
        down(&["11", "12"]),
    );
    assert_eq!(all, [true]);
    // and a service whose servers are all drained by the admin is not "all down"
    let mut s = three();
    for d in &mut s[0].dests {
        d.weight = 0;
    }
    let all = apply_health(&mut s, &web(), &rule(true, AllDown::Refuse), down(&[]));
    assert_eq!(all, [false]);
}
