//! `synthesis-bridge serve`: wires the pieces together and owns the process's life.
//!
//! Start-up: load the config, find the agent binary, write the MCP config, bind both
//! listeners, start the threads (`http`, `ws-accept`, `signals`), then print
//! `listening http=<addr> ws=<addr>` on stdout (scripts and tests read it). Shutdown on
//! SIGTERM/SIGINT: stop accepting turns, let turns in flight finish within the grace period
//! (the channel hub, with its Stop-hook sockets, stops only after the sessions), stop every
//! child, exit 0.

use std::ffi::OsString;
use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::agent::{self, AgentLauncher};
use crate::config::{Config, Invocation};
use crate::http::{self, HttpContext};
use crate::hub::{self, Hub};
use crate::poll::wake_pair;
use crate::session::Registry;
use crate::session::identity::Continuations;
use crate::session::registry::Limits;
use crate::session::shared::SlotPool;
use crate::session::store::SessionStore;
use crate::session::worker::WorkerSettings;
use crate::session::worker::agent_port::ClaudeFactory;
use crate::session::workspace::WorkspaceMode;

/// Conversations remembered for matching clients that send no id (a few hundred bytes each).
const CONTINUATIONS_REMEMBERED: usize = 100_000;
/// How long a write to an HTTP client may block (a client that stopped reading).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a whole non-streamed response (a large `/v1/sessions` page) may take to write.
const CLIENT_WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// SIGTERM → SIGKILL grace for one claude process (it exits in ~0.1 s on SIGTERM).
const STOP_GRACE: Duration = Duration::from_secs(3);

