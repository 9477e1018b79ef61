//! A grpc-go client (`tests/go/unixclient`, built here with Debian's `golang-go` and
//! `golang-google-grpc-dev`) against the real `herald serve` binary on its unix socket. It dials
//! as grpcurl up to v1.8.9 does for `-unix`: the socket path is the target, so grpc-go sends it
//! as the HTTP/2 `:authority`, which HTTP/2 servers reject as malformed unless herald
//! normalises it on unix listeners.
//!
//! Needs `go` and Debian's grpc-go sources (`bash .ci/setup` installs both). Without them the
//! test fails when `CI` is set, and is skipped (saying so) otherwise.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::Value;

use crate::support::*;

/// Where Debian's Go library packages put their sources (a GOPATH).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// The client's package, relative to the repository root (cargo runs tests there).
const CLIENT_PACKAGE: &str = "./tests/go/unixclient";

/// The built client, or `None` to skip (only when `CI` is unset and Go or Debian's grpc-go is
/// missing). Built once per test process, into cargo's temp dir for integration tests.
fn go_client() -> Option<&'static Path> {
    static CLIENT: OnceLock<Option<PathBuf>> = OnceLock::new();
    CLIENT.get_or_init(build_go_client).as_deref()
}

fn build_go_client() -> Option<PathBuf> {
    let have_go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    let have_grpc = Path::new(DEBIAN_GOPATH)
        .join("src/google.golang.org/grpc")
        .is_dir();
    if !(have_go && have_grpc) {
        let missing = if have_go {
            "Debian's grpc-go (golang-google-grpc-dev)"
        } else {
            "`go` (golang-go)"
        };
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {missing} is missing: run `bash .ci/setup`"
        );
        eprintln!("skipping the grpc-go client test: {missing} is missing; run `bash .ci/setup`");
        return None;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    let exe = dir.join("unixclient");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(CLIENT_PACKAGE)
        // GOPATH mode over Debian's packages: no module download, nothing outside the clone
        // written but the build cache.
        .env("GO111MODULE", "off")
        .env("GOPATH", DEBIAN_GOPATH)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build {CLIENT_PACKAGE} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

#[test]
fn go_client_dialing_the_socket_path_like_grpcurl_gets_health_reflection_and_audio() {
    let Some(client) = go_client() else {
        return;
    };
    let server = ServeProcess::start(&[]);
    let wav = server.dir.path().join("go.wav");
    let text = "Hello from Go, over a unix socket.";
    let out = Command::new(client)
        .arg("-socket")
        .arg(&server.socket)
        .arg("-o")
        .arg(&wav)
        .args(["-text", text, "-rate", "16000"])
        .output()
        .expect("run the Go client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Go client failed (an RST_STREAM PROTOCOL_ERROR means herald rejected the socket \
         path as :authority):\n{stderr}{stdout}"
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("one JSON line ({e}): {stdout}"));

    // The case under test: the path itself was the target, so it was the :authority.
    assert_eq!(report["target"], server.socket.display().to_string());
    assert_eq!(report["health"], "SERVING");
    let services: Vec<&str> = report["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(services.contains(&"herald.v1.Speech"), "{services:?}");
    assert!(
        services.iter().any(|s| s.starts_with("grpc.reflection.")),
        "{services:?}"
    );
    assert_eq!(report["synthesize_input"], ".herald.v1.SynthesizeRequest");

    assert_eq!(report["engine"], "espeak-ng");
    assert_eq!(report["sample_rate_hz"], 16_000);
    assert!(report["chunks"].as_u64().expect("chunks") >= 1);
    assert_eq!(report["audio_bytes"], report["summary_bytes"]);
    let bytes = std::fs::read(&wav).expect("the client's WAV");
    assert_eq!(
        bytes.len() as u64,
        report["audio_bytes"].as_u64().expect("audio_bytes")
    );
    let (spec, samples) = wav_samples(patch_wav_sizes(bytes));
    assert_eq!((spec.sample_rate, spec.channels), (16_000, 1));
    assert_eq!(
        samples.len() as u64,
        report["summary_samples"].as_u64().expect("summary_samples")
    );
    // About 0.1 s per character of speech, give or take: plausible for the text, not silence.
    let seconds = samples.len() as f64 / 16_000.0;
    assert!((1.0..6.0).contains(&seconds), "{seconds} s for {text:?}");
    assert!(rms(&samples) > 0.02 && voiced_fraction(&samples, 16_000) > 0.4);
}
