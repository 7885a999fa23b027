//! Session lifecycle, black-box (issue: a host can trust it): resume across restarts, the
//! session map, idle reaping, capacity, crash recovery, cancellation, the Stop-hook
//! backstop and clean shutdown.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

fn session_map(bridge: &Bridge) -> serde_json::Value {
    let text = std::fs::read_to_string(bridge.dir.path().join("state/sessions.json"))
        .expect("sessions.json exists");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_restarted_bridge_resumes_the_same_claude_conversation() {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let mut first = Bridge::demo().marker(&marker).start();
    assert_eq!(
        streamed_text(&stream_chat(first.http, "k", "remember me").1),
        "remember me"
    );
    assert_eq!(first.stop(), Some(0));
    let uuid = session_map(&first)["sessions"]["k"]["claude_session"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        first.log().contains(&format!("--session-id {uuid}")),
        "first spawn is a new conversation"
    );

    let dir = std::mem::replace(&mut first.dir, TempDir::new("unused"));
    let second = Bridge::demo().marker(&marker).dir(dir).start();
    assert_eq!(
        streamed_text(&stream_chat(second.http, "k", "again").1),
        "again"
    );
    assert!(
        second.log().contains(&format!("--resume {uuid}")),
        "log:\n{}",
        second.log()
    );
    assert_eq!(
        session_map(&second)["sessions"]["k"]["claude_session"],
        uuid.as_str()
    );
}

#[test]
fn a_corrupt_session_map_is_moved_aside_and_reported() {
    let dir = TempDir::new("corrupt");
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(
        dir.path().join("state/sessions.json"),
        "{\"sessions\": oops",
    )
    .unwrap();
    let bridge = Bridge::demo().dir(dir).start();
    assert!(
        bridge.log().contains("moved it to"),
        "log:\n{}",
        bridge.log()
    );
    let aside: Vec<_> = std::fs::read_dir(bridge.dir.path().join("state"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("sessions.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(aside[0].path()).unwrap(),
        "{\"sessions\": oops"
    );
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "k", "works").1),
        "works"
    );
    assert!(session_map(&bridge)["sessions"]["k"].is_object());
}

#[test]
fn idle_reaping_stops_only_idle_sessions() {
    let bridge = Bridge::demo().arg("--idle-kill", "300ms").start();
    assert_eq!(streamed_text(&stream_chat(bridge.http, "idle", "x").1), "x");
    let busy = stream_chat_in_background(bridge.http, "busy", "long [sim:delay_ms=2500]");
    assert!(
        wait_until(WAIT, || (agent_pids(&bridge.marker, "busy").len() == 1)
            .then_some(()))
        .is_some()
    );
    assert!(
        wait_until(WAIT, || agent_pids(&bridge.marker, "idle")
            .is_empty()
            .then_some(()))
        .is_some(),
        "the idle session's claude is stopped"
    );
    assert_eq!(
        agent_pids(&bridge.marker, "busy").len(),
        1,
        "the busy one is not"
    );
    let (_, events) = busy.join().unwrap();
    assert_eq!(streamed_text(&events), "long [sim:delay_ms=2500]");
    assert!(bridge.log().contains("idle_kill"));
    // The reaped session comes back on its next turn.
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "idle", "back").1),
        "back"
    );
}

#[test]
fn at_capacity_the_lru_idle_session_is_evicted_and_all_busy_means_429() {
    let bridge = Bridge::demo().arg("--max-processes", "2").start();
    for key in ["a", "b"] {
        assert_eq!(streamed_text(&stream_chat(bridge.http, key, key).1), key);
    }
    assert_eq!(streamed_text(&stream_chat(bridge.http, "c", "c").1), "c");
    assert!(
        agent_pids(&bridge.marker, "a").is_empty(),
        "a was least recently used"
    );
    assert_eq!(agent_pids(&bridge.marker, "b").len(), 1);
    assert_eq!(agent_pids(&bridge.marker, "c").len(), 1);

    let slow_b = stream_chat_in_background(bridge.http, "b", "[sim:delay_ms=1500]");
    let slow_c = stream_chat_in_background(bridge.http, "c", "[sim:delay_ms=1500]");
    assert!(bridge.wait_for_log("session \"b\" turn-", WAIT));
    assert!(
        wait_until(WAIT, || {
            let log = bridge.log();
            (log.matches("turn sent").count() >= 5).then_some(())
        })
        .is_some()
    );
    let r = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "d")],
        &chat_body("d", true),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "at_capacity");
    assert!(r.headers.contains_key("retry-after"));
    for t in [slow_b, slow_c] {
        assert_eq!(streamed_text(&t.join().unwrap().1), "[sim:delay_ms=1500]");
    }
}

