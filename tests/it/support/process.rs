//! Processes: `herald serve` as the real binary ([`ServeProcess`], started by [`Serve`]), this
//! process's children, and tests that need a process of their own ([`own_process!`]): all the
//! integration tests share one process, so a test that counts this process's children (or
//! changes what the process's environment decides) runs its body in a child, this test binary
//! re-executed for that one test.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use herald::pb::speech_client::SpeechClient;
use tonic::transport::{Channel, Endpoint};

use super::{daemon::API_KEY, dashscope::DashScopeDouble};

/// Names, in a child run by [`run_test_in_child`], the test it runs.
const CHILD_TEST_ENV: &str = "HERALD_TEST_CHILD";

/// Run the test `path` (as `module_path!()` spells the test's module, then its name) in a child
/// process: this test binary, re-executed with only that test (`--exact`, one thread),
/// `--ignored` when the test is marked so, its environment adjusted by `setup`. Fails if the
/// child fails or does not run exactly that test. Prints the child's output (its end, for
/// stderr).
pub fn run_test_in_child(path: &str, ignored: bool, setup: impl FnOnce(&mut Command)) {
    // `module_path!()` begins with the crate's name; libtest's names do not.
    let name = path.split_once("::").map_or(path, |(_, rest)| rest);
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    if ignored {
        cmd.arg("--ignored");
    }
    cmd.env(CHILD_TEST_ENV, name);
    setup(&mut cmd);
    let output = cmd.output().expect("run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail = stderr
        .char_indices()
        .rev()
        .nth(4000)
        .map_or(&*stderr, |(i, _)| &stderr[i..]);
    println!("--- {name} in a child process: stdout ---\n{stdout}--- stderr (end) ---\n{tail}");
    assert!(
        output.status.success(),
        "{name} failed in its child process"
    );
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its child process (wrong name?)"
    );
}

/// True in the child process [`run_test_in_child`] started for the test `path`
/// (`module_path!()::name`).
pub fn in_child_for(path: &str) -> bool {
    let name = path.split_once("::").map_or(path, |(_, rest)| rest);
    std::env::var(CHILD_TEST_ENV).is_ok_and(|n| n == name)
}

/// `own_process!(test_name)` at the start of a test: in the test process, runs the test again
/// alone in a child process and evaluates to `false` (the caller returns; the child's result is
/// the test's); in that child, evaluates to `true` (the caller goes on with its body).
macro_rules! own_process {
    ($test:ident) => {{
        let path = concat!(module_path!(), "::", stringify!($test));
        if $crate::support::process::in_child_for(path) {
            true
        } else {
            $crate::support::process::run_test_in_child(path, false, |_| {});
            false
        }
    }};
}
pub(crate) use own_process;

/// Processes that are children of this process and run `name`, with their state letter.
pub fn children_named(name: &str) -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        let state = rest.first().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = rest.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if comm == name && ppid == me {
            out.push((pid, state));
        }
    }
    out
}

/// How to start `herald serve` (the real binary) on a temp unix socket.
pub struct Serve {
    toml: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    logged: bool,
    nofile: Option<u64>,
}

impl Serve {
    /// The configuration file `toml`, no API key (unless one is given), stderr inherited.
    pub fn new(toml: &str) -> Self {
        Self {
            toml: toml.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            logged: false,
            nofile: None,
        }
    }

    /// Arguments after `serve`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// An environment variable (for `DASHSCOPE_API_KEY`: replacing the removed one).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// DashScope engines calling `double` with [`API_KEY`].
    pub fn double(self, double: &DashScopeDouble) -> Self {
        self.env("DASHSCOPE_API_KEY", API_KEY)
            .env("DASHSCOPE_HTTP_BASE_URL", &double.base_url())
    }

    /// Also listen on 127.0.0.1 at a port the daemon picks ([`ServeProcess::tcp`] finds it in
    /// the log).
    pub fn tcp(self) -> Self {
        self.args(&["--listen", "127.0.0.1:0"]).logged()
    }

