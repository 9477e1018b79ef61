//! The client connection settings through the real binary: every client command against a
//! daemon with a bearer token and TLS, in flag form (`--addr`, `--token`, `--token-file`,
//! `--tls-ca`) and variable form (`HERALD_ADDR`, `HERALD_TOKEN`, `HERALD_TLS_CA`), and the
//! messages of what goes wrong: a missing or wrong token, a TLS mismatch either way, a socket
//! the user may not open, each printed once.

use std::{
    path::Path,
    process::{Command, Output},
};

use crate::support::*;

const TOKEN: &str = "cli-token-7e4b9d2a1c8f3e6b5a0d";

/// `herald` with none of the connection variables of the environment the tests run in.
fn herald() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    for var in [
        "HERALD_SOCKET",
        "HERALD_ADDR",
        "HERALD_TOKEN",
        "HERALD_TLS_CA",
        "HERALD_CONFIG",
        "DASHSCOPE_API_KEY",
    ] {
        c.env_remove(var);
    }
    c
}

/// Run `cmd`: its output, and its stderr as text.
fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("run herald");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

/// Run `cmd`, which must succeed: its stdout as text.
fn ok(cmd: &mut Command) -> String {
    let (out, err) = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `cmd`, which must fail: its exit code and its one line of stderr, checked to name each
/// cause once.
fn fails(cmd: &mut Command) -> (Option<i32>, String) {
    let (out, err) = run(cmd);
    assert!(!out.status.success(), "{cmd:?} succeeded: {err}");
    let err = err.trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("herald: "), "{err}");
    let parts: Vec<&str> = err.split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part),
            "{part:?} is printed twice: {err}"
        );
    }
    assert!(!err.contains(TOKEN), "the token is never printed: {err}");
    println!("{err}");
    (out.status.code(), err)
}

/// `herald serve` with a TCP listener that needs [`TOKEN`] and speaks TLS with `cert`/`key`.
fn tls_daemon(cert: &Path, key: &Path) -> ServeProcess {
    let toml = format!(
        "[server]\nauth_token = \"{TOKEN}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    Serve::new(&toml).tcp().start()
}

#[test]
fn every_client_command_over_tls_with_a_token() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = crate::support::tls::certificate(certs.path());
    let server = tls_daemon(&cert, &key);
    let addr = server.tcp().to_string();
    let token_file = certs.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // Flag form, variable form, and a token file.
    let flags = |cmd: &mut Command| {
        cmd.args(["--addr", &addr, "--token", TOKEN, "--tls-ca"])
            .arg(&cert);
    };
    let vars = |cmd: &mut Command| {
        cmd.env("HERALD_ADDR", &addr)
            .env("HERALD_TOKEN", TOKEN)
            .env("HERALD_TLS_CA", &cert);
    };
    let file = |cmd: &mut Command| {
        cmd.args(["--addr", &addr, "--token-file"])
            .arg(&token_file)
            .arg("--tls-ca")
            .arg(&cert);
    };

    // say: a WAV with its sizes patched, at the rate asked for, of speech.
    for (form, settings) in [("flags", &flags as &dyn Fn(&mut Command)), ("vars", &vars)] {
        let wav = server.dir.path().join(format!("{form}.wav"));
        let mut cmd = herald();
        cmd.args(["say", "--rate", "16000", "-q", "-o"])
            .arg(&wav)
            .arg("Over TLS, with a token.");
        settings(&mut cmd);
        ok(&mut cmd);
        let mut reader = hound::WavReader::open(&wav).expect("hound reads the file");
        assert_eq!(reader.spec().sample_rate, 16_000, "{form}");
        let samples: Vec<f32> = reader
            .samples::<i16>()
            .map(|s| f32::from(s.unwrap()) / 32768.0)
            .collect();
        assert_eq!(samples.len() as u32, reader.duration(), "{form}");
        let seconds = samples.len() as f64 / 16_000.0;
        assert!((0.8..5.0).contains(&seconds), "{form}: {seconds} s");
        assert!(voiced_fraction(&samples, 16_000) > 0.3, "{form}");
    }

    let mut cmd = herald();
    cmd.args(["voices", "--model", "espeak-ng"]);
    vars(&mut cmd);
    let listing = ok(&mut cmd);
    assert!(listing.contains("en-us"), "{listing}");

    let mut cmd = herald();
    cmd.arg("devices");
    file(&mut cmd);
    let listing = ok(&mut cmd);
    assert!(listing.contains("null"), "{listing}");

    let mut cmd = herald();
    cmd.args(["cache", "stats"]);
    vars(&mut cmd);
    let stats = ok(&mut cmd);
    let cache_dir = server.dir.path().join("cache");
    assert!(
        stats.contains(&format!("directory       {}", cache_dir.display())),
        "{stats}"
    );

    let mut cmd = herald();
    cmd.args(["voice", "list"]);
    flags(&mut cmd);
    ok(&mut cmd);

    let mut cmd = herald();
    cmd.args(["stop", "--all"]);
    file(&mut cmd);
    ok(&mut cmd);

    // A wrong token and no token: UNAUTHENTICATED, saying which setting carries the token.
    let mut cmd = herald();
    cmd.args(["voices", "--addr", &addr, "--tls-ca"])
        .arg(&cert)
        .env("HERALD_TOKEN", "not-the-token-0000000000000");
    let (code, err) = fails(&mut cmd);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("Unauthenticated")
            && err.contains("refused the token from HERALD_TOKEN")
            && err.contains("--token"),
        "{err}"
    );
    let mut cmd = herald();
    cmd.args(["devices", "--addr", &addr, "--tls-ca"])
        .arg(&cert);
    let (_, err) = fails(&mut cmd);
    assert!(
        err.contains("Unauthenticated")
            && err.contains("needs the daemon's bearer token")
            && err.contains("--token TOKEN")
            && err.contains("HERALD_TOKEN"),
        "{err}"
    );

    // Plaintext to the TLS listener: a TLS mismatch, not "h2 protocol error".
    let mut cmd = herald();
    cmd.args(["voices", "--addr", &addr, "--token", TOKEN]);
    let (code, err) = fails(&mut cmd);
    assert!(
        err.contains("TLS mismatch") && err.contains("speaks TLS") && err.contains("--tls-ca FILE"),
        "{err}"
    );
    assert!(!err.contains("h2 protocol error"), "{err}");
    assert_eq!(
        code,
        Some(69),
        "found by the first call, still unreachable: {err}"
    );

    // A CA that did not sign the daemon's certificate.
    let other = tempfile::tempdir().unwrap();
    let (other_cert, _) = crate::support::tls::certificate(other.path());
    let mut cmd = herald();
    cmd.args(["voices", "--addr", &addr, "--tls-ca"])
        .arg(&other_cert)
        .env("HERALD_TOKEN", TOKEN);
    let (code, err) = fails(&mut cmd);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("TLS handshake failed") && err.contains("invalid peer certificate"),
        "{err}"
    );
}

