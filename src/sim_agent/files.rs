//! The simulated Claude's files, laid out like the real ones (docs/CLAUDE_CODE.md §9.3, §9.6) so the bridge's
//! new-vs-resume decision and its liveness checks see what they would see with Claude Code:
//! - transcript `<config>/projects/<project dir name>/<uuid>.jsonl`, created at the first
//!   user message, one JSON line per user message and per assistant reply;
//! - status `<config>/sessions/<pid>.json` `{"pid", "sessionId", "status"}`, removed on a
//!   clean exit; its `sessionId` follows `/resume` (`session.rs`).
//!
//! Owns those paths and their formats. It must never touch any other file in the config dir.

use serde_json::{Value, json};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Longest project directory name before it is cut and hash-suffixed.
pub const MAX_PROJECT_DIR_NAME: usize = 200;

/// `$CLAUDE_CONFIG_DIR`, else `$HOME/.claude`.
pub fn config_dir() -> PathBuf {
    match std::env::var_os("CLAUDE_CONFIG_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".claude")
        }
    }
}

/// The project directory name for `cwd`: every character that is not an ASCII letter or
/// digit becomes `-`; a name over 200 characters is cut to 200 and suffixed with
/// `-<name_hash(full name)>`.
pub fn project_dir_name(cwd: &Path) -> String {
    let name: String = cwd
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if name.len() <= MAX_PROJECT_DIR_NAME {
        return name;
    }
    // Every character is ASCII now, so byte 200 is a character boundary.
    format!("{}-{}", &name[..MAX_PROJECT_DIR_NAME], name_hash(&name))
}

/// The suffix that keeps cut project names apart: 64-bit FNV-1a of the full sanitised name,
/// in lower-case base 36. Stable across runs and platforms. (Claude Code uses a hash of its
/// own here; the bridge does not depend on which: it matches cut names by prefix.)
pub fn name_hash(name: &str) -> String {
    let mut hash = crate::fnv::fnv1a(name.as_bytes());
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(hash % 36) as usize]);
        hash /= 36;
        if hash == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base-36 digits are ASCII")
}

pub fn transcript_path(config_dir: &Path, cwd: &Path, session: &str) -> PathBuf {
    config_dir
        .join("projects")
        .join(project_dir_name(cwd))
        .join(format!("{session}.jsonl"))
}

/// The conversation log of one session.
#[derive(Debug)]
pub struct Transcript {
    pub path: PathBuf,
    session: String,
}

impl Transcript {
    pub fn new(path: PathBuf, session: &str) -> Self {
        Transcript {
            path,
            session: session.to_string(),
        }
    }

    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// Appends one message (creating the file and its directory on first use).
    pub fn append(&self, role: &str, text: &str) -> io::Result<()> {
        let mut line = json!({
            "type": role,
            "message": { "role": role, "content": text },
            "sessionId": self.session,
        });
        if std::env::var_os(super::NO_MESSAGE_UUIDS).is_none() {
            line["uuid"] = json!(uuid::Uuid::new_v4().to_string());
        }
        self.write_line(&line)
    }

    /// Logs Claude's input queue as Claude Code does: `enqueue` (with the message) when a
    /// channel message arrives, `dequeue` when it starts a turn, `remove` (with the message)
    /// when it is folded into the running turn.
    pub fn queue_operation(&self, operation: &str, content: Option<&str>) -> io::Result<()> {
        let mut line = json!({
            "type": "queue-operation",
            "operation": operation,
            "sessionId": self.session,
        });
        if let Some(content) = content {
            line["content"] = json!(content);
        }
        self.write_line(&line)
    }

    /// A message folded into the running turn, recorded as Claude Code records it.
    pub fn queued_command(&self, prompt: &str) -> io::Result<()> {
        self.write_line(&json!({
            "type": "attachment",
            "attachment": { "type": "queued_command", "prompt": prompt, "commandMode": "prompt" },
            "sessionId": self.session,
        }))
    }

