//! What the agent's terminal shows, and which known screens are on it.
//!
//! The PTY output is fed to a `vt100` parser, which keeps the screen as a person would see
//! it. Start-up screens are recognised by stable text on that screen, never by timing; the
//! caller sends a key only once the screen that wants it is visible.

/// A screen that can block start-up (docs/CLAUDE_CODE.md §9.4; texts as observed on Claude Code 2.1.331).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownScreen {
    /// "WARNING: Loading development channels": accepted with Enter (option 1 is the default).
    DevChannelsWarning,
    /// The others cannot be answered safely on the user's behalf: the turn fails with a message
    /// naming the setting that avoids the screen.
    Blocking(&'static str, &'static str),
}

/// (text on screen, name, what to do). Checked in order; text is matched case-sensitively.
const BLOCKING_SCREENS: &[(&str, &str, &str)] = &[
    (
        "Channels are not currently available",
        "channels unavailable",
        "channels are off for this account or not yet enabled on this machine: log in with `claude` (claude.ai login) once online so the feature flag is cached, or check your organisation's policy",
    ),
    (
        "--dangerously-load-development-channels ignored",
        "channels unavailable",
        "claude ignored the development channel: log in with `claude` once online so the channels feature flag is cached",
    ),
    (
        "Unable to connect to Anthropic services",
        "onboarding (offline)",
        "finish onboarding once by running `claude` by hand while online, or set \"hasCompletedOnboarding\": true in .claude.json and approve the API key (customApiKeyResponses.approved)",
    ),
    (
        "Choose the text style",
        "onboarding",
        "run `claude` once by hand to finish onboarding, or set \"hasCompletedOnboarding\": true in .claude.json (in $CLAUDE_CONFIG_DIR when set, else ~/.claude.json)",
    ),
    (
        "Quick safety check: Is this a project you created or one you trust?",
        "folder trust",
        "trust the workspace once by running `claude` in it, or set projects[\"<workspace realpath>\"].hasTrustDialogAccepted = true in .claude.json",
    ),
    (
        "Detected a custom API key",
        "custom API key",
        "approve the key once in `claude`, or add its last 20 characters to customApiKeyResponses.approved in .claude.json",
    ),
    (
        "running in Bypass Permissions mode",
        "bypass-permissions warning",
        "accept it once in `claude`, or set \"skipDangerousModePermissionPrompt\": true in $CLAUDE_CONFIG_DIR/settings.json; or use another permission_mode",
    ),
    (
        "New MCP server found in this project",
        "new MCP server",
        "remove .mcp.json from the workspace: the bridge passes its own server with --mcp-config --strict-mcp-config",
    ),
    (
        "Do you want to proceed?",
        "tool permission prompt",
        "pre-allow the tool (the bridge passes --allowedTools for its reply tool) or choose a permission_mode that does not ask",
    ),
];

pub struct Screen {
    parser: vt100::Parser,
}

impl Screen {
    pub fn new(rows: u16, cols: u16) -> Self {
        let nonzero = |n: u16| std::num::NonZeroU16::new(n.max(1)).expect("max(1) is never zero");
        Screen {
            parser: vt100::Parser::new(nonzero(rows), nonzero(cols), 0),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.process(bytes);
    }

    pub fn text(&self) -> String {
        self.parser.screen().contents()
    }

    /// The last `n` non-blank lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn recognise(&self) -> Option<KnownScreen> {
        recognise(&self.text())
    }
}

pub fn recognise(text: &str) -> Option<KnownScreen> {
    if text.contains("Loading development channels") {
        return Some(KnownScreen::DevChannelsWarning);
    }
    BLOCKING_SCREENS
        .iter()
        .find(|(needle, _, _)| text.contains(needle))
        .map(|(_, name, fix)| KnownScreen::Blocking(name, fix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_interpreted_not_matched() {
        let mut screen = Screen::new(10, 80);
        screen.feed(b"\x1b[2J\x1b[1;1H\x1b[1;33mWARNING:\x1b[0m Loading \x1b[1mdevelopment\x1b[0m channels\r\n");
        assert_eq!(screen.recognise(), Some(KnownScreen::DevChannelsWarning));
        screen.feed(b"\x1b[2J\x1b[H> ready");
        assert_eq!(screen.recognise(), None);
        assert_eq!(screen.tail(3), "> ready");
    }

    #[test]
    fn blocking_screens_name_their_fix() {
        match recognise(
            " Quick safety check: Is this a project you created or one you trust? (Like your own code",
        ) {
            Some(KnownScreen::Blocking(name, fix)) => {
                assert_eq!(name, "folder trust");
                assert!(fix.contains("hasTrustDialogAccepted"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
