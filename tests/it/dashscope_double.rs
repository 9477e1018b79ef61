//! The DashScope double (`support::dashscope`) checked against DashScope's wire format as the
//! project's notes describe it: raw SSE framing, the three response families, the audio they
//! carry, every scripted fault, the request log, disconnect detection — and, as the proof that
//! it speaks the real protocol, the official `dashscope` Python SDK run against it
//! (tests/python/dashscope_sdk_check.py).
//!
//! The SDK test needs a Python with `dashscope` (pinned in `.ci/setup`): `$HERALD_TEST_PYTHON`
//! (set by `.ci/test`), else `./.venv/bin/python`. Without either it is skipped, unless `CI` is
//! set: then it fails.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{
    API_KEY,
    audio::{s16_to_f32, symphonia_decode},
    dashscope::*,
    each_row,
    python::{PINNED_SDK, python_with_dashscope, run_sdk_check},
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

fn tts_url(ds: &DashScopeDouble) -> String {
    format!("{}/services/audio/tts/SpeechSynthesizer", ds.base_url())
}

fn mm_url(ds: &DashScopeDouble) -> String {
    format!(
        "{}/services/aigc/multimodal-generation/generation",
        ds.base_url()
    )
}

/// The endpoint for `model`'s family.
fn url_for(ds: &DashScopeDouble, model: &str) -> String {
    if model.starts_with("cosyvoice-") || model.starts_with("qwen-audio-") {
        tts_url(ds)
    } else {
        mm_url(ds)
    }
}

fn request(url: &str, body: &Value, sse: bool) -> reqwest::RequestBuilder {
    let mut rb = client()
        .post(url)
        .header("Authorization", format!("Bearer {API_KEY}"))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if sse {
        rb = rb
            .header("X-DashScope-SSE", "enable")
            .header("Accept", "text/event-stream");
    }
    rb
}

/// A whole response, body chunks as received.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    chunks: Vec<Bytes>,
    /// The body ended with an error (connection dropped).
    error: bool,
}

impl Got {
    fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }
    fn text(&self) -> String {
        String::from_utf8(self.body()).expect("utf-8 body")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).expect("JSON body")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn events(&self) -> Vec<Event> {
        parse_events(&self.text())
    }
}

/// The body at `url` (the double's `/oss/` files).
async fn download(url: &str) -> Bytes {
    client()
        .get(url)
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("the body")
}

async fn send(rb: reqwest::RequestBuilder) -> Got {
    let resp = rb.send().await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut stream = resp.bytes_stream();
    let mut chunks = Vec::new();
    let mut error = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => chunks.push(b),
            Err(_) => {
                error = true;
                break;
            }
        }
    }
    Got {
        status,
        headers,
        chunks,
        error,
    }
}

/// A request with `body` to the endpoint of its model's family.
fn to(ds: &DashScopeDouble, body: &Value, sse: bool) -> reqwest::RequestBuilder {
    request(
        &url_for(ds, body["model"].as_str().unwrap_or("")),
        body,
        sse,
    )
}

async fn post(ds: &DashScopeDouble, body: Value, sse: bool) -> Got {
    send(to(ds, &body, sse)).await
}

/// One SSE event, parsed strictly: `id:<n>`, `event:<e>`, `:HTTP_STATUS/<s>`, then `data:` lines.
#[derive(Debug)]
struct Event {
    id: u64,
    event: String,
    status: u16,
    data: Vec<String>,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data.join("\n"))
            .unwrap_or_else(|e| panic!("event {} is not JSON ({e}): {:?}", self.id, self.data))
    }
}

fn parse_events(raw: &str) -> Vec<Event> {
    assert!(
        raw.ends_with("\n\n"),
        "stream must end after a blank line: {:?}",
        &raw[raw.len().saturating_sub(80)..]
    );
    raw[..raw.len() - 2]
        .split("\n\n")
        .map(|block| {
            let lines: Vec<&str> = block.split('\n').collect();
            assert!(lines.len() >= 4, "short event {block:?}");
            let id = lines[0]
                .strip_prefix("id:")
                .expect("id: line")
                .parse()
                .expect("id");
            let event = lines[1]
                .strip_prefix("event:")
                .expect("event: line")
                .to_owned();
            let status = lines[2]
                .strip_prefix(":HTTP_STATUS/")
                .expect(":HTTP_STATUS/ comment")
                .parse()
                .expect("status");
            let data = lines[3..]
                .iter()
                .map(|l| l.strip_prefix("data:").expect("data: line").to_owned())
                .collect();
            Event {
                id,
                event,
                status,
                data,
            }
        })
        .collect()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 audio")
}

/// Decoded audio of a CosyVoice or Qwen stream (every non-empty `output.audio.data`).
fn stream_audio(events: &[Event]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e.event == "result")
        .filter_map(|e| e.json()["output"]["audio"]["data"].as_str().map(b64))
        .collect::<Vec<_>>()
        .concat()
}

/// The strongest frequency of `samples` (FFT peak).
fn peak_hz(samples: &[f32], rate: u32) -> f64 {
    use rustfft::{FftPlanner, num_complex::Complex};
    let n = samples.len().min(rate as usize);
    let mut buf: Vec<Complex<f32>> = samples[..n].iter().map(|&x| Complex::new(x, 0.0)).collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let (bin, _) = buf[1..n / 2]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.norm().total_cmp(&b.1.norm()))
        .expect("spectrum");
    (bin + 1) as f64 * f64::from(rate) / n as f64
}

fn assert_tone(samples: &[f32], rate: u32, hz: f64) {
    let got = peak_hz(samples, rate);
    assert!(
        (got - hz).abs() < hz * 0.02 + 3.0,
        "tone {got:.1} Hz, want {hz}"
    );
    let peak = samples.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!((0.4..0.6).contains(&peak), "amplitude {peak}");
}

/// Audio ms the double renders for `text` with default options.
fn audio_ms(text: &str) -> u64 {
    text_units(text) as u64 * 40
}

fn pcm_len(ms: u64, rate: u32, channels: usize) -> usize {
    (rate as u64 * ms / 1000) as usize * 2 * channels
}

fn wav_pcm(wav: &[u8]) -> (u32, u16, Vec<u8>) {
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    assert_eq!(&wav[36..40], b"data");
    let rate = u32::from_le_bytes(wav[24..28].try_into().unwrap());
    let channels = u16::from_le_bytes(wav[22..24].try_into().unwrap());
    (rate, channels, wav[44..].to_vec())
}

