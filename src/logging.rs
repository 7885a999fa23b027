//! Log set-up shared by every subcommand: env_logger filtered by `RUST_LOG` (default
//! `info`), one line per record, UTC timestamp with milliseconds, level, thread name
//! (threads are named after what they own, e.g. `session:<key>`), then the message.

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
            thread.name().unwrap_or("?"),
            record.args()
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

/// `text` with every control character escaped (`\n`, `\u{1b}`, ...), for printing a
/// client's string (a session key, a frame) where a raw newline or terminal escape would
/// forge a log line or repaint an operator's terminal. Borrowed when nothing needs escaping.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// A thread name made from a client's string (a session key): `prefix` + the string with
/// control characters escaped, so a thread dump or a log line cannot be forged through it.
pub fn thread_name(prefix: &str, client_text: &str) -> String {
    format!("{prefix}{}", printable(client_text))
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
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_954_443_123);
        assert_eq!(utc_timestamp(t), "2026-11-29T12:14:03.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
