//! The bridge's configuration: one `Config` struct, filled once at start-up from
//! defaults < JSON file (`--config`) < environment (`SYNTHESIS_<FIELD>`) < command-line flags,
//! then validated. Every source goes through the same `Config::set(field, text)`, so a field
//! is parsed one way wherever it comes from, and an error always names the field.
//!
//! Nothing else reads the environment or the flags for settings: other modules take a
//! `&Config` (or the few values they need).
//!
//! Beside this file: fields.rs (the table of fields and their help), parse.rs (the text
//! parsers), tests.rs.

mod fields;
mod parse;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::session::workspace::WorkspaceMode;

pub use fields::FIELDS;
use parse::{nonempty, parse_bool, parse_count, parse_flags, parse_port};
pub use parse::{parse_duration, resolve_dir};

/// The longest any duration setting may be. Bounding every duration keeps `Instant + d`
/// (deadlines computed from settings) far from overflow, and catches unit mistakes such as
/// milliseconds written as seconds.
pub const MAX_DURATION_DAYS: u64 = 30;
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_DURATION_DAYS * 24 * 3600);
/// `max_processes` and `max_concurrent_turns` above this are refused (each process takes
/// ~300 MB, so this is far past any real machine).
const MAX_PROCESSES: usize = 1024;
/// `max_queued_turns` above this is refused: each session's queue is allocated at its full
/// capacity.
const MAX_QUEUED_TURNS: usize = 10_000;
/// Most open HTTP connections `max_connections` may allow (each costs a thread and a descriptor).
const MAX_CONNECTIONS: usize = 1_000_000;
const MIN_BODY_BYTES: usize = 1024;
const MAX_BODY_BYTES: usize = 1 << 30;

#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub channel_ws_port: u16,
    pub claude_bin: String,
    pub demo: bool,
    pub workspace: PathBuf,
    pub state_dir: PathBuf,
    pub models: Vec<String>,
    pub api_key: Option<String>,
    /// Where `api_key` was read from (`--api-key-file`), if it was.
    pub api_key_file: Option<PathBuf>,
    pub heartbeat_interval: Duration,
    pub ready_timeout: Duration,
    pub turn_timeout: Duration,
    pub channel_hello_delay: Duration,
    pub channel_name: String,
    pub permission_mode: String,
    /// `stop_hook`: how claude reports a turn end (`http` hook, `command` hook, or `auto`).
    pub stop_hook: StopHookKind,
    pub max_body_bytes: usize,
    /// None = derived from RLIMIT_NOFILE (`default_max_connections`).
    pub max_connections: Option<usize>,
    pub max_queued_turns: usize,
    pub fallback_session_key: String,
    pub conversation_match: bool,
    /// Forks start claude with its own fork flags rather than the restored history
    /// (docs/HTTP_API.md §6.2; experimental).
    pub fork_with_claude_flags: bool,
    /// A turn for a session whose claude is still finishing its previous turn (the closing
    /// model call after the final reply) is pushed at once, and Claude folds it into that
    /// turn (docs/SPEED.md §4); false (the default): it waits for the previous turn's end,
    /// because Claude presents a folded message as untrusted external input, not as the
    /// user's (docs/CLAUDE_CODE.md §9.5).
    pub pipeline_turns: bool,
    /// Where a session key may come from, in `identity::KEY_SOURCES` order (default: all but `user`).
    pub session_key_sources: Vec<String>,
    /// Browser origins answered with CORS headers (`*` = any); empty = no CORS.
    pub cors_origins: Vec<String>,
    pub workspace_mode: WorkspaceMode,
    pub idle_kill: Duration,
    pub max_processes: usize,
    /// None = same as `max_processes`.
    pub max_concurrent_turns: Option<usize>,
    /// None = `default_standby(max_processes)`.
    pub standby: Option<usize>,
    /// A returning conversation takes a standby too: the bridge types `/resume <id>` into it
    /// (docs/SPEED.md §3).
    pub standby_resume: bool,
    pub shutdown_grace: Duration,
    pub queue_timeout: Duration,
    pub retry_grace: Duration,
    pub delivery_timeout: Duration,
    /// What to do when Claude asks for a tool permission (chat | deny | off).
    pub permission_relay: crate::session::pending::PermissionRelay,
    /// How long a relayed permission question waits for an answer before it is denied.
    pub permission_timeout: Duration,
    pub client_read_timeout: Duration,
    pub strip_openclaw_context: bool,
    pub system_prompt: SystemPromptPolicy,
    pub client_tools: ClientToolsPolicy,
    pub tool_result_timeout: Duration,
    pub insecure_public: bool,
    pub allow_bypass_permissions: bool,
    pub setting_sources: Option<String>,
    /// Stop when this process (which must be the bridge's parent) exits: `PR_SET_PDEATHSIG`.
    pub parent_pid: Option<u32>,
}

