//! The session worker: one thread per live session key, the only owner of that session's
//! agent process (claude in its PTY), of the channel link to it and of the turn in flight.
//! Its life is one state machine, in the style of an OTP `gen_statem`: the states are the
//! `Phase` enum (each carrying the resources it owns), and every change goes through
//! `Worker::enter`, which logs it and publishes it for the registry.
//!
//! ```text
//!            turn (process slot granted)        hello
//!   Idle ─────────────────────────────▶ Starting ───────▶ Busy ──final reply──▶ Draining
//!    ▲ ▲                                   │                │ ▲   (cancel, timeout)   │
//!    │ └────── exit / timeout / screen ────┘                │ └────── next turn ──┐   │ Stop hook /
//!    │                                                      │                     │   ▼ idle file
//!    ├──────────── exit / channel lost ─────────────────────┴───────────────── Ready ◀─┘
//!    │                                                                          │
//!    └──────── Stop (idle kill, eviction, operator; registry marks `Stopping`) ─┘
//!   Idle with nothing queued ──▶ Retired (the thread ends; the session map keeps the conversation)
//! ```
//! A standby (`into_standby`, docs/SPEED.md §3) goes Idle → Starting without a turn → Ready,
//! and takes the key of the new conversation that adopts it before that one's first turn.
//! One loop drives it: `advance` does the work that is due (take the next turn, start a
//! process, give up on a deadline, retire), then `wait` (events.rs) blocks on everything
//! the worker owns at once with `poll(2)` until the next deadline, and `handle` reacts to
//! what happened. The pieces live beside this file: events.rs (the poll-based event source),
//! start.rs (spawn, start-up screens, back-off), running.rs (a turn: send, replies, turn end,
//! cancel, deadlines), suspended.rs (a turn waiting for the client's answers), delivery.rs (proof that claude took the turn in), prompt.rs (the
//! client's system prompt file), resume.rs (a standby switching to a returning conversation),
//! agent_port.rs (the trait between worker and agent).
//!
//! Resources are owned: the process slot sits in `Running`, the turn slot in `ActiveTurn`,
//! and a `Turn` dropped without an answer (a panic, a dropped queue) fails its response
//! (session/turn.rs). So a panic anywhere in here releases everything by unwinding; the
//! registry then removes the session and the next turn starts a new worker.

pub mod agent_port;
mod delivery;
mod events;
mod prompt;
mod resume;
mod running;
pub mod start;
mod suspended;
#[cfg(test)]
mod tests;

use crossbeam_channel::{Receiver, TryRecvError};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shared::{
    Control, PhaseName, ProcessSlot, SessionStatus, SlotPool, Supervisor, TurnSlot, lock,
};
use super::store::SessionStore;
use super::turn::{FailureKind, Turn, TurnFailure};
use super::workspace::{WorkspaceMode, workspace_for};
use crate::link::ChannelLink;
use crate::metrics::{self, METRICS};
use crate::poll::WakeReceiver;
use crate::protocol::ChannelFrame;
use agent_port::{AgentFactory, AgentProcess};
use delivery::Delivery;

/// Settings and host-wide resources every worker shares.
pub struct WorkerSettings {
    pub agents: Box<dyn AgentFactory>,
    pub workspace: PathBuf,
    pub workspace_mode: WorkspaceMode,
    pub state_dir: PathBuf,
    pub ready_timeout: Duration,
    pub turn_timeout: Duration,
    /// SIGTERM → SIGKILL grace when stopping a process.
    pub stop_grace: Duration,
    pub store: SessionStore,
    /// One per turn in flight across all sessions (`max_concurrent_turns`).
    pub turn_slots: Arc<SlotPool>,
    /// How long a turn whose clients all left keeps running for a retry to attach.
    pub retry_grace: Duration,
    /// How long a pushed turn may take to show up in claude's transcript.
    pub delivery_timeout: Duration,
    /// What to do when Claude asks for a tool permission (`permission_relay`).
    pub permission_relay: super::pending::PermissionRelay,
    /// How long a permission question waits for an answer before it is denied.
    pub permission_timeout: Duration,
    /// `pipeline_turns`: a queued turn goes out while the previous one drains.
    pub pipeline_turns: bool,
}

