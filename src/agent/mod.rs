//! One `claude` process: how it is started (flags, environment, the MCP config it reads),
//! its terminal (PTY + parsed screen, start-up dialogs), and how it is stopped.
//!
//! This module knows Claude Code's command line and screens (docs/CLAUDE_CODE.md §9) and nothing about
//! sessions, turns or HTTP. The session worker owns an `Agent` and decides when to use it.

pub mod fork;
pub mod pty;
pub mod screen;
pub mod version;

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::protocol::env;
use screen::{KnownScreen, Screen};

/// How every agent of this bridge is launched; built once at start-up.
#[derive(Debug, Clone)]
pub struct AgentLauncher {
    /// The claude binary (or the bridge itself for the simulated agent).
    pub program: OsString,
    /// Arguments before claude's own (`["sim-agent"]` for the simulated agent).
    pub prefix_args: Vec<OsString>,
    pub channel_name: String,
    pub permission_mode: String,
    pub mcp_config: PathBuf,
    pub ws_url: String,
    /// Where the Stop hook sends `turn_end` (the hub's Unix socket; `@name` = abstract).
    pub hook_socket: String,
    pub token: String,
    pub hello_delay: Duration,
    /// Extra `--settings` JSON (e.g. the Stop hook), if any.
    pub settings_json: Option<String>,
    /// `--setting-sources` (which of the user's, project's and local settings claude loads).
    pub setting_sources: Option<String>,
    /// Where claude writes its MCP debug log, one file per spawn (`--debug=mcp
    /// --debug-file`): the channel server says hello the moment that log says Claude
    /// registered the channel, instead of after a fixed delay (docs/CLAUDE_CODE.md §9.5).
    pub debug_dir: Option<PathBuf>,
}

/// What differs between two spawns.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub session_key: &'a str,
    pub claude_session: &'a str,
    /// `--resume` (the transcript exists) rather than `--session-id`.
    pub resume: bool,
    pub spawn_id: &'a str,
    pub workspace: &'a Path,
    /// The client's system prompt, written to a file (`system_prompt = append`).
    pub append_system_prompt_file: Option<&'a Path>,
    /// Start `claude_session` as a fork of another conversation (`resume` is then false).
    pub fork: Option<fork::ForkAt<'a>>,
}

impl AgentLauncher {
    /// claude's flags. `--dangerously-load-development-channels` and `--allowedTools` are
    /// variadic: each must be followed by another `--flag` or end the list (docs/CLAUDE_CODE.md §9.2).
    /// Never `--channels` as well: with both, the channel is skipped.
    pub fn args(&self, launch: &Launch) -> Vec<OsString> {
        let mut args: Vec<OsString> = self.prefix_args.clone();
        let mut push = |a: &str| args.push(OsString::from(a));
        push("--dangerously-load-development-channels");
        push(&format!("server:{}", self.channel_name));
        if let Some(at) = launch.fork {
            push("--resume");
            push(at.parent);
            push("--fork-session");
            push("--resume-session-at");
            push(at.at);
        }
        push(if launch.resume {
            "--resume"
        } else {
            "--session-id"
        });
        push(launch.claude_session);
        push("--permission-mode");
        push(&self.permission_mode);
        push("--mcp-config");
        args.push(self.mcp_config.clone().into_os_string());
        let mut push = |a: &str| args.push(OsString::from(a));
        push("--strict-mcp-config");
        if let Some(settings) = &self.settings_json {
            push("--settings");
            push(settings);
        }
        if let Some(sources) = &self.setting_sources {
            push("--setting-sources");
            push(sources);
        }
        if let Some(file) = launch.append_system_prompt_file {
            push("--append-system-prompt-file");
            args.push(file.as_os_str().to_owned());
        }
        if let Some(file) = self.debug_file(launch) {
            args.push("--debug=mcp".into());
            args.push("--debug-file".into());
            args.push(file.into_os_string());
        }
        let mut push = |a: &str| args.push(OsString::from(a));
        // The whole channel server: `reply` and the client's tools, whose set changes
        // between turns while this flag cannot (a server-wide rule is honoured:
        // docs/CLIENT_TOOLS.md).
        push("--allowedTools");
        push(&format!("mcp__{}", self.channel_name));
        args
    }

