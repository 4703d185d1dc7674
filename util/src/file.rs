//! Host files the VMM is handed by path (images, kernels, the pid file): opening them without
//! blocking or side effects, and open-file-description locks on them.
//!
//! - [`open_checked`] first opens the path with `O_PATH` (which never blocks and has no side
//!   effect, even on a FIFO or a device), learns what it is with `fstat`, refuses what the
//!   caller does not accept, and only then opens that same inode for I/O through
//!   `/proc/self/fd/N`. A FIFO, a terminal or a tape drive is never really opened, and nothing
//!   renamed between the check and the open can swap the file (the `O_PATH` descriptor pins the
//!   inode).
//! - [`set_lock`], [`unlock`] and [`conflicting_lock`]: OFD locks (`F_OFD_SETLK`,
//!   `F_OFD_GETLK`). They belong to the open file description, not to the process: two opens
//!   of one file in one process conflict like two processes do, and the locks last until the
//!   last descriptor of that open file description is closed. Nothing here waits for a lock.
//! - [`Locking`]: `on|off|auto`, how a user asks for image locks (QEMU's `file.locking`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;

/// What a path names, from its `st_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A block device.
    BlockDevice,
    /// A character device (`/dev/zero`, a terminal, `/dev/kvm`...).
    CharDevice,
    /// A directory.
    Directory,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix socket.
    Socket,
    /// A symbolic link (seen only when it was not followed).
    Symlink,
    /// Anything else.
    Unknown,
}

impl FileKind {
    /// The kind of a file whose `st_mode` is `mode`.
    pub fn from_mode(mode: libc::mode_t) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Unknown,
        }
    }

    /// The kind of the file open as `fd` (`fstat`).
    pub fn of(fd: &impl AsFd) -> io::Result<FileKind> {
        Ok(FileKind::from_mode(fstat(fd)?.st_mode))
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Regular => "regular file",
            FileKind::BlockDevice => "block device",
            FileKind::CharDevice => "character device",
            FileKind::Directory => "directory",
            FileKind::Fifo => "FIFO",
            FileKind::Socket => "socket",
            FileKind::Symlink => "symbolic link",
            FileKind::Unknown => "file of unknown type",
        })
    }
}

/// Errors of opening a file ([`open_checked`]).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening, inspecting or reopening the path failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The path names a kind of file the caller does not accept.
    #[error("it is a {0}")]
    Kind(FileKind),
}

/// A locking mode other than `on`, `off` or `auto` (the error of parsing a [`Locking`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown locking mode {0:?}: expected on, off or auto")]
pub struct UnknownLocking(pub String);

