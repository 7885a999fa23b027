//! The simulated Claude's `/resume <uuid>` typed at its prompt, driven the way the bridge
//! drives claude: the `sim-agent` binary in a pseudo-terminal (`agent::pty`), keys written to
//! the PTY master, and the session file `<config>/sessions/<pid>.json` watched for the switch.
//! (Turns appending to the resumed transcript are covered by `sim_agent::session`'s unit tests:
//! a turn needs a channel server.)

mod support;

use serde_json::{Value, json};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{BIN, MARKER_VAR, TempDir, wait_until};
use synthesis_bridge::agent::pty::{self, PtyChild};

const LIMIT: Duration = Duration::from_secs(10);

/// One sim-agent in a PTY with its own config dir; stopped (and reaped) on drop.
struct Sim {
    child: PtyChild,
    screen: String,
    config: PathBuf,
    workspace: PathBuf,
    _dir: TempDir,
}

impl Sim {
    /// Starts a new session `session` with the `SYNTHESIS_SIM_*` settings `env`, and waits
    /// until it is idle at its prompt.
    fn start(session: &str, env: &[(&str, &str)]) -> Sim {
        let dir = TempDir::new("sim-resume");
        let (config, workspace) = (dir.path().join("config"), dir.path().join("ws"));
        std::fs::create_dir_all(&workspace).unwrap();
        let mut vars: Vec<(OsString, OsString)> = vec![
            ("CLAUDE_CONFIG_DIR".into(), config.clone().into()),
            ("HOME".into(), dir.path().into()),
            (MARKER_VAR.into(), format!("sim-resume-{session}").into()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
        let program = OsString::from(BIN);
        let args: Vec<OsString> = ["sim-agent", "--session-id", session]
            .iter()
            .map(OsString::from)
            .collect();
        let child = pty::spawn(&pty::SpawnSpec {
            program: &program,
            args: &args,
            env: &vars,
            env_remove: &[
                OsString::from("SYNTHESIS_SIM_RESUME_DELAY_MS"),
                OsString::from("SYNTHESIS_SIM_NO_RESUME"),
            ],
            cwd: &workspace,
        })
        .expect("start sim-agent in a pty");
        let mut sim = Sim {
            child,
            screen: String::new(),
            config,
            workspace,
            _dir: dir,
        };
        assert_eq!(
            sim.wait_for_session_file(session)["status"],
            "idle",
            "{}",
            sim.screen
        );
        assert!(sim.wait_for_screen("> "), "no prompt: {}", sim.screen);
        sim
    }

    fn type_keys(&mut self, keys: &str) {
        self.child.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Reads what the sim drew so far (the master is non-blocking).
    fn read_screen(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = self.child.master.read(&mut buf) {
            self.screen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    fn wait_for_screen(&mut self, needle: &str) -> bool {
        wait_until(LIMIT, || {
            self.read_screen();
            self.screen.contains(needle).then_some(())
        })
        .is_some()
    }

    fn session_file(&self) -> Option<Value> {
        let path = self
            .config
            .join(format!("sessions/{}.json", self.child.pid()));
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// The session file once its `sessionId` is `session`.
    fn wait_for_session_file(&mut self, session: &str) -> Value {
        wait_until(LIMIT, || {
            self.read_screen();
            self.session_file()
                .filter(|file| file["sessionId"] == session)
        })
        .unwrap_or_else(|| {
            panic!(
                "session file never showed {session}: {:?}\n{}",
                self.session_file(),
                self.screen
            )
        })
    }

    /// A conversation of this workspace with `messages` messages, as Claude writes it.
    fn write_transcript(&self, session: &str, messages: usize) -> PathBuf {
        let path = synthesis_bridge::agent::project_dir_name(&self.workspace);
        let path = self
            .config
            .join("projects")
            .join(path)
            .join(format!("{session}.jsonl"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let lines: Vec<String> = (0..messages)
            .map(|n| {
                let role = if n % 2 == 0 { "user" } else { "assistant" };
                json!({"type": role, "message": {"role": role, "content": format!("m{n}")},
                       "sessionId": session, "uuid": uuid::Uuid::new_v4().to_string()})
                .to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(&path, lines.concat()).unwrap();
        path
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.terminate(Duration::from_secs(3));
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[test]
fn resume_typed_at_the_prompt_switches_the_session_file_or_says_no_conversation_found() {
    let (first, earlier, missing) = (new_id(), new_id(), new_id());
    let mut sim = Sim::start(&first, &[]);
    sim.write_transcript(&earlier, 3);

    // A conversation that does not exist: said on screen, the session file keeps its id.
    sim.type_keys(&format!("/resume {missing}\r"));
    assert!(
        sim.wait_for_screen(&format!("No conversation found with session ID: {missing}")),
        "{}",
        sim.screen
    );
    assert_eq!(sim.session_file().unwrap()["sessionId"], first.as_str());

    // Typed with a typo corrected by backspace, Enter in the same write.
    sim.type_keys(&format!("/resumx\x7fe {earlier}\r"));
    let file = sim.wait_for_session_file(&earlier);
    assert_eq!(
        file,
        json!({"pid": sim.child.pid(), "sessionId": earlier, "status": "idle"})
    );
    assert!(
        sim.wait_for_screen(&format!("Resumed session {earlier} (3 messages)")),
        "{}",
        sim.screen
    );

    // Other slash commands are unknown; plain text is ignored; neither switches anything.
    sim.type_keys("/compact\r");
    assert!(
        sim.wait_for_screen("Unknown slash command: compact"),
        "{}",
        sim.screen
    );
    sim.type_keys("hello\r");
    assert!(sim.wait_for_screen("ignored"), "{}", sim.screen);
    assert_eq!(sim.session_file().unwrap()["sessionId"], earlier.as_str());
    assert!(
        sim.child.child.try_wait().unwrap().is_none(),
        "the sim exited"
    );
}

#[test]
fn resume_delay_postpones_the_switch_and_no_resume_makes_the_command_unknown() {
    let (first, earlier) = (new_id(), new_id());
    let mut sim = Sim::start(&first, &[("SYNTHESIS_SIM_RESUME_DELAY_MS", "400")]);
    sim.write_transcript(&earlier, 2);
    let typed = Instant::now();
    sim.type_keys(&format!("/resume {earlier}\r"));
    sim.wait_for_session_file(&earlier);
    let took = typed.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "switched after {took:?}"
    );
    drop(sim);

    let mut sim = Sim::start(&first, &[("SYNTHESIS_SIM_NO_RESUME", "1")]);
    sim.write_transcript(&earlier, 2);
    sim.type_keys(&format!("/resume {earlier}\r"));
    assert!(
        sim.wait_for_screen("Unknown slash command: resume"),
        "{}",
        sim.screen
    );
    assert_eq!(
        sim.session_file().unwrap(),
        json!({"pid": sim.child.pid(), "sessionId": first, "status": "idle"})
    );
}
