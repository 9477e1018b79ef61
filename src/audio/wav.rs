//! RIFF/WAVE headers: the one place herald reads and writes them.
//!
//! This module owns the header format. [`read_header`] parses a header from a stream as its
//! bytes arrive (the first step of [`super::decode::WavDecoder`]); [`parse`] and [`s16_header`]
//! parse one at the start of a byte slice (sniffing a stream, checking a file); [`header`] and
//! [`streaming_header`] write the 44-byte header of 16-bit PCM; [`patch_sizes`] and
//! [`set_sizes`] write the real sizes once the length of a file is known.
//!
//! Reading never trusts the RIFF or `data` size fields: streaming writers put 0, 0x7FFFFFFF or
//! 0xFFFFFFFF there (espeak-ng writing to a pipe, ffmpeg, DashScope), so everything after the
//! `data` chunk header is the body. Accepted: `RIFF` or `RF64`; PCM 8/16/24/32-bit integer, IEEE
//! float 32/64-bit, and WAVE_FORMAT_EXTENSIBLE with those sub-formats. Chunks other than `fmt `
//! and `data` (`LIST`, `fact`, `ds64`, …) are skipped.
//!
//! It must not decode samples (that is [`super::decode`]) or write anything but the canonical
//! 44-byte header of 16-bit integer PCM.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::{AudioError, AudioSpec, SampleFormat, read_some};

/// Length of the header [`header`] and [`streaming_header`] write.
pub const HEADER_LEN: usize = 44;

/// Bytes asked from the input per read while parsing a header. Whatever is read past the `data`
/// chunk header is handed back as the start of the body.
const READ_LEN: usize = 16 * 1024;

/// Largest `fmt ` chunk accepted. Real ones are 16, 18 or 40 bytes; anything huge is garbage.
const MAX_FMT_LEN: u32 = 1024;

/// The tail of every WAVE_FORMAT_EXTENSIBLE sub-format GUID (`xxxxxxxx-0000-0010-8000-00aa00389b71`);
/// its first two bytes are the plain format tag.
pub(crate) const KSDATAFORMAT_SUFFIX: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

/// What a WAV header announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Layout of each sample in the body.
    pub format: SampleFormat,
    /// Rate and channels of the body.
    pub spec: AudioSpec,
}

// === reading ===

fn malformed(reason: impl Into<String>) -> AudioError {
    AudioError::Malformed {
        format: "wav",
        reason: reason.into(),
    }
}

fn unsupported(reason: impl Into<String>) -> AudioError {
    AudioError::Unsupported {
        format: "wav",
        reason: reason.into(),
    }
}

/// The header bytes read so far; grows by whatever each read returns.
struct HeaderBytes<'r, R> {
    reader: &'r mut R,
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed.
    pos: usize,
    scratch: Vec<u8>,
}

impl<R: Read> HeaderBytes<'_, R> {
    /// Reads until `n` unparsed bytes are buffered; `false` if the input ends first.
    fn fill(&mut self, n: usize) -> Result<bool, AudioError> {
        while self.buf.len() - self.pos < n {
            let got = read_some(self.reader, &mut self.scratch)?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&self.scratch[..got]);
        }
        Ok(true)
    }

    /// The next `n` bytes, or `None` if the input ends first.
    fn take(&mut self, n: usize) -> Result<Option<&[u8]>, AudioError> {
        if !self.fill(n)? {
            return Ok(None);
        }
        let start = self.pos;
        self.pos += n;
        Ok(Some(&self.buf[start..self.pos]))
    }

    /// Discards the next `n` bytes without keeping them; `false` if the input ends first.
    fn skip(&mut self, mut n: u64) -> Result<bool, AudioError> {
        loop {
            let buffered = (self.buf.len() - self.pos) as u64;
            if buffered >= n {
                // `n <= buffered`, which is a usize.
                self.pos += n as usize;
                return Ok(true);
            }
            n -= buffered;
            self.buf.clear();
            self.pos = 0;
            let got = read_some(self.reader, &mut self.scratch)?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&self.scratch[..got]);
        }
    }

    /// The bytes read past the parsed part: the start of the PCM body.
    fn leftover(mut self) -> Vec<u8> {
        self.buf.drain(..self.pos);
        self.buf
    }
}

