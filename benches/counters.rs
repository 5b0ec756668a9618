//! The counter updates of one proxied request (listener request and
//! latency, backend pick and response, the lease's active gauge), on one
//! thread and on two threads at once, next to the same updates on one
//! shared set of atomics (the layout before per-worker shards) for
//! comparison. On a machine with two free cores, the two-thread shared
//! case shows what cache-line ping-pong costs; the sharded one should cost
//! about what one thread does.
//!
//! Run: `cargo bench --bench counters` (one element = one request's updates).

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vipd::balance::{Backend, Pool};
use vipd::config::SchedulerKind;
use vipd::metrics::ListenerStats;

/// One request's updates through the real types.
fn sharded(listener: &ListenerStats, pool: &Pool) {
    let lease = pool.select(Ipv4Addr::LOCALHOST.into()).unwrap();
    lease.state().stats.record_response(200);
    listener.record_request(200, Duration::from_micros(300));
    black_box(&lease);
}

/// The same number of relaxed adds on one set of atomics every thread shares.
#[derive(Default)]
struct Shared([AtomicU64; 8]);

fn shared(s: &Shared) {
    for (i, c) in s.0.iter().enumerate() {
        // active +1/-1, total, responses, requests, bucket, sum
        if i < 7 {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    s.0[0].fetch_sub(1, Ordering::Relaxed);
}

/// `iters` calls of `f` on each of `threads` threads at once; the time of the slowest.
fn on_threads(threads: usize, iters: u64, f: Arc<dyn Fn() + Send + Sync>) -> Duration {
    let start = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (f, start) = (f.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                t.elapsed()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap()
}

fn counters(c: &mut Criterion) {
    vipd::metrics::set_workers(2);
    let mut group = c.benchmark_group("request_counters");
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        let listener = Arc::new(ListenerStats::default());
        let backend = Backend::new(SocketAddr::from(([10, 0, 0, 1], 80)), 1);
        let pool = Arc::new(Pool::from_backends(
            "bench",
            vec![backend],
            SchedulerKind::Wlc,
            65_537,
        ));
        group.bench_function(BenchmarkId::new("sharded", threads), |b| {
            let (l, p) = (listener.clone(), pool.clone());
            let f: Arc<dyn Fn() + Send + Sync> = Arc::new(move || sharded(&l, &p));
            b.iter_custom(|iters| on_threads(threads, iters, f.clone()));
        });
        let one = Arc::new(Shared::default());
        group.bench_function(BenchmarkId::new("one_shared_set", threads), |b| {
            let s = one.clone();
            let f: Arc<dyn Fn() + Send + Sync> = Arc::new(move || shared(&s));
            b.iter_custom(|iters| on_threads(threads, iters, f.clone()));
        });
    }
    group.finish();
}

criterion_group!(benches, counters);
criterion_main!(benches);
