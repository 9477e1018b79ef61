//! [`RawConfig::validate`]: ranges checked, paths, files and secrets resolved, the raw sections
//! turned into the domain settings types a [`Config`] holds.
//!
//! Every error names the key at fault and the limit; every "`x` is outside `a..=b`" comes from
//! one helper, [`in_range`]. Checks run in a fixed order, so the first problem reported does not
//! depend on anything but the input. Validation reads the secret files, the TLS PEMs and
//! `/etc/group`, and looks for the espeak-ng binary; it creates nothing, and must not build
//! engines, open the cache or the voice registry, or bind anything (the daemon does, and checks
//! what needs the built engines, such as whether the default model is served, or rustls, such
//! as whether it takes the TLS certificate and key: [`crate::daemon::preflight`]).

use std::{
    fmt,
    net::SocketAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};

use super::{
    CREDENTIAL_AUTH_TOKEN, CREDENTIAL_DASHSCOPE_API_KEY, CacheSection, Config, ConfigError,
    ConnectionLimits, DASHSCOPE_DEFAULT_MODEL, DEFAULT_DASHSCOPE_BASE_URL, DashscopeSection,
    ENV_CREDENTIALS_DIRECTORY, ENV_DASHSCOPE_API_KEY, EspeakSection, FallbackSection, HttpSection,
    HttpSettings, ListenAddr, MAX_CONCURRENT_LIMIT, PlaybackSection, RawConfig, ServerSection,
    SynthesisSection, TcpAuth, TlsFiles, VoicesSection, WyomingSection, WyomingSettings,
    env::Env,
    paths::{
        default_cache_dir, default_socket_path, default_state_dir, find_program, read_secret_file,
    },
};
use crate::{
    engine::{
        dashscope::{self, Tuning},
        espeak::{self, EspeakConfig},
    },
    provider::FallbackStep,
    synthesis::Settings as SynthesisSettings,
};

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, message)
}

/// `value` when `range` holds it, else "`value` is outside `start..=end`" at `key`.
fn in_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    in_range_because(key, value, range, "")
}

