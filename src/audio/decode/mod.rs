//! Decoding: engine bytes → [`PcmBuffer`]s at the engine's own rate and channel layout.
//!
//! This module owns the [`Decoder`] trait (a pull model: `Ok(None)` is the clean end of the
//! stream), the [`ChannelReader`] that turns the async byte channel fed by an engine into a
//! blocking [`std::io::Read`], and one decoder per [`InputEncoding`]: [`PcmDecoder`] for raw
//! s16le, [`WavDecoder`] (a hand-written, incremental RIFF/WAVE parser that never trusts the RIFF
//! or `data` size fields) and [`SymphoniaDecoder`] for MP3.
//!
//! It must not resample, remix or change gain (later stages do that), hold audio back to fill big
//! blocks (every read that completes at least one frame becomes a buffer at once: time to first
//! audio matters more than buffer size), or run on a tokio worker thread: [`ChannelReader`]
//! blocks, so decoders run on a blocking thread (see `crate::pipeline`).

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use symphonia::core::{
    codecs::audio::{AudioDecoder, AudioDecoderOptions},
    errors::Error as SymphoniaError,
    formats::{FormatOptions, FormatReader, TrackType, probe::Hint},
    io::{MediaSourceStream, ReadOnlySource},
    meta::MetadataOptions,
};
use tokio::sync::mpsc;

use super::{AudioError, AudioSpec, InputEncoding, PcmBuffer};

/// Bytes asked from the input per read. A read that returns less (a network chunk, a pipe) is
/// decoded at once; this only bounds the size of one buffer.
const READ_LEN: usize = 16 * 1024;

/// Largest `fmt ` chunk accepted. Real ones are 16, 18 or 40 bytes; anything huge is garbage.
const MAX_FMT_LEN: u32 = 1024;

/// The tail of every WAVE_FORMAT_EXTENSIBLE sub-format GUID (`xxxxxxxx-0000-0010-8000-00aa00389b71`);
/// its first two bytes are the plain format tag.
const KSDATAFORMAT_SUFFIX: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

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

// === raw sample formats ===

/// The integer and float sample layouts herald reads (little-endian, interleaved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SampleFormat {
    /// Unsigned 8-bit, 128 = silence.
    U8,
    /// Signed 16-bit.
    S16,
    /// Signed 24-bit, packed in 3 bytes.
    S24,
    /// Signed 32-bit.
    S32,
    /// IEEE float, 32-bit.
    F32,
    /// IEEE float, 64-bit.
    F64,
}

impl SampleFormat {
    /// Bytes per sample of one channel.
    fn bytes(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::S16 => 2,
            Self::S24 => 3,
            Self::S32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    /// Appends the samples of `bytes` (a whole number of samples) to `out` as `f32`.
    ///
    /// Integers are scaled by 2^-(bits-1), so −full scale maps to exactly −1.0 and an s16 value
    /// `v` to `v / 32768` (the encoder inverts this exactly). Non-finite floats become 0.0:
    /// one NaN would otherwise spread through a whole resampler FFT block.
    fn convert(self, bytes: &[u8], out: &mut Vec<f32>) {
        let n = self.bytes();
        match self {
            Self::U8 => out.extend(bytes.iter().map(|&b| (f32::from(b) - 128.0) / 128.0)),
            Self::S16 => out.extend(
                bytes
                    .chunks_exact(n)
                    .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32_768.0),
            ),
            Self::S24 => out.extend(bytes.chunks_exact(n).map(|c| {
                // Put the 24 bits at the top of an i32, so the sign comes for free.
                let v = i32::from_le_bytes([0, c[0], c[1], c[2]]);
                (f64::from(v) / 2_147_483_648.0) as f32
            })),
            Self::S32 => out.extend(bytes.chunks_exact(n).map(|c| {
                let v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                (f64::from(v) / 2_147_483_648.0) as f32
            })),
            Self::F32 => out.extend(bytes.chunks_exact(n).map(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if v.is_finite() { v } else { 0.0 }
            })),
            Self::F64 => out.extend(bytes.chunks_exact(n).map(|c| {
                let v = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                if v.is_finite() { v as f32 } else { 0.0 }
            })),
        }
    }
}

