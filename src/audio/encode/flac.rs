//! FLAC output: a streamable FLAC (`fLaC`, one STREAMINFO block with total samples 0 =
//! "unknown" and no MD5, then fixed-size frames), encoded block by block with flacenc as PCM
//! arrives.
//!
//! It owns the FLAC header, the float → 16/24-bit conversion and the block buffering: samples
//! wait until a block is full (at most [`block_size`] frames, about 100 ms), and
//! [`Encoder::finish`] encodes the last, shorter block. It must not resample or remix.
//! [`patch_total_samples`] lets a client that wrote the stream to a file fill in the length.

use std::io::{self, Read, Seek, SeekFrom, Write};

use flacenc::{
    component::{BitRepr, StreamInfo},
    config,
    error::{Verified, Verify},
    source::{Fill, FrameBuf},
};

use super::{AudioError, AudioSpec, Encoder, PcmBuffer, check_spec};

/// The LPC order flacenc searches up to.
const LPC_ORDER: usize = 8;

/// Bit depths herald writes.
pub const BITS_PER_SAMPLE: [u8; 2] = [16, 24];

/// Frames per FLAC block at `sample_rate`: about 100 ms (1024 below 16 kHz, 2048 below 32 kHz,
/// 4096 above), which keeps blocks in the FLAC streamable subset.
pub fn block_size(sample_rate: u32) -> usize {
    match sample_rate {
        0..16_000 => 1_024,
        16_000..32_000 => 2_048,
        _ => 4_096,
    }
}

/// Where STREAMINFO's packed rate / channels / bits / total samples (8 bytes, big-endian)
/// start in a FLAC stream this module wrote: after `fLaC`, the block header and four 16/24-bit
/// size fields.
const PACKED_OFFSET: u64 = 18;

/// Writes `total_samples` (frames per channel; 36 bits) into the STREAMINFO of the FLAC stream
/// at the start of `file` (as [`FlacEncoder`] wrote it, with total samples 0 = unknown), then
/// seeks back to the end. The MD5 stays 0 (unknown), which decoders accept. An `InvalidData`
/// error when the file does not start with `fLaC` and a STREAMINFO block, or the count does
/// not fit.
pub fn patch_total_samples<F: Read + Write + Seek>(
    file: &mut F,
    total_samples: u64,
) -> io::Result<()> {
    if total_samples >= 1 << 36 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{total_samples} samples do not fit FLAC's 36-bit count"),
        ));
    }
    let mut head = [0u8; 26];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut head)?;
    if &head[..4] != b"fLaC" || head[4] & 0x7f != 0 || head[5..8] != [0, 0, 34] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a FLAC stream starting with STREAMINFO",
        ));
    }
    let mut packed = [0u8; 8];
    packed.copy_from_slice(&head[18..26]);
    let packed = (u64::from_be_bytes(packed) & !((1 << 36) - 1)) | total_samples;
    file.seek(SeekFrom::Start(PACKED_OFFSET))?;
    file.write_all(&packed.to_be_bytes())?;
    file.seek(SeekFrom::End(0))?;
    Ok(())
}

/// A streaming FLAC encoder for one response.
pub struct FlacEncoder {
    spec: AudioSpec,
    bits: u8,
    config: Verified<config::Encoder>,
    info: StreamInfo,
    block: usize,
    /// Interleaved integer samples not yet encoded (less than one block after each call).
    pending: Vec<i32>,
    framebuf: FrameBuf,
    frame_number: usize,
    header_written: bool,
}

fn error(reason: impl std::fmt::Display) -> AudioError {
    AudioError::Encoder {
        format: "flac",
        reason: reason.to_string(),
    }
}

impl FlacEncoder {
    /// An encoder for `spec` at `bits_per_sample` (16 or 24).
    pub fn new(spec: AudioSpec, bits_per_sample: u8) -> Result<Self, AudioError> {
        if !BITS_PER_SAMPLE.contains(&bits_per_sample) {
            return Err(error(format!(
                "{bits_per_sample} bits per sample (16 or 24 only)"
            )));
        }
        let channels = usize::from(spec.channels);
        let rate = usize::try_from(spec.sample_rate).map_err(error)?;
        let block = block_size(spec.sample_rate);
        let mut cfg = config::Encoder::default();
        cfg.block_size = block;
        // LPC order 8, as ffmpeg's default (compression level 5), not flacenc's 10: the
        // autocorrelation per block costs in proportion to the order, and flacenc's
        // f32 `mul_add` there is a libm call on baseline x86-64 (about half the encoder's time
        // in a profile, docs/benchmarks.md).
        cfg.subframe_coding.qlpc.lpc_order = LPC_ORDER;
        let config = cfg.into_verified().map_err(|(_, e)| error(e))?;
        let info = StreamInfo::new(rate, channels, usize::from(bits_per_sample)).map_err(error)?;
        let framebuf = FrameBuf::with_size(channels, block).map_err(error)?;
        Ok(Self {
            spec,
            bits: bits_per_sample,
            config,
            info,
            block,
            pending: Vec::with_capacity(block * channels),
            framebuf,
            frame_number: 0,
            header_written: false,
        })
    }

