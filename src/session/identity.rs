//! Which conversation a request belongs to: the session key (docs/HTTP_API.md §6.2).
//!
//! Resolution order, first found wins, among the sources `session_key_sources` enables
//! (`KEY_SOURCES`; by default all but `user`, which OpenAI defines as an end-user id):
//! 1. header `X-Session-Key` (or `x-openclaw-session-key`), used as is;
//! 2. headers `X-Agent-Id` + `X-Chat-Id` → `agent::chat`;
//! 3. OpenClaw's affinity headers `x-session-affinity`, then `session_id`, then body
//!    `prompt_cache_key`, each with a trailing `:<count>` removed (OpenClaw bumps that count
//!    at each compaction of the same conversation);
//! 4. body `user` (when enabled), then body `metadata.session_key`;
//! 5. the `session=` value of OpenClaw's `Runtime:` line in the first user message;
//! 6. conversation matching (`conversation_match`, on by default), for clients that send no
//!    id at all: an identical request body within `retry_grace` is a retry of that request's
//!    session; else the conversation tree (`Continuations`): a history equal to a session's
//!    latest unclaimed point continues it, one equal to an earlier point forks, any other
//!    starts a new conversation (`conv-<uuid>`);
//! 7. with `conversation_match` off, the configured fallback key (one shared conversation).
//!
//! Keys are opaque text. This module never turns a key into a path; whoever does must
//! sanitise it first.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::recent_requests::RecentRequests;
pub use super::recent_requests::RequestNote;

/// The resolved key and the rule that chose it (logged, and shown per session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    pub key: String,
    pub source: &'static str,
}

/// Keys longer than this are refused (a header can carry 8 KiB; a key is a name, not data).
pub const MAX_KEY_LEN: usize = 512;

/// Every place a session key can come from, in the order they are tried (`session_key_sources`
/// picks which are used; the order stays this one).
pub const KEY_SOURCES: &[&str] = &[
    "x-session-key",
    "x-openclaw-session-key",
    "x-agent-id+x-chat-id",
    "x-session-affinity",
    "session_id",
    "prompt_cache_key",
    "user",
    "metadata.session_key",
    "runtime_line",
];

/// The sources used unless configured: all but `user`, which OpenAI defines as an end-user
/// id (one person's conversations are many conversations, not one).
pub const DEFAULT_KEY_SOURCES: &[&str] = &[
    "x-session-key",
    "x-openclaw-session-key",
    "x-agent-id+x-chat-id",
    "x-session-affinity",
    "session_id",
    "prompt_cache_key",
    "metadata.session_key",
    "runtime_line",
];

/// Where the sources' rules end and conversation matching begins; sources that name a
/// conversation matched by history rather than by an id the client sent.
pub const MATCHED_SOURCES: &[&str] = &[
    "conversation-continuation",
    "conversation-fork",
    "new-conversation",
    "identical-request-retry",
];

/// Conversation matching for one request: the tree and the hash of the raw request body
/// (an identical body within `retry_grace` is a retry; see `Continuations::retry_of`).
pub struct Matching<'a> {
    pub continuations: &'a Continuations,
    pub body_hash: u64,
    pub retry_grace: Duration,
}

/// `headers` are (lower-case name, value) pairs. A key that was given but cannot be used
/// (over `MAX_KEY_LEN`, or holding NUL) is an error rather than a silent fall back to the
/// shared key: two users must never end up in one conversation by accident.
/// `continuations` is None when conversation matching is off. Uses `DEFAULT_KEY_SOURCES`.
pub fn resolve(
    headers: &[(String, String)],
    body: &Value,
    fallback: &str,
    continuations: Option<&Continuations>,
) -> Result<SessionKey, String> {
    let body_hash = crate::fnv::extend(crate::fnv::OFFSET_BASIS, body.to_string().bytes());
    let matching = continuations.map(|continuations| Matching {
        continuations,
        body_hash,
        retry_grace: Duration::ZERO,
    });
    resolve_with(headers, body, fallback, matching, DEFAULT_KEY_SOURCES)
}