#[test]
fn tls_to_a_plaintext_listener_is_a_tls_mismatch() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, _) = crate::support::tls::certificate(certs.path());
    let server = Serve::new(&format!("[server]\nauth_token = \"{TOKEN}\"\n"))
        .tcp()
        .start();
    let addr = server.tcp().to_string();
    let mut cmd = herald();
    cmd.args(["say", "-o", "-", "--addr", &addr, "hi"])
        .env("HERALD_TOKEN", TOKEN)
        .env("HERALD_TLS_CA", &cert);
    let (code, err) = fails(&mut cmd);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("TLS mismatch") && err.contains("does not speak TLS"),
        "{err}"
    );
    assert!(err.contains("HERALD_TLS_CA"), "{err}");

    // Without the CA, the same settings work (the --addr flag beats HERALD_SOCKET).
    let mut cmd = herald();
    cmd.args(["voices", "--addr", &addr])
        .env("HERALD_TOKEN", TOKEN)
        .env("HERALD_SOCKET", "/nonexistent/herald.sock");
    assert!(ok(&mut cmd).contains("en-us"));
    // ... and HERALD_ADDR alone is used when no flag names the daemon.
    let mut cmd = herald();
    cmd.arg("voices")
        .env("HERALD_TOKEN", TOKEN)
        .env("HERALD_ADDR", &addr);
    assert!(ok(&mut cmd).contains("en-us"));
}

#[test]
fn a_missing_daemon_is_explained_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = herald();
    cmd.args(["voices", "--socket"])
        .arg(dir.path().join("nothing.sock"));
    let (code, err) = fails(&mut cmd);
    assert_eq!(code, Some(69));
    assert!(
        err.contains("no such socket") && err.contains("herald serve"),
        "{err}"
    );
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = herald();
    cmd.args(["cache", "stats", "--addr", &format!("127.0.0.1:{port}")]);
    let (code, err) = fails(&mut cmd);
    assert_eq!(code, Some(69));
    assert!(err.contains("connection refused"), "{err}");
    // Unusable settings are usage errors.
    let mut cmd = herald();
    cmd.args(["voices", "--addr", "https://127.0.0.1:1"]);
    let (code, err) = fails(&mut cmd);
    assert_eq!(code, Some(64));
    assert!(err.contains("HOST:PORT"), "{err}");
    let mut cmd = herald();
    cmd.args(["voices", "--addr", "127.0.0.1:1", "--token-file"])
        .arg(dir.path().join("no-token"));
    let (code, err) = fails(&mut cmd);
    assert_eq!(code, Some(64));
    assert!(err.contains("cannot read the token file"), "{err}");
}

/// Whether this process runs as root (which opens any socket).
fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

#[test]
fn a_socket_the_user_may_not_open_names_the_group_to_join() {
    if is_root() {
        // Root opens any socket: the daemon gives its socket to group `audio`, and the client
        // runs as `nobody` (not in it), then as `nobody` in group `audio`.
        let server = Serve::new("[server]\nsocket_group = \"audio\"\n").start();
        // Let `nobody` reach the socket's directory (a temp dir is 0700).
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let as_nobody = |groups: &str| {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534"]);
            if groups.is_empty() {
                cmd.arg("--clear-groups");
            } else {
                cmd.arg(format!("--groups={groups}"));
            }
            cmd.arg(env!("CARGO_BIN_EXE_herald"))
                .args(["devices", "--socket"])
                .arg(&server.socket)
                .env_remove("HERALD_ADDR")
                .env_remove("HERALD_TOKEN");
            cmd
        };
        let (code, err) = fails(&mut as_nobody(""));
        assert_eq!(code, Some(69), "{err}");
        assert!(
            err.contains("permission denied")
                && err.contains("group audio")
                && err.contains("`sudo usermod -aG audio $USER`"),
            "{err}"
        );
        // The advice works: in group audio, nobody may use the socket.
        let listing = ok(&mut as_nobody("29"));
        assert!(listing.contains("null"), "{listing}");
    } else {
        // Anyone else: a socket whose mode lets nobody in.
        let server = ServeProcess::start(&[]);
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&server.socket, std::fs::Permissions::from_mode(0o000)).unwrap();
        let mut cmd = herald();
        cmd.args(["devices", "--socket"]).arg(&server.socket);
        let (code, err) = fails(&mut cmd);
        assert_eq!(code, Some(69), "{err}");
        assert!(
            err.contains("permission denied") && err.contains("socket_mode should be 0660"),
            "{err}"
        );
    }
}
