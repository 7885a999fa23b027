//! The simulated Claude's input line: what is typed at its `>` prompt while no permission
//! prompt is shown, and the slash commands a submitted line can be.
//!
//! Owns the line being typed (`LineEditor`, echoed on screen), the reading of a submitted
//! line (`Submitted::parse`) and running it: `/resume <uuid>` switches the conversation
//! (`session.rs`) `SYNTHESIS_SIM_RESUME_DELAY_MS` after Enter, checked by the turn loop's
//! `advance` so the loop never blocks for it; any other slash command is unknown; other text
//! is shown as ignored. Turns never come from here (the sim takes them from the channel only).

use super::term::Key;
use super::turns::Conversation;
use std::time::Instant;

/// Backspace as a terminal in raw mode sends it (DEL), and Ctrl-H.
const BACKSPACE: [u8; 2] = [0x7f, 0x08];

/// What one key did to the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// The key is not part of line editing (Esc, arrows, other control bytes).
    None,
    /// A byte was added at the end.
    Typed(u8),
    /// The last character was removed (nothing happens on an empty line).
    Erased,
    /// Enter: the whole line, now cleared from the buffer.
    Submitted(String),
}

/// The line typed so far. Bytes are kept as typed (UTF-8 arrives a byte at a time).
#[derive(Debug, Default)]
pub struct LineEditor {
    typed: Vec<u8>,
}

impl LineEditor {
    pub fn key(&mut self, key: Key) -> Edit {
        match key {
            Key::Enter => {
                let line = String::from_utf8_lossy(&self.typed).into_owned();
                self.typed.clear();
                Edit::Submitted(line)
            }
            Key::Char(b) if BACKSPACE.contains(&b) && !self.typed.is_empty() => {
                // One character: its UTF-8 continuation bytes, then its first byte.
                while self.typed.pop().is_some_and(|last| last & 0xc0 == 0x80) {}
                Edit::Erased
            }
            Key::Char(b) if BACKSPACE.contains(&b) => Edit::None,
            Key::Char(b) if b >= 0x20 => {
                self.typed.push(b);
                Edit::Typed(b)
            }
            _ => Edit::None,
        }
    }

    /// The line typed so far.
    #[cfg(test)]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.typed).into_owned()
    }
}

/// A submitted line, as the sim reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Nothing but spaces.
    Empty,
    /// Not a slash command: shown as ignored.
    Text(String),
    /// `/resume <session id>` (the argument trimmed; may be empty).
    Resume(String),
    /// Any other slash command, by name (without the `/`).
    Unknown(String),
}

impl Submitted {
    /// `resume_known`: false when `SYNTHESIS_SIM_NO_RESUME` makes `/resume` unknown.
    pub fn parse(line: &str, resume_known: bool) -> Submitted {
        let line = line.trim();
        let Some(command) = line.strip_prefix('/') else {
            return match line {
                "" => Submitted::Empty,
                text => Submitted::Text(text.to_string()),
            };
        };
        let (name, argument) = command.split_once(' ').unwrap_or((command, ""));
        match name {
            "resume" if resume_known => Submitted::Resume(argument.trim().to_string()),
            name => Submitted::Unknown(name.to_string()),
        }
    }
}

/// A `/resume` waiting for its time (`SYNTHESIS_SIM_RESUME_DELAY_MS` after Enter).
#[derive(Debug)]
pub struct PendingResume {
    pub due: Instant,
    pub id: String,
}

/// Shown when `/resume` comes while a turn runs (Claude would queue it; the sim refuses).
const RESUME_DURING_TURN: &str =
    "  ⎿  /resume refused: a turn is running (the sim does not queue commands); retry when idle";

