//! The command line: `run`, `from-file`, `from-url`, `from-etcd`, `check`, `convert`, `upgrade`,
//! `health` (in `health`), `man`, `completions`, `tcp` and `udp` (quick mode, in
//! `quick`) and `demo`; running the balancer itself is in `serve`.

mod health;
mod quick;
mod serve;

pub use quick::{quick_config, quick_udp_config, QuickArgs, TcpArgs, TcpOnly, UdpArgs};
pub use serve::start_api;
use serve::{handed_over, refuse, run_from, serve, Launch};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand};

use crate::backend::AdminState;
use crate::config::{self, Config, HealthKind, Requested};
use crate::origin::Origin;
use crate::pidfile::PidFile;
use crate::upgrade::control_socket::Answer;
use crate::upgrade::{self, Inheriting};
use crate::{demo, logging};

const EXAMPLES: &str = "\
Examples:
  sluice demo                                   try it: three demo backends behind a balancer
  sluice -c gobetween.toml                      run every server in a GoBetween-style file
  sluice -c haproxy.cfg                         HAProxy (mode tcp), Samaritan or Mixctl files too
  sluice from-url https://cfg.example/lb.toml   a configuration served over HTTP(S)
  sluice from-etcd http://etcd:2379 --key /sluice/
                                                a fleet's configuration in etcd, followed
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

/// `sluice --version`: the version, the commit built from and the build date.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SLUICE_COMMIT"),
    ", built ",
    env!("SLUICE_BUILD_DATE"),
    ")"
);

/// Sluice: a Layer 4 (TCP/UDP) load balancer.
#[derive(Debug, Parser)]
#[command(name = "sluice", version = VERSION, about, after_help = EXAMPLES)]
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
    /// A Unix socket (mode 0600) where a running Sluice takes `sluice upgrade` requests;
    /// give `sluice upgrade` the same path.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "SLUICE_CONTROL_SOCKET"
    )]
    pub control_socket: Option<PathBuf>,
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
    /// Run a fleet's configuration kept in etcd and follow it: PREFIX/config is the
    /// configuration every node runs, PREFIX/nodes/NODE this node's own [bgp], [api] and
    /// [metrics]. A change there is applied at once; an API edit is written back for
    /// every node; while etcd cannot be reached the running configuration stays.
    FromEtcd(EtcdArgs),
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
    /// Replace the running Sluice (the one on --control-socket) with a new process
    /// without closing a port: the new one takes every listening socket and the
    /// run-time state, then the old one drains and exits. Exits non-zero, with the
    /// reason, when the new process cannot start (the old one serves on). SIGUSR2 on
    /// the running process does the same with its own binary.
    Upgrade {
        /// The program to run (default: the running one's own path, where a package
        /// upgrade puts the new version).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// How long the new process may take to be ready.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = config::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Exit 0 when the Sluice running FILE serves (its API's /ready; without an API,
    /// every TCP server accepts connections), else 1 saying why: a container's health
    /// check.
    Health {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// How long the check may take.
        #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = config::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print the manual page (roff) on standard output: `sluice man | man -l -`.
    Man,
    /// Print the shell completions for bash, zsh or fish on standard output.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Start three demo backends and a balancer in front of them.
    Demo {
        /// Where the demo balancer listens (another free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

/// `sluice from-etcd`'s arguments.
#[derive(Debug, clap::Args)]
pub struct EtcdArgs {
    /// etcd's client URLs, comma-separated: http://HOST:PORT, https://HOST:PORT or
    /// HOST:PORT (port 2379); the next is tried when one fails.
    #[arg(value_name = "ENDPOINTS", value_delimiter = ',', required = true,
          value_parser = config::registries::EtcdEndpoint::parse)]
    pub endpoints: Vec<config::registries::EtcdEndpoint>,
    /// The key prefix the fleet's configuration lives under.
    #[arg(long = "key", value_name = "PREFIX")]
    pub prefix: String,
    /// This node's name, for PREFIX/nodes/NODE (default: the host name).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// etcd authentication: the user (the password from SLUICE_ETCD_PASSWORD).
    #[arg(long, value_name = "NAME", env = "SLUICE_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "SLUICE_ETCD_PASSWORD",
        hide_env_values = true,
        hide = true
    )]
    pub etcd_password: Option<String>,
    /// CA certificates that verify etcd's (HTTPS; default: the system's store).
    #[arg(long, value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// A client certificate and its key, when etcd asks for one.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// Where the configuration is kept, as these arguments say.
    fn origin(self, format: Option<Requested>) -> anyhow::Result<Origin> {
        let mut endpoints = self.endpoints.into_iter();
        let first = endpoints.next().context("no etcd endpoint")?;
        let mut params = config::EtcdParams::new(first, self.prefix);
        params.endpoints.extend(endpoints);
        params.username = self.etcd_username;
        params.password = self.etcd_password;
        if self.etcd_cacert.is_some() || self.etcd_cert.is_some() {
            params.tls = Some(crate::tls::ClientTlsFiles {
                cert_path: self.etcd_cert,
                key_path: self.etcd_key,
                cacert_path: self.etcd_cacert,
            });
        }
        let node = self.node.or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
        });
        let store = crate::origin::etcd::EtcdStore::new(params, node, format)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Origin::Etcd(std::sync::Arc::new(store)))
    }
}

