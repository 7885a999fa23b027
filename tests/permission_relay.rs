//! The permission relay (#13) end to end with the simulated Claude: `[sim:ask=<tool>]` makes
//! it show a permission prompt and relay it to the channel as the real Claude does. Asserts
//! what the person in the chat sees (the question, its id, the rest of the turn on the
//! answering request) and what a program sees (`synthesis_pending`, the answer route,
//! `/v1/sessions`, metrics).

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// The question's id from a stream's `synthesis_pending` (the first one).
fn question_ids(events: &[(Instant, String)]) -> Vec<String> {
    events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v.get("synthesis_pending").cloned())
        .flat_map(|p| p.as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["id"].as_str().map(String::from))
        .collect()
}

fn finish_reason(events: &[(Instant, String)]) -> Option<String> {
    events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| {
            v.pointer("/choices/0/finish_reason")?
                .as_str()
                .map(String::from)
        })
}

/// Streams `text` on `key` and expects it to end with one question; returns (text, id).
fn ask(bridge: &Bridge, key: &str, text: &str) -> (String, String) {
    let (response, events) = stream_chat(bridge.http, key, text);
    assert_eq!(response.status, 200);
    let shown = streamed_text(&events);
    let ids = question_ids(&events);
    assert_eq!(ids.len(), 1, "one question expected: {shown:?} {events:?}");
    assert_eq!(finish_reason(&events).as_deref(), Some("stop"));
    assert!(events.last().is_some_and(|(_, d)| d == "[DONE]"));
    (shown, ids[0].clone())
}

fn session_row(bridge: &Bridge, key: &str) -> Value {
    let list = request(bridge.http, "GET", "/v1/sessions", &[], "").json();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .cloned()
        .unwrap_or(Value::Null)
}

fn metric(bridge: &Bridge, line_start: &str) -> u64 {
    let text = request(bridge.http, "GET", "/metrics", &[], "").text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in\n{text}"))
}

#[test]
fn yes_runs_the_tool_and_the_answering_request_gets_the_rest_of_the_turn() {
    let bridge = Bridge::demo().start();
    let (shown, id) = ask(&bridge, "p", "run the tests [sim:progress=1,ask=Bash]");
    assert!(shown.starts_with("progress 1/1\n\n"), "{shown}");
    assert!(
        shown.contains("Claude wants to run **Bash**: `sim Bash call")
            && shown.contains(&format!("Reply `yes {id}` to allow or `no {id}` to deny.")),
        "{shown}"
    );
    assert!(id.len() == 5 && id.bytes().all(|b| b.is_ascii_lowercase()));
    let row = session_row(&bridge, "p");
    assert_eq!(row["state"], "suspended");
    assert_eq!(row["pending"][0]["id"], id.as_str());
    assert_eq!(row["pending"][0]["tool_name"], "Bash");

    let (response, events) = stream_chat(bridge.http, "p", &format!("Yes {id}"));
    assert_eq!(response.status, 200);
    let rest = streamed_text(&events);
    assert!(rest.ends_with("(Bash: allowed)"), "{rest}");
    assert!(rest.starts_with("run the tests"), "{rest}");
    assert_eq!(finish_reason(&events).as_deref(), Some("stop"));
    assert_eq!(session_row(&bridge, "p")["pending"], json!([]));
    assert_eq!(
        metric(
            &bridge,
            "synthesis_permission_verdicts_total{outcome=\"allowed\"}"
        ),
        1
    );
    assert_eq!(metric(&bridge, "synthesis_permission_questions_total"), 1);
}

#[test]
fn no_denies_and_claude_goes_on() {
    let bridge = Bridge::demo().start();
    let (_, id) = ask(&bridge, "p", "delete build [sim:ask=Bash]");
    let (_, events) = stream_chat(bridge.http, "p", &format!("no {id}"));
    let rest = streamed_text(&events);
    assert!(rest.ends_with("(Bash: denied)"), "{rest}");
    // The session goes on normally.
    let (_, events) = stream_chat(bridge.http, "p", "next");
    assert_eq!(streamed_text(&events), "next");
}