/// Reads `reader` into `buf`, retrying on `Interrupted`.
fn read_some<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, AudioError> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(AudioError::Io(e)),
        }
    }
}

// === impl PcmStream ===

/// Headerless interleaved PCM: the body of both [`PcmDecoder`] and [`WavDecoder`].
///
/// Keeps the bytes of an incomplete frame (an odd byte, a partial stereo frame) for the next
/// read, and turns every read that completes at least one frame into one buffer.
#[derive(Debug)]
struct PcmStream<R> {
    reader: R,
    format: SampleFormat,
    spec: AudioSpec,
    /// `format.bytes() * channels`.
    frame_bytes: usize,
    /// Fixed-size read buffer; `buf[..len]` holds bytes not yet decoded.
    buf: Vec<u8>,
    len: usize,
    eof: bool,
    /// "pcm" or "wav", for logs.
    label: &'static str,
}

impl<R: Read> PcmStream<R> {
    /// A stream whose first bytes are `initial` (what a header parser read past the header).
    fn new(
        reader: R,
        format: SampleFormat,
        spec: AudioSpec,
        label: &'static str,
        mut initial: Vec<u8>,
    ) -> Self {
        let frame_bytes = format.bytes() * usize::from(spec.channels);
        let len = initial.len();
        // Room for a partial frame plus a useful read, and for everything already read.
        let capacity = READ_LEN.max(2 * frame_bytes).max(len);
        initial.resize(capacity, 0);
        Self {
            reader,
            format,
            spec,
            frame_bytes,
            buf: initial,
            len,
            eof: false,
            label,
        }
    }

    fn next_buffer(&mut self) -> Result<Option<PcmBuffer>, AudioError> {
        loop {
            if self.len >= self.frame_bytes {
                let whole = self.len - self.len % self.frame_bytes;
                let mut samples = Vec::with_capacity(whole / self.format.bytes());
                self.format.convert(&self.buf[..whole], &mut samples);
                self.buf.copy_within(whole..self.len, 0);
                self.len -= whole;
                return Ok(Some(PcmBuffer::new(self.spec, samples)));
            }
            if self.eof {
                if self.len > 0 {
                    tracing::warn!(
                        format = self.label,
                        bytes = self.len,
                        "audio input ended inside a frame; dropping the partial frame"
                    );
                    self.len = 0;
                }
                return Ok(None);
            }
            // `len < frame_bytes <= capacity / 2`, so there is always room to read into.
            match read_some(&mut self.reader, &mut self.buf[self.len..])? {
                0 => self.eof = true,
                n => self.len += n,
            }
        }
    }
}

// === impl PcmDecoder ===

/// Raw signed 16-bit little-endian PCM with a spec known in advance (no header).
#[derive(Debug)]
pub struct PcmDecoder<R> {
    stream: PcmStream<R>,
}

impl<R: Read + Send> PcmDecoder<R> {
    /// A decoder of s16le `spec` audio read from `reader`.
    pub fn new(reader: R, spec: AudioSpec) -> Self {
        Self {
            stream: PcmStream::new(reader, SampleFormat::S16, spec, "pcm", Vec::new()),
        }
    }
}

impl<R: Read + Send> Decoder for PcmDecoder<R> {
    fn next_buffer(&mut self) -> Result<Option<PcmBuffer>, AudioError> {
        self.stream.next_buffer()
    }
}

// === impl WavDecoder ===

/// RIFF/WAVE read as a stream: the header is parsed here, and everything after the `data`
/// chunk header, up to the end of the input, is PCM.
///
/// The RIFF and `data` size fields are never used: streaming writers put 0, 0x7FFFFFFF or
/// 0xFFFFFFFF there (espeak-ng writing to a pipe, ffmpeg, DashScope). A consequence: a chunk
/// placed *after* `data` (allowed in files, never seen in streams) would be decoded as audio.
/// Accepted: `RIFF` or `RF64`; PCM 8/16/24/32-bit integer, IEEE float 32/64-bit, and
/// WAVE_FORMAT_EXTENSIBLE with those sub-formats. Chunks other than `fmt ` and `data` (`LIST`,
/// `fact`, `ds64`, …) are skipped.
#[derive(Debug)]
pub struct WavDecoder<R> {
    /// The reader until the header has been parsed.
    unparsed: Option<R>,
    /// The PCM body once it has.
    body: Option<PcmStream<R>>,
}