#[test]
fn a_child_killed_mid_turn_fails_that_turn_and_the_next_turn_respawns_with_resume() {
    let bridge = Bridge::demo().start();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "k", "first").1),
        "first"
    );
    let pid = agent_pids(&bridge.marker, "k")[0];
    let doomed = stream_chat_in_background(bridge.http, "k", "doomed [sim:delay_ms=3000]");
    assert!(
        wait_until(WAIT, || (bridge.log().matches("turn sent").count() >= 2)
            .then_some(()))
        .is_some()
    );
    signal(pid, libc::SIGKILL);
    let (_, events) = doomed.join().unwrap();
    let error = stream_error(&events).expect("the turn ends with an error event");
    assert_eq!(error["code"], "agent_died");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("exited mid-turn"),
        "{error}"
    );
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "k", "after").1),
        "after"
    );
    assert_eq!(
        bridge.log().matches("--resume").count(),
        1,
        "respawned with --resume:\n{}",
        bridge.log()
    );
}

#[test]
fn a_crash_loop_backs_off_instead_of_spinning() {
    let bridge = Bridge::demo()
        .env("SYNTHESIS_SIM_EXIT_AT_START", "7")
        .start();
    for _ in 0..3 {
        let (_, events) = stream_chat(bridge.http, "crashy", "hi");
        assert_eq!(stream_error(&events).unwrap()["code"], "agent_unavailable");
    }
    let spawns = bridge.log().matches("spawned pid").count();
    let started = Instant::now();
    let (_, events) = stream_chat(bridge.http, "crashy", "hi");
    let error = stream_error(&events).unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not trying again"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused without a spawn"
    );
    assert_eq!(
        bridge.log().matches("spawned pid").count(),
        spawns,
        "no new spawn during back-off"
    );
}

#[test]
fn a_client_disconnect_interrupts_claude_and_the_next_queued_turn_gets_its_own_reply() {
    let bridge = Bridge::demo().arg("--heartbeat-interval", "100ms").start();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "k", "warm").1),
        "warm"
    );
    // Turn 1 hangs until interrupted; its client reads the first chunk and leaves.
    let mut stream = TcpStream::connect(bridge.http).unwrap();
    let body = chat_body("stuck [sim:hang]", true);
    let req = build_request(
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "k")],
        &body,
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"));
    let next = stream_chat_in_background(bridge.http, "k", "next one");
    assert!(
        wait_until(WAIT, || (bridge.log().matches("turn sent").count() >= 2)
            .then_some(()))
        .is_some()
    );
    drop(reader);
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    let (_, events) = next.join().unwrap();
    assert_eq!(
        streamed_text(&events),
        "next one",
        "the queued turn gets its own reply, not the hung one's"
    );
    assert!(
        bridge
            .log()
            .contains("client disconnected; interrupting claude"),
        "log:\n{}",
        bridge.log()
    );
}

