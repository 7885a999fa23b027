//! A fake Anthropic Messages API on loopback, for running the real Claude Code offline.
//!
//! `POST /v1/messages` (streaming or not): for each `<channel …>` block in the messages after
//! the last assistant message, one `tool_use` of `mcp__<server>__reply` with
//! `{"text": "reply to: <content>", "final": true, "turn_id": <attr>}`; if there is none and
//! the last user message carries a tool result, the text "done"; otherwise "ok from fake".
//! Client tools (docs/CLIENT_TOOLS.md): a channel block containing `[fake:tool=NAME]` (or
//! `[fake:tool=A+B]`: parallel calls) gets a `tool_use` of `mcp__<server>__client_NAME` each
//! instead (input `{"city": "Oslo"}`) when Claude offers that tool; the results of such calls
//! get a final `reply` quoting them (`tool result: <text>`, joined by ` | `), for the turn of
//! the last channel block.
//! A channel block whose content starts with `RUN_BASH: <command>` gets a `Bash` tool_use of
//! that command instead; the request carrying its result gets a final `reply` of
//! `bash result: <the tool result's text>` for that turn.
//! Streams use the real API's event sequence (message_start … message_stop). Every request
//! body is recorded so a test can check what Claude sent (e.g. earlier turns after a resume),
//! with the wall-clock time it arrived (benches/real_claude.rs builds timelines from them).
//! `set_delay` makes every `/v1/messages` answer wait that long first (a model's latency).

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub struct FakeAnthropic {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<(SystemTime, Value)>>>,
    stop: Arc<AtomicBool>,
    delay_us: Arc<AtomicU64>,
}

impl FakeAnthropic {
    pub fn start() -> FakeAnthropic {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let delay_us = Arc::new(AtomicU64::new(0));
        let (log, halt, delay) = (requests.clone(), stop.clone(), delay_us.clone());
        std::thread::Builder::new()
            .name("fake-anthropic".into())
            .spawn(move || {
                while !halt.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (log, delay) = (log.clone(), delay.clone());
                            std::thread::spawn(move || serve_connection(stream, &log, &delay));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .unwrap();
        FakeAnthropic {
            addr,
            requests,
            stop,
            delay_us,
        }
    }

    /// Every `/v1/messages` body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// When each `/v1/messages` request arrived (its body fully read), in order.
    pub fn request_times(&self) -> Vec<SystemTime> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }

    /// Every later `/v1/messages` answer waits `delay` before its first byte.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_connection(stream: TcpStream, log: &Mutex<Vec<(SystemTime, Value)>>, delay: &AtomicU64) {
    stream.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)
        } else {
            read_exact(&mut reader, content_length)
        };
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_string();
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let response = if path == "/v1/messages" && parsed.is_object() {
            log.lock()
                .unwrap()
                .push((SystemTime::now(), parsed.clone()));
            let wait = delay.load(Ordering::SeqCst);
            if wait > 0 {
                std::thread::sleep(Duration::from_micros(wait));
            }
            answer(&parsed)
        } else if path == "/v1/messages/count_tokens" {
            json_response(&json!({"input_tokens": (body.len() / 4).max(1)}))
        } else {
            json_response(&json!({}))
        };
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

fn read_exact(reader: &mut impl Read, len: usize) -> Vec<u8> {
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    body
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).unwrap_or(0) == 0 {
            return body;
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let mut chunk = vec![0; n + 2];
        if reader.read_exact(&mut chunk).is_err() || n == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

fn json_response(value: &Value) -> Vec<u8> {
    let body = value.to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// `(attributes, inner text)` of each `<channel …>…</channel>` block in `text`.
fn channel_blocks(text: &str) -> Vec<(Vec<(String, String)>, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<channel ") {
        let Some(open_end) = rest[start..].find('>') else {
            break;
        };
        let attrs_text = &rest[start + "<channel ".len()..start + open_end];
        let body_start = start + open_end + 1;
        let Some(close) = rest[body_start..].find("</channel>") else {
            break;
        };
        let mut attrs = Vec::new();
        for part in attrs_text.split('"').collect::<Vec<_>>().chunks(2) {
            if let [key, value] = part {
                attrs.push((
                    key.trim().trim_end_matches('=').to_string(),
                    value.to_string(),
                ));
            }
        }
        out.push((
            attrs,
            rest[body_start..body_start + close].trim().to_string(),
        ));
        rest = &rest[body_start + close..];
    }
    out
}

/// After a `Bash` tool_use of ours: a final `reply` with the tool result's text, for the turn
/// of the last channel block.
fn bash_result_reply(messages: &[Value], tail_start: usize, tools: &[String]) -> Option<Value> {
    let assistant = messages.get(tail_start.checked_sub(1)?)?;
    let bash_id = assistant["content"]
        .as_array()?
        .iter()
        .find(|b| b["type"] == "tool_use" && b["name"] == "Bash")?["id"]
        .clone();
    let result = messages[tail_start..]
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == bash_id)?;
    let result_text = match &result["content"] {
        Value::String(s) => s.clone(),
        other => text_of(other),
    };
    let turn_id = messages
        .iter()
        .flat_map(|m| channel_blocks(&text_of(&m["content"])))
        .filter_map(|(attrs, _)| {
            attrs
                .into_iter()
                .find(|(k, _)| k == "turn_id")
                .map(|(_, v)| v)
        })
        .next_back();
    let name = tools
        .iter()
        .find(|t| t.starts_with("mcp__") && t.ends_with("__reply"))
        .cloned()
        .unwrap_or("mcp__synthesis__reply".into());
    let mut input = json!({"text": format!("bash result: {result_text}"), "final": true});
    if let Some(turn_id) = turn_id {
        input["turn_id"] = json!(turn_id);
    }
    Some(
        json!({"type": "tool_use", "id": format!("toolu_fake_{}", uuid::Uuid::new_v4().simple()), "name": name, "input": input}),
    )
}