/// [`in_range`], with `why` (" (the reason)") after the range in the message.
fn in_range_because<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    why: &str,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            key,
            format!(
                "{value} is outside {}..={}{why}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// A millisecond key in `range`, as a duration.
fn millis_in(key: &str, value: u64, range: RangeInclusive<u64>) -> Result<Duration, ConfigError> {
    in_range(key, value, range).map(Duration::from_millis)
}

/// A count key in `range`, as a `usize`.
fn count_in(
    key: &str,
    value: u64,
    range: RangeInclusive<u64>,
    why: &str,
) -> Result<usize, ConfigError> {
    in_range_because(key, value, range, why).map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
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
        let http = validate_http(&self.http)?;
        let every_listener: Vec<ListenAddr> = listen.iter().chain(&http.listen).cloned().collect();
        let tcp_auth = validate_auth(s, &every_listener, env)?;
        let metrics_listen = match s.metrics_listen.trim() {
            "" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "server.metrics_listen",
                    format!("{a:?} is not IP:PORT like \"127.0.0.1:9464\""),
                )
            })?),
        };
        let tls = validate_tls(s)?;
        if s.shutdown_grace_ms > 600_000 {
            return Err(invalid(
                "server.shutdown_grace_ms",
                format!("{} is above the limit 600000", s.shutdown_grace_ms),
            ));
        }

        let syn = &self.synthesis;
        let max_text_chars = count_in(
            "synthesis.max_text_chars",
            syn.max_text_chars,
            1..=1_000_000,
            "",
        )?;
        let max_concurrent_per_peer = count_in(
            "synthesis.max_concurrent_per_peer",
            syn.max_concurrent_per_peer,
            1..=4096,
            "",
        )?;
        let max_deadline = millis_in(
            "synthesis.max_deadline_ms",
            syn.max_deadline_ms,
            1_000..=86_400_000,
        )?;
        let max_message_bytes = count_in(
            "server.max_message_bytes",
            s.max_message_bytes,
            65_536..=67_108_864,
            "",
        )?;
        let connections = validate_connections(s)?;
        let max_concurrent = count_in(
            "synthesis.max_concurrent",
            syn.max_concurrent,
            1..=MAX_CONCURRENT_LIMIT as u64,
            "",
        )?;

        let espeak = validate_espeak(&self.espeak, env)?;
        #[cfg(feature = "piper")]
        let piper = validate_piper(&self.piper, &self.espeak, env)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a tracing filter like \"info\" or \"herald=debug\"",
                    self.log.level
                ),
            ));
        }
        let (dashscope, dashscope_base_url) = validate_dashscope(&self.dashscope, env)?;
        let playback = validate_playback(&self.playback)?;
        let (cache, cache_off) = match validate_cache(&self.cache, env)? {
            Ok(c) => (Some(c), None),
            Err(why) => (None, Some(why)),
        };
        let fallback = validate_fallback(&self.fallback)?;
        let voices = validate_voices(&self.voices, env)?;
        let wyoming = validate_wyoming(&self.wyoming)?;
        if dashscope.is_none() && espeak.is_none() {
            return Err(invalid(
                "espeak.enabled",
                "false, and no DashScope API key is configured: herald would have no engine",
            ));
        }
        let log_format = match self.log.format.as_str() {
            "text" => crate::telemetry::LogFormat::Text,
            "json" => crate::telemetry::LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not \"text\" or \"json\""),
                ));
            }
        };

        Ok(Config {
            listen,
            socket_mode,
            socket_group,
            tcp_auth,
            tls,
            shutdown_grace: Duration::from_millis(s.shutdown_grace_ms),
            synthesis: SynthesisSettings {
                default_model: default_model(syn, dashscope.is_some()),
                default_voice: non_empty(&syn.default_voice),
                max_text_chars,
                max_concurrent,
                max_concurrent_per_peer,
                max_deadline,
                first_audio_budget: millis_in(
                    "fallback.first_audio_budget_ms",
                    self.fallback.first_audio_budget_ms,
                    100..=600_000,
                )?,
                max_stream_text_chars: count_in(
                    "synthesis.max_stream_text_chars",
                    syn.max_stream_text_chars,
                    1..=10_000_000,
                    "",
                )?,
                stream_idle_timeout: millis_in(
                    "synthesis.stream_idle_timeout_ms",
                    syn.stream_idle_timeout_ms,
                    100..=3_600_000,
                )?,
                cpu_threads: count_in("synthesis.cpu_threads", syn.cpu_threads, 0..=1024, "")?,
            },
            max_message_bytes,
            connections,
            metrics_listen,
            espeak,
            #[cfg(feature = "piper")]
            piper,
            dashscope,
            playback,
            cache,
            cache_off,
            fallback,
            voices,
            log_level: self.log.level.clone(),
            log_format,
            wyoming,
            http,
            dashscope_base_url,
            raw: self,
        })
    }
}

/// `[wyoming]`: `tcp://IP:PORT` or `unix://PATH` listeners, loopback TCP only unless
/// `allow_remote` (Wyoming has no authentication), and the output format.
fn validate_wyoming(w: &WyomingSection) -> Result<WyomingSettings, ConfigError> {
    let mut listen = Vec::with_capacity(w.listen.len());
    for text in &w.listen {
        let text = text.trim();
        let addr = if let Some(rest) = text.strip_prefix("tcp://") {
            rest.parse::<SocketAddr>()
                .map(ListenAddr::Tcp)
                .map_err(|_| {
                    invalid(
                        "wyoming.listen",
                        format!("{text:?}: not tcp://IP:PORT (e.g. tcp://127.0.0.1:10200)"),
                    )
                })?
        } else if text.starts_with("unix:") {
            ListenAddr::parse(text).map_err(|m| invalid("wyoming.listen", m))?
        } else {
            return Err(invalid(
                "wyoming.listen",
                format!(
                    "{text:?} is neither tcp://IP:PORT nor unix://PATH (e.g. tcp://127.0.0.1:10200)"
                ),
            ));
        };
        if let ListenAddr::Tcp(a) = &addr
            && !a.ip().is_loopback()
            && !w.allow_remote
        {
            return Err(invalid(
                "wyoming.listen",
                format!(
                    "{text:?} is not a loopback address, and Wyoming has no authentication: \
                     anyone who reaches it can use herald; set wyoming.allow_remote = true to \
                     serve it anyway (Home Assistant on another host needs this)"
                ),
            ));
        }
        listen.push(addr);
    }
    if w.sample_rate != 0 && !(8_000..=48_000).contains(&w.sample_rate) {
        return Err(invalid(
            "wyoming.sample_rate",
            format!(
                "{} is outside 8000..=48000 (0 = the voice's native rate)",
                w.sample_rate
            ),
        ));
    }
    if !(1..=2).contains(&w.channels) {
        return Err(invalid(
            "wyoming.channels",
            format!("{} is outside 1..=2", w.channels),
        ));
    }
    Ok(WyomingSettings {
        listen,
        sample_rate: w.sample_rate,
        channels: w.channels,
    })
}

