//! Each key is declared once, by the reader's key lists: the keys the writer writes and
//! the keys the README's reference table lists are checked against them, so a key added
//! in one place and not the others fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::super::dump;
use super::super::gobetween::legacy::{legacy_keys, Place};
use super::super::gobetween::{
    acme, admin, bgp, discovery, failover, health, limits, sections, server, tls,
};
use super::{files, parse_file};
use dump::Secrets;

/// Every section the reader knows, by the path the writer writes it at (`*` for a
/// server's name), with the keys the reader declares for it (legacy ones included).
fn declared() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let kinds = |common: &[&'static str], kinds: &[(&'static str, &[&'static str])]| {
        let own = kinds.iter().flat_map(|(_, keys)| keys.iter().copied());
        common.iter().copied().chain(own).collect::<Vec<_>>()
    };
    let with_legacy = |keys: &[&'static str], place| {
        keys.iter()
            .copied()
            .chain(legacy_keys(place))
            .collect::<Vec<_>>()
    };
    let sections: Vec<(&str, Vec<&str>)> = vec![
        ("", with_legacy(server::TOP_KEYS, Place::Top)),
        ("logging", server::LOGGING_KEYS.to_vec()),
        ("api", admin::API_KEYS.to_vec()),
        ("api.basic_auth", admin::BASIC_AUTH_KEYS.to_vec()),
        ("api.tls", admin::FILES_KEYS.to_vec()),
        ("metrics", admin::METRICS_KEYS.to_vec()),
        ("metrics.basic_auth", admin::BASIC_AUTH_KEYS.to_vec()),
        ("acme", acme::ACME_KEYS.to_vec()),
        ("bgp", bgp::BGP_KEYS.to_vec()),
        ("bgp.neighbors", bgp::NEIGHBOR_KEYS.to_vec()),
        (
            "defaults",
            with_legacy(
                &[server::OPTION_KEYS, limits::LIMIT_KEYS].concat(),
                Place::Defaults,
            ),
        ),
        (
            "servers.*",
            with_legacy(
                &[
                    server::SERVER_KEYS,
                    limits::LIMIT_KEYS,
                    failover::FAILOVER_KEYS,
                    bgp::ANNOUNCE_KEYS,
                ]
                .concat(),
                Place::Server,
            ),
        ),
        (
            "servers.*.discovery",
            with_legacy(
                &kinds(discovery::COMMON_KEYS, discovery::KINDS),
                Place::Discovery,
            ),
        ),
        (
            "servers.*.healthcheck",
            with_legacy(
                &kinds(health::COMMON_KEYS, health::KINDS),
                Place::Healthcheck,
            ),
        ),
        ("servers.*.access", sections::ACCESS_KEYS.to_vec()),
        ("servers.*.outlier", failover::OUTLIER_KEYS.to_vec()),
        ("servers.*.udp", server::UDP_KEYS.to_vec()),
        (
            "servers.*.proxy_protocol",
            server::PROXY_PROTOCOL_KEYS.to_vec(),
        ),
        (
            "servers.*.accept_proxy_protocol",
            server::ACCEPT_PROXY_KEYS.to_vec(),
        ),
        ("servers.*.sni", server::SNI_KEYS.to_vec()),
        ("servers.*.tls", with_legacy(tls::TLS_KEYS, Place::Tls)),
        ("servers.*.tls.certificates", tls::CERTIFICATE_KEYS.to_vec()),
        (
            "servers.*.backends_tls",
            with_legacy(tls::BACKENDS_TLS_KEYS, Place::Tls),
        ),
    ];
    sections
        .into_iter()
        .map(|(section, keys)| (section, keys.into_iter().collect()))
        .collect()
}

/// The section path of `key` under `section` (`servers` holds servers by name).
fn child(section: &str, key: &str) -> String {
    match section {
        "" => key.to_owned(),
        "servers" => "servers.*".to_owned(),
        _ => format!("{section}.{key}"),
    }
}

/// Adds every key `value` (a section at `section`) holds to `written`, and walks into
/// the subsections the reader knows.
fn walk(section: &str, value: &Value, written: &mut BTreeMap<String, BTreeSet<String>>) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                if section != "servers" {
                    written
                        .entry(section.to_owned())
                        .or_default()
                        .insert(key.clone());
                }
                let below = child(section, key);
                if is_section(&below) {
                    walk(&below, value, written);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(section, item, written);
            }
        }
        _ => {}
    }
}

/// Whether the reader reads `path` as a section of its own.
fn is_section(path: &str) -> bool {
    path == "servers" || declared().contains_key(path)
}

