//! Time to first audio byte through gRPC `Synthesize`, DashScope over HTTP/SSE against the
//! WebSocket transport (issue 19): one DashScope test double, two daemons in this process —
//! one with `dashscope.transport = "http"`, one with `"websocket"` — the cache off, so every
//! request reaches the double (100 ms events paced at real time).
//!
//! Rows: CosyVoice (`cosyvoice-v3-flash`) over HTTP/SSE (reqwest's pooled connection) and over
//! run-task on a reused WebSocket connection; Qwen-TTS (`qwen3-tts-flash`) over HTTP/SSE and
//! `qwen3-tts-flash-realtime` over its realtime WebSocket on a pre-opened connection. Each
//! iteration sends the same text through the four rows, one after the other (round-robin), and
//! measures on the client side the time from sending the request to the first audio byte.
//!
//! `cargo bench --bench transport` runs 40 iterations after 3 warm-ups and writes
//! `target/herald-bench/transport.json`; under `cargo test` it runs 2 as a smoke test.

mod common;
#[path = "../tests/it/support/daemon.rs"]
#[allow(dead_code, unused_imports)]
mod daemon;
#[path = "../tests/it/support/dashscope/mod.rs"]
#[allow(dead_code, unused_imports)]
mod dashscope;

use std::time::Duration;

use common::{bench_mode, ms_stats, results_dir};
use daemon::spawn_daemon_on_transport;
use dashscope::{DashScopeDouble, Options};
use futures::StreamExt;
use herald::pb::{self, speech_client::SpeechClient, synthesize_response::Payload};
use serde_json::{Value, json};
use tokio::time::Instant;
use tonic::transport::Channel;

const TEXT: &str = "Doors closing, please stand clear.";
const RATE: u32 = 16_000;
/// (row, model, voice, which daemon: 0 = http, 1 = websocket)
const ROWS: [(&str, &str, &str, usize); 4] = [
    ("cosyvoice_http_sse", "cosyvoice-v3-flash", "longanyang", 0),
    (
        "cosyvoice_websocket_reused",
        "cosyvoice-v3-flash",
        "longanyang",
        1,
    ),
    ("qwen_http_sse", "qwen3-tts-flash", "Cherry", 0),
    (
        "qwen_realtime_websocket",
        "qwen3-tts-flash-realtime",
        "Cherry",
        1,
    ),
];

struct Sample {
    ttfb: Duration,
    end: Duration,
    bytes: usize,
}

async fn once(client: &mut SpeechClient<Channel>, model: &str, voice: &str) -> Sample {
    let req = pb::SynthesizeRequest {
        text: TEXT.to_owned(),
        model: model.to_owned(),
        voice: voice.to_owned(),
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
    let (mut first, mut bytes) = (None, 0);
    while let Some(msg) = stream.next().await {
        if let Some(Payload::Audio(a)) = msg.expect("a message").payload {
            first.get_or_insert_with(|| start.elapsed());
            bytes += a.data.len();
        }
    }
    Sample {
        ttfb: first.expect("audio"),
        end: start.elapsed(),
        bytes,
    }
}

fn summarize(row: &str, model: &str, samples: &[Sample]) -> Value {
    let t = ms_stats(samples.iter().map(|s| s.ttfb));
    let e = ms_stats(samples.iter().map(|s| s.end));
    println!(
        "{row:<28} n={:<3} TTFB p50 {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms | end p50 {:>8.2} ms",
        samples.len(),
        t["p50"].as_f64().unwrap_or(f64::NAN),
        t["p90"].as_f64().unwrap_or(f64::NAN),
        t["max"].as_f64().unwrap_or(f64::NAN),
        e["p50"].as_f64().unwrap_or(f64::NAN),
    );
    json!({
        "row": row,
        "model": model,
        "n": samples.len(),
        "audio_bytes": samples.first().map(|s| s.bytes).unwrap_or(0),
        "ttfb_ms": t,
        "end_ms": e,
    })
}

async fn run(bench: bool) -> Value {
    let (warmups, n) = if bench { (3, 40) } else { (1, 2) };
    let double = DashScopeDouble::start(daemon::API_KEY).await;
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let mut clients = Vec::new();
    let mut daemons = Vec::new();
    for transport in ["http", "websocket"] {
        let d = spawn_daemon_on_transport(&double, transport, &[]).await;
        clients.push(d.client().await);
        daemons.push(d);
    }
    let mut samples: Vec<Vec<Sample>> = ROWS.iter().map(|_| Vec::new()).collect();
    for i in 0..warmups + n {
        for (r, (_, model, voice, d)) in ROWS.iter().enumerate() {
            let s = once(&mut clients[*d], model, voice).await;
            if i >= warmups {
                samples[r].push(s);
            }
        }
    }
    let bytes: Vec<usize> = samples.iter().map(|s| s[0].bytes).collect();
    assert!(
        bytes.iter().all(|&b| b == bytes[0] && b > 0),
        "every row carries the same audio: {bytes:?} bytes"
    );
    let rows: Vec<Value> = ROWS
        .iter()
        .zip(&samples)
        .map(|((row, model, ..), s)| summarize(row, model, s))
        .collect();
    // The WebSocket transport opened one run-task connection for all its CosyVoice requests.
    let handshakes = double.ws_handshakes();
    for d in daemons {
        d.stop().await.expect("daemon stops");
    }
    double.stop().await;
    json!({
        "bench": "transport",
        "text": TEXT,
        "format": format!("PCM s16le {RATE} Hz mono"),
        "upstream": "DashScope test double (tests/it/support/dashscope/), 100 ms audio events paced at real time",
        "warmups": warmups,
        "order": "round-robin per iteration over the rows; cache off; one gRPC channel per daemon",
        "websocket_handshakes": handshakes,
        "rows": rows,
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
        let path = results_dir().join("transport.json");
        std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")).expect("write");
        println!("results: {}", path.display());
    }
}
