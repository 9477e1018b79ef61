//! systemd integration through the real binary: `sd_notify` readiness, status, watchdog and
//! stopping on a test datagram socket (`NOTIFY_SOCKET`); socket activation through
//! `systemd-socket-activate` (the sockets passed as `LISTEN_FDS`); the unit files checked by
//! `systemd-analyze verify`.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use herald::pb::{self, audio_format::Encoding};
use tokio::time::Instant;

use crate::support::*;

/// Datagrams received on `sock` until `until` returns true or `timeout` passes.
fn collect(
    sock: &UnixDatagram,
    timeout: Duration,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn notify_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let socket = dir.path().join("herald.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .env_remove("DASHSCOPE_API_KEY")
        .env_remove("HERALD_CONFIG")
        .env("CACHE_DIRECTORY", dir.path().join("cache"))
        .env("NOTIFY_SOCKET", &notify_path)
        // 300 ms: pings every 150 ms.
        .env("WATCHDOG_USEC", "300000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();

    let got = collect(&notify, Duration::from_secs(10), |g| {
        g.iter().any(|m| m.contains("READY=1"))
    });
    let ready = got.iter().find(|m| m.contains("READY=1")).expect("READY=1");
    assert!(
        ready.contains("STATUS=serving on") && ready.contains("herald.sock"),
        "{ready:?}"
    );
    assert!(socket.exists(), "READY=1 only once the socket is bound");

    // At half the 300 ms interval: at least 4 pings in a second.
    let started = Instant::now();
    let pings = collect(&notify, Duration::from_secs(3), |g| {
        g.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 4
    });
    let n = pings.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        n >= 4,
        "{n} watchdog pings in {:?}: {pings:?}",
        started.elapsed()
    );

    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let got = collect(&notify, Duration::from_secs(10), |g| {
        g.iter().any(|m| m.contains("STOPPING=1"))
    });
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_on_the_passed_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    // systemd-socket-activate binds the socket, waits for the first connection, then starts
    // herald with the socket as fd 3 (LISTEN_FDS=1, LISTEN_FDNAMES=herald-unix).
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg("--fdname=herald-unix")
        .args(["-E", "CACHE_DIRECTORY"])
        .env("CACHE_DIRECTORY", dir.path().join("cache"))
        .arg(env!("CARGO_BIN_EXE_herald"))
        // server.listen names another socket: activation wins.
        .args(["serve", "--listen"])
        .arg(format!(
            "unix:{}",
            dir.path().join("ignored.sock").display()
        ))
        .env_remove("DASHSCOPE_API_KEY")
        .env_remove("HERALD_CONFIG")
        .stdin(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "activator did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut client = pb::speech_client::SpeechClient::new(channel);
    let c = synthesize(
        &mut client,
        pb::SynthesizeRequest {
            model: "espeak-ng".into(),
            ..request("Activated by systemd.", Encoding::PcmS16le, 16000, 1)
        },
    )
    .await
    .expect("served on the activated socket");
    let x = s16_to_f32(&c.bytes());
    assert!(x.len() > 8000 && voiced_fraction(&x, 16000) > 0.3);
    assert!(
        !dir.path().join("ignored.sock").exists(),
        "server.listen is not bound under activation"
    );

    // herald runs in the activator's process (it execs): SIGTERM stops it; the socket file
    // belongs to systemd and is left alone.
    Command::new("kill")
        .args(["-TERM", &activator.id().to_string()])
        .status()
        .unwrap();
    let status = activator.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(socket.exists(), "an activated socket is not removed");
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart= binaries exist: point them at the binary under test.
    for unit in ["herald.service", "herald.socket", "herald-user.service"] {
        let text = std::fs::read_to_string(Path::new("systemd").join(unit)).unwrap();
        let text = text.replace("/usr/bin/herald", env!("CARGO_BIN_EXE_herald"));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let runtime = dir.path().join("xdg-runtime");
    std::fs::create_dir(&runtime).unwrap();
    for (user, units) in [
        (false, &["herald.service", "herald.socket"][..]),
        (true, &["herald-user.service"][..]),
    ] {
        let mut cmd = Command::new("systemd-analyze");
        if user {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
        }
        let out = cmd
            .arg("verify")
            .args(units)
            .current_dir(dir.path())
            .output()
            .expect("systemd-analyze (package systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{units:?}: {stderr}"
        );
    }
}

#[test]
fn a_passed_tcp_socket_without_a_token_is_refused_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    // A free loopback port for the activator (released, then bound by it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut activator = Command::new("systemd-socket-activate")
        .args(["-l", &addr, "--fdname=herald-tcp"])
        .args(["-E", "CACHE_DIRECTORY", "-E", "NOTIFY_SOCKET"])
        .env("CACHE_DIRECTORY", dir.path().join("cache"))
        .env("NOTIFY_SOCKET", &notify_path)
        .arg(env!("CARGO_BIN_EXE_herald"))
        // Only a unix socket is configured, and no token: a passed TCP socket is not servable.
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", dir.path().join("unused.sock").display()))
        .env_remove("DASHSCOPE_API_KEY")
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_AUTH_TOKEN")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    // The first connection starts herald.
    let deadline = Instant::now() + Duration::from_secs(10);
    let _conn = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "activator did not listen: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = activator.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = activator.kill();
            panic!("herald did not refuse the passed TCP socket");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut activator.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(64), "EX_USAGE: {stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("bearer token"),
        "{stderr}"
    );
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while let Ok(n) = notify.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        !got.iter().any(|m| m.contains("READY=1")),
        "refused before READY=1: {got:?}"
    );
}

