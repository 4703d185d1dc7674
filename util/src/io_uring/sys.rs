//! The io_uring kernel ABI (`linux/io_uring.h`) as `#[repr(C)]` Rust.
//!
//! Invariants:
//! - Every struct here has the size, alignment and field offsets of its C namesake; the
//!   test `util/tests/io_uring_abi.rs` compiles a C program against the installed header and
//!   asserts this field by field, and checks every constant in [`ABI_CONSTANTS`] and every
//!   opcode in [`IoringOp::ALL`] whose name the header defines.
//! - The C anonymous unions of `io_uring_sqe` are named unions here (`off_u`, `addr_u`,
//!   `op_flags`, `buf_u`, `file_u`, `addr3_u`), so every member the kernel defines is
//!   reachable by its C name one level down, e.g. `sqe.op_flags.fsync_flags`.
//! - Every union member is plain integer data, so any bit pattern is a valid value of each
//!   member; reading one is sound once the union was initialised (all constructors here
//!   initialise the widest member).
//!
//! The opcode list and the SQE unions extend the installed (6.1-era) header to Linux 6.18's
//! UAPI (up to `IORING_OP_PIPE`); extension opcodes are the kernel's own enum positions, and
//! the extra union members overlay existing bytes without changing the layout.

#![allow(non_camel_case_types)]

/// Offsets of the submission ring's fields inside the `IORING_OFF_SQ_RING` mapping.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_sqring_offsets {
    /// Offset of the ring head (consumer index, written by the kernel).
    pub head: u32,
    /// Offset of the ring tail (producer index, written by the application).
    pub tail: u32,
    /// Offset of the index mask (`ring_entries - 1`).
    pub ring_mask: u32,
    /// Offset of the number of entries.
    pub ring_entries: u32,
    /// Offset of the `IORING_SQ_*` flags word.
    pub flags: u32,
    /// Offset of the count of dropped (invalid) submissions.
    pub dropped: u32,
    /// Offset of the index array that maps ring slots to SQE array slots.
    pub array: u32,
    /// Reserved.
    pub resv1: u32,
    /// Reserved.
    pub resv2: u64,
}

/// Offsets of the completion ring's fields inside the `IORING_OFF_CQ_RING` mapping.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_cqring_offsets {
    /// Offset of the ring head (consumer index, written by the application).
    pub head: u32,
    /// Offset of the ring tail (producer index, written by the kernel).
    pub tail: u32,
    /// Offset of the index mask (`ring_entries - 1`).
    pub ring_mask: u32,
    /// Offset of the number of entries.
    pub ring_entries: u32,
    /// Offset of the count of completions lost to a full ring (without `IORING_FEAT_NODROP`).
    pub overflow: u32,
    /// Offset of the CQE array.
    pub cqes: u32,
    /// Offset of the `IORING_CQ_*` flags word.
    pub flags: u32,
    /// Reserved.
    pub resv1: u32,
    /// Reserved.
    pub resv2: u64,
}

/// Argument of `io_uring_setup(2)`: requested options in, ring geometry and features out.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_uring_params {
    /// Number of SQ entries (set by the kernel).
    pub sq_entries: u32,
    /// Number of CQ entries (in with `IORING_SETUP_CQSIZE`, else set by the kernel).
    pub cq_entries: u32,
    /// `IORING_SETUP_*` flags.
    pub flags: u32,
    /// CPU of the SQ poll thread (with `IORING_SETUP_SQ_AFF`).
    pub sq_thread_cpu: u32,
    /// Idle time of the SQ poll thread in milliseconds.
    pub sq_thread_idle: u32,
    /// `IORING_FEAT_*` bits the kernel reports.
    pub features: u32,
    /// Ring whose async backend to share (with `IORING_SETUP_ATTACH_WQ`).
    pub wq_fd: u32,
    /// Reserved, must be zero.
    pub resv: [u32; 3],
    /// Submission ring offsets (set by the kernel).
    pub sq_off: io_sqring_offsets,
    /// Completion ring offsets (set by the kernel).
    pub cq_off: io_cqring_offsets,
}

/// `cmd_op` and its padding, the command view of the SQE's first union.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_uring_sqe_cmd_op {
    /// `IORING_OP_URING_CMD` sub-command.
    pub cmd_op: u32,
    /// Padding.
    pub __pad1: u32,
}

/// First SQE union (offset 8): file offset, second address or command op.
#[repr(C)]
#[derive(Clone, Copy)]
pub union io_uring_sqe_off_u {
    /// Offset into the file.
    pub off: u64,
    /// Second address (e.g. `IORING_OP_ASYNC_CANCEL` target user_data).
    pub addr2: u64,
    /// Command view.
    pub cmd: io_uring_sqe_cmd_op,
}