fn le_u16(b: &[u8], at: usize) -> Result<u16, AudioError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| malformed("fmt chunk too short"))
}

fn le_u32(b: &[u8], at: usize) -> Result<u32, AudioError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| malformed("fmt chunk too short"))
}

/// Parses a WAV header at the start of `bytes` (a stream's first bytes, as they arrive):
/// `Ok(Some((header, offset)))` with the offset of the PCM body, `Ok(None)` when `bytes` ends
/// before the `data` chunk header, `Err` when the header is malformed or unsupported.
pub fn parse(bytes: &[u8]) -> Result<Option<(Header, usize)>, AudioError> {
    struct Prefix<'a> {
        rest: &'a [u8],
        exhausted: bool,
    }
    impl Read for Prefix<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.rest.read(buf)?;
            self.exhausted |= n == 0 && !buf.is_empty();
            Ok(n)
        }
    }
    let mut reader = Prefix {
        rest: bytes,
        exhausted: false,
    };
    match read_header(&mut reader) {
        Ok((header, leftover)) => Ok(Some((
            header,
            bytes.len() - reader.rest.len() - leftover.len(),
        ))),
        Err(_) if reader.exhausted => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`parse`] for 16-bit integer PCM only: `Ok(Some((spec, offset)))`, `Ok(None)` when `bytes`
/// ends before the `data` chunk header, `Err` when the header is malformed or not 16-bit PCM.
pub fn s16_header(bytes: &[u8]) -> Result<Option<(AudioSpec, usize)>, AudioError> {
    match parse(bytes)? {
        Some((
            Header {
                format: SampleFormat::S16,
                spec,
            },
            offset,
        )) => Ok(Some((spec, offset))),
        Some(_) => Err(unsupported("not 16-bit integer PCM")),
        None => Ok(None),
    }
}

/// Reads the RIFF header and the chunks up to and including the `data` chunk header.
///
/// Returns the header and the bytes already read past the `data` chunk header.
pub fn read_header<R: Read>(reader: &mut R) -> Result<(Header, Vec<u8>), AudioError> {
    let mut hb = HeaderBytes {
        reader,
        buf: Vec::with_capacity(READ_LEN),
        pos: 0,
        scratch: vec![0; READ_LEN],
    };
    let riff = hb
        .take(12)?
        .ok_or_else(|| malformed("stream ended inside the RIFF header"))?;
    match &riff[0..4] {
        b"RIFF" | b"RF64" => {}
        b"RIFX" | b"RIFY" => return Err(unsupported("big-endian RIFX")),
        _ => return Err(malformed("no RIFF tag at the start")),
    }
    if &riff[8..12] != b"WAVE" {
        return Err(malformed("RIFF form type is not WAVE"));
    }

    let mut fmt: Option<Header> = None;
    loop {
        let Some(chunk) = hb.take(8)? else {
            return Err(malformed(if fmt.is_some() {
                "stream ended before the data chunk"
            } else {
                "stream ended before the fmt chunk"
            }));
        };
        let id = [chunk[0], chunk[1], chunk[2], chunk[3]];
        let size = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        match &id {
            b"data" => {
                let header = fmt.ok_or_else(|| malformed("data chunk before the fmt chunk"))?;
                return Ok((header, hb.leftover()));
            }
            b"fmt " => {
                if !(16..=MAX_FMT_LEN).contains(&size) {
                    return Err(malformed(format!("fmt chunk of {size} bytes")));
                }
                // `size <= MAX_FMT_LEN`, so it fits a usize.
                let body = hb
                    .take(size as usize)?
                    .ok_or_else(|| malformed("stream ended inside the fmt chunk"))?;
                fmt = Some(parse_fmt(body)?);
                if size % 2 == 1 && !hb.skip(1)? {
                    return Err(malformed("stream ended before the data chunk"));
                }
            }
            _ => {
                // RIFF chunks are padded to an even length.
                let padded = u64::from(size) + u64::from(size % 2);
                if !hb.skip(padded)? {
                    return Err(malformed(format!(
                        "stream ended inside the {:?} chunk, before the data chunk",
                        String::from_utf8_lossy(&id)
                    )));
                }
            }
        }
    }
}

