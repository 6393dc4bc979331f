//! Mixctl's rules file: the fixtures of `tests/configs/mixctl`, and what a rule becomes.

use std::path::Path;

use super::{invalid_fixtures, read_file, valid_fixtures};
use crate::balance::BalanceKind;
use crate::config::mixctl::DIAL_TIMEOUT;
use crate::config::{Format, HealthKind, Protocol};

#[test]
fn fixtures_load_or_fail_with_their_expected_messages() {
    valid_fixtures(
        "tests/configs/mixctl/valid",
        &["yaml"],
        &[Format::Mixctl],
        |_, _| {},
    );
    invalid_fixtures("tests/configs/mixctl/invalid", &["yaml"]);
}

#[test]
fn each_rule_is_a_random_tcp_server() {
    let path = Path::new("tests/configs/mixctl/valid/rules.yaml");
    let loaded = read_file(path, Format::Mixctl).unwrap();
    assert_eq!(loaded.format, Format::Mixctl);
    let names: Vec<&str> = loaded.config.servers.keys().map(String::as_str).collect();
    assert_eq!(names, ["remap-local-ssh-port", "rpi-k3s", "rpi-ssh"]);
    let ssh = &loaded.config.servers["rpi-ssh"];
    assert_eq!(ssh.bind.to_string(), "127.0.0.1:22222");
    assert_eq!(ssh.protocol, Protocol::Tcp);
    assert_eq!(ssh.balance, BalanceKind::Random);
    assert_eq!(ssh.backend_connection_timeout, Some(DIAL_TIMEOUT));
    assert_eq!(ssh.healthcheck.kind, HealthKind::None);
    let targets: Vec<String> = ssh
        .discovery
        .static_backends()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(targets, ["127.0.0.1:2201", "127.0.0.1:2202 weight=3"]);
    let local = &loaded.config.servers["remap-local-ssh-port"];
    assert_eq!(local.bind.to_string(), "0.0.0.0:2222");
    assert_eq!(loaded.binds_at["servers.rpi-ssh.bind"], (12, 9));
}

/// Every prefix of every YAML fixture, read as either format: an error or a
/// configuration, never a panic (the fuzz target `config_yaml` goes further).
#[test]
fn every_prefix_of_every_yaml_fixture_reads_without_panicking() {
    let mut all = Vec::new();
    for dir in ["samaritan", "mixctl"] {
        for kind in ["valid", "invalid"] {
            all.extend(super::files(
                &format!("tests/configs/{dir}/{kind}"),
                &["yaml"],
            ));
        }
    }
    for path in all {
        let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(&path);
        let text = std::fs::read_to_string(&full).unwrap();
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            for format in [Format::Samaritan, Format::Mixctl] {
                let _ = crate::config::read(&text[..end], &path, None, format);
            }
        }
    }
}
