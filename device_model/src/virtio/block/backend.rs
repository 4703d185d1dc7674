//! A drive: its open file ([`Disk`], shared by every queue of a device) and the engine
//! (`aio=off|threads|native|io_uring`) of one queue bound to it.
//!
//! Invariants:
//! - The engine borrows the file's descriptor, so it is declared (and so dropped) before the
//!   disk it holds a reference to; its owner drains it first, on the thread that uses the
//!   engine. The file is closed when the last queue's backend lets go of the [`Disk`].
//! - A device with several queues has one [`BlockBackend`] per queue: the one
//!   [`BlockBackend::open`] made and [`BlockBackend::sibling`]s of it, each with its own engine
//!   of the same kind on the same open file. Everything about the file itself (its
//!   configuration, size, alignment, locks, whether a flush failed) lives once, in the
//!   [`Disk`] they share.
//! - Guest RAM is registered with the engine (fixed buffers) only when it is preallocated:
//!   registering pins every page, which must never be what makes guest RAM resident.
//! - [`Alignment`] is what the host storage needs of a request, probed once at open:
//!   `statx(STATX_DIOALIGN)` where the kernel reports it, else the block device's logical
//!   block size (`BLKSSZGET`), else 512 bytes for `O_DIRECT`; nothing for buffered files.
//! - Only a regular file or a block device is opened, and it is checked before it is opened
//!   for I/O (`util::file::open_checked`): a FIFO or a character device is refused without
//!   blocking and without side effects.
//! - The image locks (`lock.rs`) are taken right after the file is opened and belong to its
//!   open file description: they last exactly as long as `file`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use util::aio::{
    self, AioContext, AioEngine, AioOpcode, DetectZeroes, Discard, ErrorAction, ThrottleConfig,
    WorkerSetup,
};
use util::file::{self as host_file, FileError, FileKind, Locking};

use super::lock::lock_image;
use super::request::SECTOR_SIZE;
use crate::virtio::VirtioError;

/// How to open a drive (`-drive file=...,readonly=,direct=,aio=,serial=,file.locking=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockBackendConfig {
    /// The image file or block device.
    pub path: PathBuf,
    /// Open read-only and offer `VIRTIO_BLK_F_RO`.
    pub readonly: bool,
    /// Open with `O_DIRECT` (bypass the host page cache).
    pub direct: bool,
    /// The engine that carries the drive's I/O.
    pub aio: AioEngine,
    /// The serial returned by `VIRTIO_BLK_T_GET_ID` (at most 20 bytes are used).
    pub serial: Option<String>,
    /// What a failed write, flush, discard or write-zeroes does (`werror=`).
    pub werror: ErrorAction,
    /// What a failed read does (`rerror=`).
    pub rerror: ErrorAction,
    /// Whether to take the image locks (QEMU's protocol, see `lock.rs`).
    pub locking: Locking,
    /// Whether the guest may discard (`discard=`).
    pub discard: Discard,
    /// Whether zero writes become write-zeroes (`detect-zeroes=`).
    pub detect_zeroes: DetectZeroes,
    /// The I/O limits (`throttling.*`).
    pub throttle: ThrottleConfig,
    /// What each worker of an `aio=threads` engine runs first (the VMM installs the worker's
    /// seccomp filter there); every engine of the drive (one per queue) uses it.
    pub worker_setup: WorkerSetup,
}

impl BlockBackendConfig {
    /// `path` with `-drive`'s defaults: read-write, `O_DIRECT`, `aio=native`, no serial,
    /// QEMU's error policy (`werror=enospc`, `rerror=report`), `locking=auto`. Change what
    /// differs with struct update syntax.
    pub fn new(path: impl Into<PathBuf>) -> BlockBackendConfig {
        BlockBackendConfig {
            path: path.into(),
            readonly: false,
            direct: true,
            aio: AioEngine::Native,
            serial: None,
            werror: ErrorAction::Enospc,
            rerror: ErrorAction::Report,
            locking: Locking::Auto,
            discard: Discard::Ignore,
            detect_zeroes: DetectZeroes::Off,
            throttle: ThrottleConfig::default(),
            worker_setup: WorkerSetup::default(),
        }
    }
}

