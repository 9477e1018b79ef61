//! The environment and the command line as configuration sources: an [`Env`] snapshot, the
//! table of variables herald reads and the config key each one sets, and the flag
//! [`Overrides`].
//!
//! This module turns variables and flags into TOML values at dotted keys; it must not read the
//! process environment outside [`Env::from_process`], and must not check ranges (validation
//! does, naming the key).

use std::collections::BTreeMap;

use super::{
    ConfigError, ENV_DASHSCOPE_API_KEY, ENV_DASHSCOPE_API_KEY_FILE, ENV_DASHSCOPE_BASE_URL,
    ENV_DASHSCOPE_WORKSPACE_ID,
};

/// The value kind of a key settable from the environment or a flag.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated list of strings.
    List,
    /// Colon-separated list of paths (as `PATH`).
    Paths,
}

/// Environment variables herald reads, the config key each one sets, and its kind.
pub(super) const ENV_KEYS: &[(&str, &str, Kind)] = &[
    ("HERALD_LISTEN", "server.listen", Kind::List),
    ("HERALD_SOCKET_MODE", "server.socket_mode", Kind::Str),
    ("HERALD_SOCKET_GROUP", "server.socket_group", Kind::Str),
    ("HERALD_METRICS_LISTEN", "server.metrics_listen", Kind::Str),
    ("HERALD_HTTP_LISTEN", "http.listen", Kind::List),
    ("HERALD_AUTH_TOKEN", "server.auth_token", Kind::Str),
    (
        "HERALD_AUTH_TOKEN_FILE",
        "server.auth_token_file",
        Kind::Str,
    ),
    ("HERALD_TLS_CERT", "server.tls_cert", Kind::Str),
    ("HERALD_TLS_KEY", "server.tls_key", Kind::Str),
    (
        "HERALD_SHUTDOWN_GRACE_MS",
        "server.shutdown_grace_ms",
        Kind::Int,
    ),
    ("HERALD_DEFAULT_MODEL", "synthesis.default_model", Kind::Str),
    ("HERALD_DEFAULT_VOICE", "synthesis.default_voice", Kind::Str),
    (
        "HERALD_MAX_TEXT_CHARS",
        "synthesis.max_text_chars",
        Kind::Int,
    ),
    (
        "HERALD_MAX_CONCURRENT",
        "synthesis.max_concurrent",
        Kind::Int,
    ),
    (
        "HERALD_MAX_CONCURRENT_PER_PEER",
        "synthesis.max_concurrent_per_peer",
        Kind::Int,
    ),
    (
        "HERALD_MAX_DEADLINE_MS",
        "synthesis.max_deadline_ms",
        Kind::Int,
    ),
    ("HERALD_ESPEAK_ENABLED", "espeak.enabled", Kind::Bool),
    ("HERALD_ESPEAK_BINARY", "espeak.binary", Kind::Str),
    ("HERALD_ESPEAK_VOICE", "espeak.default_voice", Kind::Str),
    ("HERALD_ESPEAK_TIMEOUT_MS", "espeak.timeout_ms", Kind::Int),
    ("HERALD_PIPER_ENABLED", "piper.enabled", Kind::Bool),
    ("HERALD_PIPER_VOICES", "piper.voices", Kind::Paths),
    ("HERALD_PIPER_ONNXRUNTIME", "piper.onnxruntime", Kind::Str),
    ("HERALD_PIPER_VOICE", "piper.default_voice", Kind::Str),
    ("HERALD_PLAYBACK_DEVICE", "playback.device", Kind::Str),
    ("HERALD_PLAYBACK_WAV_PATH", "playback.wav_path", Kind::Str),
    ("HERALD_LOG", "log.level", Kind::Str),
    ("HERALD_LOG_FORMAT", "log.format", Kind::Str),
    ("HERALD_CACHE_ENABLED", "cache.enabled", Kind::Bool),
    ("HERALD_CACHE_DIR", "cache.directory", Kind::Str),
    ("HERALD_CACHE_MAX_BYTES", "cache.max_bytes", Kind::Int),
    ("HERALD_FALLBACK", "fallback.chain", Kind::List),
    ("HERALD_VOICES_DIR", "voices.directory", Kind::Str),
    ("HERALD_WYOMING_LISTEN", "wyoming.listen", Kind::List),
    (ENV_DASHSCOPE_API_KEY, "dashscope.api_key", Kind::Str),
    (
        ENV_DASHSCOPE_API_KEY_FILE,
        "dashscope.api_key_file",
        Kind::Str,
    ),
    (ENV_DASHSCOPE_BASE_URL, "dashscope.base_url", Kind::Str),
    ("HERALD_DASHSCOPE_REGION", "dashscope.region", Kind::Str),
    (
        super::ENV_DASHSCOPE_WEBSOCKET_BASE_URL,
        "dashscope.websocket_base_url",
        Kind::Str,
    ),
    (
        "HERALD_DASHSCOPE_TRANSPORT",
        "dashscope.transport",
        Kind::Str,
    ),
    (
        ENV_DASHSCOPE_WORKSPACE_ID,
        "dashscope.workspace_id",
        Kind::Str,
    ),
];

/// A snapshot of environment variables. Build it from the process with [`Env::from_process`],
/// or from pairs in tests.
#[derive(Clone, Debug, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The current process environment (non-UTF-8 variables are skipped).
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    /// An environment holding exactly `pairs`.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The value of `name`, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Command-line overrides (highest precedence). Empty fields override nothing.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`, repeatable; replaces `server.listen` when not empty.
    pub listen: Vec<String>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--default-model`.
    pub default_model: Option<String>,
    /// `--insecure-no-auth`: serve loopback TCP listeners without a token.
    pub insecure_no_auth: bool,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--wyoming-listen`, repeatable; replaces `wyoming.listen` when not empty.
    pub wyoming_listen: Vec<String>,
    /// `--http-listen`, repeatable; replaces `http.listen` when not empty.
    pub http_listen: Vec<String>,
}

/// The TOML value of variable `var` holding `value`, read as `kind`.
pub(super) fn parse_value(var: &str, value: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        Kind::Str => toml::Value::String(value.to_owned()),
        Kind::Int => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| ConfigError::invalid(var, format!("{value:?} is not an integer")))?,
        ),
        Kind::Bool => toml::Value::Boolean(match value.trim() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            other => {
                return Err(ConfigError::invalid(
                    var,
                    format!("{other:?} is not a boolean"),
                ));
            }
        }),
        Kind::Paths => toml::Value::Array(
            value
                .split(':')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        Kind::List => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
}

/// Set `dotted.key` in `table`, creating intermediate tables (a non-table in the way is
/// replaced; deserialization then reports any type error by key).
pub(super) fn set_key(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut parts = dotted.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return;
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
}