/// Longest single wait when nothing is due: the loop re-checks its state at least this often.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a turn waiting for a `max_concurrent_turns` slot looks again.
const TURN_SLOT_RETRY: Duration = Duration::from_millis(50);
/// How long a finished turn may take to report its end before the next turn is pushed anyway.
const PREVIOUS_TURN_WAIT: Duration = Duration::from_secs(10);
/// How often an unconfirmed delivery is looked for in claude's transcript.
const DELIVERY_CHECK: Duration = Duration::from_millis(250);
/// How long a lost channel waits to learn that claude itself exited.
const EXIT_AFTER_CHANNEL_LOSS: Duration = Duration::from_millis(300);
/// How often claude's session file is read while draining.
const IDLE_FILE_POLL: Duration = Duration::from_millis(50);
/// Lines of screen quoted in start-up and crash errors.
const SCREEN_LINES_IN_ERRORS: usize = 8;
/// Most of the client's earlier conversation carried into a fresh Claude conversation.
pub const MAX_RESTORED_HISTORY_BYTES: usize = 64 * 1024;

/// A live agent process and what belongs to it.
struct Running {
    process: Box<dyn AgentProcess>,
    /// The channel connection, once the channel server said hello.
    link: Option<Box<dyn ChannelLink>>,
    spawn_id: String,
    /// Held for as long as the process lives (`max_processes`).
    slot: ProcessSlot,
    /// The client tools last sent on `link`: a turn with the same set sends no frame
    /// (OpenClaw sends its tool definitions, tens of KiB, with every request).
    client_tools_sent: Option<Arc<super::turn::ClientTools>>,
}

/// The turn in flight and what belongs to it.
struct ActiveTurn {
    turn: Turn,
    /// Held while the turn is in flight (`max_concurrent_turns`).
    _slot: TurnSlot,
    deadline: Instant,
    /// Set once the turn frame was sent.
    delivery: Option<Delivery>,
    replied: bool,
    /// A Stop report that names no turn may end this one: false when the previous turn never
    /// reported its end (such a report is then more likely the previous turn's).
    anonymous_end_ok: bool,
    /// The id claude knows the turn by: this request's own id, or, for a request that
    /// resumed a suspended turn, the id of the request that started it.
    claude_id: String,
    /// The process was already up when the turn started (for the inbound-time metric).
    warm: bool,
    started: Instant,
}

/// The session's state; each phase owns what exists in it.
enum Phase {
    /// No process.
    Idle,
    /// A process is starting for `turn` (None: a standby started ahead); its channel has not
    /// said hello yet.
    Starting {
        agent: Running,
        turn: Option<ActiveTurn>,
        deadline: Instant,
        since: Instant,
        /// Started with `--resume` (a failure may mean the conversation is gone).
        resumed: bool,
    },
    /// Up, connected, nothing to do.
    Ready { agent: Running },
    /// An adopted standby switches to the returning conversation `conversation`: the worker
    /// typed `/resume <conversation>` and waits until claude's session file names it
    /// (resume.rs). Shown as `starting`; turns wait.
    Resuming {
        agent: Running,
        conversation: String,
        deadline: Instant,
    },
    /// A turn is in flight.
    Busy { agent: Running, turn: ActiveTurn },
    /// The last turn is answered (or was interrupted, or its questions denied) but claude
    /// has not reported the end of it yet; a message sent now is folded into it. After a
    /// final reply (`answered`, claude is in its closing model call) the next turn goes out
    /// at once (`pipeline_turns`, running.rs `pipeline_next_turn`); otherwise it waits.
    Draining {
        agent: Running,
        previous: String,
        until: Instant,
        answered: bool,
    },
    /// Claude's turn waits inside claude for the client's answers to `turn.pending`; no
    /// request is its client and it holds no turn slot (suspended.rs).
    Suspended {
        agent: Running,
        turn: suspended::SuspendedTurn,
    },
    /// The worker is done; its thread ends.
    Retired,
}

