//! The north side: the OpenAI-compatible HTTP API (DESIGN.md §3).
//!
//! The acceptor thread `http` takes requests from tiny_http, checks the API key, answers the
//! cheap routes itself (`/healthz`, `/v1/models`) and hands each completion request to a
//! responder thread of its own (`completions`). It never blocks on a client or a session.

pub mod completions;
pub mod openai;
pub mod sse;

use serde_json::json;
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
}

/// Responder threads mostly wait; their stacks stay small.
const RESPONDER_STACK_BYTES: usize = 256 * 1024;

pub fn spawn_acceptor(server: Arc<Server>, ctx: Arc<HttpContext>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("http".into()).spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match server.recv_timeout(Duration::from_millis(500)) {
                Ok(Some(request)) => route(request, &ctx),
                Ok(None) => {}
                Err(e) => {
                    log::error!("http: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    })
}

fn route(request: Request, ctx: &Arc<HttpContext>) {
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
            respond_json(request, 200, json!({"object": "list", "data": data}).to_string());
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
        ("/healthz" | "/v1/models" | "/v1/chat/completions", method) => {
            let message = format!("{method} is not allowed on {path}");
            respond_error(request, &ApiError::new(405, "method_not_allowed", message));
        }
        _ => {
            let message = format!("no route {path}; the bridge serves /v1/chat/completions, /v1/models and /healthz");
            respond_error(request, &ApiError::new(404, "not_found", message));
        }
    }
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
    let header = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("static header");
    let response = Response::from_string(body).with_status_code(status).with_header(header);
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
        .with_header(Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("static header"));
    if let Some(seconds) = error.retry_after {
        response.add_header(Header::from_bytes(&b"Retry-After"[..], seconds.to_string().as_bytes()).expect("digits"));
    }
    if let Err(e) = request.respond(response) {
        log::debug!("http: could not send a {} response: {e}", error.status);
    }
}
