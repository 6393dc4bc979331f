//! Whole-configuration tests: every file of `examples/`, `tests/configs/valid` and
//! `tests/configs/invalid` (each against its exact `NAME.expected` output), and the
//! schema's defaults, legacy keys and error kinds on small inline configs.
//!
//! Paths in messages are relative to the crate root, e.g.
//! `tests/configs/invalid/bad_balance.toml:7:1: ...`; a file path resolved against a
//! fixture's directory is absolute, its crate part written `<crate>/`. After an intended change of
//! messages, `SLUICE_BLESS=1 cargo test --lib config` rewrites the `.expected` files;
//! review the diff.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::acl::Action;
use fixtures::{files, parse_file, read_file};
use fixtures::{invalid_fixtures, valid_fixtures};

#[test]
fn examples_and_valid_configs_load() {
    let native = [Format::Toml, Format::Json];
    valid_fixtures("examples", &["toml", "json"], &native, |_, _| {});
    valid_fixtures("tests/configs/valid", &["toml", "json"], &native, |_, _| {});
}

#[test]
fn invalid_configs_fail_with_their_expected_messages() {
    invalid_fixtures("tests/configs/invalid", &["toml", "json"]);
}

fn ok(text: &str) -> Loaded {
    parse(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("should load:\n{e}"))
}

