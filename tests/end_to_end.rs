//! The whole path of a turn, black-box: the real binary in `--demo` mode, so the PTY, the
//! screen handling, the channel server and the WebSocket are the code users run; only
//! Claude is simulated (`sim-agent`).

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

fn json_events(events: &[(Instant, String)]) -> Vec<Value> {
    let (last, rest) = events.split_last().expect("stream had events");
    assert_eq!(last.1, "[DONE]", "stream must end with [DONE]");
    rest.iter()
        .map(|(_, d)| {
            serde_json::from_str(d).unwrap_or_else(|e| panic!("event {d:?} is not JSON: {e}"))
        })
        .collect()
}

#[test]
fn streamed_turn_has_role_first_text_stop_usage_and_done() {
    let bridge = Bridge::demo().start();
    let (response, events) = stream_chat(bridge.http, "s1", "hello bridge");
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "text/event-stream");
    assert_eq!(response.headers["transfer-encoding"], "chunked");
    let chunks = json_events(&events);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["id"], id, "every chunk shares the completion id");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "claude-code");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&events), "hello bridge");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn non_streamed_turn_returns_one_completion() {
    let bridge = Bridge::demo().start();
    let r = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "s1")],
        &chat_body("one shot", false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "one shot");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn sessions_run_in_parallel_and_queued_turns_keep_their_order() {
    let bridge = Bridge::demo().start();
    let addr = bridge.http;
    // Session a: three turns queued at once, each slow enough that they overlap.
    let queued: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30 * i)); // arrival order 0, 1, 2
                let (_, events) = stream_chat(addr, "a", &format!("a-{i} [sim:delay_ms=200]"));
                (i, Instant::now(), streamed_text(&events))
            })
        })
        .collect();
    let other = std::thread::spawn(move || streamed_text(&stream_chat(addr, "b", "b-0").1));
    let mut results: Vec<_> = queued.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(other.join().unwrap(), "b-0");
    for (i, _, text) in &results {
        assert_eq!(
            text,
            &format!("a-{i} [sim:delay_ms=200]"),
            "turn {i} got someone else's reply"
        );
    }
    results.sort_by_key(|(_, done, _)| *done);
    let order: Vec<u64> = results.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(
        order,
        vec![0, 1, 2],
        "turns of one session finish in arrival order"
    );
}

#[test]
fn progress_replies_stream_as_separate_chunks_before_the_final_one() {
    let bridge = Bridge::demo().start();
    let (_, events) = stream_chat(bridge.http, "p", "work [sim:progress=2]");
    let contents: Vec<String> = json_events(&events)
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        contents,
        vec![
            "progress 1/2",
            "\n\nprogress 2/2",
            "\n\nwork [sim:progress=2]"
        ]
    );
}

#[test]
fn heartbeat_chunks_flow_while_the_agent_is_slow() {
    let bridge = Bridge::demo().arg("--heartbeat-interval", "100ms").start();
    let (_, events) = stream_chat(bridge.http, "slow", "wait [sim:delay_ms=700]");
    let chunks = json_events(&events);
    let heartbeats = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"] == serde_json::json!({"content": ""})
                && c["choices"][0]["delta"].get("role").is_none()
        })
        .count();
    assert!(
        heartbeats >= 3,
        "expected heartbeats during a 700 ms wait at 100 ms, got {heartbeats}: {chunks:?}"
    );
    assert_eq!(streamed_text(&events), "wait [sim:delay_ms=700]");
}

#[test]
fn dev_channels_dialog_is_answered_only_once_it_is_on_screen() {
    // The sim exits with an error if any key arrives before its dialog is drawn.
    let bridge = Bridge::demo()
        .env("SYNTHESIS_SIM_DIALOG_DELAY_MS", "600")
        .start();
    let (_, events) = stream_chat(bridge.http, "d", "after the dialog");
    assert_eq!(streamed_text(&events), "after the dialog");
}

#[test]
fn an_agent_that_never_says_hello_fails_clearly_within_the_ready_timeout_and_is_stopped() {
    let bridge = Bridge::demo()
        .env("SYNTHESIS_SIM_NO_HELLO", "1")
        .arg("--ready-timeout", "1s")
        .start();
    let started = Instant::now();
    let (_, events) = stream_chat(bridge.http, "mute", "anyone there?");
    let elapsed = started.elapsed();
    let chunks = json_events(&events);
    let error = &chunks.last().unwrap()["error"];
    assert_eq!(error["code"], "agent_unavailable", "{chunks:?}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("ready_timeout"), "{message}");
    // The client gets the short reason; the screen lines are for the operator (issue #15).
    assert!(!message.contains("Last screen lines"), "{message}");
    let log = bridge.log();
    assert!(
        log.contains("Loading development channels") || log.contains("Last screen lines"),
        "{log}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(
        bridge.descendants(),
        Vec::<u32>::new(),
        "the silent agent must be stopped"
    );
}

#[test]
fn a_hello_with_a_wrong_token_is_refused_and_turns_still_work() {
    let bridge = Bridge::demo().start();
    let url = format!("ws://{}/bridge", bridge.ws);
    let (mut ws, _) = tungstenite::connect(url.as_str()).expect("handshake");
    let hello = serde_json::json!({"type": "hello", "session": "s", "claude_session": "c", "spawn_id": "x", "token": "wrong", "pid": 1, "version": "0"});
    ws.send(tungstenite::Message::text(hello.to_string()))
        .unwrap();
    let refused = loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(_)) | Err(_) => break true,
            Ok(_) => continue,
        }
    };
    assert!(refused);
    assert!(
        bridge.log().contains("wrong token"),
        "refusal must be logged"
    );
    let (_, events) = stream_chat(bridge.http, "s", "still fine");
    assert_eq!(streamed_text(&events), "still fine");
}

#[test]
fn bad_requests_get_openai_errors() {
    let bridge = Bridge::demo().start();
    let r = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[],
        "{not json",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    let r = request(bridge.http, "GET", "/v2/nothing", &[], "");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = request(bridge.http, "DELETE", "/v1/models", &[], "");
    assert_eq!(r.status, 405);
    let r = request(bridge.http, "GET", "/v1/models", &[], "");
    assert_eq!(r.json()["data"][0]["id"], "claude-code");
    assert_eq!(request(bridge.http, "GET", "/healthz", &[], "").status, 200);
}

#[test]
fn stopping_the_bridge_leaves_no_child_behind() {
    let mut bridge = Bridge::demo().start();
    for key in ["x", "y"] {
        assert_eq!(streamed_text(&stream_chat(bridge.http, key, "hi").1), "hi");
    }
    assert!(
        bridge.descendants().len() >= 4,
        "two agents and two channel servers run: {:?}",
        bridge.descendants()
    );
    assert_eq!(bridge.stop(), Some(0), "SIGTERM ends the bridge with 0");
    assert_eq!(bridge.descendants(), Vec::<u32>::new());
}
