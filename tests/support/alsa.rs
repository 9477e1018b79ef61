//! An ALSA sandbox for tests: real cpal → alsa-lib, no sound card.
//!
//! The sandbox is a temp directory holding an `.asoundrc` and the raw files it makes ALSA write.
//! Its PCMs are the `file` plugin over `null`, so what a stream plays lands in a file
//! (`format "raw"`: the samples exactly as the stream was opened, interleaved, native endian):
//! - `default` (the default PCM) → `default.raw`;
//! - `tofile` (hinted, so cpal lists it as `alsa:tofile`) → `tofile.raw`;
//! - `tofile16` (hinted; behind a `linear` plugin so it offers integer formats only, and
//!   herald falls back to `i16`) → `tofile16.raw`;
//! - `tofull` (hinted) → `/dev/full`: its writes fail (`EIO` from alsa-lib), a device that
//!   breaks mid-play.
//!
//! The files are not truncated (`truncate false`): a PCM opened again (herald reopens a device
//! that cannot pause at its next write) writes to `<file>.0001`, `<file>.0002`, …, which
//! [`Sandbox::read`] concatenates. Neither plugin is paced by a clock: a running stream plays
//! silence as fast as the CPU allows, so the files hold the audio written with runs of silence
//! between the writes.
//!
//! alsa-lib reads its configuration from the environment (`HOME` for `~/.asoundrc`), which a
//! test cannot change for its own process (`set_var` is unsafe and banned here). So each ALSA
//! test runs in a child: the parent test calls [`run`], which re-executes this test binary with
//! `HOME` pointing at a new sandbox and runs one `#[ignore]`d test in it; that test finds the
//! sandbox with [`Sandbox::from_env`].
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Names the sandbox directory in the child's environment.
const SANDBOX_ENV: &str = "HERALD_TEST_ALSA_SANDBOX";

/// A sandbox, seen from the test running inside it.
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// The sandbox this process runs in, if any.
    pub fn from_env() -> Option<Self> {
        std::env::var_os(SANDBOX_ENV).map(|dir| Self { dir: dir.into() })
    }

    /// The raw file the PCM `pcm` writes when first opened.
    pub fn raw(&self, pcm: &str) -> PathBuf {
        self.dir.join(format!("{pcm}.raw"))
    }

    /// Everything the PCM `pcm` was sent, over all the times it was opened.
    pub fn read(&self, pcm: &str) -> Vec<u8> {
        let first = self.raw(pcm);
        let mut bytes =
            std::fs::read(&first).unwrap_or_else(|e| panic!("{}: {e}", first.display()));
        for n in 1.. {
            let next = PathBuf::from(format!("{}.{n:04}", first.display()));
            match std::fs::read(&next) {
                Ok(more) => bytes.extend(more),
                Err(_) => break,
            }
        }
        bytes
    }
}

/// The sandbox's ALSA configuration, writing into `dir`.
fn asoundrc(dir: &Path) -> String {
    let file = |pcm: &str| dir.join(format!("{pcm}.raw")).display().to_string();
    format!(
        r#"# herald test sandbox: file plugins over null, no sound card needed
pcm.!default {{
    type file
    slave.pcm "null"
    file "{default}"
    format "raw"
    truncate false
}}
pcm.tofile {{
    type file
    slave.pcm "null"
    file "{tofile}"
    format "raw"
    truncate false
    hint {{ show on description "herald test sink" }}
}}
pcm.tofull {{
    type file
    slave.pcm "null"
    file "/dev/full"
    format "raw"
    hint {{ show on description "herald test sink that fails (writes to /dev/full)" }}
}}
pcm.herald_int_only {{
    type linear
    slave {{ pcm "null" format S16_LE }}
    hint {{ show off }}
}}
pcm.tofile16 {{
    type file
    slave.pcm "herald_int_only"
    file "{tofile16}"
    format "raw"
    truncate false
    hint {{ show on description "herald test sink, integer formats" }}
}}
"#,
        default = file("default"),
        tofile = file("tofile"),
        tofile16 = file("tofile16"),
    )
}

/// Run the `#[ignore]`d test `name` (its full path, e.g. `sandboxed::plays_a_tone`) of this
/// test binary in a child process inside a new sandbox, and fail if it fails.
///
/// The sandbox lives in `/dev/shm` when there is one: the unpaced plugins write silence at
/// hundreds of MB/s while a stream runs.
pub fn run(name: &str) {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("herald-alsa-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("herald-alsa-").tempdir()
    }
    .expect("a temp dir for the ALSA sandbox");
    std::fs::write(dir.path().join(".asoundrc"), asoundrc(dir.path())).expect("write .asoundrc");
    let exe = std::env::current_exe().expect("the test binary");
    let output = Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SANDBOX_ENV, dir.path())
        // alsa.conf reads ~/.asoundrc and $XDG_CONFIG_HOME/alsa/asoundrc.
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join(".config"))
        .env_remove("ALSA_CONFIG_PATH")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown with --nocapture (the numbers the child measured), and on failure; alsa-lib's
    // complaints on stderr can be long, so only their end.
    let tail = stderr
        .char_indices()
        .rev()
        .nth(4000)
        .map_or(&*stderr, |(i, _)| &stderr[i..]);
    println!("--- {name} in the ALSA sandbox: stdout ---\n{stdout}--- stderr (end) ---\n{tail}");
    assert!(output.status.success(), "{name} failed in the ALSA sandbox");
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in the ALSA sandbox (wrong name?)"
    );
}
