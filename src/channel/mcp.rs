//! The MCP side of the channel server as pure functions: one JSON-RPC message in, the
//! messages to write and the frames to forward out.
//!
//! This file owns the channel contract with Claude Code (docs/ARCHITECTURE.md §8, §9.5): the legacy revision
//! negotiation (`server/discover` → -32601, then `initialize`), the `claude/channel` and
//! `claude/channel/permission` capabilities, the `reply` tool, the client's tools
//! (docs/CLIENT_TOOLS.md: listed next to `reply`, `notifications/tools/list_changed` when
//! they change, a call forwarded as a `client_tool_call`), the shape of
//! `notifications/claude/channel`, and the permission relay (Claude's
//! `notifications/claude/channel/permission_request` in, `.../permission` out). It must
//! never do I/O (no stdin, stdout, sockets or clocks), so every rule here is unit-tested
//! without a process; `mod.rs` does the I/O.

use crate::protocol::{ChannelFrame, ClientTool, is_valid_meta_key};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// MCP revisions Claude Code accepts for a channel; the client's choice is echoed when it is
/// one of them. Anything else (notably the "modern" 2026 revision, which has no path for
/// unsolicited notifications) gets the fallback.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
pub const FALLBACK_VERSION: &str = "2025-06-18";

/// The one tool this server offers.
pub const REPLY_TOOL: &str = "reply";

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

const INSTRUCTIONS: &str = "\
Messages that arrive as <channel source=\"synthesis\" ...> events are user turns from a chat \
conversation, relayed by the synthesis bridge. The user cannot see your terminal: everything \
they should read must be sent through this server's `reply` tool. Call `reply` with \
`final: false` for progress updates while you work (each is shown to the user at once), and \
with `final: true` on the last call of the turn, carrying the rest of your answer; the turn \
ends with that call. Always pass the `turn_id` from the event's meta, so the answer reaches \
the turn it belongs to. Tools named `client_…` belong to the chat client's application \
(they act there, not on this machine); call one like any other tool: its result arrives once \
the client has run it.";

const REPLY_DESCRIPTION: &str = "\
Send text to the user of the chat the current <channel> turn came from. Use final=false for \
progress updates (delivered at once, the turn goes on) and final=true on the last call of the \
turn (the turn ends). Pass the turn_id from the <channel> event's meta.";

/// What the channel server remembers between messages.
#[derive(Debug, Default)]
pub struct State {
    /// `id` of the most recent `turn` frame: where a `reply` without `turn_id` goes.
    pub last_turn: Option<String>,
    /// `notifications/initialized` has been seen.
    pub initialized: bool,
    /// The client's tools offered now (from the last `client_tools` frame).
    pub client_tools: Vec<ClientTool>,
    /// Set when Claude asks for `tools/list`; the I/O side clears it (a held turn may go).
    pub listed: bool,
}

/// What handling one message asks the I/O side to do, in order.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Write this JSON-RPC message to stdout.
    Send(Value),
    /// Claude finished initialising: schedule the hello (after the hello delay).
    Initialized,
    /// A `reply` tool call: forward `frame` to the bridge, then answer request `id` with
    /// [`reply_sent`] or [`reply_failed`].
    Forward { id: Value, frame: ChannelFrame },
    /// A call of the client's tool `name`: forward it as a `client_tool_call` and answer
    /// request `id` when its result comes back (or the wait times out).
    CallClient {
        id: Value,
        name: String,
        arguments: String,
    },
    /// Forward `frame` to the bridge; nothing answers it here (a permission request).
    Notify(ChannelFrame),
}

/// Handles one input line (already split and size-checked).
pub fn handle_line(state: &mut State, line: &[u8]) -> Vec<Output> {
    match serde_json::from_slice::<Value>(line) {
        Ok(message) => handle_message(state, &message),
        Err(e) => {
            log::warn!("unparsable input line ({} bytes): {e}", line.len());
            vec![Output::Send(error(
                Value::Null,
                PARSE_ERROR,
                &format!("Parse error: {e}"),
            ))]
        }
    }
}

