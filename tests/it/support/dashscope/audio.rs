//! The audio the double renders: a sine tone as PCM, WAV (real or placeholder sizes) or MP3
//! (LAME, with the ID3 tag DashScope's files begin with), optionally corrupted, and the pieces
//! a stream carries it in.

use super::{
    Options,
    request::{Family, Fmt, SynthRequest},
    tone_token,
};

/// Rendered audio for one request.
pub(super) struct Audio {
    /// What the stream's decoded chunks concatenate to.
    pub(super) stream: Vec<u8>,
    /// Leading container bytes of `stream` (WAV header) sent with the first chunk.
    pub(super) stream_header: usize,
    /// The file behind the URL.
    pub(super) file: Vec<u8>,
    /// Bytes per sample frame (split points of PCM stay aligned); 1 for MP3.
    pub(super) align: usize,
    /// Audio duration in ms.
    pub(super) ms: f64,
}

pub(super) fn tone_pcm(hz: f32, rate: u32, channels: u16, ms: f64) -> Vec<i16> {
    let frames = (f64::from(rate) * ms / 1000.0).round() as usize;
    let mut out = Vec::with_capacity(frames * usize::from(channels));
    let step = 2.0 * std::f64::consts::PI * f64::from(hz) / f64::from(rate);
    for n in 0..frames {
        let s = ((n as f64 * step).sin() * 0.5 * 32767.0).round() as i16;
        for _ in 0..channels {
            out.push(s);
        }
    }
    out
}

