//! The channel hub: where channel servers dial in (WebSocket over loopback TCP) and where the
//! Stop hook reports a turn end (a Unix socket in the state dir).
//!
//! WebSocket: `127.0.0.1:<channel_ws_port>/bridge` (loopback only, whatever `host` says). The
//! acceptor thread `ws-accept` never does I/O with a peer; each connection's handshake and
//! first frame run on a short-lived `ws-handshake` thread, non-blocking, under one overall
//! deadline (`HANDSHAKE_DEADLINE` for the HTTP upgrade and the first frame together, however
//! the peer trickles its bytes), with a small message limit (`FIRST_FRAME_LIMIT`) until the
//! token is checked. Connections in handshake hold one of `handshake_slots` slots (more
//! than `max_processes` needs); when all are taken, the oldest handshake is cut to make room
//! (`Handshakes`), so a flood of idle connections can delay a channel's hello by at most one
//! of its retries, never lock it out. The first frame must be a
//! `hello` carrying the per-start token and naming a live spawn; the session worker then owns
//! the socket, with the normal `protocol::ws_config()` limits.
//!
//! Stop hook: `turn_end` frames are accepted only on the Unix socket (`hook_socket`), one JSON
//! line per connection, answered `ok` or `refused: …`. The peer is authenticated with
//! `SO_PEERCRED`: same uid, and its pid must be a descendant of the live claude process of
//! the spawn it names (`Registry::agent_pid`). A `turn_end` over TCP is refused: anyone who
//! can read a claude's environment knows its spawn id and the token, but only claude's own
//! process tree connects from under claude.
//!
//! Stop hook over HTTP (`type: "http"`, src/hook_http.rs): a connection to the WebSocket
//! port whose first byte is `P` is read as one `POST /hook/stop` under the same deadline; it
//! must carry the token and name the live spawn of its session (`X-Synthesis-*` headers that
//! claude fills from its own environment), and the client end of the connection must be held
//! by that spawn's claude itself (found through /proc: the peer check of the Unix socket,
//! for a request claude makes itself). Answered 204, or 403 with why.
//!
//! Refusals are logged at most once a second (`RefusalLog`), with a count of those not logged.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::{Message, WebSocket};

use crate::logging::printable;
use crate::poll::{WakeReceiver, wait_readable};
use crate::protocol::{ChannelFrame, MAX_FRAME_BYTES, WS_PATH};
use crate::session::Registry;

/// How long a peer has, from its connection, to finish the handshake and send its first
/// frame (one deadline for both, not per read).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Largest first message (and frame) before the token is checked: a `hello` is ~300 bytes.
pub const FIRST_FRAME_LIMIT: usize = 64 << 10;
/// Fewest connections in handshake at once (see `handshake_slots`).
const MIN_HANDSHAKE_SLOTS: usize = 64;
/// Ancestors of a Stop hook's pid searched for its claude (claude → shell → hook is two).
const MAX_HOOK_DEPTH: usize = 8;
/// Refusal lines logged at most this often; the others are counted.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(1);
/// File name of the Stop hook's socket in the state dir.
pub const HOOK_SOCKET_NAME: &str = "hub.sock";
/// Longest Unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Connections in handshake at once: every process may be starting at the same time, with
/// room to spare for a flood of strangers (each slot is a small thread).
pub fn handshake_slots(max_processes: usize) -> usize {
    MIN_HANDSHAKE_SLOTS.max(4 * max_processes)
}

pub struct Hub {
    pub registry: Arc<Registry>,
    pub token: String,
    slots: usize,
    refusals: RefusalLog,
}

impl Hub {
    pub fn new(registry: Arc<Registry>, token: String, max_processes: usize) -> Hub {
        Hub {
            registry,
            token,
            slots: handshake_slots(max_processes),
            refusals: RefusalLog::default(),
        }
    }
}

