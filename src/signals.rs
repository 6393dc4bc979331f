//! Process signals: SIGHUP asks for a reload; SIGUSR2 for a binary upgrade; SIGTERM and
//! SIGINT for a graceful stop.

use std::io;

use tokio::signal::unix::{signal, Signal as UnixSignal, SignalKind};

/// What the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Reload,
    Upgrade,
    Terminate,
}

/// The signals Sluice listens to, registered once at start-up.
pub struct Signals {
    hup: UnixSignal,
    usr2: UnixSignal,
    term: UnixSignal,
    int: UnixSignal,
}

impl Signals {
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Reload,
            _ = self.usr2.recv() => Signal::Upgrade,
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Terminate,
        }
    }
}
