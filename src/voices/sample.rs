//! Local checks of a voice-cloning sample before it is uploaded (against the sample rules of
//! DashScope's voice-cloning documentation): the format is sniffed from the bytes (not the
//! name), WAV and MP3 are decoded by herald's own decoders to measure duration and rate, and WAV
//! that the surface would not take (not 16-bit, or stereo for Qwen3-TTS-VC) is converted to
//! 16-bit WAV.
//!
//! It works on bytes only: it must not call upstream or know which request carried them.

use std::io::Cursor;

use crate::audio::{
    AudioError, AudioSpec, InputEncoding, decode::open_decoder, encode::f32_to_i16, wav,
};

/// Largest sample, bytes (upstream: ≤ 10 MB; for data URIs, after encoding: herald checks
/// the raw file against this and the encoded size against [`MAX_DATA_URI_BYTES`]).
pub const MAX_BYTES: usize = 10_000_000;
/// Largest data URI upstream takes (Qwen: "encoded still under 10 MB"), bytes.
pub const MAX_DATA_URI_BYTES: usize = 10 * 1024 * 1024;
/// Shortest sample for `voice-enrollment`, seconds (upstream wants ≥ 5 s of continuous speech
/// for CosyVoice / Qwen-Audio-TTS; herald refuses what cannot possibly pass).
pub const MIN_SECONDS_ENROLLMENT: f64 = 5.0;
/// Shortest sample for Qwen3-TTS-VC, seconds (≥ 3 s of continuous speech).
pub const MIN_SECONDS_QWEN: f64 = 3.0;
/// Longest sample, seconds.
pub const MAX_SECONDS: f64 = 60.0;

/// Container of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// RIFF/WAVE.
    Wav,
    /// MPEG audio layer III.
    Mp3,
    /// MPEG-4 audio (ISO BMFF `ftyp`).
    M4a,
}

impl Format {
    /// File name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::Mp3 => "mp3",
            Self::M4a => "m4a",
        }
    }

    /// The MIME type upstream's data URIs use.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Wav => "audio/wav",
            Self::Mp3 => "audio/mpeg",
            Self::M4a => "audio/mp4",
        }
    }
}

/// What the surface needs.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Lowest sample rate, Hz.
    pub min_rate: u32,
    /// Mono only (stereo WAV is mixed down).
    pub mono: bool,
    /// Shortest duration, seconds.
    pub min_seconds: f64,
}

/// A checked sample, ready for upload.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The bytes to upload.
    pub bytes: Vec<u8>,
    /// Their format.
    pub format: Format,
    /// Duration, seconds (`None` for M4A, not decoded locally).
    pub seconds: Option<f64>,
    /// herald converted the file.
    pub converted: bool,
}

/// The format of `bytes`, from their magic numbers.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        return Some(Format::Wav);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Some(Format::M4a);
    }
    if bytes.starts_with(b"ID3")
        || (bytes.len() >= 2 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0)
    {
        return Some(Format::Mp3);
    }
    None
}

/// Why a sample is refused. Each message names the field (`clone.audio`) and the limit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SampleError {
    /// No bytes.
    #[error("clone.audio: must not be empty")]
    Empty,
    /// More than [`MAX_BYTES`].
    #[error("clone.audio: {0} bytes exceeds the limit of {MAX_BYTES} bytes (10 MB)")]
    TooLarge(usize),
    /// Not WAV, MP3 or M4A.
    #[error("clone.audio: not a WAV, MP3 or M4A file (the only formats upstream takes)")]
    UnknownFormat,
    /// herald's decoders refused it.
    #[error("clone.audio: cannot decode the {format:?} file: {source}")]
    Undecodable {
        /// The sniffed format.
        format: Format,
        /// What the decoder said.
        #[source]
        source: AudioError,
    },
    /// Its rate or channel count changes midway.
    #[error("clone.audio: the file changes sample rate midway")]
    RateChanges,
    /// It decodes to nothing.
    #[error("clone.audio: the file holds no audio")]
    NoAudio,
    /// Longer than [`MAX_SECONDS`].
    #[error(
        "clone.audio: longer than the limit of {MAX_SECONDS} s (10–20 s of clear speech is best)"
    )]
    TooLong,
    /// Shorter than the surface's minimum.
    #[error(
        "clone.audio: {seconds:.1} s is shorter than the minimum of {min} s for this model \
         (10–20 s of clear speech is best)"
    )]
    TooShort {
        /// Its duration.
        seconds: f64,
        /// The minimum.
        min: f64,
    },
    /// Its rate is below the surface's minimum.
    #[error("clone.audio: sample rate {rate} Hz is below the minimum of {min} Hz for this model")]
    RateTooLow {
        /// Its rate, Hz.
        rate: u32,
        /// The minimum, Hz.
        min: u32,
    },
}

