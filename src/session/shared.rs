//! What the registry and the session workers share, in one place so neither imports the
//! other: the messages a worker takes besides turns (`Control`), what anyone may read about a
//! session without asking its worker (`SessionStatus`, with the published `PhaseName`), and
//! the host-wide slots (`ProcessSlot`, `TurnSlot`) as owned guards.
//!
//! Slots are owned, never counted by hand: a `ProcessSlot` lives inside the value that owns a
//! claude process, a `TurnSlot` inside the value that owns a running turn; dropping either
//! (normal end, error, panic unwinding) gives the slot back. A slot can be handed from an
//! evicted session to the one that evicted it (`SlotGrant::FromEvicted`) by sending the guard
//! itself through a channel; if the sender goes away without sending, the slot was dropped,
//! that is returned to the pool.
//!
//! Lock policy: every lock here guards plain data that is consistent after each statement,
//! so a lock poisoned by a panicking thread is taken over as is (`lock`), never unwrapped.

use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::turn::TurnOutput;
use crate::link::ChannelLink;

/// Takes a lock, also when a panicking thread poisoned it (see the module comment).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a session's process is being stopped by someone other than its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    IdleKill,
    Evicted,
    Operator,
}

impl StopReason {
    pub fn text(self) -> &'static str {
        match self {
            StopReason::IdleKill => "idle_kill",
            StopReason::Evicted => "evicted for a new session",
            StopReason::Operator => "stopped by an operator",
        }
    }
}

/// Messages to a worker besides turns.
pub enum Control {
    /// The hub accepted a channel connection whose hello named this session's spawn.
    Attach {
        link: Box<dyn ChannelLink>,
        spawn_id: String,
    },
    /// The Stop hook says Claude finished its turn (`turn` when the hook could tell which).
    TurnEnd {
        spawn_id: String,
        turn: Option<String>,
        last_assistant_message: Option<String>,
    },
    /// The registry moved this session to `Stopping` (it was idle): stop the process. When
    /// `slot_to` is set, hand the process slot to the session that evicted this one.
    Stop {
        reason: StopReason,
        slot_to: Option<Sender<ProcessSlot>>,
    },
    /// The bridge is shutting down: finish the turn in flight until `deadline`, fail queued
    /// ones, stop the process, end the thread.
    Shutdown { deadline: Instant },
}

/// The phase of a session as others see it. The worker's own `Phase` carries the resources;
/// this is its name, published on every transition. Only the registry writes `Stopping`
/// (under its lock, see `SessionStatus::claim_for_stop`) and `Retired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseName {
    /// No process.
    Idle,
    /// Process spawned, its channel not connected yet.
    Starting,
    /// Process up, channel connected, no turn.
    Ready,
    /// A turn is in flight.
    Busy,
    /// Claude is still finishing the previous turn (it answered, or was interrupted, and has
    /// not reported the end of its turn yet); the next turn waits.
    Draining,
    /// Claude's turn waits inside claude for answers to questions the client was asked
    /// (session/pending.rs); the session's next request carries them.
    Suspended,
    /// Claimed by the registry for an idle kill, an eviction or an operator stop.
    Stopping,
    /// The worker has ended; the session left the registry.
    Retired,
}

impl PhaseName {
    pub const ALL: [PhaseName; 8] = [
        PhaseName::Idle,
        PhaseName::Starting,
        PhaseName::Ready,
        PhaseName::Busy,
        PhaseName::Draining,
        PhaseName::Suspended,
        PhaseName::Stopping,
        PhaseName::Retired,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PhaseName::Idle => "idle",
            PhaseName::Starting => "starting",
            PhaseName::Ready => "ready",
            PhaseName::Busy => "busy",
            PhaseName::Draining => "draining",
            PhaseName::Suspended => "suspended",
            PhaseName::Stopping => "stopping",
            PhaseName::Retired => "retired",
        }
    }

    /// Whether the session has (or is about to have) a live process that can take a turn.
    pub fn has_usable_process(self) -> bool {
        matches!(
            self,
            PhaseName::Starting
                | PhaseName::Ready
                | PhaseName::Busy
                | PhaseName::Draining
                | PhaseName::Suspended
        )
    }
}

