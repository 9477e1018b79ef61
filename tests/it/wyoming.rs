//! The Wyoming door through the real `wyoming` Python package (`tests/python/wyoming_client.py`,
//! pinned in `.ci/setup`), over TCP and a unix socket, against a daemon whose DashScope engines
//! call the double (tones) and with espeak-ng (speech): `describe` → `info`; `synthesize` →
//! audio events whose PCM has the tone and the length; a voice chosen by language; the
//! streaming session, with the first sentence's audio before the rest of the text is sent; an
//! `error` event for an unknown voice, after which the connection still serves.

use std::time::Duration;

use base64::Engine as _;
use herald::{config::ListenAddr, engine::dashscope::split};
use serde_json::{Value, json};

use crate::support::{dashscope::*, python::python_with_grpc, *};

/// The double's audio per billed text unit, ms.
const MS_PER_UNIT: f64 = 40.0;
/// The double's tone.
const TONE_HZ: f64 = 440.0;
const VOICE: &str = "cosyvoice-v3-flash/longanyang";

struct Setup {
    double: DashScopeDouble,
    daemon: TestDaemon,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// `tcp://…` and `unix://…` of the door.
    fn uris(&self) -> Vec<String> {
        self.daemon
            .wyoming
            .iter()
            .map(|a| match a {
                ListenAddr::Tcp(t) => format!("tcp://{t}"),
                ListenAddr::Unix(p) => format!("unix://{}", p.display()),
            })
            .collect()
    }
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("wyoming.sock");
    let double = DashScopeDouble::start(API_KEY).await;
    let wyoming = format!(
        "[wyoming]\nlisten = [\"tcp://127.0.0.1:0\", \"unix://{}\"]\n",
        sock.display()
    );
    let toml = layered(&[FAST_UPSTREAM, ENGINES_ONLY, &wyoming]);
    let daemon = spawn_daemon_against(&double, &toml, &[]).await;
    assert_eq!(daemon.wyoming.len(), 2);
    Setup {
        double,
        daemon,
        _dir: dir,
    }
}

