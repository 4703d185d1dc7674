//! Bounds-checked reads from a kernel or initrd file, and the byte views of boot structures.
//!
//! Invariants: no read goes past the file size measured when the file was opened; a read
//! that would is a [`BootError::Truncated`] naming what was being read. Nothing here panics
//! on file content. Only a regular file is opened for reading (a FIFO named as the kernel is
//! refused at once instead of blocking the VMM).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use address_space::{ByteValued, GuestMemory};
use util::file::{self, FileError, FileKind};

use crate::error::{guest_write, BootError, Result};

/// Chunk size for copying file content into guest memory.
const COPY_CHUNK: usize = 1 << 20;

/// An open image file with its size.
pub(crate) struct ImageFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl ImageFile {
    /// Opens `path`, the `what` (`"kernel"` or `"initrd"`), and records its size. Anything but
    /// a regular file is refused before it is opened for reading.
    pub(crate) fn open(path: &Path, what: &'static str) -> Result<ImageFile> {
        let open_error = |source| BootError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true);
        let file =
            file::open_checked(path, &[FileKind::Regular], &options).map_err(|e| match e {
                FileError::Kind(kind) => BootError::NotAFile {
                    path: path.to_path_buf(),
                    what,
                    kind,
                },
                FileError::Io(source) => open_error(source),
            })?;
        let len = file.metadata().map_err(open_error)?.len();
        Ok(ImageFile {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    /// Size of the file in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The file's path, for error messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that `offset..offset+len` lies inside the file.
    pub(crate) fn check_range(&self, what: &'static str, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_some_and(|end| end <= self.len) {
            Ok(())
        } else {
            Err(BootError::Truncated {
                path: self.path.clone(),
                what,
                offset,
                len,
                file_len: self.len,
            })
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub(crate) fn read_exact(&self, what: &'static str, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(what, offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| BootError::Read {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads a plain-old-data structure at `offset`.
    pub(crate) fn read_obj<T: ByteValued>(&self, what: &'static str, offset: u64) -> Result<T> {
        let mut value = T::default();
        self.read_exact(what, as_bytes_mut(&mut value), offset)?;
        Ok(value)
    }

    /// Copies `len` bytes at file `offset` to guest memory at `gpa`.
    pub(crate) fn copy_to_guest(
        &self,
        what: &'static str,
        mem: &GuestMemory,
        offset: u64,
        len: u64,
        gpa: u64,
    ) -> Result<()> {
        self.check_range(what, offset, len)?;
        if !mem.contains(gpa, len) {
            return Err(BootError::GuestMemory {
                what,
                source: address_space::AddressSpaceError::OutOfBounds { gpa, len },
            });
        }
        let mut buf = vec![0u8; COPY_CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.read_exact(what, &mut buf[..n], offset + done)?;
            mem.write(&buf[..n], gpa + done)
                .map_err(guest_write(what))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// The bytes of a plain-old-data value.
pub(crate) fn as_bytes<T: ByteValued>(value: &T) -> &[u8] {
    // SAFETY: `T: ByteValued` has no padding, so all `size_of::<T>()` bytes behind the
    // reference are initialised; the slice borrows `value` and cannot outlive it.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

/// The bytes of a plain-old-data value, writable.
pub(crate) fn as_bytes_mut<T: ByteValued>(value: &mut T) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; in addition `T: ByteValued` accepts every bit pattern, so
    // any bytes written through the slice leave a valid `T`.
    unsafe {
        std::slice::from_raw_parts_mut((value as *mut T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

/// 8-bit checksum byte that makes the bytes of `data` plus it sum to zero (MP spec).
pub(crate) fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}
