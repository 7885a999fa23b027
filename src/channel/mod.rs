//! `synthesis-bridge channel`: the MCP stdio server each `claude` spawns (named in the MCP
//! config the bridge writes). It relays between Claude and the bridge (docs/ARCHITECTURE.md §7, §8):
//! turns from the bridge's WebSocket become `notifications/claude/channel` on stdout, and
//! Claude's `reply` tool calls become `reply` frames on the WebSocket. Calls of the client's
//! tools become `client_tool_call` frames; their MCP requests stay open until the
//! `client_tool_result` comes back or the result timeout fails them (docs/CLIENT_TOOLS.md).
//!
//! One thread serves both directions: `poll(2)` on [stdin, WebSocket] with a timeout, then
//! reads whatever is ready. stdout carries nothing but JSON-RPC (logs go to
//! `SYNTHESIS_CHANNEL_LOG` or stderr). This module must never block without a bound, never
//! buffer a line without limit, and never decide anything about sessions: the bridge decides
//! whether this process is ready, and its closing the socket ends the process.
//!
//! When to say hello: Claude drops a channel notification that arrives before it has
//! registered the channel (0–50 ms after `notifications/initialized`). With
//! `SYNTHESIS_CLAUDE_DEBUG_FILE` (claude's `--debug=mcp` log, set by the bridge) the hello
//! goes out the moment that log says `Channel notifications registered`, read every
//! `REGISTRATION_POLL`; `SYNTHESIS_HELLO_DELAY_MS` is then only the longest wait. Without
//! it, the hello waits the whole delay.
//!
//! Exit codes: 0 when stdin ends (claude exited); 1 when the bridge closes or cannot be
//! reached, or the process is misconfigured.

pub mod bridge;
pub mod lines;
pub mod mcp;

use crate::poll::wait_readable;
use crate::protocol::{self, BridgeFrame, ChannelFrame, env};
use bridge::BridgeLink;
use lines::{Line, LineBuffer};
use mcp::Output;
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bound on each step of one dial (TCP connect; WebSocket handshake).
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pauses between dial attempts: 5 tries within about 3 s (plus the dials themselves).
const DIAL_BACKOFF_MS: [u64; 4] = [250, 500, 750, 1500];
/// Longest wait in the loop when nothing is due, so the loop never sleeps unbounded.
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// Retry interval for a write the socket did not take at once.
const PENDING_WAIT: Duration = Duration::from_millis(20);
/// How often claude's debug log is read while waiting for the channel's registration.
const REGISTRATION_POLL: Duration = Duration::from_millis(5);
/// What claude's debug log says once the channel's notifications are listened to.
const REGISTERED_TEXT: &str = ": Channel notifications registered";
/// Most of claude's debug log read while waiting (it is a few lines by then).
const MAX_DEBUG_LOG_READ: u64 = 1024 * 1024;
/// After `notifications/tools/list_changed`, turns wait this long at most for Claude to
/// re-list (it does so ~300 ms later), so the turn sees the new tools.
const RELIST_WAIT: Duration = Duration::from_secs(2);
/// After Claude re-listed, turns wait this much longer: Claude 2.1.331 asks `tools/list` at
/// once but a turn pushed right after still ran with the old tools (docs/CLIENT_TOOLS.md);
/// its tool refresh is debounced by 300 ms.
const RELIST_SETTLE: Duration = Duration::from_millis(500);
/// Result timeout when the bridge named none.
const DEFAULT_RESULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Client tool calls Claude makes within this window after the first go to the bridge in
/// one frame, so the client gets parallel calls together (Claude sends parallel tool uses
/// within a few milliseconds).
const GATHER_WINDOW: Duration = Duration::from_millis(100);
/// The bridge fails a call whose result is late (it knows the session and tells the next
/// turn); the channel's own deadline is this much later, a backstop for a bridge that is
/// gone or stuck, so Claude is never left waiting forever.
const RESULT_BACKSTOP: Duration = Duration::from_secs(5);

