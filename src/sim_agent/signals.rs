//! SIGTERM, SIGHUP and SIGINT for the simulated Claude: recorded in a flag and announced on a
//! socket the poll loops include in their wait sets, so a signal wakes any wait at once.
//!
//! Owns the signal registration. It must never act on a signal itself (no exit from a
//! handler): the loops see `received()` and shut down cleanly.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Signals {
    last: Arc<AtomicUsize>,
    wake: UnixStream,
}

impl Signals {
    pub fn register() -> io::Result<Signals> {
        let last = Arc::new(AtomicUsize::new(0));
        let (wake, notify) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
            signal_hook::flag::register_usize(signal, Arc::clone(&last), signal as usize)?;
            signal_hook::low_level::pipe::register(signal, notify.try_clone()?)?;
        }
        Ok(Signals { last, wake })
    }

    /// Include in every wait set.
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The signal that asked us to stop, if one did.
    pub fn received(&self) -> Option<i32> {
        let mut buf = [0u8; 16];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        match self.last.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n as i32),
        }
    }
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}