fn errors(text: &str) -> String {
    match parse(text, Path::new("t.toml")) {
        Ok(_) => panic!("should fail:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const WEB: &str = "[servers.web]\nbind = \"127.0.0.1:3000\"\n\
                   discovery = { kind = \"static\", static_list = [\"127.0.0.1:8000\"] }\n";

#[test]
fn minimal_server_gets_every_default() {
    let loaded = ok(WEB);
    assert!(loaded.warnings.is_empty());
    let config = loaded.config;
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.logging, LoggingConfig::default());
    let web = &config.servers["web"];
    assert_eq!(web.bind, "127.0.0.1:3000".parse().expect("addr"));
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.balance, BalanceKind::Weight);
    assert_eq!(web.max_connections, None);
    assert_eq!(web.client_idle_timeout, None);
    assert_eq!(web.connect_attempts, 3);
    assert_eq!(web.healthcheck, HealthConfig::default());
    assert_eq!(web.access, None);
    assert_eq!(
        web.discovery.static_backends().map(|list| list.as_slice()),
        Some(&[crate::backend::BackendSpec::new("127.0.0.1", 8000)][..])
    );
}

#[test]
fn defaults_apply_unless_the_server_sets_the_key() {
    let text = format!(
        "[defaults]\nmax_connections = 10\nclient_idle_timeout = \"1m\"\n\
         backend_connection_timeout = \"5s\"\n{WEB}max_connections = 0\n\
         backend_connection_timeout = \"2s\"\n"
    );
    let config = ok(&text).config;
    let web = &config.servers["web"];
    assert_eq!(
        web.max_connections, None,
        "0 in the server overrides the default"
    );
    assert_eq!(web.client_idle_timeout, Some(Duration::from_secs(60)));
    assert_eq!(web.backend_connection_timeout, Some(Duration::from_secs(2)));
}

#[test]
fn bind_forms() {
    for (bind, expected) in [
        (":3000", "0.0.0.0:3000"),
        ("[::1]:3000", "[::1]:3000"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        let addr = bind::parse_bind(bind).expect(bind);
        assert_eq!(addr.addr(), Some(expected.parse().expect("addr")), "{bind}");
    }
    // A host name is kept, to be resolved when its server starts.
    let localhost = bind::parse_bind("localhost:3000").expect("a host name");
    assert_eq!(localhost.addr(), None);
    let resolved = localhost.resolve_blocking().expect("localhost resolves");
    assert!(resolved.ip().is_loopback());
    assert!(bind::parse_bind("127.0.0.1").is_err());
    assert!(bind::parse_bind("::1:80").is_err());
    assert!(bind::parse_bind("h:99999").is_err());
}

#[test]
fn legacy_keys_warn_and_still_apply() {
    let text = "[defaults]\nbalance = \"leastconn\"\n\
                [servers.web]\nbind = \":3000\"\n\
                discovery = { kind = \"static\", static_list = [\"h:1\"] }\n\
                healthcheck = { kind = \"ping\", interval = \"3s\", ping_timeout_duration = \"2s\" }\n";
    let loaded = ok(text);
    let web = &loaded.config.servers["web"];
    assert_eq!(web.balance, BalanceKind::LeastConn);
    assert_eq!(web.healthcheck.timeout, Duration::from_secs(2));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("t.toml:2:1: warning: defaults.balance: legacy"));
    assert!(warnings[1].contains("ping_timeout_duration: legacy GoBetween key; use \"timeout\""));
}

#[test]
fn legacy_key_and_its_replacement_together_is_an_error() {
    let text =
        format!("{WEB}healthcheck = {{ timeout = \"1s\", exec_timeout_duration = \"2s\" }}\n");
    assert!(errors(&text).contains("legacy name of \"timeout\", which is also set"));
}

#[test]
fn health_and_access_are_read() {
    let text = format!(
        "{WEB}[servers.web.healthcheck]\nkind = \"ping\"\ninterval = \"5s\"\ntimeout = \"0\"\n\
         fails = 2\npasses = 3\ninitial_status = \"unhealthy\"\npassive_fails = 0\n\
         [servers.web.access]\ndefault = \"deny\"\nrules = [\"allow 10.0.0.0/8\"]\n"
    );
    let web = ok(&text).config.servers.remove("web").expect("web");
    let health = web.healthcheck;
    assert_eq!(health.kind, HealthKind::Ping);
    assert_eq!(
        health.timeout,
        Duration::from_secs(5),
        "\"0\" is bounded by the interval"
    );
    assert_eq!(
        (health.fails, health.passes, health.passive_fails),
        (2, 3, 0)
    );
    assert_eq!(health.initial_status, InitialStatus::Unhealthy);
    let acl = web.access.expect("access");
    assert_eq!(acl.default, Action::Deny);
    assert_eq!(acl.rules.len(), 1);
}

#[test]
fn each_error_kind_names_its_key() {
    let cases = [
        (
            "shutdown_timeout = 5\n",
            "shutdown_timeout: expected a duration string",
        ),
        (
            "[logging]\nlevel = \"loud\"\n",
            "logging.level: unknown level \"loud\"; expected one of trace",
        ),
        ("[logging]\noutput = \"\"\n", "logging.output: empty"),
        (
            "[defaults]\nmax_connections = -1\n",
            "defaults.max_connections: must be at least 0",
        ),
        (
            "[servers.a]\nbind = 1\n",
            "servers.a.bind: expected a string such as",
        ),
        (
            "[servers.a]\nprotocol = \"quic\"\n",
            "servers.a.protocol: unknown protocol \"quic\"; expected one of tcp, udp, tls",
        ),
        (
            "[servers.a]\nconnect_attempts = 0\n",
            "servers.a.connect_attempts: must be at least 1",
        ),
        (
            "[servers.a.discovery]\nstatic_list = []\n",
            "servers.a.discovery: missing required key \"kind\"",
        ),
        (
            "[servers.a.healthcheck]\nkind = \"probe\"\n",
            "healthcheck: missing required key \"probe_send\" for kind \"probe\"",
        ),
        (
            "[servers.a.healthcheck]\nkind = \"ping\"\ninterval = \"0\"\n",
            "must be greater than 0",
        ),
        (
            "[servers.a.healthcheck]\nfails = 0\n",
            "servers.a.healthcheck.fails: must be at least 1",
        ),
        (
            "[servers.a.healthcheck]\nexec_command = \"x\"\n",
            "only used by healthcheck kind \"exec\"",
        ),
        (
            "[servers.a.access]\ndefault = \"maybe\"\n",
            "unknown default \"maybe\"; expected one of allow, deny",
        ),
        (
            "[servers.a]\nblance = \"x\"\n",
            "servers.a.blance: unknown key \"blance\" (did you mean \"balance\"?)",
        ),
        (
            "[servers.\"my app\"]\nbind = \"x\"\n",
            "servers.\"my app\".bind: bind \"x\" has no port",
        ),
    ];
    for (text, expected) in cases {
        let message = errors(text);
        assert!(message.contains(expected), "{text}\n{message}");
    }
}

#[test]
fn json_semantic_errors_point_at_keys() {
    let text = "{\n  \"servers\": {\n    \"web\": {\n      \"bind\": \":3000\",\n      \"balance\": \"nope\"\n    }\n  }\n}\n";
    let message = match parse(text, Path::new("c.json")) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.starts_with("c.json:3:5: servers.web: missing [discovery]"),
        "{message}"
    );
    assert!(message.contains("\nc.json:5:7: servers.web.balance: unknown balance \"nope\""));
}