/// `resolve` with the configured `sources` (names from `KEY_SOURCES`). A request continuing a
/// session by its history claims that session's latest point (see `Continuations::claim`);
/// the caller holds a `ClaimGuard` until the turn ends.
pub fn resolve_with<S: AsRef<str>>(
    headers: &[(String, String)],
    body: &Value,
    fallback: &str,
    matching: Option<Matching<'_>>,
    sources: &[S],
) -> Result<SessionKey, String> {
    let enabled = |name: &str| sources.iter().any(|s| s.as_ref() == name);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
            .filter(|_| enabled(name))
    };
    let body_text = |pointer: &str, source: &str| {
        body.pointer(pointer)
            .and_then(Value::as_str)
            .filter(|v| !v.trim().is_empty())
            .filter(|_| enabled(source))
    };
    let found = |key: String, source| Some(SessionKey { key, source });
    let chosen = if let Some(v) = header("x-session-key") {
        found(v.to_string(), "x-session-key")
    } else if let Some(v) = header("x-openclaw-session-key") {
        found(v.to_string(), "x-openclaw-session-key")
    } else if let (Some(agent), Some(chat), true) = (
        headers
            .iter()
            .find(|(n, _)| n == "x-agent-id")
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty()),
        headers
            .iter()
            .find(|(n, _)| n == "x-chat-id")
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty()),
        enabled("x-agent-id+x-chat-id"),
    ) {
        found(format!("{agent}::{chat}"), "x-agent-id+x-chat-id")
    } else if let Some(v) = header("x-session-affinity") {
        found(strip_boundary_count(v).to_string(), "x-session-affinity")
    } else if let Some(v) = header("session_id") {
        found(strip_boundary_count(v).to_string(), "session_id")
    } else if let Some(v) = body_text("/prompt_cache_key", "prompt_cache_key") {
        found(
            strip_boundary_count(v.trim()).to_string(),
            "body.prompt_cache_key",
        )
    } else if let Some(v) = body_text("/user", "user") {
        found(v.to_string(), "body.user")
    } else if let Some(v) = body_text("/metadata/session_key", "metadata.session_key") {
        found(v.to_string(), "body.metadata.session_key")
    } else if let Some(v) = runtime_session(body).filter(|_| enabled("runtime_line")) {
        found(v, "openclaw-runtime-line")
    } else if let Some(Matching {
        continuations,
        body_hash,
        retry_grace,
    }) = matching
    {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let history = history_hash(messages);
        if let Some(key) = continuations.retry_of(body_hash, retry_grace) {
            found(key, "identical-request-retry")
        } else {
            match history.map(|h| continuations.claim(h)) {
                Some(Claim::Continue(key)) => found(key, "conversation-continuation"),
                Some(Claim::Fork { from, turn }) => {
                    let key = new_conversation_key();
                    log::info!(
                        "conversation {key:?} forks from an earlier point of {from:?} (an edited or regenerated turn, or a second branch)"
                    );
                    if let Some(turn_id) = turn {
                        continuations.note_fork(
                            &key,
                            ForkSource {
                                session_key: from,
                                turn_id,
                            },
                        );
                    }
                    found(key, "conversation-fork")
                }
                Some(Claim::Unknown) | None => found(new_conversation_key(), "new-conversation"),
            }
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

fn new_conversation_key() -> String {
    format!("conv-{}", uuid::Uuid::new_v4().simple())
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

/// What a request's history is to the conversation tree (`Continuations::claim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The latest, unclaimed point of this session: continue it (the point is now claimed).
    Continue(String),
    /// An earlier point of `from` (or its latest, already claimed by another request): the
    /// request branches off; it gets a new conversation that starts from that history.
    /// `turn` is the bridge turn that left the point, when known (see `ForkSource`).
    Fork { from: String, turn: Option<String> },
    /// No session left this history behind.
    Unknown,
}

/// Where a fork starts: the session it branches from and the bridge turn whose reply left
/// the branch point. The worker finds that turn's end in Claude's transcript and starts the
/// fork with `--resume <parent> --fork-session --resume-session-at <message uuid>`
/// (docs/HTTP_API.md §6.2); without it, the fork's first turn carries the restored history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkSource {
    pub session_key: String,
    pub turn_id: String,
}

/// Forks resolved but not yet taken by their request (`note_fork` / `take_fork`); a request
/// that fails before taking its entry leaves it behind, so the map is cleared beyond this.
const MAX_PENDING_FORKS: usize = 1_000;

/// The conversation tree of the sessions found by history matching (docs/HTTP_API.md §6.2): every finished turn leaves a history point (the chain hash of the messages the
/// client will send back, reply included). A request continues the session whose *latest*
/// point its history equals, each point claimed by one request at most; a history equal to an
/// earlier point (an edit, a regenerate, a second branch) forks. Bounded: beyond `capacity`
/// points the least recently used sessions are forgotten (a request for one then starts a
/// conversation with its history restored, as a fork does).
///
/// Also remembers recent requests by body hash, so a client's identical retry attaches to the
/// turn it resent (`note_request` / `retry_of`).
pub struct Continuations {
    inner: Mutex<Tree>,
    requests: RecentRequests,
    capacity: usize,
    /// `fork_with_claude_flags`: forks get a `ForkSource` (`take_fork`); else none, and every
    /// fork carries the restored history.
    claude_forks: bool,
}

#[derive(Default)]
struct Tree {
    /// Point hash → sessions that have it (latest or earlier).
    points: HashMap<u64, Vec<String>>,
    sessions: HashMap<String, Branch>,
    /// Sessions, least recently used first (stale entries skipped by `used`).
    order: VecDeque<(String, u64)>,
    total_points: usize,
    next: u64,
    /// New fork key → where it branches from (`note_fork` / `take_fork`).
    forks: HashMap<String, ForkSource>,
}

struct Branch {
    points: Vec<u64>,
    /// Point → the bridge turn whose reply left it (for a fork from that point).
    turns: HashMap<u64, String>,
    /// A request continues from the latest point now.
    claimed: bool,
    /// Creation order: of two sessions at the same point, the older is continued first.
    created: u64,
    used: u64,
}

impl Continuations {
    pub fn new(capacity: usize) -> Self {
        Continuations {
            inner: Mutex::new(Tree::default()),
            requests: RecentRequests::default(),
            capacity,
            claude_forks: true,
        }
    }

    /// Whether forks are started with Claude Code's fork flags (config
    /// `fork_with_claude_flags`); when off, `take_fork` always answers None.
    pub fn fork_with_claude_flags(mut self, on: bool) -> Self {
        self.claude_forks = on;
        self
    }

    /// The session whose latest, unclaimed point is `hash` (a query; claims nothing).
    pub fn lookup(&self, hash: u64) -> Option<String> {
        let tree = crate::session::shared::lock(&self.inner);
        tree.latest_unclaimed(hash)
    }

    /// Where a request whose history hashes to `hash` belongs; `Continue` claims the point.
    pub fn claim(&self, hash: u64) -> Claim {
        let mut tree = crate::session::shared::lock(&self.inner);
        if let Some(key) = tree.latest_unclaimed(hash) {
            let used = tree.touch(&key);
            let branch = tree.sessions.get_mut(&key).expect("found above");
            branch.claimed = true;
            branch.used = used;
            return Claim::Continue(key);
        }
        match tree.points.get(&hash).and_then(|keys| keys.first()) {
            Some(from) => Claim::Fork {
                from: from.clone(),
                turn: tree
                    .sessions
                    .get(from)
                    .and_then(|b| b.turns.get(&hash))
                    .cloned(),
            },
            None => Claim::Unknown,
        }
    }

    /// Gives back a claim on `key`'s point `hash` whose turn ended without a reply (the point
    /// is still the session's latest, so the next request with that history continues it).
    pub fn release(&self, key: &str, hash: u64) {
        let mut tree = crate::session::shared::lock(&self.inner);
        if let Some(branch) = tree.sessions.get_mut(key)
            && branch.points.last() == Some(&hash)
        {
            branch.claimed = false;
        }
    }

    /// Records that `key`'s turn finished and left the history point `hash`: its new latest
    /// point, unclaimed.
    pub fn remember(&self, hash: u64, key: &str) {
        self.remember_turn(hash, key, None);
    }

    /// `remember`, also noting which bridge turn's reply left the point (a fork from it can
    /// then start from that turn's end in Claude's transcript).
    pub fn remember_turn(&self, hash: u64, key: &str, turn_id: Option<&str>) {
        let mut tree = crate::session::shared::lock(&self.inner);
        let used = tree.touch(key);
        let created = tree.next;
        let branch = tree.sessions.entry(key.to_string()).or_insert(Branch {
            points: Vec::new(),
            turns: HashMap::new(),
            claimed: false,
            created,
            used,
        });
        branch.claimed = false;
        branch.used = used;
        if let Some(turn_id) = turn_id {
            branch.turns.insert(hash, turn_id.to_string());
        }
        if branch.points.last() != Some(&hash) {
            branch.points.push(hash);
            tree.total_points += 1;
            let keys = tree.points.entry(hash).or_default();
            if !keys.iter().any(|k| k == key) {
                keys.push(key.to_string());
            }
        }
        while tree.total_points > self.capacity && tree.evict_one() {}
    }

    /// Notes that the new conversation `key` forks from `source` (taken by `take_fork`).
    pub fn note_fork(&self, key: &str, source: ForkSource) {
        if !self.claude_forks {
            return;
        }
        let mut tree = crate::session::shared::lock(&self.inner);
        if tree.forks.len() >= MAX_PENDING_FORKS {
            tree.forks.clear();
        }
        tree.forks.insert(key.to_string(), source);
    }

    /// Where the new conversation `key` forks from, if it is a fork whose branch point's turn
    /// is known (once: the entry is removed).
    pub fn take_fork(&self, key: &str) -> Option<ForkSource> {
        crate::session::shared::lock(&self.inner).forks.remove(key)
    }

    /// The session of a request with this body that is still running, or that ended less than
    /// `retry_grace` ago (see `note_request`).
    pub fn retry_of(&self, body_hash: u64, retry_grace: Duration) -> Option<String> {
        self.requests.retry_of(body_hash, retry_grace)
    }

    /// Remembers a request by its body hash until `retry_grace` after the returned guard is
    /// dropped (when its turn ended).
    pub fn note_request(
        &self,
        body_hash: u64,
        key: &str,
        retry_grace: Duration,
    ) -> RequestNote<'_> {
        self.requests.note(body_hash, key, retry_grace)
    }
}

