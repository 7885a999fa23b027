//! The simulated Claude's command line: the real `claude` flags the bridge passes, parsed the
//! way Claude Code parses them (docs/CLAUDE_CODE.md §9.2), so a wrong command line fails here as it would
//! there.
//!
//! Owns flag parsing only. Variadic flags (`--dangerously-load-development-channels`,
//! `--allowedTools`, `--mcp-config`, ...) swallow every following token that does not start
//! with `--`, exactly the trap the bridge must avoid. Flags the sim does not use are accepted
//! and ignored. It must never read files or the environment.

/// Flags taking every following token up to the next `--flag`.
const VARIADIC: &[&str] = &[
    "--dangerously-load-development-channels",
    "--channels",
    "--allowedTools",
    "--allowed-tools",
    "--disallowedTools",
    "--disallowed-tools",
    "--mcp-config",
    "--add-dir",
    "--betas",
    "--tools",
    "--plugin-dir",
];

/// Flags taking exactly one value.
const ONE_VALUE: &[&str] = &[
    "--session-id",
    "--resume",
    "-r",
    "--resume-session-at",
    "--permission-mode",
    "--settings",
    "--model",
    "--fallback-model",
    "--append-system-prompt",
    "--append-system-prompt-file",
    "--system-prompt",
    "--system-prompt-file",
    "--setting-sources",
    "--output-format",
    "--input-format",
    "--agent",
    "--agents",
    "--max-turns",
    "--permission-prompt-tool",
    "--debug-file",
];

/// Flags without a value.
const SWITCHES: &[&str] = &[
    "--strict-mcp-config",
    "--verbose",
    "--debug",
    "-d",
    "--print",
    "-p",
    "--continue",
    "-c",
    "--fork-session",
    "--dangerously-skip-permissions",
    "--allow-dangerously-skip-permissions",
    "--ide",
    "--include-partial-messages",
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args {
    /// Entries of `--dangerously-load-development-channels` (e.g. `server:synthesis`).
    pub dev_channels: Vec<String>,
    /// Entries of `--channels` (the approved-channels allowlist form).
    pub channels: Vec<String>,
    pub session_id: Option<String>,
    pub resume: Option<String>,
    /// `--fork-session`: `--resume` names the conversation to copy, not to continue.
    pub fork_session: bool,
    /// `--resume-session-at <message uuid>`: the copy ends with that message.
    pub resume_session_at: Option<String>,
    pub permission_mode: Option<String>,
    /// Each value is a path or inline JSON.
    pub mcp_configs: Vec<String>,
    pub strict_mcp_config: bool,
    /// Inline JSON or a path.
    pub settings: Option<String>,
    /// Tool names, split on commas and spaces.
    pub allowed_tools: Vec<String>,
    pub print: bool,
    /// `--debug-file`: where the sim writes the one debug line the bridge reads (the
    /// channel's registration).
    pub debug_file: Option<String>,
    /// Flags accepted and not used (shown in the banner).
    pub ignored: Vec<String>,
    pub positional: Vec<String>,
}

pub fn parse(argv: &[String]) -> Result<Args, String> {
    let mut args = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let token = argv[i].as_str();
        i += 1;
        if !token.starts_with('-') || token == "-" {
            args.positional.push(token.to_string());
            continue;
        }
        let (flag, inline) = match token.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (token, None),
        };
        if VARIADIC.contains(&flag) {
            let mut values: Vec<String> = inline.into_iter().collect();
            while i < argv.len() && !argv[i].starts_with("--") {
                values.push(argv[i].clone());
                i += 1;
            }
            if values.is_empty() {
                return Err(format!("error: option '{flag}' argument missing"));
            }
            match flag {
                "--dangerously-load-development-channels" => args.dev_channels.extend(values),
                "--channels" => args.channels.extend(values),
                "--mcp-config" => args.mcp_configs.extend(values),
                "--allowedTools" | "--allowed-tools" => args.allowed_tools.extend(
                    values
                        .iter()
                        .flat_map(|v| v.split([',', ' ']))
                        .filter(|t| !t.is_empty())
                        .map(String::from),
                ),
                _ => args.ignored.push(flag.to_string()),
            }
        } else if ONE_VALUE.contains(&flag) {
            let value = match inline {
                Some(v) => v,
                None if i < argv.len() => {
                    i += 1;
                    argv[i - 1].clone()
                }
                None => return Err(format!("error: option '{flag}' argument missing")),
            };
            match flag {
                "--session-id" => args.session_id = Some(value),
                "--resume" | "-r" => args.resume = Some(value),
                "--resume-session-at" => args.resume_session_at = Some(value),
                "--permission-mode" => args.permission_mode = Some(value),
                "--settings" => args.settings = Some(value),
                "--debug-file" => args.debug_file = Some(value),
                _ => args.ignored.push(flag.to_string()),
            }
        } else if SWITCHES.contains(&flag) {
            match flag {
                "--strict-mcp-config" => args.strict_mcp_config = true,
                "--print" | "-p" => args.print = true,
                "--fork-session" => args.fork_session = true,
                _ => args.ignored.push(flag.to_string()),
            }
        } else {
            // Unknown flag: take a following non-flag token as its value, like most options.
            if inline.is_none() && i < argv.len() && !argv[i].starts_with('-') {
                i += 1;
            }
            args.ignored.push(flag.to_string());
        }
    }
    if args.session_id.is_some() && args.resume.is_some() && !args.fork_session {
        return Err("Error: --session-id can only be used with --continue or --resume if --fork-session is also \
                    specified."
            .into());
    }
    Ok(args)
}

