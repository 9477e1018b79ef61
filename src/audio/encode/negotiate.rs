//! Output-format negotiation: what a client asked for (encoding, rate, channels, bitrate, FLAC
//! bits) and the engine's native rate → the exact [`OutputFormat`] the pipeline will produce,
//! or an INVALID_ARGUMENT naming the field and the valid values.
//!
//! The encoders' own tables (MP3 rates and bitrates, the Opus bitrate range) are the policy;
//! every door negotiates through [`negotiate`], so none repeats them. Must not depend on any
//! door's wire types: doors translate their enums to [`Codec`] first.

use crate::{
    audio::{self, AudioSpec, OutputEncoding, OutputFormat},
    error::Error,
};

use super::{mp3, opus};

/// An output encoding, without its parameters: what a client picks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Codec {
    /// Raw signed 16-bit little-endian PCM (the default).
    #[default]
    PcmS16Le,
    /// Raw 32-bit float little-endian PCM.
    PcmF32Le,
    /// RIFF WAV, 16-bit PCM.
    Wav,
    /// MPEG-1/2 Layer III.
    Mp3,
    /// Opus in an Ogg stream.
    OggOpus,
    /// FLAC.
    Flac,
    /// G.711 µ-law.
    Mulaw,
    /// G.711 A-law.
    Alaw,
}

impl Codec {
    /// Every codec, in the proto's order.
    pub const ALL: [Self; 8] = [
        Self::PcmS16Le,
        Self::PcmF32Le,
        Self::Wav,
        Self::Mp3,
        Self::OggOpus,
        Self::Flac,
        Self::Mulaw,
        Self::Alaw,
    ];

    /// The codec's name as clients write it (the proto's enum value names).
    pub fn name(self) -> &'static str {
        match self {
            Self::PcmS16Le => "PCM_S16LE",
            Self::PcmF32Le => "PCM_F32LE",
            Self::Wav => "WAV",
            Self::Mp3 => "MP3",
            Self::OggOpus => "OGG_OPUS",
            Self::Flac => "FLAC",
            Self::Mulaw => "MULAW",
            Self::Alaw => "ALAW",
        }
    }

    /// The codec of an output encoding.
    pub fn of(encoding: OutputEncoding) -> Self {
        match encoding {
            OutputEncoding::PcmS16Le => Self::PcmS16Le,
            OutputEncoding::PcmF32Le => Self::PcmF32Le,
            OutputEncoding::Wav => Self::Wav,
            OutputEncoding::Mulaw => Self::Mulaw,
            OutputEncoding::Alaw => Self::Alaw,
            OutputEncoding::Mp3 { .. } => Self::Mp3,
            OutputEncoding::OggOpus { .. } => Self::OggOpus,
            OutputEncoding::Flac { .. } => Self::Flac,
        }
    }
}

/// What a client asked for; 0 means "the default" in every numeric field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FormatRequest {
    /// The encoding.
    pub codec: Codec,
    /// Output rate, Hz (0 = the engine's native rate; for MP3, the nearest MP3 rate).
    pub sample_rate_hz: u32,
    /// Channels (0 = mono).
    pub channels: u32,
    /// Bitrate for MP3 and OGG_OPUS, bits/s (0 = the encoder's default).
    pub bitrate_bps: u32,
    /// FLAC sample size (0 = 16).
    pub bits_per_sample: u32,
}