impl Conversation<'_> {
    /// A key typed while no permission prompt is shown: edits and echoes the input line;
    /// Enter runs it.
    pub(super) fn on_typed_key(&mut self, key: Key) {
        match self.line.key(key) {
            Edit::None => {}
            Edit::Typed(byte) => self.screen.echo(&[byte]),
            Edit::Erased => self.screen.echo(b"\x08 \x08"),
            Edit::Submitted(line) => {
                self.screen.echo(b"\r\n");
                self.run_line(&line);
            }
        }
    }

    fn run_line(&mut self, line: &str) {
        match Submitted::parse(line, self.resume_known) {
            Submitted::Empty => {}
            Submitted::Text(_) => self
                .screen
                .line("  ⎿  ignored: the sim takes its turns only from the channel"),
            Submitted::Unknown(name) => self.screen.line(&format!("Unknown slash command: {name}")),
            Submitted::Resume(id) if id.is_empty() => self
                .screen
                .line("  ⎿  /resume needs a session ID here (the sim has no conversation picker)"),
            Submitted::Resume(_) if self.current.is_some() => self.screen.line(RESUME_DURING_TURN),
            Submitted::Resume(id) => {
                // Done by `resume_if_due`, which draws the prompt again.
                self.pending_resume = Some(PendingResume {
                    due: Instant::now() + self.resume_delay,
                    id,
                });
                return;
            }
        }
        if self.current.is_none() {
            self.screen.prompt();
        }
    }

    /// Switches conversation when a pending `/resume` is due (`advance` calls this first).
    pub(super) fn resume_if_due(&mut self) {
        if self
            .pending_resume
            .as_ref()
            .is_none_or(|pending| Instant::now() < pending.due)
        {
            return;
        }
        let Some(PendingResume { id, .. }) = self.pending_resume.take() else {
            return;
        };
        if self.current.is_some() {
            // A channel message started a turn during the delay.
            self.screen.line(RESUME_DURING_TURN);
            return;
        }
        match self.session.resume(&id) {
            Ok(messages) => {
                log::info!("resumed session {id} ({messages} messages)");
                self.screen
                    .line(&format!("  ⎿  Resumed session {id} ({messages} messages)"));
            }
            Err(message) => self.screen.line(&message),
        }
        self.screen.prompt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim_agent::term::keys;

    fn type_bytes(editor: &mut LineEditor, bytes: &[u8]) -> Vec<Edit> {
        keys(bytes).into_iter().map(|k| editor.key(k)).collect()
    }

    #[test]
    fn enter_submits_the_typed_line_and_clears_it() {
        let mut editor = LineEditor::default();
        let edits = type_bytes(&mut editor, b"/resume abc\r");
        assert_eq!(edits.first(), Some(&Edit::Typed(b'/')));
        assert_eq!(edits.last(), Some(&Edit::Submitted("/resume abc".into())));
        assert_eq!(editor.text(), "");
        // A second Enter submits an empty line.
        assert_eq!(
            type_bytes(&mut editor, b"\r"),
            vec![Edit::Submitted(String::new())]
        );
    }

    #[test]
    fn backspace_erases_whole_characters_and_control_keys_are_not_typed() {
        let mut editor = LineEditor::default();
        type_bytes(&mut editor, "/resx\x7fume é".as_bytes());
        assert_eq!(editor.text(), "/resume é");
        type_bytes(&mut editor, b"\x7f\x08");
        assert_eq!(editor.text(), "/resume");
        // Esc, arrows and other control bytes leave the line alone.
        assert_eq!(
            type_bytes(&mut editor, b"\x1b[A\x01"),
            vec![Edit::None, Edit::None]
        );
        assert_eq!(editor.text(), "/resume");
        // Erasing past the start is harmless.
        type_bytes(&mut editor, &[0x7f; 10]);
        assert_eq!(editor.text(), "");
        assert_eq!(
            type_bytes(&mut editor, b"x\r"),
            vec![Edit::Typed(b'x'), Edit::Submitted("x".into())]
        );
    }

    #[test]
    fn submitted_lines_are_slash_commands_or_ignored_text() {
        let id = "0d9f4c9e-7a7b-4a43-9d7e-1c2f3a4b5c6d";
        assert_eq!(
            Submitted::parse(&format!("/resume {id}"), true),
            Submitted::Resume(id.into())
        );
        assert_eq!(
            Submitted::parse(&format!("  /resume   {id}  "), true),
            Submitted::Resume(id.into())
        );
        assert_eq!(
            Submitted::parse("/resume", true),
            Submitted::Resume(String::new())
        );
        assert_eq!(
            Submitted::parse(&format!("/resume {id}"), false),
            Submitted::Unknown("resume".into())
        );
        assert_eq!(
            Submitted::parse("/compact now", true),
            Submitted::Unknown("compact".into())
        );
        assert_eq!(
            Submitted::parse("hello /resume", true),
            Submitted::Text("hello /resume".into())
        );
        assert_eq!(Submitted::parse("   ", true), Submitted::Empty);
    }
}
