//! Shared by the benchmarks: test signals, herald's pipeline driven in-process, the audio
//! quality measures, the reference tools (sox/libsoxr, ffmpeg) and where results go.
//!
//! Every bench target includes this module and uses a part of it.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use herald::{
    audio::{
        AudioSpec, InputEncoding, OutputEncoding, OutputFormat, PcmBuffer, Stage,
        decode::{Decoder, open_decoder},
        encode::encoder_for,
        resample::Resampler,
    },
    engine::SynthEvent,
    pipeline::{self, Output, Render},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The five conversions the issue names, plus the rates the engines use.
pub const RESAMPLE_PAIRS: [(u32, u32); 5] = [
    (24_000, 16_000),
    (22_050, 48_000),
    (24_000, 8_000),
    (32_000, 44_100),
    (48_000, 16_000),
];

/// Input frames per pipeline push: 100 ms at 24 kHz, the size of a DashScope audio event.
pub const PUSH_FRAMES: usize = 2_400;

/// `target/herald-bench`, where every bench writes its JSON.
pub fn results_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("herald-bench"))
        .unwrap_or_else(|| PathBuf::from("target/herald-bench"));
    std::fs::create_dir_all(&dir).expect("results dir");
    dir
}

/// The repository's root (for `docs/`).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the binary was started by `cargo bench` (criterion and the custom harnesses get
/// `--bench`); under `cargo test` the benches run as smoke tests on tiny inputs.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

// === signals ===

/// A sine of `hz` at amplitude `amp`, `secs` long, mono.
pub fn sine(rate: u32, hz: f64, amp: f64, secs: f64) -> Vec<f32> {
    let n = (rate as f64 * secs).round() as usize;
    (0..n)
        .map(|i| (amp * (std::f64::consts::TAU * hz * i as f64 / rate as f64).sin()) as f32)
        .collect()
}

/// A linear sweep from `f0` to `f1` Hz at amplitude `amp`, `secs` long, mono.
pub fn sweep(rate: u32, f0: f64, f1: f64, amp: f64, secs: f64) -> Vec<f32> {
    let n = (rate as f64 * secs).round() as usize;
    let k = (f1 - f0) / secs;
    (0..n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            (amp * (std::f64::consts::TAU * (f0 * t + 0.5 * k * t * t)).sin()) as f32
        })
        .collect()
}

/// Speech-like programme material for speed runs: three tones with a 4 Hz syllable envelope
/// and a little deterministic noise, peak about −6 dBFS. Codecs spend what they spend on
/// speech, not what they spend on digital silence.
pub fn programme(rate: u32, secs: f64) -> Vec<f32> {
    let n = (rate as f64 * secs).round() as usize;
    let mut noise = 0x2545_f491_u32;
    (0..n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            let env = 0.5 + 0.5 * (std::f64::consts::TAU * 4.0 * t).sin();
            let voice = 0.25 * (std::f64::consts::TAU * 180.0 * t).sin()
                + 0.12 * (std::f64::consts::TAU * 720.0 * t).sin()
                + 0.06 * (std::f64::consts::TAU * 2_600.0 * t).sin();
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            let hiss = (noise as f64 / u32::MAX as f64 - 0.5) * 0.02;
            (env * voice + hiss) as f32
        })
        .collect()
}

pub fn to_s16le(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&s| herald::audio::encode::f32_to_i16(s).to_le_bytes())
        .collect()
}