/// Handles one parsed JSON-RPC message.
pub fn handle_message(state: &mut State, message: &Value) -> Vec<Output> {
    let Some(object) = message.as_object() else {
        // Batches were dropped from MCP after 2025-03-26 and Claude never sends them.
        return vec![invalid(Value::Null, "expected a JSON-RPC object")];
    };
    let id = match object.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id.clone()),
        Some(_) => return vec![invalid(Value::Null, "id must be a string or a number")],
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return vec![invalid(
            id.unwrap_or(Value::Null),
            "jsonrpc must be \"2.0\"",
        )];
    }
    let method = match object.get("method") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => {
            return vec![invalid(
                id.unwrap_or(Value::Null),
                "method must be a string",
            )];
        }
        None if object.contains_key("result") || object.contains_key("error") => {
            log::debug!("ignoring a response (this server sends no requests): {message}");
            return vec![];
        }
        None => return vec![invalid(id.unwrap_or(Value::Null), "missing method")],
    };
    let params = object.get("params").unwrap_or(&Value::Null);
    log::debug!("mcp ← {method}");
    match id {
        None => handle_notification(state, method, params),
        Some(id) => handle_request(state, id, method, params),
    }
}

fn handle_notification(state: &mut State, method: &str, params: &Value) -> Vec<Output> {
    match method {
        "notifications/initialized" if !state.initialized => {
            state.initialized = true;
            vec![Output::Initialized]
        }
        PERMISSION_REQUEST => match permission_request(params) {
            Some(frame) => vec![Output::Notify(frame)],
            None => {
                log::warn!("{PERMISSION_REQUEST} without a request_id ignored: {params}");
                vec![]
            }
        },
        other => {
            log::debug!("ignoring notification {other}");
            vec![]
        }
    }
}

fn handle_request(state: &mut State, id: Value, method: &str, params: &Value) -> Vec<Output> {
    let out = match method {
        "initialize" => result(id, initialize_result(params)),
        "ping" => result(id, json!({})),
        "tools/list" => {
            state.listed = true;
            let mut tools = vec![reply_tool()];
            tools.extend(state.client_tools.iter().map(client_tool));
            result(id, json!({ "tools": tools }))
        }
        "tools/call" => return tools_call(state, id, params),
        // `server/discover` is how the modern revision starts; answering it with "not found"
        // makes Claude fall back to `initialize` with a revision that carries channels.
        other => {
            log::debug!("method not found: {other}");
            error(id, METHOD_NOT_FOUND, &format!("Method not found: {other}"))
        }
    };
    vec![Output::Send(out)]
}

/// Claude asks the channel whether a tool may run (sent when it shows a permission prompt).
pub const PERMISSION_REQUEST: &str = "notifications/claude/channel/permission_request";

/// The frame for a permission request's params `{request_id, tool_name, description,
/// input_preview}`; None without a request id (nothing could answer it).
fn permission_request(params: &Value) -> Option<ChannelFrame> {
    let text = |key: &str| {
        params
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let request_id = text("request_id");
    (!request_id.is_empty()).then(|| ChannelFrame::PermissionRequest {
        request_id,
        tool_name: text("tool_name"),
        description: text("description"),
        input_preview: text("input_preview"),
    })
}

fn initialize_result(params: &Value) -> Value {
    let requested = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let version = if SUPPORTED_VERSIONS.contains(&requested) {
        requested
    } else {
        FALLBACK_VERSION
    };
    json!({
        "protocolVersion": version,
        "capabilities": {
            "experimental": { "claude/channel": {}, "claude/channel/permission": {} },
            // Claude re-lists the tools after `notifications/tools/list_changed`
            // (docs/CLIENT_TOOLS.md has the evidence).
            "tools": { "listChanged": true },
        },
        "serverInfo": { "name": "synthesis", "version": env!("CARGO_PKG_VERSION") },
        "instructions": INSTRUCTIONS,
    })
}

fn reply_tool() -> Value {
    json!({
        "name": REPLY_TOOL,
        "description": REPLY_DESCRIPTION,
        "inputSchema": {
            "type": "object",
            "properties": {
                "text": { "type": "string", "description": "What the user should read." },
                "final": {
                    "type": "boolean",
                    "default": true,
                    "description": "true on the last reply of the turn (ends it); false for a progress update.",
                },
                "turn_id": {
                    "type": "string",
                    "description": "The turn_id from the <channel> event's meta.",
                },
            },
            "required": ["text"],
        },
    })
}

fn tools_call(state: &State, id: Value, params: &Value) -> Vec<Output> {
    // Extra fields (Claude sends `_meta: {"claudecode/toolUseId", "progressToken"}`) are ignored.
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return vec![Output::Send(error(
            id,
            INVALID_PARAMS,
            "tools/call needs a tool name",
        ))];
    };
    if let Some(tool) = state.client_tools.iter().find(|t| t.mcp_name == name) {
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => "{}".to_string(),
            Some(args) => args.to_string(),
        };
        return vec![Output::CallClient {
            id,
            name: tool.name.clone(),
            arguments,
        }];
    }
    if name.starts_with("client_") {
        // Claude may keep a tool the server stopped listing (docs/CLIENT_TOOLS.md).
        return vec![Output::Send(tool_result(
            id,
            &format!(
                "`{name}` is not offered by the chat client in this turn (it hid its tools or sent another set); do not call it, answer without it"
            ),
            true,
        ))];
    }
    if name != REPLY_TOOL {
        return vec![Output::Send(tool_result(
            id,
            &format!("unknown tool `{name}`"),
            true,
        ))];
    }
    let empty = Map::new();
    let args = params
        .get("arguments")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    match reply_frame(state, args) {
        Ok(frame) => vec![Output::Forward { id, frame }],
        Err(why) => vec![Output::Send(tool_result(id, &why, true))],
    }
}

