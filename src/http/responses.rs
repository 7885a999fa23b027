//! `POST /v1/responses`: OpenAI's Responses API on the same sessions as chat completions
//! (docs/HTTP_API.md §6.6).
//!
//! The request's `input` (a string, or message items with text content parts) and
//! `instructions` become chat-style messages, so the new turn, the session key (headers,
//! `prompt_cache_key`, conversation matching) and the restored history work as for
//! `/v1/chat/completions`. `previous_response_id` names a session exactly: the response it
//! names is continued when it is its session's latest, and forked (a new conversation
//! starting from that response's history, which the bridge keeps in memory) when it is not.
//! Replies stream as the Responses event sequence, or come back as one `response` object.
//! Answers to a suspended turn's questions (`yes kqwfz`) are classified as for chat
//! completions; a suspended turn's response ends with the question text and carries the
//! questions as `synthesis_pending` (docs/PERMISSIONS.md).

use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tiny_http::Request;

use super::answers::{classify_answers, pending_json};
use super::completions::{Answer, TrimOnDrop, read_json_request, whole_reply};
use super::openai::{self, ApiError, KNOWN_ROLES, new_turn_parts, render_history};
use super::params::{ReplyFormat, reply_format};
use super::prepared::{PreparedTurn, TurnContent, turn_text};
use super::sse::SseStream;
use super::turn_wait::{Waited, check_format, wait_turn};
use super::{HttpContext, respond_error};
use crate::metrics::METRICS;
use crate::session::identity;
use crate::session::pending::Pending;
use crate::session::worker::MAX_RESTORED_HISTORY_BYTES;

/// Responses remembered for `previous_response_id` at most (oldest forgotten first).
const REMEMBERED: usize = 10_000;
/// Text kept per remembered turn and reply (for a fork's restored history).
const KEPT_TEXT: usize = 16 * 1024;

/// `/v1/responses` ids → the session, the turn and the reply, in memory only (`store` does
/// not change that; nothing is written to disk).
#[derive(Default)]
pub struct ResponseIds {
    inner: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
    /// Session key → its latest response id.
    latest: HashMap<String, String>,
    /// Sessions a request is continuing right now.
    claimed: std::collections::HashSet<String>,
}

struct Entry {
    key: String,
    parent: Option<String>,
    user: String,
    reply: String,
}

/// Where a `previous_response_id` leads.
enum Previous {
    /// Its session's latest response: continue the session (claimed until `record`/release).
    Continue(String),
    /// An earlier response (or one being continued already): a new conversation with this
    /// history (user/assistant messages, oldest first).
    Fork(Vec<Value>),
}

impl ResponseIds {
    fn follow(&self, id: &str) -> Option<Previous> {
        let mut store = crate::session::shared::lock(&self.inner);
        let entry = store.entries.get(id)?;
        let key = entry.key.clone();
        if store.latest.get(&key).map(String::as_str) == Some(id) && !store.claimed.contains(&key) {
            store.claimed.insert(key.clone());
            return Some(Previous::Continue(key));
        }
        let mut pairs = Vec::new();
        let mut size = 0;
        let mut at = Some(id.to_string());
        while let Some(current) = at {
            let Some(e) = store.entries.get(&current) else {
                break;
            };
            size += e.user.len() + e.reply.len();
            if size > MAX_RESTORED_HISTORY_BYTES && !pairs.is_empty() {
                break;
            }
            pairs.push((e.user.clone(), e.reply.clone()));
            at = e.parent.clone();
        }
        let history = pairs
            .into_iter()
            .rev()
            .flat_map(|(user, reply)| {
                [
                    json!({"role": "user", "content": user}),
                    json!({"role": "assistant", "content": reply}),
                ]
            })
            .collect();
        Some(Previous::Fork(history))
    }

    /// Gives back a claim on `key` taken when continuing from `from`, unless the session has
    /// moved on since (`record` ends the claim; a later request may hold a new one).
    fn release(&self, key: &str, from: &str) {
        let mut store = crate::session::shared::lock(&self.inner);
        if store.latest.get(key).map(String::as_str) == Some(from) {
            store.claimed.remove(key);
        }
    }

