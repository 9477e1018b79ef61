//! Ogg Opus output (RFC 7845): libopus (bundled build, constrained VBR) in 20 ms packets,
//! framed in Ogg pages by the `ogg` crate, one page per [`Encoder::encode`] call holding every
//! packet that call completed, so every packet leaves as soon as it is encoded and the page
//! header (27 bytes) is paid once per call, not once per packet.
//!
//! It owns what `bitrate_bps` means for Ogg Opus: the bytes of the whole stream, Ogg framing
//! included, over the audio's duration (what ffmpeg reports as the file's bitrate). libopus is
//! given the request less the framing this encoder has written so far (page headers and lacing
//! values, per second of audio, counting the page the current call is about to write), never
//! less than half the request; the two header pages (about 100 bytes) are not compensated.
//!
//! It owns the Opus rate choice (any requested rate is served: the audio is resampled to the
//! smallest Opus rate at or above it, see [`opus_rate`], and the requested rate is declared as
//! the input rate in `OpusHead`), the `OpusHead`/`OpusTags` headers, the pre-skip (the encoder's
//! lookahead, in 48 kHz samples), granule positions, and the end of the stream: the last packet
//! is padded with silence past the lookahead and the final granule position tells decoders
//! exactly where the audio ends. It must not remix or apply gain.

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use super::{AudioError, AudioSpec, Encoder, PcmBuffer, check_spec};
use crate::audio::{Stage, resample::Resampler};

/// The rates libopus encodes at, in Hz.
pub const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];
/// Accepted `bitrate_bps` range.
pub const BITRATE_RANGE: std::ops::RangeInclusive<u32> = 6_000..=510_000;
/// Packet duration, in ms.
pub const FRAME_MS: u32 = 20;
/// Largest packet libopus writes (its recommended output buffer).
const MAX_PACKET: usize = 4_000;
/// Granule positions count samples at 48 kHz.
const GRANULE_RATE: u32 = 48_000;
/// An Ogg page header without its lacing values, in bytes.
const PAGE_HEADER: u64 = 27;
/// Lacing values per Ogg page.
const MAX_SEGMENTS: u64 = 255;

/// The default bitrate: 32 kbps mono, 64 kbps stereo.
pub fn default_bitrate(spec: AudioSpec) -> u32 {
    if spec.channels > 1 { 64_000 } else { 32_000 }
}

/// The rate the encoder runs at for a requested `sample_rate`: the smallest Opus rate at or
/// above it (48 kHz for anything above 24 kHz).
pub fn opus_rate(sample_rate: u32) -> u32 {
    OPUS_RATES
        .iter()
        .copied()
        .find(|&r| r >= sample_rate)
        .unwrap_or(GRANULE_RATE)
}

fn error(reason: impl std::fmt::Display) -> AudioError {
    AudioError::Encoder {
        format: "opus",
        reason: reason.to_string(),
    }
}

/// A streaming Ogg Opus encoder for one response.
pub struct OpusEncoder {
    /// The spec of the PCM handed in (rate = the declared input rate).
    spec: AudioSpec,
    /// Input rate → Opus rate, when they differ.
    resampler: Option<Resampler>,
    opus: opus::Encoder,
    channels: usize,
    /// Samples per channel per packet, at the Opus rate.
    frame: usize,
    /// 48 kHz samples per Opus-rate sample.
    scale: u64,
    /// Encoder lookahead, at the Opus rate.
    lookahead: u64,
    /// Interleaved samples at the Opus rate, not yet encoded (less than a packet between calls).
    pending: Vec<f32>,
    /// Real (not padding) frames at the Opus rate received so far.
    fed: u64,
    /// Packets written.
    packets: u64,
    /// The requested bitrate, framing included.
    bitrate: u32,
    /// The bitrate libopus is set to now.
    codec_bitrate: i32,
    /// Bytes of the audio pages written (the header pages excluded), and of the packets in them.
    page_bytes: u64,
    payload_bytes: u64,
    writer: PacketWriter<'static, Vec<u8>>,
    serial: u32,
    header_written: bool,
    packet: Vec<u8>,
    resampled: Vec<PcmBuffer>,
}

