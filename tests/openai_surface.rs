//! Issue #15 against `serve --demo`: stateless clients get stateless semantics (identical
//! histories do not cross, edits fork, `user` is not a session key, a first-turn retry
//! attaches) and the OpenAI surface is complete (models/{id}, CORS, honest parameters, short
//! errors). One test per numbered problem; what a client would see on the wire.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

fn sessions(bridge: &Bridge) -> Vec<Value> {
    request(bridge.http, "GET", "/v1/sessions", &[], "").json()["data"]
        .as_array()
        .unwrap()
        .clone()
}

fn turns_of(bridge: &Bridge, key: &str) -> u64 {
    sessions(bridge)
        .iter()
        .find(|s| s["key"] == key)
        .and_then(|s| s["turns"].as_u64())
        .unwrap_or(0)
}

/// Problem 1: two conversations with the same history stay apart.
#[test]
fn identical_histories_continue_in_different_sessions() {
    let bridge = Bridge::demo().arg("--retry-grace", "0s").start();
    let first = chat(json!([{"role": "user", "content": "hi T"}]));
    let x = post_chat(&bridge, &[], &first);
    let y = post_chat(&bridge, &[], &first);
    let reply = content(&x);
    assert_eq!(content(&y), reply);
    assert_ne!(
        session_of(&x),
        session_of(&y),
        "two conversations, two sessions"
    );
    let next = |text: &str| {
        chat(json!([
            {"role": "user", "content": "hi T"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": text},
        ]))
    };
    let x2 = post_chat(&bridge, &[], &next("X2 private to X"));
    let y2 = post_chat(&bridge, &[], &next("Y2 private to Y"));
    assert_eq!(content(&x2), "X2 private to X");
    assert_eq!(content(&y2), "Y2 private to Y");
    assert_eq!(session_of(&x2), session_of(&x));
    assert_eq!(
        session_of(&y2),
        session_of(&y),
        "the second identical continuation goes to the other session with that history"
    );
    assert_eq!(turns_of(&bridge, &session_of(&x)), 2);
    assert_eq!(turns_of(&bridge, &session_of(&y)), 2);
}

/// Problem 1 with the default `retry_grace`: the second identical first request counts as a
/// retry of the first (same reply, same session); the second continuation then forks, so Y's
/// Claude never sees X's private message.
#[test]
fn identical_first_requests_within_the_grace_share_a_turn_then_fork_apart() {
    let bridge = Bridge::demo().start();
    let first = chat(json!([{"role": "user", "content": "hi T"}]));
    let x = post_chat(&bridge, &[], &first);
    let y = post_chat(&bridge, &[], &first);
    let reply = content(&x);
    assert_eq!(session_of(&x), session_of(&y));
    assert_eq!(
        turns_of(&bridge, &session_of(&x)),
        1,
        "Claude saw the turn once"
    );
    let next = |text: &str| {
        chat(json!([
            {"role": "user", "content": "hi T"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": text},
        ]))
    };
    let x2 = post_chat(&bridge, &[], &next("X2 private to X"));
    let y2 = post_chat(&bridge, &[], &next("Y2 private to Y"));
    assert_eq!(session_of(&x2), session_of(&x));
    assert_ne!(session_of(&y2), session_of(&x2));
    let seen = content(&y2);
    assert!(
        seen.contains("User: hi T") && seen.ends_with("Y2 private to Y"),
        "{seen}"
    );
    assert!(!seen.contains("X2"), "{seen}");
    assert_eq!(turns_of(&bridge, &session_of(&x)), 2);
}

/// Problem 2: an edited (or regenerated) turn forks a new conversation from that point; the
/// old session is left as it was.
#[test]
fn an_edit_forks_from_its_branch_point() {
    let bridge = Bridge::demo().start();
    let mut messages = vec![];
    let mut key = String::new();
    for text in ["A1", "A2", "A3"] {
        messages.push(json!({"role": "user", "content": text}));
        let r = post_chat(&bridge, &[], &chat(Value::Array(messages.clone())));
        let reply = content(&r);
        messages.push(json!({"role": "assistant", "content": reply}));
        if key.is_empty() {
            key = session_of(&r);
        }
        assert_eq!(session_of(&r), key, "{text} continues the conversation");
    }
    assert_eq!(turns_of(&bridge, &key), 3);
    let edited = chat(json!([
        messages[0], messages[1],
        {"role": "user", "content": "A2-edited"},
    ]));
    let fork = post_chat(&bridge, &[], &edited);
    let text = content(&fork);
    assert_ne!(
        session_of(&fork),
        key,
        "the edit does not continue the old session"
    );
    assert_eq!(turns_of(&bridge, &key), 3, "the old session saw nothing");
    // The fork's Claude starts from the branch point: A1 and its reply, not A2/A3.
    assert!(text.contains("User: A1\nAssistant: A1"), "{text}");
    assert!(!text.contains("A3") && !text.contains("User: A2"), "{text}");
    assert!(text.ends_with("A2-edited"), "{text}");
    assert!(bridge.log().contains("forks from an earlier point"));
    // The fork is a conversation of its own from now on.
    let fork_key = session_of(&fork);
    let after = chat(json!([
        messages[0], messages[1],
        {"role": "user", "content": "A2-edited"},
        {"role": "assistant", "content": text},
        {"role": "user", "content": "B3"},
    ]));
    let b3 = post_chat(&bridge, &[], &after);
    assert_eq!(content(&b3), "B3");
    assert_eq!(session_of(&b3), fork_key);
}

/// Problem 3: OpenAI's `user` is an end-user id, not a session key (unless configured).
/// A request whose history continues a session but which is refused afterwards (here a
/// `tool` message without `tool_call_id`) gives that history point back: the next request
/// with the same history continues the session instead of forking a new one.
#[test]
fn a_refused_continuation_leaves_the_conversation_to_continue() {
    let bridge = Bridge::demo().start();
    let hello = json!({"role": "user", "content": "R1"});
    let first = post_chat(&bridge, &[], &chat(json!([hello])));
    let reply = json!({"role": "assistant", "content": content(&first)});
    let key = session_of(&first);
    let bad_tool = json!({"role": "tool", "content": "result"});
    let refused = post_chat(&bridge, &[], &chat(json!([hello, reply, bad_tool])));
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.text().contains("tool_call_id"),
        "{}",
        refused.text()
    );
    let next = post_chat(
        &bridge,
        &[],
        &chat(json!([hello, reply, {"role": "user", "content": "R2"}])),
    );
    assert!(content(&next).ends_with("R2"), "{}", next.text());
    assert_eq!(session_of(&next), key, "R2 continues the conversation");
    assert_eq!(turns_of(&bridge, &key), 2);
}

#[test]
fn user_does_not_merge_conversations_unless_configured() {
    let bridge = Bridge::demo().start();
    let a = post_chat(
        &bridge,
        &[],
        &json!({"user": "u", "messages": [{"role": "user", "content": "my secret is 1234"}]}),
    );
    let b = post_chat(
        &bridge,
        &[],
        &json!({"user": "u", "messages": [{"role": "user", "content": "what is my secret?"}]}),
    );
    assert_ne!(session_of(&a), session_of(&b));
    assert!(session_of(&a).starts_with("conv-"));
    drop(bridge);
    let opted_in = Bridge::demo()
        .arg("--session-key-sources", "x-session-key,user")
        .start();
    let a = post_chat(
        &opted_in,
        &[],
        &json!({"user": "u", "messages": [{"role": "user", "content": "one"}]}),
    );
    let b = post_chat(
        &opted_in,
        &[],
        &json!({"user": "u", "messages": [{"role": "user", "content": "two"}]}),
    );
    assert_eq!((session_of(&a), session_of(&b)), ("u".into(), "u".into()));
}

/// Problem 4: an SDK's retry of a first turn (no session id) attaches to the turn in flight.
#[test]
fn a_stateless_first_turn_retry_attaches_to_the_running_turn() {
    let bridge = Bridge::demo().start();
    let body = chat(json!([{"role": "user", "content": "slow first turn [sim:delay_ms=1500]"}]));
    // The client gives up after 300 ms (as an SDK timeout does), then retries twice.
    let give_up = |body: &Value| {
        let req = build_request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            &body.to_string(),
        );
        let mut s = std::net::TcpStream::connect(bridge.http).unwrap();
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    };
    give_up(&body);
    give_up(&body);
    let last = post_chat(&bridge, &[], &body);
    assert!(content(&last).starts_with("slow first turn"));
    let sessions = sessions(&bridge);
    assert_eq!(sessions.len(), 1, "one session ran the turn: {sessions:?}");
    assert_eq!(sessions[0]["turns"], 1);
    assert!(
        bridge
            .log()
            .contains("attached to it instead of sending it again")
    );
}

