//! Unit tests for the pure diff and the drain bookkeeping.

use super::*;
use crate::ipvs::{Forward, KernelDest, Protocol, Stats};

fn tcp(addr: &str) -> ServiceKey {
    ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: addr.parse().unwrap(),
    }
}

fn dr(addr: &str, weight: u32) -> Dest {
    Dest {
        addr: addr.parse().unwrap(),
        forward: Forward::Dr,
        weight,
        upper_threshold: 0,
        lower_threshold: 0,
    }
}

fn web() -> Service {
    let mut s = Service::new(tcp("192.0.2.10:80"), "wrr");
    s.dests = vec![dr("192.0.2.21:80", 1), dr("192.0.2.22:80", 2)];
    s
}

/// What the kernel reports after `s` was applied (it adds the hashed flag).
fn kernel(s: &Service) -> KernelService {
    KernelService {
        key: s.key,
        scheduler: s.scheduler.clone(),
        flags: s.kernel_flags() | IP_VS_SVC_F_HASHED,
        timeout: s.timeout.unwrap_or(0),
        netmask: s.netmask,
        pe_name: None,
        stats: Stats::default(),
        dests: s
            .dests
            .iter()
            .map(|d| KernelDest {
                dest: d.clone(),
                active_conns: 0,
                inactive_conns: 0,
                persist_conns: 0,
                stats: Stats::default(),
            })
            .collect(),
    }
}

fn policy(own_all: bool) -> Policy {
    Policy {
        own_all,
        drain_period: Duration::from_secs(30),
    }
}

fn lines(ops: &[Op]) -> Vec<String> {
    ops.iter().map(ToString::to_string).collect()
}

#[test]
fn an_empty_kernel_gets_the_service_then_its_real_servers() {
    let r = Reconciler::new(policy(false));
    let ops = r.plan(&[web()], &[], Instant::now());
    assert_eq!(
        lines(&ops),
        [
            "ipvsadm -A -t 192.0.2.10:80 -s wrr",
            "ipvsadm -a -t 192.0.2.10:80 -r 192.0.2.21:80 -g -w 1",
            "ipvsadm -a -t 192.0.2.10:80 -r 192.0.2.22:80 -g -w 2",
        ]
    );
}

#[test]
fn a_kernel_that_matches_needs_nothing() {
    let r = Reconciler::new(policy(true));
    let mut fwm = Service::new(
        ServiceKey::Fwmark {
            mark: 99,
            family: crate::ipvs::Family::Inet,
        },
        "rr",
    );
    fwm.timeout = Some(300);
    fwm.dests = vec![dr("192.0.2.21:0", 1)];
    let desired = [web(), fwm];
    let actual: Vec<_> = desired.iter().map(kernel).collect();
    assert_eq!(r.plan(&desired, &actual, Instant::now()), []);
}

#[test]
fn changed_scheduler_persistence_and_weight_become_edits() {
    let r = Reconciler::new(policy(false));
    let actual = [kernel(&web())];
    let mut want = web();
    want.scheduler = "sh".into();
    want.timeout = Some(360);
    want.netmask = 24;
    want.dests[1].weight = 5;
    want.dests[1].upper_threshold = 100;
    assert_eq!(
        lines(&r.plan(&[want], &actual, Instant::now())),
        [
            "ipvsadm -E -t 192.0.2.10:80 -s sh -p 360 -M 255.255.255.0",
            "ipvsadm -e -t 192.0.2.10:80 -r 192.0.2.22:80 -g -w 5 -x 100",
        ]
    );
}

#[test]
fn services_vipd_does_not_own_are_left_alone_unless_own_all() {
    let foreign = Service::new(tcp("192.0.2.99:25"), "rr");
    let actual = [kernel(&web()), kernel(&foreign)];
    assert_eq!(
        Reconciler::new(policy(false)).plan(&[web()], &actual, Instant::now()),
        []
    );
    assert_eq!(
        lines(&Reconciler::new(policy(true)).plan(&[web()], &actual, Instant::now())),
        ["ipvsadm -D -t 192.0.2.99:25"]
    );
}

#[test]
fn a_service_deleted_by_hand_comes_back() {
    let mut r = Reconciler::new(policy(false));
    let now = Instant::now();
    r.record(&[web()], &[kernel(&web())], &[], now);
    assert_eq!(r.plan(&[web()], &[], now).len(), 3);
}

