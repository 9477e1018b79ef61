//! Time to first audio of a cache hit, through gRPC on loopback (issue: "a hit streams at
//! once", goal p99 ≤ 5 ms), against the same phrase synthesized by espeak-ng with the cache
//! bypassed, measured in the same run as the reference.
//!
//! `cargo bench --bench cache_hit` runs 1000 hits and 50 misses and writes
//! `target/herald-bench/cache_hit.json`; under `cargo test` (no `--bench` argument) it runs a
//! few of each as a smoke test and checks only that hits are hits, never a time.

use std::{path::PathBuf, time::Duration};

use futures::StreamExt;
use herald::{
    config::{self, Env, LoadOptions, Overrides},
    daemon::Daemon,
    pb::{self, speech_client::SpeechClient, synthesize_response::Payload},
    service,
};
use tokio::time::Instant;

const TEXT: &str = "Doors closing. Please stand clear of the doors.";

struct Sample {
    /// Client side: request sent → first audio chunk received, µs.
    ttfa_us: f64,
    /// Server side: `summary.time_to_first_audio_us`.
    server_us: f64,
    cache_hit: bool,
}

async fn one(client: &mut SpeechClient<tonic::transport::Channel>, bypass: bool) -> Sample {
    let req = pb::SynthesizeRequest {
        text: TEXT.to_owned(),
        model: "espeak-ng".to_owned(),
        format: Some(pb::AudioFormat {
            encoding: pb::audio_format::Encoding::PcmS16le as i32,
            sample_rate_hz: 16000,
            channels: 1,
        }),
        cache: if bypass {
            pb::CachePolicy::Bypass
        } else {
            pb::CachePolicy::Use
        } as i32,
        ..Default::default()
    };
    let start = Instant::now();
    let mut stream = client
        .synthesize(req)
        .await
        .expect("synthesize")
        .into_inner();
    let mut first = None;
    let mut summary = None;
    while let Some(msg) = stream.next().await {
        match msg.expect("message").payload {
            Some(Payload::Audio(_)) if first.is_none() => first = Some(start.elapsed()),
            Some(Payload::Summary(s)) => summary = Some(s),
            _ => {}
        }
    }
    let summary = summary.expect("summary");
    Sample {
        ttfa_us: first.expect("audio").as_secs_f64() * 1e6,
        server_us: summary.time_to_first_audio_us as f64,
        cache_hit: summary.cache_hit,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summarize(name: &str, samples: &[Sample]) -> serde_json::Value {
    let mut client: Vec<f64> = samples.iter().map(|s| s.ttfa_us).collect();
    let mut server: Vec<f64> = samples.iter().map(|s| s.server_us).collect();
    client.sort_by(f64::total_cmp);
    server.sort_by(f64::total_cmp);
    let ms = |v: f64| (v / 10.0).round() / 100.0;
    println!(
        "{name:<28} n={:<5} client TTFA p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms | server p50 {:>7.2} ms p99 {:>7.2} ms",
        samples.len(),
        ms(percentile(&client, 0.5)),
        ms(percentile(&client, 0.99)),
        ms(*client.last().unwrap()),
        ms(percentile(&server, 0.5)),
        ms(percentile(&server, 0.99)),
    );
    serde_json::json!({
        "n": samples.len(),
        "client_ttfa_ms": { "p50": ms(percentile(&client, 0.5)), "p99": ms(percentile(&client, 0.99)), "max": ms(*client.last().unwrap()) },
        "server_ttfa_ms": { "p50": ms(percentile(&server, 0.5)), "p99": ms(percentile(&server, 0.99)) },
    })
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (hits, misses) = if bench { (1000, 50) } else { (10, 2) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache").display().to_string();
        let options = LoadOptions {
            config_path: None,
            overrides: Overrides {
                listen: vec!["127.0.0.1:0".to_owned()],
                log_level: Some("warn".to_owned()),
                insecure_no_auth: true,
                ..Overrides::default()
            },
        };
        let config =
            config::load(&options, &Env::from_pairs([("CACHE_DIRECTORY", cache)])).expect("config");
        let daemon = Daemon::from_config(&config).await.expect("daemon");
        let listeners = service::bind(&config.listen, config.socket_mode)
            .await
            .expect("bind");
        let addr = match listeners[0].addr() {
            config::ListenAddr::Tcp(a) => *a,
            config::ListenAddr::Unix(_) => unreachable!("tcp"),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(daemon.serve(listeners, async {
            let _ = stop_rx.await;
        }));
        let mut client = SpeechClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");

        // Warm the entry (a miss that stores it), then wait until it is stored.
        let warm = one(&mut client, false).await;
        assert!(!warm.cache_hit);
        let mut hit_samples = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while hit_samples.is_empty() {
            let s = one(&mut client, false).await;
            if s.cache_hit {
                hit_samples.push(s);
            }
            assert!(Instant::now() < deadline, "the phrase was never stored");
        }
        for _ in 1..hits {
            let s = one(&mut client, false).await;
            assert!(s.cache_hit, "every request after warming is a hit");
            hit_samples.push(s);
        }
        let mut miss_samples = Vec::new();
        for _ in 0..misses {
            let s = one(&mut client, true).await;
            assert!(!s.cache_hit);
            miss_samples.push(s);
        }
        let hit = summarize("cache hit (espeak-ng entry)", &hit_samples);
        let miss = summarize("espeak-ng, cache bypassed", &miss_samples);
        if bench {
            let ratio = miss["client_ttfa_ms"]["p50"].as_f64().unwrap_or(0.0)
                / hit["client_ttfa_ms"]["p50"]
                    .as_f64()
                    .unwrap_or(1.0)
                    .max(1e-3);
            println!(
                "hit is {ratio:.1}x faster to first audio than a fresh espeak-ng synthesis (p50)"
            );
            let out = serde_json::json!({
                "bench": "cache_hit",
                "goal": "cache hit client TTFA p99 <= 5 ms on loopback",
                "text": TEXT,
                "format": "PCM_S16LE 16000 Hz mono (entry: s16le 22050 Hz)",
                "hit": hit,
                "reference_espeak_bypass": miss,
                "miss_over_hit_p50": (ratio * 10.0).round() / 10.0,
            });
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .map(|p| p.join("herald-bench"))
                .unwrap_or_else(|| PathBuf::from("target/herald-bench"));
            std::fs::create_dir_all(&dir).expect("results dir");
            let path = dir.join("cache_hit.json");
            std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).expect("write");
            println!("results: {}", path.display());
        }
        let _ = stop_tx.send(());
        let _ = server.await;
    });
}
