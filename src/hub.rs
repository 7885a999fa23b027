//! The WebSocket hub: where channel servers (and the Stop hook) dial in.
//!
//! Listens on `127.0.0.1:<channel_ws_port>/bridge` (loopback only, whatever `host` says: only
//! our own children connect here). The acceptor thread `ws-accept` never does I/O with a
//! peer; each connection's handshake and first frame run on a short-lived `ws-handshake`
//! thread with read/write timeouts, so a silent peer cannot stall anyone. The first frame
//! must carry the per-start token: a `hello` is handed to the session whose live spawn it
//! names (the session worker then owns the socket); a `turn_end` is delivered and closed.
//! Anything else is refused, closed and logged.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::{Message, WebSocket};

use crate::poll::{WakeReceiver, wait_readable};
use crate::protocol::{ChannelFrame, WS_PATH};
use crate::session::Registry;

/// How long a peer has to finish the handshake and send its first frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in handshake at once; more are dropped (only local children connect here).
const MAX_PENDING_HANDSHAKES: usize = 64;

pub struct Hub {
    pub registry: Arc<Registry>,
    pub token: String,
}

/// Runs the acceptor until `stop` is set (and the waker fired).
pub fn spawn_acceptor(
    listener: TcpListener,
    hub: Arc<Hub>,
    stop: Arc<AtomicBool>,
    mut wake: WakeReceiver,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let pending = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("ws-accept".into()).spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = wait_readable(&[listener.as_raw_fd(), wake.fd()], Some(Duration::from_secs(5))) {
                log::error!("ws-accept: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            wake.drain();
            while let Ok((stream, peer)) = listener.accept() {
                if pending.load(Ordering::SeqCst) >= MAX_PENDING_HANDSHAKES {
                    log::warn!("ws-accept: too many pending handshakes; dropping connection from {peer}");
                    continue;
                }
                pending.fetch_add(1, Ordering::SeqCst);
                let (hub, pending) = (hub.clone(), pending.clone());
                let spawned = std::thread::Builder::new().name("ws-handshake".into()).stack_size(128 * 1024).spawn(
                    move || {
                        hub.handle_connection(stream);
                        pending.fetch_sub(1, Ordering::SeqCst);
                    },
                );
                if let Err(e) = spawned {
                    log::error!("ws-accept: cannot start a handshake thread: {e}");
                }
            }
        }
    })
}

impl Hub {
    fn handle_connection(&self, stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let prepared = stream
            .set_nonblocking(false)
            .and_then(|_| stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
            .and_then(|_| stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
            .and_then(|_| stream.set_nodelay(true));
        if let Err(e) = prepared {
            log::warn!("ws: connection from {peer} unusable: {e}");
            return;
        }
        let mut ws = match tungstenite::accept_hdr_with_config(
            stream,
            check_path,
            Some(crate::protocol::ws_config()),
        ) {
            Ok(ws) => ws,
            Err(e) => {
                log::warn!("ws: handshake with {peer} failed: {e}");
                return;
            }
        };
        let first = match ws.read() {
            Ok(Message::Text(text)) => {
                serde_json::from_str::<ChannelFrame>(text.as_str()).map_err(|e| e.to_string())
            }
            Ok(other) => Err(format!(
                "first frame must be a JSON text frame, got {}",
                frame_kind(&other)
            )),
            Err(e) => Err(format!("no first frame: {e}")),
        };
        match first {
            Ok(ChannelFrame::Hello {
                session,
                spawn_id,
                token,
                pid,
                ..
            }) => {
                if !constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
                    return refuse(
                        ws,
                        &format!("hello from {peer} (pid {pid}) with a wrong token"),
                    );
                }
                // The worker reads with its own timeouts from here on.
                let _ = ws.get_ref().set_read_timeout(None);
                match self.registry.attach(&session, &spawn_id, Box::new(ws)) {
                    Ok(()) => {
                        log::debug!("ws: channel of pid {pid} attached to session {session:?}")
                    }
                    Err((mut link, why)) => {
                        crate::metrics::METRICS.channel_refused.inc();
                        log::warn!("ws: hello from pid {pid} refused: {why}; connection closed");
                        link.close();
                    }
                }
            }
            Ok(ChannelFrame::TurnEnd {
                session,
                spawn_id,
                token,
                turn,
                last_assistant_message,
            }) => {
                if !constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
                    return refuse(ws, &format!("turn_end from {peer} with a wrong token"));
                }
                match self
                    .registry
                    .turn_end(&session, &spawn_id, turn, last_assistant_message)
                {
                    Ok(()) => close(ws),
                    Err(why) => refuse(ws, &format!("turn_end refused: {why}")),
                }
            }
            Ok(other) => refuse(
                ws,
                &format!("first frame from {peer} must be hello, got {other:?}"),
            ),
            Err(why) => refuse(ws, &format!("connection from {peer}: {why}")),
        }
    }
}

/// Handshake callback: only `WS_PATH` has a WebSocket endpoint.
#[allow(clippy::result_large_err)] // the error type is tungstenite's
fn check_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == WS_PATH {
        Ok(response)
    } else {
        let mut refusal =
            ErrorResponse::new(Some(format!("no WebSocket endpoint here; use {WS_PATH}")));
        *refusal.status_mut() = tungstenite::http::StatusCode::NOT_FOUND;
        Err(refusal)
    }
}

fn frame_kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) | Message::Pong(_) => "ping/pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "raw frame",
    }
}

fn refuse(ws: WebSocket<TcpStream>, why: &str) {
    crate::metrics::METRICS.channel_refused.inc();
    log::warn!("ws: {why}; connection closed");
    close(ws);
}

fn close(mut ws: WebSocket<TcpStream>) {
    let _ = ws.close(None);
    let _ = ws.flush();
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
    }
}