#[test]
fn a_turn_without_a_final_reply_is_ended_by_the_stop_hook() {
    let bridge = Bridge::demo().start();
    let started = Instant::now();
    let (_, events) = stream_chat(bridge.http, "k", "quiet [sim:no_reply]");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(stream_error(&events).is_none(), "{events:?}");
    let text = streamed_text(&events);
    assert!(!text.is_empty(), "the backstop supplies a text");
    let finish = events
        .iter()
        .rev()
        .filter_map(|(_, d)| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| !v["choices"][0]["finish_reason"].is_null());
    assert_eq!(finish.unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(bridge.log().contains("without a final reply"));
}

#[test]
fn sigterm_with_a_turn_in_flight_ends_it_cleanly_and_leaves_no_child() {
    let mut bridge = Bridge::demo().start();
    let in_flight = stream_chat_in_background(bridge.http, "k", "finishing [sim:delay_ms=800]");
    assert!(bridge.wait_for_log("turn sent", WAIT));
    assert_eq!(bridge.stop(), Some(0));
    let (_, events) = in_flight.join().unwrap();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let text = streamed_text(&events);
    assert!(
        text == "finishing [sim:delay_ms=800]" || stream_error(&events).is_some(),
        "{events:?}"
    );
    assert_eq!(bridge.descendants(), Vec::<u32>::new());
}

/// SIGTERM right after a reply, while claude is still finishing that turn (its closing model
/// call: 1.5 s here): the session waits for the end of the turn, which claude's Stop hook
/// reports during the shutdown (either kind of hook), then stops claude.
#[test]
fn a_stop_hook_turn_end_during_shutdown_is_accepted() {
    for stop_hook in ["http", "command"] {
        let mut bridge = Bridge::demo()
            .arg("--shutdown-grace", "20s")
            .arg("--stop-hook", stop_hook)
            .start();
        let text = "answered [sim:end_delay_ms=1500]";
        let (_, events) = stream_chat(bridge.http, "k", text);
        assert_eq!(streamed_text(&events), text, "{events:?}");
        let started = Instant::now();
        assert_eq!(bridge.stop(), Some(0), "{stop_hook}");
        let took = started.elapsed();
        let log = bridge.log();
        let drained: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("session \"k\": draining -> "))
            .map(|l| l.split("draining -> ").nth(1).unwrap())
            .collect();
        assert_eq!(
            drained,
            ["ready (the previous turn reported its end)"],
            "{stop_hook}: the turn end came from the Stop hook, not from claude's session file: {log}"
        );
        if stop_hook == "http" {
            let lines: Vec<&str> = log.lines().collect();
            let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
            let signal = at("shutting down").unwrap_or_else(|| panic!("no shutdown: {log}"));
            let hook = at("Stop hook over HTTP: session \"k\" ended turn");
            assert!(hook.is_some_and(|hook| hook > signal), "{log}");
        }
        assert!(took < Duration::from_secs(10), "{stop_hook}: took {took:?}");
        assert_eq!(bridge.descendants(), Vec::<u32>::new(), "{stop_hook}");
    }
}

#[test]
fn sigkill_of_the_bridge_leaves_no_child_within_two_seconds() {
    let mut bridge = Bridge::demo().start();
    for key in ["a", "b"] {
        assert_eq!(streamed_text(&stream_chat(bridge.http, key, key).1), key);
    }
    assert!(bridge.descendants().len() >= 4);
    let mut child = bridge.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = wait_until(Duration::from_secs(2), || {
        bridge.descendants().is_empty().then_some(())
    });
    assert!(gone.is_some(), "left behind: {:?}", bridge.descendants());
}

#[test]
fn a_lost_transcript_starts_a_new_conversation_that_carries_the_clients_history() {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let mut first = Bridge::demo().marker(&marker).start();
    assert_eq!(
        streamed_text(&stream_chat(first.http, "k", "my name is Ada").1),
        "my name is Ada"
    );
    assert_eq!(first.stop(), Some(0));
    let old_uuid = session_map(&first)["sessions"]["k"]["claude_session"]
        .as_str()
        .unwrap()
        .to_string();
    // Claude's transcripts are gone (a wiped config dir, another host...).
    std::fs::remove_dir_all(first.dir.path().join("home/.claude/projects")).unwrap();
    let dir = std::mem::replace(&mut first.dir, TempDir::new("unused"));
    let second = Bridge::demo().marker(&marker).dir(dir).start();
    let body = serde_json::json!({"stream": true, "messages": [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]});
    let r = request(
        second.http,
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "k")],
        &body.to_string(),
    );
    let text: String = r
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(|c| c.as_str())
                .map(String::from)
        })
        .collect();
    assert!(
        text.contains("restored by the bridge") && text.contains("User: my name is Ada"),
        "{text}"
    );
    assert!(text.ends_with("what is my name?"), "{text}");
    let new_uuid = session_map(&second)["sessions"]["k"]["claude_session"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        new_uuid, old_uuid,
        "a new Claude conversation, recorded in the map"
    );
    assert!(
        second.log().contains("transcript of conversation") && second.log().contains("is missing")
    );
}

