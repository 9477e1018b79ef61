//! The configuration as written: one serde struct per `[section]`, unknown keys rejected.
//!
//! A section whose settings have a domain type (espeak-ng, DashScope, synthesis limits,
//! playback, custom voices) takes its defaults from that type's `Default`, so every default is
//! written once; the others (server, cache, fallback, log) write theirs here. This module only
//! describes the schema: it must not validate ranges, resolve paths or read files.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::{DEFAULT_DASHSCOPE_BASE_URL, DEFAULT_MAX_MESSAGE_BYTES, MASK};
use crate::engine::{dashscope::Tuning, espeak::EspeakConfig};

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
    /// The local piper engine (neural voices through ONNX Runtime).
    pub piper: PiperSection,
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
    /// The Wyoming door (Home Assistant).
    pub wyoming: WyomingSection,
    /// The OpenAI-compatible HTTP door.
    pub http: HttpSection,
}

/// A duration as the whole milliseconds a config key holds.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A count as a `u64` key holds.
fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A count as a `u32` key holds.
fn narrow(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
        let d = crate::voices::Settings::default();
        Self {
            directory: String::new(),
            poll_initial_ms: millis(d.poll_initial),
            poll_max_ms: millis(d.poll_max),
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
    /// Announcements a device holds at most, queued and playing (1..=10000); more Speak
    /// calls are refused with RESOURCE_EXHAUSTED. Default 64.
    pub max_queued: u64,
    /// After a device failure, an announcement that had played less than this many ms is
    /// replayed from its beginning on the reopened device; one that had played more goes on
    /// where it was (0..=60000). Default 1000.
    pub replay_within_ms: u64,
    /// How long a failed device is tried again (every 200 ms) before the announcement playing
    /// on it fails, ms (0..=60000). Default 5000.
    pub reopen_timeout_ms: u64,
}

impl Default for PlaybackSection {
    fn default() -> Self {
        let d = crate::playback::PlaybackSettings::default();
        let path =
            |p: Option<std::path::PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
        Self {
            device: d.default_device,
            wav_path: path(d.wav_path),
            wav_sample_rate: d.virtual_spec.sample_rate,
            wav_channels: d.virtual_spec.channels,
            chime: path(d.chime_file),
            chime_by_default: d.chime_by_default,
            leading_silence_ms: millis(d.leading_silence),
            pause_ms: millis(d.pause),
            max_queued: d.max_queued as u64,
            replay_within_ms: millis(d.replay_within),
            reopen_timeout_ms: millis(d.reopen_timeout),
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
    /// model ("piper", "espeak-ng": a voice for the request's language), or "MODEL/VOICE".
    /// Empty = no fallback. Default `["cache", "piper", "espeak-ng"]`.
    pub chain: Vec<String>,
    /// How long the requested engine may go without sending audio before the chain is tried
    /// (while the engine goes on; the first to open wins, the other is dropped), in ms. Half the
    /// time left before the request's deadline is used when that is sooner. Default 1500 (the
    /// cloud's first audio normally comes within 0.4–0.7 s), range 100..=600000.
    pub first_audio_budget_ms: u64,
}

impl Default for FallbackSection {
    fn default() -> Self {
        Self {
            chain: vec![
                "cache".to_owned(),
                "piper".to_owned(),
                crate::engine::espeak::MODEL.to_owned(),
            ],
            first_audio_budget_ms: millis(crate::provider::DEFAULT_FIRST_AUDIO_BUDGET),
        }
    }
}

/// `[wyoming]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WyomingSection {
    /// Where the Wyoming door listens: `tcp://IP:PORT` or `unix://PATH`, any number. Empty = no
    /// Wyoming door (default).
    pub listen: Vec<String>,
    /// Serve the Wyoming door on a non-loopback TCP address. Wyoming has no authentication:
    /// anyone who reaches the port can make herald speak (and spend DashScope credit). Default
    /// false.
    pub allow_remote: bool,
    /// Rate of the audio sent, Hz (0 = the voice's native rate, the default; else
    /// 8000..=48000).
    pub sample_rate: u32,
    /// Channels of the audio sent (1..=2). Default 1.
    pub channels: u16,
}

impl Default for WyomingSection {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            allow_remote: false,
            sample_rate: 0,
            channels: 1,
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
    /// Largest gRPC request message, bytes. Default 16777216 (16 MiB: a 10 MB voice sample fits), range 65536..=67108864.
    pub max_message_bytes: u64,
    /// `IP:PORT` of the Prometheus metrics listener (`/metrics`). Empty = none.
    pub metrics_listen: String,
    /// Most connections open at once per listener (every door). Default 512.
    pub max_connections: u64,
    /// A connection that sends nothing (or does not finish its TLS handshake) within this many
    /// ms after it is accepted is closed. Default 10000.
    pub handshake_timeout_ms: u64,
    /// A connection with no bytes in either direction for this many ms is closed. Default
    /// 300000.
    pub idle_timeout_ms: u64,
    /// Most HTTP/2 streams (calls) open at once on one gRPC connection. Default 100.
    pub max_concurrent_streams: u64,
    /// Most `grpc.health.v1.Health/Watch` streams open at once (all listeners). Default 64.
    pub max_health_watches: u64,
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
            max_message_bytes: wide(DEFAULT_MAX_MESSAGE_BYTES),
            metrics_listen: String::new(),
            max_connections: 512,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            max_concurrent_streams: 100,
            max_health_watches: 64,
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
    /// Most characters of text one `SynthesizeStream` may carry in all its pieces; more end
    /// the stream with INVALID_ARGUMENT. Default 100000, range 1..=10000000.
    pub max_stream_text_chars: u64,
    /// Longest wait for a `SynthesizeStream`'s next text piece, flush or end, ms; longer ends
    /// the stream with DEADLINE_EXCEEDED naming this key. Default 30000, range 100..=3600000.
    pub stream_idle_timeout_ms: u64,
    /// Threads of the CPU pool shared by every stream for its heavy audio stages (resampling,
    /// MP3 decoding, MP3/Opus/FLAC encoding). 0 (the default) = one per available core,
    /// range 0..=1024.
    pub cpu_threads: u64,
}

impl Default for SynthesisSection {
    fn default() -> Self {
        let d = crate::synthesis::Settings::default();
        Self {
            // Empty: chosen from the configured engines at validation.
            default_model: String::new(),
            default_voice: d.default_voice.unwrap_or_default(),
            max_text_chars: wide(d.max_text_chars),
            max_concurrent: wide(d.max_concurrent),
            max_concurrent_per_peer: wide(d.max_concurrent_per_peer),
            max_deadline_ms: millis(d.max_deadline),
            max_stream_text_chars: wide(d.max_stream_text_chars),
            stream_idle_timeout_ms: millis(d.stream_idle_timeout),
            cpu_threads: wide(d.cpu_threads),
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
    /// Most espeak-ng processes at once (requests, fallbacks and cache warming together); one
    /// more is refused at once with RESOURCE_EXHAUSTED. Default 16, range 1..=1024.
    pub max_processes: u32,
}

impl Default for EspeakSection {
    fn default() -> Self {
        let d = EspeakConfig::default();
        Self {
            enabled: true,
            binary: d.binary.display().to_string(),
            default_voice: d.default_voice,
            timeout_ms: millis(d.timeout),
            max_processes: narrow(d.max_processes),
        }
    }
}

/// `[piper]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiperSection {
    /// Whether the piper engine is offered (model "piper"). Default true. Builds without the
    /// `piper` feature ignore the section.
    pub enabled: bool,
    /// Directories holding Piper voices (`NAME.onnx` + `NAME.onnx.json`), searched in order.
    /// Empty = `$STATE_DIRECTORY/piper-voices` (else `$XDG_STATE_HOME/herald/piper-voices` or
    /// `~/.local/state/herald/piper-voices`), `$XDG_DATA_HOME/herald/piper-voices` (else
    /// `~/.local/share/herald/piper-voices`), `/usr/local/share/piper-voices`,
    /// `/usr/share/piper-voices`.
    pub voices: Vec<String>,
    /// The ONNX Runtime shared library (`libonnxruntime.so`, 1.17 or newer). Empty = the
    /// `ORT_DYLIB_PATH` environment variable, else the system's library directories, else the
    /// dynamic loader's search path.
    pub onnxruntime: String,
    /// Voice used when a request names none. Empty = the first voice by name.
    pub default_voice: String,
    /// Sentences synthesized at once across all requests (the inference pool). Default 2,
    /// range 1..=64.
    pub max_concurrent: u32,
    /// ONNX Runtime threads per inference. 0 = one per core (default), range 0..=256.
    pub threads: u32,
    /// Load the default voice's model at start, in the background (about 200 MB resident),
    /// so that its first request does not wait for it. Default true.
    pub preload: bool,
}

impl Default for PiperSection {
    fn default() -> Self {
        Self {
            enabled: true,
            voices: Vec::new(),
            onnxruntime: String::new(),
            default_voice: String::new(),
            max_concurrent: 2,
            threads: 0,
            preload: true,
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
    /// "auto" (WebSocket where the model or the endpoint needs it), "http" or "websocket".
    pub transport: String,
    /// The run-task WebSocket URL (`…/api-ws/v1/inference`); `{WorkspaceId}` is replaced.
    /// Empty: derived from the HTTP base URL (`https://H/api/v1` → `wss://H/api-ws/v1/inference`).
    pub websocket_base_url: String,
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
            .field("transport", &self.transport)
            .field("websocket_base_url", &self.websocket_base_url)
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
        let t = Tuning::default();
        Self {
            api_key: None,
            api_key_file: None,
            base_url: DEFAULT_DASHSCOPE_BASE_URL.to_owned(),
            workspace_id: None,
            region: String::new(),
            transport: "auto".to_owned(),
            websocket_base_url: String::new(),
            connect_timeout_ms: millis(t.connect_timeout),
            first_event_timeout_ms: millis(t.first_event_timeout),
            idle_timeout_ms: millis(t.idle_timeout),
            max_attempts: t.max_attempts,
            retry_base_ms: millis(t.retry_base),
            lookahead: narrow(t.lookahead),
            cosyvoice_piece_units: narrow(t.cosyvoice_piece_units),
            qwen_piece_units: narrow(t.qwen_piece_units),
            minimax_piece_units: narrow(t.minimax_piece_units),
            max_concurrent_requests: narrow(t.max_concurrent_requests),
            queue_timeout_ms: millis(t.queue_timeout),
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

/// `[http]`: the OpenAI-compatible HTTP door (`POST /v1/audio/speech`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Where to serve it: `IP:PORT` or `unix:PATH`, any number. Empty = not served (default).
    pub listen: Vec<String>,
    /// OpenAI model name → herald model. `tts-1`, `tts-1-hd` and `gpt-4o-mini-tts` not listed
    /// here are the default model (`synthesis.default_model`).
    pub models: std::collections::BTreeMap<String, String>,
    /// OpenAI voice name → herald voice. OpenAI's voices (`alloy`, `nova`, ...) not listed
    /// here are the model's default voice.
    pub voices: std::collections::BTreeMap<String, String>,
}
