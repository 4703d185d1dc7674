//! A drive: its open file and the engine (`aio=off|native|io_uring`) bound to it.
//!
//! Invariants:
//! - The engine borrows the file's descriptor, so it is declared (and so dropped) before the
//!   file; its owner drains it first, on the thread that uses the engine.
//! - Guest RAM is registered with the engine (fixed buffers) only when it is preallocated:
//!   registering pins every page, which must never be what makes guest RAM resident.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use util::aio::{self, AioContext, AioEngine, AioOpcode};

use super::request::SECTOR_SIZE;
use crate::virtio::VirtioError;

/// How to open a drive (`-drive file=...,readonly=,direct=,aio=,serial=`).
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
        let file = options
            .open(&path)
            .map_err(|source| VirtioError::OpenFile {
                path: path.clone(),
                source,
            })?;
        BlockBackend::from_file(file, config)
    }

    /// Sets a drive up on a file the caller opened as `config` describes (with `O_DIRECT` when
    /// `config.direct`); `config.path` names it in messages. The device enforces
    /// `config.readonly` itself (it offers `VIRTIO_BLK_F_RO` and answers writes, discards and
    /// write-zeroes with `IOERR`), whatever access mode the file was opened with: a caller
    /// may hand over a writable descriptor for a drive the guest must only read.
    pub fn from_file(
        mut file: File,
        config: &BlockBackendConfig,
    ) -> Result<BlockBackend, VirtioError> {
        let path = config.path.clone();
        if config.aio == AioEngine::Native && !config.direct {
            return Err(VirtioError::NativeNeedsDirect { path });
        }
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
            .finish()
    }
}
