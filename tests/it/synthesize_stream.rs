//! `SynthesizeStream` through gRPC, against the DashScope double (a tone per request, its
//! frequency picked by an `@<N>Hz` token, lasting 40 ms per billed unit) and espeak-ng: text
//! cut mid-word, first audio before the last sentence is sent, each sentence's length and tone
//! in order, word offsets over the whole stream, flush, cancel (the upstream request dropped),
//! the cache and the fallback per sentence, the idle timeout, and the protocol's errors.

use std::time::Duration;

use futures::StreamExt;
use herald::{
    engine::dashscope::split,
    pb::{
        self, audio_format::Encoding, cache_client::CacheClient, speech_client::SpeechClient,
        synthesize_response::Payload, synthesize_stream_request::Payload as In,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, transport::Channel};

use crate::support::{dashscope::*, *};

pub(crate) const MODEL: &str = "cosyvoice-v3-flash";
pub(crate) const VOICE: &str = "longanyang";
const MS_PER_UNIT: f64 = 40.0;
pub(crate) const RATE: u32 = 16_000;

/// An open SynthesizeStream call: send with `text`/`flush`, end with `end`.
pub(crate) struct Call {
    tx: Option<mpsc::Sender<pb::SynthesizeStreamRequest>>,
    responses: tonic::Streaming<pb::SynthesizeResponse>,
    out: Collected,
}

impl Call {
    pub(crate) async fn open(
        client: &mut SpeechClient<Channel>,
        config: pb::SynthesizeRequest,
    ) -> Call {
        Self::try_open(client, config).await.expect("call opened")
    }

    async fn try_open(
        client: &mut SpeechClient<Channel>,
        config: pb::SynthesizeRequest,
    ) -> Result<Call, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(msg(In::Config(config))).await.unwrap();
        let responses = client
            .synthesize_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Call {
            tx: Some(tx),
            responses,
            out: Collected::default(),
        })
    }

    pub(crate) async fn text(&self, piece: &str) {
        self.send(In::Text(piece.to_owned())).await;
    }

    pub(crate) async fn flush(&self) {
        self.send(In::Flush(pb::Flush {})).await;
    }

    async fn send(&self, payload: In) {
        self.tx
            .as_ref()
            .expect("not ended")
            .send(msg(payload))
            .await
            .unwrap();
    }

    /// Send `text` in pieces of `n` characters.
    pub(crate) async fn pieces(&self, text: &str, n: usize) {
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(n) {
            self.text(&piece.iter().collect::<String>()).await;
        }
    }

    /// Read until the first audio chunk (within 10 s).
    pub(crate) async fn until_audio(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let m = self.responses.next().await.expect("a message").expect("ok");
                let audio = matches!(m.payload, Some(Payload::Audio(_)));
                self.take(m);
                if audio {
                    return;
                }
            }
        })
        .await
        .expect("audio within 10 s");
    }

    fn take(&mut self, m: pb::SynthesizeResponse) {
        match m.payload.expect("payload") {
            Payload::Info(i) => {
                self.out.order.push('i');
                self.out.info = Some(i);
            }
            Payload::Audio(a) => {
                self.out.order.push('a');
                self.out.chunks.push(a);
            }
            Payload::Words(w) => {
                self.out.order.push('w');
                self.out.words.extend(w.words);
            }
            Payload::Summary(s) => {
                self.out.order.push('s');
                self.out.summary = Some(s);
            }
        }
    }

    /// Half-close and read the rest.
    pub(crate) async fn end(mut self) -> Result<Collected, tonic::Status> {
        self.tx = None;
        self.rest().await
    }

    /// Read the rest without half-closing.
    async fn rest(mut self) -> Result<Collected, tonic::Status> {
        while let Some(m) = self.responses.next().await {
            let m = m?;
            self.take(m);
        }
        Ok(self.out)
    }
}

/// The status a call with `config` ends with, whether the handler refuses it at once or the
/// stream ends with it.
async fn refused(
    client: &mut SpeechClient<Channel>,
    config: pb::SynthesizeRequest,
) -> tonic::Status {
    match Call::try_open(client, config).await {
        Err(e) => e,
        Ok(call) => call.end().await.expect_err("refused"),
    }
}

