//! Operating the bridge: `/v1/sessions` and `DELETE /v1/sessions/<key>`, `/metrics` checked
//! at the parser level, the thread report and thread names, the API key on every operator
//! endpoint, and `synthesis-bridge sessions` against a live and a stopped bridge.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;
use support::*;

const KEY: &str = "operator-secret";

fn get(bridge: &Bridge, path: &str) -> HttpResponse {
    let auth = format!("Bearer {KEY}");
    request(bridge.http, "GET", path, &[("Authorization", &auth)], "")
}

#[test]
fn operator_endpoints_need_the_api_key_but_healthz_does_not() {
    let bridge = Bridge::demo().arg("--api-key", KEY).start();
    for (method, path) in [
        ("GET", "/v1/sessions"),
        ("GET", "/metrics"),
        ("GET", "/v1/debug/threads"),
        ("DELETE", "/v1/sessions/x"),
        ("GET", "/v1/models"),
    ] {
        let r = request(bridge.http, method, path, &[], "");
        assert_eq!(r.status, 401, "{method} {path}");
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        let r = request(
            bridge.http,
            method,
            path,
            &[("Authorization", "Bearer wrong")],
            "",
        );
        assert_eq!(r.status, 401, "{method} {path} with a wrong key");
    }
    assert_eq!(request(bridge.http, "GET", "/healthz", &[], "").status, 200);
    assert_eq!(get(&bridge, "/v1/sessions").status, 200);
    assert_eq!(get(&bridge, "/metrics").status, 200);
}

#[test]
fn sessions_are_listed_and_a_delete_stops_the_process_but_keeps_the_conversation() {
    let bridge = Bridge::demo().arg("--api-key", KEY).start();
    let auth = format!("Bearer {KEY}");
    let body = chat_body("hello", true);
    let headers = [
        ("Authorization", auth.as_str()),
        ("X-Session-Key", "agent:main:a/b"),
    ];
    assert_eq!(
        request(bridge.http, "POST", "/v1/chat/completions", &headers, &body).status,
        200
    );
    // Ready once claude reported the end of its turn (until then: draining).
    let list = wait_until(Duration::from_secs(10), || {
        let list = get(&bridge, "/v1/sessions").json();
        (list["data"][0]["state"] == "ready").then_some(list)
    })
    .unwrap_or_else(|| get(&bridge, "/v1/sessions").json());
    let row = &list["data"][0];
    assert_eq!(row["key"], "agent:main:a/b");
    assert_eq!(row["state"], "ready");
    assert_eq!(row["turns"], 1);
    assert!(row["pid"].as_u64().is_some_and(|p| p > 0));
    assert_eq!(row["claude_session"].as_str().unwrap().len(), 36);
    let pid = row["pid"].as_u64().unwrap() as u32;

    let r = request(
        bridge.http,
        "DELETE",
        "/v1/sessions/agent%3Amain%3Aa%2Fb",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(
        wait_until(Duration::from_secs(10), || (!std::path::Path::new(
            &format!("/proc/{pid}")
        )
        .exists())
        .then_some(()))
        .is_some()
    );
    assert!(
        wait_until(Duration::from_secs(5), || (get(&bridge, "/v1/sessions")
            .json()["data"][0]["state"]
            == "absent")
            .then_some(()))
        .is_some()
    );
    let r = request(
        bridge.http,
        "DELETE",
        "/v1/sessions/nobody",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 404);
    // The conversation resumes on the next turn.
    assert_eq!(
        request(bridge.http, "POST", "/v1/chat/completions", &headers, &body).status,
        200
    );
    assert!(bridge.log().contains("--resume"), "log:\n{}", bridge.log());
}

/// A Prometheus text-format reader strict enough to catch a malformed exposition.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut types = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && v.starts_with('"')
                        && v.ends_with('"'),
                    "{line}"
                );
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample without # TYPE: {line}");
        samples.insert(series.to_string(), value);
    }
    // Histograms: cumulative buckets ending in +Inf, equal to _count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|(s, v)| {
                let le = s
                    .strip_prefix(&format!("{family}_bucket{{le=\""))?
                    .strip_suffix("\"}")?;
                Some((
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    },
                    *v,
                ))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family} buckets not cumulative"
        );
        assert_eq!(
            buckets.last().unwrap().0,
            f64::INFINITY,
            "{family} has no +Inf bucket"
        );
        assert_eq!(
            buckets.last().unwrap().1,
            samples[&format!("{family}_count")],
            "{family}: +Inf != _count"
        );
    }
    samples
}

