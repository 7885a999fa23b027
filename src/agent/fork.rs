//! Claude Code's own fork of a conversation (docs/HTTP_API.md §6.2): where in a transcript a
//! bridge turn ended (`fork_anchor`), and the flags that start a copy of the conversation cut
//! there (`ForkAt`, used by `AgentLauncher::args`).

use serde_json::Value;
use std::path::Path;

/// Start the new conversation as a copy of `parent` cut after the transcript message `at`:
/// `--resume <parent> --fork-session --session-id <new> --resume-session-at <at>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkAt<'a> {
    pub parent: &'a str,
    pub at: &'a str,
}

/// Transcripts larger than this are not searched for a fork point (the fork then carries the
/// restored history instead).
const MAX_TRANSCRIPT_BYTES: u64 = 64 * 1024 * 1024;

/// The uuid of the last assistant message of bridge turn `turn_id` in a Claude transcript
/// (jsonl): the last `assistant` entry after the channel message tagged with `turn_id` and
/// before the next channel message. None when the turn is not there, or no reply of it is.
pub fn fork_anchor(transcript: &Path, turn_id: &str) -> Option<String> {
    if std::fs::metadata(transcript).ok()?.len() > MAX_TRANSCRIPT_BYTES {
        return None;
    }
    let text = std::fs::read_to_string(transcript).ok()?;
    anchor_in(&text, turn_id)
}

fn anchor_in(text: &str, turn_id: &str) -> Option<String> {
    let tag = format!("turn_id=\"{turn_id}\"");
    let mut inside = false;
    let mut anchor = None;
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let kind = entry.get("type").and_then(Value::as_str);
        // A channel message starts a turn as a `user` entry, or is folded into the running
        // turn as a `queued_command` attachment (a pipelined turn, docs/CLAUDE_CODE.md §9.5).
        let said = match kind {
            Some("user") => entry
                .pointer("/message/content")
                .map(message_text)
                .unwrap_or_default(),
            Some("attachment")
                if entry.pointer("/attachment/type").and_then(Value::as_str)
                    == Some("queued_command") =>
            {
                entry
                    .pointer("/attachment/prompt")
                    .map(message_text)
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        if matches!(kind, Some("user" | "attachment")) {
            if said.contains("<channel source=") {
                if said.contains(&tag) {
                    inside = true;
                    anchor = None;
                } else if inside {
                    break;
                }
            }
        } else if kind == Some("assistant")
            && inside
            && let Some(uuid) = entry.get("uuid").and_then(Value::as_str)
        {
            anchor = Some(uuid.to_string());
        }
    }
    anchor
}

/// A message's text: a string, or the `text` of its content blocks.
fn message_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(kind: &str, content: Value, uuid: &str) -> String {
        json!({"type": kind, "uuid": uuid, "message": {"role": kind, "content": content}})
            .to_string()
    }

    fn channel(id: &str, text: &str) -> String {
        format!("<channel source=\"synthesis\" turn_id=\"{id}\">\n{text}\n</channel>")
    }

    /// Claude's `reply` call (`reply_uuid`) and its result.
    fn reply_call(reply_uuid: &str) -> [String; 2] {
        [
            line(
                "assistant",
                json!([{"type": "tool_use", "name": "reply"}]),
                reply_uuid,
            ),
            line(
                "user",
                json!([{"type": "tool_result", "content": "sent"}]),
                "r1",
            ),
        ]
    }

    #[test]
    fn the_anchor_is_the_turns_last_assistant_message() {
        let [call, result] = reply_call("a1");
        let transcript = [
            r#"{"type":"summary","summary":"x"}"#.to_string(),
            line("user", json!(channel("turn-1", "a")), "u1"),
            call,
            result,
            line("assistant", json!([{"type": "text", "text": "done"}]), "a2"),
            line("user", json!(channel("turn-2", "b")), "u2"),
            line("assistant", json!("b reply"), "a3"),
            "{not json".to_string(),
        ]
        .join("\n");
        assert_eq!(anchor_in(&transcript, "turn-1").as_deref(), Some("a2"));
        assert_eq!(anchor_in(&transcript, "turn-2").as_deref(), Some("a3"));
        assert_eq!(anchor_in(&transcript, "turn-3"), None);
        // A turn with no reply in the transcript has no anchor.
        let unanswered = line("user", json!(channel("turn-9", "c")), "u9");
        assert_eq!(anchor_in(&unanswered, "turn-9"), None);
    }

    #[test]
    fn a_turn_folded_into_the_previous_one_ends_that_ones_span() {
        let [call, result] = reply_call("a1");
        let folded = channel("turn-2", "q");
        let transcript = [
            line("user", json!(channel("turn-1", "q")), "u1"),
            call,
            result,
            json!({"type": "queue-operation", "operation": "remove", "content": folded})
                .to_string(),
            json!({"type": "attachment", "uuid": "q2",
                   "attachment": {"type": "queued_command", "prompt": folded}})
            .to_string(),
            line(
                "assistant",
                json!([{"type": "tool_use", "name": "reply"}]),
                "a2",
            ),
            line("assistant", json!([{"type": "text", "text": "done"}]), "a3"),
        ]
        .join("\n");
        assert_eq!(anchor_in(&transcript, "turn-1").as_deref(), Some("a1"));
        assert_eq!(anchor_in(&transcript, "turn-2").as_deref(), Some("a3"));
    }
}