    /// Variables added to the bridge's own environment (which the child inherits, so
    /// `CLAUDE_CONFIG_DIR`, `ANTHROPIC_*` and `HOME` pass through; see `env_remove`).
    pub fn env(&self, launch: &Launch) -> Vec<(OsString, OsString)> {
        let pairs = [
            ("DISABLE_AUTOUPDATER", "1".to_string()),
            ("ENABLE_TOOL_SEARCH", "false".to_string()),
            ("TERM", "xterm-256color".to_string()),
            (env::WS_URL, self.ws_url.clone()),
            (env::HOOK_SOCKET, self.hook_socket.clone()),
            (env::OPENCLAW_SESSION, launch.session_key.to_string()),
            (
                env::HOOK_SESSION,
                crate::hook_http::encode_session(launch.session_key),
            ),
            (env::CLAUDE_SESSION, launch.claude_session.to_string()),
            (env::SPAWN_ID, launch.spawn_id.to_string()),
            (env::BRIDGE_TOKEN, self.token.clone()),
            (
                env::HELLO_DELAY_MS,
                self.hello_delay.as_millis().to_string(),
            ),
        ];
        let mut env: Vec<(OsString, OsString)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        if let Some(file) = self.debug_file(launch) {
            env.push((env::CLAUDE_DEBUG_FILE.into(), file.into_os_string()));
        }
        env
    }

    /// This spawn's MCP debug log, when the launcher asks claude for one.
    pub fn debug_file(&self, launch: &Launch) -> Option<PathBuf> {
        let dir = self.debug_dir.as_ref()?;
        Some(dir.join(format!("claude-{}.log", launch.spawn_id)))
    }
}

/// Removes a file when dropped (a spawn's debug log goes with its process).
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Variables of the bridge's environment a child must not inherit: every `SYNTHESIS_*`
/// variable (the bridge's settings, `SYNTHESIS_API_KEY`, `SYNTHESIS_API_KEY_FILE`,
/// `SYNTHESIS_CONFIG`, fault injection, …) except those in `KEPT_VARIABLES` and the
/// simulated agent's `SYNTHESIS_SIM_*` test hooks. Deny by default: a setting added later is
/// scrubbed without anyone having to remember it. Any tool Claude runs inherits claude's
/// environment, so what is left here is readable by it.
pub fn env_remove() -> Vec<OsString> {
    env_remove_from(std::env::vars_os().map(|(name, _)| name))
}

/// `SYNTHESIS_*` variables a child keeps: the launcher sets its own (`AgentLauncher::env`)
/// anyway; the test marker (tests find their processes by it) and the channel log are not
/// secrets.
pub const KEPT_VARIABLES: &[&str] = &["SYNTHESIS_TEST_MARKER", env::CHANNEL_LOG];

fn env_remove_from(names: impl Iterator<Item = OsString>) -> Vec<OsString> {
    names
        .filter(|name| {
            let name = name.to_string_lossy();
            name.starts_with("SYNTHESIS_")
                && !name.starts_with("SYNTHESIS_SIM_")
                && !KEPT_VARIABLES.contains(&name.as_ref())
        })
        .collect()
}

/// The `--settings` JSON that installs `<bridge> hook stop` as Claude's Stop hook (the
/// turn-end backstop). Claude runs hook commands through a shell, so the path is quoted.
pub fn stop_hook_settings(bridge_exe: &Path) -> String {
    let quoted = format!("'{}'", bridge_exe.to_string_lossy().replace('\'', r"'\''"));
    serde_json::json!({
        "hooks": {"Stop": [{"hooks": [{"type": "command", "command": format!("{quoted} hook stop"), "timeout": 10}]}]}
    })
    .to_string()
}

/// Writes the MCP config that names `<bridge> channel` as the stdio server, atomically and
/// readable by its owner only (`store::write_atomically`).
pub fn write_mcp_config(path: &Path, bridge_exe: &Path, channel_name: &str) -> io::Result<()> {
    let config = serde_json::json!({
        "mcpServers": {channel_name: {"command": bridge_exe, "args": ["channel"], "env": {}}}
    });
    crate::session::store::write_atomically(path, &serde_json::to_vec_pretty(&config)?)
}

/// Resolves a program name the way a shell would (a path is taken as is).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let is_executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Claude's config dir: `$CLAUDE_CONFIG_DIR`, else `~/.claude`.
pub fn claude_config_dir() -> PathBuf {
    match std::env::var_os("CLAUDE_CONFIG_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".claude")
        }
    }
}

/// Terminal output kept for error messages once the parsed screen is gone.
const RECENT_OUTPUT_BYTES: usize = 4 * 1024;

/// Longest project directory name Claude Code uses before it cuts and hash-suffixes it.
const MAX_PROJECT_DIR_NAME: usize = 200;