/// The content blocks and stop reason Claude gets back.
fn decide(body: &Value) -> (Vec<Value>, &'static str) {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let tail_start = messages
        .iter()
        .rposition(|m| m["role"] == "assistant")
        .map_or(0, |i| i + 1);
    let tools: Vec<String> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect();
    let mut blocks = Vec::new();
    if let Some(reply) = reply_to_client_tool_result(&messages, &tools)
        .or_else(|| bash_result_reply(&messages, tail_start, &tools))
    {
        return (vec![reply], "tool_use");
    }
    for m in &messages[tail_start..] {
        for (attrs, inner) in channel_blocks(&text_of(&m["content"])) {
            let attr = |k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
            if let Some(command) = inner.strip_prefix("RUN_BASH:") {
                blocks.push(json!({"type": "tool_use", "id": format!("toolu_bash_{}", uuid::Uuid::new_v4().simple()), "name": "Bash",
                    "input": {"command": command.trim(), "description": "Write the proof file"}}));
                continue;
            }
            let server = attr("source").unwrap_or_else(|| "synthesis".into());
            if let Some(start) = inner.find("[fake:tool=") {
                let rest = &inner[start + "[fake:tool=".len()..];
                let names = rest.split(']').next().unwrap_or("");
                let offered: Vec<String> = names
                    .split('+')
                    .map(|name| format!("mcp__{server}__client_{name}"))
                    .filter(|tool| tools.contains(tool))
                    .collect();
                if !offered.is_empty() {
                    for tool in offered {
                        blocks.push(json!({"type": "tool_use", "id": format!("toolu_client_{}", uuid::Uuid::new_v4().simple()), "name": tool, "input": {"city": "Oslo"}}));
                    }
                    continue;
                }
            }
            let name = if tools.contains(&format!("mcp__{server}__reply")) {
                format!("mcp__{server}__reply")
            } else {
                tools
                    .iter()
                    .find(|t| t.starts_with("mcp__") && t.ends_with("__reply"))
                    .cloned()
                    .unwrap_or(format!("mcp__{server}__reply"))
            };
            let mut input = json!({"text": format!("reply to: {inner}"), "final": true});
            if let Some(turn_id) = attr("turn_id") {
                input["turn_id"] = json!(turn_id);
            }
            blocks.push(json!({"type": "tool_use", "id": format!("toolu_fake_{}", uuid::Uuid::new_v4().simple()), "name": name, "input": input}));
        }
    }
    if !blocks.is_empty() {
        return (blocks, "tool_use");
    }
    let last_user_has_result = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .is_some_and(|m| {
            m["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
        });
    let text = if last_user_has_result {
        "done"
    } else {
        "ok from fake"
    };
    (vec![json!({"type": "text", "text": text})], "end_turn")
}

/// The final `reply` after a client tool's result (see the module comment), if the last user
/// message carries one.
fn reply_to_client_tool_result(messages: &[Value], tools: &[String]) -> Option<Value> {
    // Claude may add a user message of its own after the one with the results.
    let tail_start = messages
        .iter()
        .rposition(|m| m["role"] == "assistant")
        .map_or(0, |i| i + 1);
    let results: Vec<String> = messages[tail_start..]
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| {
            b["type"] == "tool_result"
                && b["tool_use_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("toolu_client_"))
        })
        .map(|result| match &result["content"] {
            Value::String(s) => s.clone(),
            other => text_of(other),
        })
        .collect();
    if results.is_empty() {
        return None;
    }
    let text = results.join(" | ");
    let (attrs, _) = messages
        .iter()
        .flat_map(|m| channel_blocks(&text_of(&m["content"])))
        .last()?;
    let attr = |k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let server = attr("source").unwrap_or_else(|| "synthesis".into());
    let name = format!("mcp__{server}__reply");
    if !tools.contains(&name) {
        return None;
    }
    let mut input = json!({"text": format!("tool result: {text}"), "final": true});
    if let Some(turn_id) = attr("turn_id") {
        input["turn_id"] = json!(turn_id);
    }
    Some(
        json!({"type": "tool_use", "id": format!("toolu_fake_{}", uuid::Uuid::new_v4().simple()), "name": name, "input": input}),
    )
}

fn answer(body: &Value) -> Vec<u8> {
    let (blocks, stop) = decide(body);
    let model = body["model"].as_str().unwrap_or("claude-fake").to_string();
    let id = format!("msg_fake_{}", uuid::Uuid::new_v4().simple());
    let usage = json!({"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    if body["stream"] != true {
        return json_response(&json!({
            "id": id, "type": "message", "role": "assistant", "model": model, "content": blocks,
            "stop_reason": stop, "stop_sequence": null, "usage": usage,
        }));
    }
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}),
    )];
    for (i, block) in blocks.iter().enumerate() {
        if block["type"] == "text" {
            events.push(("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})));
            events.push(("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": block["text"]}})));
        } else {
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}),
            ));
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": block["input"].to_string()}}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    events.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}})));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for (name, data) in events {
        let event = format!("event: {name}\ndata: {data}\n\n");
        out.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
