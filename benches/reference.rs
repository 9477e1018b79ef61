//! herald against the reference tools, on the same inputs, in the same run:
//!
//! - **speed**: × real time per core of herald (in-process, one thread) and of sox/libsoxr
//!   (`rate -h`, `rate -v`, `--single-threaded`) and ffmpeg (`-threads 1`; its default swr
//!   resampler, and libsoxr at `-h` precision) for every resampling pair, for decoding WAV and
//!   MP3, for encoding every output encoding, and for whole conversions. Each figure is the
//!   best of several runs of a long input; the tools' process start-up (measured on a tiny
//!   input) is subtracted, so the ratio compares the audio work.
//! - **quality**: for every resampling pair, THD+N and SNR of −6 dBFS tones across the band and
//!   the alias (downsampling) or image (upsampling) rejection of a sweep, for herald, for
//!   libsoxr `-h` and `-v` (through sox) and for ffmpeg's default resampler.
//!
//! - **bitrate**: requested vs measured kb/s (every output byte, container included, × 8 ÷ the
//!   input's duration) of herald's Ogg Opus and MP3 encoders and of ffmpeg's libopus and
//!   libmp3lame on the same 30 s inputs (espeak-ng speech, and the noisy programme signal).
//!
//! `cargo bench --bench reference` writes `target/herald-bench/reference.json`; under
//! `cargo test` it runs everything once on tiny inputs and checks only that every tool
//! produced audio of the right length (a smoke run; no figure is judged).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use bytes::Bytes;
use common::*;
use herald::audio::{AudioSpec, InputEncoding, OutputEncoding, OutputFormat};
use serde_json::{Value, json};

/// Makes a reference tool's command for an input file.
type Maker<'a> = Box<dyn Fn(&Path) -> Command + 'a>;

