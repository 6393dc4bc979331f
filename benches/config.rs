//! Parsing and validating configurations: the example GoBetween file, and a generated
//! one with many servers and backends (what a reload of a large file costs), in
//! GoBetween's TOML and in HAProxy's format.
//!
//! `cargo bench --bench config -- --quick`

use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::config::Format;

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

/// The same as [`generated`], as HAProxy writes it: a frontend and a backend each.
fn generated_haproxy(servers: usize, backends: usize) -> String {
    let mut cfg = String::from("defaults\n    mode tcp\n    timeout connect 5s\n\n");
    for s in 0..servers {
        let _ = write!(
            cfg,
            "frontend s{s}\n    bind 127.0.0.1:{}\n    default_backend b{s}\n\n\
             backend b{s}\n    balance leastconn\n",
            20_000 + s
        );
        for b in 0..backends {
            let _ = writeln!(
                cfg,
                "    server n{b} 10.0.{}.{}:8080 weight {} check inter 2s fall 2 rise 2",
                b / 250,
                b % 250 + 1,
                b % 5 + 1
            );
        }
        cfg.push('\n');
    }
    cfg
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
    let haproxy = generated_haproxy(50, 100);
    let path = Path::new("large.cfg");
    c.bench_function("parse/haproxy-50-servers-x-100-backends", |b| {
        b.iter(|| sluice::config::read(black_box(&haproxy), path, None, Format::Haproxy))
    });
}

criterion_group!(benches, parse);
criterion_main!(benches);
