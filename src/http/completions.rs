//! `POST /v1/chat/completions`: one responder thread per request.
//!
//! It reads and validates the body (off the acceptor thread, so a slow client delays only
//! itself), resolves the session key, queues the turn on that session, and turns the
//! session's `TurnEvent`s into either an SSE stream or one `chat.completion`. While it waits
//! it sends an empty-content chunk every `heartbeat_interval` (OpenClaw's watchdog counts
//! JSON chunks, not SSE comments). If the client goes away mid-stream, it cancels the turn.

use crossbeam_channel::RecvTimeoutError;
use serde_json::json;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;
use tiny_http::Request;

use super::openai::{ApiError, ChatRequest, Completion, Usage, parse_chat_request, render_history};
use super::openclaw;
use super::sse::SseStream;
use super::tools;
use super::{HttpContext, respond_error};
use crate::config::{ClientToolsPolicy, SystemPromptPolicy};
use crate::metrics::{self, METRICS};
use crate::protocol::MAX_TURN_BYTES;
use crate::session::pending::{Answer, Pending, parse_verdicts, question_text};
use crate::session::registry::NewTurn;
use crate::session::registry::SubmittedTurn;
use crate::session::turn::{ClientTools, FailureKind, HistoryRenderer, TurnEvent, TurnFailure};
use crate::session::worker::MAX_RESTORED_HISTORY_BYTES;
use crate::session::{SubmitError, identity};

/// Messages in one request at most (400 beyond).
pub const MAX_MESSAGES: usize = 10_000;
/// JSON objects and arrays in one body at most, counted before parsing (400 beyond): this
/// bounds the parsed form (~0.7 KB per small object) whatever the body's shape.
pub const MAX_JSON_CONTAINERS: usize = 50_000;
/// Bodies parsed at once at most; the others wait up to `PARSE_WAIT`, then get 503.
const PARSE_PERMITS: usize = 4;
const PARSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// After a body at least this large, freed memory is handed back to the OS.
const TRIM_AFTER_BYTES: usize = 1 << 20;

static PARSING: Permits = Permits::new(PARSE_PERMITS);