/// The format the pipeline produces for `request` when the engine's native rate is
/// `native_rate`.
pub fn negotiate(request: FormatRequest, native_rate: u32) -> Result<OutputFormat, Error> {
    let FormatRequest {
        codec,
        sample_rate_hz,
        channels,
        bitrate_bps,
        bits_per_sample,
    } = request;
    let rate = match sample_rate_hz {
        0 if codec == Codec::Mp3 => nearest_mp3_rate(native_rate),
        0 => native_rate,
        r if (audio::MIN_SAMPLE_RATE..=audio::MAX_SAMPLE_RATE).contains(&r) => r,
        r => {
            return Err(Error::invalid(format!(
                "format.sample_rate_hz: {r} is outside {}..={} (0 = the engine's native rate)",
                audio::MIN_SAMPLE_RATE,
                audio::MAX_SAMPLE_RATE
            )));
        }
    };
    let channels = match channels {
        0 => 1,
        c if c <= u32::from(audio::MAX_CHANNELS) => c as u16,
        c => {
            return Err(Error::invalid(format!(
                "format.channels: {c} is outside 1..={} (0 = mono)",
                audio::MAX_CHANNELS
            )));
        }
    };
    let spec = AudioSpec::new(rate, channels)
        .ok_or_else(|| Error::internal("engine reported a native sample rate of 0"))?;
    let name = codec.name();
    if bitrate_bps != 0 && !matches!(codec, Codec::Mp3 | Codec::OggOpus) {
        return Err(Error::invalid(format!(
            "bitrate_bps: {name} has no bitrate; set it only for MP3 and OGG_OPUS (0 = default)"
        )));
    }
    if bits_per_sample != 0 && codec != Codec::Flac {
        return Err(Error::invalid(format!(
            "bits_per_sample: {name} has a fixed sample format; set it only for FLAC (0 = 16)"
        )));
    }
    let encoding = match codec {
        Codec::PcmS16Le => OutputEncoding::PcmS16Le,
        Codec::PcmF32Le => OutputEncoding::PcmF32Le,
        Codec::Wav => OutputEncoding::Wav,
        Codec::Mulaw => OutputEncoding::Mulaw,
        Codec::Alaw => OutputEncoding::Alaw,
        Codec::Mp3 => {
            if !mp3::SAMPLE_RATES.contains(&rate) {
                return Err(Error::invalid(format!(
                    "format.sample_rate_hz: MP3 cannot carry {rate} Hz; valid MP3 rates: {}",
                    list(&mp3::SAMPLE_RATES)
                )));
            }
            let allowed = mp3::bitrates(rate);
            let bitrate_bps = match bitrate_bps {
                0 => mp3::default_bitrate(spec),
                b if allowed.contains(&b) => b,
                b => {
                    return Err(Error::invalid(format!(
                        "bitrate_bps: {b} is not an MP3 bitrate at {rate} Hz; valid: {} (0 = default)",
                        list(&allowed)
                    )));
                }
            };
            OutputEncoding::Mp3 { bitrate_bps }
        }
        Codec::OggOpus => {
            let range = opus::BITRATE_RANGE;
            let bitrate_bps = match bitrate_bps {
                0 => opus::default_bitrate(spec),
                b if range.contains(&b) => b,
                b => {
                    return Err(Error::invalid(format!(
                        "bitrate_bps: {b} is outside {}..={} for OGG_OPUS (0 = default)",
                        range.start(),
                        range.end()
                    )));
                }
            };
            OutputEncoding::OggOpus { bitrate_bps }
        }
        Codec::Flac => {
            let bits_per_sample = match bits_per_sample {
                0 | 16 => 16,
                24 => 24,
                b => {
                    return Err(Error::invalid(format!(
                        "bits_per_sample: {b} is not supported for FLAC; valid: 16, 24 (0 = 16)"
                    )));
                }
            };
            OutputEncoding::Flac { bits_per_sample }
        }
    };
    Ok(OutputFormat { encoding, spec })
}

/// The MP3 rate used when a client asks for MP3 at the engine's native rate: the native rate
/// itself when MP3 can carry it, else the nearest MP3 rate above it (or 48 kHz).
fn nearest_mp3_rate(native: u32) -> u32 {
    mp3::SAMPLE_RATES
        .iter()
        .copied()
        .find(|&r| r >= native)
        .unwrap_or(audio::MAX_SAMPLE_RATE)
}

fn list(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn ask(codec: Codec, rate: u32) -> FormatRequest {
        FormatRequest {
            codec,
            sample_rate_hz: rate,
            ..FormatRequest::default()
        }
    }

    #[test]
    fn defaults_follow_the_engine() {
        let f = negotiate(FormatRequest::default(), 22050).unwrap();
        assert_eq!(f.encoding, OutputEncoding::PcmS16Le);
        assert_eq!((f.spec.sample_rate, f.spec.channels), (22050, 1));
        // MP3 cannot carry 23 kHz: the next MP3 rate up.
        let f = negotiate(ask(Codec::Mp3, 0), 23000).unwrap();
        assert_eq!(f.spec.sample_rate, 24000);
    }

    #[test]
    fn every_refusal_names_its_field() {
        let cases = [
            (ask(Codec::Wav, 7000), "format.sample_rate_hz: 7000"),
            (
                ask(Codec::Mp3, 12345),
                "format.sample_rate_hz: MP3 cannot carry",
            ),
            (
                FormatRequest {
                    channels: 3,
                    ..FormatRequest::default()
                },
                "format.channels: 3",
            ),
            (
                FormatRequest {
                    bitrate_bps: 64000,
                    ..ask(Codec::Wav, 0)
                },
                "bitrate_bps: WAV has no bitrate",
            ),
            (
                FormatRequest {
                    bits_per_sample: 24,
                    ..ask(Codec::Mp3, 0)
                },
                "bits_per_sample: MP3 has a fixed sample format",
            ),
            (
                FormatRequest {
                    bitrate_bps: 1,
                    ..ask(Codec::OggOpus, 0)
                },
                "bitrate_bps: 1 is outside 6000..=510000",
            ),
            (
                FormatRequest {
                    bits_per_sample: 8,
                    ..ask(Codec::Flac, 0)
                },
                "bits_per_sample: 8 is not supported for FLAC",
            ),
        ];
        for (request, start) in cases {
            let e = negotiate(request, 24000).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{request:?}");
            assert!(
                e.message().starts_with(start),
                "{request:?}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn codec_round_trips_through_the_negotiated_encoding() {
        for codec in Codec::ALL {
            let f = negotiate(ask(codec, 0), 24000).unwrap();
            assert_eq!(Codec::of(f.encoding), codec);
        }
    }
}
