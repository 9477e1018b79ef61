//! Encoding: [`PcmBuffer`]s → the bytes of the client's [`OutputEncoding`].
//!
//! This module owns the [`Encoder`] trait, the uncompressed encoders (s16le, f32le, a
//! streaming WAV with a single header, G.711 µ-law and A-law), the float → 16-bit conversion
//! ([`f32_to_i16`], where clipping happens) and the G.711 companding tables. The compressed
//! encoders live in their own modules: [`mp3`] (LAME), [`opus`] (libopus in Ogg) and [`flac`]
//! (flacenc). One encoder serves one response: headers are written once, before the first
//! samples, and every encoder streams (bytes come out as PCM goes in).
//!
//! It must not resample, remix or apply gain (the buffers arrive in the output spec, and any
//! other spec is an error; only Opus resamples internally, to an Opus rate), or split output
//! into messages (that is [`super::chunk`]). The uncompressed encoders write all their samples
//! at every `encode` call; the compressed ones keep back at most a codec frame or a FLAC block
//! until [`Encoder::finish`].

pub mod flac;
pub mod mp3;
pub mod negotiate;
pub mod opus;

/// The header the WAV encoder writes once, before the first samples (the same as
/// [`super::wav::streaming_header`]).
use std::sync::LazyLock;

use super::{AudioError, AudioSpec, OutputEncoding, OutputFormat, PcmBuffer, wav};

/// Turns PCM into the bytes of one output encoding.
pub trait Encoder: Send {
    /// Appends the encoding of `pcm` to `out`. `pcm` must be in the output format's spec.
    fn encode(&mut self, pcm: &PcmBuffer, out: &mut Vec<u8>) -> Result<(), AudioError>;

    /// Appends whatever the stream still needs at its end (a header for an empty WAV stream).
    /// Called once, after the last `encode`.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), AudioError>;
}

/// The encoder for `format`. Fails only when a codec library refuses the format (which the
/// service's validation rules out).
pub fn encoder_for(format: OutputFormat) -> Result<Box<dyn Encoder>, AudioError> {
    let spec = format.spec;
    Ok(match format.encoding {
        OutputEncoding::Mp3 { bitrate_bps } => Box::new(mp3::Mp3Encoder::new(spec, bitrate_bps)?),
        OutputEncoding::OggOpus { bitrate_bps } => {
            Box::new(opus::OpusEncoder::new(spec, bitrate_bps)?)
        }
        OutputEncoding::Flac { bits_per_sample } => {
            Box::new(flac::FlacEncoder::new(spec, bits_per_sample)?)
        }
        OutputEncoding::PcmS16Le => Box::new(SampleEncoder::new(spec, Sample::S16)),
        OutputEncoding::PcmF32Le => Box::new(SampleEncoder::new(spec, Sample::F32)),
        OutputEncoding::Mulaw => Box::new(SampleEncoder::new(spec, Sample::Mulaw)),
        OutputEncoding::Alaw => Box::new(SampleEncoder::new(spec, Sample::Alaw)),
        OutputEncoding::Wav => Box::new(WavEncoder {
            body: SampleEncoder::new(spec, Sample::S16),
            header_written: false,
        }),
    })
}

/// `Ok` when `pcm` is in `expected`, the encoder's spec.
fn check_spec(expected: AudioSpec, pcm: &PcmBuffer) -> Result<(), AudioError> {
    if pcm.spec == expected {
        Ok(())
    } else {
        Err(AudioError::SpecMismatch {
            stage: "encoder",
            expected,
            actual: pcm.spec,
        })
    }
}

/// Converts a float sample to 16-bit: clips to [-1.0, 1.0], scales by 32768 and rounds half
/// away from zero; +1.0 saturates to 32767.
///
/// The scale is 32768, not 32767, because decoders map s16 `v` to `v / 32768`: s16 input that
/// no stage touched comes out bit-exact. The price is that +1.0 clips by one LSB (−0.0003 dB).
/// NaN becomes 0.
#[inline]
pub fn f32_to_i16(sample: f32) -> i16 {
    // In f64, `x × 32768 ± 0.5` is exact (x has a 24-bit mantissa), so truncating it rounds
    // half away from zero exactly as `f32::round` would, without `round`'s libm call, and a
    // loop of these vectorizes. `as` truncates, saturates (32768.5 → 32767) and maps NaN to 0.
    let v = f64::from(sample.clamp(-1.0, 1.0)) * 32_768.0;
    (v + 0.5f64.copysign(v)) as i16
}

