//! Decoding: engine bytes → [`PcmBuffer`]s at the engine's own rate and channel layout.
//!
//! The decoders are push-based ([`PushDecoder`]): the pipeline hands each engine chunk to
//! [`PushDecoder::push`] as it arrives and takes what it completes with
//! [`PushDecoder::decode`], which never blocks and never reads: `Ok(None)` means "nothing more
//! until more input" (or, after [`PushDecoder::finish`], the clean end). So a decoder runs
//! wherever its job runs (a tokio task, or one work item on the CPU pool), without a thread of
//! its own. There is one decoder per [`InputEncoding`], each in its own module: [`pcm`] for raw
//! s16le, [`wav`] (the RIFF/WAVE header parsed by [`crate::audio::wav`], which never trusts the
//! RIFF or `data` size fields) and [`mp3`] (an MPEG audio frame splitter feeding symphonia's MP3
//! decoder one packet at a time).
//!
//! For whole inputs behind a [`Read`] (a cache file, a voice sample, tests, fuzzing)
//! [`open_decoder`] wraps a push decoder in a pull [`Decoder`] that reads and pushes.
//!
//! It must not resample, remix or change gain (later stages do that), or hold audio back to
//! fill big blocks (every push that completes at least one frame can be decoded at once: time
//! to first audio matters more than buffer size).

pub mod mp3;
pub mod pcm;
pub mod wav;

use std::io::Read;

pub use self::{mp3::Mp3Decoder, pcm::PcmDecoder, wav::WavDecoder};
use super::{AudioError, InputEncoding, PcmBuffer, read_some};

/// Bytes asked from a reader per read by [`open_decoder`]'s pull adapter.
const READ_LEN: usize = 16 * 1024;

/// A decoder fed with bytes as they arrive: it never blocks and never reads.
pub trait PushDecoder: Send {
    /// Appends the next bytes of the stream.
    fn push(&mut self, bytes: &[u8]);

    /// Marks the end of the stream: [`Self::decode`] then drains what is left (dropping a
    /// partial frame) and reports a stream that never held audio, where that is an error.
    fn finish(&mut self);

    /// The next buffer decodable from what was pushed, of about `max_frames` frames at most
    /// (a compressed frame is never split, so one MP3 packet may exceed it), or `Ok(None)`:
    /// more input is needed (before [`Self::finish`]) or the stream ended (after it). Never
    /// returns an empty buffer; after an error the caller should stop.
    fn decode(&mut self, max_frames: usize) -> Result<Option<PcmBuffer>, AudioError>;
}

/// The push decoder for `encoding`.
pub fn decoder_for(encoding: InputEncoding) -> Box<dyn PushDecoder> {
    match encoding {
        InputEncoding::Pcm16Le(spec) => Box::new(PcmDecoder::new(spec)),
        InputEncoding::Wav => Box::new(WavDecoder::new()),
        InputEncoding::Mp3 => Box::new(Mp3Decoder::new()),
    }
}

/// A source of decoded PCM that is pulled (a whole input behind a [`Read`]).
pub trait Decoder: Send {
    /// The next buffer of decoded audio, or `Ok(None)` at the clean end of the stream.
    ///
    /// Reads (and so may block in the reader) until enough input has arrived to produce at
    /// least one frame. Buffers may differ in size, and each carries its own spec. After
    /// `Ok(None)` the decoder keeps returning `Ok(None)`; after an error the caller should
    /// stop pulling.
    fn next_buffer(&mut self) -> Result<Option<PcmBuffer>, AudioError>;
}

/// The decoder for `encoding` over `reader`, pulled: each [`Decoder::next_buffer`] reads and
/// pushes until the push decoder completes a buffer.
///
/// Nothing is read here: the first [`Decoder::next_buffer`] call is the first to read (and
/// the first to report a malformed header).
pub fn open_decoder<R: Read + Send + 'static>(
    encoding: InputEncoding,
    reader: R,
) -> Result<Box<dyn Decoder>, AudioError> {
    Ok(Box::new(ReadDecoder {
        reader,
        inner: decoder_for(encoding),
        buf: vec![0; READ_LEN],
        eof: false,
    }))
}

/// A [`PushDecoder`] pulled over a [`Read`].
struct ReadDecoder<R> {
    reader: R,
    inner: Box<dyn PushDecoder>,
    buf: Vec<u8>,
    eof: bool,
}

impl<R: Read + Send> Decoder for ReadDecoder<R> {
    fn next_buffer(&mut self) -> Result<Option<PcmBuffer>, AudioError> {
        loop {
            if let Some(buffer) = self.inner.decode(usize::MAX)? {
                return Ok(Some(buffer));
            }
            if self.eof {
                return Ok(None);
            }
            match read_some(&mut self.reader, &mut self.buf)? {
                0 => {
                    self.eof = true;
                    self.inner.finish();
                }
                n => self.inner.push(&self.buf[..n]),
            }
        }
    }
}

/// Input bytes not decoded yet: appended at the end, consumed from the front (compacted when
/// the consumed part is at least half of it, so each byte moves O(1) times).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    buf: Vec<u8>,
    start: usize,
}

impl Pending {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::{s16_bytes, spec};

    #[test]
    fn push_decoder_says_none_until_a_frame_is_complete_then_ends_after_finish() {
        let mut dec = decoder_for(InputEncoding::Pcm16Le(spec(8_000, 2)));
        assert!(dec.decode(usize::MAX).expect("fine").is_none());
        let bytes = s16_bytes(&[1, 2, 3, 4, 5]);
        dec.push(&bytes[..3]);
        assert!(dec.decode(usize::MAX).expect("fine").is_none());
        dec.push(&bytes[3..]);
        let b = dec.decode(usize::MAX).expect("fine").expect("a frame");
        assert_eq!(b.frames(), 2);
        assert!(dec.decode(usize::MAX).expect("fine").is_none());
        dec.finish();
        // The half frame left (one sample of two) is dropped.
        assert!(dec.decode(usize::MAX).expect("fine").is_none());
    }

    #[test]
    fn push_decoder_bounds_buffers_by_max_frames() {
        let mut dec = decoder_for(InputEncoding::Pcm16Le(spec(8_000, 1)));
        dec.push(&s16_bytes(&[7; 1_000]));
        let mut sizes = Vec::new();
        while let Some(b) = dec.decode(300).expect("fine") {
            sizes.push(b.frames());
        }
        assert_eq!(sizes, vec![300, 300, 300, 100]);
    }
}