pub fn handle(mut request: Request, ctx: Arc<HttpContext>) {
    // Declared first, dropped last: once the body and its parsed form are gone.
    let mut trim = TrimOnDrop::default();
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.to_string());
    if let Some(content_type) = content_type
        && !is_json_media_type(&content_type)
    {
        let message =
            format!("Content-Type is {content_type:?}; send the request body as application/json");
        return respond_error(
            request,
            &ApiError::new(415, "unsupported_media_type", message),
        );
    }
    let body = match read_body(&mut request, ctx.max_body_bytes) {
        Ok(body) => body,
        Err(error) => return respond_error(request, &error),
    };
    if body.len() >= TRIM_AFTER_BYTES {
        trim.arm();
    }
    let containers = count_json_containers(&body);
    if containers > MAX_JSON_CONTAINERS {
        let message = format!(
            "the request body holds more than {MAX_JSON_CONTAINERS} JSON objects and arrays; the bridge accepts at most {MAX_MESSAGES} messages of a few content parts each: send fewer, larger messages"
        );
        return respond_error(request, &ApiError::bad_request(message));
    }
    let Some(permit) = PARSING.acquire(PARSE_WAIT) else {
        let message =
            format!("{PARSE_PERMITS} request bodies are being parsed already; retry in a second");
        return respond_error(
            request,
            &ApiError::new(503, "busy_parsing", message).retry_after(1),
        );
    };
    let (chat, value) = match parse_chat_request(&body) {
        Ok(parsed) => parsed,
        Err(error) => return respond_error(request, &error),
    };
    let empty = serde_json::Map::new();
    let request_tools = match tools::parse_request_tools(
        value.as_object().unwrap_or(&empty),
        &ctx.client_tools,
        &ctx.channel_name,
    ) {
        Ok(parsed) => parsed,
        Err(error) => return respond_error(request, &error),
    };
    let message_count = value
        .get("messages")
        .and_then(|m| m.as_array())
        .map_or(0, Vec::len);
    if message_count > MAX_MESSAGES {
        drop((value, permit));
        let message = format!(
            "`messages` has {message_count} entries; the bridge accepts at most {MAX_MESSAGES} (the new turn and the history it continues)"
        );
        return respond_error(request, &ApiError::bad_request(message));
    }
    let received = Instant::now();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    let key = match identity::resolve(
        &headers,
        &value,
        &ctx.fallback_session_key,
        ctx.continuations.as_ref(),
    ) {
        Ok(key) => key,
        Err(message) => return respond_error(request, &ApiError::bad_request(message)),
    };
    name_this_thread(&format!("respond:{}", key.key));
    // Only sessions found by conversation matching need the chain their next request will show.
    let chain_before_reply = matches!(key.source, "conversation-continuation" | "new-conversation")
        .then(|| {
            let messages = value
                .get("messages")
                .and_then(|m| m.as_array())
                .map_or(&[][..], Vec::as_slice);
            identity::conversation_hash(identity::CHAIN_START, messages)
        });
    let messages = value
        .get("messages")
        .and_then(|m| m.as_array())
        .map_or(&[][..], Vec::as_slice);
    let tool_results = match tools::tool_results(messages) {
        Ok(results) => results,
        Err(error) => return respond_error(request, &error),
    };
    let fingerprint = openclaw::retry_fingerprint(messages);
    let marked_retry = openclaw::marks_a_retry(messages);
    let system_prompt = match ctx.system_prompt {
        SystemPromptPolicy::Ignore => None,
        SystemPromptPolicy::Append => system_prompt_text(messages).map(Arc::from),
    };
    let parts = if ctx.strip_openclaw_context {
        openclaw::strip_context(chat.turn_parts.clone())
    } else {
        chat.turn_parts.clone()
    };
    if parts.is_empty() && tool_results.is_empty() {
        let message = "the turn has no user text once OpenClaw's internal context is removed (strip_openclaw_context)";
        return respond_error(request, &ApiError::bad_request(message));
    }
    // `tool` messages answer client tool calls; any text beside them is not passed on (the
    // turn they resume is already running in Claude).
    let answers = if tool_results.is_empty() {
        classify_answers(&parts)
    } else {
        tool_results
            .into_iter()
            .map(|r| Answer::ToolResult {
                call_id: r.call_id,
                content: r.content,
                is_error: r.is_error,
            })
            .collect()
    };
    let mut content = parts.join("\n\n");
    if let Some(instruction) =
        tools::choice_instruction(&request_tools.choice, &request_tools.tools)
    {
        content = format!("{content}\n\n{instruction}");
    }
    if content.len() > MAX_TURN_BYTES {
        let message = format!(
            "the new turn's text is {} bytes; the bridge passes at most {MAX_TURN_BYTES} bytes to Claude in one turn",
            content.len()
        );
        return respond_error(request, &ApiError::new(413, "turn_too_large", message));
    }
    // The parsed form is ~20x the body for many small messages: drop it now and keep only
    // the body, parsed again in the rare case the history is needed.
    drop((value, permit));
    let history: HistoryRenderer = Box::new(move || {
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let messages = value.get("messages")?.as_array()?;
        render_history(messages, MAX_RESTORED_HISTORY_BYTES)
    });
    let new_turn = NewTurn {
        content,
        received,
        history: Some(history),
        fingerprint,
        marked_retry,
        system_prompt,
        client_tools: (ctx.client_tools != ClientToolsPolicy::None).then(|| {
            Arc::new(ClientTools {
                tools: request_tools.tools,
                result_timeout: ctx.tool_result_timeout,
            })
        }),
        answers,
    };
    // At capacity, with `queue_timeout` set, this request waits for a process to become free
    // or idle instead of answering 429 at once.
    let turn = match ctx.registry.submit(&key.key, new_turn, ctx.queue_timeout) {
        Ok(turn) => turn,
        Err(error) => return respond_error(request, &submit_error(error)),
    };
    log::debug!(
        "session {:?} {}: queued (key from {}, stream={})",
        key.key,
        turn.id,
        key.source,
        chat.stream
    );
    let model = chat.model.clone().unwrap_or_else(|| ctx.models[0].clone());
    let completion = Completion::new(&model);
    // Remembered before the response's last bytes go out: a client that answers at once
    // (a tool loop sending its results) must find the session by this reply.
    let remember = |reply: &str| {
        if let (Some(continuations), Some(chain)) = (&ctx.continuations, chain_before_reply) {
            continuations.remember(identity::chain(chain, "assistant", reply), &key.key);
        }
    };
    if chat.stream {
        stream(request, &ctx, &chat, &completion, turn, &key.key, &remember);
    } else {
        respond_whole(request, &ctx, &chat, &completion, turn, &remember);
    }
}