impl<R: Read + Send> WavDecoder<R> {
    /// A decoder of the RIFF/WAVE stream read from `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            unparsed: Some(reader),
            body: None,
        }
    }
}

impl<R: Read + Send> Decoder for WavDecoder<R> {
    fn next_buffer(&mut self) -> Result<Option<PcmBuffer>, AudioError> {
        if let Some(mut reader) = self.unparsed.take() {
            let (format, spec, leftover) = parse_wav_header(&mut reader)?;
            self.body = Some(PcmStream::new(reader, format, spec, "wav", leftover));
        }
        match &mut self.body {
            Some(body) => body.next_buffer(),
            None => Ok(None),
        }
    }
}

fn wav_malformed(reason: impl Into<String>) -> AudioError {
    AudioError::Malformed {
        format: "wav",
        reason: reason.into(),
    }
}

fn wav_unsupported(reason: impl Into<String>) -> AudioError {
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
        .ok_or_else(|| wav_malformed("fmt chunk too short"))
}

fn le_u32(b: &[u8], at: usize) -> Result<u32, AudioError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| wav_malformed("fmt chunk too short"))
}

/// Parses a 16-bit PCM WAV header at the start of `bytes` (a stream's first bytes, as they
/// arrive): `Ok(Some((spec, offset)))` with the offset of the PCM body, `Ok(None)` when `bytes`
/// ends before the `data` chunk header, `Err` when the header is malformed or not 16-bit PCM.
/// Size fields are ignored, as everywhere in herald.
pub fn wav_s16_header(bytes: &[u8]) -> Result<Option<(AudioSpec, usize)>, AudioError> {
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
    match parse_wav_header(&mut reader) {
        Ok((SampleFormat::S16, spec, leftover)) => Ok(Some((
            spec,
            bytes.len() - reader.rest.len() - leftover.len(),
        ))),
        Ok(_) => Err(wav_unsupported("not 16-bit integer PCM")),
        Err(_) if reader.exhausted => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the RIFF header and the chunks up to and including the `data` chunk header.
///
/// Returns the sample format, the spec, and the bytes already read past the `data` header.
fn parse_wav_header<R: Read>(
    reader: &mut R,
) -> Result<(SampleFormat, AudioSpec, Vec<u8>), AudioError> {
    let mut hb = HeaderBytes {
        reader,
        buf: Vec::with_capacity(READ_LEN),
        pos: 0,
        scratch: vec![0; READ_LEN],
    };
    let riff = hb
        .take(12)?
        .ok_or_else(|| wav_malformed("stream ended inside the RIFF header"))?;
    match &riff[0..4] {
        b"RIFF" | b"RF64" => {}
        b"RIFX" | b"RIFY" => return Err(wav_unsupported("big-endian RIFX")),
        _ => return Err(wav_malformed("no RIFF tag at the start")),
    }
    if &riff[8..12] != b"WAVE" {
        return Err(wav_malformed("RIFF form type is not WAVE"));
    }

    let mut fmt: Option<(SampleFormat, AudioSpec)> = None;
    loop {
        let Some(header) = hb.take(8)? else {
            return Err(wav_malformed(if fmt.is_some() {
                "stream ended before the data chunk"
            } else {
                "stream ended before the fmt chunk"
            }));
        };
        let id = [header[0], header[1], header[2], header[3]];
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        match &id {
            b"data" => {
                let (format, spec) =
                    fmt.ok_or_else(|| wav_malformed("data chunk before the fmt chunk"))?;
                return Ok((format, spec, hb.leftover()));
            }
            b"fmt " => {
                if !(16..=MAX_FMT_LEN).contains(&size) {
                    return Err(wav_malformed(format!("fmt chunk of {size} bytes")));
                }
                // `size <= MAX_FMT_LEN`, so it fits a usize.
                let body = hb
                    .take(size as usize)?
                    .ok_or_else(|| wav_malformed("stream ended inside the fmt chunk"))?;
                fmt = Some(parse_fmt(body)?);
                if size % 2 == 1 && !hb.skip(1)? {
                    return Err(wav_malformed("stream ended before the data chunk"));
                }
            }
            _ => {
                // RIFF chunks are padded to an even length.
                let padded = u64::from(size) + u64::from(size % 2);
                if !hb.skip(padded)? {
                    return Err(wav_malformed(format!(
                        "stream ended inside the {:?} chunk, before the data chunk",
                        String::from_utf8_lossy(&id)
                    )));
                }
            }
        }
    }
}

/// Parses a `fmt ` chunk body (at least 16 bytes).
fn parse_fmt(body: &[u8]) -> Result<(SampleFormat, AudioSpec), AudioError> {
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
            return Err(wav_malformed("WAVE_FORMAT_EXTENSIBLE fmt chunk too short"));
        }
        if body[26..40] != KSDATAFORMAT_SUFFIX {
            return Err(wav_unsupported(
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
            return Err(wav_unsupported(format!(
                "{bits}-bit {} samples",
                if tag == PCM { "integer" } else { "float" }
            )));
        }
        _ => return Err(wav_unsupported(format!("format tag {tag:#06x}"))),
    };
    let spec = AudioSpec::new(rate, channels)
        .ok_or_else(|| {
            wav_malformed(format!(
                "{rate} Hz with {channels} channels in the fmt chunk"
            ))
        })?
        .check_input("wav")?;
    if usize::from(block_align) != format.bytes() * usize::from(channels) {
        return Err(wav_malformed(format!(
            "block align {block_align} does not match {channels} channels of {bits}-bit samples"
        )));
    }
    Ok((format, spec))
}

// === impl SymphoniaDecoder ===

/// A compressed stream (MP3) decoded by symphonia over a non-seekable source.
///
/// The stream is probed on the first [`Decoder::next_buffer`] call. Corrupt packets are skipped
/// with a warning; the stream ends at symphonia's end of stream or at an unexpected EOF (a
/// stream cut inside a frame).
pub struct SymphoniaDecoder {
    state: SymphoniaState,
    /// "mp3", for errors and logs.
    label: &'static str,
}

enum SymphoniaState {
    Unprobed {
        source: MediaSourceStream<'static>,
        hint: Hint,
    },
    Decoding {
        format: Box<dyn FormatReader>,
        decoder: Box<dyn AudioDecoder>,
        track_id: u32,
    },
    Finished,
}

impl std::fmt::Debug for SymphoniaDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            SymphoniaState::Unprobed { .. } => "unprobed",
            SymphoniaState::Decoding { .. } => "decoding",
            SymphoniaState::Finished => "finished",
        };
        f.debug_struct("SymphoniaDecoder")
            .field("format", &self.label)
            .field("state", &state)
            .finish()
    }
}