fn msg(payload: In) -> pb::SynthesizeStreamRequest {
    pb::SynthesizeStreamRequest {
        payload: Some(payload),
    }
}

pub(crate) fn config(model: &str, voice: &str) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        text: String::new(),
        model: model.to_owned(),
        voice: voice.to_owned(),
        ..request("", Encoding::PcmS16le, RATE, 1)
    }
}

/// The per-sentence path: `transport = "http"` (under `auto` a CosyVoice streamed text goes
/// over one WebSocket task, `synthesize_stream_ws.rs`).
const PER_SENTENCE: &str = "[dashscope]\ntransport = \"http\"\n";

async fn setup(toml_extra: &str) -> (DashScopeDouble, TestDaemon) {
    let double = DashScopeDouble::start(API_KEY).await;
    let toml = layered(&[FAST_UPSTREAM, ENGINES_ONLY, PER_SENTENCE, toml_extra]);
    let daemon = spawn_daemon_against(&double, &toml, &[]).await;
    (double, daemon)
}

/// A daemon with the cache on (in `dir`) and the fallback chain `cache`, `espeak-ng`.
async fn setup_cached(dir: &std::path::Path) -> (DashScopeDouble, TestDaemon) {
    let double = DashScopeDouble::start(API_KEY).await;
    let toml = layered(&[
        FAST_UPSTREAM,
        "[dashscope]\nconnect_timeout_ms = 500\nmax_attempts = 1\ntransport = \"http\"\n",
    ]);
    let dir = dir.display().to_string();
    let daemon = spawn_daemon_against(&double, &toml, &[("CACHE_DIRECTORY", &dir)]).await;
    (double, daemon)
}

pub(crate) fn expected_ms(sentence: &str) -> f64 {
    split::units(sentence) as f64 * MS_PER_UNIT
}

