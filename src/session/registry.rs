//! The session table: key → handle of that session's worker. The one piece of state the
//! HTTP side, the WebSocket hub and the sweeper share, behind one `Mutex` that is held only
//! to look up or insert a handle, never across I/O.
//!
//! It also enforces the host-wide limits, because only it sees every session: at most
//! `max_processes` claude processes (a new one evicts the least recently used idle session,
//! or the request gets 429 when every process is busy), at most `max_queued_turns` per
//! session, and at most `max_concurrent_turns` turns in flight across sessions.

use crossbeam_channel::{Receiver, Sender, unbounded};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::store::SessionStore;
use super::turn::{
    CancelToken, FailureKind, HistoryRenderer, Turn, TurnEvent, TurnFailure, TurnOutput,
    next_turn_id,
};
use super::worker::{ChannelSocket, Worker, WorkerSettings};
use crate::metrics::{Gauges, METRICS};
use crate::poll::{Waker, wake_pair};

/// Worker threads do little on their own stack (parsing and buffers live on the heap).
const WORKER_STACK_BYTES: usize = 256 * 1024;
/// Retry-After for a 429 when every claude process is busy.
const RETRY_AFTER_BUSY_SECS: u64 = 10;

/// Messages to a worker besides turns.
pub enum Control {
    /// The hub accepted a channel connection whose hello named this session's spawn.
    Attach {
        ws: Box<ChannelSocket>,
        spawn_id: String,
    },
    /// The Stop hook says Claude finished its turn.
    TurnEnd {
        spawn_id: String,
        turn: Option<String>,
        last_assistant_message: Option<String>,
    },
    /// Stop the process if the session has been idle (no turn in flight or queued) for at
    /// least `idle_for`; its conversation stays resumable. Sent by the sweeper and by eviction;
    /// the worker decides, because only it knows for sure whether it is idle.
    StopIfIdle {
        idle_for: Duration,
        reason: &'static str,
    },
    /// Finish the turn in flight until `deadline`, fail queued ones, stop the process, exit.
    Stop { deadline: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SessionState {
    Absent = 0,
    Starting = 1,
    Ready = 2,
    Busy = 3,
}

impl SessionState {
    pub fn name(self) -> &'static str {
        match self {
            SessionState::Absent => "absent",
            SessionState::Starting => "starting",
            SessionState::Ready => "ready",
            SessionState::Busy => "busy",
        }
    }
}

/// What others may read about a session without asking its worker.
#[derive(Debug)]
pub struct SessionStatus {
    state: AtomicU8,
    /// Turns accepted and not yet finished (queued + in flight).
    pub queued: AtomicUsize,
    /// Spawn id of the live process, for the hub's hello check.
    pub spawn_id: Mutex<Option<String>>,
    pub pid: AtomicU32,
    last_active: Mutex<Instant>,
    /// What the worker is doing and since when (for thread dumps and /v1/debug/threads).
    step: Mutex<(&'static str, Instant)>,
    /// Facts for `/v1/sessions`, updated by the worker.
    pub info: Mutex<SessionInfo>,
    /// Outputs of the session's queued, running and recently finished turns (for retries).
    recent: Mutex<VecDeque<Arc<TurnOutput>>>,
}

/// What `/v1/sessions` shows about a session besides its state.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub claude_session: String,
    pub workspace: String,
    pub process_started: Option<std::time::SystemTime>,
    pub turns: u64,
    pub last_error: Option<String>,
}

impl SessionStatus {
    fn new() -> Self {
        SessionStatus {
            state: AtomicU8::new(SessionState::Absent as u8),
            queued: AtomicUsize::new(0),
            spawn_id: Mutex::new(None),
            pid: AtomicU32::new(0),
            last_active: Mutex::new(Instant::now()),
            step: Mutex::new(("waiting for a turn", Instant::now())),
            info: Mutex::new(SessionInfo::default()),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    pub fn set_step(&self, step: &'static str) {
        *self.step.lock().unwrap() = (step, Instant::now());
    }

    pub fn step(&self) -> (&'static str, Instant) {
        *self.step.lock().unwrap()
    }

    pub fn state(&self) -> SessionState {
        match self.state.load(Ordering::SeqCst) {
            1 => SessionState::Starting,
            2 => SessionState::Ready,
            3 => SessionState::Busy,
            _ => SessionState::Absent,
        }
    }

    pub fn set_state(&self, state: SessionState) {
        self.state.store(state as u8, Ordering::SeqCst);
    }

    pub fn touch(&self) {
        *self.last_active.lock().unwrap() = Instant::now();
    }

    pub fn last_active(&self) -> Instant {
        *self.last_active.lock().unwrap()
    }

    /// A live process with nothing to do.
    fn is_idle(&self) -> bool {
        self.state() == SessionState::Ready && self.queued.load(Ordering::SeqCst) == 0
    }
}

/// A counting semaphore over a host-wide resource (claude processes, turns in flight).
#[derive(Debug)]
pub struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
    pub max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Slots {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max,
        }
    }