fn assert_mp3_tone(mp3: Vec<u8>, rate: u32, ms: u64, hz: f64) {
    assert_eq!(&mp3[..3], b"ID3", "DashScope MP3s begin with an ID3 tag");
    let (got_rate, channels, samples) = symphonia_decode(mp3, "mp3");
    assert_eq!((got_rate, channels), (rate, 1));
    let want = (rate as u64 * ms / 1000) as i64;
    let extra = samples.len() as i64 - want;
    // LAME adds its encoder delay and pads the last frame.
    assert!(
        (0..(rate as i64 / 5)).contains(&extra),
        "{} samples, want {want} + encoder delay",
        samples.len()
    );
    assert_tone(&samples[2400.min(samples.len() / 4)..], rate, hz);
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn http_error(status: u16, code: &str, message: &str) -> FaultKind {
    FaultKind::HttpError {
        status,
        code: code.into(),
        message: message.into(),
    }
}

fn cosy(text: &str, format: &str, rate: u32) -> Value {
    json!({"model": "cosyvoice-v3-flash",
        "input": {"text": text, "voice": "longanyang", "format": format, "sample_rate": rate}})
}

fn qwen(text: &str) -> Value {
    json!({"model": "qwen3-tts-flash", "input": {"text": text, "voice": "Cherry", "language_type": "English"}})
}

fn minimax(text: &str, audio_setting: Value) -> Value {
    json!({"model": "MiniMax/speech-2.8-hd", "input": {"text": text,
        "voice_setting": {"voice_id": "male-qn-qingse", "speed": 1, "vol": 1, "pitch": 0},
        "audio_setting": audio_setting}})
}

// ---------------------------------------------------------------------------------------------
// Framing and the three families

#[tokio::test]
async fn cosyvoice_stream_is_framed_byte_for_byte() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let text = "你好。Hello there! Third one?";
    let got = post(&ds, cosy(text, "wav", 16000), true).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("content-type"),
        "text/event-stream;charset=UTF-8"
    );
    assert_eq!(got.header("x-dashscope-finished"), "false");
    assert_eq!(got.header("transfer-encoding"), "chunked");
    let raw = got.text();
    assert!(
        raw.starts_with("id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":"),
        "{:?}",
        &raw[..60]
    );
    // Each event is flushed as its own chunk: no received chunk holds the end of one event and
    // the start of the next.
    for c in &got.chunks {
        assert!(
            !c[..c.len() - 1].windows(5).any(|w| w == b"\n\nid:"),
            "two events in one chunk"
        );
    }
    let events = got.events();
    let rid = got.header("x-request-id").to_owned();
    assert_eq!(rid.len(), 36, "UUID-shaped: {rid}");
    assert_eq!(rid.matches('-').count(), 4);
    let now = now_secs();
    let mut kinds = Vec::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, i as u64 + 1);
        assert_eq!(
            (e.event.as_str(), e.status, e.data.len()),
            ("result", 200, 1)
        );
        let j = e.json();
        assert_eq!(j["request_id"], rid.as_str());
        for absent in ["status_code", "code", "message"] {
            assert!(j.get(absent).is_none(), "{absent} in a success frame");
        }
        let out = &j["output"];
        assert_eq!(out["audio"]["id"], format!("audio_{rid}").as_str());
        let expires = out["audio"]["expires_at"].as_i64().unwrap();
        if i + 1 < events.len() {
            assert_eq!(out["finish_reason"], "null", "the string \"null\"");
            assert!((expires - now).abs() < 60);
            kinds.push(format!(
                "{}{}",
                out["type"].as_str().unwrap(),
                out["sentence"]["index"]
            ));
        } else {
            assert_eq!(out["finish_reason"], "stop");
            assert!(out.get("type").is_none());
            assert_eq!(out["audio"]["data"], "");
            assert!((expires - now - 86_400).abs() < 60);
            assert_eq!(j["usage"]["characters"], text_units(text));
        }
    }
    // 你好。 = 5 units → 200 ms (2 chunks); "Hello there!" = 12 → 480 ms; " Third one?" = 11.
    let expected: Vec<String> = [
        ("sentence-begin", 0, 1),
        ("sentence-synthesis", 0, 2),
        ("sentence-end", 0, 1),
        ("sentence-begin", 1, 1),
        ("sentence-synthesis", 1, 5),
        ("sentence-end", 1, 1),
        ("sentence-begin", 2, 1),
        ("sentence-synthesis", 2, 5),
        ("sentence-end", 2, 1),
    ]
    .iter()
    .flat_map(|(k, i, n)| std::iter::repeat_n(format!("{k}{i}"), *n))
    .collect();
    assert_eq!(kinds, expected);
    // Original texts and cumulative usage per sentence.
    let begins: Vec<Value> = events
        .iter()
        .map(Event::json)
        .filter(|j| j["output"]["type"] == "sentence-begin")
        .collect();
    let texts: Vec<&str> = begins
        .iter()
        .map(|j| j["output"]["original_text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["你好。", "Hello there!", " Third one?"]);
    let usage: Vec<u64> = begins
        .iter()
        .map(|j| j["usage"]["characters"].as_u64().unwrap())
        .collect();
    assert_eq!(usage, [5, 17, 28]);
    // The audio: one WAV (real sizes) with the whole tone.
    let wav = stream_audio(&events);
    let (rate, channels, pcm) = wav_pcm(&wav);
    assert_eq!((rate, channels), (16000, 1));
    assert_eq!(pcm.len(), pcm_len(audio_ms(text), 16000, 1));
    assert_eq!(
        u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize,
        pcm.len()
    );
    assert_tone(&s16_to_f32(&pcm), 16000, 440.0);
    // The final URL serves the same file.
    let last = events.last().unwrap().json();
    let url = last["output"]["audio"]["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("http://{}/oss/{rid}.wav?Expires=", ds.addr())));
    let file = client().get(url).send().await.unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.bytes().await.unwrap().to_vec(), wav);
    ds.stop().await;
}

#[tokio::test]
async fn cosyvoice_non_stream_answers_a_url() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let text = "One sentence only.";
    let got = post(&ds, cosy(text, "pcm", 8000), false).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("x-dashscope-finished"), "true");
    let j = got.json();
    let rid = j["request_id"].as_str().unwrap();
    assert_eq!(got.header("x-request-id"), rid);
    assert!(got.text().starts_with("{\"request_id\":"), "doc key order");
    assert_eq!(j["output"]["finish_reason"], "stop");
    assert_eq!(j["output"]["audio"]["data"], "");
    assert_eq!(j["output"]["audio"]["id"], format!("audio_{rid}").as_str());
    assert_eq!(j["usage"]["characters"], 18);
    for absent in ["status_code", "code", "message"] {
        assert!(j.get(absent).is_none());
    }
    let url = j["output"]["audio"]["url"].as_str().unwrap();
    assert!(url.contains(&format!("/oss/{rid}.pcm?")));
    let pcm = download(url).await;
    assert_eq!(pcm.len(), pcm_len(audio_ms(text), 8000, 1));
    assert_tone(&s16_to_f32(&pcm), 8000, 440.0);
    // Defaults: mp3 at 22050 Hz.
    let got = post(
        &ds,
        json!({"model": "cosyvoice-v3-plus", "input": {"text": text, "voice": "longshuo_v3"}}),
        false,
    )
    .await;
    let url = got.json()["output"]["audio"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.contains(".mp3?"));
    let mp3 = client().get(&url).send().await.unwrap();
    assert_eq!(mp3.headers()["content-type"], "audio/mpeg");
    assert_mp3_tone(
        mp3.bytes().await.unwrap().to_vec(),
        22050,
        audio_ms(text),
        440.0,
    );
    // Unknown files are 404.
    let missing = client()
        .get(format!("http://{}/oss/nothing.wav", ds.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    ds.stop().await;
}

#[tokio::test]
async fn mp3_streams_decode_to_the_tone_at_every_rate() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let text = "Mp3 tone check @660Hz.";
    for rate in [16000, 22050, 24000, 44100, 48000] {
        let got = post(&ds, cosy(text, "mp3", rate), true).await;
        let events = got.events();
        let first_audio = events
            .iter()
            .find_map(|e| {
                let j = e.json();
                (j["output"]["type"] == "sentence-synthesis")
                    .then(|| b64(j["output"]["audio"]["data"].as_str().unwrap()))
            })
            .unwrap();
        assert_eq!(&first_audio[..3], b"ID3");
        assert_mp3_tone(stream_audio(&events), rate, audio_ms(text), 660.0);
    }
    // Qwen-Audio-TTS too (same endpoint, no truncation).
    let got = post(
        &ds,
        json!({"model": "qwen-audio-3.0-tts-flash", "input": {"text": text, "voice": "longanfengyue"}}),
        true,
    )
    .await;
    assert_mp3_tone(stream_audio(&got.events()), 22050, audio_ms(text), 660.0);
    ds.stop().await;
}