/// The answers to a suspended turn's questions in the new turn, when it holds nothing else
/// (session/pending.rs): a person's `yes kqwfz` (OpenClaw's timestamp prefix allowed).
/// Empty for an ordinary turn.
pub fn classify_answers(parts: &[String]) -> Vec<Answer> {
    let text: Vec<&str> = parts
        .iter()
        .map(|p| openclaw::strip_timestamp(p).trim())
        .collect();
    parse_verdicts(&text.join("\n")).unwrap_or_default()
}

/// The machine-readable form of a suspended turn's questions, added to the chunk (or
/// message) that carries their text.
pub fn pending_json(pending: &[Pending]) -> serde_json::Value {
    serde_json::to_value(pending).expect("pending questions always serialise")
}

/// `Content-Type` names exactly the media type `application/json` (parameters such as
/// `; charset=utf-8` allowed; `application/jsonp` or `application/json-seq` are not JSON).
pub fn is_json_media_type(value: &str) -> bool {
    let media_type = value.split(';').next().unwrap_or("").trim();
    media_type.eq_ignore_ascii_case("application/json")
}

/// Objects and arrays in a JSON text, counted without parsing it (brackets inside strings
/// are skipped). An upper bound on the work and memory a parse of it takes.
pub fn count_json_containers(body: &[u8]) -> usize {
    let (mut count, mut in_string, mut escaped) = (0, false, false);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'{' || b == b'[' {
            count += 1;
        }
    }
    count
}

/// A counting semaphore; a permit is released when its guard drops.
struct Permits {
    free: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

struct Permit<'a>(&'a Permits);

impl Permits {
    const fn new(n: usize) -> Self {
        Permits {
            free: std::sync::Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    fn acquire(&self, wait: std::time::Duration) -> Option<Permit<'_>> {
        let deadline = Instant::now() + wait;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            let left = deadline.checked_duration_since(Instant::now())?;
            free = self
                .freed
                .wait_timeout(free, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *free -= 1;
        Some(Permit(self))
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// Makes glibc give large freed blocks back at once: without fixed thresholds it raises its
/// mmap threshold to the largest block freed (an 8 MB body), after which such blocks and the
/// top of each thread's heap stay resident after a burst (`malloc_trim` does not shrink the
/// top of a thread's heap). Called once at start-up.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before the threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

/// Large bodies being handled now; the last one to finish trims.
static LARGE_BODIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Once armed, hands freed heap memory back to the OS on drop, when it is the last large body
/// in flight (glibc keeps freed memory in per-thread arenas otherwise, so RSS stayed near its
/// peak after a burst of large bodies; trimming while others still hold theirs would miss
/// them).
#[derive(Default)]
struct TrimOnDrop(bool);

impl TrimOnDrop {
    fn arm(&mut self) {
        if !self.0 {
            self.0 = true;
            LARGE_BODIES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for TrimOnDrop {
    fn drop(&mut self) {
        if self.0 && LARGE_BODIES.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
            unsafe {
                libc::malloc_trim(0)
            };
            log::debug!("http: freed memory handed back after large request bodies");
        }
    }
}

/// Renames the calling thread for the OS (`/proc/<pid>/task/*/comm`, gdb, top), which keeps
/// 15 bytes: `respond:agent:m…`. The responder learns its session key only after reading the
/// request, after it was spawned as `respond`.
fn name_this_thread(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer.
    unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Reads the body up to `limit` bytes; a declared or actual larger body is a 413 and is not
/// read to the end.
fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "request_too_large",
            format!("request body is larger than max_body_bytes ({limit} bytes)"),
        )
    };
    if request.body_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0).min(limit));
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ApiError::new(
                408,
                "request_timeout",
                "the request body did not arrive within client_read_timeout; send it in one go",
            ),
            _ => ApiError::bad_request(format!("could not read the request body: {e}")),
        })?;
    if body.len() > limit {
        return Err(too_large());
    }
    Ok(body)
}

