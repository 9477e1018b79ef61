//! Issue 23, items 1, 2, 3, 8 and part of 10, through the real binary: connections without a
//! token (silent, idle, too many) cannot take the daemon down; unauthenticated health `Watch`
//! streams are bounded; a bad TLS pair or a listener that cannot be bound stops `serve` before
//! READY=1 with no socket file left; every terminating signal shuts down as SIGTERM does, and an
//! in-flight `Speak` stream gets its final event; an exposed socket is warned about.

use std::{
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use futures::future::join_all;
use herald::pb::{self, speak_event::Event as E};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout},
};
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{dashscope::DashScopeDouble, *};

const TOKEN: &str = "test-token-3f9a1c7e5b2d4f6a8c0e";

async fn unix_channel(socket: &Path) -> Channel {
    Endpoint::from_shared(format!("unix://{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .expect("connect unix")
}

async fn tcp_channel(addr: std::net::SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
}

/// The health status of the whole server over `ch`.
async fn health(ch: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(ch)
        .check(HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
}

/// The daemon's resident memory, kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether the server closes `stream` within `within` (EOF or reset), while it sends nothing.
async fn closed_within(mut stream: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        timeout(within, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await,
        Ok(())
    )
}

/// Send `signal` (a name for `kill -s`) to `pid`.
fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -s {signal}");
}

/// Wait (up to `within`) for the child to exit.
fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "herald did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// === item 1: connections without a token ===

/// 600 silent TCP connections from a client with no token, against a daemon whose open-file
/// limit is 512 (before: it ran out of descriptors, answered no one, and spun in its accept
/// loop). Now the TCP listener holds at most its cap, the unix socket and health answer
/// throughout, every silent connection is closed after the handshake timeout (on the gRPC, HTTP
/// and Wyoming doors and the metrics listener alike), a connection gone quiet is closed after the idle timeout, and the
/// cap is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_capped_and_closed_and_the_unix_socket_keeps_answering() {
    let _exclusive = exclusive().await;
    let server = Serve::new(
        "[server]\nmax_connections = 64\nhandshake_timeout_ms = 1000\nidle_timeout_ms = 2000\n",
    )
    .tcp()
    .args(&["--http-listen", "127.0.0.1:0"])
    .args(&["--wyoming-listen", "tcp://127.0.0.1:0"])
    .env("HERALD_AUTH_TOKEN", TOKEN)
    .nofile(512)
    .metrics()
    .start();
    let (grpc, http, wyoming) = (server.tcp(), server.http(), server.wyoming());
    let metrics = server.metrics();
    assert_eq!(
        health(unix_channel(&server.socket).await).await.unwrap(),
        ServingStatus::Serving as i32
    );

    let mut silent = Vec::new();
    for _ in 0..600 {
        silent.push(TcpStream::connect(grpc).await.expect("connect"));
    }
    let mut others = Vec::new();
    for addr in [http, wyoming, metrics] {
        for _ in 0..5 {
            others.push(TcpStream::connect(addr).await.expect("connect"));
        }
    }
    // Gone quiet after a first byte: the idle timeout, not the handshake one.
    let mut quiet = TcpStream::connect(wyoming).await.unwrap();
    quiet.write_all(b"{").await.unwrap();
    let opened = Instant::now();

    // The unix socket answers while they are open: health, and a synthesis.
    let ch = unix_channel(&server.socket).await;
    let status = timeout(Duration::from_secs(10), health(ch.clone()))
        .await
        .expect("health over the unix socket answers under the flood")
        .unwrap();
    assert_eq!(status, ServingStatus::Serving as i32);
    let audio = timeout(
        Duration::from_secs(20),
        synthesize(
            &mut herald::pb::speech_client::SpeechClient::new(ch),
            pb::SynthesizeRequest {
                model: "espeak-ng".into(),
                ..request(
                    "Still here.",
                    pb::audio_format::Encoding::PcmS16le,
                    16000,
                    1,
                )
            },
        ),
    )
    .await
    .expect("a synthesis over the unix socket completes under the flood")
    .expect("synthesis");
    assert!(rms(&audio.samples()) > 0.01, "speech, not silence");

    // Every silent connection is closed: those over the cap at once, the others after the
    // 1 s handshake timeout (8 s: a generous margin on a loaded machine).
    let closed = join_all(
        silent
            .into_iter()
            .chain(others)
            .map(|s| closed_within(s, Duration::from_secs(8))),
    )
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open,
        0,
        "{open} of {} silent connections still open",
        closed.len()
    );
    assert!(
        closed_within(quiet, Duration::from_secs(8)).await,
        "idle connection kept open"
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(1),
        "closed before the handshake timeout"
    );

    // The TCP listener serves again once they are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(ch) = tcp_channel(grpc).await
            && let Ok(status) = health(ch).await
        {
            assert_eq!(status, ServingStatus::Serving as i32);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TCP listener did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log();
    assert!(
        log.contains("server.max_connections: the listener is full"),
        "the cap is logged:\n{log}"
    );
    assert!(log.contains("open-file limit"), "{log}");
}

// === item 2: health Watch streams ===

/// 2000 health `Watch` calls without a token (before: each held a stream and memory for ever;
/// 100 000 of them took 11 → 585 MB). Now at most `server.max_health_watches` are open, the rest
/// are refused with RESOURCE_EXHAUSTED naming the setting, HTTP/2 streams per connection are
/// capped by `server.max_concurrent_streams`, a closed Watch gives its place back, and at
/// shutdown open Watch streams see NOT_SERVING and end (the daemon does not wait out its grace
/// period for them). RSS before, during and after is printed (`HERALD_TEST_WATCHES` sets the
/// number of calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watch_streams_are_bounded_and_end_at_shutdown() {
    let _exclusive = exclusive().await;
    let calls: usize = std::env::var("HERALD_TEST_WATCHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let mut server = Serve::new(
        "[server]\nmax_health_watches = 32\nmax_concurrent_streams = 100\nshutdown_grace_ms = 30000\n",
    )
    .logged()
    .start();
    let pid = server.child.id();
    let ch = unix_channel(&server.socket).await;
    health(ch.clone()).await.unwrap();

    // The server's SETTINGS_MAX_CONCURRENT_STREAMS, read by a raw HTTP/2 client.
    let io = tokio::net::UnixStream::connect(&server.socket)
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(io).await.unwrap();
    let driver = tokio::spawn(conn);
    let req = tonic::codegen::http::Request::post("http://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    h2 = h2.ready().await.unwrap();
    let (response, mut body) = h2.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    response.await.unwrap();
    assert_eq!(
        h2.current_max_send_streams(),
        100,
        "HTTP/2 streams per connection"
    );
    driver.abort();

    let before = rss_kb(pid);
    // 40 connections: 50 calls each, within the 100 streams a connection may open, so that no
    // call waits in the client for a stream (tonic's client can stall calls queued there when
    // a burst of refusals makes the HTTP/2 layer reset the connection).
    let channels: Vec<Channel> = join_all((0..40).map(|_| unix_channel(&server.socket))).await;
    let results = join_all((0..calls).map(|i| {
        let ch = channels[i % channels.len()].clone();
        async move {
            let mut stream = HealthClient::new(ch)
                .watch(HealthCheckRequest::default())
                .await?
                .into_inner();
            let first = stream.message().await?.expect("a first status");
            assert_eq!(first.status, ServingStatus::Serving as i32);
            Ok::<_, tonic::Status>(stream)
        }
    }))
    .await;
    let during = rss_kb(pid);
    let mut open = Vec::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok(stream) => open.push(stream),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("server.max_health_watches"),
                    "{}",
                    status.message()
                );
                refused += 1;
            }
        }
    }
    assert_eq!(open.len(), 32, "Watch streams open at once");
    assert_eq!(refused, calls - 32);

    // A closed Watch gives its place back.
    let keep = open.pop().unwrap();
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        match HealthClient::new(ch.clone())
            .watch(HealthCheckRequest::default())
            .await
        {
            Ok(s) => break s.into_inner(),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted);
                assert!(Instant::now() < deadline, "no place given back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    drop(channels);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kb(pid);
    println!(
        "health Watch: {calls} calls; RSS before {before} kB, during {during} kB, after {after} kB"
    );
    assert!(
        during.saturating_sub(before) < 64 * 1024,
        "RSS grew {before} → {during} kB"
    );

    // At shutdown the open Watch streams see NOT_SERVING and end, and the daemon exits well
    // before its 30 s grace period.
    let mut keep = keep;
    kill("TERM", pid);
    let stopped = Instant::now();
    for stream in [&mut keep, &mut again] {
        let mut last = None;
        while let Ok(Some(m)) = timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the Watch stream ends")
        {
            last = Some(m.status);
        }
        assert_eq!(last, Some(ServingStatus::NotServing as i32));
    }
    let status = wait_exit(&mut server.child, Duration::from_secs(15));
    assert!(status.success(), "{status}");
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "waited out the grace period"
    );
}

