//! Logging setup: `tracing` to stderr, journald-friendly (no colours unless a terminal, no
//! timestamps under systemd since the journal adds its own).
//!
//! The filter is the configured `log.level` (flag > env > file, validated by `config`); when it
//! is the default ("info") and `RUST_LOG` is set, `RUST_LOG` is used instead.

use tracing_subscriber::{EnvFilter, fmt};

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(level: &str) {
    let from_env = (level == "info")
        .then(|| EnvFilter::try_from_default_env().ok())
        .flatten();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
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
