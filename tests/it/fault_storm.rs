//! Fault injection under load: 100 concurrent `Synthesize` streams against the DashScope double
//! while it injects a seeded, reproducible random mix of every fault it knows. The daemon is
//! the real binary (`herald serve`), so its file descriptors and threads are its own.
//!
//! The oracle: which stream meets which fault depends on scheduling (faults are taken in
//! arrival order), so the test does not guess; it reads the double's log afterwards. Every
//! stream has its own text, the log says which fault each upstream request got, and the last
//! attempt of a stream decides its outcome: audio when that attempt had no fault (or a benign
//! one), else the status herald's error mapping gives that fault.
//!
//! Then the idle baseline: no stream running, no upstream request left open, and once the
//! double has closed its connections the daemon's open descriptors, alive tokio tasks and
//! threads are back where they were before the storm.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use herald::pb::{self, audio_format::Encoding, synthesize_response::Payload};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::Code;

use crate::support::{dashscope::*, *};

/// The seed of the fault mix (change it to explore; a failure message names it).
const SEED: u64 = 0x4e52_4144_0009;
const STREAMS: usize = 100;
/// Faults queued for the storm: most requests meet one, some (and most retries) do not.
const FAULTS: usize = 90;

const MODELS: [(&str, &str); 3] = [
    ("cosyvoice-v3-flash", "longanyang"),
    ("qwen3-tts-flash", "Cherry"),
    ("MiniMax/speech-2.8-hd", "male-qn-qingse"),
];

fn http(status: u16, code: &str) -> FaultKind {
    FaultKind::HttpError {
        status,
        code: code.to_owned(),
        message: format!("{code} (storm)"),
    }
}

/// One random fault. MiniMax's own error shape is only read by the MiniMax decoder, so that
/// one is restricted to MiniMax models.
fn random_fault(rng: &mut StdRng) -> Fault {
    let kind = match rng.random_range(0..17) {
        0 => http(429, "Throttling.RateQuota"),
        1 => http(500, "InternalError"),
        2 => http(503, "ModelUnavailable"),
        3 => http(400, "DataInspectionFailed"),
        4 => http(403, "Model.AccessDenied"),
        5 => FaultKind::SseErrorAfter {
            frames: rng.random_range(0..4),
            http_status_comment: 500,
            code: "InternalError".into(),
            message: "storm".into(),
        },
        6 => FaultKind::OkWithCode {
            code: "Throttling.RateQuota".into(),
            message: "storm".into(),
        },
        7 => {
            return Fault::once(FaultKind::MiniMaxStatus {
                status_code: if rng.random_bool(0.5) { 1002 } else { 2013 },
                status_msg: "storm".into(),
            })
            .for_model("MiniMax/");
        }
        8 => FaultKind::DropAfter {
            frames: rng.random_range(0..4),
        },
        9 => FaultKind::StallAfter {
            frames: rng.random_range(0..3),
        },
        10 => FaultKind::SlowFirstByte {
            delay: Duration::from_millis(if rng.random_bool(0.5) { 200 } else { 12_000 }),
        },
        11 => FaultKind::BadJsonAfter {
            frames: rng.random_range(0..3),
        },
        12 => FaultKind::BadBase64After {
            frames: rng.random_range(0..3),
        },
        13 => FaultKind::CorruptAudio,
        14 => FaultKind::MultiLineData,
        15 => FaultKind::MultiLineDataConcat,
        _ => http(401, "InvalidApiKey"),
    };
    Fault::once(kind)
}

/// What herald's error mapping gives the client when the last upstream attempt met `fault`
/// (`None`: audio). `first_event_timeout_ms` is 10 000 below (generous: 100 streams on two
/// shared cores take seconds to their first byte), so only the 12 s SlowFirstByte fails.
///
/// One exception: Qwen-TTS streams may or may not begin with a WAV header (herald sniffs the
/// first bytes), so the double's CorruptAudio for Qwen (garbage where the header would be) is
/// indistinguishable from raw PCM whose first 22 samples are noise: audio.
fn expected(fault: Option<&FaultKind>, model: &str) -> Option<Code> {
    let fault = fault?;
    if *fault == FaultKind::CorruptAudio && model.starts_with("qwen") {
        return None;
    }
    Some(match fault {
        FaultKind::HttpError { status, code, .. } => match (*status, code.as_str()) {
            (429, _) => Code::ResourceExhausted,
            (401 | 403, _) => Code::FailedPrecondition,
            (400, _) => Code::InvalidArgument,
            _ => Code::Unavailable,
        },
        FaultKind::SseErrorAfter { .. } => Code::Unavailable,
        FaultKind::OkWithCode { .. } => Code::ResourceExhausted,
        FaultKind::MiniMaxStatus { status_code, .. } => match status_code {
            1002 => Code::ResourceExhausted,
            _ => Code::InvalidArgument,
        },
        FaultKind::DropAfter { .. } | FaultKind::StallAfter { .. } | FaultKind::Frozen => {
            Code::Unavailable
        }
        FaultKind::SlowFirstByte { delay } if *delay >= Duration::from_secs(10) => {
            Code::Unavailable
        }
        FaultKind::BadJsonAfter { .. }
        | FaultKind::BadBase64After { .. }
        | FaultKind::CorruptAudio => Code::Internal,
        FaultKind::SlowFirstByte { .. }
        | FaultKind::MultiLineData
        | FaultKind::MultiLineDataConcat => return None,
    })
}

