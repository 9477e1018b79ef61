//! Configuration: a TOML file, the environment and command-line flags, merged and validated.
//!
//! Precedence is flags > environment > file > defaults. Loading has two phases (ripgrep's
//! Low/HiArgs, spotifyd's `get_internal_config`): the sources are merged into one TOML table and
//! deserialized into [`RawConfig`] with unknown keys rejected by name ([`load_raw`]); then
//! [`RawConfig::validate`] turns it into the typed [`Config`] the daemon runs with. Nothing here
//! reads the process environment directly: callers pass an [`Env`] snapshot, so tests never
//! mutate global state. Secrets (the DashScope API key, the TCP bearer token) live in
//! [`SecretString`] and are masked in every output.
//!
//! This module owns the configuration schema, its defaults where no domain type has them, its
//! validation and its error messages. [`Config`] holds the domain settings types themselves
//! (the espeak-ng and DashScope engine settings, the synthesis limits, playback, cache and
//! custom voices), so each setting has one type and its default is written once. It must not
//! build engines or open the cache, the voice registry or listeners (it reads only the config
//! file, secret files, TLS PEMs and `/etc/group`, looks for the espeak-ng binary, and creates
//! nothing), and must not depend on a door: no tonic, prost or `pb` types, no listener or
//! handler code.
//!
//! - `env`: the environment snapshot, the variable → key table and the flag overrides;
//! - `raw`: every `[section]` as written, with its serde defaults;
//! - `load`: finding, reading and merging the sources;
//! - `validate`: [`RawConfig`] → [`Config`], every range check through one helper;
//! - `paths`: default socket, cache and state directories, secret files;
//! - `render`: `check-config`'s output.

mod env;
mod load;
mod paths;
mod raw;
mod render;
mod validate;

#[cfg(test)]
mod tests;

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::SecretString;

pub use self::{
    env::{Env, Overrides},
    load::{LoadOptions, load_raw, parse_str},
    paths::{client_socket_candidates, default_cache_dir, default_socket_path, default_state_dir},
    raw::{
        CacheSection, DashscopeSection, EspeakSection, FallbackSection, HttpSection, LogSection,
        PlaybackSection, RawConfig, ServerSection, SynthesisSection, VoicesSection, WyomingSection,
    },
};
use crate::{
    engine::{dashscope, espeak::EspeakConfig},
    provider::FallbackStep,
};

/// The largest `synthesis.max_concurrent` accepted (the runtime keeps this many blocking
/// threads available, one per stream in flight).
pub const MAX_CONCURRENT_LIMIT: usize = 4096;
/// The largest gRPC request message accepted when `server.max_message_bytes` is not set.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
/// The default model when a DashScope key is configured and `synthesis.default_model` is not.
pub const DASHSCOPE_DEFAULT_MODEL: &str = "cosyvoice-v3-flash";
/// The config file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/herald/herald.toml";
/// Default DashScope base URL (Beijing region).
pub const DEFAULT_DASHSCOPE_BASE_URL: &str = "https://dashscope.aliyuncs.com/api/v1";
/// File name of the unix socket inside the runtime directory.
pub const SOCKET_FILE_NAME: &str = "herald.sock";
/// The system-wide runtime directory used when systemd gives none.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/herald";
/// systemd credential name of the bearer token of TCP clients.
pub const CREDENTIAL_AUTH_TOKEN: &str = "herald_auth_token";
/// systemd credential name of the DashScope API key.
pub const CREDENTIAL_DASHSCOPE_API_KEY: &str = "dashscope_api_key";

