//! The bridge's own cost, measured on the real binary (`serve --demo`, the simulated Claude
//! answering at once) against baselines measured in the same run. `scripts/bench.sh` runs it;
//! BENCHMARKS.md records the figures and how to read them.
//!
//! B1 warm-turn latency (one session, sequential; streaming and not), with the bridge's own
//!    inbound/outbound time read from its /metrics histograms;
//! B2 throughput with 1, 8, 64, 256 sessions in a closed loop, and the bridge's CPU per turn;
//! B3 memory: RSS at start, with 64 and 256 idle sessions, one channel process; vs an idle
//!    Node.js HTTP + WebSocket server;
//! B4 start-up: process start → /healthz, and spawn → ready for the simulated Claude.
//! Baselines: a minimal loopback HTTP server in this process answering the same SSE at once.
//!
//! Every reply is checked (it must be the turn's own nonce); any error or crossed reply is
//! reported and makes the run exit non-zero. `--quick` is the few-second CI smoke.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_synthesis-bridge");

struct Settings {
    runs: usize,
    b1_turns: usize,
    b2_seconds: f64,
    levels: Vec<usize>,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = if quick {
        Settings {
            runs: 1,
            b1_turns: 50,
            b2_seconds: 0.5,
            levels: vec![1, 8],
        }
    } else {
        Settings {
            runs: 5,
            b1_turns: 300,
            b2_seconds: 3.0,
            levels: vec![1, 8, 64, 256],
        }
    };
    let problems = Arc::new(AtomicU64::new(0));
    println!(
        "# synthesis-bridge benchmark ({})",
        if quick { "quick smoke" } else { "full" }
    );
    println!(
        "machine: {} cores, {}, kernel {}",
        num_cpus(),
        mem_total(),
        kernel()
    );
    println!("runs per figure: {} (medians)\n", settings.runs);

    // `--only B3` (etc.) runs one part.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.to_ascii_uppercase());
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let floor = Floor::start();
    if part("B1") {
        b1(&settings, &floor, &problems);
    }
    if part("B2") {
        b2(&settings, &floor, &problems);
    }
    if part("B3") && (!quick || only.is_some()) {
        b3(&problems);
    }
    if part("B4") {
        b4(&settings);
    }
    let bad = problems.load(Ordering::SeqCst);
    if bad > 0 {
        println!("\nFAILED: {bad} errors or crossed replies");
        std::process::exit(1);
    }
    println!("\nall replies correct");
}

// ---------------------------------------------------------------- the bridge under test

struct Bridge {
    child: Child,
    http: SocketAddr,
    dir: std::path::PathBuf,
}

impl Bridge {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> Bridge {
        let dir =
            std::env::temp_dir().join(format!("sb-bench-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--demo",
                "--port",
                "0",
                "--channel-ws-port",
                "0",
                "--channel-hello-delay",
                "20ms",
            ])
            .args(["--max-processes", "300", "--max-concurrent-turns", "300"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--workspace")
            .arg(&dir)
            .args(extra)
            .env("HOME", dir.join("home"))
            .env("CLAUDE_CONFIG_DIR", dir.join("home/.claude"))
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the bridge");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .expect("listening line")
            .parse()
            .unwrap();
        Bridge { child, http, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

// ---------------------------------------------------------------- the baseline server

/// A minimal loopback HTTP server that answers every request at once with a fixed SSE body
/// shaped like the bridge's (the floor for the same client).
struct Floor {
    addr: SocketAddr,
}

impl Floor {
    fn start() -> Floor {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || floor_connection(stream));
            }
        });
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
        let text =
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_string();
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

// ---------------------------------------------------------------- the client

/// One keep-alive connection driving one session.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    session: String,
}

impl Client {
    fn connect(addr: SocketAddr, session: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            session: session.to_string(),
        }
    }

    /// One turn; Ok(latency) when the reply is exactly `text`.
    fn turn(&mut self, text: &str, stream: bool) -> Result<Duration, String> {
        let body =
            serde_json::json!({"stream": stream, "messages": [{"role": "user", "content": text}]})
                .to_string();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nX-Session-Key: {}\r\nContent-Length: {}\r\n\r\n{body}",
            self.session,
            body.len()
        );
        let started = Instant::now();
        self.writer
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let (status, body) = read_response(&mut self.reader)?;
        let elapsed = started.elapsed();
        let reply = if stream {
            sse_text(&body)
        } else {
            json_text(&body)
        };
        if status != 200 || reply != text {
            return Err(format!("status {status}, reply {reply:?} for {text:?}"));
        }
        Ok(elapsed)
    }
}

