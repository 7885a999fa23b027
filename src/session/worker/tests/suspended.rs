//! The suspended turn through the fake agent and channel: a permission question suspends
//! the turn and ends its response, an answer resumes the same Claude turn on the answering
//! request, and every other way out (another message, the timeout, a second question, an
//! unknown id, the policies `deny` and `off`, claude exiting) ends somewhere defined.

use super::*;
use crate::session::pending::{Answer, Pending, PendingKind, PermissionRelay};

fn submit_answers(h: &Harness, key: &str, text: &str, answers: Vec<Answer>) -> SubmittedTurn {
    h.submit_answers(key, text, answers)
}

fn verdict(id: &str, allow: bool) -> Vec<Answer> {
    vec![Answer::Verdict {
        id: id.into(),
        allow,
    }]
}

/// The questions a turn ended with (after any text).
fn expect_suspended(turn: &SubmittedTurn) -> Vec<Pending> {
    loop {
        match next_event(turn) {
            TurnEvent::Text { .. } => {}
            TurnEvent::Suspended(pending) => return pending,
            other => panic!(
                "turn {} ended with {other:?}; a question was expected",
                turn.id
            ),
        }
    }
}

/// A session `a` whose first turn is suspended on one Bash question; returns the pieces.
fn suspended_session(h: &Harness) -> (SubmittedTurn, Spawned, ChannelEnd, Pending) {
    let (turn, spawned, end) = h.start("a", "run the tests", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    end.reply(&turn.id, "let me run them", false);
    end.permission_request("req-1", "Bash", "npm test");
    let pending = expect_suspended(&turn);
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].kind,
        PendingKind::Permission {
            request_id: "req-1".into(),
            tool_name: "Bash".into(),
            description: "a test tool call".into(),
            input_preview: "npm test".into(),
        }
    );
    h.wait_phase("a", PhaseName::Suspended);
    let question = pending.into_iter().next().unwrap();
    (turn, spawned, end, question)
}

fn pending_of(h: &Harness, key: &str) -> Vec<Pending> {
    h.registry
        .snapshot()
        .into_iter()
        .find(|r| r.key == key)
        .map(|r| r.info.pending)
        .unwrap_or_default()
}

#[test]
fn a_question_suspends_the_turn_and_yes_resumes_it_on_the_answering_request() {
    let h = Harness::new(Options {
        max_concurrent_turns: 1,
        ..Options::default()
    });
    let (first, _spawned, end, question) = suspended_session(&h);
    assert_eq!(pending_of(&h, "a"), vec![question.clone()]);
    // The suspended turn gave its turn slot back: another session's turn runs meanwhile.
    let (other, _b, b_end) = h.start("b", "meanwhile", Script::Echo);
    assert_eq!(expect_done(&other), "echo: meanwhile");
    drop(b_end);

    let answer = submit_answers(&h, "a", "yes", verdict(&question.id, true));
    assert_eq!(end.next_verdict(), ("req-1".into(), "allow".into()));
    h.wait_phase("a", PhaseName::Busy);
    assert!(pending_of(&h, "a").is_empty());
    // Claude's replies still carry the first request's turn id; they reach the answering one.
    end.reply(&first.id, "tests pass", true);
    assert_eq!(expect_done(&answer), "tests pass");
    expect_quiet(&first);
    h.wait_phase("a", PhaseName::Draining);
    assert!(
        end.turns.try_recv().is_err(),
        "an answer is not sent to claude as a turn"
    );
}

#[test]
fn no_sends_deny_and_the_rest_of_the_turn_streams_on_the_answering_request() {
    let h = Harness::new(Options::default());
    let (first, spawned, end, question) = suspended_session(&h);
    let answer = submit_answers(&h, "a", "no", verdict(&question.id, false));
    assert_eq!(end.next_verdict(), ("req-1".into(), "deny".into()));
    end.reply(&first.id, "ok, I did not run it", true);
    assert_eq!(expect_done(&answer), "ok, I did not run it");
    h.turn_end(&spawned, Some(&first.id));
    h.wait_phase("a", PhaseName::Ready);
}

#[test]
fn a_reply_sent_just_before_the_question_is_held_for_the_answering_request() {
    let h = Harness::new(Options::default());
    let (first, _spawned, end, question) = suspended_session(&h);
    end.reply(&first.id, "still thinking", false);
    std::thread::sleep(QUIET); // nothing to await: the worker holds it silently
    let answer = submit_answers(&h, "a", "yes", verdict(&question.id, true));
    assert_eq!(
        next_event(&answer),
        TurnEvent::Text {
            text: "still thinking".into(),
            is_final: false
        }
    );
    end.reply(&first.id, "done", true);
    assert_eq!(expect_done(&answer), "done");
}

