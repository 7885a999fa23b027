//! A turn on a live process: sending it, forwarding Claude's replies, the Stop hook's turn
//! end, and everything that ends a turn early (every client gone, `turn_timeout`, shutdown,
//! the process or its channel dying). Replies and turn ends carry turn ids: one for a turn
//! that is not the one in flight is dropped with a log line, never credited to another.

use std::sync::Arc;
use std::time::Instant;

use super::{ActiveTurn, EXIT_AFTER_CHANNEL_LOSS, PREVIOUS_TURN_WAIT, Phase, Running, Worker};
use crate::metrics::METRICS;
use crate::protocol::{BridgeFrame, ChannelFrame};
use crate::session::turn::{ClientTools, FailureKind, TurnEvent, TurnFailure};

impl Worker {
    /// Sends the turn to the process's channel and enters `Busy`.
    pub(super) fn send_turn(&mut self, mut agent: Running, mut turn: ActiveTurn) {
        self.status.set_step("sending the turn");
        let waited_from = Instant::now();
        let mut content = std::mem::take(&mut turn.turn.content);
        if self.identity.restore_history
            && let Some(history) = turn.turn.history.take().and_then(|render| render())
        {
            log::info!(
                "session {:?} {}: carrying {} bytes of earlier conversation into the fresh one",
                self.key,
                turn.turn.id,
                history.len()
            );
            content = format!("{history}\n\n{content}");
        }
        let frame = BridgeFrame::Turn {
            id: turn.turn.id.clone(),
            content,
            meta: Default::default(),
        };
        // The client's tools go first: the channel updates its list (and waits for Claude to
        // re-list) before it pushes the turn.
        let unchanged = |set: &Arc<ClientTools>| {
            agent.client_tools_sent.as_ref().is_some_and(|sent| {
                sent.tools == set.tools && sent.result_timeout == set.result_timeout
            })
        };
        let tools_to_send = turn.turn.client_tools.clone().filter(|set| !unchanged(set));
        let tools = tools_to_send.as_ref().map(|set| BridgeFrame::ClientTools {
            tools: set.tools.clone(),
            result_timeout_ms: set
                .result_timeout
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
        });
        let sent = match agent.link.as_mut() {
            Some(link) => tools
                .iter()
                .try_for_each(|tools| link.send(tools))
                .and_then(|()| link.send(&frame)),
            None => Err("no channel attached".into()),
        };
        if sent.is_ok() && tools_to_send.is_some() {
            agent.client_tools_sent = tools_to_send;
        }
        if let Err(e) = sent {
            drop(self.stop_running(agent, &format!("could not send turn: {e}")));
            self.fail(
                &turn.turn,
                TurnFailure::new(
                    FailureKind::AgentDied,
                    format!("could not deliver the turn to claude's channel ({e}); retry"),
                ),
            );
            return self.enter(Phase::Idle, "the channel refused the turn");
        }
        if turn.warm {
            // The bridge's own inbound time: parsing to queueing, then this worker's work up
            // to the frame written, leaving out waits for others (the queue, slots, claude).
            let t = &turn.turn;
            let own = t.queued_at.saturating_duration_since(t.received)
                + waited_from.saturating_duration_since(turn.started)
                + waited_from.elapsed();
            METRICS.bridge_inbound.record(own);
        }
        self.identity.restore_history = false;
        turn.delivery = Some(super::delivery::Delivery::new(frame));
        log::debug!("session {:?} {}: turn sent", self.key, turn.turn.id);
        self.status.set_step("waiting for claude's reply");
        self.enter(Phase::Busy { agent, turn }, "the turn went out");
    }

    pub(super) fn on_frame(&mut self, frame: ChannelFrame) {
        let (id, text, is_final) = match frame {
            ChannelFrame::Reply {
                turn,
                text,
                is_final,
            } => (turn, text, is_final),
            ChannelFrame::PermissionRequest {
                request_id,
                tool_name,
                description,
                input_preview,
            } => {
                return self.on_permission_request(
                    request_id,
                    tool_name,
                    description,
                    input_preview,
                );
            }
            ChannelFrame::ClientToolCalls { calls, .. } => {
                calls
                    .iter()
                    .for_each(|_| crate::metrics::METRICS.client_tool_calls.inc());
                return self.on_client_tool_calls(calls);
            }
            other => return log::debug!("session {:?}: frame dropped: {other:?}", self.key),
        };
        if matches!(self.phase, Phase::Suspended { .. }) {
            return self.hold_reply(&id, text, is_final);
        }
        let Phase::Busy { turn, .. } = &mut self.phase else {
            return log::info!(
                "session {:?}: stray frame dropped: a reply for {id} with no turn in flight",
                self.key
            );
        };
        if turn.claude_id != id {
            return log::info!(
                "session {:?} {}: stray frame dropped: a reply for {id}, which is not the turn in flight",
                self.key,
                turn.turn.id
            );
        }
        self.deliver_reply(text, is_final);
    }

