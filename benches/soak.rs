//! Soak: mixed traffic at a steady rate against the real binary (`herald serve`) and the fake
//! DashScope double of tests/it/support, for a long time, with the daemon's RSS, open file descriptors,
//! threads and alive tokio tasks sampled at a fixed interval into a CSV. The run fails if any
//! of them trends upward after the warm-up, or if any request ends in a status that its kind
//! of traffic cannot explain.
//!
//! - `cargo bench --bench soak -- --duration 3600` — the documented hour (release build);
//!   options: `--duration S`, `--rate N` (requests per second), `--interval S` (sampling),
//!   `--warmup S`, `--seed N`, `--csv PATH` (default `target/herald-soak/soak.csv`).
//! - Under `cargo test` (no `--bench`, no `--duration`) it runs a 20 s smoke with 2 s samples
//!   and checks the traffic outcomes and the CSV, not the trend (too short to mean anything).
//!
//! Traffic, per request (seeded): 50 % a short sentence read whole; 15 % cancelled after the
//! first audio chunk; 10 % a long text (several upstream pieces); 15 % with an upstream fault
//! queued just before it (any request may meet it: retries, RESOURCE_EXHAUSTED, UNAVAILABLE,
//! INTERNAL are all explained); 10 % an invalid request (unknown voice → INVALID_ARGUMENT).
//! Output encodings rotate over PCM, WAV, MP3 and Ogg/Opus so every encoder runs.
//!
//! The trend test, per metric, over the samples after the warm-up: the least-squares slope,
//! times the post-warm-up duration, is the fitted growth; the run fails when the fitted growth
//! exceeds the metric's tolerance AND the mean of the last third of the samples exceeds the
//! mean of the first third by that tolerance too (a real leak does both; one noisy sample or a
//! late burst of concurrent streams does not). Tolerances: RSS 8 MiB + 5 % of its mean; fds,
//! threads and tasks 4 + 10 % of their mean.

// The DashScope double of the integration tests (tests/it/support/dashscope); a bench uses
// only part of it.
#[path = "../tests/it/support/dashscope/mod.rs"]
#[allow(dead_code, unused_imports)]
mod dashscope;

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashscope::*;
use futures::StreamExt;
use herald::pb::{self, audio_format::Encoding, speech_client::SpeechClient};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

const KEY: &str = "sk-soak-0000111122223333444455556666";

struct Args {
    duration: u64,
    rate: f64,
    interval: u64,
    warmup: u64,
    seed: u64,
    csv: PathBuf,
    /// Check the trend (false in the smoke run).
    trend: bool,
}

fn parse_args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .map(String::as_str)
    };
    let long = argv.iter().any(|a| a == "--bench") || value("--duration").is_some();
    let duration: u64 = value("--duration")
        .map(|v| v.parse().expect("--duration: seconds"))
        .unwrap_or(if long { 3600 } else { 20 });
    Args {
        duration,
        rate: value("--rate")
            .map(|v| v.parse().expect("--rate: requests per second"))
            .unwrap_or(4.0),
        interval: value("--interval")
            .map(|v| v.parse().expect("--interval: seconds"))
            .unwrap_or(if long { 10 } else { 2 }),
        warmup: value("--warmup")
            .map(|v| v.parse().expect("--warmup: seconds"))
            .unwrap_or((duration / 5).clamp(4, 300)),
        seed: value("--seed")
            .map(|v| v.parse().expect("--seed: a number"))
            .unwrap_or(9),
        csv: value("--csv").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/herald-soak/soak.csv")
        }),
        trend: long,
    }
}

/// Outcome counters.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    cancelled: AtomicU64,
    expected_error: AtomicU64,
    unexpected: AtomicU64,
    skipped: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Short,
    Cancel,
    Long,
    Fault,
    Invalid,
}

const MODELS: [(&str, &str); 3] = [
    ("cosyvoice-v3-flash", "longanyang"),
    ("qwen3-tts-flash", "Cherry"),
    ("MiniMax/speech-2.8-hd", "male-qn-qingse"),
];

const FORMATS: [(Encoding, u32, u32); 4] = [
    (Encoding::PcmS16le, 16000, 1),
    (Encoding::Wav, 48000, 2),
    (Encoding::Mp3, 24000, 1),
    (Encoding::OggOpus, 48000, 1),
];

