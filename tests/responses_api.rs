//! `POST /v1/responses` against `serve --demo` (issue #15, problem 9): plain and streamed,
//! content-part input, `previous_response_id` over three turns (and a fork from an older
//! response), `text.format` JSON, errors in OpenAI's shape.

mod support;

use serde_json::{Value, json};
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

fn respond(bridge: &Bridge, body: &Value) -> HttpResponse {
    request(
        bridge.http,
        "POST",
        "/v1/responses",
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
}

fn output_text(response: &Value) -> String {
    response["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no output text in {response}"))
        .to_string()
}

/// (event name, data) of each SSE event.
fn stream_events(bridge: &Bridge, body: &Value) -> (HttpResponse, Vec<(String, Value)>) {
    let req = build_request(
        "POST",
        "/v1/responses",
        &[("Content-Type", "application/json")],
        &body.to_string(),
    );
    let mut stream = TcpStream::connect(bridge.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(req.as_bytes()).unwrap();
    let response = read_response(&mut BufReader::new(stream), |_| {});
    let text = response.text();
    let events = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_string();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect();
    (response, events)
}

#[test]
fn a_plain_response_and_previous_response_id_over_three_turns() {
    let bridge = Bridge::demo().start();
    let first = respond(
        &bridge,
        &json!({"model": "claude-code", "input": "one", "instructions": "be brief", "store": false}),
    );
    assert_eq!(first.status, 200, "{}", first.text());
    let r1 = first.json();
    assert_eq!(r1["object"], "response");
    assert_eq!(r1["status"], "completed");
    assert!(r1["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(output_text(&r1), "one");
    assert_eq!(r1["output"][0]["role"], "assistant");
    assert!(r1["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let key = first.headers["x-session-key"].clone();
    let r2 = respond(
        &bridge,
        &json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "two"}]}], "previous_response_id": r1["id"]}),
    );
    assert_eq!(r2.headers["x-session-key"], key);
    let r2 = r2.json();
    assert_eq!(output_text(&r2), "two");
    assert_eq!(r2["previous_response_id"], r1["id"]);
    let r3 = respond(
        &bridge,
        &json!({"input": "three", "previous_response_id": r2["id"]}),
    );
    assert_eq!(r3.headers["x-session-key"], key);
    assert_eq!(output_text(&r3.json()), "three");
    // Branching from r1 again: a new conversation that starts from r1's history.
    let fork = respond(
        &bridge,
        &json!({"input": "two-b", "previous_response_id": r1["id"]}),
    );
    assert_ne!(fork.headers["x-session-key"], key);
    let text = output_text(&fork.json());
    assert!(
        text.contains("User: one\nAssistant: one") && text.ends_with("two-b"),
        "{text}"
    );
    assert!(!text.contains("three"), "{text}");
    let unknown = respond(
        &bridge,
        &json!({"input": "x", "previous_response_id": "resp_nope"}),
    );
    assert_eq!(unknown.status, 400);
    assert_eq!(
        unknown.json()["error"]["code"],
        "previous_response_not_found"
    );
}

#[test]
fn a_streamed_response_follows_the_event_sequence() {
    let bridge = Bridge::demo().arg("--heartbeat-interval", "100ms").start();
    let (response, events) = stream_events(
        &bridge,
        &json!({"input": "streamed [sim:progress=1,delay_ms=250]", "stream": true}),
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "text/event-stream");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    for (name, data) in &events {
        assert_eq!(data["type"], *name, "event name and type agree");
    }
    let mut order: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| *n != "response.in_progress")
        .collect();
    order.dedup();
    assert_eq!(
        order,
        [
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ],
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .filter(|n| **n == "response.in_progress")
            .count()
            >= 2,
        "heartbeats while the turn waits: {names:?}"
    );
    let sequence: Vec<u64> = events
        .iter()
        .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert!(
        sequence.windows(2).all(|w| w[1] == w[0] + 1),
        "{sequence:?}"
    );
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(output_text(completed), deltas);
    assert_eq!(
        deltas,
        "progress 1/1\n\nstreamed [sim:progress=1,delay_ms=250]"
    );
}

#[test]
fn json_format_and_errors() {
    let bridge = Bridge::demo().start();
    let r = respond(
        &bridge,
        &json!({"input": "[sim:json_next] a person\n{\"name\": \"Ada\"}",
            "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object", "required": ["name"]}}}}),
    );
    let text = output_text(&r.json());
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"name": "Ada"})
    );
    let bad = respond(
        &bridge,
        &json!({"input": [{"type": "function_call_output", "output": "x"}]}),
    );
    assert_eq!(bad.status, 400);
    let error = &bad.json()["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("input[0].type"));
    let get = request(bridge.http, "GET", "/v1/responses", &[], "");
    assert_eq!(get.status, 405);
}

#[test]
fn a_stateless_client_sending_the_whole_input_continues_its_session() {
    let bridge = Bridge::demo().start();
    let first = respond(
        &bridge,
        &json!({"input": [{"role": "user", "content": "first"}]}),
    );
    let key = first.headers["x-session-key"].clone();
    let reply = output_text(&first.json());
    let second = respond(
        &bridge,
        &json!({"input": [
            {"role": "user", "content": "first"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": reply}]},
            {"role": "user", "content": "second"},
        ]}),
    );
    assert_eq!(second.headers["x-session-key"], key, "matched by history");
    assert_eq!(
        output_text(&second.json()),
        "second",
        "only the new turn reaches Claude"
    );
}
