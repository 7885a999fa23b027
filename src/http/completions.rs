//! `POST /v1/chat/completions`: one responder thread per request.
//!
//! It reads and validates the body (off the acceptor thread, so a slow client delays only
//! itself), resolves the session key, queues the turn on that session, and turns the
//! session's `TurnEvent`s into either an SSE stream or one `chat.completion`. While it waits
//! it sends an empty-content chunk every `heartbeat_interval` (OpenClaw's watchdog counts
//! JSON chunks, not SSE comments). If the client goes away mid-stream, it cancels the turn.
//! A turn that only answers a suspended turn's questions (`yes kqwfz`, or `tool` messages
//! with client tool results) is classified here and an unknown id refused before the response
//! starts (`answers.rs`, docs/PERMISSIONS.md, docs/CLIENT_TOOLS.md); a suspended turn's
//! response ends with its questions (`synthesis_pending`) or its client tool calls
//! (`tool_calls`, `tools.rs`).

use serde_json::json;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;
use tiny_http::Request;

use super::answers::{classify_answers, question_chunk, with_pending};
use super::openai::{ApiError, ChatRequest, Completion, Usage, parse_chat_request, render_history};
use super::openclaw;
use super::params::{Params, ReplyFormat, StopFilter};
use super::prepared::{PreparedTurn, TurnContent, turn_text};
use super::sse::SseStream;
use super::tools;
use super::turn_wait::{Waited, check_format, wait_turn};
use super::{HttpContext, respond_error};
use crate::config::ClientToolsPolicy;
use crate::metrics::{self, METRICS};
use crate::session::SubmitError;
use crate::session::pending::{self, Pending};
use crate::session::registry::SubmittedTurn;
use crate::session::turn::{ClientTools, HistoryRenderer};
use crate::session::worker::MAX_RESTORED_HISTORY_BYTES;

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
    let read = read_json_request(&mut request, &ctx, &mut trim, parse_chat_request);
    let (body, permit, (chat, value)) = match read {
        Ok(read) => read,
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
    let params = match value.as_object().map(super::params::chat_params) {
        Some(Ok(params)) => params,
        Some(Err(error)) => return respond_error(request, &error),
        None => Default::default(),
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
    let received = Instant::now();
    let body_hash = crate::fnv::extend(crate::fnv::OFFSET_BASIS, body.iter().copied());
    let mut prepared = match PreparedTurn::resolve(&ctx, &request, &value, body_hash) {
        Ok(prepared) => prepared,
        Err(error) => return respond_error(request, &error),
    };
    let messages = value
        .get("messages")
        .and_then(|m| m.as_array())
        .map_or(&[][..], Vec::as_slice);
    let tool_results = match tools::tool_results(messages) {
        Ok(results) => results,
        Err(error) => return prepared.refuse(request, &error),
    };
    let marked_retry = openclaw::marks_a_retry(messages);
    let parts = if ctx.strip_openclaw_context {
        openclaw::strip_context(chat.turn_parts.clone())
    } else {
        chat.turn_parts.clone()
    };
    if parts.is_empty() && tool_results.is_empty() {
        let message = "the turn has no user text once OpenClaw's internal context is removed (strip_openclaw_context)";
        return prepared.refuse(request, &ApiError::bad_request(message));
    }
    // `tool` messages answer client tool calls; any text beside them is not passed on (the
    // turn they resume is already running in Claude).
    let answers = if tool_results.is_empty() {
        classify_answers(&parts)
    } else {
        tool_results
            .into_iter()
            .map(|r| pending::Answer::ToolResult {
                call_id: r.call_id,
                content: r.content,
                is_error: r.is_error,
            })
            .collect()
    };
    let instructions = [
        params.format.instruction(),
        tools::choice_instruction(&request_tools.choice, &request_tools.tools),
    ];
    let text = match turn_text(&parts, instructions) {
        Ok(text) => text,
        Err(error) => return prepared.refuse(request, &error),
    };
    // The parsed form is ~20x the body for many small messages: drop it now and keep only
    // the body, parsed again in the rare case the history is needed.
    drop((value, permit));
    let history: HistoryRenderer = Box::new(move || {
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let messages = value.get("messages")?.as_array()?;
        render_history(messages, MAX_RESTORED_HISTORY_BYTES)
    });
    let content = TurnContent {
        text,
        answers,
        history,
        received,
        client_tools: (ctx.client_tools != ClientToolsPolicy::None).then(|| {
            Arc::new(ClientTools {
                tools: request_tools.tools,
                result_timeout: ctx.tool_result_timeout,
            })
        }),
        marked_retry,
        route: "/v1/chat/completions",
        stream: chat.stream,
    };
    // At capacity, with `queue_timeout` set, this request waits for a process to become free
    // or idle instead of answering 429 at once.
    let turn = match prepared.submit(content) {
        Ok(turn) => turn,
        Err(error) => return prepared.refuse(request, &error),
    };
    let key = prepared.key.key.clone();
    let reply = ChatReply::new(&ctx, &chat, params, &key);
    // Run once the reply is known, before its last bytes go out (PreparedTurn::settle).
    reply.send(request, turn, &mut |reply| prepared.settle(reply));
}

/// Answers `request` with the events of `turn` (an answer to a suspended turn's question, from
/// `permissions.rs`), streamed or whole as `chat` asks, with no request parameters and no
/// conversation point to record.
pub(super) fn respond_turn(
    request: Request,
    ctx: &Arc<HttpContext>,
    chat: &ChatRequest,
    turn: SubmittedTurn,
    key: &str,
) {
    ChatReply::new(ctx, chat, Params::default(), key).send(request, turn, &mut |_| {});
}

/// How one chat completion is answered: the request's shape and parameters, and the session
/// it ran on.
struct ChatReply<'a> {
    ctx: &'a Arc<HttpContext>,
    chat: &'a ChatRequest,
    params: Params,
    completion: Completion,
    key: &'a str,
    /// The response's own headers.
    headers: [(&'static str, String); 1],
}

impl<'a> ChatReply<'a> {
    fn new(ctx: &'a Arc<HttpContext>, chat: &'a ChatRequest, params: Params, key: &'a str) -> Self {
        let model = chat.model.clone().unwrap_or_else(|| ctx.models[0].clone());
        ChatReply {
            ctx,
            chat,
            params,
            completion: Completion::new(&model),
            key,
            headers: [("X-Session-Key", key.to_string())],
        }
    }

    /// Streams the turn or answers it whole, as the request asked; `settle` gets the reply the
    /// client gets (None if there is none) before its last bytes go out.
    fn send(&self, request: Request, turn: SubmittedTurn, settle: &mut dyn FnMut(Option<&str>)) {
        if self.chat.stream {
            stream(request, self, turn, settle);
        } else {
            self.respond_whole(request, turn, settle);
        }
    }

    /// Answers with one `chat.completion`; `settle` gets the reply before it is written.
    fn respond_whole(
        &self,
        request: Request,
        turn: SubmittedTurn,
        settle: &mut dyn FnMut(Option<&str>),
    ) {
        let mut answer = Answer::new(request, &self.headers);
        let whole = whole_reply(self.ctx, self.key, &self.params.format, &turn, &mut answer)
            .map(|(text, pending)| (StopFilter::apply(&self.params.stop, &text), pending));
        settle(whole.as_ref().ok().map(|(text, _)| text.as_str()));
        let (text, pending) = match whole {
            Ok(whole) => whole,
            Err(Some(error)) => return answer.fail(&error),
            Err(None) => return,
        };
        let usage = Usage::estimate(self.chat.prompt_chars, text.len());
        let mut body = self.completion.full(&text, usage);
        let calls = tools::calls_of(&pending);
        if calls.len() < pending.len() {
            body = with_pending(body, &pending);
        }
        if !calls.is_empty() {
            body = tools::with_tool_calls(body, &text, &calls);
        }
        if let Err(e) = answer.finish(body, self.ctx.write_deadline) {
            log::info!(
                "{}: client left before the answer was written ({e})",
                turn.id
            );
        }
    }
}

/// The request's headers as (lower-case name, value) pairs.
pub fn lower_case_headers(request: &Request) -> Vec<(String, String)> {
    request
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_string(),
            )
        })
        .collect()
}

