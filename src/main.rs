//! The `herald` binary: `serve` (the daemon), `check-config`, and the gRPC clients `say`,
//! `voices`, `devices`, `stop`, `cache …` and `voice …` (custom voices, `src/cli/voice.rs`). A
//! thin shell over the library; `anyhow` is used here only.

#![forbid(unsafe_code)]

use std::{
    io::{IsTerminal, Seek, SeekFrom, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use herald::{
    client::{self, Target},
    config::{self, Env, LoadOptions, Overrides},
    daemon::Daemon,
    pb::{self, audio_format::Encoding, synthesize_response::Payload},
    service, shutdown, systemd, telemetry,
};

/// sysexits.h EX_USAGE: bad configuration or arguments.
#[path = "cli/voice.rs"]
mod voice_cmd;

const EX_USAGE: u8 = 64;
/// sysexits.h EX_UNAVAILABLE: the daemon cannot be reached.
const EX_UNAVAILABLE: u8 = 69;

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Local speech service: text in, audio out over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct ConfigArgs {
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

#[derive(clap::Args, Debug, Clone)]
struct TargetArgs {
    /// The daemon's unix socket (default: where `herald serve` puts it).
    #[arg(long, value_name = "PATH", conflicts_with = "addr")]
    socket: Option<PathBuf>,
    /// The daemon's TCP address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    Voice(voice_cmd::VoiceCommand),
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
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
struct PhraseSource {
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
struct WarmArgs {
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
struct PhraseArgs {
    #[command(flatten)]
    phrases: PhraseSource,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
struct ClearArgs {
    /// Remove pinned entries too.
    #[arg(long)]
    include_pinned: bool,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PriorityArg {
    Important,
    Message,
    Text,
    Notification,
    Progress,
}

#[derive(clap::Args, Debug)]
struct TargetOnly {
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
struct StopArgs {
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
enum Format {
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
struct SayArgs {
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
struct VoicesArgs {
    /// Only voices of this model.
    #[arg(long)]
    model: Option<String>,
    /// Only voices speaking this language (BCP-47 prefix).
    #[arg(long)]
    language: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            code: 1,
            error: e.into(),
        }
    }
}

fn fail(code: u8, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code,
        error: error.into(),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // systemd socket activation: take the passed sockets while the process has one thread
    // (taking them clears LISTEN_FDS / LISTEN_PID from the environment).
    let activation = matches!(cli.command, Command::Serve(_)).then(service::Activation::from_env);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // Every stream in flight holds one blocking thread (its audio thread) until it ends,
        // and cache reads and writes take one briefly: tokio's default of 512 would queue
        // streams past 512 (measured: 1000 paced streams waited up to 2.7 s for first audio).
        // Threads are made on demand and exit after 10 s idle, so the cap costs nothing idle.
        .max_blocking_threads(herald::config::MAX_CONCURRENT_LIMIT + 256)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args, activation).await,
            Command::CheckConfig(args) => check_config(args),
            Command::Say(args) => say(*args).await,
            Command::Voices(args) => voices(args).await,
            Command::Devices(args) => devices(args).await,
            Command::Stop(args) => stop(args).await,
            Command::Cache(command) => cache_command(command).await,
            Command::Voice(command) => voice_cmd::run(command).await,
        }
    });
    // Do not wait for lingering blocking threads (an audio thread finishing a cancelled job).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`herald voices | head`): done, as for any Unix
        // filter.
        Err(Failure { error, .. }) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("herald: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn load_config(args: ConfigArgs) -> Result<config::Config, Failure> {
    let options = LoadOptions {
        config_path: args.config,
        overrides: Overrides {
            listen: args.listen,
            log_level: args.log_level,
            default_model: args.default_model,
            insecure_no_auth: args.insecure_no_auth,
            metrics_listen: args.metrics_listen,
            log_format: args.log_format,
        },
    };
    config::load(&options, &Env::from_process()).map_err(|e| fail(EX_USAGE, e))
}

fn check_config(args: ConfigArgs) -> Result<(), Failure> {
    let config = load_config(args)?;
    print!("{}", config.render());
    Ok(())
}

async fn serve(args: ConfigArgs, activation: Option<service::Activation>) -> Result<(), Failure> {
    // Before anything slow: a SIGTERM during start-up must stop us cleanly too.
    let stop = shutdown::signal();
    let config = load_config(args)?;
    telemetry::init(&config.log_level, config.log_format);
    let daemon = Daemon::from_config(&config)
        .await
        .map_err(|e| fail(EX_USAGE, e))?;
    let listeners = match activation.filter(|a| !a.is_empty()) {
        Some(activation) => {
            tracing::info!(
                sockets = activation.len(),
                "socket activation: serving on the sockets systemd passed (server.listen ignored)"
            );
            activation.listeners()
        }
        None => service::bind_with(&config.listen, config.socket_mode, config.socket_group).await,
    }
    .map_err(|e| fail(EX_UNAVAILABLE, e))?;
    let metrics_stop = shutdown::CancellationToken::new();
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))
            .map_err(|e| fail(EX_UNAVAILABLE, e))?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "metrics are served without authentication on a non-loopback address");
        }
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics at /metrics");
        let refresh = daemon.metrics_refresh();
        let stop = metrics_stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(error) = herald::metrics::serve(listener, refresh, stop).await {
                tracing::error!(%error, "the metrics listener failed");
            }
        });
    }
    let addrs: Vec<String> = listeners.iter().map(|l| l.addr().to_string()).collect();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), listen = %addrs.join(", "), "herald ready");
    // Every listener is bound (connections queue from now on): tell systemd (Type=notify).
    systemd::ready(&format!("serving on {}", addrs.join(", ")));
    let watchdog = systemd::watchdog();
    let stop = async move {
        stop.await;
        systemd::stopping();
    };
    let result = daemon.serve(listeners, stop).await;
    metrics_stop.cancel();
    if let Some(w) = watchdog {
        w.abort();
    }
    result?;
    Ok(())
}

