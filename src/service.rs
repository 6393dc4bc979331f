//! The service manager's protocol (systemd's `sd_notify`, `Type=notify`): ready once
//! every listener is bound, the start and end of each reload, the start of shutdown, and
//! watchdog pings when `WatchdogSec` is set. Without `NOTIFY_SOCKET` in the environment
//! every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

/// Every listener is bound and serving (also: a reload has ended, well or not).
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// A reload starts; [`ready`] says it ended. The monotonic time tells systemd which
/// reload this is (`Type=notify-reload`).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A binary upgrade handed over to process `pid`, the service's main process from now
/// on; this one drains and exits.
pub fn main_pid(pid: u32) {
    send(&[
        NotifyState::MainPid(pid),
        NotifyState::Status("handed over; draining"),
    ]);
}

/// Shutdown starts: no new connections; open ones drain.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// With `WatchdogSec` set, pings the watchdog at half its period from the current
/// (control) runtime: were that runtime stuck, the pings would stop and systemd would
/// restart the process.
pub fn spawn_watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(10));
    debug!(?every, "pinging the service manager's watchdog");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "cannot notify the service manager");
    }
}
