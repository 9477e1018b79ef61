//! MP3 output: constant-bitrate MPEG audio layer III from LAME (3.100, LGPL, built from the
//! source bundled in `mp3lame-sys` and linked statically), encoded as PCM arrives.
//!
//! It owns the MPEG rate and bitrate tables herald accepts ([`SAMPLE_RATES`], [`bitrates`]),
//! LAME's settings (CBR, output rate forced to the input rate, no Xing/LAME tag because that
//! needs a seek back to the start) and the final flush (`FlushGap`). LAME holds back about
//! one frame, so the first bytes come after ~40 ms of input. It must not resample or remix.

use std::num::NonZeroU32;

use mp3lame_encoder::{Bitrate, Builder, FlushGap, InterleavedPcm, Mode, MonoPcm, Quality};

use super::{AudioError, AudioSpec, Encoder, PcmBuffer, check_spec};

/// The MPEG-1, 2 and 2.5 sample rates, in Hz: the only rates MP3 can carry.
pub const SAMPLE_RATES: [u32; 9] = [
    8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
];

/// Every CBR bitrate herald offers (kbps), before the per-rate limits of [`bitrates`].
const ALL_KBPS: [u32; 16] = [
    8, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
];

/// The CBR bitrates (bits per second) MP3 allows at `sample_rate`: 32..=320 kbps for MPEG-1
/// (32, 44.1, 48 kHz), 8..=160 kbps for MPEG-2 (16, 22.05, 24 kHz), 8..=64 kbps for MPEG-2.5
/// (8, 11.025, 12 kHz).
pub fn bitrates(sample_rate: u32) -> Vec<u32> {
    let (lo, hi) = match sample_rate {
        32_000.. => (32, 320),
        16_000.. => (8, 160),
        _ => (8, 64),
    };
    ALL_KBPS
        .iter()
        .filter(|&&k| (lo..=hi).contains(&k))
        .map(|k| k * 1_000)
        .collect()
}

/// The default bitrate for `spec`: 64 kbps mono, 128 kbps stereo, capped at the highest
/// bitrate the rate allows.
pub fn default_bitrate(spec: AudioSpec) -> u32 {
    let wanted = if spec.channels > 1 { 128_000 } else { 64_000 };
    let max = bitrates(spec.sample_rate).last().copied().unwrap_or(wanted);
    wanted.min(max)
}

fn lame_bitrate(bps: u32) -> Option<Bitrate> {
    Some(match bps / 1_000 {
        8 => Bitrate::Kbps8,
        16 => Bitrate::Kbps16,
        24 => Bitrate::Kbps24,
        32 => Bitrate::Kbps32,
        40 => Bitrate::Kbps40,
        48 => Bitrate::Kbps48,
        64 => Bitrate::Kbps64,
        80 => Bitrate::Kbps80,
        96 => Bitrate::Kbps96,
        112 => Bitrate::Kbps112,
        128 => Bitrate::Kbps128,
        160 => Bitrate::Kbps160,
        192 => Bitrate::Kbps192,
        224 => Bitrate::Kbps224,
        256 => Bitrate::Kbps256,
        320 => Bitrate::Kbps320,
        _ => return None,
    })
}

fn error(reason: impl std::fmt::Display) -> AudioError {
    AudioError::Encoder {
        format: "mp3",
        reason: reason.to_string(),
    }
}

/// A streaming MP3 encoder for one response.
pub struct Mp3Encoder {
    spec: AudioSpec,
    lame: mp3lame_encoder::Encoder,
}

impl Mp3Encoder {
    /// An encoder for `spec` (an MPEG rate, 1 or 2 channels) at `bitrate_bps` (one of
    /// [`bitrates`] for the rate).
    pub fn new(spec: AudioSpec, bitrate_bps: u32) -> Result<Self, AudioError> {
        if !SAMPLE_RATES.contains(&spec.sample_rate) || spec.channels > 2 {
            return Err(error(format!("{spec:?} is not an MP3 format")));
        }
        if !bitrates(spec.sample_rate).contains(&bitrate_bps) {
            return Err(error(format!(
                "{bitrate_bps} bps is not a bitrate for {} Hz",
                spec.sample_rate
            )));
        }
        let brate = lame_bitrate(bitrate_bps).ok_or_else(|| error("unknown bitrate"))?;
        let mut b = Builder::new().ok_or_else(|| error("lame_init failed"))?;
        let channels = u8::try_from(spec.channels).map_err(error)?;
        b.set_num_channels(channels).map_err(error)?;
        b.set_sample_rate(spec.sample_rate).map_err(error)?;
        // Without this LAME may pick a lower output rate for low bitrates.
        b.set_output_sample_rate(NonZeroU32::new(spec.sample_rate))
            .map_err(error)?;
        b.set_brate(brate).map_err(error)?;
        b.set_mode(if channels == 1 {
            Mode::Mono
        } else {
            Mode::JointStereo
        })
        .map_err(error)?;
        b.set_quality(Quality::Good).map_err(error)?;
        b.set_vbr_mode(mp3lame_encoder::VbrMode::Off)
            .map_err(error)?;
        // The Xing/LAME tag would need a seek back to the first frame: not in a stream.
        b.set_to_write_vbr_tag(false).map_err(error)?;
        let lame = b.build().map_err(error)?;
        Ok(Self { spec, lame })
    }
}

impl Encoder for Mp3Encoder {
    fn encode(&mut self, pcm: &PcmBuffer, out: &mut Vec<u8>) -> Result<(), AudioError> {
        check_spec(self.spec, pcm)?;
        out.reserve(mp3lame_encoder::max_required_buffer_size(pcm.frames()));
        // The f32 samples go in as they are (`lame_encode_buffer_ieee_float`, ±1.0 full
        // scale): LAME converts every input to its own float buffer anyway, so an s16 copy
        // here would only cost a pass and a rounding.
        if self.spec.channels == 1 {
            self.lame
                .encode_to_vec(MonoPcm(&pcm.samples[..]), out)
                .map_err(error)?;
        } else {
            self.lame
                .encode_to_vec(InterleavedPcm(&pcm.samples[..]), out)
                .map_err(error)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), AudioError> {
        out.reserve(mp3lame_encoder::max_required_buffer_size(0));
        self.lame.flush_to_vec::<FlushGap>(out).map_err(error)?;
        Ok(())
    }
}
