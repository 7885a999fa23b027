//! Waiting for a submitted turn on behalf of one HTTP response, shared by
//! `/v1/chat/completions` and `/v1/responses`: the turn's events with a heartbeat callback
//! (a failed write means the client left: the turn is cancelled), the JSON reply check with
//! one repair turn (`response_format`), and the short error a client gets for a failed turn
//! (screen lines stay in the log and in `/v1/sessions`' `last_error`). A suspended turn
//! (docs/PERMISSIONS.md, docs/CLIENT_TOOLS.md) ends the wait like a finished one, its question
//! text as the last piece (client tool calls have none) and its questions in
//! `Waited::Done::pending`.

use crossbeam_channel::RecvTimeoutError;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use super::HttpContext;
use super::openai::ApiError;
use super::params::ReplyFormat;
use crate::metrics::{self, METRICS};
use crate::session::pending::{Pending, question_text};
use crate::session::registry::{NewTurn, SubmittedTurn};
use crate::session::turn::{FailureKind, TurnEvent, TurnFailure};

/// How a wait ended.
pub enum Waited {
    /// The reply (pieces joined by a blank line) and when its end was read. `pending` holds
    /// the questions of a suspended turn (their text is the reply's last piece); empty when
    /// the turn finished.
    Done {
        text: String,
        read_at: Instant,
        pending: Vec<Pending>,
    },
    /// The turn failed; the client should get this error.
    Failed(ApiError),
    /// A write to the client failed: it left, and the turn was cancelled.
    Gone,
}

/// Waits for `turn` of session `key` to end. `on_text` gets each reply piece as sent to the
/// client (a blank line before every piece but the first); `on_beat` runs every
/// `heartbeat_interval` without an event. An error from either cancels the turn. A failure's
/// whole message is kept for `/v1/sessions` (`RecentErrors`); the client gets the short one.
pub fn wait_turn(
    ctx: &HttpContext,
    key: &str,
    turn: &SubmittedTurn,
    mut on_text: impl FnMut(&str) -> io::Result<()>,
    mut on_beat: impl FnMut() -> io::Result<()>,
) -> Waited {
    let mut text = String::new();
    let gone = |e: io::Error| {
        log::info!(
            "{}: client left while waiting for a non-streamed answer or a streamed reply ({e}); cancelling the turn",
            turn.id
        );
        metrics::failed("client_gone");
        turn.cancel.cancel();
        Waited::Gone
    };
    loop {
        match turn.events.recv_timeout(ctx.heartbeat_interval) {
            Ok(TurnEvent::Text { text: part, .. }) => {
                let piece = if text.is_empty() {
                    part
                } else {
                    format!("\n\n{part}")
                };
                text.push_str(&piece);
                if let Err(e) = on_text(&piece) {
                    return gone(e);
                }
            }
            Ok(TurnEvent::Done(read_at)) => {
                return Waited::Done {
                    text,
                    read_at,
                    pending: Vec::new(),
                };
            }
            Ok(TurnEvent::Suspended(pending)) => {
                // The question ends this response normally; the answer comes in the
                // session's next request, which gets the rest of the same claude turn.
                // Client tool calls have no text (they become `tool_calls`).
                let question = question_text(&pending);
                if !question.is_empty() {
                    let piece = if text.is_empty() {
                        question
                    } else {
                        format!("\n\n{question}")
                    };
                    text.push_str(&piece);
                    if let Err(e) = on_text(&piece) {
                        return gone(e);
                    }
                }
                return Waited::Done {
                    text,
                    read_at: Instant::now(),
                    pending,
                };
            }
            Ok(TurnEvent::Failed(failure)) => {
                log::warn!("session {key:?} {}: failed: {}", turn.id, failure.message);
                ctx.recent_errors.note(key, &failure.message);
                return Waited::Failed(failure_error(&failure));
            }
            Err(RecvTimeoutError::Disconnected) => return Waited::Failed(worker_vanished()),
            Err(RecvTimeoutError::Timeout) => {
                METRICS.heartbeats.inc();
                if let Err(e) = on_beat() {
                    return gone(e);
                }
            }
        }
    }
}