/// Problem 5: `GET /v1/models/{id}`.
#[test]
fn models_can_be_retrieved_by_id() {
    let bridge = Bridge::demo().start();
    let ok = request(bridge.http, "GET", "/v1/models/claude-code", &[], "");
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.json(),
        json!({"id": "claude-code", "object": "model", "created": 0, "owned_by": "synthesis-bridge"})
    );
    let missing = request(bridge.http, "GET", "/v1/models/gpt-9", &[], "");
    assert_eq!(missing.status, 404);
    let error = &missing.json()["error"];
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("claude-code"));
}

/// Problem 6: CORS for listed origins only.
#[test]
fn cors_preflight_and_headers_for_listed_origins() {
    let bridge = Bridge::demo()
        .arg("--cors-origins", "https://app.example")
        .arg("--api-key", "k")
        .start();
    let preflight = request(
        bridge.http,
        "OPTIONS",
        "/v1/chat/completions",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        "",
    );
    assert_eq!(preflight.status, 204, "{}", preflight.text());
    let h = &preflight.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-allow-methods"].contains("POST"));
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    let turn = post_chat(
        &bridge,
        &[
            ("Origin", "https://app.example"),
            ("Authorization", "Bearer k"),
        ],
        &chat(json!([{"role": "user", "content": "from a browser"}])),
    );
    assert_eq!(content(&turn), "from a browser");
    assert_eq!(
        turn.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let (streamed, _) = {
        let req = build_request(
            "POST",
            "/v1/chat/completions",
            &[
                ("Origin", "https://app.example"),
                ("Authorization", "Bearer k"),
                ("Content-Type", "application/json"),
            ],
            &chat_body("streamed", true),
        );
        (raw_request(bridge.http, req.as_bytes()), ())
    };
    assert_eq!(
        streamed.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let other = request(
        bridge.http,
        "OPTIONS",
        "/v1/models",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
        "",
    );
    assert_eq!(other.status, 403);
    assert!(!other.headers.contains_key("access-control-allow-origin"));
    assert!(
        other.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cors_origins")
    );
    let models = request(
        bridge.http,
        "GET",
        "/v1/models",
        &[
            ("Origin", "https://evil.example"),
            ("Authorization", "Bearer k"),
        ],
        "",
    );
    assert_eq!(models.status, 200);
    assert!(!models.headers.contains_key("access-control-allow-origin"));
}

/// Problem 7: `n`, `stop`, `response_format`.
#[test]
fn n_above_one_is_refused_saying_why() {
    let bridge = Bridge::demo().start();
    let mut body = chat(json!([{"role": "user", "content": "x"}]));
    body["n"] = json!(2);
    let r = post_chat(&bridge, &[], &body);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "unsupported_parameter");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("one choice")
    );
    assert!(sessions(&bridge).is_empty(), "nothing reached Claude");
}

