//! Standby processes (`standby = N`, issue #16): claude started ahead for new conversations.
//! Each test runs the real binary in demo mode (simulated Claude) and asserts what a user or
//! an operator notices: which process answers, what `/v1/sessions` and `/metrics` show, which
//! process is evicted, that nothing is left after shutdown.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Live rows of `/v1/sessions`.
fn live_rows(bridge: &Bridge) -> Vec<Value> {
    let list = request(bridge.http, "GET", "/v1/sessions?limit=10000", &[], "").json();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["state"] != "absent")
        .cloned()
        .collect()
}

/// Pids of the standbys that are ready, once there are `n` of them.
fn ready_standbys(bridge: &Bridge, n: usize) -> Vec<u32> {
    wait_until(WAIT, || {
        let pids: Vec<u32> = live_rows(bridge)
            .iter()
            .filter(|r| r["standby"] == true && r["state"] == "ready")
            .filter_map(|r| r["pid"].as_u64().map(|p| p as u32))
            .collect();
        (pids.len() == n).then_some(pids)
    })
    .unwrap_or_else(|| panic!("{n} ready standbys; sessions: {:?}", live_rows(bridge)))
}

fn row<'a>(rows: &'a [Value], key: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["key"] == key)
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for every purpose here.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
}

fn metric(bridge: &Bridge, name: &str) -> String {
    let text = request(bridge.http, "GET", "/metrics", &[], "").text();
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string()
}

/// The OS names of the bridge's threads (`/proc/<pid>/task/*/comm`: 15 bytes at most).
fn thread_names(bridge: &Bridge) -> Vec<String> {
    let pid = bridge.child.as_ref().unwrap().id();
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn a_new_conversation_is_served_by_the_standby_process_and_a_replacement_starts() {
    let bridge = Bridge::demo()
        .arg("--max-processes", "4")
        .arg("--standby", "1")
        .start();
    let standby = ready_standbys(&bridge, 1)[0];
    assert_eq!(metric(&bridge, "synthesis_standby_sessions"), "1");
    assert_eq!(metric(&bridge, "synthesis_processes"), "1");

    let started = Instant::now();
    let (response, events) = stream_chat(bridge.http, "alice", "hello standby");
    let first_turn = started.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&events), "hello standby");

    let rows = live_rows(&bridge);
    let alice = row(&rows, "alice").expect("alice is a live session");
    assert_eq!(
        alice["pid"], standby,
        "the standby's process served alice: {rows:?}"
    );
    assert_eq!(alice["standby"], false);
    assert_eq!(metric(&bridge, "synthesis_standbys_adopted_total"), "1");
    // The spawn counter says no process was started for alice's turn itself.
    let replacement = ready_standbys(&bridge, 1)[0];
    assert_ne!(
        replacement, standby,
        "a new standby replaces the adopted one"
    );
    assert_eq!(metric(&bridge, "synthesis_processes"), "2");
    // The adopted worker's thread is named for alice now, as a worker started for her would
    // be; the only standby-named thread is the replacement's.
    let names = thread_names(&bridge);
    let count = |name: &str| names.iter().filter(|n| *n == name).count();
    assert_eq!(count("session:alice"), 1, "{names:?}");
    assert_eq!(count("session:(standb"), 1, "{names:?}");

    // The adopted process keeps working under alice's key: its Stop hook and channel still
    // name the standby key they were started with, and are resolved to alice.
    for i in 0..3 {
        let text = format!("again {i}");
        let (response, events) = stream_chat(bridge.http, "alice", &text);
        assert_eq!(response.status, 200);
        assert_eq!(streamed_text(&events), text);
    }
    let rows = live_rows(&bridge);
    assert_eq!(row(&rows, "alice").unwrap()["pid"], standby);
    let log = bridge.log();
    assert!(
        !log.contains("is not its live process") && !log.contains("stale spawn id"),
        "every turn end and hello of the adopted process was accepted:\n{log}"
    );
    assert!(
        !log.contains("before the next turn was pushed anyway"),
        "no turn waited for an unreported turn end"
    );
    eprintln!("first turn of a new conversation with a standby (demo agent): {first_turn:?}");
}

