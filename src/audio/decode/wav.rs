//! RIFF/WAVE streams: [`WavDecoder`] parses the header with [`crate::audio::wav::read_header`]
//! and reads everything after the `data` chunk header, to the end of the input, as PCM.
//!
//! It must not trust the RIFF or `data` size fields (streaming writers leave placeholders there)
//! or parse the header itself.

use super::{Pending, PushDecoder, pcm::PcmStream};
use crate::audio::{AudioError, PcmBuffer, wav};

/// Most bytes buffered while looking for the end of the header (real headers are 44 to a few
/// hundred bytes; anything longer is not a speech stream).
const MAX_HEADER_LEN: usize = 1 << 20;

/// RIFF/WAVE read as a stream: the header is parsed first ([`wav::parse`], again as each push
/// extends it), and everything after the `data` chunk header, up to the end of the input, is
/// PCM.
///
/// The RIFF and `data` size fields are never used: streaming writers put 0, 0x7FFFFFFF or
/// 0xFFFFFFFF there (espeak-ng writing to a pipe, ffmpeg, DashScope). A consequence: a chunk
/// placed *after* `data` (allowed in files, never seen in streams) would be decoded as audio.
/// The formats accepted are those of [`crate::audio::wav`].
#[derive(Debug, Default)]
pub struct WavDecoder {
    /// The bytes of the header until it is complete.
    header: Pending,
    /// The PCM body once it is.
    body: Option<PcmStream>,
    finished: bool,
    failed: bool,
}

impl WavDecoder {
    /// A decoder of a RIFF/WAVE stream.
    pub fn new() -> Self {
        Self::default()
    }

    fn malformed(reason: &str) -> AudioError {
        AudioError::Malformed {
            format: "wav",
            reason: reason.to_owned(),
        }
    }
}

