//! The table of every settable field with its hint and help text (`--help` prints it).

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
        "stop_hook",
        "KIND",
        "the turn-end backstop: http (claude POSTs to the bridge, no process per turn), command (sh + `synthesis-bridge hook stop`), or auto (default: http for Claude Code >= 2.1.328 and the simulated agent)",
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
        "fork_with_claude_flags",
        "BOOL",
        "a fork (edit, regenerate) starts claude with --resume <parent> --fork-session --resume-session-at <message> instead of the restored history; experimental: Claude Code 2.1.331 ignores --resume-session-at in interactive mode (docs/HTTP_API.md) (default false)",
    ),
    (
        "pipeline_turns",
        "BOOL",
        "experimental: a session's next turn goes to claude while it still finishes the previous one (its closing model call), saving back-to-back turns a model round trip; but Claude folds such a message into that turn and tells the model it is NOT from the user and not to act on its instructions (docs/SPEED.md §4) (default false)",
    ),
    (
        "fallback_session_key",
        "KEY",
        "with conversation_match off: key for requests naming no session (default default::default)",
    ),
    (
        "session_key_sources",
        "LIST",
        "comma-separated places a session key is read from, first found wins (default every one but `user`: x-session-key,x-openclaw-session-key,x-agent-id+x-chat-id,x-session-affinity,session_id,prompt_cache_key,metadata.session_key,runtime_line; add `user` to make OpenAI's end-user id a session key)",
    ),
    (
        "cors_origins",
        "LIST",
        "comma-separated browser origins allowed to call the API (CORS), e.g. https://app.example.com, or * for any (default: none)",
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
        "standby",
        "N",
        "claude processes started ahead for new conversations, counted in max_processes (default 1 when max_processes >= 4, else 0)",
    ),
    (
        "standby_resume",
        "BOOL",
        "a conversation coming back (after an idle kill, a restart) also takes a standby: the bridge types /resume <its claude session> into it, and starts claude with --resume only if that fails (default true)",
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
        "permission_relay",
        "MODE",
        "when Claude asks for a tool permission: chat (ask the person in the chat), deny (answer no at once) or off (the turn fails naming this setting) (default chat)",
    ),
    (
        "permission_timeout",
        "DUR",
        "a permission question nobody answers is denied after this (default 10m)",
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
        "client_tools",
        "POLICY",
        "which of a request's `tools` Claude may call: all, none, or a comma-separated list of names and globs (default all)",
    ),
    (
        "tool_result_timeout",
        "DUR",
        "how long a client tool call waits for its result before Claude is told it failed (default 10m)",
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
        "parent_pid",
        "PID",
        "stop (as on SIGTERM) when this process, the bridge's parent, exits, even by SIGKILL; the OpenClaw plugin sets it (default: none)",
    ),
    (
        "setting_sources",
        "LIST",
        "claude --setting-sources (e.g. project,local to leave out your user settings); default: claude's own",
    ),
];
