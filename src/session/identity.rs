//! Which conversation a request belongs to: the session key (DESIGN.md §3).
//!
//! Resolution order, first found wins:
//! 1. header `X-Session-Key` (or `x-openclaw-session-key`), used as is;
//! 2. headers `X-Agent-Id` + `X-Chat-Id` → `agent::chat`;
//! 3. OpenClaw's affinity headers `x-session-affinity`, then `session_id`, with a trailing
//!    `:<count>` removed (OpenClaw bumps that count at each compaction of the same conversation);
//! 4. body `user`, then body `metadata.session_key`;
//! 5. the configured fallback key.
//!
//! Keys are opaque text. This module never turns a key into a path; whoever does must
//! sanitise it first.

use serde_json::Value;

/// The resolved key and the rule that chose it (logged, and shown per session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    pub key: String,
    pub source: &'static str,
}

/// Keys longer than this are refused (a header can carry 8 KiB; a key is a name, not data).
pub const MAX_KEY_LEN: usize = 512;

/// `headers` are (lower-case name, value) pairs. A key that was given but cannot be used
/// (over `MAX_KEY_LEN`, or holding NUL) is an error rather than a silent fall back to the
/// shared key: two users must never end up in one conversation by accident.
pub fn resolve(headers: &[(String, String)], body: &Value, fallback: &str) -> Result<SessionKey, String> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let found = |key: String, source| Some(SessionKey { key, source });
    let chosen = if let Some(v) = header("x-session-key") {
        found(v.to_string(), "x-session-key")
    } else if let Some(v) = header("x-openclaw-session-key") {
        found(v.to_string(), "x-openclaw-session-key")
    } else if let (Some(agent), Some(chat)) = (header("x-agent-id"), header("x-chat-id")) {
        found(format!("{agent}::{chat}"), "x-agent-id+x-chat-id")
    } else if let Some(v) = header("x-session-affinity") {
        found(strip_boundary_count(v).to_string(), "x-session-affinity")
    } else if let Some(v) = header("session_id") {
        found(strip_boundary_count(v).to_string(), "session_id")
    } else if let Some(v) = body.get("user").and_then(Value::as_str).filter(|v| !v.is_empty()) {
        found(v.to_string(), "body.user")
    } else if let Some(v) = body
        .pointer("/metadata/session_key")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
    {
        found(v.to_string(), "body.metadata.session_key")
    } else {
        None
    };
    match chosen {
        Some(k) if k.key.len() > MAX_KEY_LEN => {
            Err(format!("session key from {} is longer than {MAX_KEY_LEN} bytes", k.source))
        }
        Some(k) if k.key.contains('\0') => Err(format!("session key from {} contains NUL", k.source)),
        Some(k) => Ok(k),
        None => Ok(SessionKey { key: fallback.to_string(), source: "fallback" }),
    }
}

/// `abc:3` → `abc`; a value without a numeric suffix is returned whole.
fn strip_boundary_count(value: &str) -> &str {
    match value.rsplit_once(':') {
        Some((stem, count)) if !stem.is_empty() && !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn key(headers: &[(&str, &str)], body: Value) -> (String, &'static str) {
        let k = resolve(&h(headers), &body, "default::default").unwrap();
        (k.key, k.source)
    }

    #[test]
    fn explicit_header_wins_over_everything() {
        let all = [
            ("x-session-key", "k1"),
            ("x-openclaw-session-key", "k2"),
            ("x-agent-id", "a"),
            ("x-chat-id", "c"),
            ("x-session-affinity", "s:1"),
        ];
        assert_eq!(key(&all, json!({"user": "u"})), ("k1".into(), "x-session-key"));
        assert_eq!(key(&all[1..], json!({})), ("k2".into(), "x-openclaw-session-key"));
    }

    #[test]
    fn agent_and_chat_need_both_headers() {
        assert_eq!(key(&[("x-agent-id", "main"), ("x-chat-id", "42")], json!({})).0, "main::42");
        assert_eq!(key(&[("x-agent-id", "main")], json!({})).1, "fallback");
    }

    #[test]
    fn affinity_headers_drop_the_boundary_count() {
        assert_eq!(key(&[("x-session-affinity", "s1-uuid:0")], json!({})).0, "s1-uuid");
        assert_eq!(key(&[("session_id", "s1-uuid:12")], json!({})), ("s1-uuid".into(), "session_id"));
        assert_eq!(key(&[("session_id", "agent:main:x")], json!({})).0, "agent:main:x");
        assert_eq!(key(&[("session_id", ":7")], json!({})).0, ":7");
    }

    #[test]
    fn body_user_then_metadata_then_fallback() {
        assert_eq!(key(&[], json!({"user": "u1", "metadata": {"session_key": "m"}})).0, "u1");
        assert_eq!(key(&[], json!({"metadata": {"session_key": "m"}})).1, "body.metadata.session_key");
        assert_eq!(key(&[], json!({"user": ""})), ("default::default".into(), "fallback"));
    }

    #[test]
    fn blank_keys_fall_back_but_unusable_ones_are_refused() {
        assert_eq!(key(&[("x-session-key", "  ")], json!({})).1, "fallback");
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let err = resolve(&h(&[("x-session-key", &long)]), &json!({}), "d").unwrap_err();
        assert!(err.contains("longer than"), "{err}");
        assert!(resolve(&[], &json!({"user": "a\0b"}), "d").unwrap_err().contains("NUL"));
    }
}
