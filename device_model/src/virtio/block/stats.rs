//! A device's I/O counters (QMP `query-blockstats`, QEMU's names): written by the device's
//! thread as requests finish, read by any thread. Relaxed atomics: no lock and no system call
//! on the I/O path, and a reader sees each counter exact (if not all of them at one instant).

use std::sync::atomic::{AtomicU64, Ordering};

/// Which counters a finished request adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Flush,
    Discard,
}

#[derive(Debug, Default)]
struct Counters {
    operations: AtomicU64,
    bytes: AtomicU64,
    total_time_ns: AtomicU64,
    failed: AtomicU64,
}

/// The live counters of one device.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    read: Counters,
    write: Counters,
    flush: Counters,
    discard: Counters,
}

/// What `query-blockstats` reports for a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Reads completed.
    pub rd_operations: u64,
    /// Writes completed (write-zeroes included).
    pub wr_operations: u64,
    /// Flushes completed.
    pub flush_operations: u64,
    /// Discards completed.
    pub unmap_operations: u64,
    /// Bytes read.
    pub rd_bytes: u64,
    /// Bytes written (write-zeroes included).
    pub wr_bytes: u64,
    /// Bytes discarded.
    pub unmap_bytes: u64,
    /// Time reads spent in the device, from start to answer, in nanoseconds.
    pub rd_total_time_ns: u64,
    /// Time writes spent in the device.
    pub wr_total_time_ns: u64,
    /// Time flushes spent in the device.
    pub flush_total_time_ns: u64,
    /// Time discards spent in the device.
    pub unmap_total_time_ns: u64,
    /// Reads the host failed.
    pub failed_rd_operations: u64,
    /// Writes the host failed.
    pub failed_wr_operations: u64,
    /// Flushes the host failed.
    pub failed_flush_operations: u64,
    /// Discards the host failed.
    pub failed_unmap_operations: u64,
}

impl Stats {
    fn counters(&self, kind: Kind) -> &Counters {
        match kind {
            Kind::Read => &self.read,
            Kind::Write => &self.write,
            Kind::Flush => &self.flush,
            Kind::Discard => &self.discard,
        }
    }

    /// Counts a request that succeeded: `bytes` moved in `ns` nanoseconds.
    pub(super) fn done(&self, kind: Kind, bytes: u64, ns: u64) {
        let c = self.counters(kind);
        c.operations.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.total_time_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts a request the host failed.
    pub(super) fn failed(&self, kind: Kind) {
        self.counters(kind).failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub(super) fn snapshot(&self) -> BlockStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BlockStats {
            rd_operations: load(&self.read.operations),
            wr_operations: load(&self.write.operations),
            flush_operations: load(&self.flush.operations),
            unmap_operations: load(&self.discard.operations),
            rd_bytes: load(&self.read.bytes),
            wr_bytes: load(&self.write.bytes),
            unmap_bytes: load(&self.discard.bytes),
            rd_total_time_ns: load(&self.read.total_time_ns),
            wr_total_time_ns: load(&self.write.total_time_ns),
            flush_total_time_ns: load(&self.flush.total_time_ns),
            unmap_total_time_ns: load(&self.discard.total_time_ns),
            failed_rd_operations: load(&self.read.failed),
            failed_wr_operations: load(&self.write.failed),
            failed_flush_operations: load(&self.flush.failed),
            failed_unmap_operations: load(&self.discard.failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_per_kind() {
        let stats = Stats::default();
        stats.done(Kind::Read, 4096, 10);
        stats.done(Kind::Read, 512, 5);
        stats.done(Kind::Write, 4096, 7);
        stats.failed(Kind::Flush);
        let s = stats.snapshot();
        assert_eq!(
            (s.rd_operations, s.rd_bytes, s.rd_total_time_ns),
            (2, 4608, 15)
        );
        assert_eq!((s.wr_operations, s.wr_bytes), (1, 4096));
        assert_eq!((s.flush_operations, s.failed_flush_operations), (0, 1));
    }
}
