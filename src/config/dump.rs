//! A validated [`Config`] written back out in GoBetween's schema: `GET /dump`, the API's
//! server resources, and `persist = true` (which writes the file the API changed).
//!
//! What is written parses back into the same `Config` (a test holds that), with every
//! default spelled out; comments and `[defaults]` of the original file are not kept.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{
    escape, ApiConfig, BasicAuth, ClientAuth, Config, Cors, HealthConfig, HealthKind,
    HostnameMatching, InitialStatus, LogFormat, LogOutput, MetricsConfig, ProbeExpect,
    ProbeProtocol, Protocol, RedisRole, ServerConfig, TlsSettings, UnexpectedHostname,
};

pub use super::secrets::{url, Secrets, REDACTED};

/// The whole configuration as a JSON object.
pub fn to_json(config: &Config, secrets: Secrets) -> Value {
    let mut top = Map::new();
    top.insert(
        "shutdown_timeout".into(),
        duration(config.shutdown_timeout).into(),
    );
    let logging = &config.logging;
    top.insert(
        "logging".into(),
        json!({
            "level": logging.level,
            "format": match logging.format { LogFormat::Text => "text", LogFormat::Json => "json" },
            "output": match &logging.output {
                LogOutput::Stdout => "stdout".to_owned(),
                LogOutput::Stderr => "stderr".to_owned(),
                LogOutput::File(path) => path.display().to_string(),
            },
        }),
    );
    if let Some(api) = &config.api {
        top.insert("api".into(), api_json(api, secrets));
    }
    if let Some(metrics) = &config.metrics {
        top.insert("metrics".into(), metrics_json(metrics, secrets));
    }
    let servers: Map<String, Value> = config
        .servers
        .iter()
        .map(|(name, server)| (name.clone(), server_value(server, secrets)))
        .collect();
    top.insert("servers".into(), Value::Object(servers));
    Value::Object(top)
}

/// The whole configuration as TOML text.
pub fn to_toml(config: &Config, secrets: Secrets) -> Result<String, toml::ser::Error> {
    toml::to_string(&to_json(config, secrets))
}

fn api_json(api: &ApiConfig, secrets: Secrets) -> Value {
    let mut out = Map::new();
    out.insert("enabled".into(), true.into());
    out.insert("bind".into(), api.bind.to_string().into());
    let cors = match &api.cors {
        Cors::Off => false.into(),
        Cors::AnyOrigin => true.into(),
        Cors::Origins(origins) => origins.clone().into(),
    };
    out.insert("cors".into(), cors);
    out.insert("persist".into(), api.persist.into());
    out.insert("insecure_public".into(), api.insecure_public.into());
    out.insert("allowed_hosts".into(), api.allowed_hosts.clone().into());
    out.insert("allow_exec".into(), api.allow_exec.into());
    out.insert("max_connections".into(), api.max_connections.into());
    credentials_json(&mut out, &api.basic_auth, &api.bearer_token, secrets);
    if let Some(tls) = &api.tls {
        out.insert(
            "tls".into(),
            json!({
                "cert_path": tls.cert_path.display().to_string(),
                "key_path": tls.key_path.display().to_string(),
            }),
        );
    }
    Value::Object(out)
}

fn metrics_json(metrics: &MetricsConfig, secrets: Secrets) -> Value {
    let mut out = Map::new();
    out.insert("enabled".into(), true.into());
    out.insert("bind".into(), metrics.bind.to_string().into());
    out.insert("insecure_public".into(), metrics.insecure_public.into());
    out.insert("allowed_hosts".into(), metrics.allowed_hosts.clone().into());
    credentials_json(
        &mut out,
        &metrics.basic_auth,
        &metrics.bearer_token,
        secrets,
    );
    Value::Object(out)
}

