//! `POST /v1/sessions/<key>/permissions/<id>` `{"behavior": "allow"|"deny"}`: answers a
//! tool-permission question of a suspended turn for programs (people answer `yes <id>` in the
//! chat). The answer resumes the turn like a chat answer does, so this response carries the
//! rest of it: one `chat.completion` (or an SSE stream with `"stream": true`), which may end
//! with the next question. Unknown session or id: 404 naming the open questions.

use serde_json::Value;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;
use tiny_http::Request;

use super::completions::{respond_turn, submit_error};
use super::openai::{ApiError, ChatRequest};
use super::{HttpContext, respond_error};
use crate::session::pending::{Answer, PendingKind};
use crate::session::registry::NewTurn;

/// Largest answer body read.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

pub fn handle(mut request: Request, ctx: Arc<HttpContext>, key: String, id: String) {
    let mut body = Vec::new();
    if let Err(e) = request
        .as_reader()
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut body)
    {
        let error = ApiError::bad_request(format!("could not read the request body: {e}"));
        return respond_error(request, &error);
    }
    let (allow, stream) = match parse_answer(&body) {
        Ok(answer) => answer,
        Err(message) => return respond_error(request, &ApiError::bad_request(message)),
    };
    let open: Vec<String> = ctx
        .registry
        .snapshot()
        .into_iter()
        .find(|s| s.key == key)
        .map(|s| {
            s.info
                .pending
                .into_iter()
                .filter(|p| matches!(p.kind, PendingKind::Permission { .. }))
                .map(|p| p.id)
                .collect()
        })
        .unwrap_or_default();
    if !open.contains(&id) {
        let message = if open.is_empty() {
            format!("session {key:?} has no open permission question")
        } else {
            format!(
                "session {key:?} has no open permission question {id:?}; open: {}",
                open.join(", ")
            )
        };
        return respond_error(request, &ApiError::new(404, "no_such_question", message));
    }
    let word = if allow { "yes" } else { "no" };
    let new_turn = NewTurn {
        content: format!("{word} {id}"),
        received: Instant::now(),
        history: None,
        fingerprint: None,
        marked_retry: false,
        system_prompt: None,
        answers: vec![Answer::Verdict { id, allow }],
        client_tools: None,
        fork_from: None,
    };
    let turn = match ctx.registry.submit(&key, new_turn, ctx.queue_timeout) {
        Ok(turn) => turn,
        Err(error) => return respond_error(request, &submit_error(error)),
    };
    let chat = ChatRequest {
        model: None,
        stream,
        include_usage: false,
        turn_parts: Vec::new(),
        prompt_chars: 0,
    };
    respond_turn(request, &ctx, &chat, turn, &key);
}

/// `{"behavior": "allow"|"deny", "stream": bool?}` → (allow, stream).
pub fn parse_answer(body: &[u8]) -> Result<(bool, bool), String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be JSON like {{\"behavior\": \"allow\"}} ({e})"))?;
    let allow = match value.get("behavior").and_then(Value::as_str) {
        Some("allow") => true,
        Some("deny") => false,
        _ => return Err("`behavior` must be \"allow\" or \"deny\"".into()),
    };
    let stream = match value.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("`stream` must be a boolean".into()),
    };
    Ok((allow, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_allow_or_deny_and_may_ask_for_a_stream() {
        assert_eq!(parse_answer(br#"{"behavior":"allow"}"#), Ok((true, false)));
        assert_eq!(
            parse_answer(br#"{"behavior":"deny","stream":true}"#),
            Ok((false, true))
        );
        assert!(parse_answer(br#"{"behavior":"yes"}"#).is_err());
        assert!(parse_answer(b"allow").is_err());
        assert!(parse_answer(br#"{"behavior":"allow","stream":"no"}"#).is_err());
    }
}
