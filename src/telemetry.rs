//! Logging setup: `tracing` to stderr, journald-friendly (no colours unless a terminal, no
//! timestamps under systemd since the journal adds its own), or JSON lines (`log.format`).
//!
//! The filter is the configured `log.level` (flag > env > file, validated by `config`); when it
//! is the default ("info") and `RUST_LOG` is set, `RUST_LOG` is used instead. Request handling
//! runs in spans carrying the request id, so every line of a request names it. Secrets (API
//! key, bearer token) are never given to a log call; request text is logged at debug only.

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (with the current span's fields).
    Json,
}

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(level: &str, format: LogFormat) {
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
        .with_target(true);
    let _ = match (format, under_systemd) {
        (LogFormat::Json, _) => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        (LogFormat::Text, true) => builder.with_ansi(false).without_time().try_init(),
        (LogFormat::Text, false) => builder.with_ansi(ansi).try_init(),
    };
}