/// How one stream ended.
#[derive(Debug)]
struct Outcome {
    text: String,
    model: &'static str,
    /// `Ok(samples)` with a summary, or the status.
    result: Result<usize, tonic::Status>,
}

async fn run_stream(
    mut client: pb::speech_client::SpeechClient<tonic::transport::Channel>,
    i: usize,
) -> Outcome {
    let (model, voice) = MODELS[i % MODELS.len()];
    // Unique per stream (the oracle finds the stream's upstream requests by it), one piece.
    let text = format!("Storm stream {i:03} reads a short sentence aloud.");
    let mut req = tonic::Request::new(pb::SynthesizeRequest {
        model: model.to_owned(),
        voice: voice.to_owned(),
        ..request(&text, Encoding::PcmS16le, 16000, 1)
    });
    req.set_timeout(Duration::from_secs(90));
    let result = async {
        let mut stream = client.synthesize(req).await?.into_inner();
        let mut bytes = 0usize;
        let mut summary = false;
        while let Some(msg) = stream.next().await {
            match msg?.payload {
                Some(Payload::Audio(a)) => bytes += a.data.len(),
                Some(Payload::Summary(_)) => summary = true,
                _ => {}
            }
        }
        if !summary {
            return Err(tonic::Status::unknown("stream ended without a summary"));
        }
        Ok(bytes / 2)
    };
    // The client deadline is 90 s; a stream still open a minute after it hangs.
    let result = match tokio::time::timeout(Duration::from_secs(150), result).await {
        Ok(r) => r,
        Err(_) => panic!("stream {i} ({model}) hung past its deadline"),
    };
    Outcome {
        text,
        model,
        result,
    }
}

fn proc_count(pid: u32, what: &str) -> u64 {
    match what {
        "fds" => std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0),
        _ => std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{what}:")[..]))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0),
    }
}

/// The value of the gauge `name` in a scrape of `server`'s metrics.
async fn gauge(server: &ServeProcess, name: &str) -> f64 {
    let (_, text) = server.scrape().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the scrape"))
}

