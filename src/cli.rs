//! The command line: `run`, `check`, `tcp` and `udp` (quick mode) and `demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::backend::{AdminState, BackendSpec};
use crate::balance::BalanceKind;
use crate::config::{self, Config, HealthConfig, HealthKind, ServerConfig};
use crate::control::Control;
use crate::runtime::Runtime;
use crate::signals::{Signal, Signals};
use crate::workers::Workers;
use crate::{demo, logging};

const EXAMPLES: &str = "\
Examples:
  sluice demo                                   try it: three demo backends behind a balancer
  sluice -c gobetween.toml                      run every server in a GoBetween-style file
  sluice check -c sluice.toml                   validate a file and summarise it
  sluice tcp --listen 127.0.0.1:8080 --targets 10.0.0.1:3000,10.0.0.2:3000:3
                                                quick mode: no file; :3 is a weight
  sluice udp --listen 127.0.0.1:5353 --targets 10.0.0.1:53,10.0.0.2:53 --max-responses 1
                                                the same for UDP (DNS: one reply ends a session)

Signals: SIGHUP reloads the file; SIGTERM/SIGINT stop gracefully.
Logging: RUST_LOG overrides [logging] level (e.g. RUST_LOG=debug).";

/// Sluice: a Layer 4 (TCP/UDP) load balancer.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Configuration file (TOML; JSON by .json, HAProxy's by .cfg); the same as `sluice run -c FILE`.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Worker threads, each with its own listener (default: one per CPU core).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every server in a configuration file.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and print a summary; exit 1 on errors.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Balance TCP without a file: one listener, a list of targets.
    Tcp(TcpArgs),
    /// Balance UDP without a file: one listening socket, a list of targets.
    #[command(
        after_help = "A UDP health check (kind = \"udp\") needs a configuration file: sluice run -c FILE."
    )]
    Udp(UdpArgs),
    /// Start three demo backends and a balancer in front of them.
    Demo {
        /// Where the demo balancer listens (another free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

/// Mixctl-style flags both quick modes take.
#[derive(Debug, Args)]
pub struct QuickArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Comma-separated backends, `host:port` or `host:port:weight` (`[v6]:port:weight`).
    #[arg(long, value_name = "LIST")]
    pub targets: String,
    /// Balancing strategy.
    #[arg(long, default_value = "roundrobin")]
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
    #[arg(long, value_name = "DURATION")]
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

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let threads = cli.threads;
    match (cli.command, cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => run_file(&config, threads),
        (Some(Command::Check { config }), _) => Ok(check(&config)),
        (Some(Command::Tcp(args)), _) => {
            let config = quick_config(&args.quick, Some(&args.tcp))?;
            logging::init(&config.logging)?;
            serve(config, None, threads)
        }
        (Some(Command::Udp(args)), _) => {
            let config = quick_udp_config(&args)?;
            logging::init(&config.logging)?;
            serve(config, None, threads)
        }
        (Some(Command::Demo { listen }), _) => demo::run(listen),
        (None, None) => {
            bail!("nothing to do: give a configuration file with -c FILE, or try `sluice demo` (see --help)")
        }
    }
}

