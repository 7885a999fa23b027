//! The session table (key → that session's worker) and the supervision policy, in one place:
//! - admission: a turn joins its session's queue (at most `max_queued_turns`), or attaches to
//!   the same turn already running when the client resends it;
//! - processes: at most `max_processes`; a session that needs one is granted a slot at
//!   admission, from the pool or from the least recently active idle session, which is
//!   claimed for stopping (`Stopping`) under the table's lock so no two requests pick the same
//!   victim; when none is idle the request gets 429 with `Retry-After`;
//! - idle kill (the sweeper), operator stops, restart back-off after failed starts;
//! - retirement: a worker with no process and nothing queued leaves the table and its thread
//!   ends (the conversation stays in the session map and resumes on the next turn);
//! - standbys (`standby = N`): workers under internal keys (`standby_key`) that start a
//!   process ahead, without a turn, in the default workspace; a new conversation (a key with
//!   no worker and no session-map entry) adopts a `Ready` one: the handle moves to the new key
//!   under the table's lock and the worker takes the key before its first turn. The process
//!   keeps its spawn id and still names the standby key in its hello and Stop hook, so
//!   `attach`, `turn_end` and `agent_pid` also resolve a spawn id through `Table::aliases`.
//!   Standbys count against `max_processes` (a free slot or none: they never evict), are the
//!   first evicted and are not idle-killed; `fill_standbys` (after an adoption and every
//!   sweep) replaces them, respecting each standby key's start back-off;
//! - panics: a worker that panics has released its process and slots by unwinding; its turns
//!   fail, it leaves the table, and the next turn of the key starts a new worker. A panic in
//!   any other thread of the bridge ends the process with a non-zero status (`serve.rs`).
//!
//! The table's lock is held only for lookups, inserts and sending non-blocking messages: never
//! across I/O, a thread spawn or a store write.

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::shared::{
    Control, PhaseName, ProcessSlot, SessionInfo, SessionStatus, SlotGrant, SlotPool, StopReason,
    Supervisor, lock,
};
use super::store::SessionStore;
use super::turn::{
    Admission, CancelToken, HistoryRenderer, Turn, TurnEvent, TurnOutput, next_turn_id,
};
use super::worker::{Mailbox, Worker, WorkerSettings, start::start_backoff};
use crate::link::ChannelLink;
use crate::metrics::{Gauges, METRICS};
use crate::poll::{Waker, wake_pair};

/// Worker threads do little on their own stack (parsing and buffers live on the heap).
const WORKER_STACK_BYTES: usize = 256 * 1024;
/// Retry-After for a 429 when every claude process is busy.
const RETRY_AFTER_BUSY_SECS: u64 = 10;
/// How long after a turn finished a resent copy of it still gets the finished result.
const RETRY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How often a request waiting for capacity (`queue_timeout`) tries again.
const QUEUE_POLL: Duration = Duration::from_millis(50);
/// Keys whose start failures are remembered for back-off (oldest forgotten first).
const MAX_BACKOFF_ENTRIES: usize = 10_000;

struct SessionHandle {
    /// Which worker this is (a key can have a newer one after this one retired).
    id: u64,
    turns: Sender<Turn>,
    control: Sender<Control>,
    waker: Waker,
    status: Arc<SessionStatus>,
    /// Taken by `shutdown`, which joins it while the handle stays in the table.
    thread: Option<JoinHandle<()>>,
}

impl SessionHandle {
    fn send_control(&self, control: Control) {
        let _ = self.control.send(control);
        self.waker.wake();
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
    /// The request's client tools (None: leave the channel's set alone).
    pub client_tools: Option<Arc<crate::session::turn::ClientTools>>,
    /// Answers to the session's pending questions (empty for an ordinary turn).
    pub answers: Vec<super::pending::Answer>,
    /// The session is a new fork of this point (conversation matching): its first start
    /// forks Claude's own transcript there when it can.
    pub fork_from: Option<super::identity::ForkSource>,
}

/// A turn handed to a session: the responder reads its events and can cancel it.
pub struct SubmittedTurn {
    pub id: String,
    pub events: Receiver<TurnEvent>,
    pub cancel: CancelToken,
}

/// One session as `/v1/sessions` and the thread report show it.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    pub key: String,
    pub phase: PhaseName,
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
    /// Processes kept started ahead for new conversations (`standby`).
    pub standby: usize,
    /// Returning conversations take standbys too (`standby_resume`).
    pub standby_resume: bool,
    pub max_queued_turns: usize,
    pub max_concurrent_turns: usize,
}

