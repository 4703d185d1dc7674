//! Typed SQE constructors: the only place SQE fields are written.
//!
//! Invariants: every constructor starts from [`io_uring_sqe::zeroed`] (all 64 bytes zero,
//! each union initialised through its widest member), so unused fields are zero as the
//! kernel requires, and every union member reads back as a defined integer.

use std::fmt;
use std::os::unix::io::RawFd;

use super::sys::{
    io_uring_sqe, io_uring_sqe_addr3, io_uring_sqe_addr3_u, io_uring_sqe_addr_u,
    io_uring_sqe_buf_u, io_uring_sqe_file_u, io_uring_sqe_off_u, io_uring_sqe_op_flags, IoringOp,
};

impl io_uring_sqe {
    /// An all-zero SQE (opcode `IORING_OP_NOP`, user_data 0).
    pub const fn zeroed() -> Self {
        io_uring_sqe {
            opcode: 0,
            flags: 0,
            ioprio: 0,
            fd: 0,
            off_u: io_uring_sqe_off_u { off: 0 },
            addr_u: io_uring_sqe_addr_u { addr: 0 },
            len: 0,
            op_flags: io_uring_sqe_op_flags { rw_flags: 0 },
            user_data: 0,
            buf_u: io_uring_sqe_buf_u { buf_index: 0 },
            personality: 0,
            file_u: io_uring_sqe_file_u { splice_fd_in: 0 },
            addr3_u: io_uring_sqe_addr3_u {
                addr3: io_uring_sqe_addr3 {
                    addr3: 0,
                    __pad2: [0],
                },
            },
        }
    }

    /// The common shape of file operations: opcode, fd, address, length, offset, tag.
    fn rw(op: IoringOp, fd: RawFd, addr: u64, len: u32, offset: u64, user_data: u64) -> Self {
        let mut sqe = Self::zeroed();
        sqe.opcode = op as u8;
        sqe.fd = fd;
        sqe.addr_u.addr = addr;
        sqe.len = len;
        sqe.off_u.off = offset;
        sqe.user_data = user_data;
        sqe
    }

    /// `IORING_OP_NOP`: completes at once with `res` 0.
    pub fn nop(user_data: u64) -> Self {
        let mut sqe = Self::zeroed();
        sqe.opcode = IoringOp::Nop as u8;
        sqe.user_data = user_data;
        sqe
    }

    /// `IORING_OP_READV`: `preadv` of `nr` iovecs at `iovecs` from `offset`.
    pub fn readv(
        fd: RawFd,
        iovecs: *const libc::iovec,
        nr: u32,
        offset: u64,
        user_data: u64,
    ) -> Self {
        Self::rw(IoringOp::Readv, fd, iovecs as u64, nr, offset, user_data)
    }

    /// `IORING_OP_WRITEV`: `pwritev` of `nr` iovecs at `iovecs` to `offset`.
    pub fn writev(
        fd: RawFd,
        iovecs: *const libc::iovec,
        nr: u32,
        offset: u64,
        user_data: u64,
    ) -> Self {
        Self::rw(IoringOp::Writev, fd, iovecs as u64, nr, offset, user_data)
    }

    /// `IORING_OP_READ_FIXED`: reads `len` bytes from `offset` into `buf`, which must lie
    /// inside registered buffer `buf_index`.
    pub fn read_fixed(
        fd: RawFd,
        buf: *mut u8,
        len: u32,
        offset: u64,
        buf_index: u16,
        user_data: u64,
    ) -> Self {
        let mut sqe = Self::rw(IoringOp::ReadFixed, fd, buf as u64, len, offset, user_data);
        sqe.buf_u.buf_index = buf_index;
        sqe
    }

    /// `IORING_OP_WRITE_FIXED`: writes `len` bytes from `buf`, which must lie inside
    /// registered buffer `buf_index`, to `offset`.
    pub fn write_fixed(
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
        buf_index: u16,
        user_data: u64,
    ) -> Self {
        let mut sqe = Self::rw(IoringOp::WriteFixed, fd, buf as u64, len, offset, user_data);
        sqe.buf_u.buf_index = buf_index;
        sqe
    }