/// For a JSON `format`: checks the reply; if it does not pass, sends Claude one repair turn
/// on the same session and checks that. Returns the reply the client gets with the open
/// questions of a suspended turn (a question is passed on unchecked: the turn is not over,
/// and a repair turn now would deny it), or the error. `on_beat` keeps the client's
/// connection alive meanwhile.
pub fn check_format(
    ctx: &Arc<HttpContext>,
    key: &str,
    format: &ReplyFormat,
    reply: String,
    pending: Vec<Pending>,
    mut on_beat: impl FnMut() -> io::Result<()>,
) -> Result<(String, Vec<Pending>), Option<ApiError>> {
    if !pending.is_empty() {
        return Ok((reply, pending));
    }
    let problem = match format.check(&reply) {
        Ok(text) => return Ok((text, pending)),
        Err(problem) => problem,
    };
    log::info!(
        "session {key:?}: the reply is not the JSON asked for ({problem}); asking Claude once to fix it"
    );
    let repair = NewTurn {
        content: format.repair_prompt(&problem),
        received: Instant::now(),
        history: None,
        fingerprint: None,
        marked_retry: false,
        system_prompt: None,
        answers: Vec::new(),
        client_tools: None,
        fork_from: None,
    };
    let turn = ctx
        .registry
        .submit(key, repair, ctx.queue_timeout)
        .map_err(|e| Some(super::completions::submit_error(e)))?;
    match wait_turn(ctx, key, &turn, |_| Ok(()), &mut on_beat) {
        Waited::Done { text, pending, .. } if !pending.is_empty() => Ok((text, pending)),
        Waited::Done { text, .. } => format.check(&text).map(|t| (t, Vec::new())).map_err(|second| {
            Some(ApiError::new(
                502,
                "reply_format_failed",
                format!(
                    "Claude's reply was not the JSON object asked for by response_format, even after one request to fix it ({second}); retry, or relax the schema"
                ),
            ))
        }),
        Waited::Failed(error) => Err(Some(error)),
        Waited::Gone => Err(None),
    }
}

/// The error a client gets for a failed turn: the first sentence of the failure, without the
/// terminal screen lines (which can hold the user's own text); those stay in the bridge log
/// and in `/v1/sessions`' `last_error`.
pub fn failure_error(failure: &TurnFailure) -> ApiError {
    let (status, code) = match failure.kind {
        FailureKind::AgentUnavailable => (503, "agent_unavailable"),
        FailureKind::AgentDied => (502, "agent_died"),
        FailureKind::Timeout => (504, "turn_timeout"),
        FailureKind::ShuttingDown => (503, "shutting_down"),
        FailureKind::Cancelled => (500, "cancelled"),
        FailureKind::BadAnswer => (400, "unknown_question_id"),
        FailureKind::PermissionBlocked => (409, "permission_relay_off"),
    };
    ApiError::new(status, code, client_message(&failure.message))
}

/// `message` without screen lines: cut before "Last screen lines:" and at the first line
/// break, bounded; says where the details are when something was cut.
pub fn client_message(message: &str) -> String {
    const MAX: usize = 400;
    let cut_at = [message.find("Last screen lines:"), message.find('\n')]
        .into_iter()
        .flatten()
        .min();
    let mut short = match cut_at {
        Some(at) => message[..at].trim_end().to_string(),
        None => message.to_string(),
    };
    if short.len() > MAX {
        let mut end = MAX;
        while !short.is_char_boundary(end) {
            end -= 1;
        }
        short.truncate(end);
    }
    if short.len() < message.len() {
        short = short.trim_end_matches(['.', ' ', ':']).to_string();
        short.push_str(" (details in the bridge log and in GET /v1/sessions `last_error`)");
    }
    short
}

/// The whole message of each session's last failed turn (screen lines included), for
/// `/v1/sessions`' `last_error` once the session has retired. Bounded; oldest forgotten first.
#[derive(Default)]
pub struct RecentErrors {
    inner: Mutex<(HashMap<String, String>, VecDeque<String>)>,
}

/// Sessions whose last failure is kept at most.
const RECENT_ERRORS: usize = 1000;

impl RecentErrors {
    pub fn note(&self, key: &str, message: &str) {
        let mut inner = crate::session::shared::lock(&self.inner);
        let (map, order) = &mut *inner;
        if map.insert(key.to_string(), message.to_string()).is_none() {
            order.push_back(key.to_string());
        }
        while order.len() > RECENT_ERRORS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<String> {
        crate::session::shared::lock(&self.inner)
            .0
            .get(key)
            .cloned()
    }
}

pub fn worker_vanished() -> ApiError {
    ApiError::new(
        500,
        "session_worker_failed",
        "the session's worker ended unexpectedly (see the bridge log); retry",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_no_screen_lines() {
        let m = client_message(
            "claude exited mid-turn (exit code 1); the next turn starts it again. Last screen lines:\n> my secret prompt\nError",
        );
        assert!(!m.contains("secret"), "{m}");
        assert!(
            m.starts_with("claude exited mid-turn (exit code 1); the next turn starts it again")
        );
        assert!(m.contains("last_error"), "{m}");
        assert_eq!(client_message("turn timed out"), "turn timed out");
    }
}
