//! A Python client (grpcio, stubs generated from proto/ at test time by examples/python/say.py)
//! against the real `herald serve` binary: herald's first polyglot witness. Over the unix
//! socket, and over TCP with a bearer token and TLS, in every encoding. The channels have no
//! options, as integrators make them, so gRPC core picks the :authority it derives from the
//! socket path (tests/python/unix_default_channel.py tries each unix target form).
//!
//! Needs a Python with grpcio and grpcio-tools: `$HERALD_TEST_PYTHON` (set by `.ci/test`),
//! else `./.venv/bin/python` (created by `.ci/setup`). Without one the test fails and says so.

use std::{
    path::Path,
    process::{Command, Output},
};

use serde_json::Value;

use crate::support::{python::python_with_grpc, *};

/// `examples/python/say.py <args>` (stubs generated under `gen`), with `env` set and none of
/// the connection variables of the environment the tests run in, as it ran.
fn say_py(gen_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(python_with_grpc());
    cmd.arg("examples/python/say.py")
        .args(args)
        .env("HERALD_PY_GEN", gen_dir);
    for var in [
        "HERALD_SOCKET",
        "HERALD_ADDR",
        "HERALD_TOKEN",
        "HERALD_TLS_CA",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().expect("run python")
}

/// `say.py` that succeeds: its one JSON line.
fn json_of(out: Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "say.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

/// `say.py` that fails: its one line of stderr, with no traceback.
fn error_of(out: Output) -> String {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert!(!err.contains("Traceback"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("say.py: "), "{err}");
    err
}

/// `say.py --socket <server> <args>`, as it ran.
fn say(server: &ServeProcess, args: &[&str]) -> Output {
    let socket = server.socket.to_str().unwrap();
    let mut all = vec!["--socket", socket];
    all.extend_from_slice(args);
    say_py(&server.dir.path().join("gen"), &all, &[])
}

/// `say.py` that succeeds: its one JSON line.
fn run_say(server: &ServeProcess, args: &[&str]) -> Value {
    json_of(say(server, args))
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

    // say.py patched the header's sizes: hound (strict) reads the file as it is.
    let (spec, samples) = wav_samples(std::fs::read(&wav).unwrap());
    assert_eq!(spec.sample_rate, 16_000);
    assert_eq!(samples.len(), samples_reported);
    assert!((0.8..5.0).contains(&(samples.len() as f64 / 16_000.0)));
    assert!(rms(&samples) > 0.02 && voiced_fraction(&samples, 16_000) > 0.4);

    let f32_file = server.dir.path().join("py.f32");
    let result = run_say(
        &server,
        &[
            "--format",
            "f32",
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

    // Errors are one line on stderr, with the gRPC code, and no traceback.
    let bad_file = server.dir.path().join("x.wav");
    let err = error_of(say(
        &server,
        &[
            "--rate",
            "4000",
            "-o",
            bad_file.to_str().unwrap(),
            "bad rate",
        ],
    ));
    assert!(
        err.starts_with("say.py: INVALID_ARGUMENT: ") && err.contains("format.sample_rate_hz"),
        "{err}"
    );
}

const TOKEN: &str = "py-token-5c1e9a7b3d2f8e4a6c0b";

#[test]
fn python_client_over_tls_with_a_token_in_every_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::support::tls::certificate(dir.path());
    let toml = format!(
        "[server]\nauth_token = \"{TOKEN}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let server = Serve::new(&toml).tcp().start();
    let addr = server.tcp().to_string();
    let cert = cert.to_str().unwrap();
    let gen_dir = server.dir.path().join("gen");
    let say = |args: &[&str]| {
        let mut all = vec!["--addr", addr.as_str(), "--tls-ca", cert, "--token", TOKEN];
        all.extend_from_slice(args);
        say_py(&gen_dir, &all, &[])
    };

    // Every encoding: the file holds exactly the bytes the summary counts.
    let mut files = Vec::new();
    for (format, encoding, rate) in [
        ("wav", "WAV", 16_000),
        ("pcm", "PCM_S16LE", 16_000),
        ("f32", "PCM_F32LE", 16_000),
        ("mulaw", "MULAW", 8_000),
        ("alaw", "ALAW", 8_000),
        ("mp3", "MP3", 24_000),
        ("opus", "OGG_OPUS", 48_000),
        ("flac", "FLAC", 16_000),
    ] {
        let path = server.dir.path().join(format!("tls.{format}"));
        let rate_arg = rate.to_string();
        let result = json_of(say(&[
            "--format",
            format,
            "--rate",
            &rate_arg,
            "-o",
            path.to_str().unwrap(),
            "Secure speech from Python.",
        ]));
        assert_eq!(result["info"]["encoding"], encoding, "{format}");
        assert_eq!(result["info"]["sample_rate_hz"], rate, "{format}");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes.len() as u64,
            result["summary"]["bytes"].as_u64().expect("bytes"),
            "{format}"
        );
        let samples = result["summary"]["samples"].as_u64().expect("samples") as usize;
        assert!(samples > rate as usize, "{format}: {samples} samples");
        files.push((format, bytes, samples));
    }
    for (format, bytes, samples) in files {
        match format {
            // A header whose sizes say what the file holds.
            "wav" => {
                let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
                let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
                assert_eq!((data, riff), (bytes.len() - 44, bytes.len() - 8));
                let (spec, x) = wav_samples(bytes);
                assert_eq!((spec.sample_rate, x.len()), (16_000, samples));
                assert!(voiced_fraction(&x, 16_000) > 0.3);
            }
            "pcm" => assert_eq!(bytes.len(), samples * 2),
            "f32" => assert_eq!(bytes.len(), samples * 4),
            "mulaw" | "alaw" => assert_eq!(bytes.len(), samples),
            // Lossless: every sample comes back.
            "flac" => {
                let (rate, channels, x) = symphonia_decode(bytes, "flac");
                assert_eq!((rate, channels, x.len()), (16_000, 1, samples));
                assert!(voiced_fraction(&x, 16_000) > 0.3);
            }
            "mp3" => assert_eq!(&bytes[..1], &[0xff], "an MP3 frame sync"),
            "opus" => assert_eq!(&bytes[..4], b"OggS"),
            _ => unreachable!(),
        }
    }

    // The variables instead of the flags.
    let voices = json_of(say_py(
        &gen_dir,
        &["--voices"],
        &[
            ("HERALD_ADDR", addr.as_str()),
            ("HERALD_TLS_CA", cert),
            ("HERALD_TOKEN", TOKEN),
        ],
    ));
    assert!(voices["voices"].as_array().is_some_and(|v| !v.is_empty()));

    // No token: UNAUTHENTICATED, one line, no traceback.
    let err = error_of(say_py(
        &gen_dir,
        &["--addr", addr.as_str(), "--tls-ca", cert, "--voices"],
        &[],
    ));
    assert!(err.starts_with("say.py: UNAUTHENTICATED: "), "{err}");
    // No CA: the handshake fails (UNAVAILABLE), one line, no traceback.
    let err = error_of(say_py(
        &gen_dir,
        &[
            "--addr",
            addr.as_str(),
            "--token",
            TOKEN,
            "--voices",
            "--timeout",
            "5",
        ],
        &[],
    ));
    assert!(err.starts_with("say.py: UNAVAILABLE: "), "{err}");
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

/// A Python client streams text (tests/python/stream_text.py): config, pieces cut mid-word, the
/// rest only after the first audio came back; three sentences spoken by espeak-ng.
#[test]
fn python_client_streams_text() {
    let server = ServeProcess::start(&[]);
    let out = Command::new(python_with_grpc())
        .arg("tests/python/stream_text.py")
        .arg(&server.socket)
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
    assert!(out.status.success(), "{result}");
    assert_eq!(result["engine"], "espeak-ng", "{result}");
    assert_eq!(result["rate"], 16000);
    assert_eq!(result["audio_before_last_piece"], true, "{result}");
    let texts: Vec<&str> = result["sentences"]
        .as_array()
        .expect("sentences")
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "The first sentence is here.",
            "The second one follows it, and then a third?",
            "Yes."
        ]
    );
    let samples = result["samples"].as_u64().unwrap();
    assert_eq!(result["audio_bytes"].as_u64().unwrap(), samples * 2);
    assert!(samples > 16_000 * 2, "{samples} samples of speech");
    let order = result["order"].as_str().unwrap();
    assert!(order.starts_with("ia") && order.ends_with('s'), "{order}");
}
