//! MPEG audio (MP3) pushed as it arrives: a frame splitter over the pushed bytes hands
//! symphonia's MP3 decoder one frame (one packet) at a time.
//!
//! The splitter reads each MPEG audio frame header for the frame's length, skips ID3v2 tags
//! and garbage between frames, and finds the first frame (and finds it again after a corrupt
//! header) only where the frame after it starts with a matching header. The first frame may be
//! a Xing/Info (or VBRI) header frame: it is not audio; the LAME tag in it gives the encoder
//! delay and padding, trimmed from the start and the end (gapless, as symphonia's own reader
//! does). It must not seek (engine streams cannot), or give up on a corrupt packet: it skips it
//! with a warning.

use symphonia::core::{
    codecs::audio::{
        AudioCodecParameters, AudioDecoder, AudioDecoderOptions, well_known::CODEC_ID_MP3,
    },
    errors::Error as SymphoniaError,
    packet::PacketRef,
    units::{Duration, Timestamp},
};

use super::{Pending, PushDecoder};
use crate::audio::{AudioError, AudioSpec, PcmBuffer};

/// Bytes of garbage accepted before the first frame before the stream is declared not MPEG
/// audio (ID3v2 tags do not count).
const MAX_LEADING_GARBAGE: usize = 64 * 1024;

/// The decoder delay of an MP3 decoder, in frames (what the LAME tag's delay leaves out).
const DECODER_DELAY: u32 = 529;

/// What a frame header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHeader {
    /// 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5 (the header's bits).
    version: u8,
    /// Index of the sample rate (0..=2).
    rate_index: u8,
    mono: bool,
    crc: bool,
    /// The whole frame, header included, in bytes.
    len: usize,
}

impl FrameHeader {
    /// Parses a Layer III frame header (the only layer herald's symphonia decodes).
    fn parse(h: &[u8]) -> Option<Self> {
        const BITRATES_V1: [u32; 15] = [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ];
        const BITRATES_V2: [u32; 15] =
            [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
        if h.len() < 4 || h[0] != 0xFF || h[1] & 0xE0 != 0xE0 {
            return None;
        }
        let version = (h[1] >> 3) & 3;
        let layer = (h[1] >> 1) & 3;
        let bitrate_index = usize::from(h[2] >> 4);
        let rate_index = (h[2] >> 2) & 3;
        // Reserved version, not Layer III, free-format or bad bitrate, reserved rate, reserved
        // emphasis.
        if version == 1
            || layer != 1
            || bitrate_index == 0
            || bitrate_index == 15
            || rate_index == 3
            || h[3] & 3 == 2
        {
            return None;
        }
        let base = [44_100, 48_000, 32_000][usize::from(rate_index)];
        let (rate, bitrate, per_kbit) = match version {
            3 => (base, BITRATES_V1[bitrate_index], 144_000),
            2 => (base / 2, BITRATES_V2[bitrate_index], 72_000),
            _ => (base / 4, BITRATES_V2[bitrate_index], 72_000),
        };
        let padding = u32::from((h[2] >> 1) & 1);
        let len = (per_kbit * bitrate / rate + padding) as usize;
        Some(Self {
            version,
            rate_index,
            mono: h[3] >> 6 == 3,
            crc: h[1] & 1 == 0,
            len,
        })
    }

    /// Whether `other` can follow this frame in one stream (symphonia's decoder does not
    /// change its spec mid-stream).
    fn matches(&self, other: &Self) -> bool {
        self.version == other.version
            && self.rate_index == other.rate_index
            && self.mono == other.mono
    }

    /// Bytes of side information after the header (and its CRC).
    fn side_info_len(&self) -> usize {
        match (self.version == 3, self.mono) {
            (true, true) => 17,
            (true, false) => 32,
            (false, true) => 9,
            (false, false) => 17,
        }
    }
}

/// What the first frame says when it is a Xing/Info or VBRI header frame: `Some((delay,
/// padding))` in frames (0 when no LAME tag gives them), `None` for an audio frame.
fn info_frame(frame: &[u8], header: &FrameHeader) -> Option<(u32, u32)> {
    if frame.get(36..40) == Some(b"VBRI".as_slice()) {
        return Some((0, 0));
    }
    let at = [4 + header.side_info_len(), 6 + header.side_info_len()]
        .into_iter()
        .find(|&at| matches!(frame.get(at..at + 4), Some(b"Xing" | b"Info")))?;
    let flags = u32::from_be_bytes(frame.get(at + 4..at + 8)?.try_into().ok()?);
    let mut pos = at + 8;
    for (bit, len) in [(1, 4), (2, 4), (4, 100), (8, 4)] {
        if flags & bit != 0 {
            pos += len;
        }
    }
    // The LAME extension: a 9-byte encoder string, then 12 bytes, then delay and padding
    // (12 bits each).
    let lame = frame.get(pos..pos + 24);
    let trim = lame.filter(|l| matches!(&l[..4], b"LAME" | b"Lavf" | b"Lavc"));
    Some(match trim {
        Some(l) => {
            let trim = u32::from_be_bytes([0, l[21], l[22], l[23]]);
            (
                DECODER_DELAY + (trim >> 12),
                (trim & 0xFFF).saturating_sub(DECODER_DELAY),
            )
        }
        None => (0, 0),
    })
}

// === impl Mp3Decoder ===

/// An MP3 stream decoded frame by frame as its bytes are pushed.
pub struct Mp3Decoder {
    pending: Pending,
    /// Bytes of an ID3v2 tag still to skip.
    skip: usize,
    /// The previous frame's header, while the next one is expected right after it.
    locked: Option<FrameHeader>,
    /// The first frame's header, once found (later frames must match it).
    first: Option<FrameHeader>,
    decoder: Option<Box<dyn AudioDecoder>>,
    /// Bytes skipped as garbage since the last frame.
    garbage: usize,
    /// Frames of encoder delay still to drop.
    delay: u32,
    /// Frames of encoder padding held back (dropped at the end).
    padding: u32,
    /// Decoded samples held back for the padding, interleaved.
    held: Vec<f32>,
    spec: Option<AudioSpec>,
    finished: bool,
    failed: bool,
}

impl std::fmt::Debug for Mp3Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mp3Decoder")
            .field("pending", &self.pending.len())
            .field("first", &self.first)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Default for Mp3Decoder {
    fn default() -> Self {
        Self::new()
    }
}

fn malformed(reason: impl Into<String>) -> AudioError {
    AudioError::Malformed {
        format: "mp3",
        reason: reason.into(),
    }
}

/// What the splitter found at the front of the pending bytes.
enum Found {
    /// A whole frame of this many bytes.
    Frame(FrameHeader),
    /// More bytes are needed.
    NeedMore,
}

impl Mp3Decoder {
    /// A decoder of an MP3 stream.
    pub fn new() -> Self {
        Self {
            pending: Pending::default(),
            skip: 0,
            locked: None,
            first: None,
            decoder: None,
            garbage: 0,
            delay: 0,
            padding: 0,
            held: Vec::new(),
            spec: None,
            finished: false,
            failed: false,
        }
    }

