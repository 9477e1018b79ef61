//! Configuration: a TOML file, the environment and command-line flags, merged and validated.
//!
//! Precedence is flags > environment > file > defaults. Loading has two phases (ripgrep's
//! Low/HiArgs, spotifyd's `get_internal_config`): the sources are merged into one TOML table and
//! deserialized into [`RawConfig`] with unknown keys rejected by name; then [`RawConfig::validate`]
//! turns it into the typed [`Config`] the daemon runs with. Nothing here reads the process
//! environment directly: callers pass an [`Env`] snapshot, so tests never mutate global state.
//! Secrets (the DashScope API key) live in [`SecretString`] and are masked in every output.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::provider::FallbackStep;

/// The largest `synthesis.max_concurrent` accepted (the runtime keeps this many blocking
/// threads available, one per stream in flight).
pub const MAX_CONCURRENT_LIMIT: usize = 4096;
/// The config file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/herald/herald.toml";
/// Environment variable naming the config file (same as `--config`).
pub const ENV_CONFIG: &str = "HERALD_CONFIG";
/// DashScope SDK convention: the API key.
pub const ENV_DASHSCOPE_API_KEY: &str = "DASHSCOPE_API_KEY";
/// DashScope SDK convention: a file holding the API key.
pub const ENV_DASHSCOPE_API_KEY_FILE: &str = "DASHSCOPE_API_KEY_FILE_PATH";
/// DashScope SDK convention: the HTTP base URL.
pub const ENV_DASHSCOPE_BASE_URL: &str = "DASHSCOPE_HTTP_BASE_URL";
/// DashScope SDK convention: the workspace id (fills `{WorkspaceId}` in the base URL).
pub const ENV_DASHSCOPE_WORKSPACE_ID: &str = "DASHSCOPE_WORKSPACE_ID";
/// systemd: directory of credentials passed with `LoadCredential=`.
pub const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
/// systemd credential name of the bearer token of TCP clients.
pub const CREDENTIAL_AUTH_TOKEN: &str = "herald_auth_token";
/// systemd credential name of the DashScope API key.
pub const CREDENTIAL_DASHSCOPE_API_KEY: &str = "dashscope_api_key";
/// systemd: the service's runtime directory (`RuntimeDirectory=`).
pub const ENV_RUNTIME_DIRECTORY: &str = "RUNTIME_DIRECTORY";
/// systemd: the service's cache directory (`CacheDirectory=`).
pub const ENV_CACHE_DIRECTORY: &str = "CACHE_DIRECTORY";
/// Per-user cache directory (XDG base directories).
pub const ENV_XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// Per-user runtime directory (desktop sessions).
pub const ENV_XDG_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";
/// Default DashScope base URL (Beijing region).
pub const DEFAULT_DASHSCOPE_BASE_URL: &str = "https://dashscope.aliyuncs.com/api/v1";
/// File name of the unix socket inside the runtime directory.
pub const SOCKET_FILE_NAME: &str = "herald.sock";
/// The system-wide runtime directory used when systemd gives none.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/herald";

/// Shown instead of a secret's value.
const MASK: &str = "<redacted>";

/// The value kind of a key settable from the environment or a flag.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated list of strings.
    List,
}

/// Environment variables herald reads, the config key each one sets, and its kind.
const ENV_KEYS: &[(&str, &str, Kind)] = &[
    ("HERALD_LISTEN", "server.listen", Kind::List),
    ("HERALD_SOCKET_MODE", "server.socket_mode", Kind::Str),
    ("HERALD_SOCKET_GROUP", "server.socket_group", Kind::Str),
    ("HERALD_METRICS_LISTEN", "server.metrics_listen", Kind::Str),
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
    ("HERALD_PLAYBACK_DEVICE", "playback.device", Kind::Str),
    ("HERALD_PLAYBACK_WAV_PATH", "playback.wav_path", Kind::Str),
    ("HERALD_LOG", "log.level", Kind::Str),
    ("HERALD_LOG_FORMAT", "log.format", Kind::Str),
    ("HERALD_CACHE_ENABLED", "cache.enabled", Kind::Bool),
    ("HERALD_CACHE_DIR", "cache.directory", Kind::Str),
    ("HERALD_CACHE_MAX_BYTES", "cache.max_bytes", Kind::Int),
    ("HERALD_FALLBACK", "fallback.chain", Kind::List),
    ("HERALD_VOICES_DIR", "voices.directory", Kind::Str),
    (ENV_DASHSCOPE_API_KEY, "dashscope.api_key", Kind::Str),
    (
        ENV_DASHSCOPE_API_KEY_FILE,
        "dashscope.api_key_file",
        Kind::Str,
    ),
    (ENV_DASHSCOPE_BASE_URL, "dashscope.base_url", Kind::Str),
    ("HERALD_DASHSCOPE_REGION", "dashscope.region", Kind::Str),
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
}

/// Errors in configuration. Each names the key (or file, or variable) at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key is unknown, or its value has the wrong type.
    #[error("{origin}: {key}: {message}")]
    Key {
        /// Where the merged value came from ("config" for the merged file/env/flags).
        origin: String,
        /// The dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value has the right type but is out of range or unusable.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key path (or environment variable).
        key: String,
        /// What is wrong, with the limit.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

// === raw (serde) configuration ===

/// The configuration as written: every section with its defaults. Unknown keys are rejected.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Listeners and process behaviour.
    pub server: ServerSection,
    /// Defaults and limits of synthesis requests.
    pub synthesis: SynthesisSection,
    /// The local espeak-ng engine.
    pub espeak: EspeakSection,
    /// Alibaba Cloud Model Studio (DashScope).
    pub dashscope: DashscopeSection,
    /// Local playback (`Speak`).
    pub playback: PlaybackSection,
    /// The audio cache.
    pub cache: CacheSection,
    /// What serves a request when its engine is unavailable.
    pub fallback: FallbackSection,
    /// Custom (cloned and designed) voices.
    pub voices: VoicesSection,
    /// Logging.
    pub log: LogSection,
}

/// `[voices]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoicesSection {
    /// Directory of the registry of custom voices herald created. Empty = `$STATE_DIRECTORY`
    /// (systemd `StateDirectory=`), else `$XDG_STATE_HOME/herald`, else
    /// `$HOME/.local/state/herald`.
    pub directory: String,
    /// First wait between two status polls of a DEPLOYING voice, ms (10..=60000). Default 1000.
    pub poll_initial_ms: u64,
    /// Longest wait between two status polls, ms (poll_initial_ms..=600000). Default 10000.
    pub poll_max_ms: u64,
}

impl Default for VoicesSection {
    fn default() -> Self {
        Self {
            directory: String::new(),
            poll_initial_ms: 1000,
            poll_max_ms: 10_000,
        }
    }
}

/// `[playback]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybackSection {
    /// Device used when a request names none: "default" (the system's default output), a
    /// name from `herald devices` ("alsa:hw:0,0", ...), "wav" or "null".
    pub device: String,
    /// File the `wav` device writes (16-bit PCM). Empty = no `wav` device.
    pub wav_path: String,
    /// Rate of the `wav` and `null` devices, Hz (8000..=192000).
    pub wav_sample_rate: u32,
    /// Channels of the `wav` and `null` devices (1..=2).
    pub wav_channels: u16,
    /// Chime WAV file. Empty = herald's built-in two-tone.
    pub chime: String,
    /// Play the chime when a request does not say (CHIME_DEFAULT).
    pub chime_by_default: bool,
    /// Silence before every announcement, ms (0..=5000), for amplifiers that wake slowly.
    pub leading_silence_ms: u64,
    /// Silence between announcements that follow each other, ms (0..=5000).
    pub pause_ms: u64,
}