    pub fn try_acquire(&self) -> bool {
        let mut used = self.used.lock().unwrap();
        if *used < self.max {
            *used += 1;
            true
        } else {
            false
        }
    }

    /// Waits up to `limit` for a free slot.
    pub fn acquire_timeout(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut used = self.used.lock().unwrap();
        while *used >= self.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            used = self.freed.wait_timeout(used, left).unwrap().0;
        }
        *used += 1;
        true
    }

    pub fn release(&self) {
        let mut used = self.used.lock().unwrap();
        *used = used.saturating_sub(1);
        self.freed.notify_one();
    }

    pub fn used(&self) -> usize {
        *self.used.lock().unwrap()
    }
}

struct SessionHandle {
    turns: Sender<Turn>,
    control: Sender<Control>,
    waker: Waker,
    status: Arc<SessionStatus>,
    thread: JoinHandle<()>,
}

impl SessionHandle {
    fn send_control(&self, control: Control) -> bool {
        let sent = self.control.send(control).is_ok();
        self.waker.wake();
        sent
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The session already has `max_queued_turns` waiting.
    QueueFull {
        limit: usize,
    },
    /// A new process is needed and every one of the `max_processes` is busy.
    AtCapacity {
        max_processes: usize,
        retry_after_secs: u64,
    },
    ShuttingDown,
    /// The worker thread could not be started.
    Internal(String),
}

/// How long after a turn finished a resent copy of it still gets the finished result.
const RETRY_WINDOW: Duration = Duration::from_secs(5 * 60);

/// What the HTTP side hands over for a new turn.
pub struct NewTurn {
    pub content: String,
    pub received: Instant,
    pub history: Option<HistoryRenderer>,
    /// Identifies a resent copy of the same turn (see `http::openclaw::retry_fingerprint`).
    pub fingerprint: Option<u64>,
    /// The request says it is a retry (OpenClaw's retry messages): it may also take the result
    /// of a turn that already finished. Without that, only a queued or running turn is joined.
    pub marked_retry: bool,
    pub system_prompt: Option<Arc<str>>,
}

/// A turn handed to a session: the responder reads its events and can cancel it.
pub struct SubmittedTurn {
    pub id: String,
    pub events: Receiver<TurnEvent>,
    pub cancel: CancelToken,
}

/// After a worker panicked (its claude was killed when the worker's state unwound): fail
/// every turn of the session still waiting for an answer and give back the slots it held,
/// so its clients get an error and other sessions are not starved. The next turn for the key
/// starts a new worker.
fn recover_from_panic(key: &str, status: &SessionStatus, settings: &WorkerSettings) {
    log::error!("session {key:?}: worker panicked; its turns fail, other sessions are unaffected");
    if status.pid.swap(0, Ordering::SeqCst) != 0 {
        settings.process_slots.release();
    }
    if matches!(status.state(), SessionState::Starting | SessionState::Busy) {
        settings.turn_slots.release();
    }
    status.set_state(SessionState::Absent);
    for output in status.recent.lock().unwrap().iter() {
        if !output.has_ended() {
            let message = "the session's worker crashed (the bridge log has the details); retry";
            output.emit(TurnEvent::Failed(TurnFailure::new(
                FailureKind::AgentDied,
                message,
            )));
        }
    }
}

/// One session as `/v1/sessions` and the thread report show it.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    pub key: String,
    pub state: SessionState,
    pub pid: u32,
    pub queued: usize,
    pub idle_for: Duration,
    pub step: &'static str,
    pub step_for: Duration,
    pub info: SessionInfo,
}

