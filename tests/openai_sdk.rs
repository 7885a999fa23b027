//! The official `openai` Python SDK against `serve --demo` (issue #15): models, chat
//! completions (plain, streamed, multi-turn without a session id, `n`, `stop`, `.parse()` with
//! a pydantic model), and the Responses API (plain, streamed, `previous_response_id` over
//! three turns). The SDK comes from `scripts/install-openai-sdk.sh` (CI runs it and sets
//! `SYNTHESIS_OPENAI_PYTHON`); without it the test says it was skipped.

mod support;

use std::process::Command;
use support::*;

#[test]
fn the_official_python_sdk_works_for_chat_and_responses() {
    let Some(python) = std::env::var("SYNTHESIS_OPENAI_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        eprintln!(
            "SKIPPED: SYNTHESIS_OPENAI_PYTHON is not set; run `export SYNTHESIS_OPENAI_PYTHON=$(scripts/install-openai-sdk.sh)` to run this test"
        );
        return;
    };
    let bridge = Bridge::demo().start();
    let script = format!(
        "{}/tests/fixtures/sdk/openai_sdk_check.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = Command::new(&python)
        .arg(&script)
        .arg(bridge.url("/v1"))
        .env(MARKER_VAR, &bridge.marker)
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("all ok"),
        "SDK script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for check in [
        "models.retrieve",
        "chat.completions",
        "n",
        "stop",
        "chat.completions.parse",
        "responses",
        "responses.create(stream=True)",
        "responses errors",
    ] {
        assert!(stdout.contains(&format!("ok {check}\n")), "{stdout}");
    }
}
