//! The gRPC client commands of the `herald` binary: `say`, `voices`, `devices`, `stop`,
//! `cache …` and `voice …`.
//!
//! This module owns the command line (the clap types of every command, `serve` and
//! `check-config` included) and the connection to the daemon; each command lives in its own
//! module. A command talks to the daemon only through the public gRPC interface: it must not
//! reach into the daemon's state or the library's internals.

pub(crate) mod cache;
pub(crate) mod devices;
mod flags;
mod output;
mod play;
pub(crate) mod say;
mod table;
pub(crate) mod voice;
pub(crate) mod voices;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use herald::{
    client::{self, Channel, Target},
    config::{self, Env, LoadOptions, Overrides},
    pb::{self, audio_format::Encoding},
};
use secrecy::SecretString;

use crate::{EX_UNAVAILABLE, EX_USAGE, Failure, fail};

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Local speech service: text in, audio out over gRPC"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ConfigArgs {
    /// Config file (default: $HERALD_CONFIG, else /etc/herald/herald.toml when it exists).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Listen address, repeatable: unix:PATH or IP:PORT. Replaces server.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Log filter (e.g. info, debug, herald=debug). Replaces log.level.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Model used when a request names none. Replaces synthesis.default_model.
    #[arg(long, value_name = "MODEL")]
    default_model: Option<String>,
    /// Serve loopback TCP listeners without a bearer token (refused for any other address).
    /// Sets server.insecure_no_auth.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (IP:PORT). Replaces server.metrics_listen.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Log format: text (default) or json. Replaces log.format.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Wyoming (Home Assistant) listen address, repeatable: tcp://IP:PORT or unix://PATH.
    /// Replaces wyoming.listen.
    #[arg(long, value_name = "ADDR")]
    wyoming_listen: Vec<String>,
    /// Serve the OpenAI-compatible HTTP API (POST /v1/audio/speech) here, repeatable:
    /// IP:PORT or unix:PATH. Replaces http.listen.
    #[arg(long, value_name = "ADDR")]
    http_listen: Vec<String>,
}

/// The connection settings of every client command: flags here, else `HERALD_*` variables,
/// else the default socket (resolved by [`Target::resolve`]).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub(crate) struct TargetArgs {
    /// The daemon's unix socket [env: HERALD_SOCKET] (default: where `herald serve` puts it).
    #[arg(long, value_name = "PATH", conflicts_with = "addr")]
    socket: Option<PathBuf>,
    /// The daemon's TCP listener, HOST:PORT [env: HERALD_ADDR].
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// The bearer token of a TCP listener [env: HERALD_TOKEN]. Other users can see it in
    /// the process list: prefer --token-file or HERALD_TOKEN.
    #[arg(long, value_name = "TOKEN", value_parser = parse_secret, conflicts_with = "token_file")]
    token: Option<SecretString>,
    /// A file holding the bearer token (surrounding whitespace ignored).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Use TLS (https) over TCP, trusting this PEM CA certificate [env: HERALD_TLS_CA].
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

