//! Shared test support: an in-process daemon on loopback TCP and a temp unix socket, the
//! generated Rust client, and small audio analysis helpers.
#![allow(dead_code)]

pub mod alsa;
pub mod dashscope;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use futures::StreamExt;
use herald::{
    config::{self, Env, ListenAddr, LoadOptions, Overrides},
    pb::{self, speech_client::SpeechClient, synthesize_response::Payload},
    service::{self, Daemon, ServeError},
};
use rustfft::{FftPlanner, num_complex::Complex};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

/// A daemon running in this process.
pub struct TestDaemon {
    pub tcp: SocketAddr,
    pub unix: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

/// Start a daemon with the default configuration plus `env` (HERALD_* variables).
pub async fn spawn_daemon_with(env: &[(&str, &str)]) -> TestDaemon {
    spawn_daemon_config("", env).await
}

/// Start a daemon with the configuration file `toml` plus `env`.
pub async fn spawn_daemon_config(toml: &str, env: &[(&str, &str)]) -> TestDaemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("herald.sock");
    let config_file = dir.path().join("herald.toml");
    if !toml.is_empty() {
        std::fs::write(&config_file, toml).expect("write config");
    }
    let options = LoadOptions {
        config_path: Some(config_file).filter(|p| p.exists()),
        overrides: Overrides {
            listen: vec!["127.0.0.1:0".to_owned(), format!("unix:{}", sock.display())],
            insecure_no_auth: true,
            ..Overrides::default()
        },
    };
    // Every daemon gets its own cache directory (unless the test names one).
    let cache_dir = dir.path().join("cache").display().to_string();
    let mut pairs: Vec<(&str, &str)> = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "CACHE_DIRECTORY") {
        pairs.push(("CACHE_DIRECTORY", &cache_dir));
    }
    // ... and its own state directory (the custom-voice registry).
    let state_dir = dir.path().join("state").display().to_string();
    if !env.iter().any(|(k, _)| *k == "STATE_DIRECTORY") {
        pairs.push(("STATE_DIRECTORY", &state_dir));
    }
    let config = config::load(&options, &Env::from_pairs(pairs)).expect("config");
    let daemon = Daemon::from_config(&config).await.expect("daemon");
    let listeners = service::bind(&config.listen, config.socket_mode)
        .await
        .expect("bind");
    let tcp = listeners
        .iter()
        .find_map(|l| match l.addr() {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        })
        .expect("tcp listener");
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(daemon.serve(listeners, async {
        let _ = rx.await;
    }));
    TestDaemon {
        tcp,
        unix: sock,
        shutdown: Some(tx),
        join: Some(join),
        _dir: dir,
    }
}

/// Start a daemon with the default configuration.
pub async fn spawn_daemon() -> TestDaemon {
    spawn_daemon_with(&[]).await
}

impl TestDaemon {
    /// A client over TCP.
    pub async fn client(&self) -> SpeechClient<Channel> {
        let ch = Endpoint::from_shared(format!("http://{}", self.tcp))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect tcp");
        SpeechClient::new(ch)
    }