    fn record(&self, id: &str, key: &str, parent: Option<String>, user: &str, reply: &str) {
        let mut store = crate::session::shared::lock(&self.inner);
        let keep = |t: &str| {
            let mut end = t.len().min(KEPT_TEXT);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t[..end].to_string()
        };
        store.entries.insert(
            id.to_string(),
            Entry {
                key: key.to_string(),
                parent,
                user: keep(user),
                reply: keep(reply),
            },
        );
        store.order.push_back(id.to_string());
        store.latest.insert(key.to_string(), id.to_string());
        store.claimed.remove(key);
        while store.order.len() > REMEMBERED {
            if let Some(old) = store.order.pop_front()
                && let Some(entry) = store.entries.remove(&old)
                && store.latest.get(&entry.key) == Some(&old)
            {
                store.latest.remove(&entry.key);
            }
        }
    }
}

/// Releases a `previous_response_id` claim (session key, the id continued) when the request
/// ends without recording a new response.
struct Claimed<'a>(&'a ResponseIds, String, String);

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        self.0.release(&self.1, &self.2);
    }
}

/// The parts of a Responses request the bridge uses.
struct ResponsesRequest {
    model: Option<String>,
    stream: bool,
    /// Chat-style messages: instructions (as `system`), then the input.
    messages: Vec<Value>,
    previous: Option<String>,
    format: ReplyFormat,
    /// Echoed back in the response object.
    echo: Value,
}

fn parse(body: &[u8]) -> Result<(ResponsesRequest, Value), ApiError> {
    let object = openai::parse_json_object(body)?;
    let (model, stream) = openai::model_and_stream(&object)?;
    let previous = match object.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`previous_response_id` must be the id of an earlier response (resp_…)",
            ));
        }
    };
    let mut messages = Vec::new();
    match object.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(_) => return Err(ApiError::bad_request("`instructions` must be a string")),
    }
    match object.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                messages.push(input_message(i, item)?);
            }
        }
        Some(Value::Array(_)) => return Err(ApiError::bad_request("`input` must not be empty")),
        None | Some(Value::Null) => return Err(ApiError::bad_request("`input` is required")),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`input` must be a string or an array of message items",
            ));
        }
    }
    let format = match object.get("text").and_then(|t| t.get("format")) {
        None | Some(Value::Null) => ReplyFormat::Text,
        Some(f) => reply_format(f, "text.format", true)?,
    };
    let echo = json!({
        "instructions": object.get("instructions").cloned().unwrap_or(Value::Null),
        "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
        "store": object.get("store").cloned().unwrap_or(json!(true)),
        "text": {"format": object.get("text").and_then(|t| t.get("format")).cloned().unwrap_or(json!({"type": "text"}))},
        "previous_response_id": previous,
        "user": object.get("user").cloned().unwrap_or(Value::Null),
        "temperature": object.get("temperature").cloned().unwrap_or(Value::Null),
        "top_p": object.get("top_p").cloned().unwrap_or(Value::Null),
        "max_output_tokens": object.get("max_output_tokens").cloned().unwrap_or(Value::Null),
    });
    let request = ResponsesRequest {
        model,
        stream,
        messages,
        previous,
        format,
        echo,
    };
    Ok((request, Value::Object(object)))
}

/// One `input` item as a chat message: `{role, content}` (with or without `type: "message"`);
/// content a string or parts of type `input_text`/`output_text`/`text` (others are left out).
fn input_message(i: usize, item: &Value) -> Result<Value, ApiError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    if kind != "message" {
        return Err(ApiError::bad_request(format!(
            "input[{i}].type is {kind:?}; the bridge takes message items (role and text content) only"
        )));
    }
    let role = item.get("role").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(format!(
            "input[{i}] needs a string `role` (user, assistant, system or developer)"
        ))
    })?;
    if !KNOWN_ROLES.contains(&role) {
        return Err(ApiError::bad_request(format!(
            "input[{i}].role is {role:?}; use user, assistant, system or developer"
        )));
    }
    let text = match item.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let Some(part_kind) = part.get("type").and_then(Value::as_str) else {
                    return Err(ApiError::bad_request(format!(
                        "input[{i}].content[{j}] needs a `type` (input_text, …)"
                    )));
                };
                if matches!(part_kind, "input_text" | "output_text" | "text") {
                    let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "input[{i}].content[{j}].text must be a string"
                        ))
                    })?;
                    texts.push(text);
                }
            }
            texts.join("\n")
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "input[{i}].content must be a string or an array of content parts"
            )));
        }
    };
    Ok(json!({"role": role, "content": text}))
}

