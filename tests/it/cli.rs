//! The `herald` binary: check-config, serve (signals, socket), say and voices, as a user runs them.

use std::process::Command;

use crate::support::*;

fn herald() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env_remove("DASHSCOPE_API_KEY")
        .env_remove("HERALD_CONFIG");
    c
}

#[test]
fn the_example_config_passes_check_config() {
    let out = herald()
        .args([
            "check-config",
            "--config",
            "systemd/herald.example.toml",
            "--listen",
            "127.0.0.1:50051",
            "--insecure-no-auth",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = [\"127.0.0.1:50051\"]"), "{text}");
    assert!(text.contains("max_text_chars = 20000"), "{text}");
}

#[test]
fn check_config_rejects_unknown_keys_with_exit_64_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[espeak]\nvoice = \"en\"\n").unwrap();
    let out = herald()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("espeak") && err.contains("voice"), "{err}");

    let out = herald()
        .args(["check-config", "--listen", "127.0.0.1:0"])
        .env("DASHSCOPE_API_KEY", "sk-test-secret-value")
        .env("HERALD_AUTH_TOKEN", "token-secret-value-0123456789")
        .output()
        .expect("run");
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("sk-test-secret-value"), "{all}");
    assert!(!all.contains("token-secret-value"), "{all}");
    assert!(all.contains("<redacted>"), "{all}");
}

#[test]
fn say_writes_a_playable_wav_and_voices_lists() {
    let mut server = ServeProcess::start(&[]);
    let out_file = server.dir.path().join("hello.wav");
    let out = herald()
        .args(["say", "--socket"])
        .arg(&server.socket)
        .args(["--rate", "24000", "-o"])
        .arg(&out_file)
        .arg("Hello from the command line.")
        .output()
        .expect("run say");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A real file: sizes patched, hound reads every sample.
    let mut reader = hound::WavReader::open(&out_file).expect("hound opens the file");
    assert_eq!(reader.spec().sample_rate, 24_000);
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    assert_eq!(samples.len() as u32, reader.duration());
    assert!(samples.len() > 24_000, "{} samples", samples.len());
    assert!(rms(&samples) > 0.02);

    // stdout with -o -: raw PCM
    let out = herald()
        .args(["say", "--socket"])
        .arg(&server.socket)
        .args(["--format", "pcm", "-o", "-", "-q", "Raw."])
        .output()
        .expect("run say");
    assert!(out.status.success());
    assert!(out.stdout.len() > 10_000 && out.stdout.len().is_multiple_of(2));

    // compressed formats: files ffprobe reads without complaint, not WAV-patched
    for (format, ext, extra) in [
        ("mp3", "mp3", ["--bitrate", "96000"]),
        ("opus", "opus", ["--bitrate", "24000"]),
        ("flac", "flac", ["--bits", "24"]),
    ] {
        let path = server.dir.path().join(format!("say.{ext}"));
        let out = herald()
            .args(["say", "--socket"])
            .arg(&server.socket)
            .args(["--format", format, "-q", "-o"])
            .arg(&path)
            .args(extra)
            .arg("Compressed.")
            .output()
            .expect("run say");
        assert!(out.status.success(), "{format}: {out:?}");
        let probe = Command::new("ffprobe")
            .args(["-v", "warning", "-count_packets", "-show_entries"])
            .args(["stream=codec_name", "-of", "csv=p=0"])
            .arg(&path)
            .output()
            .expect("ffprobe");
        let codec = String::from_utf8_lossy(&probe.stdout);
        assert_eq!(codec.trim(), ext, "{format}");
        let warnings: Vec<String> = String::from_utf8_lossy(&probe.stderr)
            .lines()
            .filter(|l| !l.contains("Estimating duration from bitrate"))
            .map(str::to_owned)
            .collect();
        assert!(warnings.is_empty(), "{format}: {warnings:?}");
    }

    // errors print the gRPC message and exit non-zero
    let out = herald()
        .args(["say", "--socket"])
        .arg(&server.socket)
        .args(["--rate", "96000", "-o", "-", "x"])
        .output()
        .expect("run say");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("format.sample_rate_hz"),
        "{err}"
    );

    let out = herald()
        .args(["voices", "--language", "en", "--socket"])
        .arg(&server.socket)
        .output()
        .expect("run voices");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("en-us") && !text.contains(" de "), "{text}");

    // SIGTERM: clean exit, socket removed.
    let status = server.terminate();
    assert!(status.success(), "{status}");
    assert!(!server.socket.exists(), "socket file removed on shutdown");
}

#[test]
fn say_without_a_daemon_explains_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald()
        .args(["say", "-o", "-", "--socket"])
        .arg(dir.path().join("nothing.sock"))
        .arg("hi")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn the_unix_socket_has_mode_0660() {
    use std::os::unix::fs::PermissionsExt;
    let mut server = ServeProcess::start(&[]);
    let mode = std::fs::metadata(&server.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "{mode:o}");
    assert!(server.terminate().success());
}

