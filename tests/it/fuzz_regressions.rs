//! The fuzz targets' bodies (`herald::fuzzing`) over every committed input, in the normal test
//! suite: the seed corpus (`fuzz/corpus/<target>/seed-*`) and every crash the fuzzers found
//! (`fuzz/regressions/<target>/*`, named after what they broke). A fixed crash stays fixed
//! even on a machine without cargo-fuzz.

use std::path::Path;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).expect("read input");
            (p.display().to_string(), data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_seed_and_every_crash_found_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seeds = 0;
    for (target, body) in herald::fuzzing::TARGETS {
        let corpus = inputs(&root.join("corpus").join(target));
        assert!(
            corpus.len() >= 3,
            "fuzz/corpus/{target}: at least 3 committed seeds"
        );
        seeds += corpus.len();
        for (name, data) in corpus
            .iter()
            .chain(&inputs(&root.join("regressions").join(target)))
        {
            let run = std::panic::catch_unwind(|| body(data));
            assert!(run.is_ok(), "{target}: {name} fails its target");
        }
    }
    assert!(seeds >= 15);
}

#[test]
fn the_targets_reject_nothing_they_should_accept() {
    // A valid request validates (the target would hide a validator that refuses everything).
    let v = herald::fuzzing::Validator::new();
    let seed = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/validate/seed-cosyvoice"),
    )
    .expect("seed");
    assert_eq!(
        v.synthesize(&seed).map_err(|s| s.message().to_owned()),
        Ok(true)
    );
    assert_eq!(v.synthesize(&[0xFF]).ok(), Some(false), "not a message");
}
