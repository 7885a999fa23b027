//! Stop hooks, as Claude Code runs them at the end of a turn: every
//! `hooks.Stop[*].hooks[*]` entry of type `command` from `--settings` runs through `sh -c`
//! with the session's environment and the hook input JSON on stdin; one of type `http` is a
//! POST of the input JSON to its `url` (plain `http://host:port/path`), with its `headers`,
//! where `$VAR` / `${VAR}` is filled from the environment only for variables named in
//! `allowedEnvVars` (others become empty, as in Claude Code), bounded by its timeout.
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
    /// The shell command; for an `http` hook, its url (for messages).
    pub command: String,
    pub timeout: Duration,
    /// Set for a `type: "http"` hook.
    pub http: Option<HttpHook>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHook {
    pub url: String,
    /// Header values as written (`$VAR` not yet filled).
    pub headers: Vec<(String, String)>,
    pub allowed_env_vars: Vec<String>,
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
        .filter_map(|hook| {
            let timeout = hook
                .get("timeout")
                .and_then(Value::as_f64)
                .filter(|t| *t > 0.0)
                .map(Duration::from_secs_f64)
                .map_or(MAX_HOOK_TIME, |t| t.min(MAX_HOOK_TIME));
            match hook.get("type").and_then(Value::as_str)? {
                "command" => Some(HookCommand {
                    command: hook.get("command")?.as_str()?.to_string(),
                    timeout,
                    http: None,
                }),
                "http" => {
                    let url = hook.get("url")?.as_str()?.to_string();
                    let headers = hook
                        .get("headers")
                        .and_then(Value::as_object)
                        .map(|h| {
                            h.iter()
                                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                                .collect()
                        })
                        .unwrap_or_default();
                    let allowed_env_vars = hook
                        .get("allowedEnvVars")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    Some(HookCommand {
                        command: url.clone(),
                        timeout,
                        http: Some(HttpHook {
                            url,
                            headers,
                            allowed_env_vars,
                        }),
                    })
                }
                _ => None,
            }
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
    if let Some(http) = &hook.http {
        return run_http(http, hook.timeout, input, env);
    }
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

/// `text` with `$VAR` and `${VAR}` filled from `lookup` for allowed names, else emptied.
fn fill_env_vars(
    text: &str,
    allowed: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        if allowed.iter().any(|a| a == name) {
            out.push_str(&lookup(name).unwrap_or_default());
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// One `http` hook: POST the input, wait for the status line; 2xx is success.
fn run_http(
    hook: &HttpHook,
    timeout: Duration,
    input: &Value,
    env: &[(String, String)],
) -> Outcome {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::ExitStatusExt;
    let Some(rest) = hook.url.strip_prefix("http://") else {
        return Outcome::Failed(format!("only http:// urls are simulated: {}", hook.url));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = match std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()
        .and_then(|mut a| a.next())
    {
        Some(addr) => addr,
        None => return Outcome::Failed(format!("cannot resolve {authority}")),
    };
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let body = serde_json::to_vec(input).expect("JSON values always serialise");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in &hook.headers {
        let value = fill_env_vars(value, &hook.allowed_env_vars, lookup);
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(request.as_bytes())?;
        stream.write_all(&body)?;
        let mut status = String::new();
        BufReader::new(stream).take(4096).read_line(&mut status)?;
        Ok(status)
    };
    match exchange() {
        Ok(status) => match status.split_whitespace().nth(1) {
            Some(code) if code.starts_with('2') => Outcome::Exited(ExitStatus::from_raw(0)),
            _ => Outcome::Failed(format!("{}: {}", hook.url, status.trim())),
        },
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Outcome::TimedOut
        }
        Err(e) => Outcome::Failed(format!("{}: {e}", hook.url)),
    }
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

    #[test]
    fn http_hooks_fill_only_allowed_variables() {
        let settings = json!({"hooks": {"Stop": [{"hooks": [{
            "type": "http", "url": "http://127.0.0.1:9/hook", "timeout": 3,
            "headers": {"A": "$ONE", "B": "x-${TWO}-y", "C": "$THREE"},
            "allowedEnvVars": ["ONE", "TWO"],
        }]}]}});
        let hooks = stop_hooks(&settings);
        let http = hooks[0].http.as_ref().unwrap();
        assert_eq!(hooks[0].timeout, Duration::from_secs(3));
        let lookup = |n: &str| Some(format!("<{n}>"));
        let filled: Vec<String> = http
            .headers
            .iter()
            .map(|(_, v)| fill_env_vars(v, &http.allowed_env_vars, lookup))
            .collect();
        assert_eq!(filled, vec!["<ONE>", "x-<TWO>-y", ""]);
        assert_eq!(fill_env_vars("a $ b", &[], lookup), "a $ b");
    }
}
