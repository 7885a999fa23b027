//! `synthesis-bridge doctor [--probe] [serve options]`: checks that this machine can run
//! the bridge with the real Claude Code, and says how to fix what it cannot.
//!
//! Each check prints one line, `PASS`, `WARN` or `FAIL`, and a fix for anything not passing.
//! It reads the same configuration as `serve` (flags, env, `--config`), so the checks are
//! about the setup the bridge would really use. `--probe` goes further: it starts the bridge
//! on free ports with a scratch state dir, sends one turn, prints the reply, and stops it.
//! Exit code 0 when nothing failed.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::agent::{self, version};
use crate::config::{Config, Invocation};

#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn pass(&mut self, what: &str, detail: &str) {
        println!("PASS  {what}: {detail}");
    }
    fn warn(&mut self, what: &str, detail: &str, fix: &str) {
        println!("WARN  {what}: {detail}\n      fix: {fix}");
    }
    fn fail(&mut self, what: &str, detail: &str, fix: &str) {
        self.failed += 1;
        println!("FAIL  {what}: {detail}\n      fix: {fix}");
    }
}

pub fn run(args: &[String]) -> u8 {
    let probe = args.iter().any(|a| a == "--probe");
    let serve_args: Vec<String> = args.iter().filter(|a| *a != "--probe").cloned().collect();
    let config = match Config::load(&serve_args) {
        Ok(Invocation::Run(config)) => *config,
        Ok(Invocation::Help) => {
            println!(
                "synthesis-bridge doctor [--probe] [serve options]\n\n{}",
                Config::help()
            );
            return 0;
        }
        Err(message) => {
            println!("FAIL  configuration: {message}");
            return 1;
        }
    };
    let mut report = Report::default();
    if config.demo {
        report.pass(
            "agent",
            "--demo: the simulated Claude is built in; Claude Code checks skipped",
        );
    } else {
        check_claude(&mut report, &config);
    }
    check_ports(&mut report, &config);
    check_state_dir(&mut report, &config.state_dir);
    check_openclaw_plugin(&mut report);
    if probe {
        run_probe(&mut report, &serve_args);
    }
    println!(
        "{}",
        if report.failed == 0 {
            "doctor: no problems found".to_string()
        } else {
            format!("doctor: {} problem(s)", report.failed)
        }
    );
    u8::from(report.failed > 0)
}

