//! synthesis-bridge: an OpenAI-compatible front for long-lived Claude Code sessions.
//!
//! This file only dispatches subcommands; each lives in its own module:
//! `serve` (default) the bridge itself, `channel` the MCP stdio server each claude spawns,
//! `sim-agent` the simulated Claude used by `--demo` and the tests.

use std::process::ExitCode;
use synthesis_bridge::{channel, doctor, hook, serve, sessions_cli, sim_agent};

const USAGE: &str = "\
synthesis-bridge: use long-lived Claude Code sessions as an OpenAI-compatible model

USAGE:
    synthesis-bridge [serve] [OPTIONS]   run the bridge (default); `serve --help` lists options
    synthesis-bridge doctor [--probe]    check this machine's setup (and try one turn)
    synthesis-bridge sessions [--json]   the session table (live bridge, else the state file)
    synthesis-bridge channel             MCP stdio channel server (spawned by claude, not by hand)
    synthesis-bridge hook stop           Claude Code's Stop hook (run by claude, not by hand)
    synthesis-bridge sim-agent [FLAGS]   the simulated Claude behind `serve --demo`
";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.first().map(String::as_str) {
        None => "serve".to_string(),
        Some(first) if first.starts_with('-') && first != "-h" && first != "--help" => {
            "serve".to_string()
        }
        Some(_) => args.remove(0),
    };
    let code = match command.as_str() {
        "serve" => serve::run(&args),
        "channel" => channel::run(),
        "hook" => hook::run(&args),
        "doctor" => doctor::run(&args),
        "sessions" => sessions_cli::run(&args),
        "sim-agent" => sim_agent::run(args),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            0
        }
        other => {
            eprintln!("synthesis-bridge: unknown command `{other}`\n\n{USAGE}");
            2
        }
    };
    ExitCode::from(code)
}
