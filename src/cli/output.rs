//! Where `herald say` writes audio: stdout, or a file written whole or not at all.
//!
//! A regular file is written as `DIR/.NAME.herald-tmp-PID` and renamed over NAME once the
//! stream has ended well, so a failed or interrupted request leaves no partial file and an
//! existing file untouched. Before the rename, the streamed headers' "unknown" lengths are
//! patched (WAV sizes, FLAC total samples). Devices and pipes (`/dev/null`, a FIFO) are written
//! in place. It must not decode or re-encode audio.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use herald::audio::{encode::flac, wav};

use super::Format;

/// Where the audio goes.
pub(super) enum Output {
    Stdout(io::StdoutLock<'static>),
    File(OutputFile),
}

impl Output {
    pub(super) fn write_all(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Stdout(out) => {
                out.write_all(data).context("writing to stdout")?;
                out.flush().context("writing to stdout")
            }
            Self::File(f) => f
                .file
                .write_all(data)
                .with_context(|| format!("writing {}", f.path.display())),
        }
    }

    /// "stdout" or the file's path, for the result line.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Stdout(_) => "stdout".to_owned(),
            Self::File(f) => f.path.display().to_string(),
        }
    }

    /// The stream ended well: patch the lengths a seekable file can take (`format`, `bytes`
    /// and `samples` as the summary reports them), then move the file into place.
    pub(super) fn finish(self, format: Format, bytes: u64, samples: u64) -> anyhow::Result<()> {
        match self {
            Self::Stdout(mut out) => out.flush().context("writing to stdout"),
            Self::File(f) => f.commit(format, bytes, samples),
        }
    }
}

/// A file being written: a temp file renamed over `path` by [`OutputFile::commit`], and
/// removed if dropped before that; or, for a device or pipe, `path` itself.
pub(super) struct OutputFile {
    file: File,
    path: PathBuf,
    /// The temp file, until committed; `None` when writing to `path` in place.
    temp: Option<PathBuf>,
}

/// `DIR/.NAME.herald-tmp-PID` for `path`.
fn temp_path(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".herald-tmp-{}", std::process::id()));
    Ok(path.with_file_name(temp))
}

impl OutputFile {
    /// Start writing `path`: its temp file is created now (so a directory that cannot be
    /// written fails before any synthesis).
    pub(super) fn create(path: &Path) -> anyhow::Result<Self> {
        let existing = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
        };
        if let Some(m) = &existing {
            if m.is_dir() {
                anyhow::bail!("cannot write {}: it is a directory", path.display());
            }
            if !m.is_file() {
                // A device or a pipe: nothing to rename, nothing to patch.
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                return Ok(Self {
                    file,
                    path: path.to_owned(),
                    temp: None,
                });
            }
        }
        let temp = temp_path(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        let me = Self {
            file,
            path: path.to_owned(),
            temp: Some(temp),
        };
        if let (Some(m), Some(temp)) = (existing, &me.temp) {
            // Replacing a file keeps its permissions.
            std::fs::set_permissions(temp, m.permissions())
                .with_context(|| format!("cannot set the permissions of {}", temp.display()))?;
        }
        Ok(me)
    }

    fn commit(mut self, format: Format, bytes: u64, samples: u64) -> anyhow::Result<()> {
        let Some(temp) = self.temp.clone() else {
            return self
                .file
                .flush()
                .with_context(|| format!("writing {}", self.path.display()));
        };
        let what = || format!("finishing {}", self.path.display());
        match format {
            // A file can be sought: replace the streaming header's "unknown" sizes.
            Format::Wav => {
                wav::patch_sizes(&mut self.file, bytes.saturating_sub(wav::HEADER_LEN as u64))
                    .with_context(what)?;
            }
            Format::Flac => {
                flac::patch_total_samples(&mut self.file, samples).with_context(what)?
            }
            _ => {}
        }
        self.file.sync_data().with_context(what)?;
        std::fs::rename(&temp, &self.path).with_context(|| {
            format!("cannot move {} to {}", temp.display(), self.path.display())
        })?;
        self.temp = None;
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temp_file_sits_next_to_the_target_hidden() {
        let t = temp_path(Path::new("/tmp/x/out.wav")).unwrap();
        assert_eq!(
            t,
            PathBuf::from(format!("/tmp/x/.out.wav.herald-tmp-{}", std::process::id()))
        );
        let t = temp_path(Path::new("out.mp3")).unwrap();
        assert!(
            t.to_string_lossy().starts_with(".out.mp3.herald-tmp-"),
            "{t:?}"
        );
    }

    #[test]
    fn a_dropped_file_leaves_nothing_and_a_committed_one_replaces_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.pcm");
        std::fs::write(&target, b"old").unwrap();
        let mut out = Output::File(OutputFile::create(&target).unwrap());
        out.write_all(b"new audio").unwrap();
        drop(out);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );

        let mut out = Output::File(OutputFile::create(&target).unwrap());
        out.write_all(b"new audio").unwrap();
        out.finish(Format::Pcm, 9, 4).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new audio");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }
}