pub(super) fn s16le(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A 44-byte PCM WAV header with the given RIFF and data sizes.
pub(super) fn wav_header(rate: u32, channels: u16, riff_size: u32, data_size: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&riff_size.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&channels.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    h.extend_from_slice(&(channels * 2).to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_size.to_le_bytes());
    h
}

/// The streaming-WAV placeholder sizes Qwen-TTS sends (the header reads as ~44739 s at 24 kHz).
const WAV_PLACEHOLDER_DATA: u32 = 0x7FFF_FFFF - 36;

/// The ID3v2.4 tag (TSSE "Lavf60.16.100", 10 bytes padding) that begins DashScope's MP3s.
fn id3_tag() -> Vec<u8> {
    let text = b"\x03Lavf60.16.100\x00";
    let mut t = Vec::new();
    t.extend_from_slice(b"ID3\x04\x00\x00");
    t.extend_from_slice(&[0, 0, 0, 35]);
    t.extend_from_slice(b"TSSE");
    t.extend_from_slice(&[0, 0, 0, text.len() as u8, 0, 0]);
    t.extend_from_slice(text);
    t.extend_from_slice(&[0; 10]);
    t
}

pub(super) fn encode_mp3(pcm: &[i16], rate: u32, channels: u16, bitrate: u32) -> Vec<u8> {
    use mp3lame_encoder::{Bitrate, Builder, FlushGap, InterleavedPcm, Mode, MonoPcm, Quality};
    // MPEG-2/2.5 (rates below 32 kHz) stop at 160 kbps.
    let kbps = if rate < 32_000 {
        (bitrate / 1000).min(160)
    } else {
        bitrate / 1000
    };
    let brate = match kbps {
        0..=32 => Bitrate::Kbps32,
        33..=64 => Bitrate::Kbps64,
        65..=128 => Bitrate::Kbps128,
        129..=160 => Bitrate::Kbps160,
        _ => Bitrate::Kbps256,
    };
    let mut b = Builder::new().expect("lame_init");
    b.set_num_channels(channels as u8).expect("channels");
    b.set_sample_rate(rate).expect("rate");
    b.set_output_sample_rate(std::num::NonZeroU32::new(rate))
        .expect("output rate");
    b.set_brate(brate).expect("bitrate");
    b.set_mode(if channels == 1 {
        Mode::Mono
    } else {
        Mode::JointStereo
    })
    .expect("mode");
    b.set_quality(Quality::Good).expect("quality");
    b.set_vbr_mode(mp3lame_encoder::VbrMode::Off).expect("cbr");
    b.set_to_write_vbr_tag(false).expect("no vbr tag");
    let mut lame = b.build().expect("lame build");
    let mut out = id3_tag();
    let frames = pcm.len() / usize::from(channels);
    out.reserve(mp3lame_encoder::max_required_buffer_size(frames));
    if channels == 1 {
        lame.encode_to_vec(MonoPcm(pcm), &mut out)
            .expect("lame encode");
    } else {
        lame.encode_to_vec(InterleavedPcm(pcm), &mut out)
            .expect("lame encode");
    }
    out.reserve(mp3lame_encoder::max_required_buffer_size(0));
    lame.flush_to_vec::<FlushGap>(&mut out).expect("lame flush");
    out
}

pub(super) fn render_audio(req: &SynthRequest, options: &Options, corrupt: bool) -> Audio {
    let hz = tone_token(&req.text).unwrap_or(options.tone_hz);
    let mut audio_units = req.units;
    if req.model.starts_with("cosyvoice-")
        && let Some(max) = options.cosyvoice_truncate_units
    {
        audio_units = audio_units.min(max);
    }
    let ms = audio_units as f64 * f64::from(options.ms_per_unit);
    let pcm = tone_pcm(hz, req.rate, req.channels, ms);
    let raw = s16le(&pcm);
    let align = 2 * usize::from(req.channels);
    let data = raw.len() as u32;
    let (mut stream, mut stream_header, mut file) = match req.fmt {
        Fmt::Pcm => (raw.clone(), 0, raw),
        Fmt::Wav if req.family == Family::Qwen => {
            let mut file = wav_header(
                req.rate,
                req.channels,
                WAV_PLACEHOLDER_DATA + 36,
                WAV_PLACEHOLDER_DATA,
            );
            file.extend_from_slice(&raw);
            if options.qwen_wav_header {
                (file.clone(), 44, file)
            } else {
                (raw, 0, file)
            }
        }
        Fmt::Wav => {
            let mut file = wav_header(req.rate, req.channels, data + 36, data);
            file.extend_from_slice(&raw);
            (file.clone(), 44, file)
        }
        Fmt::Mp3 => {
            let mp3 = encode_mp3(&pcm, req.rate, req.channels, req.bitrate);
            (mp3.clone(), 0, mp3)
        }
    };
    if corrupt {
        for bytes in [&mut stream, &mut file] {
            match req.fmt {
                Fmt::Pcm => bytes.push(0x5A),
                Fmt::Wav => {
                    let junk = b"JUNKJUNK this is not a WAV header, only junk!";
                    let n = bytes.len().min(44);
                    bytes[..n].copy_from_slice(&junk[..n]);
                }
                Fmt::Mp3 => {
                    // No 0xFF byte: no frame sync anywhere, and no ID3 tag.
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = (i % 0x7F) as u8;
                    }
                }
            }
        }
        if req.fmt == Fmt::Pcm {
            stream_header = 0;
        }
    }
    Audio {
        stream,
        stream_header,
        file,
        align: if req.fmt == Fmt::Mp3 { 1 } else { align },
        ms,
    }
}

/// Byte offset in `audio.stream` at time `t` ms.
fn byte_at(audio: &Audio, t: f64) -> usize {
    let len = audio.stream.len();
    if t <= 0.0 || audio.ms <= 0.0 {
        return 0;
    }
    if t >= audio.ms {
        return len;
    }
    let payload = len - audio.stream_header;
    let pos = (payload as f64 * t / audio.ms) as usize;
    audio.stream_header + pos - pos % audio.align
}

/// The audio pieces of the span `[t0, t1)` ms: `(start ms, bytes)`, one per `chunk_ms`.
pub(super) fn pieces(audio: &Audio, t0: f64, t1: f64, chunk_ms: u32) -> Vec<(f64, Vec<u8>)> {
    let t1 = t1.min(audio.ms);
    let chunk = f64::from(chunk_ms.max(1));
    let mut out = Vec::new();
    let mut t = t0;
    while t < t1 {
        let end = (t + chunk).min(t1);
        let (a, b) = (byte_at(audio, t), byte_at(audio, end));
        // A corrupt PCM's odd last byte goes with the last piece.
        let b = if end >= audio.ms {
            audio.stream.len()
        } else {
            b
        };
        if b > a {
            out.push((t, audio.stream[a..b].to_vec()));
        }
        t = end;
    }
    out
}