impl Default for PlaybackSection {
    fn default() -> Self {
        Self {
            device: "default".to_owned(),
            wav_path: String::new(),
            wav_sample_rate: 48_000,
            wav_channels: 1,
            chime: String::new(),
            chime_by_default: false,
            leading_silence_ms: 0,
            pause_ms: 250,
        }
    }
}

/// `[cache]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Whether synthesized phrases are cached on disk. Default true.
    pub enabled: bool,
    /// Directory of the cache. Empty = `$CACHE_DIRECTORY` (systemd `CacheDirectory=`), else
    /// `$XDG_CACHE_HOME/herald`, else `$HOME/.cache/herald`.
    pub directory: String,
    /// Size cap in bytes; least recently used entries are evicted beyond it (pinned ones
    /// never). Default 1 GiB, range 64 KiB..=1 TiB.
    pub max_bytes: u64,
    /// Entries older than this many seconds are misses and removed (pinned ones never).
    /// 0 = no age cap (default).
    pub max_age_s: u64,
    /// Longest text that is cached, in characters; longer texts are synthesized every time.
    /// Default 2000, range 1..=100000.
    pub max_text_chars: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            enabled: true,
            directory: String::new(),
            max_bytes: 1 << 30,
            max_age_s: 0,
            max_text_chars: 2_000,
        }
    }
}

/// `[fallback]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackSection {
    /// Tried in order when the requested engine fails with UNAVAILABLE, RESOURCE_EXHAUSTED or
    /// DEADLINE_EXCEEDED before any audio was sent: "cache" (the same text in any voice), a
    /// model ("espeak-ng"), or "MODEL/VOICE". Empty = no fallback. Default
    /// `["cache", "espeak-ng"]`.
    pub chain: Vec<String>,
}

impl Default for FallbackSection {
    fn default() -> Self {
        Self {
            chain: vec!["cache".to_owned(), "espeak-ng".to_owned()],
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Where to listen: `unix:PATH` or `IP:PORT`, any number. Empty = the default unix socket
    /// (`$RUNTIME_DIRECTORY/herald.sock`, else `/run/herald/herald.sock`, else
    /// `$XDG_RUNTIME_DIR/herald/herald.sock`).
    pub listen: Vec<String>,
    /// Permission bits of unix sockets, octal. Default "0660".
    pub socket_mode: String,
    /// How long shutdown waits for in-flight streams to end, in ms. Default 5000.
    pub shutdown_grace_ms: u64,
    /// Group of unix sockets (a name or a number). Empty = the process's group.
    pub socket_group: String,
    /// Bearer token TCP clients must send (`authorization: Bearer <token>`). Secret. Prefer
    /// `auth_token_file` or the systemd credential `herald_auth_token`.
    pub auth_token: Option<String>,
    /// File holding the bearer token.
    pub auth_token_file: Option<String>,
    /// Serve TCP listeners without a token; only allowed when every TCP listener is loopback.
    pub insecure_no_auth: bool,
    /// PEM certificate chain for TLS on TCP listeners. Empty = plaintext.
    pub tls_cert: String,
    /// PEM private key for `tls_cert`.
    pub tls_key: String,
    /// Largest gRPC request message, bytes. Default 4194304, range 65536..=67108864.
    pub max_message_bytes: u64,
    /// `IP:PORT` of the Prometheus metrics listener (`/metrics`). Empty = none.
    pub metrics_listen: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            socket_mode: "0660".to_owned(),
            shutdown_grace_ms: 5_000,
            socket_group: String::new(),
            auth_token: None,
            auth_token_file: None,
            insecure_no_auth: false,
            tls_cert: String::new(),
            tls_key: String::new(),
            max_message_bytes: 4 << 20,
            metrics_listen: String::new(),
        }
    }
}

/// `[synthesis]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesisSection {
    /// Model used when a request names none. Empty = "espeak-ng" unless a cloud engine is
    /// configured.
    pub default_model: String,
    /// Voice used when a request names none and the model is the default model. Empty = the
    /// engine's default voice.
    pub default_voice: String,
    /// Longest accepted text, in Unicode scalar values. Default 20000, range 1..=1000000.
    pub max_text_chars: u64,
    /// Most `Synthesize` streams running at once; more answer RESOURCE_EXHAUSTED. Default 64,
    /// range 1..=4096.
    pub max_concurrent: u64,
    /// Most `Synthesize` streams of one peer (a TCP client address, or a unix socket user) at
    /// once. Default 32 (half of max_concurrent: no one peer takes every slot), range 1..=4096.
    pub max_concurrent_per_peer: u64,
    /// Longest deadline a request may have, ms: longer `grpc-timeout`s, and requests with
    /// none, get this one. Default 300000 (5 min), range 1000..=86400000.
    pub max_deadline_ms: u64,
}

impl Default for SynthesisSection {
    fn default() -> Self {
        Self {
            default_model: String::new(),
            default_voice: String::new(),
            max_text_chars: 20_000,
            max_concurrent: 64,
            max_concurrent_per_peer: 32,
            max_deadline_ms: 300_000,
        }
    }
}

/// `[espeak]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EspeakSection {
    /// Whether the espeak-ng engine is offered. Default true.
    pub enabled: bool,
    /// The espeak-ng binary (a path, or a name looked up on PATH). Default "espeak-ng".
    pub binary: String,
    /// Default espeak-ng voice. Default "en".
    pub default_voice: String,
    /// Upper bound on one espeak-ng run, in ms. Default 60000, range 100..=600000.
    pub timeout_ms: u64,
}

impl Default for EspeakSection {
    fn default() -> Self {
        Self {
            enabled: true,
            binary: "espeak-ng".to_owned(),
            default_voice: "en".to_owned(),
            timeout_ms: 60_000,
        }
    }
}

/// `[dashscope]`. Its `Debug` masks the key.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashscopeSection {
    /// The API key. Prefer `api_key_file`, the environment or a systemd credential.
    pub api_key: Option<String>,
    /// A file whose content (trimmed) is the API key.
    pub api_key_file: Option<String>,
    /// HTTP base URL; `{WorkspaceId}` is replaced by `workspace_id`.
    pub base_url: String,
    /// Workspace id (sent as `X-DashScope-WorkSpace`, and filled into `base_url`).
    pub workspace_id: Option<String>,
    /// Region shorthand for `base_url`: "beijing" or "singapore" (the workspace host when
    /// `workspace_id` is set, else the classic host). Empty = use `base_url`.
    pub region: String,
    /// TCP + TLS connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// From sending a request to its first event, ms.
    pub first_event_timeout_ms: u64,
    /// Longest silence inside a stream, ms.
    pub idle_timeout_ms: u64,
    /// Tries per request piece before audio has been sent (1 = no retries).
    pub max_attempts: u32,
    /// First retry backoff, ms (doubles per retry, jittered, at most 4 s).
    pub retry_base_ms: u64,
    /// Pieces of a long text synthesized at once (the playing one plus look-ahead).
    pub lookahead: u32,
    /// Longest piece sent to CosyVoice / Qwen-Audio-TTS, in billed units (CJK = 2).
    pub cosyvoice_piece_units: u32,
    /// Longest piece sent to Qwen-TTS, in billed units.
    pub qwen_piece_units: u32,
    /// Longest piece sent to MiniMax, in billed units.
    pub minimax_piece_units: u32,
    /// Most upstream HTTP requests at once (all families); more wait in a queue.
    pub max_concurrent_requests: u32,
    /// Longest wait in that queue, ms; past it the request gets RESOURCE_EXHAUSTED.
    pub queue_timeout_ms: u64,
}

