//! Parsing `espeak-ng --voices`: the voice list and the names a request may use.
//!
//! It must not run `espeak-ng` (the engine does, once at start).

use std::collections::HashMap;

use super::{MODEL, SAMPLE_RATE};
use crate::engine::VoiceInfo;

/// Parses `espeak-ng --voices` output into the voice list and the accepted-voice map (see
/// [`super::Espeak`]'s `voice_args`).
///
/// Columns: `Pty Language Age/Gender VoiceName File Other Languages`, e.g.
/// ` 5  cmn  --/M  Chinese_(Mandarin,_latin_as_English) sit/cmn  (zh-cmn 5)(zh 5)`. The columns
/// are not aligned when a name is long, so lines are split on whitespace (no column contains
/// spaces except "Other Languages", which is last). A Language already taken by an earlier voice
/// (`yue` is listed twice) names the later voice by its file instead (`yue-latn-jyutping`).
pub(super) fn parse_voices(listing: &str) -> (Vec<VoiceInfo>, HashMap<String, String>) {
    let mut voices = Vec::new();
    let mut voice_args = HashMap::new();
    let mut aliases = Vec::new();
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let (Some(priority), Some(language), Some(age_gender), Some(voice_name), Some(file)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if priority.parse::<u32>().is_err() {
            continue; // the header line
        }
        let others = fields.collect::<Vec<_>>().join(" ");
        let file_stem = file.rsplit('/').next().unwrap_or(file).to_lowercase();
        let Some(name) = [language.to_owned(), file_stem, file.to_owned()]
            .into_iter()
            .find(|candidate| !voice_args.contains_key(candidate))
        else {
            continue;
        };
        voice_args.insert(name.clone(), file.to_owned());

        let mut languages = vec![language.to_owned()];
        // "(en-gb 3)(en 5)": a language tag and a priority per group.
        for group in others.split(['(', ')']) {
            if let Some(tag) = group.split_whitespace().next()
                && !languages.iter().any(|l| l == tag)
            {
                languages.push(tag.to_owned());
                aliases.push(tag.to_owned());
            }
        }
        let gender = match age_gender.rsplit('/').next() {
            Some("M") => "male",
            Some("F") => "female",
            _ => "",
        };
        voices.push(VoiceInfo {
            name,
            display_name: voice_name.replace('_', " ").trim().to_owned(),
            languages,
            gender: gender.to_owned(),
            model: MODEL.to_owned(),
            native_sample_rate: SAMPLE_RATE,
        });
    }
    // Languages that only appear under "Other Languages" are passed to `-v` as they are; voice
    // names win over them.
    for alias in aliases {
        voice_args.entry(alias.clone()).or_insert(alias);
    }
    (voices, voice_args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_captured_listing() {
        let listing = "\
Pty Language       Age/Gender VoiceName          File                 Other Languages
 5  af              --/M      Afrikaans          gmw/af               
 5  chr-US-Qaaa-x-west --/M      Cherokee_          iro/chr              
 5  cmn             --/M      Chinese_(Mandarin,_latin_as_English) sit/cmn              (zh-cmn 5)(zh 5)
 2  en-gb           --/M      English_(Great_Britain) gmw/en               (en 2)
 5  en-gb-x-gbclan  --/F      English_(Lancaster) gmw/en-GB-x-gbclan   (en-gb 3)(en 5)
 5  yue             --/M      Chinese_(Cantonese) sit/yue              (zh-yue 5)(zh 8)
 5  yue             --/M      Chinese_(Cantonese,_latin_as_Jyutping) sit/yue-Latn-jyutping (zh-yue 5)(zh 8)
";
        let (voices, args) = parse_voices(listing);
        let names: Vec<&str> = voices.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "af",
                "chr-US-Qaaa-x-west",
                "cmn",
                "en-gb",
                "en-gb-x-gbclan",
                "yue",
                "yue-latn-jyutping"
            ]
        );
        let cmn = &voices[2];
        assert_eq!(cmn.display_name, "Chinese (Mandarin, latin as English)");
        assert_eq!(cmn.languages, ["cmn", "zh-cmn", "zh"]);
        assert_eq!(cmn.gender, "male");
        assert_eq!(cmn.model, MODEL);
        assert_eq!(cmn.native_sample_rate, 22_050);
        assert_eq!(voices[1].display_name, "Cherokee");
        assert_eq!(voices[0].languages, ["af"]);
        assert_eq!(voices[4].languages, ["en-gb-x-gbclan", "en-gb", "en"]);
        assert_eq!(voices[4].gender, "female");
        // Voice names map to their file; other languages pass through; names win.
        assert_eq!(args["chr-US-Qaaa-x-west"], "iro/chr");
        assert_eq!(args["en-gb"], "gmw/en");
        assert_eq!(args["yue-latn-jyutping"], "sit/yue-Latn-jyutping");
        assert_eq!(args["en"], "en");
        assert_eq!(args["zh"], "zh");
        assert_eq!(args.len(), 7 + ["zh-cmn", "zh", "en", "zh-yue"].len());
    }
}