    /// Busy: a reply of the turn in flight goes to its clients; a final one ends the turn.
    pub(super) fn deliver_reply(&mut self, text: String, is_final: bool) {
        let Phase::Busy { turn, .. } = &mut self.phase else {
            return;
        };
        turn.replied = true;
        if let Some(delivery) = turn.delivery.as_mut() {
            delivery.confirmed = true;
        }
        turn.turn.output.emit(TurnEvent::Text { text, is_final });
        if is_final {
            self.end_turn("final reply", false);
        }
    }

    /// The Stop hook reported the end of a turn of the process `spawn_id`.
    pub(super) fn on_turn_end(
        &mut self,
        spawn_id: &str,
        ended: Option<String>,
        last_assistant_message: Option<String>,
    ) {
        if self.phase.agent().is_none_or(|a| a.spawn_id != spawn_id) {
            return log::info!(
                "session {:?}: turn end from spawn {spawn_id}, not the live process; dropped",
                self.key
            );
        }
        match &mut self.phase {
            Phase::Busy { turn, .. } => {
                let ours = match &ended {
                    Some(id) => *id == turn.claude_id,
                    None => turn.anonymous_end_ok,
                };
                if !ours {
                    log::info!(
                        "session {:?} {}: turn end of an earlier turn ({ended:?}) dropped",
                        self.key,
                        turn.turn.id
                    );
                    // That was the report the previous turn owed; the next one is ours.
                    turn.anonymous_end_ok = true;
                    return;
                }
                if !turn.replied {
                    let text = last_assistant_message
                        .filter(|t| !t.trim().is_empty())
                        .unwrap_or_else(|| {
                            "(Claude ended its turn without sending a reply.)".to_string()
                        });
                    log::info!(
                        "session {:?} {}: turn ended without a final reply; using the Stop hook's text",
                        self.key,
                        turn.turn.id
                    );
                    turn.turn.output.emit(TurnEvent::Text {
                        text,
                        is_final: true,
                    });
                }
                self.end_turn("the Stop hook reported the end", true);
            }
            Phase::Draining { previous, .. } if ended.as_ref().is_none_or(|id| id == previous) => {
                let Phase::Draining { agent, .. } = self.take_phase() else {
                    unreachable!("matched above");
                };
                self.enter(Phase::Ready { agent }, "the previous turn reported its end");
            }
            Phase::Suspended { turn, .. }
                if ended
                    .as_ref()
                    .map_or(turn.anonymous_end_ok, |id| *id == turn.claude_id) =>
            {
                self.lose_suspended("Claude ended its turn without waiting for the answer");
                let Phase::Suspended { agent, .. } = self.take_phase() else {
                    unreachable!("matched above");
                };
                self.enter(Phase::Ready { agent }, "the suspended turn ended");
            }
            _ => {
                // Ready after a pipelined turn left without starting (its clients left):
                // this was the report the previous turn owed.
                if matches!(self.phase, Phase::Ready { .. }) {
                    self.previous_end_unreported = false;
                }
                log::info!(
                    "session {:?}: turn end ({ended:?}) in phase {} dropped",
                    self.key,
                    self.phase.name().name()
                )
            }
        }
    }

    /// The turn in flight ended normally: tell its clients; `reported` when claude has also
    /// reported the end of its turn (then the next turn may go at once).
    fn end_turn(&mut self, why: &str, reported: bool) {
        let Phase::Busy { agent, turn } = self.take_phase() else {
            unreachable!("end_turn outside Busy");
        };
        METRICS.turns_completed.inc();
        METRICS.turn_duration.record(turn.turn.received.elapsed());
        turn.turn.output.emit(TurnEvent::Done(Instant::now()));
        self.settings.store.note_turn(&self.key);
        crate::session::shared::lock(&self.status.info).turns += 1;
        self.enter_after_turn(agent, turn, why, reported, true);
    }

