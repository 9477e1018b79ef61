//! The entry file format: one phrase's audio in the canonical form (signed 16-bit
//! little-endian PCM at the engine's rate, interleaved) with its [`EntryMeta`], written as
//!
//! ```text
//! "HERALDA1" | header length (u32 LE) | header (JSON EntryMeta) | PCM | CRC-32 (u32 LE)
//! ```
//!
//! The CRC covers every byte before it. Decoding checks everything and names what is wrong
//! ([`Corruption`]). Must not touch the file system beyond reading one file's header.

use std::{
    fs,
    io::{self, Read},
    path::Path,
    time::SystemTime,
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Magic bytes at the start of an entry file (format version 1).
const MAGIC: &[u8; 8] = b"HERALDA1";
/// Longest accepted header, bytes.
const MAX_HEADER: usize = 1 << 20;

/// What an entry knows about its audio. Never the text: only its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The cache key the entry was stored under: an entry found under another key (a file
    /// copied or linked there) is foreign and never served.
    #[serde(default)]
    pub key: String,
    /// The engine that made the audio ("cosyvoice", "espeak-ng", ...).
    pub engine: String,
    /// Its model.
    pub model: String,
    /// Its voice.
    pub voice: String,
    /// [`super::key::text_hash`] of the phrase.
    pub text_hash: String,
    /// Rate of the PCM, Hz.
    pub sample_rate: u32,
    /// Channels of the PCM.
    pub channels: u16,
    /// Frames of PCM.
    pub frames: u64,
    /// Characters the upstream billed for it.
    pub characters: Option<u32>,
    /// Word timings, when the synthesis asked for them.
    pub words: Option<Vec<StoredWord>>,
    /// When it was made, ms since the Unix epoch.
    pub created_unix_ms: u64,
}

/// A word timing as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWord {
    /// The word.
    pub text: String,
    /// Start, ms.
    pub begin_ms: u32,
    /// End, ms.
    pub end_ms: u32,
}

/// One cached phrase.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// About the audio.
    pub meta: EntryMeta,
    /// s16le PCM, `meta.frames * meta.channels` samples.
    pub pcm: Bytes,
}

impl Entry {
    /// Duration of the audio, ms.
    pub fn duration_ms(&self) -> u64 {
        self.meta.frames * 1000 / u64::from(self.meta.sample_rate.max(1))
    }
}

/// What is wrong with a damaged entry file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The index knew it, the disk does not.
    #[error("its file is missing")]
    Missing,
    /// Shorter than the smallest entry.
    #[error("{0} bytes is shorter than any entry")]
    TooShort(usize),
    /// The CRC-32 does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// Not an entry file.
    #[error("not a herald cache entry (bad magic)")]
    BadMagic,
    /// The header's length field does not fit the file.
    #[error("header of {0} bytes does not fit the file")]
    HeaderSize(usize),
    /// The header is not valid JSON of the expected shape.
    #[error("header is not valid: {0}")]
    Header(serde_json::Error),
    /// The header announces a format no engine produces.
    #[error("header has an impossible format ({rate} Hz, {channels} channels)")]
    Format {
        /// Its rate.
        rate: u32,
        /// Its channel count.
        channels: u16,
    },
    /// The header's frame count overflows.
    #[error("frame count overflows")]
    FrameCount,
    /// The audio is not as long as the header says.
    #[error("{found} PCM bytes where the header says {expected}")]
    PcmLength {
        /// Bytes present.
        found: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The file is not as long as the header says.
    #[error("{found} bytes where the header says {expected}")]
    FileLength {
        /// Bytes present.
        found: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// Not a regular file (a FIFO, a device, a directory): never opened for reading.
    #[error("not a regular file")]
    NotAFile,
    /// A valid entry, but of another key.
    #[error("an entry of another key ({0:?})")]
    ForeignKey(String),
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Open `path` for reading without blocking on it and make sure it is a regular file: a FIFO
/// put at an entry's path would otherwise block the reading thread forever (`O_NONBLOCK`
/// makes the open return at once; the file-type check refuses it before any read).
pub(super) fn open_regular(path: &Path) -> Result<fs::File, Corruption> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(Corruption::NotAFile);
    }
    Ok(f)
}

/// Read the entry file at `path` (a regular file only, see [`open_regular`]) and check that it
/// is the entry of `key`.
pub(super) fn read_entry(path: &Path, key: &str) -> Result<(Entry, u64), Corruption> {
    let mut f = open_regular(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let entry = decode_entry(&bytes)?;
    if entry.meta.key != key {
        return Err(Corruption::ForeignKey(
            entry.meta.key.chars().take(80).collect(),
        ));
    }
    Ok((entry, bytes.len() as u64))
}

/// Encode an entry file.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let header = serde_json::to_vec(&entry.meta).unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + header.len() + entry.pcm.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&header);
    out.extend_from_slice(&entry.pcm);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decode an entry file, checking everything.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, Corruption> {
    let min = MAGIC.len() + 4 + 4;
    if bytes.len() < min {
        return Err(Corruption::TooShort(bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != stored {
        return Err(Corruption::Checksum);
    }
    let (meta, header_end) = parse_header(body)?;
    let pcm = &body[header_end..];
    let expected = meta
        .frames
        .checked_mul(u64::from(meta.channels) * 2)
        .ok_or(Corruption::FrameCount)?;
    if pcm.len() as u64 != expected {
        return Err(Corruption::PcmLength {
            found: pcm.len() as u64,
            expected,
        });
    }
    Ok(Entry {
        meta,
        pcm: Bytes::copy_from_slice(pcm),
    })
}

fn parse_header(body: &[u8]) -> Result<(EntryMeta, usize), Corruption> {
    if body.len() < MAGIC.len() + 4 || &body[..MAGIC.len()] != MAGIC {
        return Err(Corruption::BadMagic);
    }
    let n = MAGIC.len();
    let len = u32::from_le_bytes([body[n], body[n + 1], body[n + 2], body[n + 3]]) as usize;
    if len > MAX_HEADER || body.len() < n + 4 + len {
        return Err(Corruption::HeaderSize(len));
    }
    let meta: EntryMeta =
        serde_json::from_slice(&body[n + 4..n + 4 + len]).map_err(Corruption::Header)?;
    if meta.sample_rate == 0
        || !crate::audio::INPUT_SAMPLE_RATES.contains(&meta.sample_rate)
        || !(1..=crate::audio::MAX_INPUT_CHANNELS).contains(&meta.channels)
    {
        return Err(Corruption::Format {
            rate: meta.sample_rate,
            channels: meta.channels,
        });
    }
    Ok((meta, n + 4 + len))
}

/// The header of an entry file (without reading its audio), its size and modification time.
pub(super) fn read_header(path: &Path) -> Result<(EntryMeta, u64, SystemTime), Corruption> {
    let mut f = open_regular(path)?;
    let md = f.metadata()?;
    let mut prefix = [0u8; 12];
    f.read_exact(&mut prefix)?;
    let len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize;
    if len > MAX_HEADER {
        return Err(Corruption::HeaderSize(len));
    }
    let mut header = vec![0u8; len];
    f.read_exact(&mut header)?;
    let mut body = prefix.to_vec();
    body.extend_from_slice(&header);
    let (meta, end) = parse_header(&body)?;
    let expected = end as u64 + meta.frames * u64::from(meta.channels) * 2 + 4;
    if md.len() != expected {
        return Err(Corruption::FileLength {
            found: md.len(),
            expected,
        });
    }
    Ok((
        meta,
        md.len(),
        md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    ))
}
