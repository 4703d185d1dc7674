//! A drive: its open file and the engine (`aio=off|native|io_uring`) bound to it.
//!
//! Invariants:
//! - The engine borrows the file's descriptor, so it is declared (and so dropped) before the
//!   file; its owner drains it first, on the thread that uses the engine.
//! - Guest RAM is registered with the engine (fixed buffers) only when it is preallocated:
//!   registering pins every page, which must never be what makes guest RAM resident.
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

use util::aio::{self, AioContext, AioEngine, AioOpcode};
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
    /// Whether to take the image locks (QEMU's protocol, see `lock.rs`).
    pub locking: Locking,
}

/// Requests each engine accepts into the kernel at once; more wait inside the engine.
pub const ENGINE_DEPTH: u32 = 256;

/// An open drive with its engine.
pub struct BlockBackend {
    // Declared before `file`: the engine uses the file's descriptor until it is dropped.
    engine: Box<dyn AioContext>,
    file: File,
    config: BlockBackendConfig,
    capacity_sectors: u64,
    memory_registered: bool,
    locked: bool,
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
        let mut file =
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
        let engine =
            aio::open_engine(config.aio, file.as_raw_fd(), ENGINE_DEPTH).map_err(|source| {
                VirtioError::Engine {
                    path: path.clone(),
                    engine: config.aio,
                    source,
                }
            })?;
        Ok(BlockBackend {
            engine,
            file,
            config: config.clone(),
            capacity_sectors: bytes / SECTOR_SIZE,
            memory_registered: false,
            locked,
        })
    }

    /// Size of the drive in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// How the drive was opened.
    pub fn config(&self) -> &BlockBackendConfig {
        &self.config
    }

    /// Whether the drive holds its image locks (false with `locking=off`, or with
    /// `locking=auto` where the file system has no OFD locks).
    pub fn locked(&self) -> bool {
        self.locked
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
                self.config.path
            );
        }
    }

    /// Makes completed writes durable (`fdatasync`) before the backend goes away.
    pub(super) fn sync(&self) -> Result<(), VirtioError> {
        if self.config.readonly {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| VirtioError::Flush {
            path: self.config.path.clone(),
            source,
        })
    }
}

impl std::fmt::Debug for BlockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockBackend")
            .field("config", &self.config)
            .field("capacity_sectors", &self.capacity_sectors)
            .field("locked", &self.locked)
            .finish()
    }
}
