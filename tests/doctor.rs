//! `synthesis-bridge doctor`: what it reports on a machine without Claude Code set up, on one
//! that is (a pre-seeded config dir), for a too-old claude, and with `--probe`.

mod support;

use std::process::Command;
use support::*;

fn doctor(dir: &TempDir, args: &[&str]) -> (i32, String) {
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    let out = Command::new(BIN)
        .arg("doctor")
        .args(["--port", "0", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--workspace")
        .arg(workspace.canonicalize().unwrap())
        .args(args)
        .env("HOME", dir.path().join("home"))
        .env("CLAUDE_CONFIG_DIR", dir.path().join("home/.claude"))
        .env("ANTHROPIC_API_KEY", FAKE_KEY)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn an_unprepared_machine_gets_a_fail_and_a_fix_for_each_missing_step() {
    let dir = TempDir::new("doctor-bare");
    let claude = fake_claude(&dir, "2.1.331");
    let (code, out) = doctor(&dir, &["--claude-bin", &claude]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PASS  claude:"), "{out}");
    for failing in [
        "FAIL  config dir",
        "FAIL  onboarding",
        "FAIL  workspace trust",
        "FAIL  API key",
    ] {
        assert!(out.contains(failing), "{failing} missing in:\n{out}");
    }
    assert!(out.contains("WARN  channels"), "{out}");
    assert!(out.contains("fix: run `claude` once"), "{out}");
}

#[test]
fn a_prepared_machine_passes_every_check() {
    let dir = TempDir::new("doctor-ready");
    seed_claude_config(&dir, FAKE_KEY);
    let claude = fake_claude(&dir, "2.1.331");
    let (code, out) = doctor(&dir, &["--claude-bin", &claude]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("FAIL") && !out.contains("WARN"), "{out}");
    for passing in [
        "claude",
        "config dir",
        "onboarding",
        "workspace trust",
        "API key",
        "channels",
        "HTTP port",
        "state dir",
    ] {
        assert!(
            out.contains(&format!("PASS  {passing}")),
            "{passing} missing in:\n{out}"
        );
    }
}

#[test]
fn versions_outside_the_tested_range_are_flagged() {
    let dir = TempDir::new("doctor-versions");
    seed_claude_config(&dir, FAKE_KEY);
    let (code, out) = doctor(&dir, &["--claude-bin", &fake_claude(&dir, "2.1.50")]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  claude: 2.1.50 (Claude Code) is older than 2.1.80"),
        "{out}"
    );
    let (code, out) = doctor(&dir, &["--claude-bin", &fake_claude(&dir, "9.0.0")]);
    assert_eq!(code, 0, "an untested version is a warning: {out}");
    assert!(out.contains("WARN  claude: 9.0.0"), "{out}");
}

#[test]
fn the_probe_sends_one_turn_through_the_whole_bridge() {
    let dir = TempDir::new("doctor-probe");
    let (code, out) = doctor(
        &dir,
        &["--demo", "--probe", "--channel-hello-delay", "20ms"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS  probe: one turn answered"), "{out}");
}

#[test]
fn doctor_warns_when_claude_will_not_relay_permission_questions() {
    let dir = TempDir::new("doctor-no-relay");
    seed_claude_config(&dir, FAKE_KEY);
    let state_file = dir.path().join("home/.claude/.claude.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["cachedGrowthBookFeatures"]["tengu_harbor_permissions"] = false.into();
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let claude = fake_claude(&dir, "2.1.331");
    let (code, out) = doctor(&dir, &["--claude-bin", &claude]);
    assert_eq!(code, 0, "a warning, not a failure: {out}");
    assert!(out.contains("WARN  permission relay"), "{out}");
    assert!(out.contains("permissions.allow"), "{out}");
    let (_, out) = doctor(
        &dir,
        &["--claude-bin", &claude, "--permission-relay", "off"],
    );
    assert!(!out.contains("permission relay"), "{out}");
}