impl Args {
    /// The `server:<name>` channel to load, if any.
    pub fn channel_server(&self) -> Option<&str> {
        self.dev_channels
            .iter()
            .find_map(|entry| entry.strip_prefix("server:"))
    }

    /// Whether the channel's `reply` tool may run without a permission prompt.
    pub fn reply_allowed(&self, server: &str) -> bool {
        let tool = format!("mcp__{server}__reply");
        let whole_server = format!("mcp__{server}");
        self.permission_mode.as_deref() == Some("bypassPermissions")
            || self
                .allowed_tools
                .iter()
                .any(|t| *t == tool || *t == whole_server || *t == format!("{whole_server}__*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_bridges_command_line_parses() {
        let a = parse(&argv(
            "--dangerously-load-development-channels server:synthesis --session-id 11111111-2222-3333-4444-555555555555 \
             --permission-mode default --mcp-config /s/mcp.json --strict-mcp-config --settings {\"a\":1} \
             --append-system-prompt-file /x --setting-sources user --model opus \
             --allowedTools mcp__synthesis__reply",
        ))
        .unwrap();
        assert_eq!(a.channel_server(), Some("synthesis"));
        assert_eq!(
            a.session_id.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(a.mcp_configs, vec!["/s/mcp.json"]);
        assert!(a.strict_mcp_config);
        assert_eq!(a.settings.as_deref(), Some("{\"a\":1}"));
        assert!(a.reply_allowed("synthesis"));
        assert!(!a.reply_allowed("other"));
        assert_eq!(
            a.ignored,
            vec![
                "--append-system-prompt-file",
                "--setting-sources",
                "--model"
            ]
        );
        assert!(a.positional.is_empty());
    }

    #[test]
    fn variadic_flags_swallow_positional_values() {
        let a = parse(&argv(
            "--dangerously-load-development-channels server:a server:b hello --resume u",
        ))
        .unwrap();
        assert_eq!(a.dev_channels, vec!["server:a", "server:b", "hello"]);
        assert_eq!(a.resume.as_deref(), Some("u"));
        let a = parse(&argv("--allowedTools Bash(git:*),Edit mcp__s__reply")).unwrap();
        assert_eq!(
            a.allowed_tools,
            vec!["Bash(git:*)", "Edit", "mcp__s__reply"]
        );
        assert!(a.reply_allowed("s"));
        let a = parse(&argv(
            "--permission-mode=bypassPermissions --unknown v prompt",
        ))
        .unwrap();
        assert!(a.reply_allowed("s"));
        assert_eq!(a.positional, vec!["prompt"]);
    }

    #[test]
    fn missing_values_and_conflicts_are_errors() {
        assert!(parse(&argv("--session-id")).is_err());
        assert!(parse(&argv("--mcp-config --strict-mcp-config")).is_err());
        assert!(parse(&argv("--session-id a --resume b")).is_err());
        let fork = parse(&argv(
            "--resume b --fork-session --resume-session-at m1 --session-id a",
        ))
        .unwrap();
        assert!(fork.fork_session);
        assert_eq!(
            (fork.resume.as_deref(), fork.session_id.as_deref()),
            (Some("b"), Some("a"))
        );
        assert_eq!(fork.resume_session_at.as_deref(), Some("m1"));
    }
}