/// `fstat` of `fd`.
pub fn fstat(fd: &impl AsFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open (borrowed for the call) and `st` is a valid, writable
    // `stat` the kernel fills in.
    let ret = unsafe { libc::fstat(fd.as_fd().as_raw_fd(), &mut st) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Opens `path` with `O_PATH | O_CLOEXEC` (plus `O_NOFOLLOW` unless `follow`): a handle on
/// the inode that cannot read or write, and whose opening never blocks and has no side
/// effect on the file. Without `follow`, a symbolic link at `path` gives a handle on the link
/// itself (of kind [`FileKind::Symlink`]).
pub fn open_path(path: &Path, follow: bool) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    // SAFETY: `name` is a NUL-terminated string that lives through the call.
    let fd = unsafe { libc::open(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the inode behind `handle` (an [`open_path`] handle, or any descriptor) anew with
/// `options`, through `/proc/self/fd/N`: the same file, whatever its path names now.
pub fn reopen(handle: &impl AsFd, options: &OpenOptions) -> io::Result<File> {
    options.open(format!("/proc/self/fd/{}", handle.as_fd().as_raw_fd()))
}

/// Opens `path` (following symbolic links) with `options` if it is one of the `accepted`
/// kinds; see the module documentation. Fails with [`FileError::Kind`] without opening
/// anything else for I/O.
pub fn open_checked(
    path: &Path,
    accepted: &[FileKind],
    options: &OpenOptions,
) -> Result<File, FileError> {
    let handle = open_path(path, true)?;
    let kind = FileKind::of(&handle)?;
    if !accepted.contains(&kind) {
        return Err(FileError::Kind(kind));
    }
    Ok(reopen(&handle, options)?)
}

/// The two kinds of byte-range lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// A read (shared) lock: many may hold it together.
    Shared,
    /// A write (exclusive) lock: it conflicts with every other lock.
    Exclusive,
}

/// A lock that conflicts with one asked for ([`conflicting_lock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockHolder {
    /// The kind of the lock held.
    pub kind: LockKind,
    /// The holder's pid for a process-associated (classic POSIX) lock; `None` for an OFD lock,
    /// which belongs to no process.
    pub pid: Option<i32>,
}

fn lock_request(kind: libc::c_int, start: u64, len: u64) -> io::Result<libc::flock> {
    let too_big = || io::Error::from_raw_os_error(libc::EINVAL);
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct (and OFD locks
    // require `l_pid` to be 0).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = libc::off_t::try_from(start).map_err(|_| too_big())?;
    lock.l_len = libc::off_t::try_from(len).map_err(|_| too_big())?;
    Ok(lock)
}

fn fcntl_lock(file: &impl AsFd, command: libc::c_int, lock: &mut libc::flock) -> io::Result<()> {
    // SAFETY: the descriptor is open (borrowed for the call) and `lock` is a valid `flock`
    // the kernel reads (and, for F_OFD_GETLK, writes).
    let ret = unsafe { libc::fcntl(file.as_fd().as_raw_fd(), command, lock as *mut libc::flock) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lock_type(kind: LockKind) -> libc::c_int {
    match kind {
        LockKind::Shared => libc::F_RDLCK,
        LockKind::Exclusive => libc::F_WRLCK,
    }
}

/// Takes (or converts to) an OFD lock of `kind` on `len` bytes from `start` of `file` (`len`
/// 0: to the end of the file, however it grows), without waiting. A conflicting lock held
/// through another open file description fails with `EAGAIN` (or `EACCES`): see
/// [`is_conflict`]. A shared lock needs `file` open for reading, an exclusive one for
/// writing.
pub fn set_lock(file: &impl AsFd, kind: LockKind, start: u64, len: u64) -> io::Result<()> {
    let mut lock = lock_request(lock_type(kind), start, len)?;
    fcntl_lock(file, libc::F_OFD_SETLK, &mut lock)
}

/// Drops the OFD locks `file` holds on `len` bytes from `start`.
pub fn unlock(file: &impl AsFd, start: u64, len: u64) -> io::Result<()> {
    let mut lock = lock_request(libc::F_UNLCK, start, len)?;
    fcntl_lock(file, libc::F_OFD_SETLK, &mut lock)
}

/// A lock held on `len` bytes from `start` of the file, through another open file
/// description, that would conflict with a lock of `kind` through `file`: what
/// `F_OFD_GETLK` reports (the first one, if several). Locks `file` holds itself never count.
pub fn conflicting_lock(
    file: &impl AsFd,
    kind: LockKind,
    start: u64,
    len: u64,
) -> io::Result<Option<LockHolder>> {
    let mut lock = lock_request(lock_type(kind), start, len)?;
    fcntl_lock(file, libc::F_OFD_GETLK, &mut lock)?;
    let kind = match libc::c_int::from(lock.l_type) {
        libc::F_UNLCK => return Ok(None),
        libc::F_RDLCK => LockKind::Shared,
        _ => LockKind::Exclusive,
    };
    Ok(Some(LockHolder {
        kind,
        pid: (lock.l_pid > 0).then_some(lock.l_pid),
    }))
}

/// Whether a lock call's error means another holder's lock is in the way.
pub fn is_conflict(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EACCES))
}

/// Whether a lock call's error means the file system (or kernel) offers no such lock:
/// `EINVAL` (no OFD locks), `ENOLCK` (e.g. NFS without a lock manager), `EOPNOTSUPP`.
pub fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::ENOLCK | libc::EOPNOTSUPP)
    )
}

/// Whether an image is locked (QEMU's `file.locking`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Locking {
    /// Lock where the file system supports it; go on without a lock where it does not.
    #[default]
    Auto,
    /// Lock, or refuse to open the image.
    On,
    /// Take no lock and check none.
    Off,
}

impl FromStr for Locking {
    type Err = UnknownLocking;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Locking::Auto),
            "on" => Ok(Locking::On),
            "off" => Ok(Locking::Off),
            other => Err(UnknownLocking(other.to_string())),
        }
    }
}

