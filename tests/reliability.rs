//! Reliability and security, black-box: a soak with reply checks and leak checks, injected
//! faults, hostile HTTP and WebSocket input, and panic safety. Each test says what the user
//! sees and checks that other sessions were not disturbed. docs/RELIABILITY.md lists them.
//!
//! `SYNTHESIS_SOAK_TURNS` sets the soak's turns per session (default 200; 64 sessions).

mod support;

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn proc_count(pid: u32, what: &str) -> usize {
    match what {
        "threads" => std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0),
        "fds" => std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        _ => unreachable!(),
    }
}

fn env_of(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    environ.split(|b| *b == 0).find_map(|var| {
        var.strip_prefix(prefix.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// A tiny deterministic generator (xorshift), so a failing soak can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn soak_every_reply_carries_its_own_nonce_in_order_and_nothing_leaks() {
    let sessions = 64;
    let turns: usize = std::env::var("SYNTHESIS_SOAK_TURNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let bridge = Bridge::demo()
        .env("RUST_LOG", "info")
        .arg("--max-processes", &sessions.to_string())
        .start();
    let pid = bridge.child.as_ref().unwrap().id();
    let addr = bridge.http;
    // Warm-up: every session has its claude; this is the baseline a soak must return to.
    let warm: Vec<_> = (0..sessions)
        .map(|s| {
            std::thread::spawn(move || {
                streamed_text(&stream_chat(addr, &format!("soak-{s}"), "warm").1)
            })
        })
        .collect();
    for t in warm {
        assert_eq!(t.join().unwrap(), "warm");
    }
    let settle = |what: &str, baseline: usize| {
        wait_until(WAIT, || (proc_count(pid, what) <= baseline).then_some(())).is_some()
    };
    std::thread::sleep(Duration::from_millis(200)); // let responder threads of the warm-up exit
    let (threads0, fds0, children0) = (
        proc_count(pid, "threads"),
        proc_count(pid, "fds"),
        bridge.descendants().len(),
    );

    let started = Instant::now();
    let workers: Vec<_> = (0..sessions)
        .map(|s| {
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (s as u64 + 1));
                let mut problems = Vec::new();
                for t in 0..turns {
                    let nonce = format!("s{s}-t{t}-{:x}", rng.next());
                    let behaviour = match rng.next() % 4 {
                        0 => String::new(),
                        1 => "[sim:progress=2]".to_string(),
                        2 => format!("[sim:delay_ms={}]", rng.next() % 20),
                        _ => format!("[sim:progress=1,delay_ms={}]", rng.next() % 10),
                    };
                    let text = format!("{nonce} {behaviour}");
                    let (response, events) = stream_chat(addr, &format!("soak-{s}"), &text);
                    let reply = streamed_text(&events);
                    if response.status != 200
                        || stream_error(&events).is_some()
                        || !reply.ends_with(&text)
                    {
                        problems.push(format!(
                            "turn {t}: status {} reply {reply:?}",
                            response.status
                        ));
                    }
                    // Exactly one final answer, and it is this turn's.
                    if reply.matches(&nonce).count() != 1 || reply.matches("s").count() == 0 {
                        problems.push(format!(
                            "turn {t}: nonce {nonce} appears {} times",
                            reply.matches(&nonce).count()
                        ));
                    }
                }
                problems
            })
        })
        .collect();
    let problems: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    eprintln!(
        "soak: {sessions} sessions x {turns} turns = {} turns in {elapsed:.1?}",
        sessions * turns
    );
    assert!(
        problems.is_empty(),
        "{} bad replies, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert!(
        settle("threads", threads0),
        "threads {} > baseline {threads0}",
        proc_count(pid, "threads")
    );
    assert!(
        settle("fds", fds0),
        "fds {} > baseline {fds0}",
        proc_count(pid, "fds")
    );
    // The last turns' Stop hooks may still be finishing: wait for them, not for ever.
    let children = wait_until(WAIT, || {
        (bridge.descendants().len() == children0).then_some(())
    });
    assert!(
        children.is_some(),
        "child processes {} != baseline {children0}",
        bridge.descendants().len()
    );
}

#[test]
fn a_killed_channel_server_fails_only_its_turn_and_the_session_recovers() {
    let bridge = Bridge::demo().start();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "victim", "one").1),
        "one"
    );
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "bystander", "one").1),
        "one"
    );
    let channel = bridge
        .descendants()
        .into_iter()
        .find(|p| {
            env_of(*p, "SYNTHESIS_OPENCLAW_SESSION").as_deref() == Some("victim")
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .nth(1)
                    == Some(b"channel")
        })
        .expect("the victim's channel server");
    let doomed = stream_chat_in_background(bridge.http, "victim", "doomed [sim:delay_ms=2000]");
    assert!(
        wait_until(WAIT, || (bridge.log().matches("turn sent").count() >= 3)
            .then_some(()))
        .is_some()
    );
    signal(channel, libc::SIGKILL);
    let (_, events) = doomed.join().unwrap();
    let error = stream_error(&events).expect("the user sees an error event");
    assert_eq!(error["code"], "agent_died", "{error}");
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "bystander", "two").1),
        "two",
        "other sessions undisturbed"
    );
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "victim", "again").1),
        "again",
        "the session recovers"
    );
}