/// What a request whose session was found by conversation matching holds while its turn
/// runs (chat completions and Responses alike): the claim on the history point it continues
/// (given back if the turn fails), the note that lets an identical retry attach, and the
/// chain its reply will extend.
pub struct MatchedTurn<'a> {
    continuations: &'a Continuations,
    key: String,
    _claim: Option<ClaimGuard<'a>>,
    note: Option<RequestNote<'a>>,
    chain_before_reply: u64,
}

impl<'a> MatchedTurn<'a> {
    /// None unless `key` came from conversation matching.
    pub fn new(
        continuations: Option<&'a Continuations>,
        key: &SessionKey,
        messages: &[Value],
        body_hash: u64,
        retry_grace: Duration,
    ) -> Option<Self> {
        let continuations = continuations?;
        if !MATCHED_SOURCES.contains(&key.source) {
            return None;
        }
        let claim = (key.source == "conversation-continuation")
            .then(|| history_hash(messages))
            .flatten()
            .map(|h| ClaimGuard::new(continuations, &key.key, h));
        Some(MatchedTurn {
            continuations,
            key: key.key.clone(),
            _claim: claim,
            note: Some(continuations.note_request(body_hash, &key.key, retry_grace)),
            chain_before_reply: conversation_hash(CHAIN_START, messages),
        })
    }