/// The unit settings that make the socket reachable by group herald and keep socket activation
/// working across restarts, read from the shipped files (systemd-analyze cannot tell whether
/// two units agree).
#[test]
fn the_units_agree_on_the_socket_and_its_group() {
    let read = |f: &str| std::fs::read_to_string(Path::new("systemd").join(f)).unwrap();
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(str::to_owned)
            .collect()
    };
    let service = settings(&read("herald.service"));
    let socket = settings(&read("herald.socket"));
    let has = |unit: &[String], line: &str| unit.iter().any(|l| l == line);
    for line in [
        "User=herald",
        "Group=herald",
        "SupplementaryGroups=audio",
        "RuntimeDirectory=herald",
        "RuntimeDirectoryPreserve=yes",
        "Environment=HERALD_SOCKET_GROUP=herald",
    ] {
        assert!(has(&service, line), "herald.service lacks {line}");
    }
    assert!(
        !service.iter().any(|l| l.contains("DynamicUser=yes")),
        "a dynamic user's group cannot be joined"
    );
    assert!(
        !service.iter().any(|l| l.contains("network-online")),
        "an offline kiosk must not wait for the network"
    );
    for line in [
        "ListenStream=/run/herald/herald.sock",
        "SocketGroup=herald",
        "SocketMode=0660",
        "Service=herald.service",
    ] {
        assert!(has(&socket, line), "herald.socket lacks {line}");
    }
    // herald's own default under the service: $RUNTIME_DIRECTORY/herald.sock, mode 0660.
    let config = herald::config::load(
        &herald::config::LoadOptions {
            config_path: Some("systemd/herald.example.toml".into()),
            ..Default::default()
        },
        &herald::config::Env::from_pairs([
            ("RUNTIME_DIRECTORY", "/run/herald"),
            ("CACHE_DIRECTORY", "/var/cache/herald"),
        ]),
    )
    .expect("the example config loads");
    assert_eq!(
        config.listen,
        [herald::config::ListenAddr::Unix(
            "/run/herald/herald.sock".into()
        )]
    );
    assert_eq!(config.socket_mode, 0o660);
    let sysusers = read("herald.sysusers");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", "herald"])),
        "{sysusers}"
    );
}
