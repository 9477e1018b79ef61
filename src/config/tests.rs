//! Loading, precedence, validation messages and masking, on [`Env`] snapshots and temporary
//! files (no process environment is read or changed).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::ExposeSecret;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(pairs.iter().copied())
}

/// Load with loopback TCP allowed without a token (these tests are about other keys; the
/// auth rules have their own test).
fn load_with(file: Option<&str>, e: &Env, o: Overrides) -> Result<Config, ConfigError> {
    let o = Overrides {
        insecure_no_auth: true,
        ..o
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = file.map(|text| {
        let p = dir.path().join("herald.toml");
        std::fs::write(&p, text).expect("write config");
        p
    });
    load(
        &LoadOptions {
            config_path,
            overrides: o,
        },
        e,
    )
}

#[test]
fn precedence_is_flags_then_env_then_file_then_defaults() {
    let file = "[server]\nlisten = [\"127.0.0.1:1\"]\n[synthesis]\nmax_text_chars = 10\ndefault_voice = \"de\"\n";
    let e = env(&[
        ("HERALD_LISTEN", "127.0.0.1:2"),
        ("HERALD_MAX_TEXT_CHARS", "20"),
    ]);
    let c = load_with(Some(file), &e, Overrides::default()).expect("config");
    assert_eq!(c.listen, vec![ListenAddr::parse("127.0.0.1:2").unwrap()]);
    assert_eq!(c.synthesis.max_text_chars, 20);
    assert_eq!(c.synthesis.default_voice.as_deref(), Some("de"));
    assert_eq!(c.shutdown_grace, Duration::from_secs(5));
    let o = Overrides {
        listen: vec!["127.0.0.1:3".into(), "unix:/tmp/x.sock".into()],
        ..Overrides::default()
    };
    let c = load_with(Some(file), &e, o).expect("config");
    assert_eq!(
        c.listen,
        vec![
            ListenAddr::Tcp("127.0.0.1:3".parse().unwrap()),
            ListenAddr::Unix("/tmp/x.sock".into())
        ]
    );
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let err = load_with(
        Some("[server]\nlisten = []\nlisen = 1\n"),
        &env(&[]),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("lisen"), "{err}");
    let err = load_with(Some("[sever]\n"), &env(&[]), Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("sever"), "{err}");
}

#[test]
fn wrong_types_and_ranges_name_the_key() {
    let err = load_with(
        Some("[synthesis]\nmax_text_chars = \"ten\"\n"),
        &env(&[]),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("synthesis.max_text_chars"), "{err}");
    let err = load_with(
        Some("[espeak]\ntimeout_ms = 5\n"),
        &env(&[]),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("espeak.timeout_ms") && err.contains("100..=600000"),
        "{err}"
    );
    let err = load_with(
        None,
        &env(&[("HERALD_MAX_TEXT_CHARS", "lots")]),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("HERALD_MAX_TEXT_CHARS"), "{err}");
    let o = Overrides {
        listen: vec!["localhost".into()],
        ..Overrides::default()
    };
    let err = load_with(None, &env(&[]), o).unwrap_err().to_string();
    assert!(err.contains("server.listen"), "{err}");
}

#[test]
fn secrets_come_from_env_file_or_credential_and_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "sk-from-file\n").unwrap();
    let o = || Overrides {
        listen: vec!["127.0.0.1:0".into()],
        ..Overrides::default()
    };
    let c = load_with(None, &env(&[(ENV_DASHSCOPE_API_KEY, "sk-secret-123")]), o()).unwrap();
    assert_eq!(
        c.dashscope.as_ref().unwrap().api_key.expose_secret(),
        "sk-secret-123"
    );
    let shown = format!("{} {:?}", c.render(), c);
    assert!(!shown.contains("sk-secret-123"), "{shown}");
    assert!(shown.contains(MASK));

    let e = env(&[(ENV_DASHSCOPE_API_KEY_FILE, key_file.to_str().unwrap())]);
    let c = load_with(None, &e, o()).unwrap();
    assert_eq!(
        c.dashscope.as_ref().unwrap().api_key.expose_secret(),
        "sk-from-file"
    );
    assert!(!c.render().contains("sk-from-file"));

    let cred = dir.path().join(CREDENTIAL_DASHSCOPE_API_KEY);
    std::fs::write(&cred, "sk-cred").unwrap();
    let e = env(&[(ENV_CREDENTIALS_DIRECTORY, dir.path().to_str().unwrap())]);
    let c = load_with(None, &e, o()).unwrap();
    assert_eq!(
        c.dashscope.as_ref().unwrap().api_key.expose_secret(),
        "sk-cred"
    );
}