/// Start failures in a row of one key, and when it may try again.
struct Backoff {
    failures: u32,
    not_before: Instant,
    last_error: String,
}

#[derive(Default)]
struct Table {
    live: HashMap<String, SessionHandle>,
    /// Threads of workers that left the table, joined once finished (by the sweeper) or at
    /// shutdown.
    retired: Vec<JoinHandle<()>>,
    /// Spawn id → key, for processes started as standbys and adopted since: their hello and
    /// Stop hook still name the standby key. Entries whose spawn is gone leave at each sweep.
    aliases: HashMap<String, String>,
}

/// The internal key of standby number `i` (clients cannot use it: `try_submit` refuses).
pub fn standby_key(i: usize) -> String {
    format!("{STANDBY_PREFIX}{i}")
}

const STANDBY_PREFIX: &str = "(standby) ";

pub fn is_standby_key(key: &str) -> bool {
    key.starts_with(STANDBY_PREFIX)
}

/// The live handle of `key` whose process is `spawn_id`, also when `key` is the standby key
/// the process was started under and a conversation adopted it since.
fn handle_for<'a>(table: &'a Table, key: &str, spawn_id: &str) -> Option<&'a SessionHandle> {
    let live_spawn = |h: &SessionHandle| lock(&h.status.spawn_id).as_deref() == Some(spawn_id);
    if let Some(handle) = table.live.get(key)
        && live_spawn(handle)
    {
        return Some(handle);
    }
    let adopted = table.live.get(table.aliases.get(spawn_id)?)?;
    live_spawn(adopted).then_some(adopted)
}

pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    table: Mutex<Table>,
    settings: Arc<WorkerSettings>,
    process_slots: Arc<SlotPool>,
    limits: Limits,
    shutting_down: AtomicBool,
    backoff: Mutex<HashMap<String, Backoff>>,
    next_worker: AtomicU64,
}

impl Registry {
    pub fn new(settings: WorkerSettings, limits: Limits) -> Self {
        Registry {
            inner: Arc::new(Inner {
                table: Mutex::new(Table::default()),
                settings: Arc::new(settings),
                process_slots: SlotPool::new(limits.max_processes),
                limits,
                shutting_down: AtomicBool::new(false),
                backoff: Mutex::new(HashMap::new()),
                next_worker: AtomicU64::new(1),
            }),
        }
    }

    pub fn store(&self) -> &SessionStore {
        &self.inner.settings.store
    }

    /// Queues a turn on `key`'s session, starting its worker on first use. A request whose
    /// `fingerprint` matches a turn of the session that is queued or running (or, for a request
    /// marked as a retry, finished within `RETRY_WINDOW`) is the client retrying it: it
    /// attaches to that turn instead.
    ///
    /// At capacity, the request waits up to `queue_timeout` for a process to become free or
    /// idle (looking again every `QUEUE_POLL`) before it gets `AtCapacity`.
    pub fn submit(
        &self,
        key: &str,
        mut request: NewTurn,
        queue_timeout: Duration,
    ) -> Result<SubmittedTurn, SubmitError> {
        let deadline = Instant::now() + queue_timeout;
        loop {
            match self.try_submit(key, request) {
                Ok(turn) => return Ok(turn),
                Err((error @ SubmitError::AtCapacity { .. }, Some(back)))
                    if Instant::now() < deadline =>
                {
                    drop(error);
                    request = back;
                    std::thread::sleep(QUEUE_POLL.min(deadline - Instant::now()));
                }
                Err((error, _)) => {
                    if matches!(error, SubmitError::AtCapacity { .. }) {
                        METRICS.turns_rejected_at_capacity.inc();
                    }
                    return Err(error);
                }
            }
        }
    }

