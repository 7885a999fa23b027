//! The simulated Claude's interactive loop, after start-up: channel notifications come in
//! from the MCP server, each becomes a turn, and a turn answers through the `reply` tool as
//! its `[sim:...]` directives say (see `directives.rs`), then ends with the Stop hooks.
//!
//! One thread waits with `poll(2)` on the terminal, the MCP server's stdout and the signal
//! socket, with a timeout, so a turn that sleeps or hangs stays interruptible: Esc on the
//! terminal interrupts it. Turns that arrive while one runs are queued and run in order,
//! except during a turn's closing model call (`[sim:linger_ms]`): as Claude does, a message
//! arriving then is folded into the running turn, which answers it without a Stop hook in
//! between. Every arrival is logged in the transcript as Claude logs its input queue.
//! Keys go to the prompt on screen, or else to the input line (`prompt.rs`, whose `/resume`
//! this loop applies when due, before starting a queued turn).
//! This loop owns the turn queue and the session file's busy/idle updates; it must never block
//! without a bound (the Stop hooks are bounded too) and never answer for a turn it is not
//! running (answers to tool calls of an interrupted turn are dropped).

use super::directives::{Directives, Step};
use super::hook::{self, HookCommand, Outcome};
use super::mcp_client::McpClient;
use super::prompt::{LineEditor, PendingResume};
use super::session::Session;
use super::signals::{self, Signals};
use super::term::{self, Key, Screen};
use crate::poll::wait_readable;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Longest a wait lasts when nothing is due (signals and input wake it earlier anyway).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Characters of a turn's content shown on screen.
const SHOWN_CHARS: usize = 200;

/// How the loop ended.
#[derive(Debug)]
pub enum Ending {
    /// A signal or the terminal closing: clean up and exit 0.
    Clean(String),
    /// `[sim:exit=N]`: exit with N right away, like a crash (session file left behind).
    Crash(u8),
}

/// Everything the loop needs, prepared by start-up.
pub struct Conversation<'a> {
    pub screen: Screen,
    pub signals: &'a Signals,
    pub mcp: Option<McpClient>,
    pub channel: String,
    pub reply_allowed: bool,
    pub hooks: Vec<HookCommand>,
    /// `SYNTHESIS_SIM_DEFAULT`: directives applied to every turn before its own.
    pub defaults: String,
    /// Run the Stop hooks after an interrupt too (Claude Code does not; see `interrupt`).
    pub stop_hooks_on_interrupt: bool,
    /// The conversation: its id, transcript and session file (switched by `/resume`).
    pub session: Session,
    /// What is typed at the prompt while no permission prompt is shown.
    pub line: LineEditor,
    /// `SYNTHESIS_SIM_NO_RESUME` unset: `/resume` is a known command.
    pub resume_known: bool,
    /// `SYNTHESIS_SIM_RESUME_DELAY_MS`: from Enter to the switch.
    pub resume_delay: Duration,
    /// A `/resume` submitted and not yet done.
    pub pending_resume: Option<PendingResume>,
    pub queue: VecDeque<Incoming>,
    pub current: Option<Turn>,
    /// Turn ids whose first delivery was seen (for `[sim:drop_first]`).
    pub dropped: std::collections::HashSet<String>,
    pub tool_calls: u64,
    /// Tool names the channel server listed last (re-listed on `tools/list_changed`, as
    /// Claude Code does).
    pub listed_tools: Vec<String>,
    /// The `tools/list` request in flight, if any.
    pub listing: Option<u64>,
    /// `[sim:json_next]`: the JSON line the next turn replies with instead of its echo.
    pub json_next: Option<String>,
}

/// A channel notification waiting to be processed.
#[derive(Debug, Clone)]
pub struct Incoming {
    content: String,
    turn_id: Option<String>,
}

