//! Unit tests of configuration loading: precedence of the sources, every field's parser,
//! validation errors naming their field.

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
fn stop_hook_is_auto_by_default_and_takes_http_or_command() {
    assert_eq!(run(&[], &[]).unwrap().stop_hook, StopHookKind::Auto);
    assert_eq!(
        run(&["--stop-hook", "command"], &[]).unwrap().stop_hook,
        StopHookKind::Command
    );
    assert_eq!(
        run(&["--stop-hook", "http"], &[]).unwrap().stop_hook,
        StopHookKind::Http
    );
    let err = run(&["--stop-hook", "carrier-pigeon"], &[]).unwrap_err();
    assert!(
        err.contains("stop_hook") || err.contains("stop-hook"),
        "{err}"
    );
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

#[test]
fn client_tools_policy_and_result_timeout() {
    let c = run(&[], &[]).unwrap();
    assert_eq!(c.client_tools, ClientToolsPolicy::All);
    assert_eq!(c.tool_result_timeout, Duration::from_secs(600));
    let c = run(
        &["--client-tools", "none", "--tool-result-timeout", "90s"],
        &[],
    )
    .unwrap();
    assert_eq!(c.client_tools, ClientToolsPolicy::None);
    assert!(!c.client_tools.allows("message"));
    assert_eq!(c.tool_result_timeout, Duration::from_secs(90));
    let c = run(&[], &[("SYNTHESIS_CLIENT_TOOLS", "message, cron_*,mem?ry")]).unwrap();
    assert_eq!(
        c.client_tools,
        ClientToolsPolicy::Only(vec!["message".into(), "cron_*".into(), "mem?ry".into()])
    );
    for (name, allowed) in [
        ("message", true),
        ("messages", false),
        ("cron_add", true),
        ("cron_", true),
        ("cron", false),
        ("memory", true),
        ("exec", false),
    ] {
        assert_eq!(c.client_tools.allows(name), allowed, "{name}");
    }
    assert!(ClientToolsPolicy::All.allows("anything"));
    let err = run(&["--client-tools", "a b"], &[]).unwrap_err();
    assert!(err.contains("client-tools"), "{err}");
    assert!(glob_match("*", ""));
    assert!(glob_match("a*b*c", "axxbyyc"));
    assert!(!glob_match("a*b", "axxbc"));
}

#[test]
fn permission_relay_and_permission_timeout_have_defaults_and_are_checked() {
    use crate::session::pending::PermissionRelay;
    let c = run(&[], &[]).unwrap();
    assert_eq!(c.permission_relay, PermissionRelay::Chat);
    assert_eq!(c.permission_timeout, Duration::from_secs(600));
    let c = run(
        &["--permission-relay", "deny", "--permission-timeout", "90s"],
        &[],
    )
    .unwrap();
    assert_eq!(c.permission_relay, PermissionRelay::Deny);
    assert_eq!(c.permission_timeout, Duration::from_secs(90));
    let c = run(&[], &[("SYNTHESIS_PERMISSION_RELAY", "off")]).unwrap();
    assert_eq!(c.permission_relay, PermissionRelay::Off);
    let err = run(&["--permission-relay", "ask"], &[]).unwrap_err();
    assert!(
        err.contains("--permission-relay") && err.contains("chat, deny or off"),
        "{err}"
    );
    let err = run(&["--permission-timeout", "0"], &[]).unwrap_err();
    assert!(err.contains("permission_timeout"), "{err}");
}

#[test]
fn session_key_sources_and_cors_origins_parse_and_name_bad_values() {
    let c = run(&[], &[]).unwrap();
    assert!(!c.session_key_sources.iter().any(|s| s == "user"));
    assert!(
        c.session_key_sources
            .iter()
            .any(|s| s == "prompt_cache_key")
    );
    assert!(c.cors_origins.is_empty());
    let c = run(
        &[
            "--session-key-sources",
            "x-session-key, user",
            "--cors-origins",
            "https://a.example/,http://localhost:3000",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.session_key_sources, vec!["x-session-key", "user"]);
    assert_eq!(
        c.cors_origins,
        vec!["https://a.example", "http://localhost:3000"]
    );
    let e = run(&["--session-key-sources", "cookie"], &[]).unwrap_err();
    assert!(
        e.contains("--session-key-sources") && e.contains("cookie"),
        "{e}"
    );
    let e = run(&[], &[("SYNTHESIS_CORS_ORIGINS", "example.com")]).unwrap_err();
    assert!(
        e.contains("SYNTHESIS_CORS_ORIGINS") && e.contains("scheme"),
        "{e}"
    );
    assert_eq!(
        run(&["--cors-origins", "*"], &[]).unwrap().cors_origins,
        vec!["*"]
    );
}

#[test]
fn parent_pid_takes_a_process_id_above_1() {
    assert_eq!(run(&[], &[]).unwrap().parent_pid, None);
    assert_eq!(
        run(&["--parent-pid", "4242"], &[]).unwrap().parent_pid,
        Some(4242)
    );
    assert_eq!(
        run(&[], &[("SYNTHESIS_PARENT_PID", "77")])
            .unwrap()
            .parent_pid,
        Some(77)
    );
    for bad in ["0", "1", "-3", "abc", ""] {
        let err = run(&["--parent-pid", bad], &[]).unwrap_err();
        assert!(err.contains("parent-pid"), "{bad}: {err}");
    }
}

#[test]
fn forks_use_the_restored_history_unless_claude_flags_are_asked_for() {
    assert!(!run(&[], &[]).unwrap().fork_with_claude_flags);
    assert!(
        run(&["--fork-with-claude-flags"], &[])
            .unwrap()
            .fork_with_claude_flags
    );
    assert!(
        !run(&["--fork-with-claude-flags=false"], &[])
            .unwrap()
            .fork_with_claude_flags
    );
}

#[test]
fn returning_conversations_take_standbys_unless_switched_off() {
    assert!(run(&[], &[]).unwrap().standby_resume);
    assert!(
        !run(&["--standby-resume=false"], &[])
            .unwrap()
            .standby_resume
    );
}

#[test]
fn turns_are_pipelined_only_when_asked_for() {
    assert!(!run(&[], &[]).unwrap().pipeline_turns);
    assert!(run(&["--pipeline-turns"], &[]).unwrap().pipeline_turns);
}

#[test]
fn standby_defaults_to_one_from_four_processes_and_stays_below_max_processes() {
    let c = run(&["--max-processes", "3"], &[]).unwrap();
    assert_eq!(c.standby(), 0);
    let c = run(&["--max-processes", "4"], &[]).unwrap();
    assert_eq!(c.standby(), 1);
    let c = run(&["--max-processes", "8", "--standby", "3"], &[]).unwrap();
    assert_eq!(c.standby(), 3);
    let c = run(&["--max-processes", "8", "--standby", "0"], &[]).unwrap();
    assert_eq!(c.standby(), 0);
    let c = run(&["--max-processes", "2"], &[("SYNTHESIS_STANDBY", "1")]).unwrap();
    assert_eq!(c.standby(), 1);
    let err = run(&["--max-processes", "2", "--standby", "2"], &[]).unwrap_err();
    assert!(
        err.contains("standby") && err.contains("max_processes"),
        "{err}"
    );
    let c = run(
        &["--max-processes", "4", "--standby", "0", "--standby", "2"],
        &[],
    )
    .unwrap();
    assert_eq!(c.standby(), 2, "the last flag wins");
    let err = run(&["--standby", "x"], &[]).unwrap_err();
    assert!(err.starts_with("--standby: "), "{err}");
}