/// What the host storage needs of a request's file offset, length and memory: without
/// `O_DIRECT` nothing (all 1); with it, the alignment the kernel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alignment {
    /// File offsets and lengths must be multiples of this (the logical block size).
    pub offset: u64,
    /// Buffer addresses and lengths must be multiples of this.
    pub memory: u64,
    /// The storage's physical block size (for the guest's topology hint).
    pub physical: u64,
}

impl Alignment {
    /// No constraint at all (page cache).
    pub const NONE: Alignment = Alignment {
        offset: 1,
        memory: 1,
        physical: 1,
    };

    /// Whether a transfer at `offset` over `iovecs` (`len` bytes in total) meets it.
    pub fn fits(&self, offset: u64, len: u64, iovecs: &[aio::Iovec]) -> bool {
        offset.is_multiple_of(self.offset)
            && len.is_multiple_of(self.offset)
            && iovecs.iter().all(|iov| {
                iov.base.is_multiple_of(self.memory) && iov.len.is_multiple_of(self.memory)
            })
    }

    /// The block size the guest is told: the logical block size, at least a sector.
    pub fn guest_block_size(&self) -> u64 {
        self.offset.max(SECTOR_SIZE)
    }

    /// What `file` (opened with `O_DIRECT` when `direct`) needs.
    fn probe(file: &File, direct: bool) -> Alignment {
        if !direct {
            return Alignment::NONE;
        }
        let (mut offset, mut memory) = dio_align(file).unwrap_or((0, 0));
        let block = block_sizes(file);
        if offset == 0 {
            offset = block.map_or(SECTOR_SIZE, |(logical, _)| logical);
        }
        if memory == 0 {
            memory = offset.min(SECTOR_SIZE);
        }
        let physical = block.map_or(offset, |(_, physical)| physical.max(offset));
        Alignment {
            offset,
            memory,
            physical,
        }
    }
}

/// `STATX_DIOALIGN`: (offset, memory) alignment of `O_DIRECT` on `file`, if the kernel and
/// file system report it.
fn dio_align(file: &File) -> Option<(u64, u64)> {
    // SAFETY: `statx` is plain data; zero is a valid value of every field.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the call, the empty path with AT_EMPTY_PATH names it, and
    // `stx` is a valid, writable statx buffer.
    let ret = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if ret != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((
        u64::from(stx.stx_dio_offset_align),
        u64::from(stx.stx_dio_mem_align),
    ))
}

/// A block device's logical and physical block sizes (`BLKSSZGET`, `BLKPBSZGET`); `None` for
/// anything else.
fn block_sizes(file: &File) -> Option<(u64, u64)> {
    let kind = file.metadata().ok()?.file_type();
    if !std::os::unix::fs::FileTypeExt::is_block_device(&kind) {
        return None;
    }
    let mut logical: libc::c_int = 0;
    let mut physical: libc::c_uint = 0;
    // SAFETY: both ioctls write one integer of the type given to the pointer passed.
    let ok = unsafe {
        libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut logical) == 0
            && libc::ioctl(file.as_raw_fd(), libc::BLKPBSZGET, &mut physical) == 0
    };
    let logical = u64::try_from(logical).ok().filter(|&l| l > 0)?;
    ok.then_some((logical, u64::from(physical).max(logical)))
}

/// Requests each engine accepts into the kernel at once; more wait inside the engine.
pub const ENGINE_DEPTH: u32 = 256;

/// An open drive's file and what is known of it: shared by the backends of every queue of a
/// device, and closed when the last of them lets go of it.
pub(super) struct Disk {
    file: File,
    config: BlockBackendConfig,
    capacity_sectors: u64,
    alignment: Alignment,
    /// What the engine kind carries (every queue's engine is of the same kind).
    discard: bool,
    write_zeroes: bool,
    /// A flush failed: later flushes fail too, since Linux forgets a write-back error once
    /// it has reported it and a later `fdatasync` would claim that lost data is durable.
    /// Device-wide: a flush on any queue sets it, and every queue's flushes then fail.
    flush_failed: AtomicBool,
    locked: bool,
}