impl Phase {
    fn name(&self) -> PhaseName {
        match self {
            Phase::Idle => PhaseName::Idle,
            Phase::Starting { .. } | Phase::Resuming { .. } => PhaseName::Starting,
            Phase::Ready { .. } => PhaseName::Ready,
            Phase::Busy { .. } => PhaseName::Busy,
            Phase::Draining { .. } => PhaseName::Draining,
            Phase::Suspended { .. } => PhaseName::Suspended,
            Phase::Retired => PhaseName::Retired,
        }
    }

    fn agent(&self) -> Option<&Running> {
        match self {
            Phase::Starting { agent, .. }
            | Phase::Ready { agent }
            | Phase::Resuming { agent, .. }
            | Phase::Busy { agent, .. }
            | Phase::Draining { agent, .. }
            | Phase::Suspended { agent, .. } => Some(agent),
            Phase::Idle | Phase::Retired => None,
        }
    }

    fn agent_mut(&mut self) -> Option<&mut Running> {
        match self {
            Phase::Starting { agent, .. }
            | Phase::Ready { agent }
            | Phase::Resuming { agent, .. }
            | Phase::Busy { agent, .. }
            | Phase::Draining { agent, .. }
            | Phase::Suspended { agent, .. } => Some(agent),
            Phase::Idle | Phase::Retired => None,
        }
    }
}

/// Which Claude conversation the session is, and where it runs (read from the session map on
/// the worker's thread, never under the registry's lock).
struct Identity {
    workspace: PathBuf,
    claude_session: String,
    /// The conversation is new to Claude: its first turn carries the client's history.
    restore_history: bool,
    /// The process starting now forks another conversation (`--fork-session`); if it cannot
    /// start, the next start is a new conversation with the restored history.
    forking: bool,
}

/// Something the worker reacts to (from events.rs).
enum Event {
    Frame(ChannelFrame),
    Control(Control),
    /// The terminal showed something new.
    ScreenChanged,
    /// The process is gone; the text says how it ended.
    AgentExited(String),
    /// The channel link closed or failed.
    ChannelClosed(String),
    /// The waker fired (a new turn, a cancelled one) or a deadline passed.
    Tick,
}

/// Where a worker's input arrives: its turns, its control messages, and the waker that
/// interrupts its wait when either has something.
pub struct Mailbox {
    pub turns: Receiver<Turn>,
    pub control: Receiver<Control>,
    pub wake: WakeReceiver,
}

pub struct Worker {
    key: String,
    /// Unique per worker, so a late `retire` never removes a newer worker of the same key.
    id: u64,
    settings: Arc<WorkerSettings>,
    status: Arc<SessionStatus>,
    supervisor: Arc<dyn Supervisor>,
    turns: Receiver<Turn>,
    control: Receiver<Control>,
    wake: WakeReceiver,
    phase: Phase,
    /// A turn taken from the queue, waiting for a `max_concurrent_turns` slot.
    waiting: Option<Turn>,
    identity: Identity,
    /// Frames and a control read ahead by `wait` (events.rs).
    frames: VecDeque<ChannelFrame>,
    pending_control: Option<Control>,
    /// Set by `Control::Shutdown`: finish the turn in flight until then, start nothing new.
    shutdown: Option<Instant>,
    /// The client's system prompt for the next start, and the one the running process has.
    wanted_prompt: Option<u64>,
    running_prompt: Option<u64>,
    /// The last turn ended without claude reporting its end.
    previous_end_unreported: bool,
    /// The phase last entered: the transition log's "from" (while `take_phase` has taken the
    /// phase apart, `phase` reads `Idle`).
    entered: PhaseName,
    /// Said at the start of the session's next turn (a question that was denied unseen).
    notice: Option<String>,
    /// Since when claude's terminal shows a permission prompt that was not relayed to the
    /// channel (suspended.rs, `check_unrelayed_prompt`); cleared by every transition.
    prompt_seen: Option<Instant>,
    /// A standby (registry.rs, `standby`): its key is internal and the session map has no
    /// entry for it until a new conversation adopts it.
    standby: bool,
    /// Start a process without a turn when `Idle` (a standby, once).
    prestart: bool,
}

