//! No thread per stream: hundreds of `Synthesize` streams held open at once against the
//! DashScope double (paced at real time) run on a bounded set of threads. The daemon is the
//! real binary (`herald serve`), so the thread count read from `/proc/<pid>/status` is its
//! own. Half the streams need no resampling (CosyVoice asked for 16 kHz: the chain runs inline
//! on the tokio workers), half do (Qwen-TTS's 24 kHz to 16 kHz: their resampler runs on the
//! CPU pool); every stream's audio must still be complete, to the frame.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use herald::pb::{self, audio_format::Encoding, synthesize_response::Payload};

use crate::support::{dashscope::*, *};

/// Streams started at once (at least; more on a machine with many cores), half of each model.
const STREAMS: usize = 240;
/// The double's tone lasts 40 ms per character; 120 characters: 4.8 s at real time.
const MS_PER_CHAR: usize = 40;

fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One stream's text: unique, 120 ASCII characters (below CosyVoice's 150-unit truncation).
fn text(i: usize) -> String {
    let mut t = format!("Stream {i:03} holds its line open while its neighbours speak too");
    while t.len() < 119 {
        t.push_str(" and on");
    }
    t.truncate(119);
    t.push('.');
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_open_streams_run_on_a_bounded_set_of_threads_with_complete_audio() {
    let _exclusive = exclusive().await;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // tokio's workers (one per core), the CPU pool (one per core), one per core more for
    // the main thread and whatever the system adds, and 32 for the blocking pool's short
    // jobs (cache, DNS, startup) and the libraries' own threads. A thread per open stream
    // would pass it as soon as more streams than that are open.
    let bound = 3 * cores + 32;
    let streams = STREAMS.max(3 * bound);
    let double = DashScopeDouble::start(API_KEY).await;
    // Real time, in events of 400 ms (fewer events: the double shares the test's two threads).
    double.set_options(Options {
        pace: 1.0,
        chunk_ms: 400,
        ..Options::default()
    });
    let toml = format!(
        "[dashscope]\nmax_concurrent_requests = {n}\nqueue_timeout_ms = 60000\n\
         first_event_timeout_ms = 60000\nidle_timeout_ms = 60000\n\
         [synthesis]\nmax_concurrent = {n}\nmax_concurrent_per_peer = {n}\n\
         [server]\nmax_concurrent_streams = {n}\n\
         [cache]\nenabled = false\n[fallback]\nchain = []\n",
        n = streams + 16
    );
    let server = Serve::new(&toml).double(&double).start();
    let pid = server.child.id();

    let first_audio = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(server.client().await);
    }
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let mut client = channels[i % channels.len()].clone();
            let (first_audio, finished) = (Arc::clone(&first_audio), Arc::clone(&finished));
            tokio::spawn(async move {
                let (model, voice) = if i % 2 == 0 {
                    ("cosyvoice-v3-flash", "longanyang")
                } else {
                    ("qwen3-tts-flash", "Cherry")
                };
                let text = text(i);
                let mut req = tonic::Request::new(pb::SynthesizeRequest {
                    model: model.to_owned(),
                    voice: voice.to_owned(),
                    ..request(&text, Encoding::PcmS16le, 16_000, 1)
                });
                req.set_timeout(Duration::from_secs(120));
                let mut stream = client
                    .synthesize(req)
                    .await
                    .unwrap_or_else(|s| panic!("stream {i} ({model}): {s:?}"))
                    .into_inner();
                let (mut bytes, mut summary, mut first) = (0usize, None, true);
                while let Some(msg) = stream.next().await {
                    match msg
                        .unwrap_or_else(|s| panic!("stream {i} ({model}): {s:?}"))
                        .payload
                    {
                        Some(Payload::Audio(a)) => {
                            if first && !a.data.is_empty() {
                                first = false;
                                first_audio.fetch_add(1, Ordering::SeqCst);
                            }
                            bytes += a.data.len();
                        }
                        Some(Payload::Summary(s)) => summary = Some(s),
                        _ => {}
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
                let summary = summary.unwrap_or_else(|| panic!("stream {i}: no summary"));
                (i, model, text.chars().count(), bytes / 2, summary.samples)
            })
        })
        .collect();

    // Sample the daemon's threads while the streams run, and how many streams are open (have
    // had audio and not ended: with a thread per stream, each of them would hold one).
    let (mut most, mut most_open) = (0, 0);
    while finished.load(Ordering::SeqCst) < streams {
        let threads = threads_of(pid);
        let open = first_audio
            .load(Ordering::SeqCst)
            .saturating_sub(finished.load(Ordering::SeqCst));
        most = most.max(threads);
        most_open = most_open.max(open);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        let (i, model, chars, frames, summary_frames) = t.await.expect("stream task");
        // Every frame: 40 ms per character at 16 kHz, resampled or not.
        let want = (chars * MS_PER_CHAR * 16) as u64;
        assert_eq!(
            (frames as u64, summary_frames),
            (want, want),
            "stream {i} ({model}): frames received and in the summary"
        );
    }
    eprintln!(
        "{streams} streams: at most {most} daemon threads, at most {most_open} streams open \
         at once; bound {bound} ({cores} cores)"
    );
    assert!(
        most_open >= 2 * bound,
        "only {most_open} streams were open at once: too few to tell (the test proves nothing)"
    );
    assert!(
        most <= bound,
        "the daemon ran {most} threads for {most_open} open streams (bound {bound}: {cores} cores)"
    );
}