async fn connect(
    target: TargetArgs,
) -> Result<pb::speech_client::SpeechClient<tonic::transport::Channel>, Failure> {
    Ok(pb::speech_client::SpeechClient::new(channel(target).await?))
}

async fn channel(target: TargetArgs) -> Result<tonic::transport::Channel, Failure> {
    let target = Target::resolve(target.socket, target.addr, &Env::from_process())
        .map_err(|m| fail(EX_UNAVAILABLE, anyhow::anyhow!(m)))?;
    client::channel(&target)
        .await
        .with_context(|| format!("cannot connect to herald at {target}"))
        .map_err(|e| fail(EX_UNAVAILABLE, e))
}

fn rpc_error(status: tonic::Status) -> Failure {
    fail(
        1,
        anyhow::anyhow!("{:?}: {}", status.code(), status.message()),
    )
}

async fn say(args: SayArgs) -> Result<(), Failure> {
    let text = if args.text == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading text from stdin")?
    } else {
        args.text.clone()
    };
    if args.play {
        return play(args, text).await;
    }
    let to_stdout = match &args.output {
        Some(p) => p.as_os_str() == "-",
        None if std::io::stdout().is_terminal() => {
            return Err(fail(
                EX_USAGE,
                anyhow::anyhow!(
                    "refusing to write audio to a terminal: use -o FILE, or -o - to force stdout"
                ),
            ));
        }
        None => true,
    };
    let mut client = connect(args.target.clone()).await?;
    let mut request = tonic::Request::new(pb::SynthesizeRequest {
        text,
        voice: args.voice.clone().unwrap_or_default(),
        model: args.model.clone().unwrap_or_default(),
        language: args.language.clone().unwrap_or_default(),
        instructions: args.instructions.clone().unwrap_or_default(),
        speed: args.speed.unwrap_or(0.0),
        pitch: args.pitch.unwrap_or(0.0),
        volume: args.volume.unwrap_or(0.0),
        format: Some(pb::AudioFormat {
            encoding: args.format.encoding() as i32,
            sample_rate_hz: args.rate.unwrap_or(0),
            channels: args.channels.unwrap_or(0),
        }),
        chunk_ms: args.chunk_ms.unwrap_or(0),
        request_id: String::new(),
        bitrate_bps: args.bitrate.unwrap_or(0),
        bits_per_sample: args.bits.unwrap_or(0),
        emotion: args.emotion.clone().unwrap_or_default(),
        seed: args.seed.unwrap_or(0),
        word_timestamps: args.word_timestamps,
        pronunciations: args.pronunciations.iter().cloned().collect(),
        replacements: args.replacements.iter().cloned().collect(),
        optimize_instructions: args.optimize_instructions,
        cache: pb::CachePolicy::Unspecified as i32,
        no_fallback: false,
    });
    if args.timeout > 0.0 {
        let timeout = std::time::Duration::try_from_secs_f64(args.timeout).map_err(|_| {
            fail(
                EX_USAGE,
                anyhow::anyhow!(
                    "--timeout {} is not a usable number of seconds",
                    args.timeout
                ),
            )
        })?;
        request.set_timeout(timeout);
    }
    let mut stream = client
        .synthesize(request)
        .await
        .map_err(rpc_error)?
        .into_inner();

    let mut file = if to_stdout {
        None
    } else if let Some(path) = &args.output {
        Some((
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
            path.clone(),
        ))
    } else {
        None
    };
    let mut stdout = std::io::stdout().lock();
    let mut info = None;
    let mut summary = None;
    while let Some(message) = stream.next().await {
        match message.map_err(rpc_error)?.payload {
            Some(Payload::Info(i)) => info = Some(i),
            Some(Payload::Audio(chunk)) => match &mut file {
                Some((f, path)) => f
                    .write_all(&chunk.data)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => {
                    stdout.write_all(&chunk.data).context("writing to stdout")?;
                    stdout.flush().context("writing to stdout")?;
                }
            },
            Some(Payload::Words(w)) => {
                for word in w.words {
                    eprintln!("{}\t{}\t{}", word.begin_ms, word.end_ms, word.text);
                }
            }
            Some(Payload::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    let Some(summary) = summary else {
        return Err(fail(
            1,
            anyhow::anyhow!("the stream ended without a summary"),
        ));
    };
    if let Some((f, path)) = &mut file {
        if matches!(args.format, Format::Wav) {
            // A file can be sought: replace the streaming header's "unknown" sizes.
            patch_wav_sizes(f, summary.bytes)
                .with_context(|| format!("finishing {}", path.display()))?;
        }
        f.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.quiet {
        let where_to = file
            .as_ref()
            .map_or_else(|| "stdout".to_owned(), |(_, p)| p.display().to_string());
        let (model, voice, fmt) = info.as_ref().map_or_else(Default::default, |i| {
            let f = i.format.unwrap_or_default();
            (
                i.model.clone(),
                i.voice.clone(),
                format!(
                    "{} {} Hz {} ch",
                    Encoding::try_from(f.encoding).map_or("?", |e| e.as_str_name()),
                    f.sample_rate_hz,
                    f.channels
                ),
            )
        });
        eprintln!(
            "herald: wrote {where_to}: {:.2} s of {fmt}, {model}/{voice}, first audio after {:.0} ms",
            summary.duration_ms as f64 / 1000.0,
            summary.time_to_first_audio_us as f64 / 1000.0,
        );
    }
    Ok(())
}

/// Write the real RIFF and data sizes into a 44-byte WAV header at the start of `f`.
fn patch_wav_sizes(f: &mut std::fs::File, total_bytes: u64) -> std::io::Result<()> {
    let data = u32::try_from(total_bytes.saturating_sub(44)).unwrap_or(u32::MAX);
    let riff = data.saturating_add(36);
    f.seek(SeekFrom::Start(4))?;
    f.write_all(&riff.to_le_bytes())?;
    f.seek(SeekFrom::Start(40))?;
    f.write_all(&data.to_le_bytes())?;
    f.seek(SeekFrom::End(0))?;
    Ok(())
}

/// `herald say --play`: Speak, printing events to stderr; exit 0 once FINISHED, 1 otherwise.
async fn play(args: SayArgs, text: String) -> Result<(), Failure> {
    use pb::speak_event::Event as E;
    let mut client = connect(args.target.clone()).await?;
    let priority = match args.priority {
        None => pb::Priority::Unspecified,
        Some(PriorityArg::Important) => pb::Priority::Important,
        Some(PriorityArg::Message) => pb::Priority::Message,
        Some(PriorityArg::Text) => pb::Priority::Text,
        Some(PriorityArg::Notification) => pb::Priority::Notification,
        Some(PriorityArg::Progress) => pb::Priority::Progress,
    };
    let mut stream = client
        .speak(pb::SpeakRequest {
            text,
            voice: args.voice.clone().unwrap_or_default(),
            model: args.model.clone().unwrap_or_default(),
            language: args.language.clone().unwrap_or_default(),
            instructions: args.instructions.clone().unwrap_or_default(),
            speed: args.speed.unwrap_or(0.0),
            pitch: args.pitch.unwrap_or(0.0),
            volume: args.volume.unwrap_or(0.0),
            priority: priority as i32,
            device: args.device.clone().unwrap_or_default(),
            chime: if args.chime {
                pb::Chime::Play
            } else {
                pb::Chime::Default
            } as i32,
            leading_silence_ms: args.leading_silence.unwrap_or(0),
            expires_after_ms: args.expires_after.unwrap_or(0),
            // The CLI waits for the announcement: Ctrl-C stops it.
            cancel_on_disconnect: true,
            id: String::new(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut err = std::io::stderr().lock();
    while let Some(event) = stream.message().await.map_err(rpc_error)? {
        let (text, done, ok) = match event.event {
            Some(E::Queued(q)) => (
                format!("queued on {} at position {}", q.device, q.position),
                false,
                true,
            ),
            Some(E::Started(_)) => ("started".to_owned(), false, true),
            Some(E::Finished(f)) => (format!("finished after {} ms", f.played_ms), true, true),
            Some(E::Interrupted(i)) => (
                format!(
                    "interrupted after {} ms{}",
                    i.played_ms,
                    if i.by_id.is_empty() {
                        String::new()
                    } else {
                        format!(" by {}", i.by_id)
                    }
                ),
                true,
                false,
            ),
            Some(E::Dropped(_)) => (
                "dropped by the queue's priority rules".to_owned(),
                true,
                false,
            ),
            Some(E::Expired(_)) => ("expired before it could start".to_owned(), true, false),
            Some(E::Failed(f)) => (format!("failed: {}", f.message), true, false),
            None => continue,
        };
        if !args.quiet || !ok {
            writeln!(err, "herald: {}: {text}", event.id)?;
        }
        if done {
            return if ok {
                Ok(())
            } else {
                Err(fail(
                    1,
                    anyhow::anyhow!("the announcement did not play to the end"),
                ))
            };
        }
    }
    Err(fail(
        1,
        anyhow::anyhow!("the daemon ended the stream early"),
    ))
}

async fn devices(args: TargetOnly) -> Result<(), Failure> {
    let mut client = connect(args.target).await?;
    let response = client
        .list_output_devices(pb::ListOutputDevicesRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "  {:<36} {:<24} {:<10} DESCRIPTION",
        "DEVICE", "RATES", "CHANNELS"
    )?;
    for d in response.devices {
        let list = |v: &[u32]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            }
        };
        writeln!(
            out,
            "{} {:<36} {:<24} {:<10} {}",
            if d.is_default { "*" } else { " " },
            d.name,
            list(&d.sample_rates_hz),
            list(&d.channels),
            d.description
        )?;
    }
    Ok(())
}

async fn stop(args: StopArgs) -> Result<(), Failure> {
    use pb::stop_speaking_request::Scope;
    let mut client = connect(args.target).await?;
    let scope = match (&args.id, args.all) {
        (Some(_), _) => Scope::Id,
        (None, true) => Scope::All,
        (None, false) => Scope::Current,
    };
    let response = client
        .stop_speaking(pb::StopSpeakingRequest {
            scope: scope as i32,
            id: args.id.unwrap_or_default(),
            device: args.device.unwrap_or_default(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    for id in response.stopped_ids {
        writeln!(out, "{id}")?;
    }
    Ok(())
}

async fn voices(args: VoicesArgs) -> Result<(), Failure> {
    let mut client = connect(args.target).await?;
    let response = client
        .list_voices(pb::ListVoicesRequest {
            model: args.model.unwrap_or_default(),
            language: args.language.unwrap_or_default(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<12} {:<8} {:>6}  {:<28} LANGUAGES",
        "VOICE", "MODEL", "GENDER", "RATE", "NAME"
    )?;
    for v in response.voices {
        writeln!(
            out,
            "{:<24} {:<12} {:<8} {:>6}  {:<28} {}",
            v.name,
            v.model,
            if v.gender.is_empty() { "-" } else { &v.gender },
            v.native_sample_rate_hz,
            v.display_name,
            v.languages.join(",")
        )?;
    }
    Ok(())
}

/// One `[[phrase]]` of a TOML phrase file.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PhraseEntry {
    text: String,
    #[serde(default)]
    voice: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    language: String,
    #[serde(default)]
    instructions: String,
    #[serde(default)]
    speed: f32,
    #[serde(default)]
    pitch: f32,
    #[serde(default)]
    emotion: String,
    #[serde(default)]
    seed: u32,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PhraseFile {
    #[serde(default)]
    phrase: Vec<PhraseEntry>,
}

fn read_phrases(src: &PhraseSource) -> Result<Vec<pb::SynthesizeRequest>, Failure> {
    let plain = |text: String| pb::SynthesizeRequest {
        text,
        voice: src.voice.clone().unwrap_or_default(),
        model: src.model.clone().unwrap_or_default(),
        ..Default::default()
    };
    let Some(path) = &src.file else {
        return Ok(src.text.iter().cloned().map(plain).collect());
    };
    let content = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(|e| fail(EX_USAGE, e))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let file: PhraseFile = toml::from_str(&content)
            .with_context(|| format!("{} is not a phrase file", path.display()))
            .map_err(|e| fail(EX_USAGE, e))?;
        return Ok(file
            .phrase
            .into_iter()
            .map(|p| pb::SynthesizeRequest {
                text: p.text,
                voice: if p.voice.is_empty() {
                    src.voice.clone().unwrap_or_default()
                } else {
                    p.voice
                },
                model: if p.model.is_empty() {
                    src.model.clone().unwrap_or_default()
                } else {
                    p.model
                },
                language: p.language,
                instructions: p.instructions,
                speed: p.speed,
                pitch: p.pitch,
                emotion: p.emotion,
                seed: p.seed,
                ..Default::default()
            })
            .collect());
    }
    Ok(content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| plain(l.to_owned()))
        .collect())
}

async fn connect_cache(
    target: TargetArgs,
) -> Result<pb::cache_client::CacheClient<tonic::transport::Channel>, Failure> {
    Ok(pb::cache_client::CacheClient::new(channel(target).await?))
}

/// Print one line per phrase; an error when any phrase failed.
fn print_results(
    results: &[pb::CacheEntryResult],
    texts: &[String],
    verb: &str,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let mut failures = 0;
    for (r, text) in results.iter().zip(texts) {
        if r.code == 0 {
            let state = if r.was_cached && verb == "warmed" {
                "cached"
            } else {
                verb
            };
            writeln!(
                out,
                "{state:<8} {:>7} ms {:>9} B{} {}",
                r.duration_ms,
                r.bytes,
                if r.pinned { " pinned" } else { "       " },
                text
            )?;
        } else {
            failures += 1;
            writeln!(
                out,
                "failed   {:?}: {}  {}",
                tonic::Code::from(r.code),
                r.message,
                text
            )?;
        }
    }
    if failures > 0 {
        return Err(fail(
            1,
            anyhow::anyhow!("{failures} of {} phrases failed", results.len()),
        ));
    }
    Ok(())
}

async fn cache_command(command: CacheCommand) -> Result<(), Failure> {
    match command {
        CacheCommand::Warm(args) => {
            let (pin, refresh) = (args.pin, args.refresh);
            per_phrase(
                &args.phrases,
                args.target,
                "warmed",
                |mut client, phrases| async move {
                    client
                        .warm_cache(pb::WarmCacheRequest {
                            phrases,
                            pin,
                            refresh,
                        })
                        .await
                        .map(|r| r.into_inner().results)
                },
            )
            .await
        }
        CacheCommand::Pin(args) => pin(args, true).await,
        CacheCommand::Unpin(args) => pin(args, false).await,
        CacheCommand::Stats(args) => {
            let mut client = connect_cache(args.target).await?;
            let s = client
                .get_cache_stats(pb::GetCacheStatsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            let mut out = std::io::stdout().lock();
            writeln!(out, "directory       {}", s.directory)?;
            writeln!(out, "entries         {}", s.entries)?;
            writeln!(out, "bytes           {} of {}", s.bytes, s.max_bytes)?;
            writeln!(
                out,
                "pinned          {} entries, {} bytes",
                s.pinned_entries, s.pinned_bytes
            )?;
            writeln!(
                out,
                "max age         {}",
                if s.max_age_s == 0 {
                    "none".to_owned()
                } else {
                    format!("{} s", s.max_age_s)
                }
            )?;
            writeln!(out, "hits            {}", s.hits)?;
            writeln!(out, "misses          {}", s.misses)?;
            writeln!(out, "shared calls    {}", s.shared_calls)?;
            writeln!(out, "stored          {}", s.stored)?;
            writeln!(out, "evicted         {}", s.evicted)?;
            writeln!(out, "expired         {}", s.expired)?;
            writeln!(out, "corrupt         {}", s.corrupt)?;
            Ok(())
        }
        CacheCommand::Clear(args) => {
            let mut client = connect_cache(args.target).await?;
            let r = client
                .clear_cache(pb::ClearCacheRequest {
                    include_pinned: args.include_pinned,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            writeln!(
                std::io::stdout().lock(),
                "removed {} entries ({} bytes); kept {} pinned",
                r.removed_entries,
                r.removed_bytes,
                r.kept_pinned
            )?;
            Ok(())
        }
    }
}

async fn pin(args: PhraseArgs, pinned: bool) -> Result<(), Failure> {
    let verb = if pinned { "pinned" } else { "unpinned" };
    per_phrase(
        &args.phrases,
        args.target,
        verb,
        |mut client, phrases| async move {
            client
                .pin_cache(pb::PinCacheRequest { phrases, pinned })
                .await
                .map(|r| r.into_inner().results)
        },
    )
    .await
}

/// Read the phrases, send them in batches the daemon takes (`call` per batch), print one line
/// per phrase.
async fn per_phrase<F, Fut>(
    source: &PhraseSource,
    target: TargetArgs,
    verb: &str,
    mut call: F,
) -> Result<(), Failure>
where
    F: FnMut(
        pb::cache_client::CacheClient<tonic::transport::Channel>,
        Vec<pb::SynthesizeRequest>,
    ) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<pb::CacheEntryResult>, tonic::Status>>,
{
    let phrases = read_phrases(source)?;
    let texts: Vec<String> = phrases.iter().map(|p| p.text.clone()).collect();
    let client = connect_cache(target).await?;
    let mut results = Vec::with_capacity(phrases.len());
    for batch in phrases.chunks(service::cache::MAX_PHRASES) {
        results.extend(
            call(client.clone(), batch.to_vec())
                .await
                .map_err(rpc_error)?,
        );
    }
    print_results(&results, &texts, verb)
}

/// `WORD=VALUE` for `--pronounce` / `--replace`.
fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not WORD=VALUE")),
    }
}