pub fn run(args: &[String]) -> u8 {
    let config = match Config::load(args) {
        Ok(Invocation::Run(config)) => *config,
        Ok(Invocation::Help) => {
            print!("{}", Config::help());
            return 0;
        }
        Err(message) => {
            eprintln!("synthesis-bridge: {message}");
            return 2;
        }
    };
    crate::logging::init(None);
    install_panic_policy();
    if let Some(warning) = config.api_key_file_warning() {
        log::warn!("{warning}");
    }
    http::completions::tune_allocator();
    match serve(config) {
        Ok(()) => 0,
        Err(message) => {
            log::error!("{message}");
            eprintln!("synthesis-bridge: {message}");
            1
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    // First, so a wrong parent_pid is refused before anything is bound or started. Until the
    // SIGTERM handler is installed below, the parent's death ends the bridge at once, which
    // is harmless: it has no child yet.
    if let Some(parent) = config.parent_pid {
        exit_with_parent(parent)?;
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the bridge's own binary: {e}"))?;
    let mut claude_version = None;
    let (program, prefix_args) = if config.demo {
        log::warn!(
            "DEMO MODE: the agent is SIMULATED (built-in sim-agent echoes each turn); no Claude is involved"
        );
        (
            exe.clone().into_os_string(),
            vec![OsString::from("sim-agent")],
        )
    } else {
        let claude = agent::find_program(&config.claude_bin).ok_or_else(|| {
            format!(
                "`{}` not found: install Claude Code (npm install -g @anthropic-ai/claude-code), pass --claude-bin PATH, or try --demo",
                config.claude_bin
            )
        })?;
        claude_version = warn_about_version(claude.as_os_str());
        (claude.into_os_string(), vec![])
    };
    prepare_state_dir(&config.state_dir)?;
    let debug_dir = prepare_debug_dir(&config.state_dir)?;
    let mcp_config = config.state_dir.join("mcp-config.json");
    agent::write_mcp_config(&mcp_config, &exe, &config.channel_name)
        .map_err(|e| format!("cannot write {}: {e}", mcp_config.display()))?;

    let ws_listener = TcpListener::bind(("127.0.0.1", config.channel_ws_port)).map_err(|e| {
        format!(
            "cannot bind the channel WebSocket port {}: {e}",
            config.channel_ws_port
        )
    })?;
    let ws_addr = ws_listener.local_addr().map_err(|e| e.to_string())?;
    let hook_socket = hub::bind_hook_socket(&config.state_dir).map_err(|e| {
        format!(
            "cannot listen on the Stop-hook socket in {}: {e}",
            config.state_dir.display()
        )
    })?;
    let http_listener = TcpListener::bind((config.host.as_str(), config.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    http::tune_listener(
        &http_listener,
        config.client_read_timeout,
        CLIENT_WRITE_TIMEOUT,
    )
    .map_err(|e| format!("cannot set socket options on the HTTP listener: {e}"))?;
    let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;
    let max_connections = config.max_connections();
    let http_server = http::server(http_listener, max_connections)
        .map_err(|e| format!("cannot serve HTTP on {http_addr}: {e}"))?;
    log::info!("http: at most {max_connections} connections (max_connections)");

    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let launcher = AgentLauncher {
        program,
        prefix_args,
        channel_name: config.channel_name.clone(),
        permission_mode: config.permission_mode.clone(),
        mcp_config,
        ws_url: format!("ws://{ws_addr}{}", crate::protocol::WS_PATH),
        hook_socket: hook_socket.address.clone(),
        token: token.clone(),
        hello_delay: config.channel_hello_delay,
        settings_json: Some(stop_hook_settings(
            &config,
            claude_version,
            &exe,
            ws_addr.port(),
        )),
        setting_sources: config.setting_sources.clone(),
        // Only for a claude known to write the registration line (and the sim-agent); an older
        // or unreadable version keeps the fixed `channel_hello_delay`.
        debug_dir: (config.demo
            || claude_version.is_some_and(|v| v >= agent::version::DEBUG_FILE_SIGNAL_SINCE))
        .then_some(debug_dir),
    };
    let (store, store_warning) = SessionStore::open(&config.state_dir);
    if let Some(warning) = store_warning {
        log::error!("{warning}");
    }
    log::info!("session map: {} known sessions", store.len());
    let limits = Limits {
        max_processes: config.max_processes,
        // A standby runs in the shared workspace: with a workspace per session it could not
        // serve whichever conversation comes.
        standby: if config.workspace_mode == WorkspaceMode::Shared {
            config.standby()
        } else {
            0
        },
        // Only for a claude known to take `/resume` at its prompt (and the sim-agent).
        standby_resume: config.standby_resume
            && (config.demo
                || claude_version.is_some_and(|v| v >= agent::version::TYPED_RESUME_SINCE)),
        max_queued_turns: config.max_queued_turns,
        max_concurrent_turns: config.max_concurrent_turns(),
    };
    if config.standby_resume && limits.standby > 0 && !limits.standby_resume {
        log::info!(
            "standby_resume not used: claude's version is unknown or older than {}.{}.{} (returning conversations start claude with --resume)",
            agent::version::TYPED_RESUME_SINCE.0,
            agent::version::TYPED_RESUME_SINCE.1,
            agent::version::TYPED_RESUME_SINCE.2
        );
    }
    let registry = Arc::new(Registry::new(
        WorkerSettings {
            agents: Box::new(ClaudeFactory {
                launcher,
                config_dir: agent::claude_config_dir(),
            }),
            workspace: config.workspace.clone(),
            workspace_mode: config.workspace_mode,
            state_dir: config.state_dir.clone(),
            ready_timeout: config.ready_timeout,
            turn_timeout: config.turn_timeout,
            stop_grace: STOP_GRACE,
            store,
            turn_slots: SlotPool::new(limits.max_concurrent_turns),
            retry_grace: config.retry_grace,
            delivery_timeout: config.delivery_timeout,
            permission_relay: config.permission_relay,
            permission_timeout: config.permission_timeout,
            pipeline_turns: config.pipeline_turns,
        },
        limits,
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let (hub_waker, hub_wake) = wake_pair().map_err(|e| e.to_string())?;
    let hub = Arc::new(Hub::new(registry.clone(), token, config.max_processes));
    // The hub stops after the sessions: one finishing its last turn at shutdown still gets its
    // Stop-hook turn end (and a starting one its hello).
    let hub_stop = Arc::new(AtomicBool::new(false));
    let hub_thread = hub::spawn_acceptor(ws_listener, hook_socket, hub, hub_stop.clone(), hub_wake)
        .map_err(|e| e.to_string())?;
    let ctx = Arc::new(HttpContext {
        registry: registry.clone(),
        models: config.models.clone(),
        api_key: config.api_key.clone(),
        heartbeat_interval: config.heartbeat_interval,
        max_body_bytes: config.max_body_bytes,
        fallback_session_key: config.fallback_session_key.clone(),
        continuations: config.conversation_match.then(|| {
            Continuations::new(CONTINUATIONS_REMEMBERED)
                .fork_with_claude_flags(config.fork_with_claude_flags)
        }),
        strip_openclaw_context: config.strip_openclaw_context,
        queue_timeout: config.queue_timeout,
        system_prompt: config.system_prompt,
        write_deadline: CLIENT_WRITE_DEADLINE,
        client_tools: config.client_tools.clone(),
        channel_name: config.channel_name.clone(),
        tool_result_timeout: config.tool_result_timeout,
        session_key_sources: config.session_key_sources.clone(),
        retry_grace: config.retry_grace,
        responses: Default::default(),
        recent_errors: Default::default(),
    });
    http::cors::configure(config.cors_origins.clone());
    let http_thread =
        http::spawn_acceptor(http_server, ctx, stop.clone()).map_err(|e| e.to_string())?;

    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let (signal_tx, signal_rx) = crossbeam_channel::bounded(1);
    let report_registry = registry.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGUSR1 {
                    log::info!(
                        "SIGUSR1: thread report\n{}",
                        http::thread_report(&report_registry)
                    );
                    crate::fault::arm();
                    crate::fault::panic_point();
                    continue;
                }
                let _ = signal_tx.send(signal);
                break;
            }
        })
        .map_err(|e| e.to_string())?;

    log::info!(
        "serving http://{http_addr}/v1 (agent: {}), channel hub ws://{ws_addr}, workspace {}, state {}",
        if config.demo {
            "simulated".to_string()
        } else {
            config.claude_bin.clone()
        },
        config.workspace.display(),
        config.state_dir.display()
    );
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening http={http_addr} ws={ws_addr}");
    let _ = stdout.flush();

    let (sweeper_stop, sweeper_thread) =
        spawn_sweeper(registry.clone(), config.idle_kill).map_err(|e| e.to_string())?;
    registry.fill_standbys();

    let signal = signal_rx.recv().map_err(|_| "signal thread ended")?;
    let grace = config.shutdown_grace;
    log::info!("signal {signal}: shutting down (turns in flight get {grace:?})");
    stop.store(true, Ordering::SeqCst);
    drop(sweeper_stop);
    registry.shutdown(grace);
    hub_stop.store(true, Ordering::SeqCst);
    hub_waker.wake();
    let _ = http_thread.join();
    let _ = hub_thread.join();
    let _ = sweeper_thread.join();
    log::info!("stopped");
    Ok(())
}

/// `parent_pid`: the kernel sends this process SIGTERM (handled like a `kill`: the usual
/// graceful shutdown) when its parent exits, however it exits: the OpenClaw plugin's gateway
/// killed with SIGKILL leaves no bridge behind. `parent` must be the actual parent: if it is
/// not (it has already exited and the bridge was reparented, or it names another process),
/// the bridge refuses to run unwatched.
fn exit_with_parent(parent: u32) -> Result<(), String> {
    // SAFETY: plain system calls with integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc < 0 {
        return Err(format!(
            "parent_pid: cannot arm the parent-death signal: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Checked after arming: a parent that dies from here on sends the signal.
    // SAFETY: getppid takes no arguments and cannot fail.
    let actual = unsafe { libc::getppid() } as u32;
    if actual != parent {
        return Err(format!(
            "parent_pid {parent} is not this process's parent (that is {actual}): the parent has already exited, or parent_pid names another process; not serving without it"
        ));
    }
    log::info!("parent_pid {parent}: the bridge stops when that process exits");
    Ok(())
}

/// Creates the state dir 0700 (`store::create_private_dir`). One that exists with access
/// for group or others (made by hand, or by an older bridge) is narrowed to 0700: it holds
/// the session map and the Stop hook's socket.
fn prepare_state_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    crate::session::store::create_private_dir(dir)
        .map_err(|e| format!("cannot create state_dir {}: {e}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| format!("cannot read state_dir {}: {e}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            format!(
                "state_dir {} has mode {mode:03o} and cannot be made 0700 ({e}): fix its owner or mode",
                dir.display()
            )
        })?;
        log::warn!(
            "state_dir {} had mode {mode:03o}; set it to 0700 (it holds the session map and the Stop hook's socket)",
            dir.display()
        );
    }
    Ok(())
}

/// The `--settings` JSON installing the Stop hook (the turn-end backstop): `type: "http"`
/// (claude POSTs to the hub; src/hook_http.rs) when `stop_hook` says so, or for `auto` when
/// the agent is simulated or claude is new enough; else `sh -c '<bridge> hook stop'`.
fn stop_hook_settings(
    config: &Config,
    version: Option<(u32, u32, u32)>,
    exe: &std::path::Path,
    hub_port: u16,
) -> String {
    use crate::config::StopHookKind;
    let http = match config.stop_hook {
        StopHookKind::Http => true,
        StopHookKind::Command => false,
        StopHookKind::Auto => {
            config.demo || version.is_some_and(|v| v >= agent::version::HTTP_HOOKS_SINCE)
        }
    };
    log::info!(
        "Stop hook: {}",
        if http {
            "http (claude POSTs the turn end to the hub)"
        } else {
            "command (sh + `synthesis-bridge hook stop` per turn)"
        }
    );
    if http {
        crate::hook_http::stop_hook_settings(hub_port)
    } else {
        agent::stop_hook_settings(exe)
    }
}

/// `<state_dir>/claude-debug`, where each claude writes its MCP debug log (the channel
/// server's signal that Claude registered the channel); logs a crash left behind are removed.
fn prepare_debug_dir(state_dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let dir = state_dir.join("claude-debug");
    crate::session::store::create_private_dir(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("claude-") && name.ends_with(".log") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(dir)
}

/// Logs a warning when the claude binary is older than channels or newer than any version
/// the bridge was tested with (it still starts: the user may know better); returns the
/// version when it could be read.
fn warn_about_version(claude: &std::ffi::OsStr) -> Option<(u32, u32, u32)> {
    use agent::version::{self, Verdict};
    let text = version::read(claude, Duration::from_secs(10));
    let parsed = text.as_deref().ok().and_then(version::parse);
    match text {
        Ok(text) => match version::parse(&text).map(version::verdict) {
            Some(Verdict::Supported) => log::info!("claude version {text}"),
            Some(Verdict::TooOld) => log::warn!(
                "claude version {text} is older than {} (the first with channels): the bridge cannot work with it; update Claude Code",
                version::MIN_CLAUDE
            ),
            Some(Verdict::Untested) => log::warn!(
                "claude version {text} is newer than {}, the newest tested with this bridge; run `synthesis-bridge doctor --probe` to check it",
                version::NEWEST_TESTED_CLAUDE
            ),
            None => log::warn!("cannot read claude's version from {text:?}"),
        },
        Err(e) => log::warn!("cannot read claude's version: {e}"),
    }
    parsed
}

/// The sweeper: every few seconds, idle kills and a write of the session map if it changed.
/// Dropping the returned sender stops it at once.
fn spawn_sweeper(
    registry: Arc<Registry>,
    idle_kill: Duration,
) -> std::io::Result<(crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let period = (idle_kill / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let thread = std::thread::Builder::new()
        .name("sweeper".into())
        .spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stop_rx.recv_timeout(period)
            {
                crate::fault::panic_point();
                registry.sweep(idle_kill);
            }
        })?;
    Ok((stop_tx, thread))
}

/// Threads of which the bridge has exactly one: if one of them panics, the bridge cannot do
/// its job any more (no HTTP, no channel hub, no idle kills, no clean shutdown).
const SINGLETON_THREADS: [&str; 7] = [
    "main",
    "http",
    "http-accept",
    "http-reaper",
    "ws-accept",
    "sweeper",
    "signals",
];

/// The panic policy (docs/ARCHITECTURE.md §4): a panic in a thread that serves one session or
/// one request (`session:<key>`, `respond`, `http-conn`, `ws-handshake`, ...) stays there:
/// its owner releases what it held by unwinding and the bridge serves on. A panic in a
/// singleton thread ends the bridge with status 70 (EX_SOFTWARE), so a service manager
/// restarts it: never a half-alive process whose HTTP or hub is gone. Its children get
/// SIGTERM from `PR_SET_PDEATHSIG`.
fn install_panic_policy() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        if SINGLETON_THREADS.contains(&name) {
            log::error!(
                "thread {name:?} panicked: the bridge cannot serve without it; exiting with status 70 so the service manager restarts it"
            );
            std::process::exit(70);
        }
    }));
}
