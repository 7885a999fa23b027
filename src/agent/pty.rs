//! Starting a program inside a pseudo-terminal, and stopping it again.
//!
//! Claude Code needs a terminal: with plain pipes it falls into print mode (DESIGN.md §5).
//! The child gets the PTY slave as stdin/stdout/stderr, a session of its own (so it is the
//! leader of a new process group and the PTY is its controlling terminal), and a parent-death
//! signal so it does not outlive the bridge. The master stays with the caller, non-blocking,
//! to be drained continuously. The spawn never goes through a shell.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Terminal size the child sees. Wide enough that dialog lines are not wrapped.
pub const ROWS: u16 = 50;
pub const COLS: u16 = 160;

/// A running child in a PTY. Dropping it does not stop the child: call `terminate`.
pub struct PtyChild {
    pub master: File,
    pub child: Child,
    /// pidfd of the child (Linux ≥ 5.3): readable once the child exits, so the owner can wait
    /// on it together with its other descriptors.
    pub pidfd: Option<OwnedFd>,
}

pub struct SpawnSpec<'a> {
    pub program: &'a OsString,
    pub args: &'a [OsString],
    pub env: &'a [(OsString, OsString)],
    /// Variables of the bridge's environment the child must not inherit.
    pub env_remove: &'a [OsString],
    pub cwd: &'a Path,
}

pub fn spawn(spec: &SpawnSpec) -> io::Result<PtyChild> {
    let (master, slave) = open_pty()?;
    let mut command = Command::new(spec.program);
    for name in spec.env_remove {
        command.env_remove(name);
    }
    command
        .args(spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.cwd)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // SIGTERM rather than SIGKILL: claude cleans up its session file on SIGTERM.
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != parent {
                return Err(io::Error::other("bridge exited during spawn"));
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pidfd = crate::poll::pidfd_open(child.id());
    Ok(PtyChild {
        master,
        child,
        pidfd,
    })
}

fn open_pty() -> io::Result<(File, File)> {
    let mut master: RawFd = -1;
    let mut slave: RawFd = -1;
    let size = libc::winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers are valid; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh descriptors that we now own.
    let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fcntl on descriptors we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: as above.
    unsafe {
        let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok((master, slave))
}

impl Drop for PtyChild {
    /// A child still running when its handle goes away (a panicking worker) is killed with
    /// its process group and reaped, so nothing outlives its owner.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

impl PtyChild {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the child's whole process group (claude and whatever it started, e.g. the
    /// channel server): SIGTERM, up to `grace` to exit, then SIGKILL. Always reaps.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        // Once reaped, the pid may be reused: signal the group only while the child is unreaped.
        // Its own children (the channel server) exit when their stdin closes.
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.kill_group(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.kill_group(libc::SIGKILL);
        self.child.wait()
    }

    /// Waits up to `limit` for the child to exit, on its pidfd when there is one.
    pub fn wait_timeout(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match &self.pidfd {
                Some(fd) => {
                    crate::poll::wait_readable(&[fd.as_raw_fd()], Some(left))?;
                }
                None => std::thread::sleep(left.min(Duration::from_millis(20))),
            }
        }
    }

    fn kill_group(&self, signal: libc::c_int) {
        // The child called setsid(), so its pid is its process group id.
        // SAFETY: kill(2) with a negative pid signals that group; no memory involved.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), signal) };
    }
}
