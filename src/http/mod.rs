//! The north side: the OpenAI-compatible HTTP API (docs/HTTP_API.md).
//!
//! tiny_http (vendored, vendor/tiny_http/PATCHES.md) accepts connections and reads request
//! heads on threads of its own, within `max_connections`. The routing thread `http` only
//! takes each request from tiny_http and starts a thread for it: `respond` for a completion,
//! `http-respond` for every other route (API key check, 401/404/405/431 included). So no
//! client, however slow to send or to read, holds the routing thread (docs/RELIABILITY.md,
//! "Front door"). Every response is written under a deadline (`respond_bytes`).

pub mod answers;
pub mod completions;
pub mod cors;
pub mod openai;
pub mod openclaw;
pub mod params;
pub mod permissions;
mod prepared;
pub mod responses;
pub mod sse;
pub mod tools;
pub mod turn_wait;

use serde_json::json;
use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response, Server, ServerOptions};

use crate::hub::constant_time_eq;
use crate::session::Registry;
use openai::ApiError;

/// What the HTTP side needs; built once from the config.
pub struct HttpContext {
    pub registry: Arc<Registry>,
    pub models: Vec<String>,
    pub api_key: Option<String>,
    pub heartbeat_interval: Duration,
    pub max_body_bytes: usize,
    pub fallback_session_key: String,
    /// Conversation matching for clients that send no id (None when `conversation_match` is off).
    pub continuations: Option<crate::session::identity::Continuations>,
    pub strip_openclaw_context: bool,
    /// At capacity, how long a request waits for a free process before 429 (zero: not at all).
    pub queue_timeout: Duration,
    pub system_prompt: crate::config::SystemPromptPolicy,
    /// Longest a whole non-streamed response may take to write (a client that reads slowly
    /// or not at all loses its response, not a thread forever).
    pub write_deadline: Duration,
    /// Which of a request's `tools` Claude may call (docs/CLIENT_TOOLS.md).
    pub client_tools: crate::config::ClientToolsPolicy,
    /// The channel server's MCP name (client tools are `mcp__<name>__client_<tool>`).
    pub channel_name: String,
    pub tool_result_timeout: Duration,
    /// Where session keys are read from (`session_key_sources`, names of `identity::KEY_SOURCES`).
    pub session_key_sources: Vec<String>,
    /// How long an identical request may still attach to a turn that ended (`retry_grace`).
    pub retry_grace: Duration,
    /// `/v1/responses` ids → their sessions (for `previous_response_id`).
    pub responses: responses::ResponseIds,
    /// Each session's last turn failure in full, for `/v1/sessions` after it retired.
    pub recent_errors: turn_wait::RecentErrors,
}

/// Responder threads mostly wait; their stacks stay small.
const RESPONDER_STACK_BYTES: usize = 256 * 1024;

/// Largest request line plus headers (tiny_http answers 414/431 beyond, while reading them).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header lines in one request (431 beyond).
const MAX_HEADERS: usize = 128;

/// The tiny_http server of the bridge: bounded heads and connections, OpenAI-shaped errors.
pub fn server(listener: TcpListener, max_connections: usize) -> std::io::Result<Server> {
    let options = ServerOptions {
        max_connections,
        max_header_bytes: MAX_HEADER_BYTES,
        max_headers: MAX_HEADERS,
        error_body: Some(front_door_error),
        retry_after_secs: 1,
    };
    Server::from_listener_with(listener, None, &options).map_err(std::io::Error::other)
}

/// Bodies of the errors tiny_http answers itself, in OpenAI's shape.
fn front_door_error(status: u16, message: &str) -> (String, Vec<u8>) {
    let code = match status {
        414 => "request_line_too_long",
        431 => "headers_too_large",
        503 => "too_many_connections",
        _ => "invalid_request",
    };
    let body = ApiError::new(status, code, message).body().into_bytes();
    ("application/json".into(), body)
}

