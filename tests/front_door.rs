//! The HTTP front door under attack (issue 12, HTTP half; docs/RELIABILITY.md "Front door"):
//! each test plays a hostile or careless client against a demo bridge on 127.0.0.1 and checks
//! what a user would notice (status codes, bytes on the wire, the bridge still alive and
//! serving turns, how fast `/healthz` answers meanwhile). Each patch in
//! vendor/tiny_http/PATCHES.md names the test here that covers it.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// A turn on `session` streams back its text: the bridge serves turns.
fn turn_works(addr: SocketAddr, session: &str, text: &str) {
    let (response, events) = stream_chat(addr, session, text);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(streamed_text(&events), text, "events: {events:?}");
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads until EOF or error; true when the peer closed (EOF or reset) within the timeout.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A client that declared a body it never sends (or sends 1 byte every 2 s) until dropped.
struct Trickler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trickler {
    fn start(addr: SocketAddr, head: String) -> Trickler {
        let stop = Arc::new(AtomicBool::new(false));
        let inside = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut stream = connect(addr);
            stream.write_all(head.as_bytes()).unwrap();
            let mut last = Instant::now();
            while !inside.load(Ordering::SeqCst) {
                if last.elapsed() >= Duration::from_secs(2) {
                    if stream.write_all(b"x").is_err() {
                        return;
                    }
                    last = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Trickler {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The worst of `n` `/healthz` latencies.
fn worst_healthz(addr: SocketAddr, n: usize) -> Duration {
    (0..n).map(|_| healthz_latency(addr)).max().unwrap()
}

/// The tests that measure time or memory, or load the machine, run one at a time (the test
/// harness runs a file's tests in parallel): a latency bound measured while a sibling parses
/// 16 large bodies on the same 2 cores measures the sibling, not the bridge.
fn measured_alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn d1_a_huge_declared_body_is_not_drained_and_the_bridge_lives() {
    let bridge = Bridge::demo().start();
    // Patch 1: upstream allocated the declared length to drain it and aborted the process.
    let mut stream = connect(bridge.http);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000000\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let response = read_response(&mut reader, |_| {});
    assert_eq!(response.status, 200);
    assert!(
        closed_by_peer(&mut stream),
        "the connection is closed instead of kept alive"
    );
    // A body over the drain bound on a keep-alive connection: the bridge closes it rather
    // than reading 200 KB of body it does not want.
    let mut stream = connect(bridge.http);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n")
        .unwrap();
    stream.write_all(&[b'a'; 1000]).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert_eq!(read_response(&mut reader, |_| {}).status, 200);
    assert!(closed_by_peer(&mut stream));
    // A small unread body is drained and the connection serves the next request.
    let mut stream = connect(bridge.http);
    let body = "z".repeat(5000);
    let first = format!("GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n{body}");
    stream.write_all(first.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert_eq!(read_response(&mut reader, |_| {}).status, 200);
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let second = read_response(&mut reader, |_| {});
    assert_eq!(second.status, 200, "{}", second.text());
    assert!(bridge.child.is_some());
    turn_works(bridge.http, "after-d1", "still here");
}

#[test]
fn request_heads_are_bounded_while_read_and_bad_ones_get_json_errors() {
    let bridge = Bridge::demo().start();
    let addr = bridge.http;
    // Patch 2: too many header bytes → 431 (the read stops at 64 KiB).
    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..70 {
        head.push_str(&format!("X-Filler-{i}: {}\r\n", "f".repeat(1000)));
    }
    head.push_str("\r\n");
    let response = raw_request(addr, head.as_bytes());
    assert_eq!(response.status, 431, "{}", response.text());
    assert_eq!(response.json()["error"]["code"], "headers_too_large");
    // Too many header lines → 431.
    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..200 {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let response = raw_request(addr, head.as_bytes());
    assert_eq!(response.status, 431, "{}", response.text());
    // A request line that never ends → 414 after 64 KiB, not an unbounded read.
    let mut stream = connect(addr);
    let line = format!("GET /{}", "a".repeat(80 * 1024));
    let _ = stream.write_all(line.as_bytes());
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let response = read_response(&mut reader, |_| {});
    assert_eq!(response.status, 414, "{}", response.text());
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");
    // Patch 7: a non-ASCII header value → 400 with a message (upstream closed silently).
    let mut raw = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Name: caf\xc3\xa9\r\n\r\n".to_vec();
    raw.extend_from_slice(b"");
    let response = raw_request(addr, &raw);
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(response.text().contains("not ASCII"), "{}", response.text());
    turn_works(addr, "after-heads", "fine");
}

#[test]
fn d12_a_chunked_body_cut_by_eof_is_a_400_not_a_turn() {
    let bridge = Bridge::demo().start();
    let body = chat_body("cut short", false);
    let mut stream = connect(bridge.http);
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Session-Key: cut\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    // Declares the whole body as one chunk, sends half of it, then ends the stream.
    let half = &body[..body.len() / 2];
    write!(stream, "{:x}\r\n{half}", body.len()).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, |_| {});
    assert_eq!(response.status, 400, "{}", response.text());
    // The same body, whole and chunked, is a turn.
    let mut stream = connect(bridge.http);
    stream.write_all(head.as_bytes()).unwrap();
    write!(stream, "{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, |_| {});
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json()["choices"][0]["message"]["content"],
        "cut short"
    );
}

#[test]
fn d12_bearer_is_case_insensitive_and_only_application_json_is_json() {
    let bridge = Bridge::demo().arg("--api-key", "k3y").start();
    let addr = bridge.http;
    for value in ["Bearer k3y", "bearer k3y", "BEARER  k3y "] {
        let response = request(addr, "GET", "/v1/models", &[("Authorization", value)], "");
        assert_eq!(response.status, 200, "{value:?}: {}", response.text());
    }
    for value in ["Basic k3y", "Bearer", "bearerk3y", "Bearer wrong"] {
        let response = request(addr, "GET", "/v1/models", &[("Authorization", value)], "");
        assert_eq!(response.status, 401, "{value:?}");
    }
    let body = chat_body("typed", false);
    let post = |content_type: &str| {
        request(
            addr,
            "POST",
            "/v1/chat/completions",
            &[
                ("Authorization", "bearer k3y"),
                ("Content-Type", content_type),
                ("X-Session-Key", "media"),
            ],
            &body,
        )
    };
    for refused in ["application/jsonp", "application/json-seq", "text/plain"] {
        let response = post(refused);
        assert_eq!(response.status, 415, "{refused}: {}", response.text());
        assert_eq!(response.json()["error"]["code"], "unsupported_media_type");
    }
    for accepted in ["application/json; charset=utf-8", "Application/JSON"] {
        let response = post(accepted);
        assert_eq!(response.status, 200, "{accepted}: {}", response.text());
    }
}

#[test]
fn max_connections_refuses_the_excess_with_a_503_and_recovers() {
    let bridge = Bridge::demo().arg("--max-connections", "8").start();
    let addr = bridge.http;
    let idle = idle_connections(addr, 8);
    assert_eq!(idle.len(), 8);
    // Patch 4: the ninth gets a short 503 with Retry-After in OpenAI's shape, then a close.
    let refused = wait_until(Duration::from_secs(5), || {
        let stream = connect(addr);
        let mut reader = BufReader::new(stream);
        let response = read_response(&mut reader, |_| {});
        (response.status == 503).then_some(response)
    })
    .expect("a connection over max_connections is refused");
    assert_eq!(
        refused.headers.get("retry-after").map(String::as_str),
        Some("1")
    );
    assert_eq!(refused.json()["error"]["code"], "too_many_connections");
    assert!(bridge.log().contains("max_connections"));
    drop(idle);
    // The slots are released when those connections close.
    wait_until(Duration::from_secs(10), || {
        let mut stream = connect(addr);
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut reader = BufReader::new(stream);
        (read_response(&mut reader, |_| {}).status == 200).then_some(())
    })
    .expect("served again once the idle connections closed");
    turn_works(addr, "after-cap", "served");
}

#[test]
fn d2_out_of_file_descriptors_the_listener_survives_and_sigterm_is_prompt() {
    let _alone = measured_alone();
    // 128 descriptors, and no connection cap to protect them: accept hits EMFILE.
    let mut bridge = Bridge::demo()
        .nofile(128)
        .arg("--max-connections", "5000")
        .arg("--shutdown-grace", "2s")
        .start();
    let addr = bridge.http;
    turn_works(addr, "before-flood", "one");
    let flood = idle_connections(addr, 150);
    assert!(flood.len() >= 100, "opened {}", flood.len());
    assert!(
        bridge.wait_for_log("pausing and retrying", Duration::from_secs(10)),
        "EMFILE was reached and logged"
    );
    let log = bridge.log();
    assert!(
        log.matches("pausing and retrying").count() <= 2,
        "logged once per streak, not per failure"
    );
    drop(flood);
    // Patch 3: the same listener accepts again once descriptors are free.
    wait_until(Duration::from_secs(15), || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        response.starts_with(b"HTTP/1.1 200").then_some(())
    })
    .expect("HTTP serves again after the flood");
    turn_works(addr, "after-flood", "two");
    // Patch 5: SIGTERM with the listener flooded again exits within shutdown_grace + 1 s.
    let flood = idle_connections(addr, 150);
    assert!(flood.len() >= 100);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let code = bridge.stop();
    let took = started.elapsed();
    drop(flood);
    assert_eq!(code, Some(0), "clean exit");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?} (shutdown_grace 2s)"
    );
    eprintln!("front_door: SIGTERM with a flooded listener took {took:?}");
}

#[test]
fn d3_healthz_stays_fast_while_clients_trickle_bodies() {
    let _alone = measured_alone();
    let bridge = Bridge::demo().arg("--api-key", "k").start();
    let addr = bridge.http;
    // The same route (no key needed), over the drain bound and under it, and a 401 route.
    let _a = Trickler::start(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".into(),
    );
    let _b = Trickler::start(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n".into(),
    );
    let _c = Trickler::start(
        addr,
        "GET /v1/models HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n".into(),
    );
    let _d = Trickler::start(
        addr,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\r\nContent-Length: 100000\r\n\r\n".into(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let worst = worst_healthz(addr, 20);
    eprintln!("front_door: worst /healthz during 4 trickles: {worst:?}");
    assert!(worst < Duration::from_millis(100), "worst {worst:?}");
}

/// Writes a session map with `n` sessions into `state` (src/session/store.rs's format).
fn seed_sessions(state: &std::path::Path, n: usize) {
    let mut text = String::with_capacity(n * 120);
    text.push_str("{\"version\":1,\"sessions\":{");
    for i in 0..n {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            "\"seed:{i:06}\":{{\"claude_session\":\"00000000-0000-4000-8000-{i:012}\",\"workspace\":\"/tmp\",\"created\":1,\"last_used\":1,\"turns\":1}}"
        ));
    }
    text.push_str("}}");
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(state.join("sessions.json"), text).unwrap();
}

#[test]
fn d10_sessions_page_and_an_unread_listing_does_not_stall_healthz() {
    let _alone = measured_alone();
    let dir = TempDir::new("d10");
    seed_sessions(&dir.path().join("state"), 200_000);
    let bridge = Bridge::demo().dir(dir).start();
    let addr = bridge.http;
    // Pages: sorted by key, `has_more` and `last_key` lead to the next page.
    let first = request(addr, "GET", "/v1/sessions?limit=3", &[], "").json();
    let keys: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["seed:000000", "seed:000001", "seed:000002"]);
    assert_eq!(first["has_more"], true);
    assert_eq!(first["last_key"], "seed:000002");
    let next = request(
        addr,
        "GET",
        "/v1/sessions?limit=2&after=seed%3A000002",
        &[],
        "",
    )
    .json();
    assert_eq!(next["data"][0]["key"], "seed:000003");
    let last = request(
        addr,
        "GET",
        "/v1/sessions?limit=5&after=seed:199998",
        &[],
        "",
    )
    .json();
    assert_eq!(last["data"].as_array().unwrap().len(), 1);
    assert_eq!(last["has_more"], false);
    let default = request(addr, "GET", "/v1/sessions", &[], "").json();
    assert_eq!(default["data"].as_array().unwrap().len(), 1000);
    let bad = request(addr, "GET", "/v1/sessions?limit=20000", &[], "");
    assert_eq!(bad.status, 400, "{}", bad.text());
    // Clients that ask for the largest pages and never read them.
    let mut unread = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(addr);
        stream
            .write_all(b"GET /v1/sessions?limit=10000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        unread.push(stream);
    }
    // Measured once each listing is computed and being written (its first bytes arrived).
    for stream in &unread {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(stream.peek(&mut byte).unwrap(), 1, "the listing started");
    }
    let worst = worst_healthz(addr, 20);
    eprintln!(
        "front_door: worst /healthz during 4 unread 10,000-row listings of 200,000 sessions: {worst:?}"
    );
    assert!(worst < Duration::from_millis(100), "worst {worst:?}");
    turn_works(addr, "d10", "listed");
}

/// An 8 MB body of `n` one-letter user messages (the D9 shape).
fn tiny_messages_body(n: usize, last_role: &str) -> String {
    let mut body = String::with_capacity(n * 30 + 64);
    body.push_str("{\"model\":\"m\",\"messages\":[");
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"role\":\"user\",\"content\":\"a\"}");
    }
    body.push_str(&format!(
        ",{{\"role\":\"{last_role}\",\"content\":\"b\"}}]}}"
    ));
    body
}