fn check_claude(report: &mut Report, config: &Config) {
    let Some(claude) = agent::find_program(&config.claude_bin) else {
        report.fail(
            "claude",
            &format!("`{}` not found", config.claude_bin),
            "npm install -g @anthropic-ai/claude-code, or pass --claude-bin PATH (or try --demo)",
        );
        return;
    };
    match version::read(claude.as_os_str(), Duration::from_secs(15)) {
        Ok(text) => match version::parse(&text).map(version::verdict) {
            Some(version::Verdict::Supported) => {
                report.pass("claude", &format!("{} ({text})", claude.display()))
            }
            Some(version::Verdict::TooOld) => report.fail(
                "claude",
                &format!(
                    "{text} is older than {}, the first version with channels",
                    version::MIN_CLAUDE
                ),
                "update Claude Code (npm install -g @anthropic-ai/claude-code@latest)",
            ),
            Some(version::Verdict::Untested) => report.warn(
                "claude",
                &format!(
                    "{text} is newer than {}, the newest version tested with this bridge",
                    version::NEWEST_TESTED_CLAUDE
                ),
                "run `synthesis-bridge doctor --probe` to try one turn",
            ),
            None => report.warn(
                "claude",
                &format!("unrecognised version {text:?}"),
                "check `claude --version`",
            ),
        },
        Err(e) => report.fail(
            "claude",
            &e,
            "check that the binary runs: `claude --version`",
        ),
    }

    let config_dir = agent::claude_config_dir();
    if config_dir.is_dir() {
        report.pass("config dir", &config_dir.display().to_string());
    } else {
        report.fail(
            "config dir",
            &format!("{} does not exist", config_dir.display()),
            "run `claude` once and log in (with the same HOME / CLAUDE_CONFIG_DIR as the bridge)",
        );
    }
    // With CLAUDE_CONFIG_DIR set, claude keeps .claude.json inside it; otherwise in $HOME.
    let state_file = match std::env::var_os("CLAUDE_CONFIG_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join(".claude.json"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".claude.json"),
    };
    let state: Value = std::fs::read(&state_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if state["hasCompletedOnboarding"] == true {
        report.pass("onboarding", &format!("done ({})", state_file.display()));
    } else {
        report.fail(
            "onboarding",
            &format!(
                "not done ({} has no hasCompletedOnboarding)",
                state_file.display()
            ),
            "run `claude` once by hand and finish its first-run screens",
        );
    }
    let workspace = config
        .workspace
        .canonicalize()
        .unwrap_or_else(|_| config.workspace.clone());
    let trusted =
        state["projects"][workspace.to_string_lossy().as_ref()]["hasTrustDialogAccepted"] == true;
    if trusted {
        report.pass("workspace trust", &workspace.display().to_string());
    } else {
        report.fail(
            "workspace trust",
            &format!("{} is not trusted", workspace.display()),
            &format!(
                "run `claude` in {} once and answer \"Yes, I trust this folder\"",
                workspace.display()
            ),
        );
    }
    if config.workspace_mode == crate::session::workspace::WorkspaceMode::PerSession {
        report.warn(
            "workspace mode",
            "per_session: each session's directory must be trusted before claude starts in it",
            "pre-seed projects[<dir>].hasTrustDialogAccepted, or use workspace_mode shared",
        );
    }
    if let Ok(key) = std::env::var("ANTHROPIC_API_KEY") {
        let tail = &key[key.len().saturating_sub(20)..];
        let approved = state["customApiKeyResponses"]["approved"]
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k == tail));
        if approved {
            report.pass(
                "API key",
                "ANTHROPIC_API_KEY is approved in claude's settings",
            );
        } else {
            report.fail(
                "API key",
                "ANTHROPIC_API_KEY is set but not approved: claude would ask about it on start",
                "run `claude` once with this key and approve it (or add its last 20 characters to customApiKeyResponses.approved)",
            );
        }
    }
    if state["cachedGrowthBookFeatures"]["tengu_harbor"] == true {
        report.pass(
            "channels",
            "the channels feature is enabled in claude's cached flags",
        );
    } else {
        report.warn(
            "channels",
            "claude has not cached the channels feature flag (tengu_harbor); offline it would say \"Channels are not currently available\"",
            "start `claude` once while online and logged in",
        );
    }
    check_permission_relay(report, config, &state);
}

/// Claude Code relays tool-permission prompts to the bridge only with this flag (2.1.331);
/// without it a prompt fails the turn (docs/ARCHITECTURE.md "Permission relay").
fn check_permission_relay(report: &mut Report, config: &Config, state: &serde_json::Value) {
    use crate::session::pending::PermissionRelay;
    if config.permission_relay == PermissionRelay::Off
        || config.permission_mode == "bypassPermissions"
    {
        return;
    }
    if state["cachedGrowthBookFeatures"]["tengu_harbor_permissions"] == true {
        report.pass(
            "permission relay",
            "claude relays tool-permission questions to the chat (tengu_harbor_permissions is on)",
        );
    } else {
        report.warn(
            "permission relay",
            "claude has not cached the tengu_harbor_permissions flag: it will not relay tool-permission questions, and a turn that needs one fails after 5 s",
            "allow the tools Claude needs in the workspace's .claude/settings.json permissions.allow, or choose permission_mode acceptEdits; the relay works once Claude Code has the flag",
        );
    }
}

