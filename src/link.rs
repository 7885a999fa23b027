//! The WebSocket between the bridge and a channel server, as both ends use it: a
//! non-blocking `WebSocket<TcpStream>` carrying one JSON frame per text message.
//!
//! `read_json_frames` is the one read loop both sides run when their poll says the socket is
//! readable (the channel server parses `BridgeFrame`s, a session worker `ChannelFrame`s).
//! `ChannelLink` is what a session worker needs from its end; the WebSocket implements it,
//! and the worker's unit tests put an in-process fake in its place.

use serde::de::DeserializeOwned;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::protocol::{BridgeFrame, ChannelFrame};

/// How long a session worker's send may block (the socket is otherwise non-blocking).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads every message the (non-blocking) socket has, parsing text messages into `into`.
/// Ok once it would block; Err with the reason when the connection closed or broke.
/// Unparseable and binary messages are logged and skipped.
pub fn read_json_frames<T: DeserializeOwned>(
    ws: &mut WebSocket<TcpStream>,
    into: &mut Vec<T>,
) -> Result<(), String> {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => match serde_json::from_str::<T>(text.as_str()) {
                Ok(frame) => into.push(frame),
                Err(e) => log::warn!(
                    "ignoring a frame that does not parse ({e}): {}",
                    crate::logging::printable(&text[..text.len().min(200)])
                ),
            },
            Ok(Message::Close(frame)) => {
                // Let tungstenite send its close reply if the socket takes it now.
                let _ = ws.flush();
                return Err(match frame {
                    Some(f) => format!("the peer closed the connection ({}: {})", f.code, f.reason),
                    None => "the peer closed the connection".to_string(),
                });
            }
            Ok(Message::Binary(bytes)) => {
                log::warn!("ignoring a binary message of {} bytes", bytes.len())
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                return Err("the connection is closed".into());
            }
            Err(e) => return Err(format!("the connection failed: {e}")),
        }
    }
}

/// A session worker's end of its channel connection.
pub trait ChannelLink: Send {
    /// Descriptor to poll for readability.
    fn fd(&self) -> RawFd;
    /// Reads every frame available without blocking; Err when the link closed or broke.
    fn read_frames(&mut self, into: &mut Vec<ChannelFrame>) -> Result<(), String>;
    /// Sends one frame, blocking for a bounded time at most.
    fn send(&mut self, frame: &BridgeFrame) -> Result<(), String>;
    /// Best-effort close.
    fn close(&mut self);
    /// Makes `read_frames` non-blocking before anything was sent (the hub hands the link over
    /// blocking; `send` leaves it non-blocking). For a standby, which waits for a turn.
    fn make_nonblocking(&mut self) -> Result<(), String> {
        Ok(())
    }
}

impl ChannelLink for WebSocket<TcpStream> {
    fn fd(&self) -> RawFd {
        self.get_ref().as_raw_fd()
    }

    fn read_frames(&mut self, into: &mut Vec<ChannelFrame>) -> Result<(), String> {
        read_json_frames(self, into)
    }

    fn send(&mut self, frame: &BridgeFrame) -> Result<(), String> {
        let stream = self.get_ref();
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let result =
            WebSocket::send(self, Message::text(frame.to_json())).map_err(|e| e.to_string());
        self.get_ref()
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        result
    }

    fn close(&mut self) {
        let _ = WebSocket::close(self, None);
        let _ = self.flush();
    }

    fn make_nonblocking(&mut self) -> Result<(), String> {
        self.get_ref()
            .set_nonblocking(true)
            .map_err(|e| e.to_string())
    }
}