fn credentials_json(
    out: &mut Map<String, Value>,
    basic_auth: &Option<BasicAuth>,
    bearer_token: &Option<String>,
    secrets: Secrets,
) {
    let secret = |s: &str| match secrets {
        Secrets::Keep => s.to_owned(),
        Secrets::Redact => REDACTED.to_owned(),
    };
    if let Some(token) = bearer_token {
        out.insert("bearer_token".into(), secret(token).into());
    }
    if let Some(auth) = basic_auth {
        out.insert(
            "basic_auth".into(),
            json!({ "login": auth.login, "password": secret(&auth.password) }),
        );
    }
}

/// One server, as `[servers.NAME]` holds it, health-check passwords redacted (the API's
/// server resources).
pub fn server_json(server: &ServerConfig) -> Value {
    server_value(server, Secrets::Redact)
}

/// One server, secrets kept or redacted.
pub fn server_value(server: &ServerConfig, secrets: Secrets) -> Value {
    let mut out = Map::new();
    out.insert("bind".into(), server.bind.to_string().into());
    out.insert("protocol".into(), server.protocol.as_str().into());
    out.insert("balance".into(), server.balance.to_string().into());
    out.insert(
        "max_connections".into(),
        server.max_connections.unwrap_or(0).into(),
    );
    out.insert(
        "client_idle_timeout".into(),
        timeout(server.client_idle_timeout).into(),
    );
    out.insert(
        "backend_idle_timeout".into(),
        timeout(server.backend_idle_timeout).into(),
    );
    out.insert(
        "backend_connection_timeout".into(),
        timeout(server.backend_connection_timeout).into(),
    );
    out.insert("connect_attempts".into(), server.connect_attempts.into());
    out.insert("discovery".into(), server.discovery.to_json(secrets));
    out.insert(
        "healthcheck".into(),
        healthcheck_json(&server.healthcheck, secrets),
    );
    if let Some(version) = server.proxy_protocol.send {
        out.insert(
            "proxy_protocol".into(),
            json!({ "version": version.as_str() }),
        );
    }
    if let Some(accept) = &server.proxy_protocol.accept {
        out.insert(
            "accept_proxy_protocol".into(),
            json!({
                "from": accept.from.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "timeout": duration(accept.timeout),
            }),
        );
    }
    if let Some(sni) = &server.sni {
        let matching = match sni.matching {
            HostnameMatching::Exact => "exact",
            HostnameMatching::Regexp => "regexp",
        };
        let unexpected = match sni.unexpected {
            UnexpectedHostname::Default => "default",
            UnexpectedHostname::Reject => "reject",
            UnexpectedHostname::Any => "any",
        };
        out.insert(
            "sni".into(),
            json!({
                "read_timeout": duration(sni.read_timeout),
                "hostname_matching_strategy": matching,
                "unexpected_hostname_strategy": unexpected,
            }),
        );
    }
    if let Some(tls) = &server.tls {
        let path = |p: &std::path::Path| p.display().to_string();
        let mut t = Map::new();
        if let Some(first) = tls.certificates.first() {
            t.insert("cert_path".into(), path(&first.cert_path).into());
            t.insert("key_path".into(), path(&first.key_path).into());
        }
        if tls.certificates.len() > 1 {
            let more: Vec<Value> = tls.certificates[1..]
                .iter()
                .map(|f| json!({ "cert_path": path(&f.cert_path), "key_path": path(&f.key_path) }))
                .collect();
            t.insert("certificates".into(), more.into());
        }
        t.insert("min_version".into(), tls.min_version.as_str().into());
        t.insert("max_version".into(), tls.max_version.as_str().into());
        t.insert("ciphers".into(), tls.ciphers.clone().into());
        t.insert(
            "prefer_server_ciphers".into(),
            tls.prefer_server_ciphers.into(),
        );
        t.insert("session_tickets".into(), tls.session_tickets.into());
        t.insert("alpn".into(), tls.alpn.clone().into());
        if let Some(ca) = &tls.client_ca_path {
            t.insert("client_ca_path".into(), path(ca).into());
            let auth = match tls.client_auth {
                ClientAuth::None => "none",
                ClientAuth::Optional => "optional",
                ClientAuth::Require => "require",
            };
            t.insert("client_auth".into(), auth.into());
        }
        t.insert(
            "handshake_timeout".into(),
            duration(tls.handshake_timeout).into(),
        );
        out.insert("tls".into(), Value::Object(t));
    }
    if let Some(b) = &server.backends_tls {
        let mut t = Map::new();
        t.insert("ignore_verify".into(), b.ignore_verify.into());
        if let Some(ca) = &b.root_ca_cert_path {
            t.insert("root_ca_cert_path".into(), ca.display().to_string().into());
        }
        if let Some(files) = &b.identity {
            t.insert(
                "cert_path".into(),
                files.cert_path.display().to_string().into(),
            );
            t.insert(
                "key_path".into(),
                files.key_path.display().to_string().into(),
            );
        }
        t.insert("min_version".into(), b.min_version.as_str().into());
        t.insert("max_version".into(), b.max_version.as_str().into());
        t.insert("ciphers".into(), b.ciphers.clone().into());
        t.insert("session_tickets".into(), b.session_tickets.into());
        if let Some(name) = &b.server_name {
            t.insert("server_name".into(), name.clone().into());
        }
        out.insert("backends_tls".into(), Value::Object(t));
    }
    if server.protocol == Protocol::Udp {
        out.insert(
            "udp".into(),
            json!({
                "max_requests": server.udp.max_requests.unwrap_or(0),
                "max_responses": server.udp.max_responses.unwrap_or(0),
            }),
        );
    }
    if let Some(acl) = &server.access {
        out.insert(
            "access".into(),
            json!({
                "default": acl.default.to_string(),
                "rules": acl.rules.iter().map(|r| format!("{} {}", r.action, r.net)).collect::<Vec<_>>(),
            }),
        );
    }
    Value::Object(out)
}