fn random_fault(rng: &mut StdRng) -> FaultKind {
    match rng.random_range(0..8) {
        0 => FaultKind::HttpError {
            status: 429,
            code: "Throttling.RateQuota".into(),
            message: "soak".into(),
        },
        1 => FaultKind::HttpError {
            status: 503,
            code: "ModelUnavailable".into(),
            message: "soak".into(),
        },
        2 => FaultKind::DropAfter {
            frames: rng.random_range(0..3),
        },
        3 => FaultKind::StallAfter { frames: 1 },
        4 => FaultKind::BadJsonAfter { frames: 1 },
        5 => FaultKind::BadBase64After { frames: 1 },
        6 => FaultKind::CorruptAudio,
        _ => FaultKind::SseErrorAfter {
            frames: 0,
            http_status_comment: 500,
            code: "InternalError".into(),
            message: "soak".into(),
        },
    }
}

/// Codes a request of `kind` may end with besides OK. Any request may meet a queued fault
/// (faults are taken in arrival order), so the fault codes are allowed for every kind.
fn explained(kind: Kind, code: Code) -> bool {
    matches!(
        code,
        Code::ResourceExhausted | Code::Unavailable | Code::Internal
    ) || matches!((kind, code), (Kind::Invalid, Code::InvalidArgument))
}

