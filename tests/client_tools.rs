//! Client tools round trip (docs/CLIENT_TOOLS.md), black-box against `serve --demo`: the
//! simulated Claude's `[sim:tool=NAME]` directive calls the channel's `client_NAME` tool; the
//! response ends with `tool_calls`; the next request carries the `tool` results and streams
//! the rest of the same Claude turn.

mod support;

use serde_json::{Value, json};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

fn tool(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name, "description": format!("the {name} tool"),
        "parameters": {"type": "object", "properties": {"tool": {"type": "string"}, "n": {"type": "integer"}}}}})
}

/// Posts a chat body (with `X-Session-Key: session` unless None) and reads the whole response.
fn post(addr: SocketAddr, session: Option<&str>, body: &Value) -> HttpResponse {
    let body = body.to_string();
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(session) = session {
        headers.push(("X-Session-Key", session));
    }
    let req = build_request("POST", "/v1/chat/completions", &headers, &body);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(req.as_bytes()).unwrap();
    read_response(&mut BufReader::new(stream), |_| {})
}

/// The JSON events of a stream (without `[DONE]`, which must end it).
fn chunks(events: &[(Instant, String)]) -> Vec<Value> {
    let (last, rest) = events.split_last().expect("stream had events");
    assert_eq!(last.1, "[DONE]", "stream must end with [DONE]");
    rest.iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect()
}

fn finish_reason(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn streamed_calls(chunks: &[Value]) -> Vec<Value> {
    chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/tool_calls")
                .and_then(Value::as_array)
        })
        .flatten()
        .cloned()
        .collect()
}

fn assert_call_shape(call: &Value, index: usize, name: &str) {
    let id = call["id"].as_str().expect("a call id");
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "call id {id:?} must be alphanumeric"
    );
    assert_eq!(call["index"], index);
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], name);
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .expect("arguments are a JSON string");
    assert_eq!(args["tool"], name);
}

/// The messages of the answering request: the history, the assistant message with the
/// calls, and one `tool` message per call.
fn answering(
    history: &[Value],
    content: Value,
    calls: &[Value],
    results: &[(&str, bool)],
) -> Vec<Value> {
    let mut messages = history.to_vec();
    let calls: Vec<Value> = calls
        .iter()
        .map(|c| json!({"id": c["id"], "type": "function", "function": c["function"]}))
        .collect();
    messages.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
    for (call, (text, is_error)) in calls.iter().zip(results) {
        let mut m = json!({"role": "tool", "tool_call_id": call["id"], "content": text});
        if *is_error {
            m["is_error"] = json!(true);
        }
        messages.push(m);
    }
    messages
}

#[test]
fn one_call_streamed_then_the_result_streams_the_rest_of_the_turn() {
    let bridge = Bridge::demo().start();
    let user = json!({"role": "user", "content": "weather in Oslo? [sim:tool=get_weather]"});
    let first =
        json!({"model": "m", "stream": true, "tools": [tool("get_weather")], "messages": [user]});
    let (response, events) = stream_body(bridge.http, "one", &first.to_string());
    assert_eq!(response.status, 200);
    let first_chunks = chunks(&events);
    assert_eq!(first_chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let calls = streamed_calls(&first_chunks);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_call_shape(&calls[0], 0, "get_weather");
    assert_eq!(finish_reason(&first_chunks), "tool_calls");
    assert_eq!(streamed_text(&events), "");

    let messages = answering(&[user], Value::Null, &calls, &[("sunny, 21 C", false)]);
    let second =
        json!({"model": "m", "stream": true, "tools": [tool("get_weather")], "messages": messages});
    let (response, events) = stream_body(bridge.http, "one", &second.to_string());
    assert_eq!(response.status, 200);
    let text = streamed_text(&events);
    assert!(
        text.contains("[tool get_weather said: sunny, 21 C]"),
        "{text}"
    );
    assert!(text.contains("weather in Oslo?"), "{text}");
    assert_eq!(finish_reason(&chunks(&events)), "stop");
    assert!(
        bridge.log().contains("resumed by"),
        "one Claude turn, resumed"
    );
}

#[test]
fn two_parallel_calls_non_streamed_without_a_session_key() {
    let bridge = Bridge::demo().start();
    let user =
        json!({"role": "user", "content": "both please [sim:tool=get_weather,tool=get_time]"});
    let tools = json!([tool("get_weather"), tool("get_time")]);
    let first = json!({"model": "m", "tools": tools, "messages": [user]});
    let response = post(bridge.http, None, &first);
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 2, "parallel calls come back together: {body}");
    assert_call_shape(&calls[0], 0, "get_weather");
    assert_call_shape(&calls[1], 1, "get_time");
    assert_ne!(calls[0]["id"], calls[1]["id"]);

    // A stateless client: the answering request continues the session by its history.
    let messages = answering(
        &[user],
        Value::Null,
        &calls,
        &[("rain", false), ("12:00", false)],
    );
    let second = json!({"model": "m", "tools": tools, "messages": messages});
    let response = post(bridge.http, None, &second);
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("[tool get_weather said: rain]"), "{text}");
    assert!(text.contains("[tool get_time said: 12:00]"), "{text}");
}