#[test]
fn unreadable_file_is_an_error_without_position() {
    let err = load(Path::new("tests/configs/no-such-file.toml")).expect_err("missing file");
    let text = err.to_string();
    assert!(
        text.starts_with("tests/configs/no-such-file.toml: cannot read the configuration:"),
        "{text}"
    );
}

#[test]
fn odd_shapes_are_errors_not_panics() {
    let cases = [
        (
            "a.toml",
            "servers = 5\n",
            "a.toml:1:1: servers: expected a table, found an integer",
        ),
        (
            "a.toml",
            "[[servers]]\nbind = 1\n",
            "servers: expected a table, found an array",
        ),
        (
            "a.toml",
            "x = 99999999999999999999\n",
            "a.toml:1:5: integer 99999999999999999999 is out of range",
        ),
        (
            "a.toml",
            "[logging]\nlevel = 2023-01-01\n",
            "expected a string, found a date-time",
        ),
        (
            "a.json",
            "[1, 2]",
            "a.json:1:1: the configuration must be a JSON object",
        ),
        ("a.json", "null", "a.json:1:1: the configuration is null"),
        ("a.json", "", "a.json:1:1: EOF while parsing a value"),
        (
            "a.json",
            "{\"servers\": {\"w\": [null]}}",
            "a.json:1:20: null is not allowed in a list",
        ),
    ];
    for (path, text, expected) in cases {
        match parse(text, Path::new(path)) {
            Ok(_) => panic!("{text:?} should fail"),
            Err(e) => assert!(e.to_string().contains(expected), "{text:?}: {e}"),
        }
    }
}

#[test]
fn empty_config_loads_with_a_warning() {
    let loaded = ok("# nothing yet\n");
    assert!(loaded.config.servers.is_empty());
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].message.contains("no servers configured"));
}

/// A self-signed certificate and its key, `certs/web.pem` and `certs/web.key` in `dir`.
fn write_certificate(dir: &Path) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("create certs/");
    std::fs::write(certs.join("web.pem"), cert.cert.pem()).expect("write web.pem");
    std::fs::write(certs.join("web.key"), cert.signing_key.serialize_pem()).expect("write web.key");
}

/// Every kind of file key, each relative (the TLS files must exist: they are loaded).
const RELATIVE_PATHS: &str = r#"
[logging]
output = "logs/sluice.log"

[api]
enabled = true
tls = { cert_path = "certs/web.pem", key_path = "certs/web.key" }

[servers.web]
bind = "127.0.0.1:0"
protocol = "tls"
discovery = { kind = "file", file_path = "backends.txt" }
healthcheck = { kind = "exec", exec_command = "./check.sh", exec_expected_positive_output = "1" }

  [servers.web.tls]
  cert_path = "certs/web.pem"
  key_path = "./certs/web.key"
  certificates = [{ cert_path = "certs/../certs/web.pem", key_path = "certs/web.key" }]
  client_ca_path = "certs/web.pem"

  [servers.web.backends_tls]
  root_ca_cert_path = "certs/web.pem"
  cert_path = "certs/web.pem"
  key_path = "certs/web.key"

