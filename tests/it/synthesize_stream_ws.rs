//! `SynthesizeStream` to an engine that takes streamed text upstream: CosyVoice over the
//! double's run-task WebSocket under `transport = "auto"`. Pieces cut mid-word go to one
//! upstream task, a `continue-task` per sentence (the double's task log), the first audio
//! comes before the last sentence is sent, the audio has the double's exact length and tone,
//! a cancel ends the upstream task at once, and a failure falls back: before audio, the
//! whole text sentence by sentence; after audio, the sentences the task had not finished.
//! Qwen-TTS-Realtime likewise, one session with a commit per sentence. A pause past the
//! engine's idle limit ends the task in time; later text goes sentence by sentence.

use std::{path::Path, time::Duration};

use herald::{engine::dashscope::split, pb};

use crate::{
    support::{dashscope::*, *},
    synthesize_stream::{Call, MODEL, RATE, VOICE, config, expected_ms},
};

/// A double and a daemon under `transport = "auto"` whose WebSocket URL is the double's;
/// with the cache and the fallback chain (`cache`, `espeak-ng`) when `cache_dir` is given.
/// `dashscope.idle_timeout_ms = 10000`: herald ends a task's text only after 7.5 s without a
/// message, far beyond any pause of these tests on a loaded machine.
async fn setup(cache_dir: Option<&Path>) -> (DashScopeDouble, TestDaemon) {
    setup_idle(10_000, cache_dir).await
}