#[tokio::test]
async fn cosyvoice_truncates_long_text_silently() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let text = "Lorem ipsum dolor sit amet. ".repeat(8); // 224 units
    assert_eq!(text_units(&text), 224);
    let got = post(&ds, cosy(&text, "pcm", 16000), true).await;
    let events = got.events();
    let last = events.last().unwrap().json();
    assert_eq!(last["output"]["finish_reason"], "stop");
    assert_eq!(last["usage"]["characters"], 224);
    let pcm = stream_audio(&events);
    assert_eq!(pcm.len(), pcm_len(150 * 40, 16000, 1), "150 units of audio");
    // Sentences after the cut still get their begin/end frames.
    let ends = events
        .iter()
        .filter(|e| e.json()["output"]["type"] == "sentence-end")
        .count();
    assert_eq!(ends, 8);
    // qwen-audio does not truncate; the option can be switched off.
    let got = post(
        &ds,
        json!({"model": "qwen-audio-3.0-tts-flash", "input": {"text": text, "voice": "loongjohn", "format": "pcm", "sample_rate": 16000}}),
        true,
    )
    .await;
    assert_eq!(
        stream_audio(&got.events()).len(),
        pcm_len(224 * 40, 16000, 1)
    );
    ds.set_options(Options {
        cosyvoice_truncate_units: None,
        ..Options::default()
    });
    let got = post(&ds, cosy(&text, "pcm", 16000), true).await;
    assert_eq!(
        stream_audio(&got.events()).len(),
        pcm_len(224 * 40, 16000, 1)
    );
    ds.stop().await;
}

#[tokio::test]
async fn qwen3_streams_a_wav_header_then_pcm() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let text = "Qwen speaks @880Hz now.";
    let got = post(&ds, qwen(text), true).await;
    assert_eq!(
        got.header("content-type"),
        "text/event-stream;charset=UTF-8"
    );
    let events = got.events();
    let rid = got.header("x-request-id").to_owned();
    let chunks: Vec<Vec<u8>> = events
        .iter()
        .filter_map(|e| {
            let j = e.json();
            assert!(j["output"].get("type").is_none(), "no type for Qwen");
            assert_eq!(j["usage"]["characters"], text_units(text));
            assert_eq!(j["request_id"], rid.as_str());
            let d = j["output"]["audio"]["data"].as_str().unwrap();
            (!d.is_empty()).then(|| b64(d))
        })
        .collect();
    assert_eq!(chunks.len(), 10, "920 ms in 100 ms chunks");
    let first = &chunks[0];
    assert_eq!(&first[..4], b"RIFF");
    let riff = u32::from_le_bytes(first[4..8].try_into().unwrap());
    let data = u32::from_le_bytes(first[40..44].try_into().unwrap());
    assert!(
        riff > 0x7FFF_0000 && data > 0x7FFF_0000,
        "placeholder sizes"
    );
    assert!(chunks[1..].iter().all(|c| &c[..4] != b"RIFF"));
    let all = chunks.concat();
    let (rate, channels, pcm) = wav_pcm(&all);
    assert_eq!((rate, channels), (24000, 1));
    assert_eq!(pcm.len(), pcm_len(audio_ms(text), 24000, 1));
    assert_tone(&s16_to_f32(&pcm), 24000, 880.0);
    let last = events.last().unwrap().json();
    assert_eq!(last["output"]["finish_reason"], "stop");
    assert_eq!(last["output"]["audio"]["data"], "");
    let url = last["output"]["audio"]["url"].as_str().unwrap();
    let file = download(url).await;
    assert_eq!(file.to_vec(), all);
    for e in &events[..events.len() - 1] {
        assert_eq!(e.json()["output"]["finish_reason"], "null");
    }

    // Raw PCM when the header is switched off; parameters pick format and rate.
    ds.set_options(Options {
        qwen_wav_header: false,
        ..Options::default()
    });
    let got = post(&ds, qwen(text), true).await;
    let pcm = stream_audio(&got.events());
    assert_eq!(pcm.len(), pcm_len(audio_ms(text), 24000, 1));
    let mut body = qwen(text);
    body["parameters"] =
        json!({"response_format": "pcm", "sample_rate": 48000, "speech_rate": 1.2});
    let pcm = stream_audio(&post(&ds, body.clone(), true).await.events());
    assert_eq!(pcm.len(), pcm_len(audio_ms(text), 48000, 1));
    assert_tone(&s16_to_f32(&pcm), 48000, 880.0);
    body["parameters"] = json!({"response_format": "mp3", "sample_rate": 16000});
    let mp3 = stream_audio(&post(&ds, body.clone(), true).await.events());
    assert_mp3_tone(mp3, 16000, audio_ms(text), 880.0);
    // `input.format` and `parameters.format` are ignored (the default stays WAV).
    let mut body = qwen(text);
    body["input"]["format"] = json!("mp3");
    body["parameters"] = json!({"format": "mp3"});
    let got = post(&ds, body, false).await;
    assert!(
        got.json()["output"]["audio"]["url"]
            .as_str()
            .unwrap()
            .contains(".wav?")
    );
    ds.stop().await;
}

#[tokio::test]
async fn qwen_non_stream_instructions_and_legacy_usage() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let text = "Plain request.";
    let got = post(&ds, qwen(text), false).await;
    let j = got.json();
    assert!(got.text().starts_with("{\"output\":"));
    assert_eq!(j["output"]["finish_reason"], "stop");
    assert_eq!(j["output"]["audio"]["data"], "");
    assert_eq!(j["usage"], json!({"characters": 14}));
    let wav = download(j["output"]["audio"]["url"].as_str().unwrap()).await;
    let (_, _, pcm) = wav_pcm(&wav);
    assert_eq!(pcm.len(), pcm_len(audio_ms(text), 24000, 1));
    // instructions in `parameters` (SDK) or `input` (many clients) are both accepted.
    for place in ["parameters", "input"] {
        let mut body = json!({"model": "qwen3-tts-instruct-flash",
            "input": {"text": text, "voice": "Serena"}, "parameters": {}});
        body[place]["instructions"] = json!("Speak slowly.");
        body[place]["optimize_instructions"] = json!(true);
        assert_eq!(post(&ds, body, true).await.status, 200, "{place}");
    }
    // Legacy qwen-tts bills tokens.
    let got = post(
        &ds,
        json!({"model": "qwen-tts-latest", "input": {"text": text, "voice": "Chelsie"}}),
        true,
    )
    .await;
    let last = got.events().last().unwrap().json();
    let usage = &last["usage"];
    assert_eq!(usage["input_tokens"], 14);
    assert!(usage["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["output_tokens_details"]["audio_tokens"],
        usage["output_tokens"]
    );
    ds.stop().await;
}

