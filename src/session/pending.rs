//! Questions a suspended turn waits on, and the answers that resume it (the suspended-turn
//! design, docs/ARCHITECTURE.md "Suspended turns"). Claude's turn keeps running inside
//! claude, blocked on an answer (a permission verdict; a client tool's result); the response
//! that carried the turn so far ends with the questions, and a later request of the session
//! carries the answers. This file owns what both sides agree on: `Pending` (what is asked,
//! with the id a person or program answers with), `Answer` (what comes back), the short
//! letter ids, how a person's "yes kqwfz" is recognised, and the question text shown in chat.

use serde::Serialize;

/// Letters of the short ids: lower case, without the easily confused `i`, `l` and `o`, so
/// an id is quick to type on a phone keyboard.
const ID_LETTERS: &[u8] = b"abcdefghjkmnpqrstuvwxyz";
/// Letters in an id (23^5 ≈ 6.4 million ids; a session has only a few pending at a time).
pub const ID_LEN: usize = 5;

/// What the bridge does when Claude asks for a tool permission (`permission_relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PermissionRelay {
    /// Ask the person in the chat; the turn is suspended until they answer.
    #[default]
    Chat,
    /// Answer "deny" at once, so a turn never stalls.
    Deny,
    /// Nobody answers: the turn fails at once with a message naming this setting.
    Off,
}

impl PermissionRelay {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "chat" => Ok(PermissionRelay::Chat),
            "deny" => Ok(PermissionRelay::Deny),
            "off" => Ok(PermissionRelay::Off),
            other => Err(format!(
                "permission_relay must be chat, deny or off, not {other:?}"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PermissionRelay::Chat => "chat",
            PermissionRelay::Deny => "deny",
            PermissionRelay::Off => "off",
        }
    }
}

/// One question of a suspended turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// What the client answers with (`yes <id>`, `/v1/sessions/<key>/permissions/<id>`).
    pub id: String,
    #[serde(flatten)]
    pub kind: PendingKind,
}

/// What a pending question is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PendingKind {
    /// Claude wants to use a tool that needs permission (the channel's `permission_request`).
    Permission {
        request_id: String,
        tool_name: String,
        description: String,
        input_preview: String,
    },
    /// Claude called one of the client's tools (the channel's `client_tool_calls`); the
    /// pending id is `call_id`, the `tool_calls[].id` the client answers with
    /// (docs/CLIENT_TOOLS.md).
    ClientToolCall {
        call_id: String,
        name: String,
        /// The call's arguments as JSON text.
        arguments: String,
    },
}

/// An answer to a pending question, carried by the request that resumes the turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `yes <id>` / `no <id>` (or `POST /v1/sessions/<key>/permissions/<id>`).
    Verdict { id: String, allow: bool },
    /// A `tool` message: the client's result of the client tool call `call_id`.
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
}

impl Answer {
    /// The pending id it answers.
    pub fn id(&self) -> &str {
        match self {
            Answer::Verdict { id, .. } => id,
            Answer::ToolResult { call_id, .. } => call_id,
        }
    }

    /// Whether it is the kind of answer `kind` takes.
    pub fn fits(&self, kind: &PendingKind) -> bool {
        matches!(
            (self, kind),
            (Answer::Verdict { .. }, PendingKind::Permission { .. })
                | (
                    Answer::ToolResult { .. },
                    PendingKind::ClientToolCall { .. }
                )
        )
    }
}

impl PendingKind {
    /// The pending id for this question: a client tool call keeps its call id (the client
    /// answers with it); a permission question gets a short id not among `taken`.
    pub fn pending(self, taken: &[Pending]) -> Pending {
        let id = match &self {
            PendingKind::ClientToolCall { call_id, .. } => call_id.clone(),
            PendingKind::Permission { .. } => new_id(taken),
        };
        Pending { id, kind: self }
    }
}

/// A fresh short id not among `taken`.
pub fn new_id(taken: &[Pending]) -> String {
    loop {
        let random = uuid::Uuid::new_v4();
        let id: String = random.as_bytes()[..ID_LEN]
            .iter()
            .map(|b| ID_LETTERS[usize::from(*b) % ID_LETTERS.len()] as char)
            .collect();
        if !taken.iter().any(|p| p.id == id) {
            return id;
        }
    }
}

/// The verdicts in a person's message, when that is all it says: every non-empty line is
/// `yes|y|allow|no|n|deny <id>` (case-insensitive, an optional trailing `.` or `!`). None for
/// anything else, which is then an ordinary message.
pub fn parse_verdicts(text: &str) -> Option<Vec<Answer>> {
    let mut answers = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.trim_end_matches(['.', '!']);
        let mut words = line.split_whitespace();
        let (Some(word), Some(id), None) = (words.next(), words.next(), words.next()) else {
            return None;
        };
        let allow = match word.to_ascii_lowercase().as_str() {
            "yes" | "y" | "allow" => true,
            "no" | "n" | "deny" => false,
            _ => return None,
        };
        let id = id.trim_matches(['`', '"', '\'']).to_ascii_lowercase();
        if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_lowercase()) {
            return None;
        }
        answers.push(Answer::Verdict { id, allow });
    }
    (!answers.is_empty()).then_some(answers)
}

