//! The processes deploy-local starts (swtpm, QEMU), known by their PID files in the state
//! directory. A PID is reused once its process is gone, so before anything is signalled the
//! process is checked to still be the one started here: its program and a command line naming
//! the state directory.

use anyhow::{bail, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// A process deploy-local starts: its PID file in the state directory, and its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Daemon {
    pub pid_file: &'static str,
    /// The start of its program name (`qemu-system` matches `qemu-system-x86_64`).
    pub program: &'static str,
}

pub const QEMU: Daemon = Daemon {
    pid_file: "qemu.pid",
    program: "qemu-system",
};

pub const SWTPM: Daemon = Daemon {
    pid_file: "swtpm.pid",
    program: "swtpm",
};

/// How long a stopped process gets to exit before it is killed.
const GRACE: Duration = Duration::from_secs(10);

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn pid_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// The PID in `<dir>/<pid_file>` when that process is still the one this command started: a
/// `program` (e.g. `qemu-system`, `swtpm`) whose command line names `dir` (its pidfile, state
/// and sockets are there). A PID is reused once its process is gone, and signalling whatever
/// holds it now could stop an unrelated process.
pub fn owned_pid(dir: &Path, pid_file: &str, program: &str) -> Option<i32> {
    let pid = read_pid(&dir.join(pid_file)).filter(|&pid| pid > 0)?;
    runs_in(pid, dir, program).then_some(pid)
}

/// Whether `pid` is a live `program` whose command line names `dir` (a zombie has no command
/// line: it counts as gone).
fn runs_in(pid: i32, dir: &Path, program: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned());
    let Some(argv0) = args.next() else {
        return false;
    };
    let name = argv0.rsplit('/').next().unwrap_or_default();
    let dir = format!("{}/", dir.display());
    name.starts_with(program) && args.any(|arg| arg.contains(&dir))
}

/// The PID of `daemon` once its PID file names it and it runs (a daemon writes the file after
/// forking); fails after a few seconds.
pub fn wait_owned(dir: &Path, daemon: Daemon) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = owned_pid(dir, daemon.pid_file, daemon.program) {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} started, but {} does not name a running {} of this VM",
                daemon.program,
                dir.join(daemon.pid_file).display(),
                daemon.program
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops `pid` if it is still `daemon` of `dir` (SIGTERM, SIGKILL after a grace period) and
/// waits until it is gone, then removes its PID file. A process that is gone, or a PID that
/// belongs to another process now, counts as stopped: nothing is signalled.
pub fn stop(dir: &Path, daemon: Daemon, pid: i32) -> Result<()> {
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        if !runs_in(pid, dir, daemon.program) {
            break;
        }
        // SAFETY: plain syscall; the PID is, right now, this VM's process.
        unsafe {
            libc::kill(pid, signal);
        }
        let deadline = Instant::now() + GRACE;
        while runs_in(pid, dir, daemon.program) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if runs_in(pid, dir, daemon.program) {
        bail!(
            "{} PID {pid} is still running after SIGKILL",
            daemon.program
        );
    }
    match std::fs::remove_file(dir.join(daemon.pid_file)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// The last `lines` lines of a text file (the console log), empty when it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
