//! Where cache entries live: the [`Store`] trait and the on-disk [`DiskStore`].
//!
//! An entry is one phrase's audio in the canonical form plus its [`EntryMeta`] (the file
//! format is [`super::entry`]). The trait is the boundary a shared backend (Redis, an
//! S3-compatible bucket) would implement to serve a fleet of replicas; every method is
//! blocking and called from a blocking thread.
//!
//! On disk (`DiskStore`), an entry is `entries/<2 hex>/<key>.hac`. Entries are written to
//! `tmp/` and renamed into place, so a reader sees a whole entry or none; a file that is
//! truncated, fails its CRC or whose header disagrees with its length is removed and reported
//! as [`StoreError::Corrupt`].
//! Pins are kept in `pins.json` (written the same way). Recency for LRU eviction is the file's
//! modification time, refreshed on a hit read from disk, so it survives restarts.
//!
//! Entries that were hit are also kept in memory, up to [`MEMORY_BUDGET_BYTES`] (the most
//! recently used first, none larger than [`MEMORY_ENTRY_MAX_BYTES`]), so that a hit on a hot
//! phrase needs no thread hop and no read ([`Store::get_in_memory`]). A copy is served only while
//! the file is the one it was read from: same device, inode, length, modification and change
//! time (one `stat`); a file replaced, rewritten, damaged or removed since sends the request
//! to [`Store::get`], which reads the disk as before. At most every [`TOUCH_EVERY`] a hit goes
//! to the disk anyway, to refresh the file's recency.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

pub use super::entry::{Corruption, Entry, EntryMeta, StoredWord, decode_entry, encode_entry};
use super::entry::{read_entry, read_header};

/// File name extension of entries.
const EXT: &str = "hac";

/// Bytes of entry files kept in memory for hits without a read (see the module docs).
pub const MEMORY_BUDGET_BYTES: u64 = 8 << 20;
/// Largest entry file kept in memory (about 21 s of 24 kHz mono).
pub const MEMORY_ENTRY_MAX_BYTES: u64 = 1 << 20;
/// Longest time a hot entry is served from memory before a hit refreshes its file's recency.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What a store reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The entry was damaged; it has been removed.
    #[error("cache entry {key} is corrupt ({reason}); removed")]
    Corrupt {
        /// The key.
        key: String,
        /// What was wrong.
        reason: Corruption,
    },
    /// The entry is larger than the whole cache may be.
    #[error("entry of {size} bytes exceeds cache.max_bytes ({max})")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// The backend failed.
    #[error("cache I/O failed")]
    Io(#[from] io::Error),
}

/// Sizes and counters of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries.
    pub entries: u64,
    /// Bytes.
    pub bytes: u64,
    /// Pinned entries.
    pub pinned_entries: u64,
    /// Bytes of pinned entries.
    pub pinned_bytes: u64,
    /// Entries evicted by the size cap.
    pub evicted: u64,
    /// Entries removed by the age cap.
    pub expired: u64,
    /// Entries found corrupt.
    pub corrupt: u64,
    /// Entries written.
    pub stored: u64,
}

/// What [`Store::put`] and [`Store::get`] report about an entry's place in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryStatus {
    /// Size on disk (or in the backend), bytes.
    pub bytes: u64,
    /// Pinned.
    pub pinned: bool,
}

/// A place to keep entries. Blocking; implementations synchronize internally.
pub trait Store: Send + Sync + 'static {
    /// The entry under `key`; `Ok(None)` when absent or expired, `Err(Corrupt)` when it was
    /// damaged (and has been removed). A hit refreshes the entry's recency.
    fn get(&self, key: &str) -> Result<Option<(Entry, EntryStatus)>, StoreError>;
    /// The entry under `key` when the store can answer without blocking (a copy in memory
    /// that is still current), counting as a hit for recency; `None` means "ask
    /// [`Store::get`]", never "absent". Called on an async thread.
    fn get_in_memory(&self, _key: &str) -> Option<(Entry, EntryStatus)> {
        None
    }
    /// Store `entry` under `key` (replacing any), then evict down to the size cap.
    fn put(&self, key: &str, entry: &Entry) -> Result<EntryStatus, StoreError>;
    /// Keys of entries whose phrase has this text hash, most recently used first.
    fn find_text(&self, text_hash: &str) -> Vec<String>;
    /// Pin or unpin `key`; `None` when there is no such entry.
    fn set_pinned(&self, key: &str, pinned: bool) -> Result<Option<EntryStatus>, StoreError>;
    /// Remove every entry (pinned ones only with `include_pinned`): (removed, bytes, kept).
    fn clear(&self, include_pinned: bool) -> Result<(u64, u64, u64), StoreError>;
    /// Sizes and counters.
    fn stats(&self) -> StoreStats;
    /// Where it lives, for operators.
    fn location(&self) -> String;
}

