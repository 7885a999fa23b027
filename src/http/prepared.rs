//! A turn built from a request the same way for `/v1/chat/completions` and `/v1/responses`
//! (docs/ARCHITECTURE.md §1): the session it belongs to (resolved from the request, or named by
//! the route), what conversation matching holds for it while it runs
//! (`identity::MatchedTurn`: the claim on the history point, the note for an identical retry,
//! the chain its reply extends), the turn's text and options, and its submission to the
//! registry. Each route keeps only what differs: reading its request's fields and writing its
//! response's shape.

use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use tiny_http::Request;

use super::HttpContext;
use super::answers::check_answers;
use super::completions::{lower_case_headers, submit_error, system_prompt_text};
use super::openai::ApiError;
use super::openclaw;
use crate::config::SystemPromptPolicy;
use crate::protocol::MAX_TURN_BYTES;
use crate::session::identity::{self, MatchedTurn, SessionKey};
use crate::session::pending::Answer;
use crate::session::registry::{NewTurn, SubmittedTurn};
use crate::session::turn::{ClientTools, HistoryRenderer};

/// A request's turn from the moment its session is known until its reply is settled. Built
/// from the request's chat-style messages, so the parsed request can be dropped before the
/// turn is submitted.
pub(super) struct PreparedTurn<'a> {
    ctx: &'a HttpContext,
    pub key: SessionKey,
    matched: Option<MatchedTurn<'a>>,
    fingerprint: Option<u64>,
    system_prompt: Option<Arc<str>>,
    /// Set by `submit`.
    turn_id: Option<String>,
}

/// What a route puts into its turn besides what `PreparedTurn` takes from the messages.
pub(super) struct TurnContent {
    /// The text Claude gets (`turn_text`).
    pub text: String,
    /// Answers to the session's open questions (empty for an ordinary turn).
    pub answers: Vec<Answer>,
    /// The conversation so far, rendered only if the session has to start a new Claude
    /// conversation.
    pub history: HistoryRenderer,
    pub received: Instant,
    pub client_tools: Option<Arc<ClientTools>>,
    /// The request says it is a retry (OpenClaw's retry messages); an identical request
    /// within `retry_grace` counts as one without saying so.
    pub marked_retry: bool,
    /// For the log: the route, and whether the answer streams.
    pub route: &'static str,
    pub stream: bool,
}

impl<'a> PreparedTurn<'a> {
    /// Resolves the session of a request from its headers and `lookup` (a chat-style body:
    /// `messages` and the body fields keys are read from; `identity::resolve_with`).
    /// `body_hash` is the hash of the raw body (an identical body is a retry).
    pub fn resolve(
        ctx: &'a HttpContext,
        request: &Request,
        lookup: &Value,
        body_hash: u64,
    ) -> Result<Self, ApiError> {
        let matching = ctx
            .continuations
            .as_ref()
            .map(|continuations| identity::Matching {
                continuations,
                body_hash,
                retry_grace: ctx.retry_grace,
            });
        let key = identity::resolve_with(
            &lower_case_headers(request),
            lookup,
            &ctx.fallback_session_key,
            matching,
            &ctx.session_key_sources,
        )
        .map_err(ApiError::bad_request)?;
        let messages = lookup
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        Ok(Self::for_key(ctx, key, messages, body_hash))
    }

    /// A turn of the session `key` (resolved, or named by the route) for a request with
    /// these chat-style `messages`. Holds conversation matching's claim, if `resolve` took
    /// one, from here on, so a request refused later gives it back.
    pub fn for_key(
        ctx: &'a HttpContext,
        key: SessionKey,
        messages: &[Value],
        body_hash: u64,
    ) -> Self {
        crate::logging::name_os_thread(&format!("respond:{}", key.key));
        let matched = MatchedTurn::new(
            ctx.continuations.as_ref(),
            &key,
            messages,
            body_hash,
            ctx.retry_grace,
        );
        let system_prompt = match ctx.system_prompt {
            SystemPromptPolicy::Ignore => None,
            SystemPromptPolicy::Append => system_prompt_text(messages).map(Arc::from),
        };
        PreparedTurn {
            ctx,
            key,
            matched,
            fingerprint: openclaw::retry_fingerprint(messages),
            system_prompt,
            turn_id: None,
        }
    }

    /// Checks the turn's answers against the session's open questions (400
    /// `unknown_question_id`) and queues the turn on its session (waiting up to
    /// `queue_timeout` at capacity; 429/503 as `submit_error` says).
    pub fn submit(&mut self, content: TurnContent) -> Result<SubmittedTurn, ApiError> {
        let ctx = self.ctx;
        check_answers(ctx, &self.key.key, &content.answers)
            .map_err(|message| ApiError::new(400, "unknown_question_id", message))?;
        let new_turn = NewTurn {
            content: content.text,
            received: content.received,
            history: Some(content.history),
            fingerprint: self.fingerprint,
            marked_retry: content.marked_retry || self.key.source == "identical-request-retry",
            system_prompt: self.system_prompt.clone(),
            answers: content.answers,
            client_tools: content.client_tools,
            fork_from: ctx
                .continuations
                .as_ref()
                .and_then(|c| c.take_fork(&self.key.key)),
        };
        let turn = ctx
            .registry
            .submit(&self.key.key, new_turn, ctx.queue_timeout)
            .map_err(submit_error)?;
        log::debug!(
            "session {:?} {}: queued from {} (key from {}, stream={})",
            self.key.key,
            turn.id,
            content.route,
            self.key.source,
            content.stream
        );
        self.turn_id = Some(turn.id.clone());
        Ok(turn)
    }

    /// Answers the request with `error`, giving conversation matching's claim back first: a
    /// client that sends its next request as soon as it reads the error must find the
    /// history point free (dropped after the answer, it raced: the next request forked).
    pub fn refuse(self, request: Request, error: &ApiError) {
        drop(self);
        super::respond_error(request, error);
    }

    /// The turn's reply is known (None: it failed or was never given), before its last bytes
    /// go out: conversation matching records it (`MatchedTurn::settle`).
    pub fn settle(&mut self, reply: Option<&str>) {
        if let (Some(matched), Some(turn_id)) = (self.matched.as_mut(), self.turn_id.as_deref()) {
            matched.settle(reply, turn_id);
        }
    }
}

/// A turn's text: the new user messages, blank-line separated, then each instruction the
/// request's options add; 413 `turn_too_large` over `MAX_TURN_BYTES`.
pub(super) fn turn_text(
    parts: &[String],
    instructions: impl IntoIterator<Item = Option<String>>,
) -> Result<String, ApiError> {
    let mut content = parts.join("\n\n");
    for instruction in instructions.into_iter().flatten() {
        content = format!("{content}\n\n{instruction}");
    }
    if content.len() > MAX_TURN_BYTES {
        let message = format!(
            "the new turn's text is {} bytes; the bridge passes at most {MAX_TURN_BYTES} bytes to Claude in one turn",
            content.len()
        );
        return Err(ApiError::new(413, "turn_too_large", message));
    }
    Ok(content)
}