#[tokio::test]
async fn minimax_streams_hex_chunks_and_an_aggregate() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let text = "MiniMax 你好。";
    let got = post(
        &ds,
        minimax(text, json!({"format": "pcm", "sample_rate": 16000})),
        true,
    )
    .await;
    assert_eq!(got.status, 200);
    let events = got.events();
    let rid = got.header("x-request-id").to_owned();
    let mut chunks = Vec::new();
    for e in &events[..events.len() - 1] {
        let j = e.json();
        assert_eq!(
            j["output"]["base_resp"],
            json!({"status_code": 0, "status_msg": "success"})
        );
        assert_eq!(j["output"]["data"]["status"], 1);
        assert_eq!(j["usage"]["characters"], text_units(text));
        assert_eq!(j["request_id"], rid.as_str());
        chunks.push(hex::decode(j["output"]["data"]["audio"].as_str().unwrap()).unwrap());
    }
    let pcm = chunks.concat();
    let ms = audio_ms(text);
    assert_eq!(pcm.len(), pcm_len(ms, 16000, 1));
    assert_tone(&s16_to_f32(&pcm), 16000, 440.0);
    let last = events.last().unwrap().json();
    let out = &last["output"];
    assert_eq!(out["data"]["status"], 2);
    assert_eq!(
        hex::decode(out["data"]["audio"].as_str().unwrap()).unwrap(),
        pcm
    );
    let extra = &out["extra_info"];
    assert_eq!(extra["audio_length"], ms);
    assert_eq!(extra["audio_sample_rate"], 16000);
    assert_eq!(extra["audio_size"], pcm.len());
    assert_eq!(extra["audio_format"], "pcm");
    assert_eq!(extra["audio_channel"], 1);
    assert_eq!(extra["usage_characters"], text_units(text));
    assert_eq!(out["trace_id"].as_str().unwrap().len(), 32);

    // Stereo, and no aggregate when excluded.
    let mut body = minimax(
        text,
        json!({"format": "pcm", "sample_rate": 24000, "channel": 2}),
    );
    body["input"]["stream_options"] = json!({"exclude_aggregated_audio": true});
    let events = post(&ds, body, true).await.events();
    let last = events.last().unwrap().json();
    assert_eq!(last["output"]["data"]["audio"], "");
    let pcm: Vec<u8> = events[..events.len() - 1]
        .iter()
        .flat_map(|e| hex::decode(e.json()["output"]["data"]["audio"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(pcm.len(), pcm_len(ms, 24000, 2));
    let s = s16_to_f32(&pcm);
    assert!(s.chunks_exact(2).all(|lr| lr[0] == lr[1]));

    // Defaults: mp3 at 32 kHz; non-streaming answers the whole hex audio.
    let body = json!({"model": "MiniMax/speech-02-turbo", "input": {"text": text,
        "voice_setting": {"voice_id": "female-shaonv"}}});
    let got = post(&ds, body, false).await;
    let j = got.json();
    assert_eq!(j["output"]["data"]["status"], 2);
    assert_eq!(j["output"]["extra_info"]["audio_sample_rate"], 32000);
    let mp3 = hex::decode(j["output"]["data"]["audio"].as_str().unwrap()).unwrap();
    assert_mp3_tone(mp3, 32000, ms, 440.0);
    // output_format url.
    let mut body = minimax(text, json!({"format": "wav", "sample_rate": 8000}));
    body["input"]["output_format"] = json!("url");
    let j = post(&ds, body, false).await.json();
    let url = j["output"]["data"]["audio"].as_str().unwrap();
    assert!(url.starts_with("http://"));
    let wav = download(url).await;
    let (rate, _, pcm) = wav_pcm(&wav);
    assert_eq!((rate, pcm.len()), (8000, pcm_len(ms, 8000, 1)));
    // The Python SDK's placement: `input.voice`, settings in `parameters`.
    let body = json!({"model": "MiniMax/speech-2.8-turbo", "input": {"text": text, "voice": "English_Graceful_Lady"},
        "parameters": {"audio_setting": {"format": "pcm", "sample_rate": 22050}}});
    let events = post(&ds, body, true).await.events();
    let pcm: Vec<u8> = events[..events.len() - 1]
        .iter()
        .flat_map(|e| hex::decode(e.json()["output"]["data"]["audio"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(pcm.len(), pcm_len(ms, 22050, 1));
    ds.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Validation, auth and routing

/// A request and the error it gets: HTTP status, code, and words of the message.
type ErrorRow = (reqwest::RequestBuilder, u16, &'static str, &'static str);

#[tokio::test]
async fn auth_routing_and_parameter_errors() {
    let ds = DashScopeDouble::start(API_KEY).await;
    // Auth: missing, wrong, wrong scheme — JSON even when SSE is asked for.
    let body = cosy("Hi.", "wav", 16000);
    let (tts, mm) = (tts_url(&ds), mm_url(&ds));
    let no_key = client()
        .post(&tts)
        .header("X-DashScope-SSE", "enable")
        .body(body.to_string());
    let wrong = client()
        .post(&tts)
        .header("Authorization", "Bearer sk-wrong")
        .header("X-DashScope-SSE", "enable")
        .body(body.to_string());
    let basic = client()
        .post(&tts)
        .header("Authorization", format!("Basic {API_KEY}"))
        .body(body.to_string());
    let not_json = client()
        .post(&tts)
        .header("Authorization", format!("Bearer {API_KEY}"))
        .body("{not json");
    // Unknown voices, per family.
    let voice = |model: &str, voice: &str| {
        if model.starts_with("MiniMax/") {
            json!({"model": model, "input": {"text": "Hi.", "voice_setting": {"voice_id": voice}}})
        } else {
            json!({"model": model, "input": {"text": "Hi.", "voice": voice}})
        }
    };
    // Text limit on SpeechSynthesizer: 20000 units, CJK counting 2.
    let long = "长".repeat(10_001);
    let mut qwen_at_22050 = qwen("Hi.");
    qwen_at_22050["parameters"] = json!({"sample_rate": 22050});
    // Auth, endpoints that are not interchangeable, the body, unknown voices per family, the
    // text limit, formats and rates per family.
    // name, (request, status, code, words of the message)
    #[rustfmt::skip]
    let rows: [(&str, ErrorRow); 20] = [
        ("no key",                       (no_key,                                                                       401, "InvalidApiKey",         "Invalid API-key provided.")),
        ("a wrong key",                  (wrong,                                                                        401, "InvalidApiKey",         "Invalid API-key provided.")),
        ("the wrong scheme",             (basic,                                                                        401, "InvalidApiKey",         "")),
        ("CosyVoice on multimodal",      (request(&mm, &body, true),                                                    400, "InvalidParameter",      "url error")),
        ("Qwen on SpeechSynthesizer",    (request(&tts, &qwen("Hi."), false),                                           400, "InvalidParameter",      "url error")),
        ("MiniMax on SpeechSynthesizer", (request(&tts, &minimax("Hi.", json!({})), false),                             400, "InvalidParameter",      "url error")),
        ("an LLM on SpeechSynthesizer",  (request(&tts, &json!({"model": "qwen-plus", "input": {"text": "x"}}), false), 400, "InvalidParameter",      "url error")),
        ("no model",                     (request(&tts, &json!({"input": {"text": "x"}}), false),                       400, "BadRequest.EmptyModel", "'model'")),
        ("no input",                     (request(&tts, &json!({"model": "cosyvoice-v3-flash"}), false),                400, "BadRequest.EmptyInput", "")),
        ("not JSON",                     (not_json,                                                                     400, "InvalidParameter",      "")),
        ("Qwen voice in lower case",     (to(&ds, &voice("qwen3-tts-flash", "cherry"), false),                          400, "InvalidParameter",      "Invalid voice specified")),
        ("a v2 voice on v3",             (to(&ds, &voice("cosyvoice-v3-flash", "longxiaochun_v2"), true),               400, "InvalidParameter",      "Engine return error code: 418")),
        ("a system voice on v3.5",       (to(&ds, &voice("cosyvoice-v3.5-plus", "longanyang"), false),                  400, "InvalidParameter",      "[cosyvoice:]Engine return error code: 418")),
        ("a Qwen voice on qwen-audio",   (to(&ds, &voice("qwen-audio-3.0-tts-flash", "Cherry"), false),                 400, "InvalidParameter",      "[cosyvoice:]Engine error [411]")),
        ("an unknown MiniMax voice",     (to(&ds, &voice("MiniMax/speech-2.8-hd", "nobody"), false),                    400, "InvalidParameter",      "")),
        ("text over 20000 units",        (to(&ds, &cosy(&long, "pcm", 8000), false),                                    400, "InvalidParameter",      "Each request sends text is limited: 20000, current: 20002")),
        ("ogg",                          (to(&ds, &cosy("Hi.", "ogg", 16000), false),                                   400, "InvalidParameter",      "")),
        ("a CosyVoice rate",             (to(&ds, &cosy("Hi.", "wav", 32000), false),                                   400, "InvalidParameter",      "sample_rate")),
        ("a Qwen rate",                  (to(&ds, &qwen_at_22050, false),                                               400, "InvalidParameter",      "sample_rate")),
        ("a MiniMax rate",               (to(&ds, &minimax("Hi.", json!({"sample_rate": 48000})), false),               400, "InvalidParameter",      "sample_rate")),
    ];
    each_row(rows, async |(rb, status, code, message)| {
        let got = send(rb).await;
        assert_eq!(got.status, status, "{}", got.text());
        assert_eq!(got.header("content-type"), "application/json");
        let j = got.json();
        assert_eq!(j["code"], code, "{j}");
        assert!(j["message"].as_str().unwrap().contains(message), "{j}");
        assert_eq!(
            j["request_id"].as_str().unwrap(),
            got.header("x-request-id")
        );
    })
    .await;
    // Cloned and designed voices are accepted everywhere they fit.
    for (model, v) in [
        (
            "cosyvoice-v3.5-flash",
            "cosyvoice-v3.5-flash-myvoice-abc123",
        ),
        ("cosyvoice-v3-flash", "cosyvoice-v3-flash-clone-1"),
        ("qwen3-tts-vc-2026-01-22", "qwen-tts-vc-me-voice-20260101"),
        ("qwen3-tts-vd-2026-01-26", "qwen-tts-vd-designed-1"),
        ("MiniMax/speech-2.8-hd", "custom-minimax-voice"),
        ("qwen3-tts-flash", "Eldric Sage"),
        ("cosyvoice-v2", "longxiaochun_v2"),
        ("qwen-audio-3.1-tts-flash", "anxiaolan_v3.1"),
    ] {
        assert_eq!(
            post(&ds, voice(model, v), false).await.status,
            200,
            "{model} {v}"
        );
    }
    // Unknown keys are ignored; any Host, X-DashScope-WorkSpace and the SSE value's case too.
    let mut body = cosy("Hi.", "pcm", 16000);
    body["input"]["no_such_key"] = json!(1);
    body["parameters"] = json!({"rate": 2, "whatever": [1, 2]});
    body["extra"] = json!({"a": 1});
    let rb = client()
        .post(tts_url(&ds))
        .header("Authorization", format!("bearer {API_KEY}"))
        .header("Host", "ws-67zfnonsdn4x96ia.cn-beijing.maas.aliyuncs.com")
        .header("X-DashScope-WorkSpace", "ws-67zfnonsdn4x96ia")
        .header("X-DashScope-SSE", "ENABLE")
        .body(body.to_string());
    let got = send(rb).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("content-type"),
        "text/event-stream;charset=UTF-8"
    );
    // Unknown paths.
    let got = send(request(
        &format!("{}/services/nothing", ds.base_url()),
        &body,
        false,
    ))
    .await;
    assert_eq!(got.status, 404);
    ds.stop().await;
}

#[tokio::test]
async fn unknown_voice_can_arrive_as_an_sse_error() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.set_options(Options {
        unknown_voice_as_sse_error: true,
        ..Options::default()
    });
    let body = json!({"model": "qwen3-tts-flash", "input": {"text": "Hi.", "voice": "Nobody"}});
    let got = post(&ds, body.clone(), true).await;
    assert_eq!(got.status, 200);
    let raw = got.text();
    let rid = got.header("x-request-id").to_owned();
    assert_eq!(
        raw,
        format!(
            "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{}\n\n",
            json!({"code": "InvalidParameter", "message": "Invalid voice specified", "request_id": rid})
        )
    );
    // Without SSE it stays a 400.
    assert_eq!(post(&ds, body, false).await.status, 400);
    ds.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn http_error_faults_are_scripted_per_model_and_consumed() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.push_fault(Fault::once(http_error(
        429,
        "Throttling.RateQuota",
        "Requests rate limit exceeded, please try again later.",
    )));
    ds.push_fault(
        Fault::times(
            http_error(
                503,
                "ModelUnavailable",
                "Model is unavailable, please try again later.",
            ),
            2,
        )
        .for_model("qwen3-"),
    );
    ds.push_fault(
        Fault::always(http_error(
            400,
            "DataInspectionFailed",
            "Input data may contain inappropriate content.",
        ))
        .for_model("MiniMax/"),
    );
    // The first request (any model) takes the 429, JSON although SSE was asked for.
    let got = post(&ds, qwen("a"), true).await;
    assert_eq!(
        (got.status, got.header("content-type")),
        (429, "application/json")
    );
    assert_eq!(got.json()["code"], "Throttling.RateQuota");
    assert!(got.headers.get("retry-after").is_none());
    // Then the qwen3 ones take the two 503s; CosyVoice is unaffected.
    assert_eq!(post(&ds, cosy("a", "pcm", 16000), true).await.status, 200);
    assert_eq!(post(&ds, qwen("a"), false).await.status, 503);
    assert_eq!(post(&ds, qwen("a"), true).await.status, 503);
    assert_eq!(post(&ds, qwen("a"), true).await.status, 200);
    // The persistent MiniMax fault stays until cleared.
    for _ in 0..3 {
        let got = post(&ds, minimax("a", json!({})), true).await;
        assert_eq!(got.status, 400);
        assert_eq!(got.json()["code"], "DataInspectionFailed");
    }
    ds.clear_faults();
    assert_eq!(post(&ds, minimax("a", json!({})), true).await.status, 200);
    // Requests that fail auth take no fault.
    ds.push_fault(Fault::once(http_error(
        500,
        "InternalError",
        "An internal error has occured, please try again later or contact service support.",
    )));
    let unauth = client()
        .post(tts_url(&ds))
        .body(cosy("a", "pcm", 16000).to_string());
    assert_eq!(send(unauth).await.status, 401);
    let got = post(&ds, cosy("a", "pcm", 16000), false).await;
    assert_eq!(
        (got.status, got.json()["code"].as_str()),
        (500, Some("InternalError"))
    );
    let log = ds.requests();
    let faults: Vec<Option<u16>> = log
        .iter()
        .map(|r| match &r.fault {
            Some(FaultKind::HttpError { status, .. }) => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(
        faults,
        [
            Some(429),
            None,
            Some(503),
            Some(503),
            None,
            Some(400),
            Some(400),
            Some(400),
            None,
            None,
            Some(500)
        ]
    );
    ds.stop().await;
}

#[tokio::test]
async fn sse_error_after_k_audio_frames() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let fault = |frames| FaultKind::SseErrorAfter {
        frames,
        http_status_comment: 500,
        code: "InternalError".into(),
        message:
            "An internal error has occured, please try again later or contact service support."
                .into(),
    };
    ds.push_fault(Fault::once(fault(1)).for_model("cosyvoice-"));
    ds.push_fault(Fault::once(fault(3)).for_model("qwen3-"));
    ds.push_fault(Fault::once(fault(0)).for_model("MiniMax/"));
    let got = post(&ds, cosy("First. Second.", "pcm", 16000), true).await;
    assert_eq!(got.status, 200);
    let events = got.events();
    let shape: Vec<String> = events
        .iter()
        .map(|e| match e.event.as_str() {
            "result" => e.json()["output"]["type"].as_str().unwrap().to_owned(),
            other => format!("{other}/{}", e.status),
        })
        .collect();
    assert_eq!(shape, ["sentence-begin", "sentence-synthesis", "error/500"]);
    let rid = got.header("x-request-id");
    let err = events.last().unwrap();
    assert_eq!((err.id, err.data.len()), (3, 1));
    assert_eq!(
        err.json(),
        json!({"code": "InternalError", "message": "An internal error has occured, please try again later or contact service support.", "request_id": rid})
    );
    assert!(got.text().ends_with("\n\n") && !got.error);
    let events = post(&ds, qwen("Long enough for several chunks."), true)
        .await
        .events();
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].event, "error");
    assert!(stream_audio(&events[..3]).len() > 44);
    let events = post(&ds, minimax("x", json!({})), true).await.events();
    assert_eq!((events.len(), events[0].event.as_str()), (1, "error"));
    // Non-streaming: a plain HTTP error with that status.
    ds.push_fault(Fault::once(fault(2)));
    let got = post(&ds, cosy("x", "pcm", 16000), false).await;
    assert_eq!(
        (got.status, got.json()["code"].as_str()),
        (500, Some("InternalError"))
    );
    let log = ds.requests();
    assert_eq!(log[0].frames_sent, 3);
    assert!(log[0].completed);
    ds.stop().await;
}

#[tokio::test]
async fn ok_with_code_and_minimax_status_under_http_200() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let kind = FaultKind::OkWithCode {
        code: "DataInspectionFailed".into(),
        message: "Output data may contain inappropriate content.".into(),
    };
    ds.push_fault(Fault::times(kind, 2));
    let got = post(&ds, cosy("x", "mp3", 16000), true).await;
    let events = got.events();
    assert_eq!(
        (got.status, events.len(), events[0].event.as_str()),
        (200, 1, "result")
    );
    assert_eq!(
        events[0].json(),
        json!({"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content.", "request_id": got.header("x-request-id")})
    );
    let got = post(&ds, qwen("x"), false).await;
    assert_eq!(
        (got.status, got.json()["code"].as_str()),
        (200, Some("DataInspectionFailed"))
    );

    ds.push_fault(Fault::always(FaultKind::MiniMaxStatus {
        status_code: 1004,
        status_msg: "auth failed".into(),
    }));
    let got = post(&ds, minimax("x", json!({})), true).await;
    let events = got.events();
    assert_eq!(events.len(), 1);
    let j = events[0].json();
    assert_eq!(
        j["output"]["base_resp"],
        json!({"status_code": 1004, "status_msg": "auth failed"})
    );
    assert!(j["output"]["data"].is_null());
    let got = post(&ds, minimax("x", json!({})), false).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["output"]["base_resp"]["status_code"], 1004);
    ds.stop().await;
}

#[tokio::test]
async fn drop_after_aborts_the_connection_mid_stream() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.push_fault(Fault::once(FaultKind::DropAfter { frames: 2 }));
    let got = post(&ds, qwen("Some text that makes several chunks."), true).await;
    assert_eq!(got.status, 200);
    assert!(
        got.error,
        "the body must end in an error, not a clean terminator"
    );
    let raw = String::from_utf8(got.body()).unwrap();
    assert_eq!(parse_events(&raw).len(), 2);
    let entry = ds
        .wait_ended(0, Duration::from_secs(5))
        .await
        .expect("ended");
    assert_eq!(
        (entry.frames_sent, entry.completed, entry.disconnected),
        (2, false, false)
    );
    // Non-streaming: half a JSON body, then the drop.
    ds.push_fault(Fault::once(FaultKind::DropAfter { frames: 0 }));
    let got = post(&ds, cosy("x", "wav", 16000), false).await;
    assert!(got.error);
    assert!(serde_json::from_slice::<Value>(&got.body()).is_err());
    ds.stop().await;
}