impl Worker {
    pub fn new(
        key: String,
        id: u64,
        settings: Arc<WorkerSettings>,
        status: Arc<SessionStatus>,
        supervisor: Arc<dyn Supervisor>,
        mailbox: Mailbox,
    ) -> Self {
        Worker {
            key,
            id,
            settings,
            status,
            supervisor,
            turns: mailbox.turns,
            control: mailbox.control,
            wake: mailbox.wake,
            phase: Phase::Idle,
            waiting: None,
            identity: Identity {
                workspace: PathBuf::new(),
                claude_session: String::new(),
                restore_history: false,
                forking: false,
            },
            frames: VecDeque::new(),
            pending_control: None,
            shutdown: None,
            wanted_prompt: None,
            running_prompt: None,
            previous_end_unreported: false,
            entered: PhaseName::Idle,
            notice: None,
            prompt_seen: None,
            standby: false,
            prestart: false,
        }
    }

    /// Makes this worker a standby: it starts a process at once, without a turn, and waits
    /// in `Ready` for a new conversation to adopt it (`adopt`).
    pub fn into_standby(mut self) -> Self {
        self.standby = true;
        self.prestart = true;
        lock(&self.status.info).standby = true;
        self
    }

    /// A new conversation took this standby: from now on it is that conversation's session,
    /// with the standby's Claude conversation (new to Claude, so its first turn carries the
    /// client's history). The process keeps its spawn id; the registry resolves the
    /// standby's key for its hello and Stop hook (`Registry::attach`, `turn_end`).
    fn take_adoption(&mut self) {
        let Some(key) = lock(&self.status.adopt_as).take() else {
            return;
        };
        log::info!(
            "session {:?}: standby {:?} adopted (claude session {})",
            key,
            self.key,
            self.identity.claude_session
        );
        self.key = key;
        // The same name a worker started for this key has (`Registry::start_worker`).
        crate::logging::name_os_thread(&crate::logging::thread_name("session:", &self.key));
        self.standby = false;
        self.prestart = false;
        lock(&self.status.info).standby = false;
        // A conversation coming back (the registry adopts for one only with
        // `standby_resume`, in the standby's workspace, with its transcript there).
        if let Some(record) = self.settings.store.get(&self.key) {
            return self.resume_in_standby(record.claude_session);
        }
        self.identity.restore_history = true;
        self.settings.store.put(
            &self.key,
            &self.identity.claude_session,
            &self.identity.workspace,
        );
    }

    /// The worker's loop; returns once the worker retired (its process is stopped by then).
    pub fn run(mut self) {
        self.load_identity();
        log::debug!(
            "session {:?}: worker {} started (claude session {})",
            self.key,
            self.id,
            self.identity.claude_session
        );
        loop {
            self.advance();
            if matches!(self.phase, Phase::Retired) {
                break;
            }
            let deadline = self.next_deadline();
            let event = self.wait(deadline);
            self.handle(event);
        }
        log::debug!("session {:?}: worker {} retired", self.key, self.id);
    }

    /// Reads which conversation this key is from the session map.
    fn load_identity(&mut self) {
        let known = self.settings.store.get(&self.key);
        self.identity = match known {
            Some(record) => Identity {
                workspace: record.workspace,
                claude_session: record.claude_session,
                restore_history: false,
                forking: false,
            },
            // A session this bridge has never seen may still be an old conversation (another
            // host ran it, or the state was lost): its first turn carries whatever history the
            // client sent (nothing for a conversation's first request).
            None => Identity {
                workspace: workspace_for(
                    self.settings.workspace_mode,
                    &self.settings.workspace,
                    &self.settings.state_dir,
                    &self.key,
                ),
                claude_session: uuid::Uuid::new_v4().to_string(),
                restore_history: true,
                forking: false,
            },
        };
        let mut info = lock(&self.status.info);
        info.claude_session = self.identity.claude_session.clone();
        info.workspace = self.identity.workspace.display().to_string();
    }