/// Each open descriptor of `pid`: its link target, and for a TCP socket its table line.
fn describe_fds(pid: u32) -> Vec<String> {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default()
        + &std::fs::read_to_string(format!("/proc/{pid}/net/tcp6")).unwrap_or_default();
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or("-");
        let line = tcp
            .lines()
            .find(|l| l.split_whitespace().nth(9) == Some(inode))
            .unwrap_or("")
            .to_owned();
        out.push(format!("{target} {line}"));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Idle {
    fds: u64,
    threads: u64,
    tasks: f64,
    active: f64,
}

async fn idle(server: &ServeProcess) -> Idle {
    let pid = server.child.id();
    Idle {
        tasks: gauge(server, "herald_runtime_tasks").await,
        active: gauge(server, "herald_active_streams").await,
        fds: proc_count(pid, "fds"),
        threads: proc_count(pid, "Threads"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_streams_through_a_storm_of_faults_end_as_design_says_and_leave_nothing_behind() {
    let _exclusive = exclusive().await;
    let double = DashScopeDouble::start(API_KEY).await;
    let toml = "[dashscope]\nretry_base_ms = 10\nidle_timeout_ms = 10000\n\
                first_event_timeout_ms = 10000\nmax_concurrent_requests = 128\n\
                queue_timeout_ms = 30000\n\
                [synthesis]\nmax_concurrent = 128\nmax_concurrent_per_peer = 128\n\
                [cache]\nenabled = false\n[fallback]\nchain = []\n";
    let server = Serve::new(toml).metrics().double(&double).start();
    let pid = server.child.id();
    let client = server.client().await;

    // Warm up: one clean request per family (connection pool, lazy statics), then the baseline.
    for (model, voice) in MODELS {
        let mut c = client.clone();
        let req = pb::SynthesizeRequest {
            model: model.to_owned(),
            voice: voice.to_owned(),
            ..request("Warm up.", Encoding::PcmS16le, 16000, 1)
        };
        synthesize(&mut c, req).await.expect("warm-up");
    }
    let baseline = idle(&server).await;
    let warmup_requests = double.requests().len();

    let mut rng = StdRng::seed_from_u64(SEED);
    let mut mix: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..FAULTS {
        let fault = random_fault(&mut rng);
        let name = format!("{:?}", fault.kind);
        *mix.entry(name.split([' ', '{']).next().unwrap().to_owned())
            .or_default() += 1;
        double.push_fault(fault);
    }

    // The storm: 100 streams at once, over 4 connections.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(server.client().await);
    }
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| tokio::spawn(run_stream(channels[i % channels.len()].clone(), i)))
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("stream task"));
    }
    // The storm's own client connections close (the baseline had only `client`'s).
    drop(channels);

    // The oracle.
    let log = double.requests();
    let storm_log = &log[warmup_requests..];
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut faulted_attempts = 0;
    for o in &outcomes {
        let attempts: Vec<&LoggedRequest> = storm_log
            .iter()
            .filter(|r| r.body.pointer("/input/text").and_then(|t| t.as_str()) == Some(&o.text))
            .collect();
        assert!(!attempts.is_empty(), "no upstream request for {:?}", o.text);
        faulted_attempts += attempts.iter().filter(|r| r.fault.is_some()).count();
        let last = attempts.last().unwrap();
        let want = expected(last.fault.as_ref(), o.model);
        let what = format!(
            "seed {SEED:#x}, {} {:?}: attempts {:?}, got {:?}",
            o.model,
            o.text,
            attempts.iter().map(|r| &r.fault).collect::<Vec<_>>(),
            o.result.as_ref().map_err(|s| (s.code(), s.message()))
        );
        match (&o.result, want) {
            (Ok(samples), None) => {
                // The double's tone lasts 40 ms per character: 16 samples per ms at 16 kHz.
                let chars = o.text.chars().count();
                let want = chars * 40 * 16;
                assert!(
                    samples * 10 >= want * 9 && samples * 10 <= want * 11,
                    "{what}: {samples} samples, want about {want}"
                );
                *by_code.entry("OK".into()).or_default() += 1;
            }
            (Err(status), Some(code)) => {
                assert_eq!(status.code(), code, "{what}");
                assert!(
                    !status.message().contains(API_KEY),
                    "{what}: the key leaked"
                );
                *by_code.entry(format!("{code:?}")).or_default() += 1;
            }
            _ => panic!("{what}: want {want:?}"),
        }
    }
    eprintln!(
        "fault storm (seed {SEED:#x}): {} streams, {} upstream requests, {faulted_attempts} \
         faulted; faults queued {mix:?}; outcomes {by_code:?}",
        outcomes.len(),
        storm_log.len()
    );
    assert!(faulted_attempts >= FAULTS / 2, "the storm injected faults");
    assert!(by_code.len() >= 4, "a mix of outcomes: {by_code:?}");

    // Every upstream request has ended: none left open (stalled ones were abandoned).
    for i in 0..log.len() {
        assert!(
            double
                .wait_ended(i, Duration::from_secs(20))
                .await
                .is_some(),
            "upstream request {i} still open: {:?}",
            double.requests()[i].fault
        );
    }
    // The double closes its (idle, pooled) connections; then the daemon must be back to its
    // idle baseline. Blocking threads linger 10 s after their last job, hence the patience.
    double.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let after = loop {
        let now = idle(&server).await;
        let back = now.active == 0.0
            && now.fds <= baseline.fds
            && now.tasks <= baseline.tasks
            && now.threads <= baseline.threads + 2;
        if back || tokio::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("idle baseline {baseline:?}, after the storm {after:?}");
    if after.fds > baseline.fds {
        eprintln!("descriptors now: {:?}", describe_fds(pid));
    }
    assert_eq!(after.active, 0.0, "streams still counted as active");
    assert!(
        after.fds <= baseline.fds,
        "descriptors leaked: {baseline:?} → {after:?}"
    );
    assert!(
        after.tasks <= baseline.tasks,
        "tasks leaked: {baseline:?} → {after:?}"
    );
    assert!(
        after.threads <= baseline.threads + 2,
        "threads leaked: {baseline:?} → {after:?}"
    );
    drop(server);
}
