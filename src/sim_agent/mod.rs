//! `synthesis-bridge sim-agent`: a stand-in for the real `claude`, run by the bridge in a
//! pseudo-terminal with claude's own flags, so `serve --demo` and the tests drive the bridge's
//! real spawn, PTY, screen and channel code without Claude. It behaves as docs/CLAUDE_CODE.md §9 says
//! Claude Code does: session files and the new-vs-resume rules, the dev-channels dialog,
//! the MCP client handshake with the channel server, `<channel>` turns answered through the
//! `reply` tool, Stop hooks, `/resume <uuid>` typed at the prompt, clean exit on
//! SIGTERM/SIGHUP/EOF.
//!
//! This file owns start-up (flags, session checks, banner, dialog, starting the channel) and
//! shutdown; `turns.rs` owns the loop in between, `prompt.rs` what is typed at the prompt
//! (`/resume <uuid>`), `session.rs` which conversation it is in. The sim must never call a model, never
//! read a key it was not waiting for, and never leave a child process behind on a clean exit.
//!
//! Test hooks (environment):
//! - `SYNTHESIS_SIM_DIALOG_DELAY_MS` (default 300): when the dialog appears. Any input byte
//!   before it exits 3 ("input arrived before the dialog was shown").
//! - `SYNTHESIS_SIM_DIALOG`: `none` skips the dialog; `ignore` shows it and never reacts.
//! - `SYNTHESIS_SIM_NO_HELLO=1`: never start the MCP server (no hello); idle until stopped.
//! - `SYNTHESIS_SIM_EXIT_AT_START=<code>`: exit with that code right after start-up.
//! - `SYNTHESIS_SIM_DEFAULT=<directives>`: `[sim:...]` directives applied to every turn.
//! - `SYNTHESIS_SIM_STOP_HOOK_ON_INTERRUPT=1`: also run the Stop hooks after Esc.
//! - `SYNTHESIS_SIM_NO_MESSAGE_UUIDS=1`: transcript entries carry no `uuid` (the bridge then
//!   cannot fork at a message and restores the history instead).
//! - `SYNTHESIS_SIM_NO_FORK=1`: refuse `--fork-session` as an unknown option (exit 1).
//! - `SYNTHESIS_SIM_LOG=<file>`: debug log (the terminal is the screen, so no stderr logs).
//! - `SYNTHESIS_SIM_REGISTER_DELAY_MS=<n>` (default 0): channel notifications that arrive
//!   within n ms of `notifications/initialized` are dropped, as the real Claude drops those
//!   that come before it has registered the channel (docs/CLAUDE_CODE.md §9.5).
//! - `SYNTHESIS_SIM_RESUME_DELAY_MS=<n>` (default 0): `/resume <uuid>` typed at the prompt
//!   switches the conversation n ms after Enter (the session file changes then).
//! - `SYNTHESIS_SIM_NO_RESUME=1`: `/resume` is an unknown slash command (nothing switches).

mod args;
mod directives;
mod files;
mod hook;
mod mcp_client;
mod prompt;
mod session;
mod signals;
mod term;
mod turns;

use files::Transcript;
use mcp_client::McpClient;
use session::Session;
use signals::Signals;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use term::{Key, RawMode, Screen};
use turns::{Conversation, Ending};

pub const DIALOG_DELAY_MS: &str = "SYNTHESIS_SIM_DIALOG_DELAY_MS";
pub const DIALOG: &str = "SYNTHESIS_SIM_DIALOG";
pub const NO_HELLO: &str = "SYNTHESIS_SIM_NO_HELLO";
pub const EXIT_AT_START: &str = "SYNTHESIS_SIM_EXIT_AT_START";
pub const DEFAULT: &str = "SYNTHESIS_SIM_DEFAULT";
pub const STOP_HOOK_ON_INTERRUPT: &str = "SYNTHESIS_SIM_STOP_HOOK_ON_INTERRUPT";
pub const LOG: &str = "SYNTHESIS_SIM_LOG";
pub const NO_MESSAGE_UUIDS: &str = "SYNTHESIS_SIM_NO_MESSAGE_UUIDS";
pub const NO_FORK: &str = "SYNTHESIS_SIM_NO_FORK";
pub const REGISTER_DELAY_MS: &str = "SYNTHESIS_SIM_REGISTER_DELAY_MS";
pub const RESUME_DELAY_MS: &str = "SYNTHESIS_SIM_RESUME_DELAY_MS";
pub const NO_RESUME: &str = "SYNTHESIS_SIM_NO_RESUME";

