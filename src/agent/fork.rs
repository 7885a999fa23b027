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
        if kind == Some("user") {
            let content = entry.pointer("/message/content");
            let said = content.map(message_text).unwrap_or_default();
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

    #[test]
    fn the_anchor_is_the_turns_last_assistant_message() {
        let channel = |id: &str, text: &str| {
            json!(format!(
                "<channel source=\"synthesis\" turn_id=\"{id}\">\n{text}\n</channel>"
            ))
        };
        let transcript = [
            r#"{"type":"summary","summary":"x"}"#.to_string(),
            line("user", channel("turn-1", "a"), "u1"),
            line(
                "assistant",
                json!([{"type": "tool_use", "name": "reply"}]),
                "a1",
            ),
            line(
                "user",
                json!([{"type": "tool_result", "content": "ok"}]),
                "r1",
            ),
            line("assistant", json!([{"type": "text", "text": "done"}]), "a2"),
            line("user", channel("turn-2", "b"), "u2"),
            line("assistant", json!("b reply"), "a3"),
            "{not json".to_string(),
        ]
        .join("\n");
        assert_eq!(anchor_in(&transcript, "turn-1").as_deref(), Some("a2"));
        assert_eq!(anchor_in(&transcript, "turn-2").as_deref(), Some("a3"));
        assert_eq!(anchor_in(&transcript, "turn-3"), None);
        // A turn with no reply in the transcript has no anchor.
        let unanswered = line("user", channel("turn-9", "c"), "u9");
        assert_eq!(anchor_in(&unanswered, "turn-9"), None);
    }
}
