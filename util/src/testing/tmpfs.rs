//! A size-limited tmpfs mounted on a fresh directory (`ENOSPC` on demand), grown with a
//! remount, unmounted when dropped.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

fn mount(args: &[&str], dir: &Path) -> io::Result<()> {
    let out = Command::new("mount").args(args).arg(dir).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "mount {} {}: {}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` (rounded up to pages by the kernel) on a new directory named
    /// after `name` in the temporary directory.
    pub fn mount(name: &str, bytes: u64) -> io::Result<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("tmpfs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let size = format!("size={bytes}");
        mount(&["-t", "tmpfs", "-o", &size, "tmpfs"], &dir)?;
        Ok(Tmpfs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Changes the size limit (`mount -o remount,size=`).
    pub fn resize(&self, bytes: u64) -> io::Result<()> {
        mount(&["-o", &format!("remount,size={bytes}")], &self.dir)
    }

    /// Fills the free space with a file named `name` (written until `ENOSPC`).
    pub fn fill(&self, name: &str) -> io::Result<PathBuf> {
        use std::io::Write;
        let path = self.dir.join(name);
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0x5au8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e),
            }
        }
        // Whatever partial page the last write left, the space is taken now.
        let _ = file.flush();
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            eprintln!("cannot unmount {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
