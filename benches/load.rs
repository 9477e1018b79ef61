//! The load generator: the real `herald serve` binary (a separate process, so its memory and
//! CPU are its own) in front of the DashScope test double pacing audio at real time.
//!
//! For N = 10, 100, 1000 and 4000 streams in flight (a closed loop: N workers, arrivals spread
//! over one stream's length, each worker running streams back to back; the first stream of
//! each worker warms connections and is not counted) it reports herald's time to first
//! audio (TTFA) against the same requests sent straight to the double (the reference, in the
//! same run), the difference ("added"), errors, throughput, and herald's memory and CPU. Each
//! level gets a fresh herald (limits raised for 4000 streams: `synthesis.max_concurrent`,
//! `dashscope.max_concurrent_requests`, the open-file limit), so its memory figures are its
//! own: idle RSS before the load, peak RSS (sampled every 20 ms), RSS 10 s after the load
//! (1000 streams and up), threads at the peak and the resident part of their stacks, and CPU
//! (utime + stime from `/proc`) per stream. Then the time to first audio of cache hits (1000 in
//! a row), the idle RSS, and start-to-ready (spawn → `READY=1` on a `NOTIFY_SOCKET`, as systemd
//! sees it).
//!
//! `cargo bench --bench load` writes `target/herald-bench/load.json`; under `cargo test` it
//! runs N = 3 and a few hits as a smoke test that checks only that streams carried audio.
//! For comparisons (allocators, one level), `HERALD_BENCH_LEVELS=1000` runs only the listed
//! levels and no start-up or cache figures, `HERALD_BENCH_BIN` names another herald binary and
//! `HERALD_BENCH_HERALD_ENV="K=V K2=V2"` sets variables in herald's environment only; such a
//! run prints its rows and writes `load-compare.json` instead.

mod common;
// The DashScope double of the integration tests (tests/it/support/dashscope); a bench uses
// only part of it.
#[path = "../tests/it/support/dashscope/mod.rs"]
#[allow(dead_code, unused_imports)]
mod dashscope;

use std::{
    os::unix::net::UnixDatagram,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use common::{bench_mode, percentile, results_dir, round};
use dashscope::{DashScopeDouble, Options, TTS_PATH};
use futures::StreamExt;
use herald::pb::{self, speech_client::SpeechClient, synthesize_response::Payload};
use serde_json::{Value, json};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

const KEY: &str = "sk-bench-load";
const MODEL: &str = "cosyvoice-v3-flash";
const VOICE: &str = "longanyang";
/// 50 units × 40 ms: 2 s of audio per stream, 20 events of 100 ms, paced at real time.
const TEXT: &str = "Platform two, the train to the airport is now boarding.";
const RATE: u32 = 16_000;
/// The global allocator of the herald binary under test (src/main.rs; the features of this
/// build are the binary's).
const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else if cfg!(feature = "jemalloc") {
    "jemalloc, background threads, 1 s decay, no tcache"
} else {
    "glibc malloc"
};

/// The herald process under test.
struct Herald {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
    /// Spawn → `READY=1`.
    ready_after: Duration,
    /// The `NOTIFY_SOCKET` (kept open: herald also sends STATUS= and STOPPING=1).
    _notify: UnixDatagram,
}

impl Herald {
    fn start(double: &str, cache: bool) -> Herald {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.path().join("herald.toml");
        std::fs::write(
            &config,
            format!(
                "[synthesis]\nmax_concurrent = 4096\nmax_concurrent_per_peer = 4096\n\
                 [dashscope]\nmax_concurrent_requests = 4096\n\
                 [cache]\nenabled = {cache}\n[fallback]\nchain = []\n[log]\nlevel = \"warn\"\n"
            ),
        )
        .expect("config");
        let notify = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&notify).expect("notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let started = Instant::now();
        let bin = std::env::var_os("HERALD_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_herald").into());
        let mut command = Command::new(bin);
        for pair in std::env::var("HERALD_BENCH_HERALD_ENV")
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Some((k, v)) = pair.split_once('=') {
                command.env(k, v);
            }
        }
        let child = command
            .args(["serve", "--insecure-no-auth", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("HERALD_CONFIG", &config)
            .env("CACHE_DIRECTORY", dir.path().join("cache"))
            .env("NOTIFY_SOCKET", &notify)
            .env("DASHSCOPE_API_KEY", KEY)
            .env("DASHSCOPE_HTTP_BASE_URL", double)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn herald serve");
        let mut buf = [0u8; 4096];
        let ready_after = loop {
            let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                break started.elapsed();
            }
        };
        Herald {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            ready_after,
            _notify: sock,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.addr.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Threads of `pid`.
fn threads(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count() as u64)
}

/// Resident KiB of `pid`'s thread stacks: the read-write anonymous mappings that sit right
/// above a small inaccessible one (a thread stack and its guard page; malloc's arenas have
/// their inaccessible reserve above, not below, and the main stack is named `[stack]`).
fn stack_rss_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    // The end of the previous mapping when it was a small inaccessible one (a guard page).
    let mut guard_end = None;
    let mut counting = false;
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let perms = parts.next().unwrap_or("");
            // offset, device, inode, then a path for a named mapping.
            let anonymous = parts.nth(3).is_none();
            counting = anonymous && perms.starts_with("rw") && guard_end == Some(a);
            guard_end = (perms.starts_with("---") && b - a <= 64 * 1024).then_some(b);
        } else if counting && first == "Rss:" {
            total += parts
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[derive(Default)]
struct Outcome {
    ttfa_ms: Vec<f64>,
    errors: Vec<String>,
    audio_bytes: u64,
}

fn request(cache: pb::CachePolicy) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        text: TEXT.to_owned(),
        model: MODEL.to_owned(),
        voice: VOICE.to_owned(),
        format: Some(pb::AudioFormat {
            encoding: pb::audio_format::Encoding::PcmS16le as i32,
            sample_rate_hz: RATE,
            channels: 1,
        }),
        cache: cache as i32,
        ..Default::default()
    }
}

