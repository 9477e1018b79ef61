//! The OpenAI-compatible HTTP door, in front of the DashScope double: the official `openai`
//! Python SDK (`tests/python/openai_sdk_check.py`) for every response format, streamed bytes
//! (first bytes long before the paced synthesis ends), `stream_format="sse"`, a wrong key, a bad
//! voice and `models.list()`; each output decoded and checked for rate, length and tone. Then
//! the error statuses a plain HTTP client sees (429 with Retry-After, 503, 504, 413, 404, 401).

use std::{path::Path, time::Duration};

use futures::StreamExt;
use herald::pb::{audio_format::Encoding, synthesize_response::Payload};
use serde_json::{Value, json};

use crate::support::{dashscope::*, python::python_with_grpc, *};

/// The `openai` version `.ci/setup` pins; update both together.
const PINNED_OPENAI: &str = "3.63.0";

/// The bearer token of these daemons.
const TOKEN: &str = "http-door-token-0123456789abcdef";

/// The double's audio per billed unit.
const MS_PER_UNIT: f64 = 40.0;

const TEXT: &str = "@440Hz Hello from herald.";
const LONG: &str = "@440Hz A longer sentence, so that streaming shows: bytes before the end.";

async fn setup(toml_extra: &str, pace: f32) -> (DashScopeDouble, TestDaemon) {
    let double = DashScopeDouble::start(API_KEY).await;
    double.set_options(Options {
        pace,
        ..Options::default()
    });
    let toml = layered(&[
        FAST_UPSTREAM,
        ENGINES_ONLY,
        "[http]\nlisten = [\"127.0.0.1:0\"]\n",
        toml_extra,
    ]);
    let daemon = spawn_daemon_against(&double, &toml, &[("HERALD_AUTH_TOKEN", TOKEN)]).await;
    (double, daemon)
}

fn want_ms(text: &str) -> f64 {
    text_units(text) as f64 * MS_PER_UNIT
}

/// Mono samples and rate of one output of the SDK run.
fn decode(dir: &Path, name: &str, format: &str, rate: u32) -> (u32, Vec<f32>) {
    let bytes = std::fs::read(dir.join(name)).expect("the SDK wrote the audio");
    match format {
        "pcm" => (rate, s16_to_f32(&bytes)),
        "wav" => {
            let (spec, x) = wav_samples(patch_wav_sizes(bytes));
            assert_eq!(spec.channels, 1);
            (spec.sample_rate, x)
        }
        "mp3" | "flac" => {
            let (r, ch, x) = symphonia_decode(bytes, format);
            assert_eq!(ch, 1, "{format}");
            (r, x)
        }
        "opus" => {
            // symphonia has no Opus decoder: ffmpeg (installed by .ci/setup) decodes it.
            let out = std::process::Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-i"])
                .arg(dir.join(name))
                .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
                .output()
                .expect("ffmpeg");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            (48_000, s16_to_f32(&out.stdout))
        }
        other => panic!("{other}"),
    }
}