/// Runs the routing thread `http` until `stop` is set (it looks at least every 200 ms).
/// Returns with the thread started; the server is dropped (without waiting for anything)
/// when the thread ends.
pub fn spawn_acceptor(
    server: Server,
    ctx: Arc<HttpContext>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    // Requests whose thread could not be started are answered (503) and dropped here, so a
    // slow client never holds the routing thread even then.
    let (reaper_tx, reaper_rx) = crossbeam_channel::unbounded::<Request>();
    let reaper_ctx = ctx.clone();
    std::thread::Builder::new()
        .name("http-reaper".into())
        .stack_size(RESPONDER_STACK_BYTES)
        .spawn(move || {
            for request in reaper_rx {
                let error = ApiError::new(
                    503,
                    "out_of_threads",
                    "the bridge cannot start a thread for this request right now; retry in a second",
                )
                .retry_after(1);
                respond_error_within(request, &error, reaper_ctx.write_deadline.min(Duration::from_secs(5)));
            }
        })?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            let mut spawn_failures = 0u64;
            while !stop.load(Ordering::SeqCst) {
                crate::fault::panic_point();
                match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(request)) => dispatch(request, &ctx, &reaper_tx, &mut spawn_failures),
                    Ok(None) => {}
                    // The patched tiny_http reports no accept errors here (it retries them).
                    Err(e) => {
                        log::warn!("http: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            log::debug!(
                "http: routing stopped ({} connections open)",
                server.num_connections()
            );
        })
}

/// Starts the thread that answers `request`; if no thread can be started, the reaper answers.
fn dispatch(
    request: Request,
    ctx: &Arc<HttpContext>,
    reaper: &crossbeam_channel::Sender<Request>,
    spawn_failures: &mut u64,
) {
    let completion = *request.method() == Method::Post
        && matches!(
            request.url().split('?').next(),
            Some("/v1/chat/completions" | "/v1/responses")
        );
    // The request travels through a channel so that it can be taken back if the spawn fails
    // (std drops a closure it could not run).
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = tx.send(request);
    let (inside, thread_ctx) = (rx.clone(), ctx.clone());
    let spawned = std::thread::Builder::new()
        .name(
            if completion {
                "respond"
            } else {
                "http-respond"
            }
            .into(),
        )
        .stack_size(RESPONDER_STACK_BYTES)
        .spawn(move || {
            if let Ok(request) = inside.try_recv() {
                route(request, &thread_ctx);
            }
        });
    match spawned {
        Ok(_) => {
            if *spawn_failures > 0 {
                log::warn!("http: responder threads start again after {spawn_failures} failures");
                *spawn_failures = 0;
            }
        }
        Err(e) => {
            if *spawn_failures == 0 {
                log::error!(
                    "http: cannot start a responder thread ({e}); answering 503 until it works again (logged once)"
                );
            }
            *spawn_failures += 1;
            if let Ok(request) = rx.try_recv() {
                let _ = reaper.send(request);
            }
        }
    }
}

