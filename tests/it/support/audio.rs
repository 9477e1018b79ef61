//! Audio for assertions: sample conversions, decoders (WAV through hound, MP3 and FLAC
//! through symphonia), and measurements (level, speech, frequency, segments).

use rustfft::{FftPlanner, num_complex::Complex};

pub fn s16_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

pub fn f32le_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

/// Fraction of 20 ms windows whose RMS is above -40 dBFS: speech has many, silence none.
pub fn voiced_fraction(mono: &[f32], rate: u32) -> f64 {
    let win = (rate / 50) as usize;
    let windows: Vec<&[f32]> = mono.chunks(win).collect();
    if windows.is_empty() {
        return 0.0;
    }
    let voiced = windows.iter().filter(|w| rms(w) > 0.01).count();
    voiced as f64 / windows.len() as f64
}

/// Replace the "unknown" (0xFFFFFFFF) sizes of a streamed 44-byte WAV header with real ones,
/// as a client writing a file does.
pub fn patch_wav_sizes(mut wav: Vec<u8>) -> Vec<u8> {
    let data = (wav.len() - 44) as u32;
    wav[4..8].copy_from_slice(&(data + 36).to_le_bytes());
    wav[40..44].copy_from_slice(&data.to_le_bytes());
    wav
}

/// A 16-bit WAV's spec and samples (interleaved, as f32).
pub fn wav_samples(bytes: Vec<u8>) -> (hound::WavSpec, Vec<f32>) {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).expect("a WAV hound reads");
    let spec = reader.spec();
    let samples = reader
        .into_samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect();
    (spec, samples)
}

/// Decodes MP3 or FLAC bytes (`ext` names the container) with symphonia: (rate, channels,
/// interleaved samples).
pub fn symphonia_decode(bytes: Vec<u8>, ext: &str) -> (u32, usize, Vec<f32>) {
    use symphonia::core::{
        codecs::audio::AudioDecoderOptions,
        formats::{FormatOptions, TrackType, probe::Hint},
        io::MediaSourceStream,
        meta::MetadataOptions,
    };
    let mss = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    hint.with_extension(ext);
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .expect("probe");
    let track = format.default_track(TrackType::Audio).expect("track");
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .expect("audio params")
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .expect("decoder");
    let (mut rate, mut channels, mut out) = (0, 0, Vec::new());
    while let Ok(Some(packet)) = format.next_packet() {
        if packet.track_id != track_id {
            continue;
        }
        let decoded = decoder.decode(&packet).expect("decode");
        rate = decoded.spec().rate();
        channels = decoded.spec().channels().count();
        let mut v = Vec::new();
        decoded.copy_to_vec_interleaved::<f32>(&mut v);
        out.extend(v);
    }
    (rate, channels, out)
}

/// Frequency of the strongest component, in Hz: Hann window + parabolic interpolation on the
/// log magnitude. With one second of audio the bins are 1 Hz apart.
pub fn peak_frequency(x: &[f32], rate: u32) -> f64 {
    let n = x.len();
    let mut buf: Vec<Complex<f64>> = x
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos();
            Complex::new(f64::from(*s) * w, 0.0)
        })
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let mags: Vec<f64> = buf[..n / 2]
        .iter()
        .map(|c| c.norm().max(1e-30).ln())
        .collect();
    let k = (1..mags.len() - 1)
        .max_by(|a, b| mags[*a].total_cmp(&mags[*b]))
        .expect("bins");
    let (a, b, c) = (mags[k - 1], mags[k], mags[k + 1]);
    let delta = 0.5 * (a - c) / (a - 2.0 * b + c);
    (k as f64 + delta) * f64::from(rate) / n as f64
}

/// Non-silent runs (start, len) in frames of mono audio at `rate`; silences shorter than
/// `join_ms` join runs.
pub fn segments(x: &[f32], rate: u32, join_ms: u32) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    let min_gap = (rate * join_ms / 1000) as usize;
    while i < x.len() {
        if x[i].abs() < 1e-4 {
            i += 1;
            continue;
        }
        let start = i;
        let mut quiet = 0;
        while i < x.len() && quiet < min_gap {
            quiet = if x[i].abs() < 1e-4 { quiet + 1 } else { 0 };
            i += 1;
        }
        out.push((start, i - quiet - start));
    }
    out
}