fn check_ports(report: &mut Report, config: &Config) {
    match TcpListener::bind((config.host.as_str(), config.port)) {
        Ok(_) => report.pass(
            "HTTP port",
            &format!("{}:{} is free", config.host, config.port),
        ),
        Err(e) => report.fail(
            "HTTP port",
            &format!("cannot bind {}:{}: {e}", config.host, config.port),
            "stop what uses it (another bridge?) or choose --port",
        ),
    }
    if config.channel_ws_port != 0 {
        match TcpListener::bind(("127.0.0.1", config.channel_ws_port)) {
            Ok(_) => report.pass(
                "channel port",
                &format!("127.0.0.1:{} is free", config.channel_ws_port),
            ),
            Err(e) => report.fail(
                "channel port",
                &format!("{e}"),
                "choose --channel-ws-port 0 (any free port)",
            ),
        }
    }
}

fn check_state_dir(report: &mut Report, dir: &Path) {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let writable = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"ok"))
        .and_then(|()| std::fs::remove_file(&probe));
    match writable {
        Ok(()) => report.pass("state dir", &format!("{} is writable", dir.display())),
        Err(e) => report.fail(
            "state dir",
            &format!("{}: {e}", dir.display()),
            "choose --state-dir, or fix its permissions",
        ),
    }
}

/// The OpenClaw plugin's id (openclaw-plugin/openclaw.plugin.json) and the model it offers.
const OPENCLAW_PLUGIN_ID: &str = "synthesis-bridge";
const OPENCLAW_PLUGIN_MODEL: &str = "synthesis/claude-code";