#[tokio::test]
async fn stall_after_holds_the_connection_until_the_client_leaves() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.push_fault(Fault::once(FaultKind::StallAfter { frames: 1 }));
    let resp = request(&mm_url(&ds), &qwen("Stalling stream text."), true)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut raw = Vec::new();
    while !String::from_utf8_lossy(&raw).ends_with("\n\n") {
        raw.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    assert_eq!(parse_events(&String::from_utf8(raw).unwrap()).len(), 1);
    // Nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err()
    );
    assert!(ds.requests()[0].ended_at.is_none());
    let left = Instant::now();
    drop(stream);
    let entry = ds
        .wait_ended(0, Duration::from_secs(1))
        .await
        .expect("disconnect seen within 1 s");
    assert!(entry.disconnected && !entry.completed);
    assert_eq!(entry.frames_sent, 1);
    assert!(entry.ended_at.unwrap() - left < Duration::from_secs(1));
    ds.stop().await;
}

#[tokio::test]
async fn slow_first_byte_delays_the_response_head() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.push_fault(Fault::once(FaultKind::SlowFirstByte {
        delay: Duration::from_millis(400),
    }));
    let start = Instant::now();
    let resp = request(&tts_url(&ds), &cosy("x", "pcm", 16000), true)
        .send()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(resp.status(), 200);
    drop(resp);
    // Consumed: the next request is not delayed.
    assert_eq!(post(&ds, cosy("x", "pcm", 16000), true).await.status, 200);
    let log = ds.requests();
    assert!(matches!(
        log[0].fault,
        Some(FaultKind::SlowFirstByte { .. })
    ));
    assert!(log[1].fault.is_none());
    ds.stop().await;
}