pub fn handle(mut request: Request, ctx: Arc<HttpContext>) {
    let mut trim = TrimOnDrop::default();
    let read = read_json_request(&mut request, &ctx, &mut trim, parse);
    let (body, permit, (req, value)) = match read {
        Ok(read) => read,
        Err(error) => return respond_error(request, &error),
    };
    drop(permit);
    let received = Instant::now();
    let parts = match new_turn_parts(&req.messages) {
        Ok(parts) => parts,
        Err(mut error) => {
            error.message = error.message.replace("messages[", "input[");
            return respond_error(request, &error);
        }
    };
    let answers = classify_answers(&parts);
    let user_text = parts.join("\n\n");
    let text = match turn_text(&parts, [req.format.instruction()]) {
        Ok(text) => text,
        Err(error) => return respond_error(request, &error),
    };
    // The session: `previous_response_id` first, else the chat rules on an equivalent body.
    let mut history_messages = req.messages.clone();
    let body_hash = crate::fnv::extend(crate::fnv::OFFSET_BASIS, body.iter().copied());
    let mut claim = None;
    let named_key = match &req.previous {
        Some(previous) => match ctx.responses.follow(previous) {
            Some(Previous::Continue(key)) => {
                claim = Some(Claimed(&ctx.responses, key.clone(), previous.clone()));
                Some(identity::SessionKey {
                    key,
                    source: "previous_response_id",
                })
            }
            Some(Previous::Fork(history)) => {
                history_messages = history;
                history_messages.extend(req.messages.iter().cloned());
                let key = format!("conv-{}", uuid::Uuid::new_v4().simple());
                log::info!(
                    "conversation {key:?} forks from response {previous:?} (not its session's latest)"
                );
                Some(identity::SessionKey {
                    key,
                    source: "previous_response_id-fork",
                })
            }
            None => {
                let message = format!(
                    "previous_response_id {previous:?} is unknown to this bridge (it keeps the last {REMEMBERED} responses in memory, and forgets them on restart); send the whole conversation as `input` instead"
                );
                return respond_error(
                    request,
                    &ApiError::new(400, "previous_response_not_found", message),
                );
            }
        },
        None => None,
    };
    let prepared = match named_key {
        Some(key) => Ok(PreparedTurn::for_key(&ctx, key, &req.messages, body_hash)),
        None => {
            let mut lookup = json!({"messages": req.messages});
            for field in ["prompt_cache_key", "user", "metadata"] {
                if let Some(v) = value.get(field) {
                    lookup[field] = v.clone();
                }
            }
            PreparedTurn::resolve(&ctx, &request, &lookup, body_hash)
        }
    };
    let mut prepared = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return respond_error(request, &error),
    };
    drop(value);
    let content = TurnContent {
        text,
        answers,
        history: Box::new(move || render_history(&history_messages, MAX_RESTORED_HISTORY_BYTES)),
        received,
        client_tools: None,
        marked_retry: false,
        route: "/v1/responses",
        stream: req.stream,
    };
    let turn = match prepared.submit(content) {
        Ok(turn) => turn,
        Err(error) => return prepared.refuse(request, &error),
    };
    let model = req.model.clone().unwrap_or_else(|| ctx.models[0].clone());
    let shape = Shape {
        id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
        message_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model,
        echo: req.echo.clone(),
        prompt_chars: body.len(),
    };
    drop(body);
    let key = prepared.key.key.clone();
    let previous = req.previous.clone();
    let mut settle = |reply: Option<&str>| {
        prepared.settle(reply);
        let Some(reply) = reply else { return };
        ctx.responses
            .record(&shape.id, &key, previous.clone(), &user_text, reply);
    };
    let headers = [("X-Session-Key", key.clone())];
    if req.stream {
        stream(
            request,
            &ctx,
            &req.format,
            &shape,
            turn,
            &key,
            &headers,
            &mut settle,
        );
    } else {
        let mut answer = Answer::new(request, &headers);
        let whole = whole_reply(&ctx, &key, &req.format, &turn, &mut answer);
        settle(whole.as_ref().ok().map(|(text, _)| text.as_str()));
        match whole {
            Ok((text, pending)) => {
                let body = with_pending(shape.response("completed", Some(&text), None), &pending)
                    .to_string();
                if let Err(e) = answer.finish(body, ctx.write_deadline) {
                    log::info!(
                        "{}: client left before the answer was written ({e})",
                        turn.id
                    );
                }
            }
            Err(Some(error)) => answer.fail(&error),
            Err(None) => {}
        }
    }
    drop(claim);
}

