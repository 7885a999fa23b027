//! Shared helpers for the black-box tests: start the real `synthesis-bridge` binary on free
//! ports, talk HTTP to it with a tiny std-only client (so the bytes on the wire are what we
//! assert), and make sure every process a test started is gone when it ends, even on panic.
#![allow(dead_code)]

pub mod fake_anthropic;

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_synthesis-bridge");

/// Every process a test starts carries this variable with a per-test value; cleanup and
/// leak checks find them by it in /proc, even after they were re-parented.
pub const MARKER_VAR: &str = "SYNTHESIS_TEST_MARKER";

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sb-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Bridge {
    pub child: Option<Child>,
    pub http: SocketAddr,
    pub ws: SocketAddr,
    pub marker: String,
    pub dir: TempDir,
    pub stderr_log: PathBuf,
}

pub struct BridgeBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<TempDir>,
    marker: Option<String>,
    nofile: Option<u64>,
}

impl Bridge {
    /// A bridge in front of a real `claude` binary (see tests/real_claude.rs).
    pub fn real(claude: &str) -> BridgeBuilder {
        BridgeBuilder {
            // No standby unless a test asks (`.arg("--standby", "1")`): tests find a session's
            // process by its key, which a standby's process does not carry.
            args: vec![
                "--claude-bin".into(),
                claude.into(),
                "--standby".into(),
                "0".into(),
            ],
            env: vec![],
            dir: None,
            marker: None,
            nofile: None,
        }
    }

    /// A demo bridge (simulated Claude) with fast test timings.
    pub fn demo() -> BridgeBuilder {
        BridgeBuilder {
            args: vec![
                "--demo".into(),
                "--channel-hello-delay".into(),
                "20ms".into(),
                "--standby".into(),
                "0".into(),
            ],
            env: vec![],
            dir: None,
            marker: None,
            nofile: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Pids of live processes started by this test's bridge (the bridge itself excluded).
    pub fn descendants(&self) -> Vec<u32> {
        let own = self.child.as_ref().map(|c| c.id());
        marked_pids(&self.marker)
            .into_iter()
            .filter(|p| Some(*p) != own)
            .collect()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), libc::SIGTERM);
        let code = wait_child(&mut child, Duration::from_secs(20)).and_then(|s| s.code());
        if code.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        code
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_marked(&self.marker);
        if std::thread::panicking() {
            eprintln!("--- bridge log ---\n{}", self.log());
        }
    }
}

impl BridgeBuilder {
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }
    /// A flag without a value (`--demo`-style booleans).
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.into());
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Reuse a state/workspace directory (to restart a bridge on the same state).
    pub fn dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }
    pub fn marker(mut self, marker: &str) -> Self {
        self.marker = Some(marker.into());
        self
    }
    /// Starts the bridge with RLIMIT_NOFILE (soft and hard) lowered to `limit`.
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    pub fn start(self) -> Bridge {
        let dir = self.dir.unwrap_or_else(|| TempDir::new("bridge"));
        let marker = self
            .marker
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let state = dir.path().join("state");
        let workspace = dir.path().join("workspace");
        let home = dir.path().join("home");
        for d in [&state, &workspace, &home] {
            std::fs::create_dir_all(d).unwrap();
        }
        let stderr_log = dir
            .path()
            .join(format!("bridge-{}.log", uuid::Uuid::new_v4().simple()));
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(["--port", "0", "--channel-ws-port", "0"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--workspace")
            .arg(&workspace)
            .args(&self.args)
            .env(MARKER_VAR, &marker)
            .env("HOME", &home)
            .env("CLAUDE_CONFIG_DIR", home.join(".claude"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        if let Some(limit) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("start synthesis-bridge");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut bridge = Bridge {
            child: Some(child),
            http: "0.0.0.0:0".parse().unwrap(),
            ws: "0.0.0.0:0".parse().unwrap(),
            marker,
            dir,
            stderr_log,
        };
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let mut parts = line.split_whitespace();
        assert_eq!(
            parts.next(),
            Some("listening"),
            "bridge did not start; log:\n{}",
            bridge.log()
        );
        bridge.http = parts
            .next()
            .unwrap()
            .trim_start_matches("http=")
            .parse()
            .unwrap();
        bridge.ws = parts
            .next()
            .unwrap()
            .trim_start_matches("ws=")
            .parse()
            .unwrap();
        bridge
    }
}

/// Pids of processes whose environment holds `MARKER_VAR=<marker>`.
pub fn marked_pids(marker: &str) -> Vec<u32> {
    let needle = format!("{MARKER_VAR}={marker}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            // Zombies still have an environ; only count processes that have not exited.
            let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = state
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            if !zombie {
                pids.push(pid);
            }
        }
    }
    pids
}

pub fn kill_marked(marker: &str) {
    for pid in marked_pids(marker) {
        signal(pid, libc::SIGKILL);
    }
}

pub fn signal(pid: u32, sig: i32) {
    unsafe { libc::kill(pid as i32, sig) };
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    wait_until(limit, || child.try_wait().ok().flatten())
}

/// Polls `check` until it returns Some or `limit` passes. For conditions that have no
/// event to wait on (another process's state); each probe is cheap.
pub fn wait_until<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- a tiny HTTP client

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw request bytes and reads one whole response (chunked or sized).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, |_| {})
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    raw_request(addr, build_request(method, path, headers, body).as_bytes())
}