#[test]
fn two_questions_in_one_turn_come_one_after_the_other() {
    let bridge = Bridge::demo().start();
    let (_, first) = ask(&bridge, "p", "both [sim:ask=Bash,ask=Write]");
    let (shown, second) = ask(&bridge, "p", &format!("y {first}"));
    assert_ne!(first, second);
    assert!(shown.contains("**Write**"), "{shown}");
    let (_, events) = stream_chat(bridge.http, "p", &format!("deny {second}"));
    let rest = streamed_text(&events);
    assert!(rest.ends_with("(Bash: allowed; Write: denied)"), "{rest}");
}

#[test]
fn an_unknown_id_is_a_400_and_the_question_stays_open() {
    let bridge = Bridge::demo().start();
    let (_, id) = ask(&bridge, "p", "go [sim:ask=Bash]");
    let wrong = if id == "zzzzz" { "yyyyy" } else { "zzzzz" };
    let (response, _) = stream_chat(bridge.http, "p", &format!("yes {wrong}"));
    assert_eq!(response.status, 400);
    let error = response.json();
    assert_eq!(error["error"]["code"], "unknown_question_id");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&id) && message.contains(wrong),
        "{message}"
    );
    assert_eq!(session_row(&bridge, "p")["state"], "suspended");
    let (_, events) = stream_chat(bridge.http, "p", &format!("yes {id}"));
    assert!(streamed_text(&events).ends_with("(Bash: allowed)"));
}

#[test]
fn another_message_while_a_question_is_open_denies_it_and_is_answered_after_a_notice() {
    let bridge = Bridge::demo().start();
    let (_, id) = ask(&bridge, "p", "go [sim:ask=Bash]");
    let (response, events) = stream_chat(bridge.http, "p", "actually, what is 2+2?");
    assert_eq!(response.status, 200);
    let text = streamed_text(&events);
    assert!(
        text.starts_with("(A new message arrived while Claude was waiting for an answer")
            && text.contains(&id)
            && text.ends_with("actually, what is 2+2?"),
        "{text}"
    );
    assert_eq!(
        metric(
            &bridge,
            "synthesis_permission_verdicts_total{outcome=\"denied\"}"
        ),
        1
    );
}

#[test]
fn a_question_nobody_answers_is_denied_at_permission_timeout_and_the_next_turn_says_so() {
    let bridge = Bridge::demo().arg("--permission-timeout", "1s").start();
    let (_, id) = ask(&bridge, "p", "go [sim:ask=Bash]");
    let state = wait_until(WAIT, || {
        let row = session_row(&bridge, "p");
        (row["state"] != "suspended").then_some(row["state"].clone())
    });
    assert!(state.is_some(), "still suspended");
    assert_eq!(
        metric(
            &bridge,
            "synthesis_permission_verdicts_total{outcome=\"timed_out\"}"
        ),
        1
    );
    let (_, events) = stream_chat(bridge.http, "p", "hello again");
    let text = streamed_text(&events);
    assert!(
        text.contains(&id) && text.contains("permission_timeout") && text.ends_with("hello again"),
        "{text}"
    );
}

