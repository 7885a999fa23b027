//! The bridge ⇄ channel wire protocol: JSON text frames over the loopback WebSocket
//! (docs/ARCHITECTURE.md §7), shared by both ends so they cannot drift apart.
//!
//! Every frame is an object with a `"type"` tag. Frames only ever gain fields; a field's
//! meaning never changes. Unknown fields are ignored on read so an older bridge can talk
//! to a newer channel server.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Path the bridge's WebSocket hub listens on.
pub const WS_PATH: &str = "/bridge";

/// Largest turn text the bridge pushes (2 MiB: far more than Claude's context holds).
pub const MAX_TURN_BYTES: usize = 2 << 20;

/// Largest WebSocket message (and MCP line) either side accepts: a `MAX_TURN_BYTES` turn
/// stays under it even if JSON escaping grows every byte sixfold (`\u0001`), and a runaway
/// peer cannot exhaust memory.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// WebSocket settings of both ends: the frame size limit, and small buffers. tungstenite's
/// default 128 KiB read buffer is zero-filled on every read, so each idle session would keep
/// 128 KiB resident for it; 4 KiB is plenty for replies (longer frames are read in pieces),
/// and writes go out at once (our frames are flushed one by one anyway).
pub fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// Environment variables the bridge sets on every spawned `claude`; the channel server and
/// the Stop hook inherit them from claude.
pub mod env {
    /// `ws://127.0.0.1:<port>/bridge`
    pub const WS_URL: &str = "SYNTHESIS_WS_URL";
    /// The session key (opaque text) this process serves.
    pub const OPENCLAW_SESSION: &str = "SYNTHESIS_OPENCLAW_SESSION";
    /// The Claude session uuid (`--session-id` / `--resume`).
    pub const CLAUDE_SESSION: &str = "SYNTHESIS_CLAUDE_SESSION";
    /// The hub's Unix socket for the Stop hook's `turn_end` (a path, or `@name` for an
    /// abstract socket); the hub checks with `SO_PEERCRED` that the peer runs under that
    /// spawn's claude.
    pub const HOOK_SOCKET: &str = "SYNTHESIS_HOOK_SOCKET";
    /// Unique per spawn; the hub refuses a hello whose spawn id no worker is waiting for.
    pub const SPAWN_ID: &str = "SYNTHESIS_SPAWN_ID";
    /// The session key, percent-encoded for a header: the `http` Stop hook sends it as
    /// `X-Synthesis-Session` (src/hook_http.rs).
    pub const HOOK_SESSION: &str = "SYNTHESIS_HOOK_SESSION";
    /// Secret made at bridge start; the hub refuses any frame that does not carry it.
    pub const BRIDGE_TOKEN: &str = "SYNTHESIS_BRIDGE_TOKEN";
    /// Milliseconds the channel server waits after `notifications/initialized` before it says
    /// hello (Claude registers the channel 0–50 ms after that; notifications sent earlier are
    /// dropped silently). Default 1000; with `CLAUDE_DEBUG_FILE`, the longest wait.
    pub const HELLO_DELAY_MS: &str = "SYNTHESIS_HELLO_DELAY_MS";
    /// Claude's MCP debug log for this spawn (`--debug=mcp --debug-file`), when the bridge
    /// asked for one: the channel server says hello as soon as it reads there that Claude
    /// registered the channel (`HELLO_DELAY_MS` is then only the longest wait).
    pub const CLAUDE_DEBUG_FILE: &str = "SYNTHESIS_CLAUDE_DEBUG_FILE";
    /// If set, the channel server appends its log lines to this file instead of stderr
    /// (claude swallows an MCP server's stderr).
    pub const CHANNEL_LOG: &str = "SYNTHESIS_CHANNEL_LOG";
}

/// channel → bridge
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelFrame {
    /// First frame of a channel connection, sent once the channel is registered in Claude.
    Hello {
        session: String,
        claude_session: String,
        spawn_id: String,
        token: String,
        pid: u32,
        version: String,
    },
    /// One `reply` tool call. `final: false` is progress, streamed at once; `final: true`
    /// ends the turn.
    Reply {
        turn: String,
        text: String,
        #[serde(default, rename = "final")]
        is_final: bool,
    },
    /// Claude finished its turn (Stop hook backstop). Sent by `synthesis-bridge hook stop` on a
    /// connection of its own, so it carries the credentials a hello would.
    TurnEnd {
        #[serde(default)]
        session: String,
        #[serde(default)]
        turn: Option<String>,
        #[serde(default)]
        last_assistant_message: Option<String>,
        #[serde(default)]
        spawn_id: String,
        #[serde(default)]
        token: String,
    },
    /// Claude called the client's tools (docs/CLIENT_TOOLS.md): every call made within the
    /// channel's short gathering window, so parallel calls reach the client together. The
    /// channel holds each MCP request until a `client_tool_result` with its `call_id` comes
    /// back, or fails it after the timeout of the last `client_tools` frame.
    ClientToolCalls {
        /// The turn in flight when Claude called them (the last `turn` frame's id).
        #[serde(default)]
        turn: String,
        calls: Vec<ClientToolCall>,
    },
    /// Claude asks for permission to use a tool (its
    /// `notifications/claude/channel/permission_request`); answered by `permission_verdict`.
    PermissionRequest {
        request_id: String,
        #[serde(default)]
        tool_name: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        input_preview: String,
    },
}

/// One call of a client tool. `call_id` is alphanumeric (OpenClaw requires it);
/// `arguments` is the JSON text of the call's input.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ClientToolCall {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
}

