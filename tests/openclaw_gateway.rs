//! The real OpenClaw gateway (2026.9.6) in front of the bridge (simulated Claude behind it):
//! `openclaw agent --local` turns in two sessions, checked for what a user would notice —
//! the replies come back through OpenClaw, each OpenClaw session is one Claude session, a
//! second turn goes to the same Claude process, and a turn slower than the provider's
//! `timeoutSeconds` survives thanks to the bridge's heartbeats.
//!
//! Needs `SYNTHESIS_OPENCLAW_NODE` and `SYNTHESIS_OPENCLAW_CLI` (`.ci/run` sets them from
//! `scripts/install-openclaw.sh`); without them the test says SKIPPED on stderr and passes.

mod support;

use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;
use support::*;

const API_KEY: &str = "sk-bridge-test-123";

fn tools() -> Option<(String, String)> {
    let node = std::env::var("SYNTHESIS_OPENCLAW_NODE")
        .ok()
        .filter(|p| std::path::Path::new(p).is_file());
    let cli = std::env::var("SYNTHESIS_OPENCLAW_CLI")
        .ok()
        .filter(|p| std::path::Path::new(p).is_file());
    match (node, cli) {
        (Some(node), Some(cli)) => Some((node, cli)),
        _ => {
            eprintln!(
                "SKIPPED: OpenClaw not installed (run scripts/install-openclaw.sh and set SYNTHESIS_OPENCLAW_NODE/CLI)"
            );
            None
        }
    }
}

struct Gateway {
    node: String,
    cli: String,
    dir: TempDir,
}

impl Gateway {
    fn new(node: String, cli: String, bridge: &Bridge, timeout_seconds: u64) -> Gateway {
        Self::with_tools(node, cli, bridge, timeout_seconds, false)
    }