/// Everything the channel learns from its environment (set by the bridge on `claude`, which
/// passes its whole environment to MCP servers).
#[derive(Debug, Clone)]
struct Settings {
    ws_url: Option<String>,
    session: String,
    claude_session: String,
    spawn_id: String,
    token: String,
    hello_delay: Duration,
    /// Claude's MCP debug log, which says when the channel is registered.
    debug_file: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let hello_delay = match std::env::var(env::HELLO_DELAY_MS) {
            Ok(v) => v.trim().parse::<u64>().unwrap_or_else(|_| {
                log::warn!(
                    "{} = {v:?} is not a number of milliseconds; using 1000",
                    env::HELLO_DELAY_MS
                );
                1000
            }),
            Err(_) => 1000,
        };
        Settings {
            ws_url: std::env::var(env::WS_URL).ok().filter(|u| !u.is_empty()),
            session: var(env::OPENCLAW_SESSION),
            claude_session: var(env::CLAUDE_SESSION),
            spawn_id: var(env::SPAWN_ID),
            token: var(env::BRIDGE_TOKEN),
            hello_delay: Duration::from_millis(hello_delay),
            debug_file: std::env::var_os(env::CLAUDE_DEBUG_FILE)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// The state of the link to the bridge.
enum Link {
    /// Claude has not finished initialising; no reason to dial yet.
    NotYet,
    /// Initialised; waiting for claude's debug log to say the channel is registered, until
    /// `until` at the latest.
    Registering {
        file: PathBuf,
        since: Instant,
        until: Instant,
    },
    /// Dial at `at`; `failures` attempts have failed so far.
    Dialing {
        at: Instant,
        failures: usize,
    },
    Connected(Box<BridgeLink>),
}

/// Turns held until Claude has re-listed the changed tools.
struct Relist {
    /// When the held turns go out (re-listed or not).
    until: Instant,
    held: Vec<Value>,
    /// Claude asked `tools/list` since the change.
    relisted: bool,
}

/// Why the loop ended.
enum End {
    /// stdin reached EOF (or stdout broke): claude is gone.
    ClaudeGone,
    /// The bridge ended the link, or could not be reached.
    Bridge(String),
}

pub fn run() -> u8 {
    let log_file = std::env::var_os(env::CHANNEL_LOG)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    crate::logging::init(log_file.as_deref());
    let settings = Settings::from_env();
    log::info!(
        "channel server {} starting (pid {}, session {:?}, spawn {:?})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        settings.session,
        settings.spawn_id
    );
    let stdin = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            log::error!("cannot use stdin: {e}");
            return 1;
        }
    };
    let mut server = Server {
        settings,
        state: mcp::State::default(),
        link: Link::NotYet,
        stdout: io::stdout(),
        calls: HashMap::new(),
        result_timeout: DEFAULT_RESULT_TIMEOUT,
        relist: None,
        gathering: None,
    };
    match server.serve(stdin) {
        End::ClaudeGone => {
            log::info!("stdin closed: claude exited; stopping");
            if let Link::Connected(link) = server.link {
                link.close();
            }
            0
        }
        End::Bridge(why) => {
            log::error!("stopping: {why}");
            1
        }
    }
}

struct Server {
    settings: Settings,
    state: mcp::State,
    link: Link,
    stdout: io::Stdout,
    /// Client tool calls waiting for their result: call id → (MCP request id, deadline).
    calls: HashMap<String, (Value, Instant)>,
    result_timeout: Duration,
    /// The tool list changed and Claude has not re-listed yet: until when turns wait, and
    /// the turn notifications held meanwhile.
    relist: Option<Relist>,
    /// Client tool calls being gathered: when the window closes, and the calls so far.
    gathering: Option<(Instant, Vec<protocol::ClientToolCall>)>,
}

