//! Process signals and the cancellation tree.
//!
//! SIGTERM and SIGINT map to one future ([`signal`]). The daemon owns a root
//! [`CancellationToken`]; every synthesis job runs under a child token, so cancelling the root
//! (shutdown) cancels every job, and cancelling a job (client gone) touches nothing else.
//! Nothing here decides *what* to stop: callers pass the token down.

pub use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C). If a handler cannot be installed, logs and
/// waits on the other one only.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
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
