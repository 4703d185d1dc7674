//! How much of a file sits in the page cache, and how much of that is dirty (`cachestat(2)`,
//! Linux 6.5): a test can see that a flush really wrote a file's dirty pages back.

use std::io;
use std::os::unix::io::AsRawFd;

/// `cachestat`'s number on x86_64.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// Page-cache counts of a whole file, in pages (`struct cachestat`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageCacheState {
    /// Pages in the cache.
    pub cached: u64,
    /// Dirty pages (written, not yet written back).
    pub dirty: u64,
    /// Pages being written back.
    pub writeback: u64,
    /// Pages evicted.
    pub evicted: u64,
    /// Pages evicted recently.
    pub recently_evicted: u64,
}

impl PageCacheState {
    /// The counts of `file` (a regular file or a block device) right now.
    pub fn of(file: &impl AsRawFd) -> io::Result<PageCacheState> {
        let range = CachestatRange { off: 0, len: 0 };
        let mut state = PageCacheState::default();
        // SAFETY: `range` and `state` are valid, correctly laid out structs for the duration
        // of the call; the kernel writes only `state`. A length of 0 means "to the end".
        let ret = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const CachestatRange,
                &mut state as *mut PageCacheState,
                0u32,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(state)
    }
}
