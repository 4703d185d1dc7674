//! A loop device over a file (`losetup`), detached when dropped.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A block device backed by a file.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `backing` to a free loop device, with `sector_size`-byte logical sectors when
    /// given (`losetup --sector-size`).
    pub fn attach(backing: &Path, sector_size: Option<u32>) -> io::Result<LoopDevice> {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if let Some(size) = sector_size {
            cmd.arg("--sector-size").arg(size.to_string());
        }
        let out = cmd.arg(backing).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "losetup {}: {}",
                backing.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDevice { path })
    }

    /// The device node (`/dev/loopN`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's `major:minor` numbers.
    pub fn device_number(&self) -> io::Result<(u32, u32)> {
        let rdev = std::fs::metadata(&self.path)?.rdev();
        Ok((libc::major(rdev), libc::minor(rdev)))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let detached = Command::new("losetup").arg("-d").arg(&self.path).status();
        if !detached.is_ok_and(|s| s.success()) {
            eprintln!("cannot detach {}", self.path.display());
        }
    }
}