impl Disk {
    /// How the drive was opened.
    pub(super) fn config(&self) -> &BlockBackendConfig {
        &self.config
    }

    /// Makes completed writes durable (`fdatasync`) before the file is closed; fails at once
    /// if an earlier flush failed (what was lost then cannot be made durable now).
    pub(super) fn sync(&self) -> Result<(), VirtioError> {
        if self.config.readonly {
            return Ok(());
        }
        if self.flush_failed.load(Ordering::Acquire) {
            return Err(VirtioError::FlushFailedBefore {
                path: self.config.path.clone(),
            });
        }
        self.file.sync_data().map_err(|source| {
            self.flush_failed.store(true, Ordering::Release);
            VirtioError::Flush {
                path: self.config.path.clone(),
                source,
            }
        })
    }
}

/// An open drive with the engine of one queue.
pub struct BlockBackend {
    // Declared before `disk`: the engine uses the file's descriptor until it is dropped.
    engine: Box<dyn AioContext>,
    disk: Arc<Disk>,
    memory_registered: bool,
}

impl BlockBackend {
    /// Opens the file the way `config` says and sets its engine up.
    pub fn open(config: &BlockBackendConfig) -> Result<BlockBackend, VirtioError> {
        let path = config.path.clone();
        if config.aio == AioEngine::Native && !config.direct {
            return Err(VirtioError::NativeNeedsDirect { path });
        }
        let mut options = OpenOptions::new();
        options.read(true).write(!config.readonly);
        if config.direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file =
            host_file::open_checked(&path, &[FileKind::Regular, FileKind::BlockDevice], &options)
                .map_err(|e| match e {
                FileError::Kind(kind) => VirtioError::NotAnImage {
                    path: path.clone(),
                    kind,
                },
                FileError::Io(source) => VirtioError::OpenFile {
                    path: path.clone(),
                    source,
                },
            })?;
        BlockBackend::from_file(file, config)
    }

