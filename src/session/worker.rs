//! The session worker: one thread per session key, the only owner of that session's
//! `claude` process (in its PTY) and of the WebSocket to its channel server. The whole life
//! of a session is decided here, in one state machine:
//!
//! ```text
//! Absent ──turn──▶ Starting ──hello──▶ Ready ⇄ Busy
//!   ▲                 │ exit / timeout / blocking screen  │ exit / channel lost / stop
//!   └─────────────────┴──────────────────────────────────┘
//! ```
//! - Turns come from a FIFO queue, one at a time; a new turn never starts before the
//!   previous one has ended (reply with `final`, Stop hook, failure, timeout or cancel).
//! - The process is spawned lazily for a turn, with `--resume` when Claude has a transcript
//!   for the session's uuid. If a resume fails ("No conversation found"), the session gets a
//!   new uuid and its first turn carries the client's earlier conversation.
//! - Start failures back off (crash loops are bounded); a process that dies mid-turn fails
//!   that turn (502) and the next turn starts it again.
//! - `StopIfIdle` (sweeper, eviction) stops the process only if no turn is in flight or
//!   queued; `Stop` (shutdown) lets the turn in flight run until its deadline.
//!
//! The worker waits with `poll(2)` on everything it owns at once (its waker, the PTY master,
//! the child's pidfd, the WebSocket), always with a deadline, so it drains the terminal,
//! notices a dead child and sees replies without any helper thread. It never touches HTTP:
//! it only sends `TurnEvent`s into the turn's channel.

use crossbeam_channel::{Receiver, TryRecvError};
use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

use super::registry::{Control, SessionState, SessionStatus, Slots};
use super::store::SessionStore;
use super::turn::{FailureKind, Turn, TurnEvent, TurnFailure};
use super::workspace::{WorkspaceMode, path_component, workspace_for};
use crate::agent::{Agent, AgentLauncher, Launch, Output};
use crate::metrics::{self, METRICS};
use crate::poll::{WakeReceiver, wait_readable};
use crate::protocol::{BridgeFrame, ChannelFrame};

/// Settings and host-wide resources every worker shares.
pub struct WorkerSettings {
    pub launcher: AgentLauncher,
    pub workspace: PathBuf,
    pub workspace_mode: WorkspaceMode,
    pub state_dir: PathBuf,
    pub claude_config_dir: PathBuf,
    pub ready_timeout: Duration,
    pub turn_timeout: Duration,
    /// SIGTERM → SIGKILL grace when stopping a process.
    pub stop_grace: Duration,
    pub store: SessionStore,
    /// One per live claude process (`max_processes`).
    pub process_slots: Slots,
    /// One per turn in flight across all sessions (`max_concurrent_turns`).
    pub turn_slots: Slots,
    /// How long a turn whose clients all left keeps running for a retry to attach.
    pub retry_grace: Duration,
    /// How long a pushed turn may take to show up in claude's transcript.
    pub delivery_timeout: Duration,
}

/// Longest single wait when nothing is due: the loop re-checks its state at least this often.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a turn waiting for a `max_concurrent_turns` slot looks again.
const TURN_SLOT_RETRY: Duration = Duration::from_millis(50);
/// How often an unconfirmed delivery is looked for in claude's transcript.
const DELIVERY_CHECK: Duration = Duration::from_millis(250);
/// How long a lost channel waits to learn that claude itself exited.
const EXIT_AFTER_CHANNEL_LOSS: Duration = Duration::from_millis(300);
/// How long a new turn waits for the previous one to end before it is pushed anyway.
const PREVIOUS_TURN_WAIT: Duration = Duration::from_secs(10);
/// How often claude's session file is read while waiting for that.
const IDLE_FILE_POLL: Duration = Duration::from_millis(50);
/// Lines of screen quoted in start-up and crash errors.
const SCREEN_LINES_IN_ERRORS: usize = 8;
/// Start failures in a row before the worker stops trying for a while.
const START_FAILURES_BEFORE_BACKOFF: u32 = 3;
const MAX_START_BACKOFF: Duration = Duration::from_secs(60);
/// What claude prints when `--resume` names a conversation it does not have.
const RESUME_FAILED_TEXT: &str = "No conversation found";
/// Most of the client's earlier conversation carried into a fresh Claude conversation.
pub const MAX_RESTORED_HISTORY_BYTES: usize = 64 * 1024;

pub type ChannelSocket = WebSocket<TcpStream>;

/// Where the delivery of the turn in flight stands (see `check_delivery`).
struct Delivery {
    sent_at: Instant,
    attempts: u32,
    confirmed: bool,
    next_check: Instant,
}

/// Something the worker must react to.
enum Event {
    Frame(ChannelFrame),
    Control(Control),
    /// The terminal showed something new.
    ScreenChanged,
    /// The process is gone; the text says how it ended.
    AgentExited(String),
    /// The channel's WebSocket closed or failed.
    ChannelClosed(String),
    /// The waker fired without a control message (a new turn, or a cancelled one).
    Woken,
    Timeout,
}