    /// One admission attempt; an `AtCapacity` refusal gives the request back.
    #[allow(clippy::result_large_err)] // the request is handed back to be tried again
    fn try_submit(
        &self,
        key: &str,
        request: NewTurn,
    ) -> Result<SubmittedTurn, (SubmitError, Option<NewTurn>)> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err((SubmitError::ShuttingDown, None));
        }
        if is_standby_key(key) {
            let message = format!(
                "session keys starting with {STANDBY_PREFIX:?} are reserved for standby processes; use another key"
            );
            return Err((SubmitError::Internal(message), None));
        }
        if let Some(fingerprint) = request.fingerprint
            && let Some(attached) = self.attach_retry(key, fingerprint, request.marked_retry)
        {
            return Ok(attached);
        }
        // A new worker is built (and its thread started) outside the lock; if another request
        // inserted one meanwhile, ours is dropped and its thread ends on its own.
        // A turn with its own system prompt would restart a standby (prompt.rs): it starts
        // its own process and leaves the standby to the next new conversation.
        // Whether it may take a standby is asked only for a key without a worker: a returning
        // conversation's check reads the session map and looks for its transcript on disk,
        // which a session's every turn must not pay.
        let has_worker = lock(&inner.table).live.contains_key(key);
        let fresh = if has_worker {
            None
        } else if inner.limits.standby > 0
            && request.system_prompt.is_none()
            && inner.may_take_standby(key)
            && inner.adopt_standby(key)
        {
            self.fill_standbys();
            None
        } else {
            Some(
                inner
                    .start_worker(key, None)
                    .map_err(|e| (SubmitError::Internal(e), None))?,
            )
        };
        let mut table = lock(&inner.table);
        // `shutdown` sets the flag before it takes the table's threads: a turn admitted past
        // this point would reach a worker nobody tells to stop.
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err((SubmitError::ShuttingDown, None));
        }
        if let Some(fresh) = fresh {
            table.live.entry(key.to_string()).or_insert(fresh);
        }
        let handle = &table.live[key];
        let status = &handle.status;
        if status.queued.load(Ordering::SeqCst) >= inner.limits.max_queued_turns {
            METRICS.turns_rejected_queue_full.inc();
            return Err((
                SubmitError::QueueFull {
                    limit: inner.limits.max_queued_turns,
                },
                None,
            ));
        }
        let needs_process = !status.phase().has_usable_process();
        if needs_process && lock(&status.slot_grant).is_none() {
            let Some(grant) = inner.grant_locked(&table.live, key) else {
                let error = SubmitError::AtCapacity {
                    max_processes: inner.limits.max_processes,
                    retry_after_secs: RETRY_AFTER_BUSY_SECS,
                };
                return Err((error, Some(request)));
            };
            *lock(&status.slot_grant) = Some(grant);
        }
        let admission = Admission::new(status.clone());
        status.touch();
        let id = next_turn_id();
        let output = Arc::new(TurnOutput::new(id.clone(), request.fingerprint));
        let (events, flag) = output.subscribe();
        {
            let mut recent = lock(&status.recent);
            recent.retain(|o| {
                !o.has_ended() || o.accepts_retry(o.fingerprint.unwrap_or(0), true, RETRY_WINDOW)
            });
            recent.push_back(output.clone());
            while recent.len() > inner.limits.max_queued_turns + 2 {
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
            answers: request.answers,
            admission,
            client_tools: request.client_tools,
            fork_from: request.fork_from,
        };
        // Never full: the queue holds at most `max_queued_turns`, checked above.
        if handle.turns.try_send(turn).is_err() {
            let error = SubmitError::Internal("the session's worker is gone; retry".into());
            return Err((error, None));
        }
        handle.waker.wake();
        Ok(SubmittedTurn {
            id,
            events,
            cancel: CancelToken {
                flag,
                waker: handle.waker.clone(),
            },
        })
    }

    /// A resent copy of a queued, running or (when marked) just-finished turn of `key`.
    fn attach_retry(&self, key: &str, fingerprint: u64, marked: bool) -> Option<SubmittedTurn> {
        let table = lock(&self.inner.table);
        let handle = table.live.get(key)?;
        let recent = lock(&handle.status.recent);
        let output = recent
            .iter()
            .rev()
            .find(|o| o.accepts_retry(fingerprint, marked, RETRY_WINDOW))?;
        let (events, flag) = output.subscribe();
        log::info!(
            "session {key:?} {}: the client resent this turn; attached to it instead of sending it again",
            output.turn_id
        );
        METRICS.retries_attached.inc();
        handle.status.touch();
        Some(SubmittedTurn {
            id: output.turn_id.clone(),
            events,
            cancel: CancelToken {
                flag,
                waker: handle.waker.clone(),
            },
        })
    }

    /// Hands an accepted channel link to the session whose live spawn it belongs to.
    /// Err (with the reason, for the log) when no session is waiting for that spawn id.
    pub fn attach(
        &self,
        key: &str,
        spawn_id: &str,
        link: Box<dyn ChannelLink>,
    ) -> Result<(), (Box<dyn ChannelLink>, String)> {
        let table = lock(&self.inner.table);
        if !table.live.contains_key(key) && !table.aliases.contains_key(spawn_id) {
            return Err((link, format!("unknown session {key:?}")));
        }
        let Some(handle) = handle_for(&table, key, spawn_id) else {
            return Err((
                link,
                format!("stale spawn id {spawn_id} for session {key:?}"),
            ));
        };
        handle.send_control(Control::Attach {
            link,
            spawn_id: spawn_id.to_string(),
        });
        Ok(())
    }

    /// Delivers a Stop-hook turn end to the session whose live spawn sent it.
    pub fn turn_end(
        &self,
        key: &str,
        spawn_id: &str,
        turn: Option<String>,
        last_assistant_message: Option<String>,
    ) -> Result<(), String> {
        let table = lock(&self.inner.table);
        if !table.live.contains_key(key) && !table.aliases.contains_key(spawn_id) {
            return Err(format!("unknown session {key:?}"));
        }
        let handle = handle_for(&table, key, spawn_id)
            .ok_or_else(|| format!("stale spawn id {spawn_id} for session {key:?}"))?;
        handle.send_control(Control::TurnEnd {
            spawn_id: spawn_id.to_string(),
            turn,
            last_assistant_message,
        });
        Ok(())
    }

    /// The pid of `key`'s live process when `spawn_id` is its live spawn, else None. The hub
    /// checks that a Stop hook's turn end came from under this process.
    pub fn agent_pid(&self, key: &str, spawn_id: &str) -> Option<u32> {
        let table = lock(&self.inner.table);
        let pid = handle_for(&table, key, spawn_id)?
            .status
            .pid
            .load(Ordering::SeqCst);
        (pid != 0).then_some(pid)
    }

    /// One row per live session, for `/v1/sessions` (sorted by key).
    pub fn snapshot(&self) -> Vec<SessionSnapshot> {
        let table = lock(&self.inner.table);
        let mut rows: Vec<SessionSnapshot> = table
            .live
            .iter()
            .map(|(key, h)| {
                let (step, step_since) = h.status.step();
                SessionSnapshot {
                    key: key.clone(),
                    phase: h.status.phase(),
                    pid: h.status.pid.load(Ordering::SeqCst),
                    queued: h.status.queued.load(Ordering::SeqCst),
                    idle_for: h.status.last_active().elapsed(),
                    step,
                    step_for: step_since.elapsed(),
                    info: lock(&h.status.info).clone(),
                }
            })
            .collect();
        drop(table);
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    pub fn gauges(&self) -> Gauges {
        let rows = self.snapshot();
        Gauges {
            sessions_by_state: PhaseName::ALL
                .iter()
                .filter(|p| **p != PhaseName::Retired)
                .map(|p| (p.name(), rows.iter().filter(|r| r.phase == *p).count()))
                .collect(),
            queued_turns: rows.iter().map(|r| r.queued).sum(),
            processes: self.inner.process_slots.used(),
            standby: rows.iter().filter(|r| is_standby_key(&r.key)).count(),
        }
    }

    /// Stops `key`'s process if it is idle (`DELETE /v1/sessions/<key>`); its conversation
    /// stays resumable. Err when there is no such session or it has a turn in flight.
    pub fn stop_session(&self, key: &str) -> Result<(), String> {
        let table = lock(&self.inner.table);
        let handle = table
            .live
            .get(key)
            .ok_or_else(|| format!("no session {key:?}"))?;
        if handle.status.claim_for_stop() {
            handle.send_control(Control::Stop {
                reason: StopReason::Operator,
                slot_to: None,
            });
            return Ok(());
        }
        match handle.status.phase() {
            PhaseName::Idle | PhaseName::Stopping | PhaseName::Retired => Ok(()),
            _ => Err(format!(
                "session {key:?} has a turn in flight or is finishing one; try again when it is idle"
            )),
        }
    }

    /// The sweeper's round: stops the processes of sessions idle for `idle_kill`, joins the
    /// threads of retired workers, writes the session map if it changed.
    pub fn sweep(&self, idle_kill: Duration) {
        {
            let mut table = lock(&self.inner.table);
            for (key, handle) in &table.live {
                if !is_standby_key(key)
                    && handle.status.is_idle()
                    && handle.status.last_active().elapsed() >= idle_kill
                    && handle.status.claim_for_stop()
                {
                    log::debug!("sweeper: session {key:?} idle for {idle_kill:?}; stopping it");
                    handle.send_control(Control::Stop {
                        reason: StopReason::IdleKill,
                        slot_to: None,
                    });
                }
            }
            let (finished, running): (Vec<_>, Vec<_>) = std::mem::take(&mut table.retired)
                .into_iter()
                .partition(|t| t.is_finished());
            table.retired = running;
            let Table { live, aliases, .. } = &mut *table;
            aliases.retain(|spawn_id, key| {
                live.get(key)
                    .is_some_and(|h| lock(&h.status.spawn_id).as_deref() == Some(spawn_id.as_str()))
            });
            drop(table);
            for thread in finished {
                let _ = thread.join();
            }
        }
        self.inner.settings.store.flush_if_dirty();
        self.fill_standbys();
    }

    /// Starts the standbys that are missing (`standby`), each on a free process slot (never
    /// by evicting a session) and not while its key is backing off after failed starts.
    pub fn fill_standbys(&self) {
        let inner = &self.inner;
        for i in 0..inner.limits.standby {
            if inner.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            let key = standby_key(i);
            if lock(&inner.table).live.contains_key(&key) || inner.may_start(&key).is_err() {
                continue;
            }
            let Some(slot) = inner.process_slots.try_acquire() else {
                return;
            };
            let fresh = match inner.start_worker(&key, Some(ProcessSlot(slot))) {
                Ok(fresh) => fresh,
                Err(e) => {
                    log::error!("standby {key:?}: {e}");
                    return;
                }
            };
            let mut table = lock(&inner.table);
            // After shutdown drained the table, or when another fill won: dropped, its
            // thread sees its queue gone and ends without starting a process.
            if !inner.shutting_down.load(Ordering::SeqCst) && !table.live.contains_key(&key) {
                table.live.insert(key, fresh);
            }
        }
    }

    /// Stops accepting turns, lets turns in flight run until `grace` has passed, stops every
    /// process, joins every worker and writes the session map. The sessions stay in the table
    /// until their workers are joined, so a session finishing its last turn still gets its
    /// Stop-hook turn end (`turn_end`, `agent_pid`) and its channel's hello (`attach`).
    pub fn shutdown(&self, grace: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        let (threads, retired) = {
            let mut table = lock(&self.inner.table);
            let mut threads = Vec::new();
            for (key, handle) in &mut table.live {
                handle.send_control(Control::Shutdown { deadline });
                if let Some(thread) = handle.thread.take() {
                    threads.push((key.clone(), thread));
                }
            }
            (threads, std::mem::take(&mut table.retired))
        };
        for (key, thread) in threads {
            if thread.join().is_err() {
                log::error!("session {key:?}: worker thread ended abnormally during shutdown");
            }
        }
        for thread in retired {
            let _ = thread.join();
        }
        // Every worker has ended; their handles (and queues) go now, outside the lock.
        let live = std::mem::take(&mut lock(&self.inner.table).live);
        drop(live);
        self.inner.settings.store.flush_if_dirty();
    }

    /// Live worker threads (for tests and the thread report).
    pub fn live_sessions(&self) -> usize {
        lock(&self.inner.table).live.len()
    }
}