pub fn to_f32le(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn from_f32le(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A 16-bit WAV file of mono `x` (sizes filled in).
pub fn wav_file(x: &[f32], rate: u32) -> Vec<u8> {
    let spec = AudioSpec::new(rate, 1).expect("spec");
    let mut out = herald::audio::wav::streaming_header(spec).to_vec();
    let data = to_s16le(x);
    let len = data.len() as u32;
    out[4..8].copy_from_slice(&(36 + len).to_le_bytes());
    out[40..44].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// `x` encoded by herald's own encoder (one call per [`PUSH_FRAMES`]).
pub fn encode_all(x: &[f32], rate: u32, channels: u16, encoding: OutputEncoding) -> Vec<u8> {
    let spec = AudioSpec::new(rate, channels).expect("spec");
    let mut enc = encoder_for(OutputFormat { encoding, spec }).expect("encoder");
    let mut out = Vec::new();
    for piece in x.chunks(PUSH_FRAMES * channels as usize) {
        enc.encode(&PcmBuffer::new(spec, piece.to_vec()), &mut out)
            .expect("encode");
    }
    enc.finish(&mut out).expect("finish");
    out
}

/// An MP3 file of mono `x` (LAME through herald's encoder, `kbps`).
pub fn mp3_file(x: &[f32], rate: u32, kbps: u32) -> Vec<u8> {
    encode_all(
        x,
        rate,
        1,
        OutputEncoding::Mp3 {
            bitrate_bps: kbps * 1000,
        },
    )
}

// === what is measured ===

/// The encodings a client can ask for, with herald's defaults where there is a parameter.
pub fn encodings() -> Vec<(&'static str, OutputEncoding)> {
    vec![
        ("pcm_s16le", OutputEncoding::PcmS16Le),
        ("pcm_f32le", OutputEncoding::PcmF32Le),
        ("wav", OutputEncoding::Wav),
        ("mulaw", OutputEncoding::Mulaw),
        ("alaw", OutputEncoding::Alaw),
        (
            "mp3_64k",
            OutputEncoding::Mp3 {
                bitrate_bps: 64_000,
            },
        ),
        (
            "ogg_opus_32k",
            OutputEncoding::OggOpus {
                bitrate_bps: 32_000,
            },
        ),
        (
            "flac_16",
            OutputEncoding::Flac {
                bits_per_sample: 16,
            },
        ),
    ]
}

/// Whole conversions: what an engine sends → what a client asks for.
pub struct Conversion {
    pub id: &'static str,
    pub input: &'static str,
    pub in_rate: u32,
    pub out: OutputEncoding,
    pub out_rate: u32,
    pub out_channels: u16,
}

pub fn conversions() -> Vec<Conversion> {
    let c = |id, input, in_rate, out, out_rate, out_channels| Conversion {
        id,
        input,
        in_rate,
        out,
        out_rate,
        out_channels,
    };
    vec![
        c(
            "cosyvoice_pcm24k_to_s16_16k",
            "pcm",
            24_000,
            OutputEncoding::PcmS16Le,
            16_000,
            1,
        ),
        c(
            "cosyvoice_pcm24k_to_wav_48k_stereo",
            "pcm",
            24_000,
            OutputEncoding::Wav,
            48_000,
            2,
        ),
        c(
            "espeak_wav22k_to_mulaw_8k",
            "wav",
            22_050,
            OutputEncoding::Mulaw,
            8_000,
            1,
        ),
        c(
            "qwen_wav24k_to_mp3_24k",
            "wav",
            24_000,
            OutputEncoding::Mp3 {
                bitrate_bps: 64_000,
            },
            24_000,
            1,
        ),
        c(
            "minimax_mp3_32k_to_opus_48k",
            "mp3",
            32_000,
            OutputEncoding::OggOpus {
                bitrate_bps: 32_000,
            },
            48_000,
            1,
        ),
    ]
}

/// The engine-side bytes of `conv`'s input and their encoding.
pub fn conversion_input(conv: &Conversion, secs: f64) -> (Bytes, InputEncoding) {
    let x = programme(conv.in_rate, secs);
    match conv.input {
        "pcm" => (
            Bytes::from(to_s16le(&x)),
            InputEncoding::Pcm16Le(AudioSpec::new(conv.in_rate, 1).expect("spec")),
        ),
        "wav" => (Bytes::from(wav_file(&x, conv.in_rate)), InputEncoding::Wav),
        _ => (
            Bytes::from(mp3_file(&x, conv.in_rate, 128)),
            InputEncoding::Mp3,
        ),
    }
}

// === herald, in-process ===

/// `x` (mono) through herald's resampling stage, pushed [`PUSH_FRAMES`] at a time.
pub fn herald_resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    let spec = AudioSpec::new(from, 1).expect("spec");
    let mut stage = Resampler::new(spec, to).expect("resampler");
    let mut bufs = Vec::new();
    let mut out = Vec::with_capacity(x.len() * to as usize / from as usize + 1024);
    for piece in x.chunks(PUSH_FRAMES) {
        stage
            .process(PcmBuffer::new(spec, piece.to_vec()), &mut bufs)
            .expect("resample");
        for b in bufs.drain(..) {
            out.extend_from_slice(&b.samples);
        }
    }
    stage.flush(&mut bufs).expect("flush");
    for b in bufs.drain(..) {
        out.extend_from_slice(&b.samples);
    }
    out
}

/// Every sample `bytes` decode to, with herald's decoder for `encoding`.
pub fn herald_decode(bytes: &[u8], encoding: InputEncoding) -> (usize, u32) {
    let reader = std::io::Cursor::new(bytes.to_vec());
    let mut dec: Box<dyn Decoder> = open_decoder(encoding, reader).expect("decoder");
    let mut samples = 0;
    let mut rate = 0;
    while let Some(buf) = dec.next_buffer().expect("decode") {
        samples += buf.samples.len();
        rate = buf.spec.sample_rate;
    }
    (samples, rate)
}

/// One whole conversion through herald's real pipeline (`pipeline::run_stream`: the audio
/// thread with decoder, resampler, remix, gain, encoder and chunker), fed as engine events
/// of `event_bytes` each. Returns the bytes the client would get.
pub async fn herald_convert(
    input: Bytes,
    encoding: InputEncoding,
    output: OutputFormat,
    event_bytes: usize,
) -> u64 {
    let mut events: Vec<Result<SynthEvent, herald::engine::EngineError>> = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let end = (at + event_bytes).min(input.len());
        events.push(Ok(SynthEvent::Audio {
            encoding,
            data: input.slice(at..end),
        }));
        at = end;
    }
    events.push(Ok(SynthEvent::Finished {
        characters: None,
        upstream_request_ids: Vec::new(),
    }));
    let stream = futures::stream::iter(events).boxed();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let sink: pipeline::ChunkSink = Box::new(move |o| {
        if let Output::Audio(chunk) = o {
            counter.fetch_add(
                chunk.data.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        true
    });
    pipeline::run_stream(
        stream,
        Render {
            output,
            gain: 1.0,
            chunk_ms: 100,
            realtime: false,
        },
        CancellationToken::new(),
        sink,
    )
    .await
    .expect("conversion");
    sent.load(std::sync::atomic::Ordering::Relaxed)
}

/// The fastest of `runs` runs of `f`, in seconds (the least disturbed by a shared machine).
pub fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let v = std::hint::black_box(f());
        best = best.min(start.elapsed().as_secs_f64());
        last = Some(v);
    }
    (best, last.expect("at least one run"))
}

// === quality ===

/// Least-squares amplitude of the sinusoid at `hz` in `x` (phase free), and `x` with it
/// removed.
fn remove_sine(x: &[f64], rate: u32, hz: f64) -> (f64, Vec<f64>) {
    let w = std::f64::consts::TAU * hz / rate as f64;
    let (mut cc, mut ss, mut cs, mut xc, mut xs) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (w * i as f64).sin_cos();
        cc += c * c;
        ss += s * s;
        cs += c * s;
        xc += v * c;
        xs += v * s;
    }
    let det = cc * ss - cs * cs;
    if det.abs() < 1e-12 {
        return (0.0, x.to_vec());
    }
    let a = (xc * ss - xs * cs) / det;
    let b = (xs * cc - xc * cs) / det;
    let residual = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (s, c) = (w * i as f64).sin_cos();
            v - a * c - b * s
        })
        .collect();
    ((a * a + b * b).sqrt(), residual)
}

