//! B5: what a user waits for with the REAL Claude Code, against the fake Anthropic API on
//! loopback (tests/support/fake_anthropic.rs, with an optional model delay), side by side with
//! the two shapes other bridges use, all in one run on the same machine:
//!
//! - the bridge: cold first turn of a new conversation, resumed cold turn (the process stopped
//!   as an idle kill stops it, then `--resume`), warm turns back to back and with think time;
//!   on a second bridge with one standby: the first turn of new conversations, and of
//!   conversations coming back (resumed in the standby with `/resume`, `standby_resume`);
//! - `claude -p --input-format stream-json` kept warm per session (OpenClaw's `claude-cli`):
//!   cold start (spawn → first result) and warm turns;
//! - a fresh `claude -p <prompt>` per request (the wrappers' shape).
//!
//! Medians, p90 and ratios, plus a timeline of one cold and one warm bridge turn, split by the
//! bridge's log, the channel servers' log (`SYNTHESIS_CHANNEL_LOG`) and the fake API's arrival
//! times. `scripts/bench.sh --only B5` runs it (`--quick`: the one-turn CI smoke, which checks
//! the replies and asserts no times). Needs `SYNTHESIS_REAL_CLAUDE` (scripts/install-claude.sh);
//! without it, it says SKIPPED and exits 0. `--model-delay-ms N` delays every model answer.

mod figures;
#[path = "../tests/support/mod.rs"]
mod support;

use figures::{histogram_quantile, load_average};

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::fake_anthropic::FakeAnthropic;
use support::*;