/// The turn being processed.
#[derive(Debug)]
pub struct Turn {
    turn_id: Option<String>,
    steps: VecDeque<Step>,
    wait: Wait,
    last_reply: Option<String>,
    /// What `[sim:tool=…]` calls returned, quoted in the final reply.
    tool_results: Vec<String>,
    /// How each `[sim:ask]` prompt was answered (`Bash: allowed`), told in the final reply.
    verdicts: Vec<String>,
    /// In its closing model call (`[sim:linger_ms]`): a message arriving now is folded in.
    closing: bool,
}

/// How a channel message becomes the running turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TakenIn {
    /// A turn of its own, started when none runs.
    NewTurn,
    /// Folded into the running turn during its closing call (no Stop hook in between).
    Folded,
}

#[derive(Debug)]
enum Wait {
    /// Run the next step.
    Ready,
    Until(Instant),
    /// A `reply` call is out; its answer (request `id`) moves the turn on.
    Answer {
        id: u64,
        text: String,
    },
    /// The permission prompt for a `reply` call is on screen.
    Permission {
        text: String,
        is_final: bool,
    },
    /// `[sim:ask]`: a tool permission prompt is on screen and relayed to the channel as
    /// `permission_request`; the channel's verdict for `request_id` (or a key) answers it.
    Verdict {
        request_id: String,
        tool: String,
    },
    /// `[sim:hang]`: until interrupted.
    Forever,
    /// Client tool calls are out: request id → tool name, for those not answered yet.
    Tools {
        pending: Vec<(u64, String)>,
    },
}

/// Request ids as Claude draws them: five lower-case letters.
fn permission_request_id(n: u64) -> String {
    let seed = uuid::Uuid::new_v4();
    seed.as_bytes()[..5]
        .iter()
        .enumerate()
        .map(|(i, b)| (b'a' + ((u64::from(*b) + n + i as u64) % 26) as u8) as char)
        .collect()
}

