//! Log set-up shared by every subcommand: env_logger filtered by `RUST_LOG` (default
//! `info`), one line per record, UTC timestamp with milliseconds, level, thread name
//! (threads are named after what they own, e.g. `session:<key>`), then the message.
//!
//! Also owns `printable`, the one escaping of client-supplied text (session keys, peer
//! strings) for logs and reports: no raw control character from a client reaches a log line,
//! so a key cannot forge a line or send terminal escapes to whoever reads the log. The line
//! format applies it to the thread name and `printable_message` to every message.

use std::borrow::Cow;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Initialises logging to stderr, or to `file` (appended) when given.
pub fn init(file: Option<&std::path::Path>) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    builder.format(|buf, record| {
        let thread = std::thread::current();
        writeln!(
            buf,
            "{} {:5} [{}] {}",
            utc_timestamp(SystemTime::now()),
            record.level(),
            printable(thread.name().unwrap_or("?")),
            printable_message(&record.args().to_string())
        )
    });
    if let Some(path) = file
        && let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        builder.target(env_logger::Target::Pipe(Box::new(f)));
    }
    let _ = builder.try_init();
}

/// `text` with every character that could forge or disturb a log line escaped: C0 controls
/// (`\n`, `\r`, `\t`, ESC as `\x1b`, …), DEL, C1 controls, Unicode line separators and
/// bidirectional overrides (`\u{202e}`), and the backslash itself (`\\`), so an escaped
/// text is never ambiguous. Borrowed (no copy) when there is nothing to escape.
pub fn printable(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// Like `printable`, but keeps newlines and tabs and leaves backslashes alone: for whole log
/// messages, some of which are multi-line reports made by the bridge itself. Client strings
/// inside a message must already have gone through `printable` (or `{:?}`).
pub fn printable_message(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, message: bool) -> Cow<'_, str> {
    let needs = |c: char| match c {
        '\\' => !message,
        '\n' | '\t' => !message,
        _ => is_unsafe(c),
    };
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs(c) {
            out.push(c);
            continue;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// Control characters (C0, DEL, C1) and the invisible characters that move or reorder text.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// A thread name made from a client's string (a session key): `prefix` + the string with
/// control characters escaped, so a thread dump or a log line cannot be forged through it.
pub fn thread_name(prefix: &str, client_text: &str) -> String {
    format!("{prefix}{}", printable(client_text))
}

/// Renames the calling thread for the OS (`/proc/<pid>/task/*/comm`, gdb, top), which keeps
/// 15 bytes: `respond:agent:m…`. For threads that learn their name after they started: a
/// responder once it knows its session key, a standby worker once a conversation adopts it.
/// The name Rust keeps (`std::thread::current().name()`, which log lines show) stays.
pub fn name_os_thread(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer.
    unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// `2026-11-24T10:14:03.123Z` without a date crate (civil-from-days, H. Hinnant).
pub fn utc_timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn printable_escapes_every_control_character() {
        assert!(matches!(
            printable("session:demo::chat-1"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("a\nb\x1b[31mc\rd\u{7f}e\u{85}f\\"),
            "a\\nb\\x1b[31mc\\rd\\x7fe\\x85f\\\\"
        );
        assert_eq!(printable("x\u{202e}y\0"), "x\\u{202e}y\\x00");
        let all: String = (0u32..0x2100).filter_map(char::from_u32).collect();
        assert!(!printable(&all).chars().any(is_unsafe));
        // Messages keep their own line structure, but nothing else.
        assert_eq!(
            printable_message("report\n\tline \\ \x1b"),
            "report\n\tline \\ \\x1b"
        );
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_954_443_123);
        assert_eq!(utc_timestamp(t), "2026-11-29T12:14:03.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
