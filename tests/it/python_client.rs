//! A Python client (grpcio, stubs generated from proto/ at test time by examples/python/say.py)
//! against the real `herald serve` binary: herald's first polyglot witness. Both tests make the
//! channel with no options, as integrators do, so gRPC core picks the :authority it derives from
//! the socket path (tests/python/unix_default_channel.py tries each unix target form).
//!
//! Needs a Python with grpcio and grpcio-tools: `$HERALD_TEST_PYTHON` (set by `.ci/test`),
//! else `./.venv/bin/python` (created by `.ci/setup`). Without one the test fails and says so.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{python::python_with_grpc, *};

/// `examples/python/say.py --socket <server> <args>`, as it ran.
fn say(server: &ServeProcess, args: &[&str]) -> Output {
    Command::new(python_with_grpc())
        .arg("examples/python/say.py")
        .arg("--socket")
        .arg(&server.socket)
        .args(args)
        .env("HERALD_PY_GEN", server.dir.path().join("gen"))
        .output()
        .expect("run python")
}

/// `say.py` that succeeds: its one JSON line.
fn run_say(server: &ServeProcess, args: &[&str]) -> Value {
    let out = say(server, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "say.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

#[test]
fn python_client_synthesizes_and_lists_voices() {
    let server = ServeProcess::start(&[]);

    let voices = run_say(&server, &["--voices"]);
    let names = voices["voices"]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["name"].as_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>();
    assert!(names.contains(&"en-us".to_owned()), "{names:?}");

    let wav = server.dir.path().join("py.wav");
    let out = wav.to_str().unwrap();
    let result = run_say(
        &server,
        &[
            "--format",
            "wav",
            "--rate",
            "16000",
            "-o",
            out,
            "Hello from Python.",
        ],
    );
    let info = &result["info"];
    assert_eq!(info["encoding"], "WAV");
    assert_eq!(info["sample_rate_hz"], 16_000);
    assert_eq!(info["channels"], 1);
    assert_eq!(info["engine"], "espeak-ng");
    let samples_reported = result["summary"]["samples"].as_u64().expect("samples") as usize;

    let (spec, samples) = wav_samples(patch_wav_sizes(std::fs::read(&wav).unwrap()));
    assert_eq!(spec.sample_rate, 16_000);
    assert_eq!(samples.len(), samples_reported);
    assert!((0.8..5.0).contains(&(samples.len() as f64 / 16_000.0)));
    assert!(rms(&samples) > 0.02 && voiced_fraction(&samples, 16_000) > 0.4);

    let f32_file = server.dir.path().join("py.f32");
    let result = run_say(
        &server,
        &[
            "--format",
            "pcm_f32le",
            "--rate",
            "48000",
            "--channels",
            "2",
            "-o",
            f32_file.to_str().unwrap(),
            "Stereo.",
        ],
    );
    let data = f32le_to_f32(&std::fs::read(&f32_file).unwrap());
    assert_eq!(
        data.len() / 2,
        result["summary"]["samples"].as_u64().expect("samples") as usize
    );
    assert!(rms(&data) > 0.02);

    // Errors reach Python as gRPC statuses.
    let bad_file = server.dir.path().join("x.wav");
    let out = say(
        &server,
        &[
            "--rate",
            "4000",
            "-o",
            bad_file.to_str().unwrap(),
            "bad rate",
        ],
    );
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("INVALID_ARGUMENT") && text.contains("format.sample_rate_hz"),
        "{text}"
    );
}

/// `grpc.insecure_channel(target)` with no options, as an integrator writes it: gRPC core then
/// derives the :authority from the socket path (`tmp%2Fdir%2Fherald.sock` for `unix:///tmp/dir/
/// herald.sock`, the bare name for a relative `unix:herald.sock`). Every target form grpcio
/// accepts for a unix socket must reach health, reflection and synthesis.
#[test]
fn python_default_channel_reaches_every_unix_target_form() {
    let server = ServeProcess::start(&[]);
    let out = Command::new(python_with_grpc())
        .arg("tests/python/unix_default_channel.py")
        .arg(&server.socket)
        .arg(server.dir.path())
        .env("HERALD_PY_GEN", server.dir.path().join("gen"))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "one JSON line ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // An RST_STREAM (error code 1, PROTOCOL_ERROR) here means herald rejected the authority.
    assert!(out.status.success(), "a target form failed: {result:#}");
    for form in ["unix_abs", "unix_path", "unix_relative"] {
        let seen = &result[form];
        assert_eq!(seen["health"], "SERVING", "{form}: {seen}");
        assert!(
            seen["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n == "herald.v1.Speech")),
            "{form}: {seen}"
        );
        let synth = &seen["synthesize"];
        assert_eq!(synth["engine"], "espeak-ng", "{form}: {seen}");
        assert_eq!(synth["sample_rate_hz"], 16_000, "{form}: {seen}");
        let wav = std::fs::read(synth["file"].as_str().expect("file")).expect("the WAV");
        assert_eq!(wav.len() as u64, synth["bytes"].as_u64().expect("bytes"));
        let (spec, samples) = wav_samples(patch_wav_sizes(wav));
        assert_eq!((spec.sample_rate, spec.channels), (16_000, 1), "{form}");
        assert_eq!(
            samples.len() as u64,
            synth["samples"].as_u64().expect("samples")
        );
        let seconds = samples.len() as f64 / 16_000.0;
        assert!((1.0..6.0).contains(&seconds), "{form}: {seconds} s");
        assert!(rms(&samples) > 0.02, "{form}: silence");
    }
}
