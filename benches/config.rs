//! Parsing and validating configurations: the example GoBetween file, and a generated
//! one with many servers and backends (what a reload of a large file costs).
//!
//! `cargo bench --bench config -- --quick`

use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};

/// `servers` servers of `backends` backends each, on distinct ports.
fn generated(servers: usize, backends: usize) -> String {
    let mut toml = String::new();
    for s in 0..servers {
        let _ = write!(
            toml,
            "[servers.s{s}]\nbind = \"127.0.0.1:{}\"\nbalance = \"leastconn\"\n\
             [servers.s{s}.discovery]\nkind = \"static\"\nstatic_list = [",
            20_000 + s
        );
        for b in 0..backends {
            let _ = write!(
                toml,
                "\"10.0.{}.{}:8080 weight={}\",",
                b / 250,
                b % 250 + 1,
                b % 5 + 1
            );
        }
        toml.push_str("]\n[servers.s");
        let _ = write!(
            toml,
            "{s}.healthcheck]\nkind = \"ping\"\ninterval = \"2s\"\nfails = 2\npasses = 2\n\n"
        );
    }
    toml
}

fn parse(c: &mut Criterion) {
    let example = include_str!("../examples/gobetween.toml");
    c.bench_function("parse/examples-gobetween", |b| {
        b.iter(|| sluice::config::parse(black_box(example), Path::new("gobetween.toml")))
    });
    let large = generated(50, 100);
    c.bench_function("parse/50-servers-x-100-backends", |b| {
        b.iter(|| sluice::config::parse(black_box(&large), Path::new("large.toml")))
    });
}

criterion_group!(benches, parse);
criterion_main!(benches);
