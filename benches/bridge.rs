//! The bridge's own cost, measured on the real binary (`serve --demo`, the simulated Claude
//! answering at once) against baselines measured in the same run. `scripts/bench.sh` runs it;
//! BENCHMARKS.md records the figures and how to read them.
//!
//! B1 warm-turn latency (one session, sequential; streaming and not), with the bridge's own
//!    inbound/outbound time read from its /metrics histograms (percentiles interpolated
//!    inside the 1-2-5 buckets);
//! B2 throughput with 1, 8, 64, 256 sessions in a closed loop, and CPU per turn (the bridge,
//!    its simulated-Claude side, the client);
//! B3 memory: RSS at start, with 64 and 256 idle sessions, one channel process; vs an idle
//!    Node.js HTTP + WebSocket server;
//! B4 start-up: process start → /healthz, and spawn → ready for the simulated Claude.
//! Baseline ("floor"): a minimal loopback HTTP server in this process answering the same SSE
//! (or JSON) body at once, driven by the same client.
//!
//! The client: std only, one keep-alive connection per session, one thread per connection.
//! A session's turns are sequential, so a closed loop over N sessions needs N requests
//! outstanding at once; with blocking sockets that is N threads (256 at most, 64 KiB stacks,
//! nearly always blocked in `read`). Their CPU is measured and printed (`client CPU`) so the
//! share the client takes from the 2 cores is visible rather than assumed.
//!
//! Every reply is checked (it must be the turn's own nonce); errors and crossed replies are
//! counted separately, and so are processes left behind after a bridge's SIGTERM; any of them
//! makes the run exit non-zero. `--quick` is the few-second CI smoke (it asserts no times).

mod figures;
mod floor;
use figures::{cpu_model, cpu_seconds, histogram_quantile, rss_kib};
use floor::Floor;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BUILT: &str = env!("CARGO_BIN_EXE_synthesis-bridge");

/// The binary under test: the release build, or `SYNTHESIS_BENCH_BIN` (e.g. a build with
/// symbols, for profiling the same run).
fn bin() -> String {
    std::env::var("SYNTHESIS_BENCH_BIN").unwrap_or_else(|_| BUILT.to_string())
}

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
    let problems = Arc::new(Problems::default());
    println!(
        "# synthesis-bridge benchmark ({})",
        if quick { "quick smoke" } else { "full" }
    );
    println!(
        "machine: {} cores ({}), {}, kernel {}",
        num_cpus(),
        cpu_model(),
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
    let mut summary = Summary::default();
    if part("B1") {
        b1(&settings, &floor, &problems, &mut summary);
    }
    if part("B2") {
        b2(&settings, &floor, &problems, &mut summary);
    }
    if part("B3") && (!quick || only.is_some()) {
        b3(&problems, &mut summary);
    }
    if part("B4") {
        b4(&settings, &problems, &mut summary);
    }
    summary.print();
    let (errors, crossed, leaked) = (
        problems.errors.load(Ordering::SeqCst),
        problems.crossed.load(Ordering::SeqCst),
        problems.leaked_processes.load(Ordering::SeqCst),
    );
    println!(
        "\nchecks: {} turns checked, {errors} errors, {crossed} crossed replies, {leaked} processes left behind",
        problems.checked.load(Ordering::SeqCst)
    );
    if problems.total() > 0 {
        println!("FAILED");
        std::process::exit(1);
    }
    println!("all replies correct");
}

/// The one table of headline figures, filled in by each part.
#[derive(Default)]
struct Summary {
    rows: Vec<[String; 4]>,
}

impl Summary {
    fn add(&mut self, what: &str, figure: String, baseline: String, target: &str) {
        self.rows
            .push([what.into(), figure, baseline, target.into()]);
    }