// === G.711, after the CCITT reference code as distributed by Sun (public domain g711.c) ===
// µ-law works on the full 16-bit magnitude (the variant ffmpeg's pcm_mulaw uses), so positive
// and negative inputs quantize symmetrically; A-law drops the 3 low bits and codes the
// magnitude in one's complement, as the reference does.

/// µ-law bias, in the 16-bit domain.
const ULAW_BIAS: i32 = 0x84;
/// Largest µ-law magnitude before the bias (32635 + 0x84 = 32767).
const ULAW_CLIP: i32 = 32_635;
/// Upper bound of each A-law segment, 13-bit domain.
const ALAW_SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// Encodes a 16-bit linear sample as G.711 µ-law (magnitudes above 32635 clip).
pub fn linear_to_ulaw(pcm: i16) -> u8 {
    let v = i32::from(pcm);
    let (magnitude, mask) = if v < 0 { (-v, 0x7F) } else { (v, 0xFF) };
    // 132 ≤ biased ≤ 32767, so its top bit is bit 7..=14: the segment is 0..=7.
    let biased = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    let segment = 31 - biased.leading_zeros() - 7;
    let mantissa = (biased >> (segment + 3)) & 0x0F;
    // Segment (3 bits) and mantissa (4 bits) fit a byte.
    ((segment << 4) as u8 | mantissa as u8) ^ mask
}

/// Decodes a G.711 µ-law byte to a 16-bit linear sample (range ±32124).
pub fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let t = ((i32::from(u & 0x0F) << 3) + ULAW_BIAS) << ((u & 0x70) >> 4);
    // |t − bias| ≤ 32124.
    (if u & 0x80 != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    }) as i16
}

/// Encodes a 16-bit linear sample as G.711 A-law (the sample's 3 low bits are dropped first, as
/// the reference does).
pub fn linear_to_alaw(pcm: i16) -> u8 {
    let mut v = i32::from(pcm) >> 3;
    let mask: u8 = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    match ALAW_SEG_END.iter().position(|&end| v <= end) {
        Some(seg) => {
            let mantissa = (if seg < 2 { v >> 1 } else { v >> seg }) & 0x0F;
            (((seg << 4) as i32 | mantissa) as u8) ^ mask
        }
        None => 0x7F ^ mask,
    }
}

/// [`linear_to_ulaw`] of every 16-bit sample, indexed by the sample's bits as `u16`
/// (64 KiB, built on first use): one load per sample instead of the segment search.
fn ulaw_table() -> &'static [u8; 1 << 16] {
    static TABLE: LazyLock<Box<[u8; 1 << 16]>> = LazyLock::new(|| {
        let mut t = Box::new([0u8; 1 << 16]);
        for v in i16::MIN..=i16::MAX {
            t[usize::from(v as u16)] = linear_to_ulaw(v);
        }
        t
    });
    &TABLE
}

/// [`linear_to_alaw`] of every 13-bit value (A-law drops a sample's 3 low bits first),
/// indexed by [`alaw_index`] (8 KiB, built on first use).
fn alaw_table() -> &'static [u8; 1 << 13] {
    static TABLE: LazyLock<Box<[u8; 1 << 13]>> = LazyLock::new(|| {
        let mut t = Box::new([0u8; 1 << 13]);
        for (i, code) in t.iter_mut().enumerate() {
            // The smallest 16-bit sample with these 13 high bits (all 8 share the code).
            let v = ((i as i32 - (1 << 12)) << 3) as i16;
            *code = linear_to_alaw(v);
        }
        t
    });
    &TABLE
}

/// Where the A-law code of the 16-bit sample `pcm` is in [`alaw_table`].
#[inline]
fn alaw_index(pcm: i16) -> usize {
    // −4096..=4095 → 0..=8191.
    ((i32::from(pcm) >> 3) + (1 << 12)) as usize
}

/// Decodes a G.711 A-law byte to a 16-bit linear sample (range ±32256).
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    match (a & 0x70) >> 4 {
        0 => t += 8,
        1 => t += 0x108,
        seg => t = (t + 0x108) << (seg - 1),
    }
    // |t| ≤ 32256.
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

// === encoders ===

/// The per-sample encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sample {
    S16,
    F32,
    Mulaw,
    Alaw,
}

impl Sample {
    /// Bytes per sample.
    fn bytes(self) -> usize {
        match self {
            Self::S16 => 2,
            Self::F32 => 4,
            Self::Mulaw | Self::Alaw => 1,
        }
    }
}

