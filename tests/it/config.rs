//! The shipped example configuration parses with unknown keys forbidden (spotifyd's
//! test_example_config), and its values are the documented defaults.

use std::path::Path;

use herald::config::{Env, RawConfig, parse_str};

#[test]
fn the_shipped_example_config_parses_and_matches_the_defaults() {
    let path = Path::new("systemd/herald.example.toml");
    let text = std::fs::read_to_string(path).expect("read example");
    let parsed = parse_str(&text, path).expect("example parses");
    let defaults = RawConfig::default();
    assert_eq!(
        toml::to_string(&parsed).unwrap(),
        toml::to_string(&defaults).unwrap(),
        "the example documents the defaults"
    );
    let config = parsed
        .validate(&Env::from_pairs([("RUNTIME_DIRECTORY", "/run/herald")]))
        .expect("validates");
    assert_eq!(config.synthesis.max_text_chars, 20_000);
}
