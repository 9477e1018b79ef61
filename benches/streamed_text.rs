//! Time to first audio for an LLM's answer fed at an LLM's pace (issue 19): `SynthesizeStream`
//! against waiting for the whole text and then calling `Synthesize`.
//!
//! One daemon in this process, its DashScope engine (CosyVoice) calling the test double (no
//! pacing, so the audio's length does not count), the cache off. The answer is five sentences
//! cut into "tokens" of 4 characters, one every 1/30 s (30 tokens/s). Each iteration runs both
//! ways, one after the other:
//! - stream: the tokens go out on one `SynthesizeStream` call as they are "generated"; TTFA is
//!   from the first token to the first audio byte, and "after sentence" from the token that
//!   completes the first sentence (its following space included, which makes the end certain)
//!   to the first audio byte;
//! - whole: the client waits until the last token was generated, then calls `Synthesize` with
//!   the whole text; TTFA from the first token to the first audio byte;
//! - stream over WebSocket: the same as "stream", to a second daemon against the same double
//!   under `transport = "auto"` with the double's WebSocket URL, so the text goes into one
//!   run-task task (a `continue-task` per sentence) instead of a request per sentence.
//!
//! Then, per transport and engine family, the first sentence's latency: a client sends the
//! first sentence cut before its last characters, then the piece that completes it (its
//! following space, which makes the end certain); herald's figure is from sending that piece
//! to the first audio byte at the client, the upstream's own from the double receiving the
//! sentence (the HTTP request; the WebSocket `continue-task` / `append`) to its first audio
//! frame. Rows: CosyVoice over HTTP/SSE (`transport = "http"`, a request per sentence) and over
//! one run-task WebSocket task (`auto`, streamed text), Qwen-TTS (`qwen3-tts-flash`) over
//! HTTP/SSE and `qwen3-tts-flash-realtime` over one realtime session. Target: herald ≤ the
//! upstream's first audio + 5 ms.
//!
//! `cargo bench --bench streamed_text` runs 10 iterations after 1 warm-up (the first-sentence
//! rows 20 after 2) and writes
//! `target/herald-bench/streamed_text.json`; under `cargo test` it runs one at 300 tokens/s as
//! a smoke test.

mod common;
#[path = "../tests/it/support/daemon.rs"]
#[allow(dead_code, unused_imports)]
mod daemon;
#[path = "../tests/it/support/dashscope/mod.rs"]
#[allow(dead_code, unused_imports)]
mod dashscope;

use std::time::Duration;

use common::{bench_mode, percentile, results_dir, round};
use daemon::spawn_daemon_on_transport;
use dashscope::DashScopeDouble;
use futures::StreamExt;
use herald::pb::{
    self, audio_format::Encoding, speech_client::SpeechClient, synthesize_response::Payload,
    synthesize_stream_request::Payload as In,
};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const MODEL: &str = "cosyvoice-v3-flash";
const VOICE: &str = "longanyang";
const ANSWER: &str = "The train to the airport leaves from platform four. It departs every \
                      fifteen minutes until midnight. Tickets are sold at the machines near the \
                      entrance. You can also pay with a contactless card at the gate. Have a \
                      pleasant trip and thank you for asking.";
const TOKEN_CHARS: usize = 4;

fn config() -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: MODEL.into(),
        voice: VOICE.into(),
        format: Some(pb::AudioFormat {
            encoding: Encoding::PcmS16le as i32,
            sample_rate_hz: 16_000,
            channels: 1,
        }),
        ..Default::default()
    }
}