/// What `/v1/sessions` shows about a session besides its phase.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// A standby process (started ahead, no conversation has taken it yet).
    pub standby: bool,
    pub claude_session: String,
    pub workspace: String,
    pub process_started: Option<std::time::SystemTime>,
    pub turns: u64,
    pub last_error: Option<String>,
    /// The questions the session's suspended turn waits on (empty unless `Suspended`).
    pub pending: Vec<super::pending::Pending>,
}

/// What others may read about a session without asking its worker.
pub struct SessionStatus {
    phase: Mutex<PhaseName>,
    /// Turns accepted and not yet finished (queued + in flight). Raised by the registry under
    /// its lock, lowered by the worker when a turn ends.
    pub queued: AtomicUsize,
    /// Spawn id of the live process, for the hub's hello check.
    pub spawn_id: Mutex<Option<String>>,
    pub pid: AtomicU32,
    last_active: Mutex<Instant>,
    /// What the worker is doing and since when (for thread dumps and /v1/debug/threads).
    step: Mutex<(&'static str, Instant)>,
    pub info: Mutex<SessionInfo>,
    /// Outputs of the session's queued, running and recently finished turns (for retries).
    pub recent: Mutex<VecDeque<Arc<TurnOutput>>>,
    /// The process slot granted for the session's next start (set by the registry when it
    /// admitted a turn that needs a process; taken by the worker when it spawns).
    pub slot_grant: Mutex<Option<SlotGrant>>,
    /// Set by the registry (under its lock) when a new conversation adopts this standby
    /// worker: the key it now serves. The worker takes it before its next turn.
    pub adopt_as: Mutex<Option<String>>,
}

impl Default for SessionStatus {
    fn default() -> Self {
        SessionStatus {
            phase: Mutex::new(PhaseName::Idle),
            queued: AtomicUsize::new(0),
            spawn_id: Mutex::new(None),
            pid: AtomicU32::new(0),
            last_active: Mutex::new(Instant::now()),
            step: Mutex::new(("waiting for a turn", Instant::now())),
            info: Mutex::new(SessionInfo::default()),
            recent: Mutex::new(VecDeque::new()),
            slot_grant: Mutex::new(None),
            adopt_as: Mutex::new(None),
        }
    }
}

impl SessionStatus {
    pub fn phase(&self) -> PhaseName {
        *lock(&self.phase)
    }

    /// The worker publishes its phase. A `Stopping` claim stays until the worker has acted on
    /// the `Stop` it was sent with (it then publishes `Idle`, or whatever follows).
    pub fn publish(&self, phase: PhaseName, stop_handled: bool) {
        let mut current = lock(&self.phase);
        if *current != PhaseName::Stopping || stop_handled {
            *current = phase;
        }
    }

    /// Registry only (under its lock): claims an idle session for stopping. True when it was
    /// `Ready` with nothing queued; from then on nobody else can pick it or count it as free.
    pub fn claim_for_stop(&self) -> bool {
        let mut phase = lock(&self.phase);
        if *phase == PhaseName::Ready && self.queued.load(Ordering::SeqCst) == 0 {
            *phase = PhaseName::Stopping;
            true
        } else {
            false
        }
    }

    /// Registry only: the session has left the registry.
    pub fn mark_retired(&self) {
        *lock(&self.phase) = PhaseName::Retired;
    }

    /// A live process with nothing to do (the only kind that may be stopped for others).
    pub fn is_idle(&self) -> bool {
        self.phase() == PhaseName::Ready && self.queued.load(Ordering::SeqCst) == 0
    }

    pub fn set_step(&self, step: &'static str) {
        *lock(&self.step) = (step, Instant::now());
    }

    pub fn step(&self) -> (&'static str, Instant) {
        *lock(&self.step)
    }

    pub fn touch(&self) {
        *lock(&self.last_active) = Instant::now();
    }

