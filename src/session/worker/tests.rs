//! Unit tests of the session worker's state machine, driven through a real `Registry` with an
//! in-process fake agent (`FakeFactory` / `FakeProcess`) and a fake channel link over a Unix
//! socket pair: every transition, eviction, panics in each phase, late turn ends,
//! cancellation and retirement, without starting a single process.

use crossbeam_channel::{Receiver, Sender, unbounded};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::WorkerSettings;
use super::agent_port::{AgentFactory, AgentProcess};
use crate::agent::Launch;
use crate::link::ChannelLink;
use crate::protocol::{BridgeFrame, ChannelFrame};
use crate::session::registry::{Limits, NewTurn, Registry, SubmitError, SubmittedTurn};
use crate::session::shared::{PhaseName, SlotPool};
use crate::session::store::SessionStore;
use crate::session::turn::{FailureKind, TurnEvent, TurnFailure};
use crate::session::workspace::WorkspaceMode;

/// Longest any single expected event may take.
const EVENT_WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(300);

/// Client tool calls as a suspended turn's questions (docs/CLIENT_TOOLS.md).
mod client_tools;
/// The fake channel link and the channel server's end.
mod fake_channel;
/// A returning conversation taking a standby with `/resume` (resume.rs).
mod resume;
/// The suspended turn (suspended.rs): questions, answers, timeouts.
mod suspended;

use fake_channel::{ChannelEnd, Script, fake_channel};

// ---------------------------------------------------------------------------------------------
// The fake agent process
// ---------------------------------------------------------------------------------------------

/// The test's handle on one fake process: what it should do, and what happened to it.
#[derive(Default)]
struct FakeControl {
    exited: AtomicBool,
    stopped: AtomicBool,
    dropped: AtomicBool,
    idle: AtomicBool,
    interrupts: AtomicUsize,
    panic_on_screen: AtomicBool,
    panic_on_readable: AtomicBool,
    panic_says_idle: AtomicBool,
    /// Lines typed on the terminal (`type_line`).
    typed: Mutex<Vec<String>>,
    /// The session file's `sessionId`; `/resume <id>` sets it unless `resume_refused`.
    conversation: Mutex<Option<String>>,
    resume_refused: AtomicBool,
}

/// One spawn, as the fake factory reports it.
struct Spawned {
    key: String,
    spawn_id: String,
    /// The Claude conversation it was started with (`--session-id` / `--resume`).
    conversation: String,
    control: Arc<FakeControl>,
    /// Writing here makes the process's fd readable (terminal output or exit).
    poke: UnixStream,
}

impl Spawned {
    /// The terminal shows something new.
    fn poke(&self) {
        (&self.poke).write_all(&[1]).expect("poke the fake process");
    }

    /// The process exits.
    fn exit(&self) {
        self.control.exited.store(true, Ordering::SeqCst);
        self.poke();
    }
}

struct FakeProcess {
    pid: u32,
    control: Arc<FakeControl>,
    readable: UnixStream,
}

impl AgentProcess for FakeProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.readable.as_raw_fd()]
    }

    fn on_readable(&mut self) -> Option<String> {
        let mut buf = [0u8; 64];
        loop {
            match (&self.readable).read(&mut buf) {
                Ok(n) if n > 0 => continue,
                // The test dropped its end: like a closed terminal, the process is gone.
                Ok(_) => return Some("terminal closed".into()),
                Err(_) => break,
            }
        }
        if self.control.panic_on_readable.load(Ordering::SeqCst) {
            panic!("fake agent: panic in on_readable (test)");
        }
        self.control
            .exited
            .load(Ordering::SeqCst)
            .then(|| "exit status 1".to_string())
    }

    fn answer_startup_screen(&mut self) -> Result<(), String> {
        if self.control.panic_on_screen.load(Ordering::SeqCst) {
            panic!("fake agent: panic in answer_startup_screen (test)");
        }
        Ok(())
    }

    fn interrupt(&mut self) -> io::Result<()> {
        self.control.interrupts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn says_idle(&self) -> bool {
        if self.control.panic_says_idle.load(Ordering::SeqCst) {
            panic!("fake agent: panic in says_idle (test)");
        }
        self.control.idle.load(Ordering::SeqCst)
    }

    fn type_line(&mut self, line: &str) -> io::Result<()> {
        self.control.typed.lock().unwrap().push(line.to_string());
        if let Some(id) = line.strip_prefix("/resume ")
            && !self.control.resume_refused.load(Ordering::SeqCst)
        {
            *self.control.conversation.lock().unwrap() = Some(id.to_string());
        }
        Ok(())
    }

    fn conversation(&self) -> Option<String> {
        self.control.conversation.lock().unwrap().clone()
    }

    fn wait_exit(&mut self, _limit: Duration) -> Option<String> {
        self.control
            .exited
            .load(Ordering::SeqCst)
            .then(|| "exit status 1".to_string())
    }

    fn screen_tail(&self, _lines: usize) -> String {
        "fake screen".into()
    }

    fn started(&mut self) {}

    fn stop(self: Box<Self>, _grace: Duration) -> Result<String, String> {
        self.control.stopped.store(true, Ordering::SeqCst);
        Ok("stopped".into())
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        self.control.dropped.store(true, Ordering::SeqCst);
    }
}

