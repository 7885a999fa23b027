//! Fault injection for the panic-policy tests (docs/ARCHITECTURE.md §4.7). Each fault is off
//! unless its environment variable is set; in normal operation all this costs is one lookup
//! of each variable, the first time it is asked for.
//!
//! - `SYNTHESIS_FAULT_PANIC_ON=<text>`: a session worker panics on a turn containing the text
//!   (`panic_on_turn_text`).
//! - `SYNTHESIS_FAULT_PANIC_THREAD=<thread name>`: once the bridge gets SIGUSR1 (`arm`), that
//!   singleton thread panics at its next pass through `panic_point`: `signals` at once,
//!   `http` within 200 ms, `sweeper` at its next round, `ws-accept` at its next wake-up (a
//!   connection, or 5 s).
//!
//! Children never see these variables (`agent::env_remove` keeps no `SYNTHESIS_FAULT_*`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

const PANIC_ON: &str = "SYNTHESIS_FAULT_PANIC_ON";
const PANIC_THREAD: &str = "SYNTHESIS_FAULT_PANIC_THREAD";

/// SIGUSR1 has armed `SYNTHESIS_FAULT_PANIC_THREAD`.
static ARMED: AtomicBool = AtomicBool::new(false);

fn setting(name: &'static str, cell: &'static OnceLock<Option<String>>) -> Option<&'static str> {
    cell.get_or_init(|| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// The text that makes a session worker panic on a turn containing it, if set.
pub fn panic_on_turn_text() -> Option<&'static str> {
    static TEXT: OnceLock<Option<String>> = OnceLock::new();
    setting(PANIC_ON, &TEXT)
}

fn panic_thread() -> Option<&'static str> {
    static THREAD: OnceLock<Option<String>> = OnceLock::new();
    setting(PANIC_THREAD, &THREAD)
}

/// Arms `SYNTHESIS_FAULT_PANIC_THREAD` (the `signals` thread calls it on SIGUSR1); nothing
/// happens when it is not set.
pub fn arm() {
    if let Some(thread) = panic_thread() {
        log::warn!("fault injection: thread {thread:?} panics at its next round ({PANIC_THREAD})");
        ARMED.store(true, Ordering::SeqCst);
    }
}

/// Panics when the calling thread is the one `SYNTHESIS_FAULT_PANIC_THREAD` names and SIGUSR1
/// has armed it. Called once per round by the singleton threads listed in the module header.
pub fn panic_point() {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let current = std::thread::current();
    if let Some(name) = current.name()
        && panic_thread() == Some(name)
    {
        panic!("fault injection: thread {name:?} ({PANIC_THREAD})");
    }
}
