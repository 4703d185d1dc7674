//! The replies of the block queries, in QEMU's shape: `query-block` ([`BlockInfo`]) and
//! `query-blockstats` ([`BlockStatsInfo`]). The machine fills them in; the server serializes
//! them. Members QEMU clients read are QEMU's; `aio` in `inserted` is ours (the engine).

use std::path::PathBuf;

use serde::Serialize;
use util::aio::{AioEngine, DetectZeroes, ThrottleConfig};

/// One block device of `query-block`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockInfo {
    /// The drive (`-drive id` or `blockdev-add` node name); empty for an empty slot.
    pub device: String,
    /// The device id (`-device id` or `device_add` id, or the slot's name when empty).
    pub qdev: String,
    /// Always false: the micro VM's disks have no tray.
    pub locked: bool,
    /// Always false (QEMU's meaning: a removable medium).
    pub removable: bool,
    /// Always `"unknown"`, as QEMU says of virtio disks.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The image, unless the slot is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inserted: Option<InsertedImage>,
}

/// The image of a device in `query-block` (QEMU's `BlockDeviceInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InsertedImage {
    /// The image path.
    pub file: PathBuf,
    /// The node name.
    #[serde(rename = "node-name")]
    pub node_name: String,
    /// Read-only.
    pub ro: bool,
    /// Always `"raw"`.
    pub drv: &'static str,
    /// Always false.
    pub encrypted: bool,
    /// `detect-zeroes`: `off`, `on` or `unmap`.
    pub detect_zeroes: &'static str,
    /// The engine (`aio=`): not in QEMU's reply, ours.
    pub aio: &'static str,
    /// The I/O limits, QEMU's members (0 = none).
    #[serde(flatten)]
    pub throttle: ThrottleMembers,
    /// Image details.
    pub image: ImageInfo,
    /// Cache mode.
    pub cache: CacheInfo,
    /// Always 0 (no write threshold).
    pub write_threshold: u64,
}

/// `inserted.image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The image path.
    pub filename: PathBuf,
    /// Always `"raw"`.
    pub format: &'static str,
    /// Size in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
}

/// `inserted.cache`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheInfo {
    /// Always true: the guest is told to flush (`VIRTIO_BLK_F_FLUSH`).
    pub writeback: bool,
    /// `O_DIRECT`.
    pub direct: bool,
    /// Always false: flushes reach the host.
    #[serde(rename = "no-flush")]
    pub no_flush: bool,
}

/// The I/O limits as `query-block` and `block_set_io_throttle` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct ThrottleMembers {
    /// `bps-total`.
    pub bps: u64,
    /// `bps-read`.
    pub bps_rd: u64,
    /// `bps-write`.
    pub bps_wr: u64,
    /// `iops-total`.
    pub iops: u64,
    /// `iops-read`.
    pub iops_rd: u64,
    /// `iops-write`.
    pub iops_wr: u64,
    /// `bps-total-max`.
    pub bps_max: u64,
    /// `bps-read-max`.
    pub bps_rd_max: u64,
    /// `bps-write-max`.
    pub bps_wr_max: u64,
    /// `iops-total-max`.
    pub iops_max: u64,
    /// `iops-read-max`.
    pub iops_rd_max: u64,
    /// `iops-write-max`.
    pub iops_wr_max: u64,
    /// `bps-total-max-length`.
    pub bps_max_length: u64,
    /// `bps-read-max-length`.
    pub bps_rd_max_length: u64,
    /// `bps-write-max-length`.
    pub bps_wr_max_length: u64,
    /// `iops-total-max-length`.
    pub iops_max_length: u64,
    /// `iops-read-max-length`.
    pub iops_rd_max_length: u64,
    /// `iops-write-max-length`.
    pub iops_wr_max_length: u64,
    /// `iops-size`.
    pub iops_size: u64,
}

impl From<&ThrottleConfig> for ThrottleMembers {
    fn from(t: &ThrottleConfig) -> Self {
        ThrottleMembers {
            bps: t.bps_total.avg,
            bps_rd: t.bps_read.avg,
            bps_wr: t.bps_write.avg,
            iops: t.iops_total.avg,
            iops_rd: t.iops_read.avg,
            iops_wr: t.iops_write.avg,
            bps_max: t.bps_total.max,
            bps_rd_max: t.bps_read.max,
            bps_wr_max: t.bps_write.max,
            iops_max: t.iops_total.max,
            iops_rd_max: t.iops_read.max,
            iops_wr_max: t.iops_write.max,
            bps_max_length: t.bps_total.max_length,
            bps_rd_max_length: t.bps_read.max_length,
            bps_wr_max_length: t.bps_write.max_length,
            iops_max_length: t.iops_total.max_length,
            iops_rd_max_length: t.iops_read.max_length,
            iops_wr_max_length: t.iops_write.max_length,
            iops_size: t.iops_size,
        }
    }
}

impl InsertedImage {
    /// The members QEMU reports for a raw image.
    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        file: PathBuf,
        node_name: String,
        ro: bool,
        direct: bool,
        aio: AioEngine,
        detect_zeroes: DetectZeroes,
        throttle: &ThrottleConfig,
        size: u64,
    ) -> InsertedImage {
        InsertedImage {
            image: ImageInfo {
                filename: file.clone(),
                format: "raw",
                virtual_size: size,
            },
            file,
            node_name,
            ro,
            drv: "raw",
            encrypted: false,
            detect_zeroes: detect_zeroes.as_str(),
            aio: aio.as_str(),
            throttle: ThrottleMembers::from(throttle),
            cache: CacheInfo {
                writeback: true,
                direct,
                no_flush: false,
            },
            write_threshold: 0,
        }
    }
}

/// One device of `query-blockstats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockStatsInfo {
    /// The drive (node); empty for an empty slot.
    pub device: String,
    /// The device id.
    pub qdev: String,
    /// The node name.
    #[serde(rename = "node-name", skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// The counters.
    pub stats: BlockStatsCounters,
}

/// `stats` of `query-blockstats`, QEMU's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct BlockStatsCounters {
    /// Bytes read.
    pub rd_bytes: u64,
    /// Bytes written.
    pub wr_bytes: u64,
    /// Bytes discarded.
    pub unmap_bytes: u64,
    /// Reads completed.
    pub rd_operations: u64,
    /// Writes completed.
    pub wr_operations: u64,
    /// Flushes completed.
    pub flush_operations: u64,
    /// Discards completed.
    pub unmap_operations: u64,
    /// Nanoseconds reads took, summed.
    pub rd_total_time_ns: u64,
    /// Nanoseconds writes took, summed.
    pub wr_total_time_ns: u64,
    /// Nanoseconds flushes took, summed.
    pub flush_total_time_ns: u64,
    /// Nanoseconds discards took, summed.
    pub unmap_total_time_ns: u64,
    /// Reads the host failed.
    pub failed_rd_operations: u64,
    /// Writes the host failed.
    pub failed_wr_operations: u64,
    /// Flushes the host failed.
    pub failed_flush_operations: u64,
    /// Discards the host failed.
    pub failed_unmap_operations: u64,
    /// Always true: failed requests are counted.
    pub account_failed: bool,
}