#[test]
fn say_play_devices_and_stop() {
    let mut server = ServeProcess::start(&[]);
    let out = herald()
        .args(["devices", "--socket"])
        .arg(&server.socket)
        .output()
        .expect("run devices");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("null"), "{listing}");
    assert!(
        listing.contains("* default"),
        "the default is marked: {listing}"
    );

    let out = herald()
        .args([
            "say",
            "--play",
            "--device",
            "null",
            "--priority",
            "important",
            "--socket",
        ])
        .arg(&server.socket)
        .arg("Played on the null device.")
        .output()
        .expect("run say --play");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("queued on null"), "{stderr}");
    assert!(stderr.contains("finished after"), "{stderr}");

    let out = herald()
        .args(["say", "--play", "--device", "nowhere", "--socket"])
        .arg(&server.socket)
        .arg("Hi.")
        .output()
        .expect("run say --play");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown device"), "{stderr}");

    let out = herald()
        .args(["stop", "--all", "--device", "null", "--socket"])
        .arg(&server.socket)
        .output()
        .expect("run stop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.terminate().success());
}

/// `herald voices | head -n 1` (the quick start does this): the reader leaving early is a
/// normal end, exit 0 and no error, as for any Unix filter.
#[test]
fn a_reader_that_leaves_early_is_not_an_error() {
    use std::io::{BufRead, BufReader};
    let server = ServeProcess::start(&[]);
    let mut child = herald()
        .args(["voices", "--model", "espeak-ng", "--socket"])
        .arg(&server.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run voices");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The pipe's read end is closed here: the rest of the list hits a broken pipe.
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!first.is_empty(), "a first line");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn cache_warm_stats_pin_and_clear_from_the_command_line() {
    let server = ServeProcess::start(&[]);
    let run = |args: &[&str]| {
        let out = herald()
            .arg("cache")
            .arg(args[0])
            .arg("--socket")
            .arg(&server.socket)
            .args(&args[1..])
            .output()
            .expect("run herald cache");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let lines = server.dir.path().join("phrases.txt");
    std::fs::write(&lines, "# kiosk phrases\nDoors closing.\n\nLow battery.\n").unwrap();
    let toml = server.dir.path().join("phrases.toml");
    std::fs::write(
        &toml,
        "[[phrase]]\ntext = \"Bonjour.\"\nvoice = \"fr\"\n\n[[phrase]]\ntext = \"Slowly now.\"\nspeed = 0.7\n",
    )
    .unwrap();
    let lines_arg = lines.to_str().unwrap();
    let toml_arg = toml.to_str().unwrap();

    let (code, out, err) = run(&["warm", lines_arg, "--pin"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches("warmed").count(), 2, "{out}");
    assert_eq!(out.matches("pinned").count(), 2, "{out}");
    let (code, out, _) = run(&["warm", lines_arg]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out.matches("cached").count(),
        2,
        "second warm synthesizes nothing: {out}"
    );
    let (code, out, err) = run(&["warm", toml_arg]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches("warmed").count(), 2, "{out}");

    let (code, out, _) = run(&["stats"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("entries         4"), "{out}");
    assert!(out.contains("pinned          2 entries"), "{out}");

    // A warmed phrase is a hit for `say`, with the audio of the phrase.
    let wav = server.dir.path().join("doors.wav");
    let out = herald()
        .args(["say", "--socket"])
        .arg(&server.socket)
        .arg("-o")
        .arg(&wav)
        .arg("Doors closing.")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut reader = hound::WavReader::open(&wav).unwrap();
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    assert!(samples.len() > 10_000 && rms(&samples) > 0.02);
    let (_, out, _) = run(&["stats"]);
    assert!(out.contains("hits            1"), "{out}");

    let (code, out, _) = run(&["unpin", "--text", "Low battery."]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("unpinned"), "{out}");
    let (code, out, _) = run(&["pin", "--text", "Never warmed."]);
    assert_eq!(code, Some(1), "pinning an uncached phrase fails: {out}");
    assert!(out.contains("NotFound"), "{out}");

    let (code, out, _) = run(&["clear"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("removed 3 entries") && out.contains("kept 1 pinned"),
        "{out}"
    );
    let (code, out, _) = run(&["clear", "--include-pinned"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("removed 1 entries") && out.contains("kept 0 pinned"),
        "{out}"
    );

    // A bad phrase file is a usage error naming the file.
    let bad = server.dir.path().join("bad.toml");
    std::fs::write(&bad, "[[phrase]]\ntxt = \"typo\"\n").unwrap();
    let (code, _, err) = run(&["warm", bad.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
}