/// Socket options for every HTTP connection, set on the listener because Linux copies them
/// to each accepted socket (tiny_http gives no access to its connections):
/// - TCP_NODELAY: each SSE event is flushed on its own; without it Nagle's algorithm holds a
///   small write until the previous one is acknowledged, and the client's delayed ACK makes
///   that 40 ms per turn.
/// - SO_RCVTIMEO (`read_timeout`): a client that sends nothing for that long (a slowloris, an
///   idle keep-alive connection) is closed, which also frees the tiny_http thread and the
///   connection slot it held. (It also wakes tiny_http's accept after that long without a
///   connection; the patched accept loop just accepts again.)
/// - SO_SNDTIMEO (`write_timeout`): a client that stops reading fails our writes instead of
///   holding a responder thread forever.
pub fn tune_listener(
    listener: &TcpListener,
    read_timeout: Duration,
    write_timeout: Duration,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: *const libc::c_void, len: usize| {
        // SAFETY: setsockopt on a socket we own with a pointer to a value of `len` bytes.
        let rc = unsafe { libc::setsockopt(fd, level, name, value, len as libc::socklen_t) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let timeval = |d: Duration| libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    let one: libc::c_int = 1;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        (&one as *const libc::c_int).cast(),
        size_of::<libc::c_int>(),
    )?;
    let (read, write) = (timeval(read_timeout), timeval(write_timeout));
    set(
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        (&read as *const libc::timeval).cast(),
        size_of::<libc::timeval>(),
    )?;
    set(
        libc::SOL_SOCKET,
        libc::SO_SNDTIMEO,
        (&write as *const libc::timeval).cast(),
        size_of::<libc::timeval>(),
    )
}

/// Answers one request (on its own thread). The 431 check is a second line behind tiny_http's
/// bound while reading the head (which counts CRLFs and separators a little differently).
fn route(request: Request, ctx: &Arc<HttpContext>) {
    let header_bytes: usize = request.url().len()
        + request
            .headers()
            .iter()
            .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
            .sum::<usize>();
    if header_bytes > MAX_HEADER_BYTES {
        let message = format!(
            "request line and headers are {header_bytes} bytes; the bridge accepts at most {MAX_HEADER_BYTES}"
        );
        return respond_error(request, &ApiError::new(431, "headers_too_large", message));
    }
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    // Browsers send preflights without credentials.
    if method == Method::Options {
        return cors::preflight(request);
    }
    if path != "/healthz" && !authorised(&request, ctx) {
        let error = ApiError::new(
            401,
            "invalid_api_key",
            "missing or wrong API key: send `Authorization: Bearer <key>` with the key the bridge was started with",
        );
        return respond_error(request, &error);
    }
    match (path.as_str(), method) {
        ("/healthz", Method::Get | Method::Head) => {
            // Still 200 when degraded: the bridge serves turns; the problem is for operators.
            let body = match ctx.registry.store().last_error() {
                None => json!({"status": "ok"}),
                Some(error) => json!({"status": "degraded", "session_map_error": error}),
            };
            respond_json(request, 200, body.to_string());
        }
        ("/v1/models", Method::Get) => {
            let data: Vec<_> = ctx
                .models
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "synthesis-bridge"}))
                .collect();
            respond_json(
                request,
                200,
                json!({"object": "list", "data": data}).to_string(),
            );
        }
        (p, Method::Get) if p.starts_with("/v1/models/") => {
            let id = percent_decode(&p["/v1/models/".len()..]);
            match ctx.models.iter().find(|m| **m == id) {
                Some(id) => respond_json(
                    request,
                    200,
                    json!({"id": id, "object": "model", "created": 0, "owned_by": "synthesis-bridge"})
                        .to_string(),
                ),
                None => {
                    let message = format!(
                        "the model {id:?} does not exist; this bridge serves {} (GET /v1/models lists them)",
                        ctx.models.join(", ")
                    );
                    respond_error(request, &ApiError::new(404, "model_not_found", message))
                }
            }
        }
        ("/v1/chat/completions", Method::Post) => completions::handle(request, ctx.clone()),
        ("/v1/responses", Method::Post) => responses::handle(request, ctx.clone()),
        ("/metrics", Method::Get) => {
            let body = crate::metrics::expose(&ctx.registry.gauges());
            let deadline = ctx.write_deadline;
            respond_bytes(
                request,
                200,
                "text/plain; version=0.0.4",
                body.into_bytes(),
                None,
                deadline,
            );
        }
        ("/v1/sessions", Method::Get) => {
            let query = request
                .url()
                .split_once('?')
                .map_or("", |(_, q)| q)
                .to_string();
            match SessionsPage::from_query(&query) {
                Ok(page) => respond_json_within(
                    request,
                    200,
                    sessions_json(ctx, &page).to_string(),
                    ctx.write_deadline,
                ),
                Err(message) => respond_error(request, &ApiError::bad_request(message)),
            }
        }
        ("/v1/debug/threads", Method::Get) => {
            let report = thread_report(&ctx.registry);
            log::info!("thread report requested:\n{report}");
            let deadline = ctx.write_deadline;
            respond_bytes(
                request,
                200,
                "text/plain; charset=utf-8",
                report.into_bytes(),
                None,
                deadline,
            );
        }
        (p, Method::Post) if p.starts_with("/v1/sessions/") && p.contains("/permissions/") => {
            let rest = &p["/v1/sessions/".len()..];
            let (key, id) = rest.rsplit_once("/permissions/").unwrap_or((rest, ""));
            let (key, id) = (percent_decode(key), percent_decode(id));
            permissions::handle(request, ctx.clone(), key, id)
        }
        (p, Method::Delete) if p.starts_with("/v1/sessions/") => {
            let key = percent_decode(&p["/v1/sessions/".len()..]);
            match ctx.registry.stop_session(&key) {
                Ok(()) => respond_json(request, 202, json!({"stopping": key}).to_string()),
                Err(message) if message.starts_with("no session") => {
                    respond_error(request, &ApiError::new(404, "no_such_session", message))
                }
                Err(message) => {
                    respond_error(request, &ApiError::new(409, "session_busy", message))
                }
            }
        }
        (
            "/healthz"
            | "/v1/models"
            | "/v1/chat/completions"
            | "/v1/responses"
            | "/metrics"
            | "/v1/sessions",
            method,
        ) => {
            let message = format!("{method} is not allowed on {path}");
            respond_error(request, &ApiError::new(405, "method_not_allowed", message));
        }
        _ => {
            let message = format!(
                "no route {path}; the bridge serves /v1/chat/completions, /v1/responses, /v1/models, /v1/sessions, /metrics and /healthz"
            );
            respond_error(request, &ApiError::new(404, "not_found", message));
        }
    }
}