impl Server {
    fn serve(&mut self, mut stdin: File) -> End {
        let mut lines = LineBuffer::new(protocol::MAX_FRAME_BYTES);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Link::Connected(link) = &mut self.link
                && link.has_pending()
                && let Err(e) = link.flush_pending()
            {
                return End::Bridge(format!("writing to the bridge failed: {e}"));
            }
            let mut fds = vec![stdin.as_raw_fd()];
            if let Link::Connected(link) = &self.link {
                fds.push(link.fd());
            }
            let ready = match wait_readable(&fds, Some(self.next_wait())) {
                Ok(ready) => ready,
                Err(e) => return End::Bridge(format!("poll failed: {e}")),
            };

            if ready[0].readable || ready[0].hangup {
                // poll said readable: exactly one read(2) cannot block.
                let got = match stdin.read(&mut buf) {
                    Ok(0) => None,
                    Ok(n) => Some(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Some(0),
                    Err(e) => {
                        log::warn!("reading stdin failed: {e}");
                        None
                    }
                };
                let items = match got {
                    Some(n) => lines.push(&buf[..n]),
                    None => lines.finish().into_iter().collect(),
                };
                for item in items {
                    if let Some(end) = self.on_line(item) {
                        return end;
                    }
                }
                if got.is_none() {
                    return End::ClaudeGone;
                }
            }

            if ready.get(1).is_some_and(|r| r.readable || r.hangup)
                && let Link::Connected(link) = &mut self.link
            {
                let inbound = link.read_available();
                for frame in inbound.frames {
                    if let Some(end) = self.on_frame(frame) {
                        return end;
                    }
                }
                if let Some(why) = inbound.closed {
                    return End::Bridge(why);
                }
            }

            if let Link::Registering { file, since, until } = &self.link {
                let registered = debug_log_says_registered(file);
                if registered || Instant::now() >= *until {
                    if registered {
                        log::info!(
                            "claude registered the channel {:?} after initialized; saying hello",
                            since.elapsed()
                        );
                    } else {
                        log::warn!(
                            "claude's debug log did not say the channel was registered within {:?}; saying hello anyway",
                            self.settings.hello_delay
                        );
                    }
                    self.link = Link::Dialing {
                        at: Instant::now(),
                        failures: 0,
                    };
                }
            }

            if let Link::Dialing { at, failures } = self.link
                && Instant::now() >= at
                && let Some(end) = self.dial(failures)
            {
                return end;
            }
            if let Some(end) = self.check_deadlines() {
                return end;
            }
        }
    }