impl Inner {
    /// Builds a worker for `key` and starts its thread (never under the table's lock). With a
    /// slot, the worker is a standby that starts its process on that slot at once.
    fn start_worker(
        self: &Arc<Self>,
        key: &str,
        standby: Option<ProcessSlot>,
    ) -> Result<SessionHandle, String> {
        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        // Bounded by the per-session queue limit (never blocks: `submit` checks it first).
        let (turns_tx, turns_rx) = bounded(self.limits.max_queued_turns);
        let (control_tx, control_rx) = unbounded();
        let (waker, wake) = wake_pair().map_err(|e| format!("cannot make a waker: {e}"))?;
        let status = Arc::new(SessionStatus::default());
        let is_standby = standby.is_some();
        if let Some(slot) = standby {
            *lock(&status.slot_grant) = Some(SlotGrant::Granted(slot));
        }
        let supervisor: Arc<dyn Supervisor> = self.clone();
        let worker = Worker::new(
            key.to_string(),
            id,
            self.settings.clone(),
            status.clone(),
            supervisor,
            Mailbox {
                turns: turns_rx,
                control: control_rx,
                wake,
            },
        );
        let worker = if is_standby {
            worker.into_standby()
        } else {
            worker
        };
        let inner = self.clone();
        let owned_key = key.to_string();
        let thread = std::thread::Builder::new()
            .name(crate::logging::thread_name("session:", key))
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || worker.run()));
                if outcome.is_err() {
                    inner.forget_panicked(&owned_key, id);
                }
            })
            .map_err(|e| format!("cannot start a session thread: {e}"))?;
        Ok(SessionHandle {
            id,
            turns: turns_tx,
            control: control_tx,
            waker,
            status,
            thread: Some(thread),
        })
    }

    /// A process slot for `for_key`: a free one, else the slot of the least recently active
    /// idle session, which is claimed for stopping here (under the table's lock, so no other
    /// request can pick it) and hands its slot over once its process has stopped.
    fn grant_locked(
        &self,
        live: &HashMap<String, SessionHandle>,
        for_key: &str,
    ) -> Option<SlotGrant> {
        if let Some(slot) = self.process_slots.try_acquire() {
            return Some(SlotGrant::Granted(ProcessSlot(slot)));
        }
        let mut idle: Vec<(&String, &SessionHandle)> = live
            .iter()
            .filter(|(key, h)| key.as_str() != for_key && h.status.is_idle())
            .collect();
        // Standbys first: they hold no conversation.
        idle.sort_by_key(|(key, h)| (!is_standby_key(key), h.status.last_active()));
        let (victim, handle) = idle.into_iter().find(|(_, h)| h.status.claim_for_stop())?;
        log::info!(
            "at max_processes ({}): stopping idle session {victim:?} for {for_key:?}",
            self.limits.max_processes
        );
        let (slot_to, slot_from) = bounded(1);
        handle.send_control(Control::Stop {
            reason: StopReason::Evicted,
            slot_to: Some(slot_to),
        });
        Some(SlotGrant::FromEvicted(slot_from))
    }

    /// A new conversation takes a `Ready` standby: its handle moves to `key` (under the table's
    /// lock, so neither another request nor an eviction can take it too). False when none is
    /// ready.
    /// Whether a turn for `key` (which has no worker) may take a standby: a new conversation,
    /// or with `standby_resume` one coming back whose transcript is in the standby's
    /// workspace (the adopter then types `/resume`, worker/resume.rs).
    fn may_take_standby(&self, key: &str) -> bool {
        match self.settings.store.get(key) {
            None => true,
            Some(record) => {
                self.limits.standby_resume
                    && record.workspace == self.settings.workspace
                    && self
                        .settings
                        .agents
                        .transcript_exists(&record.workspace, &record.claude_session)
            }
        }
    }

    fn adopt_standby(&self, key: &str) -> bool {
        let mut table = lock(&self.table);
        if table.live.contains_key(key) {
            return false;
        }
        let Some(standby) = table
            .live
            .iter()
            .filter(|(k, h)| is_standby_key(k) && h.status.is_idle())
            .map(|(k, _)| k.clone())
            .min()
        else {
            return false;
        };
        let handle = table.live.remove(&standby).expect("found above");
        *lock(&handle.status.adopt_as) = Some(key.to_string());
        if let Some(spawn_id) = lock(&handle.status.spawn_id).clone() {
            table.aliases.insert(spawn_id, key.to_string());
        }
        handle.status.touch();
        log::info!("session {key:?}: takes standby {standby:?}");
        METRICS.standbys_adopted.inc();
        table.live.insert(key.to_string(), handle);
        true
    }

    /// A worker panicked: by now unwinding has stopped its process and released its slots and
    /// its turn in flight. Remove it from the table, which drops its queue and so fails the
    /// turns still in it; the next turn of the key starts a new worker.
    fn forget_panicked(&self, key: &str, id: u64) {
        log::error!(
            "session {key:?}: worker panicked; its turns fail, the next turn starts it again; other sessions are unaffected"
        );
        METRICS.worker_panics.inc();
        let mut table = lock(&self.table);
        if table.live.get(key).is_some_and(|h| h.id == id)
            && let Some(handle) = table.live.remove(key)
        {
            handle.status.mark_retired();
            table.retired.extend(handle.thread);
            drop(table);
            // Dropping the handle (its queue) outside the lock: each queued turn fails.
            drop(handle.turns);
        }
    }
}

