//! Reading one piece's events: the [`Decoder`] turns each family's SSE event JSON into
//! [`Step`]s (s16le audio, nothing, the end), sniffs and strips a WAV header where Qwen sends
//! one, reads CosyVoice word timings, billed characters and request ids.
//!
//! It must not hold audio back or change samples, and must not know about other pieces: the
//! driver orders pieces and offsets their word timings.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

use super::{Family, error::minimax_error, error_in};
use crate::{
    audio::{AudioSpec, wav::s16_header as wav_s16_header},
    engine::{EngineError, WordTiming},
};

/// What one event meant.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing for the client (sentence-begin/-end, empty chunks).
    Nothing,
    /// s16le PCM of `spec`.
    Audio {
        /// Rate and channels of `data`.
        spec: AudioSpec,
        /// Whole samples or not: split anywhere.
        data: Bytes,
    },
    /// The piece is complete.
    Finished,
}

/// Reads one piece's events, in order.
#[derive(Debug)]
pub struct Decoder {
    family: Family,
    /// The spec herald asked for (CosyVoice, MiniMax) or expects (Qwen raw PCM).
    spec: AudioSpec,
    /// Qwen: the first bytes, until we know whether they start with a WAV header.
    sniff: Option<Vec<u8>>,
    /// Audio bytes yielded so far.
    pub audio_bytes: u64,
    /// Billed characters the upstream reported last (cumulative).
    pub characters: Option<u32>,
    /// Upstream request id.
    pub request_id: Option<String>,
    /// Saw the final event.
    pub finished: bool,
    /// Word timings read and not yet taken, in ms from the start of this piece's audio.
    pub words: Vec<WordTiming>,
    /// Where the current sentence's audio began (CosyVoice `sentence-begin`), in ms.
    sentence_start_ms: Option<u32>,
    /// Some event carried words.
    words_read: bool,
}