/// `[http]`: its listeners parsed, its maps without empty names. TCP listeners count with
/// `server.listen`'s for the token rules ([`validate_auth`]).
fn validate_http(h: &HttpSection) -> Result<HttpSettings, ConfigError> {
    let listen = h
        .listen
        .iter()
        .map(|l| ListenAddr::parse(l).map_err(|m| invalid("http.listen", m)))
        .collect::<Result<_, _>>()?;
    let map = |key: &str, m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| match (k.trim(), v.trim()) {
                ("", _) | (_, "") => Err(invalid(key, format!("{k:?} = {v:?}: empty name"))),
                (k, v) => Ok((k.to_owned(), v.to_owned())),
            })
            .collect::<Result<_, _>>()
    };
    Ok(HttpSettings {
        listen,
        models: map("http.models", &h.models)?,
        voices: map("http.voices", &h.voices)?,
    })
}

/// The configured default model, else DashScope's when a key is configured (`cloud`: the
/// cloud is wanted, and its fast CosyVoice model is the default), else the offline engine.
fn default_model(syn: &SynthesisSection, cloud: bool) -> String {
    non_empty(&syn.default_model).unwrap_or_else(|| {
        if cloud {
            DASHSCOPE_DEFAULT_MODEL
        } else {
            espeak::MODEL
        }
        .to_owned()
    })
}

fn validate_connections(s: &ServerSection) -> Result<ConnectionLimits, ConfigError> {
    Ok(ConnectionLimits {
        max_connections: count_in(
            "server.max_connections",
            s.max_connections,
            1..=1_000_000,
            "",
        )?,
        handshake_timeout: millis_in(
            "server.handshake_timeout_ms",
            s.handshake_timeout_ms,
            100..=600_000,
        )?,
        idle_timeout: millis_in(
            "server.idle_timeout_ms",
            s.idle_timeout_ms,
            1_000..=86_400_000,
        )?,
        max_concurrent_streams: u32::try_from(count_in(
            "server.max_concurrent_streams",
            s.max_concurrent_streams,
            1..=10_000,
            "",
        )?)
        .unwrap_or(u32::MAX),
        max_health_watches: count_in(
            "server.max_health_watches",
            s.max_health_watches,
            0..=100_000,
            "",
        )?,
    })
}

fn validate_tls(s: &ServerSection) -> Result<Option<TlsFiles>, ConfigError> {
    Ok(match (s.tls_cert.trim(), s.tls_key.trim()) {
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
            check_tls_pair(cert, &cert_pem, key, key_pem.as_bytes())?;
            Some(TlsFiles {
                cert_pem,
                key_pem: SecretString::from(key_pem),
                cert_path: PathBuf::from(cert),
            })
        }
    })
}