[servers.listed]
bind = "127.0.0.1:0"
discovery = { kind = "exec", exec_command = ["bin/list", "--out", "x/y"] }
healthcheck = { kind = "tls", tls_ca_path = "ca/backends.pem" }

[servers.registry]
bind = "127.0.0.1:0"
discovery = { kind = "json", json_endpoint = "https://registry:8443/", json_tls_cacert_path = "ca/registry.pem" }
healthcheck = { kind = "exec", exec_command = "check-backend", exec_expected_positive_output = "1" }

[servers.consul]
bind = "127.0.0.1:0"
discovery = { kind = "consul", consul_host = "consul:8501", consul_service_name = "web", consul_tls_enabled = true, consul_tls_cert_path = "consul/client.pem", consul_tls_key_path = "consul/client.key", consul_tls_cacert_path = "/etc/ssl/consul-ca.pem" }
"#;

/// `RELATIVE_PATHS` as `sluice.toml` in a new directory, with the certificate it names.
fn relative_config() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    write_certificate(dir.path());
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, RELATIVE_PATHS).expect("write sluice.toml");
    (dir, file)
}

#[test]
fn relative_paths_are_taken_from_the_configuration_files_directory() {
    let (dir, file) = relative_config();
    // The working directory (the crate root) has no certs/: the files are found beside
    // the configuration or not at all.
    assert!(!Path::new("certs/web.pem").exists());
    let config = load(&file)
        .unwrap_or_else(|e| panic!("should load:\n{e}"))
        .config;
    let at = |relative: &str| dir.path().join(relative);
    assert_eq!(
        config.logging.output,
        LogOutput::File(at("logs/sluice.log"))
    );
    let api_tls = config.api.and_then(|a| a.tls).expect("api.tls");
    assert_eq!(api_tls.cert_path, at("certs/web.pem"));

    let web = &config.servers["web"];
    let tls = web.tls.as_ref().expect("tls");
    // `.` is dropped, `..` kept (it could cross a symbolic link).
    let pairs: Vec<_> = tls
        .certificates
        .iter()
        .map(|f| (f.cert_path.clone(), f.key_path.clone()))
        .collect();
    assert_eq!(
        pairs,
        [
            (at("certs/web.pem"), at("certs/web.key")),
            (at("certs/../certs/web.pem"), at("certs/web.key")),
        ]
    );
    assert_eq!(tls.client_ca_path, Some(at("certs/web.pem")));
    let backends = web.backends_tls.as_ref().expect("backends_tls");
    assert_eq!(backends.root_ca_cert_path, Some(at("certs/web.pem")));
    let identity = backends.identity.as_ref().expect("client certificate");
    assert_eq!(identity.key_path, at("certs/web.key"));
    let DiscoveryConfig::File { params, .. } = &web.discovery else {
        panic!("file discovery: {:?}", web.discovery);
    };
    assert_eq!(params.path, at("backends.txt"));
    let HealthKind::Exec(check) = &web.healthcheck.kind else {
        panic!("exec check: {:?}", web.healthcheck.kind);
    };
    assert_eq!(Path::new(&check.command), at("check.sh"));

    let listed = &config.servers["listed"];
    let DiscoveryConfig::Exec { params, .. } = &listed.discovery else {
        panic!("exec discovery: {:?}", listed.discovery);
    };
    // The program is a file; its arguments are its own business.
    let program = at("bin/list").display().to_string();
    assert_eq!(params.command, [program.as_str(), "--out", "x/y"]);
    let HealthKind::Tls(check) = &listed.healthcheck.kind else {
        panic!("tls check: {:?}", listed.healthcheck.kind);
    };
    assert_eq!(check.ca_path, Some(at("ca/backends.pem")));

    let registry = &config.servers["registry"];
    let DiscoveryConfig::Json { params, .. } = &registry.discovery else {
        panic!("json discovery: {:?}", registry.discovery);
    };
    assert_eq!(params.cacert_path, Some(at("ca/registry.pem")));
    // A bare name is for the PATH lookup.
    let HealthKind::Exec(check) = &registry.healthcheck.kind else {
        panic!("exec check: {:?}", registry.healthcheck.kind);
    };
    assert_eq!(check.command, "check-backend");

    let consul = &config.servers["consul"];
    let DiscoveryConfig::Consul { params, .. } = &consul.discovery else {
        panic!("consul discovery: {:?}", consul.discovery);
    };
    let files = params.tls.as_ref().expect("consul tls");
    assert_eq!(files.cert_path, Some(at("consul/client.pem")));
    assert_eq!(files.key_path, Some(at("consul/client.key")));
    assert_eq!(files.cacert_path, Some("/etc/ssl/consul-ca.pem".into()));
}