/// `GET /v1/sessions?limit=N&after=KEY`: one page of the sessions, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionsPage {
    pub limit: usize,
    pub after: Option<String>,
}

/// Rows in a `/v1/sessions` page unless `limit` says otherwise, and at most.
pub const SESSIONS_PAGE_DEFAULT: usize = 1000;
pub const SESSIONS_PAGE_MAX: usize = 10_000;

impl SessionsPage {
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut page = SessionsPage {
            limit: SESSIONS_PAGE_DEFAULT,
            after: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(&value.replace('+', " "));
            match name {
                "limit" => {
                    page.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=SESSIONS_PAGE_MAX).contains(n))
                        .ok_or_else(|| {
                            format!("`limit` must be a whole number from 1 to {SESSIONS_PAGE_MAX}")
                        })?
                }
                "after" => page.after = Some(value),
                _ => {}
            }
        }
        Ok(page)
    }
}

/// One page of the sessions: live ones and those only in the session map, sorted by key,
/// keys after `page.after`. `has_more` and `last_key` say how to ask for the next page.
fn sessions_json(ctx: &HttpContext, page: &SessionsPage) -> serde_json::Value {
    let live = ctx.registry.snapshot();
    let stored = ctx.registry.store().all();
    let mut keys: Vec<(&str, Option<usize>, Option<usize>)> =
        Vec::with_capacity(live.len() + stored.len());
    let live_index: std::collections::HashMap<&str, usize> = live
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key.as_str(), i))
        .collect();
    for (i, s) in live.iter().enumerate() {
        keys.push((s.key.as_str(), Some(i), None));
    }
    for (i, (key, _)) in stored.iter().enumerate() {
        if !live_index.contains_key(key.as_str()) {
            keys.push((key.as_str(), None, Some(i)));
        }
    }
    keys.retain(|(key, _, _)| page.after.as_deref().is_none_or(|after| *key > after));
    let has_more = keys.len() > page.limit;
    if has_more {
        keys.select_nth_unstable_by(page.limit, |a, b| a.0.cmp(b.0));
        keys.truncate(page.limit);
    }
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let rows: Vec<serde_json::Value> = keys
        .iter()
        .map(|(key, live_at, stored_at)| match (live_at, stored_at) {
            (Some(i), _) => {
                let s = &live[*i];
                let uptime = s
                    .info
                    .process_started
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| d.as_secs());
                json!({
                    "key": s.key, "state": s.phase.name(), "pid": (s.pid != 0).then_some(s.pid),
                    "claude_session": s.info.claude_session, "workspace": s.info.workspace,
                    "uptime_secs": uptime, "turns": s.info.turns, "queued_turns": s.queued,
                    "idle_secs": s.idle_for.as_secs(), "step": s.step, "last_error": s.info.last_error,
                    "pending": s.info.pending, "standby": s.info.standby,
                })
            }
            (None, Some(i)) => {
                let record = &stored[*i].1;
                json!({
                    "key": key, "state": "absent", "pid": null, "claude_session": record.claude_session,
                    "workspace": record.workspace, "turns": record.turns, "queued_turns": 0, "last_used": record.last_used,
                    "last_error": ctx.recent_errors.get(key),
                })
            }
            (None, None) => serde_json::Value::Null,
        })
        .collect();
    let last_key = keys.last().map(|(key, _, _)| *key);
    json!({"object": "list", "data": rows, "has_more": has_more, "last_key": last_key})
}