async fn setup_idle(idle_ms: u32, cache_dir: Option<&Path>) -> (DashScopeDouble, TestDaemon) {
    let double = DashScopeDouble::start(API_KEY).await;
    let ws = double.ws_base_url();
    let upstream = format!(
        "[dashscope]\ntransport = \"auto\"\nconnect_timeout_ms = 500\nmax_attempts = 1\n\
         idle_timeout_ms = {idle_ms}\n"
    );
    let upstream = upstream.as_str();
    let mut env = vec![("DASHSCOPE_WEBSOCKET_BASE_URL", ws.clone())];
    let toml = match cache_dir {
        Some(dir) => {
            env.push(("CACHE_DIRECTORY", dir.display().to_string()));
            layered(&[FAST_UPSTREAM, upstream])
        }
        None => layered(&[FAST_UPSTREAM, ENGINES_ONLY, upstream]),
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = spawn_daemon_against(&double, &toml, &env).await;
    (double, daemon)
}

/// The tasks that received text.
fn spoken_tasks(double: &DashScopeDouble) -> Vec<WsTask> {
    double
        .ws_tasks()
        .into_iter()
        .filter(|t| !t.text.is_empty())
        .collect()
}

fn ms(x: &[f32]) -> f64 {
    x.len() as f64 * 1000.0 / f64::from(RATE)
}

/// `x` lasts `want` ms, within 2 ms.
fn assert_ms(x: &[f32], want: f64) {
    assert!((ms(x) - want).abs() <= 2.0, "{} ms, want {want}", ms(x));
}

/// The middle half of the span of `x` that begins at `begin_ms` and lasts `dur_ms`.
fn middle_half(x: &[f32], begin_ms: f64, dur_ms: f64) -> &[f32] {
    let at = |ms: f64| (ms * f64::from(RATE) / 1000.0) as usize;
    &x[at(begin_ms + dur_ms / 4.0)..at(begin_ms + dur_ms * 3.0 / 4.0)]
}

/// `x` is a tone of `hz`, within 2 Hz.
fn assert_tone(x: &[f32], hz: f64) {
    let f = peak_frequency(x, RATE);
    assert!((f - hz).abs() < 2.0, "{f} Hz, want {hz}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_cut_mid_word_go_to_one_upstream_task_a_sentence_at_a_time() {
    let (double, daemon) = setup(None).await;
    let mut client = daemon.client().await;
    let sentences = [
        "First @500Hz sentence here.",
        "Then Dr. Who spoke 3.14 words!",
        "The last one?",
    ];
    let text = sentences.join(" ");
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.pieces(&text, 3).await;
    let c = call.end().await.expect("stream");
    assert_eq!(&c.order[..1], "i");
    assert!(c.order.ends_with('s'));
    assert_eq!(c.info().engine, "cosyvoice");
    // Nothing over HTTP; one connection, one task, fed sentence by sentence, then finished.
    assert!(double.synthesis_requests().is_empty());
    assert_eq!(double.ws_handshakes(), 1);
    let tasks = spoken_tasks(&double);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = &tasks[0];
    assert_eq!(
        task.pieces,
        vec![
            "First @500Hz sentence here.".to_owned(),
            " Then Dr. Who spoke 3.14 words!".to_owned(),
            " The last one?".to_owned(),
        ]
    );
    assert_eq!(task.text, text);
    assert!(task.completed && !task.disconnected);
    // The double's audio, exactly: 40 ms per unit of the task's text (the spaces herald puts
    // between sentences included), in the task's one tone.
    let x = c.mono();
    let want = expected_ms(&text);
    assert_ms(&x, want);
    assert_tone(&x, 500.0);
    assert!(rms(&x) > 0.2);
    let s = c.summary();
    assert_eq!(s.sentences.len(), 1, "one upstream task, one entry");
    assert_eq!(s.sentences[0].text, text);
    assert_eq!(s.duration_ms, want.round() as u64);
    assert_eq!(s.characters as usize, split::units(&text));
    assert!(!s.cache_hit && !s.fallback_used);
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_audio_comes_before_the_last_sentence_is_sent() {
    let (double, daemon) = setup(None).await;
    let mut client = daemon.client().await;
    let mut call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text("One @600Hz sentence. And the sec").await;
    call.until_audio().await;
    let tasks = spoken_tasks(&double);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].pieces, vec!["One @600Hz sentence.".to_owned()]);
    call.text("ond one.").await;
    let c = call.end().await.expect("stream");
    let tasks = spoken_tasks(&double);
    assert_eq!(tasks.len(), 1, "the same task went on");
    assert_eq!(
        tasks[0].pieces,
        vec![
            "One @600Hz sentence.".to_owned(),
            " And the second one.".to_owned()
        ]
    );
    let x = c.mono();
    assert_ms(&x, expected_ms(&tasks[0].text));
    assert_tone(&x, 600.0);
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_mid_stream_ends_the_upstream_task_at_once() {
    let (double, daemon) = setup(None).await;
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let mut client = daemon.client().await;
    let mut call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text(&"A long sentence to speak, and then some more words to say. ".repeat(2))
        .await;
    call.until_audio().await;
    drop(call);
    let task = double
        .wait_ws_task_ended(0, Duration::from_secs(1))
        .await
        .expect("the upstream task ended within 1 s");
    assert!(task.disconnected && !task.completed, "{task:?}");
    assert!(task.audio_frames < 40, "stopped early: {task:?}");
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_before_audio_leaves_the_text_to_the_per_sentence_path() {
    let dir = tempfile::tempdir().unwrap();
    let (double, daemon) = setup(Some(dir.path())).await;
    double.push_fault(Fault::once(FaultKind::HttpError {
        status: 503,
        code: "ModelUnavailable".into(),
        message: "down".into(),
    }));
    let mut client = daemon.client().await;
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.pieces("First @500Hz sentence. Second one.", 5).await;
    let c = call.end().await.expect("stream");
    let s = c.summary();
    let got: Vec<(&str, &str, bool)> = s
        .sentences
        .iter()
        .map(|x| (x.text.as_str(), x.engine.as_str(), x.fallback_used))
        .collect();
    assert_eq!(
        got,
        vec![
            ("First @500Hz sentence.", "cosyvoice", false),
            ("Second one.", "cosyvoice", false)
        ]
    );
    // Each sentence over HTTP (auto, a Beijing endpoint), after the one failed task.
    let mut texts: Vec<String> = double
        .synthesis_requests()
        .iter()
        .map(|r| r.body["input"]["text"].as_str().unwrap_or("").to_owned())
        .collect();
    texts.sort();
    assert_eq!(texts, vec!["First @500Hz sentence.", "Second one."]);
    let x = c.mono();
    assert_ms(
        &x,
        expected_ms("First @500Hz sentence.") + expected_ms("Second one."),
    );
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_after_audio_falls_back_from_the_first_sentence_it_had_not_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (double, daemon) = setup(Some(dir.path())).await;
    let first = "First @500Hz sentence.";
    // The double's frames are 100 ms: the connection drops two frames into the second sentence.
    let first_frames = (expected_ms(first) / 100.0).ceil() as usize;
    double.push_fault(Fault::once(FaultKind::DropAfter {
        frames: first_frames + 2,
    }));
    let mut client = daemon.client().await;
    let mut call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text(&format!("{first} ")).await;
    call.until_audio().await;
    call.pieces(
        "A second sentence that is long enough to be cut. The third one.",
        7,
    )
    .await;
    let c = call.end().await.expect("stream");
    let s = c.summary();
    let got: Vec<(&str, &str, bool, bool)> = s
        .sentences
        .iter()
        .map(|x| {
            (
                x.text.as_str(),
                x.engine.as_str(),
                x.truncated,
                x.fallback_used,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (first, "cosyvoice", true, false),
            (
                "A second sentence that is long enough to be cut.",
                "espeak-ng",
                false,
                true
            ),
            ("The third one.", "espeak-ng", false, true),
        ]
    );
    assert!(s.fallback_used);
    assert!(
        s.sentences[1].fallback_reason.contains("mid-stream"),
        "{}",
        s.sentences[1].fallback_reason
    );
    // The task's audio: the first sentence whole, then the two frames of the second.
    let upstream_ms = first_frames as f64 * 100.0 + 200.0;
    assert!(
        (s.sentences[0].duration_ms as f64 - upstream_ms).abs() <= 100.0,
        "{} ms, want about {upstream_ms}",
        s.sentences[0].duration_ms
    );
    let x = c.mono();
    let end = (expected_ms(first) * f64::from(RATE) / 1000.0) as usize;
    let f = peak_frequency(&x[end / 4..end * 3 / 4], RATE);
    assert!((f - 500.0).abs() < 8.0, "{f} Hz");
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_realtime_gets_each_sentence_committed_in_one_session() {
    let (double, daemon) = setup(None).await;
    let mut client = daemon.client().await;
    let (model, voice) = ("qwen3-tts-flash-realtime", "Cherry");
    let mut call = Call::open(&mut client, config(model, voice)).await;
    call.pieces("One @700Hz sentence. And the sec", 4).await;
    call.until_audio().await;
    let tasks = spoken_tasks(&double);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].pieces, vec!["One @700Hz sentence.".to_owned()]);
    call.text("ond one.").await;
    let c = call.end().await.expect("stream");
    assert_eq!(c.info().engine, "qwen-tts");
    let tasks = spoken_tasks(&double);
    assert_eq!(tasks.len(), 1, "the same session went on: {tasks:?}");
    assert_eq!(tasks[0].protocol, WsProtocol::Realtime);
    assert_eq!(
        tasks[0].pieces,
        vec![
            "One @700Hz sentence.".to_owned(),
            " And the second one.".to_owned()
        ]
    );
    assert!(tasks[0].completed);
    let x = c.mono();
    assert_ms(&x, expected_ms(&tasks[0].text));
    assert_tone(&x, 700.0);
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_with_nothing_to_speak_ends_its_task_and_names_the_field() {
    let (double, daemon) = setup(None).await;
    let mut client = daemon.client().await;
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text("** ").await;
    call.text("`` ").await;
    let e = call.end().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("text:"), "{e:?}");
    // The task opened at the first text was ended, without any text.
    let task = double
        .wait_ws_task_ended(0, Duration::from_secs(1))
        .await
        .expect("the upstream task ended");
    assert!(task.text.is_empty(), "{task:?}");
    // The daemon serves the next stream.
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text("Still @440Hz here.").await;
    let c = call.end().await.expect("stream");
    assert!((ms(&c.mono()) - expected_ms("Still @440Hz here.")).abs() <= 2.0);
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_past_the_upstreams_idle_limit_ends_the_task_and_the_rest_goes_by_sentence() {
    // dashscope.idle_timeout_ms = 1000: herald ends the task's text after 750 ms without a
    // message (DashScope itself drops a task after 23 s).
    let (double, daemon) = setup_idle(1000, None).await;
    let mut client = daemon.client().await;
    let mut call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text("First @500Hz sentence. ").await;
    call.until_audio().await;
    let task = double
        .wait_ws_task_ended(0, Duration::from_secs(5))
        .await
        .expect("the task was ended while the client paused");
    assert!(task.completed && !task.disconnected, "{task:?}");
    call.text("Second one.").await;
    let c = call.end().await.expect("stream");
    let s = c.summary();
    let got: Vec<(&str, &str)> = s
        .sentences
        .iter()
        .map(|x| (x.text.as_str(), x.engine.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("First @500Hz sentence.", "cosyvoice"),
            ("Second one.", "cosyvoice")
        ]
    );
    assert!(!s.fallback_used);
    assert_eq!(spoken_tasks(&double).len(), 1);
    let texts: Vec<String> = double
        .synthesis_requests()
        .iter()
        .map(|r| r.body["input"]["text"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(texts, vec!["Second one."]);
    assert_ms(
        &c.mono(),
        expected_ms("First @500Hz sentence.") + expected_ms("Second one."),
    );
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_goes_upstream_and_voices_an_unfinished_sentence() {
    let (double, daemon) = setup(None).await;
    let mut client = daemon.client().await;
    let mut call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text("Platform @640Hz four, the tra").await;
    call.flush().await;
    // The double voices a buffer without a terminator only on a flush.
    call.until_audio().await;
    call.text("in to the airport.").await;
    let c = call.end().await.expect("stream");
    let tasks = spoken_tasks(&double);
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        tasks[0].pieces,
        vec![
            "Platform @640Hz four, the tra".to_owned(),
            " in to the airport.".to_owned()
        ]
    );
    let x = c.mono();
    assert_ms(&x, expected_ms(&tasks[0].text));
    daemon.stop().await.unwrap();
    double.stop().await;
}

/// The span of each piece of `pieces` in the task's audio, ms: the double voices a task's text
/// in order, `expected_ms` per piece (a sentence with the space herald put before it).
fn spans(pieces: &[String]) -> Vec<(f64, f64)> {
    let mut at = 0.0;
    pieces
        .iter()
        .map(|p| {
            let span = (at, at + expected_ms(p));
            at = span.1;
            span
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sentence_over_websocket_is_voiced_in_its_own_tone_in_order() {
    let (double, daemon) = setup(None).await;
    let mut client = daemon.client().await;
    let sentences = [
        ("First @500Hz sentence here.", 500.0),
        ("Then the @700Hz second one, a little longer!", 700.0),
        ("And @900Hz the last?", 900.0),
    ];
    let text = sentences.iter().map(|s| s.0).collect::<Vec<_>>().join(" ");
    let models = [
        (MODEL, VOICE, WsProtocol::RunTask),
        ("qwen3-tts-flash-realtime", "Cherry", WsProtocol::Realtime),
    ];
    for (i, (model, voice, protocol)) in models.into_iter().enumerate() {
        let call = Call::open(&mut client, config(model, voice)).await;
        call.pieces(&text, 3).await;
        let c = call.end().await.expect("stream");
        let tasks = spoken_tasks(&double);
        assert_eq!(tasks.len(), i + 1, "one task per stream: {tasks:?}");
        let task = &tasks[i];
        assert_eq!(task.protocol, protocol);
        // Each sentence went up whole, in order (after the first, with herald's space).
        let want: Vec<String> = sentences
            .iter()
            .enumerate()
            .map(|(k, s)| {
                if k == 0 {
                    s.0.to_owned()
                } else {
                    format!(" {}", s.0)
                }
            })
            .collect();
        assert_eq!(task.pieces, want, "{model}");
        let x = c.mono();
        let spans = spans(&task.pieces);
        let total = spans.last().unwrap().1;
        assert!(
            (ms(&x) - total).abs() <= 2.0,
            "{model}: {} ms, want {total}",
            ms(&x)
        );
        // Each sentence's audio is that sentence's: the middle half of its span has its tone.
        for ((text, hz), (b, e)) in sentences.iter().zip(&spans) {
            let middle = middle_half(&x, *b, e - b);
            let f = peak_frequency(middle, RATE);
            assert!((f - hz).abs() < 8.0, "{model}: {text}: {f} Hz, want {hz}");
            assert!(rms(middle) > 0.2, "{model}: {text}: silent");
        }
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_timings_over_websocket_arrive_in_order_inside_their_sentences() {
    let (double, daemon) = setup(None).await;
    let mut client = daemon.client().await;
    let sentences = [
        "Alpha beta gamma.",
        "Delta epsilon zeta, eta!",
        "Theta iota?",
    ];
    let text = sentences.join(" ");
    // The DashScope documents disagree on where the words come: in each `sentence-end`, or all
    // in `task-finished`. Either way each word once, timed over the whole stream.
    for (i, in_task_finished) in [false, true].into_iter().enumerate() {
        double.set_options(Options {
            ws_words_in_task_finished: in_task_finished,
            ..Options::default()
        });
        let call = Call::open(
            &mut client,
            pb::SynthesizeRequest {
                word_timestamps: true,
                ..config(MODEL, VOICE)
            },
        )
        .await;
        call.pieces(&text, 4).await;
        let c = call.end().await.expect("stream");
        let tasks = spoken_tasks(&double);
        let task = &tasks[i];
        assert_eq!(
            task.parameters["word_timestamp_enabled"],
            serde_json::json!(true),
            "asked upstream: {:?}",
            task.parameters
        );
        assert_eq!(task.pieces.len(), sentences.len(), "{task:?}");
        let spans = spans(&task.pieces);
        let audio_ms = ms(&c.mono());
        assert!((audio_ms - spans[2].1).abs() <= 2.0, "{audio_ms} ms");
        // The words, in order, each once.
        let got: Vec<&str> = c.words.iter().map(|w| w.text.as_str()).collect();
        let want: Vec<&str> = sentences.iter().flat_map(|s| s.split(' ')).collect();
        assert_eq!(got, want, "words in task-finished: {in_task_finished}");
        // Each inside its sentence's span, at the double's time (40 ms per unit from the
        // task's start), begin ≤ end, and monotonic across sentences.
        let mut w = c.words.iter();
        let mut last_end = 0;
        for (piece, (b, e)) in task.pieces.iter().zip(&spans) {
            for word in piece.split_whitespace() {
                let t = w.next().expect("a word");
                let at = word.as_ptr() as usize - piece.as_ptr() as usize;
                let want_begin = b + expected_ms(&piece[..at]);
                let (tb, te) = (f64::from(t.begin_ms), f64::from(t.end_ms));
                assert!(
                    (tb - want_begin).abs() <= 1.0,
                    "{word}: begins at {tb} ms, want {want_begin} (task-finished: {in_task_finished})"
                );
                assert!(
                    *b - 1.0 <= tb && tb <= te && te <= *e + 1.0,
                    "{word}: {tb}..{te} ms outside its sentence's {b}..{e}"
                );
                assert!(
                    t.begin_ms >= last_end,
                    "{word}: {tb} ms before the last end {last_end}"
                );
                last_end = t.end_ms;
            }
        }
        assert!(f64::from(last_end) <= audio_ms + 1.0);
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_sentence_is_served_from_the_cache_and_the_task_ends_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (double, daemon) = setup(Some(dir.path())).await;
    let mut client = daemon.client().await;
    // Into the cache: `Synthesize` on this (Beijing-style) endpoint goes over HTTP/SSE.
    let cached = "Doors @600Hz closing.";
    synthesize(
        &mut client,
        pb::SynthesizeRequest {
            text: cached.to_owned(),
            ..config(MODEL, VOICE)
        },
    )
    .await
    .expect("synthesize");
    let mut cache =
        herald::pb::cache_client::CacheClient::connect(format!("http://{}", daemon.tcp))
            .await
            .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cache
        .get_cache_stats(pb::GetCacheStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .stored
        < 1
    {
        assert!(tokio::time::Instant::now() < deadline, "stored within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let http_before = double.synthesis_requests().len();

    // In the middle: the task gets the first sentence, its text ends before the cached one.
    let first = "First @500Hz sentence.";
    let last = "The last @900Hz one.";
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.pieces(&format!("{first} {cached} {last}"), 4).await;
    let c = call.end().await.expect("stream");
    let s = c.summary();
    let got: Vec<(&str, bool)> = s
        .sentences
        .iter()
        .map(|x| (x.text.as_str(), x.cache_hit))
        .collect();
    assert_eq!(got, vec![(first, false), (cached, true), (last, false)]);
    assert!(!s.fallback_used && !s.cache_hit);
    let tasks = spoken_tasks(&double);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].pieces, vec![first.to_owned()]);
    assert!(tasks[0].completed);
    // The cached sentence did not go upstream; the last went by itself (HTTP/SSE here).
    let texts: Vec<String> = double.synthesis_requests()[http_before..]
        .iter()
        .map(|r| r.body["input"]["text"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(texts, vec![last.to_owned()]);
    // Each sentence's audio in order, in its tone.
    let x = c.mono();
    let mut at = 0.0;
    for (text, hz) in [(first, 500.0), (cached, 600.0), (last, 900.0)] {
        let dur = expected_ms(text);
        let f = peak_frequency(middle_half(&x, at, dur), RATE);
        assert!((f - hz).abs() < 8.0, "{text}: {f} Hz, want {hz}");
        at += dur;
    }
    assert_ms(&x, at);

    // First: the task opened at the first text is dropped without any text.
    let tasks_before = double.ws_tasks().len();
    let then = "Then @700Hz more.";
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.pieces(&format!("{cached} {then}"), 4).await;
    let c = call.end().await.expect("stream");
    let got: Vec<(&str, bool)> = c
        .summary()
        .sentences
        .iter()
        .map(|x| (x.text.as_str(), x.cache_hit))
        .collect();
    assert_eq!(got, vec![(cached, true), (then, false)]);
    // The task is opened at the first text, unless the cache answered first.
    if double.ws_tasks().len() > tasks_before {
        let task = double
            .wait_ws_task_ended(tasks_before, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("the opened task ended: {:?}", double.ws_tasks()));
        assert!(task.text.is_empty() && !task.completed, "{task:?}");
    }
    assert_ms(&c.mono(), expected_ms(cached) + expected_ms(then));
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fallback_each_fault_of_the_task_ends_the_stream_with_its_status() {
    use tonic::Code::{
        FailedPrecondition, Internal, InvalidArgument, ResourceExhausted, Unavailable,
    };
    let (double, daemon) = setup(None).await;
    let mut client = daemon.client().await;
    let http = |status: u16, code: &str| FaultKind::HttpError {
        status,
        code: code.to_owned(),
        message: format!("{code} (scripted)"),
    };
    // Before audio the text goes on sentence by sentence (here over HTTP/SSE, with the same
    // fault); after audio the task's failure ends the stream.
    let rows = [
        (http(429, "Throttling.RateQuota"), ResourceExhausted),
        (http(400, "DataInspectionFailed"), InvalidArgument),
        (http(403, "Model.AccessDenied"), FailedPrecondition),
        (
            FaultKind::SseErrorAfter {
                frames: 2,
                http_status_comment: 200,
                code: "InternalError".to_owned(),
                message: "scripted".to_owned(),
            },
            Unavailable,
        ),
        (FaultKind::DropAfter { frames: 2 }, Unavailable),
        (FaultKind::BadJsonAfter { frames: 2 }, Internal),
    ];
    for (kind, code) in rows {
        double.clear_faults();
        double.push_fault(Fault::always(kind.clone()));
        let tasks_before = double.ws_tasks().len();
        let call = Call::open(
            &mut client,
            pb::SynthesizeRequest {
                no_fallback: true,
                ..config(MODEL, VOICE)
            },
        )
        .await;
        call.pieces(
            "A first sentence, long enough for frames. And a second one.",
            6,
        )
        .await;
        let e = call.end().await.expect_err("the fault ends the stream");
        assert_eq!(e.code(), code, "{kind:?}: {e:?}");
        assert!(!e.message().contains(API_KEY), "{kind:?}: {e:?}");
        assert!(
            double.ws_tasks().len() > tasks_before,
            "{kind:?}: it went over WebSocket first"
        );
        double.clear_faults();
    }
    // The daemon serves the next stream.
    let call = Call::open(&mut client, config(MODEL, VOICE)).await;
    call.text("Still @440Hz here.").await;
    let c = call.end().await.expect("stream");
    assert!((ms(&c.mono()) - expected_ms("Still @440Hz here.")).abs() <= 2.0);
    daemon.stop().await.unwrap();
    double.stop().await;
}
