//! One user turn as it travels through the bridge: what the HTTP side hands to a session
//! worker (`Turn`), and what comes back (`TurnEvent`s, through the turn's `TurnOutput`).
//! The output is the only link between responses and a session worker.
//!
//! A `TurnOutput` records the turn's events and fans them out to every response that
//! subscribed: the request that queued the turn, and any retry of it that arrived while it
//! ran or soon after (OpenClaw resends a turn when it gave up waiting). A subscriber that
//! joins late first gets everything recorded so far, so each response sees the whole turn.

use crossbeam_channel::{Receiver, Sender, unbounded};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pending::{Answer, Pending};
use super::shared::SessionStatus;
use crate::poll::Waker;

/// Renders the client's earlier conversation, for the rare turn that must start a fresh
/// Claude conversation (its transcript was lost). Called at most once, only then.
pub type HistoryRenderer = Box<dyn FnOnce() -> Option<String> + Send>;

/// A turn queued on a session.
pub struct Turn {
    /// Unique for the life of the bridge (`turn-<n>`); replies carry it back, so a late reply
    /// of a finished turn can never be taken for the next one's.
    pub id: String,
    pub content: String,
    pub output: Arc<TurnOutput>,
    /// The client's system prompt, when `system_prompt = append`.
    pub system_prompt: Option<Arc<str>>,
    /// When the HTTP request was parsed (the start of the bridge's own inbound time).
    pub received: Instant,
    /// When it was put in the session's queue.
    pub queued_at: Instant,
    pub history: Option<HistoryRenderer>,
    /// Answers to the questions of the session's suspended turn (session/pending.rs); a turn
    /// with answers resumes that turn instead of starting a new one.
    pub answers: Vec<Answer>,
    /// Counts the turn as the session's until it is dropped (see `Admission`).
    pub admission: Admission,
    /// The client tools Claude may call during this turn; None leaves the channel's set as
    /// it is (`client_tools = none`).
    pub client_tools: Option<Arc<ClientTools>>,
    /// Where a new fork branches off (registry.rs `NewTurn::fork_from`).
    pub fork_from: Option<crate::session::identity::ForkSource>,
}

/// The client's tools for one turn (docs/CLIENT_TOOLS.md): what the channel server lists,
/// and how long a call may wait for its result.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTools {
    pub tools: Vec<crate::protocol::ClientTool>,
    pub result_timeout: Duration,
}

/// A turn dropped without an answer (its worker panicked, its queue was dropped) fails its
/// response instead of leaving it waiting: every accepted turn gets exactly one ending.
impl Drop for Turn {
    fn drop(&mut self) {
        if !self.output.has_ended() {
            self.output.emit(TurnEvent::Failed(TurnFailure::new(
                FailureKind::AgentDied,
                "the session's worker crashed or stopped before answering this turn (the bridge log says why); retry",
            )));
        }
    }
}

/// A turn's place in its session's count of accepted, unfinished turns
/// (`SessionStatus::queued`): taken by the registry when it accepts the turn, given back when
/// the turn is dropped, wherever and however that happens.
pub struct Admission {
    status: Arc<SessionStatus>,
}

impl Admission {
    /// Counts a new turn on `status` (the registry does this under its lock).
    pub fn new(status: Arc<SessionStatus>) -> Self {
        status.queued.fetch_add(1, Ordering::SeqCst);
        Admission { status }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.status.queued.fetch_sub(1, Ordering::SeqCst);
        self.status.touch();
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("id", &self.id)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// What a session worker reports about a turn, in order: any number of `Text`, then
/// exactly one `Done`, `Suspended` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// One `reply` from Claude: progress (`is_final: false`) or the closing one.
    Text {
        text: String,
        is_final: bool,
    },
    /// The turn ended normally; carries when the worker read the frame that ended it (the
    /// start of the bridge's own outbound time).
    Done(Instant),
    /// Claude's turn waits for answers to these questions (it keeps running inside claude):
    /// this response ends normally with them, and a later request of the session carries
    /// the answers and gets the rest of the turn (session/pending.rs).
    Suspended(Vec<Pending>),
    Failed(TurnFailure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl FailureKind {
    /// The label used in metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            FailureKind::AgentUnavailable => "agent_unavailable",
            FailureKind::AgentDied => "agent_died",
            FailureKind::Timeout => "timeout",
            FailureKind::ShuttingDown => "shutting_down",
            FailureKind::Cancelled => "client_gone",
            FailureKind::BadAnswer => "bad_answer",
            FailureKind::PermissionBlocked => "permission_blocked",
        }
    }
}

/// Why a turn failed; the HTTP side maps each to a status (docs/ARCHITECTURE.md, "HTTP").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Claude could not be started or did not become ready (503: a retry may work).
    AgentUnavailable,
    /// Claude or its channel died mid-turn (502).
    AgentDied,
    /// The turn ran past `turn_timeout` (504).
    Timeout,
    /// The bridge is shutting down (503).
    ShuttingDown,
    /// Every client of the turn went away before it could run (nobody sees this).
    Cancelled,
    /// The request answers a question that is not pending (400).
    BadAnswer,
    /// Claude asked for a tool permission that nobody can give (`permission_relay = off`):
    /// the turn was interrupted (409).
    PermissionBlocked,
}