    /// After a turn: `Ready` when claude said it is done, else `Draining` until it does.
    /// `answered`: the turn got its final reply (claude is in its closing model call), not
    /// interrupted.
    fn enter_after_turn(
        &mut self,
        agent: Running,
        turn: ActiveTurn,
        why: &str,
        reported: bool,
        answered: bool,
    ) {
        if reported {
            self.enter(Phase::Ready { agent }, why);
        } else {
            let previous = turn.claude_id.clone();
            self.enter(
                Phase::Draining {
                    agent,
                    previous,
                    until: Instant::now() + PREVIOUS_TURN_WAIT,
                    answered,
                },
                why,
            );
        }
        // `turn` (with its turn slot) is dropped here.
    }

    /// Ends the turn in flight with `failure` after interrupting claude (Esc); the process
    /// stays and drains.
    pub(super) fn interrupt_turn(&mut self, failure: TurnFailure) {
        let Phase::Busy { mut agent, turn } = self.take_phase() else {
            unreachable!("interrupt_turn outside Busy");
        };
        if let Err(e) = agent.process.interrupt() {
            log::warn!("session {:?}: could not interrupt claude: {e}", self.key);
        }
        self.fail(&turn.turn, failure);
        // An Esc runs no Stop hook: draining ends when claude's session file says idle.
        self.enter_after_turn(agent, turn, "interrupted", false, false);
    }

    /// When the loop must look at the turn in flight again.
    pub(super) fn turn_wake_up(&self, turn: &ActiveTurn) -> Instant {
        let mut at = turn.deadline;
        if let Some(shutdown) = self.shutdown {
            at = at.min(shutdown);
        }
        if let Some(since) = turn.turn.output.abandoned_since() {
            at = at.min(since + self.settings.retry_grace);
        }
        if let Some(delivery) = &turn.delivery
            && !delivery.confirmed
        {
            at = at.min(delivery.next_check);
        }
        if let Some(seen) = self.prompt_seen {
            at = at.min(seen + super::suspended::UNRELAYED_PROMPT_GRACE);
        }
        at
    }

    /// Deadlines of whatever phase the session is in.
    pub(super) fn check_deadlines(&mut self) {
        match &self.phase {
            Phase::Starting { .. } => self.check_start_deadline(),
            Phase::Resuming { .. } => self.check_resume(),
            Phase::Busy { .. } => self.check_turn(),
            Phase::Suspended { .. } => self.check_suspended(),
            _ => {}
        }
    }

    /// Busy: every client gone, delivery proof, `turn_timeout`, shutdown.
    fn check_turn(&mut self) {
        let Phase::Busy { turn, .. } = &self.phase else {
            return;
        };
        // Every client left. Unless another turn waits, give a retry of this one
        // `retry_grace` to attach before interrupting claude.
        if let Some(since) = turn.turn.output.abandoned_since()
            && (!self.turns.is_empty() || since.elapsed() >= self.settings.retry_grace)
        {
            log::info!(
                "session {:?} {}: client disconnected; interrupting claude",
                self.key,
                turn.turn.id
            );
            return self.interrupt_turn(TurnFailure::new(
                FailureKind::Cancelled,
                "every client left; claude was interrupted",
            ));
        }
        let now = Instant::now();
        if self.shutdown.is_some_and(|d| now >= d) {
            return self.interrupt_turn(TurnFailure::new(
                FailureKind::ShuttingDown,
                "the bridge shut down before the turn finished; retry",
            ));
        }
        if now >= turn.deadline {
            let limit = self.settings.turn_timeout;
            return self.interrupt_turn(TurnFailure::new(
                FailureKind::Timeout,
                format!(
                    "the turn took longer than turn_timeout ({limit:?}); claude was interrupted"
                ),
            ));
        }
        if self.check_unrelayed_prompt() {
            return;
        }
        if let Err(failure) = self.check_delivery() {
            let Phase::Busy { agent, turn } = self.take_phase() else {
                unreachable!("checked above");
            };
            drop(self.stop_running(agent, "claude did not take the turn in"));
            self.fail(&turn.turn, failure);
            self.enter(Phase::Idle, "delivery failed");
        }
    }

