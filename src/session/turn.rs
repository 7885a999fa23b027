//! One user turn as it travels through the bridge: what the HTTP side hands to a session
//! worker (`Turn`), and what comes back (`TurnEvent`). The channel between them is the only
//! link between a response and a session; nothing else is shared.

use crossbeam_channel::Sender;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

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
    pub events: Sender<TurnEvent>,
    /// Set by the responder when its client went away.
    pub cancelled: Arc<AtomicBool>,
    /// When the HTTP request was parsed (the start of the bridge's own inbound time).
    pub received: Instant,
    pub history: Option<HistoryRenderer>,
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
/// exactly one `Done` or `Failed`.
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
        }
    }
}

/// Why a turn failed; the HTTP side maps each to a status (DESIGN.md §3).
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
}

impl TurnFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        TurnFailure {
            kind,
            message: message.into(),
        }
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
