//! The client side of MCP over stdio, as Claude Code does it for a channel server
//! (docs/ARCHITECTURE.md §8, §9.5): start the server named in `--mcp-config`, `server/discover` (expecting
//! -32601), `initialize` with a legacy revision, check the channel capability, then
//! `notifications/initialized` and `tools/list`.
//!
//! Owns the server child process and its pipes. Every wait is bounded and also ends on a
//! signal. It must never leave the child behind: `stop` closes its stdin, waits briefly,
//! then kills and reaps it.

use super::signals::Signals;
use crate::channel::lines::{Line, LineBuffer};
use crate::poll::wait_readable;
use crate::protocol::MAX_FRAME_BYTES;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The revision the simulated Claude asks for (one that carries channel notifications).
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// Bound on each handshake request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start one MCP server (an entry of `mcpServers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Finds server `name` in the `--mcp-config` values (each a path or inline JSON).
pub fn find_server(configs: &[String], name: &str) -> Result<ServerSpec, String> {
    for config in configs {
        let text = if config.trim_start().starts_with('{') {
            config.clone()
        } else {
            std::fs::read_to_string(config)
                .map_err(|e| format!("cannot read MCP config {config}: {e}"))?
        };
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| format!("MCP config {config} is not JSON: {e}"))?;
        let Some(entry) = json.get("mcpServers").and_then(|s| s.get(name)) else {
            continue;
        };
        if let Some(kind) = entry.get("type").and_then(Value::as_str)
            && kind != "stdio"
        {
            return Err(format!(
                "MCP server {name} is of type {kind}; the sim only runs stdio servers"
            ));
        }
        let command = entry
            .get("command")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("MCP server {name} has no command"))?
            .to_string();
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let env = entry
            .get("env")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        return Ok(ServerSpec {
            command,
            args: strings(entry.get("args")),
            env,
        });
    }
    Err(format!("no MCP server named {name} in --mcp-config"))
}

/// A running MCP server and the client's half of the conversation.
pub struct McpClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    lines: LineBuffer,
    next_id: u64,
    /// Messages that arrived while a blocking request waited, for the main loop.
    backlog: VecDeque<Value>,
    /// When `notifications/initialized` went out (the channel registers some time after).
    pub initialized_at: Option<std::time::Instant>,
}

/// The server's stdout ended (it exited or closed it).
#[derive(Debug)]
pub struct Disconnected;

impl McpClient {
    /// Starts the server with the sim's environment plus `extra_env` and the config's `env`.
    pub fn spawn(spec: &ServerSpec, extra_env: &[(String, String)]) -> Result<McpClient, String> {
        let mut child = Command::new(&spec.command)
            .args(&spec.args)
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .envs(&spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start MCP server {}: {e}", spec.command))?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        Ok(McpClient {
            child,
            stdin: Some(stdin),
            stdout,
            lines: LineBuffer::new(MAX_FRAME_BYTES),
            next_id: 0,
            backlog: VecDeque::new(),
            initialized_at: None,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.stdout.as_raw_fd()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The handshake of a channel; `Err` says why the channel cannot be used.
    pub fn handshake(&mut self, signals: &Signals) -> Result<(), String> {
        match self.request("server/discover", json!({}), signals)? {
            Err(e) if e.get("code").and_then(Value::as_i64) == Some(-32601) => {}
            Err(e) => return Err(format!("server/discover failed unexpectedly: {e}")),
            Ok(_) => {
                return Err(
                    "the server answered server/discover (modern MCP revision): it cannot carry \
                            channel notifications"
                        .into(),
                );
            }
        }
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": { "roots": {}, "elicitation": {} },
            "clientInfo": { "name": "claude-code", "version": concat!("sim-", env!("CARGO_PKG_VERSION")) },
        });
        let init = self
            .request("initialize", params, signals)?
            .map_err(|e| format!("initialize failed: {e}"))?;
        let caps = &init["capabilities"];
        if !caps
            .pointer("/experimental/claude~1channel")
            .is_some_and(Value::is_object)
        {
            return Err(format!(
                "initialize: no capabilities.experimental[\"claude/channel\"] in {caps}"
            ));
        }
        if !caps.get("tools").is_some_and(Value::is_object) {
            return Err(format!("initialize: no capabilities.tools in {caps}"));
        }
        self.notify("notifications/initialized", json!({}))?;
        self.initialized_at = Some(std::time::Instant::now());
        let tools = self
            .request("tools/list", json!({}), signals)?
            .map_err(|e| format!("tools/list failed: {e}"))?;
        let has_reply = tools["tools"].as_array().is_some_and(|tools| {
            tools
                .iter()
                .any(|t| t["name"] == "reply" && t["inputSchema"].is_object())
        });
        if !has_reply {
            return Err(format!("tools/list has no `reply` tool: {tools}"));
        }
        Ok(())
    }