/// The Stop hook's listening socket; dropping it removes its file.
pub struct HookSocket {
    listener: UnixListener,
    /// What the hook is told (`SYNTHESIS_HOOK_SOCKET`): a path, or `@name` (abstract).
    pub address: String,
    file: Option<PathBuf>,
}

impl Drop for HookSocket {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Binds the Stop hook's socket: `<state_dir>/hub.sock` (the state dir is 0700), or an
/// abstract socket when that path is too long for `sun_path` (the peer check is what
/// authenticates either way).
pub fn bind_hook_socket(state_dir: &Path) -> io::Result<HookSocket> {
    let path = state_dir.join(HOOK_SOCKET_NAME);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        // A file left by an earlier run (a crash, SIGKILL) would make bind fail.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        return Ok(HookSocket {
            listener,
            address: path.to_string_lossy().into_owned(),
            file: Some(path),
        });
    }
    use std::os::linux::net::SocketAddrExt;
    let name = format!("synthesis-bridge-hub-{}", uuid::Uuid::new_v4().simple());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    Ok(HookSocket {
        listener: UnixListener::bind_addr(&addr)?,
        address: format!("@{name}"),
        file: None,
    })
}

/// Connects to a hook socket address as `bind_hook_socket` made it.
pub fn connect_hook_socket(address: &str) -> io::Result<UnixStream> {
    match address.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            UnixStream::connect_addr(&addr)
        }
        None => UnixStream::connect(address),
    }
}

/// The WebSocket connections in handshake, oldest first, each with a second handle (a dup)
/// through which it can be cut.
struct Handshakes {
    max: usize,
    open: Mutex<(u64, std::collections::VecDeque<(u64, TcpStream)>)>,
}

/// One connection's place in `Handshakes`; dropping it gives the place back (also when the
/// thread that was to own it could not be started).
struct HandshakeSlot {
    handshakes: Arc<Handshakes>,
    id: u64,
}

impl Handshakes {
    fn new(max: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            max,
            open: Mutex::new((0, std::collections::VecDeque::new())),
        })
    }

    /// Admits `stream`; when every slot is taken, first cuts the oldest handshake (shutdown
    /// wakes its thread, which then ends) and returns its peer. Err if no handle could be made.
    fn admit(
        self: &Arc<Self>,
        stream: &TcpStream,
    ) -> io::Result<(HandshakeSlot, Option<std::net::SocketAddr>)> {
        let handle = stream.try_clone()?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = None;
        if open.1.len() >= self.max
            && let Some((_, oldest)) = open.1.pop_front()
        {
            let _ = oldest.shutdown(std::net::Shutdown::Both);
            evicted = Some(
                oldest
                    .peer_addr()
                    .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
            );
        }
        open.0 += 1;
        let id = open.0;
        open.1.push_back((id, handle));
        let slot = HandshakeSlot {
            handshakes: self.clone(),
            id,
        };
        Ok((slot, evicted))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).1.len()
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut open = self
            .handshakes
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.1.retain(|(id, _)| *id != self.id);
    }
}

