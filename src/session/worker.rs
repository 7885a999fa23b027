//! The session worker: one thread per session key, the only owner of that session's
//! `claude` process (in its PTY) and of the WebSocket to its channel server.
//!
//! States (`SessionState`): `Absent` (no process) → `Starting` (spawned, waiting for the
//! channel's hello, ≤ `ready_timeout`) → `Ready` ⇄ `Busy` (a turn in flight) → back to
//! `Absent` when the process exits or is stopped. Turns are taken from a FIFO queue one at a
//! time; a new turn never starts before the previous one has ended.
//!
//! The worker waits with `poll(2)` on everything it owns at once (its waker, the PTY master,
//! the child's pidfd, the WebSocket), always with a deadline, so it drains the terminal,
//! notices a dead child and sees replies without any helper thread. It never touches
//! HTTP: it only sends `TurnEvent`s into the turn's channel.

use crossbeam_channel::{Receiver, TryRecvError};
use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

use super::registry::{Control, SessionState, SessionStatus};
use super::turn::{FailureKind, Turn, TurnEvent, TurnFailure};
use crate::agent::{Agent, AgentLauncher, Launch, Output};
use crate::poll::{WakeReceiver, wait_readable};
use crate::protocol::{BridgeFrame, ChannelFrame};

/// Settings every worker shares.
#[derive(Debug)]
pub struct WorkerSettings {
    pub launcher: AgentLauncher,
    pub workspace: PathBuf,
    pub claude_config_dir: PathBuf,
    pub ready_timeout: Duration,
    pub turn_timeout: Duration,
    /// SIGTERM → SIGKILL grace when stopping a process.
    pub stop_grace: Duration,
}

/// Longest single wait when nothing is due: the loop re-checks its state at least this often.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Lines of screen quoted in start-up and crash errors.
const SCREEN_LINES_IN_ERRORS: usize = 8;

pub type ChannelSocket = WebSocket<TcpStream>;

/// Something the worker must react to.
enum Event {
    Frame(ChannelFrame),
    Control(Control),
    /// The terminal showed something new.
    ScreenChanged,
    /// The process is gone; the text says how it ended.
    AgentExited(String),
    /// The channel's WebSocket closed or failed.
    ChannelClosed(String),
    /// The waker fired without a control message (a new turn, or a cancelled one).
    Woken,
    Timeout,
}

pub struct Worker {
    pub key: String,
    pub settings: Arc<WorkerSettings>,
    pub status: Arc<SessionStatus>,
    pub turns: Receiver<Turn>,
    pub control: Receiver<Control>,
    pub wake: WakeReceiver,
    pub claude_session: String,
    agent: Option<Agent>,
    ws: Option<ChannelSocket>,
    frames: VecDeque<ChannelFrame>,
    /// Set by `Control::Stop`: finish what is in flight until then, start nothing new.
    stop_deadline: Option<Instant>,
}

impl Worker {
    pub fn new(
        key: String,
        settings: Arc<WorkerSettings>,
        status: Arc<SessionStatus>,
        turns: Receiver<Turn>,
        control: Receiver<Control>,
        wake: WakeReceiver,
    ) -> Self {
        Worker {
            key,
            settings,
            status,
            turns,
            control,
            wake,
            claude_session: uuid::Uuid::new_v4().to_string(),
            agent: None,
            ws: None,
            frames: VecDeque::new(),
            stop_deadline: None,
        }
    }

