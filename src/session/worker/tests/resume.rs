//! A returning conversation takes a ready standby (`standby_resume`): the worker types
//! `/resume <conversation>` and sends the turn once claude's session file names it; a standby
//! that does not switch is stopped and the conversation starts claude with `--resume`.

use super::*;

const STANDBY: &str = "(standby) 0";

/// A standby is spawned and attached; returns it once ready.
fn ready_standby(h: &Harness) -> (Spawned, ChannelEnd) {
    let spawned = h.next_spawn();
    assert_eq!(spawned.key, STANDBY);
    let end = h.attach(&spawned, Script::Echo);
    h.wait_phase(STANDBY, PhaseName::Ready);
    (spawned, end)
}

/// Conversation "r" had one turn (on the first standby), then its process was stopped (as
/// an idle kill stops it) and its worker retired. Returns its Claude conversation.
fn conversation_that_went_idle(h: &Harness) -> String {
    let (first_standby, end) = ready_standby(h);
    let turn = h.submit("r", "hello");
    assert_eq!(expect_done(&turn), "echo: hello");
    h.turn_end(&first_standby, Some(&turn.id));
    h.wait_phase("r", PhaseName::Ready);
    h.registry.stop_session("r").expect("stopped");
    wait_until("r retired", || h.phase("r").is_none());
    assert!(first_standby.control.stopped.load(Ordering::SeqCst));
    drop(end);
    h.transcripts
        .lock()
        .unwrap()
        .push(first_standby.conversation.clone());
    first_standby.conversation
}

fn with_a_standby() -> Options {
    Options {
        standby: 1,
        ..Options::default()
    }
}

#[test]
fn a_returning_conversation_resumes_in_the_ready_standby() {
    let h = Harness::new(with_a_standby());
    let conversation = conversation_that_went_idle(&h);
    let (standby, end) = ready_standby(&h);
    let again = h.submit("r", "again");
    let (_, content) = end.next_turn();
    assert_eq!(content, "again", "the turn went to the standby's channel");
    assert_eq!(expect_done(&again), "echo: again");
    assert_eq!(
        *standby.control.typed.lock().unwrap(),
        vec![format!("/resume {conversation}")]
    );
    // The only spawn is the next standby, not a claude for "r".
    assert_eq!(h.next_spawn().key, STANDBY);
    assert!(!standby.control.stopped.load(Ordering::SeqCst));
    // Later turns go to the worker it has: no look for a transcript on their way.
    h.turn_end(&standby, None);
    h.wait_phase("r", PhaseName::Ready);
    let lookups = h.transcript_lookups.load(Ordering::SeqCst);
    let third = h.submit("r", "third");
    end.next_turn();
    assert_eq!(expect_done(&third), "echo: third");
    assert_eq!(h.transcript_lookups.load(Ordering::SeqCst), lookups);
}

#[test]
fn a_standby_that_does_not_switch_is_stopped_and_the_conversation_starts_with_resume() {
    let h = Harness::new(with_a_standby());
    let conversation = conversation_that_went_idle(&h);
    let (standby, _end) = ready_standby(&h);
    standby.control.resume_refused.store(true, Ordering::SeqCst);
    let again = h.submit("r", "again");
    // After the resume limit (3 s) the standby is stopped and "r" starts its own claude on
    // its conversation.
    let own = loop {
        let spawned = h
            .spawns
            .recv_timeout(Duration::from_secs(5))
            .expect("a claude for r");
        if spawned.key == "r" {
            break spawned;
        }
    };
    assert_eq!(own.conversation, conversation);
    assert!(standby.control.stopped.load(Ordering::SeqCst));
    let end = h.attach(&own, Script::Echo);
    assert_eq!(end.next_turn().1, "again");
    assert_eq!(expect_done(&again), "echo: again");
}
