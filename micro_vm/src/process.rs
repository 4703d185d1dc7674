//! `-daemonize` and `-pidfile`.
//!
//! Invariants:
//! - [`daemonize`] must run before any thread is created (it forks), so the caller runs it
//!   first thing after parsing the command line.
//! - The daemon keeps the working directory, as StratoVirt's does, so relative paths on the
//!   command line (`-kernel`, `file=`, `-qmp unix:`) mean what they meant to the caller.
//! - The process that ran `stratovirt -daemonize` exits only once the daemon has started the
//!   VM (status 0) or failed to (status 1, the daemon's one-line error on its stderr): the
//!   daemon's own stdio is `/dev/null`, so its start-up errors travel through a pipe
//!   ([`DaemonReady`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};

use crate::{MachineError, Result};

fn failed(step: &'static str) -> MachineError {
    MachineError::Daemonize {
        step,
        source: std::io::Error::last_os_error(),
    }
}

/// The daemon's end of the pipe to the process that started it.
pub struct DaemonReady {
    pipe: File,
}

impl DaemonReady {
    /// The VM runs: the starting process exits with status 0.
    pub fn started(mut self) {
        // The starting process may be gone already; then nobody is waiting.
        let _ = self.pipe.write_all(b"ok\n");
    }

    /// Start-up failed with `message`: the starting process prints it and exits with 1.
    pub fn failed(mut self, message: &str) {
        let _ = self.pipe.write_all(format!("error {message}\n").as_bytes());
    }
}

/// Waits, in the process that ran `-daemonize`, for the daemon's word and exits with it.
fn wait_for_daemon(mut pipe: File) -> ! {
    let mut word = String::new();
    let _ = pipe.read_to_string(&mut word);
    let (status, message) = match word.trim_end().split_once(' ') {
        None if word.trim_end() == "ok" => (0, None),
        Some(("error", message)) => (1, Some(message.to_string())),
        _ => (
            1,
            Some("the daemon exited before the VM started".to_string()),
        ),
    };
    if let Some(message) = message {
        eprintln!("stratovirt: {message}");
    }
    // SAFETY: `_exit` ends this process at once, as the daemon's parent must: the daemon owns
    // what it inherited.
    unsafe { libc::_exit(status) }
}

/// Detaches from the terminal: fork, new session, fork again, stdin/stdout/stderr on
/// `/dev/null`; the working directory stays. Only the grandchild returns; the process that
/// called it waits for [`DaemonReady::started`] or [`DaemonReady::failed`] and exits.
pub fn daemonize() -> Result<DaemonReady> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(failed("pipe"));
    }
    // SAFETY: pipe2 just returned these two descriptors; each is owned by one File only.
    let (read_end, write_end) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let mut read_end = Some(read_end);
    for step in ["first fork", "second fork"] {
        // SAFETY: the process is still single-threaded (see the module invariant), so the
        // child may keep running Rust code.
        match unsafe { libc::fork() } {
            -1 => return Err(failed(step)),
            0 => {}
            _ if step == "first fork" => {
                drop(write_end);
                match read_end.take() {
                    Some(pipe) => wait_for_daemon(pipe),
                    // SAFETY: as in `wait_for_daemon`.
                    None => unsafe { libc::_exit(1) },
                }
            }
            // SAFETY: `_exit` ends the intermediate child without running atexit handlers
            // that belong to the daemon now.
            _ => unsafe { libc::_exit(0) },
        }
        if step == "first fork" {
            drop(read_end.take());
            // SAFETY: setsid has no memory-safety preconditions.
            if unsafe { libc::setsid() } < 0 {
                return Err(failed("setsid"));
            }
        }
    }
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| MachineError::Daemonize {
            step: "open /dev/null",
            source,
        })?;
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: both descriptors are open; dup2 replaces `fd` atomically.
        if unsafe { libc::dup2(std::os::unix::io::AsRawFd::as_raw_fd(&null), fd) } < 0 {
            return Err(failed("redirect stdio"));
        }
    }
    Ok(DaemonReady { pipe: write_end })
}

/// The pid file: written at start, removed when dropped.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's pid to `path`.
    pub fn create(path: &Path) -> Result<PidFile> {
        let write = || -> std::io::Result<()> {
            let mut file = File::create(path)?;
            writeln!(file, "{}", std::process::id())
        };
        write().map_err(|source| MachineError::PidFile {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_holds_our_pid_and_goes_away() {
        let path = std::env::temp_dir().join(format!("sv-pidfile-{}", std::process::id()));
        let pidfile = PidFile::create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(pidfile);
        assert!(!path.exists());
        assert!(PidFile::create(Path::new("/nonexistent-dir/pid")).is_err());
    }
}
