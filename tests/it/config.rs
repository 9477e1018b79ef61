//! The shipped example configuration parses with unknown keys forbidden (spotifyd's
//! test_example_config), and its values are the documented defaults. `check-config` (the
//! units' `ExecStartPre=`) refuses what `serve` would, with the same message, and creates
//! nothing.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

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

/// `herald CMD` with `args` and `env` (no config file, no API key, no token): exit code and
/// stderr.
fn herald(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg(cmd)
        .arg("--listen")
        .arg(format!("unix:{}", dir.path().join("herald.sock").display()))
        .args(args)
        .env_remove("HERALD_CONFIG")
        .env_remove("DASHSCOPE_API_KEY")
        .env_remove("HERALD_AUTH_TOKEN")
        .env("CACHE_DIRECTORY", dir.path().join("cache"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A serve that does not refuse would run on: bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald {cmd} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

/// `check-config` and `serve` both refuse with exit 64 (EX_USAGE) and a message containing
/// every one of `words`; serve refuses at once (no socket is bound).
fn both_refuse(args: &[&str], env: &[(&str, &str)], words: &[&str]) {
    for cmd in ["check-config", "serve"] {
        let (code, err) = herald(cmd, args, env);
        assert_eq!(code, Some(64), "{cmd}: {err}");
        for w in words {
            assert!(err.contains(w), "{cmd}: no {w:?} in: {err}");
        }
    }
}

#[test]
fn check_config_refuses_a_missing_espeak_binary_as_serve_does() {
    both_refuse(
        &[],
        &[("HERALD_ESPEAK_BINARY", "/nonexistent/bin/espeak-ng")],
        &["espeak.binary", "/nonexistent/bin/espeak-ng"],
    );
    // A name is looked up on PATH, as the engine runs it.
    both_refuse(
        &[],
        &[
            ("HERALD_ESPEAK_BINARY", "espeak-ng"),
            ("PATH", "/nonexistent"),
        ],
        &["espeak.binary", "PATH"],
    );
    // Disabled: not looked for.
    let (code, err) = herald(
        "check-config",
        &[],
        &[
            ("HERALD_ESPEAK_ENABLED", "false"),
            ("HERALD_ESPEAK_BINARY", "/nonexistent/bin/espeak-ng"),
            ("DASHSCOPE_API_KEY", "sk-test-0123456789"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn check_config_refuses_tls_files_serve_could_not_use() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let (missing, garbage) = (missing.to_str().unwrap(), garbage.to_str().unwrap());
    // Unreadable: a file that is not there, and a directory.
    both_refuse(
        &[],
        &[("HERALD_TLS_CERT", missing), ("HERALD_TLS_KEY", garbage)],
        &["server.tls_cert", missing],
    );
    let d = dir.path().to_str().unwrap();
    both_refuse(
        &[],
        &[("HERALD_TLS_CERT", garbage), ("HERALD_TLS_KEY", d)],
        &["server.tls_key", d],
    );
    // Readable but not a certificate and key rustls takes (serve would fail on its first TCP
    // listener; both refuse it up front, naming the file at fault).
    both_refuse(
        &[],
        &[("HERALD_TLS_CERT", garbage), ("HERALD_TLS_KEY", garbage)],
        &["server.tls_cert", garbage, "no PEM certificate"],
    );
}

#[test]
fn check_config_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("check-config")
        .arg("--listen")
        .arg(format!(
            "unix:{}",
            missing.join("run/herald.sock").display()
        ))
        .env_remove("HERALD_CONFIG")
        .env_remove("DASHSCOPE_API_KEY")
        .env("HERALD_CACHE_DIR", missing.join("cache"))
        .env("HERALD_VOICES_DIR", missing.join("state"))
        .env("HERALD_PLAYBACK_WAV_PATH", missing.join("wav/out.wav"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("herald.sock"),
        "it prints the configuration"
    );
    assert!(
        !missing.exists(),
        "check-config created {}",
        missing.display()
    );
}

#[test]
fn check_config_refuses_defaults_no_engine_serves_as_serve_does() {
    // No DashScope key: only espeak-ng is built.
    both_refuse(
        &[],
        &[("HERALD_DEFAULT_MODEL", "cosyvoice-v3-flash")],
        &["synthesis.default_model", "cosyvoice-v3-flash"],
    );
    both_refuse(
        &[],
        &[("HERALD_DEFAULT_VOICE", "no-such-voice-xq")],
        &["synthesis.default_voice"],
    );
}
