//! The `herald` client commands as people who use espeak-ng, piper and sox expect them: the
//! format from `-o`'s extension, text from stdin, files written whole or not at all, a result
//! line that says what served the request, `--json` listings and aligned tables, conflicting
//! flags refused, messages that name flags. Each runs the real binary against `herald serve`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::support::*;

fn herald() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env_remove("DASHSCOPE_API_KEY")
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_ADDR")
        .env_remove("HERALD_SOCKET");
    c
}

/// `herald ARGS --socket SOCKET`, stdin empty.
fn run(server: &ServeProcess, args: &[&str]) -> Output {
    herald()
        .args(args)
        .arg("--socket")
        .arg(&server.socket)
        .output()
        .expect("run herald")
}

/// `herald ARGS --socket SOCKET` with `input` on stdin.
fn run_with_stdin(server: &ServeProcess, args: &[&str], input: &str) -> Output {
    let mut child = herald()
        .args(args)
        .arg("--socket")
        .arg(&server.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herald");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("wait")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(out));
}

/// The seconds the result line says were written ("wrote 1.52 s of ...").
fn written_secs(err: &str) -> f64 {
    let at = err.find("wrote ").expect("a result line") + "wrote ".len();
    err[at..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {err}"))
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fresh directory for output files (the daemon's own directory holds its socket and cache).
fn out_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// FLAC STREAMINFO's total samples (36 bits at bytes 21..26).
fn flac_total_samples(bytes: &[u8]) -> u64 {
    assert_eq!(&bytes[..4], b"fLaC");
    (u64::from(bytes[21] & 0x0f) << 32)
        | u64::from(u32::from_be_bytes([
            bytes[22], bytes[23], bytes[24], bytes[25],
        ]))
}

#[test]
fn the_output_extension_picks_the_format() {
    let server = ServeProcess::start(&[]);
    let dir = out_dir();
    let path = |name: &str| dir.path().join(name);
    let text = "The format comes from the file name.";

    // MP3: decodes as MP3 at the rate asked, as long as the result line says (plus LAME's
    // delay and padding).
    let mp3 = path("x.mp3");
    let out = run(
        &server,
        &["say", "--rate", "24000", "-o", mp3.to_str().unwrap(), text],
    );
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("of mp3 24000 Hz mono to "), "{err}");
    let secs = written_secs(&err);
    let (rate, channels, samples) = symphonia_decode(std::fs::read(&mp3).unwrap(), "mp3");
    assert_eq!((rate, channels), (24_000, 1));
    let decoded = samples.len() as f64 / 24_000.0;
    assert!(
        decoded >= secs && decoded < secs + 0.2,
        "{decoded} s decoded, {secs} s written"
    );
    assert!(voiced_fraction(&samples, 24_000) > 0.3, "speech");

    // FLAC: STREAMINFO's total samples patched to the real count; symphonia decodes exactly
    // that many, and ffprobe agrees.
    let flac = path("x.FLAC");
    let out = run(
        &server,
        &["say", "--channels", "2", "-o", flac.to_str().unwrap(), text],
    );
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("of flac 22050 Hz stereo"), "{err}");
    let bytes = std::fs::read(&flac).unwrap();
    let total = flac_total_samples(&bytes);
    let (rate, channels, samples) = symphonia_decode(bytes, "flac");
    assert_eq!((rate, channels), (22_050, 2));
    assert_eq!(total, (samples.len() / 2) as u64, "declared = decoded");
    assert!(
        (total as f64 / 22_050.0 - written_secs(&err)).abs() < 0.01,
        "{total} samples, {err}"
    );
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=duration_ts", "-of"])
        .args(["csv=p=0"])
        .arg(&flac)
        .output()
        .expect("ffprobe");
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        total.to_string(),
        "ffprobe reads the length from STREAMINFO"
    );

    // Headerless and container formats by extension.
    for (name, codec) in [
        ("x.ogg", "opus"),
        ("x.opus", "opus"),
        ("x.wav", "pcm_s16le"),
    ] {
        let p = path(name);
        assert_ok(&run(
            &server,
            &["say", "-q", "-o", p.to_str().unwrap(), text],
        ));
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "stream=codec_name", "-of"])
            .args(["csv=p=0"])
            .arg(&p)
            .output()
            .expect("ffprobe");
        assert_eq!(
            String::from_utf8_lossy(&probe.stdout).trim(),
            codec,
            "{name}"
        );
    }
    let mut sizes = Vec::new();
    for name in ["x.pcm", "x.raw", "x.f32", "x.ulaw", "x.al"] {
        let p = path(name);
        let out = run(&server, &["say", "-o", p.to_str().unwrap(), "Headerless."]);
        assert_ok(&out);
        let frames = (written_secs(&stderr(&out)) * 22_050.0).round();
        sizes.push((name, std::fs::metadata(&p).unwrap().len() as f64 / frames));
    }
    // Bytes per frame: s16, s16, f32, 8-bit G.711 (rounding of the seconds aside).
    for ((name, per_frame), want) in sizes.iter().zip([2.0, 2.0, 4.0, 1.0, 1.0]) {
        assert!(
            (per_frame - want).abs() < 0.01,
            "{name}: {per_frame} bytes/frame"
        );
    }
    let raw = std::fs::read(path("x.pcm")).unwrap();
    assert!(rms(&s16_to_f32(&raw)) > 0.02);
    // `.raw` holds any headerless format: --format f32 agrees with it.
    let p = path("y.raw");
    assert_ok(&run(
        &server,
        &[
            "say",
            "-q",
            "--format",
            "f32",
            "-o",
            p.to_str().unwrap(),
            "Float.",
        ],
    ));
    let x = f32le_to_f32(&std::fs::read(&p).unwrap());
    assert!(x.iter().all(|s| s.abs() <= 1.0) && rms(&x) > 0.02);

    // A --format that contradicts the extension: a usage error, nothing written.
    let p = path("bad.mp3");
    let out = run(
        &server,
        &["say", "--format", "flac", "-o", p.to_str().unwrap(), text],
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--format flac does not match") && stderr(&out).contains(".mp3"),
        "{}",
        stderr(&out)
    );
    assert!(!p.exists());

    // An unknown extension needs --format; the message names the known ones.
    let p = path("speech.audio");
    let out = run(&server, &["say", "-o", p.to_str().unwrap(), text]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--format") && err.contains(".wav") && err.contains(".flac"),
        "{err}"
    );
    assert!(!p.exists());
    let out = run(
        &server,
        &["say", "--format", "mp3", "-o", p.to_str().unwrap(), text],
    );
    assert_ok(&out);
    let (rate, _, samples) = symphonia_decode(std::fs::read(&p).unwrap(), "mp3");
    assert!(rate == 22_050 && rms(&samples) > 0.02);
}

