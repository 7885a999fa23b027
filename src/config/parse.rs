//! Parsers for the text of a setting (flags, counts, booleans, durations, paths), shared by
//! every source (file, environment, flags).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{FIELDS, MAX_DURATION, MAX_DURATION_DAYS};

/// Turns `--name value`, `--name=value` and boolean `--demo` into (field, value) pairs.
pub(super) fn parse_flags(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg
            .strip_prefix("--")
            .or_else(|| (arg == "-h").then_some("help"))
        else {
            return Err(format!(
                "unexpected argument `{arg}` (options start with --; see --help)"
            ));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.replace('-', "_"), Some(v.to_string())),
            None => (flag.replace('-', "_"), None),
        };
        if name == "help" {
            out.push((name, String::new()));
            continue;
        }
        let is_bool = FIELDS
            .iter()
            .any(|(n, hint, _)| *n == name && *hint == "BOOL");
        let value = match inline {
            Some(v) => v,
            None if is_bool => "true".to_string(),
            None => iter
                .next()
                .cloned()
                .ok_or_else(|| format!("--{flag} needs a value"))?,
        };
        if name != "config" && !FIELDS.iter().any(|(n, _, _)| *n == name) {
            return Err(format!("unknown option --{flag} (see --help)"));
        }
        out.push((name, value));
    }
    Ok(out)
}

pub(super) fn nonempty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(value.to_string())
    }
}

/// A TCP port: 0 (any free port) to 65535.
pub(super) fn parse_port(value: &str) -> Result<u16, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a port number (0 to 65535)"))
}

/// A whole number in `min..=max`; the error states the range, so "0" and "1e9" are refused
/// with the bound rather than accepted and found absurd later.
pub(super) fn parse_count(value: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a whole number ({min} to {max})"))?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} is out of range: must be {min} to {max}"));
    }
    Ok(n)
}

pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("`{value}` is not true or false")),
    }
}

/// `250ms`, `15s`, `30m`, `2h`, `1d`, or a bare number of seconds (fractions allowed), at
/// most `MAX_DURATION`. NaN, infinities, negative values and anything past the bound are
/// refused here, so no caller can hit `Duration::from_secs_f64`'s panic or overflow an
/// `Instant` by adding a configured duration to it.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = v.strip_suffix('d') {
        (n, 86400.0)
    } else {
        (v, 1.0)
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a duration (e.g. 500ms, 15s, 30m)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{value}` must be a non-negative duration"));
    }
    let too_long = || format!("`{value}` is longer than the limit of {MAX_DURATION_DAYS} days");
    let seconds = n * scale;
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(too_long());
    }
    // Cannot fail after the checks above; mapped to the same error rather than unwrapped.
    Duration::try_from_secs_f64(seconds).map_err(|_| too_long())
}

/// Makes a configured directory absolute against the bridge's working directory at start,
/// and resolves it the way the kernel will: the part that exists is canonicalised
/// (symlinks and `..` resolved); the rest (not created yet, so no symlinks in it) is
/// appended with `.` and `..` applied lexically.
///
/// Why not `std::path::absolute` alone: it keeps `..` (`--workspace ../ws` would become
/// `/cwd/../ws`), and Claude Code names its project directory after the cwd it gets from
/// the kernel (`getcwd`, fully resolved), so the bridge's transcript lookup
/// (`agent::transcript_path`) would look in a directory Claude never writes. Why not
/// `canonicalize` alone: `state_dir` may not exist yet (it is created after loading).
/// If even the cwd cannot be read, the path is kept as given and `validate` or the first
/// use reports it.
pub fn resolve_dir(path: &Path) -> PathBuf {
    use std::path::Component;
    let Ok(absolute) = std::path::absolute(path) else {
        return path.to_path_buf();
    };
    // Walk from the root; after each step `out` is free of symlinks and `..` as far as it
    // exists, so popping it for a `..` is what the kernel would do.
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => out.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if let Ok(real) = out.canonicalize() {
                    out = real;
                }
            }
        }
    }
    out
}
