//! A validated [`Config`] written back out in GoBetween's schema: `GET /dump`, the API's
//! server resources, and `persist = true` (which writes the file the API changed).
//!
//! The configuration types derive `Serialize` under the file's key names; this module
//! holds the entry points and the few sections whose file shape differs from the model's.
//! What is written parses back into the same `Config` (a test holds that), with every
//! default spelled out; comments and `[defaults]` of the original file are not kept.
//! Keys are written in name order: serde_json's map sorts them, and the TOML is made
//! from that map.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};
use serde_json::Value;

use super::{
    secrets, write_as, ClientAuth, Config, Protocol, ServerConfig, TlsFiles, TlsTermination,
    TlsVersion, UdpConfig,
};

pub use super::secrets::{url, Secrets, REDACTED};

/// The whole configuration as a JSON object.
pub fn to_json(config: &Config, secrets: Secrets) -> Value {
    json_of(config, secrets)
}

/// The whole configuration as TOML text.
pub fn to_toml(config: &Config, secrets: Secrets) -> Result<String, toml::ser::Error> {
    toml::to_string(&to_json(config, secrets))
}

/// One server, as `[servers.NAME]` holds it, health-check passwords redacted (the API's
/// server resources).
pub fn server_json(server: &ServerConfig) -> Value {
    server_value(server, Secrets::Redact)
}

/// One server, secrets kept or redacted.
pub fn server_value(server: &ServerConfig, secrets: Secrets) -> Value {
    json_of(&WrittenServer::from(server), secrets)
}

/// `value` as JSON, secrets kept or redacted: the mode holds for this one synchronous
/// call only (see `secrets::with`).
fn json_of(value: &impl Serialize, secrets: Secrets) -> Value {
    secrets::with(secrets, || serde_json::to_value(value))
        .expect("the configuration serializes: its keys are strings and its paths are shown")
}

/// `[api]` and `[metrics]`, which exist when `enabled = true`.
pub(crate) fn enabled<S, T>(section: &Option<T>, serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Serialize,
{
    #[derive(Serialize)]
    struct Enabled<'a, T> {
        enabled: bool,
        #[serde(flatten)]
        section: &'a T,
    }
    section
        .as_ref()
        .map(|section| Enabled {
            enabled: true,
            section,
        })
        .serialize(serializer)
}

/// Every `[servers.NAME]`, as [`WrittenServer`].
pub(crate) fn servers<S: Serializer>(
    servers: &BTreeMap<String, ServerConfig>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(
        servers
            .iter()
            .map(|(name, server)| (name, WrittenServer::from(server))),
    )
}

/// One `[servers.NAME]`: the server's keys, and `[udp]` for a UDP server only (a TCP
/// server's limits are unset, as a UDP server's may be).
#[derive(Serialize)]
struct WrittenServer<'a> {
    #[serde(flatten)]
    server: &'a ServerConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    udp: Option<&'a UdpConfig>,
}

impl<'a> From<&'a ServerConfig> for WrittenServer<'a> {
    fn from(server: &'a ServerConfig) -> Self {
        WrittenServer {
            server,
            udp: (server.protocol == Protocol::Udp).then_some(&server.udp),
        }
    }
}

impl Serialize for TlsTermination {
    /// `[servers.NAME.tls]`: the first certificate's files are `cert_path` and `key_path`,
    /// the others `certificates`; `client_auth` is written beside `client_ca_path` only.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            acme_hosts: &'a [String],
            #[serde(flatten)]
            default_certificate: Option<&'a TlsFiles>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            certificates: &'a [TlsFiles],
            min_version: TlsVersion,
            max_version: TlsVersion,
            ciphers: &'a [String],
            prefer_server_ciphers: bool,
            session_tickets: bool,
            alpn: &'a [String],
            #[serde(
                skip_serializing_if = "Option::is_none",
                serialize_with = "write_as::optional_path"
            )]
            client_ca_path: &'a Option<PathBuf>,
            #[serde(skip_serializing_if = "Option::is_none")]
            client_auth: Option<ClientAuth>,
            #[serde(serialize_with = "write_as::duration")]
            handshake_timeout: Duration,
        }
        let (default_certificate, certificates) = match self.certificates.split_first() {
            Some((first, others)) => (Some(first), others),
            None => (None, &[][..]),
        };
        Written {
            acme_hosts: &self.acme_hosts,
            default_certificate,
            certificates,
            min_version: self.min_version,
            max_version: self.max_version,
            ciphers: &self.ciphers,
            prefer_server_ciphers: self.prefer_server_ciphers,
            session_tickets: self.session_tickets,
            alpn: &self.alpn,
            client_ca_path: &self.client_ca_path,
            client_auth: self.client_ca_path.as_ref().map(|_| self.client_auth),
            handshake_timeout: self.handshake_timeout,
        }
        .serialize(serializer)
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
