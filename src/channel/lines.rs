//! Newline-delimited input with a size bound, for readers driven by poll(2).
//!
//! Owns only a byte buffer: the caller reads whatever one `read(2)` gives (after poll said
//! the descriptor is readable) and pushes it here; complete lines come out. A line longer than
//! the limit is reported once and then skipped up to its newline, so memory stays bounded by
//! the limit plus one read. It must never read from a descriptor itself (that would block a
//! poll loop) and never hold more than `max` bytes of one line.
//!
//! Used by the channel server (stdin from claude) and by the simulated Claude (stdout of its
//! MCP server).

/// One item of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its `\n` (and without a trailing `\r`); never blank.
    Text(Vec<u8>),
    /// A line grew past the limit; its bytes are being dropped up to the next newline.
    TooLong,
}

#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    max: usize,
    /// Inside an over-long line: drop bytes until the next newline.
    discarding: bool,
}

impl LineBuffer {
    pub fn new(max: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// Takes the bytes of one read; returns the lines they complete, in order.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    let (head, rest) = (&bytes[..pos], &bytes[pos + 1..]);
                    bytes = rest;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if self.buf.len() + head.len() > self.max {
                        self.buf.clear();
                        lines.push(Line::TooLong);
                        continue;
                    }
                    self.buf.extend_from_slice(head);
                    let line = std::mem::take(&mut self.buf);
                    lines.extend(text_line(line));
                }
                None => {
                    if !self.discarding {
                        if self.buf.len() + bytes.len() > self.max {
                            self.buf = Vec::new();
                            self.discarding = true;
                            lines.push(Line::TooLong);
                        } else {
                            self.buf.extend_from_slice(bytes);
                        }
                    }
                    break;
                }
            }
        }
        lines
    }

    /// At end of input: the last line if it had no newline.
    pub fn finish(&mut self) -> Option<Line> {
        let rest = std::mem::take(&mut self.buf);
        if self.discarding {
            self.discarding = false;
            return None;
        }
        text_line(rest)
    }
}

fn text_line(mut line: Vec<u8>) -> Option<Line> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(Line::Text(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Line {
        Line::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn partial_lines_are_joined_across_reads() {
        let mut lb = LineBuffer::new(100);
        assert_eq!(lb.push(b"{\"a\":"), vec![]);
        assert_eq!(lb.push(b"1}\n{\"b\""), vec![text("{\"a\":1}")]);
        assert_eq!(
            lb.push(b":2}\r\n\n  \n{\"c\":3}\n"),
            vec![text("{\"b\":2}"), text("{\"c\":3}")]
        );
        assert_eq!(lb.push(b"tail"), vec![]);
        assert_eq!(lb.finish(), Some(text("tail")));
        assert_eq!(lb.finish(), None);
    }

    #[test]
    fn over_long_lines_are_reported_once_and_skipped_with_bounded_memory() {
        let mut lb = LineBuffer::new(8);
        assert_eq!(lb.push(b"12345"), vec![]);
        assert_eq!(lb.push(b"6789"), vec![Line::TooLong]);
        assert_eq!(lb.push(&[b'x'; 1000]), vec![]);
        assert!(
            lb.buf.capacity() <= 8 + 1000,
            "nothing of the long line is kept"
        );
        assert!(lb.buf.is_empty());
        assert_eq!(lb.push(b"xx\nok\n"), vec![text("ok")]);
        // A long line that arrives whole, newline included.
        assert_eq!(
            lb.push(b"0123456789\nfine\n"),
            vec![Line::TooLong, text("fine")]
        );
        assert_eq!(lb.push(b"12345678\n"), vec![text("12345678")]);
    }
}