// === item 3: TLS files, and no READY=1 or stale socket on a failed start ===

/// `serve` with `args` and `env`, a notify socket and a unix socket in `dir`: its exit code,
/// stderr, whether it sent READY=1, and whether its socket file is left.
fn serve_fails(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, bool, bool) {
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let socket = dir.join("herald.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .args(args)
        .env_remove("DASHSCOPE_API_KEY")
        .env_remove("HERALD_CONFIG")
        .env("CACHE_DIRECTORY", dir.join("cache"))
        .env("NOTIFY_SOCKET", &notify_path)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mut ready = false;
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        ready |= String::from_utf8_lossy(&buf[..n]).contains("READY=1");
    }
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        ready,
        socket.exists(),
    )
}

#[test]
fn a_bad_tls_pair_or_an_unbindable_listener_stops_serve_before_ready_with_no_socket_left() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (cert, _) = tls::certificate(&a);
    let (_, other_key) = tls::certificate(&b);
    let (cert, other_key) = (cert.to_str().unwrap(), other_key.to_str().unwrap());
    let tls_env = [
        ("HERALD_TLS_CERT", cert),
        ("HERALD_TLS_KEY", other_key),
        ("HERALD_AUTH_TOKEN", TOKEN),
    ];

    // check-config names the setting and the problem: the key is not the certificate's.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("check-config")
        .env_remove("HERALD_CONFIG")
        .envs(tls_env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("server.tls_key") && err.contains("is not the key of the certificate"),
        "{err}"
    );

    // serve refuses it the same way, before binding anything and before READY=1.
    let (code, err, ready, left) = serve_fails(dir.path(), &["--listen", "127.0.0.1:0"], &tls_env);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("is not the key of the certificate"), "{err}");
    assert!(!ready, "READY=1 sent before failing");
    assert!(!left, "socket file left behind");

    // A door's listener that cannot be bound (the port is taken) after the gRPC socket was:
    // the start fails before READY=1, and the gRPC socket file does not stay behind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let wyoming = format!("tcp://127.0.0.1:{port}");
    let (code, err, ready, left) = serve_fails(dir.path(), &["--wyoming-listen", &wyoming], &[]);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!ready, "READY=1 sent before failing");
    assert!(!left, "socket file left behind");
}

