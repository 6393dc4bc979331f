//! The command line: `run`, `from-file`, `from-url`, `check`, `convert`, `tcp` and
//! `udp` (quick mode, in `quick`) and `demo`.

mod quick;

pub use quick::{quick_config, quick_udp_config, QuickArgs, TcpArgs, TcpOnly, UdpArgs};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::backend::AdminState;
use crate::config::{self, Config, HealthKind, Requested};
use crate::control::Control;
use crate::origin::Origin;
use crate::pidfile::PidFile;
use crate::runtime::Runtime;
use crate::signals::{Signal, Signals};
use crate::workers::Workers;
use crate::{demo, logging};

const EXAMPLES: &str = "\
Examples:
  sluice demo                                   try it: three demo backends behind a balancer
  sluice -c gobetween.toml                      run every server in a GoBetween-style file
  sluice -c haproxy.cfg                         HAProxy (mode tcp), Samaritan or Mixctl files too
  sluice from-url https://cfg.example/lb.toml   a configuration served over HTTP(S)
  sluice check -c sluice.toml                   validate a file and summarise it
  sluice convert -c haproxy.cfg > sluice.toml   any format Sluice reads, as its own TOML
  sluice tcp --listen 127.0.0.1:8080 --targets 10.0.0.1:3000,10.0.0.2:3000:3
                                                quick mode: no file; :3 is a weight
  sluice tcp --port=8080 --targets=10.0.0.1:3000:3,10.0.0.2:3000:1 --health-check-interval=5s
                                                Mixctl's flags: --port listens on 0.0.0.0
  sluice udp --listen 127.0.0.1:5353 --targets 10.0.0.1:53,10.0.0.2:53 --max-responses 1
                                                the same for UDP (DNS: one reply ends a session)

Signals: SIGHUP reloads the file; SIGTERM/SIGINT stop gracefully.
Logging: RUST_LOG overrides [logging] level (e.g. RUST_LOG=debug).";

/// Sluice: a Layer 4 (TCP/UDP) load balancer.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Configuration file; the same as `sluice run -c FILE`.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The configuration's format: toml, json (GoBetween's schema), yaml (Samaritan's or
    /// Mixctl's, told by its keys), samaritan, mixctl, haproxy. Default: by the file's
    /// extension (.toml, .json, .yaml/.yml, .cfg), else by its shape.
    #[arg(short, long, global = true, value_name = "FORMAT")]
    pub format: Option<Requested>,
    /// Write the process id to FILE while running; refuse to start if the process it
    /// names is alive.
    #[arg(short = 'p', long, global = true, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
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
    /// Run every server in a configuration file (GoBetween's `from-file`).
    FromFile {
        #[arg(value_name = "FILE")]
        path: PathBuf,
    },
    /// Run the configuration an http(s) URL answers; a reload fetches it again
    /// (GoBetween's `from-url`).
    FromUrl {
        #[arg(value_name = "URL", value_parser = config::Url::parse)]
        url: config::Url,
    },
    /// Validate a configuration file and print a summary; exit 1 on errors.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a configuration file, in any format Sluice reads, as Sluice's own TOML
    /// (GoBetween's schema, every default spelled out).
    Convert {
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

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let threads = cli.threads;
    let format = cli.format;
    let file = |path: PathBuf| Origin::File { path, format };
    // Held until the process ends, which removes the file. `check` and `convert` run
    // no balancer and leave it alone.
    let runs = !matches!(
        cli.command,
        Some(Command::Check { .. } | Command::Convert { .. })
    );
    let _pidfile = match &cli.pidfile {
        Some(path) if runs => Some(PidFile::create(path)?),
        _ => None,
    };
    match (cli.command, cli.config) {
        (Some(Command::Run { config: path }), _)
        | (Some(Command::FromFile { path }), _)
        | (None, Some(path)) => run_from(file(path), threads),
        (Some(Command::FromUrl { url }), _) => run_from(Origin::Url { url, format }, threads),
        (Some(Command::Check { config }), _) => Ok(check(&config, format)),
        (Some(Command::Convert { config }), _) => Ok(convert(&config, format)),
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

fn load_or_report(path: &Path, format: Option<Requested>) -> Option<config::Loaded> {
    match config::load_as(path, format) {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            write_err(&format!("{errors}\n"));
            None
        }
    }
}

fn check(path: &Path, format: Option<Requested>) -> ExitCode {
    let Some(loaded) = load_or_report(path, format) else {
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

/// `sluice convert`: the file as Sluice's own TOML on standard output; its warnings, and
/// what the conversion dropped, on standard error.
fn convert(path: &Path, format: Option<Requested>) -> ExitCode {
    let Some(loaded) = load_or_report(path, format) else {
        return ExitCode::FAILURE;
    };
    let warnings: String = loaded.warnings.iter().map(|w| format!("{w}\n")).collect();
    write_err(&warnings);
    match config::dump::to_toml(&loaded.config, config::dump::Secrets::Keep) {
        Ok(toml) => {
            let header = format!(
                "# Converted by `sluice convert` from {} ({}).\n",
                path.display(),
                loaded.format.title()
            );
            write_out(&format!("{header}{toml}"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            write_err(&format!(
                "{}: cannot write it as TOML: {e}\n",
                path.display()
            ));
            ExitCode::FAILURE
        }
    }
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
        let source = match s.source.as_slice() {
            [] => String::new(),
            sources => {
                let list: Vec<String> = sources.iter().map(ToString::to_string).collect();
                format!(", from {}", list.join(", "))
            }
        };
        out.push_str(&format!(
            "server {name}: {} on {}{source}, balance {}, {listed}, {health}\n",
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
            if let Some(source) = b.source {
                out.push_str(&format!(" source={source}"));
            }
            out.push('\n');
        }
    }
    out
}

/// Runs the configuration `origin` holds, read again at every reload.
fn run_from(origin: Origin, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let loaded = match control_runtime()?.block_on(origin.load()) {
        Ok(loaded) => loaded,
        Err(errors) => {
            write_err(&format!("{errors}\n"));
            return Ok(ExitCode::FAILURE);
        }
    };
    logging::init(&loaded.config.logging)?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    serve(loaded.config, Some(origin), threads)
}

/// Runs `config` until SIGTERM/SIGINT; SIGHUP reads `origin` again when there is one.
fn serve(
    config: Config,
    origin: Option<Origin>,
    threads: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let workers = threads.unwrap_or_else(Workers::default_count);
    anyhow::ensure!(workers > 0, "--threads must be at least 1");
    // Before the runtimes start their threads: it clears LISTEN_FDS from the environment.
    let passed = crate::listener::passed::adopt_from_service_manager();
    if passed > 0 {
        info!(passed, "listening sockets passed by the service manager");
    }
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
        let reloadable = origin.is_some();
        let control = Arc::new(Control::new(Arc::clone(&runtime), origin));
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
        crate::service::ready();
        crate::service::spawn_watchdog();
        while signals.next().await == Signal::Reload {
            // Errors are logged by `reload`; the previous configuration keeps running.
            if !reloadable {
                info!("SIGHUP ignored: no configuration file");
            } else {
                let _ = control.reload().await;
            }
        }
        crate::service::stopping();
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
