//! The client's system prompt (`system_prompt = append`): written to a file per session that
//! claude reads with `--append-system-prompt-file`; a changed prompt restarts the process
//! (it resumes its conversation) so the new prompt takes effect from that turn on.

use std::path::PathBuf;

use super::{Phase, Worker};
use crate::fnv::fnv1a;
use crate::session::workspace::path_component;

impl Worker {
    /// Where this session's copy of the client's system prompt lives.
    pub(super) fn prompt_file(&self) -> PathBuf {
        self.settings
            .state_dir
            .join("system-prompts")
            .join(format!("{}.md", path_component(&self.key)))
    }

    /// Writes the turn's system prompt for claude; restarts an idle process that started
    /// with another one.
    pub(super) fn apply_system_prompt(&mut self, prompt: &str) {
        let hash = fnv1a(prompt.as_bytes());
        if self.wanted_prompt != Some(hash) {
            let file = self.prompt_file();
            let written = file
                .parent()
                .map_or(Ok(()), crate::session::store::create_private_dir)
                .and_then(|()| crate::session::store::write_atomically(&file, prompt.as_bytes()));
            if let Err(e) = written {
                log::error!(
                    "session {:?}: cannot write the system prompt to {}: {e}; keeping the old one",
                    self.key,
                    file.display()
                );
                return;
            }
            self.wanted_prompt = Some(hash);
        }
        if matches!(self.phase, Phase::Ready { .. }) && self.running_prompt != self.wanted_prompt {
            self.stop_agent("the client's system prompt changed; restarting with --resume");
        }
    }
}