    /// Skips tags and garbage up to the next frame, whole in the pending bytes.
    fn next_frame(&mut self) -> Result<Found, AudioError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.pending.len());
                self.pending.consume(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(Found::NeedMore);
                }
            }
            let buf = self.pending.bytes();
            if buf.len() < 4 {
                return Ok(Found::NeedMore);
            }
            if buf.starts_with(b"ID3") {
                if buf.len() < 10 {
                    return Ok(Found::NeedMore);
                }
                let size = buf[6..10]
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 7) | usize::from(b & 0x7F));
                let footer = if buf[5] & 0x10 != 0 { 10 } else { 0 };
                self.skip = 10 + size + footer;
                self.locked = None;
                continue;
            }
            let header =
                FrameHeader::parse(buf).filter(|h| self.first.is_none_or(|first| first.matches(h)));
            match (header, self.locked) {
                (Some(h), Some(prev)) if prev.matches(&h) => {
                    return Ok(if buf.len() >= h.len {
                        Found::Frame(h)
                    } else {
                        Found::NeedMore
                    });
                }
                (Some(h), _) => {
                    // Not in sync: a frame only if the next one starts right after it.
                    if buf.len() >= h.len + 4 {
                        if FrameHeader::parse(&buf[h.len..]).is_some_and(|next| h.matches(&next)) {
                            return Ok(Found::Frame(h));
                        }
                    } else if self.finished && buf.len() >= h.len {
                        return Ok(Found::Frame(h));
                    } else if !self.finished {
                        return Ok(Found::NeedMore);
                    }
                }
                (None, _) => {}
            }
            // Garbage: skip to the next possible sync byte.
            self.locked = None;
            let n = buf[1..]
                .iter()
                .position(|&b| b == 0xFF)
                .map_or(buf.len(), |p| p + 1);
            self.pending.consume(n);
            self.garbage += n;
            if self.first.is_none() && self.garbage > MAX_LEADING_GARBAGE {
                return Err(malformed(format!(
                    "no MPEG audio frame in the first {MAX_LEADING_GARBAGE} bytes"
                )));
            }
        }
    }

    /// Decodes the frame of `header` at the front of the pending bytes: `Some` interleaved
    /// samples and their spec, or `None` (a header frame, or a corrupt packet skipped).
    fn decode_frame(&mut self, header: FrameHeader) -> Result<Option<Vec<f32>>, AudioError> {
        let frame_len = header.len;
        if self.garbage > 0 && self.first.is_some() {
            tracing::warn!(
                format = "mp3",
                bytes = self.garbage,
                "skipped bytes between frames"
            );
        }
        self.garbage = 0;
        self.locked = Some(header);
        let first = self.first.is_none();
        self.first.get_or_insert(header);
        if first
            && let Some((delay, padding)) = info_frame(&self.pending.bytes()[..frame_len], &header)
        {
            self.delay = delay;
            self.padding = padding;
            self.pending.consume(frame_len);
            return Ok(None);
        }
        let decoder = match &mut self.decoder {
            Some(d) => d,
            None => {
                let mut params = AudioCodecParameters::new();
                params.for_codec(CODEC_ID_MP3);
                let d = symphonia::default::get_codecs()
                    .make_audio_decoder(&params, &AudioDecoderOptions::default())
                    .map_err(AudioError::Symphonia)?;
                self.decoder.insert(d)
            }
        };
        let packet = PacketRef::new(
            0,
            Timestamp::new(0),
            Duration::from(0u64),
            &self.pending.bytes()[..frame_len],
        );
        let result = match decoder.decode_ref(&packet) {
            Ok(decoded) => {
                let rate = decoded.spec().rate();
                let channels = u16::try_from(decoded.spec().channels().count()).unwrap_or(0);
                match AudioSpec::new(rate, channels) {
                    Some(spec) => {
                        self.spec = Some(spec);
                        let mut samples = Vec::with_capacity(decoded.samples_interleaved());
                        decoded.copy_to_vec_interleaved::<f32>(&mut samples);
                        Ok(Some(samples))
                    }
                    None => Err(malformed(format!(
                        "decoded {rate} Hz audio with {channels} channels"
                    ))),
                }
            }
            Err(SymphoniaError::DecodeError(reason)) => {
                tracing::warn!(format = "mp3", reason, "skipping a corrupt audio packet");
                Ok(None)
            }
            Err(SymphoniaError::IoError(error)) => {
                tracing::warn!(format = "mp3", %error, "skipping a truncated audio packet");
                Ok(None)
            }
            Err(e) => Err(AudioError::Symphonia(e)),
        };
        self.pending.consume(frame_len);
        result
    }

    /// Trims the encoder delay from `samples` and holds the padding back; `Some` buffer of
    /// what may go out now.
    fn trimmed(&mut self, samples: Vec<f32>) -> Option<PcmBuffer> {
        let spec = self.spec?;
        let channels = usize::from(spec.channels);
        let mut samples = samples;
        if self.delay > 0 {
            let frames = (samples.len() / channels).min(self.delay as usize);
            samples.drain(..frames * channels);
            self.delay -= frames as u32;
        }
        let out = if self.padding == 0 {
            samples
        } else {
            self.held.extend_from_slice(&samples);
            let keep = (self.padding as usize * channels).min(self.held.len());
            let tail = self.held.split_off(self.held.len() - keep);
            std::mem::replace(&mut self.held, tail)
        };
        (!out.is_empty()).then(|| PcmBuffer::new(spec, out))
    }
}

