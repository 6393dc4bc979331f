//! The checks made on the typed configuration, after the reader: those an API edit
//! passes, and the host names `sluice check` resolves.

use std::net::SocketAddr;
use std::path::Path;

use super::super::*;
use super::parse_file;

/// A configuration changed in memory is checked by the rules the reader checks last, in
/// the reader's words (without a position: it has no file).
#[test]
fn a_changed_configuration_is_validated_as_the_file_would_be() {
    let path = Path::new("tests/configs/invalid/duplicate_bind.toml");
    let file_errors = parse_file(path).expect_err("the file is invalid");
    let server = |port: u16| {
        let bind = SocketAddr::from(([127, 0, 0, 1], port));
        let backends = vec![crate::backend::BackendSpec::new("127.0.0.1", 8000)];
        ServerConfig::new(
            bind,
            DiscoveryConfig::Static {
                backends: backends.into(),
            },
        )
    };
    let mut config = Config::default();
    config.servers.insert("a".into(), server(4000));
    config.servers.insert("b".into(), server(4000));
    let named = Path::new("(the changed configuration)");
    let errors = validate(&config, named).expect_err("the same address twice");
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].message, file_errors.0[0].message);
    assert_eq!(
        errors.to_string(),
        format!("(the changed configuration): {}", file_errors.0[0].message)
    );
    config.servers.insert("b".into(), server(4001));
    assert_eq!(validate(&config, named), Ok(()));

    // A static list emptied, or given a backend twice, as the reader says it.
    let with_backends = |backends: Vec<_>| ServerConfig {
        discovery: DiscoveryConfig::Static {
            backends: backends.into(),
        },
        ..server(4001)
    };
    config.servers.insert("b".into(), with_backends(Vec::new()));
    let errors = validate(&config, named).expect_err("no backend");
    assert_eq!(
        errors.0[0].message,
        "servers.b.discovery.static_list: empty; a server needs at least one backend"
    );
    let path = Path::new("tests/configs/invalid/duplicate_backend.toml");
    let file_errors = parse_file(path).expect_err("the file is invalid");
    let backend = |host: &str| crate::backend::BackendSpec::new(host, 8000);
    let twice = vec![
        backend("127.0.0.1"),
        backend("10.0.0.1"),
        backend("127.0.0.1"),
    ];
    config.servers.remove("b");
    config.servers.insert("web".into(), with_backends(twice));
    let errors = validate(&config, named).expect_err("a backend twice");
    assert_eq!(errors.0[0].message, file_errors.0[0].message);
}

/// Validation keeps a `bind` host name; `sluice check` resolves it after, and reports one
/// that does not resolve at its `bind`, as validation did when it resolved names itself.
#[test]
fn a_bind_name_that_does_not_resolve_is_reported_at_its_bind() {
    let text = "[servers.web]\nbind = \"no-such-host.invalid:80\"\n\
                discovery = { kind = \"static\", static_list = [\"127.0.0.1:8000\"] }\n";
    let path = Path::new("in.toml");
    let loaded = parse(text, path).expect("validation resolves nothing");
    let errors = resolve_names(&loaded, path).expect_err("no such host");
    let expected = "in.toml:2:1: servers.web.bind: cannot resolve \"no-such-host.invalid\" \
                    in bind \"no-such-host.invalid:80\": ";
    assert!(errors.to_string().starts_with(expected), "{errors}");
    let text = text.replace("no-such-host.invalid", "localhost");
    let loaded = parse(&text, path).expect("valid");
    let resolved = resolve_names(&loaded, path).expect("localhost resolves");
    let bind = resolved.servers["web"]
        .bind
        .first()
        .addr()
        .expect("an address");
    assert!(bind.ip().is_loopback(), "{bind}");
}

/// The same for the API's and the metrics endpoint's `bind`, which are kept as written
/// too and resolved when the endpoint starts.
#[test]
fn an_admin_bind_name_that_does_not_resolve_is_reported_at_its_bind() {
    let text =
        "[api]\nenabled = true\nbind = \"no-such-host.invalid:8888\"\nbearer_token = \"t\"\n\
                [servers.web]\nbind = \"127.0.0.1:80\"\n\
                discovery = { kind = \"static\", static_list = [\"127.0.0.1:8000\"] }\n";
    let path = Path::new("in.toml");
    let loaded = parse(text, path).expect("validation resolves nothing");
    let errors = resolve_names(&loaded, path).expect_err("no such host");
    let expected = "in.toml:3:1: api.bind: cannot resolve \"no-such-host.invalid\" \
                    in bind \"no-such-host.invalid:8888\": ";
    assert!(errors.to_string().starts_with(expected), "{errors}");
}
