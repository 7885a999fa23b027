//! Start-up configuration as a user meets it: relative paths work from wherever the bridge
//! is started, and absurd durations are refused at start with the field named (exit 2, no
//! panic). The PTY descriptor hygiene of the spawn is tested in `src/agent/pty.rs`.
//!
//! These tests start the binary themselves (the support builder always passes absolute
//! paths and runs in the test's cwd); every process carries the support marker and is
//! killed by `Started`'s drop, even on panic.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{
    BIN, MARKER_VAR, TempDir, agent_pids, chat_body, kill_marked, request, signal, wait_until,
};

/// A bridge process started by this file, with its marker; killed (with everything it
/// started) on drop.
struct Started {
    child: Child,
    marker: String,
    log: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_marked(&self.marker);
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- bridge log ---\n{log}");
        }
    }
}

/// `synthesis-bridge serve --demo <args>` with `cwd` as its working directory and
/// `<home>` as HOME / CLAUDE_CONFIG_DIR (both under `dir`).
fn start_in(dir: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Started {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let log = dir.join(format!("bridge-{}.log", uuid::Uuid::new_v4().simple()));
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let child = Command::new(BIN)
        .current_dir(cwd)
        .args(["serve", "--demo", "--channel-hello-delay", "20ms"])
        .args(["--port", "0", "--channel-ws-port", "0"])
        .args(args)
        .env(MARKER_VAR, &marker)
        .env("HOME", &home)
        .env("CLAUDE_CONFIG_DIR", home.join(".claude"))
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start synthesis-bridge");
    Started { child, marker, log }
}

/// Reads the `listening http=<addr> ws=<addr>` line; None if stdout closed first.
fn listening_addr(started: &mut Started) -> Option<SocketAddr> {
    let stdout = started.child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("read-listening".into())
        .spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        })
        .unwrap();
    let line = rx.recv_timeout(Duration::from_secs(20)).ok()?;
    line.split_whitespace()
        .nth(1)?
        .strip_prefix("http=")?
        .parse()
        .ok()
}

fn turn(http: SocketAddr, session: &str, text: &str) -> Value {
    let response = request(
        http,
        "POST",
        "/v1/chat/completions",
        &[
            ("X-Session-Key", session),
            ("Content-Type", "application/json"),
        ],
        &chat_body(text, false),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

impl Started {
    /// SIGTERM, then the exit code once it has exited.
    fn stop(&mut self) -> Option<i32> {
        signal(self.child.id(), libc::SIGTERM);
        wait_until(Duration::from_secs(20), || {
            self.child.try_wait().ok().flatten()
        })?
        .code()
    }
}

/// The command line of the agent process serving `key`.
fn agent_cmdline(marker: &str, key: &str) -> Vec<String> {
    let pid = *agent_pids(marker, key).first().expect("no agent process");
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The bridge started in a temp dir with `--state-dir st --workspace ws` serves turns: the
/// agent is spawned (its `--mcp-config` is found although it runs in `ws`), the session map
/// records absolute paths, and the transcript lookup finds what the agent wrote: after a
/// restart of the bridge the conversation's agent is started with `--resume` (with the
/// lookup broken it would get `--session-id`, which the agent refuses for an existing
/// transcript, and the turn would fail).
#[test]
fn relative_state_dir_and_workspace_serve_turns() {
    let dir = TempDir::new("relpaths");
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(cwd.join("ws")).unwrap();
    let mut bridge = start_in(
        dir.path(),
        &cwd,
        &["--state-dir", "st", "--workspace", "ws"],
        &[],
    );
    let http = listening_addr(&mut bridge).expect("bridge did not start");

    let first = turn(http, "rel-1", "hello from a relative workspace");
    let text = first["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("hello from a relative workspace"), "{text}");
    turn(http, "rel-1", "and again");

    let real_cwd = cwd.canonicalize().unwrap();
    let map: Value =
        serde_json::from_slice(&std::fs::read(cwd.join("st/sessions.json")).unwrap()).unwrap();
    let record = &map["sessions"]["rel-1"];
    let workspace = Path::new(record["workspace"].as_str().unwrap());
    assert!(workspace.is_absolute(), "{record}");
    assert_eq!(workspace, real_cwd.join("ws"));
    assert!(cwd.join("st/mcp-config.json").is_file());

    let args = agent_cmdline(&bridge.marker, "rel-1");
    let mcp = args.iter().position(|a| a == "--mcp-config").unwrap();
    assert_eq!(
        Path::new(&args[mcp + 1]),
        real_cwd.join("st/mcp-config.json")
    );
    assert!(args.iter().any(|a| a == "--session-id"), "{args:?}");
    assert_eq!(bridge.stop(), Some(0));

    let mut bridge = start_in(
        dir.path(),
        &cwd,
        &["--state-dir", "st", "--workspace", "ws"],
        &[],
    );
    let http = listening_addr(&mut bridge).expect("bridge did not restart");
    let resumed = turn(http, "rel-1", "after the restart");
    let text = resumed["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(text.contains("after the restart"), "{text}");
    let args = agent_cmdline(&bridge.marker, "rel-1");
    assert!(args.iter().any(|a| a == "--resume"), "{args:?}");
    assert_eq!(bridge.stop(), Some(0));
}

/// Exit code and stderr of a bridge that must refuse to start.
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut started = start_in(dir, dir, args, env);
    let status = wait_until(Duration::from_secs(20), || {
        started.child.try_wait().ok().flatten()
    })
    .expect("bridge did not exit");
    let stderr = std::fs::read_to_string(&started.log).unwrap_or_default();
    (status.code(), stderr)
}

/// `1e20` seconds (and other absurd durations) from a flag, the environment or a config
/// file: exit 2 at start, the message names the field and the 30-day bound, no panic.
#[test]
fn absurd_durations_are_refused_at_start_naming_the_field() {
    let dir = TempDir::new("durations");
    let file = dir.path().join("config.json");
    std::fs::write(&file, r#"{"idle_kill": 1e20}"#).unwrap();
    /// Flags, environment, and what the error must name.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--turn-timeout", "1e20"], vec![], "--turn-timeout"),
        (vec!["--queue-timeout", "1e19"], vec![], "--queue-timeout"),
        (
            vec![],
            vec![("SYNTHESIS_READY_TIMEOUT", "1e20")],
            "SYNTHESIS_READY_TIMEOUT",
        ),
        (
            vec!["--config", file.to_str().unwrap()],
            vec![],
            "field `idle_kill`",
        ),
    ];
    for (args, env, named) in cases {
        let (code, stderr) = refused(dir.path(), &args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("30 days"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (code, stderr) = refused(dir.path(), &["--turn-timeout", "NaN"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--turn-timeout"), "{stderr}");
    let (code, stderr) = refused(dir.path(), &["--max-queued-turns", "0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--max-queued-turns"), "{stderr}");
}