/// The chat text that asks a person about `pending` (one paragraph per question). Client
/// tool calls are no question to a person (they become `tool_calls`) and have no text.
pub fn question_text(pending: &[Pending]) -> String {
    pending
        .iter()
        .filter(|p| matches!(p.kind, PendingKind::Permission { .. }))
        .map(|p| match &p.kind {
            PendingKind::Permission {
                tool_name,
                description,
                input_preview,
                ..
            } => {
                let mut text = format!("Claude wants to run **{tool_name}**");
                let preview = one_line(&readable_preview(input_preview), 300);
                if !preview.is_empty() {
                    text.push_str(&format!(": `{preview}`"));
                }
                let description = one_line(description, 300);
                if !description.is_empty() {
                    text.push_str(&format!(" ({description})"));
                }
                let id = &p.id;
                text.push_str(&format!(
                    ". Reply `yes {id}` to allow or `no {id}` to deny."
                ));
                text
            }
            PendingKind::ClientToolCall { .. } => String::new(),
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Claude's `input_preview` is the tool input as JSON (`{ "command": "npm test", ... }`); a
/// person reads the command or the file better than the JSON.
fn readable_preview(preview: &str) -> String {
    let Ok(serde_json::Value::Object(input)) = serde_json::from_str(preview) else {
        return preview.to_string();
    };
    ["command", "file_path", "path", "url", "pattern"]
        .iter()
        .find_map(|key| input.get(*key).and_then(|v| v.as_str()))
        .map_or_else(|| preview.to_string(), String::from)
}

/// `text` on one line, without backticks (they would end the code span), cut at `max` chars.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('`', "'");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permission(id: &str) -> Pending {
        Pending {
            id: id.into(),
            kind: PendingKind::Permission {
                request_id: "r1".into(),
                tool_name: "Bash".into(),
                description: "runs the test suite".into(),
                input_preview: "npm test".into(),
            },
        }
    }

    #[test]
    fn ids_are_short_easy_letters_and_unique_among_the_pending() {
        let taken = vec![permission("abcde")];
        for _ in 0..200 {
            let id = new_id(&taken);
            assert_eq!(id.len(), ID_LEN);
            assert!(id.bytes().all(|b| ID_LETTERS.contains(&b)), "{id}");
            assert_ne!(id, "abcde");
        }
    }

    #[test]
    fn verdicts_are_recognised_only_when_they_are_the_whole_message() {
        let v = |id: &str, allow| Answer::Verdict {
            id: id.into(),
            allow,
        };
        assert_eq!(parse_verdicts("yes kqwfz"), Some(vec![v("kqwfz", true)]));
        assert_eq!(parse_verdicts("  Y KQWFZ "), Some(vec![v("kqwfz", true)]));
        assert_eq!(
            parse_verdicts("allow `kqwfz`."),
            Some(vec![v("kqwfz", true)])
        );
        assert_eq!(parse_verdicts("No kqwfz!"), Some(vec![v("kqwfz", false)]));
        assert_eq!(parse_verdicts("deny kqwfz"), Some(vec![v("kqwfz", false)]));
        assert_eq!(
            parse_verdicts("yes abcde\nno fghjk\n"),
            Some(vec![v("abcde", true), v("fghjk", false)])
        );
        for not in [
            "",
            "yes",
            "yes please do it",
            "no thanks",
            "maybe kqwfz",
            "yes kqwf",
            "yes kqwfz1",
            "yes kqwfz\nand also run the tests",
        ] {
            assert_eq!(parse_verdicts(not), None, "{not:?}");
        }
    }

    #[test]
    fn the_question_names_the_tool_the_command_and_both_answers() {
        let text = question_text(&[permission("kqwfz")]);
        assert_eq!(
            text,
            "Claude wants to run **Bash**: `npm test` (runs the test suite). Reply `yes kqwfz` to allow or `no kqwfz` to deny."
        );
        let json_preview = Pending {
            id: "kqwfz".into(),
            kind: PendingKind::Permission {
                request_id: "r1".into(),
                tool_name: "Bash".into(),
                description: "Write it".into(),
                input_preview:
                    r#"{ "command": "echo relayed > proof.txt", "description": "Write it" }"#.into(),
            },
        };
        assert!(
            question_text(&[json_preview]).contains(": `echo relayed > proof.txt` ("),
            "the command, not the JSON"
        );
        let two = question_text(&[permission("abcde"), permission("fghjk")]);
        assert!(
            two.contains("`yes abcde`") && two.contains("`no fghjk`"),
            "{two}"
        );
    }

    #[test]
    fn pending_serialises_flat_with_its_kind() {
        let json = serde_json::to_value(permission("kqwfz")).unwrap();
        assert_eq!(json["id"], "kqwfz");
        assert_eq!(json["kind"], "permission");
        assert_eq!(json["tool_name"], "Bash");
        assert_eq!(json["input_preview"], "npm test");
    }
}