    /// Serve metrics at a port the daemon picks ([`ServeProcess::metrics`] finds it in the
    /// log).
    pub fn metrics(self) -> Self {
        self.args(&["--metrics-listen", "127.0.0.1:0"]).logged()
    }

    /// Run it with an open-file limit of `n` (soft and hard, by `prlimit`).
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// stderr (the daemon's log) to [`ServeProcess::log`]'s file.
    pub fn logged(mut self) -> Self {
        self.logged = true;
        self
    }

    /// Start it and wait (up to 10 s) for its socket.
    pub fn start(self) -> ServeProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("herald.sock");
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, &self.toml).expect("write config");
        let mut cmd = match self.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_herald"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_herald")),
        };
        let child = cmd
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(&self.args)
            .env("HERALD_CONFIG", &config)
            .env("CACHE_DIRECTORY", dir.path().join("cache"))
            .env_remove("DASHSCOPE_API_KEY")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(if self.logged {
                Stdio::from(std::fs::File::create(dir.path().join("stderr.log")).expect("log file"))
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("spawn herald serve");
        let mut me = ServeProcess { child, socket, dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !me.socket.exists() {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("herald serve exited early: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald serve did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }
}

/// `herald serve` as a separate process (the real binary), listening on a temp unix socket.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Start the binary with the default configuration and no API key, and wait (up to 10 s)
    /// for its socket.
    pub fn start(extra_args: &[&str]) -> Self {
        Serve::new("# empty: defaults\n").args(extra_args).start()
    }

    /// What the daemon has logged so far (only for [`Serve::logged`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The first `127.0.0.1:PORT` on the first log line that says `what`, waiting for it (up to
    /// 10 s): where the daemon bound what it was asked to bind at port 0.
    fn logged_addr(&self, what: &str) -> SocketAddr {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(what)) {
                let at = line.find("127.0.0.1:").expect("an address on the line");
                let rest = &line[at + "127.0.0.1:".len()..];
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                return format!("127.0.0.1:{}", &rest[..digits])
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}: {line}"));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line says {what:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its TCP listener (started with [`Serve::tcp`]).
    pub fn tcp(&self) -> SocketAddr {
        self.logged_addr("herald ready")
    }

    /// Its Wyoming listener (started with `--wyoming-listen tcp://127.0.0.1:0` and
    /// [`Serve::logged`]).
    pub fn wyoming(&self) -> SocketAddr {
        self.logged_addr("wyoming door listening")
    }

    /// Its OpenAI-compatible HTTP listener (started with `--http-listen 127.0.0.1:0` and
    /// [`Serve::logged`]).
    pub fn http(&self) -> SocketAddr {
        self.logged_addr("OpenAI-compatible HTTP at /v1")
    }

    /// Its metrics listener (started with [`Serve::metrics`]).
    pub fn metrics(&self) -> SocketAddr {
        self.logged_addr("metrics at /metrics")
    }

    /// The metrics endpoint's content type and text (started with [`Serve::metrics`]), asked
    /// again until it answers (up to 10 s).
    pub async fn scrape(&self) -> (String, String) {
        let url = format!("http://{}/metrics", self.metrics());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match reqwest::get(&url).await {
                Ok(r) => {
                    let content_type = r
                        .headers()
                        .get("content-type")
                        .map(|v| v.to_str().expect("a text content type").to_owned())
                        .unwrap_or_default();
                    return (content_type, r.text().await.expect("the scrape's text"));
                }
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "scrape: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// A client over its unix socket.
    pub async fn client(&self) -> SpeechClient<Channel> {
        let ch = Endpoint::from_shared(format!("unix://{}", self.socket.display()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect unix");
        SpeechClient::new(ch)
    }

    /// Send SIGTERM and wait for the exit status (bounded).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald serve ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Held by the tests that keep real time (paced ALSA devices, sandboxed cpal streams) and by
/// the ones that load the machine on purpose (fault storms, request floods), for their whole
/// run, so that one never distorts the other's clock: since the suite became one binary they
/// share a process and its two test threads. Every other test runs beside them as before.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    EXCLUSIVE.lock().await
}
