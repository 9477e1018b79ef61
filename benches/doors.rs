//! Time to first audio byte through each of herald's three doors against gRPC's (issue 20):
//! one daemon in this process, its DashScope engines calling the test double (100 ms events
//! paced at real time), with the gRPC, OpenAI-compatible HTTP and Wyoming doors on loopback
//! TCP, the cache off so that every request reaches the double.
//!
//! Each iteration sends the same request (text, model, voice, PCM s16le 16 kHz mono) through
//! gRPC, then HTTP, then Wyoming, one after the other (round-robin, so machine noise hits the
//! three alike), and measures on the client side the time from sending the request to the first
//! audio byte (TTFB) and to the end of the response. Every client keeps its connection across
//! requests (tonic's channel, reqwest's pool, one Wyoming TCP stream), as a long-lived caller
//! does.
//!
//! `cargo bench --bench doors` runs 40 iterations after 3 warm-ups and writes
//! `target/herald-bench/doors.json`; under `cargo test` (no `--bench` argument) it runs 2 as a
//! smoke test that checks only that every door carried audio.

mod common;
// The DashScope double and the in-process daemon of the integration tests
// (tests/it/support/); a bench uses only part of them.
#[path = "../tests/it/support/daemon.rs"]
#[allow(dead_code, unused_imports)]
mod daemon;
#[path = "../tests/it/support/dashscope/mod.rs"]
#[allow(dead_code, unused_imports)]
mod dashscope;

use std::time::Duration;

use common::{bench_mode, ms_stats, results_dir, round};
use daemon::{ENGINES_ONLY, FAST_UPSTREAM, TestDaemon, layered, spawn_daemon_with_double};
use dashscope::Options;
use futures::StreamExt;
use herald::{
    config::ListenAddr,
    pb::{self, speech_client::SpeechClient, synthesize_response::Payload},
};
use serde_json::{Map, Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    time::Instant,
};
use tonic::transport::Channel;

const MODEL: &str = "cosyvoice-v3-flash";
const VOICE: &str = "longanyang";
/// About 1 s of the double's audio (40 ms per unit), 100 ms events paced at real time.
const TEXT: &str = "Doors closing, please stand clear.";
const RATE: u32 = 16_000;
const DOORS: [&str; 3] = ["grpc", "http", "wyoming"];

/// One request through one door, client side.
struct Sample {
    /// Request sent → first audio byte received.
    ttfb: Duration,
    /// Request sent → end of the response.
    end: Duration,
    /// Audio bytes received.
    bytes: usize,
}

// === gRPC ===