impl fmt::Debug for DashscopeSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DashscopeSection")
            .field("api_key", &self.api_key.as_ref().map(|_| MASK))
            .field("api_key_file", &self.api_key_file)
            .field("base_url", &self.base_url)
            .field("workspace_id", &self.workspace_id)
            .field("region", &self.region)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("first_event_timeout_ms", &self.first_event_timeout_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base_ms", &self.retry_base_ms)
            .field("lookahead", &self.lookahead)
            .field("cosyvoice_piece_units", &self.cosyvoice_piece_units)
            .field("qwen_piece_units", &self.qwen_piece_units)
            .field("minimax_piece_units", &self.minimax_piece_units)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("queue_timeout_ms", &self.queue_timeout_ms)
            .finish()
    }
}

impl Default for DashscopeSection {
    fn default() -> Self {
        Self {
            api_key: None,
            api_key_file: None,
            base_url: DEFAULT_DASHSCOPE_BASE_URL.to_owned(),
            workspace_id: None,
            region: String::new(),
            connect_timeout_ms: 5_000,
            first_event_timeout_ms: 15_000,
            idle_timeout_ms: 10_000,
            max_attempts: 3,
            retry_base_ms: 250,
            lookahead: 2,
            cosyvoice_piece_units: 120,
            qwen_piece_units: 600,
            minimax_piece_units: 3000,
            max_concurrent_requests: 32,
            queue_timeout_ms: 10_000,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A tracing `EnvFilter` directive: "info", "debug", "herald=debug,tonic=info". Default
    /// "info". `RUST_LOG` overrides it when set.
    pub level: String,
    /// "text" (default; no timestamps under systemd, whose journal adds them) or "json" (one
    /// object per line, for log shippers).
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: "text".to_owned(),
        }
    }
}

// === loading ===

/// Where to read the configuration from.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--config`: this file must exist. `None`: `$HERALD_CONFIG`, else
    /// [`DEFAULT_CONFIG_PATH`] when it exists, else defaults only.
    pub config_path: Option<PathBuf>,
    /// Command-line overrides.
    pub overrides: Overrides,
}

/// Merge file, environment and flags, and deserialize (unknown keys rejected).
pub fn load_raw(options: &LoadOptions, env: &Env) -> Result<RawConfig, ConfigError> {
    let mut table = match config_file(options, env) {
        Some(path) => read_table(&path)?,
        None => toml::Table::new(),
    };
    // The environment's key (or key file) replaces every key source of the file: env > file.
    if (env.get(ENV_DASHSCOPE_API_KEY).is_some() || env.get(ENV_DASHSCOPE_API_KEY_FILE).is_some())
        && let Some(toml::Value::Table(d)) = table.get_mut("dashscope")
    {
        d.remove("api_key");
        d.remove("api_key_file");
    }
    for (var, key, kind) in ENV_KEYS {
        if let Some(value) = env.get(var) {
            set_key(&mut table, key, parse_value(var, value, *kind)?);
        }
    }
    let o = &options.overrides;
    if !o.listen.is_empty() {
        let list = o.listen.iter().cloned().map(toml::Value::String).collect();
        set_key(&mut table, "server.listen", toml::Value::Array(list));
    }
    if let Some(format) = &o.log_format {
        set_key(
            &mut table,
            "log.format",
            toml::Value::String(format.clone()),
        );
    }
    if let Some(level) = &o.log_level {
        set_key(&mut table, "log.level", toml::Value::String(level.clone()));
    }
    if let Some(addr) = &o.metrics_listen {
        set_key(
            &mut table,
            "server.metrics_listen",
            toml::Value::String(addr.clone()),
        );
    }
    if o.insecure_no_auth {
        set_key(
            &mut table,
            "server.insecure_no_auth",
            toml::Value::Boolean(true),
        );
    }
    if let Some(model) = &o.default_model {
        set_key(
            &mut table,
            "synthesis.default_model",
            toml::Value::String(model.clone()),
        );
    }
    deserialize_table(table, "config")
}

/// Load and validate: the one call the binary makes.
pub fn load(options: &LoadOptions, env: &Env) -> Result<Config, ConfigError> {
    load_raw(options, env)?.validate(env)
}

/// Parse one TOML document (a config file's content) with unknown keys rejected.
pub fn parse_str(text: &str, origin: &Path) -> Result<RawConfig, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_error(origin, text, &e))?;
    deserialize_table(table, &origin.display().to_string())
}

fn config_file(options: &LoadOptions, env: &Env) -> Option<PathBuf> {
    if let Some(path) = &options.config_path {
        return Some(path.clone());
    }
    if let Some(path) = env.get(ENV_CONFIG) {
        return Some(PathBuf::from(path));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    default.exists().then(|| default.to_owned())
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse()
        .map_err(|e: toml::de::Error| syntax_error(path, &text, &e))
}

/// A syntax error with its line and column but never the offending source line, which could
/// hold a secret (`api_key = "sk-...` with a missing quote).
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let position = e.span().map_or_else(String::new, |span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(" at line {line}, column {column}")
    });
    ConfigError::Syntax {
        path: path.to_owned(),
        message: format!("{}{position}", e.message().trim()),
    }
}

fn deserialize_table(table: toml::Table, origin: &str) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        ConfigError::Key {
            origin: origin.to_owned(),
            key,
            message: message.trim().to_owned(),
        }
    })
}

fn parse_value(var: &str, value: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        Kind::Str => toml::Value::String(value.to_owned()),
        Kind::Int => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| invalid(var, format!("{value:?} is not an integer")))?,
        ),
        Kind::Bool => toml::Value::Boolean(match value.trim() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            other => return Err(invalid(var, format!("{other:?} is not a boolean"))),
        }),
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
fn set_key(table: &mut toml::Table, dotted: &str, value: toml::Value) {
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

// === validated configuration ===

/// A place to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A unix domain socket at this path.
    Unix(PathBuf),
    /// A TCP address (`127.0.0.1:0` picks a free port).
    Tcp(SocketAddr),
}

