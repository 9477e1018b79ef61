//! Custom voices through gRPC against the DashScope double (its custom-voice endpoint):
//! clone then synthesize with the new voice (its own tone from the double), design then fetch
//! the preview, a voice used with the wrong model refused before any upstream call, delete then
//! synthesize refused, the registry surviving a daemon restart, the ListVoices merge, and each
//! error mapped to its status.

use std::time::Duration;

use base64::Engine as _;
use herald::pb::{
    self, audio_format::Encoding, create_voice_request::Source, custom_voice::Status as VStatus,
    speech_client::SpeechClient,
};
use tonic::{Code, transport::Channel};

use crate::support::{dashscope::*, *};

struct Setup {
    double: DashScopeDouble,
    daemon: TestDaemon,
    state: tempfile::TempDir,
}

async fn start_daemon(double: &DashScopeDouble, state: &std::path::Path) -> TestDaemon {
    let toml = layered(&[
        FAST_UPSTREAM,
        ENGINES_ONLY,
        "[voices]\npoll_initial_ms = 20\npoll_max_ms = 40\n",
    ]);
    let state = state.display().to_string();
    spawn_daemon_against(double, &toml, &[("STATE_DIRECTORY", &state)]).await
}

async fn setup() -> Setup {
    let double = DashScopeDouble::start(API_KEY).await;
    let state = tempfile::tempdir().expect("state dir");
    let daemon = start_daemon(&double, state.path()).await;
    Setup {
        double,
        daemon,
        state,
    }
}

