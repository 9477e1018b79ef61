//! `Synthesize` at the gRPC door: the wire request → a core [`Request`], and core [`Event`]s
//! → `SynthesizeResponse`s. Only the translation of enums and messages lives here; every
//! limit and default is the core's, and must not be repeated here.

use tonic::Status;

use crate::{
    audio::{
        OutputEncoding,
        encode::negotiate::{Codec, FormatRequest},
    },
    error::Error,
    pb::{self, audio_format::Encoding, synthesize_response::Payload},
    provider::CachePolicy,
    synthesis::{Event, Info, Request, StreamInput, Summary, TextEvent},
};

/// The config of a `SynthesizeStream`: its first message, within `idle` (else
/// DEADLINE_EXCEEDED naming `synthesis.stream_idle_timeout_ms`); anything else first is
/// INVALID_ARGUMENT naming `config`.
pub async fn stream_config(
    inbound: &mut tonic::Streaming<pb::SynthesizeStreamRequest>,
    idle: std::time::Duration,
) -> Result<pb::SynthesizeRequest, Status> {
    use pb::synthesize_stream_request::Payload as In;
    let first = tokio::time::timeout(idle, inbound.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "config: no first message within {} ms (synthesis.stream_idle_timeout_ms)",
                idle.as_millis()
            ))
        })??;
    match first.and_then(|m| m.payload) {
        Some(In::Config(config)) => Ok(config),
        Some(In::Text(_) | In::Flush(_)) => Err(Status::invalid_argument(
            "config: the first message of SynthesizeStream must be a config (a SynthesizeRequest \
             without text); text and flush come after it",
        )),
        None => Err(Status::invalid_argument(
            "config: the stream ended (or sent an empty message) before its config",
        )),
    }
}

/// Forward a `SynthesizeStream`'s messages after its config to the core's `input`, until the
/// client half-closes (the end of the text) or goes away (dropping `input` says so).
pub async fn forward_text(
    mut inbound: tonic::Streaming<pb::SynthesizeStreamRequest>,
    input: StreamInput,
) {
    use pb::synthesize_stream_request::Payload as In;
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            () = input.closed() => return,
        };
        let event = match message {
            Ok(Some(m)) => match m.payload {
                Some(In::Text(text)) => TextEvent::Text(text),
                Some(In::Flush(_)) => TextEvent::Flush,
                Some(In::Config(_)) => TextEvent::Invalid(Error::invalid(
                    "config: sent twice; only the first message of SynthesizeStream is a config",
                )),
                None => TextEvent::Invalid(Error::invalid(
                    "payload: a SynthesizeStreamRequest must carry config, text or flush",
                )),
            },
            Ok(None) => TextEvent::End,
            // The client broke off: dropping `input` cancels the job.
            Err(_) => return,
        };
        let last = matches!(event, TextEvent::End | TextEvent::Invalid(_));
        if input.send(event).await.is_err() || last {
            return;
        }
    }
}

/// The core request of a `SynthesizeRequest`; an unknown enum value is INVALID_ARGUMENT
/// naming the field.
pub fn request(req: pb::SynthesizeRequest) -> Result<Request, Error> {
    let format = req.format.unwrap_or_default();
    let codec = match Encoding::try_from(format.encoding) {
        Ok(Encoding::Unspecified | Encoding::PcmS16le) => Codec::PcmS16Le,
        Ok(Encoding::PcmF32le) => Codec::PcmF32Le,
        Ok(Encoding::Wav) => Codec::Wav,
        Ok(Encoding::Mp3) => Codec::Mp3,
        Ok(Encoding::OggOpus) => Codec::OggOpus,
        Ok(Encoding::Flac) => Codec::Flac,
        Ok(Encoding::Mulaw) => Codec::Mulaw,
        Ok(Encoding::Alaw) => Codec::Alaw,
        Err(_) => {
            return Err(Error::invalid(format!(
                "format.encoding: unknown value {}",
                format.encoding
            )));
        }
    };
    let cache = match pb::CachePolicy::try_from(req.cache) {
        Ok(pb::CachePolicy::Unspecified | pb::CachePolicy::Use) => CachePolicy::Use,
        Ok(pb::CachePolicy::Refresh) => CachePolicy::Refresh,
        Ok(pb::CachePolicy::Bypass) => CachePolicy::Bypass,
        Err(_) => {
            return Err(Error::invalid(format!(
                "cache: unknown value {}; valid: USE, REFRESH, BYPASS",
                req.cache
            )));
        }
    };
    Ok(Request {
        text: req.text,
        voice: req.voice,
        model: req.model,
        language: req.language,
        instructions: req.instructions,
        speed: req.speed,
        pitch: req.pitch,
        volume: req.volume,
        format: FormatRequest {
            codec,
            sample_rate_hz: format.sample_rate_hz,
            channels: format.channels,
            bitrate_bps: req.bitrate_bps,
            bits_per_sample: req.bits_per_sample,
        },
        chunk_ms: req.chunk_ms,
        request_id: req.request_id,
        cache,
        fallback: !req.no_fallback,
        emotion: req.emotion,
        seed: req.seed,
        pronunciations: req.pronunciations,
        replacements: req.replacements,
        optimize_instructions: req.optimize_instructions,
        word_timestamps: req.word_timestamps,
        speaker: req.speaker,
    })
}

