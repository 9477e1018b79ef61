//! Raw PCM: [`PcmDecoder`] for headerless s16le with a spec known in advance, and the
//! `PcmStream` that reads interleaved samples of any [`SampleFormat`] (also the body of a WAV
//! stream).
//!
//! It must not parse headers (a WAV header is [`crate::audio::wav`]'s job) or hold whole frames
//! back: every push that completes a frame can become a buffer.

use super::{Pending, PushDecoder};
use crate::audio::{AudioError, AudioSpec, PcmBuffer, SampleFormat};

/// Appends the samples of `bytes` (a whole number of `format` samples) to `out` as `f32`.
///
/// Integers are scaled by 2^-(bits-1), so −full scale maps to exactly −1.0 and an s16 value
/// `v` to `v / 32768` (the encoder inverts this exactly). Non-finite floats become 0.0:
/// one NaN would otherwise spread through a whole resampler FFT block.
fn convert(format: SampleFormat, bytes: &[u8], out: &mut Vec<f32>) {
    let n = format.bytes();
    match format {
        SampleFormat::U8 => out.extend(bytes.iter().map(|&b| (f32::from(b) - 128.0) / 128.0)),
        SampleFormat::S16 => out.extend(
            bytes
                .chunks_exact(n)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32_768.0),
        ),
        SampleFormat::S24 => out.extend(bytes.chunks_exact(n).map(|c| {
            // Put the 24 bits at the top of an i32, so the sign comes for free.
            let v = i32::from_le_bytes([0, c[0], c[1], c[2]]);
            (f64::from(v) / 2_147_483_648.0) as f32
        })),
        SampleFormat::S32 => out.extend(bytes.chunks_exact(n).map(|c| {
            let v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (f64::from(v) / 2_147_483_648.0) as f32
        })),
        SampleFormat::F32 => out.extend(bytes.chunks_exact(n).map(|c| {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            if v.is_finite() { v } else { 0.0 }
        })),
        SampleFormat::F64 => out.extend(bytes.chunks_exact(n).map(|c| {
            let v = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            if v.is_finite() { v as f32 } else { 0.0 }
        })),
    }
}

// === impl PcmStream ===

/// Headerless interleaved PCM: the body of both [`PcmDecoder`] and [`super::WavDecoder`].
///
/// Keeps the bytes of an incomplete frame (an odd byte, a partial stereo frame) for the next
/// push, and turns what completes whole frames into buffers.
#[derive(Debug)]
pub(super) struct PcmStream {
    format: SampleFormat,
    spec: AudioSpec,
    /// `format.bytes() * channels`.
    frame_bytes: usize,
    pending: Pending,
    finished: bool,
    /// "pcm" or "wav", for logs.
    label: &'static str,
}

impl PcmStream {
    pub(super) fn new(format: SampleFormat, spec: AudioSpec, label: &'static str) -> Self {
        Self {
            format,
            spec,
            frame_bytes: format.bytes() * usize::from(spec.channels),
            pending: Pending::default(),
            finished: false,
            label,
        }
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.pending.push(bytes);
    }

    pub(super) fn finish(&mut self) {
        self.finished = true;
    }

    pub(super) fn decode(&mut self, max_frames: usize) -> Result<Option<PcmBuffer>, AudioError> {
        let frames = (self.pending.len() / self.frame_bytes).min(max_frames.max(1));
        if frames > 0 {
            let whole = frames * self.frame_bytes;
            let mut samples = Vec::with_capacity(whole / self.format.bytes());
            convert(self.format, &self.pending.bytes()[..whole], &mut samples);
            self.pending.consume(whole);
            return Ok(Some(PcmBuffer::new(self.spec, samples)));
        }
        if self.finished && self.pending.len() > 0 {
            tracing::warn!(
                format = self.label,
                bytes = self.pending.len(),
                "audio input ended inside a frame; dropping the partial frame"
            );
            self.pending.clear();
        }
        Ok(None)
    }
}

// === impl PcmDecoder ===

/// Raw signed 16-bit little-endian PCM with a spec known in advance (no header).
#[derive(Debug)]
pub struct PcmDecoder {
    stream: PcmStream,
}

impl PcmDecoder {
    /// A decoder of s16le `spec` audio.
    pub fn new(spec: AudioSpec) -> Self {
        Self {
            stream: PcmStream::new(SampleFormat::S16, spec, "pcm"),
        }
    }
}

impl PushDecoder for PcmDecoder {
    fn push(&mut self, bytes: &[u8]) {
        self.stream.push(bytes);
    }

    fn finish(&mut self) {
        self.stream.finish();
    }

    fn decode(&mut self, max_frames: usize) -> Result<Option<PcmBuffer>, AudioError> {
        self.stream.decode(max_frames)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use crate::audio::{
        InputEncoding,
        decode::open_decoder,
        test_util::{channel_of, drain, s16_bytes, s16_signal, spec, split_at_sizes},
    };

    #[test]
    fn pcm_with_odd_split_points_decodes_every_sample() {
        let sp = spec(16_000, 2);
        let signal = s16_signal(2 * 5_000);
        let bytes = s16_bytes(&signal);
        // Splits inside samples and inside frames.
        let chunks = split_at_sizes(&bytes, &[1, 3, 997, 2, 5, 1501, 7]);
        let n_chunks = chunks.len();
        let dec = open_decoder(InputEncoding::Pcm16Le(sp), channel_of(chunks)).expect("opens");
        let (buffers, samples) = drain(dec);
        assert!(buffers.iter().all(|b| b.spec == sp));
        assert_eq!(samples.len(), signal.len());
        for (got, want) in samples.iter().zip(&signal) {
            assert_eq!(*got, f32::from(*want) / 32_768.0);
        }
        // Emitted as the bytes arrived, not in big blocks: roughly one buffer per chunk that
        // completes a frame.
        assert!(buffers.len() > n_chunks / 3, "{} buffers", buffers.len());
    }

    #[test]
    fn pcm_trailing_partial_frame_is_dropped() {
        let sp = spec(8_000, 1);
        let mut bytes = s16_bytes(&[100, -100, 7]);
        bytes.push(0x12);
        let (_, samples) =
            drain(open_decoder(InputEncoding::Pcm16Le(sp), Cursor::new(bytes)).expect("opens"));
        assert_eq!(samples.len(), 3);
    }

    #[test]
    fn pcm_empty_input_is_a_clean_end() {
        let dec = open_decoder(
            InputEncoding::Pcm16Le(spec(8_000, 1)),
            Cursor::new(Vec::new()),
        );
        let (buffers, _) = drain(dec.expect("opens"));
        assert!(buffers.is_empty());
    }
}