/// Exit code when a key arrived before the dialog was on screen.
const EXIT_EARLY_INPUT: u8 = 3;
/// Exit code when stdin is not a terminal (the real claude would fall into print mode).
const EXIT_NOT_A_TERMINAL: u8 = 4;
/// How long the MCP server gets to exit after its stdin closes.
const MCP_GRACE: Duration = Duration::from_millis(500);

pub fn run(argv: Vec<String>) -> u8 {
    if let Some(path) = std::env::var_os(LOG).filter(|v| !v.is_empty()) {
        crate::logging::init(Some(Path::new(&path)));
    }
    let args = match args::parse(&argv) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if args.print {
        eprintln!("sim-agent: print mode (-p) is not simulated");
        return 2;
    }
    if !term::is_tty(term::STDIN) {
        eprintln!(
            "sim-agent: stdin is not a terminal. The real claude would fall into print mode here (wait for \
             EOF, answer once, exit) and never load a channel: run it in a pseudo-terminal."
        );
        return EXIT_NOT_A_TERMINAL;
    }

    // Which session, and whether that is allowed (docs/CLAUDE_CODE.md §9.3).
    if args.fork_session && std::env::var_os(NO_FORK).is_some() {
        println!("error: unknown option '--fork-session'");
        return 1;
    }
    // `--resume <parent> --fork-session`: a new conversation that starts as a copy.
    let fork_parent = args.resume.clone().filter(|_| args.fork_session);
    let (session, resume) = match (&args.session_id, &args.resume) {
        (Some(id), _) => (id.clone(), false),
        (None, Some(_)) if fork_parent.is_some() => (uuid::Uuid::new_v4().to_string(), false),
        (None, Some(id)) => (id.clone(), true),
        (None, None) => (uuid::Uuid::new_v4().to_string(), false),
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let config_dir = files::config_dir();
    let transcript = Transcript::new(
        files::transcript_path(&config_dir, &cwd, &session),
        &session,
    );
    if resume && (uuid::Uuid::parse_str(&session).is_err() || !transcript.exists()) {
        println!("No conversation found with session ID: {session}");
        return 1;
    }
    if !resume && uuid::Uuid::parse_str(&session).is_err() {
        println!("Error: Invalid session ID. Must be a valid UUID.");
        return 1;
    }
    if !resume && transcript.exists() {
        println!("Error: Session ID {session} is already in use.");
        return 1;
    }
    if let Some(parent) = &fork_parent {
        let source = files::transcript_path(&config_dir, &cwd, parent);
        if uuid::Uuid::parse_str(parent).is_err() || !source.is_file() {
            println!("No conversation found with session ID: {parent}");
            return 1;
        }
        if let Err(e) = transcript.fork_from(&source, args.resume_session_at.as_deref()) {
            println!("{e}");
            return 1;
        }
    }
    let hooks = match args.settings.as_deref().map(hook::load_settings) {
        None => Vec::new(),
        Some(Ok(settings)) => hook::stop_hooks(&settings),
        Some(Err(e)) => {
            println!("Error processing --settings: {e}");
            return 1;
        }
    };

    let signals = match Signals::register() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sim-agent: cannot install signal handlers: {e}");
            return 1;
        }
    };
    let stdin = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            eprintln!("sim-agent: cannot read the terminal: {e}");
            return 1;
        }
    };
    let _raw = match RawMode::enable(term::STDIN) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("sim-agent: cannot put the terminal in raw mode: {e}");
            return 1;
        }
    };
    let screen = Screen;
    banner(
        &screen,
        &session,
        (resume || fork_parent.is_some()).then(|| transcript.message_count()),
        &cwd,
    );
    if let Some(code) = env_number(EXIT_AT_START) {
        screen.line(&format!(
            "sim-agent: exiting with code {code} ({EXIT_AT_START})"
        ));
        return code;
    }

    let mut start = Startup {
        screen: &screen,
        signals: &signals,
        stdin,
    };
    let channel = args.channel_server().map(String::from);
    if let Some(name) = &channel {
        match std::env::var(DIALOG).unwrap_or_default().as_str() {
            "none" => {}
            mode => {
                if let Err(end) = start.dev_channels_dialog(name, mode == "ignore") {
                    return end.code();
                }
            }
        }
    }
    screen.clear();
    screen.line(&format!("✻ Claude Code (simulated) · session {session}"));

    let session = Session::new(&config_dir, &cwd, std::process::id(), &session, transcript);
    let _ = session.status.set("idle");
    // The channel server keeps the variables it started with, even after a `/resume`.
    let extra_env = session.claude_env();
    let mcp = match &channel {
        Some(_) if std::env::var(NO_HELLO).is_ok_and(|v| !v.is_empty() && v != "0") => {
            screen.line(&format!(
                "(sim: channel server not started: {NO_HELLO} is set)"
            ));
            None
        }
        Some(name) if args.channels.iter().any(|c| c == &format!("server:{name}")) => {
            // Observed on Claude Code: naming the server in both flags skips it.
            screen.line(&format!(
                "Channel server:{name} skipped: not on the approved channels allowlist"
            ));
            None
        }
        Some(name) => start_channel(&screen, &signals, &args.mcp_configs, name, &extra_env),
        None => None,
    };
    if let (Some(name), Some(client), Some(file)) = (&channel, &mcp, &args.debug_file) {
        announce_registration(client, name, file);
    }
    if let Some(name) = &channel
        && mcp.is_some()
    {
        screen.line(&format!(
            "Listening for channel messages from: server:{name}"
        ));
    }
    screen.line("");
    screen.prompt();

    let reply_allowed = channel
        .as_deref()
        .is_some_and(|name| args.reply_allowed(name));
    let mut conversation = Conversation {
        screen: Screen,
        signals: &signals,
        mcp,
        channel: channel.unwrap_or_default(),
        reply_allowed,
        hooks,
        defaults: std::env::var(DEFAULT).unwrap_or_default(),
        stop_hooks_on_interrupt: std::env::var(STOP_HOOK_ON_INTERRUPT).is_ok_and(|v| v == "1"),
        session,
        line: Default::default(),
        resume_known: std::env::var_os(NO_RESUME).is_none_or(|v| v.is_empty() || v == "0"),
        resume_delay: Duration::from_millis(
            std::env::var(RESUME_DELAY_MS)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        ),
        pending_resume: None,
        queue: Default::default(),
        current: None,
        dropped: Default::default(),
        tool_calls: 0,
        listed_tools: Vec::new(),
        listing: None,
        json_next: None,
    };
    let ending = conversation.run(start.stdin);
    if let Some(mcp) = conversation.mcp.take() {
        mcp.stop(MCP_GRACE);
    }
    match ending {
        Ending::Clean(why) => {
            log::info!("clean exit: {why}");
            conversation.session.status.remove();
            0
        }
        // A crash leaves sessions/<pid>.json behind, as a killed claude does.
        Ending::Crash(code) => code,
    }
}