#[test]
fn an_unknown_id_fails_that_request_and_the_question_stays_open() {
    let h = Harness::new(Options::default());
    let (first, _spawned, end, question) = suspended_session(&h);
    let wrong = if question.id == "zzzzz" {
        "yyyyy"
    } else {
        "zzzzz"
    };
    let bad = submit_answers(&h, "a", "yes", verdict(wrong, true));
    let failure = expect_failed(&bad);
    assert_eq!(failure.kind, FailureKind::BadAnswer);
    assert!(
        failure.message.contains(&question.id),
        "{}",
        failure.message
    );
    assert_eq!(h.phase("a"), Some(PhaseName::Suspended));
    assert!(end.verdicts.try_recv().is_err());
    let good = submit_answers(&h, "a", "yes", verdict(&question.id, true));
    assert_eq!(end.next_verdict().1, "allow");
    end.reply(&first.id, "ran", true);
    assert_eq!(expect_done(&good), "ran");
}

#[test]
fn another_message_denies_the_question_and_runs_after_the_denied_turn_with_a_notice() {
    let h = Harness::new(Options::default());
    let (first, spawned, end, question) = suspended_session(&h);
    let message = h.submit("a", "never mind, what time is it?");
    assert_eq!(end.next_verdict(), ("req-1".into(), "deny".into()));
    h.wait_phase("a", PhaseName::Draining);
    // Claude finishes the denied turn unseen; only then does the message go out.
    end.reply(&first.id, "not run", true);
    h.turn_end(&spawned, Some(&first.id));
    let (id, content) = end.next_turn();
    assert_eq!(id, message.id);
    assert_eq!(content, "never mind, what time is it?");
    match next_event(&message) {
        TurnEvent::Text { text, is_final } => {
            assert!(!is_final);
            assert!(
                text.contains(&question.id) && text.contains("denied"),
                "{text}"
            );
        }
        other => panic!("expected the notice first, got {other:?}"),
    }
    end.reply(&message.id, "noon", true);
    assert_eq!(expect_done(&message), "noon");
}

#[test]
fn an_unanswered_question_is_denied_at_the_timeout_and_the_next_turn_says_so() {
    let h = Harness::new(Options {
        permission_timeout: Duration::from_millis(200),
        ..Options::default()
    });
    let (first, spawned, end, question) = suspended_session(&h);
    assert_eq!(end.next_verdict(), ("req-1".into(), "deny".into()));
    h.wait_phase("a", PhaseName::Draining);
    h.turn_end(&spawned, Some(&first.id));
    h.wait_phase("a", PhaseName::Ready);
    end.set_script(Script::Echo);
    let next = h.submit("a", "hello");
    match next_event(&next) {
        TurnEvent::Text { text, .. } => {
            assert!(
                text.contains(&question.id) && text.contains("permission_timeout"),
                "{text}"
            );
        }
        other => panic!("expected the notice first, got {other:?}"),
    }
    assert_eq!(expect_done(&next), "echo: hello");
}

#[test]
fn two_questions_in_one_turn_are_asked_one_after_the_other() {
    let h = Harness::new(Options::default());
    let (first, _spawned, end, question) = suspended_session(&h);
    let answer = submit_answers(&h, "a", "yes", verdict(&question.id, true));
    assert_eq!(end.next_verdict().0, "req-1");
    h.wait_phase("a", PhaseName::Busy);
    end.permission_request("req-2", "Write", "proof.txt");
    let second = expect_suspended(&answer);
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].id, question.id);
    let last = submit_answers(&h, "a", "yes", verdict(&second[0].id, true));
    assert_eq!(end.next_verdict(), ("req-2".into(), "allow".into()));
    end.reply(&first.id, "both done", true);
    assert_eq!(expect_done(&last), "both done");
}