fn power(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64
}

/// The steady part of a resampler's output: the first and last 0.25 s (filter transients and
/// the flushed tail) are left out.
fn steady(y: &[f32], rate: u32) -> Vec<f64> {
    let skip = rate as usize / 4;
    if y.len() <= 2 * skip {
        return y.iter().map(|&v| v as f64).collect();
    }
    y[skip..y.len() - skip].iter().map(|&v| v as f64).collect()
}

/// THD+N and SNR (dB, negative = below the tone) of a tone of `hz` after a conversion to
/// `rate`: THD+N counts everything that is not the tone; SNR leaves out the harmonics below
/// Nyquist as well (a resampler makes none; a codec might).
pub fn tone_quality(y: &[f32], rate: u32, hz: f64) -> (f64, f64) {
    let x = steady(y, rate);
    let (amp, residual) = remove_sine(&x, rate, hz);
    let signal = amp * amp / 2.0;
    let thdn = 10.0 * (power(&residual) / signal).max(1e-30).log10();
    let mut noise = residual;
    let mut k = 2.0;
    while hz * k < rate as f64 / 2.0 && k <= 9.0 {
        noise = remove_sine(&noise, rate, hz * k).1;
        k += 1.0;
    }
    let snr = 10.0 * (power(&noise) / signal).max(1e-30).log10();
    (thdn, snr)
}