/// The body of a JSON request, read and bounded (415 for another content type, 413 over
/// `max_body_bytes`, 400 over `MAX_JSON_CONTAINERS`), and its parsed form from `parse`, with
/// the parse permit it was parsed under (503 after `PARSE_WAIT` without one). `trim` is armed
/// for a large body.
pub(super) fn read_json_request<T>(
    request: &mut Request,
    ctx: &HttpContext,
    trim: &mut TrimOnDrop,
    parse: impl FnOnce(&[u8]) -> Result<T, ApiError>,
) -> Result<(Vec<u8>, Permit<'static>, T), ApiError> {
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
        return Err(ApiError::new(415, "unsupported_media_type", message));
    }
    let body = read_body(request, ctx.max_body_bytes)?;
    if body.len() >= TRIM_AFTER_BYTES {
        trim.arm();
    }
    let containers = count_json_containers(&body);
    if containers > MAX_JSON_CONTAINERS {
        let message = format!(
            "the request body holds more than {MAX_JSON_CONTAINERS} JSON objects and arrays; the bridge accepts at most {MAX_MESSAGES} messages of a few content parts each: send fewer, larger messages"
        );
        return Err(ApiError::bad_request(message));
    }
    let Some(permit) = PARSING.acquire(PARSE_WAIT) else {
        let message =
            format!("{PARSE_PERMITS} request bodies are being parsed already; retry in a second");
        return Err(ApiError::new(503, "busy_parsing", message).retry_after(1));
    };
    let parsed = parse(&body)?;
    Ok((body, permit, parsed))
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