/// True when `bytes` is a WAV file of 16-bit integer PCM (what every surface takes as is).
fn is_s16_wav(bytes: &[u8]) -> bool {
    matches!(wav::s16_header(bytes), Ok(Some(_)))
}

/// Check `bytes` against the limits and `rules`; convert WAV when the surface needs it.
/// Errors name the field (`clone.audio`) and the limit. CPU-bound: call on a blocking thread.
pub fn prepare(bytes: &[u8], rules: Rules) -> Result<Prepared, SampleError> {
    if bytes.is_empty() {
        return Err(SampleError::Empty);
    }
    if bytes.len() > MAX_BYTES {
        return Err(SampleError::TooLarge(bytes.len()));
    }
    let Some(format) = sniff(bytes) else {
        return Err(SampleError::UnknownFormat);
    };
    if format == Format::M4a {
        return Ok(Prepared {
            bytes: bytes.to_vec(),
            format,
            seconds: None,
            converted: false,
        });
    }
    let encoding = match format {
        Format::Wav => InputEncoding::Wav,
        _ => InputEncoding::Mp3,
    };
    let undecodable = |source| SampleError::Undecodable { format, source };
    let mut decoder = open_decoder(encoding, Cursor::new(bytes.to_vec())).map_err(undecodable)?;
    let mut rate = 0u32;
    let mut channels = 1u16;
    let mut frames = 0usize;
    let mut samples: Vec<f32> = Vec::new();
    let keep = format == Format::Wav;
    loop {
        match decoder.next_buffer() {
            Ok(Some(buf)) => {
                if rate == 0 {
                    rate = buf.spec.sample_rate;
                    channels = buf.spec.channels;
                } else if buf.spec.sample_rate != rate || buf.spec.channels != channels {
                    return Err(SampleError::RateChanges);
                }
                frames += buf.frames();
                if frames as f64 / f64::from(rate.max(1)) > MAX_SECONDS + 1.0 {
                    break;
                }
                if keep {
                    samples.extend_from_slice(&buf.samples);
                }
            }
            Ok(None) => break,
            Err(e) => return Err(undecodable(e)),
        }
    }
    if rate == 0 {
        return Err(SampleError::NoAudio);
    }
    let seconds = frames as f64 / f64::from(rate);
    if seconds > MAX_SECONDS {
        return Err(SampleError::TooLong);
    }
    if seconds < rules.min_seconds {
        return Err(SampleError::TooShort {
            seconds,
            min: rules.min_seconds,
        });
    }
    if rate < rules.min_rate {
        return Err(SampleError::RateTooLow {
            rate,
            min: rules.min_rate,
        });
    }
    if format == Format::Mp3 {
        return Ok(Prepared {
            bytes: bytes.to_vec(),
            format,
            seconds: Some(seconds),
            converted: false,
        });
    }
    let needs_mono = rules.mono && channels > 1;
    if is_s16_wav(bytes) && !needs_mono {
        return Ok(Prepared {
            bytes: bytes.to_vec(),
            format,
            seconds: Some(seconds),
            converted: false,
        });
    }
    let out_channels = if needs_mono { 1 } else { channels };
    let ch = usize::from(channels);
    let pcm: Vec<i16> = if needs_mono {
        samples
            .chunks_exact(ch)
            .map(|f| f32_to_i16(f.iter().sum::<f32>() / ch as f32))
            .collect()
    } else {
        samples.iter().map(|s| f32_to_i16(*s)).collect()
    };
    Ok(Prepared {
        bytes: wav16(rate, out_channels, &pcm),
        format,
        seconds: Some(seconds),
        converted: true,
    })
}