#[test]
fn metrics_parse_and_count_what_happened() {
    let bridge = Bridge::demo().arg("--heartbeat-interval", "100ms").start();
    let before = parse_metrics(&request(bridge.http, "GET", "/metrics", &[], "").text());
    for i in 0..3 {
        assert_eq!(
            streamed_text(&stream_chat(bridge.http, "m", &format!("t{i} [sim:delay_ms=250]")).1),
            format!("t{i} [sim:delay_ms=250]")
        );
    }
    // After its answer, a session drains until claude reports the end of its turn (its Stop
    // hook), then is ready. The responder records its outbound time after the client's last
    // byte, so that count may trail the response by a moment: both are awaited.
    let grew_by = |after: &HashMap<String, f64>, name: &str| {
        after[name] - before.get(name).copied().unwrap_or(0.0)
    };
    let after = wait_until(Duration::from_secs(10), || {
        let after = parse_metrics(&request(bridge.http, "GET", "/metrics", &[], "").text());
        (after["synthesis_sessions{state=\"ready\"}"] == 1.0
            && grew_by(&after, "synthesis_bridge_outbound_seconds_count") >= 3.0)
            .then_some(after)
    })
    .expect("the session is ready once claude reported the end of its turn");
    let grew = |name: &str| grew_by(&after, name);
    assert_eq!(grew("synthesis_turns_completed_total"), 3.0);
    assert_eq!(grew("synthesis_spawns_total"), 1.0);
    assert!(grew("synthesis_heartbeats_total") >= 3.0);
    assert_eq!(grew("synthesis_turn_duration_seconds_count"), 3.0);
    assert_eq!(grew("synthesis_bridge_outbound_seconds_count"), 3.0);
    assert_eq!(after["synthesis_sessions{state=\"ready\"}"], 1.0);
    assert_eq!(after["synthesis_processes"], 1.0);
}

#[test]
fn every_thread_is_named_and_the_thread_report_shows_each_worker() {
    let bridge = Bridge::demo().start();
    let slow = stream_chat_in_background(bridge.http, "busy", "wait [sim:delay_ms=1500]");
    assert_eq!(streamed_text(&stream_chat(bridge.http, "idle", "x").1), "x");
    // Wait until the busy session's claude has the turn (its worker is then waiting for it).
    wait_until(Duration::from_secs(10), || {
        let report = request(bridge.http, "GET", "/v1/debug/threads", &[], "").text();
        (report.contains("session:busy state=busy")
            && report.contains("waiting for claude's reply")
            && report.contains("session:idle state=ready"))
        .then_some(report)
    })
    .expect("the busy session shows as busy, waiting for claude's reply; the other as ready");
    let pid = bridge.child.as_ref().unwrap().id();
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    for expected in [
        "http",
        "ws-accept",
        "sweeper",
        "signals",
        "session:busy",
        "session:idle",
        // A responder is renamed after its session once it knows it (the OS keeps 15 bytes).
        "respond:busy",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no thread {expected} in {names:?}"
        );
    }
    // tiny_http names none of its own threads (its accept loop and one per connection):
    // those show the binary's name. Every thread the bridge starts itself is named above.
    assert_eq!(
        streamed_text(&slow.join().unwrap().1),
        "wait [sim:delay_ms=1500]"
    );
}

#[test]
fn the_sessions_command_reads_the_live_bridge_and_then_the_state_file() {
    let mut bridge = Bridge::demo().arg("--api-key", KEY).start();
    let auth = format!("Bearer {KEY}");
    let body = chat_body("hi", true);
    request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth), ("X-Session-Key", "cli-key")],
        &body,
    );
    let state = bridge.dir.path().join("state");
    let port = bridge.http.port().to_string();
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("sessions")
            .args([
                "--state-dir",
                state.to_str().unwrap(),
                "--api-key",
                KEY,
                "--port",
                &port,
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Ready once claude reported the end of its turn (until then: draining).
    let live = wait_until(Duration::from_secs(10), || {
        let live = run(&[]);
        live.contains("ready").then_some(live)
    })
    .unwrap_or_else(|| run(&[]));
    assert!(
        live.contains("from live bridge") && live.contains("cli-key") && live.contains("ready"),
        "{live}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(json[0]["key"], "cli-key");
    assert_eq!(bridge.stop(), Some(0));
    let stopped = run(&[]);
    assert!(
        stopped.contains("from session map")
            && stopped.contains("cli-key")
            && stopped.contains("stopped"),
        "{stopped}"
    );
}
