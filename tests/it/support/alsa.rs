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
//! test cannot change for its own process (`set_var` is unsafe and banned here, and the tests
//! share one process). So each ALSA test runs in a child: the parent test calls [`run`], which
//! re-executes this test binary with `HOME` pointing at a new sandbox and runs one `#[ignore]`d
//! test in it; that test finds the sandbox with [`Sandbox::from_env`]. Or a test begins with
//! [`sandboxed`], which runs the test itself again, alone, in a child inside a sandbox.

use std::path::{Path, PathBuf};

use super::process::{in_child_for, run_test_in_child};

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

/// Run the `#[ignore]`d test `path` (`module_path!()` of its module, then its name, e.g.
/// `concat!(module_path!(), "::sandboxed::plays_a_tone")`) of this test binary in a child
/// process inside a new sandbox, and fail if it fails.
pub fn run(path: &str) {
    run_in_sandbox(path, true);
}

/// In the child [`sandboxed`] started for the test `path` (`module_path!()::name`): its
/// sandbox. In the test process: runs that test again in a child inside a new sandbox (failing
/// if it fails), and gives `None`: the caller returns.
pub fn sandboxed(path: &str) -> Option<Sandbox> {
    if in_child_for(path) {
        return Some(Sandbox::from_env().expect("a sandbox in the child"));
    }
    run_in_sandbox(path, false);
    None
}

/// Run the test `path` in a child process inside a new sandbox, and fail if it fails.
///
/// The sandbox lives in `/dev/shm` when there is one: the unpaced plugins write silence at
/// hundreds of MB/s while a stream runs.
fn run_in_sandbox(path: &str, ignored: bool) {
    // The child keeps real time: nothing heavy runs beside it (see `exclusive`).
    let _exclusive = futures::executor::block_on(super::process::exclusive());
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
    run_test_in_child(path, ignored, |cmd| {
        cmd.env(SANDBOX_ENV, dir.path())
            // alsa.conf reads ~/.asoundrc and $XDG_CONFIG_HOME/alsa/asoundrc.
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join(".config"))
            .env_remove("ALSA_CONFIG_PATH");
    });
}

/// A sound card stand-in that keeps time: ALSA's `file` plugin over `null`, writing into a FIFO
/// that a reader thread drains at the stream's byte rate, so the stream is paced at real time
/// the way a hardware device paces it (its writes block while the FIFO is full). What the reader
/// drains is kept: exactly what a speaker would have played, pauses and underruns included, and
/// nothing while the device is closed.
///
/// Unlike [`Sandbox`], this one is for a *child* process that plays (e.g. `herald serve`): point
/// its `HOME` at [`PacedDevice::home`] and play on the device [`PacedDevice::DEVICE`].
pub struct PacedDevice {
    dir: tempfile::TempDir,
    captured: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl PacedDevice {
    /// The device's name as herald (cpal) lists it.
    pub const DEVICE: &'static str = "alsa:paced";
    /// The FIFO's capacity: 4 KiB, about 10 ms of 48 kHz stereo f32, the latency of the
    /// stand-in's "hardware" buffer.
    const FIFO_BYTES: i32 = 4096;

    /// Start the reader, consuming `bytes_per_second` (the stream's rate × channels × sample
    /// size).
    pub fn start(bytes_per_second: u32) -> Self {
        use std::{
            io::Read,
            os::unix::{ffi::OsStrExt, fs::OpenOptionsExt, io::AsRawFd},
            sync::{Arc, Mutex, atomic::AtomicBool, atomic::Ordering},
            time::Duration,
        };
        let dir = tempfile::Builder::new()
            .prefix("herald-alsa-paced-")
            .tempdir()
            .expect("a temp dir for the paced ALSA device");
        let fifo = dir.path().join("paced.fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("fifo path");
        // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
        let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
        // Read and write, non-blocking: opening never waits for a writer, and a writer (the
        // file plugin, opened and closed with each stream) never sees the FIFO without a reader.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the fifo");
        // SAFETY: a valid open descriptor; F_SETPIPE_SZ takes an int.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, Self::FIFO_BYTES) };
        assert!(rc > 0, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
        let asoundrc = format!(
            r#"# herald test: a file plugin over null into a FIFO drained at real time
pcm.paced {{
    type file
    slave.pcm "null"
    file "{}"
    format "raw"
    hint {{ show on description "herald test sink paced at real time" }}
}}
"#,
            fifo.display()
        );
        std::fs::write(dir.path().join(".asoundrc"), asoundrc).expect("write .asoundrc");

        let captured = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (captured, stop) = (captured.clone(), stop.clone());
            std::thread::spawn(move || {
                // A token bucket: bytes accrue at the stream's rate, capped at the FIFO's size
                // so that time with nothing to read is not made up later in a burst.
                let rate = f64::from(bytes_per_second);
                let cap = f64::from(Self::FIFO_BYTES);
                let mut tokens = 0.0_f64;
                let mut last = tokio::time::Instant::now();
                let mut buf = vec![0_u8; Self::FIFO_BYTES as usize];
                let mut draining = false;
                loop {
                    if !draining && stop.load(Ordering::Acquire) {
                        draining = true;
                    }
                    let now = tokio::time::Instant::now();
                    tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(cap);
                    last = now;
                    let want = if draining { buf.len() } else { tokens as usize };
                    if want > 0 {
                        match file.read(&mut buf[..want]) {
                            Ok(n) => {
                                tokens -= n as f64;
                                captured.lock().unwrap().extend_from_slice(&buf[..n]);
                                continue;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                if draining {
                                    return;
                                }
                            }
                            Err(e) => panic!("read the fifo: {e}"),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Self {
            dir,
            captured,
            stop,
            reader: Some(reader),
        }
    }

    /// The FIFO the device writes into (its reader holds it open: renaming it away and back
    /// makes the device impossible to open meanwhile, and then as good as before).
    pub fn fifo(&self) -> std::path::PathBuf {
        self.dir.path().join("paced.fifo")
    }

    /// The `HOME` (holding the `.asoundrc`) for the process that plays.
    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    /// What has played so far.
    pub fn captured(&self) -> Vec<u8> {
        self.captured.lock().unwrap().clone()
    }

    /// Stop the reader (after taking what is left in the FIFO) and return everything played.
    pub fn finish(mut self) -> Vec<u8> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the fifo reader");
        }
        self.captured()
    }
}

impl Drop for PacedDevice {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