    /// The turn's reply is known (None: it failed), before its last bytes go out, since the
    /// client's next request may follow at once: the request stops counting as running, and
    /// the session gets its new history point.
    pub fn settle(&mut self, reply: Option<&str>, turn_id: &str) {
        drop(self.note.take());
        if let Some(reply) = reply {
            self.continuations.remember_turn(
                chain(self.chain_before_reply, "assistant", reply),
                &self.key,
                Some(turn_id),
            );
        }
    }
}

/// A claim on a session's latest point, released when dropped unless the turn left a new
/// point (`Continuations::remember` moved the session on, which makes the release a no-op).
pub struct ClaimGuard<'a> {
    continuations: &'a Continuations,
    key: String,
    hash: u64,
}

impl<'a> ClaimGuard<'a> {
    pub fn new(continuations: &'a Continuations, key: &str, hash: u64) -> Self {
        ClaimGuard {
            continuations,
            key: key.to_string(),
            hash,
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        self.continuations.release(&self.key, self.hash);
    }
}

impl Tree {
    fn latest_unclaimed(&self, hash: u64) -> Option<String> {
        self.points
            .get(&hash)?
            .iter()
            .filter_map(|k| self.sessions.get(k).map(|b| (k, b)))
            .filter(|(_, b)| b.points.last() == Some(&hash) && !b.claimed)
            .min_by_key(|(_, b)| b.created)
            .map(|(k, _)| k.clone())
    }

