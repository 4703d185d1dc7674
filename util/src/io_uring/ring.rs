//! [`IoUring`]: one ring, owning its file descriptor and its three shared mappings.
//!
//! ```text
//!   application                         kernel
//!   push(sqe) ─► SQE array[tail&mask]
//!                sq.tail  (release) ───► reads SQEs up to tail, advances sq.head
//!   submit() ──► io_uring_enter(to_submit = tail - sq.head)
//!                cq.tail  ◄─(release)─── writes CQEs, advances cq.tail
//!   pop_completion(): acquire cq.tail, read CQE[head&mask], release cq.head
//! ```
//!
//! Invariants:
//! - `sq_tail` is the only copy of the SQ tail that counts: it is published to the shared
//!   ring with a release store after the SQE and its array slot are written, so the kernel
//!   never sees a half-written SQE. The kernel's heads and tails are read with acquire loads.
//! - The SQ index array is the identity (`array[i] == i`), written slot by slot on push.
//! - Only this process advances the CQ head, after it copied the CQE out.
//! - Field order is drop order: the mappings are unmapped before the fd is closed.
//! - Buffers referenced by a pushed SQE must outlive its completion (see [`IoUring::push`]);
//!   dropping the ring does not wait for in-flight requests, so reap them first.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::sys::{
    io_uring_cqe, io_uring_params, io_uring_probe, io_uring_probe_op, io_uring_restriction,
    io_uring_sqe, IoringOp, IORING_ENTER_GETEVENTS, IORING_ENTER_SQ_WAKEUP,
    IORING_FEAT_SINGLE_MMAP, IORING_OFF_CQ_RING, IORING_OFF_SQES, IORING_OFF_SQ_RING,
    IORING_REGISTER_BUFFERS, IORING_REGISTER_ENABLE_RINGS, IORING_REGISTER_EVENTFD,
    IORING_REGISTER_FILES, IORING_REGISTER_PROBE, IORING_REGISTER_RESTRICTIONS, IORING_SETUP_CQE32,
    IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SQE128, IORING_SETUP_SQPOLL, IORING_SQ_CQ_OVERFLOW,
    IORING_SQ_NEED_WAKEUP, IORING_SQ_TASKRUN, IO_URING_OP_SUPPORTED,
};
use super::syscall::{io_uring_enter, io_uring_register, io_uring_setup};

/// Setup flags this ring type knows how to drive (the installed header's set).
const SUPPORTED_SETUP_FLAGS: u32 = (1 << 14) - 1;

/// Errors of ring setup, submission and registration.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `io_uring_setup(2)` failed.
    #[error("io_uring_setup failed")]
    Setup(#[source] io::Error),
    /// Mapping a ring region failed.
    #[error("mmap of an io_uring region failed")]
    Mmap(#[source] io::Error),
    /// `io_uring_enter(2)` failed.
    #[error("io_uring_enter failed")]
    Enter(#[source] io::Error),
    /// `io_uring_register(2)` failed.
    #[error("io_uring_register opcode {opcode} failed")]
    Register {
        /// The `IORING_REGISTER_*` opcode.
        opcode: u32,
        /// The kernel's error.
        source: io::Error,
    },
    /// The caller asked for setup flags this ring type cannot drive.
    #[error("unsupported io_uring setup flags {0:#x}")]
    UnsupportedFlags(u32),
    /// More registration entries than the kernel's `u32` count can express.
    #[error("{0} registration entries exceed the kernel's limit")]
    TooManyEntries(usize),
}

impl UringError {
    /// The errno behind this error, if it came from the kernel.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            UringError::Setup(e) | UringError::Mmap(e) | UringError::Enter(e) => e.raw_os_error(),
            UringError::Register { source, .. } => source.raw_os_error(),
            UringError::UnsupportedFlags(_) | UringError::TooManyEntries(_) => None,
        }
    }
}

/// The submission queue has no free slot; submit and reap completions, then retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("io_uring submission queue is full")]
pub struct SqFull;

/// One shared mapping of the ring fd; unmapped on drop.
struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` at the magic `offset`, shared and pre-faulted.
    fn new(fd: RawFd, len: usize, offset: u64) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) overlaps no Rust object;
        // the result is checked for MAP_FAILED before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(addr.cast::<u8>())
            .map(|addr| Mapping { addr, len })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
    }

    /// Pointer to byte `offset` of the mapping, as a `T`.
    ///
    /// Callers pass kernel-reported offsets that lie inside the mapping.
    fn at<T>(&self, offset: u32) -> *mut T {
        debug_assert!(offset as usize + size_of::<T>() <= self.len);
        // SAFETY: the kernel's ring offsets lie inside the mapping, whose size was computed
        // from those same offsets, so the result stays in bounds of one allocation.
        unsafe { self.addr.as_ptr().add(offset as usize).cast::<T>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` describe a mapping this object created and nobody else
        // unmaps; all raw pointers into it are owned by the ring being dropped.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// An io_uring instance: fd, SQ ring, CQ ring and SQE array.
