//! The channel server's WebSocket link to the bridge (docs/ARCHITECTURE.md §7): dial with a timeout,
//! then a non-blocking socket that the poll loop in `mod.rs` reads whenever it is readable.
//!
//! Owns the socket and nothing else. It must never block without a bound: the dial has a
//! connect and a handshake timeout, and after the handshake the socket is non-blocking, so a
//! read returns `WouldBlock` instead of waiting and a write that cannot finish stays queued
//! inside tungstenite until `flush_pending`.

use crate::protocol::{BridgeFrame, ChannelFrame};
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::{Error as WsError, Message, WebSocket};

/// An open connection to the bridge's hub.
pub struct BridgeLink {
    ws: WebSocket<TcpStream>,
    /// A write could not finish; bytes wait in tungstenite's buffer.
    pending: bool,
}

/// What one drain of the socket found.
#[derive(Debug, Default)]
pub struct Inbound {
    pub frames: Vec<BridgeFrame>,
    /// The connection ended (the bridge closed it or it failed): why.
    pub closed: Option<String>,
}

/// Connects and completes the WebSocket handshake, each step bounded by `timeout`.
pub fn dial(url: &str, timeout: Duration) -> Result<BridgeLink, String> {
    let request = url
        .into_client_request()
        .map_err(|e| format!("bad bridge URL {url:?}: {e}"))?;
    let host = request
        .uri()
        .host()
        .ok_or_else(|| format!("bridge URL {url:?} has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .collect();
    let mut last_error = format!("{host}:{port} resolved to no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("connect {addr}: {e}"),
        }
    }
    let stream = stream.ok_or(last_error)?;
    let setup = |s: &TcpStream| -> io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))
    };
    setup(&stream).map_err(|e| format!("socket set-up: {e}"))?;
    let config = crate::protocol::ws_config();
    let (ws, response) =
        match tungstenite::client::client_with_config(request, stream, Some(config)) {
            Ok(ok) => ok,
            Err(HandshakeError::Failure(e)) => {
                return Err(format!("WebSocket handshake failed: {e}"));
            }
            Err(HandshakeError::Interrupted(_)) => {
                return Err(format!("WebSocket handshake timed out after {timeout:?}"));
            }
        };
    log::debug!("handshake done: HTTP {}", response.status());
    let socket = ws.get_ref();
    socket
        .set_read_timeout(None)
        .and_then(|_| socket.set_write_timeout(None))
        .map_err(|e| e.to_string())?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    Ok(BridgeLink { ws, pending: false })
}

impl BridgeLink {
    pub fn fd(&self) -> RawFd {
        self.ws.get_ref().as_raw_fd()
    }

    /// Whether bytes are waiting to be written (the poll loop then retries soon).
    pub fn has_pending(&self) -> bool {
        self.pending
    }

    /// Queues `frame` and writes as much as the socket takes now.
    pub fn send(&mut self, frame: &ChannelFrame) -> Result<(), String> {
        let result = self.ws.send(Message::text(frame.to_json()));
        self.note_write(result)
    }

    /// Writes whatever earlier sends (or automatic pongs) left queued.
    pub fn flush_pending(&mut self) -> Result<(), String> {
        let result = self.ws.flush();
        self.note_write(result)
    }

    /// A write the socket did not take at once stays in tungstenite's buffer (`pending`);
    /// `flush_pending` finishes it later.
    fn note_write(&mut self, result: Result<(), WsError>) -> Result<(), String> {
        match result {
            Ok(()) => {
                self.pending = false;
                Ok(())
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending = true;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Reads every message available now. tungstenite may hold several complete messages in
    /// its buffer after one socket read, so this loops until the socket would block.
    /// Pings are answered by tungstenite itself (the pong goes out on this read or the next
    /// flush).
    pub fn read_available(&mut self) -> Inbound {
        let mut inbound = Inbound::default();
        if let Err(why) = crate::link::read_json_frames(&mut self.ws, &mut inbound.frames) {
            inbound.closed = Some(why);
            return inbound;
        }
        // It would block: a pong queued by a ping read above goes out now, or stays
        // `pending` and the poll loop comes back soon to finish it.
        if let Err(e) = self.flush_pending() {
            inbound.closed = Some(format!("the connection failed while writing: {e}"));
        }
        inbound
    }

    /// Best-effort close handshake (the process is about to exit).
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}
