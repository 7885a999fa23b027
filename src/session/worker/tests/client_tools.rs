//! Client tool calls through the fake agent and channel: calls suspend the turn and end its
//! response with them, results resume the same Claude turn on the answering request, and a
//! result for an id nobody waits for, a missing result, or tool results to a session with no
//! suspended turn end somewhere defined.

use super::*;
use crate::session::pending::{Answer, PendingKind};
use crate::session::turn::ClientTools;

fn submit_results(h: &Harness, key: &str, results: &[(&str, &str, bool)]) -> SubmittedTurn {
    let answers = results
        .iter()
        .map(|(call_id, content, is_error)| Answer::ToolResult {
            call_id: (*call_id).into(),
            content: (*content).into(),
            is_error: *is_error,
        })
        .collect();
    h.submit_answers(key, "", answers)
}

fn calls_of(turn: &SubmittedTurn) -> Vec<(String, String)> {
    loop {
        match next_event(turn) {
            TurnEvent::Text { .. } => {}
            TurnEvent::Suspended(pending) => {
                return pending
                    .into_iter()
                    .map(|p| match p.kind {
                        PendingKind::ClientToolCall { call_id, name, .. } => {
                            assert_eq!(p.id, call_id, "a call's pending id is its call id");
                            (call_id, name)
                        }
                        other => panic!("expected a client tool call, got {other:?}"),
                    })
                    .collect();
            }
            other => panic!("turn {} ended with {other:?}; calls were expected", turn.id),
        }
    }
}

#[test]
fn parallel_calls_suspend_the_turn_and_their_results_resume_it() {
    let h = Harness::new(Options {
        max_concurrent_turns: 1,
        ..Options::default()
    });
    let (first, _spawned, end) = h.start("a", "weather and time", Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    end.client_tool_calls(
        &first.id,
        &[("call1", "get_weather"), ("call2", "get_time")],
    );
    assert_eq!(
        calls_of(&first),
        vec![
            ("call1".to_string(), "get_weather".to_string()),
            ("call2".to_string(), "get_time".to_string())
        ]
    );
    h.wait_phase("a", PhaseName::Suspended);

    // An unknown id fails that request; the calls stay open.
    let wrong = submit_results(&h, "a", &[("call9", "x", false)]);
    match next_event(&wrong) {
        TurnEvent::Failed(f) => {
            assert_eq!(f.kind, FailureKind::BadAnswer);
            assert!(
                f.message.contains("call9") && f.message.contains("call1"),
                "{}",
                f.message
            );
        }
        other => panic!("expected a 400-class failure, got {other:?}"),
    }
    h.wait_phase("a", PhaseName::Suspended);

    let answer = submit_results(
        &h,
        "a",
        &[("call1", "sunny", false), ("call2", "boom", true)],
    );
    let mut sent = vec![end.next_verdict(), end.next_verdict()];
    sent.sort();
    assert_eq!(
        sent,
        vec![
            ("call1".to_string(), "sunny".to_string()),
            ("call2".to_string(), "error: boom".to_string())
        ]
    );
    h.wait_phase("a", PhaseName::Busy);
    end.reply(&first.id, "sunny, time unknown", true);
    assert_eq!(expect_done(&answer), "sunny, time unknown");
}

#[test]
fn a_missing_result_fails_the_call_after_the_turns_tool_result_timeout() {
    let h = Harness::new(Options::default());
    let turn = h
        .registry
        .submit(
            "a",
            NewTurn {
                content: "weather".into(),
                received: Instant::now(),
                history: None,
                fingerprint: None,
                marked_retry: false,
                system_prompt: None,
                answers: Vec::new(),
                client_tools: Some(std::sync::Arc::new(ClientTools {
                    tools: Vec::new(),
                    result_timeout: Duration::from_millis(200),
                })),
                fork_from: None,
            },
            Duration::ZERO,
        )
        .expect("admitted");
    let spawned = h.next_spawn();
    let end = h.attach(&spawned, Script::Silent);
    end.next_turn();
    h.wait_phase("a", PhaseName::Busy);
    end.client_tool_calls(&turn.id, &[("call1", "get_weather")]);
    assert_eq!(calls_of(&turn).len(), 1);
    let (call, text) = end.next_verdict();
    assert_eq!(call, "call1");
    assert!(
        text.starts_with("error: ") && text.contains("tool_result_timeout"),
        "{text}"
    );
    h.wait_phase("a", PhaseName::Draining);

    // The result, too late: no turn waits for it.
    let late = submit_results(&h, "a", &[("call1", "sunny", false)]);
    h.turn_end(&spawned, Some(&turn.id));
    match next_event(&late) {
        TurnEvent::Failed(f) => assert_eq!(f.kind, FailureKind::BadAnswer, "{}", f.message),
        other => panic!("expected a 400-class failure, got {other:?}"),
    }
}

fn submit_with_tools(h: &Harness, key: &str, content: &str, names: &[&str]) -> SubmittedTurn {
    let tools = names
        .iter()
        .map(|name| crate::protocol::ClientTool {
            name: (*name).into(),
            mcp_name: format!("client_{name}"),
            description: String::new(),
            parameters: serde_json::json!({"type": "object"}),
        })
        .collect();
    h.registry
        .submit(
            key,
            NewTurn {
                content: content.into(),
                received: Instant::now(),
                history: None,
                fingerprint: None,
                marked_retry: false,
                system_prompt: None,
                answers: Vec::new(),
                client_tools: Some(Arc::new(ClientTools {
                    tools,
                    result_timeout: Duration::from_secs(60),
                })),
                fork_from: None,
            },
            Duration::ZERO,
        )
        .expect("turn admitted")
}

#[test]
fn an_unchanged_tool_set_is_sent_to_the_channel_once_per_process() {
    let h = Harness::new(Options::default());
    let first = submit_with_tools(&h, "a", "one", &["get_time"]);
    let spawned = h.next_spawn();
    let end = h.attach(&spawned, Script::Echo);
    assert_eq!(expect_done(&first), "echo: one");
    assert_eq!(end.next_tool_set(), "get_time");
    h.wait_phase("a", PhaseName::Draining);
    h.turn_end(&spawned, Some(&first.id));
    h.wait_phase("a", PhaseName::Ready);

    let second = submit_with_tools(&h, "a", "two", &["get_time"]);
    assert_eq!(expect_done(&second), "echo: two");
    h.wait_phase("a", PhaseName::Draining);
    h.turn_end(&spawned, Some(&second.id));
    h.wait_phase("a", PhaseName::Ready);

    // The next tool-set frame the channel sees is the third turn's: the second sent none.
    let third = submit_with_tools(&h, "a", "three", &["get_time", "get_weather"]);
    assert_eq!(expect_done(&third), "echo: three");
    assert_eq!(end.next_tool_set(), "get_time,get_weather");
}
