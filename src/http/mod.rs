//! The north side: the OpenAI-compatible HTTP API (DESIGN.md §3).
//!
//! The acceptor thread `http` takes requests from tiny_http, checks the API key, answers the
//! cheap routes itself (`/healthz`, `/v1/models`) and hands each completion request to a
//! responder thread of its own (`completions`). It never blocks on a client or a session.

pub mod completions;
pub mod openai;
pub mod openclaw;
pub mod sse;

use serde_json::json;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response, Server};

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
}

/// Responder threads mostly wait; their stacks stay small.
const RESPONDER_STACK_BYTES: usize = 256 * 1024;

/// Runs the acceptor until `stop` is set (it looks at least every 500 ms).
///
/// tiny_http accepts on a thread of its own, and the listener's `SO_RCVTIMEO` (see
/// `tune_listener`) would also end that accept after `read_timeout` without a new connection.
/// So the acceptor connects to its own listener (and closes at once) every half
/// `read_timeout` when nothing else came. Should tiny_http's accept end anyway, a new `Server`
/// is started on the same socket; the old one is kept (its connections may still be queued
/// or sending requests) and still read.
pub fn spawn_acceptor(
    listener: TcpListener,
    ctx: Arc<HttpContext>,
    stop: Arc<AtomicBool>,
    read_timeout: Duration,
) -> std::io::Result<JoinHandle<()>> {
    let serve = |listener: &TcpListener| {
        listener
            .try_clone()
            .and_then(|l| Server::from_listener(l, None).map_err(std::io::Error::other))
    };
    let mut server = serve(&listener)?;
    let mut old_servers: Vec<Server> = Vec::new();
    let own = listener.local_addr()?;
    let own = std::net::SocketAddr::new(
        if own.ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            own.ip()
        },
        own.port(),
    );
    let poke_every = (read_timeout / 2).max(Duration::from_millis(100));
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            let mut last_poke = std::time::Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if last_poke.elapsed() >= poke_every {
                    let _ = std::net::TcpStream::connect_timeout(&own, Duration::from_millis(200));
                    last_poke = std::time::Instant::now();
                }
                for old in &old_servers {
                    while let Ok(Some(request)) = old.try_recv() {
                        route(request, &ctx);
                    }
                }
                match server.recv_timeout(Duration::from_millis(500).min(poke_every)) {
                    Ok(Some(request)) => route(request, &ctx),
                    Ok(None) => {}
                    Err(e) => {
                        log::warn!("http: tiny_http stopped accepting ({e}); accepting again");
                        match serve(&listener) {
                            Ok(fresh) => old_servers.push(std::mem::replace(&mut server, fresh)),
                            Err(e) => {
                                log::error!("http: cannot accept on the listener: {e}");
                                std::thread::sleep(Duration::from_millis(500));
                            }
                        }
                    }
                }
            }
        })
}

/// Socket options for every HTTP connection, set on the listener because Linux copies them
/// to each accepted socket (tiny_http gives no access to its connections):
/// - TCP_NODELAY: each SSE event is flushed on its own; without it Nagle's algorithm holds a
///   small write until the previous one is acknowledged, and the client's delayed ACK makes
///   that 40 ms per turn.
/// - SO_RCVTIMEO (`read_timeout`): a client that sends nothing for that long (a slowloris, an
///   idle keep-alive connection) gets a 408 and is closed, which also frees the tiny_http
///   thread it held. (It also ends tiny_http's accept after that long without a connection;
///   `spawn_acceptor` starts it again.)
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

/// Largest request line plus headers the bridge serves. tiny_http has already read them by the
/// time the bridge sees the request (it enforces no limit itself: docs/RELIABILITY.md), so
/// this refuses the request with a clear 431 rather than bounding the read.
const MAX_HEADER_BYTES: usize = 64 * 1024;

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
        ("/v1/chat/completions", Method::Post) => {
            let ctx = ctx.clone();
            let spawned = std::thread::Builder::new()
                .name("respond".into())
                .stack_size(RESPONDER_STACK_BYTES)
                .spawn(move || completions::handle(request, ctx));
            if let Err(e) = spawned {
                log::error!("http: cannot start a responder thread: {e}");
            }
        }
        ("/metrics", Method::Get) => {
            let body = crate::metrics::expose(&ctx.registry.gauges());
            let header =
                Header::from_bytes(&b"Content-Type"[..], &b"text/plain; version=0.0.4"[..])
                    .expect("static header");
            let _ = request.respond(Response::from_string(body).with_header(header));
        }
        ("/v1/sessions", Method::Get) => respond_json(request, 200, sessions_json(ctx).to_string()),
        ("/v1/debug/threads", Method::Get) => {
            let report = thread_report(&ctx.registry);
            log::info!("thread report requested:\n{report}");
            let _ = request.respond(Response::from_string(report));
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
            "/healthz" | "/v1/models" | "/v1/chat/completions" | "/metrics" | "/v1/sessions",
            method,
        ) => {
            let message = format!("{method} is not allowed on {path}");
            respond_error(request, &ApiError::new(405, "method_not_allowed", message));
        }
        _ => {
            let message = format!(
                "no route {path}; the bridge serves /v1/chat/completions, /v1/models, /v1/sessions, /metrics and /healthz"
            );
            respond_error(request, &ApiError::new(404, "not_found", message));
        }
    }
}

/// `GET /v1/sessions`: the live sessions, then those only in the session map.
fn sessions_json(ctx: &HttpContext) -> serde_json::Value {
    let live = ctx.registry.snapshot();
    let mut rows: Vec<serde_json::Value> = live
        .iter()
        .map(|s| {
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
            })
        })
        .collect();
    for (key, record) in ctx.registry.store().all() {
        if !live.iter().any(|s| s.key == key) {
            rows.push(json!({
                "key": key, "state": "absent", "pid": null, "claude_session": record.claude_session,
                "workspace": record.workspace, "turns": record.turns, "queued_turns": 0, "last_used": record.last_used,
            }));
        }
    }
    json!({"object": "list", "data": rows})
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
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), key.as_bytes()))
}

pub fn respond_json(request: Request, status: u16, body: String) {
    let header =
        Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("static header");
    let response = Response::from_string(body)
        .with_status_code(status)
        .with_header(header);
    if let Err(e) = request.respond(response) {
        log::debug!("http: could not send a {status} response: {e}");
    }
}

pub fn respond_error(request: Request, error: &ApiError) {
    if error.status >= 500 {
        log::warn!("http: {} {}", error.status, error.message);
    }
    let mut response = Response::from_string(error.body())
        .with_status_code(error.status)
        .with_header(
            Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("static header"),
        );
    if let Some(seconds) = error.retry_after {
        response.add_header(
            Header::from_bytes(&b"Retry-After"[..], seconds.to_string().as_bytes())
                .expect("digits"),
        );
    }
    if let Err(e) = request.respond(response) {
        log::debug!("http: could not send a {} response: {e}", error.status);
    }
}
