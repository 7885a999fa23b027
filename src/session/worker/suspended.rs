//! The suspended turn (docs/ARCHITECTURE.md "Suspended turns"): Claude's turn keeps running
//! inside claude, blocked on answers (a tool permission; a client tool's result), while the
//! response that carried it so far has ended with the questions. The session's next request
//! carries the answers and becomes the turn's client again.
//!
//! Rules, all here:
//! - A question arriving while `Busy` suspends the turn: the response gets
//!   `TurnEvent::Suspended(questions)` and ends; the worker enters `Suspended`.
//! - A suspended turn gives its `max_concurrent_turns` slot back (claude uses no CPU while it
//!   waits) and takes one again when an answer resumes it; `turn_timeout` does not run while
//!   it is suspended (the resumed turn gets a full `turn_timeout` of its own). Its wait is
//!   bounded by the question's own timeout (`permission_timeout`, or for client tool calls
//!   the turn's `tool_result_timeout`).
//! - Client tool calls (docs/CLIENT_TOOLS.md) are questions too: their pending id is the
//!   call id, the answers are `tool` results, and giving up sends each an error result that
//!   tells Claude why.
//! - The worker takes the next queued turn at once while `Suspended` (it must not wait for
//!   the Claude turn to end). A turn with answers: every answer must name a pending id (else
//!   that request fails with 400 and the question stays open); the answers go to the
//!   channel, and the request streams the rest of the same Claude turn (or, if questions are
//!   still open, is suspended again with them). A turn without answers (any other message):
//!   every open question is denied, claude finishes its turn unseen (`Draining`), and the
//!   message then runs as the next turn, which starts with a line saying what was denied.
//! - No answer within the timeout: the questions are denied, claude finishes its turn
//!   unseen, and the session's next turn starts with a line saying so.
//! - Replies claude sends while suspended are held and delivered to the resuming request.
//! - Never a silent stall: a permission prompt on claude's terminal that claude did not relay
//!   to the channel (Claude Code relays only with the `tengu_harbor_permissions` feature flag)
//!   fails the turn after `UNRELAYED_PROMPT_GRACE`, naming what to do.

use std::time::{Duration, Instant};

use super::delivery::Delivery;
use super::{ActiveTurn, PREVIOUS_TURN_WAIT, Phase, Worker};
use crate::metrics::METRICS;
use crate::protocol::{BridgeFrame, ClientToolCall};
use crate::session::pending::{Answer, Pending, PendingKind, PermissionRelay, new_id};
use crate::session::shared::TurnSlot;
use crate::session::turn::{FailureKind, Turn, TurnEvent, TurnFailure};

/// How long a permission prompt may show on claude's terminal, while busy, without the
/// channel relaying it (claude sends the request together with the prompt) before the turn
/// fails instead of stalling.
pub(super) const UNRELAYED_PROMPT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// The text of every Claude Code permission prompt (2.1.331).
const PERMISSION_PROMPT_TEXT: &str = "Do you want to proceed?";
/// Screen lines searched for it.
const PROMPT_LINES: usize = 30;

/// The Claude side of a turn that has no client while it waits for answers.
pub(super) struct SuspendedTurn {
    /// The id claude knows the turn by (its first request's turn id): replies carry it.
    pub claude_id: String,
    pub delivery: Option<Delivery>,
    pub replied: bool,
    pub anonymous_end_ok: bool,
    /// What the turn waits on, oldest first.
    pub pending: Vec<Pending>,
    /// When the oldest open question gives up (denied).
    pub deadline: Instant,
    /// Replies (text, final) that arrived while suspended, for the resuming request.
    pub held: Vec<(String, bool)>,
    /// How long this turn waits for answers each time it is suspended
    /// (`permission_timeout`, or the turn's `tool_result_timeout`).
    pub wait: Duration,
}

/// A client tool call's wait when its turn named no timeout (the `tool_result_timeout`
/// default).
const DEFAULT_TOOL_RESULT_WAIT: Duration = Duration::from_secs(600);