/// Each sentence's span: its length is the double's, and its middle has its tone.
fn assert_sentences(c: &Collected, sentences: &[(&str, f64)]) {
    let s = c.summary();
    let got: Vec<&str> = s.sentences.iter().map(|x| x.text.as_str()).collect();
    let want: Vec<&str> = sentences.iter().map(|x| x.0).collect();
    assert_eq!(got, want);
    let x = c.mono();
    let total: f64 = sentences.iter().map(|(t, _)| expected_ms(t)).sum();
    let ms = x.len() as f64 * 1000.0 / f64::from(RATE);
    assert!((ms - total).abs() <= 2.0, "{ms} ms, want {total}");
    assert_eq!(s.duration_ms, total.round() as u64);
    let mut begin = 0.0;
    for (sentence, (text, hz)) in s.sentences.iter().zip(sentences) {
        let dur = expected_ms(text);
        assert!(
            (sentence.begin_ms as f64 - begin).abs() <= 1.0,
            "{text}: begins at {} ms, want {begin}",
            sentence.begin_ms
        );
        assert!(
            (sentence.duration_ms as f64 - dur).abs() <= 1.0,
            "{text}: {} ms, want {dur}",
            sentence.duration_ms
        );
        // The middle half of the sentence (away from the joins' fades).
        let a = ((begin + dur / 4.0) * f64::from(RATE) / 1000.0) as usize;
        let b = ((begin + dur * 3.0 / 4.0) * f64::from(RATE) / 1000.0) as usize;
        let f = peak_frequency(&x[a..b], RATE);
        assert!((f - hz).abs() < 8.0, "{text}: {f} Hz, want {hz}");
        begin += dur;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_cut_mid_word_give_each_sentence_its_length_and_tone_in_order() {
    let (double, daemon) = setup("").await;
    let mut client = daemon.client().await;
    let sentences = [
        ("First @500Hz sentence here.", 500.0),
        ("Then Dr. Who @700Hz spoke 3.14 words!", 700.0),
        ("The last @900Hz one?", 900.0),
    ];
    let text = sentences.iter().map(|s| s.0).collect::<Vec<_>>().join(" ");
    for n in [1, 3, 7] {
        let before = double.synthesis_requests().len();
        let call = Call::open(&mut client, config(MODEL, VOICE)).await;
        call.pieces(&text, n).await;
        let c = call.end().await.expect("stream");
        assert_eq!(&c.order[..1], "i");
        assert!(c.order.ends_with('s'));
        assert_eq!(c.info().engine, "cosyvoice");
        assert_sentences(&c, &sentences);
        // One upstream request per sentence, in order, each with its sentence whole.
        // (Two run at once, so the double may see them in either order; the tones above
        // prove the order of the audio.)
        let mut texts: Vec<String> = double.synthesis_requests()[before..]
            .iter()
            .map(|r| r.body["input"]["text"].as_str().unwrap_or("").to_owned())
            .collect();
        texts.sort();
        let mut want: Vec<String> = sentences.iter().map(|s| s.0.to_owned()).collect();
        want.sort();
        assert_eq!(texts, want, "pieces of {n}");
        let s = c.summary();
        assert_eq!(s.characters as usize, split::units(&text) - 2);
        assert!(!s.cache_hit && !s.fallback_used);
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

/// Sentences synthesized one by one (here HTTP/SSE, each its own 440 Hz tone starting at
/// phase 0) meet without a click: the largest step between two samples stays the tone's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentences_are_joined_without_clicks() {
    let (double, daemon) = setup("").await;
    let mut client = daemon.client().await;
    // 23, 14 and 19 units: each tone ends 0.8 or 0.4 of a cycle in (40 ms × 440 Hz = 17.6
    // cycles a unit), so an unfaded join would jump by 0.5·|sin(2π·0.8)| ≈ 0.48 or
    // 0.5·|sin(2π·0.4)| ≈ 0.29.
    let sentences = [
        "A second sentence here!",
        "Alpha one two.",
        "The third, at last?",
    ];
    for s in sentences {
        let phase = (expected_ms(s) / 1000.0 * 440.0).fract();
        assert!(
            0.5 * (std::f64::consts::TAU * phase).sin().abs() > 0.25,
            "{s}"
        );
    }
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.pieces(&sentences.join(" "), 5).await;
    let c = call.end().await.expect("stream");
    assert_eq!(c.summary().sentences.len(), 3);
    let x = c.mono();
    let want: f64 = sentences.iter().map(|s| expected_ms(s)).sum();
    let got = x.len() as f64 * 1000.0 / f64::from(RATE);
    assert!((got - want).abs() <= 2.0, "{got} ms, want {want}");
    // The tone's own largest step: 0.5 · 2π · 440 / 16000 ≈ 0.086.
    let max_step = x
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0.0f32, f32::max);
    assert!(max_step < 0.12, "a step of {max_step} (a click)");
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_audio_comes_before_the_last_sentence_is_sent() {
    let (double, daemon) = setup("").await;
    let mut client = daemon.client().await;
    for enc in [Encoding::Wav, Encoding::PcmS16le] {
        let mut call = Call::open(
            &mut client,
            pb::SynthesizeRequest {
                format: Some(pb::AudioFormat {
                    encoding: enc as i32,
                    sample_rate_hz: RATE,
                    channels: 1,
                }),
                ..config(MODEL, VOICE)
            },
        )
        .await;
        call.text("One @600Hz sentence. And the sec").await;
        // Nothing more is sent until audio has come back.
        call.until_audio().await;
        assert_eq!(double.synthesis_requests().len() % 2, 1, "only the first");
        call.text("ond @800Hz one.").await;
        let c = call.end().await.expect("stream");
        assert_sentences(
            &c,
            &[
                ("One @600Hz sentence.", 600.0),
                ("And the second @800Hz one.", 800.0),
            ],
        );
        if enc == Encoding::Wav {
            assert_eq!(&c.bytes()[..4], b"RIFF");
            assert_eq!(
                c.bytes().windows(4).filter(|w| w == b"RIFF").count(),
                1,
                "one WAV header for the whole stream"
            );
        }
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_offsets_run_over_the_whole_stream() {
    let (double, daemon) = setup("").await;
    let mut client = daemon.client().await;
    let call = Call::open(
        &mut client,
        pb::SynthesizeRequest {
            word_timestamps: true,
            ..config(MODEL, VOICE)
        },
    )
    .await;
    call.pieces("Alpha beta gamma. Delta epsilon.", 4).await;
    let c = call.end().await.expect("stream");
    let words: Vec<(&str, u32)> = c
        .words
        .iter()
        .map(|w| (w.text.as_str(), w.begin_ms))
        .collect();
    // The second sentence starts after the first's 17 units.
    assert_eq!(
        words,
        vec![
            ("Alpha", 0),
            ("beta", 240),
            ("gamma.", 440),
            ("Delta", 680),
            ("epsilon.", 920),
        ]
    );
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_speaks_what_has_arrived_at_once() {
    let (double, daemon) = setup("").await;
    let mut client = daemon.client().await;
    let mut call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text("No terminator @500Hz here").await;
    call.flush().await;
    call.until_audio().await;
    call.text(" and then @700Hz more.").await;
    let c = call.end().await.expect("stream");
    assert_sentences(
        &c,
        &[
            ("No terminator @500Hz here", 500.0),
            ("and then @700Hz more.", 700.0),
        ],
    );
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_mid_stream_drops_the_upstream_request() {
    let (double, daemon) = setup("").await;
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let mut client = daemon.client().await;
    let mut call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text(&"A long sentence to speak, slowly and at length, ".repeat(2))
        .await;
    call.text("to the end. And more").await;
    call.until_audio().await;
    let index = double.synthesis_requests().len() - 1;
    let before = double.requests().len() - 1;
    drop(call);
    let entry = double
        .wait_ended(before, Duration::from_secs(1))
        .await
        .expect("the upstream request ended within 1 s");
    assert!(entry.disconnected && !entry.completed, "{entry:?}");
    assert_eq!(index, 0);
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_sentence_is_served_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (double, daemon) = setup_cached(dir.path()).await;
    let mut client = daemon.client().await;
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.pieces("Alpha @500Hz one. Beta @600Hz two.", 5).await;
    let c = call.end().await.expect("first stream");
    assert!(c.summary().sentences.iter().all(|s| !s.cache_hit));
    // Both sentences stored (a flight stores just after its clients got their audio).
    let mut cache = CacheClient::connect(format!("http://{}", daemon.tcp))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cache
        .get_cache_stats(pb::GetCacheStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .stored
        < 2
    {
        assert!(tokio::time::Instant::now() < deadline, "stored within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = double.synthesis_requests().len();
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.pieces("Beta @600Hz two. Gamma @700Hz three.", 5).await;
    let c = call.end().await.expect("second stream");
    let hits: Vec<bool> = c.summary().sentences.iter().map(|s| s.cache_hit).collect();
    assert_eq!(hits, vec![true, false]);
    assert!(!c.summary().cache_hit, "not every sentence was a hit");
    assert_eq!(
        double.synthesis_requests().len(),
        calls + 1,
        "only the new sentence went upstream"
    );
    assert_sentences(
        &c,
        &[("Beta @600Hz two.", 600.0), ("Gamma @700Hz three.", 700.0)],
    );
    daemon.stop().await.unwrap();
    double.stop().await;
}

/// espeak-ng speech: how long, and that it is speech.
fn assert_speech(x: &[f32], what: &str) {
    let secs = x.len() as f64 / f64::from(RATE);
    assert!(secs > 0.3, "{what}: {secs} s");
    assert!(voiced_fraction(x, RATE) > 0.3, "{what}: it is speech");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_upstream_fails_after_a_sentence_the_rest_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (double, daemon) = setup_cached(dir.path()).await;
    let mut client = daemon.client().await;
    let mut call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text("First @500Hz sentence. ").await;
    call.until_audio().await;
    // The upstream goes away: every request now fails.
    double.push_fault(Fault::always(FaultKind::HttpError {
        status: 503,
        code: "ModelUnavailable".into(),
        message: "down".into(),
    }));
    call.pieces("Please use the other entrance. Thank you.", 6)
        .await;
    let c = call.end().await.expect("stream");
    let s = c.summary();
    let engines: Vec<&str> = s.sentences.iter().map(|x| x.engine.as_str()).collect();
    assert_eq!(engines, vec!["cosyvoice", "espeak-ng", "espeak-ng"]);
    assert!(!s.sentences[0].fallback_used);
    assert!(s.sentences[1..].iter().all(|x| x.fallback_used));
    assert!(s.fallback_used && !s.fallback_reason.is_empty());
    assert!(
        !c.info().fallback_used,
        "the first sentence was the engine's"
    );
    let x = c.mono();
    let first = &s.sentences[0];
    assert!((first.duration_ms as f64 - expected_ms("First @500Hz sentence.")).abs() <= 1.0);
    let end_first = (first.duration_ms as f64 * f64::from(RATE) / 1000.0) as usize;
    let f = peak_frequency(&x[end_first / 4..end_first * 3 / 4], RATE);
    assert!((f - 500.0).abs() < 8.0, "{f} Hz");
    assert_speech(&x[end_first..], "the fallback's sentences");
    let spans: f64 = s.sentences.iter().map(|x| x.duration_ms as f64).sum();
    let ms = x.len() as f64 * 1000.0 / f64::from(RATE);
    assert!(
        (ms - spans).abs() <= 3.0,
        "the sentences' spans cover the stream: {ms} vs {spans}"
    );
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentence_cut_mid_audio_ends_there_and_the_later_ones_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let (double, daemon) = setup_cached(dir.path()).await;
    let mut client = daemon.client().await;
    let mut call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text("First @500Hz sentence. ").await;
    call.until_audio().await;
    double.push_fault(Fault::always(FaultKind::DropAfter { frames: 1 }));
    call.text("A second @700Hz sentence that is long enough to be cut. The third one.")
        .await;
    let c = call.end().await.expect("stream");
    let s = c.summary();
    let got: Vec<(&str, bool, bool)> = s
        .sentences
        .iter()
        .map(|x| (x.engine.as_str(), x.truncated, x.fallback_used))
        .collect();
    assert_eq!(
        got,
        vec![
            ("cosyvoice", false, false),
            ("cosyvoice", true, false),
            ("espeak-ng", false, true),
        ]
    );
    assert!(
        s.sentences[2].fallback_reason.contains("mid-stream"),
        "{}",
        s.sentences[2].fallback_reason
    );
    // The cut sentence has the one audio event the double sent (100 ms).
    assert_eq!(s.sentences[1].duration_ms, 100);
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fallback_a_failure_ends_the_stream_with_its_status() {
    let (double, daemon) = setup("").await;
    let mut client = daemon.client().await;
    let mut call = Call::open(
        &mut client,
        pb::SynthesizeRequest {
            no_fallback: true,
            ..config(MODEL, VOICE)
        },
    )
    .await;
    call.text("First sentence. ").await;
    call.until_audio().await;
    double.push_fault(Fault::always(FaultKind::HttpError {
        status: 503,
        code: "ModelUnavailable".into(),
        message: "down".into(),
    }));
    call.text("Second sentence.").await;
    let e = call.end().await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_ng_streams_and_an_idle_stream_ends_naming_the_setting() {
    let daemon = spawn_daemon_config(
        "[synthesis]\nstream_idle_timeout_ms = 700\n[cache]\nenabled = false\n",
        &[],
    )
    .await;
    let mut client = daemon.client().await;
    let call = Call::open(&mut client, config("espeak-ng", "")).await;
    call.pieces("Hello there. How are you today?", 4).await;
    let c = call.end().await.expect("espeak-ng stream");
    let s = c.summary();
    assert_eq!(s.sentences.len(), 2);
    assert_eq!(s.engine, "espeak-ng");
    assert_speech(&c.mono(), "espeak-ng");
    assert!(s.sentences[1].begin_ms > 300);
    let sum: u64 = s.sentences.iter().map(|x| x.duration_ms).sum();
    assert!(
        s.duration_ms.abs_diff(sum) <= 2,
        "{} vs {sum}",
        s.duration_ms
    );

    // Idle: a sentence, then nothing (and no half-close).
    let mut call = Call::open(&mut client, config("espeak-ng", "")).await;
    call.text("Hello there. And").await;
    call.until_audio().await;
    let started = tokio::time::Instant::now();
    let keep = call.tx.clone();
    let e = call.rest().await.unwrap_err();
    drop(keep);
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message().contains("synthesis.stream_idle_timeout_ms"),
        "{}",
        e.message()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_name_the_field() {
    let daemon = spawn_daemon_config("[cache]\nenabled = false\n", &[]).await;
    let mut client = daemon.client().await;
    // Text in the config.
    let e = refused(
        &mut client,
        pb::SynthesizeRequest {
            text: "Hello.".into(),
            ..config("espeak-ng", "")
        },
    )
    .await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("config.text: must be empty"),
        "{}",
        e.message()
    );

    // Text first.
    let (tx, rx) = mpsc::channel(4);
    tx.send(msg(In::Text("Hello.".into()))).await.unwrap();
    drop(tx);
    let e = match client.synthesize_stream(ReceiverStream::new(rx)).await {
        Err(e) => e,
        Ok(r) => r.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("config: the first message"),
        "{}",
        e.message()
    );

    // A second config.
    let call = Call::open(&mut client, config("espeak-ng", "")).await;
    call.send(In::Config(config("espeak-ng", ""))).await;
    let e = call.end().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("config: sent twice"),
        "{}",
        e.message()
    );

    // No text at all.
    let call = Call::open(&mut client, config("espeak-ng", "")).await;
    call.text("  **  ").await;
    let e = call.end().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("text: the stream ended without"),
        "{}",
        e.message()
    );

    // A bad config field, as Synthesize names it.
    let e = refused(
        &mut client,
        pb::SynthesizeRequest {
            chunk_ms: 5,
            ..config("espeak-ng", "")
        },
    )
    .await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("chunk_ms: 5"), "{}", e.message());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_much_text_ends_the_stream_naming_the_setting() {
    let daemon = spawn_daemon_config(
        "[synthesis]\nmax_stream_text_chars = 50\n[cache]\nenabled = false\n",
        &[],
    )
    .await;
    let mut client = daemon.client().await;
    let call = Call::open(&mut client, config("espeak-ng", "")).await;
    call.pieces(&"Words and words. ".repeat(4), 10).await;
    let e = call.end().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("synthesis.max_stream_text_chars") && e.message().contains("50"),
        "{}",
        e.message()
    );
    daemon.stop().await.unwrap();
}

// ---- the command line ----

fn herald_cli() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env_remove("DASHSCOPE_API_KEY")
        .env_remove("HERALD_CONFIG");
    c
}

#[test]
fn say_stream_writes_each_sentence_as_it_completes() {
    use std::{
        io::{Read, Write},
        process::Stdio,
        sync::{Arc, Mutex},
    };
    let server = ServeProcess::start(&[]);
    let mut child = herald_cli()
        .args(["say", "--stream", "--socket"])
        .arg(&server.socket)
        .args(["--format", "pcm", "--rate", "16000", "-o", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run say --stream");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let got = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        })
    };
    // The first sentence, and half a word of the second (a multi-byte character cut too).
    let text = "Hello there, café friends. And the sec".as_bytes();
    let cut = "Hello there, caf".len() + 1;
    stdin.write_all(&text[..cut]).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stdin.write_all(&text[cut..]).unwrap();
    stdin.flush().unwrap();
    // Up to 20 s for the first sentence's audio.
    for waited in 0.. {
        if got.lock().unwrap().len() >= 3_200 {
            break;
        }
        assert!(waited < 1000, "no audio while stdin is still open");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = got.lock().unwrap().len();
    stdin.write_all(b"ond sentence is here.\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("wrote "), "{stderr}");
    let bytes = got.lock().unwrap().clone();
    assert!(
        bytes.len() > first,
        "the second sentence came after the first"
    );
    let x = s16_to_f32(&bytes);
    assert_speech(&x, "say --stream");
    assert!(
        x.len() as f64 / f64::from(RATE) > 1.5,
        "two sentences of speech"
    );
}

#[test]
fn say_stream_play_queues_each_sentence_in_order() {
    use std::{io::Write, process::Stdio};
    let server = ServeProcess::start(&[]);
    let mut child = herald_cli()
        .args(["say", "--stream", "--play", "--device", "null", "--socket"])
        .arg(&server.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run say --stream --play");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"First one. Second").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(b" one.").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("finished after").count(), 2, "{stderr}");

    let out = herald_cli()
        .args([
            "say",
            "--stream",
            "--play",
            "--priority",
            "text",
            "--socket",
        ])
        .arg(&server.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--priority text"));
}
