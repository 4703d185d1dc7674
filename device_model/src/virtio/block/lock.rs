//! Image locks in QEMU's protocol (its `file-posix` driver), so that this VMM, QEMU and
//! QEMU's tools (`qemu-img`, `qemu-io`, `qemu-storage-daemon`) see each other's use of an
//! image.
//!
//! A user of an image holds some *permissions* and refuses to *share* some; permission `i`
//! (QEMU's `BLK_PERM_*` bit number) has two lock bytes in the file:
//!
//! - byte `100 + i` carries a shared OFD lock of every user holding permission `i`;
//! - byte `200 + i` carries a shared OFD lock of every user that does not share it.
//!
//! Taking an image: lock our bytes (shared), then look (`F_OFD_GETLK` for an exclusive lock)
//! at byte `200 + i` of every permission we hold and at byte `100 + i` of every permission we
//! do not share; a lock there is a conflict, and the image is refused. Two users starting at
//! once may both be refused, never both accepted. The bytes are those of QEMU's virtio-blk
//! device (no `share-rw`):
//!
//! | user | holds | does not share | bytes locked |
//! |---|---|---|---|
//! | read-write drive | `CONSISTENT_READ`, `WRITE` | `WRITE` | 100, 101, 201 |
//! | read-only drive | `CONSISTENT_READ` | `WRITE` | 100, 201 |
//!
//! so a second writer, or a writer beside readers, is refused and readers share.
//!
//! Invariants: the locks belong to the backend's open file description, so they last exactly
//! as long as its `File` (two drives on one image in one process conflict too); nothing here
//! waits for a lock.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;

use util::file::{self as host_file, LockHolder, LockKind, Locking};

use crate::virtio::VirtioError;

/// Byte of permission `i`'s holders (QEMU's `RAW_LOCK_PERM_BASE`).
const LOCK_PERM_BASE: u64 = 100;
/// Byte of the users not sharing permission `i` (QEMU's `RAW_LOCK_SHARED_BASE`).
const LOCK_SHARED_BASE: u64 = 200;
/// QEMU's `BLK_PERM_CONSISTENT_READ`.
const PERM_CONSISTENT_READ: u64 = 0x01;
/// QEMU's `BLK_PERM_WRITE`.
const PERM_WRITE: u64 = 0x02;
/// QEMU's `BLK_PERM_WRITE_UNCHANGED`.
const PERM_WRITE_UNCHANGED: u64 = 0x04;
/// QEMU's `BLK_PERM_RESIZE`.
const PERM_RESIZE: u64 = 0x08;
/// Every permission QEMU knows (`BLK_PERM_ALL`).
const PERM_ALL: u64 = 0x0f;

/// The bit numbers of QEMU's permissions (its `PERM_FOREACH`).
fn perm_bits() -> impl Iterator<Item = u32> {
    (0..u64::BITS).take_while(|bit| 1u64 << bit <= PERM_ALL)
}

/// The permissions a drive holds and those it shares, as QEMU's virtio-blk device.
fn permissions(readonly: bool) -> (u64, u64) {
    let held = if readonly {
        PERM_CONSISTENT_READ
    } else {
        PERM_CONSISTENT_READ | PERM_WRITE
    };
    let shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED | PERM_RESIZE;
    (held, shared)
}

/// The bytes a drive (`readonly` or not) locks: one per permission it holds, one per
/// permission it does not share.
pub fn lock_bytes(readonly: bool) -> Vec<u64> {
    let (held, shared) = permissions(readonly);
    let holds = perm_bits()
        .filter(|bit| held & (1 << bit) != 0)
        .map(|bit| LOCK_PERM_BASE + u64::from(bit));
    let refuses = perm_bits()
        .filter(|bit| shared & (1 << bit) == 0)
        .map(|bit| LOCK_SHARED_BASE + u64::from(bit));
    holds.chain(refuses).collect()
}

/// Who is in the way of a drive that wants an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockConflict {
    /// Another user writes the image.
    Writer {
        /// Its pid, when it holds a process-associated lock.
        pid: Option<i32>,
    },
    /// Another user reads the image and does not share writing (a read-only drive).
    Reader {
        /// Its pid, when it holds a process-associated lock.
        pid: Option<i32>,
    },
    /// Another user does not share reading.
    Exclusive {
        /// Its pid, when it holds a process-associated lock.
        pid: Option<i32>,
    },
    /// Another user holds some lock on the image that conflicts with ours.
    Other,
}