#[test]
fn text_before_the_call_a_tool_error_and_an_unknown_id() {
    let bridge = Bridge::demo().start();
    let user = json!({"role": "user", "content": "check [sim:progress=1,tool=get_weather]"});
    let first =
        json!({"model": "m", "stream": true, "tools": [tool("get_weather")], "messages": [user]});
    let (_, events) = stream_body(bridge.http, "err", &first.to_string());
    assert_eq!(
        streamed_text(&events),
        "progress 1/1",
        "text before the call is content"
    );
    let first_chunks = chunks(&events);
    let calls = streamed_calls(&first_chunks);
    assert_eq!(calls.len(), 1);
    assert_eq!(finish_reason(&first_chunks), "tool_calls");

    // A result for an id nobody waits for: 400, and the call stays open.
    let mut wrong = answering(
        std::slice::from_ref(&user),
        json!("progress 1/1"),
        &calls,
        &[("x", false)],
    );
    wrong.last_mut().unwrap()["tool_call_id"] = json!("callnotthere");
    let response = post(
        bridge.http,
        Some("err"),
        &json!({"model": "m", "messages": wrong}),
    );
    assert_eq!(response.status, 400, "{}", response.text());
    let message = response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("callnotthere") && message.contains(calls[0]["id"].as_str().unwrap()),
        "{message}"
    );
    // Streamed too: a real 400 before the stream starts, not an error event.
    let response = post(
        bridge.http,
        Some("err"),
        &json!({"model": "m", "stream": true, "messages": wrong}),
    );
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("callnotthere"),
        "{}",
        response.text()
    );

    let messages = answering(&[user], json!("progress 1/1"), &calls, &[("boom", true)]);
    let response = post(
        bridge.http,
        Some("err"),
        &json!({"model": "m", "messages": messages}),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("[tool get_weather failed: boom]"), "{text}");
}

#[test]
fn a_missing_result_fails_the_call_after_tool_result_timeout() {
    let bridge = Bridge::demo().arg("--tool-result-timeout", "1s").start();
    let user = json!({"role": "user", "content": "weather? [sim:tool=get_weather]"});
    let first = json!({"model": "m", "tools": [tool("get_weather")], "messages": [user]});
    let response = post(bridge.http, Some("late"), &first);
    let calls = response.json()["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    assert!(bridge.wait_for_log("within tool_result_timeout", Duration::from_secs(10)));
    // Claude was told; the session goes on, and its next turn says what happened.
    let next = json!({"model": "m", "messages": [{"role": "user", "content": "anything else"}]});
    let response = post(bridge.http, Some("late"), &next);
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("did not return the result"), "{text}");
    assert!(text.contains("anything else"), "{text}");
    // The result, too late: 400.
    let messages = answering(&[user], Value::Null, &calls, &[("sunny", false)]);
    let response = post(
        bridge.http,
        Some("late"),
        &json!({"model": "m", "messages": messages}),
    );
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("tool_result_timeout"),
        "{}",
        response.text()
    );
}

#[test]
fn tool_choice_none_and_a_changed_tool_set_between_turns() {
    let bridge = Bridge::demo().start();
    // `none`: the tools are hidden, so Claude cannot call them and replies normally.
    let hidden = json!({"model": "m", "tools": [tool("get_weather")], "tool_choice": "none",
        "messages": [{"role": "user", "content": "a [sim:tool=get_weather]"}]});
    let response = post(bridge.http, Some("set"), &hidden);
    let body = response.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("[tool get_weather not offered]")
    );
    assert!(body["choices"][0]["message"].get("tool_calls").is_none());

    // Only get_time now: Claude re-lists and sees the new set.
    let changed = json!({"model": "m", "stream": true, "tools": [tool("get_time")],
        "messages": [{"role": "user", "content": "b [sim:tool=get_weather,tool=get_time]"}]});
    let (_, events) = stream_body(bridge.http, "set", &changed.to_string());
    let calls = streamed_calls(&chunks(&events));
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_call_shape(&calls[0], 0, "get_time");
}