#[test]
fn a_full_session_queue_gets_429_and_a_turn_limit_holds_turns_back() {
    let bridge = Bridge::demo()
        .arg("--max-queued-turns", "2")
        .arg("--max-concurrent-turns", "1")
        .start();
    let first = stream_chat_in_background(bridge.http, "q", "one [sim:delay_ms=800]");
    assert!(bridge.wait_for_log("session \"q\" turn-1: queued", WAIT));
    let second = stream_chat_in_background(bridge.http, "q", "two");
    assert!(bridge.wait_for_log("session \"q\" turn-2: queued", WAIT));
    let r = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "q")],
        &chat_body("three", true),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "session_queue_full");
    // Another session's turn waits for the single turn slot instead of running alongside.
    let started = Instant::now();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "other", "later").1),
        "later"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "held back by max_concurrent_turns"
    );
    assert_eq!(
        streamed_text(&first.join().unwrap().1),
        "one [sim:delay_ms=800]"
    );
    assert_eq!(streamed_text(&second.join().unwrap().1), "two");
}

#[test]
fn per_session_workspaces_keep_sessions_apart_under_the_state_dir() {
    let bridge = Bridge::demo()
        .arg("--workspace-mode", "per_session")
        .start();
    for key in ["agent:main:a", "../../escape"] {
        assert_eq!(streamed_text(&stream_chat(bridge.http, key, "x").1), "x");
    }
    let workspaces = bridge.dir.path().join("state/workspaces");
    for key in ["agent:main:a", "../../escape"] {
        let pid = agent_pids(&bridge.marker, key)[0];
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert_eq!(
            cwd.parent(),
            Some(workspaces.canonicalize().unwrap().as_path()),
            "{key}: {cwd:?}"
        );
    }
}

#[test]
fn a_lost_delivery_is_sent_again_and_a_turn_claude_never_takes_in_fails_clearly() {
    let bridge = Bridge::demo().arg("--delivery-timeout", "500ms").start();
    let (_, events) = stream_chat(bridge.http, "d", "once more [sim:drop_first]");
    assert_eq!(
        streamed_text(&events),
        "once more [sim:drop_first]",
        "the second delivery got through"
    );
    assert!(bridge.log().contains("sending it once more"));
    let started = Instant::now();
    let (_, events) = stream_chat(bridge.http, "d", "never [sim:drop_all]");
    let error = stream_error(&events).expect("the turn fails");
    assert_eq!(error["code"], "agent_died");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("did not take the turn in"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "two deliveries 500 ms apart, not turn_timeout"
    );
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "d", "after").1),
        "after",
        "a fresh claude takes the next turn"
    );
    let metrics = request(bridge.http, "GET", "/metrics", &[], "").text();
    assert!(
        metrics.contains("synthesis_delivery_retries_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("synthesis_delivery_failures_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_conversation_new_to_this_bridge_gets_the_history_its_client_sent() {
    // As after a failover to another host: the key is unknown here, the client resends history.
    let bridge = Bridge::demo().start();
    let body = serde_json::json!({"stream": true, "messages": [
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "new question"},
    ]});
    let (_, events) = stream_body(bridge.http, "moved", &body.to_string());
    let text = streamed_text(&events);
    assert!(
        text.contains("User: earlier question\nAssistant: earlier answer"),
        "{text}"
    );
    assert!(text.ends_with("new question"), "{text}");
    // A conversation's very first request carries nothing extra, and later turns neither.
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "fresh", "hello").1),
        "hello"
    );
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "moved", "next").1),
        "next"
    );
}

#[test]
fn with_a_queue_timeout_a_request_at_capacity_waits_for_a_process_instead_of_429() {
    let bridge = Bridge::demo()
        .arg("--max-processes", "1")
        .arg("--queue-timeout", "10s")
        .start();
    let busy = stream_chat_in_background(bridge.http, "a", "busy [sim:delay_ms=1200]");
    assert!(bridge.wait_for_log("session \"a\" turn-1: turn sent", WAIT));
    let started = Instant::now();
    let (response, events) = stream_chat(bridge.http, "b", "waited");
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&events), "waited");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for a's turn to end"
    );
    assert_eq!(
        streamed_text(&busy.join().unwrap().1),
        "busy [sim:delay_ms=1200]"
    );
    assert!(
        agent_pids(&bridge.marker, "a").is_empty(),
        "a, idle again, was evicted for b"
    );
}
