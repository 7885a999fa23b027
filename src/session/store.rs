//! The persisted session map: key → which Claude conversation it is, so a conversation
//! survives a bridge restart (docs/ARCHITECTURE.md §11).
//!
//! One JSON file, `<state_dir>/sessions.json`, written atomically (temp file, fsync, rename,
//! fsync of the directory), so a crash leaves either the old map or the new one. A file that
//! cannot be read or parsed is moved aside as `sessions.json.corrupt-<timestamp>` and reported
//! loudly; it is never overwritten in place. A failed write keeps the old file and is
//! reported (`last_error`, surfaced on `/healthz`).
//!
//! Durable facts (a new session, a new Claude uuid) are written at once; bookkeeping
//! (`last_used`, `turns`) is written by `flush_if_dirty`, which the sweeper calls every few
//! seconds and shutdown calls at the end, so a turn never waits for an fsync.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub claude_session: String,
    pub workspace: PathBuf,
    /// Unix seconds.
    pub created: u64,
    pub last_used: u64,
    #[serde(default)]
    pub turns: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    sessions: BTreeMap<String, SessionRecord>,
}

pub struct SessionStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Held across a write (serialised snapshot → temp file → fsync → rename), so writes
    /// happen one at a time and in order; `inner` is never held across that I/O.
    writing: Mutex<()>,
}

struct Inner {
    sessions: BTreeMap<String, SessionRecord>,
    dirty: bool,
    last_error: Option<String>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SessionStore {
    /// Opens (or starts) the map in `state_dir`. A corrupt file is moved aside and the
    /// bridge starts with an empty map; the returned warning says where the old one went.
    pub fn open(state_dir: &Path) -> (SessionStore, Option<String>) {
        let path = state_dir.join("sessions.json");
        let (sessions, warning) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<FileFormat>(&bytes) {
                Ok(file) => (file.sessions, None),
                Err(e) => (
                    BTreeMap::new(),
                    Some(move_aside(&path, &format!("not a valid session map ({e})"))),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), None),
            Err(e) => (
                BTreeMap::new(),
                Some(move_aside(&path, &format!("unreadable ({e})"))),
            ),
        };
        let store = SessionStore {
            path,
            inner: Mutex::new(Inner {
                sessions,
                dirty: false,
                last_error: None,
            }),
            writing: Mutex::new(()),
        };
        (store, warning)
    }

    pub fn get(&self, key: &str) -> Option<SessionRecord> {
        crate::session::shared::lock(&self.inner)
            .sessions
            .get(key)
            .cloned()
    }

    pub fn all(&self) -> Vec<(String, SessionRecord)> {
        self.inner
            .lock()
            .unwrap()
            .sessions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        crate::session::shared::lock(&self.inner).sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `key`'s Claude uuid and workspace and writes the map now.
    pub fn put(&self, key: &str, claude_session: &str, workspace: &Path) {
        let mut inner = crate::session::shared::lock(&self.inner);
        let now = unix_now();
        let record = inner
            .sessions
            .entry(key.to_string())
            .or_insert_with(|| SessionRecord {
                claude_session: claude_session.to_string(),
                workspace: workspace.to_path_buf(),
                created: now,
                last_used: now,
                turns: 0,
            });
        record.claude_session = claude_session.to_string();
        record.workspace = workspace.to_path_buf();
        record.last_used = now;
        inner.dirty = true;
        drop(inner);
        self.write_snapshot();
    }

    /// Counts a finished turn (written by the next `flush_if_dirty`).
    pub fn note_turn(&self, key: &str) {
        let mut inner = crate::session::shared::lock(&self.inner);
        if let Some(record) = inner.sessions.get_mut(key) {
            record.turns += 1;
            record.last_used = unix_now();
            inner.dirty = true;
        }
    }

    pub fn flush_if_dirty(&self) {
        self.write_snapshot();
    }

    /// The last write error, if the last write failed.
    pub fn last_error(&self) -> Option<String> {
        crate::session::shared::lock(&self.inner).last_error.clone()
    }

    /// Writes the map if it changed since the last write: a snapshot is serialised under the
    /// data lock, and written, fsynced and renamed outside it (a slow disk delays only other
    /// writers, never a lookup).
    fn write_snapshot(&self) {
        let _one_writer = crate::session::shared::lock(&self.writing);
        let bytes = {
            let mut inner = crate::session::shared::lock(&self.inner);
            if !inner.dirty {
                return;
            }
            inner.dirty = false;
            let file = FileFormat {
                version: 1,
                sessions: inner.sessions.clone(),
            };
            serde_json::to_vec_pretty(&file).expect("map serialises")
        };
        let result = write_atomically(&self.path, &bytes);
        let mut inner = crate::session::shared::lock(&self.inner);
        match result {
            Ok(()) => {
                if inner.last_error.take().is_some() {
                    log::info!("session map {} written again", self.path.display());
                }
            }
            Err(e) => {
                // Written again by the next flush.
                inner.dirty = true;
                let message = format!(
                    "cannot write the session map {}: {e}; the previous file is kept",
                    self.path.display()
                );
                if inner.last_error.as_deref() != Some(message.as_str()) {
                    log::error!("{message}");
                }
                inner.last_error = Some(message);
            }
        }
    }
}

/// temp file in the same directory, fsync, rename over the target, fsync the directory.
/// The file is created 0600 (`FILE_MODE`): every file the bridge writes in its state dir
/// (the session map, the MCP config, system prompts) goes through here.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        // A temp file left by a crash may have another mode: start afresh, never reuse it.
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Mode of the files the bridge writes in its state dir: its owner only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories the bridge creates (state dir, workspaces, system prompts).
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with mode 0700 (`DIR_MODE`), the one place the
/// bridge makes directories. A directory that exists already keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

fn move_aside(path: &Path, why: &str) -> String {
    let aside = path.with_file_name(format!("sessions.json.corrupt-{}", unix_now()));
    match std::fs::rename(path, &aside) {
        Ok(()) => format!(
            "session map {} was {why}; moved it to {} and started with an empty map (conversations in it will start fresh; restore it by hand if you can fix it)",
            path.display(),
            aside.display()
        ),
        Err(e) => format!(
            "session map {} was {why} and could not be moved aside ({e})",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sb-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn files_are_written_0600_and_dirs_created_0700() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("modes");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let nested = d.join("a/b");
        create_private_dir(&nested).unwrap();
        assert_eq!((mode(&d.join("a")), mode(&nested)), (0o700, 0o700));
        let file = nested.join("f.json");
        write_atomically(&file, b"1").unwrap();
        write_atomically(&file, b"2").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"2");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn records_survive_a_reopen() {
        let d = dir("reopen");
        let (store, warning) = SessionStore::open(&d);
        assert!(warning.is_none());
        store.put("agent:main:main", "uuid-1", Path::new("/w"));
        store.note_turn("agent:main:main");
        store.flush_if_dirty();
        let (again, _) = SessionStore::open(&d);
        let record = again.get("agent:main:main").unwrap();
        assert_eq!(
            (record.claude_session.as_str(), record.turns),
            ("uuid-1", 1)
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_corrupt_map_is_moved_aside_not_overwritten() {
        let d = dir("corrupt");
        std::fs::write(d.join("sessions.json"), b"{ not json").unwrap();
        let (store, warning) = SessionStore::open(&d);
        let warning = warning.expect("corruption is reported");
        assert!(warning.contains("moved it to"), "{warning}");
        assert_eq!(store.len(), 0);
        let aside: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("sessions.json.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"{ not json");
        std::fs::remove_dir_all(d).unwrap();
    }
}