fn assert_tone(what: &str, x: &[f32], rate: u32, ms: f64, tolerance_ms: f64) {
    let got = x.len() as f64 * 1000.0 / f64::from(rate);
    assert!(
        (got - ms).abs() <= tolerance_ms,
        "{what}: {got} ms, want {ms} ± {tolerance_ms}"
    );
    let hz = peak_frequency(x, rate);
    assert!((hz - 440.0).abs() <= 2.0, "{what}: {hz} Hz");
    assert!(rms(x) > 0.2, "{what}: the tone is there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_speaks_every_format_streams_and_gets_openai_errors() {
    let (_double, daemon) = setup("", 1.0).await;
    let http = daemon.http.expect("the HTTP door listens");
    let dir = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(python_with_grpc())
        .arg("tests/python/openai_sdk_check.py")
        .env("HERALD_OPENAI_BASE_URL", format!("http://{http}/v1"))
        .env("HERALD_OPENAI_KEY", TOKEN)
        .env("HERALD_OUT", dir.path())
        .env("HERALD_TEXT", TEXT)
        .env("HERALD_LONG_TEXT", LONG)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the SDK check finishes within 120 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim()).expect("one JSON summary");
    assert_eq!(
        r["sdk_version"], PINNED_OPENAI,
        "update .ci/setup and PINNED_OPENAI together"
    );

    // Every format: OpenAI's defaults (tts-1/alloy → the default model and its voice), the
    // tone at the length the double made, at the rate the door says.
    for (format, content_type, tolerance) in [
        ("mp3", "audio/mpeg", 80.0),
        ("opus", "audio/ogg", 30.0),
        ("flac", "audio/flac", 1.0),
        ("wav", "audio/wav", 1.0),
        ("pcm", "audio/pcm", 1.0),
    ] {
        let f = &r["formats"][format];
        assert_eq!(f["content_type"], content_type, "{format}");
        assert_eq!(f["model"], "cosyvoice-v3-flash", "{format}");
        assert_eq!(f["chunked"], true, "{format}: streamed, not buffered");
        let rate = u32::try_from(f["sample_rate"].as_u64().unwrap()).unwrap();
        if format == "pcm" {
            assert_eq!(rate, 24_000, "pcm is 24 kHz, as OpenAI documents");
        }
        let (decoded_rate, x) = decode(dir.path(), format, format, rate);
        if format != "opus" {
            assert_eq!(decoded_rate, rate, "{format}");
        }
        assert_tone(format, &x, decoded_rate, want_ms(TEXT), tolerance);
    }

    // Streaming: the first bytes come long before the paced synthesis ends.
    let s = &r["stream"];
    let (first, end) = (s["first_s"].as_f64().unwrap(), s["end_s"].as_f64().unwrap());
    let long_s = want_ms(LONG) / 1000.0;
    eprintln!(
        "HTTP streaming: first bytes after {:.0} ms, end after {:.0} ms ({} chunks) for {long_s:.2} s of paced audio",
        first * 1000.0,
        end * 1000.0,
        s["chunks"]
    );
    assert!(
        end >= long_s * 0.9,
        "the double paces at real time: {end} s"
    );
    assert!(
        first < long_s / 3.0,
        "first bytes after {first} s of {end} s"
    );
    assert!(s["chunks"].as_u64().unwrap() > 3, "{s}");
    let (_, x) = decode(dir.path(), "stream.pcm", "pcm", 24_000);
    assert_tone("stream", &x, 24_000, want_ms(LONG), 1.0);

    // SSE: delta events, then one done event with the usage.
    let sse = &r["sse"];
    assert_eq!(sse["content_type"], "text/event-stream");
    let events: Vec<&str> = sse["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(events.len() > 2, "{events:?}");
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| *e == "speech.audio.delta")
    );
    assert_eq!(events.last(), Some(&"speech.audio.done"));
    assert_eq!(
        r["sse_usage"]["input_tokens"],
        json!(text_units(TEXT)),
        "characters billed"
    );
    let (_, x) = decode(dir.path(), "sse.pcm", "pcm", 24_000);
    assert_tone("sse", &x, 24_000, want_ms(TEXT), 1.0);

    // herald's names pass through; the sample_rate extension applies.
    assert_eq!(
        r["herald_names"],
        json!({"model": "qwen3-tts-flash", "voice": "Cherry", "sample_rate": 16000})
    );
    let (_, x) = decode(dir.path(), "qwen16k.pcm", "pcm", 16_000);
    assert_tone("qwen 16 kHz", &x, 16_000, want_ms(TEXT), 1.0);

    // Errors, as the SDK classifies them.
    let e = &r["errors"];
    for (case, class, status, param) in [
        ("wrong_key", "AuthenticationError", 401, Value::Null),
        ("wrong_key_models", "AuthenticationError", 401, Value::Null),
        ("bad_voice", "BadRequestError", 400, json!("voice")),
        ("aac", "BadRequestError", 400, json!("response_format")),
        ("speed", "BadRequestError", 400, json!("speed")),
        ("empty", "BadRequestError", 400, json!("input")),
        ("model", "BadRequestError", 400, json!("model")),
    ] {
        assert_eq!(e[case]["class"], class, "{case}: {}", e[case]);
        assert_eq!(e[case]["status"], status, "{case}");
        assert_eq!(e[case]["param"], param, "{case}: {}", e[case]);
    }
    assert!(
        e["aac"]["message"]
            .as_str()
            .unwrap()
            .ends_with("use one of: mp3, opus, flac, wav, pcm"),
        "{}",
        e["aac"]
    );
    assert_eq!(e["wrong_key"]["type"], "authentication_error");
    assert!(
        e["bad_voice"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-voice")
    );

    // Listings: herald's models and the OpenAI aliases; voices with their model.
    let models: Vec<&str> = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in [
        "espeak-ng",
        "cosyvoice-v3-flash",
        "qwen3-tts-flash",
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
    ] {
        assert!(models.contains(&m), "{m} in {models:?}");
    }
    let voices = r["voices"].as_array().unwrap();
    assert!(
        voices
            .iter()
            .any(|v| v["id"] == "Cherry" && v["model"] == "qwen3-tts-flash"),
        "{voices:?}"
    );

    // The same paced request through gRPC, for the time to first audio of both doors.
    let mut client = daemon.client().await;
    let started = tokio::time::Instant::now();
    let mut call = tonic::Request::new(request(LONG, Encoding::PcmS16le, 24_000, 1));
    call.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let mut stream = client
        .synthesize(call)
        .await
        .expect("synthesize")
        .into_inner();
    let mut grpc_first = None;
    while let Some(m) = stream.next().await {
        if let Some(Payload::Audio(_)) = m.expect("message").payload {
            grpc_first.get_or_insert(started.elapsed());
        }
    }
    eprintln!(
        "gRPC streaming: first audio after {:.0} ms, end after {:.0} ms",
        grpc_first.unwrap().as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// A raw HTTP client (reqwest), for statuses and headers.
fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(daemon: &TestDaemon, body: Value) -> reqwest::Response {
    http()
        .post(format!("http://{}/v1/audio/speech", daemon.http.unwrap()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("a response")
}

async fn error_body(r: reqwest::Response) -> Value {
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "OpenAI's error shape"
    );
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    for key in ["message", "type", "param", "code"] {
        assert!(v["error"].get(key).is_some(), "{key} in {v}");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_and_limits_get_their_http_status() {
    let (double, daemon) = setup(
        // The upstream's first-event timeout well past the deadline, so that the 504 case
        // is the deadline's and never a race with the timeout (UNAVAILABLE, 503).
        "[synthesis]\nmax_deadline_ms = 1000\n[server]\nmax_message_bytes = 65536\n\
         [dashscope]\nfirst_event_timeout_ms = 5000\n",
        0.0,
    )
    .await;
    let speech =
        json!({"model": "cosyvoice-v3-flash", "input": "Hello.", "response_format": "pcm"});

    // Upstream throttles after every retry: 429 with Retry-After.
    double.push_fault(Fault::always(FaultKind::HttpError {
        status: 429,
        code: "Throttling.RateQuota".into(),
        message: "slow down".into(),
    }));
    let r = post(&daemon, speech.clone()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v = error_body(r).await;
    assert_eq!(v["error"]["type"], "rate_limit_error");
    double.clear_faults();

    // Upstream down, no fallback: 503.
    double.push_fault(Fault::always(FaultKind::HttpError {
        status: 503,
        code: "ModelUnavailable".into(),
        message: "down".into(),
    }));
    let r = post(
        &daemon,
        json!({"no_fallback": true, "input": "Hello.", "model": "cosyvoice-v3-flash"}),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_body(r).await["error"]["type"], "server_error");
    double.clear_faults();

    // The deadline (synthesis.max_deadline_ms) passes before the source answers: 504.
    double.push_fault(Fault::always(FaultKind::SlowFirstByte {
        delay: Duration::from_secs(3),
    }));
    let r = post(&daemon, speech.clone()).await;
    assert_eq!(r.status(), 504);
    let v = error_body(r).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("synthesis.max_deadline_ms"),
        "{v}"
    );
    double.clear_faults();

    // A body beyond server.max_message_bytes: 413 naming it.
    let r = post(&daemon, json!({"input": "x".repeat(70_000)})).await;
    assert_eq!(r.status(), 413);
    let v = error_body(r).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.max_message_bytes")
    );

    // Not JSON: 400.
    let r = http()
        .post(format!("http://{}/v1/audio/speech", daemon.http.unwrap()))
        .bearer_auth(TOKEN)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    error_body(r).await;

    // No token: 401; an unknown path: 404 (after the token, as OpenAI answers).
    let r = http()
        .get(format!("http://{}/v1/models", daemon.http.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    error_body(r).await;
    let r = http()
        .get(format!("http://{}/v1/nothing", daemon.http.unwrap()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_body(r).await["error"]["type"], "not_found_error");
    let r = http()
        .get(format!("http://{}/v1/models/tts-1", daemon.http.unwrap()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["id"], "tts-1");

    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn mapped_names_and_a_refused_listener() {
    // [http.models] / [http.voices] map OpenAI's names.
    let (_double, daemon) = setup(
        "[http.models]\n\"tts-1-hd\" = \"qwen3-tts-flash\"\n[http.voices]\nnova = \"Cherry\"\n",
        0.0,
    )
    .await;
    let r = post(
        &daemon,
        json!({"model": "tts-1-hd", "voice": "nova", "input": TEXT, "response_format": "pcm"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-herald-model"], "qwen3-tts-flash");
    assert_eq!(r.headers()["x-herald-voice"], "Cherry");
    let x = s16_to_f32(&r.bytes().await.unwrap());
    assert_tone("mapped", &x, 24_000, want_ms(TEXT), 1.0);

    // Without a token, a non-loopback HTTP listener is refused like a gRPC one.
    let e = herald::config::parse_str(
        "[server]\nlisten = [\"unix:/tmp/x.sock\"]\n[http]\nlisten = [\"0.0.0.0:0\"]\n",
        Path::new("test.toml"),
    )
    .and_then(|raw| raw.validate(&herald::config::Env::default()))
    .unwrap_err();
    assert!(e.to_string().contains("requires a bearer token"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_peer_limit_and_the_metrics_are_the_cores() {
    let (double, daemon) = setup("[synthesis]\nmax_concurrent_per_peer = 1\n", 1.0).await;
    // A paced stream holds this peer's one slot while it runs.
    let running = post(
        &daemon,
        json!({"model": "cosyvoice-v3-flash", "input": LONG, "response_format": "pcm"}),
    )
    .await;
    assert_eq!(running.status(), 200);
    let r = post(&daemon, json!({"input": TEXT, "response_format": "pcm"})).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v = error_body(r).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("synthesis.max_concurrent_per_peer"),
        "{v}"
    );
    let audio = running.bytes().await.unwrap();
    assert_tone("held", &s16_to_f32(&audio), 24_000, want_ms(LONG), 1.0);

    // A client that leaves mid-stream: the upstream request is dropped, the slot comes back.
    let mut leaving = post(
        &daemon,
        json!({"model": "cosyvoice-v3-flash", "input": LONG, "response_format": "pcm"}),
    )
    .await;
    assert!(leaving.chunk().await.unwrap().is_some(), "audio started");
    drop(leaving);
    let upstream = double
        .wait_ended(1, Duration::from_secs(5))
        .await
        .expect("the upstream request ends");
    assert!(upstream.disconnected, "{upstream:?}");
    let mut freed = false;
    for _ in 0..100 {
        let r = post(&daemon, json!({"input": TEXT, "response_format": "pcm"})).await;
        if r.status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the slot is freed when the client leaves");

    // Counted in the same series as gRPC's, under door="http".
    let text = herald::metrics::metrics().encode();
    let counted = |code: &str| {
        text.lines().any(|l| {
            l.starts_with("herald_synthesize_requests_total{")
                && l.contains(&format!("code=\"{code}\""))
                && l.contains("door=\"http\"")
        })
    };
    assert!(counted("OK"), "{text}");
    assert!(counted("RESOURCE_EXHAUSTED"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_tcp_and_no_token_on_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::support::tls::certificate(dir.path());
    let socket = dir.path().join("http.sock");
    let toml = format!(
        "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[http]\nlisten = [\"127.0.0.1:0\", \"unix:{}\"]\n",
        cert.display(),
        key.display(),
        socket.display()
    );
    let daemon = spawn_daemon_config(&toml, &[("HERALD_AUTH_TOKEN", TOKEN)]).await;
    let addr = daemon.http.unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let tls = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let r = tls
        .post(format!("https://{addr}/v1/audio/speech"))
        .bearer_auth(TOKEN)
        .body(
            json!({"model": "espeak-ng", "input": "Hello.", "response_format": "wav"}).to_string(),
        )
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), 200);
    let (spec, x) = wav_samples(patch_wav_sizes(r.bytes().await.unwrap().to_vec()));
    assert_eq!(spec.channels, 1);
    assert!(rms(&x) > 0.01, "espeak-ng spoke");
    // Plain HTTP to the TLS port is not served.
    assert!(
        http()
            .get(format!("http://{addr}/v1/models"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .is_err()
    );

    // The unix socket: its mode and group guard it, no token is asked (curl, as scripts use it).
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&socket)
        .args(["http://localhost/v1/models"])
        .output()
        .await
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["object"], "list");
    daemon.stop().await.unwrap();
    assert!(!socket.exists(), "the door removes its socket file");
}

#[tokio::test]
async fn herald_serve_http_listen_follows_the_tcp_rules_and_stops_with_the_daemon() {
    // No token and no --insecure-no-auth: refused before anything is bound (EX_USAGE).
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", dir.path().join("h.sock").display()))
        .args(["--http-listen", "127.0.0.1:0"])
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_AUTH_TOKEN")
        .env_remove("DASHSCOPE_API_KEY")
        .env("CACHE_DIRECTORY", dir.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires a bearer token"), "{stderr}");

    // Loopback with --insecure-no-auth: served, and SIGTERM stops it.
    let mut server = Serve::new("# defaults\n")
        .args(&["--http-listen", "127.0.0.1:0", "--insecure-no-auth"])
        .logged()
        .start();
    let addr = server.http();
    let r = http()
        .post(format!("http://{addr}/v1/audio/speech"))
        .body(json!({"input": "Hello.", "voice": "alloy", "response_format": "flac"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-herald-model"], "espeak-ng");
    let (rate, _, x) = symphonia_decode(r.bytes().await.unwrap().to_vec(), "flac");
    assert_eq!(rate, 22_050, "espeak-ng's native rate");
    assert!(rms(&x) > 0.01);
    assert!(server.terminate().success());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the HTTP listener is closed"
    );
}

#[test]
fn check_config_refuses_an_openai_name_mapped_to_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "[http.models]\n\"tts-1\" = \"no-such-model\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check-config", "--listen"])
        .arg(format!("unix:{}", dir.path().join("h.sock").display()))
        .arg("--config")
        .arg(&config)
        .env_remove("DASHSCOPE_API_KEY")
        .env("CACHE_DIRECTORY", dir.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("http.models: \"tts-1\" = \"no-such-model\": no configured engine"),
        "{stderr}"
    );
}