    pub fn last_active(&self) -> Instant {
        *lock(&self.last_active)
    }
}

/// A counting pool of a host-wide resource (claude processes, turns in flight). Its units
/// leave the pool only as guards (`Slot`), which put them back when dropped.
#[derive(Debug)]
pub struct SlotPool {
    used: Mutex<usize>,
    freed: Condvar,
    pub max: usize,
}

/// One unit of a `SlotPool`, given back on drop. Not `Clone`: it cannot be released twice.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<SlotPool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut used = lock(&self.pool.used);
        *used = used.saturating_sub(1);
        self.pool.freed.notify_one();
    }
}

impl SlotPool {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(SlotPool {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max,
        })
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut used = lock(&self.used);
        (*used < self.max).then(|| {
            *used += 1;
            Slot { pool: self.clone() }
        })
    }

    /// Waits up to `limit` for a free unit.
    pub fn acquire_timeout(self: &Arc<Self>, limit: Duration) -> Option<Slot> {
        let deadline = Instant::now() + limit;
        let mut used = lock(&self.used);
        while *used >= self.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            used = self
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *used += 1;
        Some(Slot { pool: self.clone() })
    }

    pub fn used(&self) -> usize {
        *lock(&self.used)
    }
}

/// The right to run one claude process (`max_processes`).
#[derive(Debug)]
pub struct ProcessSlot(pub Slot);

/// The right to have one turn in flight (`max_concurrent_turns`).
#[derive(Debug)]
pub struct TurnSlot(pub Slot);

/// A process slot promised to a session by the registry.
#[derive(Debug)]
pub enum SlotGrant {
    Granted(ProcessSlot),
    /// Comes from an evicted session once its process has stopped.
    FromEvicted(Receiver<ProcessSlot>),
}

/// What a session worker asks of the registry, which owns the supervision policy.
pub trait Supervisor: Send + Sync {
    /// A process slot for `key`'s next start, taken from the pool or from an idle session
    /// stopped for it; None when every process is busy.
    fn grant_process_slot(&self, key: &str) -> Option<SlotGrant>;
    /// Whether `key` may start a process now (Err says why not: it is backing off).
    fn may_start(&self, key: &str) -> Result<(), String>;
    /// Records how a start went (failures in a row lead to back-off).
    fn record_start(&self, key: &str, outcome: Result<(), &str>);
    /// The worker `worker` of `key` has no process and nothing queued: true when it left the
    /// registry (its thread then ends); false when a turn arrived meanwhile.
    fn retire(&self, key: &str, worker: u64) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_return_to_the_pool_when_dropped_even_in_a_panic() {
        let pool = SlotPool::new(1);
        let slot = pool.try_acquire().expect("one free");
        assert!(pool.try_acquire().is_none());
        drop(slot);
        assert_eq!(pool.used(), 0);
        let held = pool.try_acquire().unwrap();
        let pool2 = pool.clone();
        let result = std::thread::spawn(move || {
            let _inside = held;
            panic!("unwinding drops the slot");
        })
        .join();
        assert!(result.is_err());
        assert_eq!(pool2.used(), 0);
    }

    #[test]
    fn a_slot_sent_to_a_receiver_that_is_gone_returns_to_the_pool() {
        let pool = SlotPool::new(1);
        let (tx, rx) = crossbeam_channel::bounded::<ProcessSlot>(1);
        drop(rx);
        let slot = ProcessSlot(pool.try_acquire().unwrap());
        assert!(tx.send(slot).is_err());
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn only_an_idle_ready_session_can_be_claimed_and_only_once() {
        let status = SessionStatus::default();
        assert!(!status.claim_for_stop(), "idle without a process");
        status.publish(PhaseName::Ready, false);
        status.queued.store(1, Ordering::SeqCst);
        assert!(!status.claim_for_stop(), "a queued turn");
        status.queued.store(0, Ordering::SeqCst);
        assert!(status.claim_for_stop());
        assert!(!status.claim_for_stop(), "already claimed");
        status.publish(PhaseName::Busy, false);
        assert_eq!(status.phase(), PhaseName::Stopping, "the claim holds");
        status.publish(PhaseName::Idle, true);
        assert_eq!(status.phase(), PhaseName::Idle);
    }
}