/// When this machine has an OpenClaw config (`OPENCLAW_CONFIG_PATH`, else
/// `$OPENCLAW_STATE_DIR/openclaw.json`, else `~/.openclaw/openclaw.json`): is the plugin
/// installed (`<state>/extensions/synthesis-bridge`, a `plugins.load.paths` entry from a
/// `--link` install, or at least its `plugins.entries` record) and enabled, and is `synthesis/claude-code` the default model.
/// Without an OpenClaw config, says nothing.
fn check_openclaw_plugin(report: &mut Report) {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let state_dir = std::env::var_os("OPENCLAW_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".openclaw")));
    let Some(config_path) = std::env::var_os("OPENCLAW_CONFIG_PATH")
        .map(PathBuf::from)
        .or_else(|| state_dir.as_ref().map(|s| s.join("openclaw.json")))
    else {
        return;
    };
    let Ok(text) = std::fs::read_to_string(&config_path) else {
        return;
    };
    let shown = config_path.display();
    let config: Value = match serde_json::from_str(&text) {
        Ok(config) => config,
        Err(e) => {
            return report.warn(
                "OpenClaw plugin",
                &format!("cannot read {shown} as JSON ({e}), so cannot tell whether the plugin is installed"),
                &format!("run `openclaw plugins inspect {OPENCLAW_PLUGIN_ID}`"),
            );
        }
    };
    // A copy under `<state>/extensions/`, or a `--link` install's `plugins.load.paths` entry.
    let linked = config
        .pointer("/plugins/load/paths")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(PathBuf::from)
        .find(|dir| {
            std::fs::read_to_string(dir.join("openclaw.plugin.json"))
                .ok()
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .is_some_and(|manifest| manifest["id"] == OPENCLAW_PLUGIN_ID)
        });
    let extension = state_dir
        .map(|s| s.join("extensions").join(OPENCLAW_PLUGIN_ID))
        .filter(|dir| dir.join("openclaw.plugin.json").is_file())
        .or(linked);
    let entry = config.pointer(&format!("/plugins/entries/{OPENCLAW_PLUGIN_ID}"));
    if extension.is_none() && entry.is_none() {
        let hand_written = config
            .pointer("/models/providers")
            .and_then(Value::as_object)
            .is_some_and(|providers| {
                providers.values().any(|p| {
                    p["models"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m["id"] == "claude-code"))
                })
            });
        if hand_written {
            return report.pass(
                "OpenClaw plugin",
                &format!(
                    "not installed; {shown} has a hand-written provider with model claude-code"
                ),
            );
        }
        return report.warn(
            "OpenClaw plugin",
            &format!("not installed (OpenClaw config {shown})"),
            "openclaw plugins install <checkout>/openclaw-plugin --force, then openclaw config set agents.defaults.model synthesis/claude-code (docs/OPENCLAW.md)",
        );
    }
    let where_ = extension.map_or("no plugin directory found".to_string(), |dir| {
        dir.display().to_string()
    });
    let disabled = entry.is_some_and(|e| e["enabled"] == Value::Bool(false))
        || config.pointer("/plugins/enabled") == Some(&Value::Bool(false))
        || config
            .pointer("/plugins/deny")
            .and_then(Value::as_array)
            .is_some_and(|deny| deny.iter().any(|id| id == OPENCLAW_PLUGIN_ID));
    if disabled {
        return report.warn(
            "OpenClaw plugin",
            &format!("installed ({where_}) but disabled in {shown}"),
            &format!("openclaw plugins enable {OPENCLAW_PLUGIN_ID} (and check plugins.enabled / plugins.deny)"),
        );
    }
    if let Some(binary) = entry
        .and_then(|e| e.pointer("/config/binary"))
        .and_then(Value::as_str)
        && !is_executable(Path::new(binary))
    {
        return report.fail(
            "OpenClaw plugin",
            &format!("plugins.entries.{OPENCLAW_PLUGIN_ID}.config.binary is {binary}, not an executable file"),
            &format!("openclaw config set plugins.entries.{OPENCLAW_PLUGIN_ID}.config.binary /path/to/synthesis-bridge"),
        );
    }
    report.pass(
        "OpenClaw plugin",
        &format!("installed ({where_}) and enabled in {shown}"),
    );
    let model = config.pointer("/agents/defaults/model");
    let primary = model
        .and_then(|m| m.as_str().or_else(|| m["primary"].as_str()))
        .unwrap_or("");
    if primary != OPENCLAW_PLUGIN_MODEL {
        report.warn(
            "OpenClaw model",
            &format!("the default model is {primary:?}, not {OPENCLAW_PLUGIN_MODEL}"),
            &format!("openclaw config set agents.defaults.model {OPENCLAW_PLUGIN_MODEL} (or pick it per agent)"),
        );
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts the bridge as `serve` would run (scratch state dir, free ports), sends one turn.
fn run_probe(report: &mut Report, serve_args: &[String]) {
    let scratch = std::env::temp_dir().join(format!("synthesis-doctor-{}", std::process::id()));
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return report.fail(
                "probe",
                &e.to_string(),
                "run doctor from the installed binary",
            );
        }
    };
    let mut child = match Command::new(exe)
        .arg("serve")
        .args(serve_args)
        .args(["--port", "0", "--channel-ws-port", "0", "--state-dir"])
        .arg(&scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return report.fail(
                "probe",
                &format!("cannot start the bridge: {e}"),
                "see above",
            );
        }
    };
    let outcome = probe_turn(&mut child);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&scratch);
    match outcome {
        Ok(reply) => report.pass("probe", &format!("one turn answered: {reply:?}")),
        Err(e) => report.fail(
            "probe",
            &e,
            "fix the failures above; `RUST_LOG=debug synthesis-bridge serve` shows each step",
        ),
    }
}

fn probe_turn(child: &mut std::process::Child) -> Result<String, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "the bridge did not start within 20 s".to_string())?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .ok_or_else(|| format!("the bridge did not start: {}", read_stderr(child)))?
        .to_string();
    let body = serde_json::json!({"messages": [{"role": "user", "content": "This is a connectivity check from synthesis-bridge doctor. Reply with the single word: pong"}]}).to_string();
    let mut stream = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(180)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: doctor\r\nConnection: close\r\nContent-Type: application/json\r\nX-Session-Key: doctor::probe\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("no answer: {e}"))?;
    let json = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let value: Value =
        serde_json::from_str(json).map_err(|_| format!("unexpected answer: {response}"))?;
    match value["choices"][0]["message"]["content"].as_str() {
        Some(reply) => Ok(reply.to_string()),
        None => Err(value["error"]["message"]
            .as_str()
            .unwrap_or(json)
            .to_string()),
    }
}

fn read_stderr(child: &mut std::process::Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    text.trim().to_string()
}
