//! `POST /v1/responses` (OpenAI's Responses API). Placeholder until implemented.

use std::sync::Arc;
use tiny_http::Request;

use super::HttpContext;

/// `/v1/responses` ids and their sessions.
#[derive(Default)]
pub struct ResponseIds;

pub fn handle(request: Request, _ctx: Arc<HttpContext>) {
    super::respond_error(
        request,
        &super::openai::ApiError::new(404, "not_found", "not yet"),
    );
}