impl Worker {
    /// Claude asks for permission to use a tool (a `permission_request` frame).
    pub(super) fn on_permission_request(
        &mut self,
        request_id: String,
        tool_name: String,
        description: String,
        input_preview: String,
    ) {
        let kind = PendingKind::Permission {
            request_id: request_id.clone(),
            tool_name: tool_name.clone(),
            description,
            input_preview,
        };
        let policy = self.settings.permission_relay;
        self.prompt_seen = None;
        match (&mut self.phase, policy) {
            (Phase::Busy { .. }, PermissionRelay::Chat) => {
                METRICS.permission_questions.inc();
                let wait = self.settings.permission_timeout;
                self.suspend(vec![kind], wait);
            }
            (Phase::Suspended { turn, .. }, PermissionRelay::Chat) => {
                // Claude asked again before the first answer (parallel tool calls): the
                // question joins the others; the resuming request shows what is still open.
                METRICS.permission_questions.inc();
                let id = new_id(&turn.pending);
                log::info!(
                    "session {:?} {}: another permission question ({tool_name}) while suspended: {id}",
                    self.key,
                    turn.claude_id
                );
                turn.pending.push(Pending { id, kind });
                let pending = turn.pending.clone();
                crate::session::shared::lock(&self.status.info).pending = pending;
            }
            (Phase::Busy { .. }, PermissionRelay::Off) => {
                log::warn!(
                    "session {:?}: claude asked for permission to use {tool_name}; permission_relay = off",
                    self.key
                );
                self.interrupt_turn(TurnFailure::new(
                    FailureKind::PermissionBlocked,
                    format!(
                        "Claude asked for permission to use {tool_name}, and permission_relay = off, so nobody can answer; the turn was interrupted. Set permission_relay = chat (ask in the chat) or deny, allow the tool in the workspace's permissions.allow, or choose a permission_mode that does not ask"
                    ),
                ));
            }
            _ => {
                let why = match policy {
                    PermissionRelay::Deny => "permission_relay = deny",
                    _ => "no turn is waiting for it",
                };
                log::info!(
                    "session {:?}: permission request {request_id} ({tool_name}) denied: {why}",
                    self.key
                );
                METRICS.permission_denied.inc();
                self.send_verdicts(&[(request_id, false)]);
            }
        }
    }