/// How a client tool is listed: its client-side description and schema under its `mcp_name`.
fn client_tool(tool: &ClientTool) -> Value {
    let schema = match &tool.parameters {
        Value::Object(o) if !o.is_empty() => {
            let mut o = o.clone();
            o.entry("type").or_insert(json!("object"));
            Value::Object(o)
        }
        _ => json!({ "type": "object", "properties": {} }),
    };
    let description = if tool.description.trim().is_empty() {
        format!("The chat client's tool `{}`.", tool.name)
    } else {
        tool.description.clone()
    };
    // `readOnlyHint`: the tool runs in the client's application and changes nothing on this
    // machine. Claude Code runs such tools concurrently, so parallel calls reach the client
    // together; without it they come one at a time (docs/CLIENT_TOOLS.md, evidence).
    json!({
        "name": tool.mcp_name,
        "description": description,
        "inputSchema": schema,
        "annotations": { "readOnlyHint": true },
    })
}

/// Replaces the client tools offered. Returns the `notifications/tools/list_changed` to
/// send when the set differs from the one before, else None.
pub fn set_client_tools(state: &mut State, tools: Vec<ClientTool>) -> Option<Value> {
    if state.client_tools == tools {
        return None;
    }
    state.client_tools = tools;
    Some(json!({ "jsonrpc": "2.0", "method": "notifications/tools/list_changed" }))
}

/// Answer to a client tool call: the client's result text (`is_error` when the client says
/// the tool failed, or when no result came).
pub fn client_tool_answer(id: Value, content: &str, is_error: bool) -> Value {
    tool_result(id, content, is_error)
}

/// The frame for one `reply` call, or why its arguments are unusable.
fn reply_frame(state: &State, args: &Map<String, Value>) -> Result<ChannelFrame, String> {
    let text = match args.get("text") {
        Some(Value::String(text)) => text.clone(),
        _ => return Err("`text` (a string) is required".into()),
    };
    let is_final = match args.get("final") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        // Models sometimes quote booleans; accept the obvious spellings.
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(_) => return Err("`final` must be a boolean".into()),
    };
    let turn = match args.get("turn_id") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => match &state.last_turn {
            Some(t) => t.clone(),
            None => {
                return Err(
                    "no turn is in progress: pass the turn_id from the <channel> event".into(),
                );
            }
        },
        Some(_) => return Err("`turn_id` must be a string".into()),
    };
    Ok(ChannelFrame::Reply {
        turn,
        text,
        is_final,
    })
}