async fn one(
    mut client: SpeechClient<Channel>,
    kind: Kind,
    i: u64,
    model: (&'static str, &'static str),
    format: (Encoding, u32, u32),
    counts: Arc<Counts>,
) {
    let text = match kind {
        Kind::Long => {
            "A longer announcement goes on for a while, sentence after sentence. ".repeat(4)
        }
        _ => format!("Soak request {i} says a short sentence."),
    };
    let voice = match kind {
        Kind::Invalid => "no-such-voice-anywhere",
        _ => model.1,
    };
    let mut req = tonic::Request::new(pb::SynthesizeRequest {
        text,
        model: model.0.to_owned(),
        voice: voice.to_owned(),
        format: Some(pb::AudioFormat {
            encoding: format.0 as i32,
            sample_rate_hz: format.1,
            channels: format.2,
        }),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(120));
    let result = async {
        let mut stream = client.synthesize(req).await?.into_inner();
        let mut audio = 0;
        while let Some(m) = stream.next().await {
            if let Some(pb::synthesize_response::Payload::Audio(_)) = m?.payload {
                audio += 1;
                if matches!(kind, Kind::Cancel) {
                    return Ok(false);
                }
            }
        }
        Ok::<_, tonic::Status>(audio > 0)
    }
    .await;
    let counter = match result {
        Ok(true) => &counts.ok,
        Ok(false) => &counts.cancelled,
        Err(s) if explained(kind, s.code()) => &counts.expected_error,
        Err(s) => {
            eprintln!("soak: unexpected status for {kind:?} #{i}: {s:?}");
            &counts.unexpected
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

fn proc_value(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn scrape(port: u16, name: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return f64::NAN;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// One sample: seconds since start, RSS KiB, fds, threads, tasks, active streams.
type Sample = [f64; 6];
const COLUMNS: [&str; 6] = [
    "t_s",
    "rss_kib",
    "fds",
    "threads",
    "tasks",
    "active_streams",
];

async fn sample(pid: u32, port: u16, start: Instant) -> Sample {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as f64)
        .unwrap_or(f64::NAN);
    [
        start.elapsed().as_secs_f64(),
        proc_value(pid, "VmRSS"),
        fds,
        proc_value(pid, "Threads"),
        scrape(port, "herald_runtime_tasks").await,
        scrape(port, "herald_active_streams").await,
    ]
}

/// Fitted growth over the window and last-third minus first-third mean of column `c`.
fn trend(samples: &[Sample], c: usize) -> (f64, f64, f64) {
    let n = samples.len() as f64;
    let mt = samples.iter().map(|s| s[0]).sum::<f64>() / n;
    let my = samples.iter().map(|s| s[c]).sum::<f64>() / n;
    let cov: f64 = samples.iter().map(|s| (s[0] - mt) * (s[c] - my)).sum();
    let var: f64 = samples.iter().map(|s| (s[0] - mt).powi(2)).sum();
    let span = samples.last().unwrap()[0] - samples[0][0];
    let growth = if var > 0.0 { cov / var * span } else { 0.0 };
    let third = (samples.len() / 3).max(1);
    let mean = |s: &[Sample]| s.iter().map(|x| x[c]).sum::<f64>() / s.len() as f64;
    let delta = mean(&samples[samples.len() - third..]) - mean(&samples[..third]);
    (growth, delta, my)
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let failed = rt.block_on(run(args));
    if failed {
        std::process::exit(1);
    }
}

async fn run(args: Args) -> bool {
    let double = DashScopeDouble::start(KEY).await;
    // Streams take real time, so that streams overlap as they would in production.
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("herald.sock");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "[dashscope]\nretry_base_ms = 20\nidle_timeout_ms = 1500\nfirst_event_timeout_ms = 2000\n\
         [cache]\nenabled = false\n[fallback]\nchain = []\n",
    )
    .expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("HERALD_CONFIG", &config)
        .env("CACHE_DIRECTORY", dir.path().join("cache"))
        .env("DASHSCOPE_API_KEY", KEY)
        .env("DASHSCOPE_HTTP_BASE_URL", double.base_url())
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn herald serve");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "herald serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let client = SpeechClient::new(channel);

    let counts = Arc::new(Counts::default());
    // Bounded in-flight: a stuck daemon shows up as skipped requests, not a growing client.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(48));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    let mut next_sample = start;
    let mut samples: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.01)));
    let mut i = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        tick.tick().await;
        if Instant::now() >= next_sample {
            samples.push(sample(pid, port, start).await);
            next_sample += Duration::from_secs(args.interval);
        }
        while tasks.try_join_next().is_some() {}
        i += 1;
        let kind = match rng.random_range(0..100) {
            0..50 => Kind::Short,
            50..65 => Kind::Cancel,
            65..75 => Kind::Long,
            75..90 => Kind::Fault,
            _ => Kind::Invalid,
        };
        if matches!(kind, Kind::Fault) {
            double.push_fault(Fault::once(random_fault(&mut rng)));
        }
        let model = MODELS[rng.random_range(0..MODELS.len())];
        let format = FORMATS[rng.random_range(0..FORMATS.len())];
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            counts.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (client, counts) = (client.clone(), Arc::clone(&counts));
        tasks.spawn(async move {
            one(client, kind, i, model, format, counts).await;
            drop(permit);
        });
    }
    // Let the last streams end, then one last sample.
    let _ = tokio::time::timeout(Duration::from_secs(150), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    double.clear_faults();
    samples.push(sample(pid, port, start).await);

    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    double.stop().await;

    // The CSV.
    if let Some(parent) = args.csv.parent() {
        std::fs::create_dir_all(parent).expect("CSV directory");
    }
    let mut csv = std::fs::File::create(&args.csv).expect("CSV file");
    writeln!(csv, "{}", COLUMNS.join(",")).unwrap();
    for s in &samples {
        let row: Vec<String> = s.iter().map(|v| format!("{v:.1}")).collect();
        writeln!(csv, "{}", row.join(",")).unwrap();
    }

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "soak: {} s at {}/s, {i} requests: {} ok, {} cancelled, {} expected errors, {} \
         unexpected, {} skipped (in-flight cap); {} samples → {}",
        args.duration,
        args.rate,
        load(&counts.ok),
        load(&counts.cancelled),
        load(&counts.expected_error),
        load(&counts.unexpected),
        load(&counts.skipped),
        samples.len(),
        args.csv.display()
    );
    let mut failed = load(&counts.unexpected) > 0;
    if load(&counts.ok) == 0 {
        println!("soak: FAIL: no request was served");
        failed = true;
    }
    let after: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s[0] >= args.warmup as f64)
        .collect();
    if !args.trend {
        println!("soak: smoke run, trend not checked");
        return failed;
    }
    if after.len() < 6 {
        println!(
            "soak: FAIL: {} samples after the warm-up, need 6",
            after.len()
        );
        return true;
    }
    for (c, name) in COLUMNS.iter().enumerate().skip(1).take(4) {
        let (growth, delta, mean) = trend(&after, c);
        let tolerance = if c == 1 {
            8.0 * 1024.0 + 0.05 * mean
        } else {
            4.0 + 0.10 * mean
        };
        let leak = growth > tolerance && delta > tolerance;
        println!(
            "soak: {name}: mean {mean:.1}, fitted growth {growth:+.1}, last-third minus \
             first-third {delta:+.1}, tolerance {tolerance:.1}: {}",
            if leak { "FAIL (trends upward)" } else { "flat" }
        );
        failed |= leak;
    }
    println!("soak: {}", if failed { "FAILED" } else { "passed" });
    failed
}
