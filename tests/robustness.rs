//! Randomised robustness tests: thousands of generated inputs, most of them
//! near-misses of valid ones, thrown at every parser that reads untrusted bytes: the HTTP
//! request parser (`parse_chat_request`), the WebSocket layer with the frame parser
//! (tungstenite and `ChannelFrame`), and the channel's MCP reader (`LineBuffer` and
//! `handle_line`). Each must answer every input with a value or a clear error: no panic,
//! no hang.
//!
//! A seeded generator keeps failures reproducible. `SYNTHESIS_FUZZ_ITERATIONS` sets the
//! inputs per parser (default 10,000; `--long` runs in docs/RELIABILITY.md use 1,000,000).

use serde_json::{Value, json};
use std::io::Cursor;

use synthesis_bridge::channel::lines::{Line, LineBuffer};
use synthesis_bridge::channel::mcp::{State, handle_line};
use synthesis_bridge::http::openai::parse_chat_request;
use synthesis_bridge::protocol::ChannelFrame;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn iterations() -> usize {
    std::env::var("SYNTHESIS_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// A mutation of `seed`: flipped, inserted, deleted or duplicated bytes, truncation, or
/// pieces of other interesting text spliced in.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    const SPLICE: [&[u8]; 10] = [
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b"\\u0000",
        b"\xff\xfe",
        b"null",
        b"1e999",
        b"\"role\":\"user\"",
    ];
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.insert(at, rng.next() as u8),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 => out.truncate(at),
            4 => {
                let piece = SPLICE[rng.below(SPLICE.len())];
                out.splice(at..at, piece.iter().copied());
            }
            _ => {
                let len = rng.below(64);
                let end = (at + len).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
        }
    }
    out
}

#[test]
fn the_chat_request_parser_answers_every_input() {
    let seeds: Vec<Vec<u8>> = [
        json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}, {"role": "assistant", "content": null}, {"role": "user", "content": "b"}]}),
        json!({"messages": [{"role": "tool", "content": "r"}, {"role": "user", "content": "c"}], "user": "u", "metadata": {"session_key": "k"}}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect();
    let mut rng = Rng(0x5eed_0001);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..iterations() {
        let pick = rng.below(seeds.len());
        let input = mutate(&mut rng, &seeds[pick]);
        match parse_chat_request(&input) {
            Ok(_) => ok += 1,
            Err(error) => {
                assert_eq!(
                    error.status,
                    400,
                    "input {:?}",
                    String::from_utf8_lossy(&input)
                );
                assert!(!error.message.is_empty());
                refused += 1;
            }
        }
    }
    assert!(
        ok > 0 && refused > 0,
        "the generator must hit both outcomes ({ok} ok, {refused} refused)"
    );
}

#[test]
fn the_websocket_and_frame_parsers_answer_every_input() {
    let frames: Vec<Vec<u8>> = [
        ChannelFrame::Reply { turn: "turn-1".into(), text: "hello".into(), is_final: true }.to_json(),
        json!({"type": "hello", "session": "s", "claude_session": "c", "spawn_id": "x", "token": "t", "pid": 1, "version": "v"}).to_string(),
        json!({"type": "turn_end", "session": "s", "turn": null, "last_assistant_message": "done", "spawn_id": "x", "token": "t"}).to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..iterations() {
        let pick = rng.below(frames.len());
        let payload = mutate(&mut rng, &frames[pick]);
        // The frame parser: a typed frame or an error.
        let _ = serde_json::from_slice::<ChannelFrame>(&payload);
        // The WebSocket layer under it: a client frame (masked text) with random damage.
        let mut wire = vec![0x81u8];
        if payload.len() < 126 {
            wire.push(0x80 | payload.len() as u8);
        } else {
            wire.push(0x80 | 126);
            wire.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        let mask = (rng.next() as u32).to_be_bytes();
        wire.extend_from_slice(&mask);
        wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let wire = if rng.below(3) == 0 {
            mutate(&mut rng, &wire)
        } else {
            wire
        };
        let mut ws = tungstenite::WebSocket::from_raw_socket(
            Cursor::new(wire),
            tungstenite::protocol::Role::Server,
            Some(synthesis_bridge::protocol::ws_config()),
        );
        // Bounded: the cursor runs dry, so every read ends in a message or an error.
        for _ in 0..4 {
            match ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let _ = serde_json::from_str::<ChannelFrame>(text.as_str());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

#[test]
fn the_mcp_reader_answers_every_input() {
    let seeds: Vec<Vec<u8>> = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}}}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "reply", "arguments": {"text": "x", "final": true, "turn_id": "turn-1"}, "_meta": {"progressToken": 1}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "server/discover"}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect();
    let mut rng = Rng(0x5eed_0003);
    let mut buffer = LineBuffer::new(4096);
    let mut state = State::default();
    let mut answered = 0usize;
    for _ in 0..iterations() {
        let pick = rng.below(seeds.len());
        let mut chunk = mutate(&mut rng, &seeds[pick]);
        match rng.below(4) {
            0 => chunk.push(b'\n'),
            1 => chunk.extend(std::iter::repeat_n(b'x', 5000)), // over the line limit
            _ => chunk.extend_from_slice(b"\r\n"),
        }
        for line in buffer.push(&chunk) {
            if let Line::Text(text) = line {
                for output in handle_line(&mut state, &text) {
                    if let synthesis_bridge::channel::mcp::Output::Send(message) = output {
                        // Every answer is JSON-RPC 2.0.
                        assert_eq!(
                            message.get("jsonrpc"),
                            Some(&Value::from("2.0")),
                            "{message}"
                        );
                        answered += 1;
                    }
                }
            }
        }
    }
    assert!(answered > 0);
}