impl Supervisor for Inner {
    fn grant_process_slot(&self, key: &str) -> Option<SlotGrant> {
        let table = lock(&self.table);
        self.grant_locked(&table.live, key)
    }

    fn may_start(&self, key: &str) -> Result<(), String> {
        let backoff = lock(&self.backoff);
        match backoff.get(key) {
            Some(b) if Instant::now() < b.not_before => Err(format!(
                "claude failed to start {} times in a row; not trying again for {}s. Last error: {}",
                b.failures,
                b.not_before
                    .saturating_duration_since(Instant::now())
                    .as_secs()
                    + 1,
                b.last_error
            )),
            _ => Ok(()),
        }
    }

    fn record_start(&self, key: &str, outcome: Result<(), &str>) {
        let mut backoff = lock(&self.backoff);
        match outcome {
            Ok(()) => {
                backoff.remove(key);
            }
            Err(error) => {
                if backoff.len() >= MAX_BACKOFF_ENTRIES && !backoff.contains_key(key) {
                    let oldest = backoff
                        .iter()
                        .min_by_key(|(_, b)| b.not_before)
                        .map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        backoff.remove(&oldest);
                    }
                }
                let entry = backoff.entry(key.to_string()).or_insert(Backoff {
                    failures: 0,
                    not_before: Instant::now(),
                    last_error: String::new(),
                });
                entry.failures += 1;
                entry.last_error = error.to_string();
                let pause = start_backoff(entry.failures);
                entry.not_before = Instant::now() + pause;
                if !pause.is_zero() {
                    log::error!(
                        "session {key:?}: {} start failures in a row; backing off {pause:?}",
                        entry.failures
                    );
                }
            }
        }
    }

    fn retire(&self, key: &str, worker: u64) -> bool {
        let mut table = lock(&self.table);
        // Not (yet) this worker's entry: a new worker runs before `submit` inserts it, and
        // one whose insert lost a race sees its queue disconnected and ends by itself.
        if table
            .live
            .get(key)
            .is_none_or(|h| h.id != worker || h.status.queued.load(Ordering::SeqCst) > 0)
        {
            return false;
        }
        let handle = table.live.remove(key).expect("looked up above");
        handle.status.mark_retired();
        // A grant nobody will use goes back to the pool.
        drop(lock(&handle.status.slot_grant).take());
        table.retired.extend(handle.thread);
        true
    }
}
