//! Quick mode: `sluice tcp` and `sluice udp`, one server from flags (Mixctl's among them),
//! no file.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;

use crate::backend::BackendSpec;
use crate::balance::BalanceKind;
use crate::config::{self, Config, HealthConfig, HealthKind, ServerConfig};

/// Mixctl-style flags both quick modes take.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("bind").required(true).args(["listen", "port"]))]
pub struct QuickArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Port to listen on, on every interface (0.0.0.0:PORT); Mixctl's spelling.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Comma-separated backends, `host:port` or `host:port:weight` (`[v6]:port:weight`).
    #[arg(long, value_name = "LIST")]
    pub targets: String,
    /// Balancing strategy (the default, weight, is round robin that keeps the targets'
    /// weights).
    #[arg(long, default_value = "weight")]
    pub balance: BalanceKind,
    /// Cap on concurrent client connections, or UDP sessions (0: none).
    #[arg(long, default_value_t = 0)]
    pub max_connections: u32,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Log level (`warn` silences the per-connection access log); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl QuickArgs {
    /// `--listen`, or `--port` on every IPv4 interface.
    fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        match (self.listen, self.port) {
            (Some(listen), None) => Ok(listen),
            (None, Some(port)) => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
            _ => bail!("give exactly one of --listen ADDR and --port N"),
        }
    }
}

/// `sluice tcp`: the quick-mode flags plus those about TCP connections to backends.
#[derive(Debug, Args)]
pub struct TcpArgs {
    #[command(flatten)]
    pub quick: QuickArgs,
    #[command(flatten)]
    pub tcp: TcpOnly,
}

/// The flags of `sluice tcp` that `sluice udp` has no use for: kept out of its help
/// rather than listed there and then refused or ignored.
#[derive(Debug, Args)]
pub struct TcpOnly {
    /// Enable a TCP connect health check this often (e.g. 5s).
    #[arg(long, value_name = "DURATION", visible_alias = "health-check-interval")]
    pub health_interval: Option<String>,
    /// Backend connect timeout (e.g. 2s).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub connect_timeout: String,
}

/// `sluice udp`: the quick-mode flags plus UDP session limits.
#[derive(Debug, Args)]
pub struct UdpArgs {
    #[command(flatten)]
    pub quick: QuickArgs,
    /// End a session after this many client datagrams (1 alone: fire-and-forget, no
    /// reply relayed).
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u32>,
    /// End a session after this many backend replies (DNS: 1).
    #[arg(long, value_name = "N")]
    pub max_responses: Option<u32>,
    /// End a session after this long without a datagram from its client.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub session_timeout: String,
}

