//! Hardening of the synthesis core, through the real binary (`herald serve` as a process) and
//! the DashScope double (issue 23, items 4, 5, 6 and part of 10):
//!
//! - a hung cloud (the double accepts and never answers) is not silence: the fallback speaks
//!   within `fallback.first_audio_budget_ms` (or half the deadline), and the hung upstream
//!   request is dropped;
//! - long texts under a small upstream request cap are never cut once their audio started;
//!   the excess is refused at the start with RESOURCE_EXHAUSTED naming the setting;
//! - espeak-ng processes are bounded (`espeak.max_processes`), and `WarmCache` is admitted
//!   like `Synthesize` (`synthesis.max_concurrent`);
//! - a huge voice name is refused with INVALID_ARGUMENT and a short message; a FIFO or a
//!   foreign entry at a cache entry's path is a miss, never a hang or a wrong hit; a failed
//!   cache write is logged with its cause.

use std::{path::PathBuf, time::Duration};

use futures::StreamExt;
use herald::pb::{
    self, audio_format::Encoding, cache_client::CacheClient, synthesize_response::Payload,
};
use tokio::time::Instant;
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};

use crate::support::{dashscope::*, *};

const MODEL: &str = "cosyvoice-v3-flash";
const VOICE: &str = "longanyang";

/// How one stream went: when its first audio arrived (from the call), its audio bytes, and
/// how it ended.
#[derive(Debug)]
struct Run {
    info: Option<pb::AudioInfo>,
    first_audio: Option<Duration>,
    bytes: usize,
    summary: bool,
    error: Option<tonic::Status>,
}

/// Run one `Synthesize` with a gRPC deadline of `deadline`, reading everything.
async fn run(
    client: &mut pb::speech_client::SpeechClient<Channel>,
    req: pb::SynthesizeRequest,
    deadline: Duration,
) -> Run {
    let started = Instant::now();
    let mut request = tonic::Request::new(req);
    request.set_timeout(deadline);
    let mut out = Run {
        info: None,
        first_audio: None,
        bytes: 0,
        summary: false,
        error: None,
    };
    let mut stream = match client.synthesize(request).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(m) => match m.payload {
                Some(Payload::Info(i)) => out.info = Some(i),
                Some(Payload::Audio(a)) => {
                    if out.first_audio.is_none() && !a.data.is_empty() {
                        out.first_audio = Some(started.elapsed());
                    }
                    out.bytes += a.data.len();
                }
                Some(Payload::Summary(_)) => out.summary = true,
                Some(Payload::Words(_)) | None => {}
            },
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

fn cloud(text: &str) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: MODEL.into(),
        voice: VOICE.into(),
        ..request(text, Encoding::PcmS16le, 16000, 1)
    }
}

fn espeak(text: &str) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: "espeak-ng".into(),
        ..request(text, Encoding::PcmS16le, 16000, 1)
    }
}

