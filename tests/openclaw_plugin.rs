//! The OpenClaw plugin (`openclaw-plugin/`) in the real OpenClaw 2026.9.6 gateway, with the
//! simulated Claude behind the bridge: `openclaw plugins install` from the checkout, `openclaw
//! config set agents.defaults.model synthesis/claude-code` and no provider block; the gateway
//! starts the bridge, two turns of one conversation come back through OpenClaw from one Claude
//! process; a dead bridge is restarted and a settings change restarts it; stopping the
//! gateway (SIGTERM) and killing it (SIGKILL) both leave no bridge, channel or agent process.
//! Also, without OpenClaw: `--parent-pid` makes a bridge whose parent is SIGKILLed shut down,
//! the plugin's helpers (binary lookup, `serve` flags), `doctor`'s report, `npm pack`.
//!
//! The gateway part needs `SYNTHESIS_OPENCLAW_NODE` and `SYNTHESIS_OPENCLAW_CLI` (`.ci/run`
//! sets them from `scripts/install-openclaw.sh`); without them it says SKIPPED on stderr.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const GATEWAY_TOKEN: &str = "gw-test-token-0123456789";

fn tools() -> Option<(String, String)> {
    let node = std::env::var("SYNTHESIS_OPENCLAW_NODE")
        .ok()
        .filter(|p| Path::new(p).is_file());
    let cli = std::env::var("SYNTHESIS_OPENCLAW_CLI")
        .ok()
        .filter(|p| Path::new(p).is_file());
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

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openclaw-plugin")
}

/// A free loopback port (bound, read back, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Pids of the processes the test marked that run the bridge's binary (bridge, sim-agent,
/// channel server): the ones the plugin is responsible for.
fn bridge_pids(marker: &str) -> Vec<u32> {
    marked_pids(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == std::fs::canonicalize(BIN).unwrap())
        })
        .collect()
}

/// Of `bridge_pids`, the ones running `serve` (the bridge itself; a standby process starts
/// a sim-agent and a channel server of the same binary before any turn).
fn serve_pids(marker: &str) -> Vec<u32> {
    bridge_pids(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).nth(1) == Some(b"serve"))
        })
        .collect()
}

/// An isolated OpenClaw home (config, state) with every process it starts marked; dropping
/// it kills whatever is still marked, even when the test fails.
struct OpenClaw {
    node: String,
    cli: String,
    dir: TempDir,
    marker: String,
}

impl Drop for OpenClaw {
    fn drop(&mut self) {
        kill_marked(&self.marker);
    }
}

