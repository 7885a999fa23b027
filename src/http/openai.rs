//! OpenAI's wire shapes, and nothing else: reading a `chat.completions` request, finding
//! the new turn in it, and writing `chat.completion` / `chat.completion.chunk` objects and
//! `{"error": …}` bodies. No I/O here, so every rule is unit-tested on plain values.

use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// An error as the client sees it: HTTP status plus OpenAI's `{"error": {message, type, code}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429/503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        let kind = match status {
            400 | 404 | 405 | 408 | 413 | 414 | 415 | 431 => "invalid_request_error",
            401 | 403 => "authentication_error",
            429 => "rate_limit_error",
            _ => "server_error",
        };
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// With a `Retry-After` header of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    pub fn body(&self) -> String {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code}})
            .to_string()
    }
}

/// The parts of a chat-completions request the bridge uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// The new user turn: the text of every user message after the last assistant/tool
    /// message, one entry per message. Empty only when the new turn carries `tool` results.
    pub turn_parts: Vec<String>,
    /// Rough size of everything sent, for the usage estimate.
    pub prompt_chars: usize,
}

/// The body of a POST as a JSON object (chat completions and Responses share it), or a 400
/// saying what is wrong with it.
pub fn parse_json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid UTF-8 ({e})")))?;
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request("request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

/// The optional `model` (a string) and `stream` (a boolean, default false) of a request.
pub fn model_and_stream(
    object: &serde_json::Map<String, Value>,
) -> Result<(Option<String>, bool), ApiError> {
    let model = match object.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(ApiError::bad_request("`model` must be a string")),
    };
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("`stream` must be true or false")),
    };
    Ok((model, stream))
}

/// Parses and validates a request body. Every failure is a 400 whose message says what to fix.
pub fn parse_chat_request(body: &[u8]) -> Result<(ChatRequest, Value), ApiError> {
    let object = parse_json_object(body)?;
    let (model, stream) = model_and_stream(&object)?;
    let include_usage = object
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let messages = match object.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err(ApiError::bad_request("`messages` must not be empty")),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`messages` must be an array of message objects",
            ));
        }
        None => return Err(ApiError::bad_request("`messages` is required")),
    };
    let turn_parts = new_turn_parts(messages)?;
    let prompt_chars = body.len();
    Ok((
        ChatRequest {
            model,
            stream,
            include_usage,
            turn_parts,
            prompt_chars,
        },
        Value::Object(object),
    ))
}

/// The new turn is every message after the last `assistant`/`tool` message (docs/HTTP_API.md §6.3):
/// OpenClaw appends an internal-context user message after the real user text, so the last
/// message alone is not the turn. Returns the text of each user message (the caller joins
/// them with a blank line); system and developer messages are not part of the turn. Never
/// empty: a request without new user text is a 400.
pub fn new_turn_parts(messages: &[Value]) -> Result<Vec<String>, ApiError> {
    let mut roles = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        if !m.is_object() {
            return Err(ApiError::bad_request(format!(
                "messages[{i}] must be an object with `role` and `content`, got {}",
                json_kind(m)
            )));
        }
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request(format!("messages[{i}] needs a string `role`")))?;
        if !KNOWN_ROLES.contains(&role) {
            return Err(ApiError::bad_request(format!(
                "messages[{i}].role is {role:?}; use one of {}",
                KNOWN_ROLES.join(", ")
            )));
        }
        roles.push(role);
    }
    let start = new_turn_start(messages);
    let mut parts = Vec::new();
    for (i, m) in messages.iter().enumerate().skip(start) {
        if roles[i] != "user" {
            continue;
        }
        let text = content_text(m.get("content").unwrap_or(&Value::Null))
            .map_err(|e| ApiError::bad_request(format!("messages[{i}].content {e}")))?;
        if !text.trim().is_empty() {
            parts.push(text);
        }
    }
    let answers_tools = messages[start..]
        .iter()
        .any(|m| m.get("role").and_then(Value::as_str) == Some("tool"));
    if parts.is_empty() && !answers_tools {
        return Err(ApiError::bad_request(
            "no user text after the last assistant or tool message: send the new user turn as a `user` message",
        ));
    }
    Ok(parts)
}