fn read_response(reader: &mut BufReader<TcpStream>) -> Result<(u16, Vec<u8>), String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {line:?}"))?;
    let (mut len, mut chunked) = (0usize, false);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).map_err(|e| e.to_string())?;
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if h.starts_with("transfer-encoding:") && h.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).map_err(|e| e.to_string())?;
            let n = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| format!("bad chunk {size:?}"))?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(len, 0);
        reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    }
    Ok((status, body))
}

fn sse_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(|c| c.as_str())
                .map(String::from)
        })
        .collect()
}

fn json_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/choices/0/message/content")
                .and_then(|c| c.as_str())
                .map(String::from)
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- figures

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn ms(d: f64) -> String {
    format!("{:.3} ms", d * 1e3)
}

/// Cumulative bucket counts of a histogram in /metrics: (upper bound s, count).
fn histogram(addr: SocketAddr, name: &str) -> Vec<(f64, u64)> {
    let mut c = Client::connect(addr, "-");
    c.writer
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: b\r\n\r\n")
        .unwrap();
    let (_, body) = read_response(&mut c.reader).unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// The q-quantile of the observations between two snapshots, interpolated inside a bucket.
fn histogram_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .zip(before)
        .map(|((b, a), (_, z))| (*b, a - z))
        .collect();
    let total = counts.last().map_or(0, |c| c.1);
    if total == 0 {
        return f64::NAN;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for (bound, cumulative) in counts {
        if cumulative as f64 >= rank {
            let upper = if bound.is_finite() {
                bound
            } else {
                lower.0 * 2.0
            };
            let in_bucket = (cumulative - lower.1).max(1) as f64;
            return lower.0 + (upper - lower.0) * ((rank - lower.1 as f64) / in_bucket);
        }
        lower = (bound, cumulative);
    }
    f64::NAN
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- B1

fn b1(s: &Settings, floor: &Floor, problems: &AtomicU64) {
    println!(
        "## B1 warm turn, one session, sequential ({} turns per run)\n",
        s.b1_turns
    );
    println!(
        "| mode | client p50 | client p99 | floor p50 | p50 ratio | bridge inbound p50 / p99 | bridge outbound p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (stream, think) in [
        (true, Duration::ZERO),
        (false, Duration::ZERO),
        (true, Duration::from_millis(20)),
    ] {
        let mut figures: Vec<[f64; 7]> = Vec::new();
        for run in 0..s.runs {
            let bridge = Bridge::start(&[], &[]);
            let mut client = Client::connect(bridge.http, "b1");
            client.turn("warm-up", stream).unwrap();
            let (inbound0, outbound0) = (
                histogram(bridge.http, "synthesis_bridge_inbound_seconds"),
                histogram(bridge.http, "synthesis_bridge_outbound_seconds"),
            );
            let mut latencies = Vec::with_capacity(s.b1_turns);
            for i in 0..s.b1_turns {
                std::thread::sleep(think);
                match client.turn(&format!("b1-{run}-{i}"), stream) {
                    Ok(d) => latencies.push(d),
                    Err(e) => {
                        problems.fetch_add(1, Ordering::SeqCst);
                        eprintln!("B1: {e}");
                    }
                }
            }
            let (inbound1, outbound1) = (
                histogram(bridge.http, "synthesis_bridge_inbound_seconds"),
                histogram(bridge.http, "synthesis_bridge_outbound_seconds"),
            );
            latencies.sort();
            let mut floor_client = Client::connect(floor.addr, "b1");
            let mut floor_latencies: Vec<Duration> = (0..s.b1_turns)
                .map(|i| floor_client.turn(&format!("f{i}"), true).unwrap())
                .collect();
            floor_latencies.sort();
            figures.push([
                percentile(&latencies, 0.5).as_secs_f64(),
                percentile(&latencies, 0.99).as_secs_f64(),
                percentile(&floor_latencies, 0.5).as_secs_f64(),
                histogram_quantile(&inbound0, &inbound1, 0.5),
                histogram_quantile(&inbound0, &inbound1, 0.99),
                histogram_quantile(&outbound0, &outbound1, 0.5),
                histogram_quantile(&outbound0, &outbound1, 0.99),
            ]);
        }
        let m = |i: usize| median(figures.iter().map(|f| f[i]).collect());
        println!(
            "| {} | {} | {} | {} | {:.1}× | {} / {} | {} / {} |",
            match (stream, think.is_zero()) {
                (true, true) => "stream, back to back",
                (false, true) => "non-stream, back to back",
                _ => "stream, 20 ms between turns",
            },
            ms(m(0)),
            ms(m(1)),
            ms(m(2)),
            m(0) / m(2),
            ms(m(3)),
            ms(m(4)),
            ms(m(5)),
            ms(m(6))
        );
    }
    println!();
}

// ---------------------------------------------------------------- B2

/// Closed loop: `sessions` clients, each sending its next turn as soon as the last returned.
fn closed_loop(
    addr: SocketAddr,
    sessions: usize,
    seconds: f64,
    tag: &str,
    problems: &AtomicU64,
) -> (usize, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..sessions)
        .map(|i| {
            let (stop, tag) = (stop.clone(), tag.to_string());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut client = Client::connect(addr, &format!("s{i}"));
                    let (mut latencies, mut errors, mut n) = (Vec::new(), 0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        match client.turn(&format!("{tag}-{i}-{n}"), true) {
                            Ok(d) => latencies.push(d),
                            Err(e) => {
                                errors += 1;
                                if errors < 3 {
                                    eprintln!("B2: {e}");
                                }
                            }
                        }
                        n += 1;
                    }
                    (latencies, errors)
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for w in workers {
        let (latencies, errors) = w.join().unwrap();
        problems.fetch_add(errors, Ordering::SeqCst);
        all.extend(latencies);
    }
    all.sort();
    (all.len(), all)
}

/// One turn on each of `sessions` sessions, all at once.
fn warm_up(addr: SocketAddr, sessions: usize, problems: &AtomicU64) {
    let handles: Vec<_> = (0..sessions)
        .map(|i| {
            std::thread::spawn(move || {
                Client::connect(addr, &format!("s{i}")).turn(&format!("warm-{i}"), true)
            })
        })
        .collect();
    for h in handles {
        if let Err(e) = h.join().unwrap() {
            problems.fetch_add(1, Ordering::SeqCst);
            eprintln!("warm-up: {e}");
        }
    }
}

/// CPU seconds of every process below `root` (the simulated Claudes, channel servers, hooks).
fn descendants_cpu(root: u32) -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| is_descendant(*pid, root))
        .map(cpu_seconds)
        .sum()
}

fn b2(s: &Settings, floor: &Floor, problems: &AtomicU64) {
    println!(
        "## B2 throughput, closed loop, {} s per run\n",
        s.b2_seconds
    );
    println!(
        "| sessions | turns/s | p50 | p99 | floor turns/s | ratio to floor | bridge CPU s per 1000 turns | simulated-Claude side CPU s per 1000 turns |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let bridge = Bridge::start(&[], &[]);
    for &sessions in &s.levels {
        // Warm every session first: each has its claude (simulated) up and ready.
        warm_up(bridge.http, sessions, problems);
        let mut figures: Vec<[f64; 6]> = Vec::new();
        for run in 0..s.runs {
            let (cpu0, others0) = (cpu_seconds(bridge.pid()), descendants_cpu(bridge.pid()));
            let (turns, latencies) = closed_loop(
                bridge.http,
                sessions,
                s.b2_seconds,
                &format!("b2-{sessions}-{run}"),
                problems,
            );
            let cpu = cpu_seconds(bridge.pid()) - cpu0;
            // Live processes only: the per-turn hook processes have exited and are not counted.
            let others = descendants_cpu(bridge.pid()) - others0;
            let (floor_turns, _) = closed_loop(
                floor.addr,
                sessions,
                s.b2_seconds.min(1.0),
                "floor",
                problems,
            );
            figures.push([
                turns as f64 / s.b2_seconds,
                percentile(&latencies, 0.5).as_secs_f64(),
                percentile(&latencies, 0.99).as_secs_f64(),
                floor_turns as f64 / s.b2_seconds.min(1.0),
                cpu / turns.max(1) as f64 * 1000.0,
                others / turns.max(1) as f64 * 1000.0,
            ]);
        }
        let m = |i: usize| median(figures.iter().map(|f| f[i]).collect());
        println!(
            "| {sessions} | {:.0} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} |",
            m(0),
            ms(m(1)),
            ms(m(2)),
            m(3),
            m(0) / m(3),
            m(4),
            m(5)
        );
    }
    println!();
}

// ---------------------------------------------------------------- B3

fn b3(problems: &AtomicU64) {
    println!("## B3 memory (RSS)\n");
    let bridge = Bridge::start(&[], &[]);
    std::thread::sleep(Duration::from_millis(200));
    let at_start = rss_kib(bridge.pid());
    let warm = |n: usize| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let addr = bridge.http;
                std::thread::spawn(move || {
                    Client::connect(addr, &format!("m{i}")).turn("hello", true)
                })
            })
            .collect();
        for h in handles {
            if h.join().unwrap().is_err() {
                problems.fetch_add(1, Ordering::SeqCst);
            }
        }
        // Idle means idle: tiny_http keeps a finished connection's thread for 5 s before it
        // exits, so measure after that.
        std::thread::sleep(Duration::from_millis(5500));
        rss_kib(bridge.pid())
    };
    let with_64 = warm(64);
    let with_256 = warm(256);
    let channel = children_named(bridge.pid(), "channel")
        .first()
        .map(|p| rss_kib(*p))
        .unwrap_or(0);
    let node = node_baseline_rss();
    println!("| what | RSS |");
    println!("|---|---|");
    println!("| bridge at start | {} KiB |", at_start);
    println!("| bridge with 64 idle sessions | {} KiB |", with_64);
    println!("| bridge with 256 idle sessions | {} KiB |", with_256);
    println!(
        "| growth per idle session (64 → 256) | {:.1} KiB |",
        (with_256 as f64 - with_64 as f64) / 192.0
    );
    println!(
        "| one `synthesis-bridge channel` process | {} KiB |",
        channel
    );
    match node {
        Ok(node) => println!(
            "| baseline: idle Node.js HTTP + WebSocket server | {node} KiB (bridge at start = {:.2}× of it) |",
            at_start as f64 / node as f64
        ),
        Err(e) => {
            println!("| baseline: idle Node.js HTTP + WebSocket server | not measured: {e} |")
        }
    }
    println!();
}

