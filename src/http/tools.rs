//! The OpenAI side of client tools (docs/CLIENT_TOOLS.md), as pure functions: reading a
//! request's `tools` and `tool_choice`, finding the `tool` results in its new turn, and
//! writing `tool_calls` (streamed `delta.tool_calls` and non-streamed `message.tool_calls`).
//! No I/O here: the channel server (src/channel/) does the MCP side, the session worker
//! carries calls and results.

use serde_json::{Map, Value, json};

use super::openai::{ApiError, content_text, new_turn_start};
use crate::config::ClientToolsPolicy;
use crate::protocol::ClientTool;
use crate::session::pending::{Pending, PendingKind};

/// Prefix of a client tool's name on the channel server: Claude sees
/// `mcp__<channel_name>__client_<name>`, which can never shadow a built-in tool or `reply`.
pub const MCP_PREFIX: &str = "client_";
/// Longest tool name the Anthropic API accepts.
const MAX_TOOL_NAME: usize = 64;

/// What the request's `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Claude decides (also when `tool_choice` is absent).
    Auto,
    /// The client tools are hidden for this turn.
    None,
    /// At least one client tool should be called: an instruction in the turn, not a guarantee.
    Required,
    /// This client tool should be called: an instruction in the turn, not a guarantee.
    Function(String),
}

/// The client tools a request offers Claude, after `client_tools` and `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTools {
    /// What the channel server lists for this turn (empty: none).
    pub tools: Vec<ClientTool>,
    pub choice: ToolChoice,
    /// The request had a `tools` array (even if every tool was filtered out).
    pub declared: bool,
}

/// Reads `tools` and `tool_choice`. Tools the policy does not allow are left out; a tool
/// whose type is not `function` is skipped (Claude could not call it anyway). Every
/// malformed field is a 400 saying what to fix.
pub fn parse_request_tools(
    body: &Map<String, Value>,
    policy: &ClientToolsPolicy,
    channel_name: &str,
) -> Result<RequestTools, ApiError> {
    let mut tools = Vec::new();
    let declared = matches!(body.get("tools"), Some(Value::Array(_)));
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let bad = |what: &str| ApiError::bad_request(format!("tools[{i}] {what}"));
                let item = item.as_object().ok_or_else(|| bad("must be an object"))?;
                match item.get("type").and_then(Value::as_str) {
                    Some("function") | None => {}
                    Some(other) => {
                        log::debug!("tools[{i}]: type {other:?} is not a function; skipped");
                        continue;
                    }
                }
                let function = item
                    .get("function")
                    .and_then(Value::as_object)
                    .ok_or_else(|| bad("needs a `function` object"))?;
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("needs `function.name` (a string)"))?;
                if !valid_name(name) {
                    return Err(bad(&format!(
                        "has the name {name:?}; a function name is 1 to 64 letters, digits, `_` or `-`"
                    )));
                }
                let description = match function.get("description") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(d)) => d.clone(),
                    Some(_) => return Err(bad("`function.description` must be a string")),
                };
                let parameters = match function.get("parameters") {
                    None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                    Some(p @ Value::Object(_)) => p.clone(),
                    Some(_) => {
                        return Err(bad("`function.parameters` must be a JSON Schema object"));
                    }
                };
                if tools.iter().any(|t: &ClientTool| t.name == name) {
                    return Err(bad(&format!("repeats the function name {name:?}")));
                }
                if !policy.allows(name) {
                    continue;
                }
                tools.push(ClientTool {
                    name: name.to_string(),
                    mcp_name: mcp_name(name, channel_name),
                    description,
                    parameters,
                });
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`tools` must be an array of {\"type\": \"function\", \"function\": {...}} objects",
            ));
        }
    }
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::bad_request(format!(
                    "`tool_choice` is {other:?}; use \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                )));
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad_request("`tool_choice.function.name` (a string) is required")
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::bad_request(format!(
                    "`tool_choice` names the function {name:?}, which is not among the request's `tools`{}",
                    if declared && !matches!(policy, ClientToolsPolicy::All) {
                        " this bridge exposes (see its client_tools setting)"
                    } else {
                        ""
                    }
                )));
            }
            ToolChoice::Function(name.to_string())
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`tool_choice` must be a string or a {\"type\": \"function\", ...} object",
            ));
        }
    };
    if choice == ToolChoice::None {
        tools.clear();
    }
    Ok(RequestTools {
        tools,
        choice,
        declared,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The channel server's name for a client tool: `client_<name>`, or, when
/// `mcp__<channel>__client_<name>` would pass 64 characters, `client_<start of name>_<hash>`
/// (the hash keeps two long names that share a start apart).
pub fn mcp_name(name: &str, channel_name: &str) -> String {
    let plain = format!("{MCP_PREFIX}{name}");
    let overhead = "mcp__".len() + channel_name.len() + "__".len();
    if overhead + plain.len() <= MAX_TOOL_NAME {
        return plain;
    }
    let hash = crate::fnv::extend(crate::fnv::OFFSET_BASIS, name.bytes());
    let suffix = format!("_{:08x}", hash as u32);
    let room = MAX_TOOL_NAME.saturating_sub(overhead + MCP_PREFIX.len() + suffix.len());
    let start: String = name.chars().take(room.max(1)).collect();
    format!("{MCP_PREFIX}{start}{suffix}")
}

/// The instruction added to the turn for `required` or a named function: Claude Code cannot
/// be forced to call a tool, so this asks (docs/CLIENT_TOOLS.md says what is guaranteed).
pub fn choice_instruction(choice: &ToolChoice, tools: &[ClientTool]) -> Option<String> {
    match choice {
        ToolChoice::Auto | ToolChoice::None => None,
        ToolChoice::Required => Some(
            "[The client requires a tool call in this turn: call at least one of the tools named client_… before you reply.]"
                .to_string(),
        ),
        ToolChoice::Function(name) => {
            let mcp = tools
                .iter()
                .find(|t| &t.name == name)
                .map_or(name.as_str(), |t| t.mcp_name.as_str());
            Some(format!(
                "[The client requires this turn to call its tool {mcp} before you reply.]"
            ))
        }
    }
}

/// One `tool` message of the new turn: the client's result of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    pub call_id: String,
    pub content: String,
    /// The client marked it as a failure (`"is_error": true` or `"status": "error"`, both
    /// extensions; OpenAI's own shape has no such field).
    pub is_error: bool,
}

/// The `tool` messages after the last `assistant` message, in order. A `tool` message
/// without a string `tool_call_id` is a 400.
pub fn tool_results(messages: &[Value]) -> Result<Vec<ToolResult>, ApiError> {
    let start = new_turn_start(messages);
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate().skip(start) {
        if m.get("role").and_then(Value::as_str) != Some("tool") {
            continue;
        }
        let call_id = m
            .get("tool_call_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "messages[{i}] is a `tool` message without `tool_call_id`: give the id of the tool call it answers"
                ))
            })?;
        let content = content_text(m.get("content").unwrap_or(&Value::Null))
            .map_err(|e| ApiError::bad_request(format!("messages[{i}].content {e}")))?;
        let is_error = m.get("is_error").and_then(Value::as_bool) == Some(true)
            || m.get("status").and_then(Value::as_str) == Some("error");
        out.push(ToolResult {
            call_id: call_id.to_string(),
            content,
            is_error,
        });
    }
    Ok(out)
}