/// "a string", "an array", … for error messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The message roles of OpenAI's chat API.
pub const KNOWN_ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Index of the first message of the new turn: the one after the last `assistant`/`tool`
/// message (0 when there is none). Everything before it is the conversation's history.
/// `tool` messages that directly follow the last `assistant` message answer its
/// `tool_calls`: they belong to the new turn (docs/CLIENT_TOOLS.md), so the history ends with
/// that assistant message.
pub fn new_turn_start(messages: &[Value]) -> usize {
    let role = |m: &Value| m.get("role").and_then(Value::as_str).map(str::to_owned);
    let Some(last) = messages
        .iter()
        .rposition(|m| matches!(role(m).as_deref(), Some("assistant" | "tool")))
    else {
        return 0;
    };
    let mut first_tool = last;
    while first_tool > 0 && role(&messages[first_tool]).as_deref() == Some("tool") {
        first_tool -= 1;
    }
    if first_tool < last && role(&messages[first_tool]).as_deref() == Some("assistant") {
        return first_tool + 1;
    }
    last + 1
}

/// A message's text: a string, or an array of content parts whose `text` parts are joined.
pub fn content_text(content: &Value) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for part in parts {
                match part {
                    Value::String(s) => texts.push(s.as_str()),
                    Value::Object(o) => {
                        if let Some(t) = o.get("text").and_then(Value::as_str) {
                            texts.push(t);
                        }
                    }
                    _ => return Err("parts must be objects".into()),
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err("must be a string or an array of content parts".into()),
    }
}

/// A compact rendering of the conversation before the new turn, for a Claude conversation
/// that has to start afresh (its transcript was lost): `User:` / `Assistant:` lines,
/// system messages left out, the oldest part dropped beyond `max_bytes`. None when there is
/// no earlier conversation.
pub fn render_history(messages: &[Value], max_bytes: usize) -> Option<String> {
    let history = &messages[..new_turn_start(messages)];
    if history.is_empty() {
        return None;
    }
    let mut lines = Vec::new();
    for m in history {
        let who = match m.get("role").and_then(Value::as_str) {
            Some("user") => "User",
            Some("assistant") => "Assistant",
            Some("tool") => "Tool result",
            _ => continue,
        };
        let text = content_text(m.get("content").unwrap_or(&Value::Null)).unwrap_or_default();
        if !text.trim().is_empty() {
            lines.push(format!("{who}: {}", text.trim()));
        }
    }
    let mut kept = Vec::new();
    let mut size = 0;
    for line in lines.iter().rev() {
        size += line.len() + 1;
        if size > max_bytes {
            break;
        }
        kept.push(line.as_str());
    }
    kept.reverse();
    if kept.is_empty() {
        return None;
    }
    Some(format!(
        "[The earlier part of this conversation, restored by the bridge because the session had to start afresh:]\n{}\n[End of the earlier conversation. The new message follows.]",
        kept.join("\n")
    ))
}

/// Identity shared by every chunk of one response.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Completion {
    pub fn new(model: &str) -> Self {
        Completion {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_string(),
        }
    }

    /// One `chat.completion.chunk` with the given delta and finish reason.
    pub fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> String {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        })
        .to_string()
    }

    /// The usage chunk sent after the finish chunk when `stream_options.include_usage` is set.
    pub fn usage_chunk(&self, usage: Usage) -> String {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [], "usage": usage.to_json(),
        })
        .to_string()
    }

    /// The whole non-streaming `chat.completion`.
    pub fn full(&self, text: &str, usage: Usage) -> String {
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage.to_json(),
        })
        .to_string()
    }
}