    /// `supports_tools`: OpenClaw sends its tools (docs/OPENCLAW.md "OpenClaw's tools").
    fn with_tools(
        node: String,
        cli: String,
        bridge: &Bridge,
        timeout_seconds: u64,
        supports_tools: bool,
    ) -> Gateway {
        let dir = TempDir::new("openclaw");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let config = json!({
            "models": {"mode": "merge", "providers": {"bridge": {
                "baseUrl": format!("http://{}/v1", bridge.http), "apiKey": API_KEY, "api": "openai-completions",
                "timeoutSeconds": timeout_seconds,
                "models": [{"id": "claude-code", "name": "Claude Code (bridge)", "reasoning": false,
                    "input": ["text"], "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                    "contextWindow": 200000, "maxTokens": 32000,
                    "compat": {"sendSessionAffinityHeaders": true, "supportsPromptCacheKey": true,
                               "requiresStringContent": true, "supportsTools": supports_tools}}]}}},
            "agents": {"defaults": {"model": {"primary": "bridge/claude-code"}}},
            "session": {"dmScope": "per-channel-peer"},
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        Gateway { node, cli, dir }
    }

    /// One `openclaw agent --local` turn; the texts OpenClaw returns.
    fn turn(&self, session: &str, message: &str) -> String {
        let mut child = Command::new(&self.node)
            .arg(&self.cli)
            .args([
                "agent",
                "--local",
                "--agent",
                "main",
                "--session-id",
                session,
                "--message",
                message,
                "--json",
            ])
            .env("HOME", self.dir.path().join("home"))
            .env("OPENCLAW_STATE_DIR", self.dir.path().join("state"))
            .env("OPENCLAW_CONFIG_PATH", self.dir.path().join("config.json"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run openclaw");
        // Bounded: a stuck gateway is killed, and the test fails with what it printed.
        let finished = wait_until(Duration::from_secs(240), || child.try_wait().ok().flatten());
        if finished.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| {
            panic!(
                "openclaw printed no JSON (exit {:?}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        parsed["payloads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn sessions(bridge: &Bridge) -> Vec<Value> {
    let auth = format!("Bearer {API_KEY}");
    let list = request(
        bridge.http,
        "GET",
        "/v1/sessions",
        &[("Authorization", &auth)],
        "",
    )
    .json();
    list["data"].as_array().cloned().unwrap_or_default()
}

#[test]
fn openclaw_turns_reach_their_own_claude_sessions_and_a_slow_turn_survives_on_heartbeats() {
    let Some((node, cli)) = tools() else { return };
    let bridge = Bridge::demo()
        .arg("--api-key", API_KEY)
        .arg("--heartbeat-interval", "1s")
        .start();
    let gateway = Gateway::new(node, cli, &bridge, 5);

    let first = gateway.turn("s1", "first nonce-a1");
    assert!(
        first.contains("first nonce-a1"),
        "{first}\nlog:\n{}",
        bridge.log()
    );
    let pid_before = sessions(&bridge)[0]["pid"].clone();
    let second = gateway.turn("s1", "second nonce-a2");
    assert!(second.contains("second nonce-a2"), "{second}");
    let after = sessions(&bridge);
    assert_eq!(
        after.len(),
        1,
        "both turns of s1 went to one session: {after:?}"
    );
    assert_eq!(
        after[0]["pid"], pid_before,
        "the second turn went to the same Claude process"
    );
    assert_eq!(after[0]["turns"], 2);

    let other = gateway.turn("s2", "other nonce-b1");
    assert!(other.contains("other nonce-b1"), "{other}");
    // Longer than the provider's timeoutSeconds (5 s): the empty-content heartbeats keep
    // OpenClaw's idle watchdog quiet.
    let slow = gateway.turn("s2", "slow nonce-b2 [sim:delay_ms=9000]");
    assert!(
        slow.contains("slow nonce-b2"),
        "{slow}\nlog:\n{}",
        bridge.log()
    );
    let all = sessions(&bridge);
    assert_eq!(all.len(), 2, "exactly two Claude sessions: {all:?}");
    let keys: Vec<&str> = all.iter().filter_map(|s| s["key"].as_str()).collect();
    assert_eq!(
        keys,
        ["s1", "s2"],
        "keys come from OpenClaw's session affinity headers"
    );
    assert_eq!(bridge.log().matches("spawned pid").count(), 2);
}

/// Client tools through the real OpenClaw (docs/OPENCLAW.md "OpenClaw's tools"): the bridge
/// exposes one OpenClaw tool (`client_tools = ls`), the simulated Claude calls it, OpenClaw
/// runs it and sends the result back, and the reply OpenClaw returns quotes that result.
#[test]
fn openclaw_runs_the_tool_claude_calls_and_claude_gets_its_result() {
    let Some((node, cli)) = tools() else { return };
    let bridge = Bridge::demo()
        .arg("--api-key", API_KEY)
        .arg("--client-tools", "ls")
        .start();
    let gateway = Gateway::with_tools(node, cli, &bridge, 60, true);
    let reply = gateway.turn("t1", "list files nonce-t1 [sim:tool=ls]");
    assert!(
        reply.contains("nonce-t1") && reply.contains("[tool ls "),
        "{reply}\nlog:\n{}",
        bridge.log()
    );
    assert!(
        bridge.log().contains("resumed by"),
        "the tool result came back into the same Claude turn:\n{}",
        bridge.log()
    );
    eprintln!("OpenClaw's reply with the tool result: {reply}");
}

#[test]
fn a_permission_question_is_answered_through_openclaw() {
    let Some((node, cli)) = tools() else { return };
    let bridge = Bridge::demo()
        .arg("--api-key", API_KEY)
        .arg("--heartbeat-interval", "1s")
        .start();
    let gateway = Gateway::new(node, cli, &bridge, 30);
    let question = gateway.turn("perm", "run the tests [sim:ask=Bash]");
    assert!(
        question.contains("Claude wants to run **Bash**"),
        "{question}\nlog:\n{}",
        bridge.log()
    );
    let id = question
        .split("`yes ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no id in {question}"))
        .to_string();
    assert_eq!(sessions(&bridge)[0]["state"], "suspended");
    let rest = gateway.turn("perm", &format!("yes {id}"));
    assert!(
        rest.contains("(Bash: allowed)"),
        "{rest}\nlog:\n{}",
        bridge.log()
    );
    let all = sessions(&bridge);
    assert_eq!(
        all.len(),
        1,
        "the answer continued the same session: {all:?}"
    );
    assert_eq!(bridge.log().matches("spawned pid").count(), 1);
}
