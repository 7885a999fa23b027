//! CORS for browser clients (`cors_origins`, default none): answers preflight `OPTIONS`
//! requests and adds `Access-Control-Allow-Origin` to every response for a listed origin.
//!
//! The origins are set once at start-up (`configure`) and read by `respond_bytes` and the
//! SSE writer, which only see the request, not the HTTP context.

use std::sync::OnceLock;
use tiny_http::{Header, Request};

static ORIGINS: OnceLock<Vec<String>> = OnceLock::new();

/// Methods and headers a browser may use.
pub const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const DEFAULT_ALLOW_HEADERS: &str = "Authorization, Content-Type, X-Session-Key, X-Agent-Id, X-Chat-Id, OpenAI-Organization, OpenAI-Project";
/// Seconds a browser may cache a preflight answer.
const MAX_AGE_SECS: u32 = 600;

/// Sets the allowed origins (`*` = any). Later calls are ignored (one bridge per process).
pub fn configure(origins: Vec<String>) {
    let _ = ORIGINS.set(origins);
}

fn origin_header(request: &Request) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Origin"))
        .map(|h| h.value.as_str().trim().to_string())
}

/// The request's `Origin` when it is allowed.
pub fn allowed_origin(request: &Request) -> Option<String> {
    let origin = origin_header(request)?;
    let origins = ORIGINS.get()?;
    origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin.trim_end_matches('/')))
        .then_some(origin)
}

/// `(name, value)` pairs to add to a response for this request (none without an allowed origin).
pub fn response_headers(request: &Request) -> Vec<(&'static str, String)> {
    match allowed_origin(request) {
        Some(origin) => vec![
            ("Access-Control-Allow-Origin", origin),
            ("Vary", "Origin".into()),
            (
                "Access-Control-Expose-Headers",
                "X-Session-Key, Retry-After".into(),
            ),
        ],
        None => Vec::new(),
    }
}

pub fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

/// What to answer to an `OPTIONS` request: a preflight from an allowed origin gets 204 with
/// the CORS headers; one from another origin a 403 saying how to allow it; an `OPTIONS`
/// without `Origin` 204 with `Allow`.
pub fn preflight(request: Request) {
    let deadline = std::time::Duration::from_secs(10);
    let Some(origin) = origin_header(&request) else {
        let headers = vec![("Allow", ALLOW_METHODS.to_string())];
        return super::respond_bytes_with(
            request,
            204,
            "text/plain",
            Vec::new(),
            None,
            deadline,
            &headers,
        );
    };
    if allowed_origin(&request).is_none() {
        let message = format!(
            "origin {origin:?} may not call this bridge from a browser; add it to cors_origins (--cors-origins) to allow it"
        );
        return super::respond_error(
            request,
            &super::openai::ApiError::new(403, "cors_origin_not_allowed", message),
        );
    }
    let asked = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Access-Control-Request-Headers"))
        .map(|h| h.value.as_str().to_string())
        .filter(|v| !v.trim().is_empty() && v.len() <= 4096);
    let headers = vec![
        ("Access-Control-Allow-Methods", ALLOW_METHODS.to_string()),
        (
            "Access-Control-Allow-Headers",
            asked.unwrap_or_else(|| DEFAULT_ALLOW_HEADERS.to_string()),
        ),
        ("Access-Control-Max-Age", MAX_AGE_SECS.to_string()),
    ];
    super::respond_bytes_with(
        request,
        204,
        "text/plain",
        Vec::new(),
        None,
        deadline,
        &headers,
    );
}