impl PushDecoder for Mp3Decoder {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.push(bytes);
    }

    fn finish(&mut self) {
        self.finished = true;
    }

    fn decode(&mut self, _max_frames: usize) -> Result<Option<PcmBuffer>, AudioError> {
        if self.failed {
            return Ok(None);
        }
        loop {
            let found = self.next_frame().inspect_err(|_| self.failed = true)?;
            let header = match found {
                Found::Frame(h) => h,
                Found::NeedMore => {
                    if self.finished {
                        self.failed = true;
                        self.held.clear();
                        if self.first.is_none() {
                            return Err(malformed("stream ended before any audio frame"));
                        }
                        // A partial last frame (a stream cut mid-frame) is dropped.
                        self.pending.clear();
                    }
                    return Ok(None);
                }
            };
            let decoded = self
                .decode_frame(header)
                .inspect_err(|_| self.failed = true)?;
            if let Some(buffer) = decoded.and_then(|s| self.trimmed(s)) {
                return Ok(Some(buffer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use crate::audio::{
        AudioError, InputEncoding,
        decode::{decoder_for, open_decoder},
        test_util::{channel_of, drain, spec, split_at_sizes},
    };

    /// Runs ffmpeg (installed by `.ci/setup`) to make a 1 s, 1 kHz MP3 at `rate`.
    fn ffmpeg_mp3(dir: &std::path::Path, rate: u32) -> Vec<u8> {
        let path = dir.join("tone.mp3");
        let status = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("sine=frequency=1000:sample_rate={rate}:duration=1"))
            .args(["-c:a", "libmp3lame", "-b:a", "64k"])
            .arg(&path)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "ffmpeg with libmp3lame is needed (bash .ci/setup installs it)"
        );
        std::fs::read(&path).expect("ffmpeg wrote the file")
    }

    /// Dominant frequency by zero crossings (good enough for a clean tone).
    fn zero_crossing_hz(samples: &[f32], rate: u32) -> f64 {
        let crossings = samples
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        crossings as f64 / 2.0 / (samples.len() as f64 / f64::from(rate))
    }

    #[test]
    fn mp3_from_ffmpeg_decodes_streamed_and_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mp3 = ffmpeg_mp3(dir.path(), 24_000);
        let chunks = split_at_sizes(&mp3, &[1_000, 37, 4_096]);
        let (buffers, samples) =
            drain(open_decoder(InputEncoding::Mp3, channel_of(chunks)).expect("opens"));
        assert!(buffers.iter().all(|b| b.spec == spec(24_000, 1)));
        // LAME's delay and padding are trimmed (gapless) when the Info tag is present; allow
        // one MP3 frame (576 samples at 24 kHz) either way.
        assert!(
            samples.len().abs_diff(24_000) <= 576,
            "{} frames",
            samples.len()
        );
        let hz = zero_crossing_hz(&samples[2_400..21_600], 24_000);
        assert!((hz - 1_000.0).abs() < 5.0, "{hz} Hz");
        eprintln!(
            "mp3: {} bytes in, {} frames out in {} buffers, {hz:.1} Hz",
            mp3.len(),
            samples.len(),
            buffers.len()
        );

        // Cut mid-frame: a clean end with fewer samples, not an error.
        let cut = mp3[..mp3.len() * 2 / 3].to_vec();
        let (_, partial) =
            drain(open_decoder(InputEncoding::Mp3, Cursor::new(cut)).expect("opens"));
        assert!(
            partial.len() > 10_000 && partial.len() < samples.len(),
            "{}",
            partial.len()
        );
    }

    #[test]
    fn mp3_garbage_and_empty_are_errors() {
        for bytes in [Vec::new(), vec![0x55; 5_000]] {
            let err = open_decoder(InputEncoding::Mp3, Cursor::new(bytes))
                .expect("opens")
                .next_buffer()
                .expect_err("must fail");
            assert!(matches!(err, AudioError::Malformed { .. }), "{err:?}");
        }
    }

    #[test]
    fn mp3_pushed_byte_by_byte_after_an_id3_tag_and_with_garbage_mid_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mp3 = ffmpeg_mp3(dir.path(), 24_000);
        let (_, whole) =
            drain(open_decoder(InputEncoding::Mp3, Cursor::new(mp3.clone())).expect("opens"));

        // An ID3v2 tag of 300 bytes (syncsafe size 2·128 + 44) full of sync-like 0xFF bytes,
        // then the stream, pushed one byte at a time: the same samples.
        let mut tagged = b"ID3\x04\x00\x00\x00\x00\x02\x2c".to_vec();
        tagged.extend(std::iter::repeat_n(0xFF, 300));
        tagged.extend_from_slice(&mp3);
        let mut dec = decoder_for(InputEncoding::Mp3);
        let mut pushed = Vec::new();
        for byte in tagged.chunks(1) {
            dec.push(byte);
            while let Some(b) = dec.decode(usize::MAX).expect("decodes") {
                pushed.extend_from_slice(&b.samples);
            }
        }
        dec.finish();
        while let Some(b) = dec.decode(usize::MAX).expect("decodes") {
            pushed.extend_from_slice(&b.samples);
        }
        assert_eq!(pushed.len(), whole.len());
        assert!(pushed == whole, "the pushed samples differ");

        // Garbage in the middle of a frame: that frame (and what its bit reservoir feeds) is
        // lost or damaged, the splitter finds the next frame, the rest decodes.
        let mid = mp3.len() / 2;
        let mut broken = mp3[..mid].to_vec();
        broken.extend_from_slice(&[0x00, 0xFF, 0xFB, 0x12, 0x55, 0x00, 0xFF]);
        broken.extend_from_slice(&mp3[mid..]);
        let (_, got) = drain(open_decoder(InputEncoding::Mp3, Cursor::new(broken)).expect("opens"));
        assert!(
            got.len() <= whole.len() && got.len() + 3 * 576 >= whole.len(),
            "{} samples of {}",
            got.len(),
            whole.len()
        );
    }
}
