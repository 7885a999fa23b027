//! The bridge in front of the REAL Claude Code binary, fully offline: a fake Anthropic API
//! on loopback (tests/support/fake_anthropic.rs) and an isolated, pre-seeded config dir
//! (docs/CLAUDE_CODE.md §9.7). Two streamed turns, then a bridge restart and a third turn that must
//! resume the same Claude conversation.
//!
//! Needs `SYNTHESIS_REAL_CLAUDE=<path to claude>` (`.ci/run` sets it from
//! `scripts/install-claude.sh`); without it the test says SKIPPED on stderr and passes.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::fake_anthropic::FakeAnthropic;
use support::*;

fn real_claude() -> Option<String> {
    match std::env::var("SYNTHESIS_REAL_CLAUDE") {
        Ok(path) if Path::new(&path).is_file() => Some(path),
        _ => {
            eprintln!(
                "SKIPPED: real Claude Code not installed (run scripts/install-claude.sh and set SYNTHESIS_REAL_CLAUDE)"
            );
            None
        }
    }
}

/// What every test here starts from: the real claude, a fake Anthropic API, a marker for its
/// processes and a test dir with a seeded Claude config. None: Claude Code is not installed.
struct Offline {
    claude: String,
    api: FakeAnthropic,
    marker: String,
    dir: TempDir,
}

fn offline(tag: &str) -> Option<Offline> {
    let claude = real_claude()?;
    let dir = TempDir::new(tag);
    seed_claude_config(&dir, FAKE_KEY);
    Some(Offline {
        claude,
        api: FakeAnthropic::start(),
        marker: uuid::Uuid::new_v4().simple().to_string(),
        dir,
    })
}

/// A non-streamed chat turn of `messages`: (the session key answered, the reply text).
fn converse(bridge: &Bridge, messages: &Value) -> (String, String) {
    let r = post_chat(bridge, &[], &chat(messages.clone()));
    assert_eq!(r.status, 200, "{}\nlog:\n{}", r.text(), bridge.log());
    (session_of(&r), content(&r))
}

fn start(claude: &str, api: &FakeAnthropic, dir: TempDir, marker: &str) -> Bridge {
    start_with(claude, api, dir, marker, &[])
}

/// `start` with extra environment for the bridge (and so for claude and its channel), and
/// bridge flags given as `("--flag", "value")` (`("--flag", "")` for a flag alone).
fn start_with(
    claude: &str,
    api: &FakeAnthropic,
    dir: TempDir,
    marker: &str,
    settings: &[(&str, &str)],
) -> Bridge {
    let workspace = dir.path().join("workspace").canonicalize().unwrap();
    let builder = settings
        .iter()
        .fold(Bridge::real(claude).dir(dir), |b, (k, v)| {
            if k.starts_with("--") && v.is_empty() {
                b.flag(k)
            } else if k.starts_with("--") {
                b.arg(k, v)
            } else {
                b.env(k, v)
            }
        });
    builder
        .marker(marker)
        .arg("--workspace", workspace.to_str().unwrap())
        .arg("--ready-timeout", "60s")
        .arg("--heartbeat-interval", "5s")
        .env("ANTHROPIC_BASE_URL", &format!("http://{}", api.addr))
        .env("ANTHROPIC_API_KEY", FAKE_KEY)
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("CLAUDE_CODE_GB_DISK_CACHE_WHEN_TELEMETRY_OFF", "1")
        .start()
}

fn all_text(request: &Value) -> String {
    request["messages"].to_string()
}