/// Run a scenario of the script: its one JSON line.
async fn client(uri: &str, scenario: &str, args: Value) -> Value {
    let child = tokio::process::Command::new(python_with_grpc())
        .arg("tests/python/wyoming_client.py")
        .args([uri, scenario, &args.to_string()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the script finishes within 60 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario} over {uri}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

fn types(r: &Value) -> Vec<String> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

/// The mono samples of a response, and its rate; checks that every chunk has the format of
/// `audio-start` (16-bit).
fn audio(r: &Value) -> (Vec<f32>, u32) {
    let events = r["events"].as_array().unwrap();
    let start = events
        .iter()
        .find(|e| e["type"] == "audio-start")
        .expect("audio-start");
    let (rate, channels) = (
        start["data"]["rate"].as_u64().unwrap() as u32,
        start["data"]["channels"].as_u64().unwrap(),
    );
    assert_eq!(start["data"]["width"], 2);
    assert_eq!(channels, 1, "mono by default");
    for e in events.iter().filter(|e| e["type"] == "audio-chunk") {
        assert_eq!(e["data"]["rate"], rate);
        assert_eq!(e["data"]["width"], 2);
        assert_eq!(e["data"]["channels"], channels);
    }
    let pcm = base64::engine::general_purpose::STANDARD
        .decode(r["pcm"].as_str().unwrap())
        .unwrap();
    (s16_to_f32(&pcm), rate)
}

fn assert_tone(r: &Value, units: usize, what: &str) {
    let (x, rate) = audio(r);
    let ms = x.len() as f64 * 1000.0 / f64::from(rate);
    let want = units as f64 * MS_PER_UNIT;
    assert!((ms - want).abs() <= 2.0, "{what}: {ms} ms, want {want}");
    let hz = peak_frequency(&x, rate);
    assert!((hz - TONE_HZ).abs() <= 2.0, "{what}: {hz} Hz");
    assert!(rms(&x) > 0.2, "{what}: the tone is there");
    let stop = r["events"].as_array().unwrap().last().unwrap();
    let ts = stop["data"]["timestamp"].as_f64().unwrap();
    assert!((ts - ms).abs() <= 1.0, "{what}: audio-stop at {ts} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_lists_herald_voices_with_streaming() {
    let s = setup().await;
    for uri in s.uris() {
        let info = client(&uri, "describe", json!({})).await;
        assert_eq!(info["type"], "info", "{uri}");
        assert_eq!(
            info["package"],
            herald::wyoming::wire::VERSION,
            "the pinned package"
        );
        let tts = info["tts"].as_array().unwrap();
        assert_eq!(tts.len(), 1);
        let p = &tts[0];
        assert_eq!(p["name"], "herald");
        assert_eq!(p["installed"], true);
        assert_eq!(p["supports_synthesize_streaming"], true);
        let voices = p["voices"].as_array().unwrap();
        let v = voices
            .iter()
            .find(|v| v["name"] == VOICE)
            .unwrap_or_else(|| panic!("{VOICE} listed: {voices:?}"));
        assert!(v["languages"].as_array().unwrap().iter().any(|l| l == "en"));
        assert!(
            v["description"]
                .as_str()
                .unwrap()
                .contains("cosyvoice-v3-flash")
        );
        assert!(
            voices
                .iter()
                .any(|v| v["name"].as_str().unwrap().starts_with("espeak-ng/")),
            "espeak-ng voices are listed"
        );
        // The default model's voices come first.
        assert!(
            voices[0]["name"]
                .as_str()
                .unwrap()
                .starts_with("cosyvoice-v3-flash/")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthesize_sends_the_tone_at_its_length() {
    let s = setup().await;
    let text = "Hello from herald, over the Wyoming protocol.";
    for uri in s.uris() {
        let r = client(&uri, "synthesize", json!({"text": text, "voice": VOICE})).await;
        let t = types(&r);
        assert_eq!(t.first().map(String::as_str), Some("audio-start"), "{uri}");
        assert_eq!(t.last().map(String::as_str), Some("audio-stop"), "{uri}");
        assert!(
            t[1..t.len() - 1].iter().all(|t| t == "audio-chunk"),
            "{t:?}"
        );
        assert!(t.len() > 3, "audio in several chunks: {t:?}");
        assert_tone(&r, split::units(text), &uri);
    }
    // Home Assistant names no voice, only a language: the default voice speaks Chinese.
    let before = s.double.requests().len();
    let uri = &s.uris()[0];
    let r = client(
        uri,
        "synthesize",
        json!({"text": "你好。", "language": "zh_CN"}),
    )
    .await;
    assert_tone(&r, split::units("你好。"), "by language");
    let log = s.double.requests();
    assert_eq!(log.len(), before + 1, "the double spoke it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_speaks_through_the_door() {
    let s = setup().await;
    let info = client(&s.uris()[0], "describe", json!({})).await;
    let voices = info["tts"][0]["voices"].as_array().unwrap().clone();
    let espeak = voices
        .iter()
        .find(|v| {
            let name = v["name"].as_str().unwrap();
            name.starts_with("espeak-ng/")
                && v["languages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l == "en-us")
        })
        .or_else(|| {
            voices
                .iter()
                .find(|v| v["name"].as_str().unwrap().starts_with("espeak-ng/"))
        })
        .expect("an espeak-ng voice");
    let name = espeak["name"].as_str().unwrap();
    for uri in s.uris() {
        let r = client(
            &uri,
            "synthesize",
            json!({"text": "The kitchen timer is done.", "voice": name}),
        )
        .await;
        let (x, rate) = audio(&r);
        let seconds = x.len() as f64 / f64::from(rate);
        assert!(
            (0.8..6.0).contains(&seconds),
            "{uri}: {seconds} s of speech"
        );
        assert!(voiced_fraction(&x, rate) > 0.3, "{uri}: it is speech");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_speaks_each_sentence_once_it_is_complete() {
    let s = setup().await;
    let first = "Hello there. Sec";
    let rest = ["ond sentence is ", "here."];
    for uri in s.uris() {
        let before = s.double.requests().len();
        let r = client(
            &uri,
            "stream",
            json!({"voice": VOICE, "first": first, "rest": rest}),
        )
        .await;
        assert!(
            r["chunks_before_stop"].as_u64().unwrap() >= 1,
            "{uri}: the first sentence is heard before the text is complete"
        );
        eprintln!(
            "{uri}: first audio {:.1} ms after the chunk that completed the first sentence",
            r["first_audio_ms"].as_f64().unwrap()
        );
        let t = types(&r);
        assert_eq!(t.first().map(String::as_str), Some("audio-start"), "{t:?}");
        assert_eq!(t.iter().filter(|t| *t == "audio-start").count(), 1);
        assert_eq!(
            &t[t.len() - 2..],
            ["audio-stop", "synthesize-stopped"],
            "{uri}"
        );
        assert_eq!(
            r["next"], "info",
            "{uri}: nothing follows synthesize-stopped"
        );
        // Two sentences, two upstream requests: the backward-compatible synthesize is ignored.
        let log = s.double.requests();
        assert_eq!(log.len(), before + 2, "{uri}");
        let sentences = ["Hello there.", "Second sentence is here."];
        let units: usize = sentences.iter().map(|t| split::units(t)).sum();
        let trimmed = Value::Object(
            [
                ("events".to_owned(), {
                    let mut e = r["events"].as_array().unwrap().clone();
                    e.pop(); // synthesize-stopped: audio-stop is last
                    Value::Array(e)
                }),
                ("pcm".to_owned(), r["pcm"].clone()),
            ]
            .into_iter()
            .collect(),
        );
        assert_tone(&trimmed, units, &uri);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_voice_is_an_error_event_and_the_connection_serves_on() {
    let s = setup().await;
    let text = "Still here.";
    // herald refuses the first before any upstream call; the double (as DashScope does for an
    // unknown CosyVoice id) the second.
    let cases = [
        ("espeak-ng/no-such-voice", "voice: "),
        (
            "cosyvoice-v3-flash/no-such-voice",
            "upstream rejected the request",
        ),
    ];
    for uri in s.uris() {
        for (bad, says) in cases {
            let args = json!({"text": text, "voice": VOICE, "bad": bad});
            let r = client(&uri, "bad_voice", args).await;
            let events = &r["bad"]["events"];
            assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
            assert_eq!(events[0]["type"], "error");
            assert_eq!(events[0]["data"]["code"], "invalid_argument");
            let text_of = events[0]["data"]["text"].as_str().unwrap();
            assert!(text_of.starts_with(says), "{bad}: {text_of}");
            assert_tone(&r["good"], split::units(text), &uri);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_an_unknown_voice_answers_an_error_then_stopped() {
    let s = setup().await;
    for uri in s.uris() {
        let args = json!({"voice": "espeak-ng/no-such-voice", "first": "Hi. T", "rest": ["here."]});
        let r = client(&uri, "stream", args).await;
        assert_eq!(types(&r), ["error", "synthesize-stopped"], "{uri}");
        assert_eq!(r["events"][0]["data"]["code"], "invalid_argument");
        assert_eq!(r["next"], "info", "{uri}: the connection serves on");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_its_job_and_shutdown_removes_the_socket() {
    use tokio::io::AsyncWriteExt;
    let s = setup().await;
    // Long audio at the double's pace: the job is still running when the client leaves.
    s.double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let ListenAddr::Tcp(addr) = s.daemon.wyoming[0] else {
        panic!("tcp first")
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let text = "A long announcement. ".repeat(20);
    let data = json!({"text": text, "voice": {"name": VOICE}}).to_string();
    let header = json!({"type": "synthesize", "data_length": data.len()}).to_string();
    stream
        .write_all(format!("{header}\n{data}").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    let ended = s
        .double
        .wait_ended(0, Duration::from_secs(5))
        .await
        .expect("the upstream request ends once the client has left");
    assert!(
        ended.disconnected && !ended.completed,
        "it was cut short: {ended:?}"
    );
    let Setup { daemon, _dir, .. } = s;
    let ListenAddr::Unix(path) = daemon.wyoming[1].clone() else {
        panic!("unix second")
    };
    assert!(path.exists());
    daemon.stop().await.expect("stops");
    for _ in 0..100 {
        if !path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the Wyoming socket file is left after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_wyoming_with_espeak_and_refuses_remote_without_opt_in() {
    let _guard = exclusive().await;
    let mut server = Serve::new("# defaults\n")
        .args(&["--wyoming-listen", "tcp://127.0.0.1:0"])
        .logged()
        .start();
    let uri = format!("tcp://{}", server.wyoming());
    let info = client(&uri, "describe", json!({})).await;
    assert_eq!(info["tts"][0]["supports_synthesize_streaming"], true);
    // No key: espeak-ng is the default model; Home Assistant sends a language.
    let r = client(
        &uri,
        "synthesize",
        json!({"text": "Dinner is ready.", "language": "en_US"}),
    )
    .await;
    let (x, rate) = audio(&r);
    assert!(voiced_fraction(&x, rate) > 0.3, "speech");
    assert!(server.terminate().success());

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--listen",
            &format!("unix:{}", dir.path().join("h.sock").display()),
        ])
        .args(["--wyoming-listen", "tcp://0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wyoming.allow_remote = true"), "{err}");
}