/// Builds a one-server configuration from quick-mode flags, and those of `sluice tcp`
/// when given.
pub fn quick_config(args: &QuickArgs, tcp: Option<&TcpOnly>) -> anyhow::Result<Config> {
    let backends = args
        .targets
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| parse_target(t.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if backends.is_empty() {
        bail!("--targets: give at least one host:port");
    }
    let connect_timeout = match tcp {
        Some(tcp) => parse_duration("--connect-timeout", &tcp.connect_timeout)?,
        None => None,
    };
    let healthcheck = match tcp.and_then(|tcp| tcp.health_interval.as_deref()) {
        None => HealthConfig::default(),
        Some(interval) => {
            let interval = parse_duration("--health-interval", interval)?
                .context("--health-interval must be more than 0")?;
            HealthConfig {
                kind: HealthKind::Ping,
                interval,
                timeout: interval.min(Duration::from_secs(1)),
                ..HealthConfig::default()
            }
        }
    };
    let discovery = config::DiscoveryConfig::Static {
        backends: backends.into(),
    };
    let server = ServerConfig {
        balance: args.balance,
        max_connections: (args.max_connections > 0).then_some(args.max_connections),
        backend_connection_timeout: connect_timeout,
        healthcheck,
        ..ServerConfig::new(args.listen_addr()?, discovery)
    };
    let mut logging = config::LoggingConfig {
        level: args.log_level.clone(),
        ..config::LoggingConfig::default()
    };
    if args.log_json {
        logging.format = config::LogFormat::Json;
    }
    Ok(Config {
        logging,
        shutdown_timeout: Duration::from_secs(30),
        servers: [("tcp".to_owned(), server)].into_iter().collect(),
        ..Config::default()
    })
}

/// Builds a one-server UDP configuration from quick-mode flags.
pub fn quick_udp_config(args: &UdpArgs) -> anyhow::Result<Config> {
    let mut config = quick_config(&args.quick, None)?;
    let idle = parse_duration("--session-timeout", &args.session_timeout)?;
    let positive = |n: Option<u32>| n.filter(|&n| n > 0);
    let server = config
        .servers
        .remove("tcp")
        .context("quick mode builds one server")?;
    let server = ServerConfig {
        protocol: config::Protocol::Udp,
        client_idle_timeout: idle,
        udp: config::UdpConfig {
            max_requests: positive(args.max_requests),
            max_responses: positive(args.max_responses),
        },
        ..server
    };
    config.servers.insert("udp".to_owned(), server);
    Ok(config)
}

fn parse_duration(flag: &str, text: &str) -> anyhow::Result<Option<Duration>> {
    config::parse_timeout(text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// `host:port`, `host:port:weight`, `[v6]:port` or `[v6]:port:weight`, as Mixctl's
/// rules file writes a target.
fn parse_target(target: &str) -> anyhow::Result<BackendSpec> {
    config::parse_target(target).map_err(|e| anyhow!("--targets: {e}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    #[test]
    fn targets_with_weights_and_ipv6() {
        let t = parse_target("10.0.0.2:3000:3").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.weight), ("10.0.0.2", 3000, 3));
        let t = parse_target("[::1]:80").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.weight), ("::1", 80, 1));
        let t = parse_target("[::1]:80:7").unwrap();
        assert_eq!(t.weight, 7);
        assert!(parse_target("10.0.0.1").is_err());
        assert!(parse_target("10.0.0.1:x").is_err());
        assert!(parse_target("10.0.0.1:80:0").is_err());
        assert!(parse_target(":80").is_err());
    }

    fn tcp_config(args: &[&str]) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(args)?;
        let Some(Command::Tcp(args)) = cli.command else {
            panic!("not tcp")
        };
        quick_config(&args.quick, Some(&args.tcp))
    }

    #[test]
    fn mixctl_flags_port_and_health_check_interval() {
        let config = tcp_config(&[
            "sluice",
            "tcp",
            "--port=8080",
            "--targets=127.0.0.1:3000:3,127.0.0.1:3001:1",
            "--health-check-interval=5s",
        ])
        .unwrap();
        let server = &config.servers["tcp"];
        assert_eq!(server.bind.to_string(), "0.0.0.0:8080");
        assert_eq!(server.balance, BalanceKind::Weight);
        assert_eq!(server.healthcheck.kind, HealthKind::Ping);
        assert_eq!(server.healthcheck.interval, Duration::from_secs(5));
        let weights: Vec<u32> = server
            .discovery
            .static_backends()
            .unwrap()
            .iter()
            .map(|b| b.weight)
            .collect();
        assert_eq!(weights, [3, 1]);
    }

    #[test]
    fn exactly_one_of_port_and_listen() {
        let targets = "--targets=127.0.0.1:3000";
        let listen = tcp_config(&["sluice", "tcp", "--listen", "127.0.0.1:9", targets]).unwrap();
        assert_eq!(listen.servers["tcp"].bind.to_string(), "127.0.0.1:9");
        let both = [
            "sluice",
            "tcp",
            "--listen",
            "127.0.0.1:9",
            "--port",
            "9",
            targets,
        ];
        assert!(tcp_config(&both).is_err());
        assert!(tcp_config(&["sluice", "tcp", targets]).is_err());
        let old = ["sluice", "tcp", "--port=1", targets, "--health-interval=2s"];
        assert_eq!(
            tcp_config(&old).unwrap().servers["tcp"]
                .healthcheck
                .interval,
            Duration::from_secs(2)
        );
    }
}