/// The certificate chain parses, the key loads, and the key is the certificate's: what rustls
/// needs to serve TLS, checked here so that `check-config` and `serve` refuse a bad pair naming
/// the setting before anything is bound (issue 23).
fn check_tls_pair(
    cert: &str,
    cert_pem: &[u8],
    key: &str,
    key_pem: &[u8],
) -> Result<(), ConfigError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                "server.tls_cert",
                format!("{cert}: not a PEM certificate chain: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(invalid(
            "server.tls_cert",
            format!("{cert}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"),
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        invalid(
            "server.tls_key",
            format!("{key}: no usable PEM private key (unencrypted PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider.key_provider.load_private_key(der).map_err(|e| {
        invalid(
            "server.tls_key",
            format!("{key}: not a key rustls can use: {e}"),
        )
    })?;
    match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(invalid(
                "server.tls_key",
                format!("{key} is not the key of the certificate in server.tls_cert ({cert})"),
            ))
        }
        Err(e) => Err(invalid(
            "server.tls_cert",
            format!("{cert}: the first certificate cannot be read: {e}"),
        )),
    }
}

fn validate_espeak(e: &EspeakSection, env: &Env) -> Result<Option<EspeakConfig>, ConfigError> {
    if !e.enabled {
        return Ok(None);
    }
    if e.binary.trim().is_empty() {
        return Err(invalid("espeak.binary", "must not be empty"));
    }
    // The engine runs the binary as given (found on PATH at each run); that it can be found at
    // all is checked here, so that check-config refuses what serve would.
    find_program(Path::new(&e.binary), env).map_err(|why| {
        invalid(
            "espeak.binary",
            format!(
                "{why}; install the Debian package espeak-ng, set espeak.binary to its path, \
                 or set espeak.enabled = false"
            ),
        )
    })?;
    if e.default_voice.trim().is_empty() {
        return Err(invalid("espeak.default_voice", "must not be empty"));
    }
    Ok(Some(EspeakConfig {
        binary: PathBuf::from(&e.binary),
        default_voice: e.default_voice.clone(),
        timeout: millis_in("espeak.timeout_ms", e.timeout_ms, 100..=600_000)?,
        max_processes: count_in(
            "espeak.max_processes",
            u64::from(e.max_processes),
            1..=1024,
            "",
        )?,
    }))
}

/// `[piper]`: the engine's settings, or `None` when disabled. `ORT_DYLIB_PATH` stands in for
/// an empty `piper.onnxruntime`; an empty `piper.voices` is the default directory list.
#[cfg(feature = "piper")]
fn validate_piper(
    p: &super::raw::PiperSection,
    e: &EspeakSection,
    env: &Env,
) -> Result<Option<crate::engine::piper::PiperConfig>, ConfigError> {
    if !p.enabled {
        return Ok(None);
    }
    let (onnxruntime, onnxruntime_setting) = match (
        non_empty(&p.onnxruntime),
        env.get("ORT_DYLIB_PATH").and_then(non_empty),
    ) {
        (Some(path), _) => (Some(PathBuf::from(path)), "piper.onnxruntime"),
        (None, Some(path)) => (Some(PathBuf::from(path)), "ORT_DYLIB_PATH"),
        (None, None) => (None, "piper.onnxruntime"),
    };
    let voice_dirs = if p.voices.iter().all(|v| v.trim().is_empty()) {
        default_piper_dirs(env)
    } else {
        p.voices
            .iter()
            .filter_map(|v| non_empty(v))
            .map(PathBuf::from)
            .collect()
    };
    let max_concurrent = count_in(
        "piper.max_concurrent",
        u64::from(p.max_concurrent),
        1..=64,
        "",
    )?;
    let threads = count_in("piper.threads", u64::from(p.threads), 0..=256, "")?;
    let espeak_binary = if e.binary.trim().is_empty() {
        PathBuf::from("espeak-ng")
    } else {
        PathBuf::from(&e.binary)
    };
    Ok(Some(crate::engine::piper::PiperConfig {
        onnxruntime,
        onnxruntime_setting,
        voice_dirs,
        espeak_binary,
        default_voice: non_empty(&p.default_voice),
        max_concurrent,
        threads,
        preload: p.preload,
    }))
}

