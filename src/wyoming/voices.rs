//! herald's voices as Wyoming names them: the `tts` program of `info`, and a `synthesize`'s
//! voice (a name, or only a language, as Home Assistant sends when the user picked none) →
//! the model and voice of a core request.
//!
//! A Wyoming voice name is `MODEL/VOICE` (a DashScope voice serves several models, and Home
//! Assistant shows the `description`, not the name); a bare herald voice name is accepted too,
//! preferring the default model. Translation only: whether the voice can speak is the core's
//! check.

use serde_json::{Value, json};

use crate::{error::Error, synthesis::Core};

/// One voice of the catalogue.
#[derive(Clone, Debug, PartialEq)]
pub struct Voice {
    /// The herald model.
    pub model: String,
    /// The herald voice name.
    pub voice: String,
    /// Its display name.
    pub display_name: String,
    /// Its language tags.
    pub languages: Vec<String>,
}

impl Voice {
    /// The name Wyoming clients see and send.
    pub fn wyoming_name(&self) -> String {
        format!("{}/{}", self.model, self.voice)
    }
}

/// The voices of every engine of `core`, default model first (then in the engines' order).
pub fn catalogue(core: &Core) -> Vec<Voice> {
    let default = &core.settings().default_model;
    let mut voices: Vec<Voice> = core
        .provider()
        .engines()
        .all()
        .iter()
        .flat_map(|e| e.voices())
        .map(|v| Voice {
            model: v.model,
            voice: v.name,
            display_name: v.display_name,
            languages: v.languages,
        })
        .collect();
    // Stable: the engines' order is kept within each group.
    voices.sort_by_key(|v| v.model != *default);
    voices
}

/// The `info` event's data: one `tts` program, herald, with its voices.
pub fn info(voices: &[Voice]) -> Value {
    let attribution = json!({"name": "herald", "url": env!("CARGO_PKG_REPOSITORY")});
    let voices: Vec<Value> = voices
        .iter()
        .map(|v| {
            let display = if v.display_name.is_empty() {
                &v.voice
            } else {
                &v.display_name
            };
            json!({
                "name": v.wyoming_name(),
                "attribution": attribution,
                "installed": true,
                "description": format!("{display} ({})", v.model),
                "version": null,
                "languages": v.languages,
                "speakers": null,
            })
        })
        .collect();
    json!({
        "tts": [{
            "name": "herald",
            "attribution": attribution,
            "installed": true,
            "description": "herald local speech daemon",
            "version": env!("CARGO_PKG_VERSION"),
            "voices": voices,
            "supports_synthesize_streaming": true,
        }]
    })
}

/// What a `synthesize` asks for in its `voice` object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Asked {
    /// `voice.name`.
    pub name: Option<String>,
    /// `voice.language`.
    pub language: Option<String>,
}

impl Asked {
    /// The `voice` object of an event's data (absent or malformed fields are `None`).
    pub fn from_data(data: &serde_json::Map<String, Value>) -> Self {
        let voice = data.get("voice").and_then(Value::as_object);
        let field = |k: &str| {
            voice
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Self {
            name: field("name"),
            language: field("language"),
        }
    }
}

/// `en_US` → `en-us`.
fn normal(tag: &str) -> String {
    tag.trim().replace('_', "-").to_ascii_lowercase()
}

/// The (model, voice) of a core request: `("", "")` lets the core choose (its defaults).
pub fn resolve(core: &Core, voices: &[Voice], asked: &Asked) -> Result<(String, String), Error> {
    if let Some(name) = &asked.name {
        if let Some(v) = voices.iter().find(|v| v.wyoming_name() == *name) {
            return Ok((v.model.clone(), v.voice.clone()));
        }
        // MODEL/VOICE with a voice the catalogue does not list (a custom voice herald created,
        // or a DashScope voice id): the core checks it against its model.
        if let Some((model, voice)) = name.rsplit_once('/')
            && core.provider().engines().for_model(model).is_some()
        {
            return Ok((model.to_owned(), voice.to_owned()));
        }
        // A bare voice name (the catalogue lists the default model first), else a custom
        // voice id, whose model the core knows.
        if let Some(v) = voices.iter().find(|v| v.voice == *name) {
            return Ok((v.model.clone(), v.voice.clone()));
        }
        return Ok((String::new(), name.clone()));
    }
    let Some(language) = &asked.language else {
        return Ok((String::new(), String::new()));
    };
    let want = normal(language);
    let settings = core.settings();
    let default_voice = settings.default_voice.clone().or_else(|| {
        core.provider()
            .engines()
            .for_model(&settings.default_model)
            .map(|e| e.default_voice(&settings.default_model))
    });
    let is_default = |v: &Voice| {
        v.model == settings.default_model && default_voice.as_deref() == Some(v.voice.as_str())
    };
    let exact = |v: &Voice| v.languages.iter().any(|l| normal(l) == want);
    // `en` serves `en-US` and the other way round.
    let related = |v: &Voice| {
        v.languages.iter().any(|l| {
            let l = normal(l);
            want.starts_with(&format!("{l}-")) || l.starts_with(&format!("{want}-"))
        })
    };
    let found = voices
        .iter()
        .find(|v| is_default(v) && exact(v))
        .or_else(|| voices.iter().find(|v| exact(v)))
        .or_else(|| voices.iter().find(|v| is_default(v) && related(v)))
        .or_else(|| voices.iter().find(|v| related(v)));
    match found {
        Some(v) => Ok((v.model.clone(), v.voice.clone())),
        None => Err(Error::invalid(format!(
            "voice.language: no voice of this daemon speaks {:?}",
            crate::synthesis::truncate(language, 40)
        ))),
    }
}
