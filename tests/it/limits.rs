//! herald's limits through gRPC, against the DashScope test double pacing audio at real time:
//! concurrent streams (global and per peer), the deadline cap, the upstream request cap with
//! its queue timeout, and the request message size. Each refused request gets its status
//! naming the limit; the streams already running finish whole.

use futures::StreamExt;
use herald::pb::{self, audio_format::Encoding, synthesize_response::Payload};
use tonic::{Code, Streaming};

use crate::support::{dashscope::*, *};

/// A double pacing audio at real time, and a daemon with neither cache nor fallback, plus
/// `toml_extra`.
async fn setup(toml_extra: &str) -> (DashScopeDouble, TestDaemon) {
    let (double, daemon) = spawn_daemon_with_double(&layered(&[ENGINES_ONLY, toml_extra])).await;
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    (double, daemon)
}

/// About 1 s of `hz` (25 units × 40 ms).
fn tone(hz: u32) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: "cosyvoice-v3-flash".into(),
        ..request(
            &format!("@{hz}Hz one two three four"),
            Encoding::PcmS16le,
            16000,
            1,
        )
    }
}

/// A stream that has started (its `info` arrived).
async fn start(
    client: &mut pb::speech_client::SpeechClient<tonic::transport::Channel>,
    req: pb::SynthesizeRequest,
) -> Result<Streaming<pb::SynthesizeResponse>, tonic::Status> {
    let mut stream = client.synthesize(req).await?.into_inner();
    match stream.next().await {
        Some(Ok(pb::SynthesizeResponse {
            payload: Some(Payload::Info(_)),
        })) => Ok(stream),
        Some(Err(e)) => Err(e),
        other => panic!("expected info, got {other:?}"),
    }
}

/// The rest of a started stream: its samples and whether it ended with a summary.
async fn finish(mut stream: Streaming<pb::SynthesizeResponse>) -> Vec<f32> {
    let mut bytes = Vec::new();
    let mut summary = false;
    while let Some(msg) = stream.next().await {
        match msg.expect("no error").payload {
            Some(Payload::Audio(a)) => bytes.extend_from_slice(&a.data),
            Some(Payload::Summary(_)) => summary = true,
            _ => {}
        }
    }
    assert!(summary, "ended with a summary");
    s16_to_f32(&bytes)
}

fn assert_tone(x: &[f32], hz: f64) {
    let got = peak_frequency(x, 16000);
    assert!((got - hz).abs() <= 2.0, "{got} Hz, want {hz}");
    let ms = x.len() as f64 / 16.0;
    assert!((ms - 1000.0).abs() <= 1.0, "{ms} ms: the whole phrase");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_past_max_concurrent_is_refused_and_the_others_finish() {
    let (_double, daemon) = setup("[synthesis]\nmax_concurrent = 3\n").await;
    let mut client = daemon.client().await;
    let mut running = Vec::new();
    for hz in [400, 500, 600] {
        running.push((
            hz,
            start(&mut client, tone(hz))
                .await
                .expect("within the limit"),
        ));
    }
    let e = start(&mut client, tone(700)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().starts_with("synthesis.max_concurrent:"),
        "{}",
        e.message()
    );
    for (hz, stream) in running {
        assert_tone(&finish(stream).await, f64::from(hz));
    }
    // Slots are free again.
    let c = synthesize(&mut client, tone(800)).await.expect("after");
    assert_tone(&s16_to_f32(&c.bytes()), 800.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_slot() {
    let (_double, daemon) =
        setup("[synthesis]\nmax_concurrent = 3\nmax_concurrent_per_peer = 2\n").await;
    let mut tcp = daemon.client().await;
    let mut unix = daemon.unix_client().await;
    let a = start(&mut tcp, tone(400)).await.unwrap();
    let b = start(&mut tcp, tone(500)).await.unwrap();
    let e = start(&mut tcp, tone(600)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message()
            .starts_with("synthesis.max_concurrent_per_peer:"),
        "{}",
        e.message()
    );
    // Another peer (the unix socket's user) still gets the last global slot.
    let c = start(&mut unix, tone(600)).await.expect("another peer");
    let e = start(&mut unix, tone(700)).await.unwrap_err();
    assert!(
        e.message().starts_with("synthesis.max_concurrent:"),
        "{}",
        e.message()
    );
    for (hz, s) in [(400.0, a), (500.0, b), (600.0, c)] {
        assert_tone(&finish(s).await, hz);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_capped() {
    let (_double, daemon) = setup("[synthesis]\nmax_deadline_ms = 2000\n").await;
    let mut client = daemon.client().await;
    // 3.3 s of audio at real time, no client deadline: the cap ends it.
    let long = pb::SynthesizeRequest {
        model: "cosyvoice-v3-flash".into(),
        ..request(
            "@440Hz one two three four five six seven eight nine ten eleven twelve thirteen",
            Encoding::PcmS16le,
            16000,
            1,
        )
    };
    let started = tokio::time::Instant::now();
    let e = synthesize(&mut client, long).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message().contains("synthesis.max_deadline_ms"),
        "{}",
        e.message()
    );
    assert!(
        started.elapsed().as_secs_f64() < 2.5,
        "{:?}",
        started.elapsed()
    );
    // A short request within the cap is unaffected.
    let c = synthesize(&mut client, tone(500)).await.expect("short");
    assert_tone(&s16_to_f32(&c.bytes()), 500.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requests_are_capped_with_a_queue_timeout() {
    let (double, daemon) = setup(
        "[dashscope]\nmax_concurrent_requests = 1\nqueue_timeout_ms = 200\nretry_base_ms = 10\n",
    )
    .await;
    let mut client = daemon.client().await;
    let first = start(&mut client, tone(400)).await.unwrap();
    let e = start(&mut client, tone(500)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .starts_with("dashscope.max_concurrent_requests:"),
        "{}",
        e.message()
    );
    assert_tone(&finish(first).await, 400.0);
    assert_eq!(
        double.requests().len(),
        1,
        "the refused one never reached upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_an_upstream_slot_go_through_within_the_timeout() {
    let (double, daemon) =
        setup("[dashscope]\nmax_concurrent_requests = 1\nqueue_timeout_ms = 5000\n").await;
    let mut a = daemon.client().await;
    let mut b = daemon.client().await;
    let (ra, rb) = tokio::join!(synthesize(&mut a, tone(400)), synthesize(&mut b, tone(500)));
    assert_tone(&s16_to_f32(&ra.unwrap().bytes()), 400.0);
    assert_tone(&s16_to_f32(&rb.unwrap().bytes()), 500.0);
    let log = double.requests();
    assert_eq!(log.len(), 2);
    // One after the other: the second started after the first ended.
    let (first, second) = if log[0].received_at <= log[1].received_at {
        (&log[0], &log[1])
    } else {
        (&log[1], &log[0])
    };
    assert!(second.received_at >= first.ended_at.expect("ended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_and_the_daemon_goes_on() {
    let (_double, daemon) = setup("[server]\nmax_message_bytes = 65536\n").await;
    let mut client = daemon.client().await;
    let huge = pb::SynthesizeRequest {
        text: "a".repeat(100_000),
        ..tone(400)
    };
    let e = synthesize(&mut client, huge).await.unwrap_err();
    // tonic's code for an oversized message; the message names the limit and its setting.
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(
        e.message()
            .contains("exceeds the limit of 65536 bytes (server.max_message_bytes)"),
        "{}",
        e.message()
    );
    let c = synthesize(&mut client, tone(450))
        .await
        .expect("still serving");
    assert_tone(&s16_to_f32(&c.bytes()), 450.0);
}