/// A `response` object with a suspended turn's questions added as `synthesis_pending`.
fn with_pending(mut response: Value, pending: &[Pending]) -> Value {
    if !pending.is_empty() {
        response["synthesis_pending"] = pending_json(pending);
    }
    response
}

/// What every event and the final object of one response share.
struct Shape {
    id: String,
    message_id: String,
    created_at: u64,
    model: String,
    echo: Value,
    prompt_chars: usize,
}

impl Shape {
    fn message(&self, status: &str, text: Option<&str>) -> Value {
        let content: Vec<Value> = text
            .map(|t| {
                vec![json!({"type": "output_text", "text": t, "annotations": [], "logprobs": []})]
            })
            .unwrap_or_default();
        json!({"id": self.message_id, "type": "message", "status": status, "role": "assistant", "content": content})
    }

    /// The `response` object (`status` in_progress, completed or failed).
    fn response(&self, status: &str, text: Option<&str>, error: Option<&ApiError>) -> Value {
        let output: Vec<Value> = text
            .map(|t| vec![self.message("completed", Some(t))])
            .unwrap_or_default();
        let usage = text.map(|t| {
            let (input, output) = (self.prompt_chars.div_ceil(4), t.len().div_ceil(4));
            json!({
                "input_tokens": input, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input + output,
            })
        });
        let mut response = json!({
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.model, "output": output, "usage": usage,
            "error": error.map(|e| json!({"code": e.code, "message": e.message})),
            "incomplete_details": null, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        });
        if let (Some(target), Some(echo)) = (response.as_object_mut(), self.echo.as_object()) {
            for (k, v) in echo {
                target.insert(k.clone(), v.clone());
            }
        }
        if status == "completed" {
            response["completed_at"] = json!(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            );
        }
        response
    }
}

/// Numbers the events of one stream.
struct Events<'a> {
    sse: &'a mut SseStream,
    next: u64,
}

impl Events<'_> {
    fn send(&mut self, kind: &str, mut data: Value) -> std::io::Result<()> {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.next);
        self.next += 1;
        self.sse.named_event(kind, &data.to_string())
    }
}