impl OpusEncoder {
    /// An encoder for PCM in `spec` (any rate; 1 or 2 channels) at `bitrate_bps` (within
    /// [`BITRATE_RANGE`]).
    pub fn new(spec: AudioSpec, bitrate_bps: u32) -> Result<Self, AudioError> {
        if !BITRATE_RANGE.contains(&bitrate_bps) {
            return Err(error(format!("bitrate {bitrate_bps} bps out of range")));
        }
        let channels = match spec.channels {
            1 => opus::Channels::Mono,
            2 => opus::Channels::Stereo,
            c => return Err(error(format!("{c} channels (1 or 2 only)"))),
        };
        let rate = opus_rate(spec.sample_rate);
        let resampler = if rate == spec.sample_rate {
            None
        } else {
            Some(Resampler::new(spec, rate)?)
        };
        let mut opus =
            opus::Encoder::new(rate, channels, opus::Application::Audio).map_err(error)?;
        let bits = i32::try_from(bitrate_bps).map_err(error)?;
        opus.set_bitrate(opus::Bitrate::Bits(bits)).map_err(error)?;
        // Constrained VBR: libopus's default (unconstrained) VBR may drift from the target on
        // some inputs; the constraint bounds the drift while still saving bits on silence.
        opus.set_vbr_constraint(true).map_err(error)?;
        let lookahead = u64::try_from(opus.get_lookahead().map_err(error)?).map_err(error)?;
        let frame = usize::try_from(rate / 1_000 * FRAME_MS).map_err(error)?;
        let serial = uuid::Uuid::new_v4().as_u128() as u32;
        Ok(Self {
            spec,
            resampler,
            opus,
            channels: usize::from(spec.channels),
            frame,
            scale: u64::from(GRANULE_RATE / rate),
            lookahead,
            pending: Vec::new(),
            fed: 0,
            packets: 0,
            bitrate: bitrate_bps,
            codec_bitrate: bits,
            page_bytes: 0,
            payload_bytes: 0,
            writer: PacketWriter::new(Vec::new()),
            serial,
            header_written: false,
            packet: vec![0; MAX_PACKET],
            resampled: Vec::new(),
        })
    }

    /// Pre-skip, in 48 kHz samples: the encoder's lookahead.
    pub fn pre_skip(&self) -> u64 {
        self.lookahead * self.scale
    }

    fn write_headers(&mut self, out: &mut Vec<u8>) -> Result<(), AudioError> {
        if self.header_written {
            return Ok(());
        }
        self.header_written = true;
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(u8::try_from(self.channels).map_err(error)?);
        head.extend_from_slice(&u16::try_from(self.pre_skip()).map_err(error)?.to_le_bytes());
        head.extend_from_slice(&self.spec.sample_rate.to_le_bytes()); // input rate
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono or stereo
        let mut tags = Vec::new();
        let vendor = concat!("herald ", env!("CARGO_PKG_VERSION"));
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&u32::try_from(vendor.len()).map_err(error)?.to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        // Each header packet on a page of its own, granule 0 (RFC 7845 §3).
        self.write(head, PacketWriteEndInfo::EndPage, 0, out)?;
        self.write(tags, PacketWriteEndInfo::EndPage, 0, out)
    }

    fn write(
        &mut self,
        packet: Vec<u8>,
        end: PacketWriteEndInfo,
        granule: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), AudioError> {
        self.writer
            .write_packet(packet, self.serial, end, granule)
            .map_err(error)?;
        out.append(self.writer.inner_mut());
        Ok(())
    }

    /// Sets libopus's bitrate for the `count` packets about to go on one page: the request
    /// less the framing per second of audio, over everything written so far plus that page.
    fn set_codec_bitrate(&mut self, count: u64) -> Result<(), AudioError> {
        let packet = u64::from(self.codec_bitrate.unsigned_abs()) * u64::from(FRAME_MS) / 8_000;
        let segments = count * (packet / MAX_SEGMENTS + 1);
        let page = segments.div_ceil(MAX_SEGMENTS) * PAGE_HEADER + segments;
        let framing = self.page_bytes - self.payload_bytes + page;
        let secs = (self.packets + count) as f64 * f64::from(FRAME_MS) / 1_000.0;
        let framing_bps = framing as f64 * 8.0 / secs;
        let bitrate = f64::from(self.bitrate);
        let target = (bitrate - framing_bps)
            .clamp(bitrate / 2.0, bitrate)
            .round() as i32;
        if target != self.codec_bitrate {
            self.opus
                .set_bitrate(opus::Bitrate::Bits(target))
                .map_err(error)?;
            self.codec_bitrate = target;
        }
        Ok(())
    }

