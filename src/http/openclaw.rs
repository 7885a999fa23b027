//! OpenClaw's own conventions inside otherwise ordinary OpenAI requests (docs/ARCHITECTURE.md §10):
//! the temporary internal-context message it appends to every call, the `Runtime:` line of
//! a session's first message, the `[Tue 2026-11-24 10:14 UTC] ` prefix on user messages, and
//! the extra messages a retry adds (`<turn_aborted>`, "Continue the current task…", the
//! "[Queued user message…]" wrapper).
//!
//! Used for two things only: the optional `strip_openclaw_context` clean-up of a turn, and
//! the retry fingerprint that lets a resent turn attach to the one already in flight. Plain
//! text rules, no I/O; each is unit-tested on the captured requests.

use serde_json::Value;

use super::openai::{content_text, new_turn_start};
use crate::session::identity::{CHAIN_START, chain, history_hash, is_internal_context};

/// Whether a user message is something OpenClaw adds when it retries a turn.
fn is_retry_artifact(text: &str) -> bool {
    let body = strip_timestamp(text).trim_start();
    body.starts_with("<turn_aborted>")
        || body.starts_with("Continue the current task from the existing transcript")
}

/// `[Tue 2026-11-24 10:14 UTC] hello` → `hello`.
pub fn strip_timestamp(text: &str) -> &str {
    let t = text.trim_start();
    if t.starts_with('[')
        && let Some(end) = t.find("] ")
        && end <= 40
        && t[..end].contains("UTC")
    {
        return &t[end + 2..];
    }
    t
}

/// `[Queued user message from a previous active turn; preserved as context only…]\n<text>`
/// → `<text>`.
fn unwrap_queued(text: &str) -> &str {
    let t = strip_timestamp(text);
    if t.starts_with("[Queued user message")
        && let Some(end) = t.find(']')
    {
        return t[end + 1..].trim_start();
    }
    t
}

/// Removes the `Runtime: agent=… | session=… | …` line.
fn without_runtime_line(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("Runtime: agent="))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
}

/// The turn's user texts with OpenClaw's internal context and `Runtime:` line removed
/// (`strip_openclaw_context = true`).
pub fn strip_context(parts: Vec<String>) -> Vec<String> {
    parts
        .into_iter()
        .filter(|p| !is_internal_context(p))
        .map(|p| without_runtime_line(&p))
        .filter(|p| !p.trim().is_empty())
        .collect()
}

/// Identifies "the same turn, sent again": the history before the turn plus the turn's own
/// user text, with everything OpenClaw adds on a retry (and its internal context, and the
/// timestamps) removed. None when nothing is left to compare.
pub fn retry_fingerprint(messages: &[Value]) -> Option<u64> {
    let start = new_turn_start(messages);
    let mut hash = chain(history_hash(messages).unwrap_or(CHAIN_START), "turn", "");
    let mut any = false;
    for m in &messages[start..] {
        let role = m.get("role").and_then(Value::as_str);
        if role == Some("tool") {
            // A tool result (docs/CLIENT_TOOLS.md): a resent result request is a retry too.
            let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
            let text = content_text(m.get("content").unwrap_or(&Value::Null)).unwrap_or_default();
            hash = chain(hash, "tool", &format!("{id}\n{text}"));
            any = true;
            continue;
        }
        if role != Some("user") {
            continue;
        }
        let text = content_text(m.get("content").unwrap_or(&Value::Null)).unwrap_or_default();
        if is_internal_context(&text) || is_retry_artifact(&text) {
            continue;
        }
        let core = without_runtime_line(unwrap_queued(&text));
        if !core.trim().is_empty() {
            hash = chain(hash, "user", &core);
            any = true;
        }
    }
    any.then_some(hash)
}

/// Whether the new turn carries one of the messages OpenClaw adds when it resends a turn.
/// Only such a request may take the result of a turn that has already finished: a client
/// that simply sends the same words again (without history) means them again.
pub fn marks_a_retry(messages: &[Value]) -> bool {
    let start = new_turn_start(messages);
    messages[start..].iter().any(|m| {
        let text = content_text(m.get("content").unwrap_or(&Value::Null)).unwrap_or_default();
        is_retry_artifact(&text) || strip_timestamp(&text).starts_with("[Queued user message")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture_messages(name: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/openclaw/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let capture: Value = serde_json::from_str(&text).unwrap();
        capture["body"]["messages"].as_array().unwrap().clone()
    }

    #[test]
    fn a_retry_after_a_timeout_has_the_fingerprint_of_the_original_turn() {
        let retry = fixture_messages("retry-after-timeout.json");
        // The original call: the same first user message, then only the internal context.
        let original = vec![
            retry[0].clone(),
            retry[1].clone(),
            retry[retry.len() - 1].clone(),
        ];
        assert!(retry_fingerprint(&original).is_some());
        assert_eq!(retry_fingerprint(&retry), retry_fingerprint(&original));
    }

    #[test]
    fn the_same_words_later_in_the_conversation_are_a_new_turn() {
        let first = vec![json!({"role": "user", "content": "yes"})];
        let later = vec![
            json!({"role": "user", "content": "yes"}),
            json!({"role": "assistant", "content": "ok"}),
            json!({"role": "user", "content": "yes"}),
        ];
        assert_ne!(retry_fingerprint(&first), retry_fingerprint(&later));
        let t1 = fixture_messages("turn1-affinity-session-key.json");
        let t2 = fixture_messages("turn2-affinity-session-key.json");
        assert_ne!(retry_fingerprint(&t1), retry_fingerprint(&t2));
    }

    #[test]
    fn tool_results_have_a_fingerprint_of_their_own() {
        let ask = vec![
            json!({"role": "user", "content": "weather?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call1"}]}),
        ];
        let with = |content: &str| {
            let mut m = ask.clone();
            m.push(json!({"role": "tool", "tool_call_id": "call1", "content": content}));
            m
        };
        let sunny = retry_fingerprint(&with("sunny"));
        assert!(sunny.is_some());
        assert_eq!(
            sunny,
            retry_fingerprint(&with("sunny")),
            "a resend is the same turn"
        );
        assert_ne!(sunny, retry_fingerprint(&with("rain")));
    }

    #[test]
    fn a_queued_wrapper_and_timestamps_do_not_change_the_fingerprint() {
        let plain = vec![json!({"role": "user", "content": "[Tue 2026-11-24 10:30 UTC] do it"})];
        let wrapped = vec![
            json!({"role": "user", "content": "[Tue 2026-11-24 10:31 UTC] [Queued user message from a previous active turn; preserved as context only]\ndo it"}),
        ];
        assert_eq!(retry_fingerprint(&plain), retry_fingerprint(&wrapped));
    }

    #[test]
    fn stripping_removes_internal_context_and_the_runtime_line() {
        let messages = fixture_messages("turn1-no-affinity.json");
        let parts: Vec<String> = messages[1..]
            .iter()
            .map(|m| content_text(&m["content"]).unwrap())
            .collect();
        assert_eq!(
            strip_context(parts),
            vec!["[Tue 2026-11-24 10:28 UTC] hello one".to_string()]
        );
    }
}