pub struct Worker {
    key: String,
    settings: Arc<WorkerSettings>,
    status: Arc<SessionStatus>,
    turns: Receiver<Turn>,
    control: Receiver<Control>,
    wake: WakeReceiver,
    workspace: PathBuf,
    claude_session: String,
    agent: Option<Agent>,
    ws: Option<ChannelSocket>,
    frames: VecDeque<ChannelFrame>,
    /// Set by `Control::Stop`: finish what is in flight until then, start nothing new.
    stop_deadline: Option<Instant>,
    /// The Claude conversation was started afresh; the next turn carries the old one.
    restore_history: bool,
    start_failures: u32,
    no_start_before: Option<(Instant, String)>,
    /// This session has had a process before (the next start is a respawn).
    spawned_before: bool,
    /// A turn Claude may still be finishing (it replied, or was interrupted, but has not
    /// reported the end of its turn yet). The next `turn_end` without a turn id belongs to it.
    unfinished: Option<String>,
    /// A control message held back until the frames read before it are handled.
    pending_control: Option<Control>,
    /// Hash of the client's system prompt the next process should start with
    /// (`system_prompt = append`), and of the one the running process started with.
    wanted_prompt: Option<u64>,
    running_prompt: Option<u64>,
}

impl Worker {
    pub fn new(
        key: String,
        settings: Arc<WorkerSettings>,
        status: Arc<SessionStatus>,
        turns: Receiver<Turn>,
        control: Receiver<Control>,
        wake: WakeReceiver,
    ) -> Self {
        let known = settings.store.get(&key);
        let known_session = known.as_ref().map(|r| r.claude_session.clone());
        let workspace = known
            .as_ref()
            .map(|r| r.workspace.clone())
            .unwrap_or_else(|| {
                workspace_for(
                    settings.workspace_mode,
                    &settings.workspace,
                    &settings.state_dir,
                    &key,
                )
            });
        let claude_session = known
            .map(|r| r.claude_session)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Worker {
            key,
            settings,
            status,
            turns,
            control,
            wake,
            workspace,
            claude_session,
            agent: None,
            ws: None,
            frames: VecDeque::new(),
            stop_deadline: None,
            // A session this bridge has never seen may still be an old conversation (another
            // host ran it, or the state was lost): its first turn carries whatever history the
            // client sent (nothing for a conversation's first request).
            restore_history: known_session.is_none(),
            start_failures: 0,
            no_start_before: None,
            spawned_before: false,
            unfinished: None,
            pending_control: None,
            wanted_prompt: None,
            running_prompt: None,
        }
    }

    /// Where this session's copy of the client's system prompt lives.
    fn prompt_file(&self) -> PathBuf {
        self.settings
            .state_dir
            .join("system-prompts")
            .join(format!("{}.md", path_component(&self.key)))
    }