impl SymphoniaDecoder {
    /// A decoder of `reader`, probed with the file-extension hint `extension` ("mp3").
    pub fn new<R: Read + Send + Sync + 'static>(reader: R, extension: &'static str) -> Self {
        let source =
            MediaSourceStream::new(Box::new(ReadOnlySource::new(reader)), Default::default());
        let mut hint = Hint::new();
        hint.with_extension(extension);
        Self {
            state: SymphoniaState::Unprobed { source, hint },
            label: extension,
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> AudioError {
        AudioError::Malformed {
            format: self.label,
            reason: reason.into(),
        }
    }

    /// Probes the container and builds the codec for its default audio track.
    fn open(
        &self,
        source: MediaSourceStream<'static>,
        hint: &Hint,
    ) -> Result<SymphoniaState, AudioError> {
        let probed = symphonia::default::get_probe().probe(
            hint,
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        );
        let format = match probed {
            Ok(format) => format,
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(self.malformed("stream ended before any audio frame"));
            }
            Err(SymphoniaError::Unsupported(what)) => {
                return Err(self.malformed(format!("not recognised: {what}")));
            }
            Err(e) => return Err(AudioError::Symphonia(e)),
        };
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| self.malformed("no audio track"))?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| self.malformed("no audio codec parameters"))?;
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(AudioError::Symphonia)?;
        let track_id = track.id;
        Ok(SymphoniaState::Decoding {
            format,
            decoder,
            track_id,
        })
    }
}