#[test]
fn stop_cuts_the_reply_streamed_and_not() {
    let bridge = Bridge::demo().start();
    let mut body = chat(json!([{"role": "user", "content": "alpha END beta"}]));
    body["stop"] = json!(["END", "zzz"]);
    assert_eq!(content(&post_chat(&bridge, &[], &body)), "alpha ");
    body["stream"] = json!(true);
    body["messages"][0]["content"] = json!("[sim:progress=2] gamma END delta");
    let (response, events) = stream_body(bridge.http, "stop-stream", &body.to_string());
    assert_eq!(response.status, 200);
    let text = streamed_text(&events);
    assert_eq!(
        text,
        "progress 1/2\n\nprogress 2/2\n\n[sim:progress=2] gamma "
    );
    assert_eq!(events.last().unwrap().1, "[DONE]");
}

#[test]
fn a_json_schema_reply_that_comes_back_as_prose_is_repaired_once() {
    let bridge = Bridge::demo().start();
    let schema = json!({"type": "object", "required": ["name", "age"],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}});
    let mut body = chat(json!([{"role": "user",
        "content": "[sim:json_next] describe Ada\n{\"name\": \"Ada\", \"age\": 36}"}]));
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}});
    let r = post_chat(&bridge, &[], &body);
    let text = content(&r);
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, json!({"name": "Ada", "age": 36}));
    assert!(bridge.log().contains("asking Claude once to fix it"));
    // Streamed: the checked JSON arrives as one piece.
    body["stream"] = json!(true);
    let (_, events) = stream_body(bridge.http, "json-stream", &body.to_string());
    let streamed: Value = serde_json::from_str(&streamed_text(&events)).unwrap();
    assert_eq!(streamed["name"], "Ada");
    // Prose twice: a clear error.
    let mut prose = chat(json!([{"role": "user", "content": "just prose"}]));
    prose["response_format"] = json!({"type": "json_object"});
    let failed = post_chat(&bridge, &[], &prose);
    assert_eq!(failed.status, 502, "{}", failed.text());
    assert_eq!(failed.json()["error"]["code"], "reply_format_failed");
}

/// Problem 8: short errors for clients, screen lines for the operator; malformed shapes named.
#[test]
fn clients_get_short_errors_and_malformed_shapes_are_named() {
    let bridge = Bridge::demo().start();
    let bogus = post_chat(
        &bridge,
        &[],
        &chat(json!([{"role": "bogus", "content": "x"}])),
    );
    assert_eq!(bogus.status, 400);
    let message = bogus.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("messages[0].role") && message.contains("user"),
        "{message}"
    );
    let died = post_chat(
        &bridge,
        &[("X-Session-Key", "dies")],
        &chat(json!([{"role": "user", "content": "my private words [sim:exit=3]"}])),
    );
    assert_eq!(died.status, 502, "{}", died.text());
    let message = died.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!message.contains("private words"), "{message}");
    assert!(!message.contains("screen"), "{message}");
    assert!(message.contains("last_error"), "{message}");
    // The operator still has the screen lines: in the log, and in /v1/sessions' last_error
    // (the session retired after the death, so its row is the stored one).
    let log = bridge.log();
    assert!(log.contains("Last screen lines") && log.contains("my private words"));
    let row = sessions(&bridge)
        .into_iter()
        .find(|s| s["key"] == "dies")
        .unwrap();
    let last_error = row["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("Last screen lines"), "{row}");
}