/// The keys the writer writes, by section, for every example and valid configuration
/// and for [`the_rest`].
fn written() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = files("examples", &["toml", "json"]);
    all.extend(files("tests/configs/valid", &["toml", "json"]));
    let mut configs: Vec<_> = all
        .iter()
        .map(|path| {
            let loaded = parse_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            loaded.config
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let text = the_rest(dir.path());
    let rest = super::parse(&text, Path::new("rest.toml")).unwrap_or_else(|e| panic!("{e}"));
    configs.push(rest.config);
    let mut written = BTreeMap::new();
    for config in configs {
        walk("", &dump::to_json(&config, Secrets::Keep), &mut written);
    }
    written
}

#[test]
fn the_writer_writes_only_keys_the_reader_declares() {
    let declared = declared();
    let mut unknown = Vec::new();
    for (section, keys) in written() {
        let known = declared.get(section.as_str());
        for key in keys {
            if !known.is_some_and(|known| known.contains(key.as_str())) {
                unknown.push(format!("{section}: {key}"));
            }
        }
    }
    assert!(unknown.is_empty(), "written but not read: {unknown:#?}");
}

/// The README's reference table as (section, key) pairs. A section named in the key
/// column (`[metrics.basic_auth]`) comes with an empty key: it is documented by
/// reference, as another section's keys.
fn readme_table() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let rows = readme
        .lines()
        .skip_while(|line| *line != "| section | key | default | meaning |")
        .skip(2)
        .take_while(|line| line.starts_with('|'));
    let mut pairs = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(section), Some(keys)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let section = section
            .trim_matches(|c| c == '`' || c == '[' || c == ']')
            .replace("servers.NAME", "servers.*");
        let section = if section == "(top)" {
            String::new()
        } else {
            section
        };
        for key in keys.split('`').skip(1).step_by(2) {
            match key.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
                Some(named) => pairs.push((named.to_owned(), String::new())),
                None => pairs.push((section.clone(), key.to_owned())),
            }
        }
    }
    assert!(
        pairs.len() > 100,
        "the README's reference table was not found"
    );
    pairs
}

