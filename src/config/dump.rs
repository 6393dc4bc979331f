//! A validated [`Config`] written back out in GoBetween's schema: `GET /dump`, the API's
//! server resources, and `persist = true` (which writes the file the API changed).
//!
//! What is written parses back into the same `Config` (a test holds that), with every
//! default spelled out; comments and `[defaults]` of the original file are not kept.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{
    ApiConfig, Config, DiscoveryConfig, HealthConfig, HealthKind, InitialStatus, LogFormat,
    LogOutput, Protocol, ServerConfig,
};

/// What secrets become in a redacted dump.
pub const REDACTED: &str = "<redacted>";

/// Whether passwords and tokens are written out or replaced by [`REDACTED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    Keep,
    Redact,
}

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
        top.insert(
            "metrics".into(),
            json!({ "enabled": true, "bind": metrics.bind.to_string() }),
        );
    }
    let servers: Map<String, Value> = config
        .servers
        .iter()
        .map(|(name, server)| (name.clone(), server_json(server)))
        .collect();
    top.insert("servers".into(), Value::Object(servers));
    Value::Object(top)
}

/// The whole configuration as TOML text.
pub fn to_toml(config: &Config, secrets: Secrets) -> Result<String, toml::ser::Error> {
    toml::to_string(&to_json(config, secrets))
}

fn api_json(api: &ApiConfig, secrets: Secrets) -> Value {
    let secret = |s: &str| match secrets {
        Secrets::Keep => s.to_owned(),
        Secrets::Redact => REDACTED.to_owned(),
    };
    let mut out = Map::new();
    out.insert("enabled".into(), true.into());
    out.insert("bind".into(), api.bind.to_string().into());
    out.insert("cors".into(), api.cors.into());
    out.insert("persist".into(), api.persist.into());
    out.insert("insecure_public".into(), api.insecure_public.into());
    if let Some(token) = &api.bearer_token {
        out.insert("bearer_token".into(), secret(token).into());
    }
    if let Some(auth) = &api.basic_auth {
        out.insert(
            "basic_auth".into(),
            json!({ "login": auth.login, "password": secret(&auth.password) }),
        );
    }
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

/// One server, as `[servers.NAME]` holds it (and as the API's server resources show it).
pub fn server_json(server: &ServerConfig) -> Value {
    let mut out = Map::new();
    out.insert("bind".into(), server.bind.to_string().into());
    out.insert(
        "protocol".into(),
        match server.protocol {
            Protocol::Tcp => "tcp",
        }
        .into(),
    );
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
    let DiscoveryConfig::Static { backends } = &server.discovery;
    out.insert(
        "discovery".into(),
        json!({
            "kind": "static",
            "static_list": backends.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
    );
    out.insert("healthcheck".into(), healthcheck_json(&server.healthcheck));
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

fn healthcheck_json(health: &HealthConfig) -> Value {
    let kind = match health.kind {
        HealthKind::None => return json!({ "kind": "none" }),
        HealthKind::Ping => "ping",
    };
    json!({
        "kind": kind,
        "interval": duration(health.interval),
        "timeout": duration(health.timeout),
        "fails": health.fails,
        "passes": health.passes,
        "initial_status": match health.initial_status {
            InitialStatus::Healthy => "healthy",
            InitialStatus::Unhealthy => "unhealthy",
        },
        "passive_fails": health.passive_fails,
    })
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
        round_trip(include_str!("../../examples/minimal.toml"));
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
