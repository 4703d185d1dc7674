//! A block I/O throttle for chosen threads: a cgroup (v1 `blkio`, which takes single
//! threads) whose I/O to one device is limited to a number of requests per second. Requests a
//! throttled thread submits stay in the kernel's queue, in flight, for as long as the limit
//! says, which makes "N requests in flight" a fact a test can rely on.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

const BLKIO: &str = "/sys/fs/cgroup/blkio";

/// A throttle group, removed (its threads moved back to the root group) when dropped.
#[derive(Debug)]
pub struct IoThrottle {
    dir: PathBuf,
    threads: Vec<i32>,
}

impl IoThrottle {
    /// A group named after `name` and this process whose reads and writes of the device
    /// `major:minor` are each limited to `iops` requests per second. Fails where the host has
    /// no cgroup v1 `blkio` hierarchy (the error says so).
    pub fn new(name: &str, device: (u32, u32), iops: u32) -> io::Result<IoThrottle> {
        let root = PathBuf::from(BLKIO);
        if !root.join("tasks").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no cgroup v1 blkio hierarchy at {BLKIO}"),
            ));
        }
        // One group per throttle: tests running in parallel in one process must not share a
        // group (the first to finish would take the other's threads out of it).
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let throttle = IoThrottle {
            dir,
            threads: Vec::new(),
        };
        let rule = format!("{}:{} {iops}", device.0, device.1);
        for file in [
            "blkio.throttle.read_iops_device",
            "blkio.throttle.write_iops_device",
        ] {
            std::fs::write(throttle.dir.join(file), &rule)?;
        }
        Ok(throttle)
    }

    /// Puts thread `tid` of this process in the group: its I/O to the device is throttled from
    /// now on (threads it creates later start in the group too).
    pub fn add_thread(&mut self, tid: i32) -> io::Result<()> {
        std::fs::write(self.dir.join("tasks"), tid.to_string())?;
        self.threads.push(tid);
        Ok(())
    }
}

impl Drop for IoThrottle {
    fn drop(&mut self) {
        // Every task of the group must leave it before it can be removed; threads that have
        // ended left on their own.
        if let Ok(tasks) = std::fs::read_to_string(self.dir.join("tasks")) {
            for tid in tasks.split_whitespace() {
                let _ = std::fs::write(PathBuf::from(BLKIO).join("tasks"), tid);
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}
