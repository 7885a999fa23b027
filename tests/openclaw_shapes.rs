//! OpenClaw's request shapes, black-box: retries attach to the turn they repeat instead of
//! reaching Claude twice, the system-prompt policy, and the optional clean-up of OpenClaw's
//! internal context. Requests are built from the captured ones in tests/fixtures/openclaw.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(15);

fn fixture_body(name: &str) -> Value {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/openclaw/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["body"].clone()
}

fn internal_context() -> Value {
    json!({"role": "user", "content": [{"type": "text", "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nctx\n<<<END_OPENCLAW_INTERNAL_CONTEXT>>>"}]})
}

/// A first turn as OpenClaw sends it, and the retry it sends after an idle timeout.
fn original_and_retry(text: &str) -> (Value, Value) {
    let user = json!({"role": "user", "content": format!("[Tue 2026-11-24 10:32 UTC] {text}")});
    let system = json!({"role": "system", "content": "openclaw system prompt"});
    let original = json!({"model": "claude-code", "stream": true, "messages": [system, user, internal_context()]});
    let retry = json!({"model": "claude-code", "stream": true, "messages": [
        system, user,
        {"role": "user", "content": "[Tue 2026-11-24 10:33 UTC] <turn_aborted>\nThe previous turn was interrupted.\n</turn_aborted>"},
        {"role": "user", "content": "[Tue 2026-11-24 10:33 UTC] Continue the current task from the existing transcript, preserving completed work."},
        internal_context(),
    ]});
    (original, retry)
}

fn post(
    bridge: &Bridge,
    key: &str,
    body: &Value,
) -> (HttpResponse, Vec<(std::time::Instant, String)>) {
    stream_body(bridge.http, key, &body.to_string())
}

fn turns_sent(bridge: &Bridge, key: &str) -> usize {
    bridge
        .log()
        .lines()
        .filter(|l| l.contains(&format!("session {key:?} turn-")) && l.ends_with("turn sent"))
        .count()
}

#[test]
fn a_retry_of_the_running_turn_attaches_to_it_and_claude_sees_the_turn_once() {
    let bridge = Bridge::demo().start();
    let (original, retry) = original_and_retry("do it [sim:delay_ms=800]");
    let first = {
        let (http, body) = (bridge.http, original.clone());
        std::thread::spawn(move || stream_body(http, "r", &body.to_string()))
    };
    assert!(wait_until(WAIT, || (turns_sent(&bridge, "r") == 1).then_some(())).is_some());
    let (_, retried) = post(&bridge, "r", &retry);
    let (_, first) = first.join().unwrap();
    let expected = "[Tue 2026-11-24 10:32 UTC] do it [sim:delay_ms=800]\n\n<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nctx\n<<<END_OPENCLAW_INTERNAL_CONTEXT>>>";
    assert_eq!(streamed_text(&first), expected);
    assert_eq!(
        streamed_text(&retried),
        expected,
        "the retry streams the original turn's reply"
    );
    assert_eq!(turns_sent(&bridge, "r"), 1, "claude got the turn once");
    assert!(
        bridge
            .log()
            .contains("attached to it instead of sending it again")
    );
}

#[test]
fn a_retry_after_the_turn_finished_gets_the_finished_reply_but_new_words_are_a_new_turn() {
    let bridge = Bridge::demo().start();
    let (original, retry) = original_and_retry("once");
    let (_, first) = post(&bridge, "f", &original);
    let (_, again) = post(&bridge, "f", &retry);
    assert_eq!(streamed_text(&again), streamed_text(&first));
    assert_eq!(turns_sent(&bridge, "f"), 1);
    // The same request without OpenClaw's retry messages is the user saying it again.
    let (_, repeated) = post(&bridge, "f", &original);
    assert_eq!(streamed_text(&repeated), streamed_text(&first));
    assert_eq!(
        turns_sent(&bridge, "f"),
        2,
        "an unmarked repeat of a finished turn reaches Claude"
    );
    // The same words as a new turn (the history now holds the first exchange) reach Claude.
    let mut next = original.clone();
    let messages = next["messages"].as_array_mut().unwrap();
    messages.insert(
        2,
        json!({"role": "assistant", "content": streamed_text(&first)}),
    );
    messages.insert(
        3,
        json!({"role": "user", "content": "[Tue 2026-11-24 10:40 UTC] once"}),
    );
    let (_, third) = post(&bridge, "f", &next);
    assert!(streamed_text(&third).starts_with("[Tue 2026-11-24 10:40 UTC] once"));
    assert_eq!(turns_sent(&bridge, "f"), 3);
}