struct Setup {
    /// Seconds of audio in a speed run.
    speed_secs: f64,
    /// Runs per speed figure (the best counts).
    runs: usize,
    /// Seconds of each quality tone.
    tone_secs: f64,
    dir: tempfile::TempDir,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The best time of `runs` runs of a tool command, less its start-up time.
fn tool_time(s: &Setup, make: &dyn Fn() -> Command, startup: f64) -> f64 {
    let (t, _) = best_of(s.runs, || run_tool(&mut make()).as_secs_f64());
    (t - startup).max(1e-6)
}

/// A tool's start-up: the best of 5 runs of `make` on a tiny input.
fn startup_time(make: &dyn Fn() -> Command) -> f64 {
    best_of(5, || run_tool(&mut make()).as_secs_f64()).0
}

fn xrt(audio_secs: f64, took: f64) -> f64 {
    round(audio_secs / took, 0)
}

/// Resampling: speed of herald and the references on one pair.
fn resample_speed(s: &Setup, from: u32, to: u32) -> Value {
    let x = programme(from, s.speed_secs);
    let input = s.path(&format!("speed_{from}.f32"));
    std::fs::write(&input, to_f32le(&x)).expect("write input");
    let tiny = s.path(&format!("tiny_{from}.f32"));
    std::fs::write(&tiny, to_f32le(&programme(from, 0.01))).expect("write tiny");
    let out = s.path("out.f32");

    let (took, y) = best_of(s.runs, || herald_resample(&x, from, to));
    let expected = (x.len() as f64 * to as f64 / from as f64).round() as usize;
    assert_eq!(y.len(), expected, "herald output length {from}->{to}");
    let herald = xrt(s.speed_secs, took);

    let mut refs = serde_json::Map::new();
    let makers: Vec<(&str, Maker<'_>)> = vec![
        (
            "sox_rate_h",
            Box::new(|i: &Path| sox_resample(i, &out, from, to, "h")),
        ),
        (
            "sox_rate_v",
            Box::new(|i: &Path| sox_resample(i, &out, from, to, "v")),
        ),
        (
            "ffmpeg_swr",
            Box::new(|i: &Path| {
                ffmpeg(
                    i,
                    &raw_in(from),
                    Some(&format!("aresample={to}")),
                    &["-f", "f32le"],
                    &out,
                )
            }),
        ),
        (
            "ffmpeg_soxr_h",
            Box::new(|i: &Path| {
                ffmpeg(
                    i,
                    &raw_in(from),
                    Some(&format!("aresample={to}:resampler=soxr:precision=20")),
                    &["-f", "f32le"],
                    &out,
                )
            }),
        ),
    ];
    for (name, make) in &makers {
        let startup = startup_time(&|| make(&tiny));
        let t = tool_time(s, &|| make(&input), startup);
        let got = std::fs::metadata(&out).expect("tool output").len() as usize / 4;
        assert!(
            got.abs_diff(expected) <= 64,
            "{name} {from}->{to}: {got} frames, expected about {expected}"
        );
        let r = xrt(s.speed_secs, t);
        refs.insert(
            (*name).to_owned(),
            json!({ "xrt": r, "herald_ratio": round(herald / r, 2), "startup_ms": round(startup * 1e3, 1) }),
        );
    }
    json!({ "pair": format!("{from}->{to}"), "herald_xrt": herald, "references": refs })
}

fn raw_in(rate: u32) -> Vec<String> {
    ["-f", "f32le", "-ar", &rate.to_string(), "-ac", "1"]
        .map(str::to_owned)
        .to_vec()
}

/// One quality signal through every resampler: herald, sox -h, sox -v, ffmpeg swr.
fn through_all(s: &Setup, x: &[f32], from: u32, to: u32) -> Vec<(&'static str, Vec<f32>)> {
    let input = s.path("q_in.f32");
    let out = s.path("q_out.f32");
    std::fs::write(&input, to_f32le(x)).expect("write");
    let mut all = vec![("herald", herald_resample(x, from, to))];
    for (name, quality) in [("sox_rate_h", "h"), ("sox_rate_v", "v")] {
        run_tool(&mut sox_resample(&input, &out, from, to, quality));
        all.push((name, from_f32le(&std::fs::read(&out).expect("read"))));
    }
    run_tool(&mut ffmpeg(
        &input,
        &raw_in(from),
        Some(&format!("aresample={to}")),
        &["-f", "f32le"],
        &out,
    ));
    all.push((
        "ffmpeg_swr",
        from_f32le(&std::fs::read(&out).expect("read")),
    ));
    all
}

/// Tones across the band and a sweep, for one pair.
fn resample_quality(s: &Setup, from: u32, to: u32) -> Value {
    let nyq = from.min(to) as f64 / 2.0;
    let tones = [100.0, 1_000.0, 0.5 * nyq, 0.75 * nyq, 0.9 * nyq];
    let mut per: serde_json::Map<String, Value> = serde_json::Map::new();
    for hz in tones {
        let x = sine(from, hz, 0.5, s.tone_secs);
        for (name, y) in through_all(s, &x, from, to) {
            let (thdn, snr) = tone_quality(&y, to, hz);
            let e = per
                .entry(name.to_owned())
                .or_insert_with(|| json!({ "tones": [] }));
            e["tones"].as_array_mut().expect("array").push(
                json!({ "hz": round(hz, 0), "thdn_db": round(thdn, 1), "snr_db": round(snr, 1) }),
            );
        }
    }
    // Alias rejection (down) or image rejection (up) of a sweep at −6 dBFS.
    let (f0, f1, band, what) = if to < from {
        let out_nyq = to as f64 / 2.0;
        (
            1.05 * out_nyq,
            0.98 * from as f64 / 2.0,
            (0.0, out_nyq),
            "alias",
        )
    } else {
        let in_nyq = from as f64 / 2.0;
        (
            20.0,
            0.9 * in_nyq,
            (1.05 * in_nyq, to as f64 / 2.0),
            "image",
        )
    };
    let x = sweep(from, f0, f1, 0.5, s.tone_secs.max(1.0) * 2.0);
    let in_power = mean_power(&x);
    for (name, y) in through_all(s, &x, from, to) {
        let rejection = band_power_db(&y, to, band.0, band.1, in_power);
        let e = per.get_mut(name).expect("entry");
        e["sweep_rejection_db"] = json!(round(rejection, 1));
        let worst_thdn = e["tones"]
            .as_array()
            .expect("tones")
            .iter()
            .filter_map(|t| t["thdn_db"].as_f64())
            .fold(f64::NEG_INFINITY, f64::max);
        e["worst_thdn_db"] = json!(worst_thdn);
    }
    json!({
        "pair": format!("{from}->{to}"),
        "rejection": what,
        "sweep_hz": [round(f0, 0), round(f1, 0)],
        "measured_band_hz": [round(band.0, 0), round(band.1, 0)],
        "resamplers": per,
    })
}

/// Decoding: herald's WAV and MP3 decoders against sox and ffmpeg.
fn decode_speed(s: &Setup) -> Vec<Value> {
    let mut rows = Vec::new();
    let out = s.path("dec_out.f32");
    for (name, rate) in [("wav_24k", 24_000u32), ("mp3_32k_128k", 32_000)] {
        let x = programme(rate, s.speed_secs);
        let tiny_x = programme(rate, 0.05);
        let (bytes, tiny, encoding, ext) = if name.starts_with("wav") {
            (
                wav_file(&x, rate),
                wav_file(&tiny_x, rate),
                InputEncoding::Wav,
                "wav",
            )
        } else {
            (
                mp3_file(&x, rate, 128),
                mp3_file(&tiny_x, rate, 128),
                InputEncoding::Mp3,
                "mp3",
            )
        };
        let input = s.path(&format!("dec.{ext}"));
        let tiny_path = s.path(&format!("dec_tiny.{ext}"));
        std::fs::write(&input, &bytes).expect("write");
        std::fs::write(&tiny_path, &tiny).expect("write");
        let (took, (samples, _)) = best_of(s.runs, || herald_decode(&bytes, encoding));
        assert!(
            samples as f64 >= x.len() as f64 * 0.99,
            "{name}: decoded {samples}"
        );
        let herald = xrt(s.speed_secs, took);
        let mut refs = serde_json::Map::new();
        let ff = |i: &Path| ffmpeg::<&str, _>(i, &[], None, &["-f", "f32le", "-ac", "1"], &out);
        let mut makers: Vec<(&str, Maker<'_>)> = vec![("ffmpeg", Box::new(ff))];
        if ext == "wav" {
            makers.push((
                "sox",
                Box::new(|i: &Path| {
                    let mut c = Command::new("sox");
                    c.args(["-D", "--single-threaded", "-V1"])
                        .arg(i)
                        .args(["-t", "raw", "-e", "floating-point", "-b", "32"])
                        .arg(&out);
                    c
                }),
            ));
        }
        for (tool, make) in &makers {
            let startup = startup_time(&|| make(&tiny_path));
            let t = tool_time(s, &|| make(&input), startup);
            let r = xrt(s.speed_secs, t);
            refs.insert(
                (*tool).to_owned(),
                json!({ "xrt": r, "herald_ratio": round(herald / r, 2) }),
            );
        }
        rows.push(json!({ "input": name, "herald_xrt": herald, "references": refs }));
    }
    rows
}

/// ffmpeg's arguments for the output of `encoding` (the same codec settings as herald's).
fn ffmpeg_out(encoding: OutputEncoding) -> Vec<String> {
    let v: Vec<&str> = match encoding {
        OutputEncoding::PcmS16Le => vec!["-c:a", "pcm_s16le", "-f", "s16le"],
        OutputEncoding::PcmF32Le => vec!["-c:a", "pcm_f32le", "-f", "f32le"],
        OutputEncoding::Wav => vec!["-c:a", "pcm_s16le", "-f", "wav"],
        OutputEncoding::Mulaw => vec!["-c:a", "pcm_mulaw", "-f", "mulaw"],
        OutputEncoding::Alaw => vec!["-c:a", "pcm_alaw", "-f", "alaw"],
        // LAME quality 5 (herald's `Quality::Good`), CBR.
        OutputEncoding::Mp3 { .. } => {
            vec!["-c:a", "libmp3lame", "-compression_level", "5", "-f", "mp3"]
        }
        OutputEncoding::OggOpus { .. } => {
            vec!["-c:a", "libopus", "-application", "audio", "-f", "ogg"]
        }
        OutputEncoding::Flac { .. } => vec!["-c:a", "flac", "-sample_fmt", "s16", "-f", "flac"],
    };
    let mut v: Vec<String> = v.into_iter().map(str::to_owned).collect();
    match encoding {
        OutputEncoding::Mp3 { bitrate_bps } | OutputEncoding::OggOpus { bitrate_bps } => {
            v.splice(2..2, ["-b:a".to_owned(), bitrate_bps.to_string()]);
        }
        _ => {}
    }
    v
}

/// Encoding: herald's encoders against ffmpeg's (libmp3lame, libopus, its FLAC and PCM).
fn encode_speed(s: &Setup) -> Vec<Value> {
    let rate = 24_000;
    let x = programme(rate, s.speed_secs);
    let input = s.path("enc_in.f32");
    let tiny = s.path("enc_tiny.f32");
    std::fs::write(&input, to_f32le(&x)).expect("write");
    std::fs::write(&tiny, to_f32le(&programme(rate, 0.05))).expect("write");
    let out = s.path("enc_out.bin");
    let mut rows = Vec::new();
    for (name, encoding) in encodings() {
        let (took, bytes) = best_of(s.runs, || encode_all(&x, rate, 1, encoding));
        assert!(!bytes.is_empty(), "{name}: no bytes");
        let herald = xrt(s.speed_secs, took);
        let args = ffmpeg_out(encoding);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let make = |i: &Path| ffmpeg(i, &raw_in(rate), None, &args, &out);
        let startup = startup_time(&|| make(&tiny));
        let t = tool_time(s, &|| make(&input), startup);
        let r = xrt(s.speed_secs, t);
        let ff_bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        rows.push(json!({
            "encoding": name,
            "herald_xrt": herald,
            "herald_bytes": bytes.len(),
            "references": { "ffmpeg": { "xrt": r, "herald_ratio": round(herald / r, 2), "bytes": ff_bytes } },
        }));
    }
    rows
}

/// Whole conversions: herald's pipeline (`run_stream`) against one ffmpeg command doing the
/// same (libsoxr at `-h` precision for the rate, so the quality matches).
fn convert_speed(s: &Setup) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = s.path("conv_out.bin");
    let mut rows = Vec::new();
    for conv in conversions() {
        let (input, encoding) = conversion_input(&conv, s.speed_secs);
        let (tiny, _) = conversion_input(&conv, 0.05);
        let ext = conv.input;
        let in_path = s.path(&format!("conv_in.{ext}"));
        let tiny_path = s.path(&format!("conv_tiny.{ext}"));
        std::fs::write(&in_path, &input).expect("write");
        std::fs::write(&tiny_path, &tiny).expect("write");
        let output = OutputFormat {
            encoding: conv.out,
            spec: AudioSpec::new(conv.out_rate, conv.out_channels).expect("spec"),
        };
        let (took, sent) = best_of(s.runs, || {
            rt.block_on(herald_convert(
                Bytes::clone(&input),
                encoding,
                output,
                4_800,
            ))
        });
        assert!(sent > 0, "{}: no bytes", conv.id);
        let herald = xrt(s.speed_secs, took);
        let in_rate = conv.in_rate.to_string();
        let in_args: Vec<&str> = if ext == "pcm" {
            vec!["-f", "s16le", "-ar", &in_rate, "-ac", "1"]
        } else {
            vec![]
        };
        let filter = format!("aresample={}:resampler=soxr:precision=20", conv.out_rate);
        let mut out_args = ffmpeg_out(conv.out);
        out_args.extend(["-ac".to_owned(), conv.out_channels.to_string()]);
        let out_args: Vec<&str> = out_args.iter().map(String::as_str).collect();
        let make = |i: &Path| ffmpeg(i, &in_args, Some(&filter), &out_args, &out);
        let startup = startup_time(&|| make(&tiny_path));
        let t = tool_time(s, &|| make(&in_path), startup);
        let r = xrt(s.speed_secs, t);
        rows.push(json!({
            "conversion": conv.id,
            "herald_xrt": herald,
            "references": { "ffmpeg_soxr_h": { "xrt": r, "herald_ratio": round(herald / r, 2) } },
        }));
    }
    rows
}

/// About 42 s of espeak-ng speech (its native 22.05 kHz), cut to `secs`.
fn espeak_speech(s: &Setup, secs: f64) -> (Vec<f32>, u32) {
    let text = "The quick brown fox jumps over the lazy dog. Herald is a local speech daemon \
        that turns text into speech for the programs of one machine. It speaks through a gRPC \
        door, an OpenAI compatible HTTP door and a Wyoming door, all over one synthesis core. \
        Engines include the DashScope cloud over HTTP and server sent events, and espeak-ng \
        offline. The audio pipeline decodes, resamples, remixes, applies gain and encodes to \
        PCM, WAV, G.711, MP3, Ogg Opus or FLAC, and streams chunks as soon as they are ready. A \
        cache keeps synthesized phrases on disk, and a playback queue speaks announcements on a \
        local device, in order, with priorities and expiry.";
    let path = s.path("speech.wav");
    run_tool(Command::new("espeak-ng").arg("-w").arg(&path).arg(text));
    let mut reader = hound::WavReader::open(&path).expect("espeak-ng wav");
    let rate = reader.spec().sample_rate;
    let mut x: Vec<f32> = reader
        .samples::<i16>()
        .map(|v| f32::from(v.expect("sample")) / 32_768.0)
        .collect();
    x.truncate((f64::from(rate) * secs) as usize);
    (x, rate)
}

/// herald's encoder on mono `x`, `push` frames per call (as the pipeline hands it decoded
/// buffers).
fn encode_pushes(x: &[f32], rate: u32, encoding: OutputEncoding, push: usize) -> usize {
    let spec = AudioSpec::new(rate, 1).expect("spec");
    let mut enc =
        herald::audio::encode::encoder_for(OutputFormat { encoding, spec }).expect("encoder");
    let mut out = Vec::new();
    for piece in x.chunks(push) {
        enc.encode(
            &herald::audio::PcmBuffer::new(spec, piece.to_vec()),
            &mut out,
        )
        .expect("encode");
    }
    enc.finish(&mut out).expect("finish");
    out.len()
}

/// Bitrate: requested vs measured for herald (pushes of 100 ms, and of 20 ms: one Opus packet
/// per page, the worst case for Ogg framing) and ffmpeg, on speech and on the programme.
fn bitrate(s: &Setup) -> Vec<Value> {
    let secs = if bench_mode() { 30.0 } else { 1.0 };
    let speech = espeak_speech(s, secs);
    let noisy = (programme(22_050, secs), 22_050);
    let out = s.path("bitrate_out.bin");
    let mut rows = Vec::new();
    for (input, (x, rate)) in [("speech", &speech), ("programme", &noisy)] {
        let in_path = s.path(&format!("bitrate_{input}.f32"));
        std::fs::write(&in_path, to_f32le(x)).expect("write");
        let dur = x.len() as f64 / f64::from(*rate);
        let kbps = |bytes: usize| round(bytes as f64 * 8.0 / dur / 1e3, 2);
        for encoding in [
            OutputEncoding::OggOpus {
                bitrate_bps: 24_000,
            },
            OutputEncoding::OggOpus {
                bitrate_bps: 32_000,
            },
            OutputEncoding::Mp3 {
                bitrate_bps: 64_000,
            },
            OutputEncoding::Mp3 {
                bitrate_bps: 128_000,
            },
        ] {
            let (codec, requested) = match encoding {
                OutputEncoding::OggOpus { bitrate_bps } => ("ogg_opus", bitrate_bps),
                OutputEncoding::Mp3 { bitrate_bps } => ("mp3", bitrate_bps),
                _ => unreachable!(),
            };
            let push = |ms: usize| *rate as usize * ms / 1_000;
            let herald = kbps(encode_pushes(x, *rate, encoding, push(100)));
            let herald_20ms = kbps(encode_pushes(x, *rate, encoding, push(20)));
            let args = ffmpeg_out(encoding);
            run_tool(&mut ffmpeg(&in_path, &raw_in(*rate), None, &args, &out));
            let ff = kbps(std::fs::metadata(&out).expect("ffmpeg output").len() as usize);
            let req = f64::from(requested) / 1e3;
            let off = |k: f64| round((k / req - 1.0) * 100.0, 1);
            rows.push(json!({
                "input": input,
                "codec": codec,
                "requested_kbps": req,
                "herald_kbps": herald,
                "herald_off_pct": off(herald),
                "herald_20ms_pushes_kbps": herald_20ms,
                "herald_20ms_pushes_off_pct": off(herald_20ms),
                "ffmpeg_kbps": ff,
                "ffmpeg_off_pct": off(ff),
            }));
        }
    }
    rows
}

fn main() {
    let bench = bench_mode();
    let s = Setup {
        speed_secs: if bench { 300.0 } else { 0.5 },
        runs: if bench { 5 } else { 1 },
        tone_secs: if bench { 3.0 } else { 0.6 },
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let tools: serde_json::Map<String, Value> = ["sox", "ffmpeg"]
        .iter()
        .map(|t| {
            let v = tool_version(t).unwrap_or_else(|| panic!("{t} is needed (apt install {t})"));
            ((*t).to_owned(), json!(v))
        })
        .collect();
    // `HERALD_BENCH_ONLY` runs one block for a quicker loop: `bitrate`, `resample`, `convert`
    // (whole conversions), or `codec` (bitrate, encoding and whole conversions).
    let only = std::env::var("HERALD_BENCH_ONLY").unwrap_or_default();
    let runs = |block: &str| match only.as_str() {
        "" => true,
        "codec" => matches!(block, "bitrate" | "encode" | "convert"),
        o => o == block,
    };
    let bitrate = if runs("bitrate") {
        bitrate(&s)
    } else {
        Vec::new()
    };
    println!("bitrate: {}", json!(bitrate));
    let mut resample = Vec::new();
    for (from, to) in RESAMPLE_PAIRS.into_iter().filter(|_| runs("resample")) {
        let speed = resample_speed(&s, from, to);
        let quality = resample_quality(&s, from, to);
        println!("resample {from}->{to}: {speed}");
        println!("  quality: {quality}");
        resample.push(json!({ "speed": speed, "quality": quality }));
    }
    let (mut decode, mut encode, mut convert) = (Vec::new(), Vec::new(), Vec::new());
    if runs("decode") {
        decode = decode_speed(&s);
        println!("decode: {}", json!(decode));
    }
    if runs("encode") {
        encode = encode_speed(&s);
        println!("encode: {}", json!(encode));
    }
    if runs("convert") {
        convert = convert_speed(&s);
        println!("convert: {}", json!(convert));
    }
    let out = json!({
        "bench": "reference",
        "speed_input_secs": s.speed_secs,
        "runs_per_figure": s.runs,
        "tone_secs": s.tone_secs,
        "tools": tools,
        "resample": resample,
        "decode": decode,
        "encode": encode,
        "convert": convert,
        "bitrate": bitrate,
    });
    if bench && only.is_empty() {
        let path = results_dir().join("reference.json");
        std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")).expect("write");
        println!("results: {}", path.display());
    }
}
