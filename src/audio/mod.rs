//! The audio vocabulary shared by every layer, and the synchronous pipeline stages.
//!
//! Everything in `audio` is synchronous and CPU-bound: it runs on a blocking thread, never on a
//! tokio worker (see `crate::pipeline`). Audio travels between stages as [`PcmBuffer`]s of
//! interleaved `f32` samples. Nothing here knows about gRPC, engines or configuration.
//!
//! The chain for one request is: [`decode`] (bytes from an engine → PCM at the engine's rate)
//! → [`join`] (fades where an engine's pieces meet; raw PCM streams only) → [`resample`]
//! → [`remix`] → [`gain`] → [`encode`] (PCM → the client's encoding) → [`chunk`] (encoded
//! bytes → `chunk_ms`-sized pieces). [`wav`] reads and writes RIFF/WAVE headers for every
//! layer that meets one; [`encode::negotiate`] turns what a client asks for into an output
//! format.

pub mod chunk;
pub mod decode;
pub mod encode;
pub mod gain;
pub mod join;
pub mod remix;
pub mod resample;
#[cfg(test)]
pub(crate) mod test_util;
pub mod wav;

use std::io::{self, Read};

/// Lowest output sample rate herald serves, in Hz.
pub const MIN_SAMPLE_RATE: u32 = 8_000;
/// Highest output sample rate herald serves, in Hz.
pub const MAX_SAMPLE_RATE: u32 = 48_000;
/// Highest channel count herald serves.
pub const MAX_CHANNELS: u16 = 2;
/// Input (engine) sample rates herald accepts, in Hz. Outside this, a stream is malformed: an
/// absurd rate would make the resampler allocate without bound.
pub const INPUT_SAMPLE_RATES: std::ops::RangeInclusive<u32> = 1_000..=384_000;
/// Most input channels herald accepts.
pub const MAX_INPUT_CHANNELS: u16 = 8;

/// Sample rate and channel count of a PCM stream.
///
/// Invariant (checked by [`AudioSpec::new`]): `sample_rate > 0` and `channels > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AudioSpec {
    /// Frames per second.
    pub sample_rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
}

impl AudioSpec {
    /// `Ok` when an engine's stream may have this spec ([`INPUT_SAMPLE_RATES`],
    /// [`MAX_INPUT_CHANNELS`]); otherwise a `Malformed` error for `format`.
    pub fn check_input(self, format: &'static str) -> Result<Self, AudioError> {
        if INPUT_SAMPLE_RATES.contains(&self.sample_rate)
            && (1..=MAX_INPUT_CHANNELS).contains(&self.channels)
        {
            Ok(self)
        } else {
            Err(AudioError::Malformed {
                format,
                reason: format!(
                    "{} Hz with {} channels is outside {}..={} Hz and 1..={MAX_INPUT_CHANNELS} channels",
                    self.sample_rate,
                    self.channels,
                    INPUT_SAMPLE_RATES.start(),
                    INPUT_SAMPLE_RATES.end()
                ),
            })
        }
    }

    /// A spec, or `None` when the rate or the channel count is zero.
    pub fn new(sample_rate: u32, channels: u16) -> Option<Self> {
        (sample_rate > 0 && channels > 0).then_some(Self {
            sample_rate,
            channels,
        })
    }
}

/// Interleaved `f32` PCM in [-1.0, 1.0].
///
/// Invariant: `samples.len() % spec.channels == 0` (whole frames only).
#[derive(Clone, Debug, PartialEq)]
pub struct PcmBuffer {
    /// Rate and channel layout of `samples`.
    pub spec: AudioSpec,
    /// Interleaved samples, `frames() * channels` of them.
    pub samples: Vec<f32>,
}

impl PcmBuffer {
    /// A buffer over `samples`, which must hold whole frames.
    pub fn new(spec: AudioSpec, samples: Vec<f32>) -> Self {
        debug_assert_eq!(samples.len() % usize::from(spec.channels), 0);
        Self { spec, samples }
    }

    /// Number of frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.spec.channels)
    }

    /// True when the buffer holds no frames.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// The little-endian, interleaved sample layouts herald reads (raw PCM, WAV bodies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleFormat {
    /// Unsigned 8-bit, 128 = silence.
    U8,
    /// Signed 16-bit.
    S16,
    /// Signed 24-bit, packed in 3 bytes.
    S24,
    /// Signed 32-bit.
    S32,
    /// IEEE float, 32-bit.
    F32,
    /// IEEE float, 64-bit.
    F64,
}

impl SampleFormat {
    /// Bytes per sample of one channel.
    pub fn bytes(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::S16 => 2,
            Self::S24 => 3,
            Self::S32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }
}

