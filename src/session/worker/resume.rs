//! A standby switching to a returning conversation (`standby_resume`, docs/SPEED.md §3): the
//! adopting worker types `/resume <claude session>` at claude's prompt (Claude Code ≥ 2.1.331
//! takes it there, keeps its MCP servers and channel, and rewrites its session file's
//! `sessionId`; docs/CLAUDE_CODE.md §9.6) and waits in `Resuming` until the session file
//! names that conversation. Then the turn goes out as on any ready process. If claude does
//! not switch within `RESUME_LIMIT`, the process is stopped (it may be in a state nobody
//! knows) and the turn starts claude with `--resume` as before.

use std::time::{Duration, Instant};

use super::{Phase, Worker};
use crate::metrics::METRICS;

/// How often claude's session file is read while it resumes.
pub(super) const POLL: Duration = Duration::from_millis(5);
/// Longest wait for claude to switch (it took ≈ 0.23 s on 2.1.331).
const RESUME_LIMIT: Duration = Duration::from_secs(3);

impl Worker {
    /// Adopted for a returning conversation: types `/resume` into the standby's claude.
    pub(super) fn resume_in_standby(&mut self, conversation: String) {
        self.identity.claude_session = conversation.clone();
        crate::session::shared::lock(&self.status.info).claude_session = conversation.clone();
        // Claude loads the conversation itself: nothing to restore into the turn.
        self.identity.restore_history = false;
        let Phase::Ready { mut agent } = self.take_phase() else {
            // Not ready (it cannot be: only ready standbys are adopted): the turn starts
            // claude with --resume the usual way.
            log::warn!(
                "session {:?}: adopted standby not ready; starting claude for the conversation",
                self.key
            );
            return self.stop_agent("adopted standby not ready");
        };
        self.status
            .set_step("resuming the conversation in a standby process");
        if let Err(e) = agent.process.type_line(&format!("/resume {conversation}")) {
            METRICS.standby_resume_failures.inc();
            let why = format!("could not type /resume: {e}");
            drop(self.stop_running(agent, &why));
            return self.enter(Phase::Idle, &why);
        }
        log::info!(
            "session {:?}: resuming claude session {conversation} in the adopted standby",
            self.key
        );
        self.enter(
            Phase::Resuming {
                agent,
                conversation,
                deadline: Instant::now() + RESUME_LIMIT,
            },
            "typed /resume",
        );
    }

    /// Resuming: ready once claude's session file names the conversation; past the limit,
    /// the process is stopped and the turn starts a new one with `--resume`.
    pub(super) fn check_resume(&mut self) {
        let Phase::Resuming {
            agent,
            conversation,
            deadline,
        } = &self.phase
        else {
            return;
        };
        if agent.process.conversation().as_deref() == Some(conversation.as_str()) {
            let Phase::Resuming { agent, .. } = self.take_phase() else {
                unreachable!("matched above");
            };
            METRICS.standbys_resumed.inc();
            return self.enter(Phase::Ready { agent }, "claude resumed the conversation");
        }
        if Instant::now() < *deadline {
            return;
        }
        let screen = self.screen_tail();
        log::warn!(
            "session {:?}: claude did not switch to {conversation} within {RESUME_LIMIT:?} after /resume; stopping it and starting claude with --resume. Last screen lines:\n{screen}",
            self.key
        );
        METRICS.standby_resume_failures.inc();
        self.stop_agent("/resume did not take");
    }
}