impl fmt::Display for Locking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Locking::Auto => "auto",
            Locking::On => "on",
            Locking::Off => "off",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Duration;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("util-file-{}-{name}", std::process::id()));
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

    fn mkfifo(path: &Path) {
        let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `name` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    }

    /// Runs `f` on another thread and fails if it has not returned within 5 s (a FIFO opened
    /// for real would block it forever).
    fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the open blocked")
    }

    fn read_write() -> OpenOptions {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        options
    }

    #[test]
    fn kinds_are_named_from_the_mode_without_opening_anything() {
        let dir = Dir::new("kinds");
        let file = dir.0.join("f");
        std::fs::write(&file, b"x").unwrap();
        let fifo = dir.0.join("fifo");
        mkfifo(&fifo);
        let socket = dir.0.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        for (path, follow, kind) in [
            (file.as_path(), true, FileKind::Regular),
            (dir.0.as_path(), true, FileKind::Directory),
            (fifo.as_path(), true, FileKind::Fifo),
            (socket.as_path(), true, FileKind::Socket),
            (Path::new("/dev/null"), true, FileKind::CharDevice),
            (link.as_path(), true, FileKind::Regular),
            (link.as_path(), false, FileKind::Symlink),
        ] {
            let handle = open_path(path, follow).unwrap();
            assert_eq!(FileKind::of(&handle).unwrap(), kind, "{}", path.display());
        }
        assert_eq!(FileKind::Fifo.to_string(), "FIFO");
        assert_eq!(FileKind::CharDevice.to_string(), "character device");
    }

    #[test]
    fn open_checked_refuses_other_kinds_at_once_and_opens_the_same_inode() {
        let dir = Dir::new("checked");
        let fifo = dir.0.join("fifo");
        mkfifo(&fifo);
        let path = fifo.clone();
        // A FIFO opened for reading (or read-write on some systems) would wait for a writer.
        let result = within_seconds(move || {
            let mut options = OpenOptions::new();
            options.read(true);
            open_checked(&path, &[FileKind::Regular, FileKind::BlockDevice], &options)
        });
        assert!(matches!(result, Err(FileError::Kind(FileKind::Fifo))));
        for (path, kind) in [
            (Path::new("/dev/zero"), FileKind::CharDevice),
            (dir.0.as_path(), FileKind::Directory),
        ] {
            let result = open_checked(path, &[FileKind::Regular], &read_write());
            assert!(
                matches!(result, Err(FileError::Kind(k)) if k == kind),
                "{}",
                path.display()
            );
        }
        let missing = open_checked(&dir.0.join("absent"), &[FileKind::Regular], &read_write());
        assert!(
            matches!(&missing, Err(FileError::Io(e)) if e.kind() == io::ErrorKind::NotFound),
            "{missing:?}"
        );

        let image = dir.0.join("image");
        std::fs::write(&image, b"data").unwrap();
        let file = open_checked(&image, &[FileKind::Regular], &read_write()).unwrap();
        let meta = std::fs::metadata(&image).unwrap();
        let opened = file.metadata().unwrap();
        assert_eq!((opened.dev(), opened.ino()), (meta.dev(), meta.ino()));
        // Opened with the caller's access mode, not O_PATH: it reads and writes.
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"DA", 0).unwrap();
        let mut back = [0u8; 4];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"DAta");
    }

    #[test]
    fn the_handle_pins_the_inode_across_a_rename() {
        let dir = Dir::new("pin");
        let first = dir.0.join("first");
        std::fs::write(&first, b"first").unwrap();
        let handle = open_path(&first, true).unwrap();
        // The path now names another file; the handle still reaches the first one.
        let second = dir.0.join("second");
        std::fs::write(&second, b"second").unwrap();
        std::fs::rename(&first, dir.0.join("moved")).unwrap();
        std::fs::rename(&second, &first).unwrap();
        let text = std::io::read_to_string(reopen(&handle, &read_write()).unwrap()).unwrap();
        assert_eq!(text, "first");
    }

    #[test]
    fn ofd_locks_conflict_between_two_opens_in_one_process() {
        let dir = Dir::new("ofd");
        let path = dir.0.join("image");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let a = read_write().open(&path).unwrap();
        let b = read_write().open(&path).unwrap();
        set_lock(&a, LockKind::Shared, 100, 1).unwrap();
        set_lock(&b, LockKind::Shared, 100, 1).unwrap();
        let e = set_lock(&b, LockKind::Exclusive, 100, 1).unwrap_err();
        assert!(is_conflict(&e), "{e}");
        // A's own lock never conflicts with A; B sees A's shared lock, with no pid (OFD).
        let shared = LockHolder {
            kind: LockKind::Shared,
            pid: None,
        };
        assert_eq!(
            conflicting_lock(&a, LockKind::Exclusive, 100, 1).unwrap(),
            Some(shared)
        );
        unlock(&b, 100, 1).unwrap();
        assert_eq!(
            conflicting_lock(&a, LockKind::Exclusive, 100, 1).unwrap(),
            None
        );
        assert_eq!(
            conflicting_lock(&b, LockKind::Exclusive, 101, 1).unwrap(),
            None
        );
        set_lock(&a, LockKind::Exclusive, 300, 0).unwrap();
        let held = conflicting_lock(&b, LockKind::Shared, 1 << 40, 1).unwrap();
        assert_eq!(held.map(|h| h.kind), Some(LockKind::Exclusive));
        // Closing A's only descriptor drops its locks.
        drop(a);
        set_lock(&b, LockKind::Exclusive, 100, 0).unwrap();
    }

    #[test]
    fn lock_errors_are_classified() {
        let conflict = io::Error::from_raw_os_error(libc::EAGAIN);
        assert!(is_conflict(&conflict) && !is_unsupported(&conflict));
        for errno in [libc::EINVAL, libc::ENOLCK, libc::EOPNOTSUPP] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(is_unsupported(&e) && !is_conflict(&e), "{e}");
        }
        assert!(!is_unsupported(&io::Error::from_raw_os_error(libc::EBADF)));
    }

    #[test]
    fn locking_modes_parse_as_qemu_spells_them() {
        for (text, mode) in [
            ("auto", Locking::Auto),
            ("on", Locking::On),
            ("off", Locking::Off),
        ] {
            assert_eq!(text.parse::<Locking>().unwrap(), mode);
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!(Locking::default(), Locking::Auto);
        for bad in ["true", "yes", "", "On"] {
            assert!(bad.parse::<Locking>().is_err(), "{bad:?}");
        }
    }
}