#[test]
fn a_reply_for_a_turn_that_is_not_running_is_dropped() {
    let bridge = Bridge::demo().start();
    let (_, events) = stream_chat(bridge.http, "k", "real [sim:stray]");
    assert_eq!(
        streamed_text(&events),
        "real [sim:stray]",
        "only this turn's reply reaches the user"
    );
    assert!(
        bridge.log().contains("stray frame dropped"),
        "log:\n{}",
        bridge.log()
    );
}

#[test]
fn a_failing_session_map_write_keeps_the_old_map_and_shows_on_healthz() {
    let bridge = Bridge::demo().start();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "first", "x").1),
        "x"
    );
    let map = bridge.dir.path().join("state/sessions.json");
    let before = std::fs::read(&map).unwrap();
    // The next write's temp file cannot be created: a directory sits at its path (works as
    // root too, where permissions would not stop the write).
    let pid = bridge.child.as_ref().unwrap().id();
    let blocker = bridge
        .dir
        .path()
        .join(format!("state/.sessions.json.tmp-{pid}"));
    std::fs::create_dir(&blocker).unwrap();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "second", "y").1),
        "y",
        "turns keep working"
    );
    let health = request(bridge.http, "GET", "/healthz", &[], "");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "degraded");
    assert!(
        health.json()["session_map_error"]
            .as_str()
            .unwrap()
            .contains("previous file is kept")
    );
    assert_eq!(
        std::fs::read(&map).unwrap(),
        before,
        "the old map is intact"
    );
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "third", "z").1),
        "z"
    );
    assert_eq!(
        request(bridge.http, "GET", "/healthz", &[], "").json()["status"],
        "ok"
    );
    let map: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bridge.dir.path().join("state/sessions.json")).unwrap(),
    )
    .unwrap();
    assert!(map["sessions"]["second"].is_object() && map["sessions"]["third"].is_object());
}

#[test]
fn a_sigkilled_bridge_restarts_and_its_sessions_resume() {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let mut first = Bridge::demo().marker(&marker).start();
    assert_eq!(
        streamed_text(&stream_chat(first.http, "k", "before").1),
        "before"
    );
    let mut child = first.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || first
            .descendants()
            .is_empty()
            .then_some(()))
        .is_some()
    );
    let dir = std::mem::replace(&mut first.dir, TempDir::new("unused"));
    let second = Bridge::demo().marker(&marker).dir(dir).start();
    assert_eq!(
        streamed_text(&stream_chat(second.http, "k", "after").1),
        "after"
    );
    assert!(second.log().contains("--resume"), "log:\n{}", second.log());
}