/// Headerless encodings: each sample becomes a fixed number of bytes.
#[derive(Debug)]
struct SampleEncoder {
    spec: AudioSpec,
    sample: Sample,
}

impl SampleEncoder {
    fn new(spec: AudioSpec, sample: Sample) -> Self {
        Self { spec, sample }
    }
}

impl Encoder for SampleEncoder {
    fn encode(&mut self, pcm: &PcmBuffer, out: &mut Vec<u8>) -> Result<(), AudioError> {
        if pcm.spec != self.spec {
            return Err(AudioError::SpecMismatch {
                stage: "encoder",
                expected: self.spec,
                actual: pcm.spec,
            });
        }
        let s = &pcm.samples;
        // The output grows once, then every sample writes its own bytes (loops that vectorize,
        // or one table load per sample for G.711).
        let start = out.len();
        out.resize(start + s.len() * self.sample.bytes(), 0);
        let dst = &mut out[start..];
        match self.sample {
            Sample::S16 => {
                for (d, &x) in dst.chunks_exact_mut(2).zip(s) {
                    d.copy_from_slice(&f32_to_i16(x).to_le_bytes());
                }
            }
            Sample::F32 => {
                // Clipped to full scale like the integer encodings (gain may exceed it).
                for (d, &x) in dst.chunks_exact_mut(4).zip(s) {
                    d.copy_from_slice(&x.clamp(-1.0, 1.0).to_le_bytes());
                }
            }
            Sample::Mulaw => {
                let table = ulaw_table();
                for (d, &x) in dst.iter_mut().zip(s) {
                    *d = table[usize::from(f32_to_i16(x) as u16)];
                }
            }
            Sample::Alaw => {
                let table = alaw_table();
                for (d, &x) in dst.iter_mut().zip(s) {
                    *d = table[alaw_index(f32_to_i16(x))];
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<u8>) -> Result<(), AudioError> {
        Ok(())
    }
}

/// A 16-bit WAV stream: one [`wav::streaming_header`] (unknown sizes), then s16le samples.
#[derive(Debug)]
struct WavEncoder {
    body: SampleEncoder,
    header_written: bool,
}

impl WavEncoder {
    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(&wav::streaming_header(self.body.spec));
            self.header_written = true;
        }
    }
}

impl Encoder for WavEncoder {
    fn encode(&mut self, pcm: &PcmBuffer, out: &mut Vec<u8>) -> Result<(), AudioError> {
        if pcm.spec != self.body.spec {
            // Checked before the header goes out, so a failed call writes nothing.
            return self.body.encode(pcm, out);
        }
        self.write_header(out);
        self.body.encode(pcm, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), AudioError> {
        // An empty stream is still a valid (empty) WAV file.
        self.write_header(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::f64::consts::PI;
    use std::io::Cursor;

    use super::*;
    use crate::audio::{InputEncoding, decode, test_util::format, wav::HEADER_LEN};

    /// A 1 kHz tone at `amp`, interleaved, the right channel at 440 Hz when stereo.
    fn tone(spec: AudioSpec, frames: usize, amp: f64) -> Vec<f32> {
        let mut v = Vec::new();
        for n in 0..frames {
            let t = n as f64 / f64::from(spec.sample_rate);
            for c in 0..spec.channels {
                let f = if c == 0 { 1_000.0 } else { 440.0 };
                v.push((amp * (2.0 * PI * f * t).sin()) as f32);
            }
        }
        v
    }

    /// Encodes `samples` in three uneven calls, then finishes.
    fn encode_all(fmt: OutputFormat, samples: &[f32]) -> Vec<u8> {
        let ch = usize::from(fmt.spec.channels);
        let frames = samples.len() / ch;
        let cuts = [0, frames / 7, frames / 2, frames];
        let mut enc = encoder_for(fmt).expect("encoder");
        let mut out = Vec::new();
        for w in cuts.windows(2) {
            let pcm = PcmBuffer::new(fmt.spec, samples[w[0] * ch..w[1] * ch].to_vec());
            enc.encode(&pcm, &mut out).expect("encode");
        }
        enc.finish(&mut out).expect("finish");
        out
    }

    #[test]
    fn s16_clips_scales_and_rounds() {
        assert_eq!(f32_to_i16(0.0), 0);
        assert_eq!(f32_to_i16(1.0), 32_767);
        assert_eq!(f32_to_i16(1.5), 32_767);
        assert_eq!(f32_to_i16(-1.0), -32_768);
        assert_eq!(f32_to_i16(-7.0), -32_768);
        assert_eq!(f32_to_i16(f32::NAN), 0);
        assert_eq!(f32_to_i16(f32::INFINITY), 32_767);
        assert_eq!(f32_to_i16(0.5 / 32_768.0), 1); // half rounds away from zero
        assert_eq!(f32_to_i16(0.49 / 32_768.0), 0);
        // Every s16 value survives s16 → f32 (as decoders scale it) → s16.
        for v in i16::MIN..=i16::MAX {
            assert_eq!(f32_to_i16(f32::from(v) / 32_768.0), v);
        }
    }

    #[test]
    fn pcm_s16le_round_trip() {
        let fmt = format(OutputEncoding::PcmS16Le, 24_000, 2);
        let samples = tone(fmt.spec, 24_000, 0.9);
        let bytes = encode_all(fmt, &samples);
        assert_eq!(bytes.len(), samples.len() * 2);
        let back: Vec<f32> = bytes
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32_768.0)
            .collect();
        let worst = back
            .iter()
            .zip(&samples)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 0.5 / 32_768.0 + 1e-7, "worst error {worst}");
    }

    #[test]
    fn pcm_f32le_round_trip_is_exact_within_full_scale_and_clips_beyond() {
        let fmt = format(OutputEncoding::PcmF32Le, 16_000, 1);
        let mut samples = tone(fmt.spec, 16_000, 0.9);
        samples.extend([1.25, -3.0]); // beyond full scale: clipped, as the proto promises
        let bytes = encode_all(fmt, &samples);
        assert_eq!(bytes.len(), samples.len() * 4);
        let back: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let n = samples.len();
        assert_eq!(back[..n - 2], samples[..n - 2]);
        assert_eq!(back[n - 2..], [1.0, -1.0]);
    }

    #[test]
    fn wav_has_one_streaming_header_then_samples() {
        let fmt = format(OutputEncoding::Wav, 22_050, 2);
        let samples = tone(fmt.spec, 22_050, 0.5);
        let bytes = encode_all(fmt, &samples);
        assert_eq!(bytes.len(), HEADER_LEN + samples.len() * 2);
        assert_eq!(
            &bytes[..HEADER_LEN],
            &crate::audio::wav::streaming_header(fmt.spec)
        );
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(&bytes[4..8], &[0xFF; 4]);
        assert_eq!(&bytes[40..44], &[0xFF; 4]);
        // Exactly one header: no second RIFF tag anywhere.
        assert_eq!(bytes.windows(4).filter(|w| w == b"RIFF").count(), 1);

        let expected: Vec<i16> = samples.iter().map(|&x| f32_to_i16(x)).collect();

        // hound 3.5 refuses the streaming sizes as written: it checks that the data length is a
        // multiple of the frame size, and 0xFFFFFFFF is odd. ffmpeg, sox and symphonia accept
        // them, and so does herald's own decoder (below).
        let refused = hound::WavReader::new(Cursor::new(bytes.clone()));
        assert!(
            matches!(refused, Err(hound::Error::FormatError(_))),
            "hound 3.5 was expected to refuse 0xFFFFFFFF sizes"
        );

        // hound with the sizes patched to the real ones, as a file writer would leave them.
        let mut patched = bytes.clone();
        wav::set_sizes(&mut patched);
        assert_eq!(
            &patched[40..44],
            &((bytes.len() - HEADER_LEN) as u32).to_le_bytes()
        );
        let mut reader = hound::WavReader::new(Cursor::new(patched)).expect("hound parses");
        assert_eq!(reader.duration(), 22_050);
        let got: Vec<i16> = reader
            .samples::<i16>()
            .map(|s| s.expect("sample"))
            .collect();
        assert_eq!(got, expected);

        // herald's own decoder reads the unpatched stream.
        let mut dec =
            decode::open_decoder(InputEncoding::Wav, Cursor::new(bytes)).expect("decoder");
        let mut got = Vec::new();
        while let Some(b) = dec.next_buffer().expect("decodes") {
            assert_eq!(b.spec, fmt.spec);
            got.extend(b.samples.iter().map(|&x| f32_to_i16(x)));
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn empty_wav_stream_is_just_a_header() {
        let fmt = format(OutputEncoding::Wav, 16_000, 1);
        let mut enc = encoder_for(fmt).expect("encoder");
        let mut out = Vec::new();
        enc.finish(&mut out).expect("finish");
        assert_eq!(out, crate::audio::wav::streaming_header(fmt.spec));
        // Patched to a real (zero) length, hound reads it as an empty 16 kHz mono file.
        let mut patched = out.clone();
        wav::set_sizes(&mut patched);
        assert_eq!(&patched[4..8], &36u32.to_le_bytes());
        assert_eq!(&patched[40..44], &0u32.to_le_bytes());
        let reader = hound::WavReader::new(Cursor::new(patched)).expect("hound parses");
        assert_eq!(reader.spec().sample_rate, 16_000);
        assert_eq!(reader.duration(), 0);
        let mut dec = decode::open_decoder(InputEncoding::Wav, Cursor::new(out)).expect("dec");
        assert!(dec.next_buffer().expect("decodes").is_none());
    }

    #[test]
    fn wrong_spec_writes_nothing() {
        let mut enc = encoder_for(format(OutputEncoding::Wav, 16_000, 1)).expect("encoder");
        let mut out = Vec::new();
        let pcm = PcmBuffer::new(AudioSpec::new(8_000, 1).expect("spec"), vec![0.0; 4]);
        let err = enc.encode(&pcm, &mut out).expect_err("must fail");
        assert!(matches!(err, AudioError::SpecMismatch { .. }));
        assert!(out.is_empty());
    }

    /// Quantization step, in the 16-bit domain, of the µ-law segment `code` lies in: segment s
    /// has a step of 2^(s+1) in the encoder's 14-bit domain, 2^(s+3) in 16 bits.
    fn ulaw_step(code: u8) -> i32 {
        1 << (((!code & 0x70) >> 4) + 3)
    }

    /// Quantization step, in the 16-bit domain, of the A-law segment `code` lies in: segments 0
    /// and 1 share a step of 2 in the 13-bit domain (16 in 16 bits), then it doubles.
    fn alaw_step(code: u8) -> i32 {
        let seg = ((code ^ 0x55) & 0x70) >> 4;
        16 << seg.max(1).saturating_sub(1)
    }

    #[test]
    fn ulaw_quantization_error_is_within_half_a_step() {
        let mut worst_ratio: f64 = 0.0;
        let mut worst_rel: f64 = 0.0;
        for x in i16::MIN..=i16::MAX {
            let y = ulaw_to_linear(linear_to_ulaw(x));
            let m = i32::from(x).abs();
            let err = (i32::from(y) - i32::from(x)).abs();
            if m > 32_124 + 512 {
                // Beyond the largest code (32124 + half of the top step), µ-law clips.
                assert_eq!(i32::from(y).abs(), 32_124, "x = {x}");
                continue;
            }
            // The decoder returns the middle of the code's interval: at most half a step off,
            // for both signs.
            let step = ulaw_step(linear_to_ulaw(x));
            assert!(err <= step / 2, "x = {x}: y = {y}, step {step}");
            worst_ratio = worst_ratio.max(f64::from(err) / f64::from(step));
            if m >= 256 {
                worst_rel = worst_rel.max(f64::from(err) / f64::from(m));
            }
            // The sign survives (0 may decode to 0 from either side).
            assert!(y == 0 || (y < 0) == (x < 0), "x = {x}: y = {y}");
        }
        eprintln!(
            "µ-law: worst error {worst_ratio:.3} step, worst relative error {worst_rel:.4} (|x| ≥ 256)"
        );
        // Four mantissa bits: half a step is 1/32 of a segment's top but, with µ-law's bias
        // of 132, up to 2^(s+2) / (2^(s+7) − 132) of its bottom: 16/380 = 0.042 in segment 2.
        assert!(worst_rel <= 16.0 / 380.0 + 1e-9, "{worst_rel}");
        // Known reference vectors.
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        // Every code decodes to a value that encodes back to the same code.
        for code in 0..=255u8 {
            let y = ulaw_to_linear(code);
            if code != 0x7F {
                // 0x7F is "negative zero": it decodes to 0, which encodes as 0xFF.
                assert_eq!(linear_to_ulaw(y), code, "code {code:#04x}");
            }
        }
    }

    #[test]
    fn alaw_quantization_error_is_within_half_a_step() {
        let mut worst_ratio: f64 = 0.0;
        let mut worst_rel: f64 = 0.0;
        for x in i16::MIN..=i16::MAX {
            let y = alaw_to_linear(linear_to_alaw(x));
            let m = i32::from(x).abs();
            let err = (i32::from(y) - i32::from(x)).abs();
            // Exactly half a step at worst, for both signs (A-law codes magnitudes in one's
            // complement, so there is no asymmetry).
            let step = alaw_step(linear_to_alaw(x));
            assert!(err <= step / 2, "x = {x}: y = {y}, step {step}");
            worst_ratio = worst_ratio.max(f64::from(err) / f64::from(step));
            if m >= 256 {
                worst_rel = worst_rel.max(f64::from(err) / f64::from(m));
            }
            assert!((y < 0) == (x < 0), "x = {x}: y = {y}");
        }
        eprintln!(
            "A-law: worst error {worst_ratio:.3} step, worst relative error {worst_rel:.4} (|x| ≥ 256)"
        );
        // Four mantissa bits: half a step is at most 1/32 of the magnitude above segment 1.
        assert!(worst_rel <= 1.0 / 32.0 + 1e-9, "{worst_rel}");
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32_256);
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "code {code:#04x}"
            );
        }
    }

