//! The DashScope double's custom-voice endpoint (`support::dashscope`'s `custom`) checked
//! against DashScope's custom-voice API as the project's notes describe it, over raw HTTP
//! (every surface: create, list, query, delete, its errors), and, as the proof that it speaks
//! the real protocol, the official `dashscope` Python SDK run against it
//! (tests/python/dashscope_voices_check.py): the 1.x `VoiceEnrollmentService` and the 2.0
//! `Voices` / `VoiceDesign` resources.
//!
//! The SDK test needs a Python with `dashscope` (pinned in `.ci/setup`): `$HERALD_TEST_PYTHON`,
//! else `./.venv/bin/python`. Without either it is skipped, unless `CI` is set: then it fails.

use base64::Engine as _;
use rustfft::{FftPlanner, num_complex::Complex};
use serde_json::{Value, json};

use crate::support::{
    API_KEY,
    dashscope::*,
    python::{python_with_dashscope, run_sdk_check},
};

async fn call(ds: &DashScopeDouble, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/services/audio/tts/customization",
            ds.base_url()
        ))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    let rid = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).expect("JSON body");
    assert_eq!(
        rid.as_deref(),
        v["request_id"].as_str(),
        "x-request-id = request_id"
    );
    (status, v)
}

fn peak_hz(samples: &[f32], rate: u32) -> f64 {
    let n = samples.len();
    let mut buf: Vec<Complex<f64>> = samples
        .iter()
        .map(|s| Complex::new(f64::from(*s), 0.0))
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let k = (1..n / 2)
        .max_by(|a, b| buf[*a].norm().total_cmp(&buf[*b].norm()))
        .unwrap();
    k as f64 * f64::from(rate) / n as f64
}

fn wav_tone(b64: &str) -> (u32, f64) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let r = hound::WavReader::new(std::io::Cursor::new(bytes)).expect("WAV");
    let rate = r.spec().sample_rate;
    let s: Vec<f32> = r
        .into_samples::<i16>()
        .map(|x| f32::from(x.unwrap()) / 32768.0)
        .collect();
    (rate, peak_hz(&s, rate))
}

fn silent_wav_uri(rate: u32, seconds: u32) -> String {
    let frames = rate * seconds;
    let mut w = b"RIFF".to_vec();
    w.extend_from_slice(&(36 + frames * 2).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt \x10\0\0\0\x01\0\x01\0");
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes());
    w.extend_from_slice(b"\x02\0\x10\0data");
    w.extend_from_slice(&(frames * 2).to_le_bytes());
    w.resize(44 + frames as usize * 2, 0);
    format!(
        "data:audio/wav;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(w)
    )
}