    /// `system_prompt = append`: writes the turn's system prompt for claude and, when it
    /// differs from the one the running process started with, restarts the process (it
    /// resumes its conversation) so the new prompt takes effect from this turn on.
    fn apply_system_prompt(&mut self, prompt: &str) {
        let hash = prompt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        if self.wanted_prompt != Some(hash) {
            let file = self.prompt_file();
            let written = file
                .parent()
                .map_or(Ok(()), super::store::create_private_dir)
                .and_then(|()| super::store::write_atomically(&file, prompt.as_bytes()));
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
        if self.agent.is_some() && self.running_prompt != self.wanted_prompt {
            self.stop_agent("the client's system prompt changed; restarting with --resume");
        }
    }

    fn publish_identity(&self) {
        let mut info = self.status.info.lock().unwrap();
        info.claude_session = self.claude_session.clone();
        info.workspace = self.workspace.display().to_string();
    }

    /// Ends a turn with an error: tells its responder, counts it, remembers it for `/v1/sessions`.
    fn fail(&self, turn: &Turn, failure: TurnFailure) {
        metrics::failed(failure.kind.metric_label());
        self.status.info.lock().unwrap().last_error = Some(failure.message.clone());
        turn.output.emit(TurnEvent::Failed(failure));
    }

    fn finish(&self, turn: &Turn, final_frame_read: Instant) {
        METRICS.turns_completed.inc();
        METRICS.turn_duration.record(turn.received.elapsed());
        turn.output.emit(TurnEvent::Done(final_frame_read));
    }

    /// The worker's main loop; returns once told to stop (its process is stopped by then).
    pub fn run(mut self) {
        log::debug!(
            "session {:?}: worker started (claude session {})",
            self.key,
            self.claude_session
        );
        self.publish_identity();
        loop {
            self.status.set_step("waiting for a turn");
            if self.stop_deadline.is_some() {
                self.fail_queued_turns();
                break;
            }
            match self.turns.try_recv() {
                Ok(turn) => {
                    self.run_turn(turn);
                    self.status.queued.fetch_sub(1, Ordering::SeqCst);
                    self.status.touch();
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            let event = self.wait(Instant::now() + MAX_WAIT);
            self.handle_between_turns(event);
        }
        self.stop_agent("session stopping");
        log::debug!("session {:?}: worker finished", self.key);
    }

    /// Reacts to an event while no turn is talking to Claude.
    fn handle_between_turns(&mut self, event: Event) {
        match event {
            Event::Control(Control::Stop { deadline }) => self.stop_deadline = Some(deadline),
            Event::Control(Control::StopIfIdle { idle_for, reason }) => {
                let idle = self.status.queued.load(Ordering::SeqCst) == 0
                    && self.status.last_active().elapsed() >= idle_for;
                if idle && self.agent.is_some() {
                    match reason {
                        "idle_kill" => METRICS.idle_kills.inc(),
                        "evicted for a new session" => METRICS.evictions.inc(),
                        _ => {}
                    }
                    self.stop_agent(reason);
                }
            }
            Event::Control(Control::Attach { ws, spawn_id }) => {
                let why = if self.ws.is_some() {
                    "session already attached"
                } else {
                    "no spawn waiting"
                };
                reject_socket(ws, &spawn_id, why)
            }
            Event::Control(Control::TurnEnd { .. }) => self.unfinished = None,
            Event::Frame(frame) => log::debug!(
                "session {:?}: frame outside a turn dropped: {frame:?}",
                self.key
            ),
            Event::AgentExited(how) => {
                log::info!("session {:?}: claude exited while idle ({how})", self.key);
                self.forget_agent();
            }
            Event::ChannelClosed(why) => {
                self.stop_agent(&format!("channel closed while idle: {why}"))
            }
            Event::ScreenChanged | Event::Woken | Event::Timeout => {}
        }
    }

    fn run_turn(&mut self, mut turn: Turn) {
        let turn_deadline = turn.received + self.settings.turn_timeout;
        if self.stop_deadline.is_some() {
            self.fail(
                &turn,
                TurnFailure::new(
                    FailureKind::ShuttingDown,
                    "the bridge is shutting down; retry after it restarts",
                ),
            );
            return;
        }
        // Host-wide bound on turns in flight; wait for a slot while still serving our process.
        self.status
            .set_step("waiting for a max_concurrent_turns slot");
        while !self.settings.turn_slots.try_acquire() {
            if turn.output.abandoned_since().is_some() || self.stop_deadline.is_some() {
                return self.fail(
                    &turn,
                    TurnFailure::new(
                        FailureKind::Cancelled,
                        "cancelled while waiting for a turn slot",
                    ),
                );
            }
            if Instant::now() >= turn_deadline {
                return self.fail(
                    &turn,
                    TurnFailure::new(
                        FailureKind::Timeout,
                        "no max_concurrent_turns slot freed before turn_timeout",
                    ),
                );
            }
            let event = self.wait(Instant::now() + TURN_SLOT_RETRY);
            self.handle_between_turns(event);
        }
        self.run_turn_with_slot(&mut turn, turn_deadline);
        self.settings.turn_slots.release();
    }

    fn run_turn_with_slot(&mut self, turn: &mut Turn, turn_deadline: Instant) {
        if turn.output.abandoned_since().is_some() {
            log::info!(
                "session {:?} {}: client left before the turn started; skipped",
                self.key,
                turn.id
            );
            self.fail(
                turn,
                TurnFailure::new(
                    FailureKind::Cancelled,
                    "every client left before the turn started",
                ),
            );
            return;
        }
        if let Some(needle) = fault_panic_needle()
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
        let warm = self.agent.is_some() && self.ws.is_some();
        let started = Instant::now();
        if let Err(failure) =
            self.ensure_ready(turn_deadline.min(Instant::now() + self.settings.ready_timeout))
        {
            log::warn!("session {:?} {}: {}", self.key, turn.id, failure.message);
            self.fail(turn, failure);
            return;
        }
        let waiting_for_claude = Instant::now();
        self.await_previous_turn();
        let waited_for_claude = waiting_for_claude.elapsed();
        self.status.set_step("sending the turn");
        self.status.set_state(SessionState::Busy);
        let mut content = std::mem::take(&mut turn.content);
        if self.restore_history
            && let Some(history) = turn.history.take().and_then(|render| render())
        {
            log::info!(
                "session {:?} {}: carrying {} bytes of earlier conversation into the fresh one",
                self.key,
                turn.id,
                history.len()
            );
            content = format!("{history}\n\n{content}");
        }
        let frame = BridgeFrame::Turn {
            id: turn.id.clone(),
            content,
            meta: Default::default(),
        };
        if let Err(e) = self.send_frame(&frame) {
            self.stop_agent(&format!("could not send turn: {e}"));
            self.fail(
                turn,
                TurnFailure::new(
                    FailureKind::AgentDied,
                    format!("could not deliver the turn to claude's channel ({e}); retry"),
                ),
            );
            return;
        }
        if warm {
            // The bridge's own inbound time: parsing to queueing, then this worker's work up to
            // the frame written, leaving out waits for others (the queue, slots, claude).
            let own = turn.queued_at.saturating_duration_since(turn.received) + started.elapsed()
                - waited_for_claude;
            METRICS.bridge_inbound.record(own);
        }
        self.restore_history = false;
        log::debug!("session {:?} {}: turn sent", self.key, turn.id);
        self.status.set_step("waiting for claude's reply");
        let finished = self.await_replies(turn, &frame, turn_deadline);
        if finished {
            self.settings.store.note_turn(&self.key);
            self.status.info.lock().unwrap().turns += 1;
        }
        if self.agent.is_some() {
            self.status.set_state(SessionState::Ready);
        }
    }

    fn fail_agent_exited(&mut self, turn: &Turn, how: &str) {
        let screen = self.screen_tail();
        self.forget_agent();
        let message = format!(
            "claude exited mid-turn ({how}); the next turn starts it again. Last screen lines:\n{screen}"
        );
        self.fail(turn, TurnFailure::new(FailureKind::AgentDied, message));
    }

    /// Claude folds a message that arrives while it is busy into the running turn, so a turn
    /// is pushed only once the previous one has ended: its Stop hook reported, or claude's
    /// session file says `idle` (the only sign after an Esc interrupt, which runs no hook).
    /// Bounded: after `PREVIOUS_TURN_WAIT` the turn is pushed anyway, with a warning.
    fn await_previous_turn(&mut self) {
        if self.unfinished.is_none() {
            return;
        }
        self.status
            .set_step("waiting for claude to finish the previous turn");
        let deadline = Instant::now() + PREVIOUS_TURN_WAIT;
        while self.unfinished.is_some() && self.agent.is_some() {
            let said_idle = self
                .agent
                .as_ref()
                .and_then(|a| a.reported_status(&self.settings.claude_config_dir));
            if said_idle.as_deref() == Some("idle") {
                self.unfinished = None;
                break;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "session {:?}: claude did not report the end of turn {:?} within {PREVIOUS_TURN_WAIT:?}; pushing the next turn anyway",
                    self.key,
                    self.unfinished
                );
                self.unfinished = None;
                break;
            }
            let event = self.wait((Instant::now() + IDLE_FILE_POLL).min(deadline));
            self.handle_between_turns(event);
        }
    }

    /// Forwards this turn's replies until it ends; true when it ended normally.
    fn await_replies(&mut self, turn: &Turn, frame: &BridgeFrame, turn_deadline: Instant) -> bool {
        let ended = self.forward_replies(turn, frame, turn_deadline);
        if self.agent.is_some() {
            self.unfinished = Some(turn.id.clone());
        }
        ended
    }

    fn forward_replies(
        &mut self,
        turn: &Turn,
        frame: &BridgeFrame,
        turn_deadline: Instant,
    ) -> bool {
        let mut replied = false;
        let mut delivery = Delivery {
            sent_at: Instant::now(),
            attempts: 1,
            confirmed: false,
            next_check: Instant::now() + DELIVERY_CHECK,
        };
        loop {
            // Every client left. Unless another turn waits, give a retry of this one
            // `retry_grace` to attach before interrupting claude.
            let abandoned = turn.output.abandoned_since();
            if let Some(since) = abandoned
                && (!self.turns.is_empty() || since.elapsed() >= self.settings.retry_grace)
            {
                log::info!(
                    "session {:?} {}: client disconnected; interrupting claude",
                    self.key,
                    turn.id
                );
                if let Some(agent) = self.agent.as_mut() {
                    let _ = agent.interrupt();
                }
                self.fail(
                    turn,
                    TurnFailure::new(
                        FailureKind::Cancelled,
                        "every client left; claude was interrupted",
                    ),
                );
                return false;
            }
            if !delivery.confirmed
                && Instant::now() >= delivery.next_check
                && let Err(failure) = self.check_delivery(turn, frame, &mut delivery)
            {
                self.stop_agent("claude did not take the turn in");
                self.fail(turn, failure);
                return false;
            }
            let turn_end = self
                .stop_deadline
                .map_or(turn_deadline, |d| d.min(turn_deadline));
            let mut deadline = turn_end;
            if let Some(since) = abandoned {
                deadline = deadline.min(since + self.settings.retry_grace);
            }
            if !delivery.confirmed {
                deadline = deadline.min(delivery.next_check);
            }
            match self.wait(deadline) {
                Event::Frame(ChannelFrame::Reply {
                    turn: id,
                    text,
                    is_final,
                }) if id == turn.id => {
                    replied = true;
                    delivery.confirmed = true;
                    turn.output.emit(TurnEvent::Text { text, is_final });
                    if is_final {
                        self.finish(turn, Instant::now());
                        return true;
                    }
                }
                Event::Frame(other) => log::debug!(
                    "session {:?} {}: stray frame dropped: {other:?}",
                    self.key,
                    turn.id
                ),
                Event::Control(Control::TurnEnd {
                    spawn_id,
                    turn: ended,
                    last_assistant_message,
                }) => {
                    let this_process = self.agent.as_ref().is_some_and(|a| a.spawn_id == spawn_id);
                    // With a turn id (read from the transcript) attribution is exact; without
                    // one, the first turn_end after a turn Claude was still finishing is that
                    // turn's.
                    let this_turn = match &ended {
                        Some(id) => *id == turn.id,
                        None => self.unfinished.is_none(),
                    };
                    if !(this_process && this_turn) {
                        log::debug!(
                            "session {:?} {}: turn_end of an earlier turn ({ended:?}) ignored",
                            self.key,
                            turn.id
                        );
                        self.unfinished = None;
                        continue;
                    }
                    if !replied {
                        let text = last_assistant_message
                            .filter(|t| !t.trim().is_empty())
                            .unwrap_or_else(|| {
                                "(Claude ended its turn without sending a reply.)".to_string()
                            });
                        log::info!(
                            "session {:?} {}: turn ended without a final reply; using the Stop hook's text",
                            self.key,
                            turn.id
                        );
                        turn.output.emit(TurnEvent::Text {
                            text,
                            is_final: true,
                        });
                    }
                    self.finish(turn, Instant::now());
                    return true;
                }
                Event::Control(Control::Stop { deadline }) => self.stop_deadline = Some(deadline),
                Event::Control(Control::StopIfIdle { .. }) => {}
                Event::Control(Control::Attach { ws, spawn_id }) => {
                    reject_socket(ws, &spawn_id, "session already attached")
                }
                Event::AgentExited(how) => {
                    self.fail_agent_exited(turn, &how);
                    return false;
                }
                Event::ChannelClosed(why) => {
                    // When claude dies, its channel server dies with it and the socket may
                    // close first: report the exit, which says more, if it follows at once.
                    let exited = self
                        .agent
                        .as_mut()
                        .and_then(|a| a.wait_exit(EXIT_AFTER_CHANNEL_LOSS));
                    if let Some(status) = exited {
                        self.fail_agent_exited(turn, &status.to_string());
                        return false;
                    }
                    self.stop_agent(&format!("channel closed mid-turn: {why}"));
                    self.fail(
                        turn,
                        TurnFailure::new(
                            FailureKind::AgentDied,
                            format!("claude's channel disconnected mid-turn ({why}); retry"),
                        ),
                    );
                    return false;
                }
                // A retry-grace or delivery-check wake-up: handled at the top of the loop.
                Event::Timeout if Instant::now() < turn_end => {}
                Event::Timeout => {
                    if let Some(agent) = self.agent.as_mut() {
                        let _ = agent.interrupt();
                    }
                    if self.stop_deadline.is_some_and(|d| Instant::now() >= d) {
                        self.fail(
                            turn,
                            TurnFailure::new(
                                FailureKind::ShuttingDown,
                                "the bridge shut down before the turn finished; retry",
                            ),
                        );
                    } else {
                        let limit = self.settings.turn_timeout;
                        self.fail(turn, TurnFailure::new(FailureKind::Timeout, format!("the turn took longer than turn_timeout ({limit:?}); claude was interrupted")));
                    }
                    return false;
                }
                Event::ScreenChanged | Event::Woken => {}
            }
        }
    }

    /// Claude acknowledges nothing, and a channel message it was not listening for is lost
    /// without a trace; so a turn counts as delivered only once Claude's transcript records
    /// it (or a reply or the Stop hook for it arrives). Not seen within `delivery_timeout`:
    /// sent once more; still not seen: the turn fails.
    fn check_delivery(
        &mut self,
        turn: &Turn,
        frame: &BridgeFrame,
        delivery: &mut Delivery,
    ) -> Result<(), TurnFailure> {
        let config_dir = &self.settings.claude_config_dir;
        let recorded =
            crate::agent::transcript_path(config_dir, &self.workspace, &self.claude_session)
                .is_some_and(|path| crate::agent::transcript_mentions_turn(&path, &turn.id));
        if recorded {
            delivery.confirmed = true;
            METRICS.deliveries_confirmed.inc();
            return Ok(());
        }
        let timeout = self.settings.delivery_timeout;
        if delivery.sent_at.elapsed() >= timeout {
            if delivery.attempts >= 2 {
                METRICS.delivery_failures.inc();
                return Err(TurnFailure::new(
                    FailureKind::AgentDied,
                    format!(
                        "claude did not take the turn in (not in its transcript {timeout:?} after each of two deliveries); its process is restarted. Last screen lines:\n{}",
                        self.screen_tail()
                    ),
                ));
            }
            log::warn!(
                "session {:?} {}: not in claude's transcript after {timeout:?}; sending it once more",
                self.key,
                turn.id
            );
            METRICS.delivery_retries.inc();
            self.send_frame(frame).map_err(|e| {
                TurnFailure::new(
                    FailureKind::AgentDied,
                    format!("could not deliver the turn again ({e}); retry"),
                )
            })?;
            delivery.attempts += 1;
            delivery.sent_at = Instant::now();
        }
        delivery.next_check = Instant::now() + DELIVERY_CHECK;
        Ok(())
    }

    /// Makes sure a process is up and its channel attached, spawning one if needed.
    fn ensure_ready(&mut self, deadline: Instant) -> Result<(), TurnFailure> {
        if self.agent.is_some() && self.ws.is_some() {
            return Ok(());
        }
        if self.agent.is_some() {
            self.stop_agent("process without a channel");
        }
        if let Some((until, last_error)) = &self.no_start_before {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Err(TurnFailure::new(
                    FailureKind::AgentUnavailable,
                    format!(
                        "claude failed to start {} times in a row; not trying again for {}s. Last error: {last_error}",
                        self.start_failures,
                        left.as_secs() + 1
                    ),
                ));
            }
        }
        let result = match self.start_agent(deadline) {
            Err(failure) if failure.message.contains(RESUME_FAILED_TEXT) => {
                let old =
                    std::mem::replace(&mut self.claude_session, uuid::Uuid::new_v4().to_string());
                log::warn!(
                    "session {:?}: claude could not resume conversation {old} ({RESUME_FAILED_TEXT}); starting a new one, {}, with the client's earlier messages",
                    self.key,
                    self.claude_session
                );
                self.restore_history = true;
                self.start_agent(deadline)
            }
            other => other,
        };
        match &result {
            Ok(()) => {
                self.start_failures = 0;
                self.no_start_before = None;
            }
            Err(failure) if failure.kind != FailureKind::ShuttingDown => {
                self.start_failures += 1;
                if self.start_failures >= START_FAILURES_BEFORE_BACKOFF {
                    let exponent = (self.start_failures - START_FAILURES_BEFORE_BACKOFF).min(6);
                    let backoff =
                        (Duration::from_secs(5) * 2u32.pow(exponent)).min(MAX_START_BACKOFF);
                    log::error!(
                        "session {:?}: {} start failures in a row; backing off {backoff:?}",
                        self.key,
                        self.start_failures
                    );
                    self.no_start_before =
                        Some((Instant::now() + backoff, failure.message.clone()));
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Spawns claude and waits for its channel's hello.
    fn start_agent(&mut self, deadline: Instant) -> Result<(), TurnFailure> {
        let limit = deadline.saturating_duration_since(Instant::now());
        self.status.set_step("waiting for a max_processes slot");
        if !self.settings.process_slots.acquire_timeout(limit) {
            return Err(TurnFailure::new(
                FailureKind::AgentUnavailable,
                format!(
                    "all {} claude processes (max_processes) are busy; retry later",
                    self.settings.process_slots.max
                ),
            ));
        }
        if let Err(e) = super::store::create_private_dir(&self.workspace) {
            self.settings.process_slots.release();
            return Err(TurnFailure::new(
                FailureKind::AgentUnavailable,
                format!("cannot create workspace {}: {e}", self.workspace.display()),
            ));
        }
        let spawn_id = uuid::Uuid::new_v4().simple().to_string();
        let resume = crate::agent::transcript_exists(
            &self.settings.claude_config_dir,
            &self.workspace,
            &self.claude_session,
        );
        let had_turns = self
            .settings
            .store
            .get(&self.key)
            .is_some_and(|r| r.turns > 0);
        if !resume && had_turns && !self.restore_history {
            let old = std::mem::replace(&mut self.claude_session, uuid::Uuid::new_v4().to_string());
            log::warn!(
                "session {:?}: claude's transcript of conversation {old} is missing; starting a new one, {}, with the client's earlier messages",
                self.key,
                self.claude_session
            );
            self.restore_history = true;
        }
        let prompt_file = self.prompt_file();
        let launch = Launch {
            session_key: &self.key,
            claude_session: &self.claude_session,
            resume,
            spawn_id: &spawn_id,
            workspace: &self.workspace,
            append_system_prompt_file: self
                .wanted_prompt
                .is_some()
                .then_some(prompt_file.as_path()),
        };
        let program = self
            .settings
            .launcher
            .program
            .to_string_lossy()
            .into_owned();
        let agent = match Agent::spawn(&self.settings.launcher, &launch) {
            Ok(agent) => agent,
            Err(e) => {
                self.settings.process_slots.release();
                return Err(TurnFailure::new(
                    FailureKind::AgentUnavailable,
                    format!(
                        "could not start `{program}`: {e}. Install Claude Code, point --claude-bin at it, or run with --demo"
                    ),
                ));
            }
        };
        log::info!(
            "session {:?}: spawned pid {} ({} {}, spawn {spawn_id})",
            self.key,
            agent.pid(),
            if resume { "--resume" } else { "--session-id" },
            self.claude_session
        );
        self.running_prompt = self.wanted_prompt;
        METRICS.spawns.inc();
        if self.spawned_before {
            METRICS.respawns.inc();
        }
        self.spawned_before = true;
        self.settings
            .store
            .put(&self.key, &self.claude_session, &self.workspace);
        self.publish_identity();
        self.status.info.lock().unwrap().process_started = Some(std::time::SystemTime::now());
        self.status.set_step("waiting for the channel's hello");
        *self.status.spawn_id.lock().unwrap() = Some(spawn_id.clone());
        self.status.pid.store(agent.pid(), Ordering::SeqCst);
        self.status.set_state(SessionState::Starting);
        self.agent = Some(agent);
        let started = Instant::now();
        let failure = loop {
            let deadline = self.stop_deadline.map_or(deadline, |d| d.min(deadline));
            match self.wait(deadline) {
                Event::ScreenChanged => {
                    if let Err(message) = self
                        .agent
                        .as_mut()
                        .map_or(Ok(()), Agent::answer_startup_screen)
                    {
                        break TurnFailure::new(FailureKind::AgentUnavailable, message);
                    }
                }
                Event::Control(Control::Attach { ws, spawn_id: id }) if id == spawn_id => {
                    if let Err(e) = ws.get_ref().set_nonblocking(true) {
                        break TurnFailure::new(
                            FailureKind::AgentUnavailable,
                            format!("channel socket unusable: {e}"),
                        );
                    }
                    self.ws = Some(*ws);
                    if let Some(agent) = self.agent.as_mut() {
                        agent.started();
                    }
                    self.status.set_state(SessionState::Ready);
                    log::info!("session {:?}: ready in {:?}", self.key, started.elapsed());
                    return Ok(());
                }
                Event::Control(Control::Attach { ws, spawn_id: id }) => {
                    reject_socket(ws, &id, "stale spawn id")
                }
                Event::Control(Control::Stop { deadline }) => self.stop_deadline = Some(deadline),
                Event::Control(Control::StopIfIdle { .. } | Control::TurnEnd { .. })
                | Event::Frame(_)
                | Event::Woken
                | Event::ChannelClosed(_) => {}
                Event::AgentExited(how) => {
                    let screen = self.screen_tail();
                    self.forget_agent();
                    return Err(TurnFailure::new(
                        FailureKind::AgentUnavailable,
                        format!(
                            "claude exited during start-up ({how}). Last screen lines:\n{screen}"
                        ),
                    ));
                }
                Event::Timeout if self.stop_deadline.is_some() => {
                    break TurnFailure::new(
                        FailureKind::ShuttingDown,
                        "the bridge is shutting down",
                    );
                }
                Event::Timeout => {
                    let limit = self.settings.ready_timeout;
                    let screen = self.screen_tail();
                    break TurnFailure::new(
                        FailureKind::AgentUnavailable,
                        format!(
                            "claude did not connect its channel within ready_timeout ({limit:?}); run `synthesis-bridge doctor`. Last screen lines:\n{screen}"
                        ),
                    );
                }
            }
        };
        self.stop_agent("start-up failed");
        Err(failure)
    }

    /// Waits until something happens or `deadline` passes.
    fn wait(&mut self, deadline: Instant) -> Event {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Event::Frame(frame);
            }
            if let Some(control) = self.pending_control.take() {
                return Event::Control(control);
            }
            if let Ok(control) = self.control.try_recv() {
                // A frame already on the socket was sent before this control (say, the Stop
                // hook's turn_end after the final reply): read the socket first.
                if self.ws.is_some()
                    && let Err(why) = self.read_frames()
                {
                    self.ws = None;
                    self.pending_control = Some(control);
                    return Event::ChannelClosed(why);
                }
                if !self.frames.is_empty() {
                    self.pending_control = Some(control);
                    continue;
                }
                return Event::Control(control);
            }
            let now = Instant::now();
            if now >= deadline {
                return Event::Timeout;
            }
            let mut fds = vec![self.wake.fd()];
            let agent_fds = self.agent.as_ref().map(Agent::fds).unwrap_or_default();
            fds.extend(&agent_fds);
            let ws_fd = self.ws.as_ref().map(|ws| ws.get_ref().as_raw_fd());
            fds.extend(ws_fd);
            let ready = match wait_readable(&fds, Some((deadline - now).min(MAX_WAIT))) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("session {:?}: poll failed: {e}", self.key);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if ready[0].readable {
                self.wake.drain();
                if !self.control.is_empty() {
                    continue;
                }
                return Event::Woken;
            }
            let agent_ready = &ready[1..1 + agent_fds.len()];
            if agent_ready.iter().any(|r| r.readable || r.hangup) {
                let agent = self.agent.as_mut().expect("agent fds come from an agent");
                let output = agent.drain_output();
                let pidfd_fired = agent_ready.get(1).is_some_and(|r| r.readable);
                if output == Output::Closed || pidfd_fired {
                    return Event::AgentExited(self.reap_agent());
                }
                return Event::ScreenChanged;
            }
            let ws_ready = ready
                .get(1 + agent_fds.len())
                .is_some_and(|r| r.readable || r.hangup);
            if ws_ready && let Err(why) = self.read_frames() {
                self.ws = None;
                return Event::ChannelClosed(why);
            }
        }
    }

    /// Reads every frame the socket has; Err when it closed or broke.
    fn read_frames(&mut self) -> Result<(), String> {
        let ws = self.ws.as_mut().expect("called with a socket");
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    match serde_json::from_str::<ChannelFrame>(text.as_str()) {
                        Ok(frame) => self.frames.push_back(frame),
                        Err(e) => log::warn!(
                            "session {:?}: unreadable frame from channel ignored: {e}",
                            self.key
                        ),
                    }
                }
                Ok(Message::Close(_)) => {
                    return Err("the channel server closed the connection".into());
                }
                Ok(Message::Binary(_)) => {
                    log::warn!("session {:?}: binary frame from channel ignored", self.key)
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(());
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Sends one frame, blocking for at most a few seconds (the socket is otherwise non-blocking).
    fn send_frame(&mut self, frame: &BridgeFrame) -> Result<(), String> {
        let ws = self.ws.as_mut().ok_or("no channel attached")?;
        let stream = ws.get_ref();
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let result = ws
            .send(Message::text(frame.to_json()))
            .map_err(|e| e.to_string());
        ws.get_ref()
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        result
    }

    fn screen_tail(&self) -> String {
        self.agent
            .as_ref()
            .map(|a| a.screen_tail(SCREEN_LINES_IN_ERRORS))
            .unwrap_or_default()
    }

    /// Collects the exit status after the terminal closed (the child may take a moment).
    fn reap_agent(&mut self) -> String {
        let agent = self.agent.as_mut().expect("reaping needs an agent");
        match agent.wait_exit(Duration::from_secs(2)) {
            Some(status) => status.to_string(),
            None => "terminal closed; process still running".to_string(),
        }
    }

    /// The process is already gone: drop our handles to it.
    fn forget_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            // Reaps if it somehow still runs; a no-op for an exited child.
            let _ = agent.stop(self.settings.stop_grace);
            self.settings.process_slots.release();
        }
        self.detach();
    }

    fn stop_agent(&mut self, why: &str) {
        if let Some(agent) = self.agent.take() {
            let pid = agent.pid();
            match agent.stop(self.settings.stop_grace) {
                Ok(status) => log::info!(
                    "session {:?}: stopped pid {pid} ({why}): {status}",
                    self.key
                ),
                Err(e) => log::error!(
                    "session {:?}: stopping pid {pid} failed ({why}): {e}",
                    self.key
                ),
            }
            self.settings.process_slots.release();
        }
        self.detach();
    }

    fn detach(&mut self) {
        self.unfinished = None;
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
        self.frames.clear();
        *self.status.spawn_id.lock().unwrap() = None;
        self.status.info.lock().unwrap().process_started = None;
        self.status.pid.store(0, Ordering::SeqCst);
        self.status.set_state(SessionState::Absent);
    }

    fn fail_queued_turns(&mut self) {
        while let Ok(turn) = self.turns.try_recv() {
            self.fail(
                &turn,
                TurnFailure::new(
                    FailureKind::ShuttingDown,
                    "the bridge is shutting down; retry after it restarts",
                ),
            );
            self.status.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Fault injection for the panic-safety test: a worker panics on a turn containing the text in
/// `SYNTHESIS_FAULT_PANIC_ON`. Unset (the normal case), nothing happens.
fn fault_panic_needle() -> Option<&'static str> {
    static NEEDLE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NEEDLE
        .get_or_init(|| {
            std::env::var("SYNTHESIS_FAULT_PANIC_ON")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .as_deref()
}

fn reject_socket(mut ws: Box<ChannelSocket>, spawn_id: &str, why: &str) {
    log::warn!("channel connection for spawn {spawn_id} refused: {why}");
    let _ = ws.close(None);
    let _ = ws.flush();
}
