//! The registry of custom voices herald created: one JSON file (`voices.json`) in the state
//! directory, rewritten atomically (temp file, fsync, rename, fsync of the directory) on every
//! change, so a crash leaves the old or the new registry, never a torn one.
//!
//! Deleted voices stay as tombstones (`deleted_at_ms`), so a Synthesize with a deleted voice is
//! refused before any upstream call.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

/// File name of the registry inside its directory.
pub const FILE_NAME: &str = "voices.json";

/// One voice herald created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Upstream's id (`voice_id` / `voice`), what synthesis takes.
    pub name: String,
    /// The one model the voice works with.
    pub target_model: String,
    /// The management surface (`voice-enrollment`, `qwen-voice-enrollment`, `qwen-voice-design`).
    pub surface: String,
    /// `clone` or `design`.
    pub kind: String,
    /// The prefix / preferred name given at creation.
    pub requested_name: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// `DEPLOYING`, `READY` or `FAILED`.
    pub status: String,
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
    /// that cannot be parsed is moved aside (`voices.json.corrupt-<ms>`) and logged.
    pub fn open(dir: Option<PathBuf>) -> std::io::Result<Self> {
        let mut voices = BTreeMap::new();
        if let Some(d) = &dir {
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
        self.voices.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Insert or replace a record and persist.
    pub fn put(&self, record: Record) -> std::io::Result<()> {
        let mut map = self.lock();
        let old = map.insert(record.name.clone(), record.clone());
        if let Err(e) = self.persist(&map) {
            match old {
                Some(o) => map.insert(o.name.clone(), o),
                None => map.remove(&record.name),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Change a record in place and persist; `false` when there is none.
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
        if let Err(e) = self.persist(&map) {
            map.insert(name.to_owned(), old);
            return Err(e);
        }
        Ok(true)
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
            ".{FILE_NAME}.tmp-{}-{}",
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
            surface: "voice-enrollment".to_owned(),
            kind: "clone".to_owned(),
            requested_name: "kiosk".to_owned(),
            created_at_ms: 1,
            status: "DEPLOYING".to_owned(),
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
        r.update("a", |x| x.status = "READY".to_owned()).unwrap();
        let again = Registry::open(Some(dir.path().to_owned())).unwrap();
        assert_eq!(again.get("a").unwrap().status, "READY");
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
}
