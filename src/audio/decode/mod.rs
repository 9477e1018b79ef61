//! Decoding: engine bytes → [`PcmBuffer`]s at the engine's own rate and channel layout.
//!
//! This module owns the [`Decoder`] trait (a pull model: `Ok(None)` is the clean end of the
//! stream), [`open_decoder`], and the [`ChannelReader`] that turns the async byte channel fed by
//! an engine into a blocking [`std::io::Read`]. There is one decoder per [`InputEncoding`], each
//! in its own module: [`pcm`] for raw s16le, [`wav`] (the RIFF/WAVE header parsed by
//! [`crate::audio::wav`], which never trusts the RIFF or `data` size fields) and [`symphonia`]
//! for MP3.
//!
//! It must not resample, remix or change gain (later stages do that), hold audio back to fill big
//! blocks (every read that completes at least one frame becomes a buffer at once: time to first
//! audio matters more than buffer size), or run on a tokio worker thread: [`ChannelReader`]
//! blocks, so decoders run on a blocking thread (see `crate::pipeline`).

pub mod pcm;
pub mod symphonia;
pub mod wav;

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

pub use self::{pcm::PcmDecoder, symphonia::SymphoniaDecoder, wav::WavDecoder};
/// The 16-bit PCM header sniffer, under its former name (see [`crate::audio::wav::s16_header`]).
use super::{AudioError, InputEncoding, PcmBuffer};

/// Bytes asked from the input per read. A read that returns less (a network chunk, a pipe) is
/// decoded at once; this only bounds the size of one buffer.
const READ_LEN: usize = 16 * 1024;

/// A source of decoded PCM, pulled by the pipeline's blocking thread.
pub trait Decoder: Send {
    /// The next buffer of decoded audio, or `Ok(None)` at the clean end of the stream.
    ///
    /// Blocks until enough input has arrived to produce at least one frame. Buffers may differ
    /// in size, and each carries its own spec. After `Ok(None)` the decoder keeps returning
    /// `Ok(None)`; after an error the caller should stop pulling.
    fn next_buffer(&mut self) -> Result<Option<PcmBuffer>, AudioError>;
}

/// Chooses the decoder for `encoding` over `reader`.
///
/// Nothing is read here: the decoders are lazy, so the first [`Decoder::next_buffer`] call is
/// the first to block on input (and the first to report a malformed header).
pub fn open_decoder<R: Read + Send + Sync + 'static>(
    encoding: InputEncoding,
    reader: R,
) -> Result<Box<dyn Decoder>, AudioError> {
    Ok(match encoding {
        InputEncoding::Pcm16Le(spec) => Box::new(PcmDecoder::new(reader, spec)),
        InputEncoding::Wav => Box::new(WavDecoder::new(reader)),
        InputEncoding::Mp3 => Box::new(SymphoniaDecoder::new(reader, "mp3")),
    })
}

// === impl ChannelReader ===

/// A blocking [`Read`] over the chunks of a tokio channel (one chunk per engine event).
///
/// `read` returns whatever the current chunk holds (short reads are normal) and blocks in
/// [`mpsc::Receiver::blocking_recv`] when it is empty, so it must run on a blocking thread: it
/// panics inside an async context. It returns `Ok(0)` (end of stream) only once the sender is
/// dropped and every byte has been read; empty chunks are skipped.
#[derive(Debug)]
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    /// A reader over the chunks `rx` receives.
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::channel_of;

    #[test]
    fn channel_reader_returns_every_byte_then_eof() {
        let mut r = channel_of(vec![vec![1, 2, 3], vec![], vec![4], vec![5, 6]]);
        let mut all = Vec::new();
        let mut buf = [0u8; 2];
        loop {
            let n = r.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(r.read(&mut buf).expect("read"), 0);
    }
}
