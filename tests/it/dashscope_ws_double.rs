//! The DashScope double's WebSocket side (`support::dashscope::ws`) proved with the official
//! `dashscope` Python SDK (tests/python/dashscope_ws_check.py): `tts_v2.SpeechSynthesizer`
//! over run-task (one call, text streamed in pieces, a task-failed, a refused handshake) and
//! `QwenTtsRealtime` (server_commit and commit modes, an error event), with exact audio
//! lengths and the tone; then what the SDK sent, as the double logged it.
//!
//! Needs a Python with `dashscope` as `dashscope_double` does (skipped without one unless `CI`
//! is set).

use std::time::Duration;

use crate::support::{
    API_KEY,
    dashscope::*,
    python::{python_with_dashscope, run_sdk_check},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_speaks_both_websocket_protocols_with_the_double() {
    let Some(py) = python_with_dashscope() else {
        return;
    };
    let ds = DashScopeDouble::start(API_KEY).await;
    let throttled = FaultKind::HttpError {
        status: 429,
        code: "Throttling.RateQuota".into(),
        message: "Requests rate limit exceeded, please try again later.".into(),
    };
    for model in [
        "cosyvoice-v3-flash-throttled",
        "qwen3-tts-flash-realtime-throttled",
    ] {
        ds.push_fault(Fault::always(throttled.clone()).for_model(model));
    }
    let c = run_sdk_check(&py, "dashscope_ws_check.py", &ds).await;
    assert_eq!(c["cosy_call"]["bytes"], 29 * 40 * 16 * 2);
    assert_eq!(c["cosy_streaming_pieces"]["sentence_begins"], 2);
    // A task-failed before task-started is raised by `call`; a refused handshake (401) shows
    // only as the SDK's connect timeout.
    assert!(
        c["cosy_task_failed"]["text"]
            .as_str()
            .unwrap()
            .contains("Throttling.RateQuota")
    );
    assert_eq!(c["cosy_wrong_key"]["class"], "TimeoutError");
    assert_eq!(c["realtime_server_commit"]["responses"], 2);
    assert_eq!(c["realtime_commit"]["responses"], 1);

    // What the SDK sent, as the double logged it: one connection per synthesizer (the SDK
    // does not reuse them outside its object pool), the pieces as sent, its parameters.
    let tasks = ds.ws_tasks();
    let spoke: Vec<_> = tasks.iter().filter(|t| !t.text.is_empty()).collect();
    let stream = spoke
        .iter()
        .find(|t| t.protocol == WsProtocol::RunTask && t.pieces.len() == 3)
        .expect("the streamed task");
    assert_eq!(stream.pieces, ["Hello the", "re. Second sen", "tence!"]);
    assert_eq!(stream.parameters["format"], "pcm");
    assert_eq!(stream.parameters["sample_rate"], 22050);
    assert_eq!(stream.parameters["voice"], "longanyang");
    assert!(stream.completed);
    // The failing session may close before the SDK's text arrives: it counts by its fault.
    let rt: Vec<_> = tasks
        .iter()
        .filter(|t| t.protocol == WsProtocol::Realtime && (!t.text.is_empty() || t.fault.is_some()))
        .collect();
    assert_eq!(rt.len(), 3, "{rt:?}");
    assert_eq!(rt[0].parameters["mode"], "server_commit");
    assert_eq!(rt[0].parameters["response_format"], "pcm");
    assert!(
        ds.ws_refused() >= 1,
        "the wrong key was refused at the handshake"
    );
    assert!(
        ds.wait_ws_task_ended(tasks.len() - 1, Duration::from_secs(5))
            .await
            .is_some()
    );
    ds.stop().await;
}