// === item 8: signals ===

/// SIGINT, SIGQUIT, SIGUSR1 and SIGUSR2 shut down as SIGTERM does (exit 0, socket file removed,
/// the signal logged); SIGHUP is logged and ignored (before: SIGHUP, SIGUSR1 and SIGQUIT killed
/// herald at once, leaving its socket file).
#[test]
fn terminating_signals_shut_down_gracefully_and_sighup_is_ignored() {
    let handles: Vec<_> = ["INT", "QUIT", "USR1", "USR2", "HUP"]
        .into_iter()
        .map(|signal| {
            std::thread::spawn(move || {
                let mut server = Serve::new("# defaults\n").logged().start();
                let pid = server.child.id();
                // Ready (the handlers are installed before the socket exists, but be sure the
                // daemon answers).
                let deadline = Instant::now() + Duration::from_secs(10);
                while !server.log().contains("herald ready") {
                    assert!(Instant::now() < deadline, "not ready:\n{}", server.log());
                    std::thread::sleep(Duration::from_millis(20));
                }
                kill(signal, pid);
                if signal == "HUP" {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !server.log().contains("SIGHUP received and ignored") {
                        assert!(
                            Instant::now() < deadline,
                            "SIGHUP not logged:\n{}",
                            server.log()
                        );
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    assert!(
                        server.child.try_wait().unwrap().is_none(),
                        "SIGHUP stopped herald"
                    );
                    assert!(server.socket.exists());
                    kill("TERM", pid);
                }
                let status = wait_exit(&mut server.child, Duration::from_secs(15));
                let log = server.log();
                assert!(status.success(), "SIG{signal}: {status}\n{log}");
                assert!(!server.socket.exists(), "SIG{signal}: socket file left");
                let name = if signal == "HUP" {
                    "SIGTERM".to_owned()
                } else {
                    format!("SIG{signal}")
                };
                assert!(log.contains(&format!("{name} received")), "{log}");
                assert!(log.contains("shutdown complete"), "{log}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// On SIGTERM, a `Speak` stream that is playing and one that is queued each get their final
/// event (the proto: "then one final event … after which the server ends the stream"), and
/// the streams end without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_in_flight_speak_streams_get_their_final_event() {
    let double = DashScopeDouble::start(API_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[playback]\ndevice = \"wav\"\nwav_path = \"{}\"\nwav_sample_rate = 16000\n",
        dir.path().join("played.wav").display()
    );
    let mut server = Serve::new(&toml).double(&double).logged().start();
    let mut client = server.client().await;
    let mut playing = client
        .speak(speak_request(
            "long",
            &format!("@440Hz {}", "word ".repeat(40)),
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    until_started(&mut playing).await;
    let mut queued = client
        .speak(speak_request(
            "next",
            "@660Hz after that",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = queued.message().await.unwrap().unwrap().event.unwrap();
    assert!(matches!(first, E::Queued(_)), "{first:?}");

    kill("TERM", server.child.id());
    for (name, stream) in [("playing", &mut playing), ("queued", &mut queued)] {
        let mut events = Vec::new();
        let end = timeout(Duration::from_secs(15), async {
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => events.push(ev.event.unwrap()),
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(status),
                }
            }
        })
        .await
        .expect("the stream ends");
        assert!(
            end.is_ok(),
            "{name}: the stream ended with {end:?} after {events:?}"
        );
        let last = events.last().unwrap_or_else(|| panic!("{name}: no event"));
        assert!(
            matches!(
                last,
                E::Finished(_) | E::Interrupted(_) | E::Dropped(_) | E::Expired(_) | E::Failed(_)
            ),
            "{name}: the last event {last:?} is not final ({events:?})"
        );
    }
    let status = wait_exit(&mut server.child, Duration::from_secs(15));
    assert!(status.success(), "{status}");
}

// === item 10 (part): exposed sockets ===

/// A socket in a world-writable directory, or with a mode that lets every local user in, is
/// warned about at start.
#[test]
fn a_world_writable_socket_directory_and_an_open_socket_mode_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = open_dir.join("h.sock");
    let mut server = Serve::new("[server]\nsocket_mode = \"0666\"\n")
        .args(&["--listen", &format!("unix:{}", socket.display())])
        .logged()
        .start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("herald ready") {
        assert!(Instant::now() < deadline, "not ready:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.log();
    assert!(
        log.contains("server.socket_mode: the socket is open to every local user"),
        "{log}"
    );
    assert!(
        log.contains("the socket's directory is world-writable"),
        "{log}"
    );
    assert!(server.terminate().success());
    // The default socket (mode 0660, a private directory) is not warned about.
    let quiet = Serve::new("# defaults\n").logged().start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !quiet.log().contains("herald ready") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!quiet.log().contains("world"), "{}", quiet.log());
}
