//! Starting a program inside a pseudo-terminal, and stopping it again.
//!
//! Claude Code needs a terminal: with plain pipes it falls into print mode (docs/CLAUDE_CODE.md §9.1).
//! The child gets the PTY slave as stdin/stdout/stderr, a session of its own (so it is the
//! leader of a new process group and the PTY is its controlling terminal), and a parent-death
//! signal so it does not outlive the bridge. The master stays with the caller, non-blocking,
//! to be drained continuously. The spawn never goes through a shell.
//!
//! Both PTY descriptors are close-on-exec from the moment they exist, and nothing is
//! allocated between fork and exec, so sessions may be spawned from several threads at once:
//! each child holds exactly 0, 1 and 2 (its own slave), never another session's PTY.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
        // `try_clone` dups with F_DUPFD_CLOEXEC; std dup2s these onto 0, 1, 2 in the child.
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
    // and allocates nothing: errors are built with `last_os_error` / `from_raw_os_error`,
    // which store an errno without allocating (std builds the argv, envp and cwd before
    // forking, and runs this after the stdio dup2s and the chdir).
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // SIGTERM rather than SIGKILL: claude cleans up its session file on SIGTERM.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // The bridge exited before the death signal was armed: do not run orphaned.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
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

/// `-1` from a libc call → the errno as an `io::Error`.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a PTY pair, both descriptors close-on-exec from the moment they exist: a spawn of
/// another session on another thread (a fork at any instant) can never carry them into its
/// child. The master is non-blocking; the size is `ROWS` × `COLS`.
///
/// (`openpty(3)` cannot do this: its descriptors are created without close-on-exec and
/// would have to be fixed afterwards, leaving a window.)
fn open_pty() -> io::Result<(File, File)> {
    // SAFETY: posix_openpt takes flags only and returns a new descriptor or -1. On Linux it
    // opens /dev/ptmx with these flags (glibc and musl alike), so O_CLOEXEC is atomic.
    let fd = check(unsafe {
        libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    let master = unsafe { File::from_raw_fd(fd) };
    let m = master.as_raw_fd();
    // SAFETY: grantpt/unlockpt take a PTY master descriptor we own.
    check(unsafe { libc::grantpt(m) })?;
    check(unsafe { libc::unlockpt(m) })?;
    let mut name: [libc::c_char; 128] = [0; 128];
    // SAFETY: the buffer is valid for its length; ptsname_r NUL-terminates on success and
    // returns an errno value (not -1) on failure.
    let rc = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `name` is the NUL-terminated slave path written above.
    let fd = check(unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    let slave = unsafe { File::from_raw_fd(fd) };
    let size = libc::winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    check(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ as _, &size) })?;
    // Belt and braces: O_NONBLOCK on posix_openpt is a Linux behaviour, not POSIX; make
    // sure (checked) rather than assume.
    // SAFETY: fcntl on a descriptor we own.
    let flags = check(unsafe { libc::fcntl(m, libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        check(unsafe { libc::fcntl(m, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn spawn_sleeper() -> PtyChild {
        let program = OsString::from("sleep");
        let args = [OsString::from("30")];
        spawn(&SpawnSpec {
            program: &program,
            args: &args,
            env: &[],
            env_remove: &[],
            cwd: Path::new("/"),
        })
        .expect("spawn sleep in a pty")
    }

    /// The descriptors open in `pid`, by number.
    fn open_fds(pid: u32) -> Vec<u32> {
        let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        fds.sort_unstable();
        fds
    }

    #[test]
    fn master_is_nonblocking_and_both_ends_close_on_exec_with_the_size_set() {
        let (master, slave) = open_pty().unwrap();
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            // SAFETY: fcntl on descriptors this test owns.
            let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0, "{fd}");
        }
        // SAFETY: as above.
        let fl = unsafe { libc::fcntl(master.as_raw_fd(), libc::F_GETFL) };
        assert!(fl >= 0 && fl & libc::O_NONBLOCK != 0);
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize to a valid pointer.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGWINSZ as _, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_row, size.ws_col), (ROWS, COLS));
    }

    /// Descriptors this process holds without close-on-exec besides 0, 1, 2: only ones it
    /// inherited itself (from the shell or harness that started the tests).
    fn inherited_fds() -> Vec<u32> {
        open_fds(std::process::id())
            .into_iter()
            .filter(|&fd| fd > 2)
            // SAFETY: F_GETFD on a descriptor number; -1 (closed meanwhile) is filtered out.
            .filter(|&fd| {
                let flags = unsafe { libc::fcntl(fd as libc::c_int, libc::F_GETFD) };
                flags >= 0 && flags & libc::FD_CLOEXEC == 0
            })
            .collect()
    }

    /// While other threads open PTYs and spawn children as fast as they can, every child
    /// holds exactly 0, 1 and 2 (plus whatever the test process itself inherited without
    /// close-on-exec from whoever started it): no PTY descriptor of a concurrent spawn leaks
    /// into it.
    #[test]
    fn a_child_inherits_only_its_stdio_while_others_spawn_concurrently() {
        let mut expected = vec![0, 1, 2];
        expected.extend(inherited_fds());
        let stop = Arc::new(AtomicBool::new(false));
        let churners: Vec<_> = (0..3)
            .map(|i| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("pty-churn-{i}"))
                    .spawn(move || {
                        let mut spawned = 0;
                        while !stop.load(Ordering::Relaxed) && spawned < 400 {
                            let mut child = spawn_sleeper();
                            spawned += 1;
                            child.terminate(Duration::from_secs(5)).unwrap();
                        }
                        spawned
                    })
                    .unwrap()
            })
            .collect();
        let mut checked = 0;
        let mut leaks = Vec::new();
        for _ in 0..60 {
            let mut child = spawn_sleeper();
            // Right after exec the dynamic loader of `sleep` briefly holds a file of its own
            // (fd 3); a leaked descriptor stays. So: settled within 2 s, or a leak.
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut fds = open_fds(child.pid());
            while fds != expected && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                fds = open_fds(child.pid());
            }
            if fds != expected {
                let targets: Vec<_> = fds
                    .iter()
                    .map(|fd| std::fs::read_link(format!("/proc/{}/fd/{fd}", child.pid())))
                    .collect();
                leaks.push(format!("{fds:?} -> {targets:?}"));
            }
            checked += 1;
            child.terminate(Duration::from_secs(5)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let concurrent: usize = churners.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(
            leaks.is_empty(),
            "children with fds beyond {expected:?}: {leaks:?}"
        );
        assert!(
            concurrent > 0 && checked == 60,
            "{concurrent} concurrent spawns"
        );
    }
}
