//! The built-in catalogue of DashScope system voices (from DashScope's voice lists, checked
//! against a live account), and the rule for custom (cloned or designed) voice ids, which herald
//! passes through untouched.
//!
//! A voice that works with several models is listed once per model. The catalogue is what
//! herald knows, not what the upstream has: for CosyVoice and MiniMax an unknown voice id is
//! passed through (their catalogues are large and change; the upstream answers
//! `InvalidParameter`, which becomes INVALID_ARGUMENT), while Qwen-TTS's 49 voices are a closed
//! list and anything else is refused before any call.
//!
//! It owns static data only: it must not call upstream (custom voices are listed by
//! `crate::voices`).

use super::family::Family;
use crate::engine::VoiceInfo;

/// Models of each family, as herald lists them.
pub const COSYVOICE_MODELS: &[&str] = &[
    "cosyvoice-v3-flash",
    "cosyvoice-v3-plus",
    "cosyvoice-v3.5-flash",
    "cosyvoice-v3.5-plus",
    "cosyvoice-v2",
    "qwen-audio-3.0-tts-flash",
    "qwen-audio-3.0-tts-plus",
    "qwen-audio-3.1-tts-flash",
];
/// Qwen-TTS models.
pub const QWEN_MODELS: &[&str] = &[
    "qwen3-tts-flash",
    "qwen3-tts-instruct-flash",
    "qwen-tts",
    "qwen-tts-latest",
];
/// MiniMax models.
pub const MINIMAX_MODELS: &[&str] = &[
    "MiniMax/speech-2.8-hd",
    "MiniMax/speech-2.8-turbo",
    "MiniMax/speech-02-hd",
    "MiniMax/speech-02-turbo",
];

/// (voice, display name, languages, gender, models)
type Entry = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static [&'static str],
);

const V3: &[&str] = &["cosyvoice-v3-flash", "cosyvoice-v3-plus"];
const ZH_EN: &[&str] = &["zh", "en"];
const QWEN3_LANGS: &[&str] = &["zh", "en", "de", "it", "pt", "es", "ja", "ko", "fr", "ru"];
const QWEN3_MODELS: &[&str] = &["qwen3-tts-flash", "qwen3-tts-instruct-flash"];
const QWEN_ALL: &[&str] = &[
    "qwen3-tts-flash",
    "qwen3-tts-instruct-flash",
    "qwen-tts",
    "qwen-tts-latest",
];

