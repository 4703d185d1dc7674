//! Requests the host storage cannot take as the guest sent them: a transfer whose offset or
//! length is not a multiple of the storage's logical block size, or whose buffers are not
//! aligned for `O_DIRECT` (see [`super::Alignment`]). Instead of handing the kernel a request
//! it refuses (`EINVAL`), the device moves the data through an aligned buffer of its own:
//!
//! ```text
//!  read   ─► read [start, end) into the buffer ─► copy the guest's part out ─► answer
//!  write, aligned range  ─► copy the guest's data in ─► write [start, end) ─► answer
//!  write, partial blocks ─► read [start, end) ─► copy the guest's data in ─► write ─► answer
//!                           (read-modify-write)
//! ```
//!
//! `[start, end)` is the request's range rounded out to whole blocks.
//!
//! Invariants:
//! - The buffer is shared with the engine only through the request's `KeepAlive`: once the
//!   engine hands a completion back it holds no reference, so the device has the buffer to
//!   itself (`Arc::get_mut`) whenever it copies, and never while the kernel may use it.
//! - A read-modify-write must not race with another write to the same blocks, or one of the
//!   two would be lost: the device keeps overlapping writes apart (see `state.rs`,
//!   `Active::conflicts`).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::Range;
use std::sync::Arc;

use address_space::GuestMemory;
use util::aio::{AioOpcode, AioRequest, Iovec, KeepAlive};

use super::request::Segment;

/// Alignment of every bounce buffer: a page satisfies any `O_DIRECT` memory rule.
const BUFFER_ALIGN: usize = 4096;