#[test]
fn text_comes_from_stdin_when_not_given() {
    let server = ServeProcess::start(&[]);
    let dir = out_dir();
    let a = dir.path().join("a.wav");
    let b = dir.path().join("b.wav");
    let text = "Read from standard input, like espeak-ng.";
    let out = run_with_stdin(&server, &["say", "-o", a.to_str().unwrap()], text);
    assert_ok(&out);
    let out = run_with_stdin(&server, &["say", "-o", b.to_str().unwrap(), "-"], text);
    assert_ok(&out);
    let (spec, x) = wav_samples(std::fs::read(&a).unwrap());
    assert_eq!(spec.sample_rate, 22_050);
    assert!(x.len() > 22_050 && voiced_fraction(&x, 22_050) > 0.3);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "no TEXT and TEXT \"-\" read the same"
    );

    // Nothing on stdin (or only blanks): a usage error, before any file is made.
    for input in ["", "  \n\t"] {
        let c = dir.path().join("c.wav");
        let out = run_with_stdin(&server, &["say", "-o", c.to_str().unwrap()], input);
        assert_eq!(out.status.code(), Some(64), "{input:?}");
        assert!(stderr(&out).contains("nothing to say"), "{}", stderr(&out));
        assert!(!c.exists());
    }
    let out = run(&server, &["say", "-o", "-", "   "]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("the text from TEXT is empty"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_failed_say_leaves_no_partial_file_and_the_old_file_untouched() {
    let server = ServeProcess::start(&[]);
    let dir = out_dir();
    let old = dir.path().join("keep.wav");
    std::fs::write(&old, b"the previous take").unwrap();
    // Refused by the daemon: the old file stays, no temp file is left.
    let out = run(
        &server,
        &[
            "say",
            "--rate",
            "96000",
            "-o",
            old.to_str().unwrap(),
            "Hello.",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&old).unwrap(), b"the previous take");
    assert_eq!(names_in(dir.path()), ["keep.wav"]);
    let new = dir.path().join("new.mp3");
    let out = run(
        &server,
        &[
            "say",
            "--bitrate",
            "7",
            "-o",
            new.to_str().unwrap(),
            "Hello.",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(names_in(dir.path()), ["keep.wav"]);

    // Interrupted mid-stream (Ctrl-C while a long text is being written): exit 130, the
    // partial audio is removed and the old file is as it was.
    let long = "This sentence is long enough to keep the engine busy for a while. ".repeat(250);
    let mut child = herald()
        .args(["say", "-o"])
        .arg(&old)
        .arg(&long)
        .arg("--socket")
        .arg(&server.socket)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run say");
    let temp: PathBuf = dir
        .path()
        .join(format!(".keep.wav.herald-tmp-{}", child.id()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&temp).map_or(0, |m| m.len()) < 100_000 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "say ended before it was interrupted"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no audio in {temp:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&old).unwrap(), b"the previous take");
    assert_eq!(names_in(dir.path()), ["keep.wav"]);

    // A success replaces the old file in one step and keeps its permissions.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_ok(&run(
        &server,
        &["say", "-q", "-o", old.to_str().unwrap(), "Hello."],
    ));
    let (spec, x) = wav_samples(std::fs::read(&old).unwrap());
    assert!(spec.sample_rate == 22_050 && rms(&x) > 0.02);
    assert_eq!(
        std::fs::metadata(&old).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_eq!(names_in(dir.path()), ["keep.wav"]);

    // A device is written in place (no temp file next to /dev/null).
    assert_ok(&run(&server, &["say", "-q", "-o", "/dev/null", "Hello."]));
}

#[test]
fn the_result_line_says_when_the_cache_served_and_cache_flags_reach_the_daemon() {
    let server = ServeProcess::start(&[]);
    let dir = out_dir();
    let p = dir.path().join("a.wav");
    let say = |extra: &[&str]| {
        let mut args = vec!["say", "-v", "de", "-o", p.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push("Guten Morgen.");
        let out = run(&server, &args);
        assert_ok(&out);
        stderr(&out)
    };
    let hits = || {
        let out = run(&server, &["cache", "stats", "--json"]);
        assert_ok(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        (v["hits"].as_u64().unwrap(), v["stored"].as_u64().unwrap())
    };
    let first = say(&[]);
    assert!(
        first.contains("wrote ") && first.contains("(espeak-ng/de; first audio after"),
        "-v picks the voice; a miss says nothing about the cache: {first}"
    );
    assert!(
        !first.contains("cache hit") && !first.contains("fallback"),
        "{first}"
    );
    let first_audio = std::fs::read(&p).unwrap();
    assert!(rms(&wav_samples(first_audio.clone()).1) > 0.02);

    let second = say(&[]);
    assert!(second.contains("espeak-ng/de; cache hit;"), "{second}");
    assert_eq!(std::fs::read(&p).unwrap(), first_audio, "the same audio");
    assert_eq!(hits(), (1, 1));

    let bypass = say(&["--cache", "bypass"]);
    assert!(!bypass.contains("cache hit"), "{bypass}");
    assert_eq!(hits(), (1, 1), "bypass neither reads nor stores");
    let refresh = say(&["--cache", "refresh"]);
    assert!(!refresh.contains("cache hit"), "{refresh}");
    assert_eq!(hits(), (1, 2), "refresh stores anew");
    let used = say(&["--cache", "use"]);
    assert!(used.contains("cache hit"), "{used}");

    // -q: nothing on stderr.
    let out = run(&server, &["say", "-q", "-o", p.to_str().unwrap(), "Quiet."]);
    assert_ok(&out);
    assert_eq!(stderr(&out), "");
    // --cache takes only its three values.
    let out = run(&server, &["say", "--cache", "maybe", "-o", "-", "x"]);
    assert_eq!(out.status.code(), Some(64));
}

/// A daemon whose DashScope is down (connection refused), with the cache and the espeak-ng
/// fallback as configured by default.
fn upstream_down() -> ServeProcess {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Serve::new(FAST_UPSTREAM)
        .env("DASHSCOPE_API_KEY", API_KEY)
        .env(
            "DASHSCOPE_HTTP_BASE_URL",
            &format!("http://127.0.0.1:{port}/api/v1"),
        )
        .logged()
        .start()
}

#[test]
fn with_the_upstream_down_say_names_the_fallback_and_no_fallback_fails() {
    let server = upstream_down();
    let dir = out_dir();
    let p = dir.path().join("down.wav");
    let out = run(
        &server,
        &[
            "say",
            "-o",
            p.to_str().unwrap(),
            "The cloud is unreachable.",
        ],
    );
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("(espeak-ng/") && err.contains("served by fallback instead of cosyvoice"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("unavailable"),
        "the reason: {err}"
    );
    let (spec, x) = wav_samples(std::fs::read(&p).unwrap());
    assert!(
        voiced_fraction(&x, spec.sample_rate) > 0.3,
        "espeak-ng spoke it"
    );

    let q = dir.path().join("strict.wav");
    let out = run(
        &server,
        &[
            "say",
            "--no-fallback",
            "-o",
            q.to_str().unwrap(),
            "No fallback for this one.",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Unavailable"), "{}", stderr(&out));
    assert!(!q.exists());
    assert_eq!(names_in(dir.path()), ["down.wav"]);
}

#[test]
fn with_the_upstream_down_voices_answers_and_voice_list_fails() {
    let server = upstream_down();
    let out = run(&server, &["voices", "--model", "espeak-ng"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("en-us"), "{}", stdout(&out));

    let out = run(&server, &["voices", "--json"]);
    assert_ok(&out);
    let voices: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let voices = voices.as_array().unwrap();
    assert!(
        voices.iter().any(|v| v["model"] == "espeak-ng"),
        "local voices"
    );
    assert!(
        voices.iter().any(|v| v["engine"] == "cosyvoice"),
        "the built-in catalogue"
    );
    let err = stderr(&out);
    assert!(
        err.contains("missing from this list: custom voices of voice-enrollment: Unavailable"),
        "{err}"
    );

    let out = run(&server, &["voice", "list", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(listed, serde_json::json!([]), "what it has: none");
    assert!(
        stderr(&out).contains("the list is incomplete"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn listings_are_aligned_tables_or_json() {
    let server = ServeProcess::start(&[]);
    let out = run(&server, &["voices", "--language", "en"]);
    assert_ok(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 3 && lines[0].starts_with("VOICE "), "{text}");
    // Every column starts where its header does.
    for header in ["MODEL", "ENGINE", "GENDER", "NAME", "LANGUAGES"] {
        let at = lines[0].find(header).unwrap();
        for line in &lines[1..] {
            assert_eq!(&line[at - 2..at], "  ", "{header}: {line}");
            assert_ne!(&line[at..at + 1], " ", "{header}: {line}");
        }
    }
    let rate_end = lines[0].find("RATE").unwrap() + 4;
    for line in &lines[1..] {
        assert_eq!(
            &line[rate_end - 5..rate_end],
            "22050",
            "right-aligned: {line}"
        );
    }

    let out = run(&server, &["voices", "--json", "--language", "en"]);
    assert_ok(&out);
    let voices: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let voices = voices.as_array().unwrap();
    assert_eq!(
        voices.len(),
        lines.len() - 1,
        "the same voices as the table"
    );
    let keys = [
        "custom",
        "custom_status",
        "display_name",
        "engine",
        "gender",
        "languages",
        "model",
        "name",
        "native_sample_rate_hz",
    ];
    for v in voices {
        let mut have: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        have.sort_unstable();
        assert_eq!(have, keys);
    }
    let en_us = voices.iter().find(|v| v["name"] == "en-us").expect("en-us");
    assert_eq!(en_us["native_sample_rate_hz"], 22_050);
    assert_eq!(en_us["custom"], false);

    let out = run(&server, &["devices", "--json"]);
    assert_ok(&out);
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let null = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "null")
        .expect("the null device");
    assert!(null["sample_rates_hz"].is_array() && null["default"].is_boolean());
    assert_eq!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["default"] == true)
            .count(),
        1
    );
    let out = run(&server, &["devices"]);
    assert_ok(&out);
    let table = stdout(&out);
    let at = table.lines().next().unwrap().find("DESCRIPTION").unwrap();
    assert!(
        table.lines().skip(1).all(|l| l[..at].ends_with("  ")),
        "{table}"
    );

    let out = run(&server, &["cache", "stats", "--json"]);
    assert_ok(&out);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(stats["entries"], 0);
    assert!(stats["max_bytes"].as_u64().unwrap() > 0);

    let out = run(&server, &["voice", "list", "--json"]);
    assert_ok(&out);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = run(&server, &["voice", "list"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "VOICE  MODEL  STATUS  NAME\n");
}

#[test]
fn conflicting_flags_are_refused_and_messages_name_flags() {
    let server = ServeProcess::start(&[]);
    let dir = out_dir();
    let p = dir.path().join("x.wav");
    for extra in [
        &["-o", p.to_str().unwrap()][..],
        &["--format", "mp3"],
        &["--rate", "16000"],
        &["--no-fallback"],
    ] {
        let mut args = vec!["say", "--play", "--device", "null"];
        args.extend_from_slice(extra);
        args.push("Hello.");
        let out = run(&server, &args);
        assert_eq!(out.status.code(), Some(64), "{extra:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot be used with"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!p.exists());

    // A field the daemon names comes with the flag that sets it.
    for (args, named) in [
        (&["--rate", "96000"][..], "format.sample_rate_hz (--rate):"),
        (&["--chunk-ms", "5"], "chunk_ms (--chunk-ms):"),
        (
            &["--format", "wav", "--bitrate", "64000"],
            "bitrate_bps (--bitrate):",
        ),
        (&["--speed", "3"], "speed (--speed):"),
    ] {
        let mut all = vec!["say", "-o", "-"];
        all.extend_from_slice(args);
        all.push("Hello.");
        let out = run(&server, &all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(named), "{args:?}: {}", stderr(&out));
    }
    let out = run(
        &server,
        &[
            "say",
            "--play",
            "--device",
            "null",
            "--leading-silence",
            "9999",
            "Hi.",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("leading_silence_ms (--leading-silence):"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn stop_says_when_it_stopped_nothing() {
    let server = ServeProcess::start(&[]);
    let out = run(&server, &["stop", "--id", "no-such-id", "--device", "null"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no announcement no-such-id on null"),
        "{}",
        stderr(&out)
    );
    // Without --device: the daemon's default device, by name.
    let out = run(&server, &["stop", "--id", "no-such-id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no announcement no-such-id on default"),
        "{}",
        stderr(&out)
    );
    // Stopping the current announcement when none plays is not an error, but it is said.
    let out = run(&server, &["stop", "--device", "null"]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("nothing was playing"),
        "{}",
        stderr(&out)
    );

    // An announcement that is there is stopped by id, and its id printed.
    let speaking = herald()
        .args(["say", "--play", "--device", "null", "--socket"])
        .arg(&server.socket)
        .arg("This announcement will be stopped before it ends. ".repeat(5))
        .stderr(Stdio::piped())
        .spawn()
        .expect("say --play");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let id = loop {
        // The announcement's id is only in say's events; stop --all finds it without.
        let out = run(&server, &["stop", "--all", "--device", "null"]);
        assert_ok(&out);
        let ids = stdout(&out);
        if !ids.trim().is_empty() {
            break ids.trim().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing ever played"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = speaking.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&id),
        "the stopped id is the announcement's: {id} / {err}"
    );
}