/// Environment variable naming the config file (same as `--config`).
pub const ENV_CONFIG: &str = "HERALD_CONFIG";
/// DashScope SDK convention: the API key.
pub const ENV_DASHSCOPE_API_KEY: &str = "DASHSCOPE_API_KEY";
/// DashScope SDK convention: a file holding the API key.
pub const ENV_DASHSCOPE_API_KEY_FILE: &str = "DASHSCOPE_API_KEY_FILE_PATH";
/// DashScope SDK convention: the HTTP base URL.
pub const ENV_DASHSCOPE_BASE_URL: &str = "DASHSCOPE_HTTP_BASE_URL";
/// DashScope SDK convention: the WebSocket URL (`dashscope.websocket_base_url`).
pub const ENV_DASHSCOPE_WEBSOCKET_BASE_URL: &str = "DASHSCOPE_WEBSOCKET_BASE_URL";
/// DashScope SDK convention: the workspace id (fills `{WorkspaceId}` in the base URL).
pub const ENV_DASHSCOPE_WORKSPACE_ID: &str = "DASHSCOPE_WORKSPACE_ID";
/// systemd: directory of credentials passed with `LoadCredential=`.
pub const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
/// systemd: the service's runtime directory (`RuntimeDirectory=`).
pub const ENV_RUNTIME_DIRECTORY: &str = "RUNTIME_DIRECTORY";
/// systemd: the service's cache directory (`CacheDirectory=`).
pub const ENV_CACHE_DIRECTORY: &str = "CACHE_DIRECTORY";
/// systemd: the service's state directory (`StateDirectory=`).
pub const ENV_STATE_DIRECTORY: &str = "STATE_DIRECTORY";
/// Per-user cache directory (XDG base directories).
pub const ENV_XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// Per-user runtime directory (desktop sessions).
pub const ENV_XDG_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";

/// Shown instead of a secret's value.
const MASK: &str = "<redacted>";

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

impl ConfigError {
    /// A value of `key` that is out of range or unusable (also for checks that need the built
    /// engines, such as whether the default model is served).
    pub fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Load and validate: the one call the binary makes.
pub fn load(options: &LoadOptions, env: &Env) -> Result<Config, ConfigError> {
    load_raw(options, env)?.validate(env)
}

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

/// The Wyoming door's settings, validated: where it listens and the audio it sends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WyomingSettings {
    /// Listeners (empty = no Wyoming door). TCP ones are loopback unless `allow_remote`.
    pub listen: Vec<ListenAddr>,
    /// Output rate, Hz (0 = the voice's native rate).
    pub sample_rate: u32,
    /// Output channels (1 or 2).
    pub channels: u16,
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

/// The OpenAI-compatible HTTP door: where it listens, and how OpenAI's model and voice names
/// map to herald's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpSettings {
    /// Its listeners (empty = not served). TCP ones follow the bearer-token and TLS rules of
    /// gRPC's TCP listeners.
    pub listen: Vec<ListenAddr>,
    /// OpenAI model name → herald model (explicit entries of `[http.models]`).
    pub models: std::collections::BTreeMap<String, String>,
    /// OpenAI voice name → herald voice (explicit entries of `[http.voices]`).
    pub voices: std::collections::BTreeMap<String, String>,
}

/// What every door's listeners allow a connection ([`Config::connections`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once per listener (`server.max_connections`).
    pub max_connections: usize,
    /// Time a new connection has to send its first bytes and to finish a TLS handshake
    /// (`server.handshake_timeout_ms`).
    pub handshake_timeout: Duration,
    /// Time a connection may go without a byte in either direction (`server.idle_timeout_ms`).
    pub idle_timeout: Duration,
    /// Most HTTP/2 streams open at once on one gRPC connection (`server.max_concurrent_streams`).
    pub max_concurrent_streams: u32,
    /// Most health `Watch` streams open at once (`server.max_health_watches`).
    pub max_health_watches: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 100,
            max_health_watches: 64,
        }
    }
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
    /// Request defaults and limits. The default model is the configured one, else
    /// [`DASHSCOPE_DEFAULT_MODEL`] when a DashScope key is configured, else espeak-ng; whether
    /// an engine serves it is checked when the engines are built.
    pub synthesis: crate::synthesis::Settings,
    /// Largest gRPC request message, bytes.
    pub max_message_bytes: usize,
    /// Connection limits of every door's listeners.
    pub connections: ConnectionLimits,
    /// The Prometheus metrics listener, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// espeak-ng, when enabled.
    pub espeak: Option<EspeakConfig>,
    /// piper, when enabled.
    #[cfg(feature = "piper")]
    pub piper: Option<crate::engine::piper::PiperConfig>,
    /// DashScope, when an API key is configured (from the config, the environment, a key file
    /// or a systemd credential, in that order).
    pub dashscope: Option<dashscope::Settings>,
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
    /// The OpenAI-compatible HTTP door.
    pub http: HttpSettings,
    /// The DashScope base URL with the region and `{WorkspaceId}` resolved, kept for
    /// `check-config` also when no key is set.
    dashscope_base_url: String,
    /// The Wyoming door.
    pub wyoming: WyomingSettings,
    /// The merged raw configuration (for `check-config`; secrets masked by [`Config::render`]).
    raw: RawConfig,
}
