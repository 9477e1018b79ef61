//! The DashScope engines through gRPC, against the DashScope double on loopback: audio (tone
//! frequency and duration after conversion), long text split and joined, every scripted fault
//! mapped to its status, retries counted in the double's log, cancellation reaching the
//! upstream, and no key in logs.

use std::time::Duration;

use futures::StreamExt;
use herald::{
    engine::dashscope::split,
    pb::{self, audio_format::Encoding, synthesize_response::Payload},
};
use tonic::Code;

use crate::support::{dashscope::*, logs, *};

/// The double's default audio per billed text unit.
const MS_PER_UNIT: f64 = 40.0;

/// A double, and a daemon (every event logged to the capture) with short upstream timers and
/// the workspace `ws-test42`, plus `toml_extra`. These tests are about the engines: every
/// request reaches the double, and failures are not papered over by the cache or a fallback
/// (`cache_grpc` covers those).
async fn setup_with(toml_extra: &str) -> (DashScopeDouble, TestDaemon) {
    logs::capture();
    let double = DashScopeDouble::start(API_KEY).await;
    let toml = layered(&[FAST_UPSTREAM, ENGINES_ONLY, toml_extra]);
    let daemon =
        spawn_daemon_against(&double, &toml, &[("DASHSCOPE_WORKSPACE_ID", "ws-test42")]).await;
    (double, daemon)
}

async fn setup() -> (DashScopeDouble, TestDaemon) {
    setup_with("").await
}

fn req(
    model: &str,
    voice: &str,
    text: &str,
    enc: Encoding,
    rate: u32,
    ch: u32,
) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: model.to_owned(),
        voice: voice.to_owned(),
        ..request(text, enc, rate, ch)
    }
}

fn duration_ms(samples: usize, rate: u32) -> f64 {
    samples as f64 * 1000.0 / f64::from(rate)
}