#[test]
fn hostile_http_requests_get_clear_errors_and_do_not_disturb_others() {
    let bridge = Bridge::demo().arg("--max-body-bytes", "65536").start();
    let addr = bridge.http;
    let code = |r: &HttpResponse| r.json()["error"]["code"].as_str().unwrap_or("").to_string();
    // A declared body over the limit is refused before it is sent.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\nContent-Type: application/json\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    // An undeclared (chunked) body over the limit is cut off at the limit.
    let big = "x".repeat(70_000);
    let r = request(addr, "POST", "/v1/chat/completions", &[], &big);
    assert_eq!((r.status, code(&r)), (413, "request_too_large".into()));
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "text/plain")],
        &chat_body("x", false),
    );
    assert_eq!((r.status, code(&r)), (415, "unsupported_media_type".into()));
    for (body, needle) in [
        (
            "{\"messages\": 5}".to_string(),
            "`messages` must be an array",
        ),
        ("{\"model\": \"m\"}".to_string(), "`messages` is required"),
        (
            json!({"messages": [{"role": "user", "content": ""}]}).to_string(),
            "no user text",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": "hi"}]}).to_string(),
            "no user text",
        ),
        (
            json!({"messages": [{"role": 7, "content": "x"}]}).to_string(),
            "role",
        ),
        (
            json!({"messages": [{"role": "user", "content": {"a": 1}}]}).to_string(),
            "content",
        ),
        ("[1,2]".to_string(), "JSON object"),
    ] {
        let r = request(addr, "POST", "/v1/chat/completions", &[], &body);
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{body}: {}",
            r.text()
        );
    }
    let mut invalid_utf8 = build_request(
        "POST",
        "/v1/chat/completions",
        &[],
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\u{0}\"}]}",
    )
    .into_bytes();
    let at = invalid_utf8.len() - 5;
    invalid_utf8[at] = 0xff;
    let r = raw_request(addr, &invalid_utf8);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("UTF-8"));
    // Headers over the limit get a clear 431 (and the next request is served).
    let huge = "h".repeat(100 * 1024);
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("X-Padding", &huge)],
        &chat_body("x", false),
    );
    assert_eq!((r.status, code(&r)), (431, "headers_too_large".into()));
    // Unknown fields are fine.
    let body = json!({"messages": [{"role": "user", "content": "ok", "name": "n"}], "temperature": 0.3, "tools": [], "x-extra": {"a": 1}});
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("X-Session-Key", "h")],
        &body.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A turn larger than Claude could take is refused up front (limit raised so the body fits).
    let roomy = Bridge::demo().arg("--max-body-bytes", "8388608").start();
    let r = request(
        roomy.http,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat_body(&"y".repeat(3 << 20), false),
    );
    assert_eq!((r.status, code(&r)), (413, "turn_too_large".into()));
}

#[test]
fn slow_and_idle_connections_are_cut_after_the_read_timeout_and_do_not_stall_others() {
    let bridge = Bridge::demo().arg("--client-read-timeout", "1s").start();
    // A slowloris: half a request line, then silence; and 100 idle connections.
    let mut slow = TcpStream::connect(bridge.http).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(bridge.http).unwrap())
        .collect();
    let started = Instant::now();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "k", "still served").1),
        "still served"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // The slow client is cut once it has been silent for the timeout: the bridge closes the
    // connection (tiny_http sends no 408 for a timed-out request line; the read just ends).
    let mut answer = String::new();
    let closed = slow.read_to_string(&mut answer).is_ok();
    assert!(
        closed,
        "the connection was closed by the bridge, not left open"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    // (`closed` holds only if the bridge closed it within the 10 s read timeout set above.)
    // So are the idle ones: their threads are free again.
    for mut conn in idle {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    }
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "k", "and again").1),
        "and again"
    );
}

#[test]
fn hostile_websocket_peers_are_refused_and_the_session_keeps_working() {
    let bridge = Bridge::demo().start();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "k", "one").1),
        "one"
    );
    let url = format!("ws://{}/bridge", bridge.ws);
    let refused = |first: tungstenite::Message| {
        let (mut ws, _) = tungstenite::connect(url.as_str()).expect("handshake");
        let _ = ws.send(first);
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Close(_)) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    };
    assert!(refused(tungstenite::Message::text("not json")));
    assert!(refused(tungstenite::Message::binary(vec![1, 2, 3])));
    assert!(refused(tungstenite::Message::text(
        json!({"type": "reply", "turn": "turn-1", "text": "x"}).to_string()
    )));
    assert!(refused(tungstenite::Message::text("x".repeat(17 << 20))));
    // Real credentials but a stale spawn id, and a second hello for the live spawn.
    let sim = agent_pids(&bridge.marker, "k")[0];
    let token = env_of(sim, "SYNTHESIS_BRIDGE_TOKEN").unwrap();
    let spawn = env_of(sim, "SYNTHESIS_SPAWN_ID").unwrap();
    for spawn_id in ["0123456789abcdef", spawn.as_str()] {
        let hello = json!({"type": "hello", "session": "k", "claude_session": "c", "spawn_id": spawn_id, "token": token, "pid": 1, "version": "x"});
        assert!(refused(tungstenite::Message::text(hello.to_string())));
    }
    let log = bridge.log();
    assert!(
        log.contains("stale spawn id") && log.contains("session already attached"),
        "log:\n{log}"
    );
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "k", "two").1),
        "two",
        "the real channel is undisturbed"
    );
    // A wrong path gets no WebSocket at all.
    assert!(tungstenite::connect(format!("ws://{}/elsewhere", bridge.ws).as_str()).is_err());
}

