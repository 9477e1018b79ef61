//! herald's audio pipeline, stage by stage and whole, under criterion: decode (WAV, MP3),
//! resample (the five pairs of `common::RESAMPLE_PAIRS`), encode (every output encoding) and
//! whole conversions through `pipeline::run_stream`, the code path of every `Synthesize`.
//!
//! `cargo bench --bench pipeline` measures 10 s inputs; criterion writes its estimates under
//! `target/criterion/`, and this bench writes `target/herald-bench/pipeline_meta.json` (the
//! audio seconds behind each benchmark id) so `benches/report.rs` can turn times into
//! × real time per core. Under `cargo test` each benchmark runs once on a 0.5 s input.

mod common;

use std::time::Duration;

use common::*;
use criterion::{Criterion, Throughput, criterion_group};
use herald::audio::{AudioSpec, InputEncoding, OutputFormat};

/// Seconds of audio per benchmark input.
fn secs() -> f64 {
    if bench_mode() { 10.0 } else { 0.5 }
}

fn benches(c: &mut Criterion) {
    let secs = secs();
    let mut meta = serde_json::Map::new();
    let mut note = |id: String, secs: f64| {
        meta.insert(id, serde_json::json!(secs));
    };

    let mut g = c.benchmark_group("decode");
    let x = programme(24_000, secs);
    let wav = wav_file(&x, 24_000);
    g.throughput(Throughput::Elements(x.len() as u64));
    g.bench_function("wav_24k", |b| {
        b.iter(|| herald_decode(&wav, InputEncoding::Wav))
    });
    note("decode/wav_24k".into(), secs);
    let x32 = programme(32_000, secs);
    let mp3 = mp3_file(&x32, 32_000, 128);
    g.throughput(Throughput::Elements(x32.len() as u64));
    g.bench_function("mp3_32k_128k", |b| {
        b.iter(|| herald_decode(&mp3, InputEncoding::Mp3))
    });
    note("decode/mp3_32k_128k".into(), secs);
    g.finish();

    let mut g = c.benchmark_group("resample");
    for (from, to) in RESAMPLE_PAIRS {
        let x = programme(from, secs);
        let id = format!("{from}_to_{to}");
        g.throughput(Throughput::Elements(x.len() as u64));
        g.bench_function(&id, |b| b.iter(|| herald_resample(&x, from, to)));
        note(format!("resample/{id}"), secs);
    }
    g.finish();

    let mut g = c.benchmark_group("encode");
    let x = programme(24_000, secs);
    g.throughput(Throughput::Elements(x.len() as u64));
    for (name, encoding) in encodings() {
        let id = format!("{name}_24k");
        g.bench_function(&id, |b| b.iter(|| encode_all(&x, 24_000, 1, encoding)));
        note(format!("encode/{id}"), secs);
    }
    g.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("convert");
    for conv in conversions() {
        let (input, encoding) = conversion_input(&conv, secs);
        let output = OutputFormat {
            encoding: conv.out,
            spec: AudioSpec::new(conv.out_rate, conv.out_channels).expect("spec"),
        };
        g.throughput(Throughput::Elements((secs * conv.in_rate as f64) as u64));
        g.bench_function(conv.id, |b| {
            b.iter(|| rt.block_on(herald_convert(input.clone(), encoding, output, 4_800)))
        });
        note(format!("convert/{}", conv.id), secs);
    }
    g.finish();

    if bench_mode() {
        let path = results_dir().join("pipeline_meta.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::Value::Object(meta)).expect("json"),
        )
        .expect("write meta");
    }
}

criterion_group! {
    name = pipeline;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}

fn main() {
    pipeline();
    Criterion::default().configure_from_args().final_summary();
}