#[test]
fn syntax_errors_give_the_position_but_never_the_line() {
    let err = load_with(
        Some("[dashscope]\napi_key = \"sk-SECRET-123\n"),
        &env(&[]),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(!err.contains("sk-SECRET"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn the_environment_key_beats_the_file_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "sk-env-file").unwrap();
    let e = env(&[
        (ENV_DASHSCOPE_API_KEY_FILE, key_file.to_str().unwrap()),
        ("HERALD_LISTEN", "127.0.0.1:0"),
    ]);
    let c = load_with(
        Some("[dashscope]\napi_key = \"sk-file\"\n"),
        &e,
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.dashscope.as_ref().unwrap().api_key.expose_secret(),
        "sk-env-file"
    );
}

#[test]
fn a_bad_log_filter_names_the_key() {
    let o = Overrides {
        log_level: Some("herald=loud[".into()),
        listen: vec!["127.0.0.1:0".into()],
        ..Overrides::default()
    };
    let err = load_with(None, &env(&[]), o).unwrap_err().to_string();
    assert!(err.starts_with("log.level"), "{err}");
}

#[test]
fn workspace_id_fills_the_base_url() {
    let e = env(&[
        (
            ENV_DASHSCOPE_BASE_URL,
            "https://{WorkspaceId}.example/api/v1/",
        ),
        (ENV_DASHSCOPE_WORKSPACE_ID, "ws-42"),
        ("HERALD_LISTEN", "127.0.0.1:0"),
    ]);
    let c = load_with(None, &e, Overrides::default()).unwrap();
    assert_eq!(c.dashscope_base_url, "https://ws-42.example/api/v1");
    let e = env(&[
        (
            ENV_DASHSCOPE_BASE_URL,
            "https://{WorkspaceId}.example/api/v1",
        ),
        ("HERALD_LISTEN", "127.0.0.1:0"),
    ]);
    let err = load_with(None, &e, Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("dashscope.base_url"), "{err}");
}

#[test]
fn default_socket_prefers_the_systemd_runtime_directory() {
    let e = env(&[(ENV_RUNTIME_DIRECTORY, "/run/herald-x:/run/other")]);
    assert_eq!(
        default_socket_path(&e),
        Some(PathBuf::from("/run/herald-x/herald.sock"))
    );
}

#[test]
fn cache_directory_and_fallback_chain() {
    let o = || Overrides {
        listen: vec!["127.0.0.1:0".into()],
        ..Overrides::default()
    };
    let c = load_with(None, &env(&[("HOME", "/home/k")]), o()).unwrap();
    let cache = c.cache.as_ref().expect("on by default");
    assert_eq!(cache.directory, Path::new("/home/k/.cache/herald"));
    assert_eq!(cache.max_bytes, 1 << 30);
    assert_eq!(
        c.fallback,
        vec![
            FallbackStep::Cache,
            FallbackStep::Model {
                model: "piper".into(),
                voice: None
            },
            FallbackStep::Model {
                model: "espeak-ng".into(),
                voice: None
            }
        ]
    );
    let e = env(&[
        ("HOME", "/home/k"),
        ("XDG_CACHE_HOME", "/xdg"),
        ("CACHE_DIRECTORY", "/var/cache/herald:/other"),
    ]);
    let c = load_with(None, &e, o()).unwrap();
    assert_eq!(
        c.cache.unwrap().directory,
        Path::new("/var/cache/herald"),
        "systemd's CacheDirectory= wins"
    );
    let c = load_with(None, &env(&[]), o()).unwrap();
    assert!(c.cache.is_none(), "no directory: no cache, and why");
    assert!(c.cache_off.unwrap().contains("CACHE_DIRECTORY"));

    let c = load_with(
        Some("[fallback]\nchain = [\"MiniMax/speech-2.8-hd\", \"cosyvoice-v3-flash/longanhuan\", \"cache\"]\n"),
        &env(&[("HOME", "/h")]),
        o(),
    )
    .unwrap();
    assert_eq!(
        c.fallback,
        vec![
            FallbackStep::Model {
                model: "MiniMax/speech-2.8-hd".into(),
                voice: None
            },
            FallbackStep::Model {
                model: "cosyvoice-v3-flash".into(),
                voice: Some("longanhuan".into())
            },
            FallbackStep::Cache,
        ]
    );
    let c = load_with(None, &env(&[("HOME", "/h"), ("HERALD_FALLBACK", "")]), o()).unwrap();
    assert_eq!(c.fallback.len(), 3, "an empty variable is unset");
    let err = load_with(
        Some("[fallback]\nchain = [\"cache\", \"cache\"]\n"),
        &env(&[]),
        o(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("fallback.chain") && err.contains("twice"),
        "{err}"
    );
    let err = load_with(Some("[cache]\nmax_bytes = 10\n"), &env(&[]), o())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cache.max_bytes") && err.contains("65536"),
        "{err}"
    );
}

#[test]
fn tcp_listeners_need_a_token_unless_loopback_and_insecure() {
    let strict = |listen: &str, e: &Env, insecure: bool| {
        load(
            &LoadOptions {
                config_path: None,
                overrides: Overrides {
                    listen: vec![listen.into()],
                    insecure_no_auth: insecure,
                    ..Overrides::default()
                },
            },
            e,
        )
    };
    let none = env(&[]);
    let err = strict("127.0.0.1:1", &none, false).unwrap_err().to_string();
    assert!(err.starts_with("server.auth_token"), "{err}");
    assert!(matches!(
        strict("127.0.0.1:1", &none, true).unwrap().tcp_auth,
        TcpAuth::InsecureLoopbackOnly
    ));
    assert!(strict("[::1]:1", &none, true).is_ok());
    let err = strict("0.0.0.0:1", &none, true).unwrap_err().to_string();
    assert!(err.contains("not loopback"), "{err}");
    assert!(matches!(
        strict("unix:/tmp/h.sock", &none, false).unwrap().tcp_auth,
        TcpAuth::Refuse
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(CREDENTIAL_AUTH_TOKEN),
        "cred-token-0123456789abcdef\n",
    )
    .unwrap();
    let creds = env(&[(ENV_CREDENTIALS_DIRECTORY, dir.path().to_str().unwrap())]);
    let c = strict("0.0.0.0:1", &creds, false).unwrap();
    let TcpAuth::Token { token, source } = &c.tcp_auth else {
        panic!("{:?}", c.tcp_auth)
    };
    assert_eq!(token.expose_secret(), "cred-token-0123456789abcdef");
    assert!(source.contains("credential"));
    let rendered = c.render();
    assert!(!rendered.contains("cred-token"), "{rendered}");
    assert!(
        rendered.contains("bearer token (27 characters"),
        "{rendered}"
    );
}

#[test]
fn wyoming_listeners_are_loopback_unless_allowed_remote() {
    // Off by default.
    let c = load_with(None, &env(&[]), Overrides::default()).expect("config");
    assert!(c.wyoming.listen.is_empty());
    assert_eq!((c.wyoming.sample_rate, c.wyoming.channels), (0, 1));
    // File, then environment, then flag.
    let file = "[wyoming]\nlisten = [\"tcp://127.0.0.1:10200\", \"unix:///run/w.sock\"]\nsample_rate = 22050\n";
    let c = load_with(Some(file), &env(&[]), Overrides::default()).expect("config");
    assert_eq!(
        c.wyoming.listen,
        vec![
            ListenAddr::Tcp("127.0.0.1:10200".parse().unwrap()),
            ListenAddr::Unix("/run/w.sock".into())
        ]
    );
    assert_eq!(c.wyoming.sample_rate, 22050);
    assert!(
        c.render().contains("\"tcp://127.0.0.1:10200\""),
        "{}",
        c.render()
    );
    let e = env(&[("HERALD_WYOMING_LISTEN", "tcp://[::1]:1,unix:///tmp/a")]);
    let c = load_with(Some(file), &e, Overrides::default()).expect("config");
    assert_eq!(c.wyoming.listen.len(), 2);
    let o = Overrides {
        wyoming_listen: vec!["tcp://127.0.0.1:3".into()],
        ..Overrides::default()
    };
    let c = load_with(Some(file), &e, o).expect("config");
    assert_eq!(
        c.wyoming.listen,
        vec![ListenAddr::Tcp("127.0.0.1:3".parse().unwrap())]
    );
    // Wyoming has no authentication: a remote address needs the explicit opt-in.
    let remote = "[wyoming]\nlisten = [\"tcp://0.0.0.0:10200\"]\n";
    let e = load_with(Some(remote), &env(&[]), Overrides::default()).unwrap_err();
    assert!(
        e.to_string().contains("wyoming.listen")
            && e.to_string().contains("wyoming.allow_remote = true"),
        "{e}"
    );
    let allowed = format!("{remote}allow_remote = true\n");
    let c = load_with(Some(&allowed), &env(&[]), Overrides::default()).expect("config");
    assert_eq!(c.wyoming.listen.len(), 1);
    for (bad, key) in [
        ("listen = [\"127.0.0.1:10200\"]", "wyoming.listen"),
        ("listen = [\"tcp://localhost:1\"]", "wyoming.listen"),
        ("sample_rate = 100", "wyoming.sample_rate"),
        ("channels = 3", "wyoming.channels"),
    ] {
        let text = format!("[wyoming]\n{bad}\n");
        let e = load_with(Some(&text), &env(&[]), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains(key), "{bad}: {e}");
    }
}

#[test]
fn dashscope_transport_and_websocket_url_are_checked_and_follow_the_sdk_variable() {
    let key = ("DASHSCOPE_API_KEY", "sk-x");
    let err = load_with(
        Some("[dashscope]\ntransport = \"grpc\"\n"),
        &env(&[key]),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("dashscope.transport") && err.contains("websocket"),
        "{err}"
    );
    let err = load_with(
        Some("[dashscope]\nwebsocket_base_url = \"https://h/api-ws/v1/inference\"\n"),
        &env(&[key]),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("dashscope.websocket_base_url") && err.contains("wss://"),
        "{err}"
    );
    let c = load_with(
        Some("[dashscope]\ntransport = \"websocket\"\nworkspace_id = \"ws1\"\n"),
        &env(&[
            key,
            (
                "DASHSCOPE_WEBSOCKET_BASE_URL",
                "wss://{WorkspaceId}.ap-southeast-1.maas.aliyuncs.com/api-ws/v1/inference/",
            ),
        ]),
        Overrides::default(),
    )
    .expect("config");
    let t = &c.dashscope.expect("dashscope").tuning;
    assert_eq!(
        t.transport,
        crate::engine::dashscope::ws::Transport::WebSocket
    );
    assert_eq!(
        t.websocket_base_url.as_deref(),
        Some("wss://ws1.ap-southeast-1.maas.aliyuncs.com/api-ws/v1/inference")
    );
}