fn env_number(name: &str) -> Option<u8> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn banner(screen: &Screen, session: &str, resumed: Option<usize>, cwd: &Path) {
    screen.line("╭───────────────────────────────────────────────────╮");
    screen.line("│ ✻ Welcome to Claude Code (simulated: sim-agent)   │");
    screen.line("╰───────────────────────────────────────────────────╯");
    screen.line(&format!(
        "  sim-agent {} · cwd {}",
        env!("CARGO_PKG_VERSION"),
        cwd.display()
    ));
    match resumed {
        Some(n) => screen.line(&format!("  resumed session {session} ({n} messages)")),
        None => screen.line(&format!("  new session {session}")),
    }
}

/// How start-up ended early.
enum EarlyEnd {
    /// Declined, or input before the dialog: exit with this code.
    Exit(u8),
    /// A signal or the terminal closing: clean exit.
    Stopped,
}

impl EarlyEnd {
    fn code(&self) -> u8 {
        match self {
            EarlyEnd::Exit(code) => *code,
            EarlyEnd::Stopped => 0,
        }
    }
}

struct Startup<'a> {
    screen: &'a Screen,
    signals: &'a Signals,
    stdin: File,
}

impl Startup<'_> {
    /// Waits up to `until` for input; returns the bytes read (empty on timeout).
    fn read_until(&mut self, until: Option<Instant>) -> Result<Vec<u8>, EarlyEnd> {
        loop {
            let wait = match until {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(1),
            };
            let ready = crate::poll::wait_readable(&[term::STDIN, self.signals.fd()], Some(wait))
                .map_err(|_| EarlyEnd::Stopped)?;
            if self.signals.received().is_some() {
                return Err(EarlyEnd::Stopped);
            }
            if ready[0].readable || ready[0].hangup {
                let mut buf = [0u8; 1024];
                return match self.stdin.read(&mut buf) {
                    Ok(0) | Err(_) => Err(EarlyEnd::Stopped),
                    Ok(n) => Ok(buf[..n].to_vec()),
                };
            }
            if until.is_some_and(|at| Instant::now() >= at) {
                return Ok(Vec::new());
            }
        }
    }

    /// The "Loading development channels" warning: shown after the dialog delay; Enter or 1
    /// accepts, 2 or Esc exits 1. With `ignore`, it never reacts.
    fn dev_channels_dialog(&mut self, name: &str, ignore: bool) -> Result<(), EarlyEnd> {
        let delay = std::env::var(DIALOG_DELAY_MS)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(300);
        let shown_at = Instant::now() + Duration::from_millis(delay);
        while Instant::now() < shown_at {
            if !self.read_until(Some(shown_at))?.is_empty() {
                self.screen
                    .line("sim-agent: input arrived before the dialog was shown");
                return Err(EarlyEnd::Exit(EXIT_EARLY_INPUT));
            }
        }
        let mut selected = 1;
        self.draw_dialog(name, selected);
        loop {
            let bytes = self.read_until(None)?;
            if ignore {
                continue;
            }
            for key in term::keys(&bytes) {
                match key {
                    Key::Char(b'1') => return Ok(()),
                    Key::Enter if selected == 1 => return Ok(()),
                    Key::Char(b'2') | Key::Esc | Key::Enter => {
                        self.screen
                            .line("Exiting: development channels were not accepted.");
                        return Err(EarlyEnd::Exit(1));
                    }
                    Key::Up | Key::Down => {
                        selected = if key == Key::Up { 1 } else { 2 };
                        self.draw_dialog(name, selected);
                    }
                    _ => {}
                }
            }
        }
    }

    fn draw_dialog(&self, name: &str, selected: u8) {
        let s = self.screen;
        let mark = |n: u8| if n == selected { "❯" } else { " " };
        s.clear();
        s.line("");
        s.line(" WARNING: Loading development channels");
        s.line("");
        s.line(" --dangerously-load-development-channels is for local channel development only.");
        s.line(&format!(" Channels: server:{name}"));
        s.line("");
        s.line(&format!(
            " {} 1. I am using this for local development",
            mark(1)
        ));
        s.line(&format!(" {} 2. Exit", mark(2)));
        s.line("");
        s.line(" Enter to confirm · Esc to cancel");
    }
}