fn tokens() -> Vec<String> {
    let chars: Vec<char> = ANSWER.chars().collect();
    chars
        .chunks(TOKEN_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

/// (TTFA from the first token, from the token completing the first sentence), ms.
async fn stream(client: &mut SpeechClient<Channel>, every: Duration) -> (f64, f64) {
    let tokens = tokens();
    let first_end = ANSWER.find(". ").expect("a first sentence") + 2;
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::SynthesizeStreamRequest {
        payload: Some(In::Config(config())),
    })
    .await
    .unwrap();
    let mut responses = client
        .synthesize_stream(ReceiverStream::new(rx))
        .await
        .expect("call")
        .into_inner();
    let start = Instant::now();
    let feeder = tokio::spawn(async move {
        let mut sent = 0;
        let mut completed_at = None;
        for (i, token) in tokens.into_iter().enumerate() {
            tokio::time::sleep_until(start + every * i as u32).await;
            sent += token.len();
            tx.send(pb::SynthesizeStreamRequest {
                payload: Some(In::Text(token)),
            })
            .await
            .unwrap();
            if completed_at.is_none() && sent >= first_end {
                completed_at = Some(Instant::now());
            }
        }
        completed_at.expect("the first sentence was sent")
    });
    let mut first_audio = None;
    while let Some(m) = responses.next().await {
        if let Some(Payload::Audio(_)) = m.expect("stream").payload
            && first_audio.is_none()
        {
            first_audio = Some(Instant::now());
        }
    }
    let completed_at = feeder.await.unwrap();
    let first_audio = first_audio.expect("audio");
    (
        ms(first_audio.saturating_duration_since(start)),
        ms(first_audio.saturating_duration_since(completed_at)),
    )
}

/// TTFA from the first token when the client waits for the whole text, ms.
async fn whole(client: &mut SpeechClient<Channel>, every: Duration) -> f64 {
    let start = Instant::now();
    let n = tokens().len() as u32;
    tokio::time::sleep_until(start + every * (n - 1)).await;
    let mut responses = client
        .synthesize(pb::SynthesizeRequest {
            text: ANSWER.into(),
            ..config()
        })
        .await
        .expect("call")
        .into_inner();
    let mut first_audio = None;
    while let Some(m) = responses.next().await {
        if let Some(Payload::Audio(_)) = m.expect("synthesize").payload
            && first_audio.is_none()
        {
            first_audio = Some(Instant::now());
        }
    }
    ms(first_audio.expect("audio").saturating_duration_since(start))
}

/// (row, model, voice, daemon: 0 = `transport = "http"`, 1 = `"auto"` with the double's
/// WebSocket URL; the text streamed upstream)
const FIRST_ROWS: [(&str, &str, &str, usize, bool); 4] = [
    ("cosyvoice_http_sse_per_sentence", MODEL, VOICE, 0, false),
    ("cosyvoice_websocket_streamed", MODEL, VOICE, 1, true),
    (
        "qwen_http_sse_per_sentence",
        "qwen3-tts-flash",
        "Cherry",
        0,
        false,
    ),
    (
        "qwen_realtime_websocket_streamed",
        "qwen3-tts-flash-realtime",
        "Cherry",
        1,
        true,
    ),
];
const FIRST: &str = "Doors closing, please stand clear.";
const FIRST_CUT: usize = 4;

/// (herald: the piece completing the first sentence sent → its first audio byte at the
/// client; the upstream: the sentence received → its first audio frame sent), ms.
async fn first_sentence(
    client: &mut SpeechClient<Channel>,
    double: &DashScopeDouble,
    model: &str,
    voice: &str,
    streamed: bool,
) -> (f64, f64) {
    let (tx, rx) = mpsc::channel(64);
    let send = |payload| pb::SynthesizeStreamRequest {
        payload: Some(payload),
    };
    tx.send(send(In::Config(pb::SynthesizeRequest {
        model: model.into(),
        voice: voice.into(),
        ..config()
    })))
    .await
    .unwrap();
    let mut responses = client
        .synthesize_stream(ReceiverStream::new(rx))
        .await
        .expect("call")
        .into_inner();
    let cut = FIRST.len() - FIRST_CUT;
    tx.send(send(In::Text(FIRST[..cut].into()))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let sent_at = Instant::now();
    tx.send(send(In::Text(format!("{} ", &FIRST[cut..]))))
        .await
        .unwrap();
    let mut first_audio = None;
    while let Some(m) = responses.next().await {
        if let Some(Payload::Audio(_)) = m.expect("stream").payload {
            first_audio = Some(Instant::now());
            break;
        }
    }
    let herald = ms(first_audio
        .expect("audio")
        .saturating_duration_since(sent_at));
    tx.send(send(In::Text("The next one leaves soon.".into())))
        .await
        .unwrap();
    drop(tx);
    while let Some(m) = responses.next().await {
        m.expect("stream");
    }
    // The upstream's own: the last task or request that carried the first sentence.
    let upstream = if streamed {
        // The latest to receive it, of this model: a realtime session's entry dates from its
        // connection, which herald opened ahead (during the previous stream), so the entries'
        // order is not the order of use.
        let t = double
            .ws_tasks()
            .into_iter()
            .filter(|t| t.model == model && t.pieces.first().is_some_and(|p| p == FIRST))
            .max_by_key(|t| t.pieces_at[0])
            .expect("the stream's task");
        t.first_audio_at
            .expect("audio sent")
            .saturating_duration_since(t.pieces_at[0])
    } else {
        {
            let r = double
                .synthesis_requests()
                .into_iter()
                .rev()
                .find(|r| r.body["input"]["text"] == FIRST)
                .expect("the first sentence's request");
            r.first_frame_at
                .expect("a frame sent")
                .saturating_duration_since(r.received_at)
        }
    };
    (herald, ms(upstream))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "p50": round(percentile(&v, 0.5), 1),
        "p90": round(percentile(&v, 0.9), 1),
        "max": round(v.last().copied().unwrap_or(f64::NAN), 1),
    })
}