/// Parses a `fmt ` chunk body (at least 16 bytes).
fn parse_fmt(body: &[u8]) -> Result<Header, AudioError> {
    const PCM: u16 = 0x0001;
    const IEEE_FLOAT: u16 = 0x0003;
    const EXTENSIBLE: u16 = 0xFFFE;

    let mut tag = le_u16(body, 0)?;
    let channels = le_u16(body, 2)?;
    let rate = le_u32(body, 4)?;
    let block_align = le_u16(body, 12)?;
    let bits = le_u16(body, 14)?;

    if tag == EXTENSIBLE {
        if body.len() < 40 || le_u16(body, 16)? < 22 {
            return Err(malformed("WAVE_FORMAT_EXTENSIBLE fmt chunk too short"));
        }
        if body[26..40] != KSDATAFORMAT_SUFFIX {
            return Err(unsupported(
                "WAVE_FORMAT_EXTENSIBLE with a non-standard sub-format",
            ));
        }
        tag = le_u16(body, 24)?;
    }
    let format = match (tag, bits) {
        (PCM, 8) => SampleFormat::U8,
        (PCM, 16) => SampleFormat::S16,
        (PCM, 24) => SampleFormat::S24,
        (PCM, 32) => SampleFormat::S32,
        (IEEE_FLOAT, 32) => SampleFormat::F32,
        (IEEE_FLOAT, 64) => SampleFormat::F64,
        (PCM | IEEE_FLOAT, _) => {
            return Err(unsupported(format!(
                "{bits}-bit {} samples",
                if tag == PCM { "integer" } else { "float" }
            )));
        }
        _ => return Err(unsupported(format!("format tag {tag:#06x}"))),
    };
    let spec = AudioSpec::new(rate, channels)
        .ok_or_else(|| {
            malformed(format!(
                "{rate} Hz with {channels} channels in the fmt chunk"
            ))
        })?
        .check_input("wav")?;
    if usize::from(block_align) != format.bytes() * usize::from(channels) {
        return Err(malformed(format!(
            "block align {block_align} does not match {channels} channels of {bits}-bit samples"
        )));
    }
    Ok(Header { format, spec })
}

// === writing ===

/// The RIFF and `data` size fields for `data_bytes` of samples. Past what 32 bits hold they
/// saturate at 0xFFFFFFFF, the "unknown" value readers accept.
fn size_fields(data_bytes: u64) -> (u32, u32) {
    let data = u32::try_from(data_bytes).unwrap_or(u32::MAX);
    (data.saturating_add(36), data)
}

/// The canonical 44-byte header of 16-bit PCM with the given size fields.
fn write_header(spec: AudioSpec, riff_size: u32, data_size: u32) -> [u8; HEADER_LEN] {
    let channels = spec.channels;
    let block_align = channels.saturating_mul(2);
    let byte_rate = spec.sample_rate.saturating_mul(u32::from(block_align));
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&riff_size.to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&spec.sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_size.to_le_bytes());
    h
}

/// The 44-byte header of a 16-bit PCM WAV stream of unknown length (RIFF and `data` sizes
/// 0xFFFFFFFF, the streaming convention ffmpeg, sox and symphonia accept).
pub fn streaming_header(spec: AudioSpec) -> [u8; HEADER_LEN] {
    write_header(spec, u32::MAX, u32::MAX)
}

/// The 44-byte header of a 16-bit PCM WAV file holding `data_bytes` bytes of samples (sizes
/// saturate at 0xFFFFFFFF past 4 GiB).
pub fn header(spec: AudioSpec, data_bytes: u64) -> [u8; HEADER_LEN] {
    let (riff, data) = size_fields(data_bytes);
    write_header(spec, riff, data)
}