/// What happens to the client's system prompt. `Ignore` by default: OpenClaw's prompt
/// describes OpenClaw's own tools and runtime, which Claude Code does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemPromptPolicy {
    Ignore,
    /// Passed to claude with `--append-system-prompt-file`; a change restarts the session
    /// (with `--resume`) before its next turn.
    Append,
}

/// How claude runs the Stop hook (the turn-end backstop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHookKind {
    /// `http` when claude's version has `type: "http"` hooks (and for the simulated agent),
    /// else `command`.
    Auto,
    /// `type: "http"`: claude POSTs the hook input to the hub; no process per turn.
    Http,
    /// `type: "command"`: `sh -c '<bridge> hook stop'` per turn.
    Command,
}

/// Which of a request's `tools` become tools Claude can call (docs/CLIENT_TOOLS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientToolsPolicy {
    /// Every tool the request names (the OpenAI contract).
    All,
    /// None: requests' `tools` are ignored.
    None,
    /// Only tools whose name matches one of these names or globs (`*`, `?`).
    Only(Vec<String>),
}

impl ClientToolsPolicy {
    pub fn allows(&self, name: &str) -> bool {
        match self {
            ClientToolsPolicy::All => true,
            ClientToolsPolicy::None => false,
            ClientToolsPolicy::Only(patterns) => patterns.iter().any(|p| glob_match(p, name)),
        }
    }
}

impl std::str::FromStr for ClientToolsPolicy {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim() {
            "all" => Ok(ClientToolsPolicy::All),
            "none" | "" => Ok(ClientToolsPolicy::None),
            list => {
                let patterns: Vec<String> = list
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect();
                if let Some(bad) = patterns.iter().find(|p| {
                    !p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-*?.".contains(c))
                }) {
                    return Err(format!(
                        "`{bad}` is not a tool name or glob (letters, digits, `_`, `-`, `.`, `*`, `?`); use all, none or a comma-separated list"
                    ));
                }
                Ok(ClientToolsPolicy::Only(patterns))
            }
        }
    }
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 8787,
            channel_ws_port: 0,
            claude_bin: "claude".into(),
            demo: false,
            workspace: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            state_dir: default_state_dir(),
            models: vec!["claude-code".into()],
            api_key: None,
            api_key_file: None,
            heartbeat_interval: Duration::from_secs(15),
            ready_timeout: Duration::from_secs(15),
            turn_timeout: Duration::from_secs(30 * 60),
            channel_hello_delay: Duration::from_secs(1),
            channel_name: "synthesis".into(),
            permission_mode: "default".into(),
            stop_hook: StopHookKind::Auto,
            max_body_bytes: 8 << 20,
            max_connections: None,
            max_queued_turns: 8,
            fallback_session_key: "default::default".into(),
            conversation_match: true,
            fork_with_claude_flags: false,
            pipeline_turns: false,
            session_key_sources: crate::session::identity::DEFAULT_KEY_SOURCES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            cors_origins: Vec::new(),
            workspace_mode: WorkspaceMode::Shared,
            idle_kill: Duration::from_secs(30 * 60),
            max_processes: default_max_processes(),
            max_concurrent_turns: None,
            standby: None,
            standby_resume: true,
            shutdown_grace: Duration::from_secs(10),
            queue_timeout: Duration::ZERO,
            retry_grace: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(10),
            permission_relay: crate::session::pending::PermissionRelay::Chat,
            permission_timeout: Duration::from_secs(10 * 60),
            client_read_timeout: Duration::from_secs(30),
            strip_openclaw_context: false,
            system_prompt: SystemPromptPolicy::Ignore,
            client_tools: ClientToolsPolicy::All,
            tool_result_timeout: Duration::from_secs(10 * 60),
            insecure_public: false,
            allow_bypass_permissions: false,
            setting_sources: None,
            parent_pid: None,
        }
    }
}

/// A quarter of the soft RLIMIT_NOFILE, within 16..8192: each HTTP connection holds two
/// descriptors (tiny_http reads and writes through two), and the rest is left for claude
/// processes' pipes, the channel hub and the state files.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    (soft / 4).clamp(16, 8192) as usize
}

/// Memory a claude process takes (observed 240–270 MB idle), for the default process cap.
const BYTES_PER_CLAUDE: u64 = 300 << 20;

