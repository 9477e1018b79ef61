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
//!   the whole text; TTFA from the first token to the first audio byte.
//!
//! `cargo bench --bench streamed_text` runs 10 iterations after 1 warm-up and writes
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
use daemon::{ENGINES_ONLY, FAST_UPSTREAM, layered, spawn_daemon_with_double};
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
    let (double, daemon) = spawn_daemon_with_double(&layered(&[FAST_UPSTREAM, ENGINES_ONLY])).await;
    let mut client = daemon.client().await;
    let (mut s_ttfa, mut s_after, mut w_ttfa) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmups + n {
        let (a, b) = stream(&mut client, every).await;
        let c = whole(&mut client, every).await;
        if i >= warmups {
            s_ttfa.push(a);
            s_after.push(b);
            w_ttfa.push(c);
        }
    }
    let (s, w) = (stats(s_ttfa), stats(w_ttfa));
    println!(
        "TTFA p50: SynthesizeStream {} ms, whole text then Synthesize {} ms",
        s["p50"], w["p50"]
    );
    daemon.stop().await.expect("daemon stops");
    double.stop().await;
    json!({
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
        "whole_ttfa_ms": w,
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
        let path = results_dir().join("streamed_text.json");
        std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")).expect("write");
        println!("results: {}", path.display());
    }
}
