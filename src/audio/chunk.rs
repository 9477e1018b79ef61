//! Chunking: encoded bytes → [`Chunk`]s of `chunk_ms` of audio, the unit sent to a client.
//!
//! This module owns the chunk boundaries: the first chunk leaves as soon as any audio frame is
//! pushed (time to first audio), every later one carries exactly `chunk_frames` frames, and
//! [`Chunker::finish`] emits the remainder. For the fixed-size encodings herald has today the
//! bytes are split at exact frame boundaries; bytes that precede the first frame (a WAV header)
//! travel in the first chunk. The compressed encodings (MP3, Ogg Opus, FLAC) have no fixed frame
//! size: they pass `None` as bytes per frame and get chunks of whole pushes, each holding at least
//! `chunk_frames` frames (except the first and the last). There `frames` counts the PCM frames
//! handed to the encoder, so the sum over all chunks is the stream's length; a chunk's bytes may
//! lag its frames by the encoder's buffering (a codec frame, a FLAC block), and pushes whose
//! bytes are still empty (the encoder is buffering) wait for the next bytes instead of going out
//! as empty chunks.
//!
//! It must not encode, decode or look inside the bytes, and it never drops or reorders them.

use bytes::{Bytes, BytesMut};

#[cfg(test)]
use super::OutputEncoding;
use super::OutputFormat;

/// One piece of encoded audio for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Encoded bytes (the first chunk of a WAV stream starts with its header).
    pub data: Bytes,
    /// Index, in the output stream, of the first frame in `data`.
    pub first_frame: u64,
    /// Frames in `data` (0 only for a final chunk of bytes without audio, e.g. the header of an
    /// empty WAV stream).
    pub frames: u32,
}

/// Cuts a stream of encoded bytes into [`Chunk`]s.
#[derive(Debug)]
pub struct Chunker {
    /// Frames per chunk after the first, at least 1.
    chunk_frames: usize,
    /// Bytes per frame when the encoding has a fixed frame size.
    bytes_per_frame: Option<usize>,
    /// Bytes pushed and not yet emitted; frames are at its end (any header bytes first).
    pending: BytesMut,
    /// Frames in `pending`.
    pending_frames: usize,
    /// Index of the first frame of the next chunk.
    next_frame: u64,
    /// Whether the first chunk with audio has gone out.
    started: bool,
}

/// Frames in `chunk_ms` milliseconds at `sample_rate`, rounded, at least 1.
pub fn chunk_frames(sample_rate: u32, chunk_ms: u32) -> usize {
    let frames = (u64::from(sample_rate) * u64::from(chunk_ms) + 500) / 1_000;
    usize::try_from(frames).unwrap_or(usize::MAX).max(1)
}

/// Bytes per frame of `format`, or `None` for an encoding without a fixed frame size.
pub fn fixed_frame_bytes(format: OutputFormat) -> Option<usize> {
    let per_sample: Option<usize> = format.encoding.bytes_per_sample();
    per_sample.map(|b| b * usize::from(format.spec.channels))
}

impl Chunker {
    /// A chunker for `format`, with chunks of `chunk_ms` milliseconds (rounded to whole frames,
    /// at least one frame).
    pub fn new(format: OutputFormat, chunk_ms: u32) -> Self {
        Self::with_frame_bytes(
            chunk_frames(format.spec.sample_rate, chunk_ms),
            fixed_frame_bytes(format),
        )
    }

    /// A chunker with `chunk_frames` frames per chunk and the given fixed bytes per frame
    /// (`None` for compressed encodings, whose pushes are never split).
    pub fn with_frame_bytes(chunk_frames: usize, bytes_per_frame: Option<usize>) -> Self {
        Self {
            chunk_frames: chunk_frames.max(1),
            bytes_per_frame: bytes_per_frame.filter(|&b| b > 0),
            pending: BytesMut::new(),
            pending_frames: 0,
            next_frame: 0,
            started: false,
        }
    }

    /// Frames per chunk after the first.
    pub fn chunk_frames(&self) -> usize {
        self.chunk_frames
    }