    /// The one place the phase changes: logs the transition and publishes it.
    fn enter(&mut self, next: Phase, why: &str) {
        let (from, to) = (self.entered, next.name());
        self.entered = to;
        self.prompt_seen = None;
        if from != to {
            log::debug!(
                "session {:?}: {} -> {} ({why})",
                self.key,
                from.name(),
                to.name()
            );
        }
        let pid = next.agent().map_or(0, |a| a.process.pid());
        self.status
            .pid
            .store(pid, std::sync::atomic::Ordering::SeqCst);
        *lock(&self.status.spawn_id) = next.agent().map(|a| a.spawn_id.clone());
        {
            let mut info = lock(&self.status.info);
            if next.agent().is_none() {
                info.process_started = None;
            }
            info.pending = match &next {
                Phase::Suspended { turn, .. } => turn.pending.clone(),
                _ => Vec::new(),
            };
        }
        if let Some(step) = phase_step(to) {
            self.status.set_step(step);
        }
        self.status.publish(to, false);
        self.phase = next;
    }

    /// Moves the phase out, leaving `Idle` in its place (for transitions that take its
    /// resources apart; the caller then `enter`s the real next phase).
    fn take_phase(&mut self) -> Phase {
        std::mem::replace(&mut self.phase, Phase::Idle)
    }

    /// Does whatever is due now, until nothing more is.
    fn advance(&mut self) {
        loop {
            self.take_adoption();
            self.check_deadlines();
            let progressed = if self.shutdown.is_some() {
                self.advance_shutdown()
            } else {
                self.advance_turns()
            };
            if !progressed || matches!(self.phase, Phase::Retired) {
                return;
            }
        }
    }

    /// Moves turns along; true when something changed.
    fn advance_turns(&mut self) -> bool {
        if matches!(self.phase, Phase::Draining { .. }) && self.check_draining() {
            return true;
        }
        if self.settings.pipeline_turns
            && matches!(self.phase, Phase::Draining { answered: true, .. })
            && (self.waiting.is_some() || !self.turns.is_empty())
        {
            self.pipeline_next_turn();
            return true;
        }
        let suspended = matches!(self.phase, Phase::Suspended { .. });
        if self.waiting.is_none()
            && (suspended || matches!(self.phase, Phase::Idle | Phase::Ready { .. }))
        {
            match self.turns.try_recv() {
                Ok(turn) => {
                    // Set before the turn was queued: a standby's first turn is its adopter's.
                    self.take_adoption();
                    self.waiting = Some(turn)
                }
                Err(TryRecvError::Empty) => {}
                // Nobody can send us turns any more: our handle lost the race to be inserted
                // in the table (another request's worker won), or the registry let go of it.
                Err(TryRecvError::Disconnected) => {
                    self.stop_agent("the session's handle is gone");
                    self.enter(Phase::Retired, "the session's handle is gone");
                    return true;
                }
            }
        }
        if suspended && let Some(turn) = self.waiting.take() {
            return self.resume(turn);
        }
        if matches!(self.phase, Phase::Idle | Phase::Ready { .. })
            && let Some(turn) = self.waiting.take()
        {
            return self.try_begin(turn);
        }
        if matches!(self.phase, Phase::Idle) && self.waiting.is_none() && self.prestart {
            self.prestart = false;
            self.start_standby();
            return true;
        }
        if matches!(self.phase, Phase::Idle)
            && self.turns.is_empty()
            && self.supervisor.retire(&self.key, self.id)
        {
            self.enter(Phase::Retired, "no process and nothing queued");
            return true;
        }
        false
    }

