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
//! - The pid file is locked before it is written and never reached through a symbolic link
//!   (see [`PidFile`]).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};

use util::file::{self, FileKind, LockKind};

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

/// Attempts at taking the pid file while other processes create, remove or replace it.
const PIDFILE_ATTEMPTS: usize = 16;

/// The pid file (`-pidfile`): locked, then written; removed when dropped.
///
/// Invariants:
/// - A symbolic link at the path is refused, never followed (its target is untouched); so is
///   anything but a regular file.
/// - The file is written (truncated, then our pid) only once this VMM holds an exclusive OFD
///   lock on all of it. The lock lasts as long as the VMM, so a second VMM given the same pid
///   file is refused with the pid written in it; a pid file nobody holds (left behind by a
///   VMM that was killed) is taken over.
/// - At exit the file is removed while still locked, and only if the path still names it.
pub struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    /// Takes `path` as this process's pid file and writes its pid there.
    pub fn create(path: &Path) -> Result<PidFile> {
        let io_error = |source| MachineError::PidFile {
            path: path.to_path_buf(),
            source,
        };
        for _ in 0..PIDFILE_ATTEMPTS {
            let Some(file) = open_pidfile(path)? else {
                continue;
            };
            if let Err(e) = file::set_lock(&file, LockKind::Exclusive, 0, 0) {
                if file::is_conflict(&e) {
                    return Err(MachineError::PidFileHeld {
                        path: path.to_path_buf(),
                        pid: read_pid(&file),
                    });
                }
                return Err(io_error(e));
            }
            // The VMM that held the file may have removed it (at its exit) between our open
            // and our lock, and someone may have put another file there: take what the path
            // names now.
            if !names(path, &file).map_err(io_error)? {
                continue;
            }
            file.set_len(0).map_err(io_error)?;
            file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
                .map_err(io_error)?;
            return Ok(PidFile {
                path: path.to_path_buf(),
                file,
            });
        }
        Err(io_error(std::io::Error::other(
            "it keeps being removed or replaced while we take it",
        )))
    }
}

/// Opens the regular file at `path` read-write, creating it if missing, never through a
/// symbolic link; `None` when it appeared or vanished meanwhile (try again).
fn open_pidfile(path: &Path) -> Result<Option<File>> {
    let io_error = |source| MachineError::PidFile {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    match file::open_path(path, false) {
        Ok(handle) => {
            let kind = FileKind::of(&handle).map_err(io_error)?;
            if kind != FileKind::Regular {
                return Err(MachineError::PidFileKind {
                    path: path.to_path_buf(),
                    kind,
                });
            }
            match file::reopen(&handle, &options) {
                Ok(file) => Ok(Some(file)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_error(e)),
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // O_CREAT | O_EXCL never follows a symbolic link, not even a dangling one.
            options
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW);
            match options.open(path) {
                Ok(file) => Ok(Some(file)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(io_error(e)),
            }
        }
        Err(e) => Err(io_error(e)),
    }
}

/// Whether `path` (not followed) names the open `file`.
fn names(path: &Path, file: &File) -> std::io::Result<bool> {
    let opened = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok((now.dev(), now.ino()) == (opened.dev(), opened.ino())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The pid written in a pid file, if it holds one.
fn read_pid(file: &File) -> Option<u32> {
    let mut text = [0u8; 32];
    let n = file.read_at(&mut text, 0).ok()?;
    std::str::from_utf8(&text[..n]).ok()?.trim().parse().ok()
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked, and only if the path still names our file.
        if names(&self.path, &self.file).unwrap_or(false) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("sv-pidfile-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn our_pid() -> String {
        format!("{}\n", std::process::id())
    }

    #[test]
    fn pid_file_holds_our_pid_and_goes_away() {
        let dir = Dir::new("basic");
        let path = dir.0.join("vm.pid");
        let pidfile = PidFile::create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), our_pid());
        drop(pidfile);
        assert!(!path.exists());
        assert!(PidFile::create(Path::new("/nonexistent-dir/pid")).is_err());
    }

    #[test]
    fn a_held_pid_file_is_refused_naming_the_pid_in_it() {
        let dir = Dir::new("held");
        let path = dir.0.join("vm.pid");
        let first = PidFile::create(&path).unwrap();
        // A second open file description conflicts even within one process.
        let err = PidFile::create(&path).err().expect("a held pid file");
        assert!(
            matches!(err, MachineError::PidFileHeld { pid: Some(p), .. } if p == std::process::id()),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "pid file {} is held by a running VMM (pid {})",
                path.display(),
                std::process::id()
            )
        );
        // The holder's file is untouched.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), our_pid());
        drop(first);
        drop(PidFile::create(&path).unwrap());
    }

    #[test]
    fn a_stale_pid_file_is_taken_over() {
        let dir = Dir::new("stale");
        let path = dir.0.join("vm.pid");
        std::fs::write(&path, "4194303 left by a VMM that was killed\n").unwrap();
        let pidfile = PidFile::create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), our_pid());
        drop(pidfile);
        assert!(!path.exists());
    }

    #[test]
    fn symlinks_and_other_kinds_are_refused_and_left_alone() {
        let dir = Dir::new("kinds");
        let target = dir.0.join("precious");
        std::fs::write(&target, "do not truncate\n").unwrap();
        let link = dir.0.join("vm.pid");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = PidFile::create(&link).err().expect("a symlink");
        assert!(
            matches!(
                err,
                MachineError::PidFileKind {
                    kind: FileKind::Symlink,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "do not truncate\n"
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());

        // A dangling link is not followed to create its target either.
        let dangling = dir.0.join("dangling.pid");
        let absent = dir.0.join("absent");
        std::os::unix::fs::symlink(&absent, &dangling).unwrap();
        assert!(PidFile::create(&dangling).is_err());
        assert!(!absent.exists());

        // A FIFO is refused without blocking; so is a directory.
        let fifo = dir.0.join("fifo.pid");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `name` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        for (path, kind) in [(&fifo, FileKind::Fifo), (&dir.0, FileKind::Directory)] {
            let err = PidFile::create(path).err().expect("not a regular file");
            assert!(
                matches!(err, MachineError::PidFileKind { kind: k, .. } if k == kind),
                "{err}"
            );
        }
    }
}
