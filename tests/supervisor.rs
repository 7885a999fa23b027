//! The session supervisor under the traffic a real host sees: many short conversations,
//! capacity pressure, a panicking worker, a non-streamed client that gives up. Each test runs
//! the real binary in demo mode (simulated Claude) and asserts what a user or an operator
//! would notice: statuses, replies, which processes and threads are alive.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Live sessions as `/v1/sessions` shows them (rows with a state other than `absent`).
fn live_sessions(bridge: &Bridge) -> Vec<serde_json::Value> {
    let list = request(bridge.http, "GET", "/v1/sessions?limit=10000", &[], "").json();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["state"] != "absent")
        .cloned()
        .collect()
}

#[test]
fn churn_of_500_conversations_leaves_no_thread_and_no_descriptor_behind() {
    let bridge = Bridge::demo()
        .arg("--max-processes", "4")
        .arg("--idle-kill", "1s")
        .arg("--queue-timeout", "60s")
        .env("SYNTHESIS_SIM_DIALOG_DELAY_MS", "20")
        .start();
    let pid = bridge.child.as_ref().unwrap().id();
    assert_eq!(request(bridge.http, "GET", "/healthz", &[], "").status, 200);
    let (threads_before, fds_before) = (threads_of(pid), fds_of(pid));
    const CONVERSATIONS: usize = 500;
    const CLIENTS: usize = 8;
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let http = bridge.http;
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for i in (c..CONVERSATIONS).step_by(CLIENTS) {
                    let key = format!("churn-{i}");
                    let text = format!("hello {i}");
                    let (response, events) = stream_chat(http, &key, &text);
                    if response.status != 200 || streamed_text(&events) != text {
                        failures.push(format!("{key}: {} {events:?}", response.status));
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let churn_time = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(
        wait_until(WAIT, || live_sessions(&bridge).is_empty().then_some(())).is_some(),
        "every session is idle-killed and its worker retired: {:?}",
        live_sessions(&bridge)
    );
    let settled = wait_until(WAIT, || {
        let (threads, fds) = (threads_of(pid), fds_of(pid));
        (threads <= threads_before + 2 && fds <= fds_before + 2).then_some((threads, fds))
    });
    eprintln!(
        "churn: {CONVERSATIONS} conversations in {churn_time:?}; threads {threads_before} -> {}, fds {fds_before} -> {}",
        threads_of(pid),
        fds_of(pid)
    );
    assert!(
        settled.is_some(),
        "threads {threads_before} -> {}, fds {fds_before} -> {} after the churn",
        threads_of(pid),
        fds_of(pid)
    );
    assert!(bridge.descendants().is_empty(), "no claude left running");
}

#[test]
fn four_new_conversations_at_capacity_with_four_idle_sessions_all_get_a_process() {
    let bridge = Bridge::demo().arg("--max-processes", "4").start();
    for i in 0..4 {
        let key = format!("old{i}");
        assert_eq!(streamed_text(&stream_chat(bridge.http, &key, &key).1), key);
    }
    // Idle means ready: claude reported the end of its turn.
    assert!(
        wait_until(WAIT, || {
            let live = live_sessions(&bridge);
            (live.len() == 4 && live.iter().all(|r| r["state"] == "ready")).then_some(())
        })
        .is_some()
    );
    let started = Instant::now();
    let newcomers: Vec<_> = (0..4)
        .map(|i| stream_chat_in_background(bridge.http, &format!("new{i}"), &format!("new {i}")))
        .collect();
    for (i, t) in newcomers.into_iter().enumerate() {
        let (response, events) = t.join().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(streamed_text(&events), format!("new {i}"), "{events:?}");
    }
    let took = started.elapsed();
    eprintln!("four newcomers at capacity served in {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    for i in 0..4 {
        assert!(agent_pids(&bridge.marker, &format!("old{i}")).is_empty());
        assert_eq!(agent_pids(&bridge.marker, &format!("new{i}")).len(), 1);
    }
    let log = bridge.log();
    for i in 0..4 {
        let victim = format!("stopping idle session \"old{i}\"");
        assert_eq!(
            log.matches(&victim).count(),
            1,
            "each idle session is picked once\n{log}"
        );
    }
}

#[test]
fn a_worker_panic_releases_its_turn_slot_and_other_sessions_go_on() {
    let bridge = Bridge::demo()
        .arg("--max-concurrent-turns", "1")
        .arg("--turn-timeout", "20s")
        .env("SYNTHESIS_FAULT_PANIC_ON", "boom")
        .start();
    let (_, events) = stream_chat(bridge.http, "bad", "boom");
    assert!(stream_error(&events).is_some(), "{events:?}");
    let started = Instant::now();
    let (response, events) = stream_chat(bridge.http, "good", "after the panic");
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&events), "after the panic", "{events:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The crashed session starts again on its next turn.
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "bad", "again").1),
        "again"
    );
    let metrics = request(bridge.http, "GET", "/metrics", &[], "").text();
    assert!(
        metrics.contains("synthesis_worker_panics_total 1"),
        "{metrics}"
    );
}

#[test]
fn an_abandoned_non_streamed_turn_is_interrupted_when_the_next_turn_arrives() {
    let bridge = Bridge::demo().arg("--heartbeat-interval", "200ms").start();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "k", "warm").1),
        "warm"
    );
    let mut stream = TcpStream::connect(bridge.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = build_request(
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "k")],
        &chat_body("long [sim:delay_ms=8000]", false),
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The client gives up.
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(reader);
    drop(stream);
    let started = Instant::now();
    let (response, events) = stream_chat(bridge.http, "k", "next");
    assert_eq!(response.status, 200);
    assert_eq!(streamed_text(&events), "next", "{events:?}");
    let took = started.elapsed();
    eprintln!("next turn after an abandoned non-streamed one: {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "took {took:?}: the old turn ran on"
    );
    let log = bridge.log();
    assert!(
        log.contains("client left while waiting for a non-streamed answer"),
        "{log}"
    );
    assert!(
        log.contains("client disconnected; interrupting claude"),
        "{log}"
    );
}

#[test]
fn a_non_streamed_turn_that_outlives_a_heartbeat_still_gets_its_json() {
    let bridge = Bridge::demo().arg("--heartbeat-interval", "100ms").start();
    let r = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "k")],
        &chat_body("slow [sim:delay_ms=600]", false),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(
        r.body.starts_with(b" "),
        "leading spaces were the heartbeats"
    );
    let body = r.json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "slow [sim:delay_ms=600]"
    );
}