    /// `IORING_OP_FSYNC`: `fsync`, or `fdatasync` with `IORING_FSYNC_DATASYNC` in `fsync_flags`.
    pub fn fsync(fd: RawFd, fsync_flags: u32, user_data: u64) -> Self {
        let mut sqe = Self::rw(IoringOp::Fsync, fd, 0, 0, 0, user_data);
        sqe.op_flags.fsync_flags = fsync_flags;
        sqe
    }

    /// `IORING_OP_FALLOCATE`: `fallocate(fd, mode, offset, len)` (the kernel takes `len`
    /// from `addr` and `mode` from `len`).
    pub fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64, user_data: u64) -> Self {
        // The mode's bit pattern travels in the 32-bit `len` field.
        Self::rw(IoringOp::Fallocate, fd, len, mode as u32, offset, user_data)
    }

    /// The same SQE with `IOSQE_*` flags `sqe_flags` added (e.g. `IOSQE_FIXED_FILE`).
    pub fn with_flags(mut self, sqe_flags: u8) -> Self {
        self.flags |= sqe_flags;
        self
    }

    /// The `off` member of the first union (file offset).
    pub fn off(&self) -> u64 {
        // SAFETY: every member of the union is plain integer data and constructors
        // initialise all 8 bytes, so any member reads a defined value.
        unsafe { self.off_u.off }
    }

    /// The `addr` member of the second union (buffer or iovec address).
    pub fn addr(&self) -> u64 {
        // SAFETY: as in `off`: plain integers, fully initialised.
        unsafe { self.addr_u.addr }
    }

    /// The 32-bit per-opcode flags word (`rw_flags`, `fsync_flags`, ...).
    pub fn op_flags(&self) -> u32 {
        // SAFETY: as in `off`: plain integers, fully initialised.
        unsafe { self.op_flags.rw_flags }
    }

    /// The `buf_index` member (registered buffer index).
    pub fn buf_index(&self) -> u16 {
        // SAFETY: as in `off`: plain integers, fully initialised.
        unsafe { self.buf_u.buf_index }
    }
}

impl Default for io_uring_sqe {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl fmt::Debug for io_uring_sqe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("io_uring_sqe")
            .field("opcode", &self.opcode)
            .field("flags", &self.flags)
            .field("fd", &self.fd)
            .field("off", &self.off())
            .field("addr", &self.addr())
            .field("len", &self.len)
            .field("op_flags", &self.op_flags())
            .field("user_data", &self.user_data)
            .field("buf_index", &self.buf_index())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_uring::sys::{IORING_FSYNC_DATASYNC, IOSQE_FIXED_FILE, IOSQE_IO_LINK};

    #[test]
    fn read_fixed_sets_every_field_it_owns() {
        let sqe = io_uring_sqe::read_fixed(7, 0x1000 as *mut u8, 4096, 8192, 3, 42);
        assert_eq!(sqe.opcode, IoringOp::ReadFixed as u8);
        assert_eq!(
            (sqe.fd, sqe.addr(), sqe.len, sqe.off()),
            (7, 0x1000, 4096, 8192)
        );
        assert_eq!((sqe.buf_index(), sqe.user_data, sqe.flags), (3, 42, 0));
    }

    #[test]
    fn fallocate_maps_mode_and_len_like_the_kernel() {
        let sqe = io_uring_sqe::fallocate(
            5,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            512,
            1 << 20,
            9,
        );
        assert_eq!(sqe.opcode, IoringOp::Fallocate as u8);
        assert_eq!(sqe.addr(), 1 << 20);
        assert_eq!(
            sqe.len,
            (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32
        );
        assert_eq!(sqe.off(), 512);
    }

    #[test]
    fn fsync_and_flags() {
        let sqe = io_uring_sqe::fsync(3, IORING_FSYNC_DATASYNC, 1)
            .with_flags(IOSQE_FIXED_FILE)
            .with_flags(IOSQE_IO_LINK);
        assert_eq!(sqe.op_flags(), IORING_FSYNC_DATASYNC);
        assert_eq!(sqe.flags, IOSQE_FIXED_FILE | IOSQE_IO_LINK);
    }
}