/// A taken Stop-hook slot; dropping it gives the slot back.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn try_take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs the acceptor (WebSocket and Stop-hook sockets) until `stop` is set (and the waker
/// fired).
pub fn spawn_acceptor(
    listener: TcpListener,
    hook_socket: HookSocket,
    hub: Arc<Hub>,
    stop: Arc<AtomicBool>,
    mut wake: WakeReceiver,
) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    hook_socket.listener.set_nonblocking(true)?;
    let pending = Handshakes::new(hub.slots);
    let pending_hooks = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("ws-accept".into())
        .spawn(move || {
            let fds = [
                listener.as_raw_fd(),
                hook_socket.listener.as_raw_fd(),
                wake.fd(),
            ];
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = wait_readable(&fds, Some(Duration::from_secs(5))) {
                    log::error!("ws-accept: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                wake.drain();
                crate::fault::panic_point();
                while let Ok((stream, peer)) = listener.accept() {
                    let slot = match pending.admit(&stream) {
                        Ok((slot, None)) => slot,
                        Ok((slot, Some(oldest))) => {
                            hub.refusals.refused(&format!(
                                "all {} handshake slots are taken; cut the oldest handshake (from {oldest}) for a connection from {peer}",
                                hub.slots
                            ));
                            slot
                        }
                        Err(e) => {
                            hub.refusals
                                .refused(&format!("connection from {peer} dropped: {e}"));
                            continue;
                        }
                    };
                    let hub = hub.clone();
                    let spawned = std::thread::Builder::new()
                        .name("ws-handshake".into())
                        .stack_size(128 * 1024)
                        .spawn(move || {
                            hub.handle_connection(stream, slot);
                        });
                    if let Err(e) = spawned {
                        log::error!("ws-accept: cannot start a handshake thread: {e}");
                    }
                }
                while let Ok((stream, _)) = hook_socket.listener.accept() {
                    let Some(slot) = Slot::try_take(&pending_hooks, hub.slots) else {
                        hub.refusals
                            .refused("all Stop-hook slots are taken; dropped a connection");
                        continue;
                    };
                    let hub = hub.clone();
                    let spawned = std::thread::Builder::new()
                        .name("hook-turn-end".into())
                        .stack_size(128 * 1024)
                        .spawn(move || {
                            let _slot = slot;
                            hub.handle_hook(stream);
                        });
                    if let Err(e) = spawned {
                        log::error!("ws-accept: cannot start a Stop-hook thread: {e}");
                    }
                }
            }
            drop(hook_socket);
        })
}

/// The first byte the peer sent (peeked, not consumed), waiting for it until `deadline`.
fn first_byte(stream: &TcpStream, fd: RawFd, deadline: Instant) -> io::Result<u8> {
    let mut byte = [0u8; 1];
    loop {
        match stream.peek(&mut byte) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
            Ok(_) => return Ok(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_until_readable(fd, deadline)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits until `fd` is readable or `deadline` passes (then `TimedOut`).
fn wait_until_readable(fd: RawFd, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no hello within {HANDSHAKE_DEADLINE:?} of connecting"),
        ));
    }
    wait_readable(&[fd], Some(left)).map(|_| ())
}

/// The WebSocket settings until the token is checked: the normal ones with a small limit.
fn first_frame_config() -> tungstenite::protocol::WebSocketConfig {
    crate::protocol::ws_config()
        .max_message_size(Some(FIRST_FRAME_LIMIT))
        .max_frame_size(Some(FIRST_FRAME_LIMIT))
}