impl Conversation<'_> {
    /// Runs until a signal, the terminal closing, or `[sim:exit]`; `stdin` is the terminal.
    pub fn run(&mut self, mut stdin: File) -> Ending {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(signal) = self.signals.received() {
                return Ending::Clean(format!("received {}", signals::name(signal)));
            }
            let held_back = self
                .mcp
                .as_mut()
                .map(McpClient::take_backlog)
                .unwrap_or_default();
            for message in held_back {
                self.on_mcp_message(message);
            }
            if let Some(ending) = self.advance() {
                return ending;
            }
            let mut fds = vec![term::STDIN, self.signals.fd()];
            if let Some(mcp) = &self.mcp {
                fds.push(mcp.fd());
            }
            let ready = match wait_readable(&fds, Some(self.next_wait())) {
                Ok(ready) => ready,
                Err(e) => return Ending::Clean(format!("poll failed: {e}")),
            };
            if ready[0].readable || ready[0].hangup {
                match stdin.read(&mut buf) {
                    Ok(0) => return Ending::Clean("the terminal closed".into()),
                    Ok(n) => {
                        if let Some(ending) = self.on_keys(&buf[..n]) {
                            return ending;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EIO: the PTY master is gone.
                    Err(e) => return Ending::Clean(format!("the terminal closed ({e})")),
                }
            }
            if ready.get(2).is_some_and(|r| r.readable || r.hangup)
                && let Some(mcp) = &mut self.mcp
            {
                match mcp.read_available() {
                    Ok(messages) => messages.into_iter().for_each(|m| self.on_mcp_message(m)),
                    Err(_) => {
                        if let Some(ending) = self.mcp_gone() {
                            return ending;
                        }
                    }
                }
            }
        }
    }

    fn next_wait(&self) -> Duration {
        let turn_due = match self.current.as_ref().map(|t| &t.wait) {
            Some(Wait::Until(at)) => Some(*at),
            _ => None,
        };
        let resume_due = self.pending_resume.as_ref().map(|r| r.due);
        [turn_due, resume_due]
            .into_iter()
            .flatten()
            .map(|at| at.saturating_duration_since(Instant::now()))
            .fold(IDLE_WAIT, Duration::min)
    }

    /// Runs every step that is due; switches conversation when a `/resume` is due (before a
    /// queued turn starts); starts queued turns when none runs.
    fn advance(&mut self) -> Option<Ending> {
        self.resume_if_due();
        loop {
            let Some(turn) = self.current.as_mut() else {
                let incoming = self.queue.pop_front()?;
                if let Some(code) = self.start_turn(incoming, TakenIn::NewTurn) {
                    return Some(Ending::Crash(code));
                }
                continue;
            };
            if turn.closing
                && let Some(incoming) = self.queue.pop_front()
            {
                self.screen.line("  ⎿  folded into the running turn");
                self.current = None;
                if let Some(code) = self.start_turn(incoming, TakenIn::Folded) {
                    return Some(Ending::Crash(code));
                }
                continue;
            }
            match turn.wait {
                Wait::Until(at) if Instant::now() < at => return None,
                Wait::Ready | Wait::Until(_) => turn.wait = Wait::Ready,
                Wait::Answer { .. }
                | Wait::Permission { .. }
                | Wait::Verdict { .. }
                | Wait::Forever
                | Wait::Tools { .. } => return None,
            }
            let step = turn.steps.pop_front();
            let ending = match step {
                None => self.end_turn(),
                Some(Step::Sleep(d)) => {
                    turn.closing = false;
                    self.set_wait(Wait::Until(Instant::now() + d))
                }
                Some(Step::Closing(d)) => {
                    turn.closing = true;
                    self.set_wait(Wait::Until(Instant::now() + d))
                }
                Some(Step::Hang) => self.set_wait(Wait::Forever),
                Some(Step::Reply { text, is_final }) if !self.reply_allowed => {
                    self.show_permission_prompt(&text);
                    self.set_wait(Wait::Permission { text, is_final })
                }
                Some(Step::Reply { text, is_final }) => {
                    let mut text = match &turn.tool_results {
                        results if is_final && !results.is_empty() => {
                            format!("{text}\n{}", results.join("\n"))
                        }
                        _ => text,
                    };
                    if is_final && !turn.verdicts.is_empty() {
                        text = format!("{text}\n({})", turn.verdicts.join("; "));
                    }
                    self.call_reply(text, is_final)
                }
                Some(Step::CallTools(names)) => self.call_tools(names),
                Some(Step::Ask { tool }) => self.ask_permission(tool),
                Some(Step::StrayReply) => self.call_reply_for(
                    Some("turn-0".to_string()),
                    "a reply for a turn that is not running".to_string(),
                    false,
                ),
            };
            if ending.is_some() {
                return ending;
            }
        }
    }

    fn set_wait(&mut self, wait: Wait) -> Option<Ending> {
        if let Some(turn) = self.current.as_mut() {
            turn.wait = wait;
        }
        None
    }

    /// A channel message as the real Claude records it: inside its channel tag.
    fn recorded(&self, incoming: &Incoming) -> String {
        match &incoming.turn_id {
            Some(id) => format!(
                "<channel source=\"{}\" turn_id=\"{id}\">\n{}\n</channel>",
                self.channel, incoming.content
            ),
            None => format!(
                "<channel source=\"{}\">\n{}\n</channel>",
                self.channel, incoming.content
            ),
        }
    }

    /// Begins a turn; `Some(code)` when its directives say to exit.
    fn start_turn(&mut self, incoming: Incoming, taken_in: TakenIn) -> Option<u8> {
        let _ = self.session.status.set("busy");
        let recorded = self.recorded(&incoming);
        let written = match taken_in {
            TakenIn::NewTurn => self
                .session
                .transcript
                .queue_operation("dequeue", None)
                .and_then(|()| self.session.transcript.append("user", &recorded)),
            TakenIn::Folded => self
                .session
                .transcript
                .queued_command(&recorded)
                .and_then(|()| {
                    self.session
                        .transcript
                        .queue_operation("remove", Some(&recorded))
                }),
        };
        if let Err(e) = written {
            self.screen
                .line(&format!("  ⎿  could not write the transcript: {e}"));
        }
        let mut directives = Directives::default();
        let mut problems = directives.apply(&self.defaults);
        problems.extend(directives.apply(&incoming.content));
        for problem in problems {
            self.screen.line(&format!("  ⎿  sim: {problem}"));
        }
        if let Some(code) = directives.exit {
            self.screen
                .line(&format!("sim-agent: exiting with code {code} ([sim:exit])"));
            return Some(code);
        }
        self.screen.line("✻ Working…");
        // `[sim:json_next]`: this turn echoes (prose); the next one answers with the last line
        // of this turn that is a JSON object (a model that only gets the format right when
        // asked again).
        let reply = self
            .json_next
            .take()
            .unwrap_or_else(|| incoming.content.clone());
        if directives.json_next {
            self.json_next = incoming
                .content
                .lines()
                .rev()
                .find(|l| {
                    l.trim_start().starts_with('{')
                        && serde_json::from_str::<serde_json::Value>(l).is_ok()
                })
                .map(|l| l.trim().to_string());
        }
        self.current = Some(Turn {
            turn_id: incoming.turn_id,
            steps: directives.plan(&reply).into(),
            wait: Wait::Ready,
            last_reply: None,
            tool_results: Vec::new(),
            verdicts: Vec::new(),
            closing: false,
        });
        None
    }

    fn call_reply(&mut self, text: String, is_final: bool) -> Option<Ending> {
        let turn_id = self.current.as_ref()?.turn_id.clone();
        self.call_reply_for(turn_id, text, is_final)
    }

    /// Calls `reply` tagged with `turn_id` (normally the running turn's).
    fn call_reply_for(
        &mut self,
        turn_id: Option<String>,
        text: String,
        is_final: bool,
    ) -> Option<Ending> {
        self.current.as_ref()?;
        if self.mcp.is_none() {
            self.screen
                .line("  ⎿  Error: the channel's MCP server is not connected; reply not sent");
            return self.end_turn();
        }
        self.tool_calls += 1;
        let n = self.tool_calls;
        let mut arguments = json!({ "text": text, "final": is_final });
        if let Some(turn_id) = turn_id {
            arguments["turn_id"] = Value::String(turn_id);
        }
        let params = json!({
            "name": "reply",
            "arguments": arguments,
            "_meta": { "claudecode/toolUseId": format!("toolu_sim_{n}"), "progressToken": n },
        });
        self.screen.line(&format!(
            "⏺ {} - reply (MCP)(final: {is_final}, text: \"{}\")",
            self.channel,
            term::one_line(&text, 80)
        ));
        let sent = self
            .mcp
            .as_mut()
            .map(|mcp| mcp.send_request("tools/call", params));
        match sent {
            Some(Ok(id)) => self.set_wait(Wait::Answer { id, text }),
            Some(Err(e)) => {
                self.screen.line(&format!("  ⎿  Error: {e}"));
                self.end_turn()
            }
            None => self.end_turn(),
        }
    }

    /// Calls the client tools `names` (listed as `client_<name>`) all at once, as Claude does
    /// with parallel tool uses; a name the server does not list is noted, not called.
    fn call_tools(&mut self, names: Vec<String>) -> Option<Ending> {
        let mut pending = Vec::new();
        for (n, name) in names.into_iter().enumerate() {
            let listed = format!("client_{name}");
            if !self.listed_tools.contains(&listed) {
                self.screen
                    .line(&format!("  ⎿  Error: no tool {listed} is offered"));
                if let Some(turn) = self.current.as_mut() {
                    turn.tool_results.push(format!("[tool {name} not offered]"));
                }
                continue;
            }
            self.tool_calls += 1;
            let params = json!({
                "name": listed,
                "arguments": { "tool": name, "n": n },
                "_meta": { "claudecode/toolUseId": format!("toolu_sim_{}", self.tool_calls) },
            });
            self.screen
                .line(&format!("⏺ {} - {listed} (MCP)(n: {n})", self.channel));
            match self
                .mcp
                .as_mut()
                .map(|m| m.send_request("tools/call", params))
            {
                Some(Ok(id)) => pending.push((id, name)),
                Some(Err(e)) => self.screen.line(&format!("  ⎿  Error: {e}")),
                None => {}
            }
        }
        if pending.is_empty() {
            return self.set_wait(Wait::Ready);
        }
        self.set_wait(Wait::Tools { pending })
    }

    /// `[sim:ask=<tool>]`: shows the tool's permission prompt and relays it to the channel
    /// (`notifications/claude/channel/permission_request`), as Claude does.
    fn ask_permission(&mut self, tool: String) -> Option<Ending> {
        self.tool_calls += 1;
        let request_id = permission_request_id(self.tool_calls);
        let command = format!("sim {tool} call {}", self.tool_calls);
        let s = &self.screen;
        s.line("");
        s.line(&format!("{tool} command"));
        s.line(&format!("  {command}"));
        s.line("Do you want to proceed?");
        s.line("❯ 1. Yes");
        s.line("  3. No, and tell Claude what to do differently (esc)");
        let params = json!({
            "request_id": request_id,
            "tool_name": tool,
            "description": format!("a simulated {tool} call"),
            "input_preview": json!({"command": command}).to_string(),
        });
        // `SYNTHESIS_SIM_NO_PERMISSION_RELAY=1`: like a Claude without the feature flag, the
        // prompt stays on the terminal only.
        let relay = std::env::var_os("SYNTHESIS_SIM_NO_PERMISSION_RELAY").is_none();
        if relay
            && let Some(mcp) = self.mcp.as_mut()
            && let Err(e) = mcp.notify("notifications/claude/channel/permission_request", params)
        {
            self.screen.line(&format!("  ⎿  Error: {e}"));
        }
        self.set_wait(Wait::Verdict { request_id, tool })
    }

    /// The answer to the running `[sim:ask]` prompt: the turn goes on.
    fn answer_permission(&mut self, allow: bool, how: &str) {
        let Some(turn) = self.current.as_mut() else {
            return;
        };
        let Wait::Verdict { tool, .. } = std::mem::replace(&mut turn.wait, Wait::Ready) else {
            return;
        };
        let outcome = if allow { "allowed" } else { "denied" };
        turn.verdicts.push(format!("{tool}: {outcome}"));
        self.screen.clear();
        self.screen.line(&format!("  ⎿  {tool} {outcome} {how}"));
    }

    fn show_permission_prompt(&self, text: &str) {
        let s = &self.screen;
        s.line("");
        s.line("Tool use");
        s.line(&format!(
            "  {} - reply(text: \"{}\") (MCP)",
            self.channel,
            term::one_line(text, 60)
        ));
        s.line("Do you want to proceed?");
        s.line("❯ 1. Yes");
        s.line(&format!(
            "  2. Yes, and don't ask again for {} - reply commands",
            self.channel
        ));
        s.line("  3. No, and tell Claude what to do differently (esc)");
    }

    /// Ends the running turn: Stop hooks, then idle.
    fn end_turn(&mut self) -> Option<Ending> {
        let turn = self.current.take()?;
        let ending = self.run_stop_hooks(turn.last_reply.as_deref().unwrap_or("done"));
        let _ = self.session.status.set("idle");
        self.screen.prompt();
        ending
    }

    /// Esc: the turn stops at once. Claude Code runs no Stop hook after an interrupt
    /// (observed on 2.1.331: four turns, the fourth interrupted, three Stop hook runs), so by
    /// default neither does the sim; `SYNTHESIS_SIM_STOP_HOOK_ON_INTERRUPT=1` makes it run one.
    fn interrupt(&mut self) -> Option<Ending> {
        let turn = self.current.take()?;
        self.screen
            .line("  ⎿  Interrupted · What should Claude do instead?");
        let ending = if self.stop_hooks_on_interrupt {
            self.run_stop_hooks(turn.last_reply.as_deref().unwrap_or("done"))
        } else {
            None
        };
        let _ = self.session.status.set("idle");
        self.screen.prompt();
        ending
    }

    fn run_stop_hooks(&mut self, last_message: &str) -> Option<Ending> {
        if self.hooks.is_empty() {
            return None;
        }
        let input = json!({
            "session_id": self.session.id,
            "transcript_path": self.session.transcript.path,
            "cwd": self.session.cwd,
            "hook_event_name": "Stop",
            "stop_hook_active": false,
            "last_assistant_message": last_message,
        });
        let env = self.session.claude_env();
        for h in &self.hooks {
            match hook::run(h, &input, &env, self.signals) {
                Outcome::Exited(status) if status.success() => {}
                Outcome::Exited(status) => self
                    .screen
                    .line(&format!("  ⎿  Stop hook error: {} ({status})", h.command)),
                Outcome::TimedOut => self.screen.line(&format!(
                    "  ⎿  Stop hook timed out after {:?}: {}",
                    h.timeout, h.command
                )),
                Outcome::Failed(e) => self.screen.line(&format!("  ⎿  Stop hook failed: {e}")),
                Outcome::Interrupted => {
                    return Some(Ending::Clean("stopped during a Stop hook".into()));
                }
            }
        }
        None
    }

    fn on_keys(&mut self, bytes: &[u8]) -> Option<Ending> {
        for key in term::keys(bytes) {
            let permission = match self.current.as_ref().map(|t| &t.wait) {
                Some(Wait::Permission { text, is_final }) => Some((text.clone(), *is_final)),
                _ => None,
            };
            let asking = matches!(
                self.current.as_ref().map(|t| &t.wait),
                Some(Wait::Verdict { .. })
            );
            if asking && matches!(key, Key::Enter | Key::Char(b'1')) {
                self.answer_permission(true, "in the terminal");
                continue;
            }
            let ending = match (key, permission) {
                (Key::Esc | Key::Char(b'3'), Some(_)) => self.interrupt(),
                (Key::Esc, None) => self.interrupt(),
                (Key::Enter | Key::Char(b'1' | b'2'), Some((text, is_final))) => {
                    if key == Key::Char(b'2') {
                        self.reply_allowed = true;
                    }
                    self.screen.clear();
                    self.call_reply(text, is_final)
                }
                // No prompt on screen: the key goes to the input line (`prompt.rs`).
                (_, None) if !asking => {
                    self.on_typed_key(key);
                    None
                }
                _ => None,
            };
            if ending.is_some() {
                return ending;
            }
        }
        None
    }

    fn on_mcp_message(&mut self, message: Value) {
        if message.get("method").and_then(Value::as_str) == Some("notifications/claude/channel") {
            self.on_channel_notification(&message["params"]);
            return;
        }
        if message.get("method").and_then(Value::as_str) == Some("notifications/tools/list_changed")
        {
            self.listing = self
                .mcp
                .as_mut()
                .and_then(|m| m.send_request("tools/list", json!({})).ok());
            return;
        }
        if message.get("method").and_then(Value::as_str)
            == Some("notifications/claude/channel/permission")
        {
            let params = &message["params"];
            let waiting = match self.current.as_ref().map(|t| &t.wait) {
                Some(Wait::Verdict { request_id, .. }) => {
                    params["request_id"].as_str() == Some(request_id.as_str())
                }
                _ => false,
            };
            // A verdict for a prompt that is no longer shown is dropped, as Claude does.
            if waiting {
                let allow = params["behavior"] == "allow";
                self.answer_permission(allow, "via channel");
            }
            return;
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            return;
        };
        if self.listing == Some(id) {
            self.listing = None;
            self.listed_tools = message
                .pointer("/result/tools")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| t["name"].as_str().map(String::from))
                .collect();
            self.screen
                .line(&format!("  ⎿  tools: {}", self.listed_tools.join(", ")));
            return;
        }
        let Some(turn) = self.current.as_mut() else {
            return;
        };
        if let Wait::Tools { pending } = &mut turn.wait {
            let Some(at) = pending.iter().position(|(waiting, _)| *waiting == id) else {
                return;
            };
            let (_, name) = pending.remove(at);
            let text = message
                .pointer("/result/content/0/text")
                .and_then(Value::as_str)
                .unwrap_or("");
            let failed = message.get("error").is_some()
                || message.pointer("/result/isError") == Some(&Value::Bool(true));
            let line = if failed {
                format!("[tool {name} failed: {text}]")
            } else {
                format!("[tool {name} said: {text}]")
            };
            self.screen.line(&format!("  ⎿  {line}"));
            turn.tool_results.push(line);
            if pending.is_empty() {
                turn.wait = Wait::Ready;
            }
            return;
        }
        let Wait::Answer { id: waiting, .. } = &turn.wait else {
            return;
        };
        if *waiting != id {
            return;
        }
        let Wait::Answer { text, .. } = std::mem::replace(&mut turn.wait, Wait::Ready) else {
            unreachable!()
        };
        let failure = match (message.get("error"), message.get("result")) {
            (Some(e), _) => Some(e.to_string()),
            (None, Some(r)) if r.get("isError") == Some(&Value::Bool(true)) => Some(
                r.pointer("/content/0/text")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_string(),
            ),
            _ => None,
        };
        match failure {
            Some(why) => self
                .screen
                .line(&format!("  ⎿  Error: {}", term::one_line(&why, 150))),
            None => {
                self.screen.line("  ⎿  sent");
                if let Err(e) = self.session.transcript.append("assistant", &text) {
                    self.screen
                        .line(&format!("  ⎿  could not write the transcript: {e}"));
                }
                turn.last_reply = Some(text);
            }
        }
    }

    fn on_channel_notification(&mut self, params: &Value) {
        let content = match &params["content"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let empty = Map::new();
        let meta = params["meta"].as_object().unwrap_or(&empty);
        let turn_id = meta
            .get("turn_id")
            .and_then(Value::as_str)
            .map(String::from);
        // Lost deliveries, as when Claude is not listening: `[sim:drop_all]` never takes the
        // message in, `[sim:drop_first]` misses the first delivery of each turn.
        let first_delivery = turn_id
            .as_ref()
            .is_none_or(|id| self.dropped.insert(id.clone()));
        if content.contains("[sim:drop_all]")
            || (content.contains("[sim:drop_first]") && first_delivery)
        {
            return;
        }
        // Before the channel is registered, a notification is lost without a trace.
        let register_delay = std::env::var(super::REGISTER_DELAY_MS)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if register_delay > 0
            && self
                .mcp
                .as_ref()
                .and_then(|m| m.initialized_at)
                .is_some_and(|at| at.elapsed() < Duration::from_millis(register_delay))
        {
            if let Some(id) = &turn_id {
                self.dropped.remove(id);
            }
            return;
        }
        let mut tag = format!("<channel source=\"{}\"", self.channel);
        if let Some(id) = &turn_id {
            tag.push_str(&format!(" turn_id=\"{id}\""));
        }
        for (key, value) in meta.iter().filter(|(k, _)| *k != "turn_id") {
            let value = value
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| value.to_string());
            tag.push_str(&format!(" {key}=\"{}\"", term::one_line(&value, 60)));
        }
        self.screen
            .line(&format!("{tag}> {}", term::one_line(&content, SHOWN_CHARS)));
        if self.current.is_some() {
            self.screen.line("  ⎿  queued (a turn is running)");
        }
        let incoming = Incoming { content, turn_id };
        if let Err(e) = self
            .session
            .transcript
            .queue_operation("enqueue", Some(&self.recorded(&incoming)))
        {
            self.screen
                .line(&format!("  ⎿  could not write the transcript: {e}"));
        }
        self.queue.push_back(incoming);
    }

    /// The MCP server's stdout closed: the channel is gone for good.
    fn mcp_gone(&mut self) -> Option<Ending> {
        if let Some(mcp) = self.mcp.take() {
            mcp.stop(Duration::from_millis(200));
        }
        self.screen.line(&format!(
            "  ⎿  MCP server \"{}\" disconnected",
            self.channel
        ));
        match self.current.as_ref().map(|t| &t.wait) {
            Some(Wait::Answer { .. }) => {
                self.screen.line("  ⎿  Error: the reply was not answered");
                self.end_turn()
            }
            _ => None,
        }
    }
}
