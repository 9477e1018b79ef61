//! Request bodies: one piece of a [`SynthesisRequest`] as the JSON its family's endpoint
//! takes, always asking for raw s16 PCM.
//!
//! It must not check options (`Family::check` did, before any call) or read answers.

use serde_json::{Map, Value, json};

use super::Family;
use crate::engine::SynthesisRequest;

impl Family {
    /// The request body for one piece of `req` (the piece's text is `text`), asking for s16
    /// PCM at `rate` where the family lets herald choose.
    pub fn body(self, req: &SynthesisRequest, text: &str, rate: u32) -> Value {
        let model = req.model.as_str();
        // `check` ran before; a language it accepted always maps.
        let language = req
            .language
            .as_deref()
            .and_then(|l| self.language(model, l).ok());
        match self {
            Self::CosyVoice => {
                let mut input = Map::new();
                input.insert("text".into(), json!(text));
                input.insert("voice".into(), json!(req.voice));
                input.insert("format".into(), json!("pcm"));
                input.insert("sample_rate".into(), json!(rate));
                input.insert("volume".into(), json!(50));
                input.insert("rate".into(), json!(req.speed));
                input.insert("pitch".into(), json!(req.pitch));
                if let Some(seed) = req.seed {
                    input.insert("seed".into(), json!(seed));
                }
                if req.word_timestamps {
                    input.insert("word_timestamp_enabled".into(), json!(true));
                }
                if let Some(l) = language {
                    input.insert("language_hints".into(), l);
                }
                if let Some(i) = &req.instructions {
                    input.insert("instruction".into(), json!(i));
                }
                let mut hot_fix = Map::new();
                if !req.pronunciations.is_empty() {
                    hot_fix.insert("pronunciation".into(), dict_objects(&req.pronunciations));
                }
                if !req.replacements.is_empty() {
                    hot_fix.insert("replace".into(), dict_objects(&req.replacements));
                }
                if !hot_fix.is_empty() {
                    input.insert("hot_fix".into(), Value::Object(hot_fix));
                }
                json!({"model": model, "input": input})
            }
            Self::Qwen => {
                let mut input = Map::new();
                input.insert("text".into(), json!(text));
                input.insert("voice".into(), json!(req.voice));
                if let Some(l) = language {
                    input.insert("language_type".into(), l);
                }
                let mut parameters = Map::new();
                parameters.insert("stream".into(), json!(true));
                // Undocumented but measured against the live API: sent only when asked for.
                if req.speed != 1.0 {
                    parameters.insert("speech_rate".into(), json!(req.speed));
                }
                if req.pitch != 1.0 {
                    parameters.insert("pitch_rate".into(), json!(req.pitch));
                }
                // The official SDKs place instructions in `parameters`.
                if let Some(i) = &req.instructions {
                    parameters.insert("instructions".into(), json!(i));
                    parameters.insert(
                        "optimize_instructions".into(),
                        json!(req.optimize_instructions),
                    );
                }
                json!({"model": model, "input": input, "parameters": parameters})
            }
            Self::MiniMax => {
                let mut voice = Map::new();
                voice.insert("voice_id".into(), json!(req.voice));
                voice.insert("speed".into(), json!(req.speed));
                voice.insert("vol".into(), json!(1));
                voice.insert("pitch".into(), json!(minimax_pitch(req.pitch)));
                if let Some(e) = &req.emotion {
                    voice.insert("emotion".into(), json!(e));
                }
                let mut input = Map::new();
                input.insert("text".into(), json!(text));
                input.insert("voice_setting".into(), Value::Object(voice));
                input.insert(
                    "audio_setting".into(),
                    json!({"sample_rate": rate, "format": "pcm", "channel": 1}),
                );
                input.insert(
                    "stream_options".into(),
                    json!({"exclude_aggregated_audio": true}),
                );
                if let Some(l) = language {
                    input.insert("language_boost".into(), l);
                }
                if !req.pronunciations.is_empty() {
                    let tone: Vec<String> = req
                        .pronunciations
                        .iter()
                        .map(|(w, p)| format!("{w}/{p}"))
                        .collect();
                    input.insert("pronunciation_dict".into(), json!({ "tone": tone }));
                }
                json!({"model": model, "input": input})
            }
        }
    }
}

/// `[{word: value}, ...]`, CosyVoice's `hot_fix` shape.
fn dict_objects(entries: &[(String, String)]) -> Value {
    Value::Array(entries.iter().map(|(k, v)| json!({ k: v })).collect())
}

/// herald's pitch multiplier as MiniMax semitones (-12..=12).
fn minimax_pitch(pitch: f32) -> i32 {
    // The clamp keeps the value in -12..=12, so the cast cannot truncate.
    (12.0 * pitch.log2()).round().clamp(-12.0, 12.0) as i32
}

#[cfg(test)]
mod tests {
    use super::{super::test_request as req, *};

    #[test]
    fn bodies_follow_the_spec() {
        let mut r = req("cosyvoice-v3-flash");
        r.seed = Some(42);
        r.pronunciations = vec![("天气".into(), "tian1 qi4".into())];
        let b = Family::CosyVoice.body(&r, "piece", 16000);
        assert_eq!(b["input"]["format"], "pcm");
        assert_eq!(b["input"]["sample_rate"], 16000);
        assert_eq!(b["input"]["text"], "piece");
        assert_eq!(b["input"]["seed"], 42);
        assert_eq!(
            b["input"]["hot_fix"]["pronunciation"][0]["天气"],
            "tian1 qi4"
        );
        let mut r = req("qwen3-tts-instruct-flash");
        r.instructions = Some("warm".into());
        r.language = Some("en".into());
        let b = Family::Qwen.body(&r, "piece", 24000);
        assert_eq!(b["parameters"]["instructions"], "warm");
        assert_eq!(b["input"]["language_type"], "English");
        let mut r = req("MiniMax/speech-02-hd");
        r.pitch = 2.0;
        r.emotion = Some("calm".into());
        let b = Family::MiniMax.body(&r, "piece", 16000);
        assert_eq!(b["input"]["voice_setting"]["pitch"], 12);
        assert_eq!(b["input"]["voice_setting"]["emotion"], "calm");
        assert_eq!(b["input"]["audio_setting"]["format"], "pcm");
        assert_eq!(
            b["input"]["stream_options"]["exclude_aggregated_audio"],
            true
        );
    }

    #[test]
    fn word_timestamps_are_cosyvoice_only_and_reach_the_body() {
        let mut r = SynthesisRequest {
            model: "cosyvoice-v3-flash".into(),
            voice: "longanyang".into(),
            speed: 1.0,
            pitch: 1.0,
            word_timestamps: true,
            ..Default::default()
        };
        Family::CosyVoice.check(&r).unwrap();
        assert_eq!(
            Family::CosyVoice.body(&r, "hi", 16000)["input"]["word_timestamp_enabled"],
            true
        );
        r.model = "qwen3-tts-flash".into();
        assert!(
            Family::Qwen
                .check(&r)
                .unwrap_err()
                .starts_with("word_timestamps:")
        );
    }
}