/// `level` and `optname`, the socket-option view of the SQE's second union (Linux 6.7).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_uring_sqe_sockopt {
    /// Socket option level.
    pub level: u32,
    /// Socket option name.
    pub optname: u32,
}

/// Second SQE union (offset 16): buffer or iovec address.
#[repr(C)]
#[derive(Clone, Copy)]
pub union io_uring_sqe_addr_u {
    /// Pointer to the buffer or the iovec array.
    pub addr: u64,
    /// Input offset of `IORING_OP_SPLICE`.
    pub splice_off_in: u64,
    /// Socket-option view (Linux 6.7).
    pub sockopt: io_uring_sqe_sockopt,
}

/// Third SQE union (offset 28): per-opcode flags.
#[repr(C)]
#[derive(Clone, Copy)]
pub union io_uring_sqe_op_flags {
    /// `RWF_*` flags of reads and writes.
    pub rw_flags: u32,
    /// `IORING_FSYNC_*` flags.
    pub fsync_flags: u32,
    /// 16-bit poll events (compatibility).
    pub poll_events: u16,
    /// 32-bit poll events.
    pub poll32_events: u32,
    /// `sync_file_range(2)` flags.
    pub sync_range_flags: u32,
    /// `sendmsg`/`recvmsg` flags.
    pub msg_flags: u32,
    /// `IORING_TIMEOUT_*` flags.
    pub timeout_flags: u32,
    /// `accept4(2)` flags.
    pub accept_flags: u32,
    /// `IORING_ASYNC_CANCEL_*` flags.
    pub cancel_flags: u32,
    /// `open(2)` flags.
    pub open_flags: u32,
    /// `statx(2)` flags.
    pub statx_flags: u32,
    /// `posix_fadvise(2)` advice.
    pub fadvise_advice: u32,
    /// `splice(2)` flags.
    pub splice_flags: u32,
    /// `renameat2(2)` flags.
    pub rename_flags: u32,
    /// `unlinkat(2)` flags.
    pub unlink_flags: u32,
    /// `linkat(2)` flags.
    pub hardlink_flags: u32,
    /// xattr flags.
    pub xattr_flags: u32,
    /// `IORING_MSG_RING_*` flags.
    pub msg_ring_flags: u32,
    /// `IORING_URING_CMD_*` flags.
    pub uring_cmd_flags: u32,
    /// `waitid` flags (Linux 6.7).
    pub waitid_flags: u32,
    /// Futex flags (Linux 6.7).
    pub futex_flags: u32,
    /// `IORING_OP_FIXED_FD_INSTALL` flags (Linux 6.8).
    pub install_fd_flags: u32,
    /// `IORING_OP_NOP` flags (Linux 6.14).
    pub nop_flags: u32,
    /// `pipe2(2)` flags of `IORING_OP_PIPE` (Linux 6.16).
    pub pipe_flags: u32,
}

/// Fourth SQE union (offset 40): registered buffer index or buffer group.
///
/// The C union is `packed`; at offset 40 of an 8-aligned struct it is aligned anyway, so a
/// plain `repr(C)` union has the same layout (asserted by the ABI test).
#[repr(C)]
#[derive(Clone, Copy)]
pub union io_uring_sqe_buf_u {
    /// Index into the registered buffers.
    pub buf_index: u16,
    /// Buffer group for `IOSQE_BUFFER_SELECT`.
    pub buf_group: u16,
}

/// `addr_len` and its padding, the socket-address view of the fifth SQE union.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_uring_sqe_addr_len {
    /// Socket address length.
    pub addr_len: u16,
    /// Padding.
    pub __pad3: [u16; 1],
}

/// Fifth SQE union (offset 44): splice input fd, fixed file slot or address length.
#[repr(C)]
#[derive(Clone, Copy)]
pub union io_uring_sqe_file_u {
    /// Input fd of `IORING_OP_SPLICE`/`IORING_OP_TEE`.
    pub splice_fd_in: i32,
    /// Fixed file slot (plus one) for direct-descriptor opcodes.
    pub file_index: u32,
    /// Zero-copy receive interface queue index (Linux 6.15).
    pub zcrx_ifq_idx: u32,
    /// Socket option length (Linux 6.7).
    pub optlen: u32,
    /// Socket-address view.
    pub addr_len: io_uring_sqe_addr_len,
}