struct FakeFactory {
    spawns: Sender<Spawned>,
    next_pid: AtomicUsize,
    /// Conversations whose transcript exists (none unless a test says so).
    transcripts: Arc<Mutex<Vec<String>>>,
    /// How often a transcript was looked for.
    transcript_lookups: Arc<AtomicUsize>,
}

impl AgentFactory for FakeFactory {
    fn spawn(&self, launch: &Launch) -> io::Result<Box<dyn AgentProcess>> {
        let (readable, poke) = UnixStream::pair()?;
        readable.set_nonblocking(true)?;
        let control = Arc::new(FakeControl::default());
        // Like claude's session file, which names the conversation it runs.
        *control.conversation.lock().unwrap() = Some(launch.claude_session.to_string());
        let _ = self.spawns.send(Spawned {
            key: launch.session_key.to_string(),
            spawn_id: launch.spawn_id.to_string(),
            conversation: launch.claude_session.to_string(),
            control: control.clone(),
            poke,
        });
        Ok(Box::new(FakeProcess {
            pid: 10_000 + self.next_pid.fetch_add(1, Ordering::SeqCst) as u32,
            control,
            readable,
        }))
    }

    fn transcript_exists(&self, _workspace: &Path, conversation: &str) -> bool {
        self.transcript_lookups.fetch_add(1, Ordering::SeqCst);
        self.transcripts
            .lock()
            .unwrap()
            .iter()
            .any(|c| c == conversation)
    }

    fn transcript_mentions_turn(&self, _: &Path, _: &str, _turn_id: &str) -> bool {
        true
    }

    fn program(&self) -> String {
        "fake-claude".into()
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: a real registry over the fakes
// ---------------------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sb-worker-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Options {
    max_processes: usize,
    max_concurrent_turns: usize,
    max_queued_turns: usize,
    ready_timeout: Duration,
    turn_timeout: Duration,
    retry_grace: Duration,
    permission_relay: crate::session::pending::PermissionRelay,
    permission_timeout: Duration,
    pipeline_turns: bool,
    standby: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_processes: 4,
            max_concurrent_turns: 4,
            max_queued_turns: 4,
            ready_timeout: Duration::from_secs(10),
            turn_timeout: Duration::from_secs(30),
            retry_grace: Duration::from_millis(50),
            permission_relay: crate::session::pending::PermissionRelay::Chat,
            permission_timeout: Duration::from_secs(30),
            pipeline_turns: false,
            standby: 0,
        }
    }
}

struct Harness {
    registry: Registry,
    spawns: Receiver<Spawned>,
    /// The fake factory's existing transcripts.
    transcripts: Arc<Mutex<Vec<String>>>,
    transcript_lookups: Arc<AtomicUsize>,
    _dir: TempDir,
}

impl Harness {
    fn new(options: Options) -> Self {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = TempDir::new();
        let (store, error) = SessionStore::open(&dir.0);
        assert!(error.is_none(), "{error:?}");
        let (spawns_tx, spawns) = unbounded();
        let transcripts = Arc::new(Mutex::new(Vec::new()));
        let transcript_lookups = Arc::new(AtomicUsize::new(0));
        let settings = WorkerSettings {
            agents: Box::new(FakeFactory {
                spawns: spawns_tx,
                next_pid: AtomicUsize::new(0),
                transcripts: transcripts.clone(),
                transcript_lookups: transcript_lookups.clone(),
            }),
            workspace: dir.0.join("workspace"),
            workspace_mode: WorkspaceMode::Shared,
            state_dir: dir.0.clone(),
            ready_timeout: options.ready_timeout,
            turn_timeout: options.turn_timeout,
            stop_grace: Duration::from_millis(100),
            store,
            turn_slots: SlotPool::new(options.max_concurrent_turns),
            retry_grace: options.retry_grace,
            delivery_timeout: Duration::from_secs(10),
            permission_relay: options.permission_relay,
            permission_timeout: options.permission_timeout,
            pipeline_turns: options.pipeline_turns,
        };
        let limits = Limits {
            max_processes: options.max_processes,
            standby: options.standby,
            standby_resume: true,
            max_queued_turns: options.max_queued_turns,
            max_concurrent_turns: options.max_concurrent_turns,
        };
        let registry = Registry::new(settings, limits);
        registry.fill_standbys();
        Harness {
            registry,
            spawns,
            transcripts,
            transcript_lookups,
            _dir: dir,
        }
    }