struct Settings {
    cold: usize,
    warm: usize,
    think: usize,
    think_time: Duration,
    fresh: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    if only.is_some_and(|o| !o.eq_ignore_ascii_case("B5")) {
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let model_delay = args
        .iter()
        .position(|a| a == "--model-delay-ms")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let Some(claude) = std::env::var("SYNTHESIS_REAL_CLAUDE")
        .ok()
        .filter(|p| Path::new(p).is_file())
    else {
        println!(
            "B5 SKIPPED: real Claude Code not installed (run scripts/install-claude.sh and set SYNTHESIS_REAL_CLAUDE)"
        );
        return;
    };
    let s = if quick {
        Settings {
            cold: 1,
            warm: 1,
            think: 0,
            think_time: Duration::from_millis(500),
            fresh: 0,
        }
    } else {
        Settings {
            // At least one of each: the ratios need them.
            cold: env_count("SYNTHESIS_B5_COLD", 5).max(1),
            warm: env_count("SYNTHESIS_B5_WARM", 20).max(1),
            think: env_count("SYNTHESIS_B5_THINK", 10),
            think_time: Duration::from_millis(500),
            fresh: env_count("SYNTHESIS_B5_FRESH", 5),
        }
    };
    println!(
        "# B5: real Claude Code ({}) against the fake Anthropic API (model delay {model_delay} ms){}",
        claude_version(&claude),
        if quick { ", quick smoke" } else { "" }
    );
    println!("load average at start: {}", load_average());
    let api = FakeAnthropic::start();
    api.set_delay(Duration::from_millis(model_delay));
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();

    // ------------------------------------------------------------------ the bridge
    let dir = TempDir::new("b5");
    seed_claude_config(&dir, FAKE_KEY);
    let channel_log = dir.path().join("channels.log");
    let bridge = start_bridge(&claude, &api, dir, &channel_log, 0);
    let mut cold = Vec::new();
    let mut cold_timeline = None;
    for i in 0..s.cold {
        let key = format!("cold-{i}");
        let (took, sent, done) = turn(&bridge, &key, &format!("cold question {i}"));
        cold.push(took);
        if cold_timeline.is_none() {
            cold_timeline = Some((key, sent, done));
        }
    }
    rows.push(("bridge cold first turn".into(), cold.clone()));

    let mut resumed = Vec::new();
    for i in 0..s.cold.min(3).max(usize::from(!quick)) {
        let key = format!("cold-{i}");
        stop_session(&bridge, &key);
        let (took, _, _) = turn(&bridge, &key, &format!("resumed question {i}"));
        resumed.push(took);
    }
    if !resumed.is_empty() {
        rows.push((
            "bridge resumed cold turn (process stopped, then --resume)".into(),
            resumed,
        ));
    }

    let metrics_before = own_time(&bridge);
    let buckets_before = [
        histogram(&bridge, "synthesis_bridge_inbound_seconds"),
        histogram(&bridge, "synthesis_bridge_outbound_seconds"),
    ];
    let mut warm = Vec::new();
    let mut warm_timeline = None;
    let _ = turn(&bridge, "warm", "warm-up question");
    for i in 0..s.warm {
        let (took, sent, done) = turn(&bridge, "warm", &format!("warm question {i}"));
        warm.push(took);
        if i == s.warm / 2 {
            warm_timeline = Some(("warm".to_string(), sent, done));
        }
    }
    rows.push(("bridge warm turn, back to back".into(), warm.clone()));
    let metrics_after = own_time(&bridge);
    let buckets_after = [
        histogram(&bridge, "synthesis_bridge_inbound_seconds"),
        histogram(&bridge, "synthesis_bridge_outbound_seconds"),
    ];
    let mut think = Vec::new();
    for i in 0..s.think {
        std::thread::sleep(s.think_time);
        let (took, _, _) = turn(&bridge, "warm", &format!("thoughtful question {i}"));
        think.push(took);
    }
    if !think.is_empty() {
        rows.push((
            format!("bridge warm turn, {:?} between turns", s.think_time),
            think.clone(),
        ));
    }

    // ------------------------------------------------------------------ a standby
    // A second bridge with one standby process: each new conversation's first turn, sent
    // once a standby is ready and has been idle for the think time (as the warm turns above).
    // SYNTHESIS_B5_STANDBY_IDLE_MS: how long a ready standby waits before the turn (default:
    // the think time).
    let standby_idle = std::env::var("SYNTHESIS_B5_STANDBY_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(s.think_time, Duration::from_millis);
    let mut with_standby = Vec::new();
    let mut resumed_in_standby = Vec::new();
    let mut standby_turn = None;
    let standby_timeline;
    {
        let dir = TempDir::new("b5-standby");
        seed_claude_config(&dir, FAKE_KEY);
        let log = dir.path().join("channels-standby.log");
        let standby_bridge = start_bridge(&claude, &api, dir, &log, 1);
        let standby_ready_and_idle = || {
            let ready = wait_until(Duration::from_secs(60), || {
                let list = request(standby_bridge.http, "GET", "/v1/sessions", &[], "").json();
                list["data"]
                    .as_array()?
                    .iter()
                    .any(|r| r["standby"] == true && r["state"] == "ready")
                    .then_some(())
            });
            assert!(ready.is_some(), "no standby became ready within 60 s");
            std::thread::sleep(standby_idle);
        };
        for i in 0..s.cold {
            standby_ready_and_idle();
            let key = format!("new-{i}");
            let (took, sent, done) = turn(&standby_bridge, &key, &format!("new {i}"));
            with_standby.push(took);
            if i == s.cold / 2 {
                standby_turn = Some((key, sent, done));
            }
        }
        let adopted = standby_bridge.log().matches("takes standby").count();
        assert_eq!(adopted, s.cold, "every first turn went to a standby");
        // Conversations coming back (their process stopped as an idle kill stops it) take
        // the standby too: the bridge types /resume into it (standby_resume).
        let comebacks = s.cold.min(3).max(usize::from(!quick));
        for i in 0..comebacks {
            let key = format!("new-{i}");
            stop_session(&standby_bridge, &key);
            let retired = wait_until(Duration::from_secs(20), || {
                let list = request(standby_bridge.http, "GET", "/v1/sessions", &[], "").json();
                list["data"]
                    .as_array()?
                    .iter()
                    .all(|r| r["key"] != key.as_str() || r["pid"].is_null())
                    .then_some(())
            });
            assert!(
                retired.is_some(),
                "{key}'s worker did not let go of its process"
            );
            standby_ready_and_idle();
            let (took, _, _) = turn(&standby_bridge, &key, &format!("back again {i}"));
            resumed_in_standby.push(took);
        }
        let resumed = standby_bridge
            .log()
            .matches("claude resumed the conversation")
            .count();
        assert_eq!(resumed, comebacks, "every comeback resumed in a standby");
        let channels = std::fs::read_to_string(&log).unwrap_or_default();
        standby_timeline = standby_turn.map(|tl| (tl, standby_bridge.log(), channels));
    }
    rows.push((
        format!(
            "bridge first turn of a new conversation with a standby ({:?} after it is ready)",
            standby_idle
        ),
        with_standby.clone(),
    ));
    if !resumed_in_standby.is_empty() {
        rows.push((
            "bridge returning conversation with a standby (process stopped, then /resume in the standby)".into(),
            resumed_in_standby,
        ));
    }

    // ------------------------------------------------------------------ the peers
    let peer_dir = TempDir::new("b5-peers");
    seed_claude_config(&peer_dir, FAKE_KEY);
    let mut sj_cold = Vec::new();
    let mut sj_warm = Vec::new();
    let mut sj_think = Vec::new();
    for i in 0..s.cold.max(1) {
        let started = Instant::now();
        let mut peer = StreamJson::spawn(&claude, &api, &peer_dir, &bridge.marker);
        peer.ask(&format!("stream-json cold {i}"));
        sj_cold.push(started.elapsed().as_secs_f64());
        if i == 0 {
            for j in 0..s.warm {
                let t = Instant::now();
                peer.ask(&format!("stream-json warm {j}"));
                sj_warm.push(t.elapsed().as_secs_f64());
            }
            for j in 0..s.think {
                std::thread::sleep(s.think_time);
                let t = Instant::now();
                peer.ask(&format!("stream-json thoughtful {j}"));
                sj_think.push(t.elapsed().as_secs_f64());
            }
        }
    }
    rows.push((
        "peer: claude -p stream-json, cold start".into(),
        sj_cold.clone(),
    ));
    rows.push((
        "peer: claude -p stream-json, warm, back to back".into(),
        sj_warm.clone(),
    ));
    if !sj_think.is_empty() {
        rows.push((
            format!(
                "peer: claude -p stream-json, warm, {:?} between",
                s.think_time
            ),
            sj_think.clone(),
        ));
    }
    let mut fresh = Vec::new();
    for i in 0..s.fresh {
        fresh.push(fresh_print(&claude, &api, &peer_dir, &bridge.marker, i));
    }
    if !fresh.is_empty() {
        rows.push(("peer: fresh claude -p per request".into(), fresh));
    }

    // ------------------------------------------------------------------ report
    println!("\n| shape | n | median | p90 | min | max |\n|---|---|---|---|---|---|");
    for (name, values) in &rows {
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            v.len(),
            ms(pct(&v, 0.5)),
            ms(pct(&v, 0.9)),
            ms(v[0]),
            ms(v[v.len() - 1])
        );
    }
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        pct(&v, 0.5)
    };
    println!("\n| ratio | value | target |\n|---|---|---|");
    println!(
        "| bridge cold first turn / stream-json cold start | {:.2}× | ≤ 1.3× |",
        med(&cold) / med(&sj_cold)
    );
    println!(
        "| bridge warm back to back / stream-json warm | {:.2}× | - |",
        med(&warm) / med(&sj_warm)
    );
    if !think.is_empty() {
        println!(
            "| bridge warm with think time / stream-json warm (back to back) | {:.2}× | ≤ 2× |",
            med(&think) / med(&sj_warm)
        );
    }
    if !think.is_empty() {
        println!(
            "| bridge new conversation's first turn with a standby / bridge warm with think time | {:.2}× | ≤ 1.5× |",
            med(&with_standby) / med(&think)
        );
    }
    let p50 = |i: usize| histogram_quantile(&buckets_before[i], &buckets_after[i], 0.5) * 1000.0;
    println!(
        "| bridge's own time per warm turn, p50 inbound + p50 outbound (/metrics buckets, interpolated) | {:.3} ms + {:.3} ms | ≤ 2 ms |",
        p50(0),
        p50(1)
    );
    if let (Some(before), Some(after)) = (metrics_before, metrics_after) {
        let n = (after.2 - before.2).max(1.0);
        println!(
            "| bridge's own time per warm turn, mean of inbound + outbound (/metrics sums, {} turns; one slow wake-up moves it) | {:.3} ms | ≤ 2 ms |",
            n,
            ((after.0 - before.0) + (after.1 - before.1)) / n * 1000.0
        );
    }