/// The shells `sluice completions` writes for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let format = cli.format;
    let file = |path: PathBuf| Origin::File { path, format };
    // `check`, `convert`, `upgrade`, `health`, `man` and `completions` run no balancer
    // and leave the pid file alone.
    let runs = !matches!(
        cli.command,
        Some(
            Command::Check { .. }
                | Command::Convert { .. }
                | Command::Upgrade { .. }
                | Command::Health { .. }
                | Command::Man
                | Command::Completions { .. }
        )
    );
    // Before any thread starts: it clears its variable from the environment.
    let inheriting = match Inheriting::from_env().filter(|_| runs) {
        Some(Ok(inheriting)) => Some(inheriting),
        Some(Err(e)) => bail!("cannot take over from the running Sluice: {e}"),
        None => None,
    };
    // Held until the process ends, which removes the file. After an upgrade, taken
    // over once this process serves (see `serve`).
    let _pidfile = match &cli.pidfile {
        Some(path) if runs && inheriting.is_none() => Some(PidFile::create(path, None)?),
        _ => None,
    };
    let mut launch = Launch {
        threads: cli.threads,
        control_socket: cli.control_socket.clone(),
        pidfile: cli.pidfile.clone().filter(|_| inheriting.is_some()),
        inheriting,
    };
    match (cli.command, cli.config) {
        (Some(Command::Run { config: path }), _)
        | (Some(Command::FromFile { path }), _)
        | (None, Some(path)) => run_from(file(path), launch),
        (Some(Command::FromUrl { url }), _) => run_from(Origin::Url { url, format }, launch),
        (Some(Command::FromEtcd(args)), _) => run_from(args.origin(format)?, launch),
        (Some(Command::Check { config }), _) => Ok(check(&config, format)),
        (Some(Command::Convert { config }), _) => Ok(convert(&config, format)),
        (Some(Command::Upgrade { binary, timeout }), _) => {
            upgrade(cli.control_socket.as_deref(), binary, timeout)
        }
        (Some(Command::Health { config, timeout }), _) => {
            Ok(health::health(&config, format, timeout))
        }
        (Some(Command::Man), _) => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            write_out(&String::from_utf8_lossy(&page));
            Ok(ExitCode::SUCCESS)
        }
        (Some(Command::Completions { shell }), _) => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut script);
            write_out(&String::from_utf8_lossy(&script));
            Ok(ExitCode::SUCCESS)
        }
        (Some(Command::Tcp(args)), _) => {
            let config = quick_config(&args.quick, Some(&args.tcp))
                .map_err(|e| refuse(launch.inheriting.as_ref(), e))?;
            let config = handed_over(&mut launch, None)?.unwrap_or(config);
            logging::init(&config.logging)?;
            serve(config, None, launch)
        }
        (Some(Command::Udp(args)), _) => {
            let config =
                quick_udp_config(&args).map_err(|e| refuse(launch.inheriting.as_ref(), e))?;
            let config = handed_over(&mut launch, None)?.unwrap_or(config);
            logging::init(&config.logging)?;
            serve(config, None, launch)
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
        let backends = s
            .discovery
            .static_backends()
            .map_or(&[][..], |list| list.as_slice());
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
        if let (Some(tls), Some(acme)) = (&s.tls, &config.acme) {
            if !tls.acme_hosts.is_empty() {
                out.push_str(&format!(
                    "  certificates over ACME ({}, {}) for {}\n",
                    acme.challenge.as_str(),
                    acme.directory_url,
                    tls.acme_hosts.join(", ")
                ));
            }
        }
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

/// `sluice upgrade`: asks the Sluice on `control_socket` to upgrade and reports how it
/// went.
fn upgrade(
    control_socket: Option<&Path>,
    binary: Option<PathBuf>,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let Some(path) = control_socket else {
        bail!("give --control-socket PATH: the control socket the running Sluice was started with");
    };
    let binary = match binary {
        Some(binary) => Some(
            std::fs::canonicalize(&binary)
                .with_context(|| format!("--binary {}", binary.display()))?,
        ),
        None => None,
    };
    let request = upgrade::Request {
        binary,
        timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
    };
    match upgrade::control_socket::ask(path, &request)? {
        Answer::Upgraded { pid } => {
            write_out(&format!(
                "upgraded: the new process (pid {pid}) serves; the old one drains and exits\n"
            ));
            Ok(ExitCode::SUCCESS)
        }
        Answer::Error(reason) => {
            write_err(&format!(
                "upgrade failed: {reason}\nthe running Sluice serves on unchanged\n"
            ));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The runtime of the control side: signals, reloads, health checks, DNS. Connections
/// run on the worker threads ([`crate::workers`]).
pub fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