#[test]
fn a_service_removed_from_the_config_is_deleted_once_managed() {
    let mut r = Reconciler::new(policy(false));
    let now = Instant::now();
    let api = Service::new(tcp("192.0.2.10:443"), "rr");
    let actual = [kernel(&web()), kernel(&api)];
    r.record(&[web(), api.clone()], &actual, &[], now);
    let ops = r.plan(&[web()], &actual, now);
    assert_eq!(lines(&ops), ["ipvsadm -D -t 192.0.2.10:443"]);
    r.record(&[web()], &actual, &ops, now);
    // once deleted, vipd forgets it: a hand-made one later is not vipd's
    assert_eq!(r.plan(&[web()], &actual, now), []);
}

#[test]
fn a_removed_real_server_is_quiesced_then_deleted_after_the_drain_period() {
    let mut r = Reconciler::new(policy(false));
    let t0 = Instant::now();
    let mut want = web();
    want.dests.pop();
    let mut actual = vec![kernel(&web())];
    actual[0].dests[1].active_conns = 3; // still busy
    let ops = r.plan(std::slice::from_ref(&want), &actual, t0);
    assert_eq!(
        lines(&ops),
        ["ipvsadm -e -t 192.0.2.10:80 -r 192.0.2.22:80 -g -w 0"]
    );
    r.record(std::slice::from_ref(&want), &actual, &ops, t0);
    assert_eq!(r.draining(), 1);

    actual[0].dests[1].dest.weight = 0;
    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(
        r.plan(std::slice::from_ref(&want), &actual, t1),
        [],
        "still draining"
    );
    r.record(std::slice::from_ref(&want), &actual, &[], t1);

    let t2 = t0 + Duration::from_secs(30);
    let ops = r.plan(std::slice::from_ref(&want), &actual, t2);
    assert_eq!(
        lines(&ops),
        ["ipvsadm -d -t 192.0.2.10:80 -r 192.0.2.22:80"]
    );
    r.record(std::slice::from_ref(&want), &actual, &ops, t2);
    assert_eq!(r.draining(), 0);
}

#[test]
fn an_idle_quiesced_server_is_deleted_without_waiting() {
    let mut r = Reconciler::new(policy(false));
    let t0 = Instant::now();
    let mut want = web();
    want.dests.pop();
    let mut actual = vec![kernel(&web())];
    let ops = r.plan(std::slice::from_ref(&want), &actual, t0);
    r.record(std::slice::from_ref(&want), &actual, &ops, t0);
    actual[0].dests[1].dest.weight = 0;
    let ops = r.plan(
        std::slice::from_ref(&want),
        &actual,
        t0 + Duration::from_secs(1),
    );
    assert_eq!(
        lines(&ops),
        ["ipvsadm -d -t 192.0.2.10:80 -r 192.0.2.22:80"]
    );
}

#[test]
fn a_real_server_that_returns_while_draining_gets_its_weight_back() {
    let mut r = Reconciler::new(policy(false));
    let t0 = Instant::now();
    let mut actual = vec![kernel(&web())];
    actual[0].dests[1].dest.weight = 0;
    let mut gone = web();
    gone.dests.pop();
    r.record(&[gone], &actual, &[], t0);
    assert_eq!(r.draining(), 1);
    let ops = r.plan(&[web()], &actual, t0);
    assert_eq!(
        lines(&ops),
        ["ipvsadm -e -t 192.0.2.10:80 -r 192.0.2.22:80 -g -w 2"]
    );
    r.record(&[web()], &actual, &ops, t0);
    assert_eq!(r.draining(), 0);
}

#[test]
fn zero_drain_period_deletes_at_once() {
    let r = Reconciler::new(Policy {
        own_all: false,
        drain_period: Duration::ZERO,
    });
    let mut want = web();
    want.dests.truncate(1);
    let ops = r.plan(&[want], &[kernel(&web())], Instant::now());
    assert_eq!(
        lines(&ops),
        ["ipvsadm -d -t 192.0.2.10:80 -r 192.0.2.22:80"]
    );
}

#[test]
fn shutdown_removes_only_owned_services() {
    let foreign = Service::new(tcp("192.0.2.99:25"), "rr");
    let actual = [kernel(&foreign), kernel(&web())];
    let r = Reconciler::new(policy(false));
    assert_eq!(
        lines(&r.shutdown_plan(&[web()], &actual)),
        ["ipvsadm -D -t 192.0.2.10:80"]
    );
}