async fn grpc(client: &mut SpeechClient<Channel>) -> Sample {
    let req = pb::SynthesizeRequest {
        text: TEXT.to_owned(),
        model: MODEL.to_owned(),
        voice: VOICE.to_owned(),
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
        .expect("grpc synthesize")
        .into_inner();
    let (mut first, mut bytes) = (None, 0);
    while let Some(msg) = stream.next().await {
        if let Some(Payload::Audio(a)) = msg.expect("grpc message").payload
            && !a.data.is_empty()
        {
            first.get_or_insert_with(|| start.elapsed());
            bytes += a.data.len();
        }
    }
    Sample {
        ttfb: first.expect("grpc: audio"),
        end: start.elapsed(),
        bytes,
    }
}

// === HTTP (OpenAI-compatible) ===

async fn http(client: &reqwest::Client, url: &str) -> Sample {
    let body = json!({
        "model": MODEL,
        "voice": VOICE,
        "input": TEXT,
        "response_format": "pcm",
        "sample_rate": RATE,
    });
    let body = serde_json::to_vec(&body).expect("json");
    let start = Instant::now();
    let resp = client
        .post(url)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("http request");
    assert!(resp.status().is_success(), "http: {}", resp.status());
    let mut stream = resp.bytes_stream();
    let (mut first, mut bytes) = (None, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("http body");
        if !chunk.is_empty() {
            first.get_or_insert_with(|| start.elapsed());
            bytes += chunk.len();
        }
    }
    Sample {
        ttfb: first.expect("http: audio"),
        end: start.elapsed(),
        bytes,
    }
}

// === Wyoming ===

/// A minimal Wyoming client: a JSON header line, then `data_length` bytes of JSON data, then
/// `payload_length` bytes of payload per event (rhasspy/wyoming `event.py`).
struct Wyoming {
    stream: BufReader<TcpStream>,
    line: String,
}

impl Wyoming {
    async fn connect(addr: std::net::SocketAddr) -> Wyoming {
        let tcp = TcpStream::connect(addr).await.expect("wyoming connect");
        tcp.set_nodelay(true).expect("nodelay");
        Wyoming {
            stream: BufReader::new(tcp),
            line: String::new(),
        }
    }

    /// The next event: its type and payload length (the payload itself is read and dropped).
    async fn event(&mut self) -> (String, usize) {
        self.line.clear();
        let n = self
            .stream
            .read_line(&mut self.line)
            .await
            .expect("wyoming read");
        assert!(n > 0, "wyoming: connection closed");
        let header: Map<String, Value> =
            serde_json::from_str(self.line.trim_end()).expect("wyoming header");
        let len = |k: &str| header.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
        let (data_len, payload_len) = (len("data_length"), len("payload_length"));
        let mut skip = vec![0u8; data_len + payload_len];
        self.stream
            .read_exact(&mut skip)
            .await
            .expect("wyoming data");
        let kind = header["type"].as_str().expect("type").to_owned();
        if kind == "error" {
            panic!("wyoming error event: {}", self.line.trim_end());
        }
        (kind, payload_len)
    }

    async fn synthesize(&mut self) -> Sample {
        let mut req = json!({
            "type": "synthesize",
            "data": { "text": TEXT, "voice": { "name": format!("{MODEL}/{VOICE}") } },
        })
        .to_string();
        req.push('\n');
        let start = Instant::now();
        let tcp = self.stream.get_mut();
        tcp.write_all(req.as_bytes()).await.expect("wyoming write");
        tcp.flush().await.expect("wyoming flush");
        let (mut first, mut bytes) = (None, 0);
        loop {
            match self.event().await {
                (kind, n) if kind == "audio-chunk" && n > 0 => {
                    first.get_or_insert_with(|| start.elapsed());
                    bytes += n;
                }
                (kind, _) if kind == "audio-stop" => break,
                _ => {}
            }
        }
        Sample {
            ttfb: first.expect("wyoming: audio"),
            end: start.elapsed(),
            bytes,
        }
    }
}

// === summary ===

fn summarize(door: &str, samples: &[Sample]) -> Value {
    let t = ms_stats(samples.iter().map(|s| s.ttfb));
    let e = ms_stats(samples.iter().map(|s| s.end));
    println!(
        "{door:<8} n={:<3} TTFB p50 {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms | end p50 {:>8.2} ms  p90 {:>8.2} ms",
        samples.len(),
        t["p50"].as_f64().unwrap_or(f64::NAN),
        t["p90"].as_f64().unwrap_or(f64::NAN),
        t["max"].as_f64().unwrap_or(f64::NAN),
        e["p50"].as_f64().unwrap_or(f64::NAN),
        e["p90"].as_f64().unwrap_or(f64::NAN),
    );
    json!({
        "door": door,
        "n": samples.len(),
        "audio_bytes": samples.first().map(|s| s.bytes).unwrap_or(0),
        "ttfb_ms": t,
        "end_ms": e,
    })
}

async fn run(bench: bool) -> Value {
    let (warmups, n) = if bench { (3, 40) } else { (1, 2) };
    let toml = layered(&[
        FAST_UPSTREAM,
        ENGINES_ONLY,
        "[http]\nlisten = [\"127.0.0.1:0\"]\n",
        &format!("[wyoming]\nlisten = [\"tcp://127.0.0.1:0\"]\nsample_rate = {RATE}\n"),
    ]);
    let (double, daemon): (_, TestDaemon) = spawn_daemon_with_double(&toml).await;
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let mut grpc_client = daemon.client().await;
    let http_client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .http1_only()
        .build()
        .expect("http client");
    let url = format!(
        "http://{}/v1/audio/speech",
        daemon.http.expect("the HTTP door")
    );
    let wyoming_addr = daemon
        .wyoming
        .iter()
        .find_map(|a| match a {
            ListenAddr::Tcp(t) => Some(*t),
            ListenAddr::Unix(_) => None,
        })
        .expect("the Wyoming door on TCP");
    let mut wyoming = Wyoming::connect(wyoming_addr).await;

    let mut samples: [Vec<Sample>; 3] = Default::default();
    for i in 0..warmups + n {
        let round = [
            grpc(&mut grpc_client).await,
            http(&http_client, &url).await,
            wyoming.synthesize().await,
        ];
        if i >= warmups {
            for (door, s) in samples.iter_mut().zip(round) {
                door.push(s);
            }
        }
    }
    let bytes: Vec<usize> = samples.iter().map(|s| s[0].bytes).collect();
    assert!(
        bytes.iter().all(|&b| b == bytes[0] && b > 0),
        "every door carries the same audio: {bytes:?} bytes"
    );
    let doors: Vec<Value> = DOORS
        .iter()
        .zip(&samples)
        .map(|(d, s)| summarize(d, s))
        .collect();
    let grpc_p50 = doors[0]["ttfb_ms"]["p50"].as_f64().unwrap_or(f64::NAN);
    let doors: Vec<Value> = doors
        .into_iter()
        .map(|mut d| {
            let p50 = d["ttfb_ms"]["p50"].as_f64().unwrap_or(f64::NAN);
            d["ttfb_p50_over_grpc"] = json!(round(p50 / grpc_p50, 2));
            d
        })
        .collect();
    for d in &doors {
        println!(
            "{:<8} p50 TTFB / gRPC's: {}",
            d["door"].as_str().unwrap_or(""),
            d["ttfb_p50_over_grpc"]
        );
    }
    daemon.stop().await.expect("daemon stops");
    double.stop().await;
    json!({
        "bench": "doors",
        "text": TEXT,
        "model": MODEL,
        "voice": VOICE,
        "format": format!("PCM s16le {RATE} Hz mono"),
        "upstream": "DashScope test double (tests/it/support/dashscope/), CosyVoice SSE, 100 ms events paced at real time",
        "warmups": warmups,
        "order": "round-robin per iteration: grpc, http, wyoming; cache off; one connection per door kept across requests",
        "doors": doors,
    })
}

fn main() {
    let bench = bench_mode();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(run(bench));
    if bench {
        let path = results_dir().join("doors.json");
        std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")).expect("write");
        println!("results: {}", path.display());
    }
}
