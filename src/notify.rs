//! systemd notifications (sd_notify): READY, RELOADING, STOPPING, WATCHDOG, and start-up
//! timeout extensions. Every call is a no-op when not started by systemd (no NOTIFY_SOCKET).

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Start-up (or a reload) is complete.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// A reload begins; [`ready`] ends it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    // systemd ≥ 253 wants the monotonic time with RELOADING=1; older ones ignore it.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Shutdown begins.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The service is alive and healthy.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Asks systemd for more time to finish starting (catch-up can be long).
pub fn extend_start(by: Duration, status: &str) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[
        NotifyState::ExtendTimeoutUsec(usec),
        NotifyState::Status(status),
    ]);
}

/// Half of systemd's watchdog interval, when systemd asked for pings: `WATCHDOG_USEC` is
/// set and `WATCHDOG_PID`, if set, is this process. (libsystemd's `sd_watchdog_enabled`
/// semantics; the sd-notify crate also requires `WATCHDOG_PID` to be present.)
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