impl Hub {
    /// `slot` is held until the peer is authenticated: until then the connection may be cut
    /// to make room for a newer one.
    fn handle_connection(&self, stream: TcpStream, slot: HandshakeSlot) {
        let deadline = Instant::now() + HANDSHAKE_DEADLINE;
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let fd = stream.as_raw_fd();
        if let Err(e) = stream
            .set_nonblocking(true)
            .and_then(|_| stream.set_nodelay(true))
        {
            return self
                .refusals
                .refused(&format!("connection from {peer} unusable: {e}"));
        }
        match first_byte(&stream, fd, deadline) {
            Ok(b'P') => return self.handle_http_hook(stream, fd, deadline, &peer),
            Ok(_) => {}
            Err(e) => {
                return self
                    .refusals
                    .refused(&format!("connection from {peer}: {e}"));
            }
        }
        let mut attempt =
            tungstenite::accept_hdr_with_config(stream, check_path, Some(first_frame_config()));
        let mut ws = loop {
            match attempt {
                Ok(ws) => break ws,
                Err(HandshakeError::Interrupted(mid)) => {
                    if let Err(e) = wait_until_readable(fd, deadline) {
                        return self
                            .refusals
                            .refused(&format!("handshake with {peer} failed: {e}"));
                    }
                    attempt = mid.handshake();
                }
                Err(HandshakeError::Failure(e)) => {
                    let why = e.to_string();
                    return self.refusals.refused(&format!(
                        "handshake with {peer} failed: {}",
                        printable(&why)
                    ));
                }
            }
        };
        let first = loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    break serde_json::from_str::<ChannelFrame>(text.as_str())
                        .map_err(|e| e.to_string());
                }
                Ok(other) => {
                    break Err(format!(
                        "first frame must be a JSON text frame, got {}",
                        frame_kind(&other)
                    ));
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = wait_until_readable(fd, deadline) {
                        break Err(e.to_string());
                    }
                }
                Err(e) => break Err(format!("no first frame: {e}")),
            }
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
                    return self.refuse(
                        ws,
                        &format!("hello from {peer} (pid {pid}) with a wrong token"),
                    );
                }
                // Out of the table first, so it can no longer be cut as the oldest handshake.
                drop(slot);
                // Authenticated: the normal limits, and the socket as the worker expects it
                // (blocking; the worker sets its own read timeouts and mode).
                ws.set_config(|c| *c = crate::protocol::ws_config());
                let prepared = ws
                    .get_ref()
                    .set_nonblocking(false)
                    .and_then(|_| ws.get_ref().set_read_timeout(None))
                    .and_then(|_| ws.get_ref().set_write_timeout(Some(HANDSHAKE_DEADLINE)));
                if let Err(e) = prepared {
                    return self.refuse(ws, &format!("socket of pid {pid} unusable: {e}"));
                }
                match self.registry.attach(&session, &spawn_id, Box::new(ws)) {
                    Ok(()) => {
                        log::debug!("ws: channel of pid {pid} attached to session {session:?}")
                    }
                    Err((mut link, why)) => {
                        self.refusals
                            .refused(&format!("hello from pid {pid} refused: {why}"));
                        link.close();
                    }
                }
            }
            Ok(ChannelFrame::TurnEnd { session, .. }) => self.refuse(
                ws,
                &format!(
                    "turn_end for session {session:?} from {peer} over TCP: the Stop hook reports on the hub's Unix socket ({})",
                    crate::protocol::env::HOOK_SOCKET
                ),
            ),
            Ok(other) => self.refuse(
                ws,
                &format!("first frame from {peer} must be hello, got {other:?}"),
            ),
            Err(why) => self.refuse(
                ws,
                &format!("connection from {peer}: {}", printable(&why)),
            ),
        }
    }

    /// One Stop hook over HTTP: read, authenticate, deliver the turn end, answer.
    fn handle_http_hook(&self, mut stream: TcpStream, fd: RawFd, deadline: Instant, peer: &str) {
        use crate::hook_http;
        let request = hook_http::read_request(&mut stream, deadline, MAX_FRAME_BYTES, |d| {
            wait_until_readable(fd, d)
        });
        let result = match request {
            Err(e) => Err(format!("Stop hook request from {peer} unreadable: {e}")),
            Ok(request) => self.http_turn_end(&request, &stream),
        };
        let response: &[u8] = match &result {
            Ok(()) => b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            Err(why) => {
                self.refusals
                    .refused(&format!("Stop hook over HTTP from {peer}: {why}"));
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = stream.write_all(response);
    }

    fn http_turn_end(
        &self,
        request: &crate::hook_http::HookRequest,
        stream: &TcpStream,
    ) -> Result<(), String> {
        use crate::hook_http::{self, SESSION_HEADER, SPAWN_HEADER, TOKEN_HEADER};
        if request.method != "POST" || request.path != hook_http::PATH {
            return Err(format!(
                "{} {} is not POST {}",
                printable(&request.method),
                printable(&request.path),
                hook_http::PATH
            ));
        }
        let header = |name: &str| request.headers.get(name).map(String::as_str).unwrap_or("");
        if !constant_time_eq(header(TOKEN_HEADER).as_bytes(), self.token.as_bytes()) {
            return Err("wrong or missing token".into());
        }
        let session =
            hook_http::decode_session(header(SESSION_HEADER)).ok_or("malformed session header")?;
        let spawn_id = header(SPAWN_HEADER);
        let claude = self.registry.agent_pid(&session, spawn_id).ok_or_else(|| {
            format!("session {session:?}: spawn {spawn_id:?} is not its live process")
        })?;
        let ends = stream
            .peer_addr()
            .and_then(|peer| Ok((peer, stream.local_addr()?)));
        let held = ends.ok().and_then(|(peer, local)| {
            let inode = hook_http::client_socket_inode(peer, local)?;
            Some(hook_http::process_holds_socket(claude, inode))
        });
        if held != Some(true) {
            return Err(format!(
                "turn_end for session {session:?} over HTTP from a connection that session's claude (pid {claude}) does not hold"
            ));
        }
        let input: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let last_assistant_message = input
            .get("last_assistant_message")
            .and_then(serde_json::Value::as_str)
            .map(String::from);
        let turn = input
            .get("transcript_path")
            .and_then(serde_json::Value::as_str)
            .and_then(hook_http::turn_from_transcript);
        log::debug!("Stop hook over HTTP: session {session:?} ended turn {turn:?}");
        self.registry
            .turn_end(&session, spawn_id, turn, last_assistant_message)
    }

    fn refuse<S: Read + Write>(&self, ws: WebSocket<S>, why: &str) {
        self.refusals.refused(why);
        close(ws);
    }

    /// One Stop-hook report: check the peer, read one JSON line, deliver, answer.
    fn handle_hook(&self, stream: UnixStream) {
        let answer = self.hook_turn_end(&stream);
        let line = match &answer {
            Ok(()) => "ok\n".to_string(),
            Err(why) => {
                self.refusals.refused(&format!("Stop hook: {why}"));
                format!("refused: {why}\n")
            }
        };
        let mut stream = stream;
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = stream.write_all(line.as_bytes());
    }

    fn hook_turn_end(&self, stream: &UnixStream) -> Result<(), String> {
        let deadline = Instant::now() + HANDSHAKE_DEADLINE;
        let (peer_pid, peer_uid) =
            peer_credentials(stream).map_err(|e| format!("no peer credentials: {e}"))?;
        // SAFETY: geteuid has no preconditions.
        let own_uid = unsafe { libc::geteuid() };
        if peer_uid != own_uid {
            return Err(format!(
                "pid {peer_pid} runs as uid {peer_uid}, not {own_uid}"
            ));
        }
        let line = read_line_until(stream, deadline, MAX_FRAME_BYTES)
            .map_err(|e| format!("pid {peer_pid}: {e}"))?;
        let Ok(ChannelFrame::TurnEnd {
            session,
            turn,
            last_assistant_message,
            spawn_id,
            token,
        }) = serde_json::from_str::<ChannelFrame>(&line)
        else {
            return Err(format!("pid {peer_pid} did not send a turn_end frame"));
        };
        if !constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
            return Err(format!("turn_end from pid {peer_pid} with a wrong token"));
        }
        let claude = self
            .registry
            .agent_pid(&session, &spawn_id)
            .ok_or_else(|| {
                format!("turn_end from pid {peer_pid} for session {session:?}: spawn {spawn_id:?} is not its live process")
            })?;
        if !is_descendant(peer_pid, claude) {
            return Err(format!(
                "turn_end for session {session:?} from pid {peer_pid}, which is not run by that session's claude (pid {claude})"
            ));
        }
        self.registry
            .turn_end(&session, &spawn_id, turn, last_assistant_message)
    }
}