const CATALOGUE: &[Entry] = &[
    // CosyVoice v3 (each accepted by a live account).
    ("longanyang", "龙安洋", ZH_EN, "male", V3),
    ("longanhuan", "龙安欢", ZH_EN, "female", V3),
    ("longanhuan_v3", "龙安欢 (dialects)", ZH_EN, "female", V3),
    ("longhuhu_v3", "龙呼呼 (child)", ZH_EN, "", V3),
    (
        "longjiaxin_v3",
        "龙嘉欣 (Cantonese)",
        &["zh-HK", "yue"],
        "female",
        V3,
    ),
    (
        "longlaotie_v3",
        "龙老铁 (Northeastern)",
        &["zh"],
        "male",
        V3,
    ),
    ("longsanshu_v3", "龙三叔 (audiobook)", &["zh"], "male", V3),
    ("longshuo_v3", "龙硕 (news)", &["zh"], "male", V3),
    ("longshange_v3", "龙山哥 (dialect)", &["zh"], "male", V3),
    (
        "loongabby_v3",
        "Abby (US English)",
        &["en-US"],
        "female",
        V3,
    ),
    ("loongbella_v3", "Bella", ZH_EN, "female", V3),
    // CosyVoice v2.
    (
        "longxiaochun_v2",
        "龙小淳",
        ZH_EN,
        "female",
        &["cosyvoice-v2"],
    ),
    ("longwan_v2", "龙婉", &["zh"], "female", &["cosyvoice-v2"]),
    // Qwen-Audio-TTS 3.0 flash / plus, 3.1 flash.
    (
        "longanfengyue",
        "龙安风月",
        ZH_EN,
        "",
        &["qwen-audio-3.0-tts-flash"],
    ),
    (
        "longanyuanfei",
        "龙安远飞",
        ZH_EN,
        "",
        &["qwen-audio-3.0-tts-flash"],
    ),
    (
        "longanlingxi",
        "龙安灵犀",
        ZH_EN,
        "",
        &["qwen-audio-3.0-tts-flash"],
    ),
    (
        "longanxiaoxin",
        "龙安小欣",
        ZH_EN,
        "",
        &["qwen-audio-3.0-tts-flash"],
    ),
    (
        "loongmary",
        "Mary",
        &["en"],
        "female",
        &["qwen-audio-3.0-tts-flash"],
    ),
    (
        "loongjohn",
        "John",
        &["en"],
        "male",
        &["qwen-audio-3.0-tts-flash"],
    ),
    (
        "longanlingxin",
        "龙安灵心",
        ZH_EN,
        "",
        &["qwen-audio-3.0-tts-plus"],
    ),
    (
        "longanlufeng",
        "龙安陆风",
        ZH_EN,
        "",
        &["qwen-audio-3.0-tts-plus"],
    ),
    (
        "anxiaolan_v3.1",
        "安小兰",
        ZH_EN,
        "female",
        &["qwen-audio-3.1-tts-flash"],
    ),
    (
        "longanhuan_v3.1",
        "龙安欢",
        ZH_EN,
        "female",
        &["qwen-audio-3.1-tts-flash"],
    ),
    (
        "Emily_v3.1",
        "Emily",
        &["en"],
        "female",
        &["qwen-audio-3.1-tts-flash"],
    ),
    // Qwen-TTS: the four original voices work with every model.
    ("Cherry", "Cherry", QWEN3_LANGS, "female", QWEN_ALL),
    ("Serena", "Serena", QWEN3_LANGS, "female", QWEN_ALL),
    ("Ethan", "Ethan", QWEN3_LANGS, "male", QWEN_ALL),
    ("Chelsie", "Chelsie", QWEN3_LANGS, "female", QWEN_ALL),
    ("Dylan", "Dylan (Beijing)", &["zh"], "male", QWEN_ALL),
    ("Jada", "Jada (Shanghai)", &["zh"], "female", QWEN_ALL),
    ("Sunny", "Sunny (Sichuan)", &["zh"], "female", QWEN_ALL),
    ("Nofish", "Nofish", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Jennifer", "Jennifer", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Li", "Li (Nanjing)", &["zh"], "male", QWEN3_MODELS),
    ("Marcus", "Marcus (Shaanxi)", &["zh"], "male", QWEN3_MODELS),
    ("Roy", "Roy (Minnan)", &["zh"], "male", QWEN3_MODELS),
    ("Peter", "Peter (Tianjin)", &["zh"], "male", QWEN3_MODELS),
    ("Eric", "Eric (Sichuan)", &["zh"], "male", QWEN3_MODELS),
    (
        "Rocky",
        "Rocky (Cantonese)",
        &["zh-HK", "yue"],
        "male",
        QWEN3_MODELS,
    ),
    (
        "Kiki",
        "Kiki (Cantonese)",
        &["zh-HK", "yue"],
        "female",
        QWEN3_MODELS,
    ),
    ("Ryan", "Ryan", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Katerina", "Katerina", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Elias", "Elias", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Momo", "Momo", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Moon", "Moon", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Maia", "Maia", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Kai", "Kai", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Bella", "Bella", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Aiden", "Aiden", QWEN3_LANGS, "male", QWEN3_MODELS),
    (
        "Eldric Sage",
        "Eldric Sage",
        QWEN3_LANGS,
        "male",
        QWEN3_MODELS,
    ),
    ("Mia", "Mia", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Mochi", "Mochi", QWEN3_LANGS, "", QWEN3_MODELS),
    ("Bellona", "Bellona", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Vincent", "Vincent", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Bunny", "Bunny", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Neil", "Neil", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Arthur", "Arthur", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Nini", "Nini", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Ebona", "Ebona", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Seren", "Seren", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Pip", "Pip", QWEN3_LANGS, "", QWEN3_MODELS),
    ("Stella", "Stella", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Bodega", "Bodega", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Sonrisa", "Sonrisa", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Alek", "Alek", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Dolce", "Dolce", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Sohee", "Sohee", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Ono Anna", "Ono Anna", QWEN3_LANGS, "female", QWEN3_MODELS),
    ("Lenn", "Lenn", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Emilien", "Emilien", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Andre", "Andre", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Radio Gol", "Radio Gol", QWEN3_LANGS, "male", QWEN3_MODELS),
    ("Vivian", "Vivian", QWEN3_LANGS, "female", QWEN3_MODELS),
    // MiniMax (MiniMax-native ids).
    (
        "male-qn-qingse",
        "青涩青年",
        &["zh"],
        "male",
        MINIMAX_MODELS,
    ),
    ("female-shaonv", "少女", &["zh"], "female", MINIMAX_MODELS),
    (
        "English_Graceful_Lady",
        "Graceful Lady",
        &["en"],
        "female",
        MINIMAX_MODELS,
    ),
    (
        "Chinese (Mandarin)_Lyrical_Voice",
        "Lyrical Voice",
        &["zh"],
        "female",
        MINIMAX_MODELS,
    ),
];

/// The catalogue voices of `family`, one entry per (voice, model).
pub fn catalogue(family: Family) -> Vec<VoiceInfo> {
    CATALOGUE
        .iter()
        .flat_map(|(name, display, langs, gender, models)| {
            models
                .iter()
                .filter(move |m| Family::for_model(m) == Some(family))
                .map(move |m| VoiceInfo {
                    name: (*name).to_owned(),
                    display_name: (*display).to_owned(),
                    languages: langs.iter().map(|l| (*l).to_owned()).collect(),
                    gender: (*gender).to_owned(),
                    model: (*m).to_owned(),
                    native_sample_rate: family.native_rate(),
                })
        })
        .collect()
}

/// The default voice of `model` (empty when the model has no system voice: cosyvoice-v3.5).
pub fn default_voice(model: &str) -> &'static str {
    match model {
        m if m.starts_with("cosyvoice-v3.5") => "",
        "cosyvoice-v2" => "longxiaochun_v2",
        m if m.starts_with("cosyvoice-") => "longanyang",
        "qwen-audio-3.0-tts-plus" => "longanlingxin",
        m if m.starts_with("qwen-audio-3.1") => "longanhuan_v3.1",
        m if m.starts_with("qwen-audio-") => "longanfengyue",
        m if m.starts_with("MiniMax/") => "male-qn-qingse",
        _ => "Cherry",
    }
}

/// True for ids of cloned or designed voices (see `crate::voices`): herald passes them
/// through; the upstream knows which model each belongs to.
pub fn is_custom(voice: &str) -> bool {
    ["cosyvoice-", "qwen-tts-vc-", "qwen-tts-vd-", "qwen-audio-"]
        .iter()
        .any(|p| voice.starts_with(p))
}

/// `Ok` when `voice` may be sent with `model` (see the module docs).
pub fn check(family: Family, model: &str, voice: &str) -> Result<(), String> {
    if voice.is_empty() {
        return Err(format!(
            "model {model:?} has no system voices: pass a cloned or designed voice id"
        ));
    }
    if voice.chars().count() > 256 || voice.chars().any(char::is_control) {
        return Err("must be at most 256 printable characters".to_owned());
    }
    if is_custom(voice) {
        return Ok(());
    }
    if model.starts_with("cosyvoice-v3.5") {
        return Err(format!(
            "model {model:?} has no system voices: {voice:?} is not a cloned or designed voice id"
        ));
    }
    // A Qwen-TTS-Realtime model speaks with the voices of its HTTP sibling.
    let model = match model.strip_suffix("-realtime") {
        Some(sibling) if super::ws::is_realtime_model(model) => sibling,
        _ => model,
    };
    let models: Vec<&str> = CATALOGUE
        .iter()
        .filter(|(n, ..)| *n == voice)
        .flat_map(|(.., models)| models.iter().copied())
        .collect();
    if models.contains(&model) {
        return Ok(());
    }
    if !models.is_empty() {
        return Err(format!(
            "voice {voice:?} does not work with model {model:?}; it works with: {}",
            models.join(", ")
        ));
    }
    match family {
        Family::Qwen => Err(format!(
            "voice {voice:?} is not a voice of model {model:?} (see ListVoices; names are case-sensitive)"
        )),
        // Open catalogues: the upstream decides.
        Family::CosyVoice | Family::MiniMax => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voices_are_checked_against_their_models() {
        check(Family::CosyVoice, "cosyvoice-v3-flash", "longanyang").unwrap();
        let e = check(Family::CosyVoice, "cosyvoice-v3-flash", "longxiaochun_v2").unwrap_err();
        assert!(e.contains("cosyvoice-v2"), "{e}");
        let e = check(Family::CosyVoice, "cosyvoice-v3.5-flash", "longanyang").unwrap_err();
        assert!(e.contains("no system voices"), "{e}");
        check(
            Family::CosyVoice,
            "cosyvoice-v3.5-flash",
            "cosyvoice-v3.5-flash-museum-3f2a",
        )
        .unwrap();
        assert!(check(Family::Qwen, "qwen3-tts-flash", "cherry").is_err());
        check(Family::Qwen, "qwen3-tts-flash", "Eldric Sage").unwrap();
        check(Family::MiniMax, "MiniMax/speech-2.8-hd", "some_new_voice").unwrap();
        assert!(check(Family::CosyVoice, "cosyvoice-v3.5-plus", "").is_err());
    }

    #[test]
    fn catalogue_lists_each_voice_per_model_and_v35_has_none() {
        let cosy = catalogue(Family::CosyVoice);
        assert!(!cosy.iter().any(|v| v.model.starts_with("cosyvoice-v3.5")));
        assert_eq!(cosy.iter().filter(|v| v.name == "longanyang").count(), 2);
        let qwen = catalogue(Family::Qwen);
        assert_eq!(
            qwen.iter().filter(|v| v.model == "qwen3-tts-flash").count(),
            49
        );
        for m in MINIMAX_MODELS {
            assert!(catalogue(Family::MiniMax).iter().any(|v| v.model == *m));
        }
        for model in COSYVOICE_MODELS
            .iter()
            .chain(QWEN_MODELS)
            .chain(MINIMAX_MODELS)
        {
            let family = Family::for_model(model).unwrap();
            let voice = default_voice(model);
            if !voice.is_empty() {
                check(family, model, voice).unwrap();
            }
        }
    }
}