    let log = bridge.log();
    let channels = std::fs::read_to_string(&channel_log).unwrap_or_default();
    // SYNTHESIS_B5_LOGS=<dir> keeps the bridge's and the channels' logs for a closer look.
    if let Ok(keep) = std::env::var("SYNTHESIS_B5_LOGS") {
        let keep = Path::new(&keep);
        let _ = std::fs::create_dir_all(keep);
        let _ = std::fs::write(keep.join("bridge.log"), &log);
        let _ = std::fs::write(keep.join("channels.log"), &channels);
        let projects = bridge.dir.path().join("home/.claude/projects");
        let _ = Command::new("cp")
            .arg("-r")
            .arg(&projects)
            .arg(keep)
            .status();
    }
    let times = api.request_times();
    let bodies = api.requests();
    for (label, tl) in [("cold", cold_timeline), ("warm", warm_timeline)] {
        if let Some((key, sent, done)) = tl {
            timeline(label, &key, sent, done, &log, &channels, &times, &bodies);
        }
    }
    if let Some(((key, sent, done), log, channels)) = standby_timeline {
        let label = "standby (a new conversation's first turn)";
        timeline(label, &key, sent, done, &log, &channels, &times, &bodies);
    }

    // ------------------------------------------------------------------ checks
    let mut bridge = bridge;
    let code = bridge.stop();
    let left = wait_until(Duration::from_secs(10), || {
        marked_pids(&bridge.marker).is_empty().then_some(())
    });
    println!(
        "\nchecks: every reply matched its question; bridge exit {code:?}; processes left behind: {}",
        if left.is_some() {
            0
        } else {
            marked_pids(&bridge.marker).len()
        }
    );
    println!("load average at end: {}", load_average());
    if code != Some(0) || left.is_none() {
        std::process::exit(1);
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn claude_env(cmd: &mut Command, api: &FakeAnthropic, dir: &TempDir, marker: &str) {
    let home = dir.path().join("home");
    cmd.env("HOME", &home)
        .env("CLAUDE_CONFIG_DIR", home.join(".claude"))
        .env("ANTHROPIC_BASE_URL", format!("http://{}", api.addr))
        .env("ANTHROPIC_API_KEY", FAKE_KEY)
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("CLAUDE_CODE_GB_DISK_CACHE_WHEN_TELEMETRY_OFF", "1")
        .env(MARKER_VAR, marker)
        .envs(extra_env());
}

/// `SYNTHESIS_B5_ENV="K=V …"`: variables added to every claude's environment (warm-path
/// experiments with Claude's own knobs).
fn extra_env() -> Vec<(String, String)> {
    std::env::var("SYNTHESIS_B5_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn start_bridge(
    claude: &str,
    api: &FakeAnthropic,
    dir: TempDir,
    channel_log: &Path,
    standby: usize,
) -> Bridge {
    let workspace = dir.path().join("workspace").canonicalize().unwrap();
    let mut builder = Bridge::real(claude)
        .dir(dir)
        .arg("--standby", &standby.to_string())
        .arg("--workspace", workspace.to_str().unwrap())
        .arg("--ready-timeout", "60s")
        .env("ANTHROPIC_BASE_URL", &format!("http://{}", api.addr))
        .env("ANTHROPIC_API_KEY", FAKE_KEY)
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("CLAUDE_CODE_GB_DISK_CACHE_WHEN_TELEMETRY_OFF", "1")
        .env("SYNTHESIS_CHANNEL_LOG", channel_log.to_str().unwrap());
    if standby > 0 {
        // Room for every adopted conversation and a standby beside them.
        builder = builder.arg("--max-processes", "16");
    }
    // Extra environment for claude (through the bridge), e.g. SYNTHESIS_B5_ENV="K=V K2=V2".
    for (k, v) in extra_env() {
        builder = builder.env(&k, &v);
    }
    // Extra bridge flags for experiments, e.g. SYNTHESIS_B5_ARGS="--channel-hello-delay 0s".
    if let Ok(extra) = std::env::var("SYNTHESIS_B5_ARGS") {
        let words: Vec<&str> = extra.split_whitespace().collect();
        for pair in words.chunks(2) {
            builder = match pair {
                [flag, value] => builder.arg(flag, value),
                [flag] => builder.flag(flag),
                _ => builder,
            };
        }
    }
    builder.start()
}

/// One streamed turn: (seconds from request to last byte, wall time sent, wall time done).
fn turn(bridge: &Bridge, key: &str, text: &str) -> (f64, SystemTime, SystemTime) {
    let sent = SystemTime::now();
    let started = Instant::now();
    let (_, events) = stream_chat(bridge.http, key, text);
    let took = started.elapsed().as_secs_f64();
    let done = SystemTime::now();
    let got = streamed_text(&events);
    assert_eq!(
        got,
        format!("reply to: {text}"),
        "session {key}; log tail:\n{}",
        tail(&bridge.log(), 40)
    );
    (took, sent, done)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops session `key`'s process the way an idle kill does and waits until it is gone.
fn stop_session(bridge: &Bridge, key: &str) {
    // 409 while the turn is still finishing (draining): ask again until it is idle.
    let stopped = wait_until(Duration::from_secs(20), || {
        let path = format!("/v1/sessions/{key}");
        let response = request(bridge.http, "DELETE", &path, &[], "");
        assert!([202, 409].contains(&response.status), "{}", response.text());
        (response.status == 202).then_some(())
    });
    assert!(stopped.is_some(), "session {key} stayed busy");
    let var = format!("SYNTHESIS_OPENCLAW_SESSION={key}");
    let gone = wait_until(Duration::from_secs(20), || {
        let live = marked_pids(&bridge.marker).into_iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|v| v == var.as_bytes())
        });
        (!live).then_some(())
    });
    assert!(gone.is_some(), "session {key}'s processes did not stop");
}

/// (inbound sum, outbound sum, outbound count) from /metrics.
fn own_time(bridge: &Bridge) -> Option<(f64, f64, f64)> {
    let text = request(bridge.http, "GET", "/metrics", &[], "").text();
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
    };
    Some((
        value("synthesis_bridge_inbound_seconds_sum")?,
        value("synthesis_bridge_outbound_seconds_sum")?,
        value("synthesis_bridge_outbound_seconds_count")?,
    ))
}