    /// Releases held turns once Claude re-listed or the wait ran out; fails client tool
    /// calls whose result did not come in time.
    fn check_deadlines(&mut self) -> Option<End> {
        let now = Instant::now();
        let listed_now = std::mem::take(&mut self.state.listed);
        if let Some(relist) = &mut self.relist
            && listed_now
            && !relist.relisted
        {
            log::info!(
                "claude re-listed the tools; {} held turn(s) go out in {RELIST_SETTLE:?}",
                relist.held.len()
            );
            relist.relisted = true;
            relist.until = now + RELIST_SETTLE;
        }
        if let Some(relist) = &self.relist
            && now >= relist.until
        {
            let Relist { held, relisted, .. } = self.relist.take().expect("checked");
            if !relisted {
                log::warn!("claude did not re-list the tools within {RELIST_WAIT:?}");
            }
            for message in held {
                if let Some(end) = self.emit(&message) {
                    return Some(end);
                }
            }
        }
        if let Some((until, _)) = &self.gathering
            && now >= *until
            && let Some(end) = self.send_gathered()
        {
            return Some(end);
        }
        let expired: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, (_, deadline))| now >= *deadline)
            .map(|(call, _)| call.clone())
            .collect();
        for call in expired {
            let (id, _) = self.calls.remove(&call).expect("listed");
            log::warn!(
                "client tool call {call}: no result within {:?}",
                self.result_timeout
            );
            let text = format!(
                "The client application did not return a result for this tool call within {} s (tool_result_timeout), so it failed. Tell the user the tool did not answer; do not assume it ran or did not run.",
                self.result_timeout.as_secs()
            );
            if let Some(end) = self.emit(&mcp::client_tool_answer(id, &text, true)) {
                return Some(end);
            }
        }
        None
    }

    /// How long the next poll may sleep.
    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        let wait = match &self.link {
            Link::Dialing { at, .. } => at.saturating_duration_since(now).min(IDLE_WAIT),
            Link::Registering { until, .. } => {
                until.saturating_duration_since(now).min(REGISTRATION_POLL)
            }
            Link::Connected(link) if link.has_pending() => PENDING_WAIT,
            _ => IDLE_WAIT,
        };
        let deadlines = self
            .calls
            .values()
            .map(|(_, d)| *d)
            .chain(self.relist.as_ref().map(|r| r.until))
            .chain(self.gathering.as_ref().map(|(until, _)| *until));
        let wait = deadlines.fold(wait, |w, d| w.min(d.saturating_duration_since(now)));
        if self.state.listed {
            Duration::ZERO
        } else {
            wait
        }
    }

    fn on_line(&mut self, line: Line) -> Option<End> {
        let outputs = match line {
            Line::Text(bytes) => mcp::handle_line(&mut self.state, &bytes),
            Line::TooLong => {
                log::warn!(
                    "input line over {} bytes; skipping it",
                    protocol::MAX_FRAME_BYTES
                );
                vec![Output::Send(mcp::line_too_long(protocol::MAX_FRAME_BYTES))]
            }
        };
        for output in outputs {
            let message = match output {
                Output::Send(message) => message,
                Output::Initialized => {
                    if let Link::NotYet = self.link {
                        let now = Instant::now();
                        let until = now + self.settings.hello_delay;
                        self.link = match &self.settings.debug_file {
                            Some(file) => {
                                log::info!(
                                    "claude initialised the channel; saying hello once its debug log says it registered the channel (at most {:?})",
                                    self.settings.hello_delay
                                );
                                Link::Registering {
                                    file: file.clone(),
                                    since: now,
                                    until,
                                }
                            }
                            None => {
                                log::info!(
                                    "claude initialised the channel; saying hello in {:?}",
                                    self.settings.hello_delay
                                );
                                Link::Dialing {
                                    at: until,
                                    failures: 0,
                                }
                            }
                        };
                    }
                    continue;
                }
                Output::Forward { id, frame } => self.forward(id, &frame),
                Output::CallClient {
                    id,
                    name,
                    arguments,
                } => match self.call_client(id, name, arguments) {
                    Some(message) => message,
                    None => continue,
                },
                Output::Notify(frame) => {
                    self.notify(&frame);
                    continue;
                }
            };
            if let Some(end) = self.emit(&message) {
                return Some(end);
            }
        }
        None
    }

    /// Sends a frame nothing answers here (a permission request: the bridge's verdict comes
    /// back as a `permission_verdict` frame). Without a bridge, Claude's terminal prompt stays.
    fn notify(&mut self, frame: &ChannelFrame) {
        let Link::Connected(link) = &mut self.link else {
            return log::warn!("{frame:?} while the bridge is not connected; not forwarded");
        };
        match link.send(frame) {
            Ok(()) => log::info!("→ bridge: {frame:?}"),
            Err(e) => log::error!("forwarding {frame:?} to the bridge failed: {e}"),
        }
    }

    /// Sends a reply frame; the answer to the tool call says whether it went out.
    fn forward(&mut self, id: Value, frame: &ChannelFrame) -> Value {
        let Link::Connected(link) = &mut self.link else {
            log::warn!("reply tool called while the bridge is not connected; not sent");
            return mcp::reply_failed(id, "not connected");
        };
        match link.send(frame) {
            Ok(()) => {
                if let ChannelFrame::Reply {
                    turn,
                    text,
                    is_final,
                } = frame
                {
                    log::info!(
                        "reply for turn {turn} ({} bytes, final: {is_final}) sent",
                        text.len()
                    );
                }
                mcp::reply_sent(id)
            }
            Err(e) => {
                // The read side will see the failure too and end the process.
                log::error!("sending a reply to the bridge failed: {e}");
                mcp::reply_failed(id, &e)
            }
        }
    }

    /// Takes a client tool call: its MCP request stays open (None) until its result or its
    /// deadline, and the call joins the ones gathered for the next `client_tool_calls` frame;
    /// answered at once with an error when the bridge is not connected.
    fn call_client(&mut self, id: Value, name: String, arguments: String) -> Option<Value> {
        if !matches!(self.link, Link::Connected(_)) {
            log::warn!("client tool {name} called while the bridge is not connected");
            return Some(mcp::client_tool_answer(
                id,
                "the chat client cannot be reached (the synthesis bridge is not connected)",
                true,
            ));
        }
        let call_id = format!("call{}", uuid::Uuid::new_v4().simple());
        log::info!("client tool call {call_id} ({name}) from claude");
        let now = Instant::now();
        self.calls.insert(
            call_id.clone(),
            (id, now + self.result_timeout + RESULT_BACKSTOP),
        );
        let (_, calls) = self
            .gathering
            .get_or_insert_with(|| (now + GATHER_WINDOW, Vec::new()));
        calls.push(protocol::ClientToolCall {
            call_id,
            name,
            arguments,
        });
        None
    }

    /// Sends the gathered client tool calls as one frame; on failure their MCP requests are
    /// answered with the error.
    fn send_gathered(&mut self) -> Option<End> {
        let (_, calls) = self.gathering.take()?;
        let frame = ChannelFrame::ClientToolCalls {
            turn: self.state.last_turn.clone().unwrap_or_default(),
            calls,
        };
        let sent = match &mut self.link {
            Link::Connected(link) => link.send(&frame),
            _ => Err("the synthesis bridge is not connected".into()),
        };
        let ChannelFrame::ClientToolCalls { calls, .. } = frame else {
            unreachable!("built above");
        };
        match sent {
            Ok(()) => {
                log::info!("{} client tool call(s) sent to the bridge", calls.len());
                None
            }
            Err(e) => {
                log::error!("sending client tool calls to the bridge failed: {e}");
                for call in calls {
                    if let Some((id, _)) = self.calls.remove(&call.call_id) {
                        let text = format!("the chat client cannot be reached ({e})");
                        if let Some(end) = self.emit(&mcp::client_tool_answer(id, &text, true)) {
                            return Some(end);
                        }
                    }
                }
                None
            }
        }
    }

    fn on_frame(&mut self, frame: BridgeFrame) -> Option<End> {
        match frame {
            BridgeFrame::Turn { id, content, meta } => {
                let (message, dropped) =
                    mcp::turn_notification(&mut self.state, &id, &content, &meta);
                if !dropped.is_empty() {
                    log::warn!("turn {id}: dropping meta keys Claude would reject: {dropped:?}");
                }
                if let Some(Relist { held, .. }) = &mut self.relist {
                    log::info!(
                        "turn {id} ({} bytes) waits for claude to re-list the tools",
                        content.len()
                    );
                    held.push(message);
                    return None;
                }
                log::info!("turn {id} ({} bytes) → claude", content.len());
                self.emit(&message)
            }
            BridgeFrame::ClientTools {
                tools,
                result_timeout_ms,
            } => {
                if result_timeout_ms > 0 {
                    self.result_timeout = Duration::from_millis(result_timeout_ms);
                }
                let count = tools.len();
                let changed = mcp::set_client_tools(&mut self.state, tools)?;
                log::info!("client tools changed ({count} now); telling claude");
                self.state.listed = false;
                if self.relist.is_none() {
                    self.relist = Some(Relist {
                        until: Instant::now() + RELIST_WAIT,
                        held: Vec::new(),
                        relisted: false,
                    });
                }
                self.emit(&changed)
            }
            BridgeFrame::ClientToolResult {
                call_id,
                content,
                is_error,
            } => {
                let Some((id, _)) = self.calls.remove(&call_id) else {
                    log::warn!("result for unknown or expired client tool call {call_id} dropped");
                    return None;
                };
                log::info!(
                    "client tool call {call_id}: result ({} bytes, error: {is_error}) → claude",
                    content.len()
                );
                self.emit(&mcp::client_tool_answer(id, &content, is_error))
            }
            BridgeFrame::PermissionVerdict {
                request_id,
                behavior,
            } => {
                log::info!("permission {request_id}: {behavior} → claude");
                self.emit(&mcp::permission_verdict(&request_id, &behavior))
            }
        }
    }

    /// Writes one JSON-RPC message as one line. A broken stdout means claude is gone.
    fn emit(&mut self, message: &Value) -> Option<End> {
        let mut line = serde_json::to_vec(message).expect("JSON values always serialise");
        line.push(b'\n');
        let mut out = self.stdout.lock();
        match out.write_all(&line).and_then(|_| out.flush()) {
            Ok(()) => None,
            Err(e) => {
                log::warn!("writing to claude failed: {e}");
                Some(End::ClaudeGone)
            }
        }
    }

    /// One dial attempt; on success says hello, on failure schedules the next try or gives up.
    fn dial(&mut self, failures: usize) -> Option<End> {
        let Some(url) = self.settings.ws_url.clone() else {
            return Some(End::Bridge(format!(
                "{} is not set; cannot reach the bridge",
                env::WS_URL
            )));
        };
        match bridge::dial(&url, DIAL_TIMEOUT) {
            Ok(mut link) => {
                let s = &self.settings;
                let hello = ChannelFrame::Hello {
                    session: s.session.clone(),
                    claude_session: s.claude_session.clone(),
                    spawn_id: s.spawn_id.clone(),
                    token: s.token.clone(),
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                };
                if let Err(e) = link.send(&hello) {
                    return Some(End::Bridge(format!("sending hello failed: {e}")));
                }
                log::info!("connected to {url}; hello sent (spawn {:?})", s.spawn_id);
                self.link = Link::Connected(Box::new(link));
                None
            }
            Err(e) => match DIAL_BACKOFF_MS.get(failures) {
                Some(&pause) => {
                    log::warn!(
                        "dialing the bridge at {url} failed (attempt {}): {e}; retrying",
                        failures + 1
                    );
                    self.link = Link::Dialing {
                        at: Instant::now() + Duration::from_millis(pause),
                        failures: failures + 1,
                    };
                    None
                }
                None => Some(End::Bridge(format!(
                    "cannot reach the bridge at {url} after {} attempts: {e}",
                    failures + 1
                ))),
            },
        }
    }
}