    /// Sets a drive up on a file the caller opened as `config` describes (with `O_DIRECT` when
    /// `config.direct`); `config.path` names it in messages. The image is locked here, as
    /// `config.locking` says. The device enforces `config.readonly` itself (it offers
    /// `VIRTIO_BLK_F_RO` and answers writes, discards and write-zeroes with `IOERR`), whatever
    /// access mode the file was opened with: a caller may hand over a writable descriptor for
    /// a drive the guest must only read.
    pub fn from_file(
        mut file: File,
        config: &BlockBackendConfig,
    ) -> Result<BlockBackend, VirtioError> {
        let path = config.path.clone();
        if config.aio == AioEngine::Native && !config.direct {
            return Err(VirtioError::NativeNeedsDirect { path });
        }
        let locked = lock_image(&file, &path, config.readonly, config.locking)?;
        // Seeking to the end sizes regular files and block devices alike.
        let bytes = file
            .seek(SeekFrom::End(0))
            .map_err(|source| VirtioError::FileSize {
                path: path.clone(),
                source,
            })?;
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "drive {path:?}: size {bytes} is not a multiple of {SECTOR_SIZE}; the tail is unused"
            );
        }
        let alignment = Alignment::probe(&file, config.direct);
        if alignment.offset > SECTOR_SIZE || alignment.memory > SECTOR_SIZE {
            log::info!(
                "drive {path:?}: host storage needs {}-byte offsets and {}-byte buffers",
                alignment.offset,
                alignment.memory
            );
        }
        let engine = open_engine(&file, config)?;
        let disk = Disk {
            discard: engine.supports(AioOpcode::Discard),
            write_zeroes: engine.supports(AioOpcode::WriteZeroes),
            file,
            config: config.clone(),
            capacity_sectors: bytes / SECTOR_SIZE,
            alignment,
            flush_failed: AtomicBool::new(false),
            locked,
        };
        Ok(BlockBackend {
            engine,
            disk: Arc::new(disk),
            memory_registered: false,
        })
    }

    /// Another backend on the same open file with an engine of its own (for another queue of
    /// the same device). Call it on the thread that opens drives: `aio=threads` starts the new
    /// engine's workers there.
    pub(super) fn sibling(&self) -> Result<BlockBackend, VirtioError> {
        Ok(BlockBackend {
            engine: open_engine(&self.disk.file, &self.disk.config)?,
            disk: self.disk.clone(),
            memory_registered: false,
        })
    }

    /// Drops the engine (drained by the caller, on its thread) and keeps the file.
    pub(super) fn into_disk(self) -> Arc<Disk> {
        let BlockBackend { engine, disk, .. } = self;
        drop(engine);
        disk
    }

    /// Size of the drive in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    /// Sets the serial number the device reports (`GET_ID`): QMP `device_add`'s `serial`
    /// belongs to the device the backend is plugged into. Set it before the backend is put in
    /// a device: once the device shares the file between its queues it is fixed.
    pub fn set_serial(&mut self, serial: Option<String>) {
        match Arc::get_mut(&mut self.disk) {
            Some(disk) => disk.config.serial = serial,
            None => log::error!(
                "drive {:?}: serial not changed: the drive already serves a device",
                self.disk.config.path
            ),
        }
    }

    /// Whether discards reach the image (`discard=unmap` and an engine that can).
    pub(super) fn discards(&self) -> bool {
        self.disk.config.discard == Discard::Unmap && self.disk.discard
    }

    /// Whether the guest is offered write-zeroes (`detect-zeroes=on|unmap`, as StratoVirt,
    /// and an engine that can).
    pub(super) fn writes_zeroes(&self) -> bool {
        self.disk.config.detect_zeroes != DetectZeroes::Off && self.disk.write_zeroes
    }

    /// Whether a write-zeroes may punch a hole (`detect-zeroes=unmap` with `discard=unmap`).
    pub(super) fn zeroes_may_unmap(&self) -> bool {
        self.disk.config.detect_zeroes == DetectZeroes::Unmap && self.discards()
    }

    /// What the host storage needs of a request (offsets, lengths, buffers).
    pub fn alignment(&self) -> Alignment {
        self.disk.alignment
    }

    /// How the drive was opened.
    pub fn config(&self) -> &BlockBackendConfig {
        &self.disk.config
    }

    /// Whether the drive holds its image locks (false with `locking=off`, or with
    /// `locking=auto` where the file system has no OFD locks).
    pub fn locked(&self) -> bool {
        self.disk.locked
    }

    /// Whether the drive's engine carries `opcode`.
    pub fn supports(&self, opcode: AioOpcode) -> bool {
        self.engine.supports(opcode)
    }

    pub(super) fn engine(&mut self) -> &mut dyn AioContext {
        self.engine.as_mut()
    }

    /// Offers guest RAM to the engine once, before its first request.
    pub(super) fn register_memory(&mut self, regions: &[aio::Iovec]) {
        if self.memory_registered || self.engine.in_flight() > 0 {
            return;
        }
        self.memory_registered = true;
        if let Err(e) = self.engine.register_memory(regions) {
            log::warn!(
                "drive {:?}: guest RAM not registered: {e}",
                self.disk.config.path
            );
        }
    }

    /// Whether a flush of this drive has failed, on any queue (it then fails every later
    /// flush).
    pub(super) fn flush_failed(&self) -> bool {
        self.disk.flush_failed.load(Ordering::Acquire)
    }

    /// Records that a flush failed; returns whether this is the first time (on any queue).
    pub(super) fn set_flush_failed(&self) -> bool {
        !self.disk.flush_failed.swap(true, Ordering::AcqRel)
    }
}

impl std::fmt::Debug for BlockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockBackend")
            .field("config", &self.disk.config)
            .field("capacity_sectors", &self.disk.capacity_sectors)
            .field("locked", &self.disk.locked)
            .finish()
    }
}

/// Opens an engine of the kind `config` asks for on `file`.
fn open_engine(
    file: &File,
    config: &BlockBackendConfig,
) -> Result<Box<dyn AioContext>, VirtioError> {
    aio::open_engine_with(
        config.aio,
        file.as_raw_fd(),
        ENGINE_DEPTH,
        &config.worker_setup,
    )
    .map_err(|source| VirtioError::Engine {
        path: config.path.clone(),
        engine: config.aio,
        source,
    })
}
