//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`), through `sd-notify`.
//!
//! Every function is a no-op when the process was not started by systemd
//! (`$NOTIFY_SOCKET` unset), so the daemons call them unconditionally.

use std::time::Duration;

/// `READY=1` with a status line: the service is up (systemd stops waiting).
pub fn ready(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// `STATUS=…`: shown by `systemctl status`.
pub fn status(status: &str) {
    send(&[sd_notify::NotifyState::Status(status)]);
}

/// `WATCHDOG=1`: the service's own health loop is alive.
pub fn watchdog() {
    send(&[sd_notify::NotifyState::Watchdog]);
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    send(&[sd_notify::NotifyState::Stopping]);
}

/// How often to feed the watchdog: half of `WatchdogSec`, or `None` when the unit
/// has no watchdog (or it is meant for another process).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn send(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