    #[test]
    fn g711_tables_match_the_formulas_for_every_sample() {
        // Every 16-bit value, as the float a decoder makes of it, through the encoders (which
        // read the tables) and through the formulas.
        let spec = AudioSpec::new(8_000, 1).expect("spec");
        let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
        let floats: Vec<f32> = all.iter().map(|&v| f32::from(v) / 32_768.0).collect();
        for (encoding, formula) in [
            (OutputEncoding::Mulaw, linear_to_ulaw as fn(i16) -> u8),
            (OutputEncoding::Alaw, linear_to_alaw),
        ] {
            let mut enc = encoder_for(OutputFormat { encoding, spec }).expect("encoder");
            let mut out = Vec::new();
            enc.encode(&PcmBuffer::new(spec, floats.clone()), &mut out)
                .expect("encode");
            assert_eq!(out.len(), 1 << 16);
            for (&v, &code) in all.iter().zip(&out) {
                assert_eq!(code, formula(v), "{encoding:?}: sample {v}");
            }
        }
        // Beyond full scale, the encoders clip as f32_to_i16 does.
        for (encoding, top, bottom) in [
            (OutputEncoding::Mulaw, 0x80, 0x00),
            (OutputEncoding::Alaw, 0xAA, 0x2A),
        ] {
            let mut enc = encoder_for(OutputFormat { encoding, spec }).expect("encoder");
            let mut out = Vec::new();
            enc.encode(&PcmBuffer::new(spec, vec![1.5, -7.0, f32::NAN]), &mut out)
                .expect("encode");
            let zero = if encoding == OutputEncoding::Mulaw {
                0xFF
            } else {
                0xD5
            };
            assert_eq!(out, [top, bottom, zero], "{encoding:?}");
        }
    }