impl ListenAddr {
    /// Parse `unix:PATH` or `IP:PORT` (`[::1]:50051` for IPv6).
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(format!("{text:?}: unix socket path is empty"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>().map(Self::Tcp).map_err(|_| {
            format!("{text:?} is neither unix:PATH nor IP:PORT (e.g. 127.0.0.1:50051)")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// DashScope settings, validated.
#[derive(Clone, Debug)]
pub struct DashscopeConfig {
    /// The API key, when one is configured (from the config, the environment, a key file or a
    /// systemd credential, in that order).
    pub api_key: Option<SecretString>,
    /// Where the key came from, for `check-config` (never the key itself).
    pub api_key_source: Option<String>,
    /// Base URL with `{WorkspaceId}` filled in.
    pub base_url: String,
    /// Workspace id, if any.
    pub workspace_id: Option<String>,
    /// Timeouts, retries, splitting.
    pub tuning: crate::engine::dashscope::Tuning,
}

/// espeak-ng settings, validated.
#[derive(Clone, Debug)]
pub struct EspeakSettings {
    /// The binary.
    pub binary: PathBuf,
    /// Default voice.
    pub default_voice: String,
    /// Bound on one run.
    pub timeout: Duration,
}

/// Who may use herald's TCP listeners (unix sockets are guarded by their mode and group).
#[derive(Clone, Debug)]
pub enum TcpAuth {
    /// Clients must send `authorization: Bearer <token>`.
    Token {
        /// The token.
        token: SecretString,
        /// Where it came from, for `check-config`.
        source: String,
    },
    /// No token: allowed only for loopback listeners (`--insecure-no-auth`).
    InsecureLoopbackOnly,
    /// No token configured and no TCP listener configured: a TCP listener (socket activation)
    /// is refused at start.
    Refuse,
}

/// TLS certificate and key, read at start.
#[derive(Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: SecretString,
    /// The certificate's path (for logs).
    pub cert_path: PathBuf,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listeners, in order; never empty (the default unix socket when none was configured).
    pub listen: Vec<ListenAddr>,
    /// Permission bits of unix sockets.
    pub socket_mode: u32,
    /// Group id of unix sockets (`None` = the process's).
    pub socket_group: Option<u32>,
    /// Who may use TCP listeners.
    pub tcp_auth: TcpAuth,
    /// TLS for TCP listeners.
    pub tls: Option<TlsFiles>,
    /// Grace period for shutdown.
    pub shutdown_grace: Duration,
    /// Configured default model (`None` = choose from the configured engines).
    pub default_model: Option<String>,
    /// Configured default voice for the default model.
    pub default_voice: Option<String>,
    /// Longest accepted text, in Unicode scalar values.
    pub max_text_chars: usize,
    /// Most concurrent syntheses.
    pub max_concurrent: usize,
    /// Most concurrent syntheses of one peer.
    pub max_concurrent_per_peer: usize,
    /// Longest request deadline.
    pub max_deadline: Duration,
    /// Largest gRPC request message, bytes.
    pub max_message_bytes: usize,
    /// The Prometheus metrics listener, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// espeak-ng, when enabled.
    pub espeak: Option<EspeakSettings>,
    /// DashScope.
    pub dashscope: DashscopeConfig,
    /// Local playback.
    pub playback: crate::playback::PlaybackSettings,
    /// The audio cache, when enabled.
    pub cache: Option<crate::cache::CacheSettings>,
    /// Why there is no cache (`cache` is `None`).
    pub cache_off: Option<String>,
    /// The fallback chain (empty = none).
    pub fallback: Vec<FallbackStep>,
    /// Custom voices: the registry's directory and the status polling.
    pub voices: crate::voices::Settings,
    /// Log filter directive.
    pub log_level: String,
    /// Log output format.
    pub log_format: crate::telemetry::LogFormat,
    /// The merged raw configuration (for `check-config`; secrets masked by [`Config::render`]).
    raw: RawConfig,
}

impl RawConfig {
    /// Check ranges and resolve paths, files and secrets into a [`Config`].
    pub fn validate(self, env: &Env) -> Result<Config, ConfigError> {
        let s = &self.server;
        let listen = if s.listen.is_empty() {
            vec![ListenAddr::Unix(default_socket_path(env).ok_or_else(
                || {
                    invalid(
                        "server.listen",
                        "empty, and no runtime directory for the default socket: set \
                     RUNTIME_DIRECTORY or XDG_RUNTIME_DIR, run as root, or list an address",
                    )
                },
            )?)]
        } else {
            s.listen
                .iter()
                .map(|l| ListenAddr::parse(l).map_err(|m| invalid("server.listen", m)))
                .collect::<Result<_, _>>()?
        };
        let mode = s.socket_mode.trim_start_matches("0o");
        let socket_mode = u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "server.socket_mode",
                    format!("{:?} is not an octal mode like \"0660\"", s.socket_mode),
                )
            })?;
        let socket_group = match s.socket_group.trim() {
            "" => None,
            g => Some(
                group_id(g)
                    .ok_or_else(|| invalid("server.socket_group", format!("no group {g:?}")))?,
            ),
        };
        let tcp_auth = validate_auth(s, &listen, env)?;
        let metrics_listen = match s.metrics_listen.trim() {
            "" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "server.metrics_listen",
                    format!("{a:?} is not IP:PORT like \"127.0.0.1:9464\""),
                )
            })?),
        };
        let tls = match (s.tls_cert.trim(), s.tls_key.trim()) {
            ("", "") => None,
            ("", _) | (_, "") => {
                return Err(invalid(
                    "server.tls_cert",
                    "set both server.tls_cert and server.tls_key, or neither",
                ));
            }
            (cert, key) => {
                let cert_pem = std::fs::read(cert)
                    .map_err(|e| invalid("server.tls_cert", format!("cannot read {cert}: {e}")))?;
                let key_pem = std::fs::read_to_string(key)
                    .map_err(|e| invalid("server.tls_key", format!("cannot read {key}: {e}")))?;
                Some(TlsFiles {
                    cert_pem,
                    key_pem: SecretString::from(key_pem),
                    cert_path: PathBuf::from(cert),
                })
            }
        };
        if s.shutdown_grace_ms > 600_000 {
            return Err(invalid(
                "server.shutdown_grace_ms",
                format!("{} is above the limit 600000", s.shutdown_grace_ms),
            ));
        }

        let syn = &self.synthesis;
        if !(1..=1_000_000).contains(&syn.max_text_chars) {
            return Err(invalid(
                "synthesis.max_text_chars",
                format!("{} is outside 1..=1000000", syn.max_text_chars),
            ));
        }

        if !(1..=4096).contains(&syn.max_concurrent_per_peer) {
            return Err(invalid(
                "synthesis.max_concurrent_per_peer",
                format!("{} is outside 1..=4096", syn.max_concurrent_per_peer),
            ));
        }
        if !(1_000..=86_400_000).contains(&syn.max_deadline_ms) {
            return Err(invalid(
                "synthesis.max_deadline_ms",
                format!("{} is outside 1000..=86400000", syn.max_deadline_ms),
            ));
        }
        if !(65_536..=67_108_864).contains(&s.max_message_bytes) {
            return Err(invalid(
                "server.max_message_bytes",
                format!("{} is outside 65536..=67108864", s.max_message_bytes),
            ));
        }
        if !(1..=MAX_CONCURRENT_LIMIT as u64).contains(&syn.max_concurrent) {
            return Err(invalid(
                "synthesis.max_concurrent",
                format!(
                    "{} is outside 1..={MAX_CONCURRENT_LIMIT}",
                    syn.max_concurrent
                ),
            ));
        }

        let e = &self.espeak;
        let espeak = if e.enabled {
            if e.binary.trim().is_empty() {
                return Err(invalid("espeak.binary", "must not be empty"));
            }
            if e.default_voice.trim().is_empty() {
                return Err(invalid("espeak.default_voice", "must not be empty"));
            }
            if !(100..=600_000).contains(&e.timeout_ms) {
                return Err(invalid(
                    "espeak.timeout_ms",
                    format!("{} is outside 100..=600000", e.timeout_ms),
                ));
            }
            Some(EspeakSettings {
                binary: PathBuf::from(&e.binary),
                default_voice: e.default_voice.clone(),
                timeout: Duration::from_millis(e.timeout_ms),
            })
        } else {
            None
        };

        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a tracing filter like \"info\" or \"herald=debug\"",
                    self.log.level
                ),
            ));
        }
        let dashscope = validate_dashscope(&self.dashscope, env)?;
        let playback = validate_playback(&self.playback)?;
        let (cache, cache_off) = match validate_cache(&self.cache, env)? {
            Ok(c) => (Some(c), None),
            Err(why) => (None, Some(why)),
        };
        let fallback = validate_fallback(&self.fallback)?;
        let voices = validate_voices(&self.voices, env)?;
        if dashscope.api_key.is_none() && espeak.is_none() {
            return Err(invalid(
                "espeak.enabled",
                "false, and no DashScope API key is configured: herald would have no engine",
            ));
        }

        Ok(Config {
            listen,
            socket_mode,
            socket_group,
            tcp_auth,
            tls,
            shutdown_grace: Duration::from_millis(s.shutdown_grace_ms),
            default_model: non_empty(&syn.default_model),
            default_voice: non_empty(&syn.default_voice),
            max_text_chars: usize::try_from(syn.max_text_chars).unwrap_or(usize::MAX),
            max_concurrent: usize::try_from(syn.max_concurrent).unwrap_or(4096),
            max_concurrent_per_peer: usize::try_from(syn.max_concurrent_per_peer).unwrap_or(4096),
            max_deadline: Duration::from_millis(syn.max_deadline_ms),
            max_message_bytes: usize::try_from(s.max_message_bytes).unwrap_or(4 << 20),
            metrics_listen,
            espeak,
            dashscope,
            playback,
            cache,
            cache_off,
            fallback,
            voices,
            log_level: self.log.level.clone(),
            log_format: match self.log.format.as_str() {
                "text" => crate::telemetry::LogFormat::Text,
                "json" => crate::telemetry::LogFormat::Json,
                other => {
                    return Err(invalid(
                        "log.format",
                        format!("{other:?} is not \"text\" or \"json\""),
                    ));
                }
            },
            raw: self,
        })
    }
}