/// A 16-bit PCM WAV of a 300 Hz tone (or silence with `amp` 0).
fn wav(rate: u32, channels: u16, seconds: f64, amp: f64) -> Vec<u8> {
    let frames = (f64::from(rate) * seconds) as usize;
    let data_len = (frames * usize::from(channels) * 2) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    out.extend_from_slice(&(channels * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        let t = i as f64 / f64::from(rate);
        let v = ((t * 300.0 * std::f64::consts::TAU).sin() * amp * 32767.0) as i16;
        for _ in 0..channels {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn clone_req(model: &str, name: &str, audio: Vec<u8>, wait: bool) -> pb::CreateVoiceRequest {
    pb::CreateVoiceRequest {
        target_model: model.to_owned(),
        name: name.to_owned(),
        source: Some(Source::Clone(pb::CloneSource {
            sample: Some(pb::clone_source::Sample::Audio(audio)),
            transcript: String::new(),
        })),
        language: String::new(),
        wait,
    }
}

/// A clone from a URL upstream fetches (no local check, no upload fallback).
fn url_req(model: &str, name: &str) -> pb::CreateVoiceRequest {
    pb::CreateVoiceRequest {
        source: Some(Source::Clone(pb::CloneSource {
            sample: Some(pb::clone_source::Sample::Url(
                "https://example.invalid/sample.wav".to_owned(),
            )),
            transcript: String::new(),
        })),
        ..clone_req(model, name, Vec::new(), false)
    }
}

fn design_req(model: &str, name: &str) -> pb::CreateVoiceRequest {
    pb::CreateVoiceRequest {
        target_model: model.to_owned(),
        name: name.to_owned(),
        source: Some(Source::Design(pb::DesignSource {
            description: "warm, calm, middle-aged female, slightly slow".to_owned(),
            preview_text: "Welcome to the museum.".to_owned(),
        })),
        language: "en".to_owned(),
        wait: false,
    }
}

fn synth(model: &str, voice: &str) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: model.to_owned(),
        voice: voice.to_owned(),
        ..request("Hello from the kiosk.", Encoding::PcmS16le, 16000, 1)
    }
}

/// The peak frequency of a synthesized PCM stream.
fn tone_of(c: &Collected) -> f64 {
    let f = c.format();
    peak_frequency(&s16_to_f32(&c.bytes()), f.sample_rate_hz)
}

fn assert_near(got: f64, want: f32) {
    assert!(
        (got - f64::from(want)).abs() < 5.0,
        "tone {got:.1} Hz, want {want} Hz"
    );
}

fn wav_tone(wav: &[u8]) -> (u32, f64) {
    let r = hound::WavReader::new(std::io::Cursor::new(wav.to_vec())).expect("preview is a WAV");
    let rate = r.spec().sample_rate;
    let samples: Vec<f32> = r
        .into_samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    (rate, peak_frequency(&samples, rate))
}

#[tokio::test]
async fn clone_then_synthesize_with_the_new_voice() {
    let s = setup().await;
    s.double.set_custom_options(CustomOptions {
        deploying_polls: 2,
        ..CustomOptions::default()
    });
    let mut client = s.daemon.client().await;
    let sample = wav(16000, 1, 6.0, 0.5);
    let voice = client
        .create_voice(clone_req(
            "cosyvoice-v3-flash",
            "kiosk",
            sample.clone(),
            true,
        ))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(voice.status(), VStatus::Ready, "{voice:?}");
    assert_eq!(voice.target_model, "cosyvoice-v3-flash");
    assert_eq!(voice.kind, "clone");
    assert_eq!(voice.surface, "voice-enrollment");
    assert!(
        voice.name.starts_with("cosyvoice-v3-flash-kiosk-"),
        "{}",
        voice.name
    );
    // Upload: the sample, unchanged, as a data URI; then polls until OK (2 × DEPLOYING).
    let calls = s.double.customization_requests();
    let create = &calls[0];
    assert_eq!(create.body["model"], "voice-enrollment");
    assert_eq!(create.body["input"]["action"], "create_voice");
    assert_eq!(create.body["input"]["prefix"], "kiosk");
    let url = create.body["input"]["url"].as_str().unwrap();
    let b64 = url
        .strip_prefix("data:audio/wav;base64,")
        .expect("data URI");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        sample
    );
    let polls: Vec<_> = calls
        .iter()
        .filter(|r| r.body["input"]["action"] == "query_voice")
        .collect();
    assert_eq!(polls.len(), 3, "DEPLOYING, DEPLOYING, OK");

    // Synthesis with the new voice: the model comes from the registry; the tone is the voice's.
    let out = synthesize(&mut client, synth("", &voice.name))
        .await
        .expect("synthesize");
    assert_eq!(out.info().model, "cosyvoice-v3-flash");
    assert_eq!(out.info().voice, voice.name);
    assert_near(tone_of(&out), custom_voice_tone("kiosk"));
    s.daemon.stop().await.unwrap();
}

#[tokio::test]
async fn design_then_fetch_the_preview_and_speak_with_it() {
    let s = setup().await;
    let mut client = s.daemon.client().await;
    let voice = client
        .create_voice(design_req("qwen3-tts-vd-2026-01-26", "robot_1"))
        .await
        .expect("design")
        .into_inner();
    assert_eq!(voice.status(), VStatus::Ready);
    assert_eq!(voice.kind, "design");
    assert_eq!(voice.surface, "qwen-voice-design");
    assert!(
        voice.name.starts_with("qwen-tts-vd-robot_1-voice-"),
        "{}",
        voice.name
    );
    let call = &s.double.customization_requests()[0];
    assert_eq!(call.body["input"]["preferred_name"], "robot_1");
    assert_eq!(call.body["input"]["language"], "en");
    assert_eq!(call.body["parameters"]["response_format"], "wav");
    let (rate, hz) = wav_tone(&voice.preview_audio);
    assert_eq!(rate, 24000);
    assert_eq!(voice.preview_format.unwrap().sample_rate_hz, 24000);
    assert_near(hz, custom_voice_tone("robot_1"));

    // GetVoice returns the stored preview (upstream's query has none).
    let got = client
        .get_voice(pb::GetVoiceRequest {
            name: voice.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.preview_audio, voice.preview_audio);
    assert_eq!(
        got.description,
        "warm, calm, middle-aged female, slightly slow"
    );

    let out = synthesize(&mut client, synth("qwen3-tts-vd-2026-01-26", &voice.name))
        .await
        .expect("synthesize");
    assert_near(tone_of(&out), custom_voice_tone("robot_1"));

    // A CosyVoice design without wait: DEPLOYING, then GetVoice asks upstream (1 poll → OK).
    let cosy = client
        .create_voice(pb::CreateVoiceRequest {
            name: "curator".to_owned(),
            ..design_req("cosyvoice-v3.5-plus", "x")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cosy.status(), VStatus::Deploying);
    assert!(cosy.name.starts_with("cosyvoice-v3.5-plus-vd-curator-"));
    assert_near(
        wav_tone(&cosy.preview_audio).1,
        custom_voice_tone("curator"),
    );
    // While DEPLOYING, herald passes the voice on (its record may be stale) and upstream refuses.
    let before = s.double.synthesis_requests().len();
    let err = synthesize(&mut client, synth("", &cosy.name))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("418"), "{}", err.message());
    assert_eq!(s.double.synthesis_requests().len(), before + 1);
    let get = |name: String| pb::GetVoiceRequest { name };
    let first = client.get_voice(get(cosy.name.clone())).await.unwrap();
    assert_eq!(first.into_inner().status(), VStatus::Deploying);
    let second = client.get_voice(get(cosy.name.clone())).await.unwrap();
    assert_eq!(second.into_inner().status(), VStatus::Ready);
    let out = synthesize(&mut client, synth("cosyvoice-v3.5-plus", &cosy.name))
        .await
        .expect("ready now");
    assert_near(tone_of(&out), custom_voice_tone("curator"));
    s.daemon.stop().await.unwrap();
}

#[tokio::test]
async fn a_voice_with_the_wrong_model_is_refused_before_any_upstream_call() {
    let s = setup().await;
    let mut client = s.daemon.client().await;
    let voice = client
        .create_voice(clone_req(
            "qwen3-tts-vc-2026-01-22",
            "guide",
            wav(24000, 1, 5.0, 0.5),
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        voice.status(),
        VStatus::Ready,
        "Qwen VC voices are ready at once"
    );
    let before = s.double.synthesis_requests().len();
    let err = synthesize(&mut client, synth("cosyvoice-v3-flash", &voice.name))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("qwen3-tts-vc-2026-01-22") && err.message().contains("voice"),
        "{}",
        err.message()
    );
    assert_eq!(
        s.double.synthesis_requests().len(),
        before,
        "no upstream call"
    );
    // The right model works and sounds like the voice.
    let out = synthesize(&mut client, synth("qwen3-tts-vc-2026-01-22", &voice.name))
        .await
        .unwrap();
    assert_near(tone_of(&out), custom_voice_tone("guide"));
    s.daemon.stop().await.unwrap();
}

#[tokio::test]
async fn delete_then_synthesize_is_refused() {
    let s = setup().await;
    s.double.set_custom_options(CustomOptions {
        deploying_polls: 0,
        ..CustomOptions::default()
    });
    let mut client = s.daemon.client().await;
    let voice = client
        .create_voice(clone_req(
            "cosyvoice-v3-plus",
            "gone",
            wav(16000, 1, 5.5, 0.5),
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    synthesize(&mut client, synth("", &voice.name))
        .await
        .expect("works before the delete");
    let gone = client
        .delete_voice(pb::DeleteVoiceRequest {
            name: voice.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.name, voice.name);
    assert!(!gone.already_gone_upstream);
    assert!(s.double.custom_voices().is_empty(), "deleted upstream");
    let delete = s.double.customization_requests().pop().unwrap();
    assert_eq!(delete.body["input"]["action"], "delete_voice");
    assert_eq!(delete.body["input"]["voice_id"], voice.name.as_str());

    let before = s.double.synthesis_requests().len();
    let err = synthesize(&mut client, synth("cosyvoice-v3-plus", &voice.name))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("deleted"), "{}", err.message());
    assert_eq!(s.double.synthesis_requests().len(), before);
    let err = client
        .get_voice(pb::GetVoiceRequest {
            name: voice.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .delete_voice(pb::DeleteVoiceRequest { name: voice.name })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    s.daemon.stop().await.unwrap();
}

#[tokio::test]
async fn the_registry_survives_a_daemon_restart() {
    let s = setup().await;
    let mut client = s.daemon.client().await;
    let voice = client
        .create_voice(clone_req(
            "qwen3-tts-vc-2026-01-22",
            "keeper",
            wav(24000, 1, 4.0, 0.5),
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    s.daemon.stop().await.unwrap();
    assert!(s.state.path().join("voices.json").exists());

    let daemon = start_daemon(&s.double, s.state.path()).await;
    let mut client = daemon.client().await;
    let got = client
        .get_voice(pb::GetVoiceRequest {
            name: voice.name.clone(),
        })
        .await
        .expect("known after the restart")
        .into_inner();
    assert_eq!(got.target_model, "qwen3-tts-vc-2026-01-22");
    assert_eq!(got.created_at_ms, voice.created_at_ms);
    let before = s.double.synthesis_requests().len();
    let err = synthesize(&mut client, synth("qwen3-tts-flash", &voice.name))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("qwen3-tts-vc-2026-01-22"));
    assert_eq!(s.double.synthesis_requests().len(), before);
    let out = synthesize(&mut client, synth("", &voice.name))
        .await
        .unwrap();
    assert_near(tone_of(&out), custom_voice_tone("keeper"));
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn list_voices_merges_the_registry_with_upstream_listings() {
    let s = setup().await;
    let mut client = s.daemon.client().await;
    let ours = client
        .create_voice(design_req("qwen3-tts-vd-2026-01-26", "ours"))
        .await
        .unwrap()
        .into_inner();
    // A voice made with the same key elsewhere (straight at the double).
    let body = serde_json::json!({"model": "qwen-voice-enrollment", "input": {
        "action": "create", "target_model": "qwen3-tts-vc-2026-01-22", "preferred_name": "theirs",
        "audio": {"data": "https://example.invalid/sample.wav"}}});
    let theirs: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/services/audio/tts/customization",
            s.double.base_url()
        ))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let theirs = theirs["output"]["voice"].as_str().unwrap().to_owned();
    let all = client
        .list_voices(pb::ListVoicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .voices;
    let custom: Vec<_> = all.iter().filter(|v| v.custom).collect();
    assert_eq!(custom.len(), 2, "{custom:?}");
    let o = custom.iter().find(|v| v.name == ours.name).unwrap();
    assert_eq!(o.model, "qwen3-tts-vd-2026-01-26");
    assert_eq!(o.engine, "qwen-tts");
    assert_eq!(o.custom_status(), VStatus::Ready);
    let t = custom.iter().find(|v| v.name == theirs).unwrap();
    assert_eq!(t.model, "qwen3-tts-vc-2026-01-22");
    let only = client
        .list_voices(pb::ListVoicesRequest {
            model: "qwen3-tts-vd-2026-01-26".to_owned(),
            language: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .voices;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].name, ours.name);
    // A model DashScope does not serve: no upstream listing.
    let calls = s.double.customization_requests().len();
    let local = client
        .list_voices(pb::ListVoicesRequest {
            model: "espeak-ng".to_owned(),
            language: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .voices;
    assert!(local.iter().all(|v| !v.custom));
    assert_eq!(s.double.customization_requests().len(), calls);
    s.daemon.stop().await.unwrap();
}

#[tokio::test]
async fn qwen_clones_get_a_mono_sample_and_surface_the_fallback_warning() {
    let s = setup().await;
    s.double.set_custom_options(CustomOptions {
        qwen_fallback_mode: true,
        ..CustomOptions::default()
    });
    let mut client = s.daemon.client().await;
    let mut req = clone_req(
        "qwen3-tts-vc-2026-01-22",
        "Stereo_1",
        wav(24000, 2, 4.0, 0.5),
        false,
    );
    if let Some(Source::Clone(c)) = &mut req.source {
        c.transcript = "what the sample says".to_owned();
    }
    let voice = client.create_voice(req).await.unwrap().into_inner();
    assert!(
        voice.warning.contains("no_valid_asr_segments"),
        "{}",
        voice.warning
    );
    let call = &s.double.customization_requests()[0];
    assert_eq!(call.body["input"]["text"], "what the sample says");
    let data = call.body["input"]["audio"]["data"].as_str().unwrap();
    let b64 = data.strip_prefix("data:audio/wav;base64,").unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
    assert_eq!(r.spec().channels, 1, "herald mixed the stereo sample down");
    assert_eq!(r.spec().sample_rate, 24000);
    assert_eq!(r.duration(), 96_000);
    s.daemon.stop().await.unwrap();
}

/// A create the daemon refuses: the request, the status, and words its message holds.
type Refused = (pb::CreateVoiceRequest, Code, &'static [&'static str]);

/// A create upstream refuses: the endpoint's knobs and a fault scripted for it, and the create.
type UpstreamRefused = (CustomOptions, Option<Fault>, Refused);

async fn assert_refused(client: &mut SpeechClient<Channel>, (req, code, words): Refused) {
    let e = client.create_voice(req).await.expect_err("an error");
    assert_eq!(e.code(), code, "{}", e.message());
    for w in words {
        assert!(e.message().contains(w), "{w:?} not in {:?}", e.message());
    }
}

#[tokio::test]
async fn each_error_is_mapped() {
    use Code::{FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable};
    let s = setup().await;
    let mut client = s.daemon.client().await;
    let good = || wav(16000, 1, 6.0, 0.5);
    let cosy_clone =
        |name: &str, sample: Vec<u8>| clone_req("cosyvoice-v3-flash", name, sample, false);
    let long = pb::CreateVoiceRequest {
        source: Some(Source::Design(pb::DesignSource {
            description: "x".repeat(501),
            preview_text: "hi".to_owned(),
        })),
        ..design_req("cosyvoice-v3-flash", "long")
    };
    // Local checks: nothing reaches upstream.
    // name, (request, status, words of the message)
    #[rustfmt::skip]
    let local: [(&str, Refused); 7] = [
        ("a sample under 5 s",           (cosy_clone("short", wav(16000, 1, 1.0, 0.5)),     InvalidArgument, &["clone.audio", "minimum of 5 s"])),
        ("a sample under 16 kHz",        (cosy_clone("lowrate", wav(8000, 1, 5.0, 0.5)),    InvalidArgument, &["clone.audio", "16000 Hz"])),
        ("an Ogg sample",                (cosy_clone("ogg", b"OggS0000000000000".to_vec()), InvalidArgument, &["clone.audio", "WAV, MP3 or M4A"])),
        ("an upper-case name",           (cosy_clone("Upper", good()),                      InvalidArgument, &["name", "1..=9 lowercase"])),
        ("a model that does not clone",  (clone_req("qwen3-tts-flash", "x", good(), false), InvalidArgument, &["target_model", "qwen3-tts-vc-2026-01-22"])),
        ("a model that does not design", (design_req("cosyvoice-v2", "x"),                  InvalidArgument, &["target_model", "cannot design"])),
        ("a long description",           (long,                                             InvalidArgument, &["design.description", "500"])),
    ];
    each_row(local, async |refused| {
        assert_refused(&mut client, refused).await
    })
    .await;
    assert!(
        s.double.customization_requests().is_empty(),
        "refused locally"
    );

    // Upstream's own codes, with the endpoint's knobs and the fault each row scripts.
    let defaults = CustomOptions::default;
    let quota_0 = || CustomOptions {
        quota: 0,
        ..CustomOptions::default()
    };
    let fault = |status, code: &str| {
        let kind = FaultKind::HttpError {
            status,
            code: code.into(),
            message: "scripted".into(),
        };
        Some(Fault::once(kind).for_model("voice-enrollment"))
    };
    // A 200 body with a code is an error too (never retried: creates consume quota).
    let ok_with_code = Some(
        Fault::once(FaultKind::OkWithCode {
            code: "Throttling.AllocationQuota".into(),
            message: "quota in a 200".into(),
        })
        .for_model("qwen-voice-design"),
    );
    let by_url = || url_req("cosyvoice-v3-flash", "fault");
    // name, (knobs, fault, (request, status, words of the message))
    #[rustfmt::skip]
    let upstream: [(&str, UpstreamRefused); 7] = [
        ("a silent sample",       (defaults(), None,                               (cosy_clone("silent", wav(16000, 1, 6.0, 0.0)),   InvalidArgument,    &["sample audio", "Audio.AudioSilentError", "Silent file unsupported."]))),
        ("the CosyVoice quota",   (quota_0(),  None,                               (cosy_clone("full", good()),                      ResourceExhausted,  &["quota", "Throttling.AllocationQuota", "delete"]))),
        ("the Qwen design quota", (quota_0(),  None,                               (design_req("qwen3-tts-vd-2026-01-26", "full"),   ResourceExhausted,  &["Maximum voice storage limit exceeded"]))),
        ("401",                   (defaults(), fault(401, "InvalidApiKey"),        (by_url(),                                        FailedPrecondition, &["InvalidApiKey"]))),
        ("429",                   (defaults(), fault(429, "Throttling.RateQuota"), (by_url(),                                        ResourceExhausted,  &["Throttling.RateQuota"]))),
        ("503",                   (defaults(), fault(503, "ServiceUnavailable"),   (by_url(),                                        Unavailable,        &["ServiceUnavailable"]))),
        ("200 with a code",       (defaults(), ok_with_code,                       (design_req("qwen3-tts-vd-2026-01-26", "okcode"), ResourceExhausted,  &["quota in a 200"]))),
    ];
    each_row(upstream, async |(options, fault, refused)| {
        s.double.set_custom_options(options);
        if let Some(fault) = fault {
            s.double.push_fault(fault);
        }
        assert_refused(&mut client, refused).await;
    })
    .await;
    let creates = s
        .double
        .customization_requests()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert_eq!(creates, 1, "a failed create is not retried");

    // Rejected in review: FAILED, and synthesis with it is refused locally.
    s.double.set_custom_options(CustomOptions {
        end_undeployed: true,
        ..CustomOptions::default()
    });
    let rejected = client
        .create_voice(clone_req("cosyvoice-v3-flash", "rejected", good(), true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.status(), VStatus::Failed);
    let err = synthesize(&mut client, synth("", &rejected.name))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("FAILED"), "{}", err.message());

    // Waiting past the deadline: DEADLINE_EXCEEDED, the voice kept as DEPLOYING.
    s.double.set_custom_options(CustomOptions {
        deploying_polls: 1_000_000,
        ..CustomOptions::default()
    });
    let mut req = tonic::Request::new(clone_req("cosyvoice-v3-flash", "slow", good(), true));
    req.set_timeout(Duration::from_millis(400));
    let err = client.create_voice(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    let slow = s
        .double
        .custom_voices()
        .into_iter()
        .find(|v| v.name == "slow")
        .expect("created upstream");
    let kept = client
        .get_voice(pb::GetVoiceRequest { name: slow.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.status(), VStatus::Deploying);
    s.daemon.stop().await.unwrap();
}

/// `herald voice clone|design|list|status|delete` against the daemon's unix socket.
#[tokio::test]
async fn the_voice_command_line() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("curator.wav");
    std::fs::write(&sample, wav(16000, 1, 6.0, 0.5)).unwrap();
    let preview = dir.path().join("preview.wav");
    let socket = s.daemon.unix.display().to_string();
    let run = |args: Vec<String>| {
        let socket = socket.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
                .arg("voice")
                .args(&args)
                .args(["--socket", &socket])
                .env_remove("DASHSCOPE_API_KEY")
                .output()
                .await
                .expect("run herald voice");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let a = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (code, out, err) = run(a(&[
        "clone",
        sample.to_str().unwrap(),
        "--model",
        "cosyvoice-v3-flash",
        "--name",
        "curator",
        "--wait",
    ]))
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("status   READY"), "{out}");
    let id = s.double.custom_voices()[0].id.clone();
    assert!(out.contains(&id), "{out}");

    let (code, out, err) = run(a(&[
        "design",
        "warm, calm, middle-aged female, slightly slow",
        "--model",
        "qwen3-tts-vd-2026-01-26",
        "--name",
        "robot",
        "-o",
        preview.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let (_, hz) = wav_tone(&std::fs::read(&preview).unwrap());
    assert_near(hz, custom_voice_tone("robot"));
    let design_call = s.double.customization_requests().pop().unwrap();
    assert_eq!(design_call.body["input"]["language"], "en");

    let (code, out, _) = run(a(&["list"])).await;
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 3, "header + 2 voices: {out}");
    assert!(
        out.contains(&id) && out.contains("qwen3-tts-vd-2026-01-26"),
        "{out}"
    );

    let (code, out, _) = run(a(&["status", &id])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("model    cosyvoice-v3-flash"), "{out}");
    let (code, out, _) = run(a(&["delete", &id])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("deleted  {id}")), "{out}");
    let (code, _, err) = run(a(&["status", &id])).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("NotFound"), "{err}");
    let (code, _, err) = run(a(&[
        "clone",
        sample.to_str().unwrap(),
        "--model",
        "cosyvoice-v3-flash",
        "--name",
        "Bad Name",
    ]))
    .await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("InvalidArgument") && err.contains("name"),
        "{err}"
    );
    s.daemon.stop().await.unwrap();
}

/// A data URI `voice-enrollment` refuses (HTTP 500, as seen live) is uploaded to
/// DashScope's temporary storage and the create repeated with `oss://` and the resolve header.
#[tokio::test]
async fn a_refused_data_uri_falls_back_to_a_temporary_upload() {
    let s = setup().await;
    s.double.set_custom_options(CustomOptions {
        enrollment_data_uri: false,
        deploying_polls: 0,
        ..CustomOptions::default()
    });
    let mut client = s.daemon.client().await;
    let sample = wav(16000, 1, 6.0, 0.5);
    let voice = client
        .create_voice(clone_req(
            "cosyvoice-v3.5-flash",
            "oss",
            sample.clone(),
            true,
        ))
        .await
        .expect("created through the temporary upload")
        .into_inner();
    assert_eq!(voice.status(), VStatus::Ready);
    let log: Vec<_> = s
        .double
        .requests()
        .into_iter()
        .filter(|r| r.path != "/oss-upload")
        .collect();
    assert!(
        log[0].body["input"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:")
    );
    assert_eq!(log[0].status, 500);
    assert_eq!(log[1].path, "/api/v1/uploads");
    assert_eq!(log[1].model, "voice-enrollment");
    let url = log[2].body["input"]["url"].as_str().unwrap();
    let key = url.strip_prefix("oss://").expect("oss:// url");
    assert!(key.ends_with("/oss.wav"), "{key}");
    let resolve = log[2]
        .headers
        .iter()
        .find(|(k, _)| k == "x-dashscope-ossresourceresolve")
        .map(|(_, v)| v.as_str());
    assert_eq!(resolve, Some("enable"));
    assert_eq!(log[2].status, 200);
    let forms = s.double.upload_forms();
    assert_eq!(forms.len(), 1);
    assert_eq!(forms[0]["key"], key);
    assert_eq!(forms[0]["OSSAccessKeyId"], "LTAI-fake");
    assert_eq!(forms[0]["x-oss-content-type"], "audio/wav");
    let out = synthesize(&mut client, synth("", &voice.name))
        .await
        .unwrap();
    assert_near(tone_of(&out), custom_voice_tone("oss"));

    // An `Audio.*` verdict is final: no upload for a silent sample.
    let before = s.double.upload_forms().len();
    s.double.set_custom_options(CustomOptions::default());
    let err = client
        .create_voice(clone_req(
            "cosyvoice-v3-flash",
            "silent",
            wav(16000, 1, 6.0, 0.0),
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(s.double.upload_forms().len(), before);
    s.daemon.stop().await.unwrap();
}

/// A create whose answer is lost (the double stores the voice, then cuts the connection)
/// is not sent again; herald finds the voice in upstream's listing and records it.
#[tokio::test]
async fn a_create_whose_answer_is_lost_is_adopted_not_repeated() {
    let s = setup().await;
    let mut client = s.daemon.client().await;
    s.double
        .push_fault(Fault::once(FaultKind::DropAfter { frames: 0 }).for_model("qwen-voice-design"));
    let voice = client
        .create_voice(design_req("qwen3-tts-vd-2026-01-26", "lost"))
        .await
        .expect("adopted")
        .into_inner();
    let upstream = s.double.custom_voices();
    assert_eq!(upstream.len(), 1, "created once");
    assert_eq!(voice.name, upstream[0].id);
    assert!(
        voice.warning.contains("answer was lost"),
        "{}",
        voice.warning
    );
    let creates = s
        .double
        .customization_requests()
        .iter()
        .filter(|r| r.body["input"]["action"] == "create")
        .count();
    assert_eq!(creates, 1, "never re-created");
    let out = synthesize(&mut client, synth("", &voice.name))
        .await
        .unwrap();
    assert_near(tone_of(&out), custom_voice_tone("lost"));

    // Nothing to adopt (upstream refused the create — quota — and the answer was cut): the
    // transport error stands (UNAVAILABLE).
    s.double
        .push_fault(Fault::once(FaultKind::DropAfter { frames: 0 }).for_model("voice-enrollment"));
    s.double.set_custom_options(CustomOptions {
        quota: 0,
        ..CustomOptions::default()
    });
    let before = s.double.custom_voices().len();
    let err = client
        .create_voice(url_req("cosyvoice-v3-flash", "nothing"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert_eq!(
        s.double.custom_voices().len(),
        before,
        "nothing was created"
    );
    s.daemon.stop().await.unwrap();
}

/// An upstream that accepts connections and never answers: ListVoices still answers with the
/// local voices, without waiting for it past its 0.8 s budget, and names the listings it lacks.
#[tokio::test]
async fn a_hung_upstream_leaves_the_local_voices_listed_and_names_what_is_missing() {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/api/v1", hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hole.accept().await {
            held.push(conn);
        }
    });
    let daemon = spawn_daemon_config(
        "",
        &[
            ("DASHSCOPE_API_KEY", API_KEY),
            ("DASHSCOPE_HTTP_BASE_URL", base_url.as_str()),
        ],
    )
    .await;
    let mut client = daemon.client().await;
    let started = tokio::time::Instant::now();
    let listed = client
        .list_voices(pb::ListVoicesRequest::default())
        .await
        .expect("ListVoices answers")
        .into_inner();
    let took = started.elapsed();
    assert!(
        listed.voices.iter().any(|v| v.engine == "espeak-ng"),
        "local voices listed"
    );
    assert!(
        listed
            .voices
            .iter()
            .any(|v| v.model == "cosyvoice-v3-flash"),
        "catalogue voices listed"
    );
    assert_eq!(listed.missing.len(), 3, "{:?}", listed.missing);
    assert!(
        listed
            .missing
            .iter()
            .all(|m| m.starts_with("custom voices of ")),
        "{:?}",
        listed.missing
    );
    // The budget is 0.8 s; a listing that waited for upstream's own timeouts would take 10 s
    // or more. The bound is loose: this machine is shared.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    daemon.stop().await.unwrap();
    held.abort();
}

#[tokio::test]
async fn a_dashscope_model_without_a_key_names_the_key() {
    let daemon = spawn_daemon_with(&[]).await;
    let mut client = daemon.client().await;
    let err = client
        .synthesize(pb::SynthesizeRequest {
            text: "hello".into(),
            model: "qwen3-tts-flash".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("DASHSCOPE_API_KEY"),
        "{}",
        err.message()
    );
    daemon.stop().await.unwrap();
}