fn load_or_report(path: &Path) -> Option<config::Loaded> {
    match config::load(path) {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            write_err(&format!("{errors}\n"));
            None
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let Some(loaded) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    // Validation leaves host names alone; a check also says whether they resolve.
    let resolved = match config::resolve_names(&loaded, path) {
        Ok(resolved) => resolved,
        Err(errors) => {
            write_err(&format!("{errors}\n"));
            return ExitCode::FAILURE;
        }
    };
    let warnings: String = loaded.warnings.iter().map(|w| format!("{w}\n")).collect();
    write_err(&warnings);
    let report = format!("{}{}: OK\n", summary(&resolved), path.display());
    write_out(&report);
    ExitCode::SUCCESS
}

/// Writes to standard output; a reader that went away (`sluice check | head -1`) is
/// not an error worth more than stopping to write.
fn write_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// As [`write_out`], to standard error.
fn write_err(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// A few lines per server: what it listens on and where it sends traffic.
pub fn summary(config: &Config) -> String {
    let mut out = String::new();
    for (name, s) in &config.servers {
        let backends = s.discovery.static_backends().map_or(&[][..], Vec::as_slice);
        let listed = match s.discovery.static_backends() {
            Some(list) => format!("{} backend(s)", list.len()),
            None => format!("backends from {} discovery", s.discovery.kind()),
        };
        let health = match &s.healthcheck.kind {
            HealthKind::None => "no health check".to_owned(),
            kind => format!("{} check every {:?}", kind.name(), s.healthcheck.interval),
        };
        out.push_str(&format!(
            "server {name}: {} on {}, balance {}, {listed}, {health}\n",
            s.protocol.as_str(),
            s.bind,
            s.balance,
        ));
        // Every tag of the backend line, in its grammar's order; weight and priority
        // even at their defaults.
        for b in backends {
            out.push_str(&format!(
                "  {} weight={} priority={}",
                b.key(),
                b.weight,
                b.priority
            ));
            if let Some(max) = b.max_connections {
                out.push_str(&format!(" max_connections={max}"));
            }
            if let Some(sni) = &b.sni {
                out.push_str(&format!(" sni={sni}"));
            }
            if let Some(alpn) = &b.alpn {
                out.push_str(&format!(" alpn={alpn}"));
            }
            if b.backup {
                out.push_str(" backup");
            }
            if b.admin != AdminState::Enabled {
                out.push_str(&format!(" state={}", b.admin.as_str()));
            }
            out.push('\n');
        }
    }
    out
}

fn run_file(path: &Path, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let Some(loaded) = load_or_report(path) else {
        return Ok(ExitCode::FAILURE);
    };
    logging::init(&loaded.config.logging)?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    serve(loaded.config, Some(path), threads)
}

/// Runs `config` until SIGTERM/SIGINT; SIGHUP re-reads `path` when there is one.
fn serve(config: Config, path: Option<&Path>, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let workers = threads.unwrap_or_else(Workers::default_count);
    anyhow::ensure!(workers > 0, "--threads must be at least 1");
    match crate::descriptors::raise_limit() {
        Ok(limit) => info!(
            limit,
            udp_sessions = crate::descriptors::session_budget(),
            "file descriptor limit"
        ),
        Err(e) => warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let rt = control_runtime()?;
    rt.block_on(async {
        let mut signals = Signals::new().context("cannot install signal handlers")?;
        let api = config.api.clone();
        let metrics = config.metrics.clone();
        let runtime = Arc::new(Runtime::start_with_workers(config, workers).await?);
        let control = Arc::new(Control::new(
            Arc::clone(&runtime),
            path.map(Path::to_path_buf),
        ));
        if let Some(api) = api {
            start_api(api, Arc::clone(&control)).await?;
        }
        if let Some(metrics) = metrics {
            let bind = metrics
                .bind
                .resolve()
                .await
                .map_err(|e| anyhow!("metrics: {e}"))?;
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("metrics: cannot listen on {}", metrics.bind))?;
            // The address bound: port 0 in the file stands for the one the system picked.
            let addr = listener.local_addr().unwrap_or(bind);
            info!(url = %format!("http://{addr}/metrics"), "metrics endpoint listening");
            let runtime = Arc::clone(&runtime);
            tokio::spawn(async move { crate::metrics::serve(listener, metrics, runtime).await });
        }
        while signals.next().await == Signal::Reload {
            // Errors are logged by `reload`; the previous configuration keeps running.
            if path.is_none() {
                info!("SIGHUP ignored: no configuration file");
            } else {
                let _ = control.reload().await;
            }
        }
        let grace = runtime.config().await.shutdown_timeout;
        info!(grace = ?grace, "shutting down: no new connections; waiting for open ones");
        let hurry = async {
            while signals.next().await != Signal::Terminate {
                info!("SIGHUP ignored: shutting down");
            }
        };
        if runtime.shutdown(grace, hurry).await {
            info!("all connections finished; bye");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Binds the admin API (failing start-up if it cannot) and serves it in the background.
/// `[api]` and `[metrics]` changes take effect at the next start, not on reload.
pub async fn start_api(
    config: config::ApiConfig,
    control: Arc<Control>,
) -> anyhow::Result<SocketAddr> {
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::server_config(files, &[b"http/1.1"]).context("api.tls")?),
        None => None,
    };
    let bind = config
        .bind
        .resolve()
        .await
        .map_err(|e| anyhow!("api: {e}"))?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("api: cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(url = %format!("{scheme}://{addr}/"), dashboard = %format!("{scheme}://{addr}/ui"), "admin API listening");
    let state = ApiState {
        allow_exec: config.allow_exec,
        control,
        started: std::time::SystemTime::now(),
    };
    tokio::spawn(api::serve(listener, config, tls, state));
    Ok(addr)
}

/// The runtime of the control side: signals, reloads, health checks, DNS. Connections
/// run on the worker threads ([`crate::workers`]).
pub fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
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
    let discovery = config::DiscoveryConfig::Static { backends };
    let server = ServerConfig {
        balance: args.balance,
        max_connections: (args.max_connections > 0).then_some(args.max_connections),
        backend_connection_timeout: connect_timeout,
        healthcheck,
        ..ServerConfig::new(args.listen, discovery)
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

/// `host:port`, `host:port:weight`, `[v6]:port` or `[v6]:port:weight`.
fn parse_target(target: &str) -> anyhow::Result<BackendSpec> {
    let bad = || anyhow::anyhow!("--targets: \"{target}\" is not host:port or host:port:weight");
    let (host, rest) = match target.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']').ok_or_else(bad)?;
            (host, rest.strip_prefix(':').ok_or_else(bad)?)
        }
        None => target.split_once(':').ok_or_else(bad)?,
    };
    let (port, weight) = match rest.split_once(':') {
        Some((port, weight)) => (port, Some(weight)),
        None => (rest, None),
    };
    let mut spec = BackendSpec::new(host, port.parse().map_err(|_| bad())?);
    if let Some(weight) = weight {
        spec.weight = weight.parse().map_err(|_| bad())?;
        if spec.weight == 0 {
            bail!("--targets: \"{target}\": weight must be at least 1");
        }
    }
    if host.is_empty() {
        return Err(bad());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
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
}