const FAMILIES: [(&str, &str); 3] = [
    ("cosyvoice-v3-flash", "longanyang"),
    ("qwen3-tts-flash", "Cherry"),
    ("MiniMax/speech-2.8-hd", "male-qn-qingse"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_family_gives_the_tone_at_the_requested_format() {
    let (double, daemon) = setup().await;
    let mut client = daemon.client().await;
    let text = "Hello from herald."; // 18 units
    for (model, voice) in FAMILIES {
        for (enc, rate, ch) in [(Encoding::PcmS16le, 16000, 1), (Encoding::Wav, 48000, 2)] {
            let c = synthesize(&mut client, req(model, voice, text, enc, rate, ch))
                .await
                .unwrap_or_else(|s| panic!("{model} {enc:?}: {s:?}"));
            let f = c.format();
            assert_eq!((f.sample_rate_hz, f.channels), (rate, ch), "{model}");
            let x = c.mono();
            let ms = duration_ms(x.len(), rate);
            let want = split::units(text) as f64 * MS_PER_UNIT;
            assert!(
                (ms - want).abs() <= 1.0,
                "{model} {enc:?}: {ms} ms, want {want}"
            );
            let hz = peak_frequency(&x, rate);
            assert!((hz - 440.0).abs() <= 1.0, "{model} {enc:?}: {hz} Hz");
            assert!(rms(&x) > 0.2, "{model}: the tone is there");
            let summary = c.summary();
            assert_eq!(summary.characters, split::units(text) as u32, "{model}");
            assert_eq!(summary.upstream_request_ids.len(), 1, "{model}");
            assert_eq!(
                c.info().engine,
                match model {
                    m if m.starts_with("cosyvoice") => "cosyvoice",
                    m if m.starts_with("qwen") => "qwen-tts",
                    _ => "minimax",
                }
            );
        }
    }
    // What went upstream: SSE always, herald's user agent, the workspace, the key only as a
    // bearer token (redacted in the double's log), PCM at the exact rate where the model can.
    let log = double.requests();
    assert_eq!(log.len(), 6);
    for r in &log {
        assert!(r.sse && r.authorized, "{r:?}");
        let h = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert!(h("user-agent").starts_with("herald/"), "{r:?}");
        assert_eq!(h("x-dashscope-workspace"), "ws-test42");
        assert!(!format!("{r:?}").contains(API_KEY));
    }
    let cosy: Vec<_> = log
        .iter()
        .filter(|r| r.model.starts_with("cosyvoice"))
        .collect();
    assert_eq!(cosy[0].body["input"]["format"], "pcm");
    assert_eq!(cosy[0].body["input"]["sample_rate"], 16000);
    assert_eq!(cosy[1].body["input"]["sample_rate"], 48000);
    let mm: Vec<_> = log
        .iter()
        .filter(|r| r.model.starts_with("MiniMax"))
        .collect();
    assert_eq!(mm[0].body["input"]["audio_setting"]["sample_rate"], 16000);
    assert_eq!(mm[1].body["input"]["audio_setting"]["sample_rate"], 44100);
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen_streams_with_and_without_a_wav_header_and_multi_line_data() {
    let (double, daemon) = setup().await;
    let mut client = daemon.client().await;
    for (header, fault) in [
        (true, None),
        (false, None),
        (true, Some(FaultKind::MultiLineData)),
        (true, Some(FaultKind::MultiLineDataConcat)),
    ] {
        double.set_options(Options {
            qwen_wav_header: header,
            ..Options::default()
        });
        double.clear_faults();
        if let Some(kind) = fault.clone() {
            double.push_fault(Fault::always(kind));
        }
        let text = "Sixteen units!!!";
        let c = synthesize(
            &mut client,
            req(
                "qwen3-tts-flash",
                "Cherry",
                text,
                Encoding::PcmS16le,
                24000,
                1,
            ),
        )
        .await
        .unwrap_or_else(|s| panic!("header {header} {fault:?}: {s:?}"));
        let x = c.mono();
        // A WAV header left in the audio would add 22 samples.
        assert_eq!(
            x.len(),
            (16.0 * MS_PER_UNIT * 24.0) as usize,
            "{header} {fault:?}"
        );
        assert!((peak_frequency(&x, 24000) - 440.0).abs() <= 1.0);
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

/// Long text: split into pieces each model takes whole, all of it spoken, in order, joined
/// without clicks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_text_comes_back_whole_in_order_and_without_clicks() {
    let (double, daemon) = setup().await;
    let mut client = daemon.client().await;
    let mut text = String::new();
    while split::units(&text) < 700 {
        text.push_str("这是一个很长的句子，用来测试分段合成。And an English sentence follows it. ");
    }
    let text = text.trim().to_owned();
    for (model, voice) in FAMILIES {
        let before = double.requests().len();
        let c = synthesize(
            &mut client,
            req(model, voice, &text, Encoding::PcmS16le, 24000, 1),
        )
        .await
        .unwrap_or_else(|s| panic!("{model}: {s:?}"));
        let pieces: Vec<_> = double.requests()[before..].to_vec();
        let sent: Vec<String> = pieces
            .iter()
            .map(|r| {
                r.body["input"]["text"]
                    .as_str()
                    .expect("input.text")
                    .to_owned()
            })
            .collect();
        // Requests of pieces in flight together may arrive in any order: compare as sets with
        // herald's own split (whose completeness and order the unit tests check), and check the
        // order by ear below.
        let budget = match model {
            m if m.starts_with("cosyvoice") => 120,
            m if m.starts_with("qwen") => 600,
            _ => 3000,
        };
        let mut want_pieces = split::split(&text, budget);
        let mut got_pieces = sent.clone();
        want_pieces.sort();
        got_pieces.sort();
        assert_eq!(got_pieces, want_pieces, "{model}: every piece sent once");
        let letters = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        assert_eq!(
            letters(&split::split(&text, budget).concat()),
            letters(&text),
            "{model}: the pieces cover the text"
        );
        if model.starts_with("cosyvoice") {
            assert!(sent.len() >= 6, "{model}: {} pieces", sent.len());
            for s in &sent {
                assert!(
                    split::units(s) <= 120,
                    "{model}: piece of {} units",
                    split::units(s)
                );
            }
        }
        // The double truncates CosyVoice past 150 units: the audio is whole only because no
        // piece exceeded it.
        let units: usize = sent.iter().map(|s| split::units(s)).sum();
        let x = c.mono();
        let ms = duration_ms(x.len(), 24000);
        let want = units as f64 * MS_PER_UNIT;
        assert!(
            (ms - want).abs() <= 1.0,
            "{model}: {ms} ms of audio, want {want}"
        );
        // Joins: the largest step between two samples stays that of the tone itself
        // (0.5 · 2π · 440 / 24000 ≈ 0.058); an unfaded join jumps up to 1.0.
        let max_step = x
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{model}: {} pieces, {ms} ms of audio (want {want}), largest sample step {max_step:.4}",
            sent.len()
        );
        assert!(max_step < 0.07, "{model}: a step of {max_step} (a click)");
    }
    // Order, by ear: each sentence its own piece and its own frequency.
    let (double2, daemon2) = setup_with("[dashscope]\ncosyvoice_piece_units = 24\n").await;
    let mut client2 = daemon2.client().await;
    let text = "@300Hz one two three. @600Hz four five six. @900Hz seven eight.";
    let c = synthesize(
        &mut client2,
        req(
            "cosyvoice-v3-flash",
            "longanyang",
            text,
            Encoding::PcmS16le,
            24000,
            1,
        ),
    )
    .await
    .unwrap();
    assert_eq!(double2.requests().len(), 3);
    let x = c.mono();
    let mut start = 0;
    let pieces = split::split(text, 24);
    assert_eq!(pieces.len(), 3);
    for (piece, hz) in pieces.iter().zip([300.0, 600.0, 900.0]) {
        let n = (split::units(piece) as f64 * MS_PER_UNIT * 24.0) as usize;
        let got = peak_frequency(&x[start + 480..start + n - 480], 24000);
        assert!(
            (got - hz).abs() <= 2.0,
            "piece at {start}: {got} Hz, want {hz}"
        );
        start += n;
    }
    drop(double);
    daemon.stop().await.unwrap();
    daemon2.stop().await.unwrap();
    double2.stop().await;
}

/// One scripted fault: the model it hits, the fault, the status the client gets (`None`: the
/// audio) and how many upstream tries it took.
type FaultRow = (&'static str, Fault, Option<Code>, usize);

fn http(status: u16, code: &str) -> FaultKind {
    FaultKind::HttpError {
        status,
        code: code.to_owned(),
        message: format!("{code} (scripted)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_maps_to_its_status_and_the_next_request_succeeds() {
    use Code::{FailedPrecondition, Internal, InvalidArgument, ResourceExhausted, Unavailable};
    let (double, daemon) = setup().await;
    let mut client = daemon.client().await;
    let [cosy, qwen, minimax] = FAMILIES.map(|(model, _)| model);
    let sse_error = |frames, status, code: &str| FaultKind::SseErrorAfter {
        frames,
        http_status_comment: status,
        code: code.to_owned(),
        message: "scripted".to_owned(),
    };
    let ok_code = |code: &str| FaultKind::OkWithCode {
        code: code.to_owned(),
        message: "scripted".to_owned(),
    };
    let minimax_status = |status_code, status_msg: &str| FaultKind::MiniMaxStatus {
        status_code,
        status_msg: status_msg.to_owned(),
    };
    let always = Fault::always;
    let secs = Duration::from_secs;
    // name, (model, fault, status (None: the audio), upstream tries)
    #[rustfmt::skip]
    let rows: [(&str, FaultRow); 22] = [
        ("429 persistent",               (cosy,    always(http(429, "Throttling.RateQuota")),           Some(ResourceExhausted),  3)),
        ("429 transient",                (cosy,    Fault::times(http(429, "Throttling.RateQuota"), 2),  None,                     3)),
        ("500 persistent",               (cosy,    always(http(500, "InternalError")),                  Some(Unavailable),        3)),
        ("503 transient",                (qwen,    Fault::once(http(503, "ModelUnavailable")),          None,                     2)),
        ("content filter",               (cosy,    always(http(400, "DataInspectionFailed")),           Some(InvalidArgument),    1)),
        ("403",                          (cosy,    always(http(403, "Model.AccessDenied")),             Some(FailedPrecondition), 1)),
        ("event:error before audio",     (cosy,    Fault::once(sse_error(0, 500, "InternalError")),     None,                     2)),
        ("event:error after audio",      (cosy,    always(sse_error(3, 500, "InternalError")),          Some(Unavailable),        1)),
        ("event:error 400 before audio", (qwen,    always(sse_error(0, 400, "InvalidParameter")),       Some(InvalidArgument),    1)),
        ("200 with a throttling code",   (cosy,    always(ok_code("Throttling.RateQuota")),             Some(ResourceExhausted),  3)),
        ("200 with InvalidParameter",    (minimax, always(ok_code("InvalidParameter")),                 Some(InvalidArgument),    1)),
        ("MiniMax base_resp 1002",       (minimax, always(minimax_status(1002, "rate limited")),        Some(ResourceExhausted),  3)),
        ("MiniMax base_resp 2013",       (minimax, always(minimax_status(2013, "bad params")),          Some(InvalidArgument),    1)),
        ("drop after audio",             (cosy,    always(FaultKind::DropAfter { frames: 3 }),          Some(Unavailable),        1)),
        ("drop before audio",            (qwen,    Fault::once(FaultKind::DropAfter { frames: 0 }),     None,                     2)),
        ("stall after audio",            (cosy,    always(FaultKind::StallAfter { frames: 2 }),         Some(Unavailable),        1)),
        ("slow first byte",              (cosy,    always(FaultKind::SlowFirstByte { delay: secs(2) }), Some(Unavailable),        3)),
        ("bad json",                     (qwen,    always(FaultKind::BadJsonAfter { frames: 2 }),       Some(Internal),           1)),
        ("bad base64",                   (cosy,    always(FaultKind::BadBase64After { frames: 2 }),     Some(Internal),           1)),
        ("bad hex",                      (minimax, always(FaultKind::BadBase64After { frames: 2 }),     Some(Internal),           1)),
        ("corrupt audio",                (cosy,    always(FaultKind::CorruptAudio),                     Some(Internal),           1)),
        ("multi-line data",              (minimax, always(FaultKind::MultiLineData),                    None,                     1)),
    ];
    let voice = |m: &str| FAMILIES.iter().find(|(f, _)| *f == m).unwrap().1;
    each_row(rows, async |(model, fault, code, tries): FaultRow| {
        double.clear_faults();
        let kind = fault.kind.clone();
        double.push_fault(fault);
        let before = double.requests().len();
        let result = synthesize(
            &mut client,
            pcm16k(model, voice(model), "Fault injection test."),
        )
        .await;
        let made = double.requests().len() - before;
        match (code, result) {
            (None, Ok(c)) => assert!((peak_frequency(&c.mono(), 16000) - 440.0).abs() <= 1.0),
            (Some(code), Err(status)) => {
                assert_eq!(status.code(), code, "{status:?}");
                assert!(!status.message().contains(API_KEY));
                if matches!(
                    kind,
                    FaultKind::HttpError { .. } | FaultKind::OkWithCode { .. }
                ) {
                    assert!(
                        status.message().contains("request_id"),
                        "the message names the upstream request: {}",
                        status.message()
                    );
                }
            }
            (want, got) => panic!("want {want:?}, got {:?}", got.map(|c| c.order)),
        }
        assert_eq!(made, tries, "upstream tries");
        // A normal request succeeds right after.
        double.clear_faults();
        let c = synthesize(&mut client, pcm16k(model, voice(model), "All good."))
            .await
            .unwrap_or_else(|s| panic!("after the fault: {s:?}"));
        assert!(!c.bytes().is_empty());
    })
    .await;
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_failed_precondition_naming_the_setting_never_the_key() {
    logs::capture();
    let double = DashScopeDouble::start("sk-the-right-one").await;
    let daemon = spawn_daemon_against(&double, "", &[]).await;
    let mut client = daemon.client().await;
    let status = synthesize(&mut client, pcm16k("qwen3-tts-flash", "Cherry", "Hi."))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("DASHSCOPE_API_KEY"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("InvalidApiKey"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(API_KEY));
    assert_eq!(double.requests().len(), 1, "401 is never retried");
    // With a key configured, the default model is a cloud one.
    let c = synthesize(&mut client, request("Hi.", Encoding::PcmS16le, 16000, 1)).await;
    assert_eq!(c.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(double.requests()[1].model, "cosyvoice-v3-flash");
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_voices_are_invalid_argument_in_both_upstream_modes() {
    let (double, daemon) = setup().await;
    let mut client = daemon.client().await;
    // Qwen's list is closed: refused before any call.
    let s = synthesize(&mut client, pcm16k("qwen3-tts-flash", "cherry", "Hi."))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("voice:"), "{}", s.message());
    assert!(double.requests().is_empty());
    // cosyvoice-v3.5 has no system voices.
    let s = synthesize(
        &mut client,
        pcm16k("cosyvoice-v3.5-flash", "longanyang", "Hi."),
    )
    .await
    .unwrap_err();
    assert!(s.message().contains("no system voices"), "{}", s.message());
    // CosyVoice's catalogue is open: the upstream decides, as JSON or as an SSE error.
    for sse in [false, true] {
        double.set_options(Options {
            unknown_voice_as_sse_error: sse,
            ..Options::default()
        });
        let s = synthesize(
            &mut client,
            pcm16k("cosyvoice-v3-flash", "no_such_voice", "Hi."),
        )
        .await
        .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "sse {sse}: {s:?}");
        assert!(s.message().contains("InvalidParameter"), "{}", s.message());
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_options_reach_upstream_where_they_belong_and_are_refused_elsewhere() {
    let (double, daemon) = setup().await;
    let mut client = daemon.client().await;
    let base = |model: &str, voice: &str| pcm16k(model, voice, "Options.");
    // MiniMax: emotion, pitch in semitones, speed, language boost, pronunciations.
    let mut r = base("MiniMax/speech-02-hd", "male-qn-qingse");
    r.emotion = "whisper".into();
    r.pitch = 2.0;
    r.speed = 1.5;
    r.language = "zh-HK".into();
    r.pronunciations.insert("处理".into(), "(chu3)(li3)".into());
    synthesize(&mut client, r).await.unwrap();
    // Qwen instruct: instructions in parameters, language_type.
    let mut r = base("qwen3-tts-instruct-flash", "Cherry");
    r.instructions = "Speak warmly.".into();
    r.optimize_instructions = true;
    r.language = "en-US".into();
    synthesize(&mut client, r).await.unwrap();
    // CosyVoice: seed, hot_fix, language hints, instruction.
    let mut r = base("cosyvoice-v3-flash", "longanyang");
    r.seed = 77;
    r.replacements.insert("今天".into(), "金天".into());
    r.language = "zh".into();
    synthesize(&mut client, r).await.unwrap();
    let log = double.requests();
    let mm = &log[0].body["input"];
    assert_eq!(mm["voice_setting"]["emotion"], "whisper");
    assert_eq!(mm["voice_setting"]["pitch"], 12);
    assert_eq!(mm["voice_setting"]["speed"], 1.5);
    assert_eq!(mm["language_boost"], "Chinese,Yue");
    assert_eq!(mm["pronunciation_dict"]["tone"][0], "处理/(chu3)(li3)");
    let q = &log[1].body;
    assert_eq!(q["parameters"]["instructions"], "Speak warmly.");
    assert_eq!(q["parameters"]["optimize_instructions"], true);
    assert_eq!(q["input"]["language_type"], "English");
    let cv = &log[2].body["input"];
    assert_eq!(cv["seed"], 77);
    assert_eq!(cv["hot_fix"]["replace"][0]["今天"], "金天");
    assert_eq!(cv["language_hints"][0], "zh");

    // Refused, naming the field, before any upstream call.
    let n = double.requests().len();
    let mut cases = Vec::new();
    let mut r = base("cosyvoice-v3-flash", "longanyang");
    r.emotion = "happy".into();
    cases.push(("emotion", r));
    let mut r = base("MiniMax/speech-2.8-hd", "male-qn-qingse");
    r.emotion = "whisper".into();
    cases.push(("emotion", r));
    let mut r = base("qwen3-tts-flash", "Cherry");
    r.instructions = "Speak warmly.".into();
    cases.push(("instructions", r));
    let mut r = base("qwen3-tts-flash", "Cherry");
    r.seed = 5;
    cases.push(("seed", r));
    let mut r = base("cosyvoice-v3-flash", "longanyang");
    r.seed = 70000;
    cases.push(("seed", r));
    let mut r = base("qwen3-tts-flash", "Cherry");
    r.language = "tlh".into();
    cases.push(("language", r));
    let mut r = base("espeak-ng", "en");
    r.emotion = "happy".into();
    cases.push(("emotion", r));
    let mut r = base("cosyvoice-v3-flash", "longanyang");
    for i in 0..101 {
        r.pronunciations.insert(format!("w{i}"), "x".into());
    }
    cases.push(("pronunciations", r));
    for (field, r) in cases {
        let s = synthesize(&mut client, r).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(s.message().starts_with(field), "{field}: {}", s.message());
    }
    assert_eq!(double.requests().len(), n, "nothing reached upstream");
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancel_drops_the_upstream_request_within_a_second() {
    let (double, daemon) = setup().await;
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let mut client = daemon.client().await;
    for (model, voice) in FAMILIES {
        let before = double.requests().len();
        let mut stream = client
            .synthesize(pcm16k(
                model,
                voice,
                &"A long sentence to speak. ".repeat(4),
            ))
            .await
            .unwrap()
            .into_inner();
        // Wait for audio, then hang up.
        loop {
            match stream.next().await.unwrap().unwrap().payload.unwrap() {
                Payload::Audio(_) => break,
                _ => continue,
            }
        }
        drop(stream);
        let entry = double
            .wait_ended(before, Duration::from_secs(1))
            .await
            .unwrap_or_else(|| panic!("{model}: the upstream request did not end within 1 s"));
        assert!(entry.disconnected && !entry.completed, "{model}: {entry:?}");
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_voices_has_the_catalogue() {
    let (double, daemon) = setup().await;
    let mut client = daemon.client().await;
    let list = |model: &str| pb::ListVoicesRequest {
        model: model.to_owned(),
        language: String::new(),
    };
    let v = client
        .list_voices(list("qwen3-tts-flash"))
        .await
        .unwrap()
        .into_inner()
        .voices;
    assert_eq!(v.len(), 49);
    assert!(
        v.iter()
            .all(|v| v.engine == "qwen-tts" && v.native_sample_rate_hz == 24000)
    );
    let v = client
        .list_voices(list("cosyvoice-v3-flash"))
        .await
        .unwrap()
        .into_inner()
        .voices;
    assert!(v.iter().any(|v| v.name == "longanyang"));
    let v = client
        .list_voices(list("cosyvoice-v3.5-flash"))
        .await
        .unwrap()
        .into_inner()
        .voices;
    assert!(v.is_empty(), "cosyvoice-v3.5 has no system voices");
    let all = client
        .list_voices(list(""))
        .await
        .unwrap()
        .into_inner()
        .voices;
    for engine in ["espeak-ng", "cosyvoice", "qwen-tts", "minimax"] {
        assert!(all.iter().any(|v| v.engine == engine), "{engine}");
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

/// Runs last by name order is not guaranteed, so it checks the logs of whatever ran in this
/// process since the capture was installed (by the first test of this module) plus its own
/// traffic, at TRACE level for every crate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_logs_never_contain_the_key() {
    let (double, daemon) = setup().await;
    let mut client = daemon.client().await;
    double.push_fault(Fault::once(http(401, "InvalidApiKey")));
    let _ = synthesize(&mut client, pcm16k("qwen3-tts-flash", "Cherry", "Hi.")).await;
    synthesize(&mut client, pcm16k("qwen3-tts-flash", "Cherry", "Hi."))
        .await
        .unwrap();
    daemon.stop().await.unwrap();
    double.stop().await;
    let captured = logs::capture();
    assert!(
        captured.bytes() > 1000,
        "the capture works ({} bytes)",
        captured.bytes()
    );
    let leaks = captured.leaks();
    assert!(
        !leaks.iter().any(|line| line.contains(API_KEY)),
        "the API key appeared in the logs: {leaks:?}"
    );
    assert!(
        leaks.is_empty(),
        "part of the API key appeared in the logs: {leaks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_clients_deadline() {
    // Backoff steps of about 1.5–3 s against a 1 s deadline: the first failure is the last try.
    let (double, daemon) = setup_with("[dashscope]\nretry_base_ms = 3000\n").await;
    let mut client = daemon.client().await;
    double.push_fault(Fault::always(http(503, "ModelUnavailable")));
    let mut r = tonic::Request::new(pcm16k("cosyvoice-v3-flash", "longanyang", "Deadline."));
    r.set_timeout(Duration::from_secs(1));
    let status = match client.synthesize(r).await {
        Err(s) => s,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.next().await {
                    Some(Err(s)) => break s,
                    Some(Ok(_)) => continue,
                    None => panic!("the stream ended without an error"),
                }
            }
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        double.requests().len(),
        1,
        "no retry that could not finish in time"
    );
    daemon.stop().await.unwrap();
    double.stop().await;
}

/// Word timings through gRPC: every word of a text long enough for several pieces, in order,
/// each where its own audio is (each sentence is its own piece with its own tone), the last one
/// ending with the audio; refused by models that give none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_timestamps_point_into_the_audio_across_pieces() {
    let (double, daemon) = setup().await;
    let mut client = daemon.client().await;
    // Three sentences of 90-odd units: too long to share a 120-unit piece.
    let sentences = [
        "@440Hz the first sentence has words that sound at four hundred and forty hertz for a while.",
        "@660Hz the second one is pitched higher at six hundred and sixty hertz to tell it apart.",
        "@880Hz and the third sentence ends the text at eight hundred and eighty hertz right here.",
    ];
    let text = sentences.join(" ");
    let mut r = pcm16k("cosyvoice-v3-flash", "longanyang", &text);
    r.word_timestamps = true;
    let c = synthesize(&mut client, r.clone())
        .await
        .expect("synthesize");
    let requests = double.requests();
    assert_eq!(requests.len(), 3, "one piece per sentence");
    assert!(
        requests
            .iter()
            .all(|q| q.body["input"]["word_timestamp_enabled"] == true),
        "asked upstream for word timings"
    );
    let x = c.mono();
    let total_ms = duration_ms(x.len(), 16000);
    let want_words: Vec<&str> = sentences
        .iter()
        .flat_map(|s| s.split_whitespace())
        .collect();
    let got: Vec<&str> = c.words.iter().map(|w| w.text.as_str()).collect();
    assert_eq!(got, want_words, "every word once, in order");
    assert!(c.order.starts_with('i') && c.order.ends_with('s') && c.order.contains('w'));
    for pair in c.words.windows(2) {
        assert!(pair[0].begin_ms <= pair[0].end_ms && pair[0].end_ms <= pair[1].begin_ms + 1);
    }
    let last = c.words.last().unwrap();
    assert!(
        (f64::from(last.end_ms) - total_ms).abs() <= 2.0,
        "the last word ends with the audio: {} ms of {total_ms}",
        last.end_ms
    );
    // Each word (at least 2 characters: 80 ms) sounds at its sentence's frequency.
    let mut checked = 0;
    for (w, hz) in sentences
        .iter()
        .zip([440.0, 660.0, 880.0])
        .flat_map(|(s, hz)| s.split_whitespace().map(move |w| (w, hz)))
        .zip(&c.words)
        .map(|((_, hz), w)| (w, hz))
    {
        if w.end_ms - w.begin_ms < 80 {
            continue;
        }
        let span = &x[(w.begin_ms as usize * 16)..(w.end_ms as usize * 16).min(x.len())];
        let f = peak_frequency(span, 16000);
        // 80 ms of audio: bins 12.5 Hz apart, interpolated.
        assert!((f - hz).abs() < 8.0, "{:?} at {f:.1} Hz, want {hz}", w.text);
        checked += 1;
    }
    assert!(checked > 30, "{checked} words checked");
    println!(
        "{} words over {total_ms} ms in 3 pieces; last ends at {} ms; {checked} checked by ear",
        c.words.len(),
        last.end_ms
    );

    // Without the flag: no words, and upstream is not asked.
    r.word_timestamps = false;
    let plain = synthesize(&mut client, r).await.unwrap();
    assert!(plain.words.is_empty() && !plain.order.contains('w'));
    assert!(
        double.requests()[3..]
            .iter()
            .all(|q| q.body["input"].get("word_timestamp_enabled").is_none())
    );

    // Models that give none say so.
    for (model, voice) in [
        ("qwen3-tts-flash", "Cherry"),
        ("MiniMax/speech-2.8-hd", "male-qn-qingse"),
        ("espeak-ng", ""),
    ] {
        let mut r = pcm16k(model, voice, "Hello.");
        r.word_timestamps = true;
        let status = synthesize(&mut client, r).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{model}");
        assert!(
            status.message().starts_with("word_timestamps:"),
            "{model}: {}",
            status.message()
        );
    }
}