async fn cache_client(server: &ServeProcess) -> CacheClient<Channel> {
    let ch = Endpoint::from_shared(format!("unix://{}", server.socket.display()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect unix");
    CacheClient::new(ch)
}

// === item 4: a hung cloud ===

/// Time to first audio with a frozen upstream, for deadlines of 2, 5 and 10 s: the fallback
/// (espeak-ng) speaks after the first-audio budget (1.5 s) or half the deadline, whichever is
/// first, and the frozen upstream request is dropped. Before: DEADLINE_EXCEEDED and no audio
/// (the 15 s first-event timeout outlived every deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cloud_falls_back_within_the_first_audio_budget() {
    let _exclusive = exclusive().await;
    let double = DashScopeDouble::start(API_KEY).await;
    double.push_fault(Fault::always(FaultKind::Frozen));
    let server = Serve::new(
        "[cache]\nenabled = false\n[fallback]\nchain = [\"espeak-ng\"]\n\
         [dashscope]\nfirst_event_timeout_ms = 15000\n",
    )
    .double(&double)
    .start();
    let mut client = server.client().await;
    let mut measured = Vec::new();
    for (i, deadline_s) in [2u64, 5, 10].into_iter().enumerate() {
        let deadline = Duration::from_secs(deadline_s);
        let r = run(&mut client, cloud("Platform two, now boarding."), deadline).await;
        assert!(r.error.is_none(), "{deadline_s} s: {:?}", r.error);
        assert!(r.summary, "{deadline_s} s: no summary");
        let info = r.info.expect("info");
        assert_eq!(info.engine, "espeak-ng", "{deadline_s} s: {info:?}");
        assert!(info.fallback_used, "{info:?}");
        assert!(
            info.fallback_reason.contains("sent no audio within"),
            "{}",
            info.fallback_reason
        );
        let ttfa = r.first_audio.expect("audio");
        // The fallback starts at min(1.5 s, deadline / 2); espeak-ng then needs a moment.
        let starts = Duration::from_millis(1500).min(deadline / 2);
        assert!(ttfa >= starts, "{deadline_s} s: first audio after {ttfa:?}");
        assert!(
            ttfa < starts + Duration::from_millis(2000),
            "{deadline_s} s: first audio after {ttfa:?}, the fallback starts at {starts:?}"
        );
        assert!(r.bytes > 16_000, "{deadline_s} s: {} bytes", r.bytes);
        // The frozen request reached the double once (no retry), and herald dropped it.
        let logged = double
            .wait_ended(i, Duration::from_secs(5))
            .await
            .expect("the hung upstream request was dropped");
        assert!(logged.disconnected, "{logged:?}");
        assert_eq!(double.synthesis_requests().len(), i + 1);
        measured.push((deadline_s, ttfa));
    }
    for (d, ttfa) in &measured {
        eprintln!("frozen upstream, deadline {d} s: first audio after {ttfa:?}");
    }
    drop(server);

    // The same with the cache on (the default): the engine's attempt is a shared flight, and
    // leaving it still drops the hung upstream request.
    let server = Serve::new("# defaults: cache on, chain [\"cache\", \"espeak-ng\"]\n")
        .double(&double)
        .start();
    let mut client = server.client().await;
    let before = double.synthesis_requests().len();
    let r = run(&mut client, cloud("Mind the gap."), Duration::from_secs(5)).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.info.expect("info").engine, "espeak-ng");
    let ttfa = r.first_audio.expect("audio");
    assert!(ttfa < Duration::from_secs(3), "{ttfa:?}");
    let logged = double
        .wait_ended(before, Duration::from_secs(5))
        .await
        .expect("the hung upstream request was dropped");
    assert!(logged.disconnected, "{logged:?}");
}

// === item 5: admission ===

