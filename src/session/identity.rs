//! Which conversation a request belongs to: the session key (docs/ARCHITECTURE.md §6.2).
//!
//! Resolution order, first found wins:
//! 1. header `X-Session-Key` (or `x-openclaw-session-key`), used as is;
//! 2. headers `X-Agent-Id` + `X-Chat-Id` → `agent::chat`;
//! 3. OpenClaw's affinity headers `x-session-affinity`, then `session_id`, then body
//!    `prompt_cache_key`, each with a trailing `:<count>` removed (OpenClaw bumps that count
//!    at each compaction of the same conversation);
//! 4. body `user`, then body `metadata.session_key`;
//! 5. the `session=` value of OpenClaw's `Runtime:` line in the first user message;
//! 6. conversation continuation (`conversation_match`, on by default), for clients that send
//!    no id at all: a request whose history (every message before its new turn) hashes to
//!    the chain a finished turn left behind continues that session; any other request starts
//!    a new one (`conv-<uuid>`), as a stateless OpenAI client expects;
//! 7. with `conversation_match` off, the configured fallback key (one shared conversation).
//!
//! Keys are opaque text. This module never turns a key into a path; whoever does must
//! sanitise it first.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

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
/// `continuations` is None when conversation matching is off.
pub fn resolve(
    headers: &[(String, String)],
    body: &Value,
    fallback: &str,
    continuations: Option<&Continuations>,
) -> Result<SessionKey, String> {
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
    } else if let Some(v) = body
        .get("prompt_cache_key")
        .and_then(Value::as_str)
        .filter(|v| !v.trim().is_empty())
    {
        found(
            strip_boundary_count(v.trim()).to_string(),
            "body.prompt_cache_key",
        )
    } else if let Some(v) = body
        .get("user")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
    {
        found(v.to_string(), "body.user")
    } else if let Some(v) = body
        .pointer("/metadata/session_key")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
    {
        found(v.to_string(), "body.metadata.session_key")
    } else if let Some(v) = runtime_session(body) {
        found(v, "openclaw-runtime-line")
    } else if let Some(continuations) = continuations {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let history = history_hash(messages);
        match history.and_then(|h| continuations.lookup(h)) {
            Some(key) => found(key, "conversation-continuation"),
            None => found(
                format!("conv-{}", uuid::Uuid::new_v4().simple()),
                "new-conversation",
            ),
        }
    } else {
        None
    };
    match chosen {
        Some(k) if k.key.len() > MAX_KEY_LEN => Err(format!(
            "session key from {} is longer than {MAX_KEY_LEN} bytes",
            k.source
        )),
        Some(k) if k.key.contains('\0') => {
            Err(format!("session key from {} contains NUL", k.source))
        }
        Some(k) => Ok(k),
        None => Ok(SessionKey {
            key: fallback.to_string(),
            source: "fallback",
        }),
    }
}

/// The `session=` value of the `Runtime: agent=… | session=… | …` line OpenClaw puts in a
/// session's first user message.
fn runtime_session(body: &Value) -> Option<String> {
    let first_user = body
        .get("messages")?
        .as_array()?
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    let text = match first_user.get("content")? {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return None,
    };
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Runtime:"))?;
    line.split('|')
        .find_map(|field| field.trim().strip_prefix("session="))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether a user message is OpenClaw's temporary internal-context block (sent with every
/// call, never kept in the history of the next one).
pub fn is_internal_context(text: &str) -> bool {
    text.trim_start()
        .starts_with("<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>")
}

/// Extends a conversation hash by one message. FNV-1a over role and text.
pub fn chain(hash: u64, role: &str, text: &str) -> u64 {
    crate::fnv::extend(
        hash,
        role.bytes()
            .chain([0])
            .chain(text.trim().bytes())
            .chain([0xff]),
    )
}

pub const CHAIN_START: u64 = crate::fnv::OFFSET_BASIS;

/// The hash of the `user`/`assistant` messages before the new turn (internal-context
/// blocks left out); None when there are none (a conversation's first request).
pub fn history_hash(messages: &[Value]) -> Option<u64> {
    let history = &messages[..crate::http::openai::new_turn_start(messages)];
    (!history.is_empty()).then(|| conversation_hash(CHAIN_START, history))
}

/// Folds `user`/`assistant` messages into `hash`, skipping internal-context blocks.
pub fn conversation_hash(hash: u64, messages: &[Value]) -> u64 {
    messages.iter().fold(hash, |h, m| {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return h;
        }
        let text = crate::http::openai::content_text(m.get("content").unwrap_or(&Value::Null))
            .unwrap_or_default();
        if role == "user" && is_internal_context(&text) {
            h
        } else {
            chain(h, role, &text)
        }
    })
}

/// Chain hash → session key, for the most recent turns (bounded, oldest forgotten first).
pub struct Continuations {
    inner: Mutex<(HashMap<u64, String>, VecDeque<u64>)>,
    capacity: usize,
}

impl Continuations {
    pub fn new(capacity: usize) -> Self {
        Continuations {
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
            capacity,
        }
    }

    pub fn lookup(&self, hash: u64) -> Option<String> {
        crate::session::shared::lock(&self.inner)
            .0
            .get(&hash)
            .cloned()
    }

