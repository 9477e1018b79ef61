//! The architecture test: the layering rules of the source tree, checked on every test run.
//!
//! - The core (`engine/`, `audio/`, `cache/`, `synthesis/`, `playback/`, `voices/`, `config/`,
//!   and the provider, pipeline and error modules) knows no wire format: no `tonic`, no
//!   `prost`, no HTTP framework (`axum`), no generated `pb` types, and no door module
//!   (`service`, `wyoming`, `openai`, `cli`, `client`).
//! - No channel in `src/` is unbounded (back-pressure everywhere).
//!
//! The rules are read from the code with comments removed, so a doc comment may name what it
//! must not use.

use std::path::{Path, PathBuf};

/// The core: paths under `src/` (folders end with `/`).
const CORE: &[&str] = &[
    "engine/",
    "audio/",
    "cache/",
    "synthesis/",
    "playback/",
    "voices/",
    "config/",
    "provider.rs",
    "pipeline.rs",
    "error.rs",
];

/// What the core must not name: wire formats and doors.
const WIRE: &[&str] = &[
    "tonic::",
    "use tonic",
    "prost::",
    "use prost",
    "crate::pb",
    "pb::",
    "axum::",
    "use axum",
    "crate::service",
    "crate::openai",
    "crate::cli",
    "crate::client",
    "crate::wyoming",
];

/// What no file in `src/` may name.
const UNBOUNDED: &[&str] = &["unbounded_channel", "UnboundedSender", "UnboundedReceiver"];

/// `path` relative to `src/`, with `/` separators.
fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line: everything before a `//` comment (string contents are kept, which only
/// errs on the side of reporting).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// True when `needle` occurs in `line` not as the tail of a longer identifier (`pb::` inside
/// `my_pb::` does not count).
fn names(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(i, _)| {
        line[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

/// Every rule broken under `src`, as `file:line: what`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let rel = relative(src, &file);
        let in_core = CORE.iter().any(|c| {
            if c.ends_with('/') {
                rel.starts_with(c)
            } else {
                rel == *c
            }
        });
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let line = code(line);
            for needle in UNBOUNDED {
                if names(line, needle) {
                    out.push(format!("{rel}:{}: unbounded channel ({needle})", n + 1));
                }
            }
            if in_core {
                for needle in WIRE {
                    if names(line, needle) {
                        out.push(format!(
                            "{rel}:{}: the core names a wire type or door ({needle})",
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_core_knows_no_wire_format_and_every_channel_is_bounded() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "layering rules broken (see tests/it/architecture.rs):\n{}",
        found.join("\n")
    );
}

#[test]
fn a_planted_violation_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("engine")).unwrap();
    std::fs::create_dir_all(src.join("service")).unwrap();
    std::fs::write(
        src.join("engine/bad.rs"),
        "//! Must not use tonic::Status.\nuse tonic::Status;\nfn f() -> crate::pb::Voice { todo() }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("service/ok.rs"),
        "use tonic::Status;\nfn g() { let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u8>(); }\n",
    )
    .unwrap();
    std::fs::write(src.join("provider.rs"), "fn h(x: my_pb::Thing) {}\n").unwrap();
    let found = violations(src);
    assert_eq!(
        found,
        vec![
            "engine/bad.rs:2: the core names a wire type or door (tonic::)".to_owned(),
            "engine/bad.rs:2: the core names a wire type or door (use tonic)".to_owned(),
            "engine/bad.rs:3: the core names a wire type or door (crate::pb)".to_owned(),
            "engine/bad.rs:3: the core names a wire type or door (pb::)".to_owned(),
            "service/ok.rs:2: unbounded channel (unbounded_channel)".to_owned(),
        ],
        "the comment on line 1, the door's tonic and `my_pb::` are allowed"
    );
}