    fn print(&self) {
        if self.rows.is_empty() {
            return;
        }
        println!("## Summary (medians)\n");
        println!("| figure | bridge | baseline (ratio) | target |");
        println!("|---|---|---|---|");
        for [a, b, c, d] in &self.rows {
            println!("| {a} | {b} | {c} | {d} |");
        }
    }
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
        let mut child = Command::new(bin())
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

impl Bridge {
    /// SIGTERM, wait, and check that every process the bridge had started is gone.
    fn stop(mut self, problems: &Problems) {
        let left = stop_and_check(&mut self.child);
        if left > 0 {
            eprintln!("{left} processes of the bridge still alive after its SIGTERM");
            problems.leaked_processes.fetch_add(left, Ordering::SeqCst);
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        stop_and_check(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends SIGTERM to `child` (idempotent), waits for it, and returns how many of its
/// descendants (simulated Claudes, channel servers, hooks) are still alive a second later;
/// those are killed.
fn stop_and_check(child: &mut Child) -> u64 {
    if let Ok(Some(_)) = child.try_wait() {
        return 0;
    }
    let root = child.id();
    let family: Vec<u32> = all_pids().filter(|p| is_descendant(*p, root)).collect();
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    unsafe { libc::kill(root as i32, libc::SIGTERM) };
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(1);
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
            .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
    };
    while family.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left: Vec<&u32> = family.iter().filter(|p| alive(p)).collect();
    for pid in &left {
        // SAFETY: kill(2) on a pid that was the bridge's descendant a moment ago.
        unsafe { libc::kill(**pid as i32, libc::SIGKILL) };
    }
    left.len() as u64
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
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
        if status == 200 && reply != text && !reply.is_empty() {
            return Err(format!("CROSSED: reply {reply:?} for {text:?}"));
        }
        if status != 200 || reply != text {
            return Err(format!("status {status}, reply {reply:?} for {text:?}"));
        }
        Ok(elapsed)
    }
}

/// Failed turns, by kind: an error (bad status, no reply, I/O) or a crossed reply (another
/// turn's text). Either makes the run exit non-zero.
#[derive(Default)]
struct Problems {
    checked: AtomicU64,
    errors: AtomicU64,
    crossed: AtomicU64,
    leaked_processes: AtomicU64,
}

impl Problems {
    /// Counts one checked turn; Some(latency) when it was correct.
    fn check(&self, part: &str, result: Result<Duration, String>) -> Option<Duration> {
        self.checked.fetch_add(1, Ordering::SeqCst);
        result.map_err(|e| self.note(part, &e)).ok()
    }

    fn note(&self, part: &str, e: &str) {
        let counter = if e.starts_with("CROSSED") {
            &self.crossed
        } else {
            &self.errors
        };
        if counter.fetch_add(1, Ordering::SeqCst) < 3 {
            eprintln!("{part}: {e}");
        }
    }

    fn total(&self) -> u64 {
        self.errors.load(Ordering::SeqCst)
            + self.crossed.load(Ordering::SeqCst)
            + self.leaked_processes.load(Ordering::SeqCst)
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
    figures::histogram_buckets(&String::from_utf8_lossy(&body), name)
}

// ---------------------------------------------------------------- B1

fn b1(s: &Settings, floor: &Floor, problems: &Problems, summary: &mut Summary) {
    println!(
        "## B1 warm turn, one session, sequential ({} turns per run)\n",
        s.b1_turns
    );
    println!(
        "| mode | client p50 | client p99 | floor p50 / p99 | ratio p50 / p99 | bridge inbound p50 / p99 | bridge outbound p50 / p99 | own (in + out) p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (stream, think) in [
        (true, Duration::ZERO),
        (false, Duration::ZERO),
        (true, Duration::from_millis(20)),
    ] {
        let mut figures: Vec<[f64; 8]> = Vec::new();
        for run in 0..s.runs {
            let bridge = Bridge::start(&[], &[]);
            let mut client = Client::connect(bridge.http, "b1");
            problems.check("B1 warm-up", client.turn("warm-up", stream));
            let (inbound0, outbound0) = (
                histogram(bridge.http, "synthesis_bridge_inbound_seconds"),
                histogram(bridge.http, "synthesis_bridge_outbound_seconds"),
            );
            let mut latencies = Vec::with_capacity(s.b1_turns);
            for i in 0..s.b1_turns {
                std::thread::sleep(think);
                let nonce = format!("b1-{stream}-{run}-{i}");
                latencies.extend(problems.check("B1", client.turn(&nonce, stream)));
            }
            let (inbound1, outbound1) = (
                histogram(bridge.http, "synthesis_bridge_inbound_seconds"),
                histogram(bridge.http, "synthesis_bridge_outbound_seconds"),
            );
            bridge.stop(problems);
            latencies.sort();
            // The floor, with the same client, mode and think time.
            let mut floor_client = Client::connect(floor.addr, "b1");
            let mut floor_latencies: Vec<Duration> = (0..s.b1_turns)
                .filter_map(|i| {
                    std::thread::sleep(think);
                    problems.check("B1 floor", floor_client.turn(&format!("f{i}"), stream))
                })
                .collect();
            floor_latencies.sort();
            figures.push([
                percentile(&latencies, 0.5).as_secs_f64(),
                percentile(&latencies, 0.99).as_secs_f64(),
                percentile(&floor_latencies, 0.5).as_secs_f64(),
                percentile(&floor_latencies, 0.99).as_secs_f64(),
                histogram_quantile(&inbound0, &inbound1, 0.5),
                histogram_quantile(&inbound0, &inbound1, 0.99),
                histogram_quantile(&outbound0, &outbound1, 0.5),
                histogram_quantile(&outbound0, &outbound1, 0.99),
            ]);
        }
        let m = |i: usize| median(figures.iter().map(|f| f[i]).collect());
        let mode = match (stream, think.is_zero()) {
            (true, true) => "stream, back to back",
            (false, true) => "non-stream, back to back",
            _ => "stream, 20 ms between turns",
        };
        println!(
            "| {mode} | {} | {} | {} / {} | {:.0}× / {:.0}× | {} / {} | {} / {} | {} / {} |",
            ms(m(0)),
            ms(m(1)),
            ms(m(2)),
            ms(m(3)),
            m(0) / m(2),
            m(1) / m(3),
            ms(m(4)),
            ms(m(5)),
            ms(m(6)),
            ms(m(7)),
            ms(m(4) + m(6)),
            ms(m(5) + m(7)),
        );
        summary.add(
            &format!("B1 client warm turn p50 / p99 ({mode})"),
            format!("{} / {}", ms(m(0)), ms(m(1))),
            format!(
                "floor {} / {} ({:.0}× / {:.0}×)",
                ms(m(2)),
                ms(m(3)),
                m(0) / m(2),
                m(1) / m(3)
            ),
            "≤ 1 ms / ≤ 5 ms",
        );
        summary.add(
            &format!("B1 bridge own time in + out, p50 / p99 ({mode})"),
            format!("{} / {}", ms(m(4) + m(6)), ms(m(5) + m(7))),
            "-".into(),
            "≤ 0.1 ms / ≤ 1 ms",
        );
    }
    println!(
        "\nown time: sum of the inbound and outbound percentiles (an upper bound for the percentile of the sum), each interpolated inside its /metrics bucket.\n"
    );
}

// ---------------------------------------------------------------- B2

/// Closed loop: `sessions` clients, each sending its next turn as soon as the last returned.
/// Returns the sorted latencies of the correct turns.
fn closed_loop(
    addr: SocketAddr,
    sessions: usize,
    seconds: f64,
    tag: &str,
    problems: &Arc<Problems>,
) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..sessions)
        .map(|i| {
            let (stop, tag, problems) = (stop.clone(), tag.to_string(), problems.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut client = Client::connect(addr, &format!("s{i}"));
                    let (mut latencies, mut n) = (Vec::new(), 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let nonce = format!("{tag}-{i}-{n}");
                        latencies.extend(problems.check("B2", client.turn(&nonce, true)));
                        n += 1;
                    }
                    latencies
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::SeqCst);
    let mut all: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    all.sort();
    all
}

/// One turn on each of `sessions` sessions, all at once.
fn warm_up(addr: SocketAddr, sessions: usize, problems: &Arc<Problems>) {
    let handles: Vec<_> = (0..sessions)
        .map(|i| {
            let problems = problems.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut client = Client::connect(addr, &format!("s{i}"));
                    problems.check("warm-up", client.turn(&format!("warm-{i}"), true));
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// CPU seconds of every live process below `root` (the simulated Claudes, channel servers),
/// with the CPU of the children they waited for (the Stop hooks: `sh` and `hook stop`).
fn descendants_cpu(root: u32) -> f64 {
    all_pids()
        .filter(|pid| is_descendant(*pid, root))
        .map(|pid| cpu_seconds(pid, true))
        .sum()
}

/// CPU seconds (user + system) of this benchmark process: the client.
fn own_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn b2(s: &Settings, floor: &Floor, problems: &Arc<Problems>, summary: &mut Summary) {
    println!(
        "## B2 throughput, closed loop, {} s per run\n",
        s.b2_seconds
    );
    println!(
        "| sessions | turns/s | p50 | p99 | floor turns/s | ratio to floor | floor p50 / p99 | bridge CPU s / 1000 turns | sim side (sim + channel + hooks) CPU s / 1000 turns | client CPU s / 1000 turns |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let bridge = Bridge::start(&[], &[]);
    let mut by_level = Vec::new();
    for &sessions in &s.levels {
        // Warm every session first: each has its claude (simulated) up and ready.
        warm_up(bridge.http, sessions, problems);
        let mut figures: Vec<[f64; 9]> = Vec::new();
        for run in 0..s.runs {
            let (cpu0, others0, client0) = (
                cpu_seconds(bridge.pid(), false),
                descendants_cpu(bridge.pid()),
                own_cpu(),
            );
            let latencies = closed_loop(
                bridge.http,
                sessions,
                s.b2_seconds,
                &format!("b2-{sessions}-{run}"),
                problems,
            );
            let turns = latencies.len().max(1) as f64;
            let cpu = cpu_seconds(bridge.pid(), false) - cpu0;
            let others = descendants_cpu(bridge.pid()) - others0;
            let client = own_cpu() - client0;
            let floor_seconds = s.b2_seconds.min(1.0);
            let floor_latencies =
                closed_loop(floor.addr, sessions, floor_seconds, "floor", problems);
            figures.push([
                latencies.len() as f64 / s.b2_seconds,
                percentile(&latencies, 0.5).as_secs_f64(),
                percentile(&latencies, 0.99).as_secs_f64(),
                floor_latencies.len() as f64 / floor_seconds,
                percentile(&floor_latencies, 0.5).as_secs_f64(),
                percentile(&floor_latencies, 0.99).as_secs_f64(),
                cpu / turns * 1000.0,
                others / turns * 1000.0,
                client / turns * 1000.0,
            ]);
        }
        let m = |i: usize| median(figures.iter().map(|f| f[i]).collect());
        println!(
            "| {sessions} | {:.0} | {} | {} | {:.0} | {:.3} | {} / {} | {:.3} | {:.3} | {:.3} |",
            m(0),
            ms(m(1)),
            ms(m(2)),
            m(3),
            m(0) / m(3),
            ms(m(4)),
            ms(m(5)),
            m(6),
            m(7),
            m(8)
        );
        summary.add(
            &format!("B2 turns/s, {sessions} sessions (p50 / p99)"),
            format!("{:.0} ({} / {})", m(0), ms(m(1)), ms(m(2))),
            format!("floor {:.0} ({:.3}×)", m(3), m(0) / m(3)),
            if sessions == 64 { "≥ 2000" } else { "-" },
        );
        summary.add(
            &format!("B2 bridge CPU per 1000 turns, {sessions} sessions"),
            format!("{:.3} s", m(6)),
            "-".into(),
            "-",
        );
        by_level.push((sessions, m(0)));
    }
    bridge.stop(problems);
    let get = |n: usize| by_level.iter().find(|(l, _)| *l == n).map(|(_, t)| *t);
    if let (Some(t64), Some(t256)) = (get(64), get(256)) {
        summary.add(
            "B2 throughput change 64 → 256 sessions",
            format!("{:+.1} %", (t256 / t64 - 1.0) * 100.0),
            "-".into(),
            "≥ −20 %",
        );
    }
    println!();
}

// ---------------------------------------------------------------- B3

fn b3(problems: &Arc<Problems>, summary: &mut Summary) {
    println!("## B3 memory (RSS)\n");
    let bridge = Bridge::start(&[], &[]);
    std::thread::sleep(Duration::from_millis(200));
    let at_start = rss_kib(bridge.pid());
    let warm = |n: usize| {
        warm_up(bridge.http, n, problems);
        // Idle means idle: tiny_http keeps a finished connection's thread for 5 s before it
        // exits, so measure after that.
        std::thread::sleep(Duration::from_millis(5500));
        rss_kib(bridge.pid())
    };
    let with_64 = warm(64);
    let with_256 = warm(256);
    let sims = children_named(bridge.pid(), "sim-agent").len();
    let mut channels: Vec<u64> = children_named(bridge.pid(), "channel")
        .into_iter()
        .map(rss_kib)
        .collect();
    channels.sort();
    let channel = channels.get(channels.len() / 2).copied().unwrap_or(0);
    bridge.stop(problems);
    // After retirement: 256 conversations served, then every process idle-killed and every
    // worker retired; what the bridge keeps per conversation (the session map, the
    // conversation-matching memory).
    let short_idle = Bridge::start(&["--idle-kill", "1s"], &[]);
    std::thread::sleep(Duration::from_millis(200));
    let retired_start = rss_kib(short_idle.pid());
    warm_up(short_idle.http, 256, problems);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !children_named(short_idle.pid(), "sim-agent").is_empty()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Finished connections' threads end within a second; measure after that.
    std::thread::sleep(Duration::from_millis(1500));
    let retired = rss_kib(short_idle.pid());
    let retired_threads =
        std::fs::read_dir(format!("/proc/{}/task", short_idle.pid())).map_or(0, |d| d.count());
    short_idle.stop(problems);
    let per_retired = (retired as f64 - retired_start as f64) / 256.0;
    let node = node_baseline_rss();
    let per_session = (with_256 as f64 - with_64 as f64) / 192.0;
    println!("| what | RSS |");
    println!("|---|---|");
    println!("| bridge at start | {} KiB |", at_start);
    println!("| bridge with 64 idle sessions | {} KiB |", with_64);
    println!(
        "| bridge with 256 idle sessions ({sims} live simulated Claudes) | {} KiB |",
        with_256
    );
    println!("| growth per idle session (64 → 256) | {per_session:.1} KiB |");
    println!(
        "| after 256 sessions were idle-killed and retired | {retired} KiB (from {retired_start}; {per_retired:.1} KiB per retired session; {retired_threads} threads) |"
    );
    println!(
        "| one `synthesis-bridge channel` process (median of {}) | {} KiB |",
        channels.len(),
        channel
    );
    let node_cell = match &node {
        Ok(node) => format!("Node {node} KiB ({:.2}×)", at_start as f64 / *node as f64),
        Err(e) => format!("Node: not measured ({e})"),
    };
    match &node {
        Ok(node) => println!(
            "| baseline: idle Node.js HTTP + WebSocket server | {node} KiB (bridge at start = {:.2}× of it) |",
            at_start as f64 / *node as f64
        ),
        Err(e) => {
            println!("| baseline: idle Node.js HTTP + WebSocket server | not measured: {e} |")
        }
    }
    println!();
    summary.add(
        "B3 bridge RSS at start",
        format!("{at_start} KiB"),
        node_cell,
        "≤ 10 MB",
    );
    summary.add(
        "B3 bridge RSS with 64 / 256 idle sessions",
        format!("{with_64} / {with_256} KiB"),
        "-".into(),
        "-",
    );
    summary.add(
        "B3 growth per idle session",
        format!("{per_session:.1} KiB"),
        "-".into(),
        "≤ 64 KiB",
    );
    summary.add(
        "B3 per session after idle kill and retirement",
        format!("{per_retired:.1} KiB ({retired_threads} threads left)"),
        "-".into(),
        "-",
    );
    summary.add(
        "B3 one channel process",
        format!("{channel} KiB"),
        "-".into(),
        "≤ 4 MB",
    );
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

fn b4(s: &Settings, problems: &Problems, summary: &mut Summary) {
    println!("## B4 start-up\n");
    let (mut to_health, mut to_ready, mut logged, mut warm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.runs {
        // Started without waiting for the listening line: /healthz is polled, as a supervisor would.
        let dir =
            std::env::temp_dir().join(format!("sb-bench-b4-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let log = std::fs::File::create(dir.join("bridge.log")).unwrap();
        let t = Instant::now();
        let mut child = Command::new(bin())
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
            .arg(&dir)
            .env("RUST_LOG", "info")
            .env("SYNTHESIS_SIM_DIALOG_DELAY_MS", "0")
            .env("HOME", &dir)
            .env("CLAUDE_CONFIG_DIR", dir.join(".claude"))
            .stdout(Stdio::null())
            .stderr(log)
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
        let first = problems.check("B4", client.turn("first", true));
        let second = problems.check("B4", client.turn("second", true));
        if let (Some(first), Some(second)) = (first, second) {
            to_ready.push(first.as_secs_f64() - second.as_secs_f64());
            warm.push(second.as_secs_f64());
        }
        let left = stop_and_check(&mut child);
        problems.leaked_processes.fetch_add(left, Ordering::SeqCst);
        // The worker's own figure: "session \"b4\": ready in 21.3ms" (spawn → channel hello).
        let text = std::fs::read_to_string(dir.join("bridge.log")).unwrap_or_default();
        if let Some(d) = text
            .lines()
            .find_map(|l| l.split_once("ready in ").map(|(_, d)| d.trim().to_string()))
            .and_then(|d| parse_debug_duration(&d))
        {
            logged.push(d);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let m = |v: &Vec<f64>| {
        if v.is_empty() {
            f64::NAN
        } else {
            median(v.clone())
        }
    };
    println!("| what | median |");
    println!("|---|---|");
    println!(
        "| process start → /healthz answers | {} |",
        ms(m(&to_health))
    );
    println!(
        "| spawn → ready for the simulated Claude, client view (first turn − warm turn; sim dialog delay 0, channel hello delay 20 ms) | {} |",
        ms(m(&to_ready))
    );
    println!(
        "| spawn → ready, the bridge's log (\"ready in\": spawn → channel hello) | {} |",
        ms(m(&logged))
    );
    println!(
        "| warm turn in the same runs, for scale | {} |",
        ms(m(&warm))
    );
    println!();
    summary.add(
        "B4 process start → /healthz",
        ms(m(&to_health)),
        "-".into(),
        "≤ 20 ms",
    );
    summary.add(
        "B4 spawn → ready (client view / bridge log; 20 ms of it is the configured hello delay)",
        format!("{} / {}", ms(m(&to_ready)), ms(m(&logged))),
        "-".into(),
        "-",
    );
}

/// Seconds in a Rust `Debug` duration such as `21.3ms`, `950µs` or `1.2s`.
fn parse_debug_duration(d: &str) -> Option<f64> {
    let split = d.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = d.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" | "us" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(number * scale)
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
