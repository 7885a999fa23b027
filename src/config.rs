//! The bridge's configuration: one `Config` struct, filled once at start-up from
//! defaults < JSON file (`--config`) < environment (`SYNTHESIS_<FIELD>`) < command-line flags,
//! then validated. Every source goes through the same `Config::set(field, text)`, so a field
//! is parsed one way wherever it comes from, and an error always names the field.
//!
//! Nothing else reads the environment or the flags for settings: other modules take a
//! `&Config` (or the few values they need).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::session::workspace::WorkspaceMode;

/// Every settable field: name (as in the JSON file; `--name-with-dashes` on the command line;
/// `SYNTHESIS_NAME` in the environment), value hint, and help text. `--help` prints this.
pub const FIELDS: &[(&str, &str, &str)] = &[
    (
        "host",
        "ADDR",
        "address both listeners bind (default 127.0.0.1)",
    ),
    (
        "port",
        "PORT",
        "HTTP port (default 8787; 0 = any free port)",
    ),
    (
        "channel_ws_port",
        "PORT",
        "WebSocket port for the channel servers (default 0 = any free port)",
    ),
    (
        "claude_bin",
        "PATH",
        "the claude binary (default `claude` from PATH)",
    ),
    (
        "demo",
        "BOOL",
        "use the built-in simulated Claude instead of claude (default false)",
    ),
    (
        "workspace",
        "DIR",
        "directory Claude runs in (default: the current directory)",
    ),
    (
        "state_dir",
        "DIR",
        "where the bridge keeps its files (default $XDG_STATE_HOME/synthesis-bridge)",
    ),
    (
        "models",
        "IDS",
        "comma-separated model ids served by /v1/models (default claude-code)",
    ),
    (
        "api_key",
        "KEY",
        "require `Authorization: Bearer KEY` on the API (default: none)",
    ),
    (
        "api_key_file",
        "FILE",
        "read api_key from the first line of FILE (keeps it out of /proc/<pid>/cmdline and environ; mode 0600)",
    ),
    (
        "heartbeat_interval",
        "DUR",
        "empty-content chunk while a turn waits (default 15s)",
    ),
    (
        "ready_timeout",
        "DUR",
        "spawn → channel hello limit (default 15s)",
    ),
    ("turn_timeout", "DUR", "limit on one turn (default 30m)"),
    (
        "channel_hello_delay",
        "DUR",
        "channel waits this long after MCP initialized before hello (default 1s)",
    ),
    (
        "channel_name",
        "NAME",
        "MCP server name of the channel (default synthesis)",
    ),
    (
        "permission_mode",
        "MODE",
        "claude --permission-mode (default `default`)",
    ),
    (
        "max_body_bytes",
        "BYTES",
        "largest request body accepted (default 8388608)",
    ),
    (
        "max_connections",
        "N",
        "open HTTP connections at most; beyond it a connection gets 503 and is closed (default: RLIMIT_NOFILE soft limit / 4, 16..8192)",
    ),
    (
        "max_queued_turns",
        "N",
        "turns waiting per session before 429 (default 8)",
    ),
    (
        "conversation_match",
        "BOOL",
        "requests naming no session continue the one whose history they carry (default true)",
    ),
    (
        "fallback_session_key",
        "KEY",
        "with conversation_match off: key for requests naming no session (default default::default)",
    ),
    (
        "workspace_mode",
        "MODE",
        "shared (every session in `workspace`) or per_session (a dir each under state_dir)",
    ),
    (
        "idle_kill",
        "DUR",
        "stop a session's claude after this long without a turn (default 30m)",
    ),
    (
        "max_processes",
        "N",
        "claude processes at once (default: available memory / 300 MB, 1..16)",
    ),
    (
        "max_concurrent_turns",
        "N",
        "turns in flight across sessions (default = max_processes)",
    ),
    (
        "queue_timeout",
        "DUR",
        "when every claude process is busy, wait this long for one before answering 429 (default 0: at once)",
    ),
    (
        "shutdown_grace",
        "DUR",
        "on SIGTERM, how long turns in flight may still run (default 10s)",
    ),
    (
        "retry_grace",
        "DUR",
        "a turn whose clients all left keeps running this long for a retry to attach (default 10s)",
    ),
    (
        "delivery_timeout",
        "DUR",
        "a pushed turn must show up in claude's transcript within this, else it is sent once more (default 10s)",
    ),
    (
        "client_read_timeout",
        "DUR",
        "an HTTP client silent this long (slow request, idle keep-alive) gets 408 and is closed (default 30s)",
    ),
    (
        "strip_openclaw_context",
        "BOOL",
        "drop OpenClaw's internal-context block and Runtime: line from turns (default false)",
    ),
    (
        "system_prompt",
        "POLICY",
        "ignore the client's system prompt, or append it to Claude's (default ignore)",
    ),
    (
        "insecure_public",
        "BOOL",
        "allow binding a non-loopback host without an api_key (default false)",
    ),
    (
        "allow_bypass_permissions",
        "BOOL",
        "allow permission_mode bypassPermissions (default false)",
    ),
    (
        "setting_sources",
        "LIST",
        "claude --setting-sources (e.g. project,local to leave out your user settings); default: claude's own",
    ),
];

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
    pub max_body_bytes: usize,
    /// None = derived from RLIMIT_NOFILE (`default_max_connections`).
    pub max_connections: Option<usize>,
    pub max_queued_turns: usize,
    pub fallback_session_key: String,
    pub conversation_match: bool,
    pub workspace_mode: WorkspaceMode,
    pub idle_kill: Duration,
    pub max_processes: usize,
    /// None = same as `max_processes`.
    pub max_concurrent_turns: Option<usize>,
    pub shutdown_grace: Duration,
    pub queue_timeout: Duration,
    pub retry_grace: Duration,
    pub delivery_timeout: Duration,
    pub client_read_timeout: Duration,
    pub strip_openclaw_context: bool,
    pub system_prompt: SystemPromptPolicy,
    pub insecure_public: bool,
    pub allow_bypass_permissions: bool,
    pub setting_sources: Option<String>,
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
            max_body_bytes: 8 << 20,
            max_connections: None,
            max_queued_turns: 8,
            fallback_session_key: "default::default".into(),
            conversation_match: true,
            workspace_mode: WorkspaceMode::Shared,
            idle_kill: Duration::from_secs(30 * 60),
            max_processes: default_max_processes(),
            max_concurrent_turns: None,
            shutdown_grace: Duration::from_secs(10),
            queue_timeout: Duration::ZERO,
            retry_grace: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(10),
            client_read_timeout: Duration::from_secs(30),
            strip_openclaw_context: false,
            system_prompt: SystemPromptPolicy::Ignore,
            insecure_public: false,
            allow_bypass_permissions: false,
            setting_sources: None,
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
            "workspace_mode" => self.workspace_mode = value.parse()?,
            "idle_kill" => self.idle_kill = parse_duration(value)?,
            "max_processes" => self.max_processes = parse_count(value, 1, MAX_PROCESSES)?,
            "max_concurrent_turns" => {
                self.max_concurrent_turns = Some(parse_count(value, 1, MAX_PROCESSES)?)
            }
            "shutdown_grace" => self.shutdown_grace = parse_duration(value)?,
            "queue_timeout" => self.queue_timeout = parse_duration(value)?,
            "retry_grace" => self.retry_grace = parse_duration(value)?,
            "delivery_timeout" => self.delivery_timeout = parse_duration(value)?,
            "client_read_timeout" => self.client_read_timeout = parse_duration(value)?,
            "insecure_public" => self.insecure_public = parse_bool(value)?,
            "allow_bypass_permissions" => self.allow_bypass_permissions = parse_bool(value)?,
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
            "strip_openclaw_context" => self.strip_openclaw_context = parse_bool(value)?,
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