#[test]
fn two_turns_then_a_restart_resumes_the_same_conversation() {
    let Some(Offline {
        claude,
        api,
        marker,
        dir,
    }) = offline("real-claude")
    else {
        return;
    };
    let mut bridge = start(&claude, &api, dir, &marker);

    let (_, events) = stream_chat(bridge.http, "real", "first question alpha");
    assert_eq!(
        streamed_text(&events),
        "reply to: first question alpha",
        "log:\n{}",
        bridge.log()
    );
    let (_, events) = stream_chat(bridge.http, "real", "second question beta");
    assert_eq!(
        streamed_text(&events),
        "reply to: second question beta",
        "log:\n{}",
        bridge.log()
    );
    assert_eq!(
        bridge.log().matches("spawned pid").count(),
        1,
        "both turns went to one claude"
    );
    // Issue 16: the real Claude reports turn ends through the `http` Stop hook (no process
    // per turn); the second turn went out during the first one's closing call, so the one
    // report may come after the second reply.
    assert!(bridge.log().contains("Stop hook: http"));
    assert!(
        bridge.wait_for_log(
            "Stop hook over HTTP: session \"real\" ended turn Some(",
            Duration::from_secs(10)
        ),
        "log:\n{}",
        bridge.log()
    );

    assert_eq!(bridge.stop(), Some(0));
    assert!(
        wait_until(Duration::from_secs(10), || bridge
            .descendants()
            .is_empty()
            .then_some(()))
        .is_some()
    );
    let uuid = {
        let map: Value = serde_json::from_slice(
            &std::fs::read(bridge.dir.path().join("state/sessions.json")).unwrap(),
        )
        .unwrap();
        map["sessions"]["real"]["claude_session"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let dir = std::mem::replace(&mut bridge.dir, TempDir::new("unused"));
    let before = api.requests().len();
    let second = start(&claude, &api, dir, &marker);
    let (_, events) = stream_chat(second.http, "real", "third question gamma");
    assert_eq!(
        streamed_text(&events),
        "reply to: third question gamma",
        "log:\n{}",
        second.log()
    );
    assert!(
        second.log().contains(&format!("--resume {uuid}")),
        "log:\n{}",
        second.log()
    );
    // The model request for the third turn carries the earlier turns: Claude resumed.
    let third = api.requests()[before..]
        .iter()
        .find(|r| all_text(r).contains("third question gamma"))
        .cloned()
        .expect("the fake API saw the third turn");
    let history = all_text(&third);
    assert!(
        history.contains("first question alpha") && history.contains("second question beta"),
        "{history}"
    );
}

/// `pipeline_turns` with the real Claude, and a canary for why it is off by default.
#[test]
fn pipelined_turns_get_their_own_answers_and_claude_marks_a_folded_one_as_not_the_users() {
    // Each model call takes 200 ms, so every next turn arrives while Claude is still in the
    // previous turn's closing call: Claude folds it into that call (or, when the call was
    // already sent, runs it right after). Either way each answer must be its own turn's.
    let Some(Offline {
        claude,
        api,
        marker,
        dir,
    }) = offline("real-claude-pipelined")
    else {
        return;
    };
    api.set_delay(Duration::from_millis(200));
    let mut bridge = start_with(
        &claude,
        &api,
        dir,
        &marker,
        &[("SYNTHESIS_PIPELINE_TURNS", "true")],
    );
    for i in 0..6 {
        let question = format!("quick question {i}");
        let (_, events) = stream_chat(bridge.http, "pipelined", &question);
        assert_eq!(
            streamed_text(&events),
            format!("reply to: {question}"),
            "log:\n{}",
            bridge.log()
        );
    }
    let log = bridge.log();
    assert_eq!(log.matches("spawned pid").count(), 1, "one claude: {log}");
    assert!(
        log.contains("the next turn goes out while claude finishes"),
        "log:\n{log}"
    );
    assert_eq!(bridge.stop(), Some(0));
    // The canary (docs/CLAUDE_CODE.md §9.5): Claude 2.1.331 hands a folded channel message to
    // the model as a system message saying it is not from the user and not to act on its
    // instructions. If this fails because that framing is gone, pipelining no longer changes
    // what the model makes of a message: reconsider `pipeline_turns` on by default.
    let folded: Vec<String> = api
        .requests()
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["role"] == "system")
        .map(|m| m["content"].to_string())
        .filter(|c| c.contains("while you were working") && c.contains("quick question"))
        .collect();
    eprintln!("{} folded channel messages seen", folded.len());
    for message in &folded {
        assert!(
            message.contains("NOT from your user") && message.contains("untrusted"),
            "Claude Code no longer marks a folded channel message as untrusted: reconsider pipeline_turns on by default (docs/SPEED.md §4). {message}"
        );
    }
}

/// `standby_resume`: a conversation whose process was stopped (as an idle kill stops it)
/// comes back into the ready standby, which the bridge switches to it with `/resume`; Claude
/// then answers with the conversation's history.
#[test]
fn a_returning_conversation_resumes_in_a_standby_with_its_history() {
    let Some(Offline {
        claude,
        api,
        marker,
        dir,
    }) = offline("real-claude-standby-resume")
    else {
        return;
    };
    let bridge = start_with(
        &claude,
        &api,
        dir,
        &marker,
        &[("--standby", "1"), ("--max-processes", "4")],
    );
    let ready_standby = || {
        wait_until(Duration::from_secs(60), || {
            let list = request(bridge.http, "GET", "/v1/sessions", &[], "").json();
            list["data"]
                .as_array()
                .and_then(|rows| {
                    rows.iter()
                        .find(|r| r["standby"] == true && r["state"] == "ready")
                })
                .and_then(|r| r["pid"].as_u64())
        })
        .expect("a ready standby")
    };
    ready_standby();
    let (_, events) = stream_chat(bridge.http, "back", "first question alpha");
    assert_eq!(streamed_text(&events), "reply to: first question alpha");
    let stopped = wait_until(Duration::from_secs(30), || {
        (request(bridge.http, "DELETE", "/v1/sessions/back", &[], "").status == 202).then_some(())
    });
    assert!(stopped.is_some(), "log:\n{}", bridge.log());
    let standby_pid = ready_standby();
    // The stopped worker retires before the conversation comes back.
    wait_until(Duration::from_secs(10), || {
        let list = request(bridge.http, "GET", "/v1/sessions", &[], "").json();
        let row = list["data"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"] == "back").cloned());
        row.is_none_or(|r| r["pid"].is_null()).then_some(())
    })
    .expect("back's process stopped");
    let before = api.requests().len();
    let (_, events) = stream_chat(bridge.http, "back", "second question beta");
    assert_eq!(
        streamed_text(&events),
        "reply to: second question beta",
        "log:\n{}",
        bridge.log()
    );
    let log = bridge.log();
    assert!(
        log.contains("claude resumed the conversation"),
        "log:\n{log}"
    );
    let list = request(bridge.http, "GET", "/v1/sessions", &[], "").json();
    let row = list["data"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == "back").cloned())
        .expect("back is live");
    assert_eq!(
        row["pid"].as_u64(),
        Some(standby_pid),
        "served by the standby"
    );
    let seen = api.requests()[before..]
        .iter()
        .find(|r| all_text(r).contains("second question beta"))
        .cloned()
        .expect("the fake API saw the second turn");
    assert!(
        all_text(&seen).contains("first question alpha"),
        "the resumed conversation carries the first turn"
    );
}

#[test]
fn doctor_passes_and_its_probe_gets_a_reply_from_the_real_claude() {
    let Some(Offline {
        claude, api, dir, ..
    }) = offline("real-doctor")
    else {
        return;
    };
    let workspace = dir.path().join("workspace").canonicalize().unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "doctor",
            "--probe",
            "--port",
            "0",
            "--claude-bin",
            &claude,
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .arg("--workspace")
        .arg(&workspace)
        .env("HOME", dir.path().join("home"))
        .env("CLAUDE_CONFIG_DIR", dir.path().join("home/.claude"))
        .env("ANTHROPIC_BASE_URL", format!("http://{}", api.addr))
        .env("ANTHROPIC_API_KEY", FAKE_KEY)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("CLAUDE_CODE_GB_DISK_CACHE_WHEN_TELEMETRY_OFF", "1")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains("PASS  claude: ") && report.contains("2.1.331"),
        "{report}"
    );
    assert!(
        report.contains("PASS  probe: one turn answered: \"reply to: This is a connectivity check"),
        "{report}"
    );
}