    fn submit(&self, key: &str, content: &str) -> SubmittedTurn {
        self.try_submit(key, content).expect("turn admitted")
    }

    fn try_submit(&self, key: &str, content: &str) -> Result<SubmittedTurn, SubmitError> {
        self.try_submit_answers(key, content, Vec::new())
    }

    /// A turn carrying `answers` (permission verdicts, client tool results).
    fn submit_answers(
        &self,
        key: &str,
        content: &str,
        answers: Vec<crate::session::pending::Answer>,
    ) -> SubmittedTurn {
        self.try_submit_answers(key, content, answers)
            .expect("turn admitted")
    }

    fn try_submit_answers(
        &self,
        key: &str,
        content: &str,
        answers: Vec<crate::session::pending::Answer>,
    ) -> Result<SubmittedTurn, SubmitError> {
        self.registry.submit(
            key,
            NewTurn {
                client_tools: None,
                content: content.into(),
                received: Instant::now(),
                history: None,
                fingerprint: None,
                marked_retry: false,
                system_prompt: None,
                answers,
                fork_from: None,
            },
            Duration::ZERO,
        )
    }

    fn next_spawn(&self) -> Spawned {
        self.spawns
            .recv_timeout(EVENT_WAIT)
            .expect("no process was spawned")
    }

    fn no_spawn(&self) {
        if let Ok(s) = self.spawns.recv_timeout(QUIET) {
            panic!("unexpected spawn for {:?}", s.key);
        }
    }