/// Token counts are estimates (about 4 characters per token): Claude's real counts never
/// reach the bridge. Documented in the README.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn estimate(prompt_chars: usize, completion_chars: usize) -> Self {
        Usage {
            prompt_tokens: prompt_chars.div_ceil(4),
            completion_tokens: completion_chars.div_ceil(4),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(messages: Value) -> Result<String, ApiError> {
        new_turn_parts(messages.as_array().unwrap()).map(|parts| parts.join("\n\n"))
    }

    #[test]
    fn turn_is_every_user_message_after_the_last_assistant() {
        let t = turn(json!([
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "new question"},
            {"role": "user", "content": [{"type": "text", "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>x"}]},
        ]))
        .unwrap();
        assert_eq!(t, "new question\n\n<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>x");
    }

    #[test]
    fn first_turn_skips_the_system_prompt_and_tool_results_end_history() {
        assert_eq!(
            turn(json!([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]))
                .unwrap(),
            "hi"
        );
        let t = turn(json!([
            {"role": "user", "content": "a"},
            {"role": "tool", "content": "result"},
            {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "c"}]},
        ]))
        .unwrap();
        assert_eq!(t, "b\nc");
    }

    #[test]
    fn a_request_without_new_user_text_is_refused() {
        let err =
            turn(json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]))
                .unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains("no user text"));
        assert!(
            turn(json!([{"content": "no role"}]))
                .unwrap_err()
                .message
                .contains("messages[0]")
        );
        assert!(
            turn(json!(["hi"]))
                .unwrap_err()
                .message
                .contains("messages[0] must be an object")
        );
        assert!(
            turn(json!([{"role": "bogus", "content": "x"}]))
                .unwrap_err()
                .message
                .contains("messages[0].role is \"bogus\"")
        );
        assert!(
            turn(json!([{"role": "user", "content": 5}]))
                .unwrap_err()
                .message
                .contains("content")
        );
    }

    #[test]
    fn request_validation_names_the_field() {
        let msg = |body: &str| parse_chat_request(body.as_bytes()).unwrap_err().message;
        assert!(msg("{").contains("not valid JSON"));
        assert!(msg("[]").contains("JSON object"));
        assert!(msg(r#"{"model":"m"}"#).contains("`messages` is required"));
        assert!(msg(r#"{"messages":[]}"#).contains("must not be empty"));
        assert!(
            msg(r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#)
                .contains("`stream`")
        );
        assert!(
            parse_chat_request(b"\xff\xfe")
                .unwrap_err()
                .message
                .contains("UTF-8")
        );
        let (req, _) = parse_chat_request(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}],"unknown":1}"#,
        )
        .unwrap();
        assert!(req.stream && req.include_usage);
        assert_eq!(req.turn_parts, vec!["x"]);
    }

    #[test]
    fn history_rendering_keeps_the_recent_exchange_and_skips_the_system_prompt() {
        let messages = json!([
            {"role": "system", "content": "long system prompt"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer one"},
            {"role": "user", "content": "new turn"},
        ]);
        let text = render_history(messages.as_array().unwrap(), 1024).unwrap();
        assert!(
            text.contains("User: first\nAssistant: answer one\n"),
            "{text}"
        );
        assert!(!text.contains("system prompt") && !text.contains("new turn"));
        let small = render_history(messages.as_array().unwrap(), 30).unwrap();
        assert!(
            small.contains("Assistant: answer one") && !small.contains("User: first"),
            "{small}"
        );
        assert!(
            render_history(
                json!([{"role": "user", "content": "only"}])
                    .as_array()
                    .unwrap(),
                1024
            )
            .is_none()
        );
    }

    #[test]
    fn error_body_has_openai_shape() {
        let e = ApiError::new(429, "session_queue_full", "try later");
        let v: Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "try later", "type": "rate_limit_error", "code": "session_queue_full"}})
        );
    }
}