/// The response for one core event, or the status that ends the stream.
pub fn response(event: Result<Event, Error>) -> Result<pb::SynthesizeResponse, Status> {
    let payload = match event? {
        Event::Info(info) => Payload::Info(info_to_pb(info)),
        Event::Audio(chunk) => Payload::Audio(pb::AudioChunk {
            data: chunk.data,
            first_frame: chunk.first_frame,
            frames: chunk.frames,
        }),
        Event::Words(words) => Payload::Words(pb::WordTimings {
            words: words
                .into_iter()
                .map(|w| pb::WordTiming {
                    text: w.text,
                    begin_ms: w.begin_ms,
                    end_ms: w.end_ms,
                })
                .collect(),
        }),
        Event::Summary(summary) => Payload::Summary(summary_to_pb(summary)),
    };
    Ok(pb::SynthesizeResponse {
        payload: Some(payload),
    })
}

fn info_to_pb(info: Info) -> pb::AudioInfo {
    let Info {
        output,
        served,
        request_id,
        requested_model,
        requested_voice,
    } = info;
    pb::AudioInfo {
        format: Some(pb::AudioFormat {
            encoding: encoding_to_pb(output.encoding) as i32,
            sample_rate_hz: output.spec.sample_rate,
            channels: u32::from(output.spec.channels),
        }),
        model: served.model,
        voice: served.voice,
        engine: served.engine,
        request_id,
        native_sample_rate_hz: served.native_sample_rate,
        requested_model,
        requested_voice,
        cache_hit: served.cache_hit,
        fallback_used: served.fallback_reason.is_some(),
        fallback_reason: served.fallback_reason.unwrap_or_default(),
    }
}

fn summary_to_pb(summary: Summary) -> pb::SynthesisSummary {
    pb::SynthesisSummary {
        samples: summary.frames,
        duration_ms: summary.duration_ms,
        characters: summary.characters,
        cache_hit: summary.served.cache_hit,
        fallback_used: summary.served.fallback_reason.is_some(),
        upstream_request_ids: summary.upstream_request_ids,
        time_to_first_audio_us: summary
            .time_to_first_audio
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        bytes: summary.bytes,
        fallback_reason: summary.served.fallback_reason.clone().unwrap_or_default(),
        engine: summary.served.engine,
        sentences: summary
            .sentences
            .into_iter()
            .map(|s| pb::SentenceSummary {
                text: s.text,
                begin_ms: s.begin_ms,
                duration_ms: s.duration_ms,
                engine: s.served.engine,
                model: s.served.model,
                voice: s.served.voice,
                cache_hit: s.served.cache_hit,
                fallback_used: s.served.fallback_reason.is_some(),
                fallback_reason: s.served.fallback_reason.unwrap_or_default(),
                truncated: s.truncated,
            })
            .collect(),
    }
}

fn encoding_to_pb(e: OutputEncoding) -> Encoding {
    match Codec::of(e) {
        Codec::PcmS16Le => Encoding::PcmS16le,
        Codec::PcmF32Le => Encoding::PcmF32le,
        Codec::Wav => Encoding::Wav,
        Codec::Mulaw => Encoding::Mulaw,
        Codec::Alaw => Encoding::Alaw,
        Codec::Mp3 => Encoding::Mp3,
        Codec::OggOpus => Encoding::OggOpus,
        Codec::Flac => Encoding::Flac,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_names_are_the_proto_names() {
        for codec in Codec::ALL {
            let format = crate::audio::encode::negotiate::negotiate(
                FormatRequest {
                    codec,
                    ..FormatRequest::default()
                },
                24000,
            )
            .unwrap();
            assert_eq!(encoding_to_pb(format.encoding).as_str_name(), codec.name());
        }
    }

    #[test]
    fn unknown_enum_values_name_their_field() {
        let e = request(pb::SynthesizeRequest {
            cache: 99,
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.message().starts_with("cache: unknown value 99"),
            "{}",
            e.message()
        );
        let e = request(pb::SynthesizeRequest {
            format: Some(pb::AudioFormat {
                encoding: 42,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.message().starts_with("format.encoding: unknown value 42"));
    }
}