    /// `fLaC` and the STREAMINFO block (the only, so last, metadata block): fixed block size,
    /// frame sizes, total samples and MD5 all 0 = unknown.
    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(42);
        h.extend_from_slice(b"fLaC");
        h.push(0x80); // last metadata block, type 0 = STREAMINFO
        h.extend_from_slice(&[0, 0, 34]);
        let block = u16::try_from(self.block).unwrap_or(u16::MAX).to_be_bytes();
        h.extend_from_slice(&block); // min block size
        h.extend_from_slice(&block); // max block size
        h.extend_from_slice(&[0; 6]); // min and max frame size: unknown
        // 20 bits rate, 3 bits channels - 1, 5 bits bits per sample - 1, 36 bits total samples.
        let packed: u64 = (u64::from(self.spec.sample_rate) << 44)
            | (u64::from(self.spec.channels - 1) << 41)
            | (u64::from(self.bits - 1) << 36);
        h.extend_from_slice(&packed.to_be_bytes());
        h.extend_from_slice(&[0; 16]); // MD5: unknown
        h
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(&self.header());
            self.header_written = true;
        }
    }

    /// Encodes the first `frames` pending frames as one FLAC frame.
    fn encode_block(&mut self, frames: usize, out: &mut Vec<u8>) -> Result<(), AudioError> {
        let channels = usize::from(self.spec.channels);
        let n = frames * channels;
        if self.framebuf.size() != frames {
            self.framebuf.resize(frames);
        }
        self.framebuf
            .fill_interleaved(&self.pending[..n])
            .map_err(error)?;
        let frame = flacenc::encode_fixed_size_frame(
            &self.config,
            &self.framebuf,
            self.frame_number,
            &self.info,
        )
        .map_err(error)?;
        let mut sink = flacenc::bitsink::ByteSink::with_capacity(frame.count_bits());
        frame.write(&mut sink).map_err(error)?;
        out.extend_from_slice(sink.as_slice());
        self.pending.drain(..n);
        self.frame_number += 1;
        Ok(())
    }
}