/// Available memory / 300 MB, at least 1 and at most 16.
/// One standby process when there is room for at least four, else none.
pub fn default_standby(max_processes: usize) -> usize {
    usize::from(max_processes >= 4)
}

pub fn default_max_processes() -> usize {
    let available_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemAvailable:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        });
    available_kib.map_or(4, |kib| {
        ((kib * 1024) / BYTES_PER_CLAUDE).clamp(1, 16) as usize
    })
}

/// `$XDG_STATE_HOME/synthesis-bridge`, else `~/.local/state/synthesis-bridge`.
pub fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("synthesis-bridge"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".local/state/synthesis-bridge"),
    }
}

/// What the command line asked for besides settings.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    Help,
}

impl Config {
    /// Builds the configuration from `args` (the flags after `serve`) and the process
    /// environment, in precedence order defaults < file < env < flags.
    pub fn load(args: &[String]) -> Result<Invocation, String> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(args, &env)
    }

    pub fn load_from(args: &[String], env: &[(String, String)]) -> Result<Invocation, String> {
        let flags = parse_flags(args)?;
        if flags.iter().any(|(k, _)| k == "help") {
            return Ok(Invocation::Help);
        }
        let mut config = Config::default();
        let file = flags
            .iter()
            .rev()
            .find(|(k, _)| k == "config")
            .map(|(_, v)| v.clone())
            .or_else(|| {
                env.iter()
                    .find(|(k, _)| k == "SYNTHESIS_CONFIG")
                    .map(|(_, v)| v.clone())
            });
        if let Some(path) = file {
            config.apply_file(Path::new(&path))?;
        }
        for (name, _, _) in FIELDS {
            let var = format!("SYNTHESIS_{}", name.to_ascii_uppercase());
            if let Some((_, value)) = env.iter().find(|(k, _)| *k == var) {
                config.set(name, value).map_err(|e| format!("{var}: {e}"))?;
            }
        }
        for (name, value) in flags.iter().filter(|(k, _)| k != "config") {
            config
                .set(name, value)
                .map_err(|e| format!("--{}: {e}", name.replace('_', "-")))?;
        }
        config.make_paths_absolute();
        config.read_api_key_file()?;
        config.validate()?;
        Ok(Invocation::Run(Box::new(config)))
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("config file {}: not valid JSON: {e}", path.display()))?;
        let object = value
            .as_object()
            .ok_or_else(|| format!("config file {}: must be a JSON object", path.display()))?;
        for (name, value) in object {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            self.set(name, &text)
                .map_err(|e| format!("config file {}: field `{name}`: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Sets one field from its text form. The error does not repeat the field name; callers
    /// prefix it with where the value came from.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "host" => self.host = nonempty(value)?,
            "port" => self.port = parse_port(value)?,
            "channel_ws_port" => self.channel_ws_port = parse_port(value)?,
            "claude_bin" => self.claude_bin = nonempty(value)?,
            "demo" => self.demo = parse_bool(value)?,
            "workspace" => self.workspace = PathBuf::from(nonempty(value)?),
            "state_dir" => self.state_dir = PathBuf::from(nonempty(value)?),
            "models" => {
                self.models = value
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect();
                if self.models.is_empty() {
                    return Err("needs at least one model id".into());
                }
            }
            "api_key" => self.api_key = Some(value.to_string()).filter(|k| !k.is_empty()),
            "api_key_file" => self.api_key_file = Some(PathBuf::from(nonempty(value)?)),
            "heartbeat_interval" => self.heartbeat_interval = parse_duration(value)?,
            "ready_timeout" => self.ready_timeout = parse_duration(value)?,
            "turn_timeout" => self.turn_timeout = parse_duration(value)?,
            "channel_hello_delay" => self.channel_hello_delay = parse_duration(value)?,
            "channel_name" => {
                if !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    || value.is_empty()
                {
                    return Err(format!("`{value}` must be letters, digits, `_` or `-`"));
                }
                self.channel_name = value.to_string();
            }
            "permission_mode" => {
                const MODES: [&str; 5] = [
                    "default",
                    "acceptEdits",
                    "plan",
                    "bypassPermissions",
                    "dontAsk",
                ];
                if !MODES.contains(&value) {
                    return Err(format!("`{value}` is not one of {}", MODES.join(", ")));
                }
                self.permission_mode = value.to_string();
            }
            "max_body_bytes" => {
                self.max_body_bytes = parse_count(value, MIN_BODY_BYTES, MAX_BODY_BYTES)?
            }
            "max_connections" => {
                self.max_connections = Some(parse_count(value, 1, MAX_CONNECTIONS)?)
            }
            "max_queued_turns" => self.max_queued_turns = parse_count(value, 1, MAX_QUEUED_TURNS)?,
            "fallback_session_key" => self.fallback_session_key = nonempty(value)?,
            "conversation_match" => self.conversation_match = parse_bool(value)?,
            "fork_with_claude_flags" => self.fork_with_claude_flags = parse_bool(value)?,
            "pipeline_turns" => self.pipeline_turns = parse_bool(value)?,
            "session_key_sources" => {
                let sources: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if let Some(unknown) = sources
                    .iter()
                    .find(|s| !crate::session::identity::KEY_SOURCES.contains(&s.as_str()))
                {
                    return Err(format!(
                        "unknown source {unknown:?}; use any of {}",
                        crate::session::identity::KEY_SOURCES.join(",")
                    ));
                }
                self.session_key_sources = sources;
            }
            "cors_origins" => {
                self.cors_origins = value
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/'))
                    .filter(|o| !o.is_empty())
                    .map(String::from)
                    .collect();
                if let Some(bad) = self.cors_origins.iter().find(|o| {
                    o.as_str() != "*" && !(o.starts_with("http://") || o.starts_with("https://"))
                }) {
                    return Err(format!(
                        "{bad:?} is not an origin; write scheme://host[:port] (e.g. https://app.example.com) or *"
                    ));
                }
            }
            "workspace_mode" => self.workspace_mode = value.parse()?,
            "idle_kill" => self.idle_kill = parse_duration(value)?,
            "max_processes" => self.max_processes = parse_count(value, 1, MAX_PROCESSES)?,
            "max_concurrent_turns" => {
                self.max_concurrent_turns = Some(parse_count(value, 1, MAX_PROCESSES)?)
            }
            "standby" => self.standby = Some(parse_count(value, 0, MAX_PROCESSES)?),
            "standby_resume" => self.standby_resume = parse_bool(value)?,
            "shutdown_grace" => self.shutdown_grace = parse_duration(value)?,
            "queue_timeout" => self.queue_timeout = parse_duration(value)?,
            "retry_grace" => self.retry_grace = parse_duration(value)?,
            "delivery_timeout" => self.delivery_timeout = parse_duration(value)?,
            "permission_relay" => {
                self.permission_relay = crate::session::pending::PermissionRelay::parse(value)?
            }
            "permission_timeout" => self.permission_timeout = parse_duration(value)?,
            "client_read_timeout" => self.client_read_timeout = parse_duration(value)?,
            "insecure_public" => self.insecure_public = parse_bool(value)?,
            "allow_bypass_permissions" => self.allow_bypass_permissions = parse_bool(value)?,
            "parent_pid" => {
                self.parent_pid = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|pid| *pid > 1)
                        .ok_or_else(|| format!("a process id greater than 1, not `{value}`"))?,
                )
            }
            "setting_sources" => {
                let ok = value
                    .split(',')
                    .all(|s| matches!(s.trim(), "user" | "project" | "local"));
                if !ok {
                    return Err(format!(
                        "`{value}` must be a comma-separated list of user, project, local"
                    ));
                }
                self.setting_sources = Some(value.to_string());
            }
            "stop_hook" => {
                self.stop_hook = match value {
                    "auto" => StopHookKind::Auto,
                    "http" => StopHookKind::Http,
                    "command" => StopHookKind::Command,
                    _ => return Err(format!("`{value}` is not auto, http or command")),
                }
            }
            "strip_openclaw_context" => self.strip_openclaw_context = parse_bool(value)?,
            "client_tools" => self.client_tools = value.parse()?,
            "tool_result_timeout" => self.tool_result_timeout = parse_duration(value)?,
            "system_prompt" => {
                self.system_prompt = match value {
                    "ignore" => SystemPromptPolicy::Ignore,
                    "append" => SystemPromptPolicy::Append,
                    _ => return Err(format!("`{value}` is not ignore or append")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown setting `{name}` (see `synthesis-bridge serve --help`)"
                ));
            }
        }
        Ok(())
    }

    /// Paths are fixed at load, against the bridge's cwd at start: a relative `state_dir`
    /// would make claude (which runs in the workspace) look for `--mcp-config` in the wrong
    /// place, and a relative workspace would break the transcript lookup. See `resolve_dir`
    /// for why directories are resolved rather than only made absolute. `claude_bin` with a
    /// `/` is only made absolute (`std::path::absolute`, no I/O): exec follows its symlinks
    /// itself, and the name the user gave stays in the logs. Without a `/` it is looked up
    /// in PATH, as a shell would.
    fn make_paths_absolute(&mut self) {
        self.state_dir = resolve_dir(&self.state_dir);
        self.workspace = resolve_dir(&self.workspace);
        if self.claude_bin.contains('/') {
            let absolute = std::path::absolute(&self.claude_bin)
                .ok()
                .and_then(|p| p.into_os_string().into_string().ok());
            if let Some(absolute) = absolute {
                self.claude_bin = absolute;
            }
        }
    }

    /// `api_key_file`: the key is the file's first line, trimmed. An unreadable or empty file
    /// stops start-up; so does setting `api_key` as well (which one would win is a guess).
    fn read_api_key_file(&mut self) -> Result<(), String> {
        let Some(path) = &self.api_key_file else {
            return Ok(());
        };
        if self.api_key.is_some() {
            return Err(format!(
                "api_key_file {} and api_key are both set: keep only api_key_file (and unset SYNTHESIS_API_KEY)",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "api_key_file {}: cannot read it ({e}); the file must exist and be readable by the bridge's user",
                path.display()
            )
        })?;
        let key = text.lines().next().unwrap_or("").trim();
        if key.is_empty() {
            return Err(format!(
                "api_key_file {}: the first line is empty; put the API key on it",
                path.display()
            ));
        }
        self.api_key = Some(key.to_string());
        Ok(())
    }

    /// A warning when `api_key_file` can be read by its group or by others (logged at
    /// start-up, once logging is set up).
    pub fn api_key_file_warning(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.api_key_file.as_ref()?;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "api_key_file {} has mode {mode:03o}: other users may read the API key; run chmod 600 on it",
                path.display()
            )
        })
    }

    fn validate(&self) -> Result<(), String> {
        let loopback = matches!(self.host.as_str(), "localhost" | "::1")
            || self
                .host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && self.api_key.is_none() && !self.insecure_public {
            return Err(format!(
                "host {} is reachable from other machines and no api_key is set: set api_key (SYNTHESIS_API_KEY), bind 127.0.0.1, or pass --insecure-public",
                self.host
            ));
        }
        if self.permission_mode == "bypassPermissions" && !self.allow_bypass_permissions {
            return Err(
                "permission_mode bypassPermissions lets Claude run any command without asking; set allow_bypass_permissions = true to use it"
                    .into(),
            );
        }
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("ready_timeout", self.ready_timeout),
            ("turn_timeout", self.turn_timeout),
            ("idle_kill", self.idle_kill),
            ("client_read_timeout", self.client_read_timeout),
            ("delivery_timeout", self.delivery_timeout),
            ("permission_timeout", self.permission_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.max_body_bytes < 1024 {
            return Err("max_body_bytes must be at least 1024".into());
        }
        if self.max_processes == 0 {
            return Err("max_processes must be at least 1".into());
        }
        if self.max_concurrent_turns == Some(0) {
            return Err("max_concurrent_turns must be at least 1".into());
        }
        if self.standby() >= self.max_processes && self.standby() > 0 {
            return Err(format!(
                "standby ({}) must be below max_processes ({}): a new conversation needs a slot too; lower standby or raise max_processes",
                self.standby(),
                self.max_processes
            ));
        }
        if self.max_queued_turns == 0 {
            return Err("max_queued_turns must be at least 1".into());
        }
        if !self.workspace.is_dir() {
            return Err(format!(
                "workspace {} is not a directory",
                self.workspace.display()
            ));
        }
        Ok(())
    }

    pub fn max_concurrent_turns(&self) -> usize {
        self.max_concurrent_turns.unwrap_or(self.max_processes)
    }

    /// Claude processes kept started ahead for new conversations (`standby`).
    pub fn standby(&self) -> usize {
        self.standby
            .unwrap_or_else(|| default_standby(self.max_processes))
    }

    /// Open HTTP connections at most (`max_connections`, else `default_max_connections`).
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or_else(default_max_connections)
    }

    /// The `--help` text, generated from `FIELDS` so it cannot drift from `set`.
    pub fn help() -> String {
        let mut out = format!(
            "synthesis-bridge serve [OPTIONS]\n\nEvery option can also be set as SYNTHESIS_<NAME> in the environment or as\n\"name\": value in a JSON file given with --config FILE (flags win over env, env over file).\nDurations take ms, s, m, h or d (a bare number means seconds), at most {MAX_DURATION_DAYS} days.\nRelative paths are taken from the directory the bridge starts in.\n\n",
        );
        out.push_str("  --config FILE               read settings from a JSON file\n");
        for (name, hint, help) in FIELDS {
            let flag = format!("--{} {hint}", name.replace('_', "-"));
            out.push_str(&format!("  {flag:<28}{help}\n"));
        }
        out
    }
}