/// `addr3` and its padding.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_uring_sqe_addr3 {
    /// Third address.
    pub addr3: u64,
    /// Padding.
    pub __pad2: [u64; 1],
}

/// `attr_ptr` and `attr_type_mask`, the read/write attribute view (Linux 6.14).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_uring_sqe_attr {
    /// Pointer to attribute information.
    pub attr_ptr: u64,
    /// Bit mask of attribute types.
    pub attr_type_mask: u64,
}

/// Last SQE union (offset 48): third address, or the start of the command data of a
/// 128-byte SQE (`IORING_SETUP_SQE128`).
#[repr(C)]
#[derive(Clone, Copy)]
pub union io_uring_sqe_addr3_u {
    /// Third-address view.
    pub addr3: io_uring_sqe_addr3,
    /// Read/write attribute view (Linux 6.14).
    pub attr: io_uring_sqe_attr,
    /// Socket option value pointer (Linux 6.7).
    pub optval: u64,
    /// Command data (80 bytes in a 128-byte SQE; zero-length here).
    pub cmd: [u8; 0],
}

/// Submission queue entry (64 bytes). Build it with the typed constructors in `sqe.rs`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct io_uring_sqe {
    /// Operation ([`IoringOp`] as `u8`).
    pub opcode: u8,
    /// `IOSQE_*` flags.
    pub flags: u8,
    /// I/O priority.
    pub ioprio: u16,
    /// File descriptor (or fixed file index with `IOSQE_FIXED_FILE`).
    pub fd: i32,
    /// `off` / `addr2` / `cmd_op`.
    pub off_u: io_uring_sqe_off_u,
    /// `addr` / `splice_off_in`.
    pub addr_u: io_uring_sqe_addr_u,
    /// Buffer length or number of iovecs.
    pub len: u32,
    /// Per-opcode flags (`rw_flags`, `fsync_flags`, ...).
    pub op_flags: io_uring_sqe_op_flags,
    /// Caller's tag, returned unchanged in the CQE.
    pub user_data: u64,
    /// `buf_index` / `buf_group`.
    pub buf_u: io_uring_sqe_buf_u,
    /// Registered personality.
    pub personality: u16,
    /// `splice_fd_in` / `file_index` / `addr_len`.
    pub file_u: io_uring_sqe_file_u,
    /// `addr3` / `cmd`.
    pub addr3_u: io_uring_sqe_addr3_u,
}

/// Completion queue entry (16 bytes; 32 with `IORING_SETUP_CQE32`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_uring_cqe {
    /// The SQE's `user_data`.
    pub user_data: u64,
    /// Result: bytes transferred or another non-negative value, or a negative errno.
    pub res: i32,
    /// `IORING_CQE_F_*` flags.
    pub flags: u32,
    /// Extra 16 bytes of a 32-byte CQE (zero-length here).
    pub big_cqe: [u64; 0],
}

/// One opcode's entry in an `IORING_REGISTER_PROBE` answer.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_uring_probe_op {
    /// The opcode.
    pub op: u8,
    /// Reserved.
    pub resv: u8,
    /// `IO_URING_OP_*` flags.
    pub flags: u16,
    /// Reserved.
    pub resv2: u32,
}

/// Header of an `IORING_REGISTER_PROBE` answer; `ops_len` entries follow it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_uring_probe {
    /// Highest opcode the kernel knows.
    pub last_op: u8,
    /// Number of [`io_uring_probe_op`] entries filled in.
    pub ops_len: u8,
    /// Reserved.
    pub resv: u16,
    /// Reserved.
    pub resv2: [u32; 3],
    /// The entries (flexible array).
    pub ops: [io_uring_probe_op; 0],
}

/// What one restriction allows (`io_uring_restriction`'s anonymous union): an
/// `io_uring_register` opcode, an SQE opcode, or SQE flags, as its `opcode` says.
#[repr(C)]
#[derive(Clone, Copy)]
pub union io_uring_restriction_op_u {
    /// With [`IORING_RESTRICTION_REGISTER_OP`]: an `IORING_REGISTER_*` opcode.
    pub register_op: u8,
    /// With [`IORING_RESTRICTION_SQE_OP`]: an `IORING_OP_*` opcode.
    pub sqe_op: u8,
    /// With `IORING_RESTRICTION_SQE_FLAGS_*`: `IOSQE_*` flags.
    pub sqe_flags: u8,
}

