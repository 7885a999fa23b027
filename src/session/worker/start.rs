//! Starting a turn and, when the session has no process, starting one for it: the process
//! slot (granted by the registry, possibly handed over by an evicted session), the spawn
//! with `--resume` or `--session-id` (or, for a standby, without a turn), start-up screens, the channel's hello, and what a
//! failed start does (the turn fails; failures in a row make the registry back off).

use std::time::{Duration, Instant};

use super::{ActiveTurn, Phase, Running, SCREEN_LINES_IN_ERRORS, Worker, reject_link};
use crate::agent::Launch;
use crate::link::ChannelLink;
use crate::metrics::METRICS;
use crate::session::shared::{ProcessSlot, SlotGrant, TurnSlot, lock};
use crate::session::turn::{FailureKind, Turn, TurnFailure};

/// What claude prints when `--resume` names a conversation it does not have.
const RESUME_FAILED_TEXT: &str = "No conversation found";

impl Worker {
    /// Starts `turn` (its turn slot in hand): on the running process when there is one, else
    /// on a new one.
    pub(super) fn begin(&mut self, mut turn: Turn, slot: TurnSlot, deadline: Instant) {
        if let Some(needle) = crate::fault::panic_on_turn_text()
            && turn.content.contains(needle)
        {
            panic!(
                "fault injection: turn {} contains {needle:?} (SYNTHESIS_FAULT_PANIC_ON)",
                turn.id
            );
        }
        if let Some(prompt) = turn.system_prompt.take() {
            self.apply_system_prompt(&prompt);
        }
        let warm = super::events::is_connected(&self.phase);
        if let Some(notice) = self.notice.take() {
            turn.output.emit(crate::session::turn::TurnEvent::Text {
                text: notice,
                is_final: false,
            });
        }
        let active = ActiveTurn {
            claude_id: turn.id.clone(),
            turn,
            _slot: slot,
            deadline,
            delivery: None,
            replied: false,
            anonymous_end_ok: !std::mem::take(&mut self.previous_end_unreported),
            warm,
            started: Instant::now(),
        };
        match self.take_phase() {
            Phase::Ready { agent } => self.send_turn(agent, active),
            Phase::Idle => self.start_process(Some(active)),
            other => unreachable!(
                "a turn begins only when Idle or Ready, not {}",
                other.name().name()
            ),
        }
    }

    /// A standby starts its process without a turn (its slot was granted by the registry).
    pub(super) fn start_standby(&mut self) {
        self.start_process(None);
    }

    /// Spawns a process for `turn` (None: a standby).
    fn start_process(&mut self, turn: Option<ActiveTurn>) {
        if let Err(message) = self.supervisor.may_start(&self.key) {
            return self.fail_unstarted(turn, FailureKind::AgentUnavailable, message);
        }
        self.status.set_step("waiting for a max_processes slot");
        let turn_deadline = turn.as_ref().map_or_else(
            || Instant::now() + self.settings.ready_timeout,
            |t| t.deadline,
        );
        let Some(slot) = self.take_process_slot(turn_deadline) else {
            return self.fail_unstarted(
                turn,
                FailureKind::AgentUnavailable,
                "every claude process (max_processes) is busy with a turn; retry later".into(),
            );
        };
        if let Err(e) = crate::session::store::create_private_dir(&self.identity.workspace) {
            let message = format!(
                "cannot create workspace {}: {e}",
                self.identity.workspace.display()
            );
            return self.fail_unstarted(turn, FailureKind::AgentUnavailable, message);
        }
        self.spawn(slot, turn);
    }