    /// Shutting down: fail what has not started, stop the process once no turn is in flight.
    fn advance_shutdown(&mut self) -> bool {
        let shutting_down = || {
            TurnFailure::new(
                FailureKind::ShuttingDown,
                "the bridge is shutting down; retry after it restarts",
            )
        };
        if let Some(turn) = self.waiting.take() {
            self.fail(&turn, shutting_down());
        }
        while let Ok(turn) = self.turns.try_recv() {
            self.fail(&turn, shutting_down());
        }
        // Claude is still finishing an answered turn (its closing model call, its transcript
        // entries): stopping it now can lose that turn from the conversation it resumes after
        // the restart. Let the turn end first (claude's session file says idle, or the
        // draining limit), but not past the shutdown deadline.
        if matches!(self.phase, Phase::Draining { .. })
            && self.shutdown.is_none_or(|d| Instant::now() < d)
            && !self.check_draining()
        {
            return false;
        }
        if matches!(
            self.phase,
            Phase::Idle
                | Phase::Ready { .. }
                | Phase::Resuming { .. }
                | Phase::Draining { .. }
                | Phase::Suspended { .. }
                | Phase::Starting { turn: None, .. }
        ) {
            self.stop_agent("the bridge is shutting down");
            self.enter(Phase::Retired, "shutdown");
            return true;
        }
        false
    }

    /// A turn taken from the queue: skipped if its clients left, failed if it is too old,
    /// else started once a turn slot is free. True unless it went back to waiting.
    fn try_begin(&mut self, turn: Turn) -> bool {
        if let Some(answer) = turn
            .answers
            .iter()
            .find(|a| matches!(a, super::pending::Answer::ToolResult { .. }))
        {
            // Tool results with no suspended turn: their call timed out, was answered, or
            // belongs to another conversation (docs/CLIENT_TOOLS.md).
            let message = format!(
                "no client tool call of this session waits for tool_call_id {}: it was answered already, timed out (tool_result_timeout), or belongs to another conversation; send a new user message instead",
                answer.id()
            );
            self.fail(&turn, TurnFailure::new(FailureKind::BadAnswer, message));
            return true;
        }
        if self.skip_if_abandoned(&turn) {
            return true;
        }
        let deadline = turn.received + self.settings.turn_timeout;
        if Instant::now() >= deadline {
            self.fail(
                &turn,
                TurnFailure::new(
                    FailureKind::Timeout,
                    "no max_concurrent_turns slot freed before turn_timeout",
                ),
            );
            return true;
        }
        match self.settings.turn_slots.try_acquire() {
            Some(slot) => {
                self.begin(turn, TurnSlot(slot), deadline);
                true
            }
            None => {
                self.status
                    .set_step("waiting for a max_concurrent_turns slot");
                self.waiting = Some(turn);
                false
            }
        }
    }

    /// A turn whose clients all left before it started is failed (cancelled), not started.
    fn skip_if_abandoned(&self, turn: &Turn) -> bool {
        if turn.output.abandoned_since().is_none() {
            return false;
        }
        log::info!(
            "session {:?} {}: every client left before the turn started; skipped",
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
        true
    }

    /// What the loop may sleep until.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + MAX_WAIT;
        if self.waiting.is_some() {
            next = next.min(now + TURN_SLOT_RETRY);
        }
        if let Some(shutdown) = self.shutdown {
            next = next.min(shutdown);
        }
        match &self.phase {
            Phase::Starting { deadline, .. } => next.min(*deadline),
            Phase::Busy { turn, .. } => next.min(self.turn_wake_up(turn)),
            Phase::Draining { until, .. } => next.min(*until).min(now + IDLE_FILE_POLL),
            Phase::Resuming { deadline, .. } => next.min(*deadline).min(now + resume::POLL),
            Phase::Suspended { turn, .. } => next.min(turn.deadline),
            Phase::Idle | Phase::Ready { .. } | Phase::Retired => next,
        }
    }

    /// Reacts to one event, by phase.
    fn handle(&mut self, event: Event) {
        match event {
            Event::Control(Control::Shutdown { deadline }) => {
                log::debug!("session {:?}: shutdown requested", self.key);
                self.shutdown = Some(deadline);
            }
            Event::Control(Control::Stop { reason, slot_to }) => self.on_stop(reason, slot_to),
            Event::Control(Control::Attach { link, spawn_id }) => self.on_attach(link, spawn_id),
            Event::Control(Control::TurnEnd {
                spawn_id,
                turn,
                last_assistant_message,
            }) => self.on_turn_end(&spawn_id, turn, last_assistant_message),
            Event::Frame(frame) => self.on_frame(frame),
            Event::ScreenChanged => self.on_screen_changed(),
            Event::AgentExited(how) => self.on_agent_exited(&how),
            Event::ChannelClosed(why) => self.on_channel_closed(&why),
            Event::Tick => {}
        }
    }