/// Turns `--name value`, `--name=value` and boolean `--demo` into (field, value) pairs.
fn parse_flags(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg
            .strip_prefix("--")
            .or_else(|| (arg == "-h").then_some("help"))
        else {
            return Err(format!(
                "unexpected argument `{arg}` (options start with --; see --help)"
            ));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.replace('-', "_"), Some(v.to_string())),
            None => (flag.replace('-', "_"), None),
        };
        if name == "help" {
            out.push((name, String::new()));
            continue;
        }
        let is_bool = FIELDS
            .iter()
            .any(|(n, hint, _)| *n == name && *hint == "BOOL");
        let value = match inline {
            Some(v) => v,
            None if is_bool => "true".to_string(),
            None => iter
                .next()
                .cloned()
                .ok_or_else(|| format!("--{flag} needs a value"))?,
        };
        if name != "config" && !FIELDS.iter().any(|(n, _, _)| *n == name) {
            return Err(format!("unknown option --{flag} (see --help)"));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn nonempty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(value.to_string())
    }
}

/// A TCP port: 0 (any free port) to 65535.
fn parse_port(value: &str) -> Result<u16, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a port number (0 to 65535)"))
}

/// A whole number in `min..=max`; the error states the range, so "0" and "1e9" are refused
/// with the bound rather than accepted and found absurd later.
fn parse_count(value: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a whole number ({min} to {max})"))?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} is out of range: must be {min} to {max}"));
    }
    Ok(n)
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("`{value}` is not true or false")),
    }
}

