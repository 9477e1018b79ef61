//! Access control through the real binary: bearer tokens on TCP (none, wrong, right; health
//! open), unix sockets guarded by mode and group, TLS with a generated certificate, and the
//! configurations herald refuses to start with.

use std::{net::SocketAddr, os::unix::fs::MetadataExt, process::Command, time::Duration};

use futures::StreamExt;
use herald::pb::{self, audio_format::Encoding, speech_client::SpeechClient};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::support::*;

const TOKEN: &str = "test-token-3f9a1c7e5b2d4f6a8c0e";

async fn tcp_channel(addr: SocketAddr) -> Channel {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(ch) => return ch,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "connect: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn hello() -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: "espeak-ng".into(),
        ..request("Only for you.", Encoding::PcmS16le, 16000, 1)
    }
}

/// Synthesize with an optional token; the audio's samples or the status.
async fn speak(ch: &Channel, token: Option<&str>) -> Result<Vec<f32>, tonic::Status> {
    let mut client = SpeechClient::new(ch.clone());
    let mut stream = client
        .synthesize(with_token(hello(), token))
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(msg) = stream.next().await {
        if let Some(pb::synthesize_response::Payload::Audio(a)) = msg?.payload {
            bytes.extend_from_slice(&a.data);
        }
    }
    Ok(s16_to_f32(&bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_the_bearer_token_and_health_does_not() {
    let server = Serve::new("# defaults\n")
        .tcp()
        .env("HERALD_AUTH_TOKEN", TOKEN)
        .start();
    let ch = tcp_channel(server.tcp()).await;

    let e = speak(&ch, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("authorization"), "{}", e.message());
    let e = speak(&ch, Some("test-token-3f9a1c7e5b2d4f6a8c0X"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(!e.message().contains(TOKEN), "never echoes the token");
    let e = speak(&ch, Some("")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let x = speak(&ch, Some(TOKEN)).await.expect("right token");
    assert!(x.len() > 8000 && voiced_fraction(&x, 16000) > 0.3);

    // Other services are guarded too; health is not.
    let e = pb::cache_client::CacheClient::new(ch.clone())
        .get_cache_stats(pb::GetCacheStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let health = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "herald.v1.Speech".into(),
        })
        .await
        .expect("health without a token")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The unix socket needs no token: its mode (0660) and group guard it.
    let mode = std::fs::metadata(&server.socket).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut unix = server.client().await;
    let c = synthesize(&mut unix, hello())
        .await
        .expect("unix, no token");
    assert!(!c.bytes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::support::tls::certificate(dir.path());
    let toml = format!(
        "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let server = Serve::new(&toml)
        .tcp()
        .env("HERALD_AUTH_TOKEN", TOKEN)
        .start();
    let addr = server.tcp();

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&cert).unwrap()))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ch = loop {
        match endpoint.connect().await {
            Ok(ch) => break ch,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "tls connect: {e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let x = speak(&ch, Some(TOKEN)).await.expect("over TLS");
    assert!(x.len() > 8000 && voiced_fraction(&x, 16000) > 0.3);

    // Plaintext HTTP/2 to the TLS port fails.
    let plain = tcp_channel(addr).await;
    assert!(speak(&plain, Some(TOKEN)).await.is_err());
}

#[test]
fn unsafe_configurations_are_refused_before_serving() {
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("check-config")
            .args(args)
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_AUTH_TOKEN")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Loopback TCP without a token needs the explicit flag.
    let (code, err) = check(&["--listen", "127.0.0.1:50051"], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("server.auth_token") && err.contains("--insecure-no-auth"),
        "{err}"
    );
    let (code, _) = check(&["--listen", "127.0.0.1:50051", "--insecure-no-auth"], &[]);
    assert_eq!(code, Some(0));
    // Anything else never runs without a token, flag or not.
    let (code, err) = check(&["--listen", "0.0.0.0:50051", "--insecure-no-auth"], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("not loopback"), "{err}");
    let (code, _) = check(
        &["--listen", "0.0.0.0:50051"],
        &[("HERALD_AUTH_TOKEN", TOKEN)],
    );
    assert_eq!(code, Some(0));
    let (code, err) = check(
        &["--listen", "[::]:50051"],
        &[("HERALD_AUTH_TOKEN", "short")],
    );
    assert_eq!(code, Some(64));
    assert!(err.contains("at least 16"), "{err}");
    assert!(!err.contains("short\""), "{err}");
}

#[test]
fn the_socket_gets_the_configured_group() {
    let id = |arg: &str| -> Vec<u32> {
        let out = Command::new("id").arg(arg).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect()
    };
    let (uid, primary, groups) = (id("-u")[0], id("-g")[0], id("-G"));
    // A group that is not the process's own, so that the socket's group shows the setting
    // and not a default: root may give a file to any group (nogroup); anyone else to a group
    // they belong to (a supplementary one when they have one, else their primary group).
    let gid = if uid == 0 {
        65534
    } else {
        groups
            .iter()
            .copied()
            .find(|g| *g != primary)
            .unwrap_or(primary)
    };
    let server = Serve::new(&format!("[server]\nsocket_group = \"{gid}\"\n")).start();
    let meta = std::fs::metadata(&server.socket).unwrap();
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.mode() & 0o777, 0o660);
    // By name, as the unit sets it (HERALD_SOCKET_GROUP=herald).
    if uid == 0 {
        let server = Serve::new("# defaults\n")
            .env("HERALD_SOCKET_GROUP", "nogroup")
            .start();
        assert_eq!(std::fs::metadata(&server.socket).unwrap().gid(), 65534);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_is_logged_as_a_warning() {
    let mut server = Serve::new("# defaults\n")
        .tcp()
        .args(&["--insecure-no-auth"])
        .start();
    // Served without a token on loopback.
    let ch = tcp_channel(server.tcp()).await;
    speak(&ch, None).await.expect("no token needed");
    assert!(server.terminate().success());
    let log = server.log();
    let warning = log
        .lines()
        .find(|l| l.contains("insecure-no-auth"))
        .unwrap_or_else(|| panic!("no warning about --insecure-no-auth:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("without a bearer token"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_ids_and_no_secret() {
    let api_key = "sk-never-logged-0123456789abcdef";
    let server = Serve::new("# defaults\n")
        .tcp()
        .args(&["--log-format", "json", "--log-level", "debug"])
        .env("HERALD_AUTH_TOKEN", TOKEN)
        .env("DASHSCOPE_API_KEY", api_key)
        .start();
    let ch = tcp_channel(server.tcp()).await;
    speak(&ch, Some(TOKEN)).await.expect("right token");
    assert!(
        speak(&ch, Some("wrong-token-0000000000000000"))
            .await
            .is_err()
    );
    assert!(speak(&ch, None).await.is_err());
    server_stop(server).await;
}

/// Stop `server` and return its log.
async fn server_stop(mut server: ServeProcess) -> String {
    assert!(server.terminate().success());
    let log = server.log();
    let mut with_id = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
        if v["span"]["request_id"].is_string() {
            with_id += 1;
        }
    }
    assert!(
        with_id >= 1,
        "request lines carry the request id in their span:\n{log}"
    );
    assert!(!log.contains(TOKEN), "the bearer token is never logged");
    assert!(!log.contains("wrong-token"), "nor a presented one");
    assert!(!log.contains("sk-never-logged"), "nor the API key");
    log
}