    /// Draining: true when it ended (claude says it is idle, or it took too long to say so).
    pub(super) fn check_draining(&mut self) -> bool {
        let Phase::Draining {
            agent,
            previous,
            until,
            ..
        } = &self.phase
        else {
            return false;
        };
        let why = if agent.process.says_idle() {
            "claude's session file says idle"
        } else if Instant::now() >= *until {
            log::warn!(
                "session {:?}: claude did not report the end of {previous} within {PREVIOUS_TURN_WAIT:?}; going on (a report without a turn id will not be credited to the next turn)",
                self.key
            );
            self.previous_end_unreported = true;
            "gave up waiting for the end of the previous turn"
        } else {
            return false;
        };
        let Phase::Draining { agent, .. } = self.take_phase() else {
            unreachable!("matched above");
        };
        self.enter(Phase::Ready { agent }, why);
        true
    }

    /// Draining with a turn queued (`pipeline_turns`): the turn goes out now instead of after
    /// the previous turn's end. Claude, still in its closing model call, folds a channel
    /// message that arrives then into that call and answers it there (docs/SPEED.md §4),
    /// which saves the next turn a whole model round trip; one that arrives after the call
    /// runs as Claude's next turn. Either way the previous turn's end report is still owed:
    /// the next turn drops it (its turn id is the previous one's, or, without an id, it is
    /// the first anonymous report).
    pub(super) fn pipeline_next_turn(&mut self) {
        let Phase::Draining {
            agent, previous, ..
        } = self.take_phase()
        else {
            unreachable!("pipeline_next_turn outside Draining");
        };
        self.previous_end_unreported = true;
        self.enter(
            Phase::Ready { agent },
            &format!("the next turn goes out while claude finishes {previous}"),
        );
    }

    pub(super) fn on_agent_exited(&mut self, how: &str) {
        match &self.phase {
            Phase::Starting { .. } => self.on_exit_while_starting(how),
            Phase::Busy { .. } => self.fail_busy_turn_on_exit(how),
            Phase::Ready { .. } | Phase::Resuming { .. } | Phase::Draining { .. } => {
                log::info!("session {:?}: claude exited while idle ({how})", self.key);
                self.stop_agent("exited");
            }
            Phase::Suspended { .. } => {
                self.lose_suspended(&format!("Claude exited ({how})"));
                self.stop_agent("exited while a question was open");
            }
            Phase::Idle | Phase::Retired => {}
        }
    }

    /// Busy: the process died; the turn fails with 502 and the next turn starts a new one.
    fn fail_busy_turn_on_exit(&mut self, how: &str) {
        let screen = self.screen_tail();
        let Phase::Busy { agent, turn } = self.take_phase() else {
            unreachable!("checked by the caller");
        };
        drop(self.stop_running(agent, "exited mid-turn"));
        self.fail(
            &turn.turn,
            TurnFailure::new(
                FailureKind::AgentDied,
                format!(
                    "claude exited mid-turn ({how}); the next turn starts it again. Last screen lines:\n{screen}"
                ),
            ),
        );
        self.enter(Phase::Idle, "exited mid-turn");
    }

    pub(super) fn on_channel_closed(&mut self, why: &str) {
        match &mut self.phase {
            Phase::Busy { agent, .. } => {
                // When claude dies, its channel server dies with it and the socket may close
                // first: report the exit, which says more, if it follows at once.
                if let Some(status) = agent.process.wait_exit(EXIT_AFTER_CHANNEL_LOSS) {
                    return self.fail_busy_turn_on_exit(&status);
                }
                let Phase::Busy { agent, turn } = self.take_phase() else {
                    unreachable!("matched above");
                };
                drop(self.stop_running(agent, &format!("channel closed mid-turn: {why}")));
                self.fail(
                    &turn.turn,
                    TurnFailure::new(
                        FailureKind::AgentDied,
                        format!("claude's channel disconnected mid-turn ({why}); retry"),
                    ),
                );
                self.enter(Phase::Idle, "channel closed mid-turn");
            }
            Phase::Ready { .. } | Phase::Resuming { .. } | Phase::Draining { .. } => {
                self.stop_agent(&format!("channel closed while idle: {why}"))
            }
            Phase::Suspended { .. } => {
                self.lose_suspended(&format!("Claude's channel closed ({why})"));
                self.stop_agent(&format!("channel closed while a question was open: {why}"));
            }
            Phase::Starting { .. } | Phase::Idle | Phase::Retired => {}
        }
    }
}