#[tokio::test]
async fn bad_json_and_bad_audio_encodings() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.push_fault(Fault::once(FaultKind::BadJsonAfter { frames: 1 }));
    let events = post(&ds, qwen("Enough text for chunks."), true)
        .await
        .events();
    let bad: Vec<&Event> = events
        .iter()
        .filter(|e| serde_json::from_str::<Value>(&e.data.join("\n")).is_err())
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].id, 2, "after one audio frame");
    assert_eq!(
        events.last().unwrap().json()["output"]["finish_reason"],
        "stop"
    );

    ds.push_fault(Fault::once(FaultKind::BadBase64After { frames: 2 }));
    let events = post(&ds, cosy("Base sixty four.", "pcm", 16000), true)
        .await
        .events();
    let datas: Vec<String> = events
        .iter()
        .filter_map(|e| {
            e.json()["output"]["audio"]["data"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|d| !d.is_empty())
        .collect();
    let decodes: Vec<bool> = datas
        .iter()
        .map(|d| base64::engine::general_purpose::STANDARD.decode(d).is_ok())
        .collect();
    assert_eq!(&decodes[..3], [true, true, false]);
    assert!(decodes[3..].iter().all(|ok| *ok));

    ds.push_fault(Fault::once(FaultKind::BadBase64After { frames: 0 }).for_model("MiniMax/"));
    let events = post(&ds, minimax("Hex please.", json!({"format": "pcm"})), true)
        .await
        .events();
    let first = events[0].json()["output"]["data"]["audio"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(hex::decode(first).is_err());
    ds.stop().await;
}

#[tokio::test]
async fn corrupt_audio_per_format() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.push_fault(Fault::times(FaultKind::CorruptAudio, 3));
    let wav = stream_audio(
        &post(&ds, cosy("Corrupt.", "wav", 16000), true)
            .await
            .events(),
    );
    assert_ne!(&wav[..4], b"RIFF");
    let mp3 = stream_audio(
        &post(&ds, cosy("Corrupt.", "mp3", 16000), true)
            .await
            .events(),
    );
    assert_ne!(&mp3[..3], b"ID3");
    assert!(
        !mp3.windows(2).any(|w| w[0] == 0xFF && w[1] & 0xE0 == 0xE0),
        "no MP3 frame sync"
    );
    let pcm = stream_audio(
        &post(&ds, cosy("Corrupt.", "pcm", 16000), true)
            .await
            .events(),
    );
    assert_eq!(pcm.len() % 2, 1);
    let clean = stream_audio(
        &post(&ds, cosy("Corrupt.", "pcm", 16000), true)
            .await
            .events(),
    );
    assert_eq!(clean.len(), pcm.len() - 1);
    ds.stop().await;
}

#[tokio::test]
async fn multi_line_data_in_both_readings() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let text = "Multi line. Data!";
    ds.push_fault(Fault::once(FaultKind::MultiLineData));
    let events = post(&ds, cosy(text, "pcm", 16000), true).await.events();
    for e in &events {
        assert!(e.data.len() >= 3, "split over several data: lines");
        let nl: Value = serde_json::from_str(&e.data.join("\n")).expect("\\n-join is JSON");
        let cat: Value = serde_json::from_str(&e.data.concat()).expect("\"\"-join is JSON");
        assert_eq!(nl, cat);
    }
    assert_eq!(
        stream_audio(&events).len(),
        pcm_len(audio_ms(text), 16000, 1)
    );

    ds.push_fault(Fault::once(FaultKind::MultiLineDataConcat));
    let events = post(&ds, qwen(text), true).await.events();
    let mut audio = Vec::new();
    for e in &events {
        assert!(e.data.len() >= 3);
        assert!(serde_json::from_str::<Value>(&e.data.join("\n")).is_err());
        let j: Value = serde_json::from_str(&e.data.concat()).expect("\"\"-join is JSON");
        if let Some(d) = j["output"]["audio"]["data"].as_str() {
            audio.extend(b64(d));
        }
    }
    assert_eq!(audio.len(), 44 + pcm_len(audio_ms(text), 24000, 1));
    ds.push_fault(Fault::once(FaultKind::MultiLineDataConcat));
    let events = post(&ds, minimax(text, json!({"format": "pcm"})), true)
        .await
        .events();
    let j: Value = serde_json::from_str(&events[0].data.concat()).unwrap();
    assert!(hex::decode(j["output"]["data"]["audio"].as_str().unwrap()).is_ok());
    ds.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The request log, pacing, disconnects, shutdown

#[tokio::test]
async fn request_log_records_and_redacts() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let got = post(&ds, cosy("Logged.", "pcm", 16000), true).await;
    let wrong = client()
        .post(mm_url(&ds))
        .header("Authorization", format!("Bearer {API_KEY}-not"))
        .header("X-Custom", API_KEY)
        .body(qwen("x").to_string());
    assert_eq!(send(wrong).await.status, 401);
    post(&ds, qwen("x"), false).await;
    let log = ds.requests();
    assert_eq!(log.len(), 3);
    let dump = format!("{log:?}");
    assert!(!dump.contains(API_KEY), "the key leaked into the log");
    let first = &log[0];
    assert_eq!(first.path, "/api/v1/services/audio/tts/SpeechSynthesizer");
    assert_eq!(first.model, "cosyvoice-v3-flash");
    assert_eq!(first.body["input"]["text"], "Logged.");
    assert!(
        first
            .headers
            .contains(&("authorization".into(), "<redacted>".into()))
    );
    assert!(
        first
            .headers
            .contains(&("x-dashscope-sse".into(), "enable".into()))
    );
    assert!(
        first
            .headers
            .iter()
            .all(|(k, _)| *k == k.to_ascii_lowercase())
    );
    assert!(first.authorized && first.sse && first.completed && !first.disconnected);
    assert_eq!(first.status, 200);
    assert_eq!(first.request_id, got.header("x-request-id"));
    assert_eq!(first.frames_sent, got.events().len());
    assert!(first.ended_at.unwrap() >= first.received_at);
    let second = &log[1];
    assert!(!second.authorized && !second.sse);
    assert_eq!((second.status, second.frames_sent), (401, 0));
    assert!(
        second
            .headers
            .contains(&("x-custom".into(), "<redacted>".into()))
    );
    assert!(!log[2].sse && log[2].completed);
    assert!(ds.wait_ended(2, Duration::from_secs(1)).await.is_some());
    assert!(ds.wait_ended(9, Duration::from_millis(50)).await.is_none());
    ds.stop().await;
}