/// `250ms`, `15s`, `30m`, `2h`, `1d`, or a bare number of seconds (fractions allowed), at
/// most `MAX_DURATION`. NaN, infinities, negative values and anything past the bound are
/// refused here, so no caller can hit `Duration::from_secs_f64`'s panic or overflow an
/// `Instant` by adding a configured duration to it.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = v.strip_suffix('d') {
        (n, 86400.0)
    } else {
        (v, 1.0)
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a duration (e.g. 500ms, 15s, 30m)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{value}` must be a non-negative duration"));
    }
    let too_long = || format!("`{value}` is longer than the limit of {MAX_DURATION_DAYS} days");
    let seconds = n * scale;
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(too_long());
    }
    // Cannot fail after the checks above; mapped to the same error rather than unwrapped.
    Duration::try_from_secs_f64(seconds).map_err(|_| too_long())
}

/// Makes a configured directory absolute against the bridge's working directory at start,
/// and resolves it the way the kernel will: the part that exists is canonicalised
/// (symlinks and `..` resolved); the rest (not created yet, so no symlinks in it) is
/// appended with `.` and `..` applied lexically.
///
/// Why not `std::path::absolute` alone: it keeps `..` (`--workspace ../ws` would become
/// `/cwd/../ws`), and Claude Code names its project directory after the cwd it gets from
/// the kernel (`getcwd`, fully resolved), so the bridge's transcript lookup
/// (`agent::transcript_path`) would look in a directory Claude never writes. Why not
/// `canonicalize` alone: `state_dir` may not exist yet (it is created after loading).
/// If even the cwd cannot be read, the path is kept as given and `validate` or the first
/// use reports it.
pub fn resolve_dir(path: &Path) -> PathBuf {
    use std::path::Component;
    let Ok(absolute) = std::path::absolute(path) else {
        return path.to_path_buf();
    };
    // Walk from the root; after each step `out` is free of symlinks and `..` as far as it
    // exists, so popping it for a `..` is what the kernel would do.
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => out.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if let Ok(real) = out.canonicalize() {
                    out = real;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Config::load_from(&args, &env)? {
            Invocation::Run(c) => Ok(*c),
            Invocation::Help => Err("help".into()),
        }
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.json");
        std::fs::write(&file, r#"{"port": 1000, "channel_ws_port": 2000, "heartbeat_interval": "5s", "models": ["a", "b"]}"#).unwrap();
        let f = file.to_str().unwrap();
        let c = run(&["--config", f], &[]).unwrap();
        assert_eq!((c.port, c.channel_ws_port), (1000, 2000));
        assert_eq!(c.models, vec!["a", "b"]);
        let c = run(&["--config", f], &[("SYNTHESIS_PORT", "1001")]).unwrap();
        assert_eq!((c.port, c.channel_ws_port), (1001, 2000));
        let c = run(
            &["--config", f, "--port=1002"],
            &[("SYNTHESIS_PORT", "1001")],
        )
        .unwrap();
        assert_eq!(c.port, 1002);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_field_and_source() {
        assert_eq!(
            run(&["--port", "x"], &[]).unwrap_err(),
            "--port: `x` is not a port number (0 to 65535)"
        );
        assert_eq!(
            run(&[], &[("SYNTHESIS_TURN_TIMEOUT", "soon")]).unwrap_err(),
            "SYNTHESIS_TURN_TIMEOUT: `soon` is not a duration (e.g. 500ms, 15s, 30m)"
        );
        assert!(
            run(&["--bogus", "1"], &[])
                .unwrap_err()
                .contains("unknown option --bogus")
        );
        assert!(
            run(&["--heartbeat-interval", "0"], &[])
                .unwrap_err()
                .contains("heartbeat_interval")
        );
        assert!(
            run(&["--permission-mode", "yolo"], &[])
                .unwrap_err()
                .contains("not one of")
        );
    }

    #[test]
    fn public_binding_needs_a_key_and_bypass_needs_consent() {
        let err = run(&["--host", "0.0.0.0"], &[]).unwrap_err();
        assert!(
            err.contains("api_key") && err.contains("--insecure-public"),
            "{err}"
        );
        assert!(run(&["--host", "0.0.0.0", "--api-key", "k"], &[]).is_ok());
        assert!(run(&["--host", "0.0.0.0", "--insecure-public"], &[]).is_ok());
        assert!(run(&["--host", "127.0.0.2"], &[]).is_ok());
        let err = run(&["--permission-mode", "bypassPermissions"], &[]).unwrap_err();
        assert!(err.contains("allow_bypass_permissions"), "{err}");
        assert!(
            run(
                &[
                    "--permission-mode",
                    "bypassPermissions",
                    "--allow-bypass-permissions"
                ],
                &[]
            )
            .is_ok()
        );
    }

    #[test]
    fn boolean_flags_need_no_value() {
        let c = run(&["--demo", "--port", "0"], &[]).unwrap();
        assert!(c.demo);
        assert_eq!(c.port, 0);
        assert!(!run(&["--demo=false"], &[]).unwrap().demo);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("30d").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("720h").unwrap(), MAX_DURATION);
    }

    #[test]
    fn durations_that_are_not_finite_or_too_long_are_refused_without_panicking() {
        for bad in [
            "1e20", "1e19", "1e300", "1e309", "NaN", "nan", "inf", "-inf", "infinity", "-0.5",
            "30.001d", "2592001", "43201m", "1e20ms", "-1e20",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(bad), "{bad}: {err}");
        }
        assert!(parse_duration("1e20").unwrap_err().contains("30 days"));
    }

    /// Every duration field (every `DUR` in FIELDS, so settings added later are covered):
    /// 1e20 from a flag, the environment and a config file is refused with the field named
    /// and the bound stated, and 30 days is accepted.
    #[test]
    fn every_duration_field_refuses_1e20_naming_the_field() {
        let dir = std::env::temp_dir().join(format!("sb-config-dur-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let durations: Vec<&str> = FIELDS
            .iter()
            .filter(|(_, hint, _)| *hint == "DUR")
            .map(|(name, _, _)| *name)
            .collect();
        assert!(durations.len() >= 10, "{durations:?}");
        for name in durations {
            let flag = format!("--{}", name.replace('_', "-"));
            let err = run(&[&flag, "1e20"], &[]).unwrap_err();
            assert!(err.starts_with(&format!("{flag}: ")), "{err}");
            assert!(err.contains("30 days"), "{err}");
            let var = format!("SYNTHESIS_{}", name.to_ascii_uppercase());
            let err = run(&[], &[(&var, "1e20")]).unwrap_err();
            assert!(err.starts_with(&format!("{var}: ")), "{err}");
            let file = dir.join(format!("{name}.json"));
            std::fs::write(&file, format!(r#"{{"{name}": 1e20}}"#)).unwrap();
            let err = run(&["--config", file.to_str().unwrap()], &[]).unwrap_err();
            assert!(err.contains(&format!("field `{name}`")), "{err}");
            assert!(err.contains("30 days"), "{err}");
            run(&[&flag, "30d"], &[]).unwrap_or_else(|e| panic!("{flag} 30d: {e}"));
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn numbers_out_of_range_are_refused_naming_the_field_and_range() {
        let cases: &[(&str, &str, &str)] = &[
            ("--port", "70000", "0 to 65535"),
            ("--channel-ws-port", "-1", "0 to 65535"),
            ("--max-processes", "0", "1 to 1024"),
            ("--max-processes", "1e9", "1 to 1024"),
            ("--max-concurrent-turns", "0", "1 to 1024"),
            ("--max-queued-turns", "0", "1 to 10000"),
            ("--max-queued-turns", "18446744073709551615", "1 to 10000"),
            (
                "--max-queued-turns",
                "99999999999999999999999",
                "1 to 10000",
            ),
            ("--max-body-bytes", "10", "1024 to 1073741824"),
        ];
        for (flag, value, range) in cases {
            let err = run(&[flag, value], &[]).unwrap_err();
            assert!(err.starts_with(&format!("{flag}: ")), "{err}");
            assert!(err.contains(range), "{flag} {value}: {err}");
        }
        for zero in [
            "--ready-timeout",
            "--turn-timeout",
            "--idle-kill",
            "--delivery-timeout",
        ] {
            let err = run(&[zero, "0"], &[]).unwrap_err();
            assert!(err.contains(&zero[2..].replace('-', "_")), "{err}");
        }
        let c = run(
            &["--max-processes", "1024", "--max-queued-turns", "10000"],
            &[],
        )
        .unwrap();
        assert_eq!((c.max_processes, c.max_queued_turns), (1024, 10_000));
    }

    #[test]
    fn relative_paths_are_made_absolute_and_resolved() {
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        let c = run(
            &[
                "--state-dir",
                "no-such/./st",
                "--claude-bin",
                "./bin/claude",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.state_dir, cwd.join("no-such/st"));
        assert_eq!(c.claude_bin, cwd.join("bin/claude").to_str().unwrap());
        assert!(c.workspace.is_absolute());
        // `..` is resolved (Claude names its project dir after the resolved cwd).
        let c = run(&["--workspace", "src/.."], &[]).unwrap();
        assert_eq!(c.workspace, cwd);
        // A name without `/` is left for the PATH lookup.
        assert_eq!(
            run(&["--claude-bin", "claude"], &[]).unwrap().claude_bin,
            "claude"
        );
        // A symlink in the existing part is resolved; the missing rest is appended.
        let dir = std::env::temp_dir()
            .canonicalize()
            .unwrap()
            .join(format!("sb-config-paths-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dir.join("real"), &link).unwrap();
        assert_eq!(resolve_dir(&link.join("new/../st")), dir.join("real/st"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn api_key_file_gives_the_key_from_its_first_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sb-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "  sk-secret \nsecond line\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = file.to_str().unwrap();
        let c = run(&["--api-key-file", path], &[]).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("sk-secret"));
        assert_eq!(c.api_key_file_warning(), None);
        let c = run(&[], &[("SYNTHESIS_API_KEY_FILE", path)]).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("sk-secret"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(c.api_key_file_warning().unwrap().contains("chmod 600"));
        let both = run(&["--api-key-file", path, "--api-key", "x"], &[]).unwrap_err();
        assert!(both.contains("both set"), "{both}");
        std::fs::write(&file, "\n").unwrap();
        let empty = run(&["--api-key-file", path], &[]).unwrap_err();
        assert!(empty.contains("first line is empty"), "{empty}");
        let missing = run(&["--api-key-file", "/nonexistent/key"], &[]).unwrap_err();
        assert!(missing.contains("cannot read it"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
