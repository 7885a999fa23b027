//! Stop hooks, as Claude Code runs them at the end of a turn: every
//! `hooks.Stop[*].hooks[*]` entry of type `command` from `--settings` runs through `sh -c`
//! with the session's environment and the hook input JSON on stdin.
//!
//! Owns the hook processes. Each runs in its own process group and is waited for at most
//! its timeout (never more than 10 s); on timeout or a stop signal the whole group is
//! killed and reaped. It must never let a hook's output reach the terminal.

use super::signals::Signals;
use crate::poll::wait_readable;
use serde_json::Value;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest a Stop hook may run.
pub const MAX_HOOK_TIME: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCommand {
    pub command: String,
    pub timeout: Duration,
}

/// `--settings` is inline JSON (starts with `{`) or a file path.
pub fn load_settings(arg: &str) -> Result<Value, String> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg).map_err(|e| format!("cannot read settings file {arg}: {e}"))?
    };
    serde_json::from_str(&text).map_err(|e| format!("settings are not valid JSON: {e}"))
}

/// The Stop hook commands in `settings`, in order.
pub fn stop_hooks(settings: &Value) -> Vec<HookCommand> {
    let groups = settings
        .pointer("/hooks/Stop")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    groups
        .iter()
        .filter_map(|group| group.get("hooks").and_then(Value::as_array))
        .flatten()
        .filter(|hook| hook.get("type").and_then(Value::as_str) == Some("command"))
        .filter_map(|hook| {
            let command = hook.get("command")?.as_str()?.to_string();
            let timeout = hook
                .get("timeout")
                .and_then(Value::as_f64)
                .filter(|t| *t > 0.0)
                .map(Duration::from_secs_f64)
                .map_or(MAX_HOOK_TIME, |t| t.min(MAX_HOOK_TIME));
            Some(HookCommand { command, timeout })
        })
        .collect()
}

#[derive(Debug)]
pub enum Outcome {
    Exited(ExitStatus),
    TimedOut,
    /// A stop signal arrived while the hook ran; it was killed.
    Interrupted,
    Failed(String),
}

/// Runs one hook to completion (bounded by its timeout and by `signals`).
pub fn run(
    hook: &HookCommand,
    input: &Value,
    env: &[(String, String)],
    signals: &Signals,
) -> Outcome {
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(&hook.command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Outcome::Failed(format!("cannot start sh: {e}")),
    };
    // A writer thread, so a hook that never reads its stdin cannot block this loop; the write
    // fails (EPIPE) once the hook is gone, which ends the thread.
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let body = serde_json::to_vec(input).expect("JSON values always serialise");
    let writer = std::thread::Builder::new()
        .name("stop-hook-stdin".into())
        .spawn(move || {
            let _ = stdin.write_all(&body);
        });
    if let Err(e) = writer {
        log::warn!("could not start the hook stdin writer: {e}");
    }
    let deadline = Instant::now() + hook.timeout;
    // Woken by the hook's exit (pidfd) or a signal; without pidfds, look again every 10 ms.
    let exited = crate::poll::pidfd_open(child.id());
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => return Outcome::Exited(status),
            Ok(None) => {}
            Err(e) => break Outcome::Failed(format!("waiting for the hook: {e}")),
        }
        if Instant::now() >= deadline {
            break Outcome::TimedOut;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match &exited {
            Some(pidfd) => {
                let _ = wait_readable(&[pidfd.as_raw_fd(), signals.fd()], Some(left));
            }
            None => {
                let _ = wait_readable(&[signals.fd()], Some(left.min(Duration::from_millis(10))));
            }
        }
        if signals.received().is_some() {
            break Outcome::Interrupted;
        }
    };
    // SAFETY: kill(2) on the hook's own process group (it was made the group leader).
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let _ = child.wait();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stop_hook_commands_are_found_with_bounded_timeouts() {
        let settings = json!({"hooks": {
            "Stop": [
                {"hooks": [{"type": "command", "command": "a"}, {"type": "prompt", "prompt": "x"}]},
                {"matcher": "", "hooks": [{"type": "command", "command": "b", "timeout": 2}]},
                {"hooks": [{"type": "command", "command": "c", "timeout": 600}]},
            ],
            "PreToolUse": [{"hooks": [{"type": "command", "command": "nope"}]}],
        }});
        let hooks = stop_hooks(&settings);
        let got: Vec<(&str, u64)> = hooks
            .iter()
            .map(|h| (h.command.as_str(), h.timeout.as_secs()))
            .collect();
        assert_eq!(got, vec![("a", 10), ("b", 2), ("c", 10)]);
        assert!(stop_hooks(&json!({})).is_empty());
        assert_eq!(load_settings(r#" {"a": 1}"#).unwrap(), json!({"a": 1}));
        assert!(load_settings("{nope").is_err());
        assert!(load_settings("/definitely/not/here.json").is_err());
    }
}
