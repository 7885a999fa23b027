//! The HTTP side of suspended turns (docs/PERMISSIONS.md; client tool results are read by
//! `tools.rs`, docs/CLIENT_TOOLS.md): which part of a request answers the session's open
//! questions (`classify_answers`, a pure function), the early 400 for an
//! id that is not open (`check_answers`), and the machine-readable `synthesis_pending` field
//! added to the chunk or message that carries the questions.

use super::HttpContext;
use super::openai::Completion;
use super::openclaw;
use crate::session::pending::{Answer, Pending, parse_verdicts};

/// The answers to a suspended turn's questions in the new turn, when it holds nothing else
/// (session/pending.rs): a person's `yes kqwfz` (OpenClaw's timestamp prefix allowed).
/// Empty for an ordinary turn.
pub fn classify_answers(parts: &[String]) -> Vec<Answer> {
    let text: Vec<&str> = parts
        .iter()
        .map(|p| openclaw::strip_timestamp(p).trim())
        .collect();
    parse_verdicts(&text.join("\n")).unwrap_or_default()
}

/// Answers naming a question the session does not have open (a `yes <id>`, or a `tool`
/// message's `tool_call_id`) are refused before the response starts, so a stream gets a real
/// 400 (the worker checks again when it takes the turn). A session with no open question
/// takes `yes abcde` as an ordinary message.
pub fn check_answers(ctx: &HttpContext, key: &str, answers: &[Answer]) -> Result<(), String> {
    if answers.is_empty() {
        return Ok(());
    }
    let open: Vec<String> = ctx
        .registry
        .snapshot()
        .into_iter()
        .find(|s| s.key == key)
        .map(|s| s.info.pending.into_iter().map(|p| p.id).collect())
        .unwrap_or_default();
    let unknown: Vec<&str> = answers
        .iter()
        .map(Answer::id)
        .filter(|id| !open.iter().any(|o| o == id))
        .collect();
    if open.is_empty() || unknown.is_empty() {
        return Ok(());
    }
    if matches!(answers[0], Answer::ToolResult { .. }) {
        return Err(format!(
            "no client tool call of this session waits for tool_call_id {}; open: {}. Send one `tool` message per id of the latest `tool_calls`",
            unknown.join(", "),
            open.join(", ")
        ));
    }
    Err(format!(
        "no open question has the id {}; open: {}. Answer `yes <id>` or `no <id>` with one of those",
        unknown.join(", "),
        open.join(", ")
    ))
}

/// The machine-readable form of a suspended turn's questions, added to the chunk (or
/// message) that carries their text.
pub fn pending_json(pending: &[Pending]) -> serde_json::Value {
    serde_json::to_value(pending).expect("pending questions always serialise")
}

/// The stream chunk that carries a suspended turn's question text (`content`) and the
/// questions themselves as `synthesis_pending`.
pub fn question_chunk(completion: &Completion, content: &str, pending: &[Pending]) -> String {
    let chunk = completion.chunk(serde_json::json!({ "content": content }), None);
    let mut chunk: serde_json::Value = serde_json::from_str(&chunk).expect("chunks are JSON");
    chunk["synthesis_pending"] = pending_json(pending);
    chunk.to_string()
}

/// A `chat.completion` body with the questions added to its message as `synthesis_pending`.
pub fn with_pending(body: String, pending: &[Pending]) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&body).expect("bodies are JSON");
    value["choices"][0]["message"]["synthesis_pending"] = pending_json(pending);
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_of_nothing_but_verdicts_carries_answers_and_anything_else_none() {
        let parts = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            classify_answers(&parts(&["[Tue 2026-11-24 10:14 UTC] yes kqwfz"])),
            vec![Answer::Verdict {
                id: "kqwfz".into(),
                allow: true
            }]
        );
        assert_eq!(
            classify_answers(&parts(&["no abcde", "y fghjk"])),
            vec![
                Answer::Verdict {
                    id: "abcde".into(),
                    allow: false
                },
                Answer::Verdict {
                    id: "fghjk".into(),
                    allow: true
                }
            ]
        );
        assert!(classify_answers(&parts(&["yes kqwfz", "and run lint too"])).is_empty());
        assert!(classify_answers(&parts(&["hello"])).is_empty());
    }
}
