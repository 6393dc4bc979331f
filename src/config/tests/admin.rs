//! `[api]` and `[metrics]`, and server names: who may reach the control side, and names
//! that could pass for something else.

use std::path::Path;

use super::{errors, ok, WEB};
use crate::config::*;

#[test]
fn api_and_metrics_sections() {
    let loaded = ok(&format!(
        "[api]\nenabled = false\n[metrics]\nenabled = false\n{WEB}"
    ));
    assert!(loaded.warnings.is_empty());
    assert_eq!((loaded.config.api, loaded.config.metrics), (None, None));

    let loaded = ok(&format!(
        "[api]\nenabled = true\n[metrics]\nenabled = true\n{WEB}"
    ));
    let api = loaded.config.api.expect("api enabled");
    assert_eq!(api.bind.to_string(), DEFAULT_API_BIND);
    assert!(!api.has_auth() && api.cors == Cors::Off && !api.persist && !api.allow_exec);
    assert_eq!(api.max_connections, DEFAULT_API_MAX_CONNECTIONS);
    let metrics = loaded.config.metrics.expect("metrics enabled");
    assert_eq!(metrics.bind.to_string(), DEFAULT_METRICS_BIND);

    let text = format!(
        "[api]\nenabled = true\nbind = \"0.0.0.0:8888\"\nbearer_token = \"t0k\"\ncors = true\n\
         persist = true\n[api.basic_auth]\nlogin = \"a\"\npassword = \"b\"\n\
         [api.tls]\ncert_path = \"c.pem\"\nkey_path = \"k.pem\"\n{WEB}"
    );
    let api = ok(&text).config.api.expect("api enabled");
    assert_eq!(api.bearer_token.as_deref(), Some("t0k"));
    assert_eq!(
        api.basic_auth,
        Some(BasicAuth {
            login: "a".into(),
            password: "b".into()
        })
    );
    assert_eq!(api.tls.map(|t| t.key_path), Some("k.pem".into()));
    assert!(api.cors == Cors::AnyOrigin && api.persist);

    let public = format!("[api]\nenabled = true\nbind = \"0.0.0.0:8888\"\n{WEB}");
    assert!(errors(&public).contains("add [api.basic_auth] or bearer_token"));
    let allowed = public.replace("[api]\n", "[api]\ninsecure_public = true\n");
    assert!(ok(&allowed).config.api.is_some());
}

#[test]
fn api_and_metrics_protection_keys() {
    let text = format!(
        "[api]\nenabled = true\ncors = [\"https://Admin.example.com\"]\n\
         allowed_hosts = [\"lb1.example.com\", \"*\"]\nallow_exec = true\nmax_connections = 8\n\
         [metrics]\nenabled = true\nbind = \"0.0.0.0:9284\"\nbearer_token = \"scrape\"\n\
         allowed_hosts = [\"prom.example\"]\n{WEB}"
    );
    let loaded = ok(&text);
    let api = loaded.config.api.expect("api enabled");
    assert_eq!(
        api.cors,
        Cors::Origins(vec!["https://admin.example.com".into()])
    );
    assert_eq!(api.allowed_hosts, ["lb1.example.com", "*"]);
    assert!(api.allow_exec);
    assert_eq!(api.max_connections, 8);
    let metrics = loaded.config.metrics.expect("metrics enabled");
    assert_eq!(metrics.bearer_token.as_deref(), Some("scrape"));
    assert_eq!(metrics.allowed_hosts, ["prom.example"]);
    // Credentials over plain HTTP beyond loopback are worth a warning.
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].message.contains(
        "the metrics endpoint listens on 0.0.0.0:9284, beyond this host, over plain HTTP"
    ));

    let public = format!("[metrics]\nenabled = true\nbind = \"0.0.0.0:9284\"\n{WEB}");
    assert_eq!(
        errors(&public),
        "t.toml:3:1: metrics.bind: the metrics endpoint would listen on 0.0.0.0:9284, beyond \
         this host, with no authentication; add [metrics.basic_auth] or bearer_token, or set \
         insecure_public = true"
    );
    let allowed = public.replace("[metrics]\n", "[metrics]\ninsecure_public = true\n");
    assert!(ok(&allowed).config.metrics.is_some());

    for (bad, message) in [
        (
            "bearer_token = \"  \"",
            "api.bearer_token: must not be blank",
        ),
        (
            "bearer_token = \"tok \"",
            "api.bearer_token: must not be blank",
        ),
        (
            "cors = [\"evil.example\"]",
            "api.cors[0]: \"evil.example\": expected an origin",
        ),
        (
            "cors = [\"https://a.example/x\"]",
            "api.cors[0]: \"https://a.example/x\"",
        ),
        (
            "allowed_hosts = [\"http://a\"]",
            "api.allowed_hosts[0]: \"http://a\" is not a host name",
        ),
        ("max_connections = 0", "api.max_connections"),
        (
            "[api.basic_auth]\nlogin = \"a:b\"\npassword = \"p\"",
            "api.basic_auth.login: must not contain a colon",
        ),
    ] {
        let text = format!("[api]\nenabled = true\n{bad}\n{WEB}");
        let got = errors(&text);
        assert!(got.contains(message), "{bad}: {got}");
    }
}