    /// A raw channel over the unix socket.
    pub async fn unix_channel(&self) -> Channel {
        Endpoint::from_shared(format!("unix://{}", self.unix.display()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect unix")
    }

    /// A client over the unix socket.
    pub async fn unix_client(&self) -> SpeechClient<Channel> {
        SpeechClient::new(self.unix_channel().await)
    }

    /// Signal shutdown and wait for `serve` to return (bounded).
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let join = self.join.take().expect("join handle");
        tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .expect("daemon stops within 10 s")
            .expect("serve task")
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Everything one Synthesize call returned.
#[derive(Debug, Default)]
pub struct Collected {
    pub info: Option<pb::AudioInfo>,
    pub chunks: Vec<pb::AudioChunk>,
    pub summary: Option<pb::SynthesisSummary>,
    /// Word timings, over all `words` messages.
    pub words: Vec<pb::WordTiming>,
    /// Order of the payload kinds: 'i', 'a', 'w', 's'.
    pub order: String,
}

impl Collected {
    pub fn bytes(&self) -> Vec<u8> {
        self.chunks
            .iter()
            .flat_map(|c| c.data.iter().copied())
            .collect()
    }
    pub fn info(&self) -> &pb::AudioInfo {
        self.info.as_ref().expect("info")
    }
    pub fn summary(&self) -> &pb::SynthesisSummary {
        self.summary.as_ref().expect("summary")
    }
    pub fn format(&self) -> pb::AudioFormat {
        self.info().format.expect("format")
    }
}

/// Call Synthesize and collect the whole stream.
pub async fn synthesize(
    client: &mut SpeechClient<Channel>,
    req: pb::SynthesizeRequest,
) -> Result<Collected, tonic::Status> {
    let mut stream = client.synthesize(req).await?.into_inner();
    let mut out = Collected::default();
    while let Some(msg) = stream.next().await {
        match msg?.payload.expect("payload") {
            Payload::Info(i) => {
                out.order.push('i');
                out.info = Some(i);
            }
            Payload::Audio(a) => {
                out.order.push('a');
                out.chunks.push(a);
            }
            Payload::Words(w) => {
                out.order.push('w');
                out.words.extend(w.words);
            }
            Payload::Summary(s) => {
                out.order.push('s');
                out.summary = Some(s);
            }
        }
    }
    Ok(out)
}

/// A request for `text` in `encoding` at `rate` Hz and `channels`.
pub fn request(
    text: &str,
    encoding: pb::audio_format::Encoding,
    rate: u32,
    channels: u32,
) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        text: text.to_owned(),
        format: Some(pb::AudioFormat {
            encoding: encoding as i32,
            sample_rate_hz: rate,
            channels,
        }),
        ..Default::default()
    }
}

pub fn s16_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

pub fn f32le_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// Fraction of 20 ms windows whose RMS is above -40 dBFS: speech has many, silence none.
pub fn voiced_fraction(mono: &[f32], rate: u32) -> f64 {
    let win = (rate / 50) as usize;
    let windows: Vec<&[f32]> = mono.chunks(win).collect();
    if windows.is_empty() {
        return 0.0;
    }
    let voiced = windows.iter().filter(|w| rms(w) > 0.01).count();
    voiced as f64 / windows.len() as f64
}

/// Replace the "unknown" (0xFFFFFFFF) sizes of a streamed 44-byte WAV header with real ones,
/// as a client writing a file does.
pub fn patch_wav_sizes(mut wav: Vec<u8>) -> Vec<u8> {
    let data = (wav.len() - 44) as u32;
    wav[4..8].copy_from_slice(&(data + 36).to_le_bytes());
    wav[40..44].copy_from_slice(&data.to_le_bytes());
    wav
}

/// Processes that are children of this process and run `name`, with their state letter.
pub fn children_named(name: &str) -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        let state = rest.first().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = rest.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if comm == name && ppid == me {
            out.push((pid, state));
        }
    }
    out
}

