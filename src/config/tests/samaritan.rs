//! Samaritan's YAML: the fixtures of `tests/configs/samaritan`, and what the article's
//! file becomes.

use std::path::Path;
use std::time::Duration;

use super::{invalid_fixtures, read_file, valid_fixtures};
use crate::balance::BalanceKind;
use crate::config::{Format, HealthKind, Protocol};

#[test]
fn fixtures_load_or_fail_with_their_expected_messages() {
    valid_fixtures(
        "tests/configs/samaritan/valid",
        &["yaml"],
        &[Format::Samaritan],
        |_, _| {},
    );
    invalid_fixtures("tests/configs/samaritan/invalid", &["yaml"]);
}

#[test]
fn the_article_file_becomes_one_weighted_leastconn_server() {
    let path = Path::new("tests/configs/samaritan/valid/article.yaml");
    let loaded = read_file(path, Format::Samaritan).unwrap();
    assert_eq!(loaded.format, Format::Samaritan);
    let server = &loaded.config.servers["tcp-lb"];
    assert_eq!(server.bind.to_string(), "127.0.0.1:2080");
    assert_eq!(server.protocol, Protocol::Tcp);
    assert_eq!(server.balance, BalanceKind::LeastConn);
    assert_eq!(server.healthcheck.kind, HealthKind::Ping);
    assert_eq!(server.healthcheck.interval, Duration::from_secs(10));
    assert_eq!(server.healthcheck.timeout, Duration::from_secs(3));
    let backends: Vec<String> = server
        .discovery
        .static_backends()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        backends,
        [
            "127.0.0.1:3000 weight=3",
            "127.0.0.1:3001",
            "127.0.0.1:3002 weight=2"
        ]
    );
    assert_eq!(loaded.binds_at["servers.tcp-lb.bind"], (3, 13));
}

#[test]
fn every_key_maps() {
    let path = Path::new("tests/configs/samaritan/valid/every_key.yaml");
    let config = read_file(path, Format::Samaritan).unwrap().config;
    let db = &config.servers["db"];
    assert_eq!(db.bind.to_string(), "0.0.0.0:3306");
    assert_eq!(db.balance, BalanceKind::Weight);
    assert!(matches!(db.healthcheck.kind, HealthKind::Mysql(_)));
    assert_eq!((db.healthcheck.fails, db.healthcheck.passes), (3, 2));
    assert_eq!(db.backend_connection_timeout, Some(Duration::from_secs(2)));
    assert_eq!(db.client_idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(db.max_connections, Some(1000));
    let dns = &config.servers["dns"];
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!(dns.balance, BalanceKind::Random);
    assert_eq!(dns.healthcheck.kind, HealthKind::None);
}

#[test]
fn yaml_files_are_told_apart_by_their_keys() {
    let path = Path::new("tests/configs/mixctl/valid/rules.yaml");
    let loaded = crate::config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(path));
    assert_eq!(loaded.unwrap().format, Format::Mixctl);
    let path = Path::new("tests/configs/samaritan/valid/article.yaml");
    let loaded = crate::config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(path));
    assert_eq!(loaded.unwrap().format, Format::Samaritan);
}

#[test]
fn samaritan_own_static_services_map_too() {
    let path = Path::new("tests/configs/samaritan/valid/static_services.yaml");
    let loaded = read_file(path, Format::Samaritan).unwrap();
    assert_eq!(loaded.config.logging.level, "info");
    let server = &loaded.config.servers["tcp-demo"];
    assert_eq!(server.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(server.max_connections, Some(100));
    assert_eq!(server.balance, BalanceKind::LeastConn);
    assert_eq!(
        server.backend_connection_timeout,
        Some(Duration::from_secs(2))
    );
    assert_eq!(server.healthcheck.kind, HealthKind::Ping);
    assert_eq!(
        (server.healthcheck.fails, server.healthcheck.passes),
        (3, 1)
    );
    let backends: Vec<String> = server
        .discovery
        .static_backends()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(backends, ["127.0.0.1:8000", "127.0.0.1:8001 backup"]);
    assert_eq!(loaded.binds_at["servers.tcp-demo.bind"], (14, 9));
}
