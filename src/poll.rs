//! Waiting on several file descriptors at once with `poll(2)`, plus a `Waker` that lets
//! another thread interrupt such a wait.
//!
//! This is how a synchronous thread serves more than one source without a thread per
//! source: a session worker waits on its PTY, its WebSocket and its waker together; the
//! channel server waits on stdin and its WebSocket; a pidfd makes a process's exit one more
//! descriptor to wait on. Every wait takes a timeout, so no caller can block forever.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// What one descriptor reported after a wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Data (or EOF) can be read without blocking.
    pub readable: bool,
    /// The peer hung up or the descriptor is in error; a read will say which.
    pub hangup: bool,
}

/// Waits until at least one of `fds` is readable or hung up, or `timeout` passes
/// (`None` = only when woken by a descriptor; callers should always pass a bound).
/// Returns one `Readiness` per descriptor, in order. EINTR counts as a spurious wake-up.
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<Readiness>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = match timeout {
        None => -1,
        // Round up so a 0.4 ms remainder does not turn into a busy loop of 0 ms polls.
        Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
    };
    // SAFETY: `pollfds` is a valid, exclusively borrowed array of `pollfd` of the given length.
    let rc = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
        return Ok(vec![Readiness::default(); fds.len()]);
    }
    Ok(pollfds
        .iter()
        .map(|p| Readiness {
            readable: p.revents & libc::POLLIN != 0,
            hangup: p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
        })
        .collect())
}

/// A pidfd for `pid` (Linux ≥ 5.3): it becomes readable when the process exits, so a
/// process's end can be waited for with `wait_readable`, together with other descriptors.
/// None on kernels without pidfds (callers then poll `try_wait`).
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: as above.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The waking end of a wake-up pair. Cheap to clone; `wake` never blocks (a full buffer
/// already means "wake up").
#[derive(Clone, Debug)]
pub struct Waker {
    tx: Arc<UnixStream>,
}

/// The waited-on end: include `fd()` in a `wait_readable` set and call `drain` when it fires.
#[derive(Debug)]
pub struct WakeReceiver {
    rx: UnixStream,
}

/// Makes a connected waker / receiver pair.
pub fn wake_pair() -> io::Result<(Waker, WakeReceiver)> {
    let (tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    Ok((Waker { tx: Arc::new(tx) }, WakeReceiver { rx }))
}

impl Waker {
    pub fn wake(&self) {
        // WouldBlock means the receiver already has unread wake-ups: nothing is lost.
        let _ = (&*self.tx).write(&[1]);
    }
}

impl WakeReceiver {
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Consumes every pending wake-up byte.
    pub fn drain(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(self.rx.read(&mut buf), Ok(n) if n > 0) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn waker_interrupts_a_wait_from_another_thread() {
        let (waker, mut receiver) = wake_pair().unwrap();
        let remote = waker.clone();
        let t = std::thread::spawn(move || remote.wake());
        let ready = wait_readable(&[receiver.fd()], Some(Duration::from_secs(10))).unwrap();
        assert!(ready[0].readable);
        receiver.drain();
        t.join().unwrap();
        let started = Instant::now();
        let ready = wait_readable(&[receiver.fd()], Some(Duration::from_millis(20))).unwrap();
        assert!(
            !ready[0].readable,
            "drained receiver must not stay readable"
        );
        assert!(started.elapsed() >= Duration::from_millis(15));
        drop(waker);
    }
}