#[test]
fn eviction_takes_the_standby_first_and_a_dead_standby_is_replaced() {
    // With standby_resume off, a returning conversation does not take the standby: it needs
    // a slot of its own, and the standby is the one evicted for it.
    let bridge = Bridge::demo()
        .arg("--max-processes", "2")
        .arg("--standby", "1")
        .arg("--idle-kill", "8s")
        .flag("--standby-resume=false")
        .start();
    ready_standbys(&bridge, 1);
    // a takes the standby; a replacement fills the second slot.
    let (response, _) = stream_chat(bridge.http, "a", "one");
    assert_eq!(response.status, 200);
    ready_standbys(&bridge, 1);
    // a's process stops (its conversation stays resumable); b, new, takes the standby, and
    // a replacement takes a's slot.
    let stopped = request(bridge.http, "DELETE", "/v1/sessions/a", &[], "").status;
    assert!(stopped == 200 || stopped == 202, "{stopped}");
    wait_until(WAIT, || {
        row(&live_rows(&bridge), "a")
            .is_none_or(|r| r["pid"].is_null())
            .then_some(())
    })
    .expect("a's process stopped");
    let (response, _) = stream_chat(bridge.http, "b", "two");
    assert_eq!(response.status, 200);
    let b_pid = row(&live_rows(&bridge), "b").unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    let standby = ready_standbys(&bridge, 1)[0];
    // A standby that dies is replaced; the new one is more recently active than b, so
    // least-recently-used alone would now evict b.
    signal(standby, libc::SIGKILL);
    let standby = wait_until(WAIT, || {
        ready_standbys(&bridge, 1)
            .first()
            .copied()
            .filter(|p| *p != standby)
    })
    .expect("a replacement for the dead standby");
    // a comes back: both slots are taken, the standby is evicted, b keeps its process.
    let (response, events) = stream_chat(bridge.http, "a", "three");
    assert_eq!(response.status, 200, "{events:?}");
    assert_eq!(streamed_text(&events), "three");
    assert!(
        wait_until(WAIT, || (!alive(standby)).then_some(())).is_some(),
        "the standby's process was stopped"
    );
    assert!(alive(b_pid), "b's process was not evicted");
    let rows = live_rows(&bridge);
    assert_eq!(row(&rows, "b").unwrap()["pid"], b_pid, "{rows:?}");
    assert!(row(&rows, "a").unwrap()["pid"].as_u64().is_some());
}

#[test]
fn shutdown_stops_the_standbys() {
    let mut bridge = Bridge::demo()
        .arg("--max-processes", "4")
        .arg("--standby", "2")
        .start();
    let pids = ready_standbys(&bridge, 2);
    assert_eq!(metric(&bridge, "synthesis_processes"), "2");
    assert_eq!(bridge.stop(), Some(0));
    for pid in pids {
        assert!(!alive(pid), "standby pid {pid} is gone after shutdown");
    }
    assert_eq!(bridge.descendants(), Vec::<u32>::new());
}

#[test]
fn standby_zero_starts_nothing_ahead() {
    let bridge = Bridge::demo()
        .arg("--max-processes", "4")
        .arg("--standby", "0")
        .start();
    assert!(live_rows(&bridge).is_empty());
    assert_eq!(metric(&bridge, "synthesis_processes"), "0");
    let (response, events) = stream_chat(bridge.http, "solo", "hi");
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&events), "hi");
    let rows = live_rows(&bridge);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["key"], "solo");
    assert_eq!(metric(&bridge, "synthesis_standby_sessions"), "0");
    assert_eq!(metric(&bridge, "synthesis_standbys_adopted_total"), "0");
}

