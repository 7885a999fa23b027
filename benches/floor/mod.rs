//! The baseline ("floor") of benches/bridge.rs: a minimal loopback HTTP server in the bench's
//! own process that answers the same SSE (or JSON) body at once, driven by the same client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// A minimal loopback HTTP server that answers every request at once with a fixed SSE body
/// shaped like the bridge's (the floor for the same client).
pub struct Floor {
    pub addr: SocketAddr,
}

impl Floor {
    pub fn start() -> Floor {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::Builder::new()
            .name("floor-accept".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = std::thread::Builder::new()
                        .name("floor-conn".into())
                        .spawn(move || floor_connection(stream));
                }
            })
            .unwrap();
        Floor { addr }
    }
}

fn floor_connection(stream: TcpStream) {
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let text = request["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if request["stream"] == false {
            let body = serde_json::json!({"choices": [{"finish_reason": "stop", "index": 0,
                "message": {"content": text, "role": "assistant"}}], "object": "chat.completion"})
            .to_string();
            let out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if writer.write_all(out.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let events = [
            r#"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}]}"#.to_string(),
            serde_json::json!({"choices":[{"delta":{"content": text},"finish_reason":null,"index":0}]}).to_string(),
            r#"{"choices":[{"delta":{},"finish_reason":"stop","index":0}]}"#.to_string(),
            "[DONE]".to_string(),
        ];
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for e in events {
            let data = format!("data: {e}\n\n");
            out.extend_from_slice(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}