/// The notification that pushes a turn into Claude. Meta keys Claude would drop are left
/// out (and returned, for the log); `turn_id` is always set to the turn's id.
pub fn turn_notification(
    state: &mut State,
    id: &str,
    content: &str,
    meta: &BTreeMap<String, String>,
) -> (Value, Vec<String>) {
    state.last_turn = Some(id.to_string());
    let mut kept = Map::new();
    let mut dropped = Vec::new();
    for (key, value) in meta {
        if is_valid_meta_key(key) {
            kept.insert(key.clone(), Value::String(value.clone()));
        } else {
            dropped.push(key.clone());
        }
    }
    kept.insert("turn_id".into(), Value::String(id.to_string()));
    let message = json!({
        "jsonrpc": "2.0",
        "method": "notifications/claude/channel",
        "params": { "content": content, "meta": kept },
    });
    (message, dropped)
}

/// The notification that answers a permission request (`behavior`: "allow" or "deny").
pub fn permission_verdict(request_id: &str, behavior: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/claude/channel/permission",
        "params": { "request_id": request_id, "behavior": behavior },
    })
}

/// Answer to a `reply` call whose frame went out.
pub fn reply_sent(id: Value) -> Value {
    tool_result(id, "sent", false)
}

/// Answer to a `reply` call that could not reach the bridge.
pub fn reply_failed(id: Value, why: &str) -> Value {
    tool_result(
        id,
        &format!("not sent: the synthesis bridge is unreachable ({why})"),
        true,
    )
}

/// Error for an input line over the size limit (its id is unknown: it was never parsed).
pub fn line_too_long(limit: usize) -> Value {
    error(
        Value::Null,
        INVALID_REQUEST,
        &format!("Invalid Request: line longer than {limit} bytes"),
    )
}

fn tool_result(id: Value, text: &str, is_error: bool) -> Value {
    let mut body = json!({ "content": [{ "type": "text", "text": text }] });
    if is_error {
        body["isError"] = Value::Bool(true);
    }
    result(id, body)
}