    /// The worker's main loop; returns once told to stop (its process is stopped by then).
    pub fn run(mut self) {
        log::debug!("session {:?}: worker started", self.key);
        loop {
            if self.stop_deadline.is_some() {
                self.fail_queued_turns();
                break;
            }
            match self.turns.try_recv() {
                Ok(turn) => {
                    self.run_turn(turn);
                    self.status.queued.fetch_sub(1, Ordering::SeqCst);
                    self.status.touch();
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            match self.wait(Instant::now() + MAX_WAIT) {
                Event::Control(Control::Stop { deadline }) => self.stop_deadline = Some(deadline),
                Event::Control(Control::StopProcess) => self.stop_agent("asked to stop"),
                Event::Control(Control::Attach { ws, spawn_id }) => reject_socket(ws, &spawn_id, "no spawn waiting"),
                Event::Control(Control::TurnEnd { .. }) => {}
                Event::Frame(frame) => log::debug!("session {:?}: frame outside a turn dropped: {frame:?}", self.key),
                Event::AgentExited(how) => {
                    log::info!("session {:?}: claude exited while idle ({how})", self.key);
                    self.forget_agent();
                }
                Event::ChannelClosed(why) => self.stop_agent(&format!("channel closed while idle: {why}")),
                Event::ScreenChanged | Event::Woken | Event::Timeout => {}
            }
        }
        self.stop_agent("session stopping");
        log::debug!("session {:?}: worker finished", self.key);
    }

    fn run_turn(&mut self, turn: Turn) {
        if turn.cancelled.load(Ordering::SeqCst) {
            log::info!("session {:?} {}: client left before the turn started; skipped", self.key, turn.id);
            return;
        }
        let turn_deadline = turn.received + self.settings.turn_timeout;
        if self.stop_deadline.is_some() {
            fail(&turn, FailureKind::ShuttingDown, "the bridge is shutting down; retry on another instance or after restart");
            return;
        }
        if let Err(failure) = self.ensure_ready(turn_deadline.min(Instant::now() + self.settings.ready_timeout)) {
            log::warn!("session {:?} {}: {}", self.key, turn.id, failure.message);
            let _ = turn.events.send(TurnEvent::Failed(failure));
            return;
        }
        self.status.set_state(SessionState::Busy);
        let frame = BridgeFrame::Turn { id: turn.id.clone(), content: turn.content.clone(), meta: Default::default() };
        if let Err(e) = self.send_frame(&frame) {
            self.stop_agent(&format!("could not send turn: {e}"));
            fail(&turn, FailureKind::AgentDied, format!("could not deliver the turn to claude's channel ({e}); retry"));
            return;
        }
        log::debug!("session {:?} {}: turn sent ({} bytes)", self.key, turn.id, turn.content.len());
        let mut replied = false;
        loop {
            if turn.cancelled.load(Ordering::SeqCst) {
                log::info!("session {:?} {}: client disconnected; interrupting claude", self.key, turn.id);
                if let Some(agent) = self.agent.as_mut() {
                    let _ = agent.interrupt();
                }
                break;
            }
            let deadline = self.stop_deadline.map_or(turn_deadline, |d| d.min(turn_deadline));
            match self.wait(deadline) {
                Event::Frame(ChannelFrame::Reply { turn: id, text, is_final }) if id == turn.id => {
                    replied = true;
                    let _ = turn.events.send(TurnEvent::Text { text, is_final });
                    if is_final {
                        let _ = turn.events.send(TurnEvent::Done);
                        break;
                    }
                }
                Event::Frame(other) => log::debug!("session {:?} {}: stray frame dropped: {other:?}", self.key, turn.id),
                Event::Control(Control::TurnEnd { spawn_id, turn: ended, last_assistant_message }) => {
                    let this_process = self.agent.as_ref().is_some_and(|a| a.spawn_id == spawn_id);
                    let this_turn = ended.as_ref().is_none_or(|t| *t == turn.id);
                    if !this_turn {
                        log::debug!("session {:?} {}: late turn_end of {ended:?} ignored", self.key, turn.id);
                    }
                    if this_process && this_turn {
                        if !replied {
                            let text = last_assistant_message.filter(|t| !t.trim().is_empty()).unwrap_or_else(|| {
                                "(Claude ended its turn without sending a reply.)".to_string()
                            });
                            let _ = turn.events.send(TurnEvent::Text { text, is_final: true });
                        }
                        let _ = turn.events.send(TurnEvent::Done);
                        break;
                    }
                }
                Event::Control(Control::Stop { deadline }) => self.stop_deadline = Some(deadline),
                Event::Control(Control::StopProcess) => {
                    self.stop_agent("asked to stop mid-turn");
                    fail(&turn, FailureKind::AgentDied, "the session's claude process was stopped by an operator; retry");
                    break;
                }
                Event::Control(Control::Attach { ws, spawn_id }) => reject_socket(ws, &spawn_id, "session already attached"),
                Event::AgentExited(how) => {
                    let screen = self.agent.as_ref().map(|a| a.screen_tail(SCREEN_LINES_IN_ERRORS)).unwrap_or_default();
                    self.forget_agent();
                    fail(
                        &turn,
                        FailureKind::AgentDied,
                        format!("claude exited mid-turn ({how}); the next turn starts it again. Last screen lines:\n{screen}"),
                    );
                    break;
                }
                Event::ChannelClosed(why) => {
                    self.stop_agent(&format!("channel closed mid-turn: {why}"));
                    fail(&turn, FailureKind::AgentDied, format!("claude's channel disconnected mid-turn ({why}); retry"));
                    break;
                }
                Event::Timeout => {
                    if let Some(agent) = self.agent.as_mut() {
                        let _ = agent.interrupt();
                    }
                    if self.stop_deadline.is_some_and(|d| Instant::now() >= d) {
                        fail(&turn, FailureKind::ShuttingDown, "the bridge shut down before the turn finished; retry");
                    } else {
                        let limit = self.settings.turn_timeout;
                        fail(&turn, FailureKind::Timeout, format!("the turn took longer than turn_timeout ({limit:?})"));
                    }
                    break;
                }
                Event::ScreenChanged | Event::Woken => {}
            }
        }
        if self.agent.is_some() {
            self.status.set_state(SessionState::Ready);
        }
    }

    /// Makes sure a process is up and its channel attached, spawning one if needed.
    fn ensure_ready(&mut self, deadline: Instant) -> Result<(), TurnFailure> {
        if self.agent.is_some() && self.ws.is_some() {
            return Ok(());
        }
        if self.agent.is_some() {
            self.stop_agent("process without a channel");
        }
        let spawn_id = uuid::Uuid::new_v4().simple().to_string();
        let resume = crate::agent::transcript_exists(
            &self.settings.claude_config_dir,
            &self.settings.workspace,
            &self.claude_session,
        );
        let launch = Launch {
            session_key: &self.key,
            claude_session: &self.claude_session,
            resume,
            spawn_id: &spawn_id,
            workspace: &self.settings.workspace,
        };
        let program = self.settings.launcher.program.to_string_lossy().into_owned();
        let agent = Agent::spawn(&self.settings.launcher, &launch).map_err(|e| {
            TurnFailure::new(
                FailureKind::AgentUnavailable,
                format!("could not start `{program}`: {e}. Install Claude Code, point --claude-bin at it, or run with --demo"),
            )
        })?;
        log::info!(
            "session {:?}: spawned pid {} ({} {}, spawn {spawn_id})",
            self.key,
            agent.pid(),
            if resume { "--resume" } else { "--session-id" },
            self.claude_session
        );
        *self.status.spawn_id.lock().unwrap() = Some(spawn_id.clone());
        self.status.pid.store(agent.pid(), Ordering::SeqCst);
        self.status.set_state(SessionState::Starting);
        self.agent = Some(agent);
        let started = Instant::now();
        let failure = loop {
            let deadline = self.stop_deadline.map_or(deadline, |d| d.min(deadline));
            match self.wait(deadline) {
                Event::ScreenChanged => {
                    if let Err(message) = self.agent.as_mut().map_or(Ok(()), Agent::answer_startup_screen) {
                        break TurnFailure::new(FailureKind::AgentUnavailable, message);
                    }
                }
                Event::Control(Control::Attach { ws, spawn_id: id }) if id == spawn_id => {
                    if let Err(e) = ws.get_ref().set_nonblocking(true) {
                        break TurnFailure::new(FailureKind::AgentUnavailable, format!("channel socket unusable: {e}"));
                    }
                    self.ws = Some(ws);
                    self.status.set_state(SessionState::Ready);
                    log::info!("session {:?}: ready in {:?}", self.key, started.elapsed());
                    return Ok(());
                }
                Event::Control(Control::Attach { ws, spawn_id: id }) => reject_socket(ws, &id, "stale spawn id"),
                Event::Control(Control::Stop { deadline }) => self.stop_deadline = Some(deadline),
                Event::Control(Control::StopProcess) => {
                    break TurnFailure::new(FailureKind::AgentUnavailable, "stopped by an operator during start-up");
                }
                Event::Control(Control::TurnEnd { .. }) | Event::Frame(_) | Event::Woken | Event::ChannelClosed(_) => {}
                Event::AgentExited(how) => {
                    let screen = self.agent.as_ref().map(|a| a.screen_tail(SCREEN_LINES_IN_ERRORS)).unwrap_or_default();
                    self.forget_agent();
                    return Err(TurnFailure::new(
                        FailureKind::AgentUnavailable,
                        format!("claude exited during start-up ({how}). Last screen lines:\n{screen}"),
                    ));
                }
                Event::Timeout => {
                    let screen = self.agent.as_ref().map(|a| a.screen_tail(SCREEN_LINES_IN_ERRORS)).unwrap_or_default();
                    let limit = self.settings.ready_timeout;
                    break TurnFailure::new(
                        FailureKind::AgentUnavailable,
                        format!(
                            "claude did not connect its channel within ready_timeout ({limit:?}); run `synthesis-bridge doctor`. Last screen lines:\n{screen}"
                        ),
                    );
                }
            }
        };
        self.stop_agent("start-up failed");
        Err(failure)
    }

    /// Waits until something happens or `deadline` passes.
    fn wait(&mut self, deadline: Instant) -> Event {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Event::Frame(frame);
            }
            if let Ok(control) = self.control.try_recv() {
                return Event::Control(control);
            }
            let now = Instant::now();
            if now >= deadline {
                return Event::Timeout;
            }
            let mut fds = vec![self.wake.fd()];
            let agent_fds = self.agent.as_ref().map(Agent::fds).unwrap_or_default();
            fds.extend(&agent_fds);
            let ws_fd = self.ws.as_ref().map(|ws| ws.get_ref().as_raw_fd());
            fds.extend(ws_fd);
            let ready = match wait_readable(&fds, Some((deadline - now).min(MAX_WAIT))) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("session {:?}: poll failed: {e}", self.key);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if ready[0].readable {
                self.wake.drain();
                if let Ok(control) = self.control.try_recv() {
                    return Event::Control(control);
                }
                return Event::Woken;
            }
            let agent_ready = &ready[1..1 + agent_fds.len()];
            if agent_ready.iter().any(|r| r.readable || r.hangup) {
                let agent = self.agent.as_mut().expect("agent fds come from an agent");
                let output = agent.drain_output();
                let pidfd_fired = agent_ready.get(1).is_some_and(|r| r.readable);
                if output == Output::Closed || pidfd_fired {
                    return Event::AgentExited(self.reap_agent());
                }
                return Event::ScreenChanged;
            }
            if ws_fd.is_some() && ready[1 + agent_fds.len()].readable | ready[1 + agent_fds.len()].hangup {
                if let Err(why) = self.read_frames() {
                    self.ws = None;
                    return Event::ChannelClosed(why);
                }
            }
        }
    }

