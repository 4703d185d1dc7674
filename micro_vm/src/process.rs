//! `-daemonize` and `-pidfile`.
//!
//! Invariant: [`daemonize`] must run before any thread is created (it forks), so the caller
//! runs it first thing after parsing the command line.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{MachineError, Result};

fn failed(step: &'static str) -> MachineError {
    MachineError::Daemonize {
        step,
        source: std::io::Error::last_os_error(),
    }
}

/// Detaches from the terminal: fork, new session, fork again, `/` as working directory,
/// stdin/stdout/stderr on `/dev/null`. Only the grandchild returns.
pub fn daemonize() -> Result<()> {
    for step in ["first fork", "second fork"] {
        // SAFETY: the process is still single-threaded (see the module invariant), so the
        // child may keep running Rust code.
        match unsafe { libc::fork() } {
            -1 => return Err(failed(step)),
            0 => {}
            // SAFETY: `_exit` ends the parent without running atexit handlers that belong
            // to the child now.
            _ => unsafe { libc::_exit(0) },
        }
        if step == "first fork" {
            // SAFETY: setsid has no memory-safety preconditions.
            if unsafe { libc::setsid() } < 0 {
                return Err(failed("setsid"));
            }
        }
    }
    std::env::set_current_dir("/").map_err(|source| MachineError::Daemonize {
        step: "chdir /",
        source,
    })?;
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
    Ok(())
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