/// One call of a client tool, as the response reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// Alphanumeric (OpenClaw requires it): `call` + 32 hex digits.
    pub id: String,
    /// The client's name of the function.
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// The client tool calls among a suspended turn's questions, in order.
pub fn calls_of(pending: &[Pending]) -> Vec<ToolCall> {
    pending
        .iter()
        .filter_map(|p| match &p.kind {
            PendingKind::ClientToolCall {
                call_id,
                name,
                arguments,
            } => Some(ToolCall {
                id: call_id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            }),
            PendingKind::Permission { .. } => None,
        })
        .collect()
}

/// The `tool_calls` array: `index`, `id`, `type: "function"`, `function.{name, arguments}`.
/// The same shape serves the streamed delta (one chunk carries every call whole) and the
/// non-streamed message.
pub fn tool_calls_json(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(index, c)| {
                json!({
                    "index": index, "id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect(),
    )
}

/// The non-streamed assistant message for a response that ends in tool calls: any text
/// Claude replied before them in `content` (null when none).
pub fn tool_calls_message(text: &str, calls: &[ToolCall]) -> Value {
    let content = if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_string())
    };
    json!({"role": "assistant", "content": content, "tool_calls": tool_calls_json(calls)})
}

/// A `chat.completion` body whose message ends in `calls`: `tool_calls`, `content` the text
/// before them or null, `finish_reason: "tool_calls"`.
pub fn with_tool_calls(body: String, text: &str, calls: &[ToolCall]) -> String {
    let mut value: Value = serde_json::from_str(&body).expect("bodies are JSON");
    let message = tool_calls_message(text, calls);
    value["choices"][0]["message"]["content"] = message["content"].clone();
    value["choices"][0]["message"]["tool_calls"] = message["tool_calls"].clone();
    value["choices"][0]["finish_reason"] = json!("tool_calls");
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value, policy: &ClientToolsPolicy) -> Result<RequestTools, ApiError> {
        parse_request_tools(body.as_object().unwrap(), policy, "synthesis")
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    #[test]
    fn tools_become_client_tools_under_the_prefix() {
        let all = ClientToolsPolicy::All;
        let got = parse(
            json!({"tools": [weather(), {"type": "function", "function": {"name": "ping"}},
                   {"type": "web_search"}]}),
            &all,
        )
        .unwrap();
        assert!(got.declared);
        assert_eq!(got.choice, ToolChoice::Auto);
        assert_eq!(got.tools.len(), 2);
        assert_eq!(got.tools[0].name, "get_weather");
        assert_eq!(got.tools[0].mcp_name, "client_get_weather");
        assert_eq!(got.tools[0].description, "Weather");
        assert_eq!(got.tools[0].parameters["required"], json!(["city"]));
        assert_eq!(
            got.tools[1].parameters,
            json!({"type": "object", "properties": {}})
        );

        let none = parse(json!({}), &all).unwrap();
        assert!(!none.declared && none.tools.is_empty());

        // The policy filters; `none` hides them for the turn.
        let only = ClientToolsPolicy::Only(vec!["get_*".into()]);
        let got = parse(
            json!({"tools": [weather(), {"function": {"name": "ping"}}]}),
            &only,
        )
        .unwrap();
        assert_eq!(got.tools.len(), 1);
        let hidden = parse(json!({"tools": [weather()], "tool_choice": "none"}), &all).unwrap();
        assert!(hidden.tools.is_empty());
        assert_eq!(hidden.choice, ToolChoice::None);
        let off = parse(json!({"tools": [weather()]}), &ClientToolsPolicy::None).unwrap();
        assert!(off.tools.is_empty() && off.declared);
    }

    #[test]
    fn tool_choice_forms_and_instructions() {
        let all = ClientToolsPolicy::All;
        let got = parse(
            json!({"tools": [weather()], "tool_choice": "required"}),
            &all,
        )
        .unwrap();
        assert_eq!(got.choice, ToolChoice::Required);
        assert!(
            choice_instruction(&got.choice, &got.tools)
                .unwrap()
                .contains("client_")
        );
        let named = json!({"tools": [weather()],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
        let got = parse(named, &all).unwrap();
        assert_eq!(got.choice, ToolChoice::Function("get_weather".into()));
        assert!(
            choice_instruction(&got.choice, &got.tools)
                .unwrap()
                .contains("client_get_weather")
        );
        assert_eq!(choice_instruction(&ToolChoice::Auto, &got.tools), None);
        for bad in [
            json!({"tools": [weather()], "tool_choice": "sometimes"}),
            json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            json!({"tools": [weather()], "tool_choice": 3}),
            json!({"tools": {"a": 1}}),
            json!({"tools": [{"type": "function"}]}),
            json!({"tools": [{"type": "function", "function": {"name": "has space"}}]}),
            json!({"tools": [weather(), weather()]}),
            json!({"tools": [{"function": {"name": "x", "parameters": "no"}}]}),
        ] {
            let err = parse(bad.clone(), &all).unwrap_err();
            assert_eq!(err.status, 400, "{bad}");
            assert!(err.message.contains("tool"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn long_names_are_shortened_to_fit_claudes_limit() {
        let long = "a".repeat(64);
        let other = format!("{}b", "a".repeat(63));
        let (x, y) = (mcp_name(&long, "synthesis"), mcp_name(&other, "synthesis"));
        assert_ne!(x, y);
        for n in [&x, &y] {
            assert!(n.starts_with("client_"));
            assert!(format!("mcp__synthesis__{n}").len() <= 64, "{n}");
        }
        assert_eq!(mcp_name(&long, "synthesis"), x, "stable");
        assert_eq!(mcp_name("short", "synthesis"), "client_short");
    }

    #[test]
    fn tool_messages_of_the_new_turn_are_results() {
        let messages = json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call2", "content": [{"type": "text", "text": "boom"}], "is_error": true},
            {"role": "tool", "tool_call_id": "call3", "content": "x", "status": "error"},
        ]);
        let messages = messages.as_array().unwrap();
        assert_eq!(
            new_turn_start(messages),
            2,
            "tool messages start the new turn"
        );
        let results = tool_results(messages).unwrap();
        assert_eq!(
            results,
            vec![
                ToolResult {
                    call_id: "call1".into(),
                    content: "sunny".into(),
                    is_error: false
                },
                ToolResult {
                    call_id: "call2".into(),
                    content: "boom".into(),
                    is_error: true
                },
                ToolResult {
                    call_id: "call3".into(),
                    content: "x".into(),
                    is_error: true
                },
            ]
        );
        let missing =
            json!([{"role": "assistant", "content": "a"}, {"role": "tool", "content": "x"}]);
        let err = tool_results(missing.as_array().unwrap()).unwrap_err();
        assert!(err.message.contains("tool_call_id"));
        // Tool messages before the last assistant message are history, not answers.
        let old = json!([{"role": "tool", "tool_call_id": "c", "content": "x"},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "next"}]);
        assert!(tool_results(old.as_array().unwrap()).unwrap().is_empty());
    }

    #[test]
    fn tool_calls_render_the_openai_way() {
        let calls = vec![
            ToolCall {
                id: "call0a".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into(),
            },
            ToolCall {
                id: "call0b".into(),
                name: "ping".into(),
                arguments: "{}".into(),
            },
        ];
        let json = tool_calls_json(&calls);
        assert_eq!(
            json[0],
            json!({"index": 0, "id": "call0a", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}})
        );
        assert_eq!(json[1]["index"], 1);
        let message = tool_calls_message("", &calls);
        assert_eq!(message["content"], Value::Null);
        assert_eq!(message["role"], "assistant");
        assert_eq!(
            tool_calls_message("let me check", &calls)["content"],
            "let me check"
        );
    }
}