/// `(upper bound, cumulative count)` of each bucket of histogram `name` on /metrics.
fn histogram(bridge: &Bridge, name: &str) -> Vec<(f64, u64)> {
    let text = request(bridge.http, "GET", "/metrics", &[], "").text();
    figures::histogram_buckets(&text, name)
}

/// OpenClaw's shape: one `claude -p --input-format stream-json` kept per session.
struct StreamJson {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl StreamJson {
    fn spawn(claude: &str, api: &FakeAnthropic, dir: &TempDir, marker: &str) -> StreamJson {
        let mut cmd = Command::new(claude);
        cmd.args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
        ])
        .current_dir(dir.path().join("workspace"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        claude_env(&mut cmd, api, dir, marker);
        let mut child = cmd.spawn().expect("start claude -p");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        StreamJson {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one user message and waits for its `result`.
    fn ask(&mut self, text: &str) {
        let message =
            serde_json::json!({"type": "user", "message": {"role": "user", "content": text}});
        writeln!(self.stdin, "{message}").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no result for {text:?}");
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "claude -p ended before answering {text:?}"
            );
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["type"] == "result" {
                assert_eq!(v["result"], "ok from fake", "{line}");
                return;
            }
        }
    }
}

impl Drop for StreamJson {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The wrappers' shape: a fresh `claude -p <prompt>` per request; seconds to its exit.
fn fresh_print(claude: &str, api: &FakeAnthropic, dir: &TempDir, marker: &str, i: usize) -> f64 {
    let started = Instant::now();
    let mut cmd = Command::new(claude);
    cmd.args(["-p", &format!("fresh question {i}")])
        .current_dir(dir.path().join("workspace"))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    claude_env(&mut cmd, api, dir, marker);
    let out = cmd.output().expect("run claude -p");
    let took = started.elapsed().as_secs_f64();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok from fake",
        "claude -p answered something else"
    );
    took
}

// ---------------------------------------------------------------------- timelines

/// Seconds since the Unix epoch of a log line's leading `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn line_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Time of the first line at or after `after` (ms precision: 1 ms slack) holding every needle.
fn first(text: &str, after: f64, needles: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(line_time)
        .find(|t| *t >= after - 0.001)
}

#[allow(clippy::too_many_arguments)]
fn timeline(
    label: &str,
    key: &str,
    sent: SystemTime,
    done: SystemTime,
    log: &str,
    channels: &str,
    times: &[SystemTime],
    bodies: &[Value],
) {
    let t0 = epoch(sent);
    let quoted = format!("{key:?}");
    let mut steps: Vec<(&str, Option<f64>)> = Vec::new();
    if label == "cold" {
        let spawn = first(log, t0, &[&quoted, "spawned pid"]);
        steps.push(("spawn", spawn));
        let warning = first(log, t0, &["dev-channels warning on screen"]);
        steps.push(("dev-channels warning answered", warning));
        let started = first(
            channels,
            t0,
            &["channel server", &format!("session {quoted}")],
        );
        steps.push(("channel server started", started));
        steps.push((
            "MCP initialized",
            started.and_then(|s| first(channels, s, &["claude initialised the channel"])),
        ));
        steps.push((
            "hello (bridge: ready)",
            first(log, t0, &[&quoted, "ready in"]),
        ));
    }
    let push = first(channels, t0, &["→ claude"]);
    steps.push(("turn pushed to claude (channel)", push));
    let model = push.and_then(|p| {
        times
            .iter()
            .zip(bodies)
            .map(|(t, b)| (epoch(*t), b))
            .find(|(t, b)| *t >= p - 0.001 && b["messages"].to_string().contains("<channel"))
            .map(|(t, _)| t)
    });
    steps.push(("model request (fake API)", model));
    let reply = first(channels, model.unwrap_or(t0), &["reply for turn"]);
    steps.push(("reply tool call (channel)", reply));
    steps.push(("last byte (client)", Some(epoch(done))));
    println!(
        "\ntimeline of one {label} turn (session {key}; ms after the request was sent; log times have 1 ms resolution):\n\n| step | at | since previous |\n|---|---|---|"
    );
    let mut previous = 0.0;
    for (name, at) in steps {
        match at {
            Some(at) => {
                let ms_at = (at - t0) * 1000.0;
                println!("| {name} | {ms_at:.0} ms | +{:.0} ms |", ms_at - previous);
                previous = ms_at;
            }
            None => println!("| {name} | not found | |"),
        }
    }
}

// ---------------------------------------------------------------------- small helpers

fn pct(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

fn claude_version(claude: &str) -> String {
    let dir = TempDir::new("b5-version");
    Command::new(claude)
        .arg("--version")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("HOME", dir.path())
        .env("CLAUDE_CONFIG_DIR", dir.path().join(".claude"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("version unknown: {e}"))
}
