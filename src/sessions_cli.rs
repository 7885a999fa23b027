//! `synthesis-bridge sessions`: the session table on the command line.
//!
//! Asks the live bridge (`GET /v1/sessions` at `--url`, default `http://127.0.0.1:<port>`
//! from the same settings as `serve`), and when none answers, reads the session map the bridge
//! keeps in its state dir, saying which of the two it shows. `--json` prints the raw rows.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::config::{Config, Invocation};

pub fn run(args: &[String]) -> u8 {
    let mut json = false;
    let mut url = None;
    let mut rest = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--url" => url = iter.next().cloned(),
            _ => rest.push(arg.clone()),
        }
    }
    let config = match Config::load(&rest) {
        Ok(Invocation::Run(config)) => *config,
        Ok(Invocation::Help) => {
            println!(
                "synthesis-bridge sessions [--json] [--url http://HOST:PORT] [serve options: --port, --api-key, --state-dir]"
            );
            return 0;
        }
        Err(message) => {
            eprintln!("synthesis-bridge sessions: {message}");
            return 2;
        }
    };
    let authority = url
        .as_deref()
        .map(|u| {
            u.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        })
        .unwrap_or_else(|| format!("{}:{}", config.host, config.port));
    let (source, rows) = match fetch_live(&authority, config.api_key.as_deref()) {
        Ok(rows) => (format!("live bridge at http://{authority}"), rows),
        Err(live_error) => match read_map(&config.state_dir) {
            Ok(rows) => (
                format!(
                    "session map {} (no live bridge: {live_error})",
                    config.state_dir.join("sessions.json").display()
                ),
                rows,
            ),
            Err(map_error) => {
                eprintln!(
                    "synthesis-bridge sessions: no live bridge ({live_error}) and no session map ({map_error})"
                );
                return 1;
            }
        },
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(rows)).unwrap_or_default()
        );
        return 0;
    }
    println!("{} sessions from {source}", rows.len());
    println!(
        "{:<40} {:<9} {:>8} {:<36} {:>6} {:>6}  last error",
        "KEY", "STATE", "PID", "CLAUDE SESSION", "TURNS", "QUEUED"
    );
    for row in &rows {
        let text = |k: &str| {
            row[k].as_str().map(String::from).unwrap_or_else(|| {
                if row[k].is_null() {
                    "-".into()
                } else {
                    row[k].to_string()
                }
            })
        };
        println!(
            "{:<40} {:<9} {:>8} {:<36} {:>6} {:>6}  {}",
            text("key"),
            text("state"),
            text("pid"),
            text("claude_session"),
            text("turns"),
            text("queued_turns"),
            row["last_error"]
                .as_str()
                .map(|e| e.lines().next().unwrap_or(""))
                .unwrap_or("")
        );
    }
    0
}

fn fetch_live(authority: &str, api_key: Option<&str>) -> Result<Vec<Value>, String> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let auth = api_key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /v1/sessions?limit=10000 HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{auth}\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("malformed answer")?;
    let value: Value =
        serde_json::from_str(body).map_err(|e| format!("unreadable answer ({e}): {head}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(value["error"]["message"]
            .as_str()
            .unwrap_or(head)
            .to_string());
    }
    Ok(value["data"].as_array().cloned().unwrap_or_default())
}

fn read_map(state_dir: &std::path::Path) -> Result<Vec<Value>, String> {
    let path = state_dir.join("sessions.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let map: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let sessions = map["sessions"].as_object().cloned().unwrap_or_default();
    Ok(sessions
        .into_iter()
        .map(|(key, record)| {
            serde_json::json!({
                "key": key, "state": "stopped", "pid": null, "claude_session": record["claude_session"],
                "workspace": record["workspace"], "turns": record["turns"], "queued_turns": 0, "last_used": record["last_used"],
            })
        })
        .collect())
}