/// Host-wide limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_processes: usize,
    pub max_queued_turns: usize,
    pub max_concurrent_turns: usize,
}

pub struct Registry {
    sessions: Mutex<HashMap<String, SessionHandle>>,
    settings: Arc<WorkerSettings>,
    limits: Limits,
    shutting_down: AtomicBool,
}

impl Registry {
    pub fn new(settings: WorkerSettings, limits: Limits) -> Self {
        Registry {
            sessions: Mutex::new(HashMap::new()),
            settings: Arc::new(settings),
            limits,
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn store(&self) -> &SessionStore {
        &self.settings.store
    }

    /// Queues a turn on `key`'s session, starting its worker on first use. A request whose
    /// `fingerprint` matches a turn of the session that is queued or running (or, for a request
    /// marked as a retry, finished within `RETRY_WINDOW`) is the client retrying it: it
    /// attaches to that turn instead.
    pub fn submit(&self, key: &str, request: NewTurn) -> Result<SubmittedTurn, SubmitError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let mut sessions = self.sessions.lock().unwrap();
        if let (Some(fingerprint), Some(handle)) = (request.fingerprint, sessions.get(key)) {
            let recent = handle.status.recent.lock().unwrap();
            if let Some(output) = recent
                .iter()
                .rev()
                .find(|o| o.accepts_retry(fingerprint, request.marked_retry, RETRY_WINDOW))
            {
                let (events, flag) = output.subscribe();
                log::info!(
                    "session {key:?} {}: the client resent this turn; attached to it instead of sending it again",
                    output.turn_id
                );
                METRICS.retries_attached.inc();
                handle.status.touch();
                return Ok(SubmittedTurn {
                    id: output.turn_id.clone(),
                    events,
                    cancel: CancelToken {
                        flag,
                        waker: handle.waker.clone(),
                    },
                });
            }
        }
        // A worker that died (it panicked) is replaced; its queue died with it.
        if sessions.get(key).is_some_and(|h| h.thread.is_finished()) {
            log::error!("session {key:?}: worker had ended unexpectedly; starting a new one");
            sessions.remove(key);
        }
        let needs_process = sessions
            .get(key)
            .is_none_or(|h| h.status.state() == SessionState::Absent);
        if needs_process && self.settings.process_slots.used() >= self.limits.max_processes {
            self.evict_one(&sessions, key)?;
        }
        let handle = match sessions.get(key) {
            Some(handle) => handle,
            None => {
                let handle = self.start_worker(key).map_err(SubmitError::Internal)?;
                sessions.entry(key.to_string()).or_insert(handle)
            }
        };
        let queued = handle.status.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.limits.max_queued_turns {
            handle.status.queued.fetch_sub(1, Ordering::SeqCst);
            METRICS.turns_rejected_queue_full.inc();
            return Err(SubmitError::QueueFull {
                limit: self.limits.max_queued_turns,
            });
        }
        handle.status.touch();
        let id = next_turn_id();
        let output = Arc::new(TurnOutput::new(id.clone(), request.fingerprint));
        let (rx, cancelled) = output.subscribe();
        {
            let mut recent = handle.status.recent.lock().unwrap();
            recent.retain(|o| {
                !o.has_ended() || o.accepts_retry(o.fingerprint.unwrap_or(0), true, RETRY_WINDOW)
            });
            recent.push_back(output.clone());
            while recent.len() > self.limits.max_queued_turns + 2 {
                recent.pop_front();
            }
        }
        let turn = Turn {
            id: id.clone(),
            content: request.content,
            output,
            system_prompt: request.system_prompt,
            received: request.received,
            queued_at: Instant::now(),
            history: request.history,
        };
        match handle.turns.try_send(turn) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                handle.status.queued.fetch_sub(1, Ordering::SeqCst);
                METRICS.turns_rejected_queue_full.inc();
                return Err(SubmitError::QueueFull {
                    limit: self.limits.max_queued_turns,
                });
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                handle.status.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(SubmitError::Internal("session worker is gone".into()));
            }
        }
        handle.waker.wake();
        Ok(SubmittedTurn {
            id,
            events: rx,
            cancel: CancelToken {
                flag: cancelled,
                waker: handle.waker.clone(),
            },
        })
    }

    /// Whether a turn for `key` would be admitted now: its session has a process, a process
    /// slot is free, or an idle session could be evicted. (For `queue_timeout`: a request that
    /// would get 429 waits for this instead.)
    pub fn has_room_for(&self, key: &str) -> bool {
        let sessions = self.sessions.lock().unwrap();
        let has_process = sessions
            .get(key)
            .is_some_and(|h| h.status.state() != SessionState::Absent);
        has_process
            || self.settings.process_slots.used() < self.limits.max_processes
            || sessions.iter().any(|(k, h)| k != key && h.status.is_idle())
    }

    /// Frees a process slot for `for_key` by stopping the least recently active idle session.
    fn evict_one(
        &self,
        sessions: &HashMap<String, SessionHandle>,
        for_key: &str,
    ) -> Result<(), SubmitError> {
        let victim = sessions
            .iter()
            .filter(|(key, h)| key.as_str() != for_key && h.status.is_idle())
            .min_by_key(|(_, h)| h.status.last_active());
        match victim {
            Some((key, handle)) => {
                log::info!(
                    "at max_processes ({}): evicting idle session {key:?} for {for_key:?}",
                    self.limits.max_processes
                );
                handle.send_control(Control::StopIfIdle {
                    idle_for: Duration::ZERO,
                    reason: "evicted for a new session",
                });
                Ok(())
            }
            None => {
                METRICS.turns_rejected_at_capacity.inc();
                Err(SubmitError::AtCapacity {
                    max_processes: self.limits.max_processes,
                    retry_after_secs: RETRY_AFTER_BUSY_SECS,
                })
            }
        }
    }

    fn start_worker(&self, key: &str) -> Result<SessionHandle, String> {
        // Bounded by the per-session queue limit (never blocks: `submit` uses try_send).
        let (turns_tx, turns_rx) = crossbeam_channel::bounded(self.limits.max_queued_turns);
        let (control_tx, control_rx) = unbounded();
        let (waker, wake) = wake_pair().map_err(|e| format!("cannot make a waker: {e}"))?;
        let status = Arc::new(SessionStatus::new());
        let worker = Worker::new(
            key.to_string(),
            self.settings.clone(),
            status.clone(),
            turns_rx,
            control_rx,
            wake,
        );
        let thread = std::thread::Builder::new()
            .name(format!("session:{key}"))
            .stack_size(WORKER_STACK_BYTES)
            .spawn({
                let (key, status, settings) =
                    (key.to_string(), status.clone(), self.settings.clone());
                move || {
                    let outcome =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
                    if outcome.is_err() {
                        recover_from_panic(&key, &status, &settings);
                    }
                }
            })
            .map_err(|e| format!("cannot start a session thread: {e}"))?;
        Ok(SessionHandle {
            turns: turns_tx,
            control: control_tx,
            waker,
            status,
            thread,
        })
    }

    /// Hands an accepted channel socket to the session whose live spawn it belongs to.
    /// Err (with the reason, for the log) when no session is waiting for that spawn id.
    pub fn attach(
        &self,
        key: &str,
        spawn_id: &str,
        ws: Box<ChannelSocket>,
    ) -> Result<(), (Box<ChannelSocket>, String)> {
        let sessions = self.sessions.lock().unwrap();
        let Some(handle) = sessions.get(key) else {
            return Err((ws, format!("unknown session {key:?}")));
        };
        if handle.status.spawn_id.lock().unwrap().as_deref() != Some(spawn_id) {
            return Err((ws, format!("stale spawn id {spawn_id} for session {key:?}")));
        }
        handle.send_control(Control::Attach {
            ws,
            spawn_id: spawn_id.to_string(),
        });
        Ok(())
    }

    /// Delivers a Stop-hook `turn_end` to the session whose live spawn sent it.
    pub fn turn_end(
        &self,
        key: &str,
        spawn_id: &str,
        turn: Option<String>,
        last_assistant_message: Option<String>,
    ) -> Result<(), String> {
        let sessions = self.sessions.lock().unwrap();
        let handle = sessions
            .get(key)
            .ok_or_else(|| format!("unknown session {key:?}"))?;
        if handle.status.spawn_id.lock().unwrap().as_deref() != Some(spawn_id) {
            return Err(format!("stale spawn id {spawn_id} for session {key:?}"));
        }
        handle.send_control(Control::TurnEnd {
            spawn_id: spawn_id.to_string(),
            turn,
            last_assistant_message,
        });
        Ok(())
    }

    /// One row per session, for `/v1/sessions` (sorted by key).
    pub fn snapshot(&self) -> Vec<SessionSnapshot> {
        let sessions = self.sessions.lock().unwrap();
        let mut rows: Vec<SessionSnapshot> = sessions
            .iter()
            .map(|(key, h)| {
                let (step, step_since) = h.status.step();
                SessionSnapshot {
                    key: key.clone(),
                    state: h.status.state(),
                    pid: h.status.pid.load(Ordering::SeqCst),
                    queued: h.status.queued.load(Ordering::SeqCst),
                    idle_for: h.status.last_active().elapsed(),
                    step,
                    step_for: step_since.elapsed(),
                    info: h.status.info.lock().unwrap().clone(),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    pub fn gauges(&self) -> Gauges {
        let rows = self.snapshot();
        let states = [
            SessionState::Absent,
            SessionState::Starting,
            SessionState::Ready,
            SessionState::Busy,
        ];
        Gauges {
            sessions_by_state: states
                .iter()
                .map(|s| (s.name(), rows.iter().filter(|r| r.state == *s).count()))
                .collect(),
            queued_turns: rows.iter().map(|r| r.queued).sum(),
            processes: self.settings.process_slots.used(),
        }
    }

    /// Stops `key`'s process if it is idle (`DELETE /v1/sessions/<key>`); its conversation
    /// stays resumable. Err when there is no such session or it has turns in flight.
    pub fn stop_session(&self, key: &str) -> Result<(), String> {
        let sessions = self.sessions.lock().unwrap();
        let handle = sessions
            .get(key)
            .ok_or_else(|| format!("no session {key:?}"))?;
        if handle.status.queued.load(Ordering::SeqCst) > 0 {
            return Err(format!(
                "session {key:?} has turns in flight; try again when it is idle"
            ));
        }
        handle.send_control(Control::StopIfIdle {
            idle_for: Duration::ZERO,
            reason: "stopped by an operator",
        });
        Ok(())
    }

    /// The sweeper's round: asks sessions idle for `idle_kill` to stop their process, and
    /// writes the session map if it changed.
    pub fn sweep(&self, idle_kill: Duration) {
        {
            let sessions = self.sessions.lock().unwrap();
            for (key, handle) in sessions.iter() {
                if handle.status.is_idle() && handle.status.last_active().elapsed() >= idle_kill {
                    log::debug!(
                        "sweeper: session {key:?} idle for {:?}",
                        handle.status.last_active().elapsed()
                    );
                    handle.send_control(Control::StopIfIdle {
                        idle_for: idle_kill,
                        reason: "idle_kill",
                    });
                }
            }
        }
        self.settings.store.flush_if_dirty();
    }

    /// Stops accepting turns, lets turns in flight run until `grace` has passed, stops every
    /// process, joins every worker and writes the session map.
    pub fn shutdown(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        let handles: Vec<(String, SessionHandle)> = self.sessions.lock().unwrap().drain().collect();
        for (_, handle) in &handles {
            handle.send_control(Control::Stop { deadline });
        }
        for (key, handle) in handles {
            if handle.thread.join().is_err() {
                log::error!("session {key:?}: worker panicked during shutdown");
            }
        }
        self.settings.store.flush_if_dirty();
    }

    /// The pid of `key`'s live process when `spawn_id` is its live spawn, else None. The hub
    /// checks a Stop hook's `turn_end` came from under this process.
    pub fn agent_pid(&self, key: &str, spawn_id: &str) -> Option<u32> {
        let sessions = self.sessions.lock().unwrap();
        let handle = sessions.get(key)?;
        if handle.status.spawn_id.lock().unwrap().as_deref() != Some(spawn_id) {
            return None;
        }
        Some(handle.status.pid.load(Ordering::SeqCst)).filter(|pid| *pid != 0)
    }
}