/// Heap memory aligned for `O_DIRECT`, freed when the last `Arc` goes.
pub(super) struct AlignedBuffer {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer is plain heap memory owned by this value; it is shared between threads
// only through `Arc`, and the device writes it only through `Arc::get_mut` (no other owner).
unsafe impl Send for AlignedBuffer {}
// SAFETY: `&AlignedBuffer` gives no access to the bytes; see `Send`.
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
    /// A zeroed buffer of `len` bytes (at least one), page-aligned; `None` if the allocation
    /// fails or `len` is absurd.
    fn new(len: usize) -> Option<AlignedBuffer> {
        let layout = Layout::from_size_align(len.max(1), BUFFER_ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(AlignedBuffer { ptr, layout })
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    /// The whole buffer as one iovec for the engine.
    fn iovec(&self) -> Iovec {
        Iovec {
            base: self.ptr as u64,
            len: self.len() as u64,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `len` initialised (zeroed) bytes while `self` lives, and
        // `&mut self` is unique: the caller reached it through `Arc::get_mut`, so no engine
        // request (which would hold another `Arc`) uses the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// Which step of a bounced request is in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Reading the blocks of a guest read.
    Read,
    /// Reading the blocks a partial write will modify.
    ReadToModify,
    /// Writing the blocks.
    Write,
}

/// A request that goes through an aligned buffer.
pub(super) struct Bounce {
    buffer: Arc<AlignedBuffer>,
    /// File offset of the buffer's first byte (the request's offset rounded down).
    start: u64,
    /// Where the guest's bytes sit in the buffer.
    skip: usize,
    /// The guest's buffers.
    segments: Vec<Segment>,
    /// What the engine does now.
    pub(super) step: Step,
}

impl Bounce {
    /// The bounce of a transfer of `segments` at `offset` (`len` bytes, `opcode` read or
    /// write) for storage with `block`-byte blocks. `None` if the buffer cannot be allocated.
    pub(super) fn new(
        opcode: AioOpcode,
        offset: u64,
        len: u64,
        segments: &[Segment],
        block: u64,
    ) -> Option<Bounce> {
        let range = blocks(offset, len, block);
        let start = range.start * block;
        let size = usize::try_from((range.end - range.start) * block).ok()?;
        let partial = !offset.is_multiple_of(block) || !(offset + len).is_multiple_of(block);
        let step = match opcode {
            AioOpcode::Read => Step::Read,
            _ if partial => Step::ReadToModify,
            _ => Step::Write,
        };
        Some(Bounce {
            buffer: Arc::new(AlignedBuffer::new(size)?),
            start,
            skip: usize::try_from(offset - start).ok()?,
            segments: segments.to_vec(),
            step,
        })
    }

    /// Bytes the engine must move in the current step.
    pub(super) fn expected(&self) -> u64 {
        self.buffer.len() as u64
    }

    /// The engine request of the current step, tagged `tag`; `iovecs` is a spare buffer for
    /// its one iovec (its contents are replaced).
    pub(super) fn request(&self, tag: u64, mut iovecs: Vec<Iovec>) -> AioRequest {
        iovecs.clear();
        iovecs.push(self.buffer.iovec());
        AioRequest {
            opcode: match self.step {
                Step::Read | Step::ReadToModify => AioOpcode::Read,
                Step::Write => AioOpcode::Write,
            },
            offset: self.start,
            iovecs,
            len: 0,
            tag,
            keep_alive: Some(KeepAlive::new(self.buffer.clone())),
        }
    }

    /// Copies the guest's part of the buffer into the guest's buffers (after `Step::Read`).
    pub(super) fn copy_to_guest(&mut self, mem: &GuestMemory) -> Result<(), BounceError> {
        let buffer = bytes(&mut self.buffer)?;
        let mut at = self.skip;
        for seg in &self.segments {
            let len = seg.len as usize;
            mem.write(&buffer[at..at + len], seg.gpa)
                .map_err(|_| BounceError::Guest)?;
            at += len;
        }
        Ok(())
    }

    /// Copies the guest's data into its part of the buffer (before `Step::Write`).
    pub(super) fn copy_from_guest(&mut self, mem: &GuestMemory) -> Result<(), BounceError> {
        let buffer = bytes(&mut self.buffer)?;
        let mut at = self.skip;
        for seg in &self.segments {
            let len = seg.len as usize;
            mem.read(&mut buffer[at..at + len], seg.gpa)
                .map_err(|_| BounceError::Guest)?;
            at += len;
        }
        Ok(())
    }
}

/// The buffer's bytes; only while no engine request holds it.
fn bytes(buffer: &mut Arc<AlignedBuffer>) -> Result<&mut [u8], BounceError> {
    Arc::get_mut(buffer)
        .map(AlignedBuffer::bytes_mut)
        .ok_or(BounceError::Busy)
}

/// Why a bounce copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BounceError {
    /// A guest buffer is no longer inside guest RAM.
    Guest,
    /// The engine still holds the buffer (never expected).
    Busy,
}

/// The `block`-byte blocks that `offset..offset + len` touches.
pub(super) fn blocks(offset: u64, len: u64, block: u64) -> Range<u64> {
    offset / block..(offset + len).div_ceil(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_out_to_whole_blocks() {
        assert_eq!(blocks(0, 4096, 4096), 0..1);
        assert_eq!(blocks(512, 512, 4096), 0..1);
        assert_eq!(blocks(3584, 1024, 4096), 0..2);
        assert_eq!(blocks(8192, 8192, 4096), 2..4);
    }

    #[test]
    fn steps_follow_the_alignment_of_the_range() {
        let seg = [Segment {
            gpa: 0x1000,
            len: 512,
        }];
        let bounce = |op, offset, len| Bounce::new(op, offset, len, &seg, 4096).unwrap();
        assert_eq!(bounce(AioOpcode::Read, 512, 512).step, Step::Read);
        assert_eq!(bounce(AioOpcode::Write, 512, 512).step, Step::ReadToModify);
        assert_eq!(bounce(AioOpcode::Write, 4096, 4096).step, Step::Write);
        let b = bounce(AioOpcode::Write, 4608, 512);
        assert_eq!((b.start, b.skip, b.expected()), (4096, 512, 4096));
        let request = b.request(7, Vec::new());
        assert_eq!(
            (request.opcode, request.offset, request.tag),
            (AioOpcode::Read, 4096, 7)
        );
        assert_eq!(request.iovecs[0].len, 4096);
        assert!(request.iovecs[0].base.is_multiple_of(BUFFER_ALIGN as u64));
    }

    #[test]
    fn the_buffer_is_the_devices_only_when_no_request_holds_it() {
        let seg = [Segment { gpa: 0, len: 512 }];
        let mut b = Bounce::new(AioOpcode::Read, 0, 512, &seg, 4096).unwrap();
        let request = b.request(1, Vec::new());
        assert_eq!(bytes(&mut b.buffer).unwrap_err(), BounceError::Busy);
        drop(request);
        assert_eq!(bytes(&mut b.buffer).unwrap().len(), 4096);
    }
}