fn healthcheck_json(health: &HealthConfig, secrets: Secrets) -> Value {
    if health.kind == HealthKind::None {
        return json!({ "kind": "none" });
    }
    let mut out = Map::new();
    out.insert("kind".into(), health.kind.name().into());
    out.insert("interval".into(), duration(health.interval).into());
    out.insert("timeout".into(), duration(health.timeout).into());
    out.insert("fails".into(), health.fails.into());
    out.insert("passes".into(), health.passes.into());
    let initial = match health.initial_status {
        InitialStatus::Healthy => "healthy",
        InitialStatus::Unhealthy => "unhealthy",
    };
    out.insert("initial_status".into(), initial.into());
    out.insert("passive_fails".into(), health.passive_fails.into());
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    let secret = |s: &str| match secrets {
        Secrets::Keep => Value::from(s),
        Secrets::Redact => Value::from(REDACTED),
    };
    match &health.kind {
        HealthKind::None | HealthKind::Ping => {}
        HealthKind::Probe(p) => {
            let protocol = match p.protocol {
                ProbeProtocol::Tcp => "tcp",
                ProbeProtocol::Udp => "udp",
                ProbeProtocol::Tls => "tls",
            };
            put("probe_protocol", protocol.into());
            put("probe_send", escape(&p.send).into());
            match &p.expect {
                ProbeExpect::StartsWith(bytes) => {
                    put("probe_strategy", "starts_with".into());
                    put("probe_recv", escape(bytes).into());
                }
                ProbeExpect::Regexp { pattern, len } => {
                    put("probe_strategy", "regexp".into());
                    put("probe_recv", pattern.as_str().into());
                    put("probe_recv_len", (*len).into());
                }
            }
            if p.protocol == ProbeProtocol::Tls {
                tls_json(&p.tls, &mut put);
            }
        }
        HealthKind::Exec(e) => {
            put("exec_command", e.command.as_str().into());
            put("exec_expected_positive_output", e.positive.as_str().into());
            if let Some(negative) = &e.negative {
                put("exec_expected_negative_output", negative.as_str().into());
            }
        }
        HealthKind::Http(h) => {
            put("http_method", h.method.as_str().into());
            put("http_path", h.path.as_str().into());
            if let Some(host) = &h.host {
                put("http_host", host.as_str().into());
            }
            let status: Vec<String> = h
                .status
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            put("http_status", status.into());
            if let Some(body) = &h.body {
                put("http_body", body.as_str().into());
            }
            if let Some(re) = &h.body_regexp {
                put("http_body_regexp", re.as_str().into());
            }
            if let Some(tls) = &h.tls {
                tls_json(tls, &mut put);
            }
        }
        HealthKind::Tls(tls) => tls_json(tls, &mut put),
        HealthKind::Udp(u) => {
            put("udp_send", escape(&u.send).into());
            if let Some(recv) = &u.recv {
                put("udp_recv", escape(recv).into());
            }
        }
        HealthKind::Redis(r) => {
            if let Some(user) = &r.user {
                put("redis_user", user.as_str().into());
            }
            if let Some(password) = &r.password {
                put("redis_password", secret(password));
            }
            let role = match r.role {
                RedisRole::Master => "master",
                RedisRole::Any => "any",
            };
            put("redis_role", role.into());
        }
        HealthKind::Mysql(m) => {
            if let Some(user) = &m.user {
                put("mysql_user", user.as_str().into());
            }
            if let Some(password) = &m.password {
                put("mysql_password", secret(password));
            }
        }
        HealthKind::Pgsql(p) => {
            if let Some(user) = &p.user {
                put("pgsql_user", user.as_str().into());
            }
            if let Some(password) = &p.password {
                put("pgsql_password", secret(password));
            }
            if let Some(database) = &p.database {
                put("pgsql_database", database.as_str().into());
            }
        }
    }
    Value::Object(out)
}