    /// Claude called the client's tools (a `client_tool_calls` frame: the calls it made
    /// together). Busy: the turn is suspended with them, the response ends with `tool_calls`.
    /// Suspended: they join the open ones (the resuming request shows them). Otherwise no
    /// turn can show them: each call fails at once.
    pub(super) fn on_client_tool_calls(&mut self, calls: Vec<ClientToolCall>) {
        let kinds: Vec<PendingKind> = calls
            .into_iter()
            .map(|c| PendingKind::ClientToolCall {
                call_id: c.call_id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect();
        match &mut self.phase {
            Phase::Busy { turn, .. } => {
                let wait = turn
                    .turn
                    .client_tools
                    .as_ref()
                    .map_or(DEFAULT_TOOL_RESULT_WAIT, |set| set.result_timeout);
                self.suspend(kinds, wait);
            }
            Phase::Suspended { turn, .. } => {
                for kind in kinds {
                    let pending = kind.pending(&turn.pending);
                    log::info!(
                        "session {:?} {}: another client tool call while suspended: {}",
                        self.key,
                        turn.claude_id,
                        pending.id
                    );
                    turn.pending.push(pending);
                }
                let pending = turn.pending.clone();
                crate::session::shared::lock(&self.status.info).pending = pending;
            }
            _ => {
                log::info!(
                    "session {:?}: client tool calls with no turn in flight fail",
                    self.key
                );
                let frames = kinds
                    .into_iter()
                    .filter_map(|kind| match kind {
                        PendingKind::ClientToolCall { call_id, .. } => {
                            Some(BridgeFrame::ClientToolResult {
                                call_id,
                                content: "No chat request is waiting for this tool call (the turn had already ended), so the client cannot run it.".into(),
                                is_error: true,
                            })
                        }
                        PendingKind::Permission { .. } => None,
                    })
                    .collect::<Vec<_>>();
                self.send_answers(&frames);
            }
        }
    }

    /// Busy, the terminal changed: notes when a permission prompt appears (and forgets it
    /// once it is gone).
    pub(super) fn watch_for_unrelayed_prompt(&mut self) {
        let Some(agent) = self.phase.agent() else {
            return;
        };
        let shown = agent
            .process
            .screen_tail(PROMPT_LINES)
            .contains(PERMISSION_PROMPT_TEXT);
        self.prompt_seen = match (shown, self.prompt_seen) {
            (true, None) => Some(Instant::now()),
            (true, seen) => seen,
            (false, _) => None,
        };
    }

    /// Busy: true (and the turn failed) when a permission prompt has shown for
    /// `UNRELAYED_PROMPT_GRACE` without its request reaching the bridge.
    pub(super) fn check_unrelayed_prompt(&mut self) -> bool {
        if self
            .prompt_seen
            .is_none_or(|seen| seen.elapsed() < UNRELAYED_PROMPT_GRACE)
        {
            return false;
        }
        let screen = self.screen_tail();
        log::warn!(
            "session {:?}: claude shows a permission prompt that was not relayed to the channel",
            self.key
        );
        self.interrupt_turn(TurnFailure::new(
            FailureKind::PermissionBlocked,
            format!(
                "Claude is asking for a tool permission on its terminal and did not relay the question to the bridge (Claude Code relays it only when its tengu_harbor_permissions feature flag is on; `synthesis-bridge doctor` checks it), so nobody can answer; the turn was interrupted. Allow the tool in the workspace's permissions.allow, or choose a permission_mode that does not ask. Last screen lines:\n{screen}"
            ),
        ));
        true
    }

    /// Busy → Suspended with the questions `kinds` (asked together), waiting `wait` for answers.
    fn suspend(&mut self, kinds: Vec<PendingKind>, wait: Duration) {
        let Phase::Busy { agent, turn } = self.take_phase() else {
            unreachable!("suspend outside Busy");
        };
        let mut pending: Vec<Pending> = Vec::new();
        for kind in kinds {
            let question = kind.pending(&pending);
            pending.push(question);
        }
        log::info!(
            "session {:?} {}: suspended, waiting for an answer to {}",
            self.key,
            turn.turn.id,
            pending[0].id
        );
        let suspended = SuspendedTurn {
            claude_id: turn.claude_id,
            delivery: turn.delivery,
            replied: turn.replied,
            anonymous_end_ok: turn.anonymous_end_ok,
            pending: pending.clone(),
            deadline: Instant::now() + wait,
            held: Vec::new(),
            wait,
        };
        // Published (with its questions, for `/v1/sessions`) before the client sees them.
        self.enter(
            Phase::Suspended {
                agent,
                turn: suspended,
            },
            "waiting for an answer",
        );
        turn.turn.output.emit(TurnEvent::Suspended(pending));
        // The request's `Turn` (its response has ended) and its turn slot are dropped here.
    }

    /// Suspended: the session's next turn. True unless it went back to waiting for a slot.
    pub(super) fn resume(&mut self, turn: Turn) -> bool {
        if self.skip_if_abandoned(&turn) {
            return true;
        }
        if turn.answers.is_empty() {
            let Phase::Suspended {
                turn: suspended, ..
            } = &self.phase
            else {
                unreachable!("resume outside Suspended");
            };
            let ids: Vec<String> = suspended.pending.iter().map(|p| p.id.clone()).collect();
            self.give_up(&format!(
                "(A new message arrived while Claude was waiting for an answer, so the open question{} {} {} denied.)",
                if ids.len() == 1 { "" } else { "s" },
                ids.join(", "),
                if ids.len() == 1 { "was" } else { "were" },
            ));
            // The message runs as the next turn once claude has finished the denied one.
            self.waiting = Some(turn);
            return true;
        }
        let Phase::Suspended {
            turn: suspended, ..
        } = &self.phase
        else {
            unreachable!("resume outside Suspended");
        };
        let unknown: Vec<&Answer> = turn
            .answers
            .iter()
            .filter(|a| {
                !suspended
                    .pending
                    .iter()
                    .any(|p| p.id == a.id() && a.fits(&p.kind))
            })
            .collect();
        if !unknown.is_empty() {
            let open: Vec<String> = suspended
                .pending
                .iter()
                .map(|p| format!("`{}`", p.id))
                .collect();
            let ids: Vec<&str> = unknown.iter().map(|a| a.id()).collect();
            let message = if matches!(unknown[0], Answer::ToolResult { .. }) {
                format!(
                    "no client tool call of this session waits for tool_call_id {}; the open call{} {}: send one `tool` message per id of the latest `tool_calls`",
                    ids.join(", "),
                    if open.len() == 1 { " is" } else { "s are" },
                    open.join(", ")
                )
            } else {
                format!(
                    "no open question has the id {}; the open one{} {}: answer `yes <id>` or `no <id>`",
                    ids.join(", "),
                    if open.len() == 1 { " is" } else { "s are" },
                    open.join(", ")
                )
            };
            self.fail(&turn, TurnFailure::new(FailureKind::BadAnswer, message));
            return true;
        }
        let Some(slot) = self.settings.turn_slots.try_acquire() else {
            self.status
                .set_step("waiting for a max_concurrent_turns slot");
            self.waiting = Some(turn);
            return false;
        };
        // The verdicts and tool results go out first, with the phase untouched (a failure
        // stops the process).
        let mut answered: Vec<&str> = Vec::new();
        let mut verdicts = Vec::new();
        let mut results = Vec::new();
        for answer in &turn.answers {
            if answered.contains(&answer.id()) {
                continue; // answered twice in one message: the first answer counts
            }
            answered.push(answer.id());
            let question = suspended.pending.iter().find(|p| p.id == answer.id());
            match (question.map(|q| &q.kind), answer) {
                (
                    Some(PendingKind::Permission { request_id, .. }),
                    Answer::Verdict { allow, .. },
                ) => verdicts.push((request_id.clone(), *allow)),
                (
                    Some(PendingKind::ClientToolCall { call_id, .. }),
                    Answer::ToolResult {
                        content, is_error, ..
                    },
                ) => results.push(BridgeFrame::ClientToolResult {
                    call_id: call_id.clone(),
                    content: content.clone(),
                    is_error: *is_error,
                }),
                _ => unreachable!("unknown ids and answers of the wrong kind were refused above"),
            }
        }
        let answered: Vec<String> = answered.into_iter().map(String::from).collect();
        if !self.send_verdicts(&verdicts) || !self.send_answers(&results) {
            self.fail(
                &turn,
                TurnFailure::new(
                    FailureKind::AgentDied,
                    "could not send the answer to claude's channel; its process was stopped; retry",
                ),
            );
            return true;
        }
        for (_, allow) in &verdicts {
            if *allow {
                METRICS.permission_allowed.inc();
            } else {
                METRICS.permission_denied.inc();
            }
        }
        for _ in &results {
            METRICS.client_tool_results.inc();
        }
        let Phase::Suspended {
            agent,
            turn: mut suspended,
        } = self.take_phase()
        else {
            unreachable!("send_verdicts and send_answers keep the phase unless they fail");
        };
        suspended.pending.retain(|p| !answered.contains(&p.id));
        log::info!(
            "session {:?} {}: resumed by {} ({} answer(s), {} question(s) still open)",
            self.key,
            suspended.claude_id,
            turn.id,
            verdicts.len() + results.len(),
            suspended.pending.len()
        );
        let active = ActiveTurn {
            turn,
            _slot: TurnSlot(slot),
            deadline: Instant::now() + self.settings.turn_timeout,
            delivery: suspended.delivery,
            replied: suspended.replied,
            anonymous_end_ok: suspended.anonymous_end_ok,
            claude_id: suspended.claude_id,
            warm: true,
            started: Instant::now(),
        };
        if !suspended.pending.is_empty() {
            // Questions still open: this request is suspended again and shows them.
            let open = suspended.pending.clone();
            let again = SuspendedTurn {
                claude_id: active.claude_id,
                delivery: active.delivery,
                replied: active.replied,
                anonymous_end_ok: active.anonymous_end_ok,
                pending: suspended.pending,
                deadline: Instant::now() + suspended.wait,
                held: suspended.held,
                wait: suspended.wait,
            };
            self.enter(
                Phase::Suspended { agent, turn: again },
                "questions still open",
            );
            active.turn.output.emit(TurnEvent::Suspended(open));
            return true;
        }
        self.status.set_step("waiting for claude's reply");
        self.enter(
            Phase::Busy {
                agent,
                turn: active,
            },
            "answered",
        );
        for (text, is_final) in suspended.held {
            self.deliver_reply(text, is_final);
        }
        true
    }

    /// Sends answer frames (client tool results) to the channel. False (and the process
    /// stopped, the phase `Idle`) when the channel could not take them.
    fn send_answers(&mut self, frames: &[BridgeFrame]) -> bool {
        let Some(agent) = self.phase.agent_mut() else {
            return true;
        };
        for frame in frames {
            let sent = match agent.link.as_mut() {
                Some(link) => link.send(frame),
                None => Err("no channel attached".into()),
            };
            if let Err(e) = sent {
                log::warn!("session {:?}: could not send an answer: {e}", self.key);
                self.notice = Some(format!(
                    "(Claude's channel failed while it waited for a tool result ({e}); its process was stopped.)"
                ));
                self.stop_agent("could not send a client tool result");
                return false;
            }
        }
        true
    }

    /// Sends verdicts to the channel. False (and the process stopped, the phase `Idle`)
    /// when the channel could not take them.
    fn send_verdicts(&mut self, verdicts: &[(String, bool)]) -> bool {
        let Some(agent) = self.phase.agent_mut() else {
            return true;
        };
        for (request_id, allow) in verdicts {
            let frame = BridgeFrame::PermissionVerdict {
                request_id: request_id.clone(),
                behavior: if *allow { "allow" } else { "deny" }.into(),
            };
            let sent = match agent.link.as_mut() {
                Some(link) => link.send(&frame),
                None => Err("no channel attached".into()),
            };
            if let Err(e) = sent {
                log::warn!(
                    "session {:?}: could not send a permission verdict: {e}",
                    self.key
                );
                self.notice = Some(format!(
                    "(Claude's channel failed while it waited for an answer ({e}); its process was stopped.)"
                ));
                self.stop_agent("could not send a permission verdict");
                return false;
            }
        }
        true
    }

    /// Suspended: denies every open question and lets claude finish its turn unseen
    /// (`Draining`); `notice` starts the session's next turn.
    pub(super) fn give_up(&mut self, notice: &str) {
        let Phase::Suspended { turn, .. } = &self.phase else {
            return;
        };
        let claude_id = turn.claude_id.clone();
        let verdicts: Vec<(String, bool)> = turn
            .pending
            .iter()
            .filter_map(|p| match &p.kind {
                PendingKind::Permission { request_id, .. } => Some((request_id.clone(), false)),
                PendingKind::ClientToolCall { .. } => None,
            })
            .collect();
        // Client tool calls fail, and Claude reads why.
        let failed_calls: Vec<BridgeFrame> = turn
            .pending
            .iter()
            .filter_map(|p| match &p.kind {
                PendingKind::ClientToolCall { call_id, .. } => {
                    Some(BridgeFrame::ClientToolResult {
                        call_id: call_id.clone(),
                        content: format!("The client tool call failed: {notice}"),
                        is_error: true,
                    })
                }
                PendingKind::Permission { .. } => None,
            })
            .collect();
        for _ in &verdicts {
            METRICS.permission_denied.inc();
        }
        log::info!("session {:?} {claude_id}: {notice}", self.key);
        self.notice = Some(notice.to_string());
        if !self.send_verdicts(&verdicts) || !self.send_answers(&failed_calls) {
            return;
        }
        let Phase::Suspended { agent, .. } = self.take_phase() else {
            unreachable!("checked above");
        };
        self.enter(
            Phase::Draining {
                agent,
                previous: claude_id,
                until: Instant::now() + PREVIOUS_TURN_WAIT,
                // Claude is still working on the denied turn, not closing it.
                answered: false,
            },
            "the open questions were denied",
        );
    }

    /// Suspended: gives up once the wait for an answer is over, or at shutdown.
    pub(super) fn check_suspended(&mut self) {
        let Phase::Suspended { turn, .. } = &self.phase else {
            return;
        };
        if Instant::now() < turn.deadline {
            return;
        }
        let limit = turn.wait;
        let ids: Vec<String> = turn.pending.iter().map(|p| p.id.clone()).collect();
        if turn
            .pending
            .iter()
            .all(|p| matches!(p.kind, PendingKind::ClientToolCall { .. }))
        {
            METRICS.client_tool_timeouts.inc();
            return self.give_up(&format!(
                "(The client did not return the result of tool call{} {} within tool_result_timeout ({limit:?}), so {} failed and Claude was told.)",
                if ids.len() == 1 { "" } else { "s" },
                ids.join(", "),
                if ids.len() == 1 { "it" } else { "they" },
            ));
        }
        for _ in &ids {
            METRICS.permission_timed_out.inc();
        }
        self.give_up(&format!(
            "(Nobody answered the permission question{} {} within permission_timeout ({limit:?}), so {} denied and Claude went on without {}.)",
            if ids.len() == 1 { "" } else { "s" },
            ids.join(", "),
            if ids.len() == 1 { "it was" } else { "they were" },
            if ids.len() == 1 { "it" } else { "them" },
        ));
    }

    /// Suspended: a reply for the suspended turn arrived (sent just before claude asked);
    /// held for the request that resumes it.
    pub(super) fn hold_reply(&mut self, id: &str, text: String, is_final: bool) {
        let Phase::Suspended { turn, .. } = &mut self.phase else {
            return;
        };
        if turn.claude_id != id {
            return log::info!(
                "session {:?} {}: stray frame dropped: a reply for {id} while suspended",
                self.key,
                turn.claude_id
            );
        }
        turn.replied = true;
        if let Some(delivery) = turn.delivery.as_mut() {
            delivery.confirmed = true;
        }
        turn.held.push((text, is_final));
    }

    /// Ends the suspended turn without giving up on it (claude ended it, exited, or its
    /// channel closed); `why` is said at the start of the next turn.
    pub(super) fn lose_suspended(&mut self, why: &str) {
        let Phase::Suspended { turn, .. } = &self.phase else {
            return;
        };
        let ids: Vec<String> = turn.pending.iter().map(|p| p.id.clone()).collect();
        self.notice = Some(format!(
            "(The open question{} {} can no longer be answered: {why}.)",
            if ids.len() == 1 { "" } else { "s" },
            ids.join(", ")
        ));
    }
}