#[test]
fn a_resent_result_request_attaches_like_a_retry() {
    let bridge = Bridge::demo().start();
    let user = json!({"role": "user", "content": "slow [sim:tool=get_weather,delay_ms=1500]"});
    let first = json!({"model": "m", "tools": [tool("get_weather")], "messages": [user]});
    let response = post(bridge.http, Some("retry"), &first);
    let calls = response.json()["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    let messages = answering(&[user], Value::Null, &calls, &[("fog", false)]);
    let body = json!({"model": "m", "stream": true, "messages": messages}).to_string();
    let addr = bridge.http;
    let first = {
        let body = body.clone();
        std::thread::spawn(move || stream_body(addr, "retry", &body))
    };
    assert!(bridge.wait_for_log("resumed by", Duration::from_secs(10)));
    let (_, again) = stream_body(addr, "retry", &body);
    let (_, original) = first.join().unwrap();
    for events in [&original, &again] {
        let text = streamed_text(events);
        assert!(text.contains("[tool get_weather said: fog]"), "{text}");
    }
    assert_eq!(
        bridge.log().matches("resumed by").count(),
        1,
        "the resent request attached to the resumed turn instead of answering again"
    );
}

#[test]
fn a_new_message_instead_of_results_fails_the_calls_and_runs_as_the_next_turn() {
    let bridge = Bridge::demo().start();
    let user = json!({"role": "user", "content": "weather? [sim:tool=get_weather]"});
    let first = json!({"model": "m", "tools": [tool("get_weather")], "messages": [user]});
    let response = post(bridge.http, Some("switch"), &first);
    let calls = response.json()["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    let next = json!({"model": "m", "messages": [user,
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "user", "content": "never mind"}]});
    let response = post(bridge.http, Some("switch"), &next);
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("A new message arrived"), "{text}");
    assert!(text.contains("never mind"), "{text}");
}

/// One Claude turn that calls a client tool and then asks for a permission: the first
/// response ends with `tool_calls`, the one carrying the result ends with the permission
/// question (`synthesis_pending`, finish `stop`), and `yes <id>` gets the final reply, which
/// shows both answers reached the same turn.
#[test]
fn a_tool_call_then_a_permission_question_in_one_turn() {
    let bridge = Bridge::demo().start();
    let user = json!({"role": "user", "content": "check [sim:tool=get_weather,ask=Bash]"});
    let first =
        json!({"model": "m", "stream": true, "tools": [tool("get_weather")], "messages": [user]});
    let (_, events) = stream_body(bridge.http, "mix", &first.to_string());
    let first_chunks = chunks(&events);
    let calls = streamed_calls(&first_chunks);
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(finish_reason(&first_chunks), "tool_calls");
    assert!(
        first_chunks
            .iter()
            .all(|c| c.get("synthesis_pending").is_none()),
        "tool calls only: {events:?}"
    );

    let mut messages = answering(
        std::slice::from_ref(&user),
        Value::Null,
        &calls,
        &[("sunny", false)],
    );
    let second =
        json!({"model": "m", "stream": true, "tools": [tool("get_weather")], "messages": messages});
    let (_, events) = stream_body(bridge.http, "mix", &second.to_string());
    let second_chunks = chunks(&events);
    assert_eq!(finish_reason(&second_chunks), "stop", "{events:?}");
    assert!(streamed_calls(&second_chunks).is_empty(), "{events:?}");
    let question = streamed_text(&events);
    assert!(
        question.contains("Claude wants to run **Bash**"),
        "{question}"
    );
    let pending: Vec<Value> = second_chunks
        .iter()
        .filter_map(|c| c.get("synthesis_pending").and_then(Value::as_array))
        .flatten()
        .cloned()
        .collect();
    assert_eq!(pending.len(), 1, "{events:?}");
    assert_eq!(pending[0]["kind"], "permission");
    let id = pending[0]["id"].as_str().unwrap().to_string();

    messages.push(json!({"role": "assistant", "content": question}));
    messages.push(json!({"role": "user", "content": format!("yes {id}")}));
    let third = json!({"model": "m", "tools": [tool("get_weather")], "messages": messages});
    let response = post(bridge.http, Some("mix"), &third);
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains("[tool get_weather said: sunny]") && text.contains("(Bash: allowed)"),
        "{text}\nlog:\n{}",
        bridge.log()
    );
    assert_eq!(bridge.log().matches("spawned pid").count(), 1);
}
