//! The three files a drive is benchmarked on, and how they are prepared.
//!
//! - `disk`: a file on the ext4 disk under `/var/tmp`, opened with `O_DIRECT`: the device is
//!   the bottleneck.
//! - `shm`: a file in `/dev/shm` (tmpfs), opened with `O_DIRECT`: no device, so the VMM's own
//!   cost per request is what limits IOPS.
//! - `buffered`: another file under `/var/tmp`, opened without `O_DIRECT` and read once
//!   beforehand, so reads hit the page cache.
//!
//! Files are written in full (not sparse) and reused by later runs when their size matches.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// Where a drive's file lives and how it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// ext4 on the disk, `direct=on`.
    Disk,
    /// tmpfs, `direct=on`.
    Shm,
    /// ext4 through the page cache, `direct=off`.
    Buffered,
}

impl Backing {
    /// Every backing, in table order.
    pub const ALL: [Backing; 3] = [Backing::Shm, Backing::Disk, Backing::Buffered];

    /// The name used on the command line and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Backing::Disk => "disk",
            Backing::Shm => "shm",
            Backing::Buffered => "buffered",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Backing> {
        Backing::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// Whether the drive is opened with `O_DIRECT`.
    pub fn direct(self) -> bool {
        !matches!(self, Backing::Buffered)
    }

    /// The file used for this backing, under `disk_dir` or `shm_dir`.
    pub fn path(self, disk_dir: &Path, shm_dir: &Path) -> PathBuf {
        match self {
            Backing::Disk => disk_dir.join("stratovirt-bench-direct.img"),
            Backing::Shm => shm_dir.join("stratovirt-bench.img"),
            Backing::Buffered => disk_dir.join("stratovirt-bench-buffered.img"),
        }
    }
}

/// Makes sure `path` is a fully written file of `size` bytes; for a buffered backing, reads it
/// once so that it sits in the page cache.
pub fn prepare(path: &Path, size: u64, backing: Backing) -> Result<()> {
    let reuse = std::fs::metadata(path).is_ok_and(|m| m.len() == size);
    if !reuse {
        log::info!("writing {} ({} MiB)", path.display(), size >> 20);
        let mut file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        // Not zeroes, so that no layer can short-cut them.
        let chunk: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n])
                .with_context(|| format!("cannot write {}", path.display()))?;
            left -= n as u64;
        }
        file.sync_all()
            .with_context(|| format!("cannot sync {}", path.display()))?;
    }
    if backing == Backing::Buffered {
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        while file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?
            > 0
        {}
    }
    Ok(())
}