    /// A fresh use stamp for `key`, queued for eviction order.
    fn touch(&mut self, key: &str) -> u64 {
        self.next += 1;
        let stamp = self.next;
        self.order.push_back((key.to_string(), stamp));
        if self.order.len() > 4 * self.sessions.len() + 64 {
            let sessions = &self.sessions;
            self.order
                .retain(|(k, s)| sessions.get(k).is_some_and(|b| b.used == *s) || *s == stamp);
        }
        stamp
    }

    /// Forgets the least recently used session; false when there is none.
    fn evict_one(&mut self) -> bool {
        while let Some((key, stamp)) = self.order.pop_front() {
            let current = self.sessions.get(&key).map(|b| b.used);
            if current != Some(stamp) {
                continue;
            }
            let branch = self.sessions.remove(&key).expect("present");
            self.total_points -= branch.points.len();
            for point in branch.points {
                if let Some(keys) = self.points.get_mut(&point) {
                    keys.retain(|k| *k != key);
                    if keys.is_empty() {
                        self.points.remove(&point);
                    }
                }
            }
            return true;
        }
        false
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
            "m",
            "`user` is OpenAI's end-user id, not a session key, unless configured"
        );
        let with_user: Vec<&str> = KEY_SOURCES.to_vec();
        let k = resolve_with(
            &[],
            &json!({"user": "u1", "metadata": {"session_key": "m"}}),
            "d",
            None,
            &with_user,
        )
        .unwrap();
        assert_eq!((k.key.as_str(), k.source), ("u1", "body.user"));
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
            resolve(&[], &json!({"prompt_cache_key": "a\0b"}), "d", None)
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

    /// The first captured turn of an OpenClaw conversation resolves to `key` from `source`,
    /// and the second to the same key; returns the first turn's body.
    fn both_captured_turns_resolve_to(capture: &str, key: &str, source: &str) -> Value {
        let (h1, b1) = fixture(&format!("turn1-{capture}.json"));
        let (h2, b2) = fixture(&format!("turn2-{capture}.json"));
        let k1 = resolve(&h1, &b1, "d", None).unwrap();
        assert_eq!((k1.key.as_str(), k1.source), (key, source), "{capture}");
        assert_eq!(resolve(&h2, &b2, "d", None).unwrap().key, key, "{capture}");
        b1
    }