/// Streams the Responses event sequence: `response.created`, `response.in_progress`,
/// `response.output_item.added`, `response.content_part.added`, one
/// `response.output_text.delta` per reply piece (`response.in_progress` again every
/// heartbeat), `response.output_text.done`, `response.content_part.done`,
/// `response.output_item.done`, `response.completed`; a failure is `response.failed`.
#[allow(clippy::too_many_arguments)]
fn stream(
    request: Request,
    ctx: &Arc<HttpContext>,
    format: &ReplyFormat,
    shape: &Shape,
    turn: crate::session::registry::SubmittedTurn,
    key: &str,
    headers: &[(&'static str, String)],
    settle: &mut dyn FnMut(Option<&str>),
) {
    let mut sse = match SseStream::start_with_headers(request, headers) {
        Ok(sse) => sse,
        Err(_) => return turn.cancel.cancel(),
    };
    let item = |status: &str| shape.message(status, None);
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let ids = json!({"item_id": shape.message_id, "output_index": 0, "content_index": 0});
    let with_ids = |extra: Value| {
        let mut v = ids.clone();
        if let (Some(t), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                t.insert(k.clone(), x.clone());
            }
        }
        v
    };
    let in_progress = json!({"response": shape.response("in_progress", None, None)});
    let mut events = Events {
        sse: &mut sse,
        next: 0,
    };
    let opened = events
        .send("response.created", in_progress.clone())
        .and_then(|()| events.send("response.in_progress", in_progress.clone()))
        .and_then(|()| {
            events.send(
                "response.output_item.added",
                json!({"output_index": 0, "item": item("in_progress")}),
            )
        })
        .and_then(|()| {
            events.send(
                "response.content_part.added",
                with_ids(json!({"part": part("")})),
            )
        });
    if opened.is_err() {
        return turn.cancel.cancel();
    }
    let buffered = format.is_json();
    let events = std::cell::RefCell::new(events);
    let waited = wait_turn(
        ctx,
        key,
        &turn,
        |piece| {
            if buffered {
                return Ok(());
            }
            events.borrow_mut().send(
                "response.output_text.delta",
                with_ids(json!({"delta": piece, "logprobs": []})),
            )
        },
        || {
            events
                .borrow_mut()
                .send("response.in_progress", in_progress.clone())
        },
    );
    let mut events = events.into_inner();
    let result = match waited {
        Waited::Done {
            text,
            read_at,
            pending,
        } => {
            METRICS.bridge_outbound.record(read_at.elapsed());
            if buffered {
                check_format(ctx, key, format, text, pending, || {
                    events.send("response.in_progress", in_progress.clone())
                })
                .and_then(|(text, pending)| {
                    events
                        .send(
                            "response.output_text.delta",
                            with_ids(json!({"delta": text, "logprobs": []})),
                        )
                        .map(|()| (text, pending))
                        .map_err(|_| None)
                })
            } else {
                Ok((text, pending))
            }
        }
        Waited::Failed(error) => Err(Some(error)),
        Waited::Gone => Err(None),
    };
    settle(result.as_ref().ok().map(|(text, _)| text.as_str()));
    let written = match result {
        Ok((text, pending)) => events
            .send(
                "response.output_text.done",
                with_ids(json!({"text": text, "logprobs": []})),
            )
            .and_then(|()| {
                events.send(
                    "response.content_part.done",
                    with_ids(json!({"part": part(&text)})),
                )
            })
            .and_then(|()| {
                events.send(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": shape.message("completed", Some(&text))}),
                )
            })
            .and_then(|()| {
                events.send(
                    "response.completed",
                    json!({"response": with_pending(shape.response("completed", Some(&text), None), &pending)}),
                )
            }),
        Err(Some(error)) => events.send(
            "response.failed",
            json!({"response": shape.response("failed", None, Some(&error))}),
        ),
        Err(None) => return,
    };
    if let Err(e) = written.and_then(|()| sse.finish()) {
        log::info!(
            "session {key:?} {}: client left at the end of the stream ({e})",
            turn.id
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_becomes_messages_and_bad_items_are_named() {
        let (r, _) = parse(br#"{"input": "hi", "instructions": "be brief"}"#).unwrap();
        assert_eq!(
            r.messages,
            vec![
                json!({"role": "system", "content": "be brief"}),
                json!({"role": "user", "content": "hi"})
            ]
        );
        let (r, _) = parse(br#"{"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "x"}]}, {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "b"}]}, {"role": "user", "content": "c"}]}"#).unwrap();
        assert_eq!(r.messages[0]["content"], "a");
        assert_eq!(r.messages[1]["role"], "assistant");
        let msg = |b: &str| parse(b.as_bytes()).err().unwrap().message;
        assert!(msg(r#"{"input": [{"type": "function_call_output"}]}"#).contains("input[0].type"));
        assert!(msg(r#"{"input": [{"role": "bogus", "content": "x"}]}"#).contains("input[0].role"));
        assert!(msg(r#"{}"#).contains("`input` is required"));
        assert!(
            msg(r#"{"input": "x", "previous_response_id": 5}"#).contains("previous_response_id")
        );
    }

    #[test]
    fn previous_ids_continue_the_latest_and_fork_from_older_ones() {
        let ids = ResponseIds::default();
        ids.record("r1", "k", None, "u1", "a1");
        ids.record("r2", "k", Some("r1".into()), "u2", "a2");
        assert!(matches!(ids.follow("r2"), Some(Previous::Continue(ref k)) if k == "k"));
        // Claimed: a second continuation of r2 forks with r2's history.
        match ids.follow("r2") {
            Some(Previous::Fork(h)) => assert_eq!(h.len(), 4),
            _ => panic!("expected a fork"),
        }
        ids.release("k", "r2");
        assert!(
            matches!(ids.follow("r2"), Some(Previous::Continue(_))),
            "released"
        );
        ids.record("r3", "k", Some("r2".into()), "u3", "a3");
        ids.release("k", "r2");
        assert!(matches!(ids.follow("r3"), Some(Previous::Continue(_))));
        assert!(
            matches!(ids.follow("r3"), Some(Previous::Fork(_))),
            "a stale release does not free a newer claim"
        );
        match ids.follow("r1") {
            Some(Previous::Fork(h)) => {
                assert_eq!(
                    h,
                    vec![
                        json!({"role": "user", "content": "u1"}),
                        json!({"role": "assistant", "content": "a1"})
                    ]
                )
            }
            _ => panic!("expected a fork"),
        }
        assert!(ids.follow("nope").is_none());
    }
}
