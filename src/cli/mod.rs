//! The gRPC client commands of the `herald` binary: `say`, `voices`, `devices`, `stop`,
//! `cache …` and `voice …`.
//!
//! This module owns the command line (the clap types of every command, `serve` and
//! `check-config` included) and the connection to the daemon; each command lives in its own
//! module. A command talks to the daemon only through the public gRPC interface: it must not
//! reach into the daemon's state or the library's internals.

pub(crate) mod cache;
pub(crate) mod devices;
mod play;
pub(crate) mod say;
pub(crate) mod voice;
pub(crate) mod voices;

use std::path::PathBuf;

use secrecy::SecretString;

use clap::{Parser, Subcommand, ValueEnum};
use herald::{
    client::{self, Channel, Target},
    config::{self, Env, LoadOptions, Overrides},
    pb::{self, audio_format::Encoding},
};

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
    Devices(TargetOnly),
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
    Stats(TargetOnly),
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

#[derive(clap::Args, Debug)]
pub(crate) struct TargetOnly {
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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Format {
    Wav,
    Pcm,
    F32,
    Mulaw,
    Alaw,
    /// MP3 (CBR; `--bitrate`).
    Mp3,
    /// Opus in Ogg (`--bitrate`).
    Opus,
    /// FLAC (`--bits 16|24`).
    Flac,
}

impl Format {
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

#[derive(clap::Args, Debug)]
pub(crate) struct SayArgs {
    /// The text to speak; "-" reads it from stdin.
    text: String,
    /// Output file; "-" = stdout (the default when stdout is not a terminal).
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Voice name (see `herald voices`).
    #[arg(long)]
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
    /// Output encoding.
    #[arg(long, value_enum, default_value = "wav")]
    format: Format,
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
    /// Give up after this many seconds (sent as the gRPC deadline).
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    timeout: f64,
    /// Print nothing on success.
    #[arg(short, long)]
    quiet: bool,
    /// Play it on the daemon's output device (through its announcement queue) instead of
    /// writing audio; waits until it has played and prints its events.
    #[arg(long)]
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
