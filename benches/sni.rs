//! SNI resolver lookup cost with 10 and 10,000 names: exact hit, wildcard
//! hit, and a miss that falls back to the default certificate.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use vipd::tls::{CertList, SniResolver};

fn cert_list() -> CertList {
    let ck = rcgen::generate_simple_self_signed(vec!["bench.test".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(
        vec![CertificateDer::from(ck.cert.der().to_vec())],
        key,
        &provider,
    )
    .unwrap();
    Arc::from(vec![Arc::new(certified)])
}

fn resolver(names: usize, certs: &CertList) -> SniResolver {
    let mut r = SniResolver::new(Some(certs.clone()));
    for i in 0..names {
        if i % 10 == 0 {
            r.insert(&format!("*.zone{i}.example.com"), certs.clone());
        } else {
            r.insert(&format!("host{i}.example.com"), certs.clone());
        }
    }
    r
}

fn lookup(c: &mut Criterion) {
    let certs = cert_list();
    let mut group = c.benchmark_group("sni_lookup");
    for names in [10usize, 10_000] {
        let r = resolver(names, &certs);
        let exact = format!("host{}.example.com", names - 1);
        let wild = format!("api.zone{}.example.com", names - 10);
        group.bench_with_input(BenchmarkId::new("exact", names), &exact, |b, n| {
            b.iter(|| black_box(r.lookup(Some(black_box(n.as_str())))).is_some())
        });
        group.bench_with_input(BenchmarkId::new("wildcard", names), &wild, |b, n| {
            b.iter(|| black_box(r.lookup(Some(black_box(n.as_str())))).is_some())
        });
        group.bench_with_input(BenchmarkId::new("miss", names), "nowhere.test", |b, n| {
            b.iter(|| black_box(r.lookup(Some(black_box(n)))).is_some())
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