/// Whether claude's debug log says the channel's notifications are registered. Reads the
/// file whole each time: by then it holds a few lines (`--debug=mcp`), and a bounded read
/// keeps a runaway log harmless.
fn debug_log_says_registered(file: &std::path::Path) -> bool {
    let Ok(f) = File::open(file) else {
        return false;
    };
    let mut text = Vec::new();
    if f.take(MAX_DEBUG_LOG_READ).read_to_end(&mut text).is_err() {
        return false;
    }
    String::from_utf8_lossy(&text).contains(REGISTERED_TEXT)
}

#[cfg(test)]
mod tests {
    use super::debug_log_says_registered;

    #[test]
    fn the_registration_line_is_found_in_claudes_debug_log_and_nothing_else_counts() {
        let dir = std::env::temp_dir().join(format!("sb-reg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("claude.log");
        assert!(!debug_log_says_registered(&file), "no file yet");
        std::fs::write(
            &file,
            "2026-11-30T17:06:27.002Z [DEBUG] MCP server \"synthesis\": Successfully connected (transport: stdio) in 158ms\n",
        )
        .unwrap();
        assert!(
            !debug_log_says_registered(&file),
            "connected is not registered"
        );
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(
            "2026-11-30T17:06:27.030Z [DEBUG] MCP server \"synthesis\": Channel notifications registered\n",
        );
        std::fs::write(&file, text).unwrap();
        assert!(debug_log_says_registered(&file));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