/// Conversation `key` had a turn, then its process was stopped (as an idle kill stops it)
/// and its worker let go of it; a standby is ready again. Returns that standby's pid.
fn gone_idle_with_a_standby_ready(bridge: &Bridge, key: &str) -> u32 {
    ready_standbys(bridge, 1);
    let (_, events) = stream_chat(bridge.http, key, "one");
    assert_eq!(streamed_text(&events), "one");
    let stopped = wait_until(WAIT, || {
        let path = format!("/v1/sessions/{key}");
        (request(bridge.http, "DELETE", &path, &[], "").status == 202).then_some(())
    });
    assert!(stopped.is_some(), "{}", bridge.log());
    wait_until(WAIT, || {
        row(&live_rows(bridge), key)
            .is_none_or(|r| r["pid"].is_null())
            .then_some(())
    })
    .expect("the process stopped");
    ready_standbys(bridge, 1)[0]
}

#[test]
fn a_returning_conversation_resumes_in_the_standby() {
    let bridge = Bridge::demo()
        .arg("--max-processes", "4")
        .arg("--standby", "1")
        .start();
    let standby = gone_idle_with_a_standby_ready(&bridge, "back");
    let claude_session = |bridge: &Bridge| {
        let list = request(bridge.http, "GET", "/v1/sessions?limit=10000", &[], "").json();
        row(list["data"].as_array().unwrap(), "back").unwrap()["claude_session"].clone()
    };
    let before = claude_session(&bridge);
    assert!(before.as_str().is_some_and(|s| s.len() == 36), "{before}");
    let started = Instant::now();
    let (_, events) = stream_chat(bridge.http, "back", "two");
    assert_eq!(streamed_text(&events), "two", "{}", bridge.log());
    // Served by the standby's process, switched with /resume (no 3 s fallback), in the
    // same Claude conversation as before the stop.
    assert_eq!(
        row(&live_rows(&bridge), "back").unwrap()["pid"].as_u64(),
        Some(u64::from(standby))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{}",
        bridge.log()
    );
    assert!(bridge.log().contains("claude resumed the conversation"));
    assert_eq!(claude_session(&bridge), before);
    assert_eq!(metric(&bridge, "synthesis_standbys_resumed_total"), "1");
    assert_eq!(
        metric(&bridge, "synthesis_standby_resume_failures_total"),
        "0"
    );
}

#[test]
fn a_standby_that_does_not_resume_is_stopped_and_claude_starts_with_resume() {
    // SYNTHESIS_SIM_NO_RESUME: the sim, like a Claude without the command, does not switch.
    let bridge = Bridge::demo()
        .arg("--max-processes", "4")
        .arg("--standby", "1")
        .env("SYNTHESIS_SIM_NO_RESUME", "1")
        .start();
    let standby = gone_idle_with_a_standby_ready(&bridge, "back");
    let (_, events) = stream_chat(bridge.http, "back", "two");
    assert_eq!(streamed_text(&events), "two", "{}", bridge.log());
    assert!(
        wait_until(WAIT, || (!alive(standby)).then_some(())).is_some(),
        "the standby that did not switch was stopped"
    );
    let log = bridge.log();
    assert!(log.contains("did not switch"), "{log}");
    assert!(log.contains("--resume"), "{log}");
    assert_eq!(
        metric(&bridge, "synthesis_standby_resume_failures_total"),
        "1"
    );
}

#[test]
fn standby_resume_is_used_only_with_a_claude_known_to_take_resume_at_its_prompt() {
    for (version, used) in [("2.1.330", false), ("2.1.331", true)] {
        let dir = TempDir::new("standby-resume-version");
        let claude = fake_claude(&dir, version);
        let bridge = Bridge::real(&claude)
            .dir(dir)
            .arg("--standby", "1")
            .arg("--max-processes", "4")
            .start();
        let log = bridge.log();
        assert_eq!(
            !log.contains("standby_resume not used"),
            used,
            "claude {version}: {log}"
        );
    }
}
