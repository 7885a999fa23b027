//! Which Claude Code versions the bridge works with, and reading a binary's version.
//!
//! Channels (`--dangerously-load-development-channels`, `notifications/claude/channel`)
//! appeared in 2.1.80. `NEWEST_TESTED_CLAUDE` is the newest release the real-binary test
//! (tests/real_claude.rs) has passed with. To re-test a newer one:
//! `SYNTHESIS_CLAUDE_VERSION=<v> scripts/install-claude.sh` prints its path; run
//! `SYNTHESIS_REAL_CLAUDE=<path> cargo test --test real_claude`, then raise the constant (and
//! the default in scripts/install-claude.sh).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const MIN_CLAUDE: &str = "2.1.80";
pub const NEWEST_TESTED_CLAUDE: &str = "2.1.331";
/// Oldest release on which the channel's registration signal was checked: `--debug=mcp
/// --debug-file` writing `Channel notifications registered` (2.1.331; docs/SPEED.md §1).
/// Older versions keep the fixed `channel_hello_delay`.
pub const DEBUG_FILE_SIGNAL_SINCE: (u32, u32, u32) = (2, 1, 331);
/// First release known to have `type: "http"` hooks (issue 16 names 2.1.328; the bridge's
/// http Stop hook is tested on 2.1.331). `stop_hook = auto` uses them from here on.
pub const HTTP_HOOKS_SINCE: (u32, u32, u32) = (2, 1, 328);
/// Oldest release on which `/resume <uuid>` typed at the prompt was checked to switch the
/// running claude and keep its channel (docs/CLAUDE_CODE.md §9.6). `standby_resume` is used
/// from here on; an older or unreadable version resumes with `--resume` as before.
pub const TYPED_RESUME_SINCE: (u32, u32, u32) = (2, 1, 331);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Supported,
    /// Older than channels: the bridge cannot work with it.
    TooOld,
    /// Newer than any release tested: probably fine, but unproven.
    Untested,
}

/// `2.1.331 (Claude Code)` → (2, 1, 331).
pub fn parse(text: &str) -> Option<(u32, u32, u32)> {
    let word = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut parts = word
        .split('.')
        .map(|p| p.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u32>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next().unwrap_or(Ok(0)).ok()?,
    ))
}

pub fn verdict(version: (u32, u32, u32)) -> Verdict {
    let min = parse(MIN_CLAUDE).expect("constant parses");
    let newest = parse(NEWEST_TESTED_CLAUDE).expect("constant parses");
    if version < min {
        Verdict::TooOld
    } else if version > newest {
        Verdict::Untested
    } else {
        Verdict::Supported
    }
}

/// Runs `<program> --version` (with `DISABLE_AUTOUPDATER=1`), giving it `limit` to answer.
pub fn read(program: &std::ffi::OsStr, limit: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .arg("--version")
        .env("DISABLE_AUTOUPDATER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
    let deadline = std::time::Instant::now() + limit;
    let pidfd = crate::poll::pidfd_open(child.id());
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                let _ = stdout.read_to_string(&mut out);
            }
            return if status.success() {
                Ok(out.trim().to_string())
            } else {
                Err(format!("--version exited with {status}"))
            };
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("--version did not answer within {limit:?}"));
        }
        match &pidfd {
            Some(fd) => {
                use std::os::fd::AsRawFd;
                let _ = crate::poll::wait_readable(&[fd.as_raw_fd()], Some(left));
            }
            None => std::thread::sleep(left.min(Duration::from_millis(20))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse("2.1.331 (Claude Code)"), Some((2, 1, 331)));
        assert_eq!(parse("claude 2.1.80"), Some((2, 1, 80)));
        assert_eq!(parse("nonsense"), None);
        assert_eq!(verdict((2, 1, 79)), Verdict::TooOld);
        assert_eq!(verdict((2, 1, 80)), Verdict::Supported);
        assert_eq!(verdict((2, 1, 331)), Verdict::Supported);
        assert_eq!(verdict((2, 2, 0)), Verdict::Untested);
    }
}