impl PushDecoder for WavDecoder {
    fn push(&mut self, bytes: &[u8]) {
        match &mut self.body {
            Some(body) => body.push(bytes),
            None => self.header.push(bytes),
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        if let Some(body) = &mut self.body {
            body.finish();
        }
    }

    fn decode(&mut self, max_frames: usize) -> Result<Option<PcmBuffer>, AudioError> {
        if self.failed {
            return Ok(None);
        }
        if self.body.is_none() {
            let parsed = wav::parse(self.header.bytes()).inspect_err(|_| self.failed = true)?;
            match parsed {
                Some((header, offset)) => {
                    let mut body = PcmStream::new(header.format, header.spec, "wav");
                    body.push(&self.header.bytes()[offset..]);
                    self.header = Pending::default();
                    if self.finished {
                        body.finish();
                    }
                    self.body = Some(body);
                }
                None if self.finished => {
                    self.failed = true;
                    // Parsing what there is to the end says why.
                    let reason = match wav::read_header(&mut self.header.bytes()) {
                        Err(e) => return Err(e),
                        Ok(_) => "stream ended inside the header",
                    };
                    return Err(Self::malformed(reason));
                }
                None if self.header.len() > MAX_HEADER_LEN => {
                    self.failed = true;
                    return Err(Self::malformed("no data chunk in the first MiB"));
                }
                None => return Ok(None),
            }
        }
        match &mut self.body {
            Some(body) => body.decode(max_frames),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Cursor, Read};

    use crate::audio::{
        AudioError, InputEncoding,
        decode::open_decoder,
        test_util::{channel_of, drain, s16_bytes, s16_signal, spec, split_at_sizes},
        wav::KSDATAFORMAT_SUFFIX,
    };

    /// A reader handing out `data` in pieces of the given sizes (cycled), like a network.
    struct Pieces {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        next: usize,
    }

    impl Pieces {
        fn new(data: Vec<u8>, sizes: &[usize]) -> Self {
            Self {
                data,
                pos: 0,
                sizes: sizes.to_vec(),
                next: 0,
            }
        }
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let want = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
            let n = want.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// A WAV header with any format tag, sizes and chunks before `data`.
    fn wav_header(
        tag: u16,
        channels: u16,
        rate: u32,
        bits: u16,
        riff_size: u32,
        data_size: u32,
        extra_chunks: &[u8],
    ) -> Vec<u8> {
        let block = channels * bits / 8;
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&riff_size.to_le_bytes());
        h.extend_from_slice(b"WAVE");
        h.extend_from_slice(b"fmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&tag.to_le_bytes());
        h.extend_from_slice(&channels.to_le_bytes());
        h.extend_from_slice(&rate.to_le_bytes());
        h.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        h.extend_from_slice(&block.to_le_bytes());
        h.extend_from_slice(&bits.to_le_bytes());
        h.extend_from_slice(extra_chunks);
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data_size.to_le_bytes());
        h
    }

    #[test]
    fn wav_ignores_bogus_size_fields() {
        let signal = s16_signal(3 * 4_001);
        for size in [0u32, 0x7FFF_FFFF, 0xFFFF_FFFF, 12] {
            let mut bytes = wav_header(1, 3, 22_050, 16, size, size, &[]);
            bytes.extend_from_slice(&s16_bytes(&signal));
            let chunks = split_at_sizes(&bytes, &[10, 33, 4096, 1]);
            let dec = open_decoder(InputEncoding::Wav, channel_of(chunks)).expect("opens");
            let (buffers, samples) = drain(dec);
            assert!(buffers.iter().all(|b| b.spec == spec(22_050, 3)));
            assert_eq!(samples.len(), signal.len(), "size field {size:#x}");
            for (got, want) in samples.iter().zip(&signal) {
                assert_eq!(*got, f32::from(*want) / 32_768.0);
            }
        }
    }

    #[test]
    fn wav_skips_list_and_odd_sized_chunks_before_data() {
        let signal = s16_signal(1_000);
        let mut extra = Vec::new();
        extra.extend_from_slice(b"LIST");
        extra.extend_from_slice(&26u32.to_le_bytes());
        extra.extend_from_slice(b"INFOISFT\x0e\x00\x00\x00espeak-ng 1.5\x00");
        extra.extend_from_slice(b"odd ");
        extra.extend_from_slice(&3u32.to_le_bytes());
        extra.extend_from_slice(&[1, 2, 3, 0]); // 3 bytes + pad
        let mut bytes = wav_header(1, 1, 22_050, 16, 0xFFFF_FFFF, 0xFFFF_FFFF, &extra);
        bytes.extend_from_slice(&s16_bytes(&signal));
        let (_, samples) =
            drain(open_decoder(InputEncoding::Wav, Cursor::new(bytes)).expect("opens"));
        assert_eq!(samples.len(), signal.len());
        assert_eq!(samples[0], f32::from(signal[0]) / 32_768.0);
    }

    #[test]
    fn wav_fed_one_byte_at_a_time() {
        let signal = s16_signal(2 * 300);
        let mut bytes = wav_header(1, 2, 24_000, 16, 0, 0, &[]);
        bytes.extend_from_slice(&s16_bytes(&signal));
        let dec = open_decoder(InputEncoding::Wav, Pieces::new(bytes, &[1])).expect("opens");
        let (buffers, samples) = drain(dec);
        assert_eq!(samples.len(), signal.len());
        // One frame (4 bytes) per buffer: nothing held back.
        assert_eq!(buffers.len(), 300);
        for (got, want) in samples.iter().zip(&signal) {
            assert_eq!(*got, f32::from(*want) / 32_768.0);
        }
    }

    #[test]
    fn wav_sample_formats() {
        // (tag, bits, bytes of two samples, expected values)
        let cases: Vec<(u16, u16, Vec<u8>, [f32; 2])> = vec![
            (1, 8, vec![0, 192], [-1.0, 0.5]),
            (1, 24, vec![0x00, 0x00, 0x80, 0x00, 0x00, 0x40], [-1.0, 0.5]),
            (
                1,
                32,
                [i32::MIN.to_le_bytes(), (1i32 << 30).to_le_bytes()].concat(),
                [-1.0, 0.5],
            ),
            (
                3,
                32,
                [(-0.25f32).to_le_bytes(), f32::NAN.to_le_bytes()].concat(),
                [-0.25, 0.0],
            ),
            (
                3,
                64,
                [0.75f64.to_le_bytes(), (-1.0f64).to_le_bytes()].concat(),
                [0.75, -1.0],
            ),
        ];
        for (tag, bits, data, want) in cases {
            let mut bytes = wav_header(tag, 1, 8_000, bits, 0, 0, &[]);
            bytes.extend_from_slice(&data);
            let (_, samples) =
                drain(open_decoder(InputEncoding::Wav, Cursor::new(bytes)).expect("opens"));
            assert_eq!(samples, want, "tag {tag} bits {bits}");
        }
    }

    #[test]
    fn wav_extensible_float() {
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF\xff\xff\xff\xffWAVEfmt ");
        h.extend_from_slice(&40u32.to_le_bytes());
        h.extend_from_slice(&0xFFFEu16.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&48_000u32.to_le_bytes());
        h.extend_from_slice(&(48_000u32 * 8).to_le_bytes());
        h.extend_from_slice(&8u16.to_le_bytes());
        h.extend_from_slice(&32u16.to_le_bytes());
        h.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        h.extend_from_slice(&32u16.to_le_bytes()); // valid bits
        h.extend_from_slice(&3u32.to_le_bytes()); // FL|FR
        h.extend_from_slice(&3u16.to_le_bytes()); // IEEE float sub-format
        h.extend_from_slice(&KSDATAFORMAT_SUFFIX);
        h.extend_from_slice(b"data\0\0\0\0");
        for v in [0.5f32, -0.5, 0.25, -0.25] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        let (buffers, samples) =
            drain(open_decoder(InputEncoding::Wav, Cursor::new(h)).expect("opens"));
        assert_eq!(buffers[0].spec, spec(48_000, 2));
        assert_eq!(samples, vec![0.5, -0.5, 0.25, -0.25]);
    }

    #[test]
    fn wav_errors_are_clear() {
        let decode_err = |bytes: Vec<u8>| {
            open_decoder(InputEncoding::Wav, Cursor::new(bytes))
                .expect("opens")
                .next_buffer()
                .expect_err("must fail")
        };
        assert!(matches!(
            decode_err(Vec::new()),
            AudioError::Malformed { .. }
        ));
        assert!(matches!(
            decode_err(b"OggS....WAVE".to_vec()),
            AudioError::Malformed { .. }
        ));
        // Header cut before the data chunk.
        let mut cut = wav_header(1, 1, 8_000, 16, 0, 0, &[]);
        cut.truncate(30);
        assert!(matches!(decode_err(cut), AudioError::Malformed { .. }));
        // ADPCM.
        assert!(matches!(
            decode_err(wav_header(2, 1, 8_000, 4, 0, 0, &[])),
            AudioError::Unsupported { .. }
        ));
        // 12-bit integer.
        assert!(matches!(
            decode_err(wav_header(1, 1, 8_000, 12, 0, 0, &[])),
            AudioError::Unsupported { .. }
        ));
        // Zero channels.
        assert!(matches!(
            decode_err(wav_header(1, 0, 8_000, 16, 0, 0, &[])),
            AudioError::Malformed { .. }
        ));
        // data before fmt.
        let mut no_fmt = b"RIFF\0\0\0\0WAVEdata\0\0\0\0".to_vec();
        no_fmt.extend_from_slice(&[0; 8]);
        assert!(matches!(decode_err(no_fmt), AudioError::Malformed { .. }));
    }

    #[test]
    fn wav_with_header_only_is_an_empty_stream() {
        let dec = open_decoder(
            InputEncoding::Wav,
            Cursor::new(wav_header(1, 1, 8_000, 16, 0, 0, &[])),
        );
        let (buffers, _) = drain(dec.expect("opens"));
        assert!(buffers.is_empty());
    }
}