fn who(pid: Option<i32>) -> String {
    match pid {
        Some(pid) => format!("another process (pid {pid})"),
        None => "another process (or drive)".to_string(),
    }
}

impl fmt::Display for LockConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LockConflict::Writer { pid } => write!(f, "{} uses it for writing", who(pid)),
            LockConflict::Reader { pid } => {
                write!(
                    f,
                    "{} uses it read-only and does not share writing",
                    who(pid)
                )
            }
            LockConflict::Exclusive { pid } => {
                write!(f, "{} uses it and does not share reading", who(pid))
            }
            LockConflict::Other => f.write_str("another process holds a conflicting lock on it"),
        }
    }
}

/// Looks for a lock through another open file description on byte `byte` of `file`.
fn held(file: &File, byte: u64) -> io::Result<Option<LockHolder>> {
    host_file::conflicting_lock(file, LockKind::Exclusive, byte, 1)
}

/// The first conflict a drive (`readonly` or not) meets on `file`, if any: a holder of
/// `WRITE` (no drive shares it), then, for a writer, a user not sharing `WRITE`, then a user
/// not sharing `CONSISTENT_READ` (every drive holds it). Drives share every other permission
/// and hold no other, so nothing else can be in their way.
fn find_conflict(file: &File, readonly: bool) -> io::Result<Option<LockConflict>> {
    let byte = |base: u64, perm: u64| base + u64::from(perm.trailing_zeros());
    if let Some(holder) = held(file, byte(LOCK_PERM_BASE, PERM_WRITE))? {
        return Ok(Some(LockConflict::Writer { pid: holder.pid }));
    }
    if !readonly {
        if let Some(holder) = held(file, byte(LOCK_SHARED_BASE, PERM_WRITE))? {
            return Ok(Some(LockConflict::Reader { pid: holder.pid }));
        }
    }
    if let Some(holder) = held(file, byte(LOCK_SHARED_BASE, PERM_CONSISTENT_READ))? {
        return Ok(Some(LockConflict::Exclusive { pid: holder.pid }));
    }
    Ok(None)
}

/// Takes `path`'s image locks on `file`, open for a drive (`readonly` or not), as `locking`
/// says. Returns whether the image is now locked: `false` for `locking=off`, and for
/// `locking=auto` on a file system without OFD locks (logged). A refused image keeps none of
/// the locks.
pub(super) fn lock_image(
    file: &File,
    path: &Path,
    readonly: bool,
    locking: Locking,
) -> Result<bool, VirtioError> {
    if locking == Locking::Off {
        return Ok(false);
    }
    let bytes = lock_bytes(readonly);
    // A file that ends up not locked keeps none of the bytes (closing it would drop them too).
    let release = || {
        for &byte in &bytes {
            let _ = host_file::unlock(file, byte, 1);
        }
    };
    let failed = |source: io::Error| -> Result<bool, VirtioError> {
        release();
        if locking == Locking::Auto && host_file::is_unsupported(&source) {
            log::warn!(
                "image {}: the file system offers no OFD locks ({source}); opened without a \
                 lock (file.locking=on refuses this)",
                path.display()
            );
            return Ok(false);
        }
        Err(VirtioError::Lock {
            path: path.to_path_buf(),
            locking,
            source,
        })
    };
    let refused = |conflict| {
        release();
        VirtioError::ImageLocked {
            path: path.to_path_buf(),
            conflict,
        }
    };
    for &byte in &bytes {
        if let Err(source) = host_file::set_lock(file, LockKind::Shared, byte, 1) {
            if !host_file::is_conflict(&source) {
                return failed(source);
            }
            // An exclusive lock sits on our byte: say who if the bytes tell.
            let conflict = find_conflict(file, readonly)
                .ok()
                .flatten()
                .unwrap_or(LockConflict::Other);
            return Err(refused(conflict));
        }
    }
    match find_conflict(file, readonly) {
        Err(source) => failed(source),
        Ok(Some(conflict)) => Err(refused(conflict)),
        Ok(None) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_lock_the_bytes_of_qemus_virtio_blk() {
        assert_eq!(lock_bytes(false), vec![100, 101, 201]);
        assert_eq!(lock_bytes(true), vec![100, 201]);
    }

    #[test]
    fn conflicts_name_the_holder() {
        assert_eq!(
            LockConflict::Writer { pid: None }.to_string(),
            "another process (or drive) uses it for writing"
        );
        assert_eq!(
            LockConflict::Reader { pid: Some(42) }.to_string(),
            "another process (pid 42) uses it read-only and does not share writing"
        );
    }
}