fn tls_json(tls: &TlsSettings, put: &mut impl FnMut(&str, Value)) {
    if let Some(name) = &tls.server_name {
        put("tls_server_name", name.as_str().into());
    }
    put("tls_skip_verify", tls.skip_verify.into());
    if let Some(path) = &tls.ca_path {
        put("tls_ca_path", path.display().to_string().into());
    }
}

/// A Go duration string that [`super::parse_duration`] reads back exactly.
pub fn duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".into();
    }
    let nanos = d.as_nanos();
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos % size == 0 {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

/// A timeout: `"0"` is no limit.
fn timeout(t: Option<Duration>) -> String {
    t.map_or_else(|| "0".into(), duration)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    fn round_trip(text: &str) {
        let config = parse(text, Path::new("in.toml")).expect("valid").config;
        let toml = to_toml(&config, Secrets::Keep).expect("TOML");
        let back = parse(&toml, Path::new("dump.toml"))
            .unwrap_or_else(|e| panic!("dump does not parse: {e}\n{toml}"))
            .config;
        assert_eq!(back, config, "TOML dump:\n{toml}");
        let json = to_json(&config, Secrets::Keep).to_string();
        let back = parse(&json, Path::new("dump.json"))
            .expect("JSON dump parses")
            .config;
        assert_eq!(back, config);
    }

    #[test]
    fn dumps_parse_back_to_the_same_config() {
        round_trip(include_str!("../../examples/gobetween.toml"));
        round_trip(include_str!("../../tests/configs/valid/discovery.toml"));
        round_trip(include_str!("../../tests/configs/valid/udp.toml"));
        round_trip(include_str!(
            "../../tests/configs/valid/proxy_protocol.toml"
        ));
        round_trip(include_str!("../../examples/minimal.toml"));
        round_trip(include_str!("../../tests/configs/valid/sni.toml"));
        round_trip(include_str!("../../tests/configs/valid/tls.toml"));
        round_trip(
            "shutdown_timeout = \"1m30s\"\n\
             [logging]\nlevel = \"debug\"\nformat = \"json\"\noutput = \"stdout\"\n\
             [api]\nenabled = true\nbind = \"0.0.0.0:8888\"\nbearer_token = \"t\"\npersist = true\n\
             [api.basic_auth]\nlogin = \"a\"\npassword = \"p\"\n\
             [metrics]\nenabled = true\n\
             [servers.db]\nbind = \"[::1]:5432\"\nbalance = \"leastconn\"\nmax_connections = 10\n\
             client_idle_timeout = \"250ms\"\nbackend_connection_timeout = \"0\"\n\
             [servers.db.discovery]\nkind = \"static\"\n\
             static_list = [\"[::1]:5433 weight=2 state=drain\", \"db2:5432 backup\"]\n\
             [servers.db.healthcheck]\nkind = \"ping\"\ninterval = \"1500ms\"\nfails = 2\n\
             [servers.db.access]\ndefault = \"deny\"\nrules = [\"allow 10.0.0.0/8\", \"allow ::1\"]\n",
        );
    }

    #[test]
    fn every_health_kind_round_trips() {
        let server = |name: &str, port: u16, health: &str| {
            format!(
                "[servers.{name}]\nbind = \"127.0.0.1:{port}\"\n\
                 discovery = {{ kind = \"static\", static_list = [\"127.0.0.1:1\"] }}\n\
                 [servers.{name}.healthcheck]\ninterval = \"3s\"\ntimeout = \"0\"\n{health}\n"
            )
        };
        let kinds = [
            "kind = \"probe\"\nprobe_send = 'PING\\r\\n\\x00'\nprobe_recv = \"+PONG\"",
            "kind = \"probe\"\nprobe_protocol = \"tls\"\nprobe_send = \"x\"\n\
             probe_strategy = \"regexp\"\nprobe_recv = '^OK\\d+'\nprobe_recv_len = 8\n\
             tls_server_name = \"db.example\"\ntls_skip_verify = true",
            "kind = \"exec\"\nexec_command = \"/bin/check\"\n\
             exec_expected_positive_output = \"1\"\nexec_expected_negative_output = \"0\"",
            "kind = \"http\"",
            "kind = \"https\"\nhttp_method = \"HEAD\"\nhttp_path = \"/health?x=1\"\n\
             http_host = \"example.org\"\nhttp_status = [\"200-299\", \"301\"]\n\
             http_body = \"ok\"\nhttp_body_regexp = '^ok[a-z]+'\ntls_ca_path = \"/etc/ca.pem\"",
            "kind = \"tls\"",
            "kind = \"udp\"\nudp_send = '\\x00\\x01'\nudp_recv = \"\\u0000\"",
            "kind = \"redis\"\nredis_user = \"u\"\nredis_password = \"p\"\nredis_role = \"master\"",
            "kind = \"mysql\"\nmysql_user = \"u\"\nmysql_password = \"p\"",
        ];
        let text: String = kinds
            .iter()
            .enumerate()
            .map(|(i, health)| server(&format!("s{i}"), 4000 + i as u16, health))
            .collect();
        round_trip(&text);
        let config = parse(&text, Path::new("in.toml")).expect("valid").config;
        let redacted = to_toml(&config, Secrets::Redact).expect("TOML");
        assert!(!redacted.contains("\"p\""), "{redacted}");
    }

    #[test]
    fn secrets_are_redacted() {
        let text = "[api]\nenabled = true\nbearer_token = \"s3cret-token\"\n\
                    [api.basic_auth]\nlogin = \"admin\"\npassword = \"hunter2\"\n";
        let config = parse(text, Path::new("in.toml")).expect("valid").config;
        for dump in [
            to_toml(&config, Secrets::Redact).expect("TOML"),
            to_json(&config, Secrets::Redact).to_string(),
        ] {
            assert!(
                !dump.contains("hunter2") && !dump.contains("s3cret-token"),
                "{dump}"
            );
            assert!(dump.contains(REDACTED) && dump.contains("admin"));
        }
    }

    #[test]
    fn durations_print_in_their_largest_exact_unit() {
        assert_eq!(duration(Duration::from_secs(5400)), "90m");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(duration(Duration::ZERO), "0");
    }
}
