//! The registry of custom voices herald created: one JSON file (`voices.json`) in the state
//! directory, rewritten atomically (temp file, fsync, rename, fsync of the directory) on every
//! change, so a crash leaves the old or the new registry, never a torn one.
//!
//! A change the file cannot take (a full disk, a read-only directory) is kept in memory and
//! reported to the caller, which decides what to tell the client: the next change that can be
//! written writes it too, and a voice that exists upstream but is missing from the file is
//! adopted again from upstream's listing (see the manager). Temporary files a crash left
//! (`.voices.json.tmp-*`) are removed when the registry is opened.
//!
//! Deleted voices stay as tombstones (`deleted_at_ms`), so a Synthesize with a deleted voice is
//! refused before any upstream call. The states of a record are enums stored as the strings the
//! file has always held (`DEPLOYING`, `clone`, `voice-enrollment`, ...), so older registries
//! stay readable.
//!
//! It owns the file and the in-memory map. It must not call upstream or decide what a state
//! means for a request (the manager does).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::surface::Surface;
use crate::error::lock;

/// File name of the registry inside its directory.
pub const FILE_NAME: &str = "voices.json";

/// Prefix of the temporary files a rewrite goes through (`.voices.json.tmp-<pid>-<random>`).
pub const TMP_PREFIX: &str = ".voices.json.tmp-";

/// One voice herald created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Upstream's id (`voice_id` / `voice`), what synthesis takes.
    pub name: String,
    /// The one model the voice works with.
    pub target_model: String,
    /// The management surface (`voice-enrollment`, `qwen-voice-enrollment`, `qwen-voice-design`).
    pub surface: Surface,
    /// `clone` or `design`.
    pub kind: VoiceKind,
    /// The prefix / preferred name given at creation.
    pub requested_name: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// `DEPLOYING`, `READY` or `FAILED`.
    pub status: VoiceStatus,
    /// Language given at creation (empty = none).
    #[serde(default)]
    pub language: String,
    /// Designed voices: the description.
    #[serde(default)]
    pub description: String,
    /// Designed voices: the preview WAV, base64.
    #[serde(default)]
    pub preview_wav_b64: String,
    /// Upstream's warning (Qwen VC fallback mode).
    #[serde(default)]
    pub warning: String,
    /// When herald deleted it (tombstone), ms since the epoch.
    #[serde(default)]
    pub deleted_at_ms: Option<u64>,
}

impl Record {
    /// The preview WAV of a designed voice (empty when there is none).
    pub fn preview_wav(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.preview_wav_b64)
            .unwrap_or_default()
    }
}

/// How a voice was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoiceKind {
    /// From a sample of a speaker (`clone`).
    Clone,
    /// From a description (`design`).
    Design,
}

impl VoiceKind {
    /// `clone` or `design`, as stored and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clone => "clone",
            Self::Design => "design",
        }
    }
}

/// Where a voice is in its life upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VoiceStatus {
    /// Upstream is still training it (`voice-enrollment` only); synthesis may fail meanwhile.
    Deploying,
    /// Usable.
    Ready,
    /// Upstream rejected it for good.
    Failed,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    voices: Vec<Record>,
}

/// The registry (in memory, mirrored to disk).
#[derive(Debug)]
pub struct Registry {
    /// `None`: no state directory; nothing persists and CreateVoice is refused.
    dir: Option<PathBuf>,
    voices: Mutex<BTreeMap<String, Record>>,
}

impl Registry {
    /// Load the registry of `dir` (an empty one if the file does not exist). A registry file
    /// that cannot be parsed is moved aside (`voices.json.corrupt-<ms>`) and logged. Temporary
    /// files of rewrites a crash interrupted are removed.
    pub fn open(dir: Option<PathBuf>) -> std::io::Result<Self> {
        let mut voices = BTreeMap::new();
        if let Some(d) = &dir {
            remove_temporaries(d);
            let path = d.join(FILE_NAME);
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                    Ok(file) => {
                        for r in file.voices {
                            voices.insert(r.name.clone(), r);
                        }
                    }
                    Err(e) => {
                        let aside = d.join(format!("{FILE_NAME}.corrupt-{}", now_ms()));
                        tracing::error!(path = %path.display(), error = %e, aside = %aside.display(), "the voice registry is unreadable; moved aside, starting empty");
                        std::fs::rename(&path, &aside)?;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            dir,
            voices: Mutex::new(voices),
        })
    }