/// The numeric id of group `name` (or `name` itself when it is a number), from /etc/group.
fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

fn validate_auth(
    s: &ServerSection,
    listen: &[ListenAddr],
    env: &Env,
) -> Result<TcpAuth, ConfigError> {
    let token = if let Some(t) = s.auth_token.as_deref().and_then(non_empty) {
        let source = if env.get("HERALD_AUTH_TOKEN").is_some() {
            "HERALD_AUTH_TOKEN"
        } else {
            "server.auth_token"
        };
        Some((SecretString::from(t), source.to_owned()))
    } else if let Some(file) = s.auth_token_file.as_deref().and_then(non_empty) {
        let t =
            read_secret_file(Path::new(&file)).map_err(|m| invalid("server.auth_token_file", m))?;
        Some((t, format!("file {file}")))
    } else if let Some(dir) = env.get(ENV_CREDENTIALS_DIRECTORY) {
        let path = Path::new(dir).join(CREDENTIAL_AUTH_TOKEN);
        if path.exists() {
            let t = read_secret_file(&path).map_err(|m| invalid(ENV_CREDENTIALS_DIRECTORY, m))?;
            Some((t, format!("systemd credential {CREDENTIAL_AUTH_TOKEN}")))
        } else {
            None
        }
    } else {
        None
    };
    if let Some((token, source)) = token {
        if token.expose_secret().chars().count() < 16 {
            return Err(invalid(
                "server.auth_token",
                "too short: use at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        return Ok(TcpAuth::Token { token, source });
    }
    let tcp: Vec<&SocketAddr> = listen
        .iter()
        .filter_map(|l| match l {
            ListenAddr::Tcp(a) => Some(a),
            ListenAddr::Unix(_) => None,
        })
        .collect();
    if let Some(open) = tcp.iter().find(|a| !a.ip().is_loopback()) {
        return Err(invalid(
            "server.auth_token",
            format!(
                "TCP listener {open} is not loopback, so it requires a bearer token \
                 (server.auth_token_file, HERALD_AUTH_TOKEN or the systemd credential \
                 {CREDENTIAL_AUTH_TOKEN})"
            ),
        ));
    }
    if s.insecure_no_auth {
        return Ok(TcpAuth::InsecureLoopbackOnly);
    }
    if let Some(first) = tcp.first() {
        return Err(invalid(
            "server.auth_token",
            format!(
                "TCP listener {first} requires a bearer token (server.auth_token_file, \
                 HERALD_AUTH_TOKEN or the systemd credential {CREDENTIAL_AUTH_TOKEN}); on \
                 loopback only, --insecure-no-auth (server.insecure_no_auth) serves it without one"
            ),
        ));
    }
    Ok(TcpAuth::Refuse)
}

/// The cache settings, or `None` with why it is off.
fn validate_cache(
    c: &CacheSection,
    env: &Env,
) -> Result<Result<crate::cache::CacheSettings, String>, ConfigError> {
    if !c.enabled {
        return Ok(Err("cache.enabled is false".to_owned()));
    }
    if !((1 << 16)..=(1 << 40)).contains(&c.max_bytes) {
        return Err(invalid(
            "cache.max_bytes",
            format!("{} is outside 65536..=1099511627776", c.max_bytes),
        ));
    }
    if !(1..=100_000).contains(&c.max_text_chars) {
        return Err(invalid(
            "cache.max_text_chars",
            format!("{} is outside 1..=100000", c.max_text_chars),
        ));
    }
    if c.max_age_s > 100 * 365 * 86_400 {
        return Err(invalid(
            "cache.max_age_s",
            format!("{} is above the limit of 100 years", c.max_age_s),
        ));
    }
    let Some(directory) = non_empty(&c.directory)
        .map(PathBuf::from)
        .or_else(|| default_cache_dir(env))
    else {
        // A kiosk without a home directory still speaks; the log says why nothing is cached.
        return Ok(Err(
            "cache.directory is empty and none of CACHE_DIRECTORY, XDG_CACHE_HOME, HOME is set"
                .to_owned(),
        ));
    };
    Ok(Ok(crate::cache::CacheSettings {
        directory,
        max_bytes: c.max_bytes,
        max_age: (c.max_age_s > 0).then(|| Duration::from_secs(c.max_age_s)),
        max_text_chars: usize::try_from(c.max_text_chars).unwrap_or(usize::MAX),
    }))
}

/// The default cache directory: `$CACHE_DIRECTORY` (systemd), else `$XDG_CACHE_HOME/herald`,
/// else `$HOME/.cache/herald`.
pub fn default_cache_dir(env: &Env) -> Option<PathBuf> {
    if let Some(dirs) = env.get(ENV_CACHE_DIRECTORY) {
        let first = dirs.split(':').next().unwrap_or(dirs);
        return Some(PathBuf::from(first));
    }
    if let Some(xdg) = env.get(ENV_XDG_CACHE_HOME) {
        return Some(Path::new(xdg).join("herald"));
    }
    env.get("HOME")
        .map(|home| Path::new(home).join(".cache").join("herald"))
}

fn validate_voices(v: &VoicesSection, env: &Env) -> Result<crate::voices::Settings, ConfigError> {
    if !(10..=60_000).contains(&v.poll_initial_ms) {
        return Err(invalid(
            "voices.poll_initial_ms",
            format!("{} is outside 10..=60000", v.poll_initial_ms),
        ));
    }
    if !(v.poll_initial_ms..=600_000).contains(&v.poll_max_ms) {
        return Err(invalid(
            "voices.poll_max_ms",
            format!(
                "{} is outside voices.poll_initial_ms ({})..=600000",
                v.poll_max_ms, v.poll_initial_ms
            ),
        ));
    }
    Ok(crate::voices::Settings {
        directory: non_empty(&v.directory)
            .map(PathBuf::from)
            .or_else(|| default_state_dir(env)),
        poll_initial: Duration::from_millis(v.poll_initial_ms),
        poll_max: Duration::from_millis(v.poll_max_ms),
    })
}

/// systemd: the service's state directory (`StateDirectory=`).
pub const ENV_STATE_DIRECTORY: &str = "STATE_DIRECTORY";

/// The default state directory: `$STATE_DIRECTORY` (systemd; the first of a `:` list), else
/// `$XDG_STATE_HOME/herald`, else `$HOME/.local/state/herald`.
pub fn default_state_dir(env: &Env) -> Option<PathBuf> {
    if let Some(dirs) = env.get(ENV_STATE_DIRECTORY) {
        let first = dirs.split(':').next().unwrap_or(dirs);
        return Some(PathBuf::from(first));
    }
    if let Some(xdg) = env.get("XDG_STATE_HOME") {
        return Some(Path::new(xdg).join("herald"));
    }
    env.get("HOME")
        .map(|home| Path::new(home).join(".local").join("state").join("herald"))
}

fn validate_fallback(f: &FallbackSection) -> Result<Vec<FallbackStep>, ConfigError> {
    if f.chain.len() > 8 {
        return Err(invalid(
            "fallback.chain",
            format!("{} steps exceeds the limit of 8", f.chain.len()),
        ));
    }
    let mut steps = Vec::with_capacity(f.chain.len());
    for entry in &f.chain {
        let entry = entry.trim();
        let step = if entry == "cache" {
            FallbackStep::Cache
        } else {
            // Model names may contain '/' (MiniMax/speech-02-hd): the voice is after the last
            // '/' only when what is before it is a known shape; "MiniMax/x" alone is a model.
            match entry.rsplit_once('/') {
                Some((model, voice))
                    if !model.is_empty() && !voice.is_empty() && model != "MiniMax" =>
                {
                    FallbackStep::Model {
                        model: model.to_owned(),
                        voice: Some(voice.to_owned()),
                    }
                }
                _ if !entry.is_empty() => FallbackStep::Model {
                    model: entry.to_owned(),
                    voice: None,
                },
                _ => {
                    return Err(invalid(
                        "fallback.chain",
                        "entries must be \"cache\", a model, or \"MODEL/VOICE\"; found an empty one",
                    ));
                }
            }
        };
        if steps.contains(&step) {
            return Err(invalid(
                "fallback.chain",
                format!("{entry:?} is listed twice"),
            ));
        }
        steps.push(step);
    }
    Ok(steps)
}

fn validate_playback(
    p: &PlaybackSection,
) -> Result<crate::playback::PlaybackSettings, ConfigError> {
    let device = p.device.trim();
    if device.is_empty() {
        return Err(invalid(
            "playback.device",
            "must not be empty (use \"default\")",
        ));
    }
    let wav_path = non_empty(&p.wav_path).map(PathBuf::from);
    if device == "wav" && wav_path.is_none() {
        return Err(invalid(
            "playback.device",
            "is \"wav\" but playback.wav_path is not set",
        ));
    }
    if !(8_000..=192_000).contains(&p.wav_sample_rate) {
        return Err(invalid(
            "playback.wav_sample_rate",
            format!("{} is outside 8000..=192000", p.wav_sample_rate),
        ));
    }
    if !(1..=2).contains(&p.wav_channels) {
        return Err(invalid(
            "playback.wav_channels",
            format!("{} is outside 1..=2", p.wav_channels),
        ));
    }
    let chime_file = non_empty(&p.chime).map(PathBuf::from);
    if let Some(c) = &chime_file
        && !c.is_file()
    {
        return Err(invalid(
            "playback.chime",
            format!("{} is not a readable file", c.display()),
        ));
    }
    for (key, v) in [
        ("playback.leading_silence_ms", p.leading_silence_ms),
        ("playback.pause_ms", p.pause_ms),
    ] {
        if v > 5_000 {
            return Err(invalid(key, format!("{v} is outside 0..=5000")));
        }
    }
    Ok(crate::playback::PlaybackSettings {
        default_device: device.to_owned(),
        wav_path,
        virtual_spec: crate::audio::AudioSpec {
            sample_rate: p.wav_sample_rate,
            channels: p.wav_channels,
        },
        chime_file,
        chime_by_default: p.chime_by_default,
        leading_silence: Duration::from_millis(p.leading_silence_ms),
        pause: Duration::from_millis(p.pause_ms),
    })
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn validate_dashscope(d: &DashscopeSection, env: &Env) -> Result<DashscopeConfig, ConfigError> {
    let (api_key, api_key_source) = if let Some(key) = d.api_key.as_deref().and_then(non_empty) {
        let source = if env.get(ENV_DASHSCOPE_API_KEY).is_some() {
            ENV_DASHSCOPE_API_KEY.to_owned()
        } else {
            "dashscope.api_key".to_owned()
        };
        (Some(SecretString::from(key)), Some(source))
    } else if let Some(file) = d.api_key_file.as_deref().and_then(non_empty) {
        let key =
            read_secret_file(Path::new(&file)).map_err(|m| invalid("dashscope.api_key_file", m))?;
        (Some(key), Some(format!("file {file}")))
    } else if let Some(dir) = env.get(ENV_CREDENTIALS_DIRECTORY) {
        let path = Path::new(dir).join(CREDENTIAL_DASHSCOPE_API_KEY);
        if path.exists() {
            let key = read_secret_file(&path).map_err(|m| invalid(ENV_CREDENTIALS_DIRECTORY, m))?;
            (
                Some(key),
                Some(format!("systemd credential {CREDENTIAL_DASHSCOPE_API_KEY}")),
            )
        } else {
            (None, None)
        }
    } else {
        (None, None)
    };

    let workspace_id = d.workspace_id.as_deref().and_then(non_empty);
    let mut base_url = d.base_url.trim().trim_end_matches('/').to_owned();
    match d.region.trim() {
        "" => {}
        region @ ("beijing" | "singapore") => {
            if base_url != DEFAULT_DASHSCOPE_BASE_URL {
                return Err(invalid(
                    "dashscope.region",
                    "set either dashscope.region or dashscope.base_url, not both",
                ));
            }
            base_url = match (region, workspace_id.is_some()) {
                ("beijing", true) => "https://{WorkspaceId}.cn-beijing.maas.aliyuncs.com/api/v1",
                ("beijing", false) => DEFAULT_DASHSCOPE_BASE_URL,
                (_, true) => "https://{WorkspaceId}.ap-southeast-1.maas.aliyuncs.com/api/v1",
                (_, false) => "https://dashscope-intl.aliyuncs.com/api/v1",
            }
            .to_owned();
        }
        other => {
            return Err(invalid(
                "dashscope.region",
                format!("{other:?} is not \"beijing\" or \"singapore\""),
            ));
        }
    }
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        return Err(invalid(
            "dashscope.base_url",
            format!("{base_url:?} must start with https:// or http://"),
        ));
    }
    if base_url.contains("{WorkspaceId}") {
        let Some(ws) = &workspace_id else {
            return Err(invalid(
                "dashscope.base_url",
                "contains {WorkspaceId} but dashscope.workspace_id (DASHSCOPE_WORKSPACE_ID) is not set",
            ));
        };
        base_url = base_url.replace("{WorkspaceId}", ws);
    }
    let ms = |key: &str, v: u64, range: std::ops::RangeInclusive<u64>| {
        if range.contains(&v) {
            Ok(Duration::from_millis(v))
        } else {
            Err(invalid(
                key,
                format!("{v} is outside {}..={}", range.start(), range.end()),
            ))
        }
    };
    let count = |key: &str, v: u32, range: std::ops::RangeInclusive<u32>, why: &str| {
        if range.contains(&v) {
            Ok(v as usize)
        } else {
            Err(invalid(
                key,
                format!("{v} is outside {}..={}{why}", range.start(), range.end()),
            ))
        }
    };
    let tuning = crate::engine::dashscope::Tuning {
        connect_timeout: ms(
            "dashscope.connect_timeout_ms",
            d.connect_timeout_ms,
            100..=60_000,
        )?,
        first_event_timeout: ms(
            "dashscope.first_event_timeout_ms",
            d.first_event_timeout_ms,
            100..=300_000,
        )?,
        idle_timeout: ms(
            "dashscope.idle_timeout_ms",
            d.idle_timeout_ms,
            100..=300_000,
        )?,
        max_attempts: count("dashscope.max_attempts", d.max_attempts, 1..=10, "")? as u32,
        retry_base: ms("dashscope.retry_base_ms", d.retry_base_ms, 1..=10_000)?,
        lookahead: count("dashscope.lookahead", d.lookahead, 1..=8, "")?,
        cosyvoice_piece_units: count(
            "dashscope.cosyvoice_piece_units",
            d.cosyvoice_piece_units,
            20..=150,
            " (CosyVoice silently truncates audio past about 150 units)",
        )?,
        qwen_piece_units: count(
            "dashscope.qwen_piece_units",
            d.qwen_piece_units,
            20..=5000,
            "",
        )?,
        minimax_piece_units: count(
            "dashscope.minimax_piece_units",
            d.minimax_piece_units,
            20..=9999,
            " (MiniMax takes fewer than 10000 characters)",
        )?,
        max_concurrent_requests: count(
            "dashscope.max_concurrent_requests",
            d.max_concurrent_requests,
            1..=1024,
            "",
        )?,
        queue_timeout: ms(
            "dashscope.queue_timeout_ms",
            d.queue_timeout_ms,
            0..=300_000,
        )?,
        ..crate::engine::dashscope::Tuning::default()
    };
    Ok(DashscopeConfig {
        api_key,
        api_key_source,
        base_url,
        workspace_id,
        tuning,
    })
}

fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(key.to_owned()))
}

/// The default unix socket: `$RUNTIME_DIRECTORY/herald.sock` (systemd), else
/// `/run/herald/herald.sock` when that directory exists or can be created, else
/// `$XDG_RUNTIME_DIR/herald/herald.sock`.
pub fn default_socket_path(env: &Env) -> Option<PathBuf> {
    if let Some(dirs) = env.get(ENV_RUNTIME_DIRECTORY) {
        // systemd passes several directories separated by ':' when several are configured.
        let first = dirs.split(':').next().unwrap_or(dirs);
        return Some(Path::new(first).join(SOCKET_FILE_NAME));
    }
    let system = Path::new(SYSTEM_RUNTIME_DIR);
    if system.is_dir() || std::fs::create_dir_all(system).is_ok() {
        return Some(system.join(SOCKET_FILE_NAME));
    }
    env.get(ENV_XDG_RUNTIME_DIR)
        .map(|dir| Path::new(dir).join("herald").join(SOCKET_FILE_NAME))
}

/// Where a client looks for the daemon's socket: the first default location holding a socket.
pub fn client_socket_candidates(env: &Env) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dirs) = env.get(ENV_RUNTIME_DIRECTORY) {
        let first = dirs.split(':').next().unwrap_or(dirs);
        out.push(Path::new(first).join(SOCKET_FILE_NAME));
    }
    out.push(Path::new(SYSTEM_RUNTIME_DIR).join(SOCKET_FILE_NAME));
    if let Some(dir) = env.get(ENV_XDG_RUNTIME_DIR) {
        out.push(Path::new(dir).join("herald").join(SOCKET_FILE_NAME));
    }
    out
}