/// One line per session worker: what it is doing and for how long (also on SIGUSR1).
pub fn thread_report(registry: &crate::session::Registry) -> String {
    let rows = registry.snapshot();
    let mut out = format!("{} session workers\n", rows.len());
    for s in rows {
        let pid = if s.pid == 0 {
            String::from("-")
        } else {
            s.pid.to_string()
        };
        out.push_str(&format!(
            "session:{} state={} pid={pid} queued={} step=\"{}\" for {:.1}s\n",
            crate::logging::printable(&s.key),
            s.phase.name(),
            s.queued,
            s.step,
            s.step_for.as_secs_f64()
        ));
    }
    out
}

/// Decodes `%XX` escapes in a path segment (a session key may hold `:` or `/`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn authorised(request: &Request, ctx: &HttpContext) -> bool {
    let Some(key) = &ctx.api_key else { return true };
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| bearer_token(h.value.as_str()))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), key.as_bytes()))
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 7235 §2.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// How long a small response (an error, a short JSON object) may take to write.
const SMALL_RESPONSE_DEADLINE: Duration = Duration::from_secs(10);

pub fn respond_json(request: Request, status: u16, body: String) {
    respond_json_within(request, status, body, SMALL_RESPONSE_DEADLINE);
}

pub fn respond_json_within(request: Request, status: u16, body: String, deadline: Duration) {
    respond_bytes(
        request,
        status,
        "application/json",
        body.into_bytes(),
        None,
        deadline,
    );
}

pub fn respond_error(request: Request, error: &ApiError) {
    respond_error_within(request, error, SMALL_RESPONSE_DEADLINE);
}

fn respond_error_within(request: Request, error: &ApiError, deadline: Duration) {
    if error.status >= 500 {
        log::warn!("http: {} {}", error.status, error.message);
    }
    let body = error.body().into_bytes();
    respond_bytes(
        request,
        error.status,
        "application/json",
        body,
        error.retry_after,
        deadline,
    );
}

/// Writes a whole response, giving up once `deadline` has passed (each write also fails
/// after the socket's SO_SNDTIMEO): a client that never reads loses its response instead of
/// holding a thread. The request (and its unread body, drained within tiny_http's bound) is
/// dropped on the calling thread, never the routing thread.
pub fn respond_bytes(
    request: Request,
    status: u16,
    content_type: &str,
    body: Vec<u8>,
    retry_after: Option<u64>,
    deadline: Duration,
) {
    respond_bytes_with(
        request,
        status,
        content_type,
        body,
        retry_after,
        deadline,
        &[],
    );
}

/// `respond_bytes` with `extra` headers; the CORS headers for an allowed `Origin` are added.
pub fn respond_bytes_with(
    request: Request,
    status: u16,
    content_type: &str,
    body: Vec<u8>,
    retry_after: Option<u64>,
    deadline: Duration,
    extra: &[(&str, String)],
) {
    let length = body.len();
    let mut headers = vec![
        Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
            .expect("ASCII content type"),
    ];
    for (name, value) in cors::response_headers(&request)
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .chain(extra.iter().map(|(n, v)| (*n, v.as_str())))
    {
        headers.extend(cors::header(name, value));
    }
    if let Some(seconds) = retry_after {
        headers.push(
            Header::from_bytes(&b"Retry-After"[..], seconds.to_string().as_bytes())
                .expect("digits"),
        );
    }
    let reader = DeadlineReader {
        body: std::io::Cursor::new(body),
        deadline: Instant::now() + deadline,
    };
    let response = Response::new(status.into(), headers, reader, Some(length), None);
    if let Err(e) = request.respond(response) {
        log::debug!("http: could not send a {status} response: {e}");
    }
}

/// The body of a response, in pieces, until a deadline (then an error, which ends the write).
struct DeadlineReader {
    body: std::io::Cursor<Vec<u8>>,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read the response within the write deadline",
            ));
        }
        let piece = buf.len().min(16 * 1024);
        self.body.read(&mut buf[..piece])
    }
}