#[test]
fn a_client_that_leaves_after_the_question_can_answer_later() {
    let bridge = Bridge::demo().start();
    // Read only up to the question, then hang up without reading the rest.
    let mut stream = TcpStream::connect(bridge.http).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let body = chat_body("go [sim:ask=Bash]", true);
    stream
        .write_all(
            build_request(
                "POST",
                "/v1/chat/completions",
                &[("X-Session-Key", "p"), ("Content-Type", "application/json")],
                &body,
            )
            .as_bytes(),
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut id = None;
    let mut line = String::new();
    while id.is_none() && reader.read_line(&mut line).unwrap_or(0) > 0 {
        if let Some(data) = line.trim().strip_prefix("data: ")
            && let Ok(v) = serde_json::from_str::<Value>(data)
        {
            id = v["synthesis_pending"][0]["id"].as_str().map(String::from);
        }
        line.clear();
    }
    drop(reader);
    let id = id.expect("the question arrived");
    assert_eq!(session_row(&bridge, "p")["state"], "suspended");
    let (_, events) = stream_chat(bridge.http, "p", &format!("yes {id}"));
    assert!(streamed_text(&events).ends_with("(Bash: allowed)"));
}

#[test]
fn a_resent_answering_request_attaches_to_the_resumed_turn() {
    let bridge = Bridge::demo().start();
    let first = "slow [sim:ask=Bash,delay_ms=1500]";
    let (question, id) = ask(&bridge, "p", first);
    // OpenClaw resends the whole conversation: the question is the assistant's reply.
    let body = json!({
        "model": "claude-code", "stream": true,
        "messages": [
            {"role": "user", "content": first},
            {"role": "assistant", "content": question},
            {"role": "user", "content": format!("yes {id}")},
        ],
    })
    .to_string();
    let http = bridge.http;
    let b2 = body.clone();
    let original = std::thread::spawn(move || stream_body(http, "p", &b2));
    assert!(
        wait_until(WAIT, || (session_row(&bridge, "p")["state"] == "busy")
            .then_some(()))
        .is_some()
    );
    let (_, resent) = stream_body(bridge.http, "p", &body);
    let (_, events) = original.join().unwrap();
    let (a, b) = (streamed_text(&events), streamed_text(&resent));
    assert!(a.ends_with("(Bash: allowed)"), "{a}");
    assert_eq!(a, b, "the resent request got the same turn");
    assert_eq!(metric(&bridge, "synthesis_retries_attached_total"), 1);
    assert_eq!(
        metric(
            &bridge,
            "synthesis_permission_verdicts_total{outcome=\"allowed\"}"
        ),
        1
    );
}

#[test]
fn programs_answer_through_the_permissions_route() {
    let bridge = Bridge::demo().start();
    let (_, id) = ask(&bridge, "agent:main:main", "go [sim:ask=Bash]");
    let path = |id: &str| format!("/v1/sessions/agent%3Amain%3Amain/permissions/{id}");
    let wrong = if id == "zzzzz" { "yyyyy" } else { "zzzzz" };
    let missing = request(
        bridge.http,
        "POST",
        &path(wrong),
        &[],
        r#"{"behavior":"allow"}"#,
    );
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(missing.json()["error"]["code"], "no_such_question");
    let bad = request(
        bridge.http,
        "POST",
        &path(&id),
        &[],
        r#"{"behavior":"maybe"}"#,
    );
    assert_eq!(bad.status, 400);
    let answered = request(
        bridge.http,
        "POST",
        &path(&id),
        &[],
        r#"{"behavior":"deny"}"#,
    );
    assert_eq!(answered.status, 200, "{}", answered.text());
    let body = answered.json();
    assert_eq!(body["object"], "chat.completion");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.ends_with("(Bash: denied)"), "{text}");
}

#[test]
fn non_streamed_clients_get_the_question_in_the_message() {
    let bridge = Bridge::demo().start();
    let response = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "p"), ("Content-Type", "application/json")],
        &chat_body("go [sim:ask=Bash]", false),
    );
    assert_eq!(response.status, 200);
    let body = response.json();
    let message = &body["choices"][0]["message"];
    let id = message["synthesis_pending"][0]["id"].as_str().unwrap();
    assert!(
        message["content"]
            .as_str()
            .unwrap()
            .contains(&format!("yes {id}"))
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[test]
fn with_permission_relay_deny_the_turn_never_stalls() {
    let bridge = Bridge::demo().arg("--permission-relay", "deny").start();
    let (_, events) = stream_chat(bridge.http, "p", "go [sim:ask=Bash]");
    let text = streamed_text(&events);
    assert!(text.ends_with("(Bash: denied)"), "{text}");
    assert!(question_ids(&events).is_empty());
}

#[test]
fn with_permission_relay_off_the_turn_fails_at_once_naming_the_setting() {
    let bridge = Bridge::demo().arg("--permission-relay", "off").start();
    let started = Instant::now();
    let response = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "p"), ("Content-Type", "application/json")],
        &chat_body("go [sim:ask=Bash]", false),
    );
    assert_eq!(response.status, 409, "{}", response.text());
    let error = response.json();
    assert_eq!(error["error"]["code"], "permission_relay_off");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permission_relay"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_client_without_a_session_id_continues_the_session_by_resending_the_question() {
    let bridge = Bridge::demo().start();
    let post = |messages: Value| {
        let body =
            json!({"model": "claude-code", "stream": true, "messages": messages}).to_string();
        let req = build_request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            &body,
        );
        let mut stream = TcpStream::connect(bridge.http).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let response = read_response(&mut reader, |_| {});
        let text = String::from_utf8_lossy(&response.body).to_string();
        let events: Vec<(Instant, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| (Instant::now(), d.to_string()))
            .collect();
        events
    };
    let first = json!({"role": "user", "content": "stateless [sim:ask=Bash]"});
    let events = post(json!([first]));
    let question = streamed_text(&events);
    let id = question_ids(&events).pop().expect("a question");
    // No pause: the responder records the conversation's point before the response's last
    // bytes go out, so an answer sent at once finds the session.
    let events = post(json!([
        first,
        {"role": "assistant", "content": question},
        {"role": "user", "content": format!("yes {id}")},
    ]));
    let rest = streamed_text(&events);
    assert!(
        rest.ends_with("(Bash: allowed)"),
        "{rest}\n{}",
        bridge.log()
    );
}

