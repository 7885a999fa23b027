//! The seam between a session worker and the agent it runs: `AgentFactory` starts one,
//! `AgentProcess` is one running. The worker knows nothing else about claude; the real
//! implementation (`ClaudeFactory`, over `crate::agent::Agent`) is below, and the worker's
//! unit tests use an in-process fake, so every transition is testable without processes.

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::{Agent, AgentLauncher, Launch, Output};

/// One running agent process in its terminal.
pub trait AgentProcess: Send {
    fn pid(&self) -> u32;
    /// Descriptors that become readable when the agent wrote to its terminal or exited.
    fn fds(&self) -> Vec<RawFd>;
    /// Called when one of `fds` is readable: takes in what the terminal shows. Some(how it
    /// ended) when the process has exited (it is reaped by then).
    fn on_readable(&mut self) -> Option<String>;
    /// Answers a start-up screen that has a safe answer; Err names a screen that blocks.
    fn answer_startup_screen(&mut self) -> Result<(), String>;
    /// Interrupts the turn in progress (Esc).
    fn interrupt(&mut self) -> io::Result<()>;
    /// Whether the agent itself says it is idle (claude's session file).
    fn says_idle(&self) -> bool;
    /// Types `line` and Enter on claude's terminal (a slash command at its prompt).
    fn type_line(&mut self, line: &str) -> io::Result<()>;
    /// The conversation claude's session file names (`sessionId`), if it has one.
    fn conversation(&self) -> Option<String>;
    /// Waits up to `limit` for the process to exit; Some(how) once it has.
    fn wait_exit(&mut self, limit: Duration) -> Option<String>;
    /// The last lines on its screen, for error messages.
    fn screen_tail(&self, lines: usize) -> String;
    /// Start-up is over (its channel connected): drop start-up state.
    fn started(&mut self);
    /// SIGTERM, up to `grace`, SIGKILL; always reaps. Ok(how it ended).
    fn stop(self: Box<Self>, grace: Duration) -> Result<String, String>;
}

/// Starts agents and reads what they leave on disk.
pub trait AgentFactory: Send + Sync {
    fn spawn(&self, launch: &Launch) -> io::Result<Box<dyn AgentProcess>>;
    /// Whether the agent has a transcript of `conversation` run in `workspace` (then it must
    /// be resumed, else started fresh).
    fn transcript_exists(&self, workspace: &Path, conversation: &str) -> bool;
    /// Whether that transcript records the channel message of `turn_id` (delivery proof).
    fn transcript_mentions_turn(&self, workspace: &Path, conversation: &str, turn_id: &str)
    -> bool;
    /// The uuid of the last reply message of bridge turn `turn_id` in that transcript, to
    /// fork the conversation there (`crate::agent::fork::fork_anchor`); None: unknown.
    fn fork_anchor(
        &self,
        _workspace: &Path,
        _conversation: &str,
        _turn_id: &str,
    ) -> Option<String> {
        None
    }
    /// The program started, for error messages.
    fn program(&self) -> String;
}

/// The real thing: `claude` (or the simulated agent) in a PTY.
pub struct ClaudeFactory {
    pub launcher: AgentLauncher,
    pub config_dir: PathBuf,
}

struct ClaudeProcess {
    agent: Agent,
    config_dir: PathBuf,
}

impl AgentFactory for ClaudeFactory {
    fn spawn(&self, launch: &Launch) -> io::Result<Box<dyn AgentProcess>> {
        let agent = Agent::spawn(&self.launcher, launch)?;
        Ok(Box::new(ClaudeProcess {
            agent,
            config_dir: self.config_dir.clone(),
        }))
    }

    fn transcript_exists(&self, workspace: &Path, conversation: &str) -> bool {
        crate::agent::transcript_exists(&self.config_dir, workspace, conversation)
    }

    fn fork_anchor(&self, workspace: &Path, conversation: &str, turn_id: &str) -> Option<String> {
        crate::agent::transcript_path(&self.config_dir, workspace, conversation)
            .and_then(|path| crate::agent::fork::fork_anchor(&path, turn_id))
    }

    fn transcript_mentions_turn(
        &self,
        workspace: &Path,
        conversation: &str,
        turn_id: &str,
    ) -> bool {
        crate::agent::transcript_path(&self.config_dir, workspace, conversation)
            .is_some_and(|path| crate::agent::transcript_mentions_turn(&path, turn_id))
    }

    fn program(&self) -> String {
        self.launcher.program.to_string_lossy().into_owned()
    }
}

/// How long to wait for the exit status once the terminal has closed.
const REAP_AFTER_CLOSE: Duration = Duration::from_secs(2);

impl AgentProcess for ClaudeProcess {
    fn pid(&self) -> u32 {
        self.agent.pid()
    }

    fn fds(&self) -> Vec<RawFd> {
        self.agent.fds()
    }

    fn on_readable(&mut self) -> Option<String> {
        let output = self.agent.drain_output();
        let exited = self.agent.wait_exit(Duration::ZERO);
        match (output, exited) {
            (_, Some(status)) => Some(status.to_string()),
            (Output::Closed, None) => Some(
                self.agent
                    .wait_exit(REAP_AFTER_CLOSE)
                    .map_or("terminal closed; process still running".into(), |s| {
                        s.to_string()
                    }),
            ),
            (Output::Open, None) => None,
        }
    }

    fn answer_startup_screen(&mut self) -> Result<(), String> {
        self.agent.answer_startup_screen()
    }

    fn interrupt(&mut self) -> io::Result<()> {
        self.agent.interrupt()
    }

    fn says_idle(&self) -> bool {
        self.agent.reported_status(&self.config_dir).as_deref() == Some("idle")
    }

    fn type_line(&mut self, line: &str) -> io::Result<()> {
        self.agent.type_line(line)
    }

    fn conversation(&self) -> Option<String> {
        self.agent.reported_conversation(&self.config_dir)
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<String> {
        self.agent.wait_exit(limit).map(|s| s.to_string())
    }

    fn screen_tail(&self, lines: usize) -> String {
        self.agent.screen_tail(lines)
    }

    fn started(&mut self) {
        self.agent.started()
    }

    fn stop(self: Box<Self>, grace: Duration) -> Result<String, String> {
        self.agent
            .stop(grace)
            .map(|s| s.to_string())
            .map_err(|e| e.to_string())
    }
}