    /// Encodes every whole packet pending onto one page (Ogg starts another only past 255
    /// lacing values); that page ends the stream when `last_granule` is set.
    fn encode_pending(
        &mut self,
        out: &mut Vec<u8>,
        last_granule: Option<u64>,
    ) -> Result<(), AudioError> {
        let n = self.frame * self.channels;
        let count = self.pending.len() / n;
        if count == 0 {
            return Ok(());
        }
        self.set_codec_bitrate(count as u64)?;
        let frame = self.frame as u64;
        let before = out.len();
        for i in 0..count {
            let start = i * n;
            let len = self
                .opus
                .encode_float(&self.pending[start..start + n], &mut self.packet)
                .map_err(error)?;
            self.packets += 1;
            self.payload_bytes += len as u64;
            let data = self.packet[..len].to_vec();
            let granule = self.packets * frame * self.scale;
            match (i + 1 == count, last_granule) {
                (true, Some(g)) => self.write(data, PacketWriteEndInfo::EndStream, g, out)?,
                (true, None) => self.write(data, PacketWriteEndInfo::EndPage, granule, out)?,
                _ => self.write(data, PacketWriteEndInfo::NormalPacket, granule, out)?,
            }
        }
        self.page_bytes += (out.len() - before) as u64;
        self.pending.drain(..count * n);
        Ok(())
    }

    fn take_resampled(&mut self) {
        for b in self.resampled.drain(..) {
            self.fed += b.frames() as u64;
            self.pending.extend_from_slice(&b.samples);
        }
    }
}

impl Encoder for OpusEncoder {
    fn encode(&mut self, pcm: &PcmBuffer, out: &mut Vec<u8>) -> Result<(), AudioError> {
        check_spec(self.spec, pcm)?;
        self.write_headers(out)?;
        match &mut self.resampler {
            Some(r) => {
                r.process(pcm.clone(), &mut self.resampled)?;
                self.take_resampled();
            }
            None => {
                self.fed += pcm.frames() as u64;
                self.pending.extend_from_slice(&pcm.samples);
            }
        }
        self.encode_pending(out, None)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), AudioError> {
        self.write_headers(out)?;
        if let Some(r) = &mut self.resampler {
            r.flush(&mut self.resampled)?;
            self.take_resampled();
        }
        // Feed silence until the lookahead has been pushed through and the packet is whole;
        // the final granule position (pre-skip + real samples) trims the padding off.
        let frame = self.frame as u64;
        let needed = (self.fed + self.lookahead).div_ceil(frame) * frame;
        let have = self.packets * frame + (self.pending.len() / self.channels) as u64;
        let pad = usize::try_from(needed.saturating_sub(have)).map_err(error)?;
        self.pending
            .resize(self.pending.len() + pad * self.channels, 0.0);
        let last = (self.fed + self.lookahead) * self.scale;
        self.encode_pending(out, Some(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 440 Hz tone at −6 dBFS.
    fn tone(spec: AudioSpec, frames: usize) -> PcmBuffer {
        let rate = f64::from(spec.sample_rate);
        let samples = (0..frames)
            .map(|i| (0.5 * (std::f64::consts::TAU * 440.0 * i as f64 / rate).sin()) as f32)
            .collect();
        PcmBuffer::new(spec, samples)
    }

    fn pages(bytes: &[u8]) -> usize {
        bytes.windows(4).filter(|w| w == b"OggS").count()
    }

    #[test]
    fn the_packets_of_one_call_share_one_page() {
        let spec = AudioSpec::new(24_000, 1).expect("spec");
        let mut enc = OpusEncoder::new(spec, 24_000).expect("encoder");
        let mut out = Vec::new();
        // 100 ms: five 20 ms packets, after the two header pages.
        enc.encode(&tone(spec, 2_400), &mut out).expect("encode");
        assert_eq!(pages(&out), 3);
        out.clear();
        // 40 ms more: two packets, one page.
        enc.encode(&tone(spec, 960), &mut out).expect("encode");
        assert_eq!(pages(&out), 1);
        assert_eq!(enc.packets, 7);
    }

    #[test]
    fn libopus_gets_the_request_less_the_framing_never_less_than_half() {
        let spec = AudioSpec::new(24_000, 1).expect("spec");
        // 100 ms pages: 27 + 5 bytes per 100 ms = 2.56 kb/s of framing.
        let mut enc = OpusEncoder::new(spec, 24_000).expect("encoder");
        let mut out = Vec::new();
        for _ in 0..50 {
            enc.encode(&tone(spec, 2_400), &mut out).expect("encode");
        }
        assert!(
            (21_300..=21_600).contains(&enc.codec_bitrate),
            "{}",
            enc.codec_bitrate
        );
        // 20 ms pages at 6 kb/s: 28 bytes per 20 ms = 11.2 kb/s of framing, more than asked.
        let mut enc = OpusEncoder::new(spec, 6_000).expect("encoder");
        for _ in 0..50 {
            enc.encode(&tone(spec, 480), &mut out).expect("encode");
        }
        assert_eq!(enc.codec_bitrate, 3_000);
    }
}