/// A text of `sentences` sentences of about 35 characters each.
fn long_text(n: usize, sentences: usize) -> String {
    (0..sentences)
        .map(|s| format!("Stream {n:02} sentence {s} is on its way now."))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Twenty-four 5-piece texts, one every 150 ms (newcomers keep arriving while earlier texts
/// play), against 3 upstream slots and a double pacing audio at real time: every stream either
/// plays whole or is refused before any audio with RESOURCE_EXHAUSTED naming
/// `dashscope.max_concurrent_requests`. Before: later pieces of admitted texts queued behind
/// newcomers past `queue_timeout_ms`, and streams were cut after their audio had started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_texts_under_load_are_never_cut_and_the_excess_is_refused_at_the_start() {
    let _exclusive = exclusive().await;
    let double = DashScopeDouble::start(API_KEY).await;
    double.set_options(Options {
        pace: 1.0,
        ms_per_unit: 10,
        ..Options::default()
    });
    let server = Serve::new(
        "[cache]\nenabled = false\n[fallback]\nchain = []\n\
         [synthesis]\nmax_concurrent = 64\nmax_concurrent_per_peer = 64\n\
         [dashscope]\nmax_concurrent_requests = 3\nqueue_timeout_ms = 1500\n\
         cosyvoice_piece_units = 45\nretry_base_ms = 10\n",
    )
    .double(&double)
    .start();
    let client = server.client().await;
    let mut tasks = Vec::new();
    for n in 0..24 {
        let mut c = client.clone();
        let text = long_text(n, 5);
        tasks.push(tokio::spawn(async move {
            let r = run(&mut c, cloud(&text), Duration::from_secs(120)).await;
            (text, r)
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (mut whole, mut refused, mut cut) = (0, 0, Vec::new());
    for t in tasks {
        let (text, r) = t.await.expect("task");
        match &r.error {
            None => {
                assert!(r.summary, "{r:?}");
                // The whole text: units × 10 ms at 16 kHz s16 (a boundary may lose a space).
                let want = text_units(&text) as f64 * 10.0;
                let got = r.bytes as f64 / 32.0;
                assert!(
                    got >= want * 0.95 && got <= want * 1.01,
                    "{got} ms of {want}"
                );
                whole += 1;
            }
            Some(e) if r.bytes > 0 || r.info.is_some() => {
                cut.push(format!(
                    "{} bytes, then {:?}: {}",
                    r.bytes,
                    e.code(),
                    e.message()
                ));
            }
            Some(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    e.message()
                        .starts_with("dashscope.max_concurrent_requests:"),
                    "{}",
                    e.message()
                );
                refused += 1;
            }
        }
    }
    eprintln!(
        "24 long texts, 3 upstream slots: {whole} whole, {refused} refused at the start, {} cut",
        cut.len()
    );
    assert!(
        cut.is_empty(),
        "streams cut after their audio started: {cut:#?}"
    );
    assert!(whole >= 3, "{whole} whole");
    assert!(refused >= 1, "{refused} refused");
}

// === item 6: espeak-ng processes ===

/// espeak-ng children of the daemon process.
fn espeak_children(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let ppid = stat[close + 2..].split(' ').nth(1);
            &stat[open + 1..close] == "espeak-ng" && ppid == Some(pid.to_string().as_str())
        })
        .count()
}

/// A started stream whose audio the client does not read: its espeak-ng child stays alive
/// (blocked on its pipe) as long as the stream is open.
async fn hold(
    client: &mut pb::speech_client::SpeechClient<Channel>,
    text: &str,
) -> Result<tonic::Streaming<pb::SynthesizeResponse>, tonic::Status> {
    let mut stream = client.synthesize(espeak(text)).await?.into_inner();
    match stream.next().await {
        Some(Ok(_)) => Ok(stream),
        Some(Err(e)) => Err(e),
        None => panic!("the stream ended at once"),
    }
}

/// `espeak.max_processes = 2`: two long streams hold both; a third request, a `WarmCache`
/// phrase and a fallback are refused with RESOURCE_EXHAUSTED naming the setting, and no more
/// than 2 espeak-ng processes ever run. Before: no bound (every request spawned one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_ng_processes_are_bounded() {
    let _exclusive = exclusive().await;
    let server = Serve::new(
        "[espeak]\nmax_processes = 2\n[synthesis]\nmax_concurrent = 64\n\
         max_concurrent_per_peer = 64\n",
    )
    .start();
    let pid = server.child.id();
    let mut client = server.client().await;
    let long = "This announcement is long enough to keep espeak busy for a while. ".repeat(250);
    let a = hold(&mut client, &long).await.expect("first");
    let b = hold(&mut client, &long).await.expect("second");
    let e = hold(&mut client, &long).await.expect_err("third");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().starts_with("espeak.max_processes:"),
        "{}",
        e.message()
    );
    assert_eq!(espeak_children(pid), 2);
    // WarmCache goes through the same engine: refused per phrase, naming the setting.
    let mut cache = cache_client(&server).await;
    let warmed = cache
        .warm_cache(pb::WarmCacheRequest {
            phrases: vec![espeak("Doors closing.")],
            ..Default::default()
        })
        .await
        .expect("warm call")
        .into_inner();
    let result = &warmed.results[0];
    assert_eq!(result.code, Code::ResourceExhausted as i32, "{result:?}");
    assert!(
        result.message.starts_with("espeak.max_processes:"),
        "{}",
        result.message
    );
    assert!(espeak_children(pid) <= 2);
    drop((a, b));
    // The slots come back once the children are reaped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match hold(&mut client, "Doors closing.").await {
            Ok(s) => {
                drop(s);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the slots never came back: {e:?}"),
        }
    }
}

/// `WarmCache` is admitted like `Synthesize`: with `synthesis.max_concurrent = 2` held by two
/// streams, a warmed phrase is refused naming the setting. Before: warming ignored the limit
/// (40 calls × 4 phrases meant 160 espeak-ng processes at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_cache_honours_max_concurrent() {
    let _exclusive = exclusive().await;
    let server = Serve::new("[synthesis]\nmax_concurrent = 2\n").start();
    let mut client = server.client().await;
    let long = "This announcement is long enough to keep espeak busy for a while. ".repeat(250);
    let a = hold(&mut client, &long).await.expect("first");
    let b = hold(&mut client, &long).await.expect("second");
    let mut cache = cache_client(&server).await;
    let warmed = cache
        .warm_cache(pb::WarmCacheRequest {
            phrases: vec![espeak("Mind the gap.")],
            ..Default::default()
        })
        .await
        .expect("warm call")
        .into_inner();
    let result = &warmed.results[0];
    assert_eq!(result.code, Code::ResourceExhausted as i32, "{result:?}");
    assert!(
        result.message.starts_with("synthesis.max_concurrent:"),
        "{}",
        result.message
    );
    drop((a, b));
    // Once the streams are gone, the phrase is warmed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let warmed = cache
            .warm_cache(pb::WarmCacheRequest {
                phrases: vec![espeak("Mind the gap.")],
                ..Default::default()
            })
            .await
            .expect("warm call")
            .into_inner();
        if warmed.results[0].code == Code::Ok as i32 {
            assert!(warmed.results[0].cached);
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", warmed.results[0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === item 10: echoed input, cache entries ===

/// A 100 KB voice name is INVALID_ARGUMENT with a short message, and the daemon goes on.
/// Before: the whole name was echoed into the status, which the client's transport refused
/// (RESOURCE_EXHAUSTED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_voice_name_is_refused_with_a_short_message() {
    let server = Serve::new("# defaults\n").start();
    let mut client = server.client().await;
    let req = pb::SynthesizeRequest {
        voice: "v".repeat(100_000),
        ..espeak("Hello.")
    };
    let e = synthesize(&mut client, req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.code());
    assert!(e.message().starts_with("voice: "), "{}", &e.message()[..80]);
    assert!(e.message().len() < 1200, "{} bytes", e.message().len());
    let ok = synthesize(&mut client, espeak("Still here."))
        .await
        .expect("still serving");
    assert!(!ok.bytes().is_empty());
}