/// Reads one `\n`-terminated line (or up to EOF) of at most `limit` bytes before `deadline`.
fn read_line_until(stream: &UnixStream, deadline: Instant, limit: usize) -> io::Result<String> {
    let mut reader = BufReader::with_capacity(16 * 1024, stream).take(limit as u64 + 1);
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete frame within {HANDSHAKE_DEADLINE:?}"),
            ));
        }
        reader.get_ref().get_ref().set_read_timeout(Some(left))?;
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        let (used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..used]);
        reader.consume(used);
        if done {
            break;
        }
    }
    if line.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame over {limit} bytes"),
        ));
    }
    String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `SO_PEERCRED` of a connected Unix socket: (pid, uid) of the process that connected.
fn peer_credentials(stream: &UnixStream) -> io::Result<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid as u32, cred.uid))
}

/// The parent pid of `pid`, from `/proc/<pid>/stat` (field 4, after the parenthesised name,
/// which may itself hold spaces and parentheses).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `ancestor` is a parent, grandparent, … (up to `MAX_HOOK_DEPTH` levels) of `pid`.
fn is_descendant(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..MAX_HOOK_DEPTH {
        match parent_pid(current) {
            Some(parent) if parent == ancestor => return true,
            Some(parent) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

/// Refusal lines, at most one per `REFUSAL_LOG_PERIOD`; the next line logged says how many
/// were left out. Every refusal is counted in `synthesis_channel_refused_total`.
#[derive(Default)]
struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    fn refused(&self, why: &str) {
        crate::metrics::METRICS.channel_refused.inc();
        let now = Instant::now();
        let suppressed = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state
                .0
                .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_PERIOD)
            {
                state.1 += 1;
                drop(state);
                log::debug!("ws: {why}; connection closed");
                return;
            }
            state.0 = Some(now);
            std::mem::take(&mut state.1)
        };
        if suppressed > 0 {
            log::warn!(
                "ws: {why}; connection closed (and {suppressed} more refusals not logged since the last such line)"
            );
        } else {
            log::warn!("ws: {why}; connection closed");
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

fn close<S: Read + Write>(mut ws: WebSocket<S>) {
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
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn ancestry_is_read_from_proc() {
        let me = std::process::id();
        let parent = parent_pid(me).unwrap();
        assert!(is_descendant(me, parent));
        assert!(!is_descendant(parent, me));
        assert!(!is_descendant(me, me));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(is_descendant(child.id(), me));
        assert!(is_descendant(child.id(), parent));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_full_handshake_table_cuts_its_oldest_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let accepted: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
        let table = Handshakes::new(2);
        let (first, none) = table.admit(&accepted[0]).unwrap();
        let (_second, _) = table.admit(&accepted[1]).unwrap();
        assert!(none.is_none());
        let (_third, evicted) = table.admit(&accepted[2]).unwrap();
        assert_eq!(evicted, Some(clients[0].local_addr().unwrap()));
        assert_eq!(table.len(), 2);
        let mut byte = [0u8; 1];
        clients[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!((&clients[0]).read(&mut byte).unwrap(), 0, "cut: EOF");
        drop(first); // already gone from the table: nothing else is removed
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn slots_are_bounded_and_given_back_on_drop() {
        assert_eq!(handshake_slots(1), 64);
        assert_eq!(handshake_slots(32), 128);
        let count = Arc::new(AtomicUsize::new(0));
        let a = Slot::try_take(&count, 2).unwrap();
        let _b = Slot::try_take(&count, 2).unwrap();
        assert!(Slot::try_take(&count, 2).is_none());
        drop(a);
        assert!(Slot::try_take(&count, 2).is_some());
    }

    #[test]
    fn hook_socket_peer_credentials_are_the_connecting_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (pid, uid) = peer_credentials(&a).unwrap();
        assert_eq!(pid, std::process::id());
        // SAFETY: geteuid has no preconditions.
        assert_eq!(uid, unsafe { libc::geteuid() });
    }
}
