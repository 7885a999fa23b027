use std::io::Read;
use std::io::Result as IoResult;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

/// PATCH (synthesis-bridge, PATCHES.md #1): at most this many unread body bytes are drained
/// when a request is dropped; past it the connection is closed instead of kept alive.
pub const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the remaining bytes will be read and
/// thrown away.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
    /// Set when the unread rest of the body was not drained: the connection must close.
    close_connection: Option<Arc<AtomicBool>>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader,
            size,
            last_read_signal: tx,
            close_connection: None,
        };

        (r, rx)
    }

    /// PATCH: the flag set when the drop gives up draining (the connection then closes).
    pub fn closing(mut self, flag: Arc<AtomicBool>) -> Self {
        self.close_connection = Some(flag);
        self
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            err @ Err(_) => err,
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        // PATCH: a fixed buffer (upstream allocated `vec![0; remaining]`, so a declared
        // `Content-Length: 100000000000` aborted the process), and a bound: a body with more
        // than MAX_DRAIN_BYTES left is not read at all, the connection is closed instead.
        if self.size > MAX_DRAIN_BYTES {
            if let Some(flag) = &self.close_connection {
                flag.store(true, Ordering::SeqCst);
            }
            self.last_read_signal.send(Ok(())).ok();
            return;
        }
        let mut buf = [0u8; 8 * 1024];
        while self.size > 0 {
            let want = self.size.min(buf.len());
            match self.reader.read(&mut buf[..want]) {
                Err(e) => {
                    if let Some(flag) = &self.close_connection {
                        flag.store(true, Ordering::SeqCst);
                    }
                    self.last_read_signal.send(Err(e)).ok();
                    return;
                }
                Ok(0) => {
                    self.last_read_signal.send(Ok(())).ok();
                    return;
                }
                Ok(other) => self.size -= other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn huge_declared_length_is_not_drained_and_closes() {
        use std::io::Cursor;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let flag = Arc::new(AtomicBool::new(false));
        let mut org_reader = Cursor::new(b"abc".to_vec());
        {
            let (reader, _) = EqualReader::new(org_reader.by_ref(), 100_000_000_000);
            drop(reader.closing(flag.clone()));
        }
        assert!(flag.load(Ordering::SeqCst));
        assert_eq!(org_reader.position(), 0, "nothing read");
    }

    #[test]
    fn small_rest_is_drained_and_keeps_the_connection() {
        use std::io::Cursor;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let flag = Arc::new(AtomicBool::new(false));
        let body = vec![b'x'; 20_000];
        let mut org_reader = Cursor::new(body);
        {
            let (reader, _) = EqualReader::new(org_reader.by_ref(), 20_000);
            drop(reader.closing(flag.clone()));
        }
        assert!(!flag.load(Ordering::SeqCst));
        assert_eq!(org_reader.position(), 20_000);
    }
}