    /// The hub: hands a fake channel to the spawn (once the worker published it).
    fn attach(&self, spawned: &Spawned, script: Script) -> ChannelEnd {
        let (link, end) = fake_channel();
        end.set_script(script);
        let mut link: Box<dyn ChannelLink> = Box::new(link);
        let deadline = Instant::now() + EVENT_WAIT;
        loop {
            match self.registry.attach(&spawned.key, &spawned.spawn_id, link) {
                Ok(()) => return end,
                Err((back, why)) => {
                    assert!(Instant::now() < deadline, "attach never accepted: {why}");
                    link = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    /// Submits a turn to a session without a process and connects its new process.
    fn start(
        &self,
        key: &str,
        content: &str,
        script: Script,
    ) -> (SubmittedTurn, Spawned, ChannelEnd) {
        let turn = self.submit(key, content);
        let spawned = self.next_spawn();
        assert_eq!(spawned.key, key);
        let end = self.attach(&spawned, script);
        (turn, spawned, end)
    }

    fn turn_end(&self, spawned: &Spawned, turn: Option<&str>) {
        self.registry
            .turn_end(
                &spawned.key,
                &spawned.spawn_id,
                turn.map(String::from),
                None,
            )
            .expect("turn end delivered");
    }

    fn phase(&self, key: &str) -> Option<PhaseName> {
        self.registry
            .snapshot()
            .into_iter()
            .find(|r| r.key == key)
            .map(|r| r.phase)
    }

    fn wait_phase(&self, key: &str, phase: PhaseName) {
        wait_until(&format!("{key} in phase {}", phase.name()), || {
            self.phase(key) == Some(phase)
        });
    }

    fn processes(&self) -> usize {
        self.registry.gauges().processes
    }

    /// A whole turn on a session that is `Ready` with an echoing channel, ended by the hook.
    fn echo_turn(&self, key: &str, spawned: &Spawned, end: &ChannelEnd, content: &str) {
        end.set_script(Script::Echo);
        let turn = self.submit(key, content);
        assert_eq!(expect_done(&turn), format!("echo: {content}"));
        self.turn_end(spawned, Some(&turn.id));
        self.wait_phase(key, PhaseName::Ready);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.registry.shutdown(Duration::from_millis(200));
    }
}

/// Waits for `condition`, re-checking every 2 ms for at most `EVENT_WAIT`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn next_event(turn: &SubmittedTurn) -> TurnEvent {
    turn.events
        .recv_timeout(EVENT_WAIT)
        .unwrap_or_else(|e| panic!("no event for {}: {e}", turn.id))
}

/// The final text of a turn that must succeed.
fn expect_done(turn: &SubmittedTurn) -> String {
    let mut last = None;
    loop {
        match next_event(turn) {
            TurnEvent::Text { text, is_final } => {
                if is_final {
                    last = Some(text);
                }
            }
            TurnEvent::Done(_) => return last.expect("a final reply before Done"),
            TurnEvent::Suspended(p) => panic!("turn {} suspended: {p:?}", turn.id),
            TurnEvent::Failed(f) => panic!("turn {} failed: {f:?}", turn.id),
        }
    }
}

fn expect_failed(turn: &SubmittedTurn) -> TurnFailure {
    loop {
        match next_event(turn) {
            TurnEvent::Text { .. } => {}
            TurnEvent::Done(_) | TurnEvent::Suspended(_) => {
                panic!("turn {} succeeded; a failure was expected", turn.id)
            }
            TurnEvent::Failed(f) => return f,
        }
    }
}

fn expect_quiet(turn: &SubmittedTurn) {
    if let Ok(event) = turn.events.recv_timeout(QUIET) {
        panic!("turn {} got {event:?}; nothing was expected", turn.id);
    }
}

// ---------------------------------------------------------------------------------------------
// Transitions
// ---------------------------------------------------------------------------------------------

#[test]
fn a_turn_goes_idle_starting_busy_draining_ready_and_the_next_reuses_the_process() {
    let h = Harness::new(Options::default());
    let turn = h.submit("a", "hello");
    let spawned = h.next_spawn();
    h.wait_phase("a", PhaseName::Starting);
    assert_eq!(h.processes(), 1);
    let end = h.attach(&spawned, Script::Silent);
    let (id, content) = end.next_turn();
    assert_eq!((id.as_str(), content.as_str()), (turn.id.as_str(), "hello"));
    h.wait_phase("a", PhaseName::Busy);
    end.reply(&turn.id, "working", false);
    assert_eq!(
        next_event(&turn),
        TurnEvent::Text {
            text: "working".into(),
            is_final: false
        }
    );
    end.reply(&turn.id, "done", true);
    assert_eq!(expect_done(&turn), "done");
    h.wait_phase("a", PhaseName::Draining);
    h.turn_end(&spawned, Some(&turn.id));
    h.wait_phase("a", PhaseName::Ready);

    // Ready -> Busy on the same process.
    end.set_script(Script::Echo);
    let second = h.submit("a", "again");
    assert_eq!(expect_done(&second), "echo: again");
    h.no_spawn();
    assert_eq!(h.processes(), 1);
    assert!(!spawned.control.stopped.load(Ordering::SeqCst));
}

#[test]
fn a_turn_end_without_a_reply_ends_the_turn_with_the_hooks_text_and_goes_ready() {
    let h = Harness::new(Options::default());
    let (turn, spawned, end) = h.start("a", "hi", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    h.registry
        .turn_end(
            "a",
            &spawned.spawn_id,
            Some(turn.id.clone()),
            Some("from the hook".into()),
        )
        .unwrap();
    assert_eq!(expect_done(&turn), "from the hook");
    h.wait_phase("a", PhaseName::Ready);
}

#[test]
fn draining_ends_when_the_agent_says_it_is_idle() {
    let h = Harness::new(Options::default());
    let (turn, spawned, _end) = h.start("a", "hi", Script::Echo);
    assert_eq!(expect_done(&turn), "echo: hi");
    h.wait_phase("a", PhaseName::Draining);
    spawned.control.idle.store(true, Ordering::SeqCst);
    h.wait_phase("a", PhaseName::Ready);
}

#[test]
fn shutdown_lets_an_answered_turn_finish_before_stopping_claude() {
    let h = Harness::new(Options::default());
    let (turn, spawned, _end) = h.start("a", "hi", Script::Echo);
    assert_eq!(expect_done(&turn), "echo: hi");
    h.wait_phase("a", PhaseName::Draining);
    std::thread::scope(|scope| {
        let stopping = scope.spawn(|| h.registry.shutdown(EVENT_WAIT));
        // Claude is still finishing the turn: it is not stopped under it.
        std::thread::sleep(QUIET);
        assert!(!spawned.control.stopped.load(Ordering::SeqCst));
        spawned.control.idle.store(true, Ordering::SeqCst);
        stopping.join().expect("shutdown returns");
    });
    assert!(spawned.control.stopped.load(Ordering::SeqCst));
}

#[test]
fn the_agent_exiting_mid_turn_fails_the_turn_as_agent_died_and_the_next_turn_restarts_it() {
    let h = Harness::new(Options::default());
    let (turn, spawned, end) = h.start("a", "hi", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    spawned.exit();
    let failure = expect_failed(&turn);
    assert_eq!(failure.kind, FailureKind::AgentDied, "{failure:?}");
    assert!(failure.message.contains("exit status 1"), "{failure:?}");
    wait_until("the process slot released", || h.processes() == 0);

    let (again, respawned, _end) = h.start("a", "back", Script::Echo);
    assert_eq!(expect_done(&again), "echo: back");
    assert_ne!(respawned.spawn_id, spawned.spawn_id);
}

#[test]
fn a_channel_that_never_connects_fails_the_turn_at_ready_timeout() {
    let h = Harness::new(Options {
        ready_timeout: Duration::from_millis(200),
        ..Options::default()
    });
    let turn = h.submit("a", "hi");
    let spawned = h.next_spawn();
    let failure = expect_failed(&turn);
    assert_eq!(failure.kind, FailureKind::AgentUnavailable, "{failure:?}");
    assert!(failure.message.contains("ready_timeout"), "{failure:?}");
    assert!(spawned.control.stopped.load(Ordering::SeqCst));
    wait_until("the process slot released", || h.processes() == 0);
}

#[test]
fn the_agent_exiting_during_start_up_fails_the_turn_as_unavailable() {
    let h = Harness::new(Options::default());
    let turn = h.submit("a", "hi");
    let spawned = h.next_spawn();
    h.wait_phase("a", PhaseName::Starting);
    spawned.exit();
    let failure = expect_failed(&turn);
    assert_eq!(failure.kind, FailureKind::AgentUnavailable, "{failure:?}");
    wait_until("the process slot released", || h.processes() == 0);
}

#[test]
fn a_channel_closed_while_idle_stops_the_process_and_the_worker_retires() {
    let h = Harness::new(Options::default());
    let (turn, spawned, end) = h.start("a", "hi", Script::Echo);
    assert_eq!(expect_done(&turn), "echo: hi");
    h.turn_end(&spawned, Some(&turn.id));
    h.wait_phase("a", PhaseName::Ready);
    end.close();
    wait_until("the process stopped", || {
        spawned.control.stopped.load(Ordering::SeqCst)
    });
    wait_until("the worker retired", || h.registry.live_sessions() == 0);
    assert_eq!(h.processes(), 0);
}

#[test]
fn a_channel_closed_mid_turn_fails_the_turn_as_agent_died() {
    let h = Harness::new(Options::default());
    let (turn, spawned, _end) = h.start("a", "hi", Script::Close);
    let failure = expect_failed(&turn);
    assert_eq!(failure.kind, FailureKind::AgentDied, "{failure:?}");
    wait_until("the process stopped", || {
        spawned.control.stopped.load(Ordering::SeqCst)
    });
    wait_until("the process slot released", || h.processes() == 0);
}

#[test]
fn a_reply_for_another_turn_is_dropped() {
    let h = Harness::new(Options::default());
    let (turn, _spawned, end) = h.start("a", "hi", Script::WrongTurn);
    end.next_turn();
    expect_quiet(&turn);
    end.reply(&turn.id, "mine", true);
    assert_eq!(expect_done(&turn), "mine");
}

// ---------------------------------------------------------------------------------------------
// Eviction
// ---------------------------------------------------------------------------------------------

#[test]
fn at_max_processes_a_new_session_stops_an_idle_one_and_takes_its_slot() {
    let h = Harness::new(Options {
        max_processes: 1,
        ..Options::default()
    });
    let (turn, a, _end_a) = h.start("a", "hi", Script::Echo);
    assert_eq!(expect_done(&turn), "echo: hi");
    h.turn_end(&a, Some(&turn.id));
    h.wait_phase("a", PhaseName::Ready);

    let (turn_b, b, _end_b) = h.start("b", "me too", Script::Echo);
    assert_eq!(expect_done(&turn_b), "echo: me too");
    assert!(
        a.control.stopped.load(Ordering::SeqCst),
        "a was not stopped"
    );
    assert!(!b.control.stopped.load(Ordering::SeqCst));
    assert_eq!(h.processes(), 1);
}

#[test]
fn at_max_processes_with_nothing_idle_a_new_session_gets_at_capacity() {
    let h = Harness::new(Options {
        max_processes: 1,
        ..Options::default()
    });
    let (_turn, _a, end) = h.start("a", "hi", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    match h.try_submit("b", "no room") {
        Err(SubmitError::AtCapacity { max_processes, .. }) => assert_eq!(max_processes, 1),
        other => panic!("expected AtCapacity, got {:?}", other.map(|t| t.id)),
    }
}

#[test]
fn two_new_sessions_at_capacity_evict_two_distinct_idle_sessions() {
    let h = Harness::new(Options {
        max_processes: 2,
        ..Options::default()
    });
    let mut idle = Vec::new();
    for key in ["a", "b"] {
        let (turn, spawned, end) = h.start(key, "hi", Script::Echo);
        assert_eq!(expect_done(&turn), "echo: hi");
        h.turn_end(&spawned, Some(&turn.id));
        h.wait_phase(key, PhaseName::Ready);
        idle.push((spawned, end));
    }
    // Both admitted before either worker runs: each must claim a different victim.
    let c = h.submit("c", "c");
    let d = h.submit("d", "d");
    let mut new = Vec::new();
    for _ in 0..2 {
        let spawned = h.next_spawn();
        let end = h.attach(&spawned, Script::Echo);
        new.push((spawned, end));
    }
    assert_eq!(expect_done(&c), "echo: c");
    assert_eq!(expect_done(&d), "echo: d");
    for (spawned, _) in &idle {
        assert!(
            spawned.control.stopped.load(Ordering::SeqCst),
            "{} was not stopped",
            spawned.key
        );
    }
    assert_eq!(h.processes(), 2);
}

// ---------------------------------------------------------------------------------------------
// Panics
// ---------------------------------------------------------------------------------------------

/// After a worker of "a" panicked: slots released, another session can run a turn (with
/// max_concurrent_turns = 1), and "a" starts again on its next turn.
fn after_a_panic_everything_recovers(h: &Harness, a: &Spawned) {
    wait_until("the panicked worker left", || {
        h.registry.live_sessions() == 0
    });
    assert_eq!(h.processes(), 0);
    assert!(a.control.dropped.load(Ordering::SeqCst));
    let (other, b, _end_b) = h.start("b", "other", Script::Echo);
    assert_eq!(expect_done(&other), "echo: other");
    h.turn_end(&b, Some(&other.id));
    h.wait_phase("b", PhaseName::Ready);
    let (again, a2, _end_a) = h.start("a", "again", Script::Echo);
    assert_eq!(expect_done(&again), "echo: again");
    assert_ne!(a2.spawn_id, a.spawn_id);
}

fn panic_options() -> Options {
    Options {
        max_processes: 1,
        max_concurrent_turns: 1,
        ..Options::default()
    }
}

#[test]
fn a_panic_while_starting_fails_the_turn_and_releases_every_slot() {
    let h = Harness::new(panic_options());
    let turn = h.submit("a", "hi");
    let a = h.next_spawn();
    h.wait_phase("a", PhaseName::Starting);
    a.control.panic_on_screen.store(true, Ordering::SeqCst);
    a.poke();
    let failure = expect_failed(&turn);
    assert_eq!(failure.kind, FailureKind::AgentDied, "{failure:?}");
    after_a_panic_everything_recovers(&h, &a);
}

#[test]
fn a_panic_while_busy_fails_the_turn_and_releases_every_slot() {
    let h = Harness::new(panic_options());
    let (turn, a, end) = h.start("a", "hi", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    a.control.panic_on_readable.store(true, Ordering::SeqCst);
    a.poke();
    let failure = expect_failed(&turn);
    assert_eq!(failure.kind, FailureKind::AgentDied, "{failure:?}");
    after_a_panic_everything_recovers(&h, &a);
}

#[test]
fn a_panic_while_draining_releases_every_slot() {
    let h = Harness::new(panic_options());
    let (turn, a, end) = h.start("a", "hi", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    a.control.panic_says_idle.store(true, Ordering::SeqCst);
    end.reply(&turn.id, "answer", true);
    // The turn was answered before the panic: it keeps its answer.
    assert_eq!(expect_done(&turn), "answer");
    after_a_panic_everything_recovers(&h, &a);
}

// ---------------------------------------------------------------------------------------------
// Late turn ends
// ---------------------------------------------------------------------------------------------

#[test]
fn a_turn_end_naming_an_earlier_turn_is_not_credited_to_the_current_one() {
    let h = Harness::new(Options::default());
    let (first, a, end) = h.start("a", "one", Script::Echo);
    assert_eq!(expect_done(&first), "echo: one");
    h.turn_end(&a, Some(&first.id));
    h.wait_phase("a", PhaseName::Ready);

    end.set_script(Script::Silent);
    let second = h.submit("a", "two");
    end.next_turn();
    the_first_turns_late_report_is_dropped_and_the_second_answers(&h, &a, &end, &first, &second);
}

/// Session "a" runs `second`: `first`'s late end report leaves it running; its reply ends it.
fn the_first_turns_late_report_is_dropped_and_the_second_answers(
    h: &Harness,
    a: &Spawned,
    end: &ChannelEnd,
    first: &SubmittedTurn,
    second: &SubmittedTurn,
) {
    h.wait_phase("a", PhaseName::Busy);
    h.turn_end(a, Some(&first.id));
    expect_quiet(second);
    assert_eq!(h.phase("a"), Some(PhaseName::Busy));
    end.reply(&second.id, "two's answer", true);
    assert_eq!(expect_done(second), "two's answer");
}

#[test]
fn an_anonymous_turn_end_after_an_unreported_turn_is_not_credited_to_the_next_one() {
    // The previous turn never reports its end: the worker gives up after PREVIOUS_TURN_WAIT.
    let h = Harness::new(Options::default());
    let (first, a, end) = h.start("a", "one", Script::Echo);
    assert_eq!(expect_done(&first), "echo: one");
    end.next_turn();
    h.wait_phase("a", PhaseName::Draining);
    end.set_script(Script::Silent);
    let second = h.submit("a", "two");
    let (id, _) = end
        .turns
        .recv_timeout(super::PREVIOUS_TURN_WAIT + EVENT_WAIT)
        .expect("the second turn went out after the drain wait");
    assert_eq!(id, second.id);
    h.wait_phase("a", PhaseName::Busy);
    // The first turn's late, anonymous report: dropped.
    h.turn_end(&a, None);
    expect_quiet(&second);
    assert_eq!(h.phase("a"), Some(PhaseName::Busy));
    // The next anonymous report is the second turn's own.
    h.turn_end(&a, None);
    let failure_or_done = next_event(&second);
    assert!(
        matches!(&failure_or_done, TurnEvent::Text { is_final: true, .. }),
        "{failure_or_done:?}"
    );
    assert!(matches!(next_event(&second), TurnEvent::Done(_)));
}

// ---------------------------------------------------------------------------------------------
// Pipelined turns (pipeline_turns)
// ---------------------------------------------------------------------------------------------

fn pipelined() -> Options {
    Options {
        pipeline_turns: true,
        ..Options::default()
    }
}

/// Session "a" answered its first turn ("one") and drains: claude has not reported its end.
fn answered_and_draining(h: &Harness) -> (SubmittedTurn, Spawned, ChannelEnd) {
    let (first, a, end) = h.start("a", "one", Script::Echo);
    assert_eq!(expect_done(&first), "echo: one");
    end.next_turn();
    h.wait_phase("a", PhaseName::Draining);
    (first, a, end)
}

#[test]
fn a_turn_queued_while_the_previous_one_drains_goes_out_before_its_end_report() {
    let h = Harness::new(pipelined());
    let (first, a, end) = answered_and_draining(&h);
    end.set_script(Script::Silent);
    let second = h.submit("a", "two");
    // Out at once: well before the drain wait would give up on the first turn.
    let (id, content) = end
        .turns
        .recv_timeout(EVENT_WAIT)
        .expect("the second turn went out while the first drained");
    assert!(EVENT_WAIT < super::PREVIOUS_TURN_WAIT);
    assert_eq!((id.as_str(), content.as_str()), (second.id.as_str(), "two"));
    the_first_turns_late_report_is_dropped_and_the_second_answers(&h, &a, &end, &first, &second);
    h.wait_phase("a", PhaseName::Draining);
    h.turn_end(&a, Some(&second.id));
    h.wait_phase("a", PhaseName::Ready);
    assert_eq!(h.processes(), 1);
}

#[test]
fn an_anonymous_end_report_owed_by_the_previous_turn_is_not_credited_to_a_pipelined_one() {
    let h = Harness::new(pipelined());
    let (_first, a, end) = answered_and_draining(&h);
    end.set_script(Script::Silent);
    let second = h.submit("a", "two");
    end.turns.recv_timeout(EVENT_WAIT).expect("sent at once");
    h.wait_phase("a", PhaseName::Busy);
    h.turn_end(&a, None);
    expect_quiet(&second);
    assert_eq!(h.phase("a"), Some(PhaseName::Busy));
    h.turn_end(&a, None);
    assert!(matches!(
        next_event(&second),
        TurnEvent::Text { is_final: true, .. }
    ));
    assert!(matches!(next_event(&second), TurnEvent::Done(_)));
}

#[test]
fn with_pipelining_off_the_next_turn_waits_for_the_previous_turns_end() {
    let h = Harness::new(Options::default());
    let (first, a, end) = answered_and_draining(&h);
    let second = h.submit("a", "two");
    assert!(
        end.turns.recv_timeout(QUIET).is_err(),
        "sent before the end"
    );
    h.turn_end(&a, Some(&first.id));
    let (id, _) = end
        .turns
        .recv_timeout(EVENT_WAIT)
        .expect("sent after the end");
    assert_eq!(id, second.id);
    assert_eq!(expect_done(&second), "echo: two");
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

#[test]
fn a_turn_cancelled_in_the_queue_is_skipped_and_the_next_turn_works() {
    let h = Harness::new(Options::default());
    let (first, a, end) = h.start("a", "one", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    let queued = h.submit("a", "two");
    queued.cancel.cancel();
    end.reply(&first.id, "one done", true);
    assert_eq!(expect_done(&first), "one done");
    h.turn_end(&a, Some(&first.id));
    let failure = expect_failed(&queued);
    assert_eq!(failure.kind, FailureKind::Cancelled, "{failure:?}");
    h.wait_phase("a", PhaseName::Ready);
    h.echo_turn("a", &a, &end, "three");
}

#[test]
fn a_turn_cancelled_while_waiting_for_a_turn_slot_is_skipped() {
    let h = Harness::new(Options {
        max_concurrent_turns: 1,
        ..Options::default()
    });
    let (first, a, end) = h.start("a", "one", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    let waiting = h.submit("b", "two");
    wait_until("b waiting for a turn slot", || {
        h.registry
            .snapshot()
            .iter()
            .any(|r| r.key == "b" && r.step == "waiting for a max_concurrent_turns slot")
    });
    waiting.cancel.cancel();
    let failure = expect_failed(&waiting);
    assert_eq!(failure.kind, FailureKind::Cancelled, "{failure:?}");
    end.reply(&first.id, "one done", true);
    assert_eq!(expect_done(&first), "one done");
    h.turn_end(&a, Some(&first.id));
    let (third, _b, _end_b) = h.start("b", "three", Script::Echo);
    assert_eq!(expect_done(&third), "echo: three");
}

#[test]
fn a_turn_cancelled_while_starting_is_interrupted_once_started_and_the_next_turn_works() {
    let h = Harness::new(Options::default());
    let turn = h.submit("a", "hi");
    let a = h.next_spawn();
    h.wait_phase("a", PhaseName::Starting);
    turn.cancel.cancel();
    let end = h.attach(&a, Script::Silent);
    let failure = expect_failed(&turn);
    assert_eq!(failure.kind, FailureKind::Cancelled, "{failure:?}");
    // Esc runs no Stop hook: the drain ends when claude says it is idle.
    a.control.idle.store(true, Ordering::SeqCst);
    h.wait_phase("a", PhaseName::Ready);
    h.echo_turn("a", &a, &end, "next");
}

#[test]
fn a_turn_cancelled_while_busy_interrupts_claude_and_the_next_turn_works() {
    let h = Harness::new(Options::default());
    let (turn, a, end) = h.start("a", "hi", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    turn.cancel.cancel();
    let failure = expect_failed(&turn);
    assert_eq!(failure.kind, FailureKind::Cancelled, "{failure:?}");
    assert_eq!(a.control.interrupts.load(Ordering::SeqCst), 1);
    h.wait_phase("a", PhaseName::Draining);
    a.control.idle.store(true, Ordering::SeqCst);
    h.wait_phase("a", PhaseName::Ready);
    h.echo_turn("a", &a, &end, "next");
}

// ---------------------------------------------------------------------------------------------
// Retirement
// ---------------------------------------------------------------------------------------------

#[test]
fn stopping_an_idle_session_stops_its_process_and_the_worker_retires() {
    let h = Harness::new(Options::default());
    let (turn, a, _end) = h.start("a", "hi", Script::Echo);
    assert_eq!(expect_done(&turn), "echo: hi");
    h.turn_end(&a, Some(&turn.id));
    h.wait_phase("a", PhaseName::Ready);
    assert_eq!(h.registry.live_sessions(), 1);
    h.registry.stop_session("a").expect("stop an idle session");
    wait_until("the worker retired", || h.registry.live_sessions() == 0);
    assert!(a.control.stopped.load(Ordering::SeqCst));
    assert_eq!(h.processes(), 0);
    // The conversation resumes on the next turn, in a new worker.
    let (again, _a2, _end) = h.start("a", "back", Script::Echo);
    assert_eq!(expect_done(&again), "echo: back");
}

#[test]
fn stopping_a_busy_session_is_refused() {
    let h = Harness::new(Options::default());
    let (_turn, _a, end) = h.start("a", "hi", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    assert!(h.registry.stop_session("a").is_err());
}