    #[test]
    fn g711_encoders_round_trip_a_tone() {
        let spec = AudioSpec::new(8_000, 1).expect("spec");
        for (encoding, decode) in [
            (OutputEncoding::Mulaw, ulaw_to_linear as fn(u8) -> i16),
            (OutputEncoding::Alaw, alaw_to_linear),
        ] {
            // 1013 Hz, so the 8 kHz samples visit every phase (1 kHz would hit only 5 values).
            for (amp, min_snr) in [(0.5, 35.0), (0.1, 35.0), (0.01, 30.0)] {
                let samples: Vec<f32> = (0..8_000)
                    .map(|n| (amp * (2.0 * PI * 1_013.0 * f64::from(n) / 8_000.0).sin()) as f32)
                    .collect();
                let fmt = OutputFormat { encoding, spec };
                let bytes = encode_all(fmt, &samples);
                assert_eq!(bytes.len(), samples.len());
                let mut noise = 0.0;
                let mut signal = 0.0;
                for (&b, &x) in bytes.iter().zip(&samples) {
                    let y = f64::from(decode(b)) / 32_768.0;
                    noise += (y - f64::from(x)).powi(2);
                    signal += f64::from(x).powi(2);
                }
                let snr = 10.0 * (signal / noise).log10();
                let dbfs = 20.0 * amp.log10();
                eprintln!("{encoding:?}: tone at {dbfs:.0} dBFS, SNR {snr:.1} dB");
                // G.711 keeps roughly 35-39 dB SNR over a wide range of levels (that is what
                // companding is for), falling off only near the bottom.
                assert!(snr > min_snr, "{encoding:?} at {dbfs} dBFS: SNR {snr} dB");
            }
        }
    }
}