async fn run(bench: bool) -> Value {
    let (warmups, n, rate) = if bench { (1, 10, 30.0) } else { (0, 1, 300.0) };
    let every = Duration::from_secs_f64(1.0 / rate);
    // HTTP/SSE, a request per sentence (under `auto` the daemon would stream the text into a
    // WebSocket task: the first-sentence rows below compare the two).
    let double = DashScopeDouble::start(daemon::API_KEY).await;
    let daemon = spawn_daemon_on_transport(&double, "http", &[]).await;
    let mut client = daemon.client().await;
    // The same answer at the same pace into one WebSocket run-task task (`auto`, the double's
    // WebSocket URL), against the same double, in the same iterations.
    let ws_daemon = spawn_daemon_on_transport(&double, "auto", &[]).await;
    let mut ws_client = ws_daemon.client().await;
    let (mut s_ttfa, mut s_after, mut w_ttfa) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ws_ttfa, mut ws_after) = (Vec::new(), Vec::new());
    for i in 0..warmups + n {
        let (a, b) = stream(&mut client, every).await;
        let tasks_before = double.ws_tasks().len();
        let (wa, wb) = stream(&mut ws_client, every).await;
        assert_eq!(
            double.ws_tasks().len(),
            tasks_before + 1,
            "the WebSocket row's stream went into one WebSocket task"
        );
        let c = whole(&mut client, every).await;
        if i >= warmups {
            s_ttfa.push(a);
            s_after.push(b);
            ws_ttfa.push(wa);
            ws_after.push(wb);
            w_ttfa.push(c);
        }
    }
    let (s, w, ws) = (stats(s_ttfa), stats(w_ttfa), stats(ws_ttfa));
    println!(
        "TTFA p50: SynthesizeStream {} ms (HTTP/SSE per sentence), {} ms (one WebSocket task), \
         whole text then Synthesize {} ms",
        s["p50"], ws["p50"], w["p50"]
    );
    ws_daemon.stop().await.expect("daemon stops");
    daemon.stop().await.expect("daemon stops");
    double.stop().await;
    let first = first_sentence_rows(bench).await;
    json!({
        "first_sentence": first,
        "bench": "streamed_text",
        "answer_chars": ANSWER.chars().count(),
        "sentences": 5,
        "tokens": tokens().len(),
        "token_chars": TOKEN_CHARS,
        "tokens_per_s": rate,
        "model": MODEL,
        "voice": VOICE,
        "upstream": "DashScope test double (tests/it/support/dashscope/), CosyVoice SSE, not paced",
        "n": n,
        "warmups": warmups,
        "stream_ttfa_ms": s,
        "stream_after_first_sentence_ms": stats(s_after),
        "stream_ws_ttfa_ms": ws,
        "stream_ws_after_first_sentence_ms": stats(ws_after),
        "whole_ttfa_ms": w,
    })
}

/// The first-sentence rows: one double, two daemons.
async fn first_sentence_rows(bench: bool) -> Value {
    let (warmups, n) = if bench { (2, 20) } else { (1, 1) };
    let double = DashScopeDouble::start(daemon::API_KEY).await;
    let mut clients = Vec::new();
    let mut daemons = Vec::new();
    for transport in ["http", "auto"] {
        let d = spawn_daemon_on_transport(&double, transport, &[]).await;
        clients.push(d.client().await);
        daemons.push(d);
    }
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = FIRST_ROWS
        .iter()
        .map(|_| (Vec::new(), Vec::new()))
        .collect();
    for i in 0..warmups + n {
        for (r, (_, model, voice, d, streamed)) in FIRST_ROWS.iter().enumerate() {
            let (h, u) = first_sentence(&mut clients[*d], &double, model, voice, *streamed).await;
            if i >= warmups {
                samples[r].0.push(h);
                samples[r].1.push(u);
            }
        }
    }
    let mut rows = serde_json::Map::new();
    for ((name, model, _, d, streamed), (h, u)) in FIRST_ROWS.iter().zip(samples) {
        let over: Vec<f64> = h.iter().zip(&u).map(|(h, u)| h - u).collect();
        println!(
            "first sentence, {name}: herald p50 {} ms, upstream p50 {} ms",
            stats(h.clone())["p50"],
            stats(u.clone())["p50"]
        );
        rows.insert(
            (*name).to_owned(),
            json!({
                "model": model,
                "transport": if *d == 0 { "http" } else { "auto" },
                "streamed_upstream": streamed,
                "herald_ms": stats(h),
                "upstream_ms": stats(u),
                "herald_minus_upstream_ms": stats(over),
            }),
        );
    }
    for d in daemons {
        d.stop().await.expect("daemon stops");
    }
    double.stop().await;
    json!({"n": n, "warmups": warmups, "first_piece_cut_chars": FIRST_CUT, "rows": rows})
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
        let path = results_dir().join("streamed_text.json");
        std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")).expect("write");
        println!("results: {}", path.display());
    }
}
