//! Piper voices on disk: finding `NAME.onnx` + `NAME.onnx.json` pairs in the voice directories
//! and reading what the engine needs from the JSON (rate, espeak-ng voice, phoneme id map,
//! inference scales, speakers, language).
//!
//! It must not load models (the engine does, once per voice, on first use) or run espeak-ng.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Piper's defaults when a voice's `inference` section leaves a scale out.
const DEFAULT_NOISE_SCALE: f32 = 0.667;
const DEFAULT_LENGTH_SCALE: f32 = 1.0;
const DEFAULT_NOISE_W: f32 = 0.8;
/// Samples per model frame when the voice does not say (`hop_length`); alignments are in frames.
const DEFAULT_HOP_LENGTH: u32 = 256;

/// One installed voice.
#[derive(Clone, Debug, PartialEq)]
pub struct Voice {
    /// The file stem (`en_US-joe-medium`): the request's voice name.
    pub name: String,
    /// The model file.
    pub model: PathBuf,
    /// Output rate, Hz.
    pub sample_rate: u32,
    /// The `-v` argument for espeak-ng (`en-us`).
    pub espeak_voice: String,
    /// Phoneme (one or more codepoints) → ids.
    pub phoneme_ids: HashMap<String, Vec<i64>>,
    /// `noise_scale`, `length_scale`, `noise_w` from the `inference` section.
    pub scales: [f32; 3],
    /// Number of speakers (1 = single speaker: no `sid` input).
    pub num_speakers: u32,
    /// Speaker name → id, for multi-speaker voices.
    pub speakers: BTreeMap<String, u32>,
    /// Samples per alignment frame.
    pub hop_length: u32,
    /// BCP-47 language tag (`en-US`), from `language.code` or the name's prefix.
    pub language: String,
}

/// The parts of a Piper voice JSON the engine reads.
#[derive(Deserialize)]
struct VoiceJson {
    audio: AudioJson,
    espeak: Option<EspeakJson>,
    #[serde(default)]
    inference: InferenceJson,
    #[serde(default)]
    phoneme_type: Option<String>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default = "one")]
    num_speakers: u32,
    #[serde(default)]
    speaker_id_map: BTreeMap<String, u32>,
    #[serde(default)]
    hop_length: Option<u32>,
    #[serde(default)]
    language: Option<LanguageJson>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct AudioJson {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct EspeakJson {
    voice: String,
}

#[derive(Default, Deserialize)]
struct InferenceJson {
    noise_scale: Option<f32>,
    length_scale: Option<f32>,
    noise_w: Option<f32>,
}

#[derive(Deserialize)]
struct LanguageJson {
    code: Option<String>,
}

/// Why a voice file pair was skipped (logged at start).
#[derive(Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The model file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Every voice in `dirs` (not recursive; the first directory holding a name wins), sorted by
/// name, and the files skipped with why.
pub fn discover(dirs: &[PathBuf]) -> (Vec<Voice>, Vec<Skipped>) {
    let mut voices: BTreeMap<String, Voice> = BTreeMap::new();
    let mut skipped = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut models: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
            .collect();
        models.sort();
        for model in models {
            match read(&model) {
                Ok(voice) => {
                    voices.entry(voice.name.clone()).or_insert(voice);
                }
                Err(reason) => skipped.push(Skipped {
                    path: model,
                    reason,
                }),
            }
        }
    }
    (voices.into_values().collect(), skipped)
}

/// The voice of `model` (`NAME.onnx`, with `NAME.onnx.json` beside it).
pub fn read(model: &Path) -> Result<Voice, String> {
    let name = model
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("the file name is not UTF-8")?
        .to_owned();
    let mut json_path = model.as_os_str().to_owned();
    json_path.push(".json");
    let text = std::fs::read_to_string(&json_path)
        .map_err(|e| format!("cannot read {}: {e}", Path::new(&json_path).display()))?;
    parse(&name, model, &text)
}

/// The voice `name` at `model` from its JSON `text`.
pub fn parse(name: &str, model: &Path, text: &str) -> Result<Voice, String> {
    let json: VoiceJson =
        serde_json::from_str(text).map_err(|e| format!("not a Piper voice config: {e}"))?;
    match json.phoneme_type.as_deref() {
        None | Some("espeak") => {}
        Some(other) => {
            return Err(format!(
                "phoneme_type {other:?} is not supported (herald phonemizes with espeak-ng only)"
            ));
        }
    }
    let espeak_voice = json
        .espeak
        .map(|e| e.voice)
        .filter(|v| !v.is_empty())
        .ok_or("no espeak.voice")?;
    for symbol in [
        super::phonemes::PAD,
        super::phonemes::BOS,
        super::phonemes::EOS,
    ] {
        if !json.phoneme_id_map.contains_key(symbol) {
            return Err(format!("phoneme_id_map has no {symbol:?}"));
        }
    }
    if !(8_000..=96_000).contains(&json.audio.sample_rate) {
        return Err(format!(
            "audio.sample_rate {} is outside 8000..=96000",
            json.audio.sample_rate
        ));
    }
    let language = json
        .language
        .and_then(|l| l.code)
        .unwrap_or_else(|| name.split('-').next().unwrap_or(name).to_owned())
        .replace('_', "-");
    Ok(Voice {
        name: name.to_owned(),
        model: model.to_owned(),
        sample_rate: json.audio.sample_rate,
        espeak_voice,
        phoneme_ids: json.phoneme_id_map,
        scales: [
            json.inference.noise_scale.unwrap_or(DEFAULT_NOISE_SCALE),
            json.inference.length_scale.unwrap_or(DEFAULT_LENGTH_SCALE),
            json.inference.noise_w.unwrap_or(DEFAULT_NOISE_W),
        ],
        num_speakers: json.num_speakers.max(1),
        speakers: json.speaker_id_map,
        hop_length: json.hop_length.unwrap_or(DEFAULT_HOP_LENGTH),
        language,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"de"},
        "inference":{"noise_scale":0.5,"length_scale":1.1},
        "phoneme_id_map":{"_":[0],"^":[1],"$":[2]," ":[3],"a":[14],"aɪ":[161]},
        "num_speakers":2,"speaker_id_map":{"anna":0,"bernd":1},
        "language":{"code":"de_DE"}}"#;

    #[test]
    fn reads_a_voice_config() {
        let v = parse(
            "de_DE-test-medium",
            Path::new("/v/de_DE-test-medium.onnx"),
            JSON,
        )
        .unwrap();
        assert_eq!(v.sample_rate, 22_050);
        assert_eq!(v.espeak_voice, "de");
        assert_eq!(v.scales, [0.5, 1.1, 0.8]);
        assert_eq!(v.num_speakers, 2);
        assert_eq!(v.speakers["bernd"], 1);
        assert_eq!(v.language, "de-DE");
        assert_eq!(v.hop_length, 256);
    }

    #[test]
    fn refuses_other_phonemizers_and_missing_symbols() {
        let pinyin = JSON.replace(
            r#""num_speakers""#,
            r#""phoneme_type":"pinyin","num_speakers""#,
        );
        let err = parse("zh", Path::new("/v/zh.onnx"), &pinyin).unwrap_err();
        assert!(err.contains("pinyin"), "{err}");
        let no_pad = JSON.replace(r#""_":[0],"#, "");
        let err = parse("x", Path::new("/v/x.onnx"), &no_pad).unwrap_err();
        assert!(err.contains("\"_\""), "{err}");
    }
}