/// A complete 16-bit PCM WAV file (exact sizes in the header).
pub fn wav16(rate: u32, channels: u16, pcm: &[i16]) -> Vec<u8> {
    let spec = AudioSpec {
        sample_rate: rate,
        channels,
    };
    let mut out = Vec::with_capacity(wav::HEADER_LEN + pcm.len() * 2);
    out.extend_from_slice(&wav::header(spec, (pcm.len() * 2) as u64));
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, channels: u16, seconds: f64) -> Vec<i16> {
        let frames = (f64::from(rate) * seconds) as usize;
        (0..frames * usize::from(channels))
            .map(|i| {
                let t = (i / usize::from(channels)) as f64 / f64::from(rate);
                ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16
            })
            .collect()
    }

    const COSY: Rules = Rules {
        min_rate: 16_000,
        mono: false,
        min_seconds: MIN_SECONDS_ENROLLMENT,
    };
    const QWEN: Rules = Rules {
        min_rate: 24_000,
        mono: true,
        min_seconds: MIN_SECONDS_QWEN,
    };

    #[test]
    fn limits_name_the_field_and_the_limit() {
        let short = wav16(16_000, 1, &tone(16_000, 1, 1.0));
        let e = prepare(&short, COSY).unwrap_err().to_string();
        assert!(
            e.contains("clone.audio") && e.contains("minimum of 5 s"),
            "{e}"
        );
        let long = wav16(16_000, 1, &tone(16_000, 1, 61.5));
        let e = prepare(&long, COSY).unwrap_err().to_string();
        assert!(e.contains("limit of 60 s"), "{e}");
        let low = wav16(8_000, 1, &tone(8_000, 1, 5.0));
        let e = prepare(&low, COSY).unwrap_err().to_string();
        assert!(e.contains("8000 Hz") && e.contains("16000 Hz"), "{e}");
        let e = prepare(b"OggS not audio we take", COSY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a WAV, MP3 or M4A"), "{e}");
        let mut big = b"RIFF\0\0\0\0WAVE".to_vec();
        big.resize(MAX_BYTES + 1, 0);
        let e = prepare(&big, COSY).unwrap_err().to_string();
        assert!(e.contains("10000000 bytes"), "{e}");
        let ok = wav16(16_000, 1, &tone(16_000, 1, 5.0));
        let p = prepare(&ok, COSY).unwrap();
        assert!(!p.converted);
        assert_eq!(p.bytes, ok);
        assert!((p.seconds.unwrap() - 5.0).abs() < 0.01);
    }

    #[test]
    fn wav_that_is_not_16_bit_is_converted() {
        let pcm = tone(16_000, 1, 5.0);
        let mut w = wav16(16_000, 1, &pcm);
        // Rewrite as 24-bit: same header layout, 3 bytes per sample.
        let data: Vec<u8> = pcm
            .iter()
            .flat_map(|s| {
                let v = i32::from(*s) << 8;
                [v as u8, (v >> 8) as u8, (v >> 16) as u8]
            })
            .collect();
        w.truncate(44);
        w[22..24].copy_from_slice(&1u16.to_le_bytes());
        w[28..32].copy_from_slice(&(16_000u32 * 3).to_le_bytes());
        w[32..34].copy_from_slice(&3u16.to_le_bytes());
        w[34..36].copy_from_slice(&24u16.to_le_bytes());
        w[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
        w[4..8].copy_from_slice(&(36 + data.len() as u32).to_le_bytes());
        w.extend_from_slice(&data);
        let p = prepare(&w, COSY).unwrap();
        assert!(p.converted);
        assert_eq!(
            wav::s16_header(&p.bytes).unwrap(),
            Some((
                AudioSpec {
                    sample_rate: 16_000,
                    channels: 1
                },
                44
            ))
        );
        let back: Vec<i16> = p.bytes[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(back.len(), pcm.len());
        assert!(back.iter().zip(&pcm).all(|(a, b)| (a - b).abs() <= 1));
    }

    #[test]
    fn stereo_wav_is_mixed_down_for_mono_surfaces() {
        let stereo = wav16(24_000, 2, &tone(24_000, 2, 5.0));
        let p = prepare(&stereo, QWEN).unwrap();
        assert!(p.converted);
        assert_eq!(
            wav::s16_header(&p.bytes).unwrap(),
            Some((
                AudioSpec {
                    sample_rate: 24_000,
                    channels: 1
                },
                44
            ))
        );
        assert_eq!(p.bytes.len(), 44 + 24_000 * 5 * 2);
        let kept = prepare(&stereo, COSY).unwrap();
        assert!(!kept.converted, "CosyVoice takes stereo (first channel)");
        let e = prepare(&wav16(16_000, 1, &tone(16_000, 1, 4.0)), QWEN)
            .unwrap_err()
            .to_string();
        assert!(e.contains("24000 Hz"), "{e}");
    }
}
