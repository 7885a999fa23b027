//! The Stop hook as an HTTP request (`type: "http"` hooks, Claude Code ≥ 2.1.328): claude
//! POSTs its hook input JSON to `http://127.0.0.1:<channel_ws_port>/hook/stop` on the hub's
//! loopback listener, so a turn end costs no process (the `command` hook costs `sh` plus
//! `synthesis-bridge hook stop` per turn).
//!
//! Owns the hook's settings JSON (headers filled by claude from its environment, named in
//! `allowedEnvVars`), reading one request from a non-blocking socket under a deadline with
//! bounded sizes, the turn id found in the tail of the transcript the input names, and who
//! holds the client end of a loopback connection (its socket inode by an exact `sock_diag`
//! netlink lookup, then `/proc/<pid>/fd`; reading `/proc/net/tcp` instead measured 12 ms of
//! CPU per turn with the bench's thousands of sockets). The hub (src/hub.rs) authenticates the request: the bridge token, the
//! spawn id of that session's live process, and that process itself holding the connection
//! (the token and spawn id can be read from claude's environment by any process of the same
//! user; its sockets cannot be borrowed).

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Instant;

use crate::protocol::env;

/// The hook's path on the hub's listener.
pub const PATH: &str = "/hook/stop";
/// Header carrying the bridge token (`$SYNTHESIS_BRIDGE_TOKEN`).
pub const TOKEN_HEADER: &str = "x-synthesis-token";
/// Header carrying the spawn id (`$SYNTHESIS_SPAWN_ID`).
pub const SPAWN_HEADER: &str = "x-synthesis-spawn";
/// Header carrying the session key, percent-encoded (`$SYNTHESIS_HOOK_SESSION`).
pub const SESSION_HEADER: &str = "x-synthesis-session";
/// Largest request head.
const MAX_HEAD: usize = 16 << 10;
/// Largest part of a transcript read for the last turn id.
const TRANSCRIPT_TAIL: u64 = 256 << 10;

/// The `--settings` JSON that makes claude POST its Stop hook input to the hub at `port`.
pub fn stop_hook_settings(port: u16) -> String {
    serde_json::json!({
        "hooks": {"Stop": [{"hooks": [{
            "type": "http",
            "url": format!("http://127.0.0.1:{port}{PATH}"),
            "headers": {
                "X-Synthesis-Token": format!("${}", env::BRIDGE_TOKEN),
                "X-Synthesis-Spawn": format!("${}", env::SPAWN_ID),
                "X-Synthesis-Session": format!("${}", env::HOOK_SESSION),
            },
            "allowedEnvVars": [env::BRIDGE_TOKEN, env::SPAWN_ID, env::HOOK_SESSION],
            "timeout": 10
        }]}]}
    })
    .to_string()
}

/// A session key as a header value: bytes outside `A-Za-z0-9-_.~` percent-encoded.
pub fn encode_session(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses `encode_session`; None for a malformed escape or text that is not UTF-8.
pub fn decode_session(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One HTTP request as the hook sends it.
#[derive(Debug)]
pub struct HookRequest {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads one request from the non-blocking `stream`, waiting with `wait` (which fails once
/// the deadline passed); the head is at most 16 KiB and the body at most `max_body` bytes.
pub fn read_request(
    stream: &mut TcpStream,
    deadline: Instant,
    max_body: usize,
    wait: impl Fn(Instant) -> io::Result<()>,
) -> io::Result<HookRequest> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let mut head_end = None;
    let mut need = usize::MAX;
    loop {
        if head_end.is_none()
            && let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n")
        {
            head_end = Some(at + 4);
            let head = String::from_utf8_lossy(&data[..at]).into_owned();
            let length = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse::<usize>())
                .transpose()
                .map_err(|_| invalid("bad content-length"))?
                .unwrap_or(0);
            if length > max_body {
                return Err(invalid("body too large"));
            }
            need = at + 4 + length;
        }
        if head_end.is_none() && data.len() > MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        if data.len() >= need {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(invalid("connection closed mid-request")),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(deadline)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head_end = head_end.expect("set before need");
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, path) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HookRequest {
        method,
        path,
        headers,
        body: data[head_end..need].to_vec(),
    })
}

/// The last turn id in the transcript the hook input names, read from its last 256 KiB.
/// Only a `.jsonl` file under claude's `projects` dir is read (the input comes from a
/// request, authenticated, but a path is not something to follow blindly).
pub fn turn_from_transcript(path: &str) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    // Both resolved (symlinks, `..`), so a config dir reached through a symlink still matches
    // and nothing outside it does.
    let path = Path::new(path).canonicalize().ok()?;
    let projects = crate::agent::claude_config_dir()
        .join("projects")
        .canonicalize()
        .ok()?;
    if !path.starts_with(&projects) || path.extension()?.to_str()? != "jsonl" {
        return None;
    }
    let mut file = std::fs::File::open(&path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TRANSCRIPT_TAIL)))
        .ok()?;
    let mut tail = Vec::new();
    file.take(TRANSCRIPT_TAIL).read_to_end(&mut tail).ok()?;
    crate::hook::last_turn_id(&String::from_utf8_lossy(&tail))
}