pub(super) struct Permit<'a>(&'a Permits);

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
pub(super) struct TrimOnDrop(bool);

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
pub(super) fn system_prompt_text(messages: &[serde_json::Value]) -> Option<String> {
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

pub(super) fn submit_error(error: SubmitError) -> ApiError {
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

/// Streams the turn; returns the reply text the client got when the turn ended normally.
/// With `stop`, the text ends before the first stop sequence (the turn still runs to its end
/// in Claude); with a JSON `response_format`, the reply is sent as one piece once checked.
/// `settle` gets the reply the client gets (None if there is none) before the stream ends.
fn stream(
    request: Request,
    reply: &ChatReply,
    turn: SubmittedTurn,
    settle: &mut dyn FnMut(Option<&str>),
) {
    let ChatReply {
        ctx,
        chat,
        params,
        completion,
        key,
        headers,
    } = reply;
    let mut sse = match SseStream::start_with_headers(request, headers) {
        Ok(sse) => sse,
        Err(e) => {
            log::info!(
                "session {key:?} {}: client gone before the stream started ({e})",
                turn.id
            );
            turn.cancel.cancel();
            return;
        }
    };
    let opened = sse.event(&completion.chunk(json!({"role": "assistant", "content": ""}), None));
    if opened.is_err() {
        turn.cancel.cancel();
        return;
    }
    let mut sent = String::new();
    let mut stop = StopFilter::new(params.stop.clone());
    let buffered = params.format.is_json();
    let beat = completion.chunk(json!({"content": ""}), None);
    let waited = {
        let sse = std::cell::RefCell::new(&mut sse);
        let sent = std::cell::RefCell::new(&mut sent);
        wait_turn(
            ctx,
            key,
            &turn,
            |piece| {
                if buffered {
                    return Ok(());
                }
                let out = stop.push(piece);
                if out.is_empty() {
                    return Ok(());
                }
                sent.borrow_mut().push_str(&out);
                sse.borrow_mut()
                    .event(&completion.chunk(json!({"content": out}), None))
            },
            || sse.borrow_mut().event(&beat),
        )
    };
    let mut pending = Vec::new();
    let result = (|| -> Result<(String, Instant), Option<ApiError>> {
        let (text, read_at, questions) = match waited {
            Waited::Done {
                text,
                read_at,
                pending,
            } => (text, read_at, pending),
            Waited::Failed(error) => return Err(Some(error)),
            Waited::Gone => return Err(None),
        };
        if buffered {
            let (checked, questions) =
                check_format(ctx, key, &params.format, text, questions, || {
                    sse.event(&beat)
                })?;
            pending = questions;
            let out = StopFilter::apply(&params.stop, &checked);
            sse.event(&completion.chunk(json!({"content": out}), None))
                .map_err(|_| None)?;
            sent = out;
        } else {
            pending = questions;
            let rest = stop.finish();
            if !rest.is_empty() {
                sent.push_str(&rest);
                sse.event(&completion.chunk(json!({"content": rest}), None))
                    .map_err(|_| None)?;
            }
        }
        Ok((sent.clone(), read_at))
    })();
    settle(result.as_ref().ok().map(|(reply, _)| reply.as_str()));
    let finished = match result {
        Ok((reply, read_at)) => (|| -> std::io::Result<()> {
            let calls = tools::calls_of(&pending);
            if calls.len() < pending.len() {
                // A suspended turn: its questions, machine-readable, before the end.
                sse.event(&question_chunk(completion, "", &pending))?;
            }
            let finish = if calls.is_empty() {
                "stop"
            } else {
                // Client tool calls: one chunk carries them whole (docs/CLIENT_TOOLS.md).
                let delta = json!({"tool_calls": tools::tool_calls_json(&calls)});
                sse.event(&completion.chunk(delta, None))?;
                "tool_calls"
            };
            sse.event(&completion.chunk(json!({}), Some(finish)))?;
            if chat.include_usage {
                sse.event(
                    &completion.usage_chunk(Usage::estimate(chat.prompt_chars, reply.len())),
                )?;
            }
            sse.event("[DONE]")?;
            Ok(())
        })()
        .map(|()| Some((reply, read_at))),
        Err(Some(error)) => sse
            .event(&error.body())
            .and_then(|()| sse.event("[DONE]"))
            .map(|()| None),
        Err(None) => return,
    };
    match finished.and_then(|done| sse.finish().map(|()| done)) {
        Ok(Some((reply, read_at))) => {
            METRICS.bridge_outbound.record(read_at.elapsed());
            log::debug!(
                "session {key:?} {}: streamed {} chars",
                turn.id,
                reply.len()
            );
        }
        Ok(None) => {}
        Err(e) => {
            log::info!(
                "session {key:?} {}: client disconnected mid-stream ({e}); cancelling the turn",
                turn.id
            );
            metrics::failed("client_gone");
            turn.cancel.cancel();
        }
    }
}

/// The whole reply of `turn`, checked against `format` (with one repair turn), while `answer`
/// keeps the client's connection alive; with the open questions if the turn was suspended.
pub(super) fn whole_reply(
    ctx: &Arc<HttpContext>,
    key: &str,
    format: &ReplyFormat,
    turn: &SubmittedTurn,
    answer: &mut Answer,
) -> Result<(String, Vec<Pending>), Option<ApiError>> {
    let (text, pending) = match wait_turn(ctx, key, turn, |_| Ok(()), || answer.beat()) {
        Waited::Done {
            text,
            read_at,
            pending,
        } => {
            METRICS.bridge_outbound.record(read_at.elapsed());
            (text, pending)
        }
        Waited::Failed(error) => return Err(Some(error)),
        Waited::Gone => return Err(None),
    };
    check_format(ctx, key, format, text, pending, || answer.beat())
}

/// A non-streamed JSON answer. Until the first heartbeat the status is still open (a quick
/// failure gets its own status); after it, the 200 and a space every heartbeat tell whether
/// the client is still there, so a client that left cancels the turn as a streaming one does.
/// A failure after that point is the OpenAI error object as the body of the 200.
pub(super) struct Answer {
    state: Option<AnswerState>,
    headers: Vec<(&'static str, String)>,
}

enum AnswerState {
    NotStarted(Request),
    Started(SseStream),
}

impl Answer {
    pub(super) fn new(request: Request, headers: &[(&'static str, String)]) -> Self {
        Answer {
            state: Some(AnswerState::NotStarted(request)),
            headers: headers.to_vec(),
        }
    }

    pub(super) fn beat(&mut self) -> std::io::Result<()> {
        let next = match self.state.take() {
            Some(AnswerState::NotStarted(request)) => {
                SseStream::start_json_with_headers(request, &self.headers)?
            }
            Some(AnswerState::Started(mut stream)) => {
                stream.raw(b" ")?;
                stream
            }
            None => return Err(std::io::Error::other("the answer was already written")),
        };
        self.state = Some(AnswerState::Started(next));
        Ok(())
    }

    pub(super) fn fail(mut self, error: &ApiError) {
        match self.state.take() {
            Some(AnswerState::NotStarted(request)) => respond_error(request, error),
            Some(AnswerState::Started(mut stream)) => {
                let _ = stream
                    .raw(error.body().as_bytes())
                    .and_then(|()| stream.finish());
            }
            None => {}
        }
    }

    pub(super) fn finish(
        mut self,
        body: String,
        deadline: std::time::Duration,
    ) -> std::io::Result<()> {
        match self.state.take() {
            Some(AnswerState::NotStarted(request)) => {
                super::respond_bytes_with(
                    request,
                    200,
                    "application/json",
                    body.into_bytes(),
                    None,
                    deadline,
                    &self.headers,
                );
                Ok(())
            }
            Some(AnswerState::Started(mut stream)) => {
                stream.raw(body.as_bytes()).and_then(|()| stream.finish())
            }
            None => Ok(()),
        }
    }
}
