//! IPVS hot paths: encoding NEW_DEST, decoding a GET_SERVICE reply, and
//! planning a reconcile of 100 services x 10 real servers against a kernel
//! table that already matches (the periodic no-op pass).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::time::Instant;
use vipd::ipvs::attrs::{self, Request};
use vipd::ipvs::consts::IPVS_CMD_ATTR_SERVICE;
use vipd::ipvs::{
    Dest, Forward, KernelDest, KernelService, Policy, Protocol, Reconciler, Service, ServiceKey,
    Stats,
};

fn service(i: u8) -> Service {
    let vip = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), 80);
    let mut s = Service::new(
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: vip,
        },
        "wrr",
    );
    s.dests = (0..10)
        .map(|j| Dest {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, j)), 80),
            forward: Forward::Dr,
            weight: u32::from(j) + 1,
            upper_threshold: 0,
            lower_threshold: 0,
        })
        .collect();
    s
}

fn kernel(s: &Service) -> KernelService {
    KernelService {
        key: s.key,
        scheduler: s.scheduler.clone(),
        flags: s.kernel_flags() | vipd::ipvs::consts::IP_VS_SVC_F_HASHED,
        timeout: 0,
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

fn bench(c: &mut Criterion) {
    let svc = service(10);
    c.bench_function("ipvs encode NEW_DEST", |b| {
        b.iter(|| Request::NewDest(black_box(&svc.key), black_box(&svc.dests[0])).encode(0x20, 1))
    });
    let msg = Request::NewService(&svc).encode(0x20, 1);
    c.bench_function("ipvs decode service", |b| {
        b.iter(|| {
            let msgs = attrs::messages(black_box(&msg)).unwrap();
            let attrs::Reply::Data { attrs: a, .. } = attrs::reply(&msgs[0]).unwrap() else {
                unreachable!()
            };
            attrs::parse_service(attrs::top_nest(a, IPVS_CMD_ATTR_SERVICE, "SERVICE").unwrap())
                .unwrap()
        })
    });
    let desired: Vec<Service> = (0..100).map(service).collect();
    let actual: Vec<KernelService> = desired.iter().map(kernel).collect();
    let r = Reconciler::new(Policy::default());
    c.bench_function("ipvs plan 100x10 no-op", |b| {
        b.iter(|| {
            let ops = r.plan(black_box(&desired), black_box(&actual), Instant::now());
            assert!(ops.is_empty());
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