/// The inode of the TCP socket at `client` connected to `server` (the client end of a
/// connection to us): one exact `SOCK_DIAG_BY_FAMILY` request over netlink (bounded by a
/// 1 s receive timeout). None when the kernel does not say.
pub fn client_socket_inode(client: SocketAddr, server: SocketAddr) -> Option<u64> {
    const NETLINK_SOCK_DIAG: libc::c_int = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct NlMsgHdr {
        len: u32,
        kind: u16,
        flags: u16,
        seq: u32,
        pid: u32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct SockId {
        sport: u16,
        dport: u16,
        src: [u32; 4],
        dst: [u32; 4],
        interface: u32,
        cookie: [u32; 2],
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Request {
        header: NlMsgHdr,
        family: u8,
        protocol: u8,
        ext: u8,
        pad: u8,
        states: u32,
        id: SockId,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Answer {
        header: NlMsgHdr,
        family: u8,
        state: u8,
        timer: u8,
        retrans: u8,
        id: SockId,
        expires: u32,
        rqueue: u32,
        wqueue: u32,
        uid: u32,
        inode: u32,
    }
    let words = |addr: &SocketAddr| -> [u32; 4] {
        let mut out = [0u32; 4];
        match addr.ip() {
            std::net::IpAddr::V4(ip) => out[0] = u32::from_ne_bytes(ip.octets()),
            std::net::IpAddr::V6(ip) => {
                for (i, chunk) in ip.octets().chunks(4).enumerate() {
                    out[i] = u32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
                }
            }
        }
        out
    };
    let family = if client.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let request = Request {
        header: NlMsgHdr {
            len: std::mem::size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST,
            seq: 1,
            pid: 0,
        },
        family: family as u8,
        protocol: libc::IPPROTO_TCP as u8,
        states: u32::MAX,
        id: SockId {
            sport: client.port().to_be(),
            dport: server.port().to_be(),
            src: words(&client),
            dst: words(&server),
            interface: 0,
            cookie: [u32::MAX, u32::MAX],
        },
        ..Default::default()
    };
    // SAFETY: plain socket calls on a descriptor this function owns (closed by OwnedFd);
    // the buffers are repr(C) structs of the sizes passed.
    unsafe {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        );
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let sent = libc::send(
            fd.as_raw_fd(),
            (&request as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        );
        if sent != std::mem::size_of::<Request>() as isize {
            return None;
        }
        let mut answer = Answer::default();
        let got = libc::recv(
            fd.as_raw_fd(),
            (&mut answer as *mut Answer).cast(),
            std::mem::size_of::<Answer>(),
            0,
        );
        if got < std::mem::size_of::<Answer>() as isize
            || answer.header.kind != SOCK_DIAG_BY_FAMILY
            || answer.inode == 0
        {
            return None;
        }
        Some(u64::from(answer.inode))
    }
}

/// Whether process `pid` has socket `inode` open.
pub fn process_holds_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_survive_a_header() {
        for key in ["plain", "a b\r\nX-Evil: 1", "ü/%~é", ""] {
            let encoded = encode_session(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b))
            );
            assert_eq!(decode_session(&encoded).as_deref(), Some(key));
        }
        assert_eq!(decode_session("%zz"), None);
        assert_eq!(decode_session("%4"), None);
    }

    #[test]
    fn settings_name_every_header_variable_in_allowed_env_vars() {
        let settings: serde_json::Value = serde_json::from_str(&stop_hook_settings(4321)).unwrap();
        let hook = &settings["hooks"]["Stop"][0]["hooks"][0];
        assert_eq!(hook["type"], "http");
        assert_eq!(hook["url"], "http://127.0.0.1:4321/hook/stop");
        let allowed: Vec<&str> = hook["allowedEnvVars"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for value in hook["headers"].as_object().unwrap().values() {
            let var = value.as_str().unwrap().trim_start_matches('$');
            assert!(allowed.contains(&var), "{var}");
        }
    }

    #[test]
    fn the_client_end_of_a_loopback_connection_is_found_in_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let inode =
            client_socket_inode(client.local_addr().unwrap(), listener.local_addr().unwrap())
                .expect("sock_diag finds the client socket");
        assert!(process_holds_socket(std::process::id(), inode));
        assert!(!process_holds_socket(1, inode) || std::process::id() == 1);
    }

    fn read_from(bytes: &[u8], max_body: usize) -> io::Result<HookRequest> {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(bytes).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_millis(300);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&server);
        read_request(&mut server, deadline, max_body, |d| {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline"));
            }
            crate::poll::wait_readable(&[fd], Some(left)).map(|_| ())
        })
    }

    #[test]
    fn a_hook_request_is_read_whole_and_oversized_ones_are_refused() {
        let body = r#"{"hook_event_name":"Stop"}"#;
        let request = format!(
            "POST /hook/stop HTTP/1.1\r\nHost: x\r\nX-Synthesis-Spawn: s1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let got = read_from(request.as_bytes(), 1024).unwrap();
        assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", PATH));
        assert_eq!(
            got.headers.get(SPAWN_HEADER).map(String::as_str),
            Some("s1")
        );
        assert_eq!(got.body, body.as_bytes());
        let too_big = "POST /hook/stop HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
        assert!(read_from(too_big.as_bytes(), 1024).is_err());
        let endless_head = format!("POST /hook/stop HTTP/1.1\r\nX: {}", "a".repeat(20_000));
        assert!(read_from(endless_head.as_bytes(), 1024).is_err());
        // A request cut short waits only until the deadline.
        let started = Instant::now();
        assert!(read_from(b"POST /hook/stop HTTP/1.1\r\n", 1024).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn only_transcripts_under_projects_are_read() {
        assert_eq!(turn_from_transcript("/etc/passwd"), None);
        assert_eq!(turn_from_transcript("relative.jsonl"), None);
    }
}
