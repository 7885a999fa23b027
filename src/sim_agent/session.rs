//! Which conversation the simulated Claude is in, and everything keyed by it: the session id
//! (Stop-hook input, `CLAUDE_CODE_SESSION_ID`), the transcript later turns append to, and the
//! session file `<config>/sessions/<pid>.json`. `/resume <uuid>` typed at the prompt switches
//! all of them at once (`Session::resume`), as Claude Code does (docs/CLAUDE_CODE.md §9.3).
//!
//! Owns that switch. It must never leave the parts pointing at different conversations: a
//! refused resume changes nothing.

use super::files::{self, StatusFile, Transcript};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub transcript: Transcript,
    pub status: StatusFile,
    pub cwd: PathBuf,
    config_dir: PathBuf,
}

impl Session {
    /// The session `id` of this process (`pid`), whose transcript is `transcript`.
    pub fn new(config_dir: &Path, cwd: &Path, pid: u32, id: &str, transcript: Transcript) -> Self {
        Session {
            id: id.to_string(),
            transcript,
            status: StatusFile::new(config_dir, pid, id),
            cwd: cwd.to_path_buf(),
            config_dir: config_dir.to_path_buf(),
        }
    }

    /// The variables Claude adds to the environment of its MCP servers and hooks.
    pub fn claude_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "CLAUDE_PROJECT_DIR".to_string(),
                self.cwd.to_string_lossy().into_owned(),
            ),
            ("CLAUDE_CODE_SESSION_ID".to_string(), self.id.clone()),
        ]
    }

    /// Switches to conversation `id` if its transcript exists in this project: the session
    /// file is rewritten at once (`sessionId` = `id`, status `idle`). Ok: the number of
    /// messages in the resumed transcript. Err: what Claude shows; nothing changed.
    pub fn resume(&mut self, id: &str) -> Result<usize, String> {
        let not_found = || format!("No conversation found with session ID: {id}");
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(not_found());
        }
        let transcript =
            Transcript::new(files::transcript_path(&self.config_dir, &self.cwd, id), id);
        if !transcript.exists() {
            return Err(not_found());
        }
        self.id = id.to_string();
        self.transcript = transcript;
        self.status.set_session(id);
        if let Err(e) = self.status.set("idle") {
            log::warn!("cannot rewrite the session file: {e}");
        }
        Ok(self.transcript.message_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn session_file(config: &Path, pid: u32) -> Value {
        let path = config.join(format!("sessions/{pid}.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn started(config: &Path, cwd: &Path, id: &str) -> Session {
        let transcript = Transcript::new(files::transcript_path(config, cwd, id), id);
        let session = Session::new(config, cwd, 42, id, transcript);
        session.status.set("idle").unwrap();
        session
    }

    #[test]
    fn resuming_an_existing_transcript_switches_every_part_and_appends_there() {
        let dir = Dir(std::env::temp_dir().join(format!("sim-session-{}", uuid::Uuid::new_v4())));
        let (config, cwd) = (dir.0.join("config"), Path::new("/w/project"));
        let (first, other) = (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        );
        let earlier = Transcript::new(files::transcript_path(&config, cwd, &other), &other);
        earlier.append("user", "hello").unwrap();
        earlier.append("assistant", "hi").unwrap();
        let mut session = started(&config, cwd, &first);

        assert_eq!(session.resume(&other), Ok(2));

        assert_eq!(session.id, other);
        assert_eq!(
            session_file(&config, 42),
            json!({"pid": 42, "sessionId": other, "status": "idle"})
        );
        assert_eq!(session.transcript.path, earlier.path);
        assert!(
            session
                .claude_env()
                .contains(&("CLAUDE_CODE_SESSION_ID".to_string(), other.clone()))
        );
        // Later turns go to the resumed transcript, under its id.
        session.transcript.append("user", "again").unwrap();
        assert_eq!(earlier.message_count(), 3);
        let last: Value = serde_json::from_str(
            std::fs::read_to_string(&earlier.path)
                .unwrap()
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(last["sessionId"], json!(other));
        assert!(!files::transcript_path(&config, cwd, &first).exists());
    }

    #[test]
    fn resuming_a_missing_or_invalid_id_changes_nothing() {
        let dir = Dir(std::env::temp_dir().join(format!("sim-session-{}", uuid::Uuid::new_v4())));
        let (config, cwd) = (dir.0.join("config"), Path::new("/w/project"));
        let first = uuid::Uuid::new_v4().to_string();
        let mut session = started(&config, cwd, &first);
        let before = session.transcript.path.clone();
        // A transcript of another project does not count.
        let elsewhere = uuid::Uuid::new_v4().to_string();
        Transcript::new(
            files::transcript_path(&config, Path::new("/w/other"), &elsewhere),
            &elsewhere,
        )
        .append("user", "hello")
        .unwrap();

        for id in [
            uuid::Uuid::new_v4().to_string(),
            elsewhere,
            "not-a-uuid".into(),
        ] {
            assert_eq!(
                session.resume(&id),
                Err(format!("No conversation found with session ID: {id}"))
            );
            assert_eq!(session.id, first);
            assert_eq!(session.transcript.path, before);
            assert_eq!(
                session_file(&config, 42),
                json!({"pid": 42, "sessionId": first, "status": "idle"})
            );
        }
    }
}