impl TargetArgs {
    fn settings(self) -> client::Settings {
        client::Settings {
            socket: self.socket,
            addr: self.addr,
            token: self.token,
            token_file: self.token_file,
            tls_ca: self.tls_ca,
        }
    }
}

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the daemon.
    Serve(ConfigArgs),
    /// Validate the configuration and print the effective values (secrets masked).
    CheckConfig(ConfigArgs),
    /// Synthesize TEXT through the daemon and write the audio to a file or stdout.
    Say(Box<SayArgs>),
    /// List the daemon's voices.
    Voices(VoicesArgs),
    /// List the output devices the daemon can play on.
    Devices(ListingArgs),
    /// Stop announcements playing or queued on a device.
    Stop(StopArgs),
    /// Manage the daemon's audio cache: warm, stats, clear, pin, unpin.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Custom voices: clone, design, list, status, delete.
    #[command(subcommand)]
    Voice(voice::VoiceCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum CacheCommand {
    /// Synthesize the phrases of FILE into the cache (skipping those already cached).
    Warm(WarmArgs),
    /// Print the cache's size, limits and counters.
    Stats(ListingArgs),
    /// Remove every entry (pinned ones only with --include-pinned).
    Clear(ClearArgs),
    /// Pin cached phrases: never evicted, never expired.
    Pin(PhraseArgs),
    /// Unpin cached phrases.
    Unpin(PhraseArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct PhraseSource {
    /// Phrases: a text file (one phrase per line; blank lines and lines starting with '#'
    /// skipped) or a .toml file of [[phrase]] tables (text, voice, model, language,
    /// instructions, speed, pitch, emotion, seed).
    #[arg(value_name = "FILE", required_unless_present = "text")]
    file: Option<PathBuf>,
    /// A phrase given on the command line instead of a file (repeatable).
    #[arg(long, conflicts_with = "file")]
    text: Vec<String>,
    /// Voice of plain-text phrases (and of TOML phrases that name none).
    #[arg(long)]
    voice: Option<String>,
    /// Model of plain-text phrases (and of TOML phrases that name none).
    #[arg(long)]
    model: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct WarmArgs {
    #[command(flatten)]
    phrases: PhraseSource,
    /// Pin the warmed phrases.
    #[arg(long)]
    pin: bool,
    /// Synthesize again even when cached.
    #[arg(long)]
    refresh: bool,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PhraseArgs {
    #[command(flatten)]
    phrases: PhraseSource,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ClearArgs {
    /// Remove pinned entries too.
    #[arg(long)]
    include_pinned: bool,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum PriorityArg {
    Important,
    Message,
    Text,
    Notification,
    Progress,
}

/// A command that prints a listing: a table, or JSON with `--json`.
#[derive(clap::Args, Debug)]
pub(crate) struct ListingArgs {
    /// Print one JSON document on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct StopArgs {
    /// Stop everything: the announcement playing and every queued one.
    #[arg(long, conflicts_with = "id")]
    all: bool,
    /// Stop one announcement, playing or queued.
    #[arg(long)]
    id: Option<String>,
    /// The device (default: the daemon's default device).
    #[arg(long)]
    device: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// WAV, 16-bit (.wav).
    Wav,
    /// Raw signed 16-bit little-endian PCM (.pcm, .raw).
    Pcm,
    /// Raw 32-bit float little-endian PCM (.f32).
    F32,
    /// G.711 mu-law, no header (.ulaw, .mulaw, .mu).
    Mulaw,
    /// G.711 A-law, no header (.alaw, .al).
    Alaw,
    /// MP3, constant bitrate (`--bitrate`) (.mp3).
    Mp3,
    /// Opus in Ogg (`--bitrate`) (.opus, .ogg).
    Opus,
    /// FLAC (`--bits 16|24`) (.flac).
    Flac,
}

/// Output file extensions and the formats each may hold, the one inferred first (`.raw` is
/// any headerless format, as for sox).
const EXTENSIONS: &[(&str, &[Format])] = &[
    ("wav", &[Format::Wav]),
    ("pcm", &[Format::Pcm]),
    (
        "raw",
        &[Format::Pcm, Format::F32, Format::Mulaw, Format::Alaw],
    ),
    ("f32", &[Format::F32]),
    ("ulaw", &[Format::Mulaw]),
    ("mulaw", &[Format::Mulaw]),
    ("mu", &[Format::Mulaw]),
    ("alaw", &[Format::Alaw]),
    ("al", &[Format::Alaw]),
    ("mp3", &[Format::Mp3]),
    ("opus", &[Format::Opus]),
    ("ogg", &[Format::Opus]),
    ("flac", &[Format::Flac]),
];

impl Format {
    /// The name `--format` takes.
    fn name(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::Pcm => "pcm",
            Self::F32 => "f32",
            Self::Mulaw => "mulaw",
            Self::Alaw => "alaw",
            Self::Mp3 => "mp3",
            Self::Opus => "opus",
            Self::Flac => "flac",
        }
    }

    /// The format of an output: `--format` when given (it must agree with a known extension
    /// of `output`), else the one `output`'s extension names, else WAV (stdout, or a file
    /// without an extension such as /dev/null). An unknown extension needs `--format`.
    fn resolve(explicit: Option<Self>, output: Option<&Path>) -> Result<Self, String> {
        let ext = output
            .filter(|p| p.as_os_str() != "-")
            .and_then(Path::extension)
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let Some(ext) = ext else {
            return Ok(explicit.unwrap_or(Self::Wav));
        };
        let path = output
            .map(Path::display)
            .map(|p| p.to_string())
            .unwrap_or_default();
        match (EXTENSIONS.iter().find(|(e, _)| *e == ext), explicit) {
            (Some((_, formats)), None) => Ok(formats[0]),
            (Some((_, formats)), Some(f)) if formats.contains(&f) => Ok(f),
            (Some((_, formats)), Some(f)) => Err(format!(
                "--format {} does not match the extension of {path} (.{ext} holds {}): \
                 change one of them",
                f.name(),
                formats
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
            (None, Some(f)) => Ok(f),
            (None, None) => Err(format!(
                "cannot tell the format of {path} from its extension .{ext}: use --format, \
                 or one of the extensions {}",
                EXTENSIONS
                    .iter()
                    .map(|(e, _)| format!(".{e}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        }
    }

    fn encoding(self) -> Encoding {
        match self {
            Self::Wav => Encoding::Wav,
            Self::Pcm => Encoding::PcmS16le,
            Self::F32 => Encoding::PcmF32le,
            Self::Mulaw => Encoding::Mulaw,
            Self::Alaw => Encoding::Alaw,
            Self::Mp3 => Encoding::Mp3,
            Self::Opus => Encoding::OggOpus,
            Self::Flac => Encoding::Flac,
        }
    }
}

/// `--cache`: what the request does with the daemon's cache.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum CacheArg {
    /// Serve from the cache when the phrase is there; store what is synthesized.
    Use,
    /// Synthesize anew and replace the stored entry.
    Refresh,
    /// Neither read nor write the cache.
    Bypass,
}

/// The flags `--play` has no use for (Speak plays at the device's format, through the
/// daemon's defaults).
const NOT_WITH_PLAY: [&str; 11] = [
    "output",
    "speaker",
    "format",
    "rate",
    "channels",
    "bitrate",
    "bits",
    "chunk_ms",
    "word_timestamps",
    "cache",
    "no_fallback",
];

#[derive(clap::Args, Debug)]
pub(crate) struct SayArgs {
    /// The text to speak; read from stdin when absent or "-".
    text: Option<String>,
    /// Output file, written whole or not at all (a failure leaves no partial file and an
    /// existing file untouched); "-" = stdout (the default when stdout is not a terminal).
    /// The extension picks the format (see --format).
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Voice name (see `herald voices`).
    #[arg(short = 'v', long)]
    voice: Option<String>,
    /// Model name (e.g. espeak-ng).
    #[arg(long)]
    model: Option<String>,
    /// Language hint (BCP-47).
    #[arg(long)]
    language: Option<String>,
    /// Speaking instructions (instruction-capable models only).
    #[arg(long)]
    instructions: Option<String>,
    /// Let the upstream rewrite the instructions (qwen3-tts-instruct-flash).
    #[arg(long)]
    optimize_instructions: bool,
    /// Speaker of a multi-speaker piper voice: a name of its speaker map, or a number.
    #[arg(long)]
    speaker: Option<String>,
    /// Emotion (MiniMax models): happy, sad, angry, fearful, disgusted, surprised, calm, whisper.
    #[arg(long)]
    emotion: Option<String>,
    /// Sampling seed, 0..=65535 (CosyVoice models).
    #[arg(long)]
    seed: Option<u32>,
    /// Print each word's timing to stderr ("<begin ms>\t<end ms>\t<word>"; CosyVoice models).
    #[arg(long)]
    word_timestamps: bool,
    /// WORD=PRONUNCIATION, repeatable (CosyVoice v3: pinyin "tian1 qi4"; MiniMax).
    #[arg(long = "pronounce", value_name = "WORD=PRONUNCIATION", value_parser = parse_pair)]
    pronunciations: Vec<(String, String)>,
    /// WORD=REPLACEMENT, repeatable (CosyVoice v3).
    #[arg(long = "replace", value_name = "WORD=REPLACEMENT", value_parser = parse_pair)]
    replacements: Vec<(String, String)>,
    /// Speaking rate multiplier, 0.5..=2.0.
    #[arg(long)]
    speed: Option<f32>,
    /// Pitch multiplier, 0.5..=2.0.
    #[arg(long)]
    pitch: Option<f32>,
    /// Gain multiplier, up to 4.0.
    #[arg(long)]
    volume: Option<f32>,
    /// Output encoding (default: the one -o's extension names, else wav). Must agree with
    /// -o's extension.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Output sample rate in Hz, 8000..=48000 (default: the engine's native rate).
    #[arg(long, value_name = "HZ")]
    rate: Option<u32>,
    /// Output channels, 1 or 2.
    #[arg(long, value_name = "N")]
    channels: Option<u32>,
    /// Bitrate in bits per second for mp3 and opus (default: 64000 mono / 128000 stereo for
    /// mp3, 32000 / 64000 for opus).
    #[arg(long, value_name = "BPS")]
    bitrate: Option<u32>,
    /// Bits per sample for flac: 16 (default) or 24.
    #[arg(long, value_name = "N")]
    bits: Option<u32>,
    /// Chunk duration in ms, 10..=1000.
    #[arg(long, value_name = "MS")]
    chunk_ms: Option<u32>,
    /// Cache policy: use (default), refresh or bypass.
    #[arg(long, value_enum, value_name = "POLICY")]
    cache: Option<CacheArg>,
    /// Fail with the requested engine's error instead of letting a fallback (the cache in
    /// another voice, or espeak-ng) serve the request.
    #[arg(long)]
    no_fallback: bool,
    /// Give up after this many seconds (sent as the gRPC deadline).
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    timeout: f64,
    /// Print nothing on success.
    #[arg(short, long)]
    quiet: bool,
    /// Read the text from stdin as it arrives (an LLM's output piped in) and speak each
    /// sentence as soon as it is complete (SynthesizeStream): the audio is written as it comes,
    /// or, with --play, each sentence is queued on the device (priority message or important).
    #[arg(long)]
    stream: bool,
    /// Play it on the daemon's output device (through its announcement queue) instead of
    /// writing audio; waits until it has played and prints its events.
    #[arg(long, conflicts_with_all = NOT_WITH_PLAY)]
    play: bool,
    /// With --play: priority class.
    #[arg(long, value_enum, requires = "play")]
    priority: Option<PriorityArg>,
    /// With --play: output device (see `herald devices`).
    #[arg(long, requires = "play")]
    device: Option<String>,
    /// With --play: play the chime first.
    #[arg(long, requires = "play")]
    chime: bool,
    /// With --play: silence before the announcement, in ms.
    #[arg(long, value_name = "MS", requires = "play")]
    leading_silence: Option<u32>,
    /// With --play: give up if it has not started after this many ms.
    #[arg(long, value_name = "MS", requires = "play")]
    expires_after: Option<u32>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct VoicesArgs {
    /// Only voices of this model.
    #[arg(long)]
    model: Option<String>,
    /// Only voices speaking this language (BCP-47 prefix).
    #[arg(long)]
    language: Option<String>,
    /// Print one JSON document on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

impl ConfigArgs {
    /// The configuration these flags select, loaded and validated (exit code EX_USAGE when it
    /// is not valid).
    pub(crate) fn load(self) -> Result<config::Config, Failure> {
        let options = LoadOptions {
            config_path: self.config,
            overrides: Overrides {
                listen: self.listen,
                log_level: self.log_level,
                default_model: self.default_model,
                insecure_no_auth: self.insecure_no_auth,
                metrics_listen: self.metrics_listen,
                log_format: self.log_format,
                wyoming_listen: self.wyoming_listen,
                http_listen: self.http_listen,
            },
        };
        config::load(&options, &Env::from_process()).map_err(|e| fail(EX_USAGE, e))
    }
}

async fn connect(target: TargetArgs) -> Result<pb::speech_client::SpeechClient<Channel>, Failure> {
    Ok(pb::speech_client::SpeechClient::new(channel(target).await?))
}

/// A channel to the daemon the connection settings name (exit code EX_USAGE when they are not
/// usable, EX_UNAVAILABLE when the daemon cannot be reached).
async fn channel(target: TargetArgs) -> Result<Channel, Failure> {
    let target = Target::resolve(target.settings(), &Env::from_process()).map_err(|e| {
        let code = match e {
            client::SettingsError::NoSocket { .. } => EX_UNAVAILABLE,
            _ => EX_USAGE,
        };
        fail(code, e)
    })?;
    client::channel(&target)
        .await
        .map_err(|e| fail(EX_UNAVAILABLE, e))
}

/// The message of a call's response, or the call's status as a failure (exit code 1).
async fn response<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Failure> {
    call.await
        .map(tonic::Response::into_inner)
        .map_err(rpc_error)
}

/// A call's status as a failure: exit code 1, or EX_UNAVAILABLE when the call never reached
/// the daemon (the channel says why, e.g. a TLS mismatch found by the first call).
fn rpc_error(status: tonic::Status) -> Failure {
    use std::error::Error as _;
    let unreached = status
        .source()
        .is_some_and(|e| e.is::<client::ConnectError>());
    if unreached {
        return fail(EX_UNAVAILABLE, anyhow::anyhow!("{}", status.message()));
    }
    fail(
        1,
        anyhow::anyhow!("{:?}: {}", status.code(), status.message()),
    )
}

/// `WORD=VALUE` for `--pronounce` / `--replace`.
fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not WORD=VALUE")),
    }
}
