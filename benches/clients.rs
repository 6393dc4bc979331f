//! Client protection's cost: admitting a connection (and releasing it) under no limit,
//! under per-client limits not hit (one client, and ever new clients filling a table of
//! 100 000), and refusing one; and the memory each tracked client takes, counted by the
//! allocator this binary installs.
//!
//! `cargo bench --bench clients -- --quick`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::config::limits::{Bucket, ClientLimits};
use sluice::proxy::state::clients::{ClientSource, Clients};
use tokio::time::Instant;

/// The system allocator, counting the bytes it holds now.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is kept
// beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System.dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn limits() -> ClientLimits {
    ClientLimits {
        max_connections_per_client: Some(1_000_000),
        connection_rate_per_client: Some(Bucket {
            rate: "1000000/s".parse().expect("rate"),
            burst: 1_000_000,
        }),
        ..ClientLimits::default()
    }
}

fn admit(c: &mut Criterion) {
    let mut group = c.benchmark_group("admit");
    let now = Instant::now();
    let clients = Clients::new();
    let none = ClientLimits::default();
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    // As the data path asks: nothing is looked up unless a limit is set.
    group.bench_function("no limit", |b| {
        b.iter(|| {
            black_box(
                none.any()
                    .then(|| clients.admit("bench", &none, client, ClientSource::Peer, now)),
            )
        })
    });
    let limits = limits();
    group.bench_function("per-client limits, one client", |b| {
        b.iter(|| black_box(clients.admit("bench", &limits, client, ClientSource::Peer, now)))
    });
    let mut n = 0u32;
    group.bench_function("per-client limits, ever new clients", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)));
            black_box(clients.admit("bench", &limits, client, ClientSource::Peer, now))
        })
    });
    let refusing = ClientLimits {
        max_connections_per_client: Some(1),
        ..ClientLimits::default()
    };
    let flooder = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66));
    let _held = clients.admit("bench", &refusing, flooder, ClientSource::Peer, now);
    group.bench_function("refused", |b| {
        b.iter(|| black_box(clients.admit("bench", &refusing, flooder, ClientSource::Peer, now)))
    });
    group.finish();
}

/// Bytes per tracked client: a table filled with 100 000 clients, measured by the
/// allocator; printed once.
fn memory(_: &mut Criterion) {
    let now = Instant::now();
    // Room for all of them: the table's shards fill unevenly.
    let limits = ClientLimits {
        client_table_size: 1_000_000,
        ..limits()
    };
    let clients = Clients::new();
    let before = HELD.load(Ordering::Relaxed);
    let n = 100_000u32;
    for i in 0..n {
        let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i));
        drop(black_box(clients.admit(
            "bench",
            &limits,
            client,
            ClientSource::Peer,
            now,
        )));
    }
    let after = HELD.load(Ordering::Relaxed);
    assert_eq!(clients.tracked(), n as usize);
    println!(
        "memory: {} bytes per tracked client ({} clients)",
        (after - before) / n as usize,
        n
    );
}

criterion_group!(benches, admit, memory);
criterion_main!(benches);
