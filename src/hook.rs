//! `synthesis-bridge hook stop`: Claude Code's `Stop` hook, the turn-end backstop.
//!
//! Claude runs it (through its shell, as the bridge's `--settings` names it) each time it
//! finishes a turn, with the hook input JSON on stdin (`session_id`, `transcript_path`,
//! `last_assistant_message`, …) and claude's whole environment, so the `SYNTHESIS_*`
//! variables are there. It sends one `turn_end` frame to the bridge on a connection of its
//! own and exits. It always exits 0 and prints nothing on stdout: a failing hook must never
//! disturb Claude; problems go to stderr, which Claude keeps in its debug log.

use serde_json::Value;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::protocol::{ChannelFrame, env};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(args: &[String]) -> u8 {
    match args.first().map(String::as_str) {
        Some("stop") => {
            if let Err(e) = send_turn_end() {
                eprintln!("synthesis-bridge hook stop: {e}");
            }
            0
        }
        _ => {
            eprintln!("usage: synthesis-bridge hook stop   (run by Claude Code as its Stop hook)");
            2
        }
    }
}

fn send_turn_end() -> Result<(), String> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| format!("{name} is not set (not started by the bridge?)"))
    };
    let (url, session, spawn_id, token) = (
        var(env::WS_URL)?,
        var(env::OPENCLAW_SESSION)?,
        var(env::SPAWN_ID)?,
        var(env::BRIDGE_TOKEN)?,
    );
    let mut input = String::new();
    std::io::stdin()
        .take(16 << 20)
        .read_to_string(&mut input)
        .map_err(|e| format!("reading hook input: {e}"))?;
    let input: Value = serde_json::from_str(&input).unwrap_or(Value::Null);
    let last_assistant_message = input
        .get("last_assistant_message")
        .and_then(Value::as_str)
        .map(String::from);
    let turn = input
        .get("transcript_path")
        .and_then(Value::as_str)
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|transcript| last_turn_id(&transcript));
    let frame = ChannelFrame::TurnEnd {
        session,
        turn,
        last_assistant_message,
        spawn_id,
        token,
    };

    let authority = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or("bad SYNTHESIS_WS_URL")?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let (mut ws, _) =
        tungstenite::client(url.as_str(), stream).map_err(|e| format!("handshake: {e}"))?;
    ws.send(tungstenite::Message::text(frame.to_json()))
        .map_err(|e| e.to_string())?;
    // Wait for the bridge to close, so the frame is read before we go.
    while ws.read().is_ok() {}
    Ok(())
}

/// The `turn_id` of the last channel message in a transcript: the bridge's turn ids reach
/// Claude as the channel tag's `turn_id` attribute, and Claude records the tag as written.
/// Lets the bridge tell this turn's end from a late one of an earlier turn.
pub fn last_turn_id(transcript: &str) -> Option<String> {
    for needle in ["turn_id=\\\"", "turn_id=\""] {
        if let Some(at) = transcript.rfind(needle) {
            let rest = &transcript[at + needle.len()..];
            let id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if !id.is_empty() {
                return Some(id);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::last_turn_id;

    #[test]
    fn finds_the_latest_turn_id_in_a_jsonl_transcript() {
        let transcript = concat!(
            r#"{"type":"user","message":{"content":"<channel source=\"synthesis\" turn_id=\"turn-4\">a</channel>"}}"#,
            "\n",
            r#"{"type":"user","message":{"content":"<channel source=\"synthesis\" turn_id=\"turn-7\">b</channel>"}}"#,
            "\n"
        );
        assert_eq!(last_turn_id(transcript).as_deref(), Some("turn-7"));
        assert_eq!(last_turn_id("no channel here"), None);
    }
}