/// One entry of an `IORING_REGISTER_RESTRICTIONS` array (registered while the ring is still
/// disabled; enforced from `IORING_REGISTER_ENABLE_RINGS` on).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct io_uring_restriction {
    /// `IORING_RESTRICTION_*`: what `op_u` holds.
    pub opcode: u16,
    /// The allowed opcode or flags.
    pub op_u: io_uring_restriction_op_u,
    /// Reserved (zero).
    pub resv: u8,
    /// Reserved (zero).
    pub resv2: [u32; 3],
}

impl io_uring_restriction {
    /// Allows the `io_uring_register` opcode `op` once the ring is enabled.
    pub fn register_op(op: u32) -> Self {
        Self::new(IORING_RESTRICTION_REGISTER_OP, op as u8)
    }

    /// Allows SQEs of opcode `op`.
    pub fn sqe_op(op: IoringOp) -> Self {
        Self::new(IORING_RESTRICTION_SQE_OP, op as u8)
    }

    /// Allows the `IOSQE_*` flags `flags` on SQEs (without it, no flag is allowed).
    pub fn sqe_flags_allowed(flags: u8) -> Self {
        Self::new(IORING_RESTRICTION_SQE_FLAGS_ALLOWED, flags)
    }

    fn new(opcode: u16, value: u8) -> Self {
        io_uring_restriction {
            opcode,
            op_u: io_uring_restriction_op_u { sqe_op: value },
            resv: 0,
            resv2: [0; 3],
        }
    }

    /// The allowed opcode or flags (every member of the union is one byte).
    pub fn value(&self) -> u8 {
        // SAFETY: every member is a `u8` at offset 0, and constructors initialise it.
        unsafe { self.op_u.sqe_op }
    }
}

impl std::fmt::Debug for io_uring_restriction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("io_uring_restriction")
            .field("opcode", &self.opcode)
            .field("value", &self.value())
            .finish()
    }
}