/// One tool of the client (OpenAI `tools[].function`), as the channel server lists it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ClientTool {
    /// The client's name for it (what `tool_calls` carry back).
    pub name: String,
    /// The name the channel server lists it under: `client_<name>`, shortened with a hash
    /// when `mcp__<server>__client_<name>` would pass 64 characters (docs/CLIENT_TOOLS.md).
    pub mcp_name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments (`{"type": "object"}` when the client gave none).
    #[serde(default)]
    pub parameters: serde_json::Value,
}

/// bridge → channel
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BridgeFrame {
    /// A user turn to push into Claude as `notifications/claude/channel {content, meta}`.
    /// Meta keys must match `^[a-zA-Z_][a-zA-Z0-9_]*$` or Claude drops them.
    Turn {
        id: String,
        content: String,
        #[serde(default)]
        meta: BTreeMap<String, String>,
    },
    /// The client tools Claude may call from now on (sent before each turn; an empty list
    /// removes them). When the set changes the channel tells Claude
    /// (`notifications/tools/list_changed`) and pushes the next turn once Claude re-listed.
    ClientTools {
        tools: Vec<ClientTool>,
        /// How long a call waits for its result before the channel fails it.
        #[serde(default)]
        result_timeout_ms: u64,
    },
    /// The client's answer to a `client_tool_call`.
    ClientToolResult {
        call_id: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
    /// The answer to a `permission_request`, sent on to Claude as
    /// `notifications/claude/channel/permission {request_id, behavior}`.
    PermissionVerdict {
        request_id: String,
        /// `"allow"` or `"deny"`.
        behavior: String,
    },
}

impl ChannelFrame {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frames always serialise")
    }
}

impl BridgeFrame {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frames always serialise")
    }
}

/// Whether `key` is a meta key Claude keeps (`^[a-zA-Z_][a-zA-Z0-9_]*$`).
pub fn is_valid_meta_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_frame_uses_final_on_the_wire() {
        let frame = ChannelFrame::Reply {
            turn: "t1".into(),
            text: "hi".into(),
            is_final: true,
        };
        assert_eq!(
            frame.to_json(),
            r#"{"type":"reply","turn":"t1","text":"hi","final":true}"#
        );
        let back: ChannelFrame =
            serde_json::from_str(r#"{"type":"reply","turn":"t1","text":"hi","extra":1}"#).unwrap();
        assert_eq!(
            back,
            ChannelFrame::Reply {
                turn: "t1".into(),
                text: "hi".into(),
                is_final: false
            }
        );
    }

    #[test]
    fn turn_frame_round_trips() {
        let frame = BridgeFrame::Turn {
            id: "t2".into(),
            content: "hello".into(),
            meta: BTreeMap::from([("turn_id".to_string(), "t2".to_string())]),
        };
        let json = frame.to_json();
        assert_eq!(
            json,
            r#"{"type":"turn","id":"t2","content":"hello","meta":{"turn_id":"t2"}}"#
        );
        assert_eq!(serde_json::from_str::<BridgeFrame>(&json).unwrap(), frame);
    }

    #[test]
    fn client_tool_frames_round_trip() {
        let call = ChannelFrame::ClientToolCalls {
            turn: "turn-3".into(),
            calls: vec![ClientToolCall {
                call_id: "call0a1b".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into(),
            }],
        };
        let json = call.to_json();
        assert_eq!(
            json,
            r#"{"type":"client_tool_calls","turn":"turn-3","calls":[{"call_id":"call0a1b","name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}]}"#
        );
        assert_eq!(serde_json::from_str::<ChannelFrame>(&json).unwrap(), call);
        let tools = BridgeFrame::ClientTools {
            tools: vec![ClientTool {
                name: "get_weather".into(),
                mcp_name: "client_get_weather".into(),
                description: "Weather".into(),
                parameters: serde_json::json!({"type": "object"}),
            }],
            result_timeout_ms: 5000,
        };
        assert_eq!(
            serde_json::from_str::<BridgeFrame>(&tools.to_json()).unwrap(),
            tools
        );
        let result: BridgeFrame = serde_json::from_str(
            r#"{"type":"client_tool_result","call_id":"c1","content":"sunny"}"#,
        )
        .unwrap();
        assert_eq!(
            result,
            BridgeFrame::ClientToolResult {
                call_id: "c1".into(),
                content: "sunny".into(),
                is_error: false
            }
        );
    }

    #[test]
    fn permission_frames_round_trip() {
        let request: ChannelFrame = serde_json::from_str(
            r#"{"type":"permission_request","request_id":"r1","tool_name":"Bash","description":"d","input_preview":"ls"}"#,
        )
        .unwrap();
        assert_eq!(
            request,
            ChannelFrame::PermissionRequest {
                request_id: "r1".into(),
                tool_name: "Bash".into(),
                description: "d".into(),
                input_preview: "ls".into(),
            }
        );
        let verdict = BridgeFrame::PermissionVerdict {
            request_id: "r1".into(),
            behavior: "allow".into(),
        };
        assert_eq!(
            verdict.to_json(),
            r#"{"type":"permission_verdict","request_id":"r1","behavior":"allow"}"#
        );
    }

    #[test]
    fn meta_keys_follow_claudes_rule() {
        assert!(is_valid_meta_key("turn_id"));
        assert!(is_valid_meta_key("_x9"));
        assert!(!is_valid_meta_key("9x"));
        assert!(!is_valid_meta_key("turn-id"));
        assert!(!is_valid_meta_key(""));
    }
}