pub struct IoUring {
    // Held for their `Drop` (munmap). Drop order: mappings first, fd last.
    _sq_map: Mapping,
    /// `None` when `IORING_FEAT_SINGLE_MMAP` folds the CQ ring into the SQ ring mapping.
    _cq_map: Option<Mapping>,
    _sqe_map: Mapping,
    fd: OwnedFd,
    params: io_uring_params,
    sq_head: *const AtomicU32,
    sq_ktail: *const AtomicU32,
    sq_flags: *const AtomicU32,
    sq_array: *mut u32,
    sq_mask: u32,
    sq_tail: u32,
    sqes: *mut u8,
    sqe_stride: usize,
    cq_head: *const AtomicU32,
    cq_tail: *const AtomicU32,
    cq_mask: u32,
    cqes: *const u8,
    cqe_stride: usize,
}

// SAFETY: the raw pointers point into mappings owned by this value; moving the ring to
// another thread moves their only user with it (the kernel side is thread-agnostic).
unsafe impl Send for IoUring {}

impl IoUring {
    /// Sets up a ring with `entries` SQEs (rounded up to a power of two by the kernel) and
    /// the `IORING_SETUP_*` `flags`, and maps it.
    pub fn new(entries: u32, flags: u32) -> Result<IoUring, UringError> {
        let params = io_uring_params {
            flags,
            ..Default::default()
        };
        Self::with_params(entries, params)
    }

    /// Like [`IoUring::new`] with a caller-filled `io_uring_params` (e.g. `cq_entries`
    /// with `IORING_SETUP_CQSIZE`, or SQPOLL idle time).
    pub fn with_params(entries: u32, mut params: io_uring_params) -> Result<IoUring, UringError> {
        if params.flags & !SUPPORTED_SETUP_FLAGS != 0 {
            return Err(UringError::UnsupportedFlags(
                params.flags & !SUPPORTED_SETUP_FLAGS,
            ));
        }
        let raw = io_uring_setup(entries, &mut params).map_err(UringError::Setup)?;
        // SAFETY: `raw` is a fresh fd returned by io_uring_setup that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let sqe_stride = if params.flags & IORING_SETUP_SQE128 != 0 {
            128
        } else {
            64
        };
        let cqe_stride =
            size_of::<io_uring_cqe>() << u32::from(params.flags & IORING_SETUP_CQE32 != 0);
        let sq_len = params.sq_off.array as usize + params.sq_entries as usize * size_of::<u32>();
        let cq_len = params.cq_off.cqes as usize + params.cq_entries as usize * cqe_stride;
        let single = params.features & IORING_FEAT_SINGLE_MMAP != 0;

        let sq_map_len = if single { sq_len.max(cq_len) } else { sq_len };
        let sq_map = Mapping::new(fd.as_raw_fd(), sq_map_len, IORING_OFF_SQ_RING)
            .map_err(UringError::Mmap)?;
        let cq_map = if single {
            None
        } else {
            Some(
                Mapping::new(fd.as_raw_fd(), cq_len, IORING_OFF_CQ_RING)
                    .map_err(UringError::Mmap)?,
            )
        };
        let sqe_len = params.sq_entries as usize * sqe_stride;
        let sqe_map =
            Mapping::new(fd.as_raw_fd(), sqe_len, IORING_OFF_SQES).map_err(UringError::Mmap)?;

