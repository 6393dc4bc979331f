//! Each mapping on small inline files; the fixture files are read by
//! `config::tests::haproxy`.

use std::path::Path;
use std::time::Duration;

use super::read;
use crate::acl::Action;
use crate::backend::AdminState;
use crate::balance::BalanceKind;
use crate::config::{
    HealthKind, HostnameMatching, Loaded, ProbeScript, ProbeStep, ProxyVersion, ServerConfig,
    UnexpectedHostname,
};

fn ok(text: &str) -> Loaded {
    read(text, Path::new("h.cfg"), None).unwrap_or_else(|e| panic!("should load:\n{e}"))
}

fn errors(text: &str) -> String {
    match read(text, Path::new("h.cfg"), None) {
        Ok(_) => panic!("should fail:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn server<'l>(loaded: &'l Loaded, name: &str) -> &'l ServerConfig {
    &loaded.config.servers[name]
}

/// A frontend on 127.0.0.1:7000 in front of `backend b` with these lines.
fn with_backend(lines: &str) -> String {
    format!("frontend f\n  bind 127.0.0.1:7000\n  default_backend b\nbackend b\n{lines}")
}

#[test]
fn the_seed_example_is_a_checked_weighted_pool() {
    let loaded = ok("frontend tcp_front\n    bind *:443\n    mode tcp\n    default_backend cdn_edges\n\n\
        backend cdn_edges\n    mode tcp\n    balance roundrobin\n    server edge1 10.0.1.1:443 check\n\
        \x20   server edge2 10.0.1.2:443 check\n    server edge3 10.0.1.3:443 check\n");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let s = server(&loaded, "tcp_front");
    assert_eq!(s.bind.to_string(), "0.0.0.0:443");
    assert_eq!(s.balance, BalanceKind::Weight);
    assert_eq!(s.healthcheck.kind, HealthKind::Ping);
    assert_eq!(s.healthcheck.interval, Duration::from_secs(2));
    assert_eq!((s.healthcheck.fails, s.healthcheck.passes), (3, 2));
    assert_eq!(
        s.healthcheck.passive_fails, 0,
        "HAProxy has no passive health by default"
    );
    assert_eq!(s.connect_attempts, 4, "retries 3 by default");
    let backends = s.discovery.static_backends().expect("static");
    let keys: Vec<String> = backends.iter().map(|b| b.key()).collect();
    assert_eq!(keys, ["10.0.1.1:443", "10.0.1.2:443", "10.0.1.3:443"]);
    assert_eq!(loaded.binds_at["servers.tcp_front.bind"], (2, 10));
}

#[test]
fn timeouts_are_milliseconds_without_a_unit_and_inherited_from_defaults() {
    let loaded = ok(&format!(
        "defaults\n  timeout connect 500\n  timeout client 1m\n  timeout server 30s\n  \
         maxconn 100\n  retries 1\n  option redispatch 1\n{}",
        with_backend("  server a 10.0.0.1:80\n")
    ));
    let s = server(&loaded, "f");
    assert_eq!(
        s.backend_connection_timeout,
        Some(Duration::from_millis(500))
    );
    assert_eq!(s.client_idle_timeout, Some(Duration::from_secs(60)));
    assert_eq!(s.backend_idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(s.max_connections, Some(100));
    assert_eq!(s.connect_attempts, 2);
    assert!(
        loaded.warnings.is_empty(),
        "redispatch 1 is what Sluice does"
    );
}

#[test]
fn a_tunnel_timeout_supersedes_both_idle_timeouts() {
    let loaded = ok(&format!(
        "defaults\n  timeout client 30s\n  timeout server 30s\n  timeout tunnel 1h\n{}",
        with_backend("  server a 10.0.0.1:80\n")
    ));
    let s = server(&loaded, "f");
    assert_eq!(s.client_idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(s.backend_idle_timeout, Some(Duration::from_secs(3600)));
}

#[test]
fn every_bind_of_a_frontend_is_one_servers() {
    let loaded = ok(
        "frontend f\n  bind :7000,:::7000\n  bind 127.0.0.1:7001-7003\n  \
        default_backend b\nbackend b\n  server a 10.0.0.1:80\n",
    );
    let names: Vec<&String> = loaded.config.servers.keys().collect();
    assert_eq!(names, ["f"]);
    assert_eq!(
        server(&loaded, "f").bind.to_string(),
        "[0.0.0.0:7000, [::]:7000, 127.0.0.1:7001-7003]"
    );
}

#[test]
fn balance_algorithms_map_to_the_closest_strategy() {
    let kind = |lines: &str| server(&ok(&with_backend(lines)), "f").balance;
    let one = "  server a 10.0.0.1:80\n";
    assert_eq!(
        kind(&format!("  balance static-rr\n{one}")),
        BalanceKind::Weight
    );
    assert_eq!(
        kind(&format!("  balance leastconn\n{one}")),
        BalanceKind::LeastConn
    );
    assert_eq!(
        kind(&format!("  balance source\n{one}")),
        BalanceKind::IpHash
    );
    let consistent = format!("  balance source\n  hash-type consistent\n{one}");
    assert_eq!(kind(&consistent), BalanceKind::Maglev);
    let bounded = format!("{consistent}  hash-balance-factor 150\n");
    assert_eq!(
        server(&ok(&with_backend(&bounded)), "f").hash_balance_factor,
        Some(150)
    );
    let map_based = ok(&with_backend(&format!(
        "  balance source\n  hash-balance-factor 150\n{one}"
    )));
    assert_eq!(server(&map_based, "f").hash_balance_factor, None);
    assert!(
        map_based.warnings[0]
            .message
            .contains("hash-balance-factor: ignored, as by HAProxy"),
        "{:?}",
        map_based.warnings
    );
    assert_eq!(kind(&format!("  balance random\n{one}")), BalanceKind::P2c);
    assert_eq!(
        kind(&format!("  balance random(1)\n{one}")),
        BalanceKind::Random
    );
}

#[test]
fn first_and_backups_are_priority_tiers() {
    let loaded = ok(&with_backend(
        "  balance first\n  server a 10.0.0.1:80 maxconn 10\n  server b 10.0.0.2:80 maxconn 10\n\
         \x20 server c 10.0.0.3:80 backup\n  server d 10.0.0.4:80 backup weight 0\n",
    ));
    let backends = server(&loaded, "f")
        .discovery
        .static_backends()
        .cloned()
        .expect("static");
    let tiers: Vec<(bool, u32)> = backends.iter().map(|b| (b.backup, b.priority)).collect();
    assert_eq!(tiers, [(false, 1), (false, 2), (true, 1), (true, 2)]);
    assert_eq!(backends[0].max_connections, Some(10));
    assert_eq!(
        backends[3].admin,
        AdminState::Draining,
        "weight 0 takes no new connection"
    );
    let all = ok(&with_backend(
        "  option allbackups\n  server a 10.0.0.1:80\n  server c 10.0.0.3:80 backup\n  \
         server d 10.0.0.4:80 backup disabled\n",
    ));
    let backends = server(&all, "f")
        .discovery
        .static_backends()
        .cloned()
        .expect("static");
    assert_eq!((backends[1].priority, backends[2].priority), (1, 1));
    assert_eq!(backends[2].admin, AdminState::Disabled);
}

#[test]
fn default_server_and_named_defaults_are_inherited() {
    let loaded = ok(
        "defaults base\n  default-server inter 500ms fall 5 rise 1 send-proxy-v2\n\
        defaults\n  timeout check 300ms\n\
        frontend f\n  bind 127.0.0.1:7000\n  default_backend b\n\
        backend b from base\n  server a 10.0.0.1:80 check\n  server b 10.0.0.2:80 check\n",
    );
    let s = server(&loaded, "f");
    assert_eq!(s.healthcheck.interval, Duration::from_millis(500));
    assert_eq!(
        s.healthcheck.timeout,
        Duration::from_millis(500),
        "not the other defaults'"
    );
    assert_eq!((s.healthcheck.fails, s.healthcheck.passes), (5, 1));
    assert_eq!(s.proxy_protocol.send, Some(ProxyVersion::V2));
}

#[test]
fn tcp_check_sequences_are_probe_steps() {
    let loaded = ok(&with_backend(
        "  option tcp-check\n  tcp-check connect\n  tcp-check send PING\\r\\n\n  \
         tcp-check expect string +PONG\n  tcp-check send info\\ replication\\r\\n\n  \
         tcp-check expect rstring role:master\n  tcp-check send-binary 0d0a\n  \
         tcp-check expect binary 2b4f4b\n  server r1 10.0.0.1:6379 check inter 200ms\n",
    ));
    let s = server(&loaded, "f");
    assert_eq!(s.healthcheck.interval, Duration::from_millis(200));
    let HealthKind::Probe(probe) = &s.healthcheck.kind else {
        panic!("a probe: {:?}", s.healthcheck.kind);
    };
    let ProbeScript::Steps { steps } = &probe.script else {
        panic!("steps");
    };
    assert_eq!(steps[0], ProbeStep::Send(b"PING\r\n".to_vec()));
    assert_eq!(steps[1], ProbeStep::Contains(b"+PONG".to_vec()));
    assert_eq!(steps[2], ProbeStep::Send(b"info replication\r\n".to_vec()));
    assert!(matches!(&steps[3], ProbeStep::Matches(re) if re.regex().as_str() == "role:master"));
    assert_eq!(steps[4], ProbeStep::Send(b"\r\n".to_vec()));
    assert_eq!(steps[5], ProbeStep::Contains(b"+OK".to_vec()));
}

#[test]
fn a_backends_own_tcp_check_rules_replace_those_of_defaults() {
    let loaded = ok(&format!(
        "defaults\n  option tcp-check\n  tcp-check send A\n  tcp-check expect string B\n{}",
        with_backend(
            "  tcp-check send C\n  tcp-check expect string D\n  server a 10.0.0.1:80 check\n"
        )
    ));
    let HealthKind::Probe(probe) = &server(&loaded, "f").healthcheck.kind else {
        panic!("a probe");
    };
    assert_eq!(
        probe.script,
        ProbeScript::Steps {
            steps: vec![
                ProbeStep::Send(b"C".to_vec()),
                ProbeStep::Contains(b"D".to_vec())
            ]
        }
    );
}

#[test]
fn check_options_pick_the_kind() {
    let kind = |option: &str| {
        let lines = format!("  {option}\n  server a 10.0.0.1:80 check\n");
        server(&ok(&with_backend(&lines)), "f")
            .healthcheck
            .kind
            .clone()
    };
    assert_eq!(kind("option redis-check").name(), "redis");
    let HealthKind::Mysql(mysql) = kind("option mysql-check user haproxy post-41") else {
        panic!("mysql");
    };
    assert_eq!(mysql.user.as_deref(), Some("haproxy"));
    let HealthKind::Pgsql(pgsql) = kind("option pgsql-check user hc") else {
        panic!("pgsql");
    };
    assert_eq!(pgsql.user.as_deref(), Some("hc"));
    let HealthKind::Http(http) = kind("option httpchk GET /health\n  http-check expect status 204")
    else {
        panic!("http");
    };
    assert_eq!(
        (http.method.as_str(), http.path.as_str()),
        ("GET", "/health")
    );
    assert_eq!(http.status, [(204, 204)]);
    let HealthKind::Http(http) = kind("option httpchk") else {
        panic!("http");
    };
    assert_eq!(
        (http.method.as_str(), http.status.as_slice()),
        ("OPTIONS", &[(200, 399)][..])
    );
    assert_eq!(kind("option ssl-hello-chk").name(), "tls");
    let unchecked = ok(&with_backend(
        "  option redis-check\n  server a 10.0.0.1:80\n",
    ));
    assert_eq!(server(&unchecked, "f").healthcheck.kind, HealthKind::None);
}

#[test]
fn sni_rules_tag_the_backends() {
    let base = "frontend f\n  bind :443\n  tcp-request inspect-delay 3s\n  \
        tcp-request content accept if { req_ssl_hello_type 1 }\n  \
        acl api req_ssl_sni -i api.example.com\n  use_backend api if api\n";
    let backends = "backend api\n  server a 10.0.1.1:443\nbackend web\n  server w 10.0.2.1:443\n";
    let exact = ok(&format!("{base}  default_backend web\n{backends}"));
    let s = server(&exact, "f");
    let sni = s.sni.as_ref().expect("sni");
    assert_eq!(sni.read_timeout, Duration::from_secs(3));
    assert_eq!(sni.matching, HostnameMatching::Exact);
    assert_eq!(sni.unexpected, UnexpectedHostname::Default);
    let tags: Vec<Option<&str>> = s
        .discovery
        .static_backends()
        .expect("static")
        .iter()
        .map(|b| b.sni.as_deref())
        .collect();
    assert_eq!(tags, [None, Some("api.example.com")]);

    let suffix = ok(&format!(
        "{base}  use_backend web if {{ req_ssl_sni -m end .example.org }}\n{backends}"
    ));
    let s = server(&suffix, "f");
    let sni = s.sni.as_ref().expect("sni");
    assert_eq!(sni.matching, HostnameMatching::Regexp);
    assert_eq!(
        sni.unexpected,
        UnexpectedHostname::Reject,
        "no default_backend"
    );
    let tags: Vec<&str> = s
        .discovery
        .static_backends()
        .expect("static")
        .iter()
        .filter_map(|b| b.sni.as_deref())
        .collect();
    assert_eq!(tags, [r"api\.example\.com", r".*\.example\.org"]);
    assert!(
        suffix.warnings[0]
            .message
            .contains("keep the patterns from overlapping"),
        "{:?}",
        suffix.warnings
    );

    let twice = format!("{base}  use_backend web if {{ req_ssl_sni API.example.com }}\n{backends}");
    assert!(
        errors(&twice).contains(
            "use_backend web: api.example.com goes to api by an earlier rule; HAProxy never \
             takes this one, Sluice would mix both backends"
        ),
        "{}",
        errors(&twice)
    );
}

#[test]
fn refusing_what_is_not_a_client_hello_needs_sni_routing() {
    let backends = "backend api\n  server a 10.0.1.1:443\n";
    for reject in [
        "tcp-request content reject if !{ req_ssl_hello_type 1 }",
        "tcp-request content accept if { req_ssl_hello_type 1 }\n  tcp-request content reject",
    ] {
        let routed = format!(
            "frontend f\n  bind :443\n  {reject}\n  \
             use_backend api if {{ req_ssl_sni api.example.com }}\n{backends}"
        );
        assert!(server(&ok(&routed), "f").sni.is_some());
        let unrouted =
            format!("frontend f\n  bind :443\n  {reject}\n  default_backend api\n{backends}");
        assert!(
            errors(&unrouted).contains("only when it routes by server name"),
            "{reject}"
        );
    }
    let other = "frontend f\n  bind :443\n  tcp-request content reject if { src 10.0.0.0/8 }\n";
    assert!(errors(other).contains("content reject: only"));
}

#[test]
fn connection_rules_are_access_rules_in_order() {
    let loaded = ok(
        "frontend f\n  bind 127.0.0.1:7000\n  acl bad src 10.1.0.0/16\n  \
        acl ours src 10.0.0.0/8 192.168.0.0/16\n  tcp-request connection reject if bad\n  \
        tcp-request connection reject if !ours\n  default_backend b\n\
        backend b\n  server a 10.0.0.1:80\n",
    );
    let acl = server(&loaded, "f").access.clone().expect("access");
    assert_eq!(acl.default, Action::Deny);
    let rules: Vec<String> = acl
        .rules
        .iter()
        .map(|r| format!("{} {}", r.action, r.net))
        .collect();
    assert_eq!(
        rules,
        [
            "deny 10.1.0.0/16",
            "allow 10.0.0.0/8",
            "allow 192.168.0.0/16"
        ]
    );
    assert!(!acl.allows("10.1.2.3".parse().unwrap(), None));
    assert!(acl.allows("10.2.0.1".parse().unwrap(), None));
    assert!(!acl.allows("172.16.0.1".parse().unwrap(), None));
}

#[test]
fn ssl_servers_are_backends_tls() {
    let loaded = ok(&with_backend(
        "  server a 10.0.0.1:443 ssl verify none sni str(api.example.com)\n",
    ));
    let tls = server(&loaded, "f").backends_tls.clone().expect("tls");
    assert!(tls.ignore_verify);
    assert_eq!(tls.server_name.as_deref(), Some("api.example.com"));
}

#[test]
fn global_directives_sluice_does_its_own_way_are_warnings() {
    let loaded = ok(&format!(
        "global\n  daemon\n  nbthread 4\n  pidfile /run/haproxy.pid\n  stats socket /run/s\n{}",
        with_backend("  server a 10.0.0.1:80\n")
    ));
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(warnings[1].contains("--threads N"), "{}", warnings[1]);
    assert!(warnings[3].contains("[api]"), "{}", warnings[3]);
}

#[test]
fn directives_in_the_wrong_place_are_warned_about_or_refused() {
    let loaded = ok("defaults\n  default_backend b\n\
        frontend f\n  bind 127.0.0.1:7000\n  timeout server 5s\n\
        backend b\n  timeout client 5s\n  server a 10.0.0.1:80\n\
        listen l\n  bind 127.0.0.1:7001\n  server x 10.0.0.2:80\n");
    let s = server(&loaded, "f");
    assert_eq!(
        s.backend_idle_timeout, None,
        "a frontend's timeout server is not its backend's"
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "h.cfg:2:19: warning: listen l: default_backend: its own servers are then not used \
             (as in HAProxy)",
            "h.cfg:5:11: warning: frontend f: timeout server: ignored; its backends' applies, \
             as in HAProxy",
            "h.cfg:7:11: warning: backend b: timeout client: ignored; the frontends' applies, \
             as in HAProxy",
        ]
    );
    assert_eq!(
        errors("defaults\n  tcp-request inspect-delay 5s\nbackend b\n  maxconn 5\n  server a 10.0.0.1:80\n"),
        "h.cfg:2:3: defaults: tcp-request: not supported in defaults; write it in each frontend\n\
         h.cfg:4:3: backend b: maxconn: not allowed in a backend section"
    );
}

#[test]
fn global_settings_sluice_takes() {
    let loaded = ok(&format!(
        "global\n  hard-stop-after 5m\n  ssl-server-verify none\n  spread-checks 5\n{}",
        with_backend("  server a 10.0.0.1:443 ssl\n")
    ));
    assert_eq!(loaded.config.shutdown_timeout, Duration::from_secs(300));
    let tls = server(&loaded, "f").backends_tls.clone().expect("tls");
    assert!(tls.ignore_verify, "ssl-server-verify none");
    assert_eq!(
        loaded.warnings.len(),
        1,
        "spread-checks: {:?}",
        loaded.warnings
    );
    let missing = errors(&format!(
        "global\n  ca-base /nonexistent/certs\n{}",
        with_backend("  server a 10.0.0.1:443 ssl ca-file ca.pem\n")
    ));
    assert!(missing.contains("/nonexistent/certs/ca.pem"), "{missing}");
}

#[test]
fn unknown_options_suggest_the_nearest() {
    let text = with_backend("  option redispach\n  option tcpka\n  server a 10.0.0.1:80\n");
    assert_eq!(
        errors(&text),
        "h.cfg:5:3: backend b: option redispach: unknown option (did you mean \"redispatch\"?)\n\
         h.cfg:6:3: backend b: option tcpka: not supported by Sluice"
    );
}

#[test]
fn a_statistics_page_is_ignored_unless_it_balances_too() {
    let stats = "listen stats\n  bind :8404\n  mode http\n  stats enable\n  \
        http-request use-service prometheus-exporter if { path /metrics }\n";
    let loaded = ok(&format!(
        "{stats}{}",
        with_backend("  server a 10.0.0.1:80\n")
    ));
    assert_eq!(loaded.config.servers.len(), 1);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let mixed = "listen l\n  bind :7001\n  stats enable\n  server a 10.0.0.1:80\n";
    assert_eq!(
        errors(mixed),
        "h.cfg:3:3: listen l: stats: not supported; Sluice's statistics are its API ([api]) \
         and Prometheus endpoint ([metrics])"
    );
}

#[test]
fn server_names_follow_the_models_rules() {
    // Found by the fuzz target config_haproxy: a NUL in a frontend's name.
    let text = "frontend a\u{0}b\n  bind 127.0.0.1:7000\n  default_backend b\n\
        backend b\n  server a 10.0.0.1:80\n";
    assert_eq!(
        errors(text),
        "h.cfg:2:8: frontend a\\u{0}b: Sluice server \"a\\u{0}b\": a server name must not \
         hold control or invisible formatting characters (found U+0000)"
    );
}

#[test]
fn errors_name_the_section_directive_and_position() {
    let text = with_backend("  server edge1 10.0.0.1:80 weight x\n  balanse roundrobin\n");
    assert_eq!(
        errors(&text),
        "h.cfg:5:35: backend b: server edge1: weight: expected a number 0-256, found \"x\"\n\
         h.cfg:6:3: backend b: balanse: unknown directive (did you mean \"balance\"?)"
    );
}

#[test]
fn slowstart_and_on_marked_down_become_the_servers_warm_up_and_close_on_down() {
    let loaded = ok(&with_backend(
        "  default-server check slowstart 30s on-marked-down shutdown-sessions\n\
         \x20 server a 10.0.0.1:80\n  server b 10.0.0.2:80\n",
    ));
    let s = server(&loaded, "f");
    assert_eq!(s.failover.slow_start, Some(Duration::from_secs(30)));
    assert!(s.failover.close_on_down);

    let plain = ok(&with_backend("  server a 10.0.0.1:80\n"));
    let s = server(&plain, "f");
    assert_eq!(
        (s.failover.slow_start, s.failover.close_on_down),
        (None, false)
    );

    let differ = errors(&with_backend(
        "  server a 10.0.0.1:80 slowstart 10s\n  server b 10.0.0.2:80 slowstart 20s\n",
    ));
    assert!(
        differ.contains("h.cfg:6:3: backend b: server b: slowstart (on-marked-down) differs from server a's (line 5); Sluice warms up and closes the connections of a backend's servers alike"),
        "{differ}"
    );
    let backup = errors(&with_backend(
        "  server a 10.0.0.1:80 on-marked-down shutdown-backup-sessions\n",
    ));
    assert!(
        backup.contains("on-marked-down: shutdown-backup-sessions is not supported"),
        "{backup}"
    );
}
