//! The DashScope WebSocket transport through gRPC, against the double's WebSocket side: the
//! exact tone over run-task (CosyVoice) and Qwen-TTS-Realtime, connections reused across
//! requests (the double counts handshakes), a client cancel ending the upstream task at once,
//! every fault mapped to the status it gets over HTTP/SSE, and the `dashscope.transport` rule.

use std::time::Duration;

use futures::StreamExt;
use herald::{engine::dashscope::split, pb::synthesize_response::Payload};
use tonic::Code;

use crate::support::{dashscope::*, logs, *};

const MS_PER_UNIT: f64 = 40.0;
const COSY: (&str, &str) = ("cosyvoice-v3-flash", "longanyang");
const REALTIME: (&str, &str) = ("qwen3-tts-flash-realtime", "Cherry");

/// A double and a daemon whose WebSocket URL is the double's (through the SDK's variable
/// `DASHSCOPE_WEBSOCKET_BASE_URL`), with `transport` and short upstream timers.
async fn setup(transport: &str) -> (DashScopeDouble, TestDaemon) {
    logs::capture();
    let double = DashScopeDouble::start(API_KEY).await;
    let daemon = spawn_daemon_on_transport(
        &double,
        transport,
        &[("DASHSCOPE_WORKSPACE_ID", "ws-test42")],
    )
    .await;
    (double, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosyvoice_and_qwen_realtime_over_websocket_give_the_exact_tone() {
    let (double, daemon) = setup("websocket").await;
    let mut client = daemon.client().await;
    let text = "Hello from herald. Over a socket @523Hz."; // two sentences
    for (model, voice) in [COSY, REALTIME] {
        let c = synthesize(&mut client, pcm16k(model, voice, text))
            .await
            .unwrap_or_else(|s| panic!("{model}: {s:?}"));
        let x = c.mono();
        let ms = x.len() as f64 * 1000.0 / 16000.0;
        let want = split::units(text) as f64 * MS_PER_UNIT;
        assert!((ms - want).abs() <= 1.0, "{model}: {ms} ms, want {want}");
        let hz = peak_frequency(&x, 16000);
        assert!((hz - 523.0).abs() <= 1.0, "{model}: {hz} Hz");
        assert!(rms(&x) > 0.2, "{model}: the tone is there");
        assert_eq!(c.summary().characters, split::units(text) as u32, "{model}");
        assert_eq!(c.summary().upstream_request_ids.len(), 1, "{model}");
    }
    // Nothing went over HTTP; one task per request, each with the text whole and the
    // parameters herald sends over HTTP.
    assert!(double.synthesis_requests().is_empty());
    // (A realtime connection is pre-opened after each session: it has no session yet.)
    let tasks: Vec<_> = double
        .ws_tasks()
        .into_iter()
        .filter(|t| !t.text.is_empty())
        .collect();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let (cosy, rt) = (&tasks[0], &tasks[1]);
    assert_eq!(
        (cosy.protocol, rt.protocol),
        (WsProtocol::RunTask, WsProtocol::Realtime)
    );
    assert_eq!((cosy.text.as_str(), rt.text.as_str()), (text, text));
    assert!(cosy.completed && rt.completed);
    assert_eq!(cosy.parameters["voice"], "longanyang");
    assert_eq!(cosy.parameters["format"], "pcm");
    assert_eq!(cosy.parameters["sample_rate"], 16000);
    assert_eq!(cosy.parameters["text_type"], "PlainText");
    assert_eq!(rt.model, "qwen3-tts-flash-realtime");
    assert_eq!(rt.parameters["voice"], "Cherry");
    assert_eq!(rt.parameters["mode"], "commit");
    assert_eq!(rt.parameters["sample_rate"], 24000);
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reuse_open_connections() {
    let (double, daemon) = setup("websocket").await;
    let mut client = daemon.client().await;
    for i in 0..5 {
        let c = synthesize(
            &mut client,
            pcm16k(COSY.0, COSY.1, &format!("Request {i}.")),
        )
        .await
        .unwrap();
        assert!(!c.bytes().is_empty());
    }
    let tasks = double.ws_tasks();
    assert_eq!(tasks.len(), 5);
    assert!(tasks.iter().all(|t| t.completed));
    assert_eq!(
        double.ws_handshakes(),
        1,
        "five run-tasks in sequence share one connection: {tasks:?}"
    );
    assert!(tasks.iter().all(|t| t.connection == 0));
    // Realtime sessions end with their connection: the next one is opened ahead of time.
    for i in 0..3 {
        synthesize(
            &mut client,
            pcm16k(REALTIME.0, REALTIME.1, &format!("Session {i}.")),
        )
        .await
        .unwrap();
    }
    let sessions: Vec<_> = double
        .ws_tasks()
        .into_iter()
        .filter(|t| t.protocol == WsProtocol::Realtime && !t.text.is_empty())
        .collect();
    assert_eq!(sessions.len(), 3);
    // Each session after the first ran on the connection pre-opened after the one before
    // (opened while that session was still speaking).
    for pair in sessions.windows(2) {
        assert!(pair[1].connection > pair[0].connection, "{sessions:?}");
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancel_ends_the_upstream_task_at_once() {
    let (double, daemon) = setup("websocket").await;
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let mut client = daemon.client().await;
    for (model, voice) in [COSY, REALTIME] {
        let before = double.ws_tasks().len();
        let mut stream = client
            .synthesize(pcm16k(
                model,
                voice,
                &"A long sentence to speak. ".repeat(4),
            ))
            .await
            .unwrap()
            .into_inner();
        loop {
            match stream.next().await.unwrap().unwrap().payload.unwrap() {
                Payload::Audio(_) => break,
                _ => continue,
            }
        }
        drop(stream);
        // The task that spoke is the last one started (a pre-opened realtime connection
        // logs its session only when it is used).
        let index = double
            .ws_tasks()
            .iter()
            .rposition(|t| !t.text.is_empty())
            .unwrap();
        assert!(index >= before);
        let task = double
            .wait_ws_task_ended(index, Duration::from_secs(1))
            .await
            .unwrap_or_else(|| panic!("{model}: the upstream task did not end within 1 s"));
        assert!(task.disconnected && !task.completed, "{model}: {task:?}");
        assert!(
            task.audio_frames < 40,
            "{model}: stopped early, not after the whole text: {task:?}"
        );
    }
    daemon.stop().await.unwrap();
    double.stop().await;
}

fn http(status: u16, code: &str) -> FaultKind {
    FaultKind::HttpError {
        status,
        code: code.to_owned(),
        message: format!("{code} (scripted)"),
    }
}

type FaultRow = (&'static str, &'static str, Fault, Option<Code>, usize);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_over_websocket_maps_as_over_http() {
    use Code::{FailedPrecondition, Internal, InvalidArgument, ResourceExhausted, Unavailable};
    let (double, daemon) = setup("websocket").await;
    let mut client = daemon.client().await;
    let (cosy, rt) = (COSY.0, REALTIME.0);
    let failed_after = |frames, code: &str| FaultKind::SseErrorAfter {
        frames,
        http_status_comment: 200,
        code: code.to_owned(),
        message: "scripted".to_owned(),
    };
    let always = Fault::always;
    let secs = Duration::from_secs;
    // name, (model, fault, status (None: the audio), upstream tasks)
    #[rustfmt::skip]
    let rows: [(&str, FaultRow); 17] = [
        ("throttled persistent",   (cosy, "", always(http(429, "Throttling.RateQuota")),          Some(ResourceExhausted),  3)),
        ("throttled transient",    (cosy, "", Fault::times(http(429, "Throttling.RateQuota"), 2), None,                     3)),
        ("internal error",         (cosy, "", always(http(500, "InternalError")),                 Some(Unavailable),        3)),
        ("content filter",         (cosy, "", always(http(400, "DataInspectionFailed")),          Some(InvalidArgument),    1)),
        ("access denied",          (cosy, "", always(http(403, "Model.AccessDenied")),            Some(FailedPrecondition), 1)),
        ("task-failed after audio",(cosy, "", always(failed_after(3, "InternalError")),           Some(Unavailable),        1)),
        ("drop after audio",       (cosy, "", always(FaultKind::DropAfter { frames: 3 }),         Some(Unavailable),        1)),
        ("drop before audio",      (cosy, "", Fault::once(FaultKind::DropAfter { frames: 0 }),    None,                     2)),
        ("stall after audio",      (cosy, "", always(FaultKind::StallAfter { frames: 2 }),        Some(Unavailable),        1)),
        ("slow first byte",        (cosy, "", always(FaultKind::SlowFirstByte { delay: secs(2) }),Some(Unavailable),        3)),
        ("malformed frame",        (cosy, "", always(FaultKind::BadJsonAfter { frames: 2 }),      Some(Internal),           1)),
        ("rt throttled",           (rt,   "", always(http(429, "Throttling.RateQuota")),          Some(ResourceExhausted),  3)),
        ("rt content filter",      (rt,   "", always(http(400, "DataInspectionFailed")),          Some(InvalidArgument),    1)),
        ("rt error after audio",   (rt,   "", always(failed_after(3, "InternalError")),           Some(Unavailable),        1)),
        ("rt drop after audio",    (rt,   "", always(FaultKind::DropAfter { frames: 3 }),         Some(Unavailable),        1)),
        ("rt drop before audio",   (rt,   "", Fault::once(FaultKind::DropAfter { frames: 0 }),    None,                     2)),
        ("rt malformed frame",     (rt,   "", always(FaultKind::BadJsonAfter { frames: 2 }),      Some(Internal),           1)),
    ];
    each_row(rows, async |(model, _, fault, code, tries): FaultRow| {
        let voice = if model == cosy { COSY.1 } else { REALTIME.1 };
        double.clear_faults();
        let kind = fault.kind.clone();
        double.push_fault(fault.for_model(model));
        let used = |d: &DashScopeDouble| {
            d.ws_tasks()
                .iter()
                .filter(|t| t.fault.is_some() || !t.text.is_empty() || t.audio_frames > 0)
                .count()
        };
        let before = used(&double);
        let text = "Fault injection over a socket, long enough for several frames.";
        let result = synthesize(&mut client, pcm16k(model, voice, text)).await;
        match (code, result) {
            (None, Ok(c)) => assert!((peak_frequency(&c.mono(), 16000) - 440.0).abs() <= 1.0),
            (Some(code), Err(status)) => {
                assert_eq!(status.code(), code, "{kind:?}: {status:?}");
                assert!(!status.message().contains(API_KEY));
            }
            (want, got) => panic!("{kind:?}: want {want:?}, got {:?}", got.map(|c| c.order)),
        }
        // Pre-opened realtime connections that were never used are not tasks.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(used(&double) - before, tries, "upstream tasks for {kind:?}");
        double.clear_faults();
        let c = synthesize(&mut client, pcm16k(model, voice, "All good."))
            .await
            .unwrap_or_else(|s| panic!("after {kind:?}: {s:?}"));
        assert!(!c.bytes().is_empty());
    })
    .await;
    assert!(double.synthesis_requests().is_empty(), "nothing over HTTP");
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_fails_the_handshake_and_names_the_setting() {
    logs::capture();
    let double = DashScopeDouble::start("sk-the-right-one").await;
    let ws = double.ws_base_url();
    let daemon = spawn_daemon_against(
        &double,
        "[dashscope]\ntransport = \"websocket\"\n",
        &[("DASHSCOPE_WEBSOCKET_BASE_URL", ws.as_str())],
    )
    .await;
    let mut client = daemon.client().await;
    for (model, voice) in [COSY, REALTIME] {
        let before = double.ws_refused();
        let status = synthesize(&mut client, pcm16k(model, voice, "Hi."))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{model}: {status:?}"
        );
        let m = status.message();
        assert!(
            m.contains("DASHSCOPE_API_KEY") && m.contains("InvalidApiKey"),
            "{m}"
        );
        assert!(!m.contains(API_KEY));
        assert_eq!(
            double.ws_refused() - before,
            1,
            "{model}: 401 is never retried"
        );
    }
    assert_eq!(double.ws_handshakes(), 0);
    let leaks = logs::capture().leaks();
    assert!(leaks.is_empty(), "the key in the logs: {leaks:?}");
    daemon.stop().await.unwrap();
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_auto_and_http_pick_per_model() {
    for transport in ["auto", "http"] {
        let (double, daemon) = setup(transport).await;
        let mut client = daemon.client().await;
        // A Beijing-style endpoint: CosyVoice over HTTP/SSE under auto and http …
        synthesize(&mut client, pcm16k(COSY.0, COSY.1, "Hello."))
            .await
            .unwrap();
        assert_eq!(double.synthesis_requests().len(), 1, "{transport}");
        // … and a realtime model over its WebSocket whatever the setting.
        let c = synthesize(&mut client, pcm16k(REALTIME.0, REALTIME.1, "Hello."))
            .await
            .unwrap();
        assert!((peak_frequency(&c.mono(), 16000) - 440.0).abs() <= 1.0);
        assert_eq!(double.synthesis_requests().len(), 1, "{transport}");
        let tasks = double.ws_tasks();
        assert!(
            tasks.iter().all(|t| t.protocol == WsProtocol::Realtime),
            "{transport}: {tasks:?}"
        );
        daemon.stop().await.unwrap();
        double.stop().await;
    }
}