    /// Adds `bytes`, which encode `frames` frames (0 for a header alone), and appends every
    /// chunk that is now complete to `out`.
    ///
    /// With a fixed frame size, the last `frames × bytes_per_frame` bytes of everything pending
    /// are the frames; bytes before them (a header) go with the first frame.
    pub fn push(&mut self, bytes: &[u8], frames: usize, out: &mut Vec<Chunk>) {
        self.pending.extend_from_slice(bytes);
        self.pending_frames += frames;
        // Compressed encodings: frames whose bytes the encoder still holds wait for bytes.
        let ready = self.bytes_per_frame.is_some() || !self.pending.is_empty();
        if !self.started && ready && self.pending_frames > 0 {
            // The first chunk leaves now, whatever its size (up to a full chunk).
            self.started = true;
            let n = self.pending_frames.min(self.chunk_frames);
            self.emit(n, out);
        }
        while self.started
            && ready
            && !self.pending.is_empty()
            && self.pending_frames >= self.chunk_frames
        {
            self.emit(self.chunk_frames, out);
        }
    }

    /// Appends the remainder, if any bytes are pending, as a last chunk (which may hold fewer
    /// than `chunk_frames` frames, or none).
    pub fn finish(&mut self, out: &mut Vec<Chunk>) {
        if !self.pending.is_empty() || self.pending_frames > 0 {
            self.emit(self.pending_frames, out);
        }
    }

    /// Emits a chunk of the first `frames` pending frames (all pending frames and bytes for an
    /// encoding without a fixed frame size).
    fn emit(&mut self, frames: usize, out: &mut Vec<Chunk>) {
        let (frames, split) = match self.bytes_per_frame {
            Some(bpf) => {
                let rest = (self.pending_frames - frames).saturating_mul(bpf);
                (frames, self.pending.len().saturating_sub(rest))
            }
            None => (self.pending_frames, self.pending.len()),
        };
        let data = self.pending.split_to(split).freeze();
        self.pending_frames -= frames;
        out.push(Chunk {
            data,
            first_frame: self.next_frame,
            frames: u32::try_from(frames).unwrap_or(u32::MAX),
        });
        self.next_frame += frames as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::format;

    /// Pushes `frames_per_push` (cycled) frames of distinct bytes after an optional header;
    /// returns the chunks and every byte pushed.
    fn drive(
        chunker: &mut Chunker,
        bpf: usize,
        header: &[u8],
        frames_per_push: &[usize],
        total_frames: usize,
    ) -> (Vec<Chunk>, Vec<u8>) {
        let mut chunks = Vec::new();
        let mut all = Vec::new();
        let mut sent = 0;
        let mut i = 0;
        let mut first = true;
        while sent < total_frames {
            let n = frames_per_push[i % frames_per_push.len()].min(total_frames - sent);
            i += 1;
            let mut bytes = if first { header.to_vec() } else { Vec::new() };
            first = false;
            bytes.extend((0..n * bpf).map(|k| ((sent * bpf + k) % 251) as u8));
            let before = chunks.len();
            chunker.push(&bytes, n, &mut chunks);
            if sent == 0 {
                assert!(chunks.len() > before, "first audio goes out at once");
            }
            all.extend_from_slice(&bytes);
            sent += n;
        }
        chunker.finish(&mut chunks);
        (chunks, all)
    }

    fn check_consistent(chunks: &[Chunk], all: &[u8], total_frames: usize) {
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.to_vec()).collect();
        assert_eq!(joined, all, "bytes preserved in order");
        let mut next = 0u64;
        for c in chunks {
            assert_eq!(c.first_frame, next);
            next += u64::from(c.frames);
        }
        assert_eq!(next, total_frames as u64);
    }

    #[test]
    fn first_chunk_immediate_then_exact_chunk_frames() {
        // s16 stereo at 24 kHz, 100 ms chunks: 2400 frames of 4 bytes.
        let fmt = format(OutputEncoding::PcmS16Le, 24_000, 2);
        let mut c = Chunker::new(fmt, 100);
        assert_eq!(c.chunk_frames(), 2_400);
        let total = 24_000 + 77;
        let (chunks, all) = drive(&mut c, 4, &[], &[256, 997, 1, 3_000], total);
        assert_eq!(chunks[0].frames, 256);
        assert_eq!(chunks[0].data.len(), 256 * 4);
        let (last, middle) = chunks[1..].split_last().expect("several chunks");
        for ch in middle {
            assert_eq!(ch.frames, 2_400);
            assert_eq!(ch.data.len(), 2_400 * 4);
        }
        assert_eq!(u64::from(last.frames), total as u64 - last.first_frame);
        assert!(last.frames <= 2_400);
        check_consistent(&chunks, &all, total);
    }