#[tokio::test]
async fn voice_enrollment_create_poll_list_update_delete() {
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.set_custom_options(CustomOptions {
        deploying_polls: 2,
        ..CustomOptions::default()
    });
    let (st, v) = call(
        &ds,
        json!({"model": "voice-enrollment", "parameters": {}, "input": {
        "action": "create_voice", "target_model": "cosyvoice-v3.5-plus", "prefix": "myvoice",
        "url": "https://example.invalid/a.wav", "language_hints": ["zh"]}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["count"], 1);
    let id = v["output"]["voice_id"].as_str().unwrap().to_owned();
    let unique = id.strip_prefix("cosyvoice-v3.5-plus-myvoice-").unwrap();
    assert_eq!(unique.len(), 32);
    assert!(unique.bytes().all(|b| b.is_ascii_hexdigit()));
    let query =
        json!({"model": "voice-enrollment", "input": {"action": "query_voice", "voice_id": id}});
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (st, q) = call(&ds, query.clone()).await;
        assert_eq!(st, 200);
        assert!(
            q["output"].get("voice_id").is_none(),
            "clone queries carry no id"
        );
        assert_eq!(q["output"]["target_model"], "cosyvoice-v3.5-plus");
        assert_eq!(
            q["output"]["resource_link"],
            "https://example.invalid/a.wav"
        );
        statuses.push(q["output"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["DEPLOYING", "DEPLOYING", "OK"]);
    // A design on the same surface: preview inline, `-vd-` id, designs listed with prompt.
    let (st, d) = call(
        &ds,
        json!({"model": "voice-enrollment", "input": {
        "action": "create_voice", "target_model": "cosyvoice-v3-flash", "prefix": "announcer",
        "voice_prompt": "沉稳的中年男性播音员", "preview_text": "各位听众朋友，大家好"},
        "parameters": {"sample_rate": 48000, "response_format": "wav"}}),
    )
    .await;
    assert_eq!(st, 200, "{d}");
    let did = d["output"]["voice_id"].as_str().unwrap().to_owned();
    assert!(did.starts_with("cosyvoice-v3-flash-vd-announcer-"));
    assert_eq!(d["output"]["preview_audio"]["sample_rate"], 48000);
    let (rate, hz) = wav_tone(d["output"]["preview_audio"]["data"].as_str().unwrap());
    assert_eq!(rate, 48000);
    assert!(
        (hz - f64::from(custom_voice_tone("announcer"))).abs() < 2.0,
        "{hz}"
    );
    let (_, l) = call(&ds, json!({"model": "voice-enrollment", "input": {"action": "list_voice", "page_index": 0, "page_size": 10}})).await;
    let list = l["output"]["voice_list"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["voice_id"], did.as_str(), "newest first");
    assert_eq!(list[0]["voice_prompt"], "沉稳的中年男性播音员");
    assert!(
        l["output"].get("total_count").is_none(),
        "no paging fields for CosyVoice"
    );
    let (_, l) = call(&ds, json!({"model": "voice-enrollment", "input": {"action": "list_voice", "prefix": "myvoice"}})).await;
    assert_eq!(l["output"]["voice_list"].as_array().unwrap().len(), 1);
    // Update re-deploys clones; designs cannot be updated.
    let (st, _) = call(&ds, json!({"model": "voice-enrollment", "input": {"action": "update_voice", "voice_id": id, "url": "https://example.invalid/b.wav"}})).await;
    assert_eq!(st, 200);
    let (_, q) = call(&ds, query.clone()).await;
    assert_eq!(q["output"]["status"], "DEPLOYING");
    let (st, e) = call(&ds, json!({"model": "voice-enrollment", "input": {"action": "update_voice", "voice_id": did, "url": "https://x.invalid/c.wav"}})).await;
    assert_eq!((st, e["code"].as_str()), (400, Some("InvalidParameter")));
    // Delete, then the id is unknown.
    let (st, del) = call(
        &ds,
        json!({"model": "voice-enrollment", "input": {"action": "delete_voice", "voice_id": id}}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(del["output"], json!({}));
    let (st, e) = call(&ds, query).await;
    assert_eq!(st, 400);
    assert_eq!(e["code"], "BadRequest.ResourceNotExist");
    assert_eq!(e["message"], "The Required resource not exist.");
    ds.stop().await;
}

#[tokio::test]
async fn qwen_surfaces_create_list_query_delete() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let (st, v) = call(
        &ds,
        json!({"model": "qwen-voice-enrollment", "input": {
        "action": "create", "target_model": "qwen3-tts-vc-2026-01-22", "preferred_name": "guanyu",
        "audio": {"data": "https://example.invalid/g.mp3"}, "language": "zh"}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let vc = v["output"]["voice"].as_str().unwrap().to_owned();
    let rest = vc.strip_prefix("qwen-tts-vc-guanyu-voice-").unwrap();
    let (stamp, hex) = rest.split_once('-').unwrap();
    assert_eq!(stamp.len(), 17, "yyyyMMddHHmmssSSS");
    assert_eq!(hex.len(), 4);
    assert_eq!(v["output"]["target_model"], "qwen3-tts-vc-2026-01-22");
    let (st, e) = call(
        &ds,
        json!({"model": "qwen-voice-enrollment", "input": {"action": "query", "voice": vc}}),
    )
    .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (400, Some("InvalidParameter")),
        "VC has no query"
    );
    let (_, l) = call(&ds, json!({"model": "qwen-voice-enrollment", "input": {"action": "list", "page_index": 0, "page_size": 10}})).await;
    assert_eq!(l["output"]["total_count"], 1);
    assert_eq!(l["usage"]["count"], 0);
    assert_eq!(l["output"]["voice_list"][0]["voice"], vc.as_str());
    let (st, d) = call(
        &ds,
        json!({"model": "qwen-voice-enrollment", "input": {"action": "delete", "voice": vc}}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(d["output"]["voice"], vc.as_str());
    let (st, e) = call(
        &ds,
        json!({"model": "qwen-voice-enrollment", "input": {"action": "delete", "voice": vc}}),
    )
    .await;
    assert_eq!(
        (st, e["code"].as_str()),
        (400, Some("BadRequest.VoiceNotFound"))
    );
    assert_eq!(e["message"], format!("Voice '{vc}' not found."));

    let (st, v) = call(
        &ds,
        json!({"model": "qwen-voice-design", "input": {
        "action": "create", "target_model": "qwen3-tts-vd-2026-01-26", "voice_prompt": "warm",
        "preview_text": "hello", "preferred_name": "announcer", "language": "en"},
        "parameters": {"sample_rate": 16000, "response_format": "wav"}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let vd = v["output"]["voice"].as_str().unwrap().to_owned();
    assert!(vd.starts_with("qwen-tts-vd-announcer-voice-"));
    let (rate, hz) = wav_tone(v["output"]["preview_audio"]["data"].as_str().unwrap());
    assert_eq!(rate, 16000);
    assert!((hz - f64::from(custom_voice_tone("announcer"))).abs() < 2.0);
    let (st, q) = call(
        &ds,
        json!({"model": "qwen-voice-design", "input": {"action": "query", "voice": vd}}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(q["output"]["language"], "en");
    assert!(
        q["output"].get("preview_audio").is_none(),
        "only at creation"
    );
    call(
        &ds,
        json!({"model": "qwen-voice-design", "input": {"action": "delete", "voice": vd}}),
    )
    .await;
    let (st, e) = call(
        &ds,
        json!({"model": "qwen-voice-design", "input": {"action": "query", "voice": vd}}),
    )
    .await;
    assert_eq!((st, e["code"].as_str()), (400, Some("VoiceNotFound")));
    assert_eq!(e["message"], format!("Voice not found: {vd}"));
    ds.stop().await;
}

#[tokio::test]
async fn customization_errors() {
    let ds = DashScopeDouble::start(API_KEY).await;
    let e = |v: &Value| v["code"].as_str().unwrap_or("").to_owned();
    let clone = |url: &str| {
        json!({"model": "voice-enrollment", "input": {
        "action": "create_voice", "target_model": "cosyvoice-v3-flash", "prefix": "x", "url": url}})
    };
    let (st, v) = call(&ds, clone(&silent_wav_uri(16000, 6))).await;
    assert_eq!((st, e(&v)), (430, "Audio.AudioSilentError".into()));
    let (st, v) = call(&ds, clone(&silent_wav_uri(8000, 6))).await;
    assert_eq!((st, e(&v)), (430, "Audio.AudioRateError".into()));
    let (st, v) = call(&ds, clone("data:audio/wav;base64,T2dnUwAAAAAAAAAA")).await;
    assert_eq!(
        (st, e(&v)),
        (400, "BadRequest.UnsupportedFileFormat".into())
    );
    let (st, v) = call(
        &ds,
        json!({"model": "qwen-tts", "input": {"action": "list"}}),
    )
    .await;
    assert_eq!(
        (st, e(&v), v["message"].as_str()),
        (400, "InvalidParameter".into(), Some("Model not exist."))
    );
    let (st, v) = call(&ds, json!({"input": {"action": "list"}})).await;
    assert_eq!((st, e(&v)), (400, "BadRequest.EmptyModel".into()));
    let (st, v) = call(&ds, json!({"model": "voice-enrollment"})).await;
    assert_eq!((st, e(&v)), (400, "BadRequest.EmptyInput".into()));
    let (st, v) = call(&ds, json!({"model": "voice-enrollment", "input": {"action": "create_voice", "target_model": "cosyvoice-v3-flash", "prefix": "UPPER", "url": "https://x.invalid/a.wav"}})).await;
    assert_eq!((st, e(&v)), (400, "InvalidParameter".into()));
    ds.set_custom_options(CustomOptions {
        quota: 0,
        ..CustomOptions::default()
    });
    let (st, v) = call(&ds, clone("https://x.invalid/a.wav")).await;
    assert_eq!((st, e(&v)), (400, "Throttling.AllocationQuota".into()));
    let r = reqwest::Client::new()
        .post(format!(
            "{}/services/audio/tts/customization",
            ds.base_url()
        ))
        .bearer_auth("sk-wrong")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    ds.stop().await;
}

#[tokio::test]
async fn official_python_sdk_manages_voices_on_the_double() {
    let Some(py) = python_with_dashscope() else {
        return;
    };
    let ds = DashScopeDouble::start(API_KEY).await;
    ds.push_fault(
        Fault::once(FaultKind::HttpError {
            status: 400,
            code: "Throttling.AllocationQuota".into(),
            message: "Maximum voice storage limit exceeded, please delete existing voices.".into(),
        })
        .for_model("qwen-voice-design"),
    );
    let c = run_sdk_check(&py, "dashscope_voices_check.py", &ds).await;

    let e = &c["enrollment_1x"];
    assert_eq!(e["statuses"], json!(["DEPLOYING", "OK"]));
    assert_eq!(e["listed"], json!([e["voice_id"]]));
    assert_eq!(e["status_after_update"], "DEPLOYING");
    assert_eq!(
        e["after_delete"],
        json!({"status": 400, "code": "BadRequest.ResourceNotExist"})
    );
    assert_eq!(e["silent"]["status"], 430);
    assert_eq!(e["silent"]["code"], "Audio.AudioSilentError");
    assert!(
        e["data_uri_voice"]
            .as_str()
            .unwrap()
            .starts_with("cosyvoice-v3.5-plus-datauri-")
    );
    assert_eq!(
        e["bad_key"],
        json!({"status": 401, "code": "InvalidApiKey"})
    );

    let v = &c["voices_2x"];
    assert_eq!(v["statuses"], json!(["DEPLOYING", "OK"]));
    assert_eq!(v["listed"], json!([v["voice_id"]]));
    assert_eq!(v["after_delete"]["status"], 400);
    assert_eq!(v["after_delete"]["code"], "BadRequest.ResourceNotExist");

    let d = &c["voice_design_2x"];
    assert_eq!(d["quota"]["status"], 400);
    assert_eq!(d["quota"]["code"], "Throttling.AllocationQuota");
    assert_eq!(d["target_model"], "qwen3-tts-vd-2026-01-26");
    assert_eq!(d["preview_format"], "wav");
    assert_eq!(d["preview_rate"], 24000);
    let (rate, hz) = wav_tone(d["preview_b64"].as_str().unwrap());
    assert_eq!(rate, 24000);
    assert!(
        (hz - f64::from(custom_voice_tone("sdk_vd"))).abs() < 2.0,
        "{hz}"
    );
    assert_eq!(d["listed"], json!([d["voice"]]));
    assert_eq!(d["got_voice"], d["voice"]);
    assert_eq!(d["got_language"], "en");
    assert_eq!(d["after_delete"]["code"], "VoiceNotFound");

    // What the SDKs sent, as the double logged it: 1.x always sends `parameters: {}`.
    let log = ds.customization_requests();
    let first = &log[0];
    assert_eq!(first.body["parameters"], json!({}));
    assert_eq!(first.body["input"]["action"], "create_voice");
    let sdk = |r: &LoggedRequest| {
        r.headers
            .iter()
            .find(|(k, _)| k == "x-dashscope-sdk-client")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(
        log.iter().any(|r| sdk(r).ends_with("/audio2")),
        "2.0 client seen"
    );
    ds.stop().await;
}