/// Herald's own view of each stream's time to first audio (`summary.time_to_first_audio_us`).
static SERVER_TTFA_US: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());

/// One stream through herald: TTFA (client side) and audio bytes.
async fn through_herald(
    mut client: SpeechClient<Channel>,
    cache: pb::CachePolicy,
) -> Result<(f64, u64), String> {
    let mut req = tonic::Request::new(request(cache));
    req.set_timeout(Duration::from_secs(60));
    let start = Instant::now();
    let mut stream = client
        .synthesize(req)
        .await
        .map_err(|s| format!("{:?}", s.code()))?
        .into_inner();
    let mut first = None;
    let mut bytes = 0;
    while let Some(msg) = stream.next().await {
        match msg.map_err(|s| format!("{:?}", s.code()))?.payload {
            Some(Payload::Audio(a)) => {
                first.get_or_insert_with(|| start.elapsed().as_secs_f64() * 1e3);
                bytes += a.data.len() as u64;
            }
            Some(Payload::Summary(s)) => {
                SERVER_TTFA_US
                    .lock()
                    .expect("lock")
                    .push(s.time_to_first_audio_us as f64);
            }
            _ => {}
        }
    }
    Ok((first.ok_or("no audio")?, bytes))
}

/// The same request straight to the double over SSE: time to the first audio event.
async fn direct(http: reqwest::Client, base: Arc<str>) -> Result<(f64, u64), String> {
    let body = json!({
        "model": MODEL,
        "input": { "text": TEXT, "voice": VOICE, "format": "pcm", "sample_rate": RATE,
                   "volume": 50, "rate": 1.0, "pitch": 1.0 },
    });
    let start = Instant::now();
    let resp = http
        .post(format!("http://{base}{TTS_PATH}"))
        .bearer_auth(KEY)
        .header("X-DashScope-SSE", "enable")
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body).expect("json"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(resp.status().to_string());
    }
    let mut body = resp.bytes_stream();
    let mut first = None;
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        // Every event is its own body chunk; audio events carry `"data":"<base64>"` (the
        // sentence events an empty `"data":""`).
        if first.is_none() && has_audio(&chunk) {
            first = Some(start.elapsed().as_secs_f64() * 1e3);
        }
        bytes += chunk.len() as u64;
    }
    Ok((first.ok_or("no audio event")?, bytes))
}

