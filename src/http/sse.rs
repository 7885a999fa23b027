//! Writing a Server-Sent Events response by hand on tiny_http's raw writer.
//!
//! tiny_http's own chunked encoder buffers 8 KiB before it sends anything, which would hold
//! back every small event; so a streaming response takes the connection's writer
//! (`Request::into_writer`) and writes the status line, headers and one HTTP chunk per event
//! itself, flushing each. HTTP/1.0 clients get the same events unchunked, then a close.
//!
//! A non-streamed answer that takes longer than a heartbeat uses the same writer with
//! `Content-Type: application/json` (`start_json`): it sends a space every heartbeat
//! (leading whitespace is valid JSON), which is how a client that left is noticed, then the
//! JSON body.

use std::io::{self, Write};
use tiny_http::{HTTPVersion, Request};

pub struct SseStream {
    writer: Box<dyn Write + Send>,
    chunked: bool,
}

impl SseStream {
    /// Sends `200 OK` and the event-stream headers; the connection is ours from here on.
    pub fn start(request: Request) -> io::Result<Self> {
        Self::start_with(request, "text/event-stream")
    }

    /// Sends `200 OK` with `Content-Type: application/json` for a body written piece by piece
    /// with `raw`.
    pub fn start_json(request: Request) -> io::Result<Self> {
        Self::start_with(request, "application/json")
    }

    /// `start` with `extra` headers (printable ASCII values; others are left out).
    pub fn start_with_headers(request: Request, extra: &[(&str, String)]) -> io::Result<Self> {
        Self::start_inner(request, "text/event-stream", extra)
    }

    /// `start_json` with `extra` headers.
    pub fn start_json_with_headers(request: Request, extra: &[(&str, String)]) -> io::Result<Self> {
        Self::start_inner(request, "application/json", extra)
    }

    fn start_with(request: Request, content_type: &str) -> io::Result<Self> {
        Self::start_inner(request, content_type, &[])
    }

    fn start_inner(
        request: Request,
        content_type: &str,
        extra: &[(&str, String)],
    ) -> io::Result<Self> {
        let chunked = *request.http_version() >= HTTPVersion(1, 1);
        let mut lines = String::new();
        for (name, value) in super::cors::response_headers(&request)
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .chain(extra.iter().map(|(n, v)| (*n, v.as_str())))
        {
            if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                lines.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        let mut writer = request.into_writer();
        let framing = if chunked {
            "Transfer-Encoding: chunked\r\n"
        } else {
            "Connection: close\r\n"
        };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n{lines}{framing}\r\n"
        )?;
        writer.flush()?;
        Ok(SseStream { writer, chunked })
    }

    /// Sends `data: <data>\n\n` and flushes it to the client.
    pub fn event(&mut self, data: &str) -> io::Result<()> {
        let len = data.len() + "data: \n\n".len();
        if self.chunked {
            write!(self.writer, "{len:x}\r\ndata: {data}\n\n\r\n")?;
        } else {
            write!(self.writer, "data: {data}\n\n")?;
        }
        self.writer.flush()
    }

    /// Sends `event: <name>\ndata: <data>\n\n` (the Responses API names its events) and
    /// flushes it.
    pub fn named_event(&mut self, name: &str, data: &str) -> io::Result<()> {
        let text = format!("event: {name}\ndata: {data}\n\n");
        self.raw(text.as_bytes())
    }

    /// Sends `bytes` as they are (one chunk) and flushes them.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.chunked {
            write!(self.writer, "{:x}\r\n", bytes.len())?;
            self.writer.write_all(bytes)?;
            self.writer.write_all(b"\r\n")?;
        } else {
            self.writer.write_all(bytes)?;
        }
        self.writer.flush()
    }

    /// Ends the response (the terminating zero-length chunk).
    pub fn finish(mut self) -> io::Result<()> {
        if self.chunked {
            self.writer.write_all(b"0\r\n\r\n")?;
        }
        self.writer.flush()
    }
}
