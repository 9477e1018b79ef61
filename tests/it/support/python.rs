//! The Python the polyglot tests run (`$HERALD_TEST_PYTHON`, set by `.ci/test`, else
//! `./.venv/bin/python`, created by `.ci/setup`), and the runner of the scripts in
//! `tests/python/` that drive the DashScope double with the official `dashscope` SDK.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

use super::{daemon::API_KEY, dashscope::DashScopeDouble};

/// The `dashscope` version `.ci/setup` pins; update both together.
pub const PINNED_SDK: &str = "2.0.2";

/// A Python with grpcio (for `examples/python/say.py`): without one the test fails and says so.
pub fn python_with_grpc() -> PathBuf {
    if let Some(p) = std::env::var_os("HERALD_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with grpcio: run `bash .ci/setup` (creates .venv) or set HERALD_TEST_PYTHON"
    );
    venv
}

/// A Python with `dashscope`, or `None` to skip (only when neither `HERALD_TEST_PYTHON` nor
/// `CI` is set and `./.venv` has no `dashscope`).
pub fn python_with_dashscope() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HERALD_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(".venv/bin/python");
    let usable = venv.exists()
        && std::process::Command::new(&venv)
            .args(["-c", "import dashscope"])
            .output()
            .is_ok_and(|o| o.status.success());
    if usable {
        return Some(venv);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but there is no Python with dashscope: set HERALD_TEST_PYTHON or run `bash .ci/setup`"
    );
    eprintln!(
        "skipping the dashscope SDK check: set HERALD_TEST_PYTHON or run `bash .ci/setup` to create .venv"
    );
    None
}

/// Run `tests/python/<script>` with `python` against `double` (which expects [`API_KEY`]):
/// within 120 s, it must print its JSON summary, record no failure, exit 0, and have run the
/// pinned SDK. Returns the summary's `checks`.
pub async fn run_sdk_check(python: &Path, script: &str, double: &DashScopeDouble) -> Value {
    let child = tokio::process::Command::new(python)
        .arg(format!("tests/python/{script}"))
        .env("DASHSCOPE_HTTP_BASE_URL", double.base_url())
        .env("DASHSCOPE_WEBSOCKET_BASE_URL", double.ws_base_url())
        .env("DASHSCOPE_API_KEY", API_KEY)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("DASHSCOPE_API_KEY_FILE_PATH")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the SDK check finishes within 120 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(
        summary["failures"],
        json!([]),
        "the SDK disagrees with the double:\n{stderr}"
    );
    assert!(out.status.success());
    assert_eq!(
        summary["sdk_version"], PINNED_SDK,
        "update .ci/setup and PINNED_SDK together"
    );
    summary["checks"].clone()
}
