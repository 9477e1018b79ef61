//! Process signals and the cancellation tree.
//!
//! SIGTERM and SIGINT map to one future ([`signal`]). The daemon owns a root
//! [`CancellationToken`]; every synthesis job runs under a child token, so cancelling the root
//! (shutdown) cancels every job, and cancelling a job (client gone) touches nothing else.
//! Nothing here decides *what* to stop: callers pass the token down.

pub use tokio_util::sync::CancellationToken;

/// Installs SIGTERM and SIGINT handlers *now* (so a signal that arrives before the future is
/// first polled is not lost to the default action), and returns a future that resolves on the
/// first of them. If a handler cannot be installed, logs and waits on the other one only.
///
/// Must be called inside a tokio runtime.
pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    wait(term, int)
}

async fn wait(
    term: std::io::Result<tokio::signal::unix::Signal>,
    int: std::io::Result<tokio::signal::unix::Signal>,
) {
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        (Ok(mut only), Err(error)) | (Err(error), Ok(mut only)) => {
            tracing::warn!(%error, "cannot install one of the signal handlers");
            only.recv().await;
        }
        (Err(error), Err(_)) => {
            tracing::error!(%error, "cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