    /// The slot the registry granted this session, else a new grant. An evicted session hands
    /// its slot over once its process has stopped; if it goes away instead, its slot went
    /// back to the pool, so ask again (once).
    fn take_process_slot(&mut self, turn_deadline: Instant) -> Option<ProcessSlot> {
        let deadline = turn_deadline.min(Instant::now() + self.settings.ready_timeout);
        for _ in 0..2 {
            let grant = lock(&self.status.slot_grant)
                .take()
                .or_else(|| self.supervisor.grant_process_slot(&self.key))?;
            match grant {
                SlotGrant::Granted(slot) => return Some(slot),
                SlotGrant::FromEvicted(from) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match from.recv_timeout(left) {
                        Ok(slot) => return Some(slot),
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => return None,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => continue,
                    }
                }
            }
        }
        None
    }

    /// Spawns claude for `turn`, resuming its conversation when Claude has a transcript of it.
    fn spawn(&mut self, slot: ProcessSlot, mut turn: Option<ActiveTurn>) {
        let settings = self.settings.clone();
        let agents = &settings.agents;
        let resume =
            agents.transcript_exists(&self.identity.workspace, &self.identity.claude_session);
        let known = self.settings.store.get(&self.key);
        let had_turns = known.as_ref().is_some_and(|r| r.turns > 0);
        if !resume && had_turns && !self.identity.restore_history {
            self.new_conversation("its transcript is missing");
        }
        let fork_from = turn.as_mut().and_then(|t| t.turn.fork_from.take());
        let fork = match fork_from {
            Some(source) if !resume && self.identity.restore_history => self.fork_point(&source),
            _ => None,
        };
        self.identity.forking = fork.is_some();
        if fork.is_some() {
            // Claude's copy holds the branch's messages as real turns: nothing to restore.
            self.identity.restore_history = false;
        }
        let spawn_id = uuid::Uuid::new_v4().simple().to_string();
        let prompt_file = self.prompt_file();
        let launch = Launch {
            session_key: &self.key,
            claude_session: &self.identity.claude_session,
            resume,
            spawn_id: &spawn_id,
            workspace: &self.identity.workspace,
            append_system_prompt_file: self
                .wanted_prompt
                .is_some()
                .then_some(prompt_file.as_path()),
            fork: fork
                .as_ref()
                .map(|(parent, at)| crate::agent::fork::ForkAt {
                    parent: parent.as_str(),
                    at: at.as_str(),
                }),
        };
        let process = match agents.spawn(&launch) {
            Ok(process) => process,
            Err(e) => {
                let message = format!(
                    "could not start `{}`: {e}. Install Claude Code, point --claude-bin at it, or run with --demo",
                    agents.program()
                );
                self.supervisor.record_start(&self.key, Err(&message));
                drop(slot);
                return self.fail_unstarted(turn, FailureKind::AgentUnavailable, message);
            }
        };
        log::info!(
            "session {:?}: spawned pid {} ({} {}, spawn {spawn_id})",
            self.key,
            process.pid(),
            if resume { "--resume" } else { "--session-id" },
            self.identity.claude_session
        );
        self.running_prompt = self.wanted_prompt;
        METRICS.spawns.inc();
        if known.is_some() {
            METRICS.respawns.inc();
        }
        // A standby's key is internal: the session map learns its conversation on adoption.
        if !self.standby {
            self.settings.store.put(
                &self.key,
                &self.identity.claude_session,
                &self.identity.workspace,
            );
        }
        {
            let mut info = lock(&self.status.info);
            info.claude_session = self.identity.claude_session.clone();
            info.process_started = Some(std::time::SystemTime::now());
        }
        self.status.set_step("waiting for the channel's hello");
        let now = Instant::now();
        let ready_by = now + self.settings.ready_timeout;
        let deadline = turn
            .as_ref()
            .map_or(ready_by, |t| t.deadline.min(ready_by))
            .min(self.shutdown.unwrap_or(ready_by));
        let agent = Running {
            process,
            link: None,
            spawn_id,
            slot,
            client_tools_sent: None,
        };
        self.enter(
            Phase::Starting {
                agent,
                turn,
                deadline,
                since: now,
                resumed: resume,
            },
            "spawned",
        );
    }

    /// Where to fork Claude's own conversation for a new fork of `source`: (the parent's
    /// Claude session, the uuid of the branch point's last reply message), when the parent
    /// runs in this session's workspace and its transcript still holds that turn. None (the
    /// log says why): the fork's first turn carries the restored history instead.
    fn fork_point(
        &self,
        source: &crate::session::identity::ForkSource,
    ) -> Option<(String, String)> {
        let fallback = |why: &str| {
            log::info!(
                "session {:?}: forks from {:?} with the restored history: {why}",
                self.key,
                source.session_key
            );
            None
        };
        let Some(parent) = self.settings.store.get(&source.session_key) else {
            return fallback("the parent session is unknown");
        };
        if parent.workspace != self.identity.workspace {
            return fallback(
                "the parent runs in another workspace (Claude keeps transcripts per directory)",
            );
        }
        let Some(at) = self.settings.agents.fork_anchor(
            &parent.workspace,
            &parent.claude_session,
            &source.turn_id,
        ) else {
            return fallback(&format!(
                "claude's transcript {} has no reply of {} (lost, compacted, or the agent does not record message uuids)",
                parent.claude_session, source.turn_id
            ));
        };
        log::info!(
            "session {:?}: forks claude conversation {} of {:?} at message {at} (the end of {}): --resume --fork-session --resume-session-at",
            self.key,
            parent.claude_session,
            source.session_key,
            source.turn_id
        );
        Some((parent.claude_session, at))
    }

    /// The session gets a new Claude conversation; its next turn carries the client's history.
    fn new_conversation(&mut self, why: &str) {
        let old = std::mem::replace(
            &mut self.identity.claude_session,
            uuid::Uuid::new_v4().to_string(),
        );
        log::warn!(
            "session {:?}: claude's transcript of conversation {old} is missing or cannot be resumed ({why}); starting a new one, {}, with the client's earlier messages",
            self.key,
            self.identity.claude_session
        );
        self.identity.restore_history = true;
    }

    /// A turn that never reached a process fails (a standby just does not start); the
    /// session stays `Idle`.
    fn fail_unstarted(&mut self, turn: Option<ActiveTurn>, kind: FailureKind, message: String) {
        match turn {
            Some(turn) => {
                log::warn!("session {:?} {}: {message}", self.key, turn.turn.id);
                self.fail(&turn.turn, TurnFailure::new(kind, message));
            }
            None => log::warn!("standby {:?} not started: {message}", self.key),
        }
        self.enter(Phase::Idle, "the turn could not start");
    }

    /// Start-up failed: stop what was started, fail the turn, count the failure.
    fn fail_start(&mut self, failure: TurnFailure) {
        let Phase::Starting { agent, turn, .. } = self.take_phase() else {
            unreachable!("fail_start outside Starting");
        };
        if failure.kind != FailureKind::ShuttingDown {
            self.supervisor
                .record_start(&self.key, Err(&failure.message));
        }
        drop(self.stop_running(agent, "start-up failed"));
        match turn {
            Some(turn) => {
                log::warn!(
                    "session {:?} {}: {}",
                    self.key,
                    turn.turn.id,
                    failure.message
                );
                self.fail(&turn.turn, failure);
            }
            None => log::warn!("standby {:?}: {}", self.key, failure.message),
        }
        self.enter(Phase::Idle, "start-up failed");
    }

    pub(super) fn on_screen_changed(&mut self) {
        if matches!(self.phase, Phase::Busy { .. }) {
            return self.watch_for_unrelayed_prompt();
        }
        let Phase::Starting { agent, .. } = &mut self.phase else {
            return;
        };
        if let Err(message) = agent.process.answer_startup_screen() {
            self.fail_start(TurnFailure::new(FailureKind::AgentUnavailable, message));
        }
    }

    /// The channel server said hello: the process is ready, and its turn goes out.
    pub(super) fn on_attach(&mut self, link: Box<dyn ChannelLink>, spawn_id: String) {
        let expected =
            matches!(&self.phase, Phase::Starting { agent, .. } if agent.spawn_id == spawn_id);
        if !expected {
            let why = if self.phase.agent().is_some_and(|a| a.link.is_some()) {
                "session already attached"
            } else {
                "no spawn of this session is waiting for it"
            };
            return reject_link(link, &spawn_id, why);
        }
        let mut link = link;
        if matches!(&self.phase, Phase::Starting { turn: None, .. })
            && let Err(e) = link.make_nonblocking()
        {
            reject_link(link, &spawn_id, "its socket is unusable");
            return self.fail_start(TurnFailure::new(
                FailureKind::AgentUnavailable,
                format!("the channel's socket is unusable: {e}"),
            ));
        }
        let Phase::Starting {
            mut agent,
            turn,
            since,
            ..
        } = self.take_phase()
        else {
            unreachable!("checked above");
        };
        agent.link = Some(link);
        agent.client_tools_sent = None;
        agent.process.started();
        self.supervisor.record_start(&self.key, Ok(()));
        self.identity.forking = false;
        log::info!("session {:?}: ready in {:?}", self.key, since.elapsed());
        match turn {
            Some(turn) => self.send_turn(agent, turn),
            None => self.enter(Phase::Ready { agent }, "standby ready"),
        }
    }

    /// Starting: the process ended before its channel connected. A failed `--resume` gets one
    /// more start with a new conversation.
    pub(super) fn on_exit_while_starting(&mut self, how: &str) {
        let screen = self
            .phase
            .agent()
            .map(|a| a.process.screen_tail(SCREEN_LINES_IN_ERRORS))
            .unwrap_or_default();
        let resumed = matches!(self.phase, Phase::Starting { resumed: true, .. });
        if std::mem::take(&mut self.identity.forking) {
            let Phase::Starting { agent, turn, .. } = self.take_phase() else {
                unreachable!("forking is set only while Starting");
            };
            let slot = self.stop_running(agent, "the fork did not start");
            log::warn!(
                "session {:?}: claude could not fork the conversation ({how}); starting again with the restored history. Last screen lines:\n{screen}",
                self.key
            );
            self.new_conversation("--fork-session failed");
            return self.spawn(slot, turn);
        }
        if resumed && screen.contains(RESUME_FAILED_TEXT) {
            let Phase::Starting { agent, turn, .. } = self.take_phase() else {
                unreachable!("checked above");
            };
            let slot = self.stop_running(agent, "resume failed");
            self.new_conversation(RESUME_FAILED_TEXT);
            return self.spawn(slot, turn);
        }
        self.fail_start(TurnFailure::new(
            FailureKind::AgentUnavailable,
            format!("claude exited during start-up ({how}). Last screen lines:\n{screen}"),
        ));
    }

    /// Starting: gives up at its deadline.
    pub(super) fn check_start_deadline(&mut self) {
        let Phase::Starting { deadline, .. } = &self.phase else {
            return;
        };
        if Instant::now() < *deadline {
            return;
        }
        let failure = if self.shutdown.is_some() {
            TurnFailure::new(FailureKind::ShuttingDown, "the bridge is shutting down")
        } else {
            TurnFailure::new(
                FailureKind::AgentUnavailable,
                format!(
                    "claude did not connect its channel within ready_timeout ({:?}); run `synthesis-bridge doctor`. Last screen lines:\n{}",
                    self.settings.ready_timeout,
                    self.screen_tail()
                ),
            )
        };
        self.fail_start(failure);
    }
}

/// Restart back-off: failures in a row before backing off, and the longest pause.
pub const START_FAILURES_BEFORE_BACKOFF: u32 = 3;
pub const MAX_START_BACKOFF: Duration = Duration::from_secs(60);

/// How long to wait after `failures` start failures in a row (zero below the threshold).
pub fn start_backoff(failures: u32) -> Duration {
    if failures < START_FAILURES_BEFORE_BACKOFF {
        return Duration::ZERO;
    }
    let exponent = (failures - START_FAILURES_BEFORE_BACKOFF).min(6);
    (Duration::from_secs(5) * 2u32.pow(exponent)).min(MAX_START_BACKOFF)
}