    /// Reads every frame the socket has; Err when it closed or broke.
    fn read_frames(&mut self) -> Result<(), String> {
        let ws = self.ws.as_mut().expect("called with a socket");
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => match serde_json::from_str::<ChannelFrame>(text.as_str()) {
                    Ok(frame) => self.frames.push_back(frame),
                    Err(e) => log::warn!("session {:?}: unreadable frame from channel ignored: {e}", self.key),
                },
                Ok(Message::Close(_)) => return Err("the channel server closed the connection".into()),
                Ok(Message::Binary(_)) => log::warn!("session {:?}: binary frame from channel ignored", self.key),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Sends one frame, blocking for at most a few seconds (the socket is otherwise non-blocking).
    fn send_frame(&mut self, frame: &BridgeFrame) -> Result<(), String> {
        let ws = self.ws.as_mut().ok_or("no channel attached")?;
        let stream = ws.get_ref();
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let result = ws.send(Message::text(frame.to_json())).map_err(|e| e.to_string());
        ws.get_ref().set_nonblocking(true).map_err(|e| e.to_string())?;
        result
    }

    /// Collects the exit status after the terminal closed (the child may take a moment).
    fn reap_agent(&mut self) -> String {
        let agent = self.agent.as_mut().expect("reaping needs an agent");
        match agent.wait_exit(Duration::from_secs(2)) {
            Some(status) => status.to_string(),
            None => "terminal closed; process still running".to_string(),
        }
    }

    /// The process is already gone: drop our handles to it.
    fn forget_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            // Reaps if it somehow still runs; a no-op for an exited child.
            let _ = agent.stop(self.settings.stop_grace);
        }
        self.detach();
    }

    fn stop_agent(&mut self, why: &str) {
        if let Some(agent) = self.agent.take() {
            let pid = agent.pid();
            match agent.stop(self.settings.stop_grace) {
                Ok(status) => log::info!("session {:?}: stopped pid {pid} ({why}): {status}", self.key),
                Err(e) => log::error!("session {:?}: stopping pid {pid} failed ({why}): {e}", self.key),
            }
        }
        self.detach();
    }

    fn detach(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
        self.frames.clear();
        *self.status.spawn_id.lock().unwrap() = None;
        self.status.pid.store(0, Ordering::SeqCst);
        self.status.set_state(SessionState::Absent);
    }

    fn fail_queued_turns(&mut self) {
        while let Ok(turn) = self.turns.try_recv() {
            fail(&turn, FailureKind::ShuttingDown, "the bridge is shutting down; retry after it restarts");
            self.status.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn fail(turn: &Turn, kind: FailureKind, message: impl Into<String>) {
    let _ = turn.events.send(TurnEvent::Failed(TurnFailure::new(kind, message)));
}

fn reject_socket(mut ws: ChannelSocket, spawn_id: &str, why: &str) {
    log::warn!("channel connection for spawn {spawn_id} refused: {why}");
    let _ = ws.close(None);
    let _ = ws.flush();
}