impl Decoder for SymphoniaDecoder {
    fn next_buffer(&mut self) -> Result<Option<PcmBuffer>, AudioError> {
        if matches!(self.state, SymphoniaState::Unprobed { .. })
            && let SymphoniaState::Unprobed { source, hint } =
                std::mem::replace(&mut self.state, SymphoniaState::Finished)
        {
            self.state = self.open(source, &hint)?;
        }
        let label = self.label;
        let SymphoniaState::Decoding {
            format,
            decoder,
            track_id,
        } = &mut self.state
        else {
            return Ok(None);
        };
        let result = loop {
            let packet = match format.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => break Ok(None),
                Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    break Ok(None);
                }
                Err(e) => break Err(AudioError::Symphonia(e)),
            };
            if packet.track_id != *track_id {
                continue;
            }
            match decoder.decode(&packet) {
                Ok(decoded) => {
                    if decoded.frames() == 0 {
                        // Gapless trimming can empty the first packets.
                        continue;
                    }
                    let rate = decoded.spec().rate();
                    let channels = u16::try_from(decoded.spec().channels().count()).unwrap_or(0);
                    let Some(spec) = AudioSpec::new(rate, channels) else {
                        break Err(AudioError::Malformed {
                            format: label,
                            reason: format!("decoded {rate} Hz audio with {channels} channels"),
                        });
                    };
                    let mut samples = Vec::with_capacity(decoded.samples_interleaved());
                    decoded.copy_to_vec_interleaved::<f32>(&mut samples);
                    return Ok(Some(PcmBuffer::new(spec, samples)));
                }
                Err(SymphoniaError::DecodeError(reason)) => {
                    tracing::warn!(format = label, reason, "skipping a corrupt audio packet");
                }
                Err(e) => break Err(AudioError::Symphonia(e)),
            }
        };
        self.state = SymphoniaState::Finished;
        result
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn spec(rate: u32, channels: u16) -> AudioSpec {
        AudioSpec::new(rate, channels).expect("valid spec")
    }

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

    /// A ChannelReader already holding `chunks`, sender dropped.
    fn channel_of(chunks: Vec<Vec<u8>>) -> ChannelReader {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(Bytes::from(c)).expect("capacity");
        }
        drop(tx);
        ChannelReader::new(rx)
    }

    fn split_at_sizes(data: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
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

    fn drain(mut dec: Box<dyn Decoder>) -> (Vec<PcmBuffer>, Vec<f32>) {
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
    fn s16_signal(samples: usize) -> Vec<i16> {
        (0..samples)
            .map(|i| ((i as i64 * 7919) % 65_536 - 32_768) as i16)
            .collect()
    }

    fn s16_bytes(s: &[i16]) -> Vec<u8> {
        s.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

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

    #[test]
    fn pcm_with_odd_split_points_decodes_every_sample() {
        let sp = spec(16_000, 2);
        let signal = s16_signal(2 * 5_000);
        let bytes = s16_bytes(&signal);
        // Splits inside samples and inside frames.
        let chunks = split_at_sizes(&bytes, &[1, 3, 997, 2, 5, 1501, 7]);
        let n_chunks = chunks.len();
        let dec = open_decoder(InputEncoding::Pcm16Le(sp), channel_of(chunks)).expect("opens");
        let (buffers, samples) = drain(dec);
        assert!(buffers.iter().all(|b| b.spec == sp));
        assert_eq!(samples.len(), signal.len());
        for (got, want) in samples.iter().zip(&signal) {
            assert_eq!(*got, f32::from(*want) / 32_768.0);
        }
        // Emitted as the bytes arrived, not in big blocks: roughly one buffer per chunk that
        // completes a frame.
        assert!(buffers.len() > n_chunks / 3, "{} buffers", buffers.len());
    }

    #[test]
    fn pcm_trailing_partial_frame_is_dropped() {
        let sp = spec(8_000, 1);
        let mut bytes = s16_bytes(&[100, -100, 7]);
        bytes.push(0x12);
        let (_, samples) =
            drain(open_decoder(InputEncoding::Pcm16Le(sp), Cursor::new(bytes)).expect("opens"));
        assert_eq!(samples.len(), 3);
    }

    #[test]
    fn pcm_empty_input_is_a_clean_end() {
        let dec = open_decoder(
            InputEncoding::Pcm16Le(spec(8_000, 1)),
            Cursor::new(Vec::new()),
        );
        let (buffers, _) = drain(dec.expect("opens"));
        assert!(buffers.is_empty());
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
}