    /// Sends a request and returns its id; the answer comes through `read_available`.
    pub fn send_request(&mut self, method: &str, params: Value) -> Result<u64, String> {
        self.next_id += 1;
        let id = self.next_id;
        self.write(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))?;
        Ok(id)
    }

    pub fn notify(&mut self, method: &str, params: Value) -> Result<(), String> {
        self.write(&json!({ "jsonrpc": "2.0", "method": method, "params": params }))
    }

    fn write(&mut self, message: &Value) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or("the MCP server's stdin is closed")?;
        let mut line = serde_json::to_vec(message).expect("JSON values always serialise");
        line.push(b'\n');
        stdin
            .write_all(&line)
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("writing to the MCP server: {e}"))
    }

    /// A request answered before returning: `Ok(Ok(result))`, `Ok(Err(error object))`, or
    /// `Err` when there was no answer within the bound (or a signal arrived).
    fn request(
        &mut self,
        method: &str,
        params: Value,
        signals: &Signals,
    ) -> Result<Result<Value, Value>, String> {
        let id = self.send_request(method, params)?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no answer to {method} within {REQUEST_TIMEOUT:?}"));
            }
            let ready = wait_readable(&[self.fd(), signals.fd()], Some(deadline - now))
                .map_err(|e| format!("poll failed: {e}"))?;
            if let Some(signal) = signals.received() {
                return Err(format!("stopped by {}", super::signals::name(signal)));
            }
            if !(ready[0].readable || ready[0].hangup) {
                continue;
            }
            let messages = self
                .read_available()
                .map_err(|_| format!("the MCP server exited during {method}"))?;
            let mut answer = None;
            for message in messages {
                if message.get("id").and_then(Value::as_u64) == Some(id)
                    && message.get("method").is_none()
                {
                    answer = Some(match message.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                    });
                } else {
                    self.backlog.push_back(message);
                }
            }
            if let Some(answer) = answer {
                return Ok(answer);
            }
        }
    }

    /// Reads once (call after poll said the descriptor is readable) and returns the complete
    /// messages. Requests from the server are answered here (`ping`; anything else is
    /// "method not found").
    pub fn read_available(&mut self) -> Result<Vec<Value>, Disconnected> {
        let mut messages = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let lines = match self.stdout.read(&mut buf) {
            Ok(0) => return Err(Disconnected),
            Ok(n) => self.lines.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(messages),
            Err(_) => return Err(Disconnected),
        };
        for line in lines {
            let Line::Text(bytes) = line else { continue };
            let Ok(message) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if let (Some(id), Some(method)) = (
                message.get("id"),
                message.get("method").and_then(Value::as_str),
            ) {
                let answer = match method {
                    "ping" => json!({ "jsonrpc": "2.0", "id": id, "result": {} }),
                    other => json!({ "jsonrpc": "2.0", "id": id,
                        "error": { "code": -32601, "message": format!("Method not found: {other}") } }),
                };
                let _ = self.write(&answer);
                continue;
            }
            messages.push(message);
        }
        Ok(messages)
    }

    /// Messages that arrived during a blocking request (handle them before waiting again).
    pub fn take_backlog(&mut self) -> Vec<Value> {
        self.backlog.drain(..).collect()
    }

    /// Closes the server's stdin (its cue to exit), waits up to `grace`, then kills; always
    /// reaps.
    pub fn stop(mut self, grace: Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