/// Writes the real sizes for `data_bytes` of samples into the header at the start of `file`
/// (one [`header`] or [`streaming_header`] wrote), then seeks back to the end.
pub fn patch_sizes<F: Write + Seek>(file: &mut F, data_bytes: u64) -> io::Result<()> {
    let (riff, data) = size_fields(data_bytes);
    file.seek(SeekFrom::Start(4))?;
    file.write_all(&riff.to_le_bytes())?;
    file.seek(SeekFrom::Start(40))?;
    file.write_all(&data.to_le_bytes())?;
    file.seek(SeekFrom::End(0))?;
    Ok(())
}

/// Writes the real sizes into a whole WAV file held in memory: everything after its 44-byte
/// header (one [`header`] or [`streaming_header`] wrote) is samples. Shorter input is left as is.
pub fn set_sizes(wav: &mut [u8]) {
    let Some(data_bytes) = wav.len().checked_sub(HEADER_LEN) else {
        return;
    };
    let (riff, data) = size_fields(data_bytes as u64);
    wav[4..8].copy_from_slice(&riff.to_le_bytes());
    wav[40..44].copy_from_slice(&data.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::audio::test_util::spec;

    #[test]
    fn written_headers_parse_back() {
        let sp = spec(22_050, 2);
        for h in [streaming_header(sp), header(sp, 4_000)] {
            let parsed = parse(&h).expect("valid").expect("whole");
            assert_eq!(
                parsed,
                (
                    Header {
                        format: SampleFormat::S16,
                        spec: sp
                    },
                    HEADER_LEN
                )
            );
            assert_eq!(s16_header(&h).expect("valid"), Some((sp, HEADER_LEN)));
            // A prefix is not an error: more bytes are needed.
            assert_eq!(parse(&h[..30]).expect("a prefix"), None);
        }
        let h = header(sp, 4_000);
        assert_eq!(&h[4..8], &4_036u32.to_le_bytes());
        assert_eq!(&h[40..44], &4_000u32.to_le_bytes());
        assert_eq!(&h[28..32], &(22_050u32 * 4).to_le_bytes());
        assert_eq!(&h[32..34], &4u16.to_le_bytes());
        let s = streaming_header(sp);
        assert_eq!(&s[4..8], &[0xFF; 4]);
        assert_eq!(&s[40..44], &[0xFF; 4]);
        assert_eq!(s[8..40], h[8..40]);
    }

    #[test]
    fn sizes_saturate_instead_of_overflowing() {
        assert_eq!(size_fields(0), (36, 0));
        for huge in [u64::from(u32::MAX - 36) + 1, u64::from(u32::MAX), u64::MAX] {
            let (riff, data) = size_fields(huge);
            assert_eq!(riff, u32::MAX, "{huge}");
            assert!(data >= u32::MAX - 36, "{huge}");
        }
    }

    #[test]
    fn patching_writes_the_real_sizes() {
        let sp = spec(16_000, 1);
        let mut file = Cursor::new(streaming_header(sp).to_vec());
        file.seek(SeekFrom::End(0)).expect("seek");
        file.write_all(&[0; 10]).expect("write");
        patch_sizes(&mut file, 10).expect("patch");
        // Left at the end, ready for more.
        assert_eq!(file.position(), 54);
        let patched = file.into_inner();
        let mut expected = header(sp, 10).to_vec();
        expected.extend_from_slice(&[0; 10]);
        assert_eq!(patched, expected);

        let mut in_memory = streaming_header(sp).to_vec();
        in_memory.extend_from_slice(&[0; 10]);
        set_sizes(&mut in_memory);
        assert_eq!(in_memory, expected);
        let mut short = vec![1, 2, 3];
        set_sizes(&mut short);
        assert_eq!(short, [1, 2, 3]);
    }

    #[test]
    fn s16_header_refuses_other_formats() {
        let mut h = streaming_header(spec(8_000, 1));
        h[34..36].copy_from_slice(&8u16.to_le_bytes());
        h[32..34].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            parse(&h).expect("valid").map(|(h, _)| h.format),
            Some(SampleFormat::U8)
        );
        assert!(matches!(
            s16_header(&h),
            Err(AudioError::Unsupported { .. })
        ));
        assert!(matches!(
            s16_header(b"OggS and more bytes than a RIFF header"),
            Err(AudioError::Malformed { .. })
        ));
    }
}