    #[test]
    fn openclaw_affinity_captures_resolve_to_the_stable_session_id() {
        let session_id = "98130faa-5e06-42a6-9e16-61f030ba2e8c";
        let b1 = both_captured_turns_resolve_to(
            "affinity-session-key",
            session_id,
            "x-session-affinity",
        );
        let only_cache_key = resolve(&[], &b1, "d", None).unwrap();
        assert_eq!(only_cache_key.source, "body.prompt_cache_key");
        assert_eq!(only_cache_key.key, session_id);
    }

    #[test]
    fn openclaw_without_affinity_uses_the_runtime_line() {
        both_captured_turns_resolve_to(
            "no-affinity",
            "agent:main:explicit:s1",
            "openclaw-runtime-line",
        );
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

    #[test]
    fn the_tree_continues_each_latest_point_once_and_forks_from_earlier_ones() {
        let c = Continuations::new(100);
        // Two sessions with the same history point.
        c.remember(10, "s1");
        c.remember(10, "s2");
        assert_eq!(
            c.claim(10),
            Claim::Continue("s1".into()),
            "the older one first"
        );
        assert_eq!(c.claim(10), Claim::Continue("s2".into()));
        assert_eq!(
            c.claim(10),
            Claim::Fork {
                from: "s1".into(),
                turn: None
            },
            "both claimed"
        );
        // A failed turn gives its claim back.
        c.release("s2", 10);
        assert_eq!(c.claim(10), Claim::Continue("s2".into()));
        // s1 moves on: its old point is an earlier one now.
        c.remember(11, "s1");
        c.release("s1", 10);
        assert_eq!(c.lookup(11).as_deref(), Some("s1"));
        assert!(matches!(c.claim(10), Claim::Fork { .. }));
        assert_eq!(c.claim(99), Claim::Unknown);
    }

    #[test]
    fn a_fork_knows_the_turn_that_left_its_branch_point() {
        let c = Continuations::new(100);
        c.remember_turn(1, "s1", Some("turn-1"));
        c.remember_turn(2, "s1", Some("turn-2"));
        assert_eq!(
            c.claim(1),
            Claim::Fork {
                from: "s1".into(),
                turn: Some("turn-1".into())
            }
        );
        // Through `resolve`: the fork's key gets its source, taken once.
        let history = [
            json!({"role": "user", "content": "a"}),
            json!({"role": "assistant", "content": "ra"}),
        ];
        c.remember_turn(conversation_hash(CHAIN_START, &history), "s2", Some("t7"));
        c.remember_turn(3, "s2", Some("t8"));
        let body = json!({"messages": [history[0], history[1], {"role": "user", "content": "b"}]});
        let k = resolve(&[], &body, "d", Some(&c)).unwrap();
        assert_eq!(k.source, "conversation-fork");
        assert_eq!(
            c.take_fork(&k.key),
            Some(ForkSource {
                session_key: "s2".into(),
                turn_id: "t7".into()
            })
        );
        assert_eq!(c.take_fork(&k.key), None);
    }

    #[test]
    fn identical_requests_are_retries_while_running_and_within_the_grace() {
        let c = Continuations::new(10);
        let grace = Duration::from_secs(60);
        let note = c.note_request(7, "k", grace);
        assert_eq!(c.retry_of(7, grace).as_deref(), Some("k"), "running");
        drop(note);
        assert_eq!(
            c.retry_of(7, grace).as_deref(),
            Some("k"),
            "within the grace"
        );
        assert_eq!(c.retry_of(7, Duration::ZERO), None, "after it");
        assert_eq!(c.retry_of(8, grace), None);
        let body = json!({"messages": [{"role": "user", "content": "x"}]});
        let hash = crate::fnv::extend(crate::fnv::OFFSET_BASIS, b"same".iter().copied());
        let _n = c.note_request(hash, "conv-a", grace);
        let k = resolve_with(
            &[],
            &body,
            "d",
            Some(Matching {
                continuations: &c,
                body_hash: hash,
                retry_grace: grace,
            }),
            DEFAULT_KEY_SOURCES,
        )
        .unwrap();
        assert_eq!(
            (k.key.as_str(), k.source),
            ("conv-a", "identical-request-retry")
        );
    }
}