impl Config {
    /// The effective configuration as TOML, with every secret masked.
    pub fn render(&self) -> String {
        let mut raw = self.raw.clone();
        if raw.dashscope.api_key.is_some() {
            raw.dashscope.api_key = Some(MASK.to_owned());
        }
        if raw.server.auth_token.is_some() {
            raw.server.auth_token = Some(MASK.to_owned());
        }
        raw.server.listen = self.listen.iter().map(ToString::to_string).collect();
        let mut text =
            toml::to_string_pretty(&raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        text.push_str("\n# resolved\n");
        text.push_str(&format!(
            "# dashscope api key: {}\n",
            match (&self.dashscope.api_key, &self.dashscope.api_key_source) {
                (Some(key), Some(src)) => format!(
                    "set ({} characters, from {src})",
                    key.expose_secret().chars().count()
                ),
                _ => "not set (cloud engines disabled; default model espeak-ng)".to_owned(),
            }
        ));
        text.push_str(&format!(
            "# dashscope base url: {}\n",
            self.dashscope.base_url
        ));
        text.push_str(&format!(
            "# tcp auth: {}\n",
            match &self.tcp_auth {
                TcpAuth::Token { token, source } => format!(
                    "bearer token ({} characters, from {source})",
                    token.expose_secret().chars().count()
                ),
                TcpAuth::InsecureLoopbackOnly => "none (--insecure-no-auth, loopback only)".into(),
                TcpAuth::Refuse => "no token: TCP listeners are refused".into(),
            }
        ));
        text.push_str(&format!(
            "# tls: {}\n",
            self.tls.as_ref().map_or("off".to_owned(), |t| format!(
                "on ({})",
                t.cert_path.display()
            ))
        ));
        text.push_str(&match &self.cache {
            Some(c) => format!("# cache directory: {}\n", c.directory.display()),
            None => format!(
                "# cache: disabled ({})\n",
                self.cache_off.as_deref().unwrap_or("off")
            ),
        });
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    /// Load with loopback TCP allowed without a token (these tests are about other keys; the
    /// auth rules have their own test).
    fn load_with(file: Option<&str>, e: &Env, o: Overrides) -> Result<Config, ConfigError> {
        let o = Overrides {
            insecure_no_auth: true,
            ..o
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = file.map(|text| {
            let p = dir.path().join("herald.toml");
            std::fs::write(&p, text).expect("write config");
            p
        });
        load(
            &LoadOptions {
                config_path,
                overrides: o,
            },
            e,
        )
    }

    #[test]
    fn precedence_is_flags_then_env_then_file_then_defaults() {
        let file = "[server]\nlisten = [\"127.0.0.1:1\"]\n[synthesis]\nmax_text_chars = 10\ndefault_voice = \"de\"\n";
        let e = env(&[
            ("HERALD_LISTEN", "127.0.0.1:2"),
            ("HERALD_MAX_TEXT_CHARS", "20"),
        ]);
        let c = load_with(Some(file), &e, Overrides::default()).expect("config");
        assert_eq!(c.listen, vec![ListenAddr::parse("127.0.0.1:2").unwrap()]);
        assert_eq!(c.max_text_chars, 20);
        assert_eq!(c.default_voice.as_deref(), Some("de"));
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        let o = Overrides {
            listen: vec!["127.0.0.1:3".into(), "unix:/tmp/x.sock".into()],
            ..Overrides::default()
        };
        let c = load_with(Some(file), &e, o).expect("config");
        assert_eq!(
            c.listen,
            vec![
                ListenAddr::Tcp("127.0.0.1:3".parse().unwrap()),
                ListenAddr::Unix("/tmp/x.sock".into())
            ]
        );
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = load_with(
            Some("[server]\nlisten = []\nlisen = 1\n"),
            &env(&[]),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = load_with(Some("[sever]\n"), &env(&[]), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("sever"), "{err}");
    }

    #[test]
    fn wrong_types_and_ranges_name_the_key() {
        let err = load_with(
            Some("[synthesis]\nmax_text_chars = \"ten\"\n"),
            &env(&[]),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("synthesis.max_text_chars"), "{err}");
        let err = load_with(
            Some("[espeak]\ntimeout_ms = 5\n"),
            &env(&[]),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("espeak.timeout_ms") && err.contains("100..=600000"),
            "{err}"
        );
        let err = load_with(
            None,
            &env(&[("HERALD_MAX_TEXT_CHARS", "lots")]),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("HERALD_MAX_TEXT_CHARS"), "{err}");
        let o = Overrides {
            listen: vec!["localhost".into()],
            ..Overrides::default()
        };
        let err = load_with(None, &env(&[]), o).unwrap_err().to_string();
        assert!(err.contains("server.listen"), "{err}");
    }

    #[test]
    fn secrets_come_from_env_file_or_credential_and_are_masked() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "sk-from-file\n").unwrap();
        let o = || Overrides {
            listen: vec!["127.0.0.1:0".into()],
            ..Overrides::default()
        };
        let c = load_with(None, &env(&[(ENV_DASHSCOPE_API_KEY, "sk-secret-123")]), o()).unwrap();
        assert_eq!(
            c.dashscope.api_key.as_ref().unwrap().expose_secret(),
            "sk-secret-123"
        );
        let shown = format!("{} {:?}", c.render(), c);
        assert!(!shown.contains("sk-secret-123"), "{shown}");
        assert!(shown.contains(MASK));

        let e = env(&[(ENV_DASHSCOPE_API_KEY_FILE, key_file.to_str().unwrap())]);
        let c = load_with(None, &e, o()).unwrap();
        assert_eq!(
            c.dashscope.api_key.as_ref().unwrap().expose_secret(),
            "sk-from-file"
        );
        assert!(!c.render().contains("sk-from-file"));

        let cred = dir.path().join(CREDENTIAL_DASHSCOPE_API_KEY);
        std::fs::write(&cred, "sk-cred").unwrap();
        let e = env(&[(ENV_CREDENTIALS_DIRECTORY, dir.path().to_str().unwrap())]);
        let c = load_with(None, &e, o()).unwrap();
        assert_eq!(
            c.dashscope.api_key.as_ref().unwrap().expose_secret(),
            "sk-cred"
        );
    }

    #[test]
    fn syntax_errors_give_the_position_but_never_the_line() {
        let err = load_with(
            Some("[dashscope]\napi_key = \"sk-SECRET-123\n"),
            &env(&[]),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("sk-SECRET"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_environment_key_beats_the_file_key() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "sk-env-file").unwrap();
        let e = env(&[
            (ENV_DASHSCOPE_API_KEY_FILE, key_file.to_str().unwrap()),
            ("HERALD_LISTEN", "127.0.0.1:0"),
        ]);
        let c = load_with(
            Some("[dashscope]\napi_key = \"sk-file\"\n"),
            &e,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.dashscope.api_key.as_ref().unwrap().expose_secret(),
            "sk-env-file"
        );
    }

    #[test]
    fn a_bad_log_filter_names_the_key() {
        let o = Overrides {
            log_level: Some("herald=loud[".into()),
            listen: vec!["127.0.0.1:0".into()],
            ..Overrides::default()
        };
        let err = load_with(None, &env(&[]), o).unwrap_err().to_string();
        assert!(err.starts_with("log.level"), "{err}");
    }

    #[test]
    fn workspace_id_fills_the_base_url() {
        let e = env(&[
            (
                ENV_DASHSCOPE_BASE_URL,
                "https://{WorkspaceId}.example/api/v1/",
            ),
            (ENV_DASHSCOPE_WORKSPACE_ID, "ws-42"),
            ("HERALD_LISTEN", "127.0.0.1:0"),
        ]);
        let c = load_with(None, &e, Overrides::default()).unwrap();
        assert_eq!(c.dashscope.base_url, "https://ws-42.example/api/v1");
        let e = env(&[
            (
                ENV_DASHSCOPE_BASE_URL,
                "https://{WorkspaceId}.example/api/v1",
            ),
            ("HERALD_LISTEN", "127.0.0.1:0"),
        ]);
        let err = load_with(None, &e, Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("dashscope.base_url"), "{err}");
    }

    #[test]
    fn default_socket_prefers_the_systemd_runtime_directory() {
        let e = env(&[(ENV_RUNTIME_DIRECTORY, "/run/herald-x:/run/other")]);
        assert_eq!(
            default_socket_path(&e),
            Some(PathBuf::from("/run/herald-x/herald.sock"))
        );
    }

    #[test]
    fn cache_directory_and_fallback_chain() {
        let o = || Overrides {
            listen: vec!["127.0.0.1:0".into()],
            ..Overrides::default()
        };
        let c = load_with(None, &env(&[("HOME", "/home/k")]), o()).unwrap();
        let cache = c.cache.as_ref().expect("on by default");
        assert_eq!(cache.directory, Path::new("/home/k/.cache/herald"));
        assert_eq!(cache.max_bytes, 1 << 30);
        assert_eq!(
            c.fallback,
            vec![
                FallbackStep::Cache,
                FallbackStep::Model {
                    model: "espeak-ng".into(),
                    voice: None
                }
            ]
        );
        let e = env(&[
            ("HOME", "/home/k"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("CACHE_DIRECTORY", "/var/cache/herald:/other"),
        ]);
        let c = load_with(None, &e, o()).unwrap();
        assert_eq!(
            c.cache.unwrap().directory,
            Path::new("/var/cache/herald"),
            "systemd's CacheDirectory= wins"
        );
        let c = load_with(None, &env(&[]), o()).unwrap();
        assert!(c.cache.is_none(), "no directory: no cache, and why");
        assert!(c.cache_off.unwrap().contains("CACHE_DIRECTORY"));

        let c = load_with(
            Some("[fallback]\nchain = [\"MiniMax/speech-2.8-hd\", \"cosyvoice-v3-flash/longanhuan\", \"cache\"]\n"),
            &env(&[("HOME", "/h")]),
            o(),
        )
        .unwrap();
        assert_eq!(
            c.fallback,
            vec![
                FallbackStep::Model {
                    model: "MiniMax/speech-2.8-hd".into(),
                    voice: None
                },
                FallbackStep::Model {
                    model: "cosyvoice-v3-flash".into(),
                    voice: Some("longanhuan".into())
                },
                FallbackStep::Cache,
            ]
        );
        let c = load_with(None, &env(&[("HOME", "/h"), ("HERALD_FALLBACK", "")]), o()).unwrap();
        assert_eq!(c.fallback.len(), 2, "an empty variable is unset");
        let err = load_with(
            Some("[fallback]\nchain = [\"cache\", \"cache\"]\n"),
            &env(&[]),
            o(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("fallback.chain") && err.contains("twice"),
            "{err}"
        );
        let err = load_with(Some("[cache]\nmax_bytes = 10\n"), &env(&[]), o())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cache.max_bytes") && err.contains("65536"),
            "{err}"
        );
    }

    #[test]
    fn tcp_listeners_need_a_token_unless_loopback_and_insecure() {
        let strict = |listen: &str, e: &Env, insecure: bool| {
            load(
                &LoadOptions {
                    config_path: None,
                    overrides: Overrides {
                        listen: vec![listen.into()],
                        insecure_no_auth: insecure,
                        ..Overrides::default()
                    },
                },
                e,
            )
        };
        let none = env(&[]);
        let err = strict("127.0.0.1:1", &none, false).unwrap_err().to_string();
        assert!(err.starts_with("server.auth_token"), "{err}");
        assert!(matches!(
            strict("127.0.0.1:1", &none, true).unwrap().tcp_auth,
            TcpAuth::InsecureLoopbackOnly
        ));
        assert!(strict("[::1]:1", &none, true).is_ok());
        let err = strict("0.0.0.0:1", &none, true).unwrap_err().to_string();
        assert!(err.contains("not loopback"), "{err}");
        assert!(matches!(
            strict("unix:/tmp/h.sock", &none, false).unwrap().tcp_auth,
            TcpAuth::Refuse
        ));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CREDENTIAL_AUTH_TOKEN),
            "cred-token-0123456789abcdef\n",
        )
        .unwrap();
        let creds = env(&[(ENV_CREDENTIALS_DIRECTORY, dir.path().to_str().unwrap())]);
        let c = strict("0.0.0.0:1", &creds, false).unwrap();
        let TcpAuth::Token { token, source } = &c.tcp_auth else {
            panic!("{:?}", c.tcp_auth)
        };
        assert_eq!(token.expose_secret(), "cred-token-0123456789abcdef");
        assert!(source.contains("credential"));
        let rendered = c.render();
        assert!(!rendered.contains("cred-token"), "{rendered}");
        assert!(
            rendered.contains("bearer token (27 characters"),
            "{rendered}"
        );
    }
}