/// The power of `y` in `[lo, hi]` Hz relative to `reference` power, in dB (one FFT of the
/// steady part, Hann window).
pub fn band_power_db(y: &[f32], rate: u32, lo: f64, hi: f64, reference: f64) -> f64 {
    use rustfft::{FftPlanner, num_complex::Complex};
    let x = steady(y, rate);
    let n = x.len();
    let mut buf: Vec<Complex<f64>> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let w = 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / n as f64).cos();
            Complex::new(v * w, 0.0)
        })
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    // Hann's power gain is 3/8; Parseval over the one-sided spectrum.
    let scale = 2.0 / (n as f64 * n as f64 * 0.375);
    let band: f64 = buf[..n / 2]
        .iter()
        .enumerate()
        .filter(|(k, _)| {
            let f = *k as f64 * rate as f64 / n as f64;
            f >= lo && f <= hi
        })
        .map(|(_, c)| c.norm_sqr() * scale)
        .sum();
    10.0 * (band / reference).max(1e-30).log10()
}

/// Mean power of `x`.
pub fn mean_power(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len().max(1) as f64
}

// === references ===

/// A reference tool on this machine, with its version line.
pub fn tool_version(tool: &str) -> Option<String> {
    let arg = if tool == "ffmpeg" {
        "-version"
    } else {
        "--version"
    };
    let out = Command::new(tool).arg(arg).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.lines().next().map(|l| l.trim().to_owned())
}

/// Runs `cmd` (a reference tool), panicking with its stderr if it fails.
pub fn run_tool(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().expect("spawn reference tool");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// `sox` arguments for raw mono f32 at `rate`.
pub fn sox_raw(rate: u32) -> Vec<String> {
    [
        "-t",
        "raw",
        "-e",
        "floating-point",
        "-b",
        "32",
        "-c",
        "1",
        "-r",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([rate.to_string()])
    .collect()
}

/// libsoxr through sox: `rate -h` (`quality` "h") or `rate -v` ("v"), f32 in and out (no
/// dither), one thread.
pub fn sox_resample(input: &Path, output: &Path, from: u32, to: u32, quality: &str) -> Command {
    let mut c = Command::new("sox");
    c.args(["-D", "--single-threaded", "-V1"])
        .args(sox_raw(from))
        .arg(input)
        .args(sox_raw(to))
        .arg(output)
        .args(["rate", &format!("-{quality}"), &to.to_string()]);
    c
}

/// ffmpeg, one thread, raw mono f32 in; `filter` (e.g. `aresample=16000`) and the output
/// arguments after it.
pub fn ffmpeg<A: AsRef<std::ffi::OsStr>, B: AsRef<std::ffi::OsStr>>(
    input: &Path,
    in_args: &[A],
    filter: Option<&str>,
    out_args: &[B],
    output: &Path,
) -> Command {
    let mut c = Command::new("ffmpeg");
    c.args([
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-threads",
        "1",
    ])
    .args(in_args)
    .arg("-i")
    .arg(input)
    .args(["-threads", "1"]);
    if let Some(f) = filter {
        c.args(["-af", f]);
    }
    c.args(out_args).arg("-y").arg(output);
    c
}

/// Percentile `p` (0..=1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Rounds to `d` decimals (for JSON that reads well).
pub fn round(v: f64, d: i32) -> f64 {
    let m = 10f64.powi(d);
    (v * m).round() / m
}

/// p50, p90 and max of `durations` in ms (two decimals), as the latency tables print them.
pub fn ms_stats(durations: impl IntoIterator<Item = Duration>) -> serde_json::Value {
    let mut v: Vec<f64> = durations
        .into_iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    v.sort_by(f64::total_cmp);
    serde_json::json!({
        "p50": round(percentile(&v, 0.5), 2),
        "p90": round(percentile(&v, 0.9), 2),
        "max": round(v.last().copied().unwrap_or(f64::NAN), 2),
    })
}