/// Client tools (docs/CLIENT_TOOLS.md) on the real Claude Code: the fake API makes Claude call
/// the client's tool; the response ends with `tool_calls`; the client's result goes back into
/// the same Claude turn and the reply quotes it. A second turn with another tool set shows
/// that Claude re-listed the channel's tools (`notifications/tools/list_changed`).
#[test]
fn the_real_claude_calls_a_client_tool_and_uses_its_result() {
    let Some(Offline {
        claude,
        api,
        marker,
        dir,
    }) = offline("real-claude-tools")
    else {
        return;
    };
    let channel_log = dir.path().join("channel.log");
    let channel_log = channel_log.to_str().unwrap().to_string();
    let bridge = start_with(
        &claude,
        &api,
        dir,
        &marker,
        &[("SYNTHESIS_CHANNEL_LOG", &channel_log)],
    );
    let tool = |name: &str| {
        serde_json::json!({"type": "function", "function": {"name": name, "description": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    };
    let user =
        serde_json::json!({"role": "user", "content": "weather please [fake:tool=get_weather]"});
    let first = serde_json::json!({"model": "m", "stream": true, "tools": [tool("get_weather")], "messages": [user]});
    let (_, events) = stream_body(bridge.http, "tools", &first.to_string());
    let calls: Vec<Value> = events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls").cloned())
        .flat_map(|c| c.as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "{events:?}\nAPI requests' tools: {:?}\nlog:\n{}\nchannel log:\n{}",
        api.requests()
            .iter()
            .map(|r| r["tools"].as_array().map(|t| t
                .iter()
                .filter_map(|t| t["name"].as_str())
                .filter(|n| n.starts_with("mcp__"))
                .map(String::from)
                .collect::<Vec<_>>()))
            .collect::<Vec<_>>(),
        bridge.log(),
        std::fs::read_to_string(bridge.dir.path().join("channel.log")).unwrap_or_default()
    );
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["city"], "Oslo");
    let offered: Vec<String> = api.requests()[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect();
    assert!(
        offered.contains(&"mcp__synthesis__client_get_weather".to_string()),
        "{offered:?}"
    );

    let answer = serde_json::json!({"model": "m", "stream": true, "tools": [tool("get_weather")], "messages": [
        user,
        {"role": "assistant", "content": null, "tool_calls": [{"id": calls[0]["id"], "type": "function", "function": calls[0]["function"]}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny and 21 C"},
    ]});
    let (_, events) = stream_body(bridge.http, "tools", &answer.to_string());
    assert_eq!(
        streamed_text(&events),
        "tool result: sunny and 21 C",
        "log:\n{}",
        bridge.log()
    );

    // Another tool set: the next model request offers the new tool and not the old one.
    let before = api.requests().len();
    let second = serde_json::json!({"model": "m", "stream": true, "tools": [tool("get_time")],
        "messages": [{"role": "user", "content": "and now?"}]});
    let (_, events) = stream_body(bridge.http, "tools", &second.to_string());
    assert_eq!(streamed_text(&events), "reply to: and now?");
    let request = api.requests()[before..]
        .iter()
        .find(|r| all_text(r).contains("and now?"))
        .cloned()
        .expect("the fake API saw the turn");
    let offered: Vec<String> = request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect();
    assert!(
        offered.contains(&"mcp__synthesis__client_get_time".to_string()),
        "{offered:?}"
    );
    // Claude 2.1.331 keeps offering a tool the server no longer lists (seen here: the turn
    // after the change still had client_get_weather); calling it gets "unknown tool".
    eprintln!("client tools offered after the change: {offered:?}");
    let third = serde_json::json!({"model": "m", "stream": true, "tools": [tool("get_time")],
        "messages": [{"role": "user", "content": "third"}]});
    let before = api.requests().len();
    let _ = stream_body(bridge.http, "tools", &third.to_string());
    let request = api.requests()[before..]
        .iter()
        .find(|r| all_text(r).contains("third"))
        .cloned()
        .unwrap();
    eprintln!(
        "one turn later: {:?}",
        request["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str())
            .filter(|n| n.starts_with("mcp__"))
            .collect::<Vec<_>>()
    );
}

/// Two client tool calls in one model response (parallel tool uses) reach the client in one
/// response, and both results go back into the same Claude turn.
#[test]
fn parallel_client_tool_calls_of_the_real_claude_come_back_together() {
    let Some(Offline {
        claude,
        api,
        marker,
        dir,
    }) = offline("real-claude-parallel")
    else {
        return;
    };
    let bridge = start(&claude, &api, dir, &marker);
    let tool = |name: &str| {
        serde_json::json!({"type": "function", "function": {"name": name,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    };
    let tools = serde_json::json!([tool("get_weather"), tool("get_time")]);
    let user =
        serde_json::json!({"role": "user", "content": "both [fake:tool=get_weather+get_time]"});
    let first = serde_json::json!({"model": "m", "tools": tools, "messages": [user]});
    let response = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[
            ("X-Session-Key", "par"),
            ("Content-Type", "application/json"),
        ],
        &first.to_string(),
    );
    let body = response.json();
    let calls = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = calls
        .iter()
        .filter_map(|c| c["function"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["get_weather", "get_time"],
        "{body}\nlog:\n{}",
        bridge.log()
    );
    let answer = serde_json::json!({"model": "m", "tools": tools, "messages": [
        user,
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "rain"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "noon"},
    ]});
    let response = request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &[
            ("X-Session-Key", "par"),
            ("Content-Type", "application/json"),
        ],
        &answer.to_string(),
    );
    let body = response.json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "tool result: rain | noon",
        "{body}\nlog:\n{}",
        bridge.log()
    );
}

/// The short id of the question a stream ended with (its `synthesis_pending` field).
fn question_id(events: &[(std::time::Instant, String)]) -> Option<String> {
    events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v["synthesis_pending"][0]["id"].as_str().map(String::from))
}

#[test]
fn a_bash_permission_question_reaches_the_chat_yes_runs_it_and_no_does_not() {
    // The seed caches tengu_harbor_permissions too: Claude 2.1.331 relays permission prompts
    // to a channel only with it (docs/ARCHITECTURE.md "Permission relay").
    let Some(Offline {
        claude,
        api,
        marker,
        dir,
    }) = offline("real-permission")
    else {
        return;
    };
    let workspace = dir.path().join("workspace").canonicalize().unwrap();
    let channel_log = dir.path().join("channel.log");
    let bridge = start_with(
        &claude,
        &api,
        dir,
        &marker,
        &[
            ("--turn-timeout", "25s"),
            ("SYNTHESIS_CHANNEL_LOG", channel_log.to_str().unwrap()),
        ],
    );
    let diagnose = || {
        format!(
            "bridge log:\n{}\nchannel log:\n{}\nmodel requests: {}; the last one's last messages:\n{}",
            bridge.log(),
            std::fs::read_to_string(&channel_log).unwrap_or_default(),
            api.requests().len(),
            api.requests()
                .last()
                .map(|r| {
                    let m = r["messages"].as_array().cloned().unwrap_or_default();
                    serde_json::to_string(&m[m.len().saturating_sub(2)..]).unwrap()
                })
                .unwrap_or_default()
        )
    };

    // Allowed: the question ends the first response; `yes <id>` gets the rest of the turn.
    let (response, events) = stream_chat(
        bridge.http,
        "perm-yes",
        "RUN_BASH: echo relayed > proof.txt",
    );
    assert_eq!(response.status, 200);
    let question = streamed_text(&events);
    assert!(
        question.contains("Claude wants to run **Bash**") && question.contains("proof.txt"),
        "{question}\n{}",
        diagnose()
    );
    let id = question_id(&events).expect("the question carries its id");
    assert!(question.contains(&format!("yes {id}")), "{question}");
    assert!(
        !workspace.join("proof.txt").exists(),
        "not before the answer"
    );
    let answered = std::time::Instant::now();
    let (response, events) = stream_chat(bridge.http, "perm-yes", &format!("yes {id}"));
    eprintln!(
        "yes {id}: the rest of the turn took {:?}",
        answered.elapsed()
    );
    assert_eq!(response.status, 200);
    let rest = streamed_text(&events);
    assert!(
        rest.starts_with("bash result:"),
        "{rest}\nlog:\n{}",
        bridge.log()
    );
    assert_eq!(
        std::fs::read_to_string(workspace.join("proof.txt")).unwrap_or_default(),
        "relayed\n"
    );

    // Denied: the command never runs; Claude goes on with the turn and answers.
    let (_, events) = stream_chat(
        bridge.http,
        "perm-no",
        "RUN_BASH: echo relayed > denied.txt",
    );
    let id = question_id(&events).unwrap_or_else(|| {
        panic!(
            "no question: {}\nlog:\n{}",
            streamed_text(&events),
            bridge.log()
        )
    });
    let (response, events) = stream_chat(bridge.http, "perm-no", &format!("no {id}"));
    assert_eq!(response.status, 200);
    let rest = streamed_text(&events);
    assert!(
        rest.starts_with("bash result:"),
        "{rest}\nlog:\n{}",
        bridge.log()
    );
    assert!(!workspace.join("denied.txt").exists(), "{rest}");
    eprintln!("denied tool result as Claude reported it: {rest}");
    let log = std::fs::read_to_string(&channel_log).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("permission") || l.contains("Permission"))
    {
        eprintln!("channel: {line}");
    }
}

#[test]
fn without_the_relay_flag_a_permission_prompt_fails_the_turn_instead_of_stalling() {
    let Some(Offline {
        claude,
        api,
        marker,
        dir,
    }) = offline("real-unrelayed")
    else {
        return;
    };
    // Without tengu_harbor_permissions Claude keeps the prompt on its terminal.
    let state_file = dir.path().join("home/.claude/.claude.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["cachedGrowthBookFeatures"]["tengu_harbor_permissions"] = false.into();
    std::fs::write(&state_file, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let workspace = dir.path().join("workspace").canonicalize().unwrap();
    let bridge = start(&claude, &api, dir, &marker);
    let started = std::time::Instant::now();
    let (response, events) = stream_chat(
        bridge.http,
        "unrelayed",
        "RUN_BASH: echo relayed > stalled.txt",
    );
    let waited = started.elapsed();
    assert_eq!(response.status, 200);
    let error = stream_error(&events).unwrap_or_else(|| {
        panic!(
            "no error: {}\nlog:\n{}",
            streamed_text(&events),
            bridge.log()
        )
    });
    assert_eq!(error["code"], "permission_relay_off", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("tengu_harbor_permissions"),
        "{error}"
    );
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    assert!(!workspace.join("stalled.txt").exists());
    eprintln!("unrelayed prompt failed the turn after {waited:?}");
}

/// Issue #15: a stateless client (no session id) edits its second message. The bridge forks:
/// a new Claude conversation whose model request holds exactly the branch point's context
/// (the first exchange) and the edited message, never the abandoned second and third turns.
#[test]
fn an_edited_turn_forks_with_exactly_the_context_of_its_branch_point() {
    let Some(Offline {
        claude,
        api,
        marker,
        dir,
    }) = offline("real-claude-fork")
    else {
        return;
    };
    let bridge = start(&claude, &api, dir, &marker);
    let post = |messages: &Value| converse(&bridge, messages);
    let mut messages = vec![];
    let mut keys = vec![];
    for text in ["apple one", "banana two", "cherry three"] {
        messages.push(serde_json::json!({"role": "user", "content": text}));
        let (key, reply) = post(&Value::Array(messages.clone()));
        assert_eq!(reply, format!("reply to: {text}"));
        messages.push(serde_json::json!({"role": "assistant", "content": reply}));
        keys.push(key);
    }
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one conversation: {keys:?}"
    );
    let before = api.requests().len();
    let edited =
        serde_json::json!([messages[0], messages[1], {"role": "user", "content": "banana EDITED"}]);
    let (fork_key, reply) = post(&edited);
    assert_ne!(fork_key, keys[0], "the edit forks");
    assert!(reply.ends_with("banana EDITED"), "{reply}");
    let seen = api.requests()[before..]
        .iter()
        .find(|r| all_text(r).contains("banana EDITED"))
        .cloned()
        .expect("the fake API saw the edited turn");
    let context = all_text(&seen);
    assert!(
        context.contains("apple one") && context.contains("reply to: apple one"),
        "the branch point's context: {context}"
    );
    assert!(
        !context.contains("banana two") && !context.contains("cherry three"),
        "nothing after the branch point: {context}"
    );
}

/// Issue #15 evidence (docs/HTTP_API.md §6.2): with `fork_with_claude_flags` the bridge starts
/// the fork's interactive claude with `--resume <parent> --fork-session --session-id <new>
/// --resume-session-at <the first turn's last message>`. Claude Code 2.1.331 honours
/// `--fork-session` (the first exchange arrives as real user/assistant messages, no restored
/// text) but ignores `--resume-session-at` outside `--print`: the abandoned second and third
/// turns are in the fork's model request too. That is why forks keep the restored history
/// by default. If this test fails because those turns are gone, Claude now honours the flag:
/// make `fork_with_claude_flags` the default and assert exact context here.
#[test]
fn interactive_claude_forks_with_the_flags_but_ignores_resume_session_at() {
    let Some(Offline {
        claude,
        api,
        marker,
        dir,
    }) = offline("real-claude-fork-flags-interactive")
    else {
        return;
    };
    let bridge = start_with(
        &claude,
        &api,
        dir,
        &marker,
        &[("--fork-with-claude-flags", "")],
    );
    let post = |messages: &Value| converse(&bridge, messages);
    let mut messages = vec![];
    for text in ["apple one", "banana two", "cherry three"] {
        messages.push(serde_json::json!({"role": "user", "content": text}));
        let (_, reply) = post(&Value::Array(messages.clone()));
        messages.push(serde_json::json!({"role": "assistant", "content": reply}));
    }
    let before = api.requests().len();
    let edited =
        serde_json::json!([messages[0], messages[1], {"role": "user", "content": "banana EDITED"}]);
    let (_, reply) = post(&edited);
    assert_eq!(
        reply, "reply to: banana EDITED",
        "no restored history in the turn"
    );
    let log = bridge.log();
    assert!(
        log.contains("--fork-session --resume-session-at") && log.contains("(the end of turn-1)"),
        "{log}"
    );
    let seen = api.requests()[before..]
        .iter()
        .find(|r| all_text(r).contains("banana EDITED"))
        .cloned()
        .expect("the fake API saw the edited turn");
    let context = all_text(&seen);
    let messages = seen["messages"].as_array().unwrap();
    let position = |needle: &str, role: &str| {
        messages
            .iter()
            .position(|m| m["role"] == role && m["content"].to_string().contains(needle))
    };
    // --fork-session: the parent's turns are real messages of the copy.
    let first = position("apple one", "user").expect("the first turn as a user message");
    let replied = position("reply to: apple one", "assistant").expect("its reply");
    let edited = position("banana EDITED", "user").expect("the edited turn");
    assert!(first < replied && replied < edited, "{context}");
    assert!(!context.contains("restored by the bridge"), "{context}");
    // --resume-session-at is ignored: the copy is the whole conversation.
    assert!(
        position("banana two", "user").is_some() && position("cherry three", "user").is_some(),
        "Claude Code now cuts the fork at --resume-session-at: make fork_with_claude_flags the default (see this test's comment). {context}"
    );
    eprintln!(
        "fork request of the interactive claude: {} messages, the abandoned turns included",
        messages.len()
    );
}

/// A Claude Code fact the bridge may build on later (docs/HTTP_API.md §6.2): `--resume
/// <uuid> --fork-session --resume-session-at <assistant message uuid>` starts a copy of the
/// conversation cut at that message. Checked in `--print` mode: the model request of the
/// forked turn holds the first exchange and the new message, not the later turns. (The
/// bridge forks with the restored history instead; see the test above.)
#[test]
fn claude_code_can_fork_a_conversation_at_an_earlier_message() {
    let Some(Offline {
        claude, api, dir, ..
    }) = offline("real-claude-fork-flags")
    else {
        return;
    };
    let workspace = dir.path().join("workspace").canonicalize().unwrap();
    let home = dir.path().join("home");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&claude)
            .args(args)
            .current_dir(&workspace)
            .env("HOME", &home)
            .env("CLAUDE_CONFIG_DIR", home.join(".claude"))
            .env("ANTHROPIC_BASE_URL", format!("http://{}", api.addr))
            .env("ANTHROPIC_API_KEY", FAKE_KEY)
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let session = uuid::Uuid::new_v4().to_string();
    run(&["-p", "apple one", "--session-id", &session]);
    run(&["-p", "banana two", "--resume", &session]);
    run(&["-p", "cherry three", "--resume", &session]);
    let transcript = std::fs::read_dir(home.join(".claude/projects"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join(format!("{session}.jsonl")))
        .find(|p| p.exists())
        .expect("the transcript");
    let first_reply = std::fs::read_to_string(transcript)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "assistant")
        .and_then(|v| v["uuid"].as_str().map(String::from))
        .expect("an assistant message");
    let before = api.requests().len();
    run(&[
        "-p",
        "banana EDITED",
        "--resume",
        &session,
        "--fork-session",
        "--resume-session-at",
        &first_reply,
    ]);
    let forked: Vec<String> = api.requests()[before..].iter().map(all_text).collect();
    assert!(
        forked
            .iter()
            .any(|t| t.contains("apple one") && t.contains("banana EDITED")),
        "{forked:?}"
    );
    assert!(
        forked
            .iter()
            .all(|t| !t.contains("banana two") && !t.contains("cherry three")),
        "{forked:?}"
    );
}
