//! Logging setup: `tracing` to stderr, journald-friendly (no colours unless a terminal, no
//! timestamps under systemd since the journal adds its own).
//!
//! The filter comes from `RUST_LOG` when set, else from the configured `log.level`.

use tracing_subscriber::{EnvFilter, fmt};

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true);
    let _ = if under_systemd {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}