impl TurnFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        TurnFailure {
            kind,
            message: message.into(),
        }
    }
}

struct Subscriber {
    events: Sender<TurnEvent>,
    cancelled: Arc<AtomicBool>,
}

/// The events of one turn, recorded and fanned out to its subscribers.
pub struct TurnOutput {
    pub turn_id: String,
    /// `retry_fingerprint` of the request that queued it, if it had one.
    pub fingerprint: Option<u64>,
    inner: Mutex<OutputState>,
}

struct OutputState {
    events: Vec<TurnEvent>,
    subscribers: Vec<Subscriber>,
    ended: Option<(Instant, bool)>,
    /// When the last subscriber cancelled (None while someone still listens).
    abandoned_at: Option<Instant>,
}

impl std::fmt::Debug for TurnOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnOutput")
            .field("turn_id", &self.turn_id)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl TurnOutput {
    pub fn new(turn_id: String, fingerprint: Option<u64>) -> Self {
        TurnOutput {
            turn_id,
            fingerprint,
            inner: Mutex::new(OutputState {
                events: Vec::new(),
                subscribers: Vec::new(),
                ended: None,
                abandoned_at: None,
            }),
        }
    }

    /// A new subscriber: gets every event so far, then the rest as they come.
    pub fn subscribe(&self) -> (Receiver<TurnEvent>, Arc<AtomicBool>) {
        let (tx, rx) = unbounded();
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut state = crate::session::shared::lock(&self.inner);
        for event in &state.events {
            let _ = tx.send(event.clone());
        }
        if state.ended.is_none() {
            state.subscribers.push(Subscriber {
                events: tx,
                cancelled: cancelled.clone(),
            });
            state.abandoned_at = None;
        }
        (rx, cancelled)
    }

    /// Records an event and sends it to every subscriber still listening.
    pub fn emit(&self, event: TurnEvent) {
        let mut state = crate::session::shared::lock(&self.inner);
        match &event {
            TurnEvent::Done(_) | TurnEvent::Suspended(_) => {
                state.ended = Some((Instant::now(), true))
            }
            TurnEvent::Failed(_) => state.ended = Some((Instant::now(), false)),
            TurnEvent::Text { .. } => {}
        }
        state
            .subscribers
            .retain(|s| s.events.send(event.clone()).is_ok());
        state.events.push(event);
        if state.ended.is_some() {
            state.subscribers.clear();
        }
    }

    /// Since when nobody listens any more (every subscriber cancelled); None while someone does.
    pub fn abandoned_since(&self) -> Option<Instant> {
        let mut state = crate::session::shared::lock(&self.inner);
        let listening = state
            .subscribers
            .iter()
            .any(|s| !s.cancelled.load(Ordering::SeqCst));
        if listening {
            state.abandoned_at = None;
        } else if state.abandoned_at.is_none() {
            state.abandoned_at = Some(Instant::now());
        }
        state.abandoned_at
    }

    /// Whether a retry with `fingerprint` may attach: the same turn, still queued or running,
    /// or (`finished_too`) ended successfully within `window`.
    pub fn accepts_retry(&self, fingerprint: u64, finished_too: bool, window: Duration) -> bool {
        if self.fingerprint != Some(fingerprint) {
            return false;
        }
        match crate::session::shared::lock(&self.inner).ended {
            None => true,
            Some((at, succeeded)) => finished_too && succeeded && at.elapsed() < window,
        }
    }

    pub fn has_ended(&self) -> bool {
        crate::session::shared::lock(&self.inner).ended.is_some()
    }
}

/// The responder's way to tell the worker its client left: set the flag, wake the worker.
#[derive(Debug, Clone)]
pub struct CancelToken {
    pub flag: Arc<AtomicBool>,
    pub waker: Waker,
}

impl CancelToken {
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
}

pub fn next_turn_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("turn-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