    /// Records that a request whose history hashes to `hash` continues `key`.
    pub fn remember(&self, hash: u64, key: &str) {
        let mut inner = crate::session::shared::lock(&self.inner);
        let (map, order) = &mut *inner;
        if map.insert(hash, key.to_string()).is_none() {
            order.push_back(hash);
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}

/// `abc:3` → `abc`; a value without a numeric suffix is returned whole.
fn strip_boundary_count(value: &str) -> &str {
    match value.rsplit_once(':') {
        Some((stem, count))
            if !stem.is_empty()
                && !count.is_empty()
                && count.bytes().all(|b| b.is_ascii_digit()) =>
        {
            stem
        }
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn key(headers: &[(&str, &str)], body: Value) -> (String, &'static str) {
        let k = resolve(&h(headers), &body, "default::default", None).unwrap();
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
        assert_eq!(
            key(&all, json!({"user": "u"})),
            ("k1".into(), "x-session-key")
        );
        assert_eq!(
            key(&all[1..], json!({})),
            ("k2".into(), "x-openclaw-session-key")
        );
    }

    #[test]
    fn agent_and_chat_need_both_headers() {
        assert_eq!(
            key(&[("x-agent-id", "main"), ("x-chat-id", "42")], json!({})).0,
            "main::42"
        );
        assert_eq!(key(&[("x-agent-id", "main")], json!({})).1, "fallback");
    }

    #[test]
    fn affinity_headers_drop_the_boundary_count() {
        assert_eq!(
            key(&[("x-session-affinity", "s1-uuid:0")], json!({})).0,
            "s1-uuid"
        );
        assert_eq!(
            key(&[("session_id", "s1-uuid:12")], json!({})),
            ("s1-uuid".into(), "session_id")
        );
        assert_eq!(
            key(&[("session_id", "agent:main:x")], json!({})).0,
            "agent:main:x"
        );
        assert_eq!(key(&[("session_id", ":7")], json!({})).0, ":7");
    }

    #[test]
    fn body_user_then_metadata_then_fallback() {
        assert_eq!(
            key(&[], json!({"user": "u1", "metadata": {"session_key": "m"}})).0,
            "u1"
        );
        assert_eq!(
            key(&[], json!({"metadata": {"session_key": "m"}})).1,
            "body.metadata.session_key"
        );
        assert_eq!(
            key(&[], json!({"user": ""})),
            ("default::default".into(), "fallback")
        );
    }

    #[test]
    fn blank_keys_fall_back_but_unusable_ones_are_refused() {
        assert_eq!(key(&[("x-session-key", "  ")], json!({})).1, "fallback");
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let err = resolve(&h(&[("x-session-key", &long)]), &json!({}), "d", None).unwrap_err();
        assert!(err.contains("longer than"), "{err}");
        assert!(
            resolve(&[], &json!({"user": "a\0b"}), "d", None)
                .unwrap_err()
                .contains("NUL")
        );
    }

    fn fixture(name: &str) -> (Vec<(String, String)>, Value) {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/openclaw/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let capture: Value = serde_json::from_str(&text).unwrap();
        let headers = capture["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap().to_string()))
            .collect();
        (headers, capture["body"].clone())
    }

    #[test]
    fn openclaw_affinity_captures_resolve_to_the_stable_session_id() {
        let (h1, b1) = fixture("turn1-affinity-session-key.json");
        let (h2, b2) = fixture("turn2-affinity-session-key.json");
        let k1 = resolve(&h1, &b1, "d", None).unwrap();
        assert_eq!(
            k1,
            SessionKey {
                key: "98130faa-5e06-42a6-9e16-61f030ba2e8c".into(),
                source: "x-session-affinity"
            }
        );
        assert_eq!(resolve(&h2, &b2, "d", None).unwrap().key, k1.key);
        let only_cache_key = resolve(&[], &b1, "d", None).unwrap();
        assert_eq!(only_cache_key.source, "body.prompt_cache_key");
        assert_eq!(only_cache_key.key, k1.key);
    }

    #[test]
    fn openclaw_without_affinity_uses_the_runtime_line() {
        let (h1, b1) = fixture("turn1-no-affinity.json");
        let (h2, b2) = fixture("turn2-no-affinity.json");
        let k1 = resolve(&h1, &b1, "d", None).unwrap();
        assert_eq!(
            k1,
            SessionKey {
                key: "agent:main:explicit:s1".into(),
                source: "openclaw-runtime-line"
            }
        );
        assert_eq!(resolve(&h2, &b2, "d", None).unwrap().key, k1.key);
    }

    #[test]
    fn clients_without_any_id_continue_by_history_and_start_fresh_without_it() {
        let continuations = Continuations::new(16);
        let first = json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]});
        let a = resolve(&[], &first, "d", Some(&continuations)).unwrap();
        let b = resolve(&[], &first, "d", Some(&continuations)).unwrap();
        assert_eq!(a.source, "new-conversation");
        assert_ne!(
            a.key, b.key,
            "a request with no history starts a new conversation"
        );
        // The turn finished: the client's next history is its messages plus the reply.
        let next = conversation_hash(
            CHAIN_START,
            &[
                json!({"role": "user", "content": "hi"}),
                json!({"role": "assistant", "content": "hello"}),
            ],
        );
        continuations.remember(next, &a.key);
        let second = json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "more"},
            {"role": "user", "content": [{"type": "text", "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>> x"}]},
        ]});
        assert_eq!(
            resolve(&[], &second, "d", Some(&continuations)).unwrap(),
            SessionKey {
                key: a.key.clone(),
                source: "conversation-continuation"
            }
        );
        let unknown = json!({"messages": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]});
        assert_eq!(
            resolve(&[], &unknown, "d", Some(&continuations))
                .unwrap()
                .source,
            "new-conversation"
        );
        assert_eq!(
            resolve(&[], &unknown, "d", None).unwrap().source,
            "fallback"
        );
    }

    #[test]
    fn continuation_memory_is_bounded() {
        let c = Continuations::new(2);
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            c.remember(i as u64, key);
        }
        assert_eq!(c.lookup(0), None);
        assert_eq!(c.lookup(2).as_deref(), Some("c"));
    }
}