#[test]
fn a_prompt_claude_does_not_relay_fails_the_turn_instead_of_stalling() {
    // Like a Claude Code without the tengu_harbor_permissions flag: the prompt stays on its
    // terminal and nothing reaches the channel.
    let bridge = Bridge::demo()
        .env("SYNTHESIS_SIM_NO_PERMISSION_RELAY", "1")
        .start();
    let started = Instant::now();
    let response = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "p"), ("Content-Type", "application/json")],
        &chat_body("go [sim:ask=Bash]", false),
    );
    let waited = started.elapsed();
    assert_eq!(response.status, 409);
    let body = response.text();
    assert!(
        body.contains("permission_relay_off") && body.contains("tengu_harbor_permissions"),
        "{body}"
    );
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    // The session is usable again.
    let (_, events) = stream_chat(bridge.http, "p", "after");
    assert_eq!(streamed_text(&events), "after");
}

#[test]
fn responses_api_clients_get_the_question_and_answer_it_with_yes_id() {
    let bridge = Bridge::demo().start();
    let post = |body: Value| {
        request(
            bridge.http,
            "POST",
            "/v1/responses",
            &[("X-Session-Key", "r"), ("Content-Type", "application/json")],
            &body.to_string(),
        )
    };
    let asked = post(json!({"model": "claude-code", "input": "go [sim:ask=Bash]"}));
    assert_eq!(asked.status, 200, "{}", asked.text());
    let body = asked.json();
    let id = body["synthesis_pending"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no synthesis_pending in {body}"))
        .to_string();
    let text = body["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains(&format!("yes {id}")), "{text}");
    assert_eq!(session_row(&bridge, "r")["state"], "suspended");

    let wrong = if id == "zzzzz" { "yyyyy" } else { "zzzzz" };
    let refused = post(json!({"input": format!("yes {wrong}")}));
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["code"], "unknown_question_id");

    // The answer, streamed and continuing by previous_response_id: the rest of the turn.
    let answered = post(json!({
        "input": format!("yes {id}"),
        "previous_response_id": body["id"],
        "stream": true,
    }));
    assert_eq!(answered.status, 200);
    let completed = answered
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["type"] == "response.completed")
        .expect("a response.completed event");
    let rest = completed["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(rest.ends_with("(Bash: allowed)"), "{rest}");
    assert!(completed["response"].get("synthesis_pending").is_none());
}

#[test]
fn with_a_json_response_format_the_question_is_passed_on_unchecked() {
    let bridge = Bridge::demo().start();
    let body = json!({
        "model": "claude-code",
        "stream": true,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "go [sim:ask=Bash]"}],
    });
    let (response, events) = stream_body(bridge.http, "j", &body.to_string());
    assert_eq!(response.status, 200);
    let shown = streamed_text(&events);
    let ids = question_ids(&events);
    assert_eq!(ids.len(), 1, "{shown:?} {events:?}");
    assert!(shown.contains(&format!("yes {}", ids[0])), "{shown}");
    assert_eq!(finish_reason(&events).as_deref(), Some("stop"));
    // No repair turn was sent: it would have denied the question.
    assert_eq!(session_row(&bridge, "j")["state"], "suspended");
    assert!(!bridge.log().contains("asking Claude once to fix it"));
}