#[test]
fn the_readme_table_lists_the_keys_the_reader_declares() {
    let declared = declared();
    let table = readme_table();
    let mut problems = Vec::new();
    for (section, key) in &table {
        let Some(known) = declared.get(section.as_str()) else {
            problems.push(format!("README section [{section}] is not read"));
            continue;
        };
        if !key.is_empty() && !known.contains(key.as_str()) {
            problems.push(format!("README lists {section}: {key}, which is not read"));
        }
    }
    let listed: BTreeSet<(&str, &str)> = table
        .iter()
        .map(|(section, key)| (section.as_str(), key.as_str()))
        .collect();
    // Sections with rows of their own must list every key.
    let sections: BTreeSet<&str> = listed
        .iter()
        .filter(|(_, key)| !key.is_empty())
        .map(|(section, _)| *section)
        .collect();
    for (section, keys) in &declared {
        if !sections.contains(section) {
            continue;
        }
        for key in keys {
            let subsection = child(section, key);
            let documented = listed.contains(&(*section, *key))
                || is_section(&subsection)
                || legacy_of(section).contains(key);
            if !documented {
                problems.push(format!(
                    "{section}: {key} is read but not in the README's table"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Sections without rows in the reference table (TLS, SNI, UDP, the PROXY protocol) are
/// documented in their own parts of the README: each of their keys is named there.
#[test]
fn the_readme_names_every_key_of_the_other_sections() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let table = readme_table();
    let in_table: BTreeSet<&str> = table
        .iter()
        .filter(|(_, key)| !key.is_empty())
        .map(|(section, _)| section.as_str())
        .collect();
    let mut unnamed = Vec::new();
    for (section, keys) in declared() {
        if in_table.contains(section) {
            continue;
        }
        for key in keys {
            let named = readme.contains(&format!("`{key}`"))
                || readme.contains(&format!("{key} = "))
                || legacy_of(section).contains(&key);
            if !named {
                unnamed.push(format!("{section}: {key}"));
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "read but named nowhere in the README: {unnamed:#?}"
    );
}

/// Legacy keys are named in the README's prose, beside the key that replaces them.
fn legacy_of(section: &str) -> Vec<&'static str> {
    let place = match section {
        "" => Place::Top,
        "defaults" => Place::Defaults,
        "servers.*" => Place::Server,
        "servers.*.discovery" => Place::Discovery,
        "servers.*.healthcheck" => Place::Healthcheck,
        "servers.*.tls" | "servers.*.backends_tls" => Place::Tls,
        _ => return Vec::new(),
    };
    legacy_keys(place).collect()
}

/// A configuration that sets the keys the example and valid files leave out, its
/// certificate files written into `dir`.
fn the_rest(dir: &Path) -> String {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let (cert, key) = (cert.display(), key.display());
    let health = [
        "kind = \"probe\"\nprobe_protocol = \"tls\"\nprobe_send = \"x\"\n\
         probe_strategy = \"regexp\"\nprobe_recv = '^OK'\nprobe_recv_len = 8\n\
         tls_server_name = \"db.example\"\ntls_ca_path = \"/etc/ca.pem\"",
        "kind = \"exec\"\nexec_command = \"/bin/check\"\n\
         exec_expected_positive_output = \"1\"\nexec_expected_negative_output = \"0\"",
        "kind = \"https\"\nhttp_host = \"example.org\"\nhttp_body = \"ok\"\n\
         http_body_regexp = '^ok'",
        "kind = \"redis\"\nredis_user = \"u\"\nredis_password = \"p\"",
        "kind = \"mysql\"\nmysql_user = \"u\"\nmysql_password = \"p\"",
        "kind = \"pgsql\"\npgsql_user = \"u\"\npgsql_password = \"p\"\npgsql_database = \"d\"",
        "kind = \"probe\"\nprobe_steps = [{ send = \"PING\\\\r\\\\n\" }, { expect = \"+PONG\" }]",
    ];
    let mut text = format!(
        "[defaults]\nmax_connections = 1\nclient_idle_timeout = \"1s\"\n\
         backend_idle_timeout = \"1s\"\nbackend_connection_timeout = \"1s\"\n\
         [api]\nenabled = true\nbind = \"127.0.0.1:0\"\nbearer_token = \"t\"\ncors = true\n\
         persist = true\ninsecure_public = true\nallowed_hosts = [\"lb\"]\nallow_exec = true\n\
         max_connections = 8\n\
         [api.basic_auth]\nlogin = \"a\"\npassword = \"p\"\n\
         [api.tls]\ncert_path = \"{cert}\"\nkey_path = \"{key}\"\n\
         [metrics]\nenabled = true\nbind = \"127.0.0.1:0\"\nbearer_token = \"t\"\n\
         insecure_public = true\nallowed_hosts = [\"lb\"]\n\
         [metrics.basic_auth]\nlogin = \"a\"\npassword = \"p\"\n\
         [acme]\nchallenge = \"http-01\"\nhttp_bind = \"127.0.0.1:0\"\ncache_dir = \"/tmp/acme\"\n\
         directory_url = \"https://acme.example/dir\"\nemail = \"ops@example.com\"\n\
         ca_path = \"{cert}\"\n\
         [bgp]\nlocal_as = 64512\nrouter_id = \"192.0.2.2\"\nhold_time = \"9s\"\n\
         [[bgp.neighbors]]\naddress = \"192.0.2.1\"\nport = 1179\nremote_as = 64500\n\
         hold_time = \"3s\"\nlocal_address = \"192.0.2.2\"\npassword = \"s3cret\"\n\
         [servers.tls]\nbind = \"127.0.0.1:0\"\nprotocol = \"tls\"\n\
         announce = [\"198.18.100.1/32\"]\nannounce_min_healthy = 2\n\
         discovery = {{ kind = \"static\", static_list = [\"127.0.0.1:1\"] }}\n\
         [servers.tls.tls]\ncert_path = \"{cert}\"\nkey_path = \"{key}\"\n\
         acme_hosts = [\"www.example.com\"]\n\
         certificates = [{{ cert_path = \"{cert}\", key_path = \"{key}\" }}]\n\
         min_version = \"tls1.2\"\nmax_version = \"tls1.3\"\n\
         ciphers = [\"TLS13_AES_128_GCM_SHA256\"]\nsession_tickets = true\nalpn = [\"h2\"]\n\
         client_ca_path = \"{cert}\"\nclient_auth = \"optional\"\nhandshake_timeout = \"5s\"\n\
         [servers.tls.backends_tls]\nroot_ca_cert_path = \"{cert}\"\n\
         cert_path = \"{cert}\"\nkey_path = \"{key}\"\n\
         [servers.etcd]\nbind = \"127.0.0.1:0\"\n\
         [servers.etcd.discovery]\nkind = \"etcd\"\netcd_endpoints = [\"https://10.0.0.6:2379\"]\n\
         etcd_tls_enabled = true\netcd_tls_cert_path = \"{cert}\"\netcd_tls_key_path = \"{key}\"\n"
    );
    for (i, health) in health.iter().enumerate() {
        text.push_str(&format!(
            "[servers.h{i}]\nbind = \"127.0.0.1:0\"\n\
             discovery = {{ kind = \"static\", static_list = [\"127.0.0.1:1\"] }}\n\
             [servers.h{i}.healthcheck]\n{health}\n"
        ));
    }
    text
}

#[test]
fn every_key_the_reader_declares_is_written_for_some_configuration() {
    let written = written();
    let mut unwritten = Vec::new();
    for (section, keys) in declared() {
        // `[defaults]` is folded into each server when read: the writer writes servers.
        if section == "defaults" {
            continue;
        }
        let legacy = legacy_of(section);
        for key in keys {
            let wrote = written.get(section).is_some_and(|keys| keys.contains(key));
            if !wrote && !legacy.contains(&key) && !matches!(key, "defaults" | "servers") {
                unwritten.push(format!("{section}: {key}"));
            }
        }
    }
    assert!(
        unwritten.is_empty(),
        "read but never written: {unwritten:#?}"
    );
}