pub fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}

/// Reads a response; `on_chunk` sees each HTTP chunk of a chunked body as it arrives.
pub fn read_response(
    reader: &mut BufReader<TcpStream>,
    mut on_chunk: impl FnMut(&[u8]),
) -> HttpResponse {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"))
        .parse()
        .unwrap();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).unwrap();
            let size = usize::from_str_radix(size_line.trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_line:?} (status {status}, headers {headers:?}, body so far {:?})", String::from_utf8_lossy(&body)));
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            assert_eq!(&chunk[size..], b"\r\n", "chunk not terminated by CRLF");
            chunk.truncate(size);
            if size == 0 {
                break;
            }
            on_chunk(&chunk);
            body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = headers.get("content-length") {
        body.resize(len.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// A chat request body with one user message.
pub fn chat_body(text: &str, stream: bool) -> String {
    serde_json::json!({
        "model": "claude-code",
        "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
    })
    .to_string()
}

/// Streams a chat turn for `session`; returns the response and the `data:` payloads in order,
/// each with the time it arrived.
pub fn stream_chat(
    addr: SocketAddr,
    session: &str,
    text: &str,
) -> (HttpResponse, Vec<(Instant, String)>) {
    stream_body(addr, session, &chat_body(text, true))
}

/// Posts any JSON body to /v1/chat/completions for `session` and collects its SSE events.
pub fn stream_body(
    addr: SocketAddr,
    session: &str,
    body: &str,
) -> (HttpResponse, Vec<(Instant, String)>) {
    let req = build_request(
        "POST",
        "/v1/chat/completions",
        &[
            ("X-Session-Key", session),
            ("Content-Type", "application/json"),
        ],
        body,
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut events = Vec::new();
    let mut pending = String::new();
    let response = read_response(&mut reader, |chunk| {
        pending.push_str(&String::from_utf8_lossy(chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    events.push((Instant::now(), data.to_string()));
                }
            }
        }
    });
    (response, events)
}

/// The concatenated `delta.content` of a stream's chunks.
pub fn streamed_text(events: &[(Instant, String)]) -> String {
    events
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect()
}

/// Pids of the agent processes (not channel servers or hooks) serving session `key`.
pub fn agent_pids(marker: &str, key: &str) -> Vec<u32> {
    let session_var = format!("SYNTHESIS_OPENCLAW_SESSION={key}");
    let candidates: Vec<u32> = marked_pids(marker)
        .into_iter()
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            environ
                .split(|b| *b == 0)
                .any(|v| v == session_var.as_bytes())
                && args.get(1) == Some(&&b"sim-agent"[..])
        })
        .collect();
    // A child the agent forks (its Stop hook) shows the agent's command line until it execs.
    candidates
        .iter()
        .copied()
        .filter(|pid| parent_pid(*pid).is_none_or(|ppid| !candidates.contains(&ppid)))
        .collect()
}