/// Every entry file under the daemon's cache directory.
fn entry_files(server: &ServeProcess) -> Vec<PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.components().any(|c| c.as_os_str() == "entries") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&server.dir.path().join("cache"), &mut out);
    out.sort();
    out
}

/// A cache entry's file replaced by a FIFO is a miss (the request is served, within its
/// deadline), and an entry copied over another key's file is never served as that key's hit.
/// Before: the FIFO hung the request (and a thread); the foreign entry was a hit with the
/// wrong audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_foreign_file_at_an_entry_path_is_a_miss() {
    let server = Serve::new("# defaults: cache on\n").start();
    let mut client = server.client().await;
    let short = "Doors closing.";
    let long = "The train now arriving at platform two is the express to the airport.";
    let first_short = synthesize(&mut client, espeak(short)).await.expect("short");
    let first_long = synthesize(&mut client, espeak(long)).await.expect("long");
    assert!(!first_short.summary().cache_hit && !first_long.summary().cache_hit);
    // Stored in the background: wait for both files.
    let deadline = Instant::now() + Duration::from_secs(10);
    while entry_files(&server).len() < 2 {
        assert!(Instant::now() < deadline, "entries not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = synthesize(&mut client, espeak(short)).await.expect("hit");
    assert!(again.summary().cache_hit, "a hit before tampering");
    let files = entry_files(&server);
    let size = |p: &PathBuf| std::fs::metadata(p).unwrap().len();
    let (short_file, long_file) = if size(&files[0]) < size(&files[1]) {
        (files[0].clone(), files[1].clone())
    } else {
        (files[1].clone(), files[0].clone())
    };

    // The long phrase's entry copied over the short one's: not a hit, the short audio.
    std::fs::copy(&long_file, &short_file).unwrap();
    let r = run(&mut client, espeak(short), Duration::from_secs(10)).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let summary_hit = {
        let c = synthesize(&mut client, espeak(short)).await.expect("again");
        c.bytes().len()
    };
    assert_eq!(
        r.bytes,
        first_short.bytes().len(),
        "the short phrase's audio, not the foreign entry's"
    );
    assert_eq!(summary_hit, first_short.bytes().len());

    // A FIFO in place of the long phrase's entry: a miss, served within the deadline.
    std::fs::remove_file(&long_file).unwrap();
    let path = std::ffi::CString::new(long_file.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    let r = run(&mut client, espeak(long), Duration::from_secs(10)).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.bytes, first_long.bytes().len());
}

/// A cache write that fails is logged with its cause (here: the cache's `tmp` directory
/// replaced by a file). Before: logged at debug level only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cache_write_is_logged_with_its_cause() {
    let server = Serve::new("# defaults: cache on\n").logged().start();
    let mut client = server.client().await;
    // Let the cache open, then break its temporary directory.
    synthesize(&mut client, espeak("Warm up."))
        .await
        .expect("warm up");
    let tmp = server.dir.path().join("cache").join("tmp");
    assert!(tmp.is_dir(), "{}", tmp.display());
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    synthesize(&mut client, espeak("Mind the gap."))
        .await
        .expect("served without the cache");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| l.contains("cache write failed")) {
            eprintln!("{line}");
            assert!(line.contains("WARN"), "{line}");
            assert!(
                line.to_ascii_lowercase().contains("not a directory"),
                "the cause: {line}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no log line in:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