fn children_named(root: u32, arg: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) == Some(&arg.as_bytes())
            && args
                .first()
                .is_some_and(|a| a.ends_with(b"synthesis-bridge"))
            && is_descendant(pid, root)
        {
            found.push(pid);
        }
    }
    found
}

fn is_descendant(mut pid: u32, root: u32) -> bool {
    for _ in 0..16 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(ppid) = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            return false;
        };
        if ppid == root {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        pid = ppid;
    }
    false
}

/// RSS of a minimal Node.js HTTP + WebSocket server (the `ws` package) after it listens.
fn node_baseline_rss() -> Result<u64, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-node");
    if !dir.join("node_modules/ws").is_dir() {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ok = Command::new("npm")
            .args(["install", "--prefix"])
            .arg(&dir)
            .args(["--no-audit", "--no-fund", "--loglevel=error", "ws@8"])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("npm: {e}"))?;
        if !ok.success() {
            return Err("npm install ws failed".into());
        }
    }
    let script = "const http=require('http');const {WebSocketServer}=require('ws');\
        const s=http.createServer((q,r)=>{r.end('ok')});new WebSocketServer({server:s});\
        s.listen(0,'127.0.0.1',()=>console.log('listening'));";
    let mut child = Command::new("node")
        .arg("-e")
        .arg(script)
        .env("NODE_PATH", dir.join("node_modules"))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("node: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Ok(rss)
}