fn result(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

fn invalid(id: Value, why: &str) -> Output {
    Output::Send(error(
        id,
        INVALID_REQUEST,
        &format!("Invalid Request: {why}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(state: &mut State, message: Value) -> Value {
        match handle_message(state, &message).as_slice() {
            [Output::Send(v)] => v.clone(),
            other => panic!("expected one message, got {other:?}"),
        }
    }

    #[test]
    fn discover_and_unknown_methods_are_not_found() {
        let mut s = State::default();
        let answer = one(
            &mut s,
            json!({"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {}}),
        );
        assert_eq!(answer["id"], 0);
        assert_eq!(answer["error"]["code"], METHOD_NOT_FOUND);
        let answer = one(
            &mut s,
            json!({"jsonrpc": "2.0", "id": "x", "method": "resources/list"}),
        );
        assert_eq!(
            (answer["id"].clone(), answer["error"]["code"].clone()),
            (json!("x"), json!(-32601))
        );
        // Unknown notifications are ignored.
        assert!(
            handle_message(
                &mut s,
                &json!({"jsonrpc": "2.0", "method": "notifications/whatever"})
            )
            .is_empty()
        );
    }

    #[test]
    fn initialize_declares_the_channel_and_echoes_known_revisions() {
        let mut s = State::default();
        let ask = |v: &str| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": v, "capabilities": {}, "clientInfo": {"name": "claude-code"}}})
        };
        let answer = one(&mut s, ask("2025-03-26"));
        let r = &answer["result"];
        assert_eq!(r["protocolVersion"], "2025-03-26");
        assert_eq!(
            r["capabilities"]["experimental"]["claude/channel"],
            json!({})
        );
        assert_eq!(r["capabilities"]["tools"], json!({"listChanged": true}));
        assert_eq!(
            r["capabilities"]["experimental"]["claude/channel/permission"],
            json!({})
        );
        assert_eq!(
            r["serverInfo"],
            json!({"name": "synthesis", "version": env!("CARGO_PKG_VERSION")})
        );
        let instructions = r["instructions"].as_str().unwrap();
        for needle in [
            "<channel",
            "reply",
            "final: false",
            "final: true",
            "turn_id",
        ] {
            assert!(
                instructions.contains(needle),
                "instructions mention {needle}"
            );
        }
        assert_eq!(
            one(&mut s, ask("2026-07-28"))["result"]["protocolVersion"],
            FALLBACK_VERSION
        );
        assert_eq!(
            one(&mut s, ask("2024-11-05"))["result"]["protocolVersion"],
            "2024-11-05"
        );
    }

    #[test]
    fn initialized_notification_schedules_the_hello_once() {
        let mut s = State::default();
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(handle_message(&mut s, &note), vec![Output::Initialized]);
        assert!(handle_message(&mut s, &note).is_empty());
        let ping = one(&mut s, json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}));
        assert_eq!(ping["result"], json!({}));
    }

    #[test]
    fn tools_list_offers_reply() {
        let mut s = State::default();
        let answer = one(
            &mut s,
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}),
        );
        let tools = answer["result"]["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 1);
        let schema = &tools[0]["inputSchema"];
        assert_eq!(tools[0]["name"], "reply");
        assert_eq!(schema["required"], json!(["text"]));
        assert_eq!(schema["properties"]["final"]["type"], "boolean");
        assert_eq!(schema["properties"]["final"]["default"], true);
        assert_eq!(schema["properties"]["turn_id"]["type"], "string");
    }

    #[test]
    fn client_tools_are_listed_called_and_changed() {
        let mut s = State::default();
        let weather = ClientTool {
            name: "get_weather".into(),
            mcp_name: "client_get_weather".into(),
            description: "Weather in a city".into(),
            parameters: json!({"properties": {"city": {"type": "string"}}}),
        };
        let changed = set_client_tools(&mut s, vec![weather.clone()]).expect("changed");
        assert_eq!(changed["method"], "notifications/tools/list_changed");
        assert!(changed.get("id").is_none());
        assert_eq!(set_client_tools(&mut s, vec![weather.clone()]), None);

        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        assert!(!s.listed);
        let answer = one(&mut s, list.clone());
        assert!(s.listed);
        let tools = answer["result"]["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[1]["name"], "client_get_weather");
        assert_eq!(tools[1]["description"], "Weather in a city");
        assert_eq!(tools[1]["annotations"]["readOnlyHint"], true);
        assert_eq!(tools[1]["inputSchema"]["type"], "object");
        assert_eq!(
            tools[1]["inputSchema"]["properties"]["city"]["type"],
            "string"
        );

        let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": "client_get_weather", "arguments": {"city": "Oslo"}}});
        assert_eq!(
            handle_message(&mut s, &call),
            vec![Output::CallClient {
                id: json!(5),
                name: "get_weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into()
            }]
        );
        // The client's bare name is not a tool of this server.
        let bare = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {
            "name": "get_weather", "arguments": {}}});
        assert_eq!(one(&mut s, bare)["result"]["isError"], true);

        let answer = client_tool_answer(json!(5), "sunny", false);
        assert_eq!(answer["result"]["content"][0]["text"], "sunny");
        assert!(answer["result"].get("isError").is_none());
        assert_eq!(
            client_tool_answer(json!(5), "boom", true)["result"]["isError"],
            true
        );

        // Removing them is a change too; the list is back to `reply` alone.
        assert!(set_client_tools(&mut s, vec![]).is_some());
        let answer = one(&mut s, list);
        assert_eq!(answer["result"]["tools"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn malformed_input_gets_errors_not_crashes() {
        let mut s = State::default();
        let out = handle_line(&mut s, b"{not json");
        assert!(
            matches!(&out[..], [Output::Send(v)] if v["error"]["code"] == PARSE_ERROR && v["id"].is_null())
        );
        for (bad, id) in [
            (json!([1, 2]), Value::Null),
            (json!("hi"), Value::Null),
            (
                json!({"jsonrpc": "1.0", "id": 3, "method": "ping"}),
                json!(3),
            ),
            (json!({"jsonrpc": "2.0", "id": 4, "method": 5}), json!(4)),
            (
                json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}),
                Value::Null,
            ),
            (json!({"jsonrpc": "2.0", "id": 5}), json!(5)),
        ] {
            let answer = one(&mut s, bad.clone());
            assert_eq!(answer["error"]["code"], INVALID_REQUEST, "{bad}");
            assert_eq!(answer["id"], id, "{bad}");
        }
        // A response to a request we never sent is ignored.
        assert!(
            handle_message(&mut s, &json!({"jsonrpc": "2.0", "id": 9, "result": {}})).is_empty()
        );
        assert_eq!(line_too_long(10)["error"]["code"], INVALID_REQUEST);
    }

    fn call(args: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {
            "name": "reply", "arguments": args,
            "_meta": {"claudecode/toolUseId": "toolu_1", "progressToken": 3}}})
    }

    #[test]
    fn reply_arguments_become_a_frame_for_the_right_turn() {
        let mut s = State::default();
        // No turn yet and no turn_id: the model is told, nothing is forwarded.
        let answer = one(&mut s, call(json!({"text": "hi"})));
        assert_eq!(answer["result"]["isError"], true);

        let (note, dropped) = turn_notification(
            &mut s,
            "t1",
            "hello",
            &BTreeMap::from([("chat".into(), "c".into()), ("bad-key".into(), "x".into())]),
        );
        assert_eq!(dropped, vec!["bad-key".to_string()]);
        assert_eq!(
            note,
            json!({"jsonrpc": "2.0", "method": "notifications/claude/channel",
                   "params": {"content": "hello", "meta": {"chat": "c", "turn_id": "t1"}}})
        );

        let forward = |s: &mut State, args| match handle_message(s, &call(args)).as_slice() {
            [Output::Forward { id, frame }] => (id.clone(), frame.clone()),
            other => panic!("expected a forward, got {other:?}"),
        };
        let reply = |turn: &str, text: &str, is_final| ChannelFrame::Reply {
            turn: turn.into(),
            text: text.into(),
            is_final,
        };
        assert_eq!(
            forward(&mut s, json!({"text": "done"})),
            (json!(11), reply("t1", "done", true))
        );
        assert_eq!(
            forward(&mut s, json!({"text": "p", "final": false})).1,
            reply("t1", "p", false)
        );
        assert_eq!(
            forward(&mut s, json!({"text": "x", "turn_id": "t0"})).1,
            reply("t0", "x", true)
        );
        assert_eq!(
            forward(
                &mut s,
                json!({"text": "y", "final": "false", "turn_id": ""})
            )
            .1,
            reply("t1", "y", false)
        );

        assert_eq!(
            one(&mut s, call(json!({"final": true})))["result"]["isError"],
            true
        );
        assert_eq!(
            one(&mut s, call(json!({"text": "a", "final": 3})))["result"]["isError"],
            true
        );
        let unknown =
            json!({"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {"name": "nope"}});
        assert_eq!(one(&mut s, unknown)["result"]["isError"], true);
        let nameless = json!({"jsonrpc": "2.0", "id": 13, "method": "tools/call", "params": {}});
        assert_eq!(one(&mut s, nameless)["error"]["code"], INVALID_PARAMS);

        assert_eq!(
            reply_sent(json!(11))["result"],
            json!({"content": [{"type": "text", "text": "sent"}]})
        );
        let failed = reply_failed(json!(11), "not connected");
        assert_eq!(failed["result"]["isError"], true);
        assert!(
            failed["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("unreachable")
        );
    }

    #[test]
    fn a_permission_request_is_forwarded_and_a_verdict_becomes_the_permission_notification() {
        let mut s = State::default();
        let out = handle_message(
            &mut s,
            &json!({"jsonrpc": "2.0", "method": PERMISSION_REQUEST, "params": {
                "request_id": "abc", "tool_name": "Bash", "description": "Write a file",
                "input_preview": "{\"command\":\"echo hi > f\"}"}}),
        );
        assert_eq!(
            out,
            vec![Output::Notify(ChannelFrame::PermissionRequest {
                request_id: "abc".into(),
                tool_name: "Bash".into(),
                description: "Write a file".into(),
                input_preview: "{\"command\":\"echo hi > f\"}".into(),
            })]
        );
        let none = handle_message(
            &mut s,
            &json!({"jsonrpc": "2.0", "method": PERMISSION_REQUEST, "params": {}}),
        );
        assert!(none.is_empty());
        assert_eq!(
            permission_verdict("abc", "allow"),
            json!({"jsonrpc": "2.0", "method": "notifications/claude/channel/permission",
                   "params": {"request_id": "abc", "behavior": "allow"}})
        );
    }
}