/// The words of an `output.sentence.words` array (times as given, an end never before its
/// begin).
fn words_of(output: &Value) -> Vec<WordTiming> {
    let Some(words) = output
        .get("sentence")
        .and_then(|s| s.get("words"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let ms = |w: &Value, key: &str| {
        w.get(key)
            .and_then(Value::as_u64)
            .map_or(0, |t| u32::try_from(t).unwrap_or(u32::MAX))
    };
    words
        .iter()
        .filter_map(|w| {
            let text = w.get("text").and_then(Value::as_str)?;
            let begin_ms = ms(w, "begin_time");
            Some(WordTiming {
                text: text.to_owned(),
                begin_ms,
                end_ms: ms(w, "end_time").max(begin_ms),
            })
        })
        .collect()
}

/// Milliseconds of s16 audio of `spec` in `bytes`.
pub fn s16_ms(spec: AudioSpec, bytes: u64) -> u32 {
    let per_s = u64::from(spec.sample_rate) * 2 * u64::from(spec.channels);
    u32::try_from(bytes * 1000 / per_s.max(1)).unwrap_or(u32::MAX)
}

/// How far before its sentence's start a word may begin and still count as timed from the
/// request's start (the audio of a sentence-begin event may lag a little).
const SENTENCE_SLACK_MS: u32 = 50;

impl Decoder {
    /// A decoder for a piece asked at `rate`.
    pub fn new(family: Family, rate: u32) -> Self {
        Self {
            family,
            spec: AudioSpec {
                sample_rate: rate,
                channels: 1,
            },
            sniff: (family == Family::Qwen).then(Vec::new),
            audio_bytes: 0,
            characters: None,
            request_id: None,
            finished: false,
            words: Vec::new(),
            sentence_start_ms: None,
            words_read: false,
        }
    }

    /// ms of audio read so far.
    fn audio_ms(&self) -> u32 {
        s16_ms(self.spec, self.audio_bytes)
    }

    /// CosyVoice `sentence-end` events carry the sentence's words (with
    /// `word_timestamp_enabled`). Open point: the docs show times from 0 for the first sentence
    /// only, so whether later sentences count from the request's start or their own is not
    /// written down; times that fall before the sentence's own audio began are taken as
    /// sentence-relative and moved by the audio before it.
    fn read_words(&mut self, output: &Value) {
        if output.get("type").and_then(Value::as_str) != Some("sentence-end") {
            return;
        }
        let mut read = words_of(output);
        if !read.is_empty() {
            self.words_read = true;
        }
        let start = self.sentence_start_ms.unwrap_or(0);
        if read
            .first()
            .is_some_and(|w| w.begin_ms + SENTENCE_SLACK_MS < start)
        {
            for w in &mut read {
                w.begin_ms = w.begin_ms.saturating_add(start);
                w.end_ms = w.end_ms.saturating_add(start);
            }
        }
        self.words.extend(read);
    }

    /// A WebSocket run-task's `task-finished` output: the DashScope documents disagree on
    /// whether the words come in each `sentence-end` or all in `task-finished` (times from the
    /// task's start). Its words are read only when no `sentence-end` carried any, so none
    /// counts twice.
    pub fn task_finished_words(&mut self, output: &Value) {
        if !self.words_read {
            let read = words_of(output);
            self.words_read = !read.is_empty();
            self.words.extend(read);
        }
    }

    /// Read one event's JSON. `http_status` and `error_event` are the event's framing.
    pub fn event(
        &mut self,
        v: &Value,
        http_status: u16,
        error_event: bool,
    ) -> Result<Step, EngineError> {
        if let Some(e) = error_in(v, http_status, error_event) {
            return Err(e);
        }
        if let Some(id) = v.get("request_id").and_then(Value::as_str) {
            self.request_id = Some(id.to_owned());
        }
        if let Some(n) = v
            .get("usage")
            .and_then(|u| u.get("characters"))
            .and_then(Value::as_u64)
        {
            self.characters = u32::try_from(n).ok();
        }
        let output = v.get("output");
        match self.family {
            Family::CosyVoice | Family::Qwen => {
                if self.family == Family::CosyVoice
                    && let Some(o) = output
                {
                    if o.get("type").and_then(Value::as_str) == Some("sentence-begin") {
                        self.sentence_start_ms = Some(self.audio_ms());
                    }
                    self.read_words(o);
                }
                let audio = output
                    .and_then(|o| o.get("audio"))
                    .and_then(|a| a.get("data"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let finished = output
                    .and_then(|o| o.get("finish_reason"))
                    .and_then(Value::as_str)
                    == Some("stop");
                let step = if audio.is_empty() {
                    Step::Nothing
                } else {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(audio.trim())
                        .map_err(|e| {
                            EngineError::Protocol(format!("output.audio.data is not base64: {e}"))
                        })?;
                    self.audio(data)?
                };
                if finished {
                    self.finished = true;
                    if step == Step::Nothing {
                        return self.finish();
                    }
                }
                Ok(step)
            }
            Family::MiniMax => {
                if let Some(e) = minimax_error(v) {
                    return Err(e);
                }
                let data = output.and_then(|o| o.get("data"));
                let status = data
                    .and_then(|d| d.get("status"))
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let hex_audio = data
                    .and_then(|d| d.get("audio"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if let Some(n) = output
                    .and_then(|o| o.get("extra_info"))
                    .and_then(|x| x.get("usage_characters"))
                    .and_then(Value::as_u64)
                    && self.characters.is_none()
                {
                    self.characters = u32::try_from(n).ok();
                }
                if status == 2 {
                    self.finished = true;
                    // The final frame repeats the whole audio unless herald's
                    // `exclude_aggregated_audio` was honoured: use it only if nothing came
                    // before (a stream that sent everything at once).
                    if self.audio_bytes == 0 && !hex_audio.is_empty() {
                        let bytes = decode_hex(hex_audio)?;
                        return self.audio(bytes);
                    }
                    return self.finish();
                }
                if hex_audio.is_empty() || hex_audio.starts_with("http") {
                    return Ok(Step::Nothing);
                }
                let bytes = decode_hex(hex_audio)?;
                self.audio(bytes)
            }
        }
    }

    /// Called when the upstream stream ended: `Ok` when the piece was complete.
    pub fn end(&mut self) -> Result<Step, EngineError> {
        if !self.finished {
            return Err(EngineError::Truncated);
        }
        self.finish()
    }

    fn finish(&mut self) -> Result<Step, EngineError> {
        if let Some(buf) = self.sniff.take()
            && !buf.is_empty()
        {
            // A Qwen piece shorter than a WAV header: raw PCM.
            let n = buf.len() as u64;
            self.audio_bytes += n;
            return self.check_even().map(|()| Step::Audio {
                spec: self.spec,
                data: Bytes::from(buf),
            });
        }
        self.check_even()?;
        Ok(Step::Finished)
    }

    fn check_even(&self) -> Result<(), EngineError> {
        if self.audio_bytes % 2 == 1 {
            return Err(EngineError::Protocol(format!(
                "{} bytes of 16-bit PCM: not a whole number of samples",
                self.audio_bytes
            )));
        }
        Ok(())
    }

    /// Audio bytes that came outside any JSON (a WebSocket binary frame, a decoded realtime
    /// delta): read as the family's audio, as an SSE event's audio would be.
    pub fn raw_audio(&mut self, data: Vec<u8>) -> Result<Step, EngineError> {
        self.audio(data)
    }

    fn audio(&mut self, data: Vec<u8>) -> Result<Step, EngineError> {
        let data = match self.sniff.as_mut() {
            None => data,
            Some(buf) => {
                buf.extend_from_slice(&data);
                if buf.len() < 4 {
                    return Ok(Step::Nothing);
                }
                if &buf[..4] != b"RIFF" {
                    self.sniff.take().unwrap_or_default()
                } else {
                    match wav_s16_header(buf) {
                        Ok(Some((spec, offset))) => {
                            if spec.channels != 1 && spec.channels != 2 {
                                return Err(EngineError::Protocol(format!(
                                    "WAV stream with {} channels",
                                    spec.channels
                                )));
                            }
                            self.spec = spec;
                            let mut all = self.sniff.take().unwrap_or_default();
                            all.drain(..offset);
                            all
                        }
                        Ok(None) if buf.len() < 4096 => return Ok(Step::Nothing),
                        Ok(None) => {
                            return Err(EngineError::Protocol(
                                "WAV header longer than 4096 bytes".to_owned(),
                            ));
                        }
                        Err(e) => {
                            return Err(EngineError::Protocol(format!(
                                "bad WAV header in the first audio chunk: {e}"
                            )));
                        }
                    }
                }
            }
        };
        if data.is_empty() {
            return Ok(Step::Nothing);
        }
        self.audio_bytes += data.len() as u64;
        Ok(Step::Audio {
            spec: self.spec,
            data: Bytes::from(data),
        })
    }
}

fn decode_hex(s: &str) -> Result<Vec<u8>, EngineError> {
    hex::decode(s.trim())
        .map_err(|e| EngineError::Protocol(format!("output.data.audio is not hex: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn minimax_final_frame_is_not_appended_twice() {
        let mut d = Decoder::new(Family::MiniMax, 16000);
        let chunk = json!({"output":{"base_resp":{"status_code":0},"data":{"audio":"01020304","status":1}}});
        let last = json!({"output":{"base_resp":{"status_code":0},"data":{"audio":"0102030401020304","status":2}},"usage":{"characters":5}});
        assert!(matches!(
            d.event(&chunk, 200, false).unwrap(),
            Step::Audio { .. }
        ));
        assert_eq!(d.event(&last, 200, false).unwrap(), Step::Finished);
        assert_eq!(d.audio_bytes, 4);
        assert_eq!(d.characters, Some(5));
        // Only a final frame: its audio is the audio.
        let mut d = Decoder::new(Family::MiniMax, 16000);
        assert!(matches!(
            d.event(&last, 200, false).unwrap(),
            Step::Audio { .. }
        ));
        assert_eq!(d.end().unwrap(), Step::Finished);
    }

    #[test]
    fn qwen_wav_header_is_sniffed_and_stripped_across_chunks() {
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\xff\xff\xff\x7fWAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&24000u32.to_le_bytes());
        wav.extend_from_slice(&48000u32.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data\xff\xff\xff\x7f");
        wav.extend_from_slice(&[1, 0, 2, 0]);
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let frame = |b: &[u8]| json!({"output":{"finish_reason":"null","audio":{"data": b64(b)}}});
        let mut d = Decoder::new(Family::Qwen, 24000);
        assert_eq!(
            d.event(&frame(&wav[..30]), 200, false).unwrap(),
            Step::Nothing
        );
        match d.event(&frame(&wav[30..]), 200, false).unwrap() {
            Step::Audio { spec, data } => {
                assert_eq!(spec.sample_rate, 24000);
                assert_eq!(&data[..], &[1, 0, 2, 0]);
            }
            other => panic!("{other:?}"),
        }
        let stop = json!({"output":{"finish_reason":"stop","audio":{"data":"","url":"http://x"}}});
        assert_eq!(d.event(&stop, 200, false).unwrap(), Step::Finished);
        // Raw PCM is passed through.
        let mut d = Decoder::new(Family::Qwen, 24000);
        assert!(matches!(
            d.event(&frame(&[5, 0, 6, 0, 7, 0]), 200, false).unwrap(),
            Step::Audio { .. }
        ));
        // Bad base64, an odd byte count and a missing final event are errors.
        let bad = json!({"output":{"audio":{"data":"@@@"}}});
        assert!(matches!(
            d.event(&bad, 200, false),
            Err(EngineError::Protocol(_))
        ));
        let mut d = Decoder::new(Family::CosyVoice, 16000);
        d.event(&frame(&[1, 2, 3]), 200, false).unwrap();
        assert!(matches!(d.end(), Err(EngineError::Truncated)));
        assert!(matches!(
            d.event(&stop, 200, false),
            Err(EngineError::Protocol(_))
        ));
    }

    #[test]
    fn word_times_of_later_sentences_count_from_the_request_either_way() {
        let b64 = |ms: usize| base64::engine::general_purpose::STANDARD.encode(vec![1u8; ms * 32]);
        let ev = |kind: &str, audio: String, words: Value| {
            json!({"output": {"type": kind, "sentence": {"index": 0, "words": words},
                "audio": {"data": audio}}})
        };
        let word = |t: &str, b: u64, e: u64| json!({"text": t, "begin_time": b, "end_time": e});
        for relative in [false, true] {
            let mut d = Decoder::new(Family::CosyVoice, 16000);
            let base = if relative { 0 } else { 1000 };
            let events = [
                ev("sentence-begin", String::new(), json!([])),
                ev("sentence-synthesis", b64(1000), json!([])),
                ev(
                    "sentence-end",
                    String::new(),
                    json!([word("one", 0, 600), word("two", 600, 1000)]),
                ),
                ev("sentence-begin", String::new(), json!([])),
                ev("sentence-synthesis", b64(500), json!([])),
                ev(
                    "sentence-end",
                    String::new(),
                    json!([word("three", base, base + 500)]),
                ),
            ];
            for e in &events {
                d.event(e, 200, false).unwrap();
            }
            let got: Vec<_> = d
                .words
                .iter()
                .map(|w| (w.text.as_str(), w.begin_ms, w.end_ms))
                .collect();
            assert_eq!(
                got,
                [("one", 0, 600), ("two", 600, 1000), ("three", 1000, 1500)],
                "relative: {relative}"
            );
        }
        // Words only from sentence-end events, and an end never before its begin.
        let mut d = Decoder::new(Family::CosyVoice, 16000);
        d.event(
            &ev("sentence-synthesis", b64(10), json!([word("x", 0, 5)])),
            200,
            false,
        )
        .unwrap();
        assert!(d.words.is_empty());
        d.event(
            &ev("sentence-end", String::new(), json!([word("y", 9, 3)])),
            200,
            false,
        )
        .unwrap();
        assert_eq!((d.words[0].begin_ms, d.words[0].end_ms), (9, 9));
    }

    #[test]
    fn task_finished_words_count_only_when_no_sentence_end_had_any() {
        let word = |t: &str, b: u64, e: u64| json!({"text": t, "begin_time": b, "end_time": e});
        let finished =
            json!({"sentence": {"index": 1, "words": [word("a", 0, 300), word("b", 300, 700)]}});
        // Only in task-finished: read there.
        let mut d = Decoder::new(Family::CosyVoice, 16000);
        d.event(
            &json!({"output": {"type": "sentence-end", "sentence": {"index": 0, "words": []}}}),
            200,
            false,
        )
        .unwrap();
        d.task_finished_words(&finished);
        let got: Vec<_> = d
            .words
            .iter()
            .map(|w| (w.text.as_str(), w.begin_ms))
            .collect();
        assert_eq!(got, [("a", 0), ("b", 300)]);
        // Already in a sentence-end (and taken since): not again.
        let mut d = Decoder::new(Family::CosyVoice, 16000);
        d.event(
            &json!({"output": {"type": "sentence-end",
                               "sentence": {"index": 0, "words": [word("a", 0, 300)]}}}),
            200,
            false,
        )
        .unwrap();
        d.words.clear();
        d.task_finished_words(&finished);
        assert!(d.words.is_empty());
    }
}