// ---------------------------------------------------------------- B4

fn b4(s: &Settings) {
    println!("## B4 start-up\n");
    let mut to_health = Vec::new();
    let mut to_ready = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..s.runs {
        // Started without waiting for the listening line: /healthz is polled, as a supervisor would.
        let dir =
            std::env::temp_dir().join(format!("sb-bench-b4-{}-{}", std::process::id(), next_id()));
        let port = {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let t = Instant::now();
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--demo",
                "--port",
                &port.to_string(),
                "--channel-hello-delay",
                "20ms",
                "--state-dir",
            ])
            .arg(dir.join("state"))
            .arg("--workspace")
            .arg(std::env::temp_dir())
            .env("RUST_LOG", "warn")
            .env("SYNTHESIS_SIM_DIALOG_DELAY_MS", "0")
            .env("HOME", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        loop {
            if let Ok(mut c) = TcpStream::connect(addr) {
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut out = String::new();
                let _ = c.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            if t.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        to_health.push(t.elapsed().as_secs_f64());
        let mut client = Client::connect(addr, "b4");
        let first = client
            .turn("first", true)
            .map(|d| d.as_secs_f64())
            .unwrap_or(f64::NAN);
        let second = client
            .turn("second", true)
            .map(|d| d.as_secs_f64())
            .unwrap_or(f64::NAN);
        to_ready.push(first - second);
        warm.push(second);
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("| what | median |");
    println!("|---|---|");
    println!(
        "| process start → /healthz answers | {} |",
        ms(median(to_health))
    );
    println!(
        "| spawn → ready for the simulated Claude (first turn − warm turn; sim dialog delay 0, channel hello delay 20 ms) | {} |",
        ms(median(to_ready))
    );
    println!(
        "| warm turn in the same runs, for scale | {} |",
        ms(median(warm))
    );
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or("? memory".into(), |kib| {
            format!("{:.1} GiB memory", kib as f64 / 1048576.0)
        })
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}
