//! synthesis-bridge as a library: every module of the binary, so the black-box and
//! randomised tests in `tests/` and the benchmarks can reach the parsers and types they
//! exercise. `main.rs` only dispatches subcommands. docs/ARCHITECTURE.md maps the modules.

pub mod agent;
pub mod channel;
pub mod config;
pub mod doctor;
pub mod fault;
pub mod fnv;
pub mod hook;
pub mod hook_http;
pub mod http;
pub mod hub;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod poll;
pub mod protocol;
pub mod serve;
pub mod session;
pub mod sessions_cli;
pub mod sim_agent;