/// The client's system prompt: its system and developer messages, joined.
fn system_prompt_text(messages: &[serde_json::Value]) -> Option<String> {
    let parts: Vec<String> = messages
        .iter()
        .filter(|m| {
            matches!(
                m.get("role").and_then(|r| r.as_str()),
                Some("system" | "developer")
            )
        })
        .filter_map(|m| super::openai::content_text(m.get("content")?).ok())
        .filter(|t| !t.trim().is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

fn submit_error(error: SubmitError) -> ApiError {
    match error {
        SubmitError::QueueFull { limit } => ApiError::new(
            429,
            "session_queue_full",
            format!("this session already has {limit} turns waiting; retry when one has finished"),
        ),
        SubmitError::AtCapacity {
            max_processes,
            retry_after_secs,
        } => {
            let mut error = ApiError::new(
                429,
                "at_capacity",
                format!(
                    "all {max_processes} claude processes (max_processes) are busy with turns; retry in {retry_after_secs}s"
                ),
            );
            error.retry_after = Some(retry_after_secs);
            error
        }
        SubmitError::ShuttingDown => ApiError::new(
            503,
            "shutting_down",
            "the bridge is shutting down; retry shortly",
        ),
        SubmitError::Internal(message) => ApiError::new(500, "internal_error", message),
    }
}

fn failure_error(failure: &TurnFailure) -> ApiError {
    let (status, code) = match failure.kind {
        FailureKind::AgentUnavailable => (503, "agent_unavailable"),
        FailureKind::AgentDied => (502, "agent_died"),
        FailureKind::Timeout => (504, "turn_timeout"),
        FailureKind::ShuttingDown => (503, "shutting_down"),
        FailureKind::Cancelled => (500, "cancelled"),
        FailureKind::BadAnswer => (400, "unknown_question_id"),
        FailureKind::PermissionBlocked => (409, "permission_relay_off"),
    };
    ApiError::new(status, code, failure.message.clone())
}

fn worker_vanished() -> ApiError {
    ApiError::new(
        500,
        "session_worker_failed",
        "the session's worker ended unexpectedly (see the bridge log); retry",
    )
}

/// Streams the turn; returns the whole reply text when the turn ended normally.
fn stream(
    request: Request,
    ctx: &HttpContext,
    chat: &ChatRequest,
    completion: &Completion,
    turn: SubmittedTurn,
    key: &str,
    remember: &dyn Fn(&str),
) -> Option<String> {
    let mut sse = match SseStream::start(request) {
        Ok(sse) => sse,
        Err(e) => {
            log::info!(
                "session {key:?} {}: client gone before the stream started ({e})",
                turn.id
            );
            turn.cancel.cancel();
            return None;
        }
    };
    let mut reply = String::new();
    let mut completed: Option<Instant> = None;
    let result = (|| -> std::io::Result<()> {
        sse.event(&completion.chunk(json!({"role": "assistant", "content": ""}), None))?;
        loop {
            match turn.events.recv_timeout(ctx.heartbeat_interval) {
                Ok(TurnEvent::Text { text, .. }) => {
                    // Separate consecutive replies (progress, then the answer) with a blank line.
                    let content = if reply.is_empty() {
                        text
                    } else {
                        format!("\n\n{text}")
                    };
                    reply.push_str(&content);
                    sse.event(&completion.chunk(json!({"content": content}), None))?;
                }
                Ok(TurnEvent::Done(read_at)) => {
                    remember(&reply);
                    sse.event(&completion.chunk(json!({}), Some("stop")))?;
                    if chat.include_usage {
                        sse.event(
                            &completion
                                .usage_chunk(Usage::estimate(chat.prompt_chars, reply.len())),
                        )?;
                    }
                    completed = Some(read_at);
                    break;
                }
                Ok(TurnEvent::Suspended(pending)) => {
                    // The question ends this response normally; the answer comes in the
                    // session's next request, which gets the rest of the turn.
                    let calls = tools::calls_of(&pending);
                    let text = question_text(&pending);
                    if !text.is_empty() || calls.is_empty() {
                        let content = if reply.is_empty() {
                            text
                        } else {
                            format!("\n\n{text}")
                        };
                        reply.push_str(&content);
                        let chunk = completion.chunk(json!({"content": content}), None);
                        let mut chunk: serde_json::Value =
                            serde_json::from_str(&chunk).expect("chunks are JSON");
                        chunk["synthesis_pending"] = pending_json(&pending);
                        sse.event(&chunk.to_string())?;
                    }
                    let finish = if calls.is_empty() {
                        "stop"
                    } else {
                        // Client tool calls: one chunk carries them whole (docs/CLIENT_TOOLS.md).
                        let delta = json!({"tool_calls": tools::tool_calls_json(&calls)});
                        sse.event(&completion.chunk(delta, None))?;
                        "tool_calls"
                    };
                    remember(&reply);
                    sse.event(&completion.chunk(json!({}), Some(finish)))?;
                    if chat.include_usage {
                        sse.event(
                            &completion
                                .usage_chunk(Usage::estimate(chat.prompt_chars, reply.len())),
                        )?;
                    }
                    completed = Some(Instant::now());
                    break;
                }
                Ok(TurnEvent::Failed(failure)) => {
                    log::warn!("session {key:?} {}: failed: {}", turn.id, failure.message);
                    sse.event(&failure_error(&failure).body())?;
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {
                    METRICS.heartbeats.inc();
                    sse.event(&completion.chunk(json!({"content": ""}), None))?;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    sse.event(&worker_vanished().body())?;
                    break;
                }
            }
        }
        sse.event("[DONE]")
    })();
    match result.and_then(|()| sse.finish()) {
        Ok(()) => {
            let read_at = completed?;
            METRICS.bridge_outbound.record(read_at.elapsed());
            log::debug!(
                "session {key:?} {}: streamed {} chars",
                turn.id,
                reply.len()
            );
            Some(reply)
        }
        Err(e) => {
            log::info!(
                "session {key:?} {}: client disconnected mid-stream ({e}); cancelling the turn",
                turn.id
            );
            metrics::failed("client_gone");
            turn.cancel.cancel();
            None
        }
    }
}

/// Answers with one `chat.completion`; returns the reply text when the turn ended normally.
fn respond_whole(
    request: Request,
    ctx: &HttpContext,
    chat: &ChatRequest,
    completion: &Completion,
    turn: SubmittedTurn,
    remember: &dyn Fn(&str),
) -> Option<String> {
    // Until the first heartbeat the status is still open (a quick failure gets its own
    // status); after it, the 200 and a space every heartbeat tell whether the client is still
    // there, so a client that left cancels the turn as a streaming one does. A failure after
    // that point is the OpenAI error object as the body of the 200.
    enum Answer {
        NotStarted(Request),
        Started(SseStream),
    }
    let mut answer = Answer::NotStarted(request);
    let mut text = String::new();
    let mut suspended: Option<Vec<Pending>> = None;
    let read_at = loop {
        let event = turn.events.recv_timeout(ctx.heartbeat_interval);
        let failure = match event {
            Ok(TurnEvent::Text { text: part, .. }) => {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&part);
                continue;
            }
            Ok(TurnEvent::Done(read_at)) => break read_at,
            Ok(TurnEvent::Suspended(pending)) => {
                let question = question_text(&pending);
                if !text.is_empty() && !question.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&question);
                suspended = Some(pending);
                break Instant::now();
            }
            Ok(TurnEvent::Failed(failure)) => failure_error(&failure),
            Err(RecvTimeoutError::Disconnected) => worker_vanished(),
            Err(RecvTimeoutError::Timeout) => {
                let written = match answer {
                    Answer::NotStarted(request) => {
                        SseStream::start_json(request).map(Answer::Started)
                    }
                    Answer::Started(mut stream) => {
                        stream.raw(b" ").map(|()| Answer::Started(stream))
                    }
                };
                match written {
                    Ok(next) => {
                        METRICS.heartbeats.inc();
                        answer = next;
                        continue;
                    }
                    Err(e) => {
                        log::info!(
                            "{}: client left while waiting for a non-streamed answer ({e}); cancelling the turn",
                            turn.id
                        );
                        metrics::failed("client_gone");
                        turn.cancel.cancel();
                        return None;
                    }
                }
            }
        };
        match answer {
            Answer::NotStarted(request) => respond_error(request, &failure),
            Answer::Started(mut stream) => {
                let _ = stream
                    .raw(failure.body().as_bytes())
                    .and_then(|()| stream.finish());
            }
        }
        return None;
    };
    remember(&text);
    let mut body = completion.full(&text, Usage::estimate(chat.prompt_chars, text.len()));
    if let Some(pending) = suspended {
        let mut value: serde_json::Value = serde_json::from_str(&body).expect("bodies are JSON");
        let calls = tools::calls_of(&pending);
        if calls.is_empty() || calls.len() < pending.len() {
            value["choices"][0]["message"]["synthesis_pending"] = pending_json(&pending);
        }
        if !calls.is_empty() {
            let message = tools::tool_calls_message(&text, &calls);
            value["choices"][0]["message"]["content"] = message["content"].clone();
            value["choices"][0]["message"]["tool_calls"] = message["tool_calls"].clone();
            value["choices"][0]["finish_reason"] = json!("tool_calls");
        }
        body = value.to_string();
    }
    match answer {
        Answer::NotStarted(request) => {
            super::respond_json_within(request, 200, body, ctx.write_deadline)
        }
        Answer::Started(mut stream) => {
            if let Err(e) = stream.raw(body.as_bytes()).and_then(|()| stream.finish()) {
                log::info!(
                    "{}: client left before the answer was written ({e})",
                    turn.id
                );
                return None;
            }
        }
    }
    METRICS.bridge_outbound.record(read_at.elapsed());
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_of_nothing_but_verdicts_carries_answers_and_anything_else_none() {
        let parts = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            classify_answers(&parts(&["[Tue 2026-11-24 10:14 UTC] yes kqwfz"])),
            vec![Answer::Verdict {
                id: "kqwfz".into(),
                allow: true
            }]
        );
        assert_eq!(
            classify_answers(&parts(&["no abcde", "y fghjk"])),
            vec![
                Answer::Verdict {
                    id: "abcde".into(),
                    allow: false
                },
                Answer::Verdict {
                    id: "fghjk".into(),
                    allow: true
                }
            ]
        );
        assert!(classify_answers(&parts(&["yes kqwfz", "and run lint too"])).is_empty());
        assert!(classify_answers(&parts(&["hello"])).is_empty());
    }
}
