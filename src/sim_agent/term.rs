//! The simulated Claude's terminal: raw mode, what it draws, and which keys it reads.
//!
//! Owns fd 0/1 as a terminal. Raw mode (no echo, no line editing, no signal keys) lets single
//! keys through as the real TUI does; the original settings come back when `RawMode` drops.
//! Output is plain lines plus "clear screen", enough for the bridge's screen model to see the
//! same texts it sees on Claude Code. It must never block on reading: the caller polls fd 0
//! first and then reads once.

use std::io::{self, Write};
use std::os::fd::RawFd;

pub const STDIN: RawFd = 0;

/// Whether `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Raw mode on a terminal; restores the previous settings on drop.
pub struct RawMode {
    fd: RawFd,
    original: libc::termios,
}

impl RawMode {
    pub fn enable(fd: RawFd) -> io::Result<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut original) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = original;
        raw.c_lflag &= !(libc::ECHO | libc::ICANON | libc::ISIG | libc::IEXTEN);
        raw.c_iflag &= !(libc::ICRNL | libc::IXON | libc::INLCR | libc::IGNCR);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // Output post-processing stays on, so "\n" still moves to the start of the next line.
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores settings read from this descriptor; failure (terminal gone) is moot.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.original) };
    }
}

/// Writes to the terminal. Write errors are ignored: a vanished terminal shows up as EOF or
/// SIGHUP on the input side, which ends the process.
pub struct Screen;

impl Screen {
    pub fn line(&self, text: &str) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.write_all(b"\r\n");
        let _ = out.flush();
    }

    /// Clears the screen and homes the cursor (as the TUI does between screens).
    pub fn clear(&self) {
        self.raw("\x1b[2J\x1b[H");
    }

    pub fn prompt(&self) {
        self.raw("> ");
    }

    /// Typed input as it is echoed at the prompt (raw mode does not echo).
    pub fn echo(&self, bytes: &[u8]) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }

    fn raw(&self, text: &str) {
        self.echo(text.as_bytes());
    }
}

/// Up to `max` characters of `text` on one screen line: control characters (newlines,
/// escapes) become spaces so the text cannot move the cursor or redraw the screen.
pub fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A key, as far as the simulated Claude cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Enter,
    /// Esc on its own (not the start of an escape sequence).
    Esc,
    Up,
    Down,
    Char(u8),
    /// Any other escape sequence.
    Other,
}

/// Splits the bytes of one read into keys. Esc followed by `[` or `O` starts a sequence
/// (arrows and the like); an Esc followed by anything else, or last in the read, is the Esc key.
pub fn keys(bytes: &[u8]) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match b {
            b'\r' | b'\n' => keys.push(Key::Enter),
            0x1b if matches!(bytes.get(i), Some(b'[' | b'O')) => {
                let start = i + 1;
                let mut end = start;
                // CSI parameters, then one final byte in 0x40..=0x7e.
                while end < bytes.len() && !(0x40..=0x7e).contains(&bytes[end]) {
                    end += 1;
                }
                keys.push(match bytes.get(end) {
                    Some(b'A') => Key::Up,
                    Some(b'B') => Key::Down,
                    _ => Key::Other,
                });
                i = (end + 1).min(bytes.len());
            }
            0x1b => keys.push(Key::Esc),
            other => keys.push(Key::Char(other)),
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_alone_is_a_key_and_sequences_are_not() {
        assert_eq!(keys(b"\x1b"), vec![Key::Esc]);
        assert_eq!(keys(b"\x1b\x1b"), vec![Key::Esc, Key::Esc]);
        assert_eq!(
            keys(b"\x1b[A\x1bOB\x1b[1;5C1\r"),
            vec![Key::Up, Key::Down, Key::Other, Key::Char(b'1'), Key::Enter]
        );
        assert_eq!(keys(b"2\x1b"), vec![Key::Char(b'2'), Key::Esc]);
    }

    #[test]
    fn screen_lines_cannot_carry_control_characters() {
        assert_eq!(one_line("a\nb\x1b[2Jc", 100), "a b [2Jc");
        assert_eq!(one_line("héllo", 2), "hé");
    }
}