    /// The registry claimed this session for stopping (it was idle when it did).
    fn on_stop(
        &mut self,
        reason: super::shared::StopReason,
        slot_to: Option<crossbeam_channel::Sender<ProcessSlot>>,
    ) {
        if let Phase::Ready { .. } = self.phase {
            match reason {
                super::shared::StopReason::IdleKill => METRICS.idle_kills.inc(),
                super::shared::StopReason::Evicted => METRICS.evictions.inc(),
                super::shared::StopReason::Operator => {}
            }
            if let Phase::Ready { agent } = self.take_phase() {
                let slot = self.stop_running(agent, reason.text());
                if let Some(to) = slot_to {
                    // A receiver that gave up drops the slot back into the pool.
                    let _ = to.send(slot);
                }
            }
            self.enter(Phase::Idle, reason.text());
        } else {
            log::debug!(
                "session {:?}: {} ignored in phase {}",
                self.key,
                reason.text(),
                self.phase.name().name()
            );
        }
        // The claim is answered: publish the real phase again.
        self.status.publish(self.phase.name(), true);
    }

    /// Ends a turn with an error: tells its responder, counts it, remembers it for `/v1/sessions`.
    fn fail(&self, turn: &Turn, failure: TurnFailure) {
        metrics::failed(failure.kind.metric_label());
        lock(&self.status.info).last_error = Some(failure.message.clone());
        turn.output.emit(super::turn::TurnEvent::Failed(failure));
    }

    fn screen_tail(&self) -> String {
        self.phase
            .agent()
            .map(|a| a.process.screen_tail(SCREEN_LINES_IN_ERRORS))
            .unwrap_or_default()
    }

    /// Stops a process and closes its link; gives back its slot for the caller to drop or pass on.
    fn stop_running(&mut self, mut agent: Running, why: &str) -> ProcessSlot {
        if let Some(mut link) = agent.link.take() {
            link.close();
        }
        self.frames.clear();
        let pid = agent.process.pid();
        match agent.process.stop(self.settings.stop_grace) {
            Ok(status) => log::info!(
                "session {:?}: stopped pid {pid} ({why}): {status}",
                self.key
            ),
            Err(e) => log::error!(
                "session {:?}: stopping pid {pid} failed ({why}): {e}",
                self.key
            ),
        }
        agent.slot
    }

    /// Stops the process of whatever phase has one (a turn in it, if any, must have been
    /// answered already) and enters `Idle`.
    fn stop_agent(&mut self, why: &str) {
        let agent = match self.take_phase() {
            Phase::Starting { agent, .. }
            | Phase::Ready { agent }
            | Phase::Resuming { agent, .. }
            | Phase::Busy { agent, .. }
            | Phase::Draining { agent, .. }
            | Phase::Suspended { agent, .. } => Some(agent),
            Phase::Idle => None,
            Phase::Retired => {
                self.phase = Phase::Retired;
                return;
            }
        };
        if let Some(agent) = agent {
            drop(self.stop_running(agent, why));
        }
        self.enter(Phase::Idle, why);
    }
}

/// What a worker in `phase` is doing, for thread dumps (None: the caller says it).
fn phase_step(phase: PhaseName) -> Option<&'static str> {
    match phase {
        PhaseName::Idle | PhaseName::Ready => Some("waiting for a turn"),
        PhaseName::Starting => Some("waiting for the channel's hello"),
        PhaseName::Busy => Some("waiting for claude's reply"),
        PhaseName::Draining => Some("waiting for claude to finish the previous turn"),
        PhaseName::Suspended => Some("waiting for the client's answer"),
        PhaseName::Stopping | PhaseName::Retired => None,
    }
}

fn reject_link(mut link: Box<dyn ChannelLink>, spawn_id: &str, why: &str) {
    log::warn!("channel connection for spawn {spawn_id} refused: {why}");
    link.close();
}