fn has_audio(event: &[u8]) -> bool {
    let needle = b"\"data\":\"";
    event
        .windows(needle.len() + 1)
        .any(|w| &w[..needle.len()] == needle && w[needle.len()] != b'"')
}

fn summarize(o: &Outcome) -> Value {
    let mut v = o.ttfa_ms.clone();
    v.sort_by(f64::total_cmp);
    json!({
        "ok": v.len(),
        "errors": o.errors.len(),
        "error_kinds": o.errors.iter().take(5).collect::<Vec<_>>(),
        "ttfa_ms": { "p50": round(percentile(&v, 0.5), 2), "p99": round(percentile(&v, 0.99), 2),
                     "max": round(v.last().copied().unwrap_or(f64::NAN), 2) },
    })
}

/// Streams each worker runs: its first opens connections and warms pools, the others are
/// measured (at 4000 streams one measured round, 4000 samples, keeps the run short).
fn rounds(n: usize) -> usize {
    if n >= 4000 { 2 } else { 3 }
}

/// A closed loop holding `n` streams in flight: worker `i` starts after `i/n` of a stream's
/// length (so arrivals are spread, not one burst), then runs [`rounds`] streams back to back.
/// Only the streams after each worker's first are measured: the steady state.
async fn closed_loop<F, Fut>(n: usize, make: F) -> (Outcome, f64)
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(f64, u64), String>> + Send + 'static,
{
    let spread = Duration::from_millis(2_200);
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let make = make.clone();
            tokio::spawn(async move {
                tokio::time::sleep(spread * i as u32 / n as u32).await;
                let mut results = Vec::new();
                for round in 0..rounds(n) {
                    results.push((round, make(i).await));
                }
                results
            })
        })
        .collect();
    let mut o = Outcome::default();
    for t in tasks {
        for (round, r) in t.await.expect("task") {
            match r {
                Ok((ttfa, bytes)) => {
                    o.audio_bytes += bytes;
                    if round > 0 {
                        o.ttfa_ms.push(ttfa);
                    }
                }
                Err(e) => o.errors.push(e),
            }
        }
    }
    (o, start.elapsed().as_secs_f64())
}

/// `n` streams in flight through herald, sampling its RSS and threads every 20 ms, and its
/// thread stacks once in the steady state.
async fn herald_level(herald: &Herald, n: usize) -> Value {
    let channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..n.div_ceil(100) {
            v.push(herald.channel().await);
        }
        v
    };
    let pid = herald.pid();
    let cpu0 = cpu_secs(pid);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut peak, mut peak_threads) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).0);
                peak_threads = peak_threads.max(threads(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (peak, peak_threads)
        })
    };
    // Every worker has started and is in its second stream: the steady state.
    let snapshot = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(3_300)).await;
        let threads = threads(pid);
        let rss = rss_kib(pid).0;
        let stacks = tokio::task::spawn_blocking(move || stack_rss_kib(pid))
            .await
            .unwrap_or(0);
        json!({ "threads": threads, "rss_mb": round(rss as f64 / 1024.0, 1),
                "thread_stacks_rss_mb": round(stacks as f64 / 1024.0, 1) })
    });
    SERVER_TTFA_US.lock().expect("lock").clear();
    let channels = Arc::new(channels);
    let (o, wall) = closed_loop(n, move |i| {
        let client = SpeechClient::new(channels[i % channels.len()].clone());
        through_herald(client, pb::CachePolicy::Bypass)
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak_kib, peak_threads) = sampler.await.expect("sampler");
    let cpu = cpu_secs(pid) - cpu0;
    let mut server: Vec<f64> = std::mem::take(&mut *SERVER_TTFA_US.lock().expect("lock"));
    server.sort_by(f64::total_cmp);
    let audio_secs = o.audio_bytes as f64 / (2.0 * RATE as f64);
    let streams = n * rounds(n);
    let mut v = summarize(&o);
    v["streams_total"] = json!(streams);
    v["wall_s"] = json!(round(wall, 2));
    v["server_ttfa_ms"] = json!({ "p50": round(percentile(&server, 0.5) / 1e3, 2), "p99": round(percentile(&server, 0.99) / 1e3, 2) });
    v["audio_s_per_s"] = json!(round(audio_secs / wall, 1));
    v["peak_rss_mb"] = json!(round(peak_kib as f64 / 1024.0, 1));
    v["peak_threads"] = json!(peak_threads);
    v["steady_state"] = snapshot.await.unwrap_or(Value::Null);
    v["cpu_cores"] = json!(round(cpu / wall, 2));
    v["cpu_ms_per_stream"] = json!(round(cpu * 1e3 / streams as f64, 2));
    v
}