    #[test]
    fn wav_header_rides_with_the_first_chunk() {
        let fmt = format(OutputEncoding::Wav, 16_000, 1);
        let mut c = Chunker::new(fmt, 20); // 320 frames
        let header = [0xAAu8; 44];
        let (chunks, all) = drive(&mut c, 2, &header, &[100, 500], 5_000);
        assert_eq!(chunks[0].frames, 100);
        assert_eq!(chunks[0].data.len(), 44 + 200);
        assert_eq!(&chunks[0].data[..44], &header);
        assert!(
            chunks[1..chunks.len() - 1]
                .iter()
                .all(|ch| ch.frames == 320 && ch.data.len() == 640)
        );
        check_consistent(&chunks, &all, 5_000);
    }

    #[test]
    fn a_large_first_push_is_cut_into_chunks() {
        let fmt = format(OutputEncoding::Mulaw, 8_000, 1);
        let mut c = Chunker::new(fmt, 50); // 400 frames
        let (chunks, all) = drive(&mut c, 1, &[], &[1_000], 1_000);
        let frames: Vec<u32> = chunks.iter().map(|ch| ch.frames).collect();
        assert_eq!(frames, vec![400, 400, 200]);
        check_consistent(&chunks, &all, 1_000);
    }

    #[test]
    fn header_alone_waits_and_empty_stream_flushes_it() {
        let fmt = format(OutputEncoding::Wav, 16_000, 1);
        let mut c = Chunker::new(fmt, 20);
        let mut out = Vec::new();
        c.push(&[1; 44], 0, &mut out);
        assert!(out.is_empty(), "no audio yet");
        c.finish(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].frames, 0);
        assert_eq!(out[0].data.len(), 44);
        // Nothing at all: no chunk.
        let mut c = Chunker::new(fmt, 20);
        let mut out = Vec::new();
        c.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn f32_frames_are_never_split() {
        let fmt = format(OutputEncoding::PcmF32Le, 22_050, 2);
        let mut c = Chunker::new(fmt, 10); // round(220.5) = 221 frames
        assert_eq!(c.chunk_frames(), 221);
        let (chunks, all) = drive(&mut c, 8, &[], &[3, 333, 1_000], 10_000);
        assert!(
            chunks
                .iter()
                .all(|ch| ch.data.len() == ch.frames as usize * 8)
        );
        check_consistent(&chunks, &all, 10_000);
    }

    #[test]
    fn variable_frame_size_chunks_hold_at_least_chunk_frames() {
        // An MP3-like stream: 1152-frame packets of varying byte sizes.
        let mut c = Chunker::with_frame_bytes(2_400, None);
        let mut chunks = Vec::new();
        let mut all = Vec::new();
        for i in 0..20usize {
            let bytes: Vec<u8> = (0..300 + (i * 37) % 100).map(|k| k as u8).collect();
            c.push(&bytes, 1_152, &mut chunks);
            all.extend_from_slice(&bytes);
            if i == 0 {
                assert_eq!(chunks.len(), 1, "first packet goes out at once");
            }
        }
        c.finish(&mut chunks);
        let (last, rest) = chunks.split_last().expect("chunks");
        assert!(rest[1..].iter().all(|ch| ch.frames >= 2_400));
        assert!(last.frames > 0);
        check_consistent(&chunks, &all, 20 * 1_152);
    }

    #[test]
    fn compressed_pushes_without_bytes_wait_for_bytes() {
        let mut c = Chunker::with_frame_bytes(100, None);
        let mut out = Vec::new();
        c.push(&[], 40, &mut out);
        assert!(out.is_empty(), "no bytes yet: nothing to send");
        c.push(&[1, 2, 3], 40, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].frames, out[0].data.len()), (80, 3));
        c.push(&[], 100, &mut out);
        assert_eq!(out.len(), 1);
        c.push(&[], 0, &mut out);
        c.finish(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].first_frame, out[1].frames), (80, 100));
    }

    #[test]
    fn chunk_frames_rounds() {
        assert_eq!(chunk_frames(22_050, 10), 221);
        assert_eq!(chunk_frames(44_100, 10), 441);
        assert_eq!(chunk_frames(8_000, 0), 1);
        assert_eq!(chunk_frames(48_000, 100), 4_800);
    }
}
