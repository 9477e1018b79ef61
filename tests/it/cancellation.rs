//! A client that drops its stream mid-way stops the engine at once: the espeak-ng process is
//! gone within 1 s. The test runs in a process of its own (`own_process!`): no other test's
//! espeak-ng may be a child of the process it watches.

use std::time::Duration;

use herald::pb::audio_format::Encoding;

use crate::support::{process::own_process, *};

#[tokio::test]
async fn dropping_the_stream_kills_espeak_within_one_second() {
    if !own_process!(dropping_the_stream_kills_espeak_within_one_second) {
        return;
    }
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    // About 15 minutes of speech: espeak-ng is still running (blocked on back-pressure) when
    // the client goes away after the first chunks.
    let text = "The quick brown fox jumps over the lazy dog, again and again. ".repeat(300);
    let mut stream = client
        .synthesize(request(&text, Encoding::PcmS16le, 16_000, 1))
        .await
        .expect("call")
        .into_inner();
    for _ in 0..3 {
        stream.message().await.expect("message").expect("some");
    }
    let running = children_named("espeak-ng");
    assert!(
        running.iter().any(|(_, state)| *state != 'Z'),
        "espeak-ng should still be running mid-stream: {running:?}"
    );

    drop(stream);
    let dropped = tokio::time::Instant::now();
    loop {
        let left = children_named("espeak-ng");
        if left.is_empty() {
            break;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(1),
            "espeak-ng still there 1 s after the client left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("espeak-ng gone {:?} after the drop", dropped.elapsed());

    // The daemon serves the next request normally.
    let ok = synthesize(&mut client, request("Next.", Encoding::PcmS16le, 0, 0))
        .await
        .expect("next request");
    assert!(ok.summary().samples > 0);
    daemon.stop().await.expect("clean stop");
}