async fn direct_level(http: &reqwest::Client, base: &str, n: usize) -> Value {
    let base: Arc<str> = Arc::from(base);
    let http = http.clone();
    let (o, wall) = closed_loop(n, move |_| direct(http.clone(), base.clone())).await;
    let mut v = summarize(&o);
    v["wall_s"] = json!(round(wall, 2));
    v
}

fn added(h: &Value, d: &Value, p: &str) -> f64 {
    round(
        h["ttfa_ms"][p].as_f64().unwrap_or(f64::NAN) - d["ttfa_ms"][p].as_f64().unwrap_or(f64::NAN),
        2,
    )
}

/// What `HERALD_BENCH_LEVELS` asks for: stream counts, and `hits` for the cache hits. `None`
/// when unset (the whole run).
fn chosen_levels() -> Option<(Vec<usize>, bool)> {
    let v = std::env::var("HERALD_BENCH_LEVELS").ok()?;
    let items: Vec<&str> = v.split([',', ' ']).filter(|s| !s.is_empty()).collect();
    let levels = items.iter().filter_map(|s| s.parse().ok()).collect();
    Some((levels, items.contains(&"hits")))
}

/// One level on a fresh herald: idle RSS before, the direct reference, the load, RSS 10 s
/// after it.
async fn level(bench: bool, base: &str, http: &reqwest::Client, addr: &str, n: usize) -> Value {
    let herald = Herald::start(base, true);
    tokio::time::sleep(Duration::from_millis(if bench { 1000 } else { 100 })).await;
    let idle_before = rss_kib(herald.pid()).0;
    let d = direct_level(http, addr, n).await;
    let mut h = herald_level(&herald, n).await;
    h["idle_rss_before_mb"] = json!(round(idle_before as f64 / 1024.0, 1));
    if bench && n >= 1000 {
        // `HERALD_BENCH_AFTER_S`: another wait, for comparisons (the report's figure is 10 s).
        let after: u64 = std::env::var("HERALD_BENCH_AFTER_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        tokio::time::sleep(Duration::from_secs(after)).await;
        let (after, hwm) = rss_kib(herald.pid());
        h["rss_10s_after_mb"] = json!(round(after as f64 / 1024.0, 1));
        h["threads_10s_after"] = json!(threads(herald.pid()));
        h["vm_hwm_mb"] = json!(round(hwm as f64 / 1024.0, 1));
    }
    herald.stop();
    json!({
        "streams": n,
        "added_ttfa_ms": { "p50": added(&h, &d, "p50"), "p99": added(&h, &d, "p99") },
        "herald": h,
        "direct_to_double": d,
    })
}

/// Cache hits on a fresh herald: one miss stores the phrase, then `count` hits in a row.
async fn cache_hits(base: &str, count: usize) -> (Value, u64) {
    let herald = Herald::start(base, true);
    let client = SpeechClient::new(herald.channel().await);
    through_herald(client.clone(), pb::CachePolicy::Use)
        .await
        .expect("warm");
    let mut hits = Outcome::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    SERVER_TTFA_US.lock().expect("lock").clear();
    while hits.ttfa_ms.len() < count {
        // The first requests may still miss while the entry is being written.
        let (ttfa, _) = through_herald(client.clone(), pb::CachePolicy::Use)
            .await
            .expect("hit");
        if ttfa < 100.0 || Instant::now() > deadline {
            hits.ttfa_ms.push(ttfa);
        }
    }
    let rss = rss_kib(herald.pid()).0;
    herald.stop();
    let mut server: Vec<f64> = std::mem::take(&mut *SERVER_TTFA_US.lock().expect("lock"));
    // The hits only (the warming miss and any early misses first).
    server.drain(..server.len().saturating_sub(count));
    server.sort_by(f64::total_cmp);
    let mut v = summarize(&hits);
    v["server_ttfa_ms"] = json!({ "p50": round(percentile(&server, 0.5) / 1e3, 3), "p99": round(percentile(&server, 0.99) / 1e3, 3) });
    println!("cache hits: {v}");
    (v, rss)
}

async fn run(bench: bool) -> Value {
    let double = DashScopeDouble::start(KEY).await;
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let base = double.base_url();
    let addr = double.addr().to_string();
    // One pooled client for the direct requests, as herald has one.
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("http client");

    if let Some((levels, hits)) = chosen_levels() {
        let mut rows = Vec::new();
        for n in levels {
            let row = level(bench, &base, &http, &addr, n).await;
            println!("{row}");
            rows.push(row);
        }
        let hits = if hits {
            cache_hits(&base, if bench { 1000 } else { 5 }).await.0
        } else {
            Value::Null
        };
        double.stop().await;
        return json!({
            "bench": "load-compare",
            "binary": std::env::var("HERALD_BENCH_BIN").ok(),
            "herald_env": std::env::var("HERALD_BENCH_HERALD_ENV").ok(),
            "levels": rows,
            "cache_hit": hits,
        });
    }

    // Start-to-ready and idle RSS: fresh processes, cache on (its directory is created).
    let mut ready_ms = Vec::new();
    let mut idle_rss = Vec::new();
    for _ in 0..if bench { 5 } else { 1 } {
        let h = Herald::start(&base, true);
        ready_ms.push(h.ready_after.as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(if bench { 1000 } else { 100 })).await;
        idle_rss.push(rss_kib(h.pid()).0 as f64 / 1024.0);
        h.stop();
    }
    ready_ms.sort_by(f64::total_cmp);
    idle_rss.sort_by(f64::total_cmp);

    let levels: &[usize] = if bench { &[10, 100, 1000, 4000] } else { &[3] };
    let mut rows = Vec::new();
    for &n in levels {
        let row = level(bench, &base, &http, &addr, n).await;
        println!("{row}");
        assert!(
            bench || row["herald"]["ok"] == json!(n * (rounds(n) - 1)),
            "smoke: every stream carried audio: {row}"
        );
        rows.push(row);
    }

    let (hits, rss_after_hits) = cache_hits(&base, if bench { 1000 } else { 5 }).await;
    double.stop().await;

    json!({
        "bench": "load",
        "upstream": "DashScope test double (tests/it/support/dashscope/), CosyVoice SSE, 100 ms events paced at real time",
        "stream": { "text": TEXT, "audio_s": 2.2, "format": "PCM_S16LE 16000 Hz mono", "model": MODEL },
        "allocator": ALLOCATOR,
        "levels": rows,
        "cache_hit": hits,
        "rss_after_cache_hits_mb": round(rss_after_hits as f64 / 1024.0, 1),
        "start_to_ready_ms": { "best": round(ready_ms[0], 1), "p50": round(percentile(&ready_ms, 0.5), 1), "runs": ready_ms.len() },
        "idle_rss_mb": { "p50": round(percentile(&idle_rss, 0.5), 1), "max": round(*idle_rss.last().unwrap_or(&0.0), 1) },
    })
}

fn main() {
    let bench = bench_mode();
    // 4000 streams through herald and 4000 straight to the double: about 16000 sockets here.
    herald::service::conn::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(run(bench));
    if bench {
        let name = if chosen_levels().is_some() {
            "load-compare.json"
        } else {
            "load.json"
        };
        let path = results_dir().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")).expect("write");
        println!("results: {}", path.display());
    } else {
        println!("{out}");
    }
}