/// Claude's project directory name for a working directory: every non-alphanumeric
/// character becomes `-` (docs/CLAUDE_CODE.md §9.3).
pub fn project_dir_name(cwd: &Path) -> String {
    cwd.to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Whether Claude has a transcript for `session` run in `cwd`: then it must be started with
/// `--resume`, else with `--session-id` (each refuses the other case). Names over 200
/// characters are cut and given a hash suffix whose function we do not reproduce, so for
/// those any directory starting with the cut name counts.
pub fn transcript_exists(config_dir: &Path, cwd: &Path, session: &str) -> bool {
    transcript_path(config_dir, cwd, session).is_some()
}

/// The transcript file of `session` run in `cwd`, if it exists.
pub fn transcript_path(config_dir: &Path, cwd: &Path, session: &str) -> Option<PathBuf> {
    let projects = config_dir.join("projects");
    let name = project_dir_name(cwd);
    let file = format!("{session}.jsonl");
    if name.len() <= MAX_PROJECT_DIR_NAME {
        let path = projects.join(&name).join(&file);
        return path.is_file().then_some(path);
    }
    let prefix = &name[..MAX_PROJECT_DIR_NAME];
    std::fs::read_dir(&projects)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path().join(&file))
        .find(|path| path.is_file())
}

/// Whether the end of a transcript records the channel message of `turn_id` (Claude writes
/// each message it takes in, tag and all). Reads only the last `TAIL_BYTES`.
pub fn transcript_mentions_turn(transcript: &Path, turn_id: &str) -> bool {
    const TAIL_BYTES: u64 = 256 * 1024;
    use std::io::{Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(transcript) else {
        return false;
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if file
        .seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .is_err()
    {
        return false;
    }
    let mut tail = Vec::new();
    if file.read_to_end(&mut tail).is_err() {
        return false;
    }
    let tail = String::from_utf8_lossy(&tail);
    tail.contains(&format!("turn_id=\\\"{turn_id}\\\""))
        || tail.contains(&format!("turn_id=\"{turn_id}\""))
}

/// What draining the terminal found.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Read what there was; the child's terminal is still open.
    Open,
    /// The terminal closed: the child (and everything holding the slave) is gone.
    Closed,
}

/// A running agent in its terminal.
pub struct Agent {
    child: pty::PtyChild,
    /// The parsed screen, kept while claude starts (its dialogs are recognised on it). Once
    /// the session is ready it is dropped (a 160×50 grid costs ~400 KiB per session); the
    /// screen for an error message is then rebuilt from `recent`.
    screen: Option<Screen>,
    /// The last `RECENT_OUTPUT_BYTES` of terminal output.
    recent: std::collections::VecDeque<u8>,
    pub spawn_id: String,
    dev_channels_accepted: bool,
    /// Reused for every read of the terminal (allocated and zeroed once, not per read).
    read_buf: Box<[u8]>,
    /// The spawn's MCP debug log, removed with the agent.
    _debug_file: Option<RemoveOnDrop>,
}

impl Agent {
    pub fn spawn(launcher: &AgentLauncher, launch: &Launch) -> io::Result<Agent> {
        let args = launcher.args(launch);
        let env = launcher.env(launch);
        let env_remove = env_remove();
        let child = pty::spawn(&pty::SpawnSpec {
            program: &launcher.program,
            args: &args,
            env: &env,
            env_remove: &env_remove,
            cwd: launch.workspace,
        })?;
        Ok(Agent {
            child,
            screen: Some(Screen::new(pty::ROWS, pty::COLS)),
            recent: std::collections::VecDeque::with_capacity(RECENT_OUTPUT_BYTES),
            spawn_id: launch.spawn_id.to_string(),
            dev_channels_accepted: false,
            read_buf: vec![0; 4 * 1024].into_boxed_slice(),
            _debug_file: launcher.debug_file(launch).map(RemoveOnDrop),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Descriptors to wait on: the PTY master, and the pidfd when the kernel has them.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.child.master.as_raw_fd()];
        if let Some(fd) = &self.child.pidfd {
            fds.push(fd.as_raw_fd());
        }
        fds
    }

    /// Reads everything the terminal has into the screen. Must be called whenever the master
    /// is readable: a full PTY buffer blocks claude.
    pub fn drain_output(&mut self) -> Output {
        loop {
            match self.child.master.read(&mut self.read_buf) {
                Ok(0) => return Output::Closed,
                Ok(n) => {
                    let bytes = &self.read_buf[..n];
                    if let Some(screen) = self.screen.as_mut() {
                        screen.feed(bytes);
                    }
                    let overflow = (self.recent.len() + n).saturating_sub(RECENT_OUTPUT_BYTES);
                    self.recent.drain(..overflow.min(self.recent.len()));
                    self.recent
                        .extend(&bytes[n.saturating_sub(RECENT_OUTPUT_BYTES)..]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Output::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EIO: the slave side is closed (Linux reports a hung-up PTY this way).
                Err(_) => return Output::Closed,
            }
        }
    }

    /// Handles start-up screens: accepts the dev-channels warning (once, and only once it is on
    /// screen); any other blocking screen is an error naming the setting that avoids it.
    pub fn answer_startup_screen(&mut self) -> Result<(), String> {
        match self.screen.as_ref().and_then(Screen::recognise) {
            Some(KnownScreen::DevChannelsWarning) if !self.dev_channels_accepted => {
                log::debug!("dev-channels warning on screen; accepting");
                self.dev_channels_accepted = true;
                self.send_keys(b"\r")
                    .map_err(|e| format!("could not answer the dev-channels warning: {e}"))
            }
            Some(KnownScreen::Blocking(name, fix)) => Err(format!(
                "claude is waiting on its {name} screen, which the bridge does not answer: {fix}"
            )),
            _ => Ok(()),
        }
    }

    /// Interrupts the current turn (Esc, as a person would press it).
    pub fn interrupt(&mut self) -> io::Result<()> {
        self.send_keys(b"\x1b")
    }

    fn send_keys(&mut self, keys: &[u8]) -> io::Result<()> {
        self.child.master.write_all(keys)
    }

    /// Types `line` then Enter, in one write (claude takes a slash command typed this way at
    /// its prompt; observed on 2.1.331 with `/resume <uuid>`).
    pub fn type_line(&mut self, line: &str) -> io::Result<()> {
        self.send_keys(format!("{line}\r").as_bytes())
    }

    /// What claude's own session file (`<config>/sessions/<pid>.json`) says it is doing:
    /// `idle`, `busy` or `waiting` (for a permission prompt). None if there is no such file.
    pub fn reported_status(&self, config_dir: &Path) -> Option<String> {
        self.session_file_field(config_dir, "status")
    }

    /// The conversation claude's session file names (`sessionId`; it changes on `/resume`).
    pub fn reported_conversation(&self, config_dir: &Path) -> Option<String> {
        self.session_file_field(config_dir, "sessionId")
    }

    fn session_file_field(&self, config_dir: &Path, field: &str) -> Option<String> {
        let path = config_dir
            .join("sessions")
            .join(format!("{}.json", self.pid()));
        let text = std::fs::read_to_string(path).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value.get(field)?.as_str().map(String::from)
    }

    /// Waits up to `limit` for the child to exit (used after its terminal closed).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.child.wait_timeout(limit).ok().flatten()
    }

    /// The last lines on screen, for error messages.
    pub fn screen_tail(&self, lines: usize) -> String {
        if let Some(screen) = &self.screen {
            return screen.tail(lines);
        }
        let mut replay = Screen::new(pty::ROWS, pty::COLS);
        let (a, b) = self.recent.as_slices();
        replay.feed(a);
        replay.feed(b);
        replay.tail(lines)
    }

    /// Start-up is over: stop keeping the parsed screen (see `screen`), and hand the freed
    /// memory back to the system (glibc keeps freed memory of per-thread arenas otherwise,
    /// and every session worker is a thread). `malloc_trim` is a glibc extension: other C
    /// libraries (musl) have no such call, and no per-thread arenas to trim.
    pub fn started(&mut self) {
        self.screen = None;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// SIGTERM to the process group, SIGKILL after `grace`; always reaps.
    pub fn stop(mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.child.terminate(grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launcher() -> AgentLauncher {
        AgentLauncher {
            program: "claude".into(),
            prefix_args: vec![],
            channel_name: "synthesis".into(),
            permission_mode: "default".into(),
            mcp_config: "/state/mcp.json".into(),
            ws_url: "ws://127.0.0.1:1/bridge".into(),
            hook_socket: "/state/hub.sock".into(),
            token: "tok".into(),
            hello_delay: Duration::from_secs(1),
            settings_json: None,
            setting_sources: None,
            debug_dir: None,
        }
    }

    fn launch(resume: bool) -> Launch<'static> {
        Launch {
            session_key: "k",
            claude_session: "uuid-1",
            resume,
            spawn_id: "sp",
            workspace: Path::new("/"),
            append_system_prompt_file: None,
            fork: None,
        }
    }

    #[test]
    fn variadic_flags_are_always_followed_by_a_flag_or_the_end() {
        let args: Vec<String> = launcher()
            .args(&launch(false))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "--dangerously-load-development-channels server:synthesis --session-id uuid-1 --permission-mode default \
             --mcp-config /state/mcp.json --strict-mcp-config --allowedTools mcp__synthesis"
        );
        assert!(!args.iter().any(|a| a == "--channels"));
        let resumed: Vec<String> = launcher()
            .args(&launch(true))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(
            resumed
                .windows(2)
                .any(|w| w[0] == "--resume" && w[1] == "uuid-1")
        );
        let forked = Launch {
            fork: Some(fork::ForkAt {
                parent: "parent-1",
                at: "msg-9",
            }),
            ..launch(false)
        };
        let forked = launcher()
            .args(&forked)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            forked.contains(
                "server:synthesis --resume parent-1 --fork-session --resume-session-at msg-9 --session-id uuid-1 --permission-mode"
            ),
            "{forked}"
        );
    }

    #[test]
    fn stop_hook_command_quotes_the_path_for_the_shell() {
        let settings: serde_json::Value = serde_json::from_str(&stop_hook_settings(Path::new(
            "/opt/it's here/synthesis-bridge",
        )))
        .unwrap();
        let command = settings["hooks"]["Stop"][0]["hooks"][0]["command"]
            .as_str()
            .unwrap();
        assert_eq!(command, r"'/opt/it'\''s here/synthesis-bridge' hook stop");
    }

    #[test]
    fn project_dir_replaces_every_non_alphanumeric() {
        assert_eq!(
            project_dir_name(Path::new("/home/a.b/my_ws")),
            "-home-a-b-my-ws"
        );
    }

    #[test]
    fn transcript_lookup_follows_the_path_rule_including_the_200_char_cut() {
        let root = std::env::temp_dir().join(format!("sb-transcript-{}", std::process::id()));
        let short = Path::new("/w/s");
        let long = PathBuf::from(format!("/w/{}", "x".repeat(250)));
        assert!(!transcript_exists(&root, short, "u1"));
        let dir = root.join("projects").join("-w-s");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("u1.jsonl"), "{}\n").unwrap();
        assert!(transcript_exists(&root, short, "u1"));
        assert!(!transcript_exists(&root, short, "u2"));
        let cut = &project_dir_name(&long)[..200];
        let dir = root.join("projects").join(format!("{cut}-1a2b3c"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("u3.jsonl"), "{}\n").unwrap();
        assert!(transcript_exists(&root, &long, "u3"));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn every_spawn_gets_the_synthesis_variables() {
        let env = launcher().env(&launch(false));
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("DISABLE_AUTOUPDATER").as_deref(), Some("1"));
        assert_eq!(get("ENABLE_TOOL_SEARCH").as_deref(), Some("false"));
        assert_eq!(get("SYNTHESIS_SPAWN_ID").as_deref(), Some("sp"));
        assert_eq!(get("SYNTHESIS_BRIDGE_TOKEN").as_deref(), Some("tok"));
        assert_eq!(get("SYNTHESIS_HELLO_DELAY_MS").as_deref(), Some("1000"));
        assert_eq!(
            get("SYNTHESIS_HOOK_SOCKET").as_deref(),
            Some("/state/hub.sock")
        );
    }

    #[test]
    fn the_bridges_own_settings_and_secrets_are_scrubbed_from_children() {
        let names = [
            "SYNTHESIS_API_KEY",
            "SYNTHESIS_API_KEY_FILE",
            "SYNTHESIS_CONFIG",
            "SYNTHESIS_PORT",
            "SYNTHESIS_TEST_MARKER",
            "SYNTHESIS_SIM_DIALOG",
            "SYNTHESIS_CHANNEL_LOG",
            "ANTHROPIC_API_KEY",
            "CLAUDE_CONFIG_DIR",
            "HOME",
        ];
        let removed = env_remove_from(names.iter().map(OsString::from));
        assert_eq!(
            removed,
            [
                "SYNTHESIS_API_KEY",
                "SYNTHESIS_API_KEY_FILE",
                "SYNTHESIS_CONFIG",
                "SYNTHESIS_PORT"
            ]
            .map(OsString::from)
        );
    }
}
