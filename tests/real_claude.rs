//! The bridge in front of the REAL Claude Code binary, fully offline: a fake Anthropic API
//! on loopback (tests/support/fake_anthropic.rs) and an isolated, pre-seeded config dir
//! (docs/ARCHITECTURE.md §9.7). Two streamed turns, then a bridge restart and a third turn that must
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

fn start(claude: &str, api: &FakeAnthropic, dir: TempDir, marker: &str) -> Bridge {
    let workspace = dir.path().join("workspace").canonicalize().unwrap();
    Bridge::real(claude)
        .dir(dir)
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
    let Some(claude) = real_claude() else { return };
    let api = FakeAnthropic::start();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let dir = TempDir::new("real-claude");
    seed_claude_config(&dir, FAKE_KEY);
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
    // per turn), and the next turn waited for that report.
    let log = bridge.log();
    assert!(log.contains("Stop hook: http"), "log:\n{log}");
    assert!(
        log.contains("the previous turn reported its end"),
        "log:\n{log}"
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

#[test]
fn doctor_passes_and_its_probe_gets_a_reply_from_the_real_claude() {
    let Some(claude) = real_claude() else { return };
    let api = FakeAnthropic::start();
    let dir = TempDir::new("real-doctor");
    seed_claude_config(&dir, FAKE_KEY);
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