#[tokio::test]
async fn client_disconnect_is_seen_within_a_second() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    // 10 s of audio at real time: far from done when the client goes.
    let text = "x".repeat(250);
    let resp = request(&mm_url(&ds), &qwen(&text), true)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"id:1\n"));
    let left = Instant::now();
    drop(stream);
    let entry = ds
        .wait_ended(0, Duration::from_secs(1))
        .await
        .expect("disconnect seen within 1 s");
    assert!(entry.disconnected && !entry.completed);
    assert!(entry.ended_at.unwrap() - left < Duration::from_secs(1));
    assert!(entry.frames_sent < 5);
    ds.stop().await;
}

#[tokio::test]
async fn pace_emits_audio_at_real_time() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.set_options(Options {
        pace: 1.0,
        chunk_ms: 200,
        ..Options::default()
    });
    let text = "Twenty characters...";
    let start = Instant::now();
    let got = post(&ds, qwen(text), true).await;
    let elapsed = start.elapsed();
    assert_eq!(
        got.events().len(),
        5,
        "four 200 ms chunks and the final frame"
    );
    assert!(
        elapsed >= Duration::from_millis(780),
        "{elapsed:?} for 800 ms of audio"
    );
    ds.stop().await;
}

#[tokio::test]
async fn stop_cuts_stalled_streams_and_closes_the_port() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let addr = ds.addr();
    ds.push_fault(Fault::always(FaultKind::StallAfter { frames: 0 }));
    let resp = request(&mm_url(&ds), &qwen("x"), true)
        .send()
        .await
        .unwrap();
    let start = Instant::now();
    ds.stop().await;
    assert!(start.elapsed() < Duration::from_secs(10));
    let rest = resp.bytes().await;
    assert!(rest.map(|b| b.is_empty()).unwrap_or(true));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // Drop alone also ends the server.
    let ds = DashScopeDouble::start(API_KEY).await;
    let addr = ds.addr();
    drop(ds);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn text_units_tone_tokens_and_sentences() {
    assert_eq!(text_units("abc"), 3);
    assert_eq!(text_units("你好。"), 5);
    assert_eq!(text_units("@880Hz"), 6);
    assert_eq!(tone_token("say @880Hz now"), Some(880.0));
    assert_eq!(tone_token("a@b @12 @300Hz @500Hz"), Some(300.0));
    assert_eq!(tone_token("@Hz @1.5Hz"), None);
    assert_eq!(split_sentences("A. B!? C"), ["A.", " B!?", " C"]);
    assert_eq!(split_sentences("你好。世界！ "), ["你好。", "世界！ "]);
    assert_eq!(split_sentences("no end"), ["no end"]);
}