#[test]
fn a_missing_relative_file_is_reported_at_its_key_with_the_resolved_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_certificate(dir.path());
    let file = dir.path().join("sluice.toml");
    let text = format!(
        "{WEB}protocol = \"tls\"\n\n[servers.web.tls]\ncert_path = \"certs/web.pem\"\n\
         key_path = \"certs/missing.key\"\n"
    );
    std::fs::write(&file, text).expect("write sluice.toml");
    let errors = load(&file).expect_err("missing key file").to_string();
    let expected = format!(
        "{}:8:1: servers.web.tls.key_path: {}: cannot read the private key",
        file.display(),
        dir.path().join("certs/missing.key").display()
    );
    assert!(errors.starts_with(&expected), "{errors}");
}

#[test]
fn without_a_file_paths_are_kept_as_written() {
    let text = "[servers.a]\nbind = \"127.0.0.1:0\"\n\
                discovery = { kind = \"file\", file_path = \"backends.txt\" }\n\
                healthcheck = { kind = \"exec\", exec_command = \"./check.sh\", \
                exec_expected_positive_output = \"1\" }\n";
    let a = &ok(text).config.servers["a"];
    let DiscoveryConfig::File { params, .. } = &a.discovery else {
        panic!("file discovery: {:?}", a.discovery);
    };
    assert_eq!(params.path, Path::new("backends.txt"));
    let HealthKind::Exec(check) = &a.healthcheck.kind else {
        panic!("exec check: {:?}", a.healthcheck.kind);
    };
    assert_eq!(check.command, "./check.sh");
}

#[test]
fn the_dump_of_a_loaded_configuration_has_absolute_paths_and_reads_back_the_same() {
    let (dir, file) = relative_config();
    let config = load(&file)
        .unwrap_or_else(|e| panic!("should load:\n{e}"))
        .config;
    let toml = dump::to_toml(&config, dump::Secrets::Keep).expect("dump");
    let cert = dir.path().join("certs/web.pem").display().to_string();
    assert!(toml.contains(&format!("cert_path = \"{cert}\"")), "{toml}");
    assert!(
        !toml.contains("= \"certs/"),
        "a path left relative:\n{toml}"
    );
    // Absolute, the paths mean the same with no file and from any directory.
    let back = parse(&toml, Path::new("dump.toml"))
        .unwrap_or_else(|e| panic!("dump should load:\n{e}\n{toml}"));
    assert_eq!(back.config, config);
    let elsewhere = parse_in(&toml, Path::new("dump.toml"), Some(Path::new("/elsewhere")))
        .unwrap_or_else(|e| panic!("dump should load:\n{e}"));
    assert_eq!(elsewhere.config, config);
}

mod admin;
mod dumps;
mod fixtures;
mod haproxy;
mod keys;
mod mixctl;
mod samaritan;
mod typed;
