//! Helpers the unit tests of `audio` share: specs and formats, decoders fed from channels, and
//! deterministic signals. Test builds only; nothing here is used by production code.

use std::{collections::VecDeque, io};

use super::{AudioSpec, OutputEncoding, OutputFormat, PcmBuffer, decode::Decoder};

/// A spec that must be valid.
pub(crate) fn spec(rate: u32, channels: u16) -> AudioSpec {
    AudioSpec::new(rate, channels).expect("valid spec")
}

/// An output format of `encoding` at `rate` with `channels`.
pub(crate) fn format(encoding: OutputEncoding, rate: u32, channels: u16) -> OutputFormat {
    OutputFormat {
        encoding,
        spec: spec(rate, channels),
    }
}

/// A reader returning `chunks` one read at a time (a read never crosses a chunk: short reads,
/// as from a network), then the end.
pub(crate) fn channel_of(chunks: Vec<Vec<u8>>) -> Chunks {
    Chunks(chunks.into_iter().collect())
}

/// See [`channel_of`].
pub(crate) struct Chunks(VecDeque<Vec<u8>>);

impl io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.0.front().is_some_and(Vec::is_empty) {
            self.0.pop_front();
        }
        let Some(front) = self.0.front_mut() else {
            return Ok(0);
        };
        let n = buf.len().min(front.len());
        buf[..n].copy_from_slice(&front[..n]);
        front.drain(..n);
        Ok(n)
    }
}

/// `data` cut in pieces of the given sizes (cycled), like a network delivers it.
pub(crate) fn split_at_sizes(data: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - pos);
        out.push(data[pos..pos + n].to_vec());
        pos += n;
        i += 1;
    }
    out
}

/// Every buffer `dec` yields, and all their samples; checks that none is empty and that the
/// end stays the end.
pub(crate) fn drain(mut dec: Box<dyn Decoder>) -> (Vec<PcmBuffer>, Vec<f32>) {
    let mut buffers = Vec::new();
    let mut samples = Vec::new();
    while let Some(b) = dec.next_buffer().expect("decodes") {
        assert!(!b.is_empty(), "no empty buffers");
        samples.extend_from_slice(&b.samples);
        buffers.push(b);
    }
    assert!(dec.next_buffer().expect("still fine").is_none());
    (buffers, samples)
}

/// A deterministic s16 ramp-ish signal covering the whole range.
pub(crate) fn s16_signal(samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|i| ((i as i64 * 7919) % 65_536 - 32_768) as i16)
        .collect()
}

/// `s` as s16le bytes.
pub(crate) fn s16_bytes(s: &[i16]) -> Vec<u8> {
    s.iter().flat_map(|v| v.to_le_bytes()).collect()
}
