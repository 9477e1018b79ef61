//! systemd integration: readiness, status, stopping and the watchdog (`sd_notify(3)`), for
//! `Type=notify` units. Every call is a no-op when `NOTIFY_SOCKET` is not set (not under
//! systemd). Socket activation is [`crate::service::Activation`]. Nothing here may block or
//! fail the daemon: a notification that cannot be sent is logged and dropped.

use sd_notify::NotifyState;

/// `READY=1` and a `STATUS=` line: every listener is bound.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// When the unit has `WatchdogSec=` (`WATCHDOG_USEC` for this process), a task that sends
/// `WATCHDOG=1` at half the interval. It runs on the async runtime, so a stalled runtime stops
/// the pings and systemd restarts the service. Must be called inside a tokio runtime.
pub fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(std::time::Duration::from_millis(10));
    tracing::info!(
        ?interval,
        "systemd watchdog enabled; pinging at half the interval"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    }))
}
