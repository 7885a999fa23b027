//! Real OpenAI clients run their tool loops against `serve --demo` (docs/CLIENT_TOOLS.md):
//! the official `openai` Python SDK (non-streamed with `tool_choice="required"`, then
//! streamed) and a LangChain agent with one tool. The simulated Claude calls the tool
//! (`[sim:tool=get_weather]`) and quotes its result, so the final answer shows that the
//! client's result reached the same Claude turn.
//!
//! The packages come from `scripts/install-openai-sdk.sh` (one venv shared with
//! tests/openai_sdk.rs): CI runs it once and sets `SYNTHESIS_OPENAI_PYTHON`; without that
//! variable the test runs the script itself on first use. Without python3, its venv module or
//! the registry, each test says SKIPPED on stderr and passes (the LangChain test also when
//! only LangChain is missing).

mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::*;

/// The venv's python with `openai` importable, or why not.
fn python() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON.get_or_init(install).clone()
}

fn install() -> Result<PathBuf, String> {
    if let Some(python) = std::env::var_os("SYNTHESIS_OPENAI_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(python));
    }
    let script = format!(
        "{}/scripts/install-openai-sdk.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = run_bounded(Command::new("bash").arg(&script), Duration::from_secs(1500))
        .map_err(|e| format!("{script} failed: {e}"))?;
    match out.lines().last().map(str::trim) {
        Some(python) if !python.is_empty() => Ok(PathBuf::from(python)),
        _ => Err(format!(
            "{script} could not install the openai SDK (its stderr says why)"
        )),
    }
}

/// Whether `python` can import `modules` (a comma-separated list).
fn can_import(python: &PathBuf, modules: &str) -> bool {
    run_bounded(
        Command::new(python).args(["-c", &format!("import {modules}")]),
        Duration::from_secs(60),
    )
    .is_ok()
}

/// Runs `command` to completion within `limit` (killed and reaped beyond it); Ok(stdout).
fn run_bounded(command: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {limit:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        ))
    }
}

/// Runs a client script from tests/fixtures/clients against `bridge` (None, after saying
/// SKIPPED, when `modules` do not import); its JSON line.
fn run_client(bridge: &Bridge, script: &str, modules: &str) -> Option<Value> {
    let python = match python() {
        Ok(python) => python,
        Err(why) => {
            eprintln!("SKIPPED: Python OpenAI clients not available: {why}");
            return None;
        }
    };
    if !can_import(&python, modules) {
        eprintln!("SKIPPED: {python:?} cannot import {modules}; run scripts/install-openai-sdk.sh");
        return None;
    }
    let script = format!(
        "{}/tests/fixtures/clients/{script}",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = run_bounded(
        Command::new(python)
            .arg(&script)
            .env("BRIDGE_URL", bridge.url("/v1"))
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY"),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("{script} failed: {e}\nbridge log:\n{}", bridge.log()));
    let line = out.lines().last().unwrap_or("");
    Some(serde_json::from_str(line).unwrap_or_else(|e| panic!("{script} printed {out:?}: {e}")))
}

#[test]
fn the_openai_python_sdk_tool_loop_gets_an_answer_that_used_the_tool() {
    let bridge = Bridge::demo().start();
    let Some(result) = run_client(&bridge, "openai_tool_loop.py", "openai") else {
        return;
    };
    for run in ["non_streamed", "streamed"] {
        let r = &result[run];
        assert_eq!(r["first_finish"], "tool_calls", "{run}: {result}");
        assert_eq!(
            r["calls"],
            serde_json::json!(["get_weather"]),
            "{run}: {result}"
        );
        assert_eq!(r["final_finish"], "stop", "{run}: {result}");
        let answer = r["answer"].as_str().unwrap_or("");
        assert!(
            answer.contains("[tool get_weather said: sunny-4242]"),
            "{run}: {result}"
        );
    }
}

#[test]
fn a_langchain_agent_with_one_tool_gets_an_answer_that_used_the_tool() {
    let bridge = Bridge::demo().start();
    let Some(result) = run_client(&bridge, "langchain_agent.py", "langchain, langchain_openai")
    else {
        return;
    };
    assert_eq!(result["ran"], 1, "{result}");
    let answer = result["answer"].as_str().unwrap_or("");
    assert!(
        answer.contains("[tool get_weather said: foggy-7373]"),
        "{result}\nbridge log:\n{}",
        bridge.log()
    );
}