/// Limits of a [`DiskStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Size cap, bytes.
    pub max_bytes: u64,
    /// Age cap (`None` = none).
    pub max_age: Option<Duration>,
}

#[derive(Clone, Debug)]
struct Indexed {
    bytes: u64,
    last_used: SystemTime,
    created: SystemTime,
    text_hash: String,
}

/// What identifies one version of an entry file: a copy read from it is current while these
/// are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = fs::metadata(path).ok().filter(fs::Metadata::is_file)?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// An entry kept in memory (see the module docs).
struct InMemory {
    entry: Entry,
    stamp: FileStamp,
    /// When its file's recency was last refreshed.
    touched: tokio::time::Instant,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Indexed>,
    pins: HashSet<String>,
    bytes: u64,
    stats: StoreStats,
    memory: HashMap<String, InMemory>,
    /// File bytes of `memory`.
    memory_bytes: u64,
}

impl Index {
    fn forget(&mut self, key: &str) {
        if let Some(m) = self.memory.remove(key) {
            self.memory_bytes = self.memory_bytes.saturating_sub(m.stamp.len);
        }
    }

    /// Keep `entry` (read from a file with `stamp`) in memory, dropping the least recently
    /// used copies to stay within the budget.
    fn remember(&mut self, key: &str, entry: Entry, stamp: FileStamp) {
        self.forget(key);
        if stamp.len > MEMORY_ENTRY_MAX_BYTES {
            return;
        }
        while self.memory_bytes + stamp.len > MEMORY_BUDGET_BYTES {
            let oldest = self
                .memory
                .keys()
                .min_by_key(|k| self.entries.get(*k).map(|e| e.last_used))
                .cloned();
            match oldest {
                Some(k) => self.forget(&k),
                None => break,
            }
        }
        self.memory_bytes += stamp.len;
        self.memory.insert(
            key.to_owned(),
            InMemory {
                entry,
                stamp,
                touched: tokio::time::Instant::now(),
            },
        );
    }
}

/// Entries as files in a directory.
pub struct DiskStore {
    dir: PathBuf,
    limits: Limits,
    index: Mutex<Index>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("dir", &self.dir)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn corrupt(key: &str, reason: Corruption) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason,
    }
}

