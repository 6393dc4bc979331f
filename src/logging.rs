//! Logging through `tracing`: text or JSON, to stdout, stderr or a file. The level comes
//! from the configuration unless `RUST_LOG` is set.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogOutput, LoggingConfig};

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(cfg: &LoggingConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(directives).context("RUST_LOG is not a valid tracing filter")?
        }
        // The DNS resolver is chatty at info; its problems surface in our own warnings.
        _ => EnvFilter::try_new(format!(
            "{},hickory_proto=warn,hickory_resolver=warn",
            cfg.level
        ))
        .with_context(|| format!("logging.level \"{}\" is not a valid level", cfg.level))?,
    };
    // Colours only for a terminal: escape codes in a file or a journal are noise.
    let ansi = match &cfg.output {
        LogOutput::Stdout => std::io::stdout().is_terminal(),
        LogOutput::Stderr => std::io::stderr().is_terminal(),
        LogOutput::File(_) => false,
    };
    let writer = match &cfg.output {
        LogOutput::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogOutput::Stderr => BoxMakeWriter::new(std::io::stderr),
        LogOutput::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            BoxMakeWriter::new(Mutex::new(file))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}