/// Reads `reader` into `buf`, retrying on `Interrupted`.
pub(crate) fn read_some<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, AudioError> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(AudioError::Io(e)),
        }
    }
}

/// What an engine sends: the container/encoding of its byte stream (input side).
///
/// Output encodings are [`OutputEncoding`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputEncoding {
    /// Raw signed 16-bit little-endian PCM with a known spec; no header.
    Pcm16Le(AudioSpec),
    /// RIFF/WAVE. Its header is parsed by herald; its size fields are never trusted.
    Wav,
    /// MPEG audio (MP3), decoded by symphonia.
    Mp3,
}

/// The encodings herald can produce for a client (mirrors `herald.v1.AudioFormat.Encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputEncoding {
    /// Raw s16le, interleaved.
    PcmS16Le,
    /// Raw f32le, interleaved.
    PcmF32Le,
    /// RIFF/WAVE, 16-bit PCM, one header with "unknown" (0xFFFFFFFF) sizes.
    Wav,
    /// G.711 µ-law, 8 bits per sample.
    Mulaw,
    /// G.711 A-law, 8 bits per sample.
    Alaw,
    /// MPEG audio layer III, constant bitrate (LAME), no Xing/LAME tag.
    Mp3 {
        /// Bitrate in bits per second (one of [`encode::mp3::bitrates`] for the rate).
        bitrate_bps: u32,
    },
    /// Opus in Ogg (libopus), 20 ms packets.
    OggOpus {
        /// Target bitrate in bits per second (within [`encode::opus::BITRATE_RANGE`]).
        bitrate_bps: u32,
    },
    /// FLAC with STREAMINFO up front and "unknown" total samples.
    Flac {
        /// Bits per sample: 16 or 24.
        bits_per_sample: u8,
    },
}

impl OutputEncoding {
    /// Bytes per sample of one channel, or `None` for the compressed encodings (MP3, Opus,
    /// FLAC), whose bytes per frame vary.
    pub fn bytes_per_sample(self) -> Option<usize> {
        match self {
            Self::PcmS16Le | Self::Wav => Some(2),
            Self::PcmF32Le => Some(4),
            Self::Mulaw | Self::Alaw => Some(1),
            Self::Mp3 { .. } | Self::OggOpus { .. } | Self::Flac { .. } => None,
        }
    }
}

/// The full output format of one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputFormat {
    /// Encoding of the bytes sent.
    pub encoding: OutputEncoding,
    /// Rate and channels of the audio sent.
    pub spec: AudioSpec,
}

/// Errors of the audio layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The input bytes are not valid audio of the announced encoding.
    #[error("malformed {format} audio: {reason}")]
    Malformed {
        /// "wav", "pcm", "mp3", ...
        format: &'static str,
        /// What is wrong, for humans.
        reason: String,
    },
    /// The input is valid but uses a feature herald does not decode.
    #[error("unsupported {format} audio: {reason}")]
    Unsupported {
        /// "wav", "pcm", "mp3", ...
        format: &'static str,
        /// What is unsupported.
        reason: String,
    },
    /// symphonia failed.
    #[error("audio decoder failed")]
    Symphonia(#[source] symphonia::core::errors::Error),
    /// The resampler's FFT refused a buffer (an internal bug, never caused by input).
    #[error("resampling failed: {reason}")]
    Resampler {
        /// What went wrong.
        reason: String,
    },
    /// Reading input bytes failed.
    #[error("reading audio input failed")]
    Io(#[source] std::io::Error),
    /// A stage received audio in a spec other than the one it was built for (a pipeline bug, or
    /// an input whose rate or channel count changed mid-stream).
    #[error("{stage} expects {expected:?} audio, got {actual:?}")]
    SpecMismatch {
        /// "resampler", "encoder", ...
        stage: &'static str,
        /// The spec the stage was built for.
        expected: AudioSpec,
        /// The spec of the buffer it received.
        actual: AudioSpec,
    },
    /// An output encoder (LAME, libopus, flacenc) refused its settings or failed.
    #[error("{format} encoder failed: {reason}")]
    Encoder {
        /// "mp3", "opus", "flac".
        format: &'static str,
        /// What went wrong, for humans.
        reason: String,
    },
}

/// A synchronous PCM transform in the pipeline (resample, remix, gain).
pub trait Stage: Send {
    /// Transform `input`, appending zero or more buffers to `out`.
    fn process(&mut self, input: PcmBuffer, out: &mut Vec<PcmBuffer>) -> Result<(), AudioError>;

    /// Emit anything held back (a resampler keeps a partial chunk). Called once, at the end.
    fn flush(&mut self, _out: &mut Vec<PcmBuffer>) -> Result<(), AudioError> {
        Ok(())
    }
}