/// Where piper voices are looked for when `piper.voices` is empty (see the key's docs).
#[cfg(feature = "piper")]
fn default_piper_dirs(env: &Env) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(state) = super::paths::default_state_dir(env) {
        dirs.push(state.join("piper-voices"));
    }
    if let Some(xdg) = env.get("XDG_DATA_HOME") {
        dirs.push(Path::new(xdg).join("herald").join("piper-voices"));
    } else if let Some(home) = env.get("HOME") {
        dirs.push(Path::new(home).join(".local/share/herald/piper-voices"));
    }
    dirs.push(PathBuf::from("/usr/local/share/piper-voices"));
    dirs.push(PathBuf::from("/usr/share/piper-voices"));
    dirs
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
    let max_bytes = in_range("cache.max_bytes", c.max_bytes, (1 << 16)..=(1 << 40))?;
    let max_text_chars = count_in("cache.max_text_chars", c.max_text_chars, 1..=100_000, "")?;
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
        max_bytes,
        max_age: (c.max_age_s > 0).then(|| Duration::from_secs(c.max_age_s)),
        max_text_chars,
    }))
}

fn validate_voices(v: &VoicesSection, env: &Env) -> Result<crate::voices::Settings, ConfigError> {
    let poll_initial = millis_in("voices.poll_initial_ms", v.poll_initial_ms, 10..=60_000)?;
    // The lower bound is another key, and the message names it.
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
        poll_initial,
        poll_max: Duration::from_millis(v.poll_max_ms),
    })
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
    let sample_rate = in_range(
        "playback.wav_sample_rate",
        p.wav_sample_rate,
        8_000..=192_000,
    )?;
    let channels = in_range("playback.wav_channels", p.wav_channels, 1..=2)?;
    let chime_file = non_empty(&p.chime).map(PathBuf::from);
    if let Some(c) = &chime_file
        && !c.is_file()
    {
        return Err(invalid(
            "playback.chime",
            format!("{} is not a readable file", c.display()),
        ));
    }
    Ok(crate::playback::PlaybackSettings {
        default_device: device.to_owned(),
        wav_path,
        virtual_spec: crate::audio::AudioSpec {
            sample_rate,
            channels,
        },
        chime_file,
        chime_by_default: p.chime_by_default,
        leading_silence: millis_in(
            "playback.leading_silence_ms",
            p.leading_silence_ms,
            0..=5_000,
        )?,
        pause: millis_in("playback.pause_ms", p.pause_ms, 0..=5_000)?,
        max_queued: count_in("playback.max_queued", p.max_queued, 1..=10_000, "")?,
        replay_within: millis_in("playback.replay_within_ms", p.replay_within_ms, 0..=60_000)?,
        reopen_timeout: millis_in(
            "playback.reopen_timeout_ms",
            p.reopen_timeout_ms,
            0..=60_000,
        )?,
    })
}

