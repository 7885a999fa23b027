//! `synthesis-bridge hook stop`: Claude Code's `Stop` hook, the turn-end backstop.
//!
//! Claude runs it (through its shell, as the bridge's `--settings` names it) each time it
//! finishes a turn, with the hook input JSON on stdin (`session_id`, `transcript_path`,
//! `last_assistant_message`, …) and claude's whole environment, so the `SYNTHESIS_*`
//! variables are there. It sends one `turn_end` frame (one JSON line) to the hub's Unix
//! socket (`SYNTHESIS_HOOK_SOCKET`), waits for its one-line answer, and exits. The hub
//! believes it only because it connects from under that spawn's claude (`SO_PEERCRED`, see
//! src/hub.rs). It always exits 0 and prints nothing on stdout: a failing hook must never
//! disturb Claude; problems go to stderr, which Claude keeps in its debug log.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use crate::protocol::{ChannelFrame, env};

/// Read and write limit on the hub's socket (Claude kills the hook after 10 s anyway).
const IO_TIMEOUT: Duration = Duration::from_secs(3);

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
    let (socket, session, spawn_id, token) = (
        var(env::HOOK_SOCKET)?,
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

    let mut stream =
        crate::hub::connect_hook_socket(&socket).map_err(|e| format!("connect {socket}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut line = frame.to_json();
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    // Stay connected until the bridge answers: it checks who we are while we are alive.
    let mut answer = String::new();
    BufReader::new(stream.take(4096))
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the bridge: {e}"))?;
    match answer.trim_end() {
        "ok" => Ok(()),
        other => Err(format!("the bridge said: {other}")),
    }
}

/// The `turn_id` of the last channel message Claude took into its conversation: the
/// bridge's turn ids reach Claude as the channel tag's `turn_id` attribute, and Claude records
/// the tag as written. Lets the bridge tell this turn's end from a late one of an earlier turn.
///
/// Claude also logs every channel message as it arrives, in a `queue-operation` line, before
/// it takes the message in (as a `user` entry when it starts a turn, or a `queued_command`
/// attachment when folded into a running one; docs/CLAUDE_CODE.md §9.5). Those lines are
/// skipped: a message that arrived while the turn was ending is the next turn's, and its
/// id must not end that turn (a pipelined turn, docs/SPEED.md §4).
pub fn last_turn_id(transcript: &str) -> Option<String> {
    transcript
        .lines()
        .rev()
        .filter(|line| !is_queue_operation(line))
        .find_map(turn_id_in)
}

/// A transcript line that only logs Claude's input queue.
fn is_queue_operation(line: &str) -> bool {
    line.contains(r#""type":"queue-operation""#) || line.contains(r#""type": "queue-operation""#)
}

/// The last `turn_id` attribute in one line (escaped inside a JSON string, or bare).
fn turn_id_in(line: &str) -> Option<String> {
    for needle in ["turn_id=\\\"", "turn_id=\""] {
        if let Some(at) = line.rfind(needle) {
            let rest = &line[at + needle.len()..];
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

    /// Lines as Claude Code 2.1.331 writes them when a channel message arrives while its turn
    /// ends: logged in the queue, not yet taken in. The turn that ended is turn-3's.
    #[test]
    fn a_message_only_queued_is_not_the_turn_that_ended() {
        let transcript = concat!(
            r#"{"type":"queue-operation","operation":"enqueue","content":"<channel source=\"synthesis\" turn_id=\"turn-3\">\nq\n</channel>"}"#,
            "\n",
            r#"{"type":"user","message":{"role":"user","content":"<channel source=\"synthesis\" turn_id=\"turn-3\">\nq\n</channel>"}}"#,
            "\n",
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"done"}]}}"#,
            "\n",
            r#"{"type":"queue-operation","operation":"enqueue","content":"<channel source=\"synthesis\" turn_id=\"turn-4\">\nnext\n</channel>"}"#,
            "\n",
        );
        assert_eq!(last_turn_id(transcript).as_deref(), Some("turn-3"));
    }

    /// A message folded into the running turn is recorded as a `queued_command` attachment:
    /// that turn is the one that ended.
    #[test]
    fn a_message_folded_into_the_running_turn_is_the_turn_that_ended() {
        let transcript = concat!(
            r#"{"type":"user","message":{"role":"user","content":"<channel source=\"synthesis\" turn_id=\"turn-3\">\nq\n</channel>"}}"#,
            "\n",
            r#"{"type":"queue-operation","operation":"enqueue","content":"<channel source=\"synthesis\" turn_id=\"turn-4\">\nnext\n</channel>"}"#,
            "\n",
            r#"{"type":"attachment","attachment":{"type":"queued_command","prompt":"<channel source=\"synthesis\" turn_id=\"turn-4\">\nnext\n</channel>"}}"#,
            "\n",
            r#"{"type":"queue-operation","operation":"remove","content":"<channel source=\"synthesis\" turn_id=\"turn-4\">\nnext\n</channel>"}"#,
            "\n",
        );
        assert_eq!(last_turn_id(transcript).as_deref(), Some("turn-4"));
    }
}
