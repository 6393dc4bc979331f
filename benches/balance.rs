//! `pick` for every balancing strategy at 3, 100 and 10 000 backends (all eligible, a
//! different client address each pick), and `build` for the table-driven strategies.
//!
//! `cargo bench --bench balance -- --quick`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice::backend::{Backend, BackendSpec};
use sluice::balance::{self, BalanceKind, PickContext};

/// `n` healthy backends with weights 1 to 5.
fn backends(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            let host = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            let spec = BackendSpec {
                weight: 1 + (i % 5) as u32,
                ..BackendSpec::new(host, 80)
            };
            Arc::new(Backend::new(spec, true))
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3, 100, 10_000] {
        let backends = backends(n);
        for kind in BalanceKind::ALL {
            let strategy = balance::build(kind, &backends);
            let eligible = |b: &Backend| b.is_available();
            let mut client = 0xc000_0201_u32;
            group.bench_function(BenchmarkId::new(kind.name(), n), |bench| {
                bench.iter(|| {
                    client = client.wrapping_add(0x9e37_79b9);
                    let ctx = PickContext {
                        client: IpAddr::V4(Ipv4Addr::from(client)),
                        eligible: &eligible,
                        any_health: false,
                    };
                    black_box(strategy.pick(&backends, &ctx))
                })
            });
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    let backends = backends(10_000);
    for kind in [BalanceKind::Maglev, BalanceKind::Weight] {
        group.bench_function(BenchmarkId::new(kind.name(), 10_000), |bench| {
            bench.iter(|| black_box(balance::build(kind, &backends)))
        });
    }
    group.finish();
}

criterion_group!(benches, pick, build);
criterion_main!(benches);