/// The DashScope settings when a key is configured, and the resolved base URL (checked, and
/// shown by `check-config`, also without a key).
fn validate_dashscope(
    d: &DashscopeSection,
    env: &Env,
) -> Result<(Option<dashscope::Settings>, String), ConfigError> {
    let key = if let Some(key) = d.api_key.as_deref().and_then(non_empty) {
        let source = if env.get(ENV_DASHSCOPE_API_KEY).is_some() {
            ENV_DASHSCOPE_API_KEY.to_owned()
        } else {
            "dashscope.api_key".to_owned()
        };
        Some((SecretString::from(key), source))
    } else if let Some(file) = d.api_key_file.as_deref().and_then(non_empty) {
        let key =
            read_secret_file(Path::new(&file)).map_err(|m| invalid("dashscope.api_key_file", m))?;
        Some((key, format!("file {file}")))
    } else if let Some(dir) = env.get(ENV_CREDENTIALS_DIRECTORY) {
        let path = Path::new(dir).join(CREDENTIAL_DASHSCOPE_API_KEY);
        if path.exists() {
            let key = read_secret_file(&path).map_err(|m| invalid(ENV_CREDENTIALS_DIRECTORY, m))?;
            Some((
                key,
                format!("systemd credential {CREDENTIAL_DASHSCOPE_API_KEY}"),
            ))
        } else {
            None
        }
    } else {
        None
    };

    let workspace_id = d.workspace_id.as_deref().and_then(non_empty);
    let base_url = dashscope_base_url(d, workspace_id.as_deref())?;
    let tuning = Tuning {
        connect_timeout: millis_in(
            "dashscope.connect_timeout_ms",
            d.connect_timeout_ms,
            100..=60_000,
        )?,
        first_event_timeout: millis_in(
            "dashscope.first_event_timeout_ms",
            d.first_event_timeout_ms,
            100..=300_000,
        )?,
        idle_timeout: millis_in(
            "dashscope.idle_timeout_ms",
            d.idle_timeout_ms,
            100..=300_000,
        )?,
        max_attempts: in_range("dashscope.max_attempts", d.max_attempts, 1..=10)?,
        retry_base: millis_in("dashscope.retry_base_ms", d.retry_base_ms, 1..=10_000)?,
        lookahead: count_in("dashscope.lookahead", d.lookahead.into(), 1..=8, "")?,
        cosyvoice_piece_units: count_in(
            "dashscope.cosyvoice_piece_units",
            d.cosyvoice_piece_units.into(),
            20..=150,
            " (CosyVoice silently truncates audio past about 150 units)",
        )?,
        qwen_piece_units: count_in(
            "dashscope.qwen_piece_units",
            d.qwen_piece_units.into(),
            20..=5000,
            "",
        )?,
        minimax_piece_units: count_in(
            "dashscope.minimax_piece_units",
            d.minimax_piece_units.into(),
            20..=9999,
            " (MiniMax takes fewer than 10000 characters)",
        )?,
        max_concurrent_requests: count_in(
            "dashscope.max_concurrent_requests",
            d.max_concurrent_requests.into(),
            // As many as syntheses may run at once (benches/load runs 4000 streams).
            1..=MAX_CONCURRENT_LIMIT as u64,
            "",
        )?,
        queue_timeout: millis_in(
            "dashscope.queue_timeout_ms",
            d.queue_timeout_ms,
            0..=300_000,
        )?,
        transport: dashscope::ws::Transport::parse(d.transport.trim()).ok_or_else(|| {
            invalid(
                "dashscope.transport",
                format!(
                    "{:?} is not \"auto\", \"http\" or \"websocket\"",
                    d.transport
                ),
            )
        })?,
        websocket_base_url: dashscope_websocket_base_url(d, workspace_id.as_deref())?,
        ..Tuning::default()
    };
    let settings = key.map(|(api_key, api_key_source)| dashscope::Settings {
        api_key,
        api_key_source,
        base_url: base_url.clone(),
        workspace_id,
        tuning,
    });
    Ok((settings, base_url))
}

/// `dashscope.websocket_base_url` without a trailing slash, `{WorkspaceId}` filled in; `None`
/// when empty (derived from the HTTP base URL, region and workspace included).
fn dashscope_websocket_base_url(
    d: &DashscopeSection,
    workspace_id: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    let url = d.websocket_base_url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Ok(None);
    }
    if !(url.starts_with("wss://") || url.starts_with("ws://")) {
        return Err(invalid(
            "dashscope.websocket_base_url",
            format!("{url:?} must start with wss:// or ws://"),
        ));
    }
    if url.contains("{WorkspaceId}") {
        let Some(ws) = workspace_id else {
            return Err(invalid(
                "dashscope.websocket_base_url",
                "contains {WorkspaceId} but dashscope.workspace_id (DASHSCOPE_WORKSPACE_ID) is not set",
            ));
        };
        return Ok(Some(url.replace("{WorkspaceId}", ws)));
    }
    Ok(Some(url.to_owned()))
}

/// `dashscope.base_url` (or the host of `dashscope.region`) without a trailing slash, with
/// `{WorkspaceId}` filled in.
fn dashscope_base_url(
    d: &DashscopeSection,
    workspace_id: Option<&str>,
) -> Result<String, ConfigError> {
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
        let Some(ws) = workspace_id else {
            return Err(invalid(
                "dashscope.base_url",
                "contains {WorkspaceId} but dashscope.workspace_id (DASHSCOPE_WORKSPACE_ID) is not set",
            ));
        };
        base_url = base_url.replace("{WorkspaceId}", ws);
    }
    Ok(base_url)
}