/// `herald serve` as a separate process (the real binary), listening on a temp unix socket.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Start the binary with the default configuration and no API key, and wait (up to 10 s)
    /// for its socket.
    pub fn start(extra_args: &[&str]) -> Self {
        Self::start_with("# empty: defaults\n", extra_args, &[])
    }

    /// Start the binary with the configuration file `toml`, `extra_args` after `serve` and
    /// `env` added to (or, for `DASHSCOPE_API_KEY`, replacing) the environment.
    pub fn start_with(toml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_inner(toml, extra_args, env, false)
    }

    /// [`ServeProcess::start_with`], with stderr (the daemon's log) written to
    /// [`ServeProcess::log`]'s file.
    pub fn start_logged(toml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_inner(toml, extra_args, env, true)
    }

    /// What the daemon has logged so far (only for [`ServeProcess::start_logged`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn start_inner(toml: &str, extra_args: &[&str], env: &[(&str, &str)], logged: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("herald.sock");
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, toml).expect("write config");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(extra_args)
            .env("HERALD_CONFIG", &config)
            .env("CACHE_DIRECTORY", dir.path().join("cache"))
            .env_remove("DASHSCOPE_API_KEY")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stderr(if logged {
                std::process::Stdio::from(
                    std::fs::File::create(dir.path().join("stderr.log")).expect("log file"),
                )
            } else {
                std::process::Stdio::inherit()
            })
            .spawn()
            .expect("spawn herald serve");
        let mut me = Self { child, socket, dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !me.socket.exists() {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("herald serve exited early: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald serve did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// A client over its unix socket.
    pub async fn client(&self) -> SpeechClient<Channel> {
        let ch = Endpoint::from_shared(format!("unix://{}", self.socket.display()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect unix");
        SpeechClient::new(ch)
    }

    /// Send SIGTERM and wait for the exit status (bounded).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald serve ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Frequency of the strongest component, in Hz: Hann window + parabolic interpolation on the
/// log magnitude. With one second of audio the bins are 1 Hz apart.
pub fn peak_frequency(x: &[f32], rate: u32) -> f64 {
    let n = x.len();
    let mut buf: Vec<Complex<f64>> = x
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos();
            Complex::new(f64::from(*s) * w, 0.0)
        })
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let mags: Vec<f64> = buf[..n / 2]
        .iter()
        .map(|c| c.norm().max(1e-30).ln())
        .collect();
    let k = (1..mags.len() - 1)
        .max_by(|a, b| mags[*a].total_cmp(&mags[*b]))
        .expect("bins");
    let (a, b, c) = (mags[k - 1], mags[k], mags[k + 1]);
    let delta = 0.5 * (a - c) / (a - 2.0 * b + c);
    (k as f64 + delta) * f64::from(rate) / n as f64
}

// ---- Speak ----

/// A `Speak` request for `text` on the fake DashScope's qwen3-tts-flash.
pub fn speak_request(id: &str, text: &str, priority: pb::Priority) -> pb::SpeakRequest {
    pb::SpeakRequest {
        text: text.to_owned(),
        model: "qwen3-tts-flash".to_owned(),
        voice: "Cherry".to_owned(),
        priority: priority as i32,
        id: id.to_owned(),
        ..Default::default()
    }
}

/// A `Speak` stream's events until the final one.
pub async fn speak_events(
    stream: &mut tonic::Streaming<pb::SpeakEvent>,
) -> Vec<pb::speak_event::Event> {
    use pb::speak_event::Event as E;
    let mut out = Vec::new();
    while let Some(ev) = stream.message().await.expect("event") {
        let e = ev.event.expect("event set");
        let last = !matches!(e, E::Queued(_) | E::Started(_));
        out.push(e);
        if last {
            break;
        }
    }
    out
}

/// Read a `Speak` stream up to its STARTED event.
pub async fn until_started(stream: &mut tonic::Streaming<pb::SpeakEvent>) {
    use pb::speak_event::Event as E;
    loop {
        match stream.message().await.unwrap().unwrap().event.unwrap() {
            E::Started(_) => return,
            E::Queued(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// Non-silent runs (start, len) in frames of mono audio at `rate`; silences shorter than
/// `join_ms` join runs.
pub fn segments(x: &[f32], rate: u32, join_ms: u32) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    let min_gap = (rate * join_ms / 1000) as usize;
    while i < x.len() {
        if x[i].abs() < 1e-4 {
            i += 1;
            continue;
        }
        let start = i;
        let mut quiet = 0;
        while i < x.len() && quiet < min_gap {
            quiet = if x[i].abs() < 1e-4 { quiet + 1 } else { 0 };
            i += 1;
        }
        out.push((start, i - quiet - start));
    }
    out
}