macro_rules! opcodes {
    ($( $(#[$doc:meta])* $variant:ident = $cname:literal = $val:literal, )*) => {
        /// io_uring operations (`enum io_uring_op`), as stored in `io_uring_sqe::opcode`.
        #[repr(u8)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum IoringOp {
            $( $(#[$doc])* $variant = $val, )*
        }

        impl IoringOp {
            /// Every opcode, in numeric order.
            pub const ALL: &'static [IoringOp] = &[$(IoringOp::$variant),*];

            /// The opcode's C name (`IORING_OP_...`).
            pub fn c_name(self) -> &'static str {
                match self {
                    $( IoringOp::$variant => $cname, )*
                }
            }

            /// The opcode with this number, if it is known here.
            pub fn from_u8(value: u8) -> Option<IoringOp> {
                match value {
                    $( $val => Some(IoringOp::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

opcodes! {
    /// No operation.
    Nop = "IORING_OP_NOP" = 0,
    /// `preadv2(2)`.
    Readv = "IORING_OP_READV" = 1,
    /// `pwritev2(2)`.
    Writev = "IORING_OP_WRITEV" = 2,
    /// `fsync(2)` / `fdatasync(2)`.
    Fsync = "IORING_OP_FSYNC" = 3,
    /// Read into a registered buffer.
    ReadFixed = "IORING_OP_READ_FIXED" = 4,
    /// Write from a registered buffer.
    WriteFixed = "IORING_OP_WRITE_FIXED" = 5,
    /// One-shot (or multishot) poll.
    PollAdd = "IORING_OP_POLL_ADD" = 6,
    /// Remove a poll.
    PollRemove = "IORING_OP_POLL_REMOVE" = 7,
    /// `sync_file_range(2)`.
    SyncFileRange = "IORING_OP_SYNC_FILE_RANGE" = 8,
    /// `sendmsg(2)`.
    Sendmsg = "IORING_OP_SENDMSG" = 9,
    /// `recvmsg(2)`.
    Recvmsg = "IORING_OP_RECVMSG" = 10,
    /// Timeout.
    Timeout = "IORING_OP_TIMEOUT" = 11,
    /// Remove or update a timeout.
    TimeoutRemove = "IORING_OP_TIMEOUT_REMOVE" = 12,
    /// `accept4(2)`.
    Accept = "IORING_OP_ACCEPT" = 13,
    /// Cancel an in-flight request.
    AsyncCancel = "IORING_OP_ASYNC_CANCEL" = 14,
    /// Timeout linked to the previous request.
    LinkTimeout = "IORING_OP_LINK_TIMEOUT" = 15,
    /// `connect(2)`.
    Connect = "IORING_OP_CONNECT" = 16,
    /// `fallocate(2)`.
    Fallocate = "IORING_OP_FALLOCATE" = 17,
    /// `openat(2)`.
    Openat = "IORING_OP_OPENAT" = 18,
    /// `close(2)`.
    Close = "IORING_OP_CLOSE" = 19,
    /// Update registered files.
    FilesUpdate = "IORING_OP_FILES_UPDATE" = 20,
    /// `statx(2)`.
    Statx = "IORING_OP_STATX" = 21,
    /// `pread(2)`.
    Read = "IORING_OP_READ" = 22,
    /// `pwrite(2)`.
    Write = "IORING_OP_WRITE" = 23,
    /// `posix_fadvise(2)`.
    Fadvise = "IORING_OP_FADVISE" = 24,
    /// `madvise(2)`.
    Madvise = "IORING_OP_MADVISE" = 25,
    /// `send(2)`.
    Send = "IORING_OP_SEND" = 26,
    /// `recv(2)`.
    Recv = "IORING_OP_RECV" = 27,
    /// `openat2(2)`.
    Openat2 = "IORING_OP_OPENAT2" = 28,
    /// `epoll_ctl(2)`.
    EpollCtl = "IORING_OP_EPOLL_CTL" = 29,
    /// `splice(2)`.
    Splice = "IORING_OP_SPLICE" = 30,
    /// Provide buffers for buffer selection.
    ProvideBuffers = "IORING_OP_PROVIDE_BUFFERS" = 31,
    /// Remove provided buffers.
    RemoveBuffers = "IORING_OP_REMOVE_BUFFERS" = 32,
    /// `tee(2)`.
    Tee = "IORING_OP_TEE" = 33,
    /// `shutdown(2)`.
    Shutdown = "IORING_OP_SHUTDOWN" = 34,
    /// `renameat2(2)`.
    Renameat = "IORING_OP_RENAMEAT" = 35,
    /// `unlinkat(2)`.
    Unlinkat = "IORING_OP_UNLINKAT" = 36,
    /// `mkdirat(2)`.
    Mkdirat = "IORING_OP_MKDIRAT" = 37,
    /// `symlinkat(2)`.
    Symlinkat = "IORING_OP_SYMLINKAT" = 38,
    /// `linkat(2)`.
    Linkat = "IORING_OP_LINKAT" = 39,
    /// Message another ring.
    MsgRing = "IORING_OP_MSG_RING" = 40,
    /// `fsetxattr(2)`.
    Fsetxattr = "IORING_OP_FSETXATTR" = 41,
    /// `setxattr(2)`.
    Setxattr = "IORING_OP_SETXATTR" = 42,
    /// `fgetxattr(2)`.
    Fgetxattr = "IORING_OP_FGETXATTR" = 43,
    /// `getxattr(2)`.
    Getxattr = "IORING_OP_GETXATTR" = 44,
    /// `socket(2)`.
    Socket = "IORING_OP_SOCKET" = 45,
    /// Driver pass-through command.
    UringCmd = "IORING_OP_URING_CMD" = 46,
    /// Zero-copy `send(2)`.
    SendZc = "IORING_OP_SEND_ZC" = 47,
    /// Zero-copy `sendmsg(2)`.
    SendmsgZc = "IORING_OP_SENDMSG_ZC" = 48,
    /// Multishot read (Linux 6.7).
    ReadMultishot = "IORING_OP_READ_MULTISHOT" = 49,
    /// `waitid(2)` (Linux 6.7).
    Waitid = "IORING_OP_WAITID" = 50,
    /// Futex wait (Linux 6.7).
    FutexWait = "IORING_OP_FUTEX_WAIT" = 51,
    /// Futex wake (Linux 6.7).
    FutexWake = "IORING_OP_FUTEX_WAKE" = 52,
    /// Vectored futex wait (Linux 6.7).
    FutexWaitv = "IORING_OP_FUTEX_WAITV" = 53,
    /// Install a fixed file as a regular fd (Linux 6.8).
    FixedFdInstall = "IORING_OP_FIXED_FD_INSTALL" = 54,
    /// `ftruncate(2)` (Linux 6.9).
    Ftruncate = "IORING_OP_FTRUNCATE" = 55,
    /// `bind(2)` (Linux 6.11).
    Bind = "IORING_OP_BIND" = 56,
    /// `listen(2)` (Linux 6.11).
    Listen = "IORING_OP_LISTEN" = 57,
    /// Zero-copy receive (Linux 6.15).
    RecvZc = "IORING_OP_RECV_ZC" = 58,
    /// `epoll_wait(2)` (Linux 6.15).
    EpollWait = "IORING_OP_EPOLL_WAIT" = 59,
    /// Vectored read into registered buffers (Linux 6.15).
    ReadvFixed = "IORING_OP_READV_FIXED" = 60,
    /// Vectored write from registered buffers (Linux 6.15).
    WritevFixed = "IORING_OP_WRITEV_FIXED" = 61,
    /// `pipe2(2)` (Linux 6.16).
    Pipe = "IORING_OP_PIPE" = 62,
}

/// One past the last opcode defined here (`IORING_OP_LAST` of Linux 6.18).
pub const IORING_OP_LAST: u8 = IoringOp::Pipe as u8 + 1;

macro_rules! abi_constants {
    ($( $(#[$doc:meta])* $name:ident: $ty:ty = $val:expr; )*) => {
        $( $(#[$doc])* pub const $name: $ty = $val; )*

        /// Every constant of this module with its C name, widened to `i64`; the ABI test
        /// compares each against the installed header.
        pub const ABI_CONSTANTS: &[(&str, i64)] = &[ $( (stringify!($name), $name as i64), )* ];
    };
}

abi_constants! {
    /// `file_index` value asking the kernel to pick a free direct descriptor slot.
    IORING_FILE_INDEX_ALLOC: u32 = !0;

    /// Bit number of [`IOSQE_FIXED_FILE`].
    IOSQE_FIXED_FILE_BIT: u8 = 0;
    /// Bit number of [`IOSQE_IO_DRAIN`].
    IOSQE_IO_DRAIN_BIT: u8 = 1;
    /// Bit number of [`IOSQE_IO_LINK`].
    IOSQE_IO_LINK_BIT: u8 = 2;
    /// Bit number of [`IOSQE_IO_HARDLINK`].
    IOSQE_IO_HARDLINK_BIT: u8 = 3;
    /// Bit number of [`IOSQE_ASYNC`].
    IOSQE_ASYNC_BIT: u8 = 4;
    /// Bit number of [`IOSQE_BUFFER_SELECT`].
    IOSQE_BUFFER_SELECT_BIT: u8 = 5;
    /// Bit number of [`IOSQE_CQE_SKIP_SUCCESS`].
    IOSQE_CQE_SKIP_SUCCESS_BIT: u8 = 6;
    /// SQE flag: `fd` is an index into the registered files.
    IOSQE_FIXED_FILE: u8 = 1 << IOSQE_FIXED_FILE_BIT;
    /// SQE flag: start only after every earlier request completed.
    IOSQE_IO_DRAIN: u8 = 1 << IOSQE_IO_DRAIN_BIT;
    /// SQE flag: the next SQE starts only after this one succeeded.
    IOSQE_IO_LINK: u8 = 1 << IOSQE_IO_LINK_BIT;
    /// SQE flag: like [`IOSQE_IO_LINK`], but the chain survives failures.
    IOSQE_IO_HARDLINK: u8 = 1 << IOSQE_IO_HARDLINK_BIT;
    /// SQE flag: always issue from the async worker pool.
    IOSQE_ASYNC: u8 = 1 << IOSQE_ASYNC_BIT;
    /// SQE flag: pick a buffer from `buf_group`.
    IOSQE_BUFFER_SELECT: u8 = 1 << IOSQE_BUFFER_SELECT_BIT;
    /// SQE flag: post no CQE when the request succeeds.
    IOSQE_CQE_SKIP_SUCCESS: u8 = 1 << IOSQE_CQE_SKIP_SUCCESS_BIT;

    /// Setup flag: busy-poll for completions (O_DIRECT on polled devices).
    IORING_SETUP_IOPOLL: u32 = 1 << 0;
    /// Setup flag: a kernel thread polls the SQ.
    IORING_SETUP_SQPOLL: u32 = 1 << 1;
    /// Setup flag: `sq_thread_cpu` is valid.
    IORING_SETUP_SQ_AFF: u32 = 1 << 2;
    /// Setup flag: `cq_entries` is given by the application.
    IORING_SETUP_CQSIZE: u32 = 1 << 3;
    /// Setup flag: clamp too-large ring sizes instead of failing.
    IORING_SETUP_CLAMP: u32 = 1 << 4;
    /// Setup flag: share the async backend of `wq_fd`.
    IORING_SETUP_ATTACH_WQ: u32 = 1 << 5;
    /// Setup flag: start disabled (see `IORING_REGISTER_ENABLE_RINGS`).
    IORING_SETUP_R_DISABLED: u32 = 1 << 6;
    /// Setup flag: keep submitting a batch after a failing SQE.
    IORING_SETUP_SUBMIT_ALL: u32 = 1 << 7;
    /// Setup flag: run completion task work only at kernel transitions.
    IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;
    /// Setup flag: set [`IORING_SQ_TASKRUN`] when task work is pending.
    IORING_SETUP_TASKRUN_FLAG: u32 = 1 << 9;
    /// Setup flag: 128-byte SQEs.
    IORING_SETUP_SQE128: u32 = 1 << 10;
    /// Setup flag: 32-byte CQEs.
    IORING_SETUP_CQE32: u32 = 1 << 11;
    /// Setup flag: only one task submits.
    IORING_SETUP_SINGLE_ISSUER: u32 = 1 << 12;
    /// Setup flag: defer task work until the application waits for events.
    IORING_SETUP_DEFER_TASKRUN: u32 = 1 << 13;

    /// `fsync_flags`: sync data only (`fdatasync(2)`).
    IORING_FSYNC_DATASYNC: u32 = 1 << 0;

    /// CQE flag: the upper 16 bits of `flags` hold a selected buffer id.
    IORING_CQE_F_BUFFER: u32 = 1 << 0;
    /// CQE flag: the request will post more CQEs.
    IORING_CQE_F_MORE: u32 = 1 << 1;
    /// CQE flag: the socket has more data to read.
    IORING_CQE_F_SOCK_NONEMPTY: u32 = 1 << 2;
    /// CQE flag: a zero-copy notification.
    IORING_CQE_F_NOTIF: u32 = 1 << 3;
    /// Shift of the buffer id in `flags` with [`IORING_CQE_F_BUFFER`].
    IORING_CQE_BUFFER_SHIFT: u32 = 16;

    /// mmap offset of the SQ ring.
    IORING_OFF_SQ_RING: u64 = 0;
    /// mmap offset of the CQ ring.
    IORING_OFF_CQ_RING: u64 = 0x800_0000;
    /// mmap offset of the SQE array.
    IORING_OFF_SQES: u64 = 0x1000_0000;
    /// Mask of the region-selecting bits of an mmap offset.
    IORING_OFF_MMAP_MASK: u64 = 0xf800_0000;

    /// SQ ring flag: the SQ poll thread sleeps; wake it with [`IORING_ENTER_SQ_WAKEUP`].
    IORING_SQ_NEED_WAKEUP: u32 = 1 << 0;
    /// SQ ring flag: completions wait in the kernel's overflow list.
    IORING_SQ_CQ_OVERFLOW: u32 = 1 << 1;
    /// SQ ring flag: task work is pending; enter the kernel to run it.
    IORING_SQ_TASKRUN: u32 = 1 << 2;

    /// CQ ring flag: do not signal the registered eventfd.
    IORING_CQ_EVENTFD_DISABLED: u32 = 1 << 0;

    /// `io_uring_enter` flag: wait for `min_complete` completions.
    IORING_ENTER_GETEVENTS: u32 = 1 << 0;
    /// `io_uring_enter` flag: wake the SQ poll thread.
    IORING_ENTER_SQ_WAKEUP: u32 = 1 << 1;
    /// `io_uring_enter` flag: wait for SQ space (SQPOLL).
    IORING_ENTER_SQ_WAIT: u32 = 1 << 2;
    /// `io_uring_enter` flag: the argument is an `io_uring_getevents_arg`.
    IORING_ENTER_EXT_ARG: u32 = 1 << 3;
    /// `io_uring_enter` flag: `fd` is a registered ring index.
    IORING_ENTER_REGISTERED_RING: u32 = 1 << 4;

    /// Feature: SQ and CQ rings share one mapping.
    IORING_FEAT_SINGLE_MMAP: u32 = 1 << 0;
    /// Feature: completions are never dropped when the CQ ring is full.
    IORING_FEAT_NODROP: u32 = 1 << 1;
    /// Feature: SQE data is consumed at submission.
    IORING_FEAT_SUBMIT_STABLE: u32 = 1 << 2;
    /// Feature: offset -1 means the current file position.
    IORING_FEAT_RW_CUR_POS: u32 = 1 << 3;
    /// Feature: requests run with the submitter's credentials.
    IORING_FEAT_CUR_PERSONALITY: u32 = 1 << 4;
    /// Feature: internal poll-driven retry.
    IORING_FEAT_FAST_POLL: u32 = 1 << 5;
    /// Feature: 32-bit poll events.
    IORING_FEAT_POLL_32BITS: u32 = 1 << 6;
    /// Feature: SQPOLL without fixed files.
    IORING_FEAT_SQPOLL_NONFIXED: u32 = 1 << 7;
    /// Feature: [`IORING_ENTER_EXT_ARG`].
    IORING_FEAT_EXT_ARG: u32 = 1 << 8;
    /// Feature: native worker threads.
    IORING_FEAT_NATIVE_WORKERS: u32 = 1 << 9;
    /// Feature: resource tags.
    IORING_FEAT_RSRC_TAGS: u32 = 1 << 10;
    /// Feature: [`IOSQE_CQE_SKIP_SUCCESS`].
    IORING_FEAT_CQE_SKIP: u32 = 1 << 11;
    /// Feature: linked requests resolve files late.
    IORING_FEAT_LINKED_FILE: u32 = 1 << 12;

    /// Register opcode: fixed buffers (`iovec` array).
    IORING_REGISTER_BUFFERS: u32 = 0;
    /// Register opcode: drop the fixed buffers.
    IORING_UNREGISTER_BUFFERS: u32 = 1;
    /// Register opcode: fixed files (`i32` array).
    IORING_REGISTER_FILES: u32 = 2;
    /// Register opcode: drop the fixed files.
    IORING_UNREGISTER_FILES: u32 = 3;
    /// Register opcode: completion eventfd.
    IORING_REGISTER_EVENTFD: u32 = 4;
    /// Register opcode: drop the eventfd.
    IORING_UNREGISTER_EVENTFD: u32 = 5;
    /// Register opcode: update fixed files.
    IORING_REGISTER_FILES_UPDATE: u32 = 6;
    /// Register opcode: eventfd signalled only for async completions.
    IORING_REGISTER_EVENTFD_ASYNC: u32 = 7;
    /// Register opcode: opcode probe.
    IORING_REGISTER_PROBE: u32 = 8;
    /// Register opcode: credentials personality.
    IORING_REGISTER_PERSONALITY: u32 = 9;
    /// Register opcode: drop a personality.
    IORING_UNREGISTER_PERSONALITY: u32 = 10;
    /// Register opcode: restrictions.
    IORING_REGISTER_RESTRICTIONS: u32 = 11;
    /// Register opcode: enable a ring set up with [`IORING_SETUP_R_DISABLED`].
    IORING_REGISTER_ENABLE_RINGS: u32 = 12;
    /// Register opcode: tagged files.
    IORING_REGISTER_FILES2: u32 = 13;
    /// Register opcode: tagged file update.
    IORING_REGISTER_FILES_UPDATE2: u32 = 14;
    /// Register opcode: tagged buffers.
    IORING_REGISTER_BUFFERS2: u32 = 15;
    /// Register opcode: tagged buffer update.
    IORING_REGISTER_BUFFERS_UPDATE: u32 = 16;
    /// Register opcode: io-wq CPU affinity.
    IORING_REGISTER_IOWQ_AFF: u32 = 17;
    /// Register opcode: clear io-wq CPU affinity.
    IORING_UNREGISTER_IOWQ_AFF: u32 = 18;
    /// Register opcode: io-wq worker limits.
    IORING_REGISTER_IOWQ_MAX_WORKERS: u32 = 19;
    /// Register opcode: register ring fds.
    IORING_REGISTER_RING_FDS: u32 = 20;
    /// Register opcode: unregister ring fds.
    IORING_UNREGISTER_RING_FDS: u32 = 21;
    /// Register opcode: provided-buffer ring.
    IORING_REGISTER_PBUF_RING: u32 = 22;
    /// Register opcode: drop a provided-buffer ring.
    IORING_UNREGISTER_PBUF_RING: u32 = 23;
    /// Register opcode: synchronous cancel.
    IORING_REGISTER_SYNC_CANCEL: u32 = 24;
    /// Register opcode: fixed-file allocation range.
    IORING_REGISTER_FILE_ALLOC_RANGE: u32 = 25;

    /// Fixed-file update value meaning "leave this slot alone".
    IORING_REGISTER_FILES_SKIP: i32 = -2;

    /// Restriction kind: allow an `io_uring_register` opcode.
    IORING_RESTRICTION_REGISTER_OP: u16 = 0;
    /// Restriction kind: allow an SQE opcode.
    IORING_RESTRICTION_SQE_OP: u16 = 1;
    /// Restriction kind: allow SQE flags.
    IORING_RESTRICTION_SQE_FLAGS_ALLOWED: u16 = 2;
    /// Restriction kind: require SQE flags on every SQE.
    IORING_RESTRICTION_SQE_FLAGS_REQUIRED: u16 = 3;
    /// Probe flag: the opcode is supported.
    IO_URING_OP_SUPPORTED: u16 = 1 << 0;
}
