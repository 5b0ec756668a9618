//! Scheduler picks per second for every scheduler with 2, 10 and 1000
//! backends, and persistence-table selection and summary with 1M entries.
//!
//! Run: `cargo bench --bench balance` (criterion reports elements/s, one
//! element being one pick).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vipd::balance::{Backend, PersistenceTable, Pool};
use vipd::config::{PersistenceGroup, SchedulerKind};

fn pool(kind: SchedulerKind, n: u32) -> Pool {
    let backends = (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(0x0a00_0001 + i);
            Backend::new(SocketAddr::new(ip.into(), 80), 1 + i % 4)
        })
        .collect();
    Pool::from_backends("bench", backends, kind, 65_537)
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i))
}

fn schedulers(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group.throughput(Throughput::Elements(1));
    for (kind, name) in SchedulerKind::POOL {
        for n in [2, 10, 1000] {
            let p = pool(kind, n);
            let mut i = 0u32;
            group.bench_with_input(BenchmarkId::new(name, n), &p, |b, p| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    black_box(p.pick(client(i)))
                })
            });
        }
    }
    group.finish();
}

fn persistence(c: &mut Criterion) {
    const ENTRIES: u32 = 1_000_000;
    let table = Arc::new(PersistenceTable::new(&PersistenceGroup {
        name: "bench".into(),
        timeout: Duration::from_secs(360),
        prefix_v4: 32,
        prefix_v6: 128,
        max_entries: ENTRIES as usize,
        expire_quiescent: false,
    }));
    let p = pool(SchedulerKind::Wrr, 10);
    for i in 0..ENTRIES {
        drop(p.select_persistent(client(i), &table));
    }
    let mut group = c.benchmark_group("persistence_1m");
    group.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    group.bench_function("lookup_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            black_box(p.select_persistent(client(i), &table))
        })
    });
    // New clients into a full table: each insert evicts the entry closest
    // to expiry.
    let mut next = ENTRIES;
    group.bench_function("insert_evict", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            black_box(p.select_persistent(client(next), &table))
        })
    });
    // The status page's summary: one pass over the whole table under its
    // lock (the time a lookup may wait behind it).
    group.throughput(Throughput::Elements(u64::from(ENTRIES)));
    group.sample_size(10);
    group.bench_function("summary_top5", |b| b.iter(|| black_box(table.summary(5))));
    group.finish();
}

criterion_group!(benches, schedulers, persistence);
criterion_main!(benches);