    /// Appends one JSON line (creating the file and its directory on first use).
    fn write_line(&self, line: &Value) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        file.write_all(&bytes)
    }

    /// Starts this transcript as a copy of `parent`'s, up to and including the message whose
    /// `uuid` is `at` (all of it without `at`), as `--fork-session --resume-session-at` does.
    /// Err says what Claude would (an unknown message).
    pub fn fork_from(&self, parent: &Path, at: Option<&str>) -> Result<(), String> {
        let text = std::fs::read_to_string(parent).map_err(|e| e.to_string())?;
        let mut copied = Vec::new();
        let mut found = at.is_none();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(mut entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let last = at.is_some() && entry.get("uuid").and_then(|u| u.as_str()) == at;
            entry["sessionId"] = json!(self.session);
            copied.push(entry.to_string());
            if last {
                found = true;
                break;
            }
        }
        if !found {
            return Err(format!(
                "No message found with message.uuid of: {}",
                at.unwrap_or_default()
            ));
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let mut body = copied.join("\n");
        body.push('\n');
        std::fs::write(&self.path, body).map_err(|e| e.to_string())
    }

    /// How many messages it holds (for the resume banner): user and assistant entries, not
    /// the queue's log or attachments.
    pub fn message_count(&self) -> usize {
        let is_message = |line: &str| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|v| matches!(v["type"].as_str(), Some("user" | "assistant")))
        };
        std::fs::read_to_string(&self.path)
            .map(|t| t.lines().filter(|l| is_message(l)).count())
            .unwrap_or(0)
    }
}

/// `<config>/sessions/<pid>.json`: a cheap busy/idle signal for whoever watches.
#[derive(Debug)]
pub struct StatusFile {
    path: PathBuf,
    pid: u32,
    session: String,
}

impl StatusFile {
    pub fn new(config_dir: &Path, pid: u32, session: &str) -> Self {
        StatusFile {
            path: config_dir.join("sessions").join(format!("{pid}.json")),
            pid,
            session: session.to_string(),
        }
    }

    /// Writes the status atomically (a reader never sees half a file).
    pub fn set(&self, status: &str) -> io::Result<()> {
        let dir = self
            .path
            .parent()
            .expect("sessions/<pid>.json has a parent");
        std::fs::create_dir_all(dir)?;
        let body = json!({ "pid": self.pid, "sessionId": self.session, "status": status });
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&body)?)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// The process is now in conversation `session` (`/resume`): written at the next `set`.
    pub fn set_session(&mut self, session: &str) {
        self.session = session.to_string();
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_path_replaces_every_non_alphanumeric() {
        let p = transcript_path(Path::new("/cfg"), Path::new("/home/a.b/my_ws-ü"), "u1");
        assert_eq!(p, Path::new("/cfg/projects/-home-a-b-my-ws--/u1.jsonl"));
    }

    #[test]
    fn long_project_names_are_cut_and_hash_suffixed() {
        let long = PathBuf::from(format!("/w/{}", "x".repeat(250)));
        let name = project_dir_name(&long);
        let full: String = format!("-w-{}", "x".repeat(250));
        assert_eq!(&name[..200], &full[..200]);
        assert_eq!(name, format!("{}-{}", &full[..200], name_hash(&full)));
        // Names that share the first 200 characters still differ.
        let other = project_dir_name(&PathBuf::from(format!("/w/{}y", "x".repeat(250))));
        assert_ne!(name, other);
        assert_eq!(other[..200], name[..200]);
        // Exactly 200 characters: kept whole.
        let edge = PathBuf::from(format!("/{}", "x".repeat(199)));
        assert_eq!(project_dir_name(&edge).len(), 200);
        // The hash is fixed (FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c).
        assert_eq!(name_hash("a"), "2o0ongoiv4rrg");
    }

    #[test]
    fn transcript_is_created_on_first_append_and_status_is_removed() {
        let root = std::env::temp_dir().join(format!("sim-files-{}", std::process::id()));
        let t = Transcript::new(transcript_path(&root, Path::new("/w"), "u1"), "u1");
        assert!(!t.exists());
        t.append("user", "hi").unwrap();
        t.append("assistant", "hello").unwrap();
        assert!(t.exists());
        assert_eq!(t.message_count(), 2);
        let mut first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&t.path)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let uuid = first["uuid"]
            .as_str()
            .map(String::from)
            .expect("a message uuid");
        first.as_object_mut().unwrap().remove("uuid");
        assert_eq!(
            first,
            json!({"type": "user", "message": {"role": "user", "content": "hi"}, "sessionId": "u1"})
        );
        // A fork copies up to and including a message, under its own session id.
        let copy = Transcript::new(transcript_path(&root, Path::new("/w"), "u2"), "u2");
        copy.fork_from(&t.path, Some(&uuid)).unwrap();
        let copied = std::fs::read_to_string(&copy.path).unwrap();
        assert_eq!(copied.lines().count(), 1, "{copied}");
        assert!(copied.contains("\"sessionId\":\"u2\"") && copied.contains("\"hi\""));
        assert!(
            copy.fork_from(&t.path, Some("nope"))
                .unwrap_err()
                .contains("nope")
        );
        let s = StatusFile::new(&root, 42, "u1");
        s.set("busy").unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("sessions/42.json")).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"pid": 42, "sessionId": "u1", "status": "busy"})
        );
        s.remove();
        assert!(!root.join("sessions/42.json").exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}