/// The parent of `pid`, from /proc/<pid>/stat (None once it is gone).
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Starts a streamed turn on another thread; join it for (response, events).
pub fn stream_chat_in_background(
    addr: SocketAddr,
    session: &str,
    text: &str,
) -> std::thread::JoinHandle<(HttpResponse, Vec<(Instant, String)>)> {
    let (session, text) = (session.to_string(), text.to_string());
    std::thread::spawn(move || stream_chat(addr, &session, &text))
}

/// The `error` object of a stream that ended in one.
pub fn stream_error(events: &[(Instant, String)]) -> Option<Value> {
    events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v.get("error").cloned())
}

impl Bridge {
    /// Waits until the bridge log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log().contains(needle).then_some(())).is_some()
    }
}

/// The API key the fake Anthropic API takes (tests/support/fake_anthropic.rs).
pub const FAKE_KEY: &str = "sk-ant-fake-0123456789abcdefghijKLMNOPQRSTUVWXYZ";

/// What a user would have after logging in, onboarding and trusting the workspace once
/// (docs/CLAUDE_CODE.md §9.7): `<dir>/home/.claude/.claude.json` for `<dir>/workspace`, with `api_key`
/// approved and the channels flags cached (`tengu_harbor_permissions`: the permission relay).
pub fn seed_claude_config(dir: &TempDir, api_key: &str) {
    let workspace = dir.path().join("workspace");
    let config = dir.path().join("home/.claude");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::create_dir_all(&config).unwrap();
    let workspace = workspace.canonicalize().unwrap();
    let seed = serde_json::json!({
        "numStartups": 1,
        "hasCompletedOnboarding": true,
        "lastOnboardingVersion": "2.1.331",
        "projects": {workspace.to_str().unwrap(): {"hasTrustDialogAccepted": true, "allowedTools": [], "hasCompletedProjectOnboarding": true}},
        "customApiKeyResponses": {"approved": [&api_key[api_key.len() - 20..]], "rejected": []},
        "cachedGrowthBookFeatures": {"tengu_harbor": true, "tengu_harbor_permissions": true},
    });
    std::fs::write(
        config.join(".claude.json"),
        serde_json::to_vec_pretty(&seed).unwrap(),
    )
    .unwrap();
}

// ---------------------------------------------------------------- front door helpers

/// Resident set size of a process in KiB (VmRSS), None once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Opens up to `n` connections that send nothing (each connect bounded to 1 s; failures
/// skipped), for connection floods.
pub fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .collect()
}

/// Time a `GET /healthz` takes to be answered 200 on a fresh connection.
pub fn healthz_latency(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let response = request(addr, "GET", "/healthz", &[], "");
    assert_eq!(response.status, 200, "{}", response.text());
    started.elapsed()
}

/// A stand-in `claude` in `dir` that only answers `--version` (any other call prints the
/// same and exits): for what the bridge decides from the version alone.
pub fn fake_claude(dir: &TempDir, version: &str) -> String {
    let path = dir.path().join("claude");
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho '{version} (Claude Code)'\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// Posts a non-streamed chat completion (`body`) with extra `headers`.
pub fn post_chat(bridge: &Bridge, headers: &[(&str, &str)], body: &Value) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    request(
        bridge.http,
        "POST",
        "/v1/chat/completions",
        &all,
        &body.to_string(),
    )
}

/// A chat completion body of these `messages`.
pub fn chat(messages: Value) -> Value {
    serde_json::json!({"model": "claude-code", "messages": messages})
}

/// The reply text of a 200 non-streamed chat completion.
pub fn content(response: &HttpResponse) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The session key the bridge answered with (`X-Session-Key`).
pub fn session_of(response: &HttpResponse) -> String {
    response
        .headers
        .get("x-session-key")
        .cloned()
        .unwrap_or_else(|| panic!("no X-Session-Key in {:?}", response.headers))
}