    /// A registry that persists nothing (no state directory).
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            voices: Mutex::new(BTreeMap::new()),
        }
    }

    /// Where the registry lives, if anywhere.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        lock(&self.voices)
    }

    /// The record of `name` (tombstones included).
    pub fn get(&self, name: &str) -> Option<Record> {
        self.lock().get(name).cloned()
    }

    /// Every live (not deleted) record.
    pub fn live(&self) -> Vec<Record> {
        self.lock()
            .values()
            .filter(|r| r.deleted_at_ms.is_none())
            .cloned()
            .collect()
    }

    /// Insert or replace a record and persist. `Err`: the file could not be written; the
    /// record is kept in memory all the same (and written with the next change that can be).
    pub fn put(&self, record: Record) -> std::io::Result<()> {
        let mut map = self.lock();
        map.insert(record.name.clone(), record);
        self.persist(&map)
    }

    /// Insert `record` unless a record (live or tombstone) of that name exists; `Ok(false)`
    /// when one does. `Err` as [`Registry::put`] (the record is kept in memory).
    pub fn put_new(&self, record: Record) -> std::io::Result<bool> {
        let mut map = self.lock();
        if map.contains_key(&record.name) {
            return Ok(false);
        }
        map.insert(record.name.clone(), record);
        self.persist(&map).map(|()| true)
    }

    /// Change a record in place and persist; `false` when there is none. `Err` as
    /// [`Registry::put`] (the change is kept in memory).
    pub fn update(&self, name: &str, f: impl FnOnce(&mut Record)) -> std::io::Result<bool> {
        let mut map = self.lock();
        let Some(r) = map.get_mut(name) else {
            return Ok(false);
        };
        let old = r.clone();
        f(r);
        if *r == old {
            return Ok(true);
        }
        self.persist(&map).map(|()| true)
    }

    fn persist(&self, map: &BTreeMap<String, Record>) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let file = File {
            version: 1,
            voices: map.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(FILE_NAME))?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Remove the temporary files of rewrites a crash interrupted (kill -9 between the write and
/// the rename). Failures are logged: they cost disk space, not correctness.
fn remove_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a temporary file of the voice registry left by an interrupted write");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a temporary file of the voice registry");
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Record {
        Record {
            name: name.to_owned(),
            target_model: "cosyvoice-v3-flash".to_owned(),
            surface: Surface::Enrollment,
            kind: VoiceKind::Clone,
            requested_name: "kiosk".to_owned(),
            created_at_ms: 1,
            status: VoiceStatus::Deploying,
            language: String::new(),
            description: String::new(),
            preview_wav_b64: String::new(),
            warning: String::new(),
            deleted_at_ms: None,
        }
    }

    #[test]
    fn survives_reopening_and_moves_a_corrupt_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(Some(dir.path().to_owned())).unwrap();
        r.put(record("a")).unwrap();
        r.update("a", |x| x.status = VoiceStatus::Ready).unwrap();
        let again = Registry::open(Some(dir.path().to_owned())).unwrap();
        assert_eq!(again.get("a").unwrap().status, VoiceStatus::Ready);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leftovers, vec![FILE_NAME.to_owned()], "no temp file left");
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let fresh = Registry::open(Some(dir.path().to_owned())).unwrap();
        assert!(fresh.get("a").is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn states_are_stored_as_the_strings_older_registries_hold() {
        let dir = tempfile::tempdir().unwrap();
        // A registry as herald wrote it before the states were enums.
        let old = r#"{"version":1,"voices":[
            {"name":"cosyvoice-v3-flash-kiosk-1","target_model":"cosyvoice-v3-flash",
             "surface":"voice-enrollment","kind":"clone","requested_name":"kiosk",
             "created_at_ms":1,"status":"DEPLOYING"},
            {"name":"qwen-tts-vd-x-voice-1","target_model":"qwen3-tts-vd-2026-01-26",
             "surface":"qwen-voice-design","kind":"design","requested_name":"x",
             "created_at_ms":2,"status":"READY","description":"calm","deleted_at_ms":3},
            {"name":"v","target_model":"qwen3-tts-vc-2026-01-22",
             "surface":"qwen-voice-enrollment","kind":"clone","requested_name":"v",
             "created_at_ms":4,"status":"FAILED"}]}"#;
        std::fs::write(dir.path().join(FILE_NAME), old).unwrap();
        let r = Registry::open(Some(dir.path().to_owned())).unwrap();
        let a = r.get("cosyvoice-v3-flash-kiosk-1").unwrap();
        assert_eq!(
            (a.surface, a.kind, a.status),
            (
                Surface::Enrollment,
                VoiceKind::Clone,
                VoiceStatus::Deploying
            )
        );
        let d = r.get("qwen-tts-vd-x-voice-1").unwrap();
        assert_eq!(
            (d.surface, d.kind, d.status),
            (Surface::QwenDesign, VoiceKind::Design, VoiceStatus::Ready)
        );
        assert_eq!(r.get("v").unwrap().status, VoiceStatus::Failed);
        assert_eq!(r.live().len(), 2, "the tombstone is not live");
        // Written back with the same strings.
        r.update("v", |x| x.warning = "w".to_owned()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        for s in [
            r#""surface": "voice-enrollment""#,
            r#""surface": "qwen-voice-enrollment""#,
            r#""kind": "design""#,
            r#""status": "DEPLOYING""#,
            r#""status": "FAILED""#,
        ] {
            assert!(text.contains(s), "{s} not in {text}");
        }
    }

    #[test]
    fn a_change_the_file_cannot_take_is_kept_in_memory_and_written_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(Some(dir.path().to_owned())).unwrap();
        r.put(record("a")).unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert!(r.put(record("b")).is_err());
        assert!(r.update("a", |x| x.status = VoiceStatus::Ready).is_err());
        assert!(r.get("b").is_some(), "kept in memory");
        assert_eq!(r.get("a").unwrap().status, VoiceStatus::Ready);
        std::fs::remove_dir(&file).unwrap();
        assert!(!r.put_new(record("b")).unwrap(), "b is known");
        r.update("a", |x| x.warning = "w".to_owned()).unwrap();
        let again = Registry::open(Some(dir.path().to_owned())).unwrap();
        assert_eq!(again.live().len(), 2, "both written with the next change");
    }

    #[test]
    fn temporary_files_left_by_a_crash_are_removed_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        Registry::open(Some(dir.path().to_owned()))
            .unwrap()
            .put(record("a"))
            .unwrap();
        let tmp = dir.path().join(format!("{TMP_PREFIX}1-2"));
        std::fs::write(&tmp, b"{torn").unwrap();
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, b"mine").unwrap();
        let r = Registry::open(Some(dir.path().to_owned())).unwrap();
        assert!(!tmp.exists());
        assert!(other.exists(), "only the registry's temporary files");
        assert!(r.get("a").is_some());
    }
}