/// POSTs `body` from `n` clients at once; returns their statuses.
fn burst(addr: SocketAddr, body: &Arc<String>, n: usize) -> Vec<u16> {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let body = body.clone();
            std::thread::spawn(move || {
                let session = format!("burst-{i}");
                request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[
                        ("Content-Type", "application/json"),
                        ("X-Session-Key", &session),
                    ],
                    &body,
                )
                .status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn d9_large_bodies_are_refused_or_parsed_within_bounds_and_memory_comes_back() {
    let _alone = measured_alone();
    let bridge = Bridge::demo().start();
    let addr = bridge.http;
    let pid = bridge.child.as_ref().unwrap().id();
    turn_works(addr, "warm", "warm");
    let baseline = rss_kib(pid).unwrap();
    // 270,000 tiny messages in 8 MB: refused before parsing.
    let hostile = Arc::new(tiny_messages_body(270_000, "user"));
    assert!(hostile.len() < 8 << 20);
    let one = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &hostile,
    );
    assert_eq!(one.status, 400, "{}", one.text());
    assert!(one.text().contains("10000 messages"), "{}", one.text());
    let statuses = burst(addr, &hostile, 16);
    assert!(statuses.iter().all(|s| *s == 400), "{statuses:?}");
    // 9,000 messages of 800 bytes (7 MB): parsed in full (then refused: no user turn), 16 at once.
    let mut big = String::from("{\"messages\":[");
    let text = "w".repeat(800);
    for i in 0..9_000 {
        if i > 0 {
            big.push(',');
        }
        big.push_str(&format!("{{\"role\":\"user\",\"content\":\"{text}\"}}"));
    }
    big.push_str(",{\"role\":\"assistant\",\"content\":\"x\"}]}");
    let big = Arc::new(big);
    let statuses = burst(addr, &big, 16);
    assert!(statuses.iter().all(|s| *s == 400), "{statuses:?}");
    let peak_after = rss_kib(pid).unwrap();
    let settled = wait_until(Duration::from_secs(10), || {
        let now = rss_kib(pid)?;
        (now <= baseline * 2).then_some(now)
    });
    eprintln!(
        "front_door: RSS baseline {baseline} KiB, right after the bursts {peak_after} KiB, settled {settled:?} KiB"
    );
    assert!(
        settled.is_some(),
        "RSS {} KiB not back within 2x baseline {baseline} KiB",
        rss_kib(pid).unwrap_or(0)
    );
    turn_works(addr, "after-d9", "light again");
}