        let cq = cq_map.as_ref().unwrap_or(&sq_map);
        let (so, co) = (params.sq_off, params.cq_off);
        let sq_head = sq_map.at::<AtomicU32>(so.head);
        let sq_ktail = sq_map.at::<AtomicU32>(so.tail);
        let cq_head = cq.at::<AtomicU32>(co.head);
        let cq_tail = cq.at::<AtomicU32>(co.tail);
        // SAFETY: ring_mask words are inside the mappings, aligned, and written once by the
        // kernel before setup returned.
        let (sq_mask, cq_mask) =
            unsafe { (*sq_map.at::<u32>(so.ring_mask), *cq.at::<u32>(co.ring_mask)) };
        // SAFETY: the SQ tail is inside the mapping and 4-byte aligned; no SQE was pushed
        // yet, so the kernel does not write it concurrently.
        let sq_tail = unsafe { (*sq_ktail).load(Ordering::Acquire) };
        let ring = IoUring {
            sq_head,
            sq_ktail,
            sq_flags: sq_map.at::<AtomicU32>(so.flags),
            sq_array: sq_map.at::<u32>(so.array),
            sq_mask,
            sq_tail,
            sqes: sqe_map.addr.as_ptr(),
            sqe_stride,
            cq_head,
            cq_tail,
            cq_mask,
            cqes: cq.at::<u8>(co.cqes),
            cqe_stride,
            _sq_map: sq_map,
            _cq_map: cq_map,
            _sqe_map: sqe_map,
            fd,
            params,
        };
        log::debug!(
            "io_uring fd {}: {} SQ / {} CQ entries, features {:#x}",
            ring.fd.as_raw_fd(),
            params.sq_entries,
            params.cq_entries,
            params.features
        );
        Ok(ring)
    }

    /// The parameters the kernel returned from setup (geometry, offsets, features).
    pub fn params(&self) -> &io_uring_params {
        &self.params
    }

    /// Whether the kernel reported every `IORING_FEAT_*` bit in `features`.
    pub fn has_feature(&self, features: u32) -> bool {
        self.params.features & features == features
    }

    /// Number of SQ entries.
    pub fn sq_entries(&self) -> u32 {
        self.params.sq_entries
    }

    /// Number of CQ entries.
    pub fn cq_entries(&self) -> u32 {
        self.params.cq_entries
    }

    /// A shared-ring word (one of this ring's head, tail or flags pointers) as an atomic.
    fn word(&self, ptr: *const AtomicU32) -> &AtomicU32 {
        // SAFETY: every word pointer was derived from a kernel offset inside a mapping owned
        // by `self`, is 4-byte aligned, and the returned borrow cannot outlive `self`.
        unsafe { &*ptr }
    }

    /// SQEs pushed but not yet consumed by the kernel.
    fn sq_pending(&self) -> u32 {
        self.sq_tail
            .wrapping_sub(self.word(self.sq_head).load(Ordering::Acquire))
    }

    /// Free SQ slots.
    pub fn sq_space_left(&self) -> u32 {
        self.params.sq_entries - self.sq_pending()
    }

    /// Copies `sqe` into the next SQ slot and publishes it (not yet submitted).
    ///
    /// # Safety
    /// Buffers, iovecs and other memory the SQE points to must stay valid (and not be
    /// otherwise accessed in conflicting ways) until its completion has been reaped.
    pub unsafe fn push(&mut self, sqe: &io_uring_sqe) -> Result<(), SqFull> {
        if self.sq_pending() >= self.params.sq_entries {
            return Err(SqFull);
        }
        let index = self.sq_tail & self.sq_mask;
        // SAFETY: `index <= sq_mask < sq_entries`, so the slot lies inside the SQE mapping
        // and the array; the kernel has consumed this slot (pending < entries) and does not
        // read it until the tail store below publishes it.
        unsafe {
            self.sqes
                .add(index as usize * self.sqe_stride)
                .cast::<io_uring_sqe>()
                .write(*sqe);
            self.sq_array.add(index as usize).write(index);
        }
        self.sq_tail = self.sq_tail.wrapping_add(1);
        self.word(self.sq_ktail)
            .store(self.sq_tail, Ordering::Release);
        Ok(())
    }

    /// Enters the kernel to submit pending SQEs and wait for `want` completions, retrying
    /// `EINTR` (an interrupted enter consumed nothing: the pending count is re-read).
    fn enter(&mut self, want: u32) -> Result<u32, UringError> {
        loop {
            let pending = self.sq_pending();
            let mut flags = if want > 0 { IORING_ENTER_GETEVENTS } else { 0 };
            let to_submit = if self.params.flags & IORING_SETUP_SQPOLL != 0 {
                // Order the tail store before the flags load (the kernel's poll thread sets
                // NEED_WAKEUP and then re-reads the tail), so a sleeping thread is woken.
                std::sync::atomic::fence(Ordering::SeqCst);
                if self.word(self.sq_flags).load(Ordering::Acquire) & IORING_SQ_NEED_WAKEUP != 0 {
                    flags |= IORING_ENTER_SQ_WAKEUP;
                }
                if flags == 0 {
                    return Ok(pending);
                }
                pending
            } else {
                if pending == 0 && want == 0 {
                    return Ok(0);
                }
                pending
            };
            match io_uring_enter(self.fd.as_raw_fd(), to_submit, want, flags) {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(UringError::Enter(e)),
            }
        }
    }

    /// Submits every pushed SQE; returns how many the kernel consumed.
    pub fn submit(&mut self) -> Result<u32, UringError> {
        self.enter(0)
    }

    /// Submits every pushed SQE and waits until at least `want` completions are ready.
    pub fn submit_and_wait(&mut self, want: u32) -> Result<u32, UringError> {
        self.enter(want)
    }

    /// Completions ready in the CQ ring.
    pub fn cq_ready(&self) -> u32 {
        let tail = self.word(self.cq_tail).load(Ordering::Acquire);
        tail.wrapping_sub(self.word(self.cq_head).load(Ordering::Relaxed))
    }

    /// Whether the kernel holds completions in its overflow list (CQ ring was full).
    pub fn cq_overflow_pending(&self) -> bool {
        self.word(self.sq_flags).load(Ordering::Acquire) & IORING_SQ_CQ_OVERFLOW != 0
    }

    /// Takes the oldest completion and advances the CQ head. When the ring is empty but
    /// the kernel kept overflowed completions (`IORING_FEAT_NODROP`), asks it to flush
    /// them into the ring first; with `IORING_SETUP_DEFER_TASKRUN` an empty ring always
    /// enters the kernel once, since completions are only posted from inside it.
    pub fn pop_completion(&mut self) -> Option<io_uring_cqe> {
        if self.cq_ready() == 0 {
            if !self.cq_overflow_pending() && !self.defers_completions() {
                return None;
            }
            if let Err(e) = self.flush_completions() {
                log::warn!(
                    "io_uring fd {}: flushing completions: {e}",
                    self.fd.as_raw_fd()
                );
                return None;
            }
        }
        self.pop_ready()
    }

    /// Takes the oldest completion already in the CQ ring, without a system call.
    pub fn pop_ready(&mut self) -> Option<io_uring_cqe> {
        if self.cq_ready() == 0 {
            return None;
        }
        let head = self.word(self.cq_head).load(Ordering::Relaxed);
        let index = (head & self.cq_mask) as usize;
        // SAFETY: `index <= cq_mask < cq_entries`, inside the CQE array; the acquire load of
        // the tail in `cq_ready` made the kernel's write of this entry visible, and the kernel
        // does not reuse the slot until the head store below.
        let cqe = unsafe {
            self.cqes
                .add(index * self.cqe_stride)
                .cast::<io_uring_cqe>()
                .read()
        };
        self.word(self.cq_head)
            .store(head.wrapping_add(1), Ordering::Release);
        Some(cqe)
    }

    /// Whether the kernel flagged task work still waiting to run (`IORING_SQ_TASKRUN`, set
    /// only on rings created with `IORING_SETUP_TASKRUN_FLAG`).
    pub fn taskrun_pending(&self) -> bool {
        self.word(self.sq_flags).load(Ordering::Acquire) & IORING_SQ_TASKRUN != 0
    }

    /// Whether completions wait as task work until the ring's thread enters the kernel
    /// (`IORING_SETUP_DEFER_TASKRUN`).
    pub fn defers_completions(&self) -> bool {
        self.params.flags & IORING_SETUP_DEFER_TASKRUN != 0
    }

    /// `io_uring_enter(GETEVENTS, min_complete 0)`: posts deferred completions and moves
    /// overflowed ones into the CQ ring, without blocking.
    pub fn flush_completions(&mut self) -> Result<(), UringError> {
        loop {
            match io_uring_enter(self.fd.as_raw_fd(), 0, 0, IORING_ENTER_GETEVENTS) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(UringError::Enter(e)),
            }
        }
    }

    /// Iterator over the ready completions, advancing the CQ head as it goes.
    pub fn completions(&mut self) -> Completions<'_> {
        Completions { ring: self }
    }

    /// Runs register `opcode` with `nr` elements at `arg`.
    ///
    /// # Safety
    /// Same contract as [`io_uring_register`].
    unsafe fn register(
        &self,
        opcode: u32,
        arg: *const libc::c_void,
        nr: usize,
    ) -> Result<i32, UringError> {
        let nr_args = u32::try_from(nr).map_err(|_| UringError::TooManyEntries(nr))?;
        // SAFETY: forwarded caller contract.
        unsafe { io_uring_register(self.fd.as_raw_fd(), opcode, arg, nr_args) }
            .map_err(|source| UringError::Register { opcode, source })
    }

    /// Registers eventfd `fd`: the kernel signals it whenever it posts a completion.
    pub fn register_eventfd(&self, fd: RawFd) -> Result<(), UringError> {
        // SAFETY: the argument is one `i32` read during the call.
        unsafe { self.register(IORING_REGISTER_EVENTFD, (&fd as *const RawFd).cast(), 1) }.map(drop)
    }

    /// Registers fixed buffers for `READ_FIXED`/`WRITE_FIXED` (index = position in `iovecs`).
    ///
    /// # Safety
    /// The buffers must stay valid while registered (until unregistered or the ring drops).
    pub unsafe fn register_buffers(&self, iovecs: &[libc::iovec]) -> Result<(), UringError> {
        // SAFETY: `iovecs` is read during the call; the caller keeps the buffers alive.
        unsafe {
            self.register(
                IORING_REGISTER_BUFFERS,
                iovecs.as_ptr().cast(),
                iovecs.len(),
            )
        }
        .map(drop)
    }

    /// Registers fixed files for `IOSQE_FIXED_FILE` (index = position in `fds`).
    pub fn register_files(&self, fds: &[RawFd]) -> Result<(), UringError> {
        // SAFETY: `fds` is read during the call; the kernel takes its own file references.
        unsafe { self.register(IORING_REGISTER_FILES, fds.as_ptr().cast(), fds.len()) }.map(drop)
    }

    /// Limits what the ring accepts once enabled (`IORING_REGISTER_RESTRICTIONS`): only the
    /// SQE opcodes, SQE flags and `io_uring_register` opcodes listed; a refused SQE completes
    /// with `-EACCES`, a refused registration fails with `EACCES`. Only a ring set up with
    /// `IORING_SETUP_R_DISABLED` and not enabled yet takes restrictions, and only once.
    pub fn register_restrictions(
        &self,
        restrictions: &[io_uring_restriction],
    ) -> Result<(), UringError> {
        // SAFETY: the array is read during the call.
        unsafe {
            self.register(
                IORING_REGISTER_RESTRICTIONS,
                restrictions.as_ptr().cast(),
                restrictions.len(),
            )
        }
        .map(drop)
    }

    /// Enables a ring set up with `IORING_SETUP_R_DISABLED`; with
    /// `IORING_SETUP_SINGLE_ISSUER` the calling thread becomes the only one that may submit.
    pub fn enable(&self) -> Result<(), UringError> {
        // SAFETY: the opcode takes no argument.
        unsafe { self.register(IORING_REGISTER_ENABLE_RINGS, std::ptr::null(), 0) }.map(drop)
    }

    /// Asks the kernel which opcodes it supports (`IORING_REGISTER_PROBE`).
    pub fn probe(&self) -> Result<Probe, UringError> {
        let mut probe = Probe {
            header: io_uring_probe::default(),
            ops: [io_uring_probe_op::default(); PROBE_OPS],
        };
        // SAFETY: `Probe` is `repr(C)`: the header followed by PROBE_OPS entries, exactly the
        // `io_uring_probe` with a flexible array the kernel fills for `nr_args` entries.
        unsafe {
            self.register(
                IORING_REGISTER_PROBE,
                (&mut probe as *mut Probe).cast_const().cast(),
                PROBE_OPS,
            )
        }?;
        Ok(probe)
    }

    /// Whether the running kernel supports `op`; `false` when the probe itself fails.
    pub fn probe_opcode(&self, op: IoringOp) -> bool {
        self.probe().map(|p| p.supports(op as u8)).unwrap_or(false)
    }
}

impl AsRawFd for IoUring {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Probe entries requested: one per possible `u8` opcode.
const PROBE_OPS: usize = 256;

/// The kernel's answer to `IORING_REGISTER_PROBE`.
#[repr(C)]
pub struct Probe {
    header: io_uring_probe,
    ops: [io_uring_probe_op; PROBE_OPS],
}

impl Probe {
    /// Highest opcode number the kernel knows.
    pub fn last_op(&self) -> u8 {
        self.header.last_op
    }

    /// Whether the kernel reported opcode number `op` as supported.
    pub fn supports(&self, op: u8) -> bool {
        op <= self.header.last_op
            && usize::from(op) < usize::from(self.header.ops_len)
            && self.ops[usize::from(op)].flags & IO_URING_OP_SUPPORTED != 0
    }
}

/// Iterator over ready completions; each `next` advances the CQ head.
pub struct Completions<'a> {
    ring: &'a mut IoUring,
}

impl Iterator for Completions<'_> {
    type Item = io_uring_cqe;

    fn next(&mut self) -> Option<io_uring_cqe> {
        self.ring.pop_completion()
    }
}