fn valid_key(key: &str) -> bool {
    key.len() == 64
        && key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl DiskStore {
    /// Open (creating) the store in `dir`: leftover temporary files are removed and the index
    /// is built from the entries' headers. Damaged entries found here are removed.
    pub fn open(dir: &Path, limits: Limits) -> io::Result<Self> {
        fs::create_dir_all(dir.join("entries"))?;
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        for f in fs::read_dir(&tmp)? {
            let _ = fs::remove_file(f?.path());
        }
        let mut index = Index::default();
        for shard in fs::read_dir(dir.join("entries"))? {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for file in fs::read_dir(&shard)? {
                let path = file?.path();
                let Some(key) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|k| valid_key(k) && path.extension().is_some_and(|e| e == EXT))
                    .map(str::to_owned)
                else {
                    continue;
                };
                match read_header(&path).and_then(|h| {
                    if h.0.key == key {
                        Ok(h)
                    } else {
                        Err(Corruption::ForeignKey(h.0.key))
                    }
                }) {
                    Ok((meta, len, modified)) => {
                        index.bytes += len;
                        index.entries.insert(
                            key,
                            Indexed {
                                bytes: len,
                                last_used: modified,
                                created: unix_ms_to_time(meta.created_unix_ms),
                                text_hash: meta.text_hash,
                            },
                        );
                    }
                    Err(reason) => {
                        tracing::warn!(path = %path.display(), %reason, "removing a damaged cache entry");
                        index.stats.corrupt += 1;
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        if let Ok(text) = fs::read_to_string(dir.join("pins.json")) {
            match serde_json::from_str::<Vec<String>>(&text) {
                Ok(pins) => index.pins = pins.into_iter().filter(|k| valid_key(k)).collect(),
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable pins.json"),
            }
        }
        tracing::info!(
            dir = %dir.display(),
            entries = index.entries.len(),
            bytes = index.bytes,
            pinned = index.pins.len(),
            "cache opened"
        );
        Ok(Self {
            dir: dir.to_owned(),
            limits,
            index: Mutex::new(index),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join("entries")
            .join(&key[..2])
            .join(format!("{key}.{EXT}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        crate::error::lock(&self.index)
    }

    fn remove_locked(&self, index: &mut Index, key: &str) {
        index.forget(key);
        if let Some(e) = index.entries.remove(key) {
            index.bytes = index.bytes.saturating_sub(e.bytes);
        }
        let _ = fs::remove_file(self.path(key));
    }

    fn expired(&self, e: &Indexed, now: SystemTime) -> bool {
        self.limits.max_age.is_some_and(|age| {
            now.duration_since(e.created)
                .is_ok_and(|elapsed| elapsed > age)
        })
    }

    fn evict_locked(&self, index: &mut Index, keep: &str) {
        let now = SystemTime::now();
        let expired: Vec<String> = index
            .entries
            .iter()
            .filter(|(k, e)| !index.pins.contains(*k) && k.as_str() != keep && self.expired(e, now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.remove_locked(index, &k);
            index.stats.expired += 1;
        }
        while index.bytes > self.limits.max_bytes {
            let victim = index
                .entries
                .iter()
                .filter(|(k, _)| !index.pins.contains(*k) && k.as_str() != keep)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            tracing::debug!(key = %victim, "evicting a cache entry");
            self.remove_locked(index, &victim);
            index.stats.evicted += 1;
        }
    }

    fn write_pins(&self, pins: &HashSet<String>) -> io::Result<()> {
        let mut list: Vec<&String> = pins.iter().collect();
        list.sort();
        let json = serde_json::to_vec(&list).map_err(io::Error::other)?;
        self.write_atomic(&self.dir.join("pins.json"), &[&json])
    }

    fn write_atomic(&self, target: &Path, parts: &[&[u8]]) -> io::Result<()> {
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}.tmp",
            target
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("entry"),
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            for p in parts {
                f.write_all(p)?;
            }
            f.sync_data()?;
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&tmp, target)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unix_ms_to_time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

impl Store for DiskStore {
    fn get(&self, key: &str) -> Result<Option<(Entry, EntryStatus)>, StoreError> {
        if !valid_key(key) {
            return Ok(None);
        }
        let now = SystemTime::now();
        {
            let mut index = self.lock();
            let Some(e) = index.entries.get(key) else {
                return Ok(None);
            };
            if !index.pins.contains(key) && self.expired(e, now) {
                self.remove_locked(&mut index, key);
                index.stats.expired += 1;
                return Ok(None);
            }
        }
        let path = self.path(key);
        match read_entry(&path, key) {
            Ok((entry, bytes)) => {
                // Recency for LRU, kept by the file system across restarts (best effort).
                if let Ok(f) = {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    fs::File::options()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(&path)
                } {
                    let _ = f.set_modified(now);
                }
                // Stamped after the refresh, which changed the times.
                let stamp = FileStamp::of(&path).filter(|s| s.len == bytes);
                let mut index = self.lock();
                let pinned = index.pins.contains(key);
                let indexed = index.entries.get_mut(key).map(|e| e.last_used = now);
                // Not when the entry was removed meanwhile (a clear, an eviction).
                if let (Some(()), Some(stamp)) = (indexed, stamp) {
                    index.remember(key, entry.clone(), stamp);
                }
                Ok(Some((entry, EntryStatus { bytes, pinned })))
            }
            Err(Corruption::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                let mut index = self.lock();
                self.remove_locked(&mut index, key);
                index.stats.corrupt += 1;
                Err(corrupt(key, Corruption::Missing))
            }
            Err(Corruption::Io(e)) => Err(e.into()),
            Err(reason) => {
                let mut index = self.lock();
                self.remove_locked(&mut index, key);
                index.stats.corrupt += 1;
                Err(corrupt(key, reason))
            }
        }
    }

    fn get_in_memory(&self, key: &str) -> Option<(Entry, EntryStatus)> {
        let now = SystemTime::now();
        let mut index = self.lock();
        let m = index.memory.get(key)?;
        if m.touched.elapsed() >= TOUCH_EVERY {
            return None;
        }
        let e = index.entries.get(key)?;
        let pinned = index.pins.contains(key);
        if !pinned && self.expired(e, now) {
            return None;
        }
        // One `stat` of a local file, under the lock so that no writer of the index runs
        // between the check and the answer.
        if FileStamp::of(&self.path(key)) != Some(m.stamp) {
            index.forget(key);
            return None;
        }
        let found = (
            m.entry.clone(),
            EntryStatus {
                bytes: m.stamp.len,
                pinned,
            },
        );
        if let Some(e) = index.entries.get_mut(key) {
            e.last_used = now;
        }
        Some(found)
    }

    fn put(&self, key: &str, entry: &Entry) -> Result<EntryStatus, StoreError> {
        if !valid_key(key) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad cache key").into());
        }
        // The entry names its key, so that it is never served under another one.
        let file = if entry.meta.key == key {
            encode_entry(entry)
        } else {
            let mut keyed = entry.clone();
            key.clone_into(&mut keyed.meta.key);
            encode_entry(&keyed)
        };
        let size = file.len() as u64;
        if size > self.limits.max_bytes {
            return Err(StoreError::TooLarge {
                size,
                max: self.limits.max_bytes,
            });
        }
        self.write_atomic(&self.path(key), &[&file])?;
        let now = SystemTime::now();
        let mut index = self.lock();
        index.forget(key);
        if let Some(old) = index.entries.insert(
            key.to_owned(),
            Indexed {
                bytes: size,
                last_used: now,
                created: unix_ms_to_time(entry.meta.created_unix_ms),
                text_hash: entry.meta.text_hash.clone(),
            },
        ) {
            index.bytes = index.bytes.saturating_sub(old.bytes);
        }
        index.bytes += size;
        index.stats.stored += 1;
        self.evict_locked(&mut index, key);
        Ok(EntryStatus {
            bytes: size,
            pinned: index.pins.contains(key),
        })
    }

    fn find_text(&self, text_hash: &str) -> Vec<String> {
        let index = self.lock();
        let mut found: Vec<(&String, &Indexed)> = index
            .entries
            .iter()
            .filter(|(_, e)| e.text_hash == text_hash)
            .collect();
        found.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_used));
        found.into_iter().map(|(k, _)| k.clone()).collect()
    }

    fn set_pinned(&self, key: &str, pinned: bool) -> Result<Option<EntryStatus>, StoreError> {
        let mut index = self.lock();
        let Some(bytes) = index.entries.get(key).map(|e| e.bytes) else {
            return Ok(None);
        };
        let changed = if pinned {
            index.pins.insert(key.to_owned())
        } else {
            index.pins.remove(key)
        };
        if changed {
            self.write_pins(&index.pins)?;
        }
        Ok(Some(EntryStatus { bytes, pinned }))
    }

    fn clear(&self, include_pinned: bool) -> Result<(u64, u64, u64), StoreError> {
        let mut index = self.lock();
        let keys: Vec<String> = index
            .entries
            .keys()
            .filter(|k| include_pinned || !index.pins.contains(*k))
            .cloned()
            .collect();
        let before = index.bytes;
        for k in &keys {
            self.remove_locked(&mut index, k);
        }
        if include_pinned && !index.pins.is_empty() {
            index.pins.clear();
            self.write_pins(&index.pins)?;
        }
        let kept = index.entries.len() as u64;
        Ok((keys.len() as u64, before - index.bytes, kept))
    }

    fn stats(&self) -> StoreStats {
        let index = self.lock();
        let (pinned_entries, pinned_bytes) = index
            .entries
            .iter()
            .filter(|(k, _)| index.pins.contains(*k))
            .fold((0, 0), |(n, b), (_, e)| (n + 1, b + e.bytes));
        StoreStats {
            entries: index.entries.len() as u64,
            bytes: index.bytes,
            pinned_entries,
            pinned_bytes,
            ..index.stats.clone()
        }
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

/// `created_unix_ms` for an entry made now.
pub fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(frames: u64, text_hash: &str) -> Entry {
        Entry {
            meta: EntryMeta {
                key: String::new(),
                engine: "e".into(),
                model: "m".into(),
                voice: "v".into(),
                text_hash: text_hash.into(),
                sample_rate: 16_000,
                channels: 1,
                frames,
                characters: Some(3),
                words: None,
                created_unix_ms: now_unix_ms(),
            },
            pcm: Bytes::from(vec![7u8; usize::try_from(frames * 2).unwrap()]),
        }
    }

    fn k(n: u8) -> String {
        format!("{:064x}", n)
    }

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let e = entry(100, "t");
        let file = encode_entry(&e);
        assert_eq!(decode_entry(&file).unwrap(), e);
        for cut in [0, 5, 20, file.len() - 1] {
            assert!(decode_entry(&file[..cut]).is_err(), "truncated at {cut}");
        }
        let mut flipped = file.clone();
        flipped[40] ^= 1;
        assert!(matches!(
            decode_entry(&flipped).unwrap_err(),
            Corruption::Checksum
        ));
    }

    #[test]
    fn lru_eviction_keeps_pins_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        // Stored entries carry their key (all keys have the same length).
        let mut keyed = entry(1000, "t");
        keyed.meta.key = k(1);
        let size = encode_entry(&keyed).len() as u64;
        let limits = Limits {
            max_bytes: size * 3,
            max_age: None,
        };
        let s = DiskStore::open(dir.path(), limits.clone()).unwrap();
        s.put(&k(1), &entry(1000, "t")).unwrap();
        assert!(s.set_pinned(&k(1), true).unwrap().unwrap().pinned);
        for n in 2..=6 {
            s.put(&k(n), &entry(1000, "t")).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let st = s.stats();
        assert_eq!((st.entries, st.evicted, st.pinned_entries), (3, 3, 1));
        assert!(s.get(&k(1)).unwrap().is_some(), "pinned entry evicted");
        assert!(s.get(&k(2)).unwrap().is_none(), "oldest unpinned kept");
        assert!(s.get(&k(6)).unwrap().is_some());
        drop(s);
        let s = DiskStore::open(dir.path(), limits).unwrap();
        assert_eq!(s.stats().entries, 3);
        assert_eq!(s.stats().pinned_entries, 1);
        assert_eq!(s.find_text("t").len(), 3);
        assert_eq!(s.clear(false).unwrap(), (2, size * 2, 1));
        assert_eq!(s.clear(true).unwrap(), (1, size, 0));
    }

    #[test]
    fn a_foreign_entry_or_a_fifo_at_an_entry_path_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 30,
            max_age: None,
        };
        let s = DiskStore::open(dir.path(), limits.clone()).unwrap();
        s.put(&k(1), &entry(100, "a")).unwrap();
        s.put(&k(2), &entry(200, "b")).unwrap();
        // k(1)'s entry copied over k(2)'s file: damaged, not k(1)'s audio served as k(2).
        fs::copy(s.path(&k(1)), s.path(&k(2))).unwrap();
        assert!(matches!(s.get(&k(2)), Err(StoreError::Corrupt { .. })));
        assert!(s.get(&k(2)).unwrap().is_none(), "removed from the index");
        assert_eq!(s.get(&k(1)).unwrap().unwrap().0.meta.key, k(1));
        // Reopening drops a foreign entry too.
        fs::copy(s.path(&k(1)), s.path(&k(3))).unwrap();
        drop(s);
        let s = DiskStore::open(dir.path(), limits).unwrap();
        assert_eq!(s.stats().entries, 1);
        assert!(!s.path(&k(3)).exists());
        // A FIFO in place of an entry: refused without blocking.
        let path = s.path(&k(1));
        fs::remove_file(&path).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(matches!(
            read_entry(&path, &k(1)),
            Err(Corruption::NotAFile)
        ));
        assert!(s.get(&k(1)).is_err());
    }

    #[test]
    fn a_damaged_file_is_removed_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 30,
            max_age: None,
        };
        let s = DiskStore::open(dir.path(), limits).unwrap();
        s.put(&k(9), &entry(500, "t")).unwrap();
        let path = s.path(&k(9));
        let len = fs::metadata(&path).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        assert!(matches!(s.get(&k(9)), Err(StoreError::Corrupt { .. })));
        assert!(!path.exists());
        assert_eq!(s.stats().corrupt, 1);
        assert!(s.get(&k(9)).unwrap().is_none());
    }

    #[test]
    fn a_hit_is_served_from_memory_only_while_its_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 30,
            max_age: None,
        };
        let s = DiskStore::open(dir.path(), limits).unwrap();
        s.put(&k(1), &entry(100, "a")).unwrap();
        assert!(
            s.get_in_memory(&k(1)).is_none(),
            "kept once hit, not once stored"
        );
        let (read, _) = s.get(&k(1)).unwrap().unwrap();
        let path = s.path(&k(1));
        let (kept, status) = s.get_in_memory(&k(1)).expect("kept after a hit");
        assert_eq!(kept, read);
        assert_eq!(status.bytes, fs::metadata(&path).unwrap().len());

        // Rewritten in place with the same length (one byte flipped), past a clock tick.
        std::thread::sleep(Duration::from_millis(20));
        let mut bytes = fs::read(&path).unwrap();
        bytes[40] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(s.get_in_memory(&k(1)).is_none(), "a rewritten file");
        assert!(matches!(s.get(&k(1)), Err(StoreError::Corrupt { .. })));

        // Replaced by an identical copy (another inode): read again, then kept again.
        s.put(&k(2), &entry(200, "b")).unwrap();
        s.get(&k(2)).unwrap().unwrap();
        let path = s.path(&k(2));
        let copy = dir.path().join("copy");
        fs::copy(&path, &copy).unwrap();
        fs::rename(&copy, &path).unwrap();
        assert!(s.get_in_memory(&k(2)).is_none(), "a replaced file");
        assert!(s.get(&k(2)).unwrap().is_some());
        assert!(s.get_in_memory(&k(2)).is_some());

        // Removed: not served, and the disk read reports it.
        fs::remove_file(&path).unwrap();
        assert!(s.get_in_memory(&k(2)).is_none(), "a removed file");
        assert!(matches!(s.get(&k(2)), Err(StoreError::Corrupt { .. })));

        // Cleared, or larger than one entry may be: never kept.
        s.put(&k(3), &entry(100, "c")).unwrap();
        s.get(&k(3)).unwrap().unwrap();
        s.clear(true).unwrap();
        assert!(s.get_in_memory(&k(3)).is_none(), "a cleared entry");
        let frames = MEMORY_ENTRY_MAX_BYTES / 2 + 1;
        s.put(&k(4), &entry(frames, "d")).unwrap();
        assert!(s.get(&k(4)).unwrap().is_some());
        assert!(s.get_in_memory(&k(4)).is_none(), "too large to keep");
    }

    #[test]
    fn memory_copies_stay_within_the_budget_most_recent_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 30,
            max_age: None,
        };
        let s = DiskStore::open(dir.path(), limits).unwrap();
        // Entries of just under 1 MiB: the 8 MiB budget keeps 8 of 10.
        let frames = (MEMORY_ENTRY_MAX_BYTES - 4096) / 2;
        for n in 1..=10 {
            s.put(&k(n), &entry(frames, "t")).unwrap();
            s.get(&k(n)).unwrap().unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let kept: Vec<u8> = (1..=10)
            .filter(|n| s.get_in_memory(&k(*n)).is_some())
            .collect();
        assert_eq!(kept, (3..=10).collect::<Vec<u8>>());
        assert!(s.lock().memory_bytes <= MEMORY_BUDGET_BYTES);
    }

    #[test]
    fn expired_entries_are_misses_unless_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 30,
            max_age: Some(Duration::from_secs(60)),
        };
        let s = DiskStore::open(dir.path(), limits).unwrap();
        let mut old = entry(10, "t");
        old.meta.created_unix_ms -= 120_000;
        s.put(&k(1), &old).unwrap();
        s.put(&k(2), &old).unwrap();
        s.set_pinned(&k(2), true).unwrap();
        assert!(s.get(&k(1)).unwrap().is_none());
        assert!(s.get(&k(2)).unwrap().is_some());
        assert_eq!(s.stats().expired, 1);
    }
}