#[test]
fn server_names_that_could_pass_for_something_else_are_refused() {
    let named = |name: &str| {
        format!(
            "{{\"servers\": {{{}: {{\"bind\": \"127.0.0.1:3000\", \"discovery\": {{\"kind\": \"static\", \"static_list\": [\"127.0.0.1:1\"]}}}}}}}}",
            serde_json::to_string(name).expect("quoted")
        )
    };
    let fails = |name: &str, message: &str| {
        let got = match parse(&named(name), Path::new("t.json")) {
            Ok(_) => panic!("{name:?} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(message), "{name:?}: {got}");
    };
    fails(
        "a\u{0}b",
        "control or invisible formatting characters (found U+0000)",
    );
    fails("tab\there", "(found U+0009)");
    fails("evil\u{202e}txt", "(found U+202E)");
    fails("../etc", "must not contain / or \\");
    fails("..", "nor be . or ..");
    fails(&"x".repeat(129), "at most 128 bytes");
    fails("", "must not be empty");
    for good in ["web", "my app", "db-1.eu_west", "café"] {
        assert!(parse(&named(good), Path::new("t.json")).is_ok(), "{good:?}");
    }
}

#[test]
fn admin_bind_names_are_kept_and_resolved_when_the_endpoint_starts() {
    let named = ok(&format!(
        "[api]\nenabled = true\nbind = \"localhost:0\"\n[metrics]\nenabled = true\n\
         bind = \"no-such-host.invalid:9284\"\nbearer_token = \"t\"\n{WEB}"
    ));
    let api = named.config.api.expect("api");
    assert_eq!(
        api.bind,
        Bind::Name {
            host: "localhost".into(),
            port: 0
        }
    );
    assert_eq!(
        named.config.metrics.expect("metrics").bind.to_string(),
        "no-such-host.invalid:9284"
    );
    // A name other than localhost may lead anywhere: it needs credentials.
    let open = format!("[api]\nenabled = true\nbind = \"admin.example:8888\"\n{WEB}");
    assert_eq!(
        errors(&open),
        "t.toml:3:1: api.bind: the API would listen on admin.example:8888, beyond this host, \
         with no authentication; add [api.basic_auth] or bearer_token, or set \
         insecure_public = true"
    );
}

/// A section of a GoBetween feature Sluice lacks is nothing to report while it is off,
/// and an error naming it when it is on.
#[test]
fn unsupported_gobetween_sections_matter_only_when_enabled() {
    for off in [
        "[profiler]\nenabled = false\nbind = \":6060\"\n",
        "[profiler]\nbind = \":6060\"\n",
        "[acme]\nenabled = false\nchallenge = \"http\"\n",
    ] {
        let loaded = ok(&format!("{off}{WEB}"));
        assert!(loaded.warnings.is_empty(), "{off}: {:?}", loaded.warnings);
    }
    assert_eq!(
        errors(&format!(
            "[profiler]\nenabled = true\nbind = \":6060\"\n{WEB}"
        )),
        "t.toml:1:1: profiler: [profiler] is not supported yet (the profiler)"
    );
}

/// The `[servers.NAME.balance] strategy = "…"` table published GoBetween examples write
/// works, with a warning naming the key to write instead.
#[test]
fn a_balance_table_with_strategy_is_read_with_a_warning() {
    let text = "[servers.web]\nbind = \"127.0.0.1:3000\"\n\
                [servers.web.balance]\nstrategy = \"leastconn\"\n\
                [servers.web.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:8000\"]\n";
    let loaded = ok(text);
    assert_eq!(
        loaded.config.servers["web"].balance,
        crate::balance::BalanceKind::LeastConn
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(
        loaded.warnings[0].message,
        "servers.web.balance: a [servers.web.balance] table with strategy is an older \
         GoBetween form; write balance = \"leastconn\""
    );
    let unknown = text.replace("strategy = \"leastconn\"", "strategy = \"fastest\"");
    assert!(errors(&unknown).contains("servers.web.balance.strategy"));
}

/// Healthcheck `kind = "tcp"`, as published GoBetween examples write it, is `ping` with a
/// warning naming it.
#[test]
fn a_tcp_healthcheck_is_read_as_ping_with_a_warning() {
    let text = "[servers.web]\nbind = \"127.0.0.1:3000\"\n\
                [servers.web.healthcheck]\nkind = \"tcp\"\ninterval = \"5s\"\ntimeout = \"1s\"\n\
                [servers.web.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:8000\"]\n";
    let loaded = ok(text);
    assert_eq!(
        loaded.config.servers["web"].healthcheck.kind,
        HealthKind::Ping
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(
        loaded.warnings[0].message,
        "servers.web.healthcheck.kind: kind \"tcp\" is read as \"ping\", GoBetween's name \
         for the TCP connect check; write kind = \"ping\""
    );
}

/// GoBetween's `[servers.NAME.udp] transparent` is the server's `transparent`.
#[test]
fn udp_transparent_is_the_servers_transparent() {
    let text = |value: &str| {
        format!(
            "[servers.dns]\nbind = \"127.0.0.1:5353\"\nprotocol = \"udp\"\n\
             [servers.dns.udp]\ntransparent = {value}\n\
             [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:53\"]\n"
        )
    };
    let off = ok(&text("false"));
    assert!(off.warnings.is_empty());
    assert!(!off.config.servers["dns"].transparent);
    assert!(ok(&text("true")).config.servers["dns"].transparent);
    assert_eq!(
        errors(&text("\"yes\"")),
        "t.toml:5:1: servers.dns.udp.transparent: expected true or false, found a string"
    );
}

/// `[acme]`: GoBetween's three keys and their defaults, ACMEv2's, the challenge's
/// names, and `acme_hosts` checked where they are written.
#[test]
fn acme_section_and_acme_hosts() {
    let tls = "[servers.tls]\nbind = \"127.0.0.1:0\"\nprotocol = \"tls\"\n\
               discovery = { kind = \"static\", static_list = [\"127.0.0.1:1\"] }\n\
               [servers.tls.tls]\nacme_hosts = [\"WWW.example.com\", \"api.example.com\"]\n";
    let loaded = ok(&format!(
        "[acme]\nchallenge = \"http\"\ncache_dir = \"/c\"\n{tls}"
    ));
    let acme = loaded.config.acme.expect("acme");
    assert_eq!(acme.challenge, AcmeChallenge::Http01, "GoBetween's name");
    assert_eq!(acme.http_bind.to_string(), DEFAULT_ACME_HTTP_BIND);
    assert_eq!(acme.directory_url, LETS_ENCRYPT_DIRECTORY);
    assert_eq!(acme.cache_dir, Path::new("/c"));
    let hosts = &loaded.config.servers["tls"]
        .tls
        .as_ref()
        .expect("tls")
        .acme_hosts;
    assert_eq!(
        hosts,
        &["www.example.com", "api.example.com"],
        "lower-cased"
    );

    let loaded = ok(&format!(
        "[acme]\nchallenge = \"sni\"\ndirectory_url = \"https://127.0.0.1:14000/dir\"\n\
         email = \"ops@example.com\"\nca_path = \"/ca.pem\"\n{tls}"
    ));
    let acme = loaded.config.acme.expect("acme");
    assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
    assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(acme.cache_dir, Path::new(DEFAULT_ACME_CACHE_DIR));

    let off = ok(&format!("[acme]\nenabled = false\n{WEB}"));
    assert_eq!(off.config.acme, None);

    assert_eq!(
        errors(&format!(
            "[acme]\nchallenge = \"dns-01\"\nemail = \"nobody\"\n\
             directory_url = \"ftp://x\"\n{WEB}"
        )),
        "t.toml:2:1: acme.challenge: unknown challenge \"dns-01\"; expected one of http-01, \
         tls-alpn-01, http, sni, tls\n\
         t.toml:3:1: acme.email: \"nobody\" is not an e-mail address\n\
         t.toml:4:1: acme.directory_url: \"ftp://x\" is not an http(s) URL; expected the \
         ACME server's directory, such as \"https://acme-v02.api.letsencrypt.org/directory\""
    );
    let bad_hosts = "[acme]\n[servers.tls]\nbind = \"127.0.0.1:0\"\nprotocol = \"tls\"\n\
                     discovery = { kind = \"static\", static_list = [\"127.0.0.1:1\"] }\n\
                     [servers.tls.tls]\nacme_hosts = [\"*.example.com\", \"a.example.com\", \
                     \"a.example.com\"]\n";
    assert_eq!(
        errors(bad_hosts),
        "t.toml:7:15: servers.tls.tls.acme_hosts[0]: \"*.example.com\" is not a DNS name a \
         certificate can be obtained for; expected a name such as \"www.example.com\" (no \
         wildcard, IP address or port)\n\
         t.toml:7:49: servers.tls.tls.acme_hosts[2]: \"a.example.com\" is listed twice"
    );
}

/// `[bgp]` and a server's `announce`: defaults, and each mistake named where it is.
#[test]
fn bgp_section_and_announce() {
    let text = "[bgp]\nlocal_as = 4200000001\nrouter_id = \"192.0.2.10\"\n\
                [[bgp.neighbors]]\naddress = \"10.0.0.1\"\nremote_as = 64500\n\
                [servers.web]\nbind = \"127.0.0.1:0\"\n\
                announce = [\"198.18.100.1/32\", \"2001:db8:100::/64\"]\n\
                discovery = { kind = \"static\", static_list = [\"127.0.0.1:1\"] }\n";
    let loaded = ok(text);
    let bgp = loaded.config.bgp.expect("bgp");
    assert_eq!(bgp.local_as, 4_200_000_001, "a 4-octet AS");
    assert_eq!(bgp.hold_time, DEFAULT_BGP_HOLD_TIME);
    assert_eq!(bgp.neighbors[0].port, BGP_PORT);
    let announce = &loaded.config.servers["web"].announce;
    assert_eq!(announce.prefixes.len(), 2);
    assert_eq!(announce.min_healthy, 1);

    assert_eq!(
        errors(
            "[bgp]\nlocal_as = 64512\nrouter_id = \"::1\"\nhold_time = \"2s\"\n\
             [[bgp.neighbors]]\naddress = \"10.0.0.1\"\nremote_as = 64500\npassword = \"\"\n\
             [servers.web]\nbind = \"127.0.0.1:0\"\nannounce = [\"198.18.100.1/24\"]\n\
             discovery = { kind = \"static\", static_list = [\"127.0.0.1:1\"] }\n"
        ),
        "t.toml:3:1: bgp.router_id: \"::1\" is not an IPv4 address (BGP's router id is one)\n\
         t.toml:4:1: bgp.hold_time: a hold time is 0 (none) or whole seconds from 3 s to 65535 s\n\
         t.toml:8:1: bgp.neighbors[0].password: a TCP MD5 key (RFC 2385) is 1 to 80 bytes\n\
         t.toml:11:13: servers.web.announce[0]: \"198.18.100.1/24\" has host bits set; the \
         prefix is 198.18.100.0/24"
    );
    assert_eq!(
        errors(
            "[servers.web]\nbind = \"127.0.0.1:0\"\nannounce = [\"198.18.100.1/32\"]\n\
             discovery = { kind = \"static\", static_list = [\"127.0.0.1:1\"] }\n"
        ),
        "t.toml:2:1: servers.web.announce: needs the [bgp] section (the neighbours to announce to)"
    );
}