#[test]
fn a_retry_within_the_grace_keeps_an_abandoned_turn_alive() {
    let bridge = Bridge::demo()
        .arg("--heartbeat-interval", "100ms")
        .arg("--retry-grace", "5s")
        .start();
    let (original, retry) = original_and_retry("slow [sim:delay_ms=1500]");
    // The first client reads the headers, then gives up.
    let request = build_request(
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "g")],
        &original.to_string(),
    );
    let mut stream = TcpStream::connect(bridge.http).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(wait_until(WAIT, || (turns_sent(&bridge, "g") == 1).then_some(())).is_some());
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(stream);
    let (_, retried) = post(&bridge, "g", &retry);
    assert!(
        streamed_text(&retried).starts_with("[Tue 2026-11-24 10:32 UTC] slow"),
        "{retried:?}"
    );
    assert_eq!(turns_sent(&bridge, "g"), 1);
    assert!(
        !bridge.log().contains("interrupting claude"),
        "claude was not interrupted"
    );
}

#[test]
fn strip_openclaw_context_leaves_only_what_the_user_wrote() {
    let plain = Bridge::demo().start();
    let mut body = fixture_body("turn1-no-affinity.json");
    body["stream"] = json!(true);
    let (_, events) = post(&plain, "s", &body);
    let text = streamed_text(&events);
    assert!(
        text.contains("Runtime: agent=main") && text.contains("BEGIN_OPENCLAW_INTERNAL_CONTEXT"),
        "passed through by default"
    );

    let stripping = Bridge::demo().flag("--strip-openclaw-context").start();
    let (_, events) = post(&stripping, "s", &body);
    assert_eq!(
        streamed_text(&events),
        "[Tue 2026-11-24 10:28 UTC] hello one"
    );
}

#[test]
fn system_prompt_append_passes_the_prompt_and_a_change_restarts_with_resume() {
    let bridge = Bridge::demo().arg("--system-prompt", "append").start();
    let body = |system: &str, text: &str| json!({"stream": true, "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]});
    let (_, events) = post(&bridge, "p", &body("prompt A", "one"));
    assert_eq!(streamed_text(&events), "one");
    let prompt_file = |pid: u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let i = args
            .iter()
            .position(|a| a == "--append-system-prompt-file")
            .expect("flag passed");
        std::fs::read_to_string(&args[i + 1]).unwrap()
    };
    let first_pid = agent_pids(&bridge.marker, "p")[0];
    assert_eq!(prompt_file(first_pid), "prompt A");
    let (_, events) = post(&bridge, "p", &body("prompt A", "two"));
    assert_eq!(streamed_text(&events), "two");
    assert_eq!(
        agent_pids(&bridge.marker, "p"),
        vec![first_pid],
        "same prompt, same process"
    );
    let (_, events) = post(&bridge, "p", &body("prompt B", "three"));
    assert_eq!(streamed_text(&events), "three");
    let second_pid = agent_pids(&bridge.marker, "p")[0];
    assert_ne!(second_pid, first_pid, "a new prompt restarts claude");
    assert_eq!(prompt_file(second_pid), "prompt B");
    assert!(bridge.log().contains("system prompt changed"));
    assert!(
        bridge.log().contains("--resume"),
        "the restart resumes the conversation"
    );
}
