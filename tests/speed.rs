//! Speed mechanisms of issue 16, black-box against the simulated Claude: the channel says
//! hello as soon as claude's MCP debug log (`--debug=mcp --debug-file`) says the channel is
//! registered, not after a fixed `channel_hello_delay`, and never before (a turn pushed
//! earlier would be lost).

mod support;

use std::time::{Duration, Instant};
use support::*;

fn metric(bridge: &Bridge, name: &str) -> f64 {
    let text = request(bridge.http, "GET", "/metrics", &[], "").text();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

fn debug_logs(bridge: &Bridge) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(bridge.dir.path().join("state/claude-debug"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn the_first_turn_waits_for_the_channel_registration_and_not_for_the_hello_delay() {
    // The sim registers the channel 150 ms after MCP initialized and drops notifications
    // before that, as the real Claude does; the hello delay is only the longest wait.
    let bridge = Bridge::demo()
        .arg("--channel-hello-delay", "10s")
        .arg("--delivery-timeout", "20s")
        .env("SYNTHESIS_SIM_REGISTER_DELAY_MS", "150")
        .env("SYNTHESIS_SIM_DIALOG_DELAY_MS", "0")
        .start();
    let started = Instant::now();
    let (response, events) = stream_chat(bridge.http, "fresh", "first words");
    let took = started.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&events), "first words", "{}", bridge.log());
    // Pushed too early, the turn would wait for delivery_timeout (20 s); waiting for the
    // whole hello delay would take 10 s.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(took >= Duration::from_millis(150), "took {took:?}");
    assert_eq!(
        metric(&bridge, "synthesis_delivery_retries_total"),
        0.0,
        "one push was enough: {}",
        bridge.log()
    );
    // The spawn's debug log lives in the state dir while its process does.
    assert_eq!(debug_logs(&bridge).len(), 1, "{:?}", debug_logs(&bridge));
}

#[test]
fn a_stopped_process_takes_its_debug_log_with_it() {
    let bridge = Bridge::demo()
        .arg("--channel-hello-delay", "10s")
        .env("SYNTHESIS_SIM_DIALOG_DELAY_MS", "0")
        .start();
    let started = Instant::now();
    let (_, events) = stream_chat(bridge.http, "gone", "hello there");
    assert_eq!(streamed_text(&events), "hello there");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(debug_logs(&bridge).len(), 1);
    let stopped = wait_until(Duration::from_secs(10), || {
        (request(bridge.http, "DELETE", "/v1/sessions/gone", &[], "").status == 202).then_some(())
    });
    assert!(stopped.is_some(), "{}", bridge.log());
    assert!(
        wait_until(Duration::from_secs(10), || debug_logs(&bridge)
            .is_empty()
            .then_some(()))
        .is_some(),
        "{:?}",
        debug_logs(&bridge)
    );
}

/// A turn without a final reply ends only through the Stop hook (the backstop).
fn ends_through_the_stop_hook(bridge: &Bridge) {
    let (_, events) = stream_chat(bridge.http, "hook", "quiet [sim:no_reply]");
    assert!(stream_error(&events).is_none(), "{events:?}");
    assert!(
        bridge.log().contains("without a final reply"),
        "{}",
        bridge.log()
    );
}

#[test]
fn the_http_stop_hook_ends_a_turn_without_a_process() {
    let bridge = Bridge::demo().start();
    ends_through_the_stop_hook(&bridge);
    let log = bridge.log();
    assert!(log.contains("Stop hook: http"), "{log}");
    // No `synthesis-bridge hook stop` ran: the hub's Unix socket saw no report.
    assert!(!log.contains("hook stop"), "{log}");
}

#[test]
fn the_command_stop_hook_is_kept_for_claude_versions_without_http_hooks() {
    let bridge = Bridge::demo().arg("--stop-hook", "command").start();
    ends_through_the_stop_hook(&bridge);
    assert!(bridge.log().contains("Stop hook: command"));
}

// ---------------------------------------------------------------------------------------------
// Pipelined turns (`pipeline_turns`, docs/SPEED.md §4)
// ---------------------------------------------------------------------------------------------

fn session_row(bridge: &Bridge, key: &str) -> serde_json::Value {
    let list = request(bridge.http, "GET", "/v1/sessions", &[], "").json();
    list["data"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == key).cloned())
        .unwrap_or_default()
}

#[test]
fn a_pipelined_turn_sent_while_claude_closes_the_previous_one_is_folded_in_and_answered_at_once() {
    // The sim's closing model call after the first reply lasts 6 s; a message arriving then
    // is folded into that turn, as Claude folds it. Waiting for the turn's end would make the
    // second turn take 6 s or more.
    let bridge = Bridge::demo().flag("--pipeline-turns").start();
    let (_, events) = stream_chat(bridge.http, "quick", "first [sim:linger_ms=6000]");
    assert_eq!(streamed_text(&events), "first [sim:linger_ms=6000]");
    let started = Instant::now();
    let (response, events) = stream_chat(bridge.http, "quick", "second");
    let took = started.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&events), "second", "{}", bridge.log());
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}: {}",
        bridge.log()
    );
    assert!(
        bridge.log().contains("goes out while claude finishes"),
        "{}",
        bridge.log()
    );
    // One Stop hook ends the folded pair, naming the second turn: the session is ready
    // (not after giving up on the first turn's report), with both turns counted.
    let ready = wait_until(Duration::from_secs(15), || {
        (session_row(&bridge, "quick")["state"] == "ready").then_some(())
    });
    assert!(ready.is_some(), "{}", bridge.log());
    assert_eq!(session_row(&bridge, "quick")["turns"], 2);
    // (Ready through the hook's report or claude's session file saying idle, whichever the
    // worker sees first; never by giving up on the first turn's report.)
    let log = bridge.log();
    assert!(!log.contains("did not report the end"), "{log}");
}

#[test]
fn the_previous_turns_late_stop_hook_does_not_end_the_next_turn() {
    // The first turn's Stop hook runs 1.5 s after its final reply (not foldable: its closing
    // call is over). The second turn, pushed at once, is only queued by then and logged as
    // queued in the transcript; the hook must still name the first turn, so the second gets
    // its own answer, not the first turn's text.
    let bridge = Bridge::demo().flag("--pipeline-turns").start();
    let (_, events) = stream_chat(bridge.http, "late", "first [sim:end_delay_ms=1500]");
    assert_eq!(streamed_text(&events), "first [sim:end_delay_ms=1500]");
    let (response, events) = stream_chat(bridge.http, "late", "second");
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&events), "second", "{}", bridge.log());
    let log = bridge.log();
    assert!(log.contains("goes out while claude finishes"), "{log}");
    assert!(log.contains("turn end of an earlier turn"), "{log}");
}

#[test]
fn by_default_the_next_turn_waits_for_the_previous_turns_end() {
    let bridge = Bridge::demo().start();
    let (_, events) = stream_chat(bridge.http, "strict", "first [sim:linger_ms=1500]");
    assert_eq!(streamed_text(&events), "first [sim:linger_ms=1500]");
    let started = Instant::now();
    let (_, events) = stream_chat(bridge.http, "strict", "second");
    assert_eq!(streamed_text(&events), "second");
    // Pushed only once the first turn's Stop hook came, after its 1.5 s closing call.
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{}",
        bridge.log()
    );
    assert!(!bridge.log().contains("goes out while claude finishes"));
}
