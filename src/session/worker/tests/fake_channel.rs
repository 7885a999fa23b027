//! The fake channel of the worker tests: a `ChannelLink` over one end of a Unix socket pair,
//! and the channel server's end, whose reader thread records what the worker sent (turns,
//! verdicts, tool results, client tool sets) and answers turns by a `Script`.

use super::*;

/// The worker's end of a fake channel: JSON lines over a Unix socket.
pub(super) struct FakeLink {
    stream: UnixStream,
    pending: Vec<u8>,
}

impl ChannelLink for FakeLink {
    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn read_frames(&mut self, into: &mut Vec<ChannelFrame>) -> Result<(), String> {
        let mut buf = [0u8; 4096];
        loop {
            match (&self.stream).read(&mut buf) {
                Ok(0) => return Err("the peer closed the connection".into()),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("the connection failed: {e}")),
            }
        }
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            match serde_json::from_slice::<ChannelFrame>(&line) {
                Ok(frame) => into.push(frame),
                Err(e) => return Err(format!("bad frame: {e}")),
            }
        }
        Ok(())
    }

    fn send(&mut self, frame: &BridgeFrame) -> Result<(), String> {
        self.stream
            .set_nonblocking(false)
            .map_err(|e| e.to_string())?;
        let result = (&self.stream)
            .write_all(format!("{}\n", frame.to_json()).as_bytes())
            .map_err(|e| e.to_string());
        self.stream
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        result
    }

    fn close(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// What the fake channel server does with a turn frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Script {
    /// Replies `echo: <content>` as the final reply at once.
    Echo,
    /// Says nothing (the test replies by hand, or never).
    Silent,
    /// Replies final, but naming another turn id.
    WrongTurn,
    /// Closes the connection (the channel server died).
    Close,
}

/// The channel server's end: a reader thread applies the script; the test can also write.
pub(super) struct ChannelEnd {
    pub(super) writer: UnixStream,
    pub(super) script: Arc<Mutex<Script>>,
    /// Every turn frame the worker sent: (turn id, content).
    pub(super) turns: Receiver<(String, String)>,
    /// Every permission verdict the worker sent: (request id, behavior).
    pub(super) verdicts: Receiver<(String, String)>,
    /// The names of every client tool set the worker sent, in order.
    pub(super) tool_sets: Receiver<String>,
}

impl ChannelEnd {
    pub(super) fn set_script(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    pub(super) fn reply(&self, turn: &str, text: &str, is_final: bool) {
        let frame = ChannelFrame::Reply {
            turn: turn.into(),
            text: text.into(),
            is_final,
        };
        (&self.writer)
            .write_all(format!("{}\n", frame.to_json()).as_bytes())
            .expect("write a reply");
    }

    /// Claude asks for permission (the channel forwards its `permission_request`).
    pub(super) fn permission_request(
        &self,
        request_id: &str,
        tool_name: &str,
        input_preview: &str,
    ) {
        let frame = ChannelFrame::PermissionRequest {
            request_id: request_id.into(),
            tool_name: tool_name.into(),
            description: "a test tool call".into(),
            input_preview: input_preview.into(),
        };
        (&self.writer)
            .write_all(format!("{}\n", frame.to_json()).as_bytes())
            .expect("write a permission request");
    }

    /// Claude calls client tools (the channel forwards `client_tool_calls`): (call id, name).
    pub(super) fn client_tool_calls(&self, turn: &str, calls: &[(&str, &str)]) {
        let frame = ChannelFrame::ClientToolCalls {
            turn: turn.into(),
            calls: calls
                .iter()
                .map(|(call_id, name)| crate::protocol::ClientToolCall {
                    call_id: (*call_id).into(),
                    name: (*name).into(),
                    arguments: "{}".into(),
                })
                .collect(),
        };
        (&self.writer)
            .write_all(format!("{}\n", frame.to_json()).as_bytes())
            .expect("write client tool calls");
    }

    /// The next permission verdict the worker sent: (request id, behavior).
    pub(super) fn next_verdict(&self) -> (String, String) {
        self.verdicts
            .recv_timeout(EVENT_WAIT)
            .expect("the worker sent no verdict")
    }

    /// The names in the next client tool set the worker sent.
    pub(super) fn next_tool_set(&self) -> String {
        self.tool_sets
            .recv_timeout(EVENT_WAIT)
            .expect("the worker sent no client tool set")
    }

    /// The next turn frame the worker sent.
    pub(super) fn next_turn(&self) -> (String, String) {
        self.turns
            .recv_timeout(EVENT_WAIT)
            .expect("the worker sent no turn frame")
    }

    pub(super) fn close(self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }
}

pub(super) fn fake_channel() -> (FakeLink, ChannelEnd) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    ours.set_nonblocking(true).expect("nonblocking");
    let script = Arc::new(Mutex::new(Script::Silent));
    let (turns_tx, turns_rx) = unbounded();
    let (verdicts_tx, verdicts_rx) = unbounded();
    let (tool_sets_tx, tool_sets_rx) = unbounded();
    let writer = theirs.try_clone().expect("clone");
    let reader_script = script.clone();
    std::thread::Builder::new()
        .name("fake-channel".into())
        .spawn(move || {
            // Ends when the worker closes or drops its end (EOF) or after a bounded idle time.
            theirs
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("read timeout");
            let mut out = theirs.try_clone().expect("clone");
            let mut lines = BufReader::new(theirs);
            let mut line = String::new();
            while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
                let frame: BridgeFrame = serde_json::from_str(&line).expect("a bridge frame");
                line.clear();
                let (id, content) = match frame {
                    BridgeFrame::Turn { id, content, .. } => (id, content),
                    BridgeFrame::PermissionVerdict {
                        request_id,
                        behavior,
                    } => {
                        let _ = verdicts_tx.send((request_id, behavior));
                        continue;
                    }
                    BridgeFrame::ClientTools { tools, .. } => {
                        let names: Vec<String> = tools.into_iter().map(|t| t.name).collect();
                        let _ = tool_sets_tx.send(names.join(","));
                        continue;
                    }
                    BridgeFrame::ClientToolResult {
                        call_id,
                        content,
                        is_error,
                    } => {
                        // Recorded beside the verdicts: (call id, "error: …" or the content).
                        let shown = if is_error {
                            format!("error: {content}")
                        } else {
                            content
                        };
                        let _ = verdicts_tx.send((call_id, shown));
                        continue;
                    }
                };
                let script = *reader_script.lock().unwrap();
                let answer = |turn: &str, text: String| {
                    ChannelFrame::Reply {
                        turn: turn.into(),
                        text,
                        is_final: true,
                    }
                    .to_json()
                        + "\n"
                };
                match script {
                    Script::Echo => {
                        let _ = out.write_all(answer(&id, format!("echo: {content}")).as_bytes());
                    }
                    Script::Silent => {}
                    Script::WrongTurn => {
                        let _ = out.write_all(answer("turn-0", "not yours".into()).as_bytes());
                    }
                    Script::Close => {
                        let _ = out.shutdown(std::net::Shutdown::Both);
                    }
                }
                let _ = turns_tx.send((id, content));
            }
        })
        .expect("spawn the fake channel");
    (
        FakeLink {
            stream: ours,
            pending: Vec::new(),
        },
        ChannelEnd {
            writer,
            script,
            turns: turns_rx,
            verdicts: verdicts_rx,
            tool_sets: tool_sets_rx,
        },
    )
}