impl Encoder for FlacEncoder {
    fn encode(&mut self, pcm: &PcmBuffer, out: &mut Vec<u8>) -> Result<(), AudioError> {
        check_spec(self.spec, pcm)?;
        self.write_header(out);
        let scale = f64::from(1u32 << (self.bits - 1));
        let max = scale - 1.0;
        // Rounded half away from zero, as `f32::round` would: in f64, `v ± 0.5` is exact, so
        // truncation rounds (without a libm call per sample).
        self.pending.extend(pcm.samples.iter().map(|&x| {
            let v = f64::from(x.clamp(-1.0, 1.0)) * scale;
            (v + 0.5f64.copysign(v)).min(max) as i32
        }));
        let channels = usize::from(self.spec.channels);
        while self.pending.len() >= self.block * channels {
            self.encode_block(self.block, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), AudioError> {
        self.write_header(out);
        let frames = self.pending.len() / usize::from(self.spec.channels);
        if frames > 0 {
            self.encode_block(frames, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::audio::test_util::spec;

    /// The track's frame count as symphonia reads it from STREAMINFO (`None`: unknown).
    fn declared_frames(bytes: Vec<u8>) -> Option<u64> {
        use symphonia::core::{
            formats::{FormatOptions, TrackType, probe::Hint},
            io::MediaSourceStream,
            meta::MetadataOptions,
        };
        let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
        let mut hint = Hint::new();
        hint.with_extension("flac");
        let format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .expect("a FLAC stream symphonia reads");
        format
            .default_track(TrackType::Audio)
            .expect("a track")
            .num_frames
    }

    /// Every sample symphonia decodes from `bytes`, as integers of `bits`.
    fn decode_all(bytes: Vec<u8>, bits: u8) -> Vec<i32> {
        use symphonia::core::{
            codecs::audio::AudioDecoderOptions,
            formats::{FormatOptions, TrackType, probe::Hint},
            io::MediaSourceStream,
            meta::MetadataOptions,
        };
        let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
        let mut hint = Hint::new();
        hint.with_extension("flac");
        let mut format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .expect("a FLAC stream symphonia reads");
        let track = format.default_track(TrackType::Audio).expect("a track");
        let id = track.id;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .expect("audio params")
            .clone();
        let mut dec = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .expect("decoder");
        let mut out = Vec::new();
        let shift = 32 - u32::from(bits);
        while let Ok(Some(packet)) = format.next_packet() {
            if packet.track_id != id {
                continue;
            }
            let buf = dec.decode(&packet).expect("decodes");
            let mut v = vec![0i32; buf.samples_interleaved()];
            buf.copy_to_slice_interleaved(&mut v);
            // symphonia scales to 32 bits.
            out.extend(v.iter().map(|s| s >> shift));
        }
        out
    }

    #[test]
    fn decodes_bit_exact_at_16_and_24_bits() {
        for (bits, channels, rate) in [(16u8, 1u16, 24_000u32), (24, 2, 48_000), (16, 2, 8_000)] {
            let sp = spec(rate, channels);
            let frames = rate as usize + 777; // 1 s and a partial last block
            let mut noise = 0x2545_f491_u32;
            let samples: Vec<f32> = (0..frames * usize::from(channels))
                .map(|i| {
                    noise ^= noise << 13;
                    noise ^= noise >> 17;
                    noise ^= noise << 5;
                    let t = (i / usize::from(channels)) as f32 / rate as f32;
                    let hiss = (noise as f32 / u32::MAX as f32 - 0.5) * 0.02;
                    0.6 * (std::f32::consts::TAU * 220.0 * t).sin() + hiss
                })
                .chain(
                    [1.5, -1.5]
                        .into_iter()
                        .cycle()
                        .take(usize::from(channels) * 2),
                )
                .collect();
            let mut enc = FlacEncoder::new(sp, bits).unwrap();
            let mut out = Vec::new();
            for piece in samples.chunks(2_400 * usize::from(channels)) {
                enc.encode(&PcmBuffer::new(sp, piece.to_vec()), &mut out)
                    .unwrap();
            }
            enc.finish(&mut out).unwrap();
            let scale = f64::from(1u32 << (bits - 1));
            let expected: Vec<i32> = samples
                .iter()
                .map(|&x| {
                    (f64::from(x.clamp(-1.0, 1.0)) * scale)
                        .round()
                        .min(scale - 1.0) as i32
                })
                .collect();
            let got = decode_all(out.clone(), bits);
            assert_eq!(got.len(), expected.len(), "{bits} bits, {channels} ch");
            assert!(
                got == expected,
                "{bits} bits, {channels} ch: samples differ"
            );
            eprintln!(
                "{bits} bits, {channels} ch, {rate} Hz: {} bytes for {} bytes of PCM",
                out.len(),
                expected.len() * usize::from(bits) / 8
            );
        }
    }

    #[test]
    fn a_patched_stream_declares_its_length_and_keeps_its_format() {
        let sp = spec(22_050, 2);
        let mut enc = FlacEncoder::new(sp, 24).unwrap();
        let frames = 5_000;
        let pcm = PcmBuffer {
            spec: sp,
            samples: (0..frames * 2)
                .map(|i| ((i / 2) as f32 * 0.05).sin() * 0.5)
                .collect(),
        };
        let mut out = Vec::new();
        enc.encode(&pcm, &mut out).unwrap();
        enc.finish(&mut out).unwrap();
        assert_eq!(
            declared_frames(out.clone()),
            None,
            "streamed: unknown length"
        );
        let original = out.clone();

        let mut file = Cursor::new(out);
        patch_total_samples(&mut file, frames as u64).unwrap();
        assert_eq!(file.position(), original.len() as u64, "back at the end");
        let patched = file.into_inner();
        assert_eq!(declared_frames(patched.clone()), Some(frames as u64));
        // Only the 36-bit count changed: rate, channels and bits are as they were.
        let diff: Vec<usize> = (0..patched.len())
            .filter(|&i| patched[i] != original[i])
            .collect();
        assert!(diff.iter().all(|i| (21..26).contains(i)), "{diff:?}");
        assert_eq!(patched[21] & 0xf0, original[21] & 0xf0);

        assert!(patch_total_samples(&mut Cursor::new(b"RIFF....".repeat(8)), 1).is_err());
        assert!(patch_total_samples(&mut Cursor::new(patched), 1 << 36).is_err());
    }
}