#[test]
fn a_question_asked_while_suspended_is_shown_to_the_answering_request() {
    let h = Harness::new(Options::default());
    let (_first, _spawned, end, question) = suspended_session(&h);
    end.permission_request("req-2", "Bash", "npm run lint");
    wait_until("two questions pending", || pending_of(&h, "a").len() == 2);
    let answer = submit_answers(&h, "a", "yes", verdict(&question.id, true));
    assert_eq!(end.next_verdict().0, "req-1");
    let open = expect_suspended(&answer);
    assert_eq!(open.len(), 1);
    assert!(
        matches!(&open[0].kind, PendingKind::Permission { request_id, .. } if request_id == "req-2")
    );
    h.wait_phase("a", PhaseName::Suspended);
}

#[test]
fn with_permission_relay_deny_every_question_is_denied_at_once_and_the_turn_goes_on() {
    let h = Harness::new(Options {
        permission_relay: PermissionRelay::Deny,
        ..Options::default()
    });
    let (turn, _spawned, end) = h.start("a", "run it", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    end.permission_request("req-1", "Bash", "rm -rf build");
    assert_eq!(end.next_verdict(), ("req-1".into(), "deny".into()));
    assert_eq!(h.phase("a"), Some(PhaseName::Busy));
    end.reply(&turn.id, "I was not allowed", true);
    assert_eq!(expect_done(&turn), "I was not allowed");
}

#[test]
fn with_permission_relay_off_the_turn_fails_at_once_naming_the_setting() {
    let h = Harness::new(Options {
        permission_relay: PermissionRelay::Off,
        ..Options::default()
    });
    let (turn, spawned, end) = h.start("a", "run it", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    end.permission_request("req-1", "Bash", "make");
    let failure = expect_failed(&turn);
    assert_eq!(failure.kind, FailureKind::PermissionBlocked);
    assert!(failure.message.contains("permission_relay"), "{failure:?}");
    assert_eq!(spawned.control.interrupts.load(Ordering::SeqCst), 1);
    assert!(end.verdicts.try_recv().is_err());
}

#[test]
fn claude_exiting_while_suspended_stops_the_session_and_the_next_turn_works() {
    let h = Harness::new(Options::default());
    let (_first, spawned, _end, _question) = suspended_session(&h);
    spawned.exit();
    wait_until("the session left Suspended", || {
        h.phase("a") != Some(PhaseName::Suspended)
    });
    assert!(pending_of(&h, "a").is_empty());
    assert_eq!(h.processes(), 0);
    let next = h.submit("a", "again");
    let respawned = h.next_spawn();
    let end = h.attach(&respawned, Script::Echo);
    assert_eq!(expect_done(&next), "echo: again");
    drop(end);
}

#[test]
fn a_question_with_no_turn_in_flight_is_denied() {
    let h = Harness::new(Options::default());
    let (turn, spawned, end) = h.start("a", "hi", Script::Echo);
    assert_eq!(expect_done(&turn), "echo: hi");
    h.turn_end(&spawned, Some(&turn.id));
    h.wait_phase("a", PhaseName::Ready);
    end.permission_request("late", "Bash", "ls");
    assert_eq!(end.next_verdict(), ("late".into(), "deny".into()));
}

#[test]
fn shutdown_while_suspended_stops_the_process() {
    let h = Harness::new(Options::default());
    let (_first, spawned, _end, _question) = suspended_session(&h);
    h.registry.shutdown(Duration::from_millis(200));
    wait_until("the process stopped", || {
        spawned.control.stopped.load(Ordering::SeqCst)
    });
}

#[test]
fn an_answer_with_no_open_question_is_an_ordinary_turn() {
    let h = Harness::new(Options::default());
    let (turn, spawned, end) = h.start("a", "hi", Script::Echo);
    assert_eq!(expect_done(&turn), "echo: hi");
    h.turn_end(&spawned, Some(&turn.id));
    h.wait_phase("a", PhaseName::Ready);
    let answer = submit_answers(&h, "a", "no sorry", verdict("sorry", false));
    assert_eq!(expect_done(&answer), "echo: no sorry");
    assert!(end.verdicts.try_recv().is_err());
}

#[test]
fn the_same_answer_twice_in_one_message_sends_one_verdict() {
    let h = Harness::new(Options::default());
    let (first, _spawned, end, question) = suspended_session(&h);
    let mut answers = verdict(&question.id, true);
    answers.extend(verdict(&question.id, false));
    let answer = submit_answers(&h, "a", "yes\nno", answers);
    assert_eq!(end.next_verdict(), ("req-1".into(), "allow".into()));
    end.reply(&first.id, "ran", true);
    assert_eq!(expect_done(&answer), "ran");
    assert!(end.verdicts.try_recv().is_err(), "one verdict only");
}