// ---------------------------------------------------------------------------------------------
// The proof: the official Python SDK against the double

#[tokio::test]
async fn official_python_sdk_speaks_to_the_double() {
    let Some(py) = python_with_dashscope() else {
        return;
    };
    let ds = DashScopeDouble::start(API_KEY).await;
    let throttled = http_error(
        429,
        "Throttling.RateQuota",
        "Requests rate limit exceeded, please try again later.",
    );
    let midstream = FaultKind::SseErrorAfter {
        frames: 2,
        http_status_comment: 500,
        code: "InternalError".into(),
        message:
            "An internal error has occured, please try again later or contact service support."
                .into(),
    };
    let ok_code = FaultKind::OkWithCode {
        code: "DataInspectionFailed".into(),
        message: "Output data may contain inappropriate content.".into(),
    };
    for (model, kind) in [
        ("cosyvoice-v3-flash-throttled", throttled.clone()),
        ("qwen3-tts-flash-throttled", throttled),
        ("cosyvoice-v3-flash-midstream", midstream.clone()),
        ("qwen3-tts-flash-midstream", midstream),
        ("cosyvoice-v3-flash-okcode", ok_code.clone()),
        ("qwen3-tts-flash-okcode", ok_code),
        (
            "MiniMax/speech-2.8-hd-status",
            FaultKind::MiniMaxStatus {
                status_code: 1002,
                status_msg: "rate limit".into(),
            },
        ),
        (
            "cosyvoice-v3-flash-drop",
            FaultKind::DropAfter { frames: 2 },
        ),
        ("qwen3-tts-flash-multiline", FaultKind::MultiLineData),
    ] {
        ds.push_fault(Fault::always(kind).for_model(model));
    }
    let c = run_sdk_check(&py, "dashscope_sdk_check.py", &ds).await;
    // Audio got through every family, streaming and not.
    assert_eq!(
        c["cosy_stream_pcm"]["bytes"],
        pcm_len(audio_ms("Hello there. Second sentence!"), 16000, 1)
    );
    assert_eq!(c["qwen3_stream"]["first_chunk_riff"], true);
    assert_eq!(c["minimax_stream_pcm"]["extra_info"]["audio_length"], 1160);
    for name in [
        "cosy_nonstream_wav",
        "qwen3_nonstream",
        "minimax_nonstream",
        "qwen3_instruct",
        "cosy_stream_mp3",
        "minimax_stream_defaults_mp3",
    ] {
        assert!(c[name].get("exception").is_none(), "{name}: {}", c[name]);
    }
    // How the SDK surfaces each failure shape.
    assert_eq!(c["err_401_cosy"]["status"], 401);
    assert_eq!(c["err_401_cosy"]["stream_exception"], "RuntimeError");
    assert_eq!(c["err_429"]["qwen_status"], 429);
    // The SDK ignores `:HTTP_STATUS/500` and reports every `event:error` as 400.
    assert_eq!(
        c["err_sse_midstream_qwen3"]["statuses"],
        json!([200, 200, 400])
    );
    assert_eq!(c["err_sse_midstream_qwen3"]["code"], "InternalError");
    assert_eq!(c["err_sse_midstream_cosy"]["chunks_before_error"], 2);
    assert_eq!(
        c["qwen3_stream_aio"]["error_statuses"],
        json!([200, 200, 400])
    );
    // HTTP 200 + `code` is invisible to HttpSpeechSynthesizer and crashes MultiModalConversation.
    let ok = &c["err_ok_with_code"];
    assert_eq!(ok["cosy_stream_results"], 0);
    assert_eq!(ok["cosy_nonstream_status"], 200);
    assert_eq!(ok["qwen_stream_exception"], "TypeError");
    assert_eq!(ok["qwen_nonstream_exception"], "TypeError");
    assert_eq!(c["err_minimax_status"]["http_status"], 200);
    assert_eq!(c["err_drop"]["exception"], "ChunkedEncodingError");
    // The SDK parses each `data:` line alone: multi-line events reach it as errors.
    assert_eq!(c["observe_multiline_data"]["audio_responses"], 0);
    assert_eq!(c["observe_multiline_data"]["codes"], json!(["Unknown"]));

    // What the SDK sent, as the double logged it.
    let log = ds.requests();
    let first = &log[0];
    let header = |r: &LoggedRequest, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header(first, "x-dashscope-sse"), "enable");
    assert_eq!(header(first, "accept"), "text/event-stream");
    assert!(header(first, "user-agent").starts_with(&format!("dashscope/{PINNED_SDK};")));
    assert_eq!(first.body["input"]["format"], "pcm");
    let mm_stream = log
        .iter()
        .find(|r| r.model == "qwen3-tts-flash" && r.sse)
        .unwrap();
    assert_eq!(
        mm_stream.body["parameters"],
        json!({}),
        "stream=True is only a header"
    );
    let mini = log
        .iter()
        .find(|r| r.model == "MiniMax/speech-2.8-hd" && r.body["input"].get("voice").is_some())
        .unwrap();
    assert!(mini.body["parameters"]["audio_setting"].is_object());
    assert!(log.iter().all(|r| r.ended_at.is_some()));
    ds.stop().await;
}
