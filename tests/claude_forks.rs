//! Issue #15 item 1 against `serve --demo`: with `fork_with_claude_flags`, a fork (an edit,
//! or the second of two identical continuations) starts claude with Claude Code's own flags
//! (`--resume <parent> --fork-session --session-id <new> --resume-session-at <message>`), so
//! its Claude conversation holds the branch's messages as real transcript entries and its
//! first turn carries no restored history; without the flag, or when the branch point's
//! message is unknown or claude refuses the flags, the fork carries the restored history
//! (docs/HTTP_API.md §6.2). The sim-agent copies the parent's transcript up to that message.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// The session's Claude transcript (`<config>/projects/*/<claude session>.jsonl`), as text.
fn transcript_of(bridge: &Bridge, key: &str) -> String {
    let sessions = request(bridge.http, "GET", "/v1/sessions", &[], "").json();
    let session = sessions["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .and_then(|s| s["claude_session"].as_str().map(String::from))
        .expect("the session's claude_session");
    let projects = bridge.dir.path().join("home/.claude/projects");
    std::fs::read_dir(projects)
        .unwrap()
        .flatten()
        .map(|d| d.path().join(format!("{session}.jsonl")))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .expect("the session's transcript")
}

/// A1–A3 in one conversation, then [A1, its reply, "A2-edited"]: (the first key, the fork).
fn edit_after_three_turns(bridge: &Bridge) -> (String, HttpResponse) {
    let mut messages = vec![];
    let mut key = String::new();
    for text in ["A1", "A2", "A3"] {
        messages.push(json!({"role": "user", "content": text}));
        let r = post_chat(bridge, &[], &chat(Value::Array(messages.clone())));
        let reply = content(&r);
        messages.push(json!({"role": "assistant", "content": reply}));
        if key.is_empty() {
            key = session_of(&r);
        }
        assert_eq!(session_of(&r), key, "{text} continues the conversation");
    }
    let edited = chat(json!([
        messages[0], messages[1],
        {"role": "user", "content": "A2-edited"},
    ]));
    (key, post_chat(bridge, &[], &edited))
}

#[test]
fn an_edit_forks_claudes_own_transcript_at_its_branch_point() {
    let bridge = Bridge::demo().flag("--fork-with-claude-flags").start();
    let (key, fork) = edit_after_three_turns(&bridge);
    // The sim echoes its turn: the turn is the edited message alone, no restored history.
    assert_eq!(content(&fork), "A2-edited");
    let fork_key = session_of(&fork);
    assert_ne!(fork_key, key);
    let log = bridge.log();
    assert!(
        log.contains("--fork-session --resume-session-at") && log.contains("(the end of turn-1)"),
        "{log}"
    );
    // The fork's conversation: A1 and its reply (copied), then the edited turn and its reply
    // (its messages: the sim, like Claude, also logs its input queue in the transcript).
    // Claude writes its reply's entry after the reply went out: wait for it.
    let messages_of = |transcript: &str| -> Vec<Value> {
        transcript
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|entry| matches!(entry["type"].as_str(), Some("user" | "assistant")))
            .map(|entry| entry["message"]["content"].clone())
            .collect()
    };
    let transcript = wait_until(Duration::from_secs(5), || {
        let transcript = transcript_of(&bridge, &fork_key);
        (messages_of(&transcript).len() >= 4).then_some(transcript)
    })
    .unwrap_or_else(|| transcript_of(&bridge, &fork_key));
    let said = messages_of(&transcript);
    assert_eq!(said.len(), 4, "{said:?}");
    assert!(said[0].as_str().unwrap().contains("\nA1\n"), "{said:?}");
    assert_eq!(said[1], "A1");
    assert!(
        said[2].as_str().unwrap().contains("\nA2-edited\n"),
        "{said:?}"
    );
    assert!(!transcript.contains("A3") && !transcript.contains("restored by the bridge"));
    // The parent is untouched, and the fork goes on as a conversation of its own.
    assert!(transcript_of(&bridge, &key).contains("A3"));
    let next = chat(json!([
        {"role": "user", "content": "A1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "A2-edited"}, {"role": "assistant", "content": "A2-edited"},
        {"role": "user", "content": "B3"},
    ]));
    let b3 = post_chat(&bridge, &[], &next);
    assert_eq!((content(&b3), session_of(&b3)), ("B3".into(), fork_key));
}

/// Problem 1's pair with the flags: Y's second turn forks the shared first turn, so Y's
/// Claude holds "hi T" and its reply as real messages and never X's private one.
#[test]
fn the_second_identical_continuation_forks_without_the_other_branch() {
    let bridge = Bridge::demo().flag("--fork-with-claude-flags").start();
    let first = post_chat(
        &bridge,
        &[],
        &chat(json!([{"role": "user", "content": "hi T"}])),
    );
    let reply = content(&first);
    let next = |text: &str| {
        chat(json!([
            {"role": "user", "content": "hi T"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": text},
        ]))
    };
    let x2 = post_chat(&bridge, &[], &next("X2 private to X"));
    let y2 = post_chat(&bridge, &[], &next("Y2 private to Y"));
    assert_eq!(session_of(&x2), session_of(&first));
    assert_ne!(session_of(&y2), session_of(&x2));
    assert_eq!(content(&y2), "Y2 private to Y");
    let y = transcript_of(&bridge, &session_of(&y2));
    assert!(y.contains("hi T") && y.contains("Y2 private to Y"), "{y}");
    assert!(!y.contains("X2"), "{y}");
}

/// Without the flag (the default), when the agent's transcript has no message uuids, or when
/// claude refuses `--fork-session` at start, the fork still gets exactly its branch's
/// context: the restored history in its first turn, and the log says why.
#[test]
fn a_fork_falls_back_to_the_restored_history() {
    for (flag, env, why) in [
        (false, "SYNTHESIS_SIM_UNUSED", "forks from an earlier point"),
        (
            true,
            "SYNTHESIS_SIM_NO_MESSAGE_UUIDS",
            "with the restored history",
        ),
        (
            true,
            "SYNTHESIS_SIM_NO_FORK",
            "could not fork the conversation",
        ),
    ] {
        let builder = Bridge::demo().env(env, "1");
        let bridge = if flag {
            builder.flag("--fork-with-claude-flags")
        } else {
            builder
        }
        .start();
        let (key, fork) = edit_after_three_turns(&bridge);
        let text = content(&fork);
        assert_ne!(session_of(&fork), key);
        assert!(text.contains("User: A1\nAssistant: A1"), "{env}: {text}");
        assert!(!text.contains("A3") && !text.contains("User: A2"), "{text}");
        assert!(text.ends_with("A2-edited"), "{text}");
        let log = bridge.log();
        assert!(log.contains(why), "{env}: {log}");
        assert_eq!(
            log.contains("--fork-session --resume-session-at"),
            flag && env != "SYNTHESIS_SIM_NO_MESSAGE_UUIDS",
            "{env}"
        );
    }
}