#[test]
fn a_panicking_session_fails_its_turn_and_the_bridge_serves_on() {
    let bridge = Bridge::demo()
        .env("SYNTHESIS_FAULT_PANIC_ON", "boom")
        .start();
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "bad", "fine").1),
        "fine"
    );
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "good", "fine").1),
        "fine"
    );
    let old = agent_pids(&bridge.marker, "bad");
    let (_, events) = stream_chat(bridge.http, "bad", "boom");
    let error = stream_error(&events).expect("the panicking turn ends with an error");
    assert!(
        error["message"].as_str().unwrap().contains("crashed"),
        "{error}"
    );
    assert!(bridge.wait_for_log("session \"bad\": worker panicked", WAIT));
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "good", "still").1),
        "still"
    );
    assert!(
        wait_until(WAIT, || old
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(()))
        .is_some(),
        "the crashed session's claude is gone"
    );
    assert_eq!(
        streamed_text(&stream_chat(bridge.http, "bad", "again").1),
        "again",
        "the key gets a new worker"
    );
}

/// A panic in a thread the bridge has one of ends the bridge with status 70 (so a service
/// manager restarts it), naming the thread, and leaves no claude or channel process behind.
/// Fault injection: `SYNTHESIS_FAULT_PANIC_THREAD` names the thread, SIGUSR1 arms it.
#[test]
fn a_panicking_singleton_thread_ends_the_bridge_with_status_70_and_no_child() {
    for thread in ["sweeper", "http", "ws-accept", "signals"] {
        let mut bridge = Bridge::demo()
            // The sweeper's round comes every 2 s; no idle kill within the test.
            .arg("--idle-kill", "8s")
            .env("SYNTHESIS_FAULT_PANIC_THREAD", thread)
            .start();
        let (_, events) = stream_chat(bridge.http, "k", "before the fault");
        assert_eq!(streamed_text(&events), "before the fault", "{thread}");
        assert_eq!(agent_pids(&bridge.marker, "k").len(), 1, "{thread}");
        assert!(bridge.descendants().len() >= 2, "claude and its channel");
        let mut child = bridge.child.take().unwrap();
        signal(child.id(), libc::SIGUSR1);
        if thread == "ws-accept" {
            // Once armed, a connection wakes the hub's acceptor (else its poll ends in 5 s).
            assert!(bridge.wait_for_log("panics at its next round", WAIT));
            let _ = TcpStream::connect(bridge.ws);
        }
        let status = wait_until(WAIT, || child.try_wait().ok().flatten());
        let log = bridge.log();
        assert_eq!(status.and_then(|s| s.code()), Some(70), "{thread}: {log}");
        assert!(
            log.contains(&format!(
                "thread \"{thread}\" panicked: the bridge cannot serve without it"
            )),
            "{thread}: {log}"
        );
        assert!(
            log.contains(&format!("fault injection: thread {thread:?}")),
            "{thread}: {log}"
        );
        let left = wait_until(WAIT, || bridge.descendants().is_empty().then_some(()));
        assert!(left.is_some(), "{thread}: left {:?}", bridge.descendants());
    }
}

#[test]
fn locked_down_defaults_refuse_risky_configurations() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-public"));
    let out = std::process::Command::new(BIN)
        .args(["serve", "--demo", "--permission-mode", "bypassPermissions"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_bypass_permissions"));
}