#[test]
fn ops_print_as_ipvsadm_command_lines() {
    let v6 = tcp("[2001:db8::10]:443");
    let udp = ServiceKey::Addr {
        protocol: Protocol::Udp,
        addr: "192.0.2.10:53".parse().unwrap(),
    };
    let mut sh = Service::new(v6, "sh");
    sh.timeout = Some(60);
    sh.netmask = 64;
    sh.flags = IP_VS_SVC_F_SCHED1;
    let mut ops_svc = Service::new(udp, "rr");
    ops_svc.flags = IP_VS_SVC_F_ONEPACKET;
    let nat = Dest {
        addr: "192.0.2.31:5353".parse().unwrap(),
        forward: Forward::Nat,
        weight: 1,
        upper_threshold: 0,
        lower_threshold: 5,
    };
    let ops = [
        Op::AddService(sh),
        Op::AddService(ops_svc),
        Op::AddDest {
            service: udp,
            dest: nat,
        },
        Op::DeleteDest {
            service: v6,
            addr: "[2001:db8::21]:443".parse().unwrap(),
        },
        Op::DeleteService(ServiceKey::Fwmark {
            mark: 7,
            family: crate::ipvs::Family::Inet6,
        }),
    ];
    assert_eq!(
        lines(&ops),
        [
            "ipvsadm -A -t [2001:db8::10]:443 -s sh -p 60 -M 64 -b sh-fallback",
            "ipvsadm -A -u 192.0.2.10:53 -s rr -o",
            "ipvsadm -a -u 192.0.2.10:53 -r 192.0.2.31:5353 -m -w 1 -y 5",
            "ipvsadm -d -t [2001:db8::10]:443 -r [2001:db8::21]:443",
            "ipvsadm -D -f 7 -6",
        ]
    );
}

#[test]
fn a_real_server_evicted_by_its_health_check_is_deleted_without_draining() {
    let r = Reconciler::new(policy(false));
    let mut want = web();
    let gone = want.dests.remove(1);
    want.evicted.push(gone.addr);
    let mut actual = vec![kernel(&web())];
    actual[0].dests[1].active_conns = 3;
    actual[0].dests[1].persist_conns = 2;
    assert_eq!(
        lines(&r.plan(&[want], &actual, Instant::now())),
        ["ipvsadm -d -t 192.0.2.10:80 -r 192.0.2.22:80"]
    );
}

#[test]
fn one_shot_deletes_an_idle_weight_zero_server_and_shows_a_busy_one_as_draining() {
    let r = Reconciler::one_shot(policy(false));
    let mut want = web();
    want.dests.pop();
    let mut actual = vec![kernel(&web())];
    // the first apply quiesces it, as a long-running vipd does
    assert_eq!(
        lines(&r.plan(std::slice::from_ref(&want), &actual, Instant::now())),
        ["ipvsadm -e -t 192.0.2.10:80 -r 192.0.2.22:80 -g -w 0"]
    );
    // a later run, with no memory of that, still sees a difference
    actual[0].dests[1].dest.weight = 0;
    actual[0].dests[1].active_conns = 2;
    actual[0].dests[1].inactive_conns = 1;
    let ops = r.plan(std::slice::from_ref(&want), &actual, Instant::now());
    assert_eq!(
        lines(&ops),
        ["ipvsadm -d -t 192.0.2.10:80 -r 192.0.2.22:80 # draining: 3 connections"]
    );
    actual[0].dests[1].active_conns = 0;
    actual[0].dests[1].inactive_conns = 0;
    actual[0].dests[1].persist_conns = 4;
    assert_eq!(
        lines(&r.plan(std::slice::from_ref(&want), &actual, Instant::now())),
        [
            "ipvsadm -d -t 192.0.2.10:80 -r 192.0.2.22:80 # draining: 0 connections, 4 persistence templates"
        ]
    );
    actual[0].dests[1].persist_conns = 0;
    assert_eq!(
        lines(&r.plan(std::slice::from_ref(&want), &actual, Instant::now())),
        ["ipvsadm -d -t 192.0.2.10:80 -r 192.0.2.22:80"]
    );
    // a long-running reconciler starts its drain clock instead
    let run = Reconciler::new(policy(false));
    actual[0].dests[1].active_conns = 2;
    assert_eq!(run.plan(&[want], &actual, Instant::now()), []);
}

#[test]
fn a_persistence_engine_set_by_hand_is_a_difference_plan_reports() {
    let r = Reconciler::new(policy(false));
    let mut actual = vec![kernel(&web())];
    actual[0].pe_name = Some("sip".into());
    assert_eq!(
        lines(&r.plan(&[web()], &actual, Instant::now())),
        ["ipvsadm -E -t 192.0.2.10:80 -s wrr"]
    );
}