/// Writes Claude's `Channel notifications registered` debug line to `--debug-file`,
/// `SYNTHESIS_SIM_REGISTER_DELAY_MS` after `notifications/initialized` (before that, channel
/// notifications are dropped, as the real Claude drops them).
fn announce_registration(client: &McpClient, name: &str, file: &str) {
    let delay = std::env::var(REGISTER_DELAY_MS)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let at = client.initialized_at.unwrap_or_else(Instant::now) + Duration::from_millis(delay);
    let (name, file) = (name.to_string(), PathBuf::from(file));
    let write = move || {
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let line = format!(
            "{} [DEBUG] MCP server \"{name}\": Channel notifications registered\n",
            crate::logging::utc_timestamp(std::time::SystemTime::now())
        );
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = appended {
            log::warn!("cannot write the debug file {}: {e}", file.display());
        }
    };
    // A short-lived thread, so the main loop needs no timer for it; the sim exits without
    // waiting for it (it only sleeps, then appends one line).
    if let Err(e) = std::thread::Builder::new()
        .name("sim-register".into())
        .spawn(write)
    {
        log::warn!("cannot start the registration thread: {e}");
    }
}

/// Starts the channel's MCP server and does the handshake; on any failure says why on screen
/// and goes on without the channel, as Claude Code skips a channel it cannot load.
fn start_channel(
    screen: &Screen,
    signals: &Signals,
    configs: &[String],
    name: &str,
    extra_env: &[(String, String)],
) -> Option<McpClient> {
    let spec = match mcp_client::find_server(configs, name) {
        Ok(spec) => spec,
        Err(e) => {
            screen.line(&format!("Channel server:{name} skipped: {e}"));
            return None;
        }
    };
    let mut client = match McpClient::spawn(&spec, extra_env) {
        Ok(client) => client,
        Err(e) => {
            screen.line(&format!("MCP server \"{name}\" failed to start: {e}"));
            return None;
        }
    };
    log::info!("MCP server {name} started (pid {})", client.pid());
    match client.handshake(signals) {
        Ok(()) => Some(client),
        Err(e) => {
            screen.line(&format!(
                "Channel server:{name} skipped: {}",
                term::one_line(&e, 300)
            ));
            client.stop(MCP_GRACE);
            None
        }
    }
}
