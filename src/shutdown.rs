//! Process signals and the cancellation tree.
//!
//! SIGTERM, SIGINT, SIGQUIT, SIGUSR1 and SIGUSR2 map to one future ([`signal`]): each shuts
//! the daemon down gracefully (their default action would kill it at once, leaving its socket
//! file behind). SIGHUP is logged and ignored by the daemon ([`ignore_hangup`]): herald has no
//! configuration it can reload in place. The daemon owns a root [`CancellationToken`]; every
//! synthesis job runs under a child token, so cancelling the root (shutdown) cancels every job,
//! and cancelling a job (client gone) touches nothing else. Nothing here decides *what* to
//! stop: callers pass the token down.

use std::{future::Future, pin::Pin};

pub use tokio_util::sync::CancellationToken;

use tokio::signal::unix::{Signal, SignalKind, signal as handler};

/// The signals that stop herald gracefully, with their names.
fn stopping() -> [(SignalKind, &'static str); 5] {
    [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::quit(), "SIGQUIT"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ]
}

/// Installs the handlers of SIGTERM, SIGINT, SIGQUIT, SIGUSR1 and SIGUSR2 *now* (so a signal
/// that arrives before the future is first polled is not lost to the default action), and
/// returns a future that resolves on the first of them. A handler that cannot be installed is
/// logged; the others still count.
///
/// Must be called inside a tokio runtime.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    let mut handlers: Vec<(Signal, &'static str)> = Vec::new();
    let mut failed = Vec::new();
    for (kind, name) in stopping() {
        match handler(kind) {
            Ok(s) => handlers.push((s, name)),
            Err(error) => failed.push((name, error)),
        }
    }
    async move {
        for (name, error) in failed {
            tracing::warn!(signal = name, %error, "cannot install a signal handler");
        }
        if handlers.is_empty() {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
        let waits = handlers.into_iter().map(|(mut s, name)| {
            Box::pin(async move {
                s.recv().await;
                name
            }) as Pin<Box<dyn Future<Output = &'static str> + Send>>
        });
        let (name, _, _) = futures::future::select_all(waits).await;
        tracing::info!(signal = name, "{name} received");
    }
}

/// Log and otherwise ignore SIGHUP for the life of the process (the daemon only: a client
/// command keeps SIGHUP's default action, so it ends with its terminal).
///
/// Must be called inside a tokio runtime.
pub fn ignore_hangup() {
    match handler(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!(
                        "SIGHUP received and ignored: herald reloads nothing in place; restart \
                         it to apply a changed configuration"
                    );
                }
            });
        }
        Err(error) => tracing::warn!(%error, "cannot install the SIGHUP handler"),
    }
}