impl OpenClaw {
    fn new(node: String, cli: String) -> OpenClaw {
        let dir = TempDir::new("openclaw-plugin");
        for sub in ["home", "state", "work"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let marker = format!("openclaw-plugin-{}", uuid::Uuid::new_v4().simple());
        OpenClaw {
            node,
            cli,
            dir,
            marker,
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.node);
        command
            .arg(&self.cli)
            .args(args)
            .current_dir(self.dir.path().join("work"))
            .env(MARKER_VAR, &self.marker)
            .env("HOME", self.dir.path().join("home"))
            .env("OPENCLAW_STATE_DIR", self.dir.path().join("state"))
            .env("OPENCLAW_CONFIG_PATH", self.config_path())
            .env("OPENCLAW_GATEWAY_TOKEN", GATEWAY_TOKEN)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs one CLI command to completion (bounded); its stdout, or a panic with both streams.
    fn run(&self, args: &[&str]) -> String {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openclaw");
        let finished = wait_until(Duration::from_secs(240), || child.try_wait().ok().flatten());
        if finished.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() || args.first() == Some(&"agent"),
            "openclaw {args:?} failed ({:?}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Edits the config file as OpenClaw left it (gateway settings only: no provider block).
    fn edit_config(&self, edit: impl FnOnce(&mut Value)) {
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(self.config_path()).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(self.config_path(), config.to_string()).unwrap();
    }

    /// Starts `openclaw gateway run`; returns it and the bridge's base URL once the plugin's
    /// service logged it.
    fn start_gateway(&self, tag: &str) -> (Child, String) {
        let out = self.dir.path().join(format!("gateway-{tag}.out"));
        let err = self.dir.path().join(format!("gateway-{tag}.err"));
        let mut child = self
            .command(&["gateway", "run"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("start the gateway");
        let base_url = wait_until(Duration::from_secs(180), || {
            if child.try_wait().ok().flatten().is_some() {
                return Some(None);
            }
            // The service's failure (as OpenClaw logs it): stop waiting.
            let errors = std::fs::read_to_string(&err).unwrap_or_default();
            if errors.contains("plugin service failed (synthesis-bridge") {
                return Some(None);
            }
            let log = std::fs::read_to_string(&out).unwrap_or_default();
            let line = log
                .lines()
                .find(|l| l.contains("synthesis-bridge: provider synthesis at "))?;
            let url = line.split("provider synthesis at ").nth(1)?;
            Some(Some(
                url.split(|c: char| c.is_whitespace() || c == '\u{1b}')
                    .next()?
                    .to_string(),
            ))
        })
        .flatten();
        let Some(base_url) = base_url else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the gateway did not start the bridge:\n{}\n{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        };
        (child, base_url)
    }

    /// One turn through the gateway (`openclaw agent` without `--local`): the reply texts.
    fn turn(&self, session: &str, message: &str) -> String {
        let stdout = self.run(&[
            "agent",
            "--agent",
            "main",
            "--session-id",
            session,
            "--message",
            message,
            "--json",
        ]);
        let parsed: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|_| panic!("openclaw agent printed no JSON:\n{stdout}"));
        parsed["result"]["payloads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The bridge's conversations (standbys left out), with the key the plugin generated.
    fn sessions(&self, base_url: &str) -> Vec<Value> {
        let key_file = self
            .dir
            .path()
            .join("state/synthesis-bridge/plugin-api-key");
        let key = std::fs::read_to_string(key_file).unwrap();
        let addr = base_url
            .trim_start_matches("http://")
            .trim_end_matches("/v1")
            .parse()
            .unwrap();
        let auth = format!("Bearer {}", key.trim());
        let list = request(addr, "GET", "/v1/sessions", &[("Authorization", &auth)], "").json();
        // Conversations only: a standby process (`"standby": true`) is listed too.
        list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|row| row["standby"] != true)
            .cloned()
            .collect()
    }

    /// The base URL of the bridge the service started last.
    fn latest_base_url(&self, tag: &str) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(format!("gateway-{tag}.out")))
            .unwrap_or_default();
        let line = log
            .lines()
            .rfind(|l| l.contains("synthesis-bridge: provider synthesis at "))
            .expect("the service logged its bridge");
        line.split("provider synthesis at ")
            .nth(1)
            .unwrap()
            .split(|c: char| c.is_whitespace() || c == '\u{1b}')
            .next()
            .unwrap()
            .to_string()
    }

    fn gateway_log(&self, tag: &str) -> String {
        let mut log = String::new();
        for ext in ["out", "err"] {
            let file = self.dir.path().join(format!("gateway-{tag}.{ext}"));
            log += &std::fs::read_to_string(file).unwrap_or_default();
        }
        log
    }
}

#[test]
fn the_plugin_runs_the_bridge_with_the_gateway_and_leaves_nothing_when_it_stops_or_is_killed() {
    let Some((node, cli)) = tools() else { return };
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
    let openclaw = OpenClaw::new(node, cli);
    let plugin = plugin_dir();
    // Offline, from the checkout. --force: OpenClaw asks before installing from a local path.
    openclaw.run(&[
        "plugins",
        "install",
        plugin.to_str().unwrap(),
        "--force",
        "--accept-capabilities",
    ]);
    // The plugin's settings (what `openclaw config set plugins.entries.synthesis-bridge.config.*`
    // writes; set directly to keep the test short): this build, simulated Claude.
    openclaw.edit_config(|config| {
        config["plugins"]["entries"]["synthesis-bridge"]["config"] =
            json!({"binary": BIN, "demo": true});
    });
    phase("installed");
    // Choosing the model is this one command: OpenClaw knows synthesis/claude-code from the
    // plugin's manifest, before any gateway runs.
    openclaw.run(&[
        "config",
        "set",
        "agents.defaults.model",
        "synthesis/claude-code",
    ]);
    let gateway_port = free_port();
    openclaw.edit_config(|config| {
        assert!(
            config.pointer("/models/providers").is_none(),
            "no provider block was written: {config}"
        );
        config["gateway"] = json!({"mode": "local", "port": gateway_port, "bind": "loopback",
            "auth": {"mode": "token", "token": GATEWAY_TOKEN}});
        config["session"] = json!({"dmScope": "per-channel-peer"});
    });

    phase("model chosen");
    // `doctor` finds the install through the same OpenClaw environment.
    let doctor = Command::new(BIN)
        .args(["doctor", "--demo", "--port", "0", "--state-dir"])
        .arg(openclaw.dir.path().join("doctor-state"))
        .env("HOME", openclaw.dir.path().join("home"))
        .env("OPENCLAW_STATE_DIR", openclaw.dir.path().join("state"))
        .env("OPENCLAW_CONFIG_PATH", openclaw.config_path())
        .output()
        .unwrap();
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.contains("PASS  OpenClaw plugin: installed (")
            && doctor.contains("extensions/synthesis-bridge) and enabled"),
        "{doctor}"
    );
    assert!(!doctor.contains("OpenClaw model"), "{doctor}");

    // 1. Two turns of one conversation, one Claude process; then a clean stop.
    let (mut gateway, base_url) = openclaw.start_gateway("first");
    phase("gateway started the bridge");
    let bridges = serve_pids(&openclaw.marker);
    assert_eq!(
        bridges.len(),
        1,
        "one bridge: {bridges:?}\n{}",
        openclaw.gateway_log("first")
    );
    assert_eq!(
        parent_pid(bridges[0]),
        Some(gateway.id()),
        "the gateway started it"
    );

    let first = openclaw.turn("s1", "first nonce-p1");
    assert!(
        first.contains("first nonce-p1"),
        "{first}\n{}",
        openclaw.gateway_log("first")
    );
    let pid_before = openclaw.sessions(&base_url)[0]["pid"].clone();
    assert!(pid_before.is_u64(), "a live agent: {pid_before}");
    phase("first turn");
    let second = openclaw.turn("s1", "second nonce-p2");
    assert!(second.contains("second nonce-p2"), "{second}");
    phase("second turn");
    let after = openclaw.sessions(&base_url);
    assert_eq!(after.len(), 1, "both turns in one session: {after:?}");
    assert_eq!(after[0]["key"], "s1", "keyed by OpenClaw's session id");
    assert_eq!(after[0]["pid"], pid_before, "the same Claude process");
    assert_eq!(after[0]["turns"], 2);
    let claude_session = after[0]["claude_session"].clone();
    let serving = bridge_pids(&openclaw.marker);
    assert!(
        serving.len() >= 3,
        "bridge, agent and channel server are up: {serving:?}"
    );

    // The bridge dies: the service restarts it (after a back-off) on the same port, and the
    // conversation goes on (its Claude resumed).
    let bridge = serving
        .iter()
        .copied()
        .find(|pid| parent_pid(*pid) == Some(gateway.id()))
        .expect("the bridge is the gateway's child");
    signal(bridge, libc::SIGKILL);
    // Restarted once it listens again (the service logs each `listening` line).
    let restarted = wait_until(Duration::from_secs(30), || {
        let listening = openclaw
            .gateway_log("first")
            .matches("synthesis-bridge: listening on")
            .count();
        (listening >= 2).then_some(())?;
        bridge_pids(&openclaw.marker)
            .into_iter()
            .find(|pid| *pid != bridge && parent_pid(*pid) == Some(gateway.id()))
    });
    assert!(
        restarted.is_some(),
        "the bridge was restarted\n{}",
        openclaw.gateway_log("first")
    );
    assert!(openclaw.gateway_log("first").contains("restarting in"));
    // The bridge kept its port: it answers on the same URL.
    assert_eq!(openclaw.sessions(&base_url)[0]["key"], "s1");

    phase("bridge restarted after SIGKILL");
    // A settings change restarts the bridge with it, without restarting the gateway.
    let before_reload = bridge_pids(&openclaw.marker)
        .into_iter()
        .find(|pid| parent_pid(*pid) == Some(gateway.id()))
        .unwrap();
    openclaw.run(&[
        "config",
        "set",
        "plugins.entries.synthesis-bridge.config.heartbeatInterval",
        "2s",
    ]);
    let reloaded = wait_until(Duration::from_secs(60), || {
        bridge_pids(&openclaw.marker).into_iter().find(|pid| {
            parent_pid(*pid) == Some(gateway.id())
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--heartbeat-interval=2s"))
        })
    });
    assert!(
        reloaded.is_some(),
        "the bridge was restarted with the new setting\n{}",
        openclaw.gateway_log("first")
    );
    assert!(
        parent_pid(before_reload).is_none(),
        "the old bridge is gone"
    );
    phase("bridge restarted with the new setting");
    // Through OpenClaw to the new bridge (a new port: the plugin hands OpenClaw the live
    // URL): the conversation goes on, its Claude resumed.
    let resumed = openclaw.turn("s1", "after restarts nonce-p4");
    assert!(
        resumed.contains("after restarts nonce-p4"),
        "{resumed}\n{}",
        openclaw.gateway_log("first")
    );
    let after = openclaw.sessions(&openclaw.latest_base_url("first"));
    assert_eq!(after[0]["key"], "s1");
    assert_eq!(
        after[0]["claude_session"], claude_session,
        "the same Claude conversation, resumed"
    );

    phase("turn after the restarts");
    signal(gateway.id(), libc::SIGTERM);
    let stopped = wait_until(Duration::from_secs(60), || {
        gateway.try_wait().ok().flatten()
    });
    assert!(stopped.is_some(), "the gateway stopped on SIGTERM");
    let left = wait_until(Duration::from_secs(15), || {
        bridge_pids(&openclaw.marker).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "after the gateway stopped, still running: {:?}\n{}",
        bridge_pids(&openclaw.marker),
        openclaw.gateway_log("first")
    );

    phase("gateway stopped, nothing left");
    // 2. The gateway killed outright: its service's stop() never runs, the bridge's
    // parent-death signal stops it (and it stops its agent and channel server).
    let (mut gateway, _) = openclaw.start_gateway("second");
    phase("gateway started again");
    let again = openclaw.turn("s1", "third nonce-p3");
    assert!(
        again.contains("third nonce-p3"),
        "{again}\n{}",
        openclaw.gateway_log("second")
    );
    assert!(bridge_pids(&openclaw.marker).len() >= 3);
    phase("turn");
    signal(gateway.id(), libc::SIGKILL);
    let _ = gateway.wait();
    let left = wait_until(Duration::from_secs(20), || {
        bridge_pids(&openclaw.marker).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "after the gateway was killed, still running: {:?}",
        bridge_pids(&openclaw.marker)
    );
    phase("gateway killed, nothing left");
}

#[test]
fn a_bridge_with_parent_pid_stops_when_its_parent_is_killed() {
    let dir = TempDir::new("parent-pid");
    let marker = format!("parent-pid-{}", uuid::Uuid::new_v4().simple());
    let log = dir.path().join("bridge.log");
    // The parent: a shell that starts the bridge (naming itself with $$) and waits.
    let script = "\"$0\" serve --demo --port 0 --state-dir \"$1/state\" --workspace \"$1\" --parent-pid $$ 2>\"$1/bridge.log\" & wait";
    let mut parent = Command::new("sh")
        .args(["-c", script, BIN, dir.path().to_str().unwrap()])
        .env(MARKER_VAR, &marker)
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(parent.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("listening http="), "{line}");
    let http = line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_start_matches("http=")
        .parse()
        .unwrap();
    let reply = request(
        http,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json"), ("X-Session-Key", "k")],
        &chat_body("hello nonce-pd", false),
    );
    assert!(reply.text().contains("hello nonce-pd"), "{}", reply.text());
    assert!(marked_pids(&marker).len() >= 3, "shell, bridge, agent");

    signal(parent.id(), libc::SIGKILL);
    let _ = parent.wait();
    let gone = wait_until(Duration::from_secs(15), || {
        marked_pids(&marker).is_empty().then_some(())
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    kill_marked(&marker);
    assert!(gone.is_some(), "the bridge outlived its parent:\n{text}");
    assert!(
        text.contains("shutting down"),
        "a graceful shutdown:\n{text}"
    );

    // A parent_pid that is not the parent: refused at start, nothing left running.
    let out = Command::new(BIN)
        .args(["serve", "--demo", "--port", "0", "--parent-pid", "2"])
        .arg("--state-dir")
        .arg(dir.path().join("state2"))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not this process's parent"), "{err}");
}

#[test]
fn npm_pack_ships_the_plugin_files() {
    if Command::new("npm").arg("--version").output().is_err() {
        eprintln!("SKIPPED: npm not found");
        return;
    }
    let out = Command::new("npm")
        .args(["pack", "--dry-run", "--json", "--ignore-scripts"])
        .current_dir(plugin_dir())
        .env("npm_config_offline", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<&str> = packed[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    for needed in [
        "package.json",
        "openclaw.plugin.json",
        "index.js",
        "bridge-process.js",
    ] {
        assert!(files.contains(&needed), "{needed} missing from {files:?}");
    }
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(plugin_dir().join("package.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["openclaw"]["extensions"], json!(["./index.js"]));
}

/// `doctor --demo` with HOME (and so `~/.openclaw`) in `home`; its stdout.
fn doctor_with_home(home: &Path, state: &Path) -> String {
    let out = Command::new(BIN)
        .args(["doctor", "--demo", "--port", "0", "--state-dir"])
        .arg(state)
        .env("HOME", home)
        .env_remove("OPENCLAW_CONFIG_PATH")
        .env_remove("OPENCLAW_STATE_DIR")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn doctor_reports_the_openclaw_plugin_when_it_finds_an_openclaw_config() {
    let dir = TempDir::new("doctor-openclaw");
    let home = dir.path().join("home");
    let state = dir.path().join("state");
    let openclaw = home.join(".openclaw");
    std::fs::create_dir_all(&home).unwrap();
    let no_config = doctor_with_home(&home, &state);
    assert!(!no_config.contains("OpenClaw"), "{no_config}");

    std::fs::create_dir_all(&openclaw).unwrap();
    let write =
        |config: Value| std::fs::write(openclaw.join("openclaw.json"), config.to_string()).unwrap();
    write(json!({}));
    let missing = doctor_with_home(&home, &state);
    assert!(
        missing.contains("WARN  OpenClaw plugin: not installed")
            && missing.contains("openclaw plugins install"),
        "{missing}"
    );

    let extension = openclaw.join("extensions/synthesis-bridge");
    std::fs::create_dir_all(&extension).unwrap();
    std::fs::copy(
        plugin_dir().join("openclaw.plugin.json"),
        extension.join("openclaw.plugin.json"),
    )
    .unwrap();
    write(
        json!({"plugins": {"entries": {"synthesis-bridge": {"enabled": true}}},
        "agents": {"defaults": {"model": "synthesis/claude-code"}}}),
    );
    let ok = doctor_with_home(&home, &state);
    assert!(
        ok.contains("PASS  OpenClaw plugin: installed (") && ok.contains("and enabled"),
        "{ok}"
    );
    assert!(!ok.contains("OpenClaw model"), "{ok}");
    assert!(ok.contains("doctor: no problems found"), "{ok}");

    // A `--link` install: the checkout's directory in plugins.load.paths.
    std::fs::remove_dir_all(&extension).unwrap();
    write(json!({"plugins": {"load": {"paths": [plugin_dir()]},
        "entries": {"synthesis-bridge": {"enabled": true}}},
        "agents": {"defaults": {"model": "synthesis/claude-code"}}}));
    let linked = doctor_with_home(&home, &state);
    assert!(
        linked.contains(&format!(
            "PASS  OpenClaw plugin: installed ({}) and enabled",
            plugin_dir().display()
        )),
        "{linked}"
    );

    write(json!({"plugins": {"entries": {"synthesis-bridge": {"enabled": false}}}}));
    let disabled = doctor_with_home(&home, &state);
    assert!(
        disabled.contains("WARN  OpenClaw plugin: installed (")
            && disabled.contains("but disabled")
            && disabled.contains("openclaw plugins enable synthesis-bridge"),
        "{disabled}"
    );

    write(
        json!({"plugins": {"entries": {"synthesis-bridge": {"enabled": true,
        "config": {"binary": "/nonexistent/synthesis-bridge"}}}},
        "agents": {"defaults": {"model": {"primary": "openai/gpt-5"}}}}),
    );
    let wrong = doctor_with_home(&home, &state);
    assert!(
        wrong.contains("FAIL  OpenClaw plugin: plugins.entries.synthesis-bridge.config.binary"),
        "{wrong}"
    );
    write(
        json!({"plugins": {"entries": {"synthesis-bridge": {"enabled": true}}},
        "agents": {"defaults": {"model": {"primary": "openai/gpt-5"}}}}),
    );
    let other_model = doctor_with_home(&home, &state);
    assert!(
        other_model.contains("WARN  OpenClaw model: the default model is \"openai/gpt-5\"")
            && other_model
                .contains("openclaw config set agents.defaults.model synthesis/claude-code"),
        "{other_model}"
    );
}

/// Node for the plugin's own helpers: OpenClaw's, else `node` on PATH.
fn node() -> Option<String> {
    std::env::var("SYNTHESIS_OPENCLAW_NODE")
        .ok()
        .filter(|p| Path::new(p).is_file())
        .or_else(|| {
            Command::new("node")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| "node".to_string())
        })
}

#[test]
fn the_plugin_finds_the_binary_or_names_the_setting_and_its_flags_start_a_bridge() {
    let Some(node) = node() else {
        eprintln!("SKIPPED: node not found");
        return;
    };
    let dir = TempDir::new("plugin-helpers");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "sk-helper-test\n").unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let script = format!(
        r#"import * as m from {module};
const out = {{}};
try {{ m.findBinary(undefined, {{ PATH: "" }}); }} catch (e) {{ out.missing = e.message; }}
try {{ m.findBinary("/nonexistent/synthesis-bridge"); }} catch (e) {{ out.bad = e.message; }}
out.found = m.findBinary(undefined, {{ PATH: {bin_dir} }});
out.args = m.serveArgs(
  {{ demo: true, permissionMode: "acceptEdits", maxProcesses: 2, stripOpenclawContext: false,
     workspace: {workspace}, extraArgs: ["--idle-kill=5m"] }},
  {{ stateDir: {state}, apiKeyFile: {key}, parentPid: {pid} }});
console.log(JSON.stringify(out));"#,
        module = json!(format!(
            "file://{}",
            plugin_dir().join("bridge-process.js").display()
        )),
        bin_dir = json!(bin_dir),
        workspace = json!(dir.path()),
        state = json!(dir.path().join("state")),
        key = json!(key_file),
        pid = std::process::id(),
    );
    let out = Command::new(&node)
        .args(["--input-type=module", "-e", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let setting = "plugins.entries.synthesis-bridge.config.binary";
    for case in ["missing", "bad"] {
        let message = result[case].as_str().unwrap();
        assert!(
            message.contains(setting) && message.contains("openclaw config set"),
            "{case}: {message}"
        );
    }
    assert_eq!(
        Path::new(result["found"].as_str().unwrap()),
        bin_dir.join("synthesis-bridge")
    );

    // The flags the service passes start a real bridge (its parent is this test process).
    let args: Vec<String> = serde_json::from_value(result["args"].clone()).unwrap();
    assert!(args.contains(&"--parent-pid".to_string()), "{args:?}");
    let mut bridge = Command::new(BIN)
        .args(&args)
        .arg("--port=0")
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(bridge.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let http = line
        .split_whitespace()
        .nth(1)
        .and_then(|h| h.strip_prefix("http="))
        .map(|h| h.parse().unwrap());
    let models = http.map(|addr| {
        request(
            addr,
            "GET",
            "/v1/models",
            &[("Authorization", "Bearer sk-helper-test")],
            "",
        )
    });
    signal(bridge.id(), libc::SIGTERM);
    let status = wait_until(Duration::from_secs(15), || bridge.try_wait().ok().flatten());
    if status.is_none() {
        let _ = bridge.kill();
        let _ = bridge.wait();
    }
    let models = models.unwrap_or_else(|| panic!("no listening line: {line:?}"));
    assert_eq!(models.status, 200, "the key file's key is accepted");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "a clean shutdown");
}
