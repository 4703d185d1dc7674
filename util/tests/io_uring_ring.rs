//! `IoUring` on the real kernel with real files on disk (under the crate's target dir) and
//! on tmpfs (`/dev/shm`): no mocks.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use util::io_uring::sys::{
    io_uring_restriction, IORING_ENTER_GETEVENTS, IORING_FEAT_NODROP, IORING_FSYNC_DATASYNC,
    IORING_OP_LAST, IORING_REGISTER_EVENTFD, IORING_REGISTER_FILES, IORING_REGISTER_PROBE,
    IORING_REGISTER_RESTRICTIONS, IORING_SETUP_R_DISABLED, IOSQE_FIXED_FILE, IOSQE_IO_LINK,
};
use util::io_uring::{
    io_uring_cqe, io_uring_enter, io_uring_sqe, IoUring, IoringOp, SqFull, UringError,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A file removed on drop.
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn new(dir: &Path, name: &str, direct: bool) -> TempFile {
        let path = dir.join(format!("io_uring-{name}-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        TempFile { path, file }
    }

    /// A buffered file under the crate's target dir (ext4 here).
    fn on_disk(name: &str) -> TempFile {
        TempFile::new(Path::new(env!("CARGO_TARGET_TMPDIR")), name, false)
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read back")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A zeroed heap buffer with a chosen alignment (for O_DIRECT and registered buffers).
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len, align).expect("layout");
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        AlignedBuf { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `layout.size()` initialised (zeroed) bytes, borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    fn iovec(&self, start: usize, len: usize) -> libc::iovec {
        assert!(start + len <= self.layout.size());
        // SAFETY: `start + len` is within the allocation (asserted above).
        let base = unsafe { self.ptr.add(start) };
        libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with `layout` and is freed once.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Reaps until `n` completions arrived, waiting in the kernel when none is ready.
fn reap(ring: &mut IoUring, n: usize) -> Vec<io_uring_cqe> {
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(ring.completions());
        if out.len() < n {
            ring.submit_and_wait(1).expect("wait for completions");
        }
    }
    assert!(
        ring.pop_completion().is_none(),
        "no completion beyond the expected {n}"
    );
    out
}

/// Pushes one SQE whose memory outlives the call to `reap` that follows.
fn push(ring: &mut IoUring, sqe: &io_uring_sqe) {
    // SAFETY: every test reaps each pushed SQE's completion before its buffers drop.
    unsafe { ring.push(sqe) }.expect("SQ has room");
}

fn run_one(ring: &mut IoUring, sqe: &io_uring_sqe) -> io_uring_cqe {
    push(ring, sqe);
    assert_eq!(ring.submit_and_wait(1).expect("submit"), 1);
    let cqe = reap(ring, 1)[0];
    assert_eq!(cqe.user_data, sqe.user_data);
    cqe
}

#[test]
fn nop_round_trip() {
    let mut ring = IoUring::new(8, 0).expect("io_uring setup");
    let cqe = run_one(&mut ring, &io_uring_sqe::nop(0xdead_beef));
    assert_eq!((cqe.user_data, cqe.res, cqe.flags), (0xdead_beef, 0, 0));
    assert_eq!(ring.sq_space_left(), ring.sq_entries());
}

#[test]
fn writev_then_readv_round_trip_on_disk() {
    let f = TempFile::on_disk("vec");
    let mut ring = IoUring::new(16, 0).expect("setup");
    let (a, b) = (pattern(3000, 1), pattern(5000, 2));
    let out = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut _,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        },
    ];
    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::writev(f.fd(), out.as_ptr(), 2, 100, 1),
    );
    assert_eq!(cqe.res, 8000);
    let mut expected = vec![0u8; 100];
    expected.extend_from_slice(&a);
    expected.extend_from_slice(&b);
    assert_eq!(f.contents(), expected);

    let (mut x, mut y) = (vec![0u8; 4000], vec![0u8; 4100]);
    let inp = [
        libc::iovec {
            iov_base: x.as_mut_ptr().cast(),
            iov_len: x.len(),
        },
        libc::iovec {
            iov_base: y.as_mut_ptr().cast(),
            iov_len: y.len(),
        },
    ];
    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::readv(f.fd(), inp.as_ptr(), 2, 0, 2),
    );
    assert_eq!(cqe.res, 8100);
    assert_eq!([x, y].concat(), expected);
}

#[test]
fn write_fixed_read_fixed_and_fsync_on_disk() {
    let f = TempFile::on_disk("fixed");
    let mut ring = IoUring::new(8, 0).expect("setup");
    let mut buf = AlignedBuf::new(2 * 8192, 4096);
    let data = pattern(8192, 7);
    buf.as_mut_slice()[..8192].copy_from_slice(&data);
    let iov = [buf.iovec(0, 8192), buf.iovec(8192, 8192)];
    // SAFETY: `buf` outlives the ring's use of it: the ring is dropped first (declared later).
    unsafe { ring.register_buffers(&iov) }.expect("register buffers");

    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::write_fixed(f.fd(), buf.ptr, 8192, 4096, 0, 10),
    );
    assert_eq!(cqe.res, 8192);
    assert_eq!(
        run_one(&mut ring, &io_uring_sqe::fsync(f.fd(), 0, 11)).res,
        0
    );
    assert_eq!(
        run_one(
            &mut ring,
            &io_uring_sqe::fsync(f.fd(), IORING_FSYNC_DATASYNC, 12)
        )
        .res,
        0
    );
    assert_eq!(&f.contents()[4096..], &data[..]);

    // Read into the second registered buffer, at an offset inside it.
    // SAFETY: 8192 + 100 + 4096 is inside the 16 KiB allocation.
    let dst = unsafe { buf.ptr.add(8192 + 100) };
    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::read_fixed(f.fd(), dst, 4096, 6000, 1, 13),
    );
    assert_eq!(cqe.res, 4096);
    assert_eq!(
        &buf.as_mut_slice()[8292..8292 + 4096],
        &data[6000 - 4096..6000 - 4096 + 4096]
    );

    // A fixed read outside the registered buffer is refused with EFAULT.
    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::read_fixed(f.fd(), dst, 8192, 0, 1, 14),
    );
    assert_eq!(cqe.res, -libc::EFAULT);
    drop(ring);
}

fn direct_round_trip(dir: &Path, enforces_alignment: bool) {
    let f = TempFile::new(dir, "direct", true);
    let mut ring = IoUring::new(8, 0).expect("setup");
    let mut wbuf = AlignedBuf::new(3 * 4096, 4096);
    let data = pattern(3 * 4096, 9);
    wbuf.as_mut_slice().copy_from_slice(&data);
    let wiov = [wbuf.iovec(0, 4096), wbuf.iovec(4096, 8192)];
    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::writev(f.fd(), wiov.as_ptr(), 2, 8192, 1),
    );
    assert_eq!(cqe.res, 3 * 4096, "O_DIRECT writev in {}", dir.display());

    let rbuf = AlignedBuf::new(3 * 4096, 4096);
    let riov = [rbuf.iovec(0, 3 * 4096)];
    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::readv(f.fd(), riov.as_ptr(), 1, 8192, 2),
    );
    assert_eq!(cqe.res, 3 * 4096);
    // SAFETY: the read completed; `rbuf` holds 3 pages, no longer used by the kernel.
    let got = unsafe { std::slice::from_raw_parts(rbuf.ptr, 3 * 4096) };
    assert_eq!(got, &data[..]);
    let mut plain = vec![0u8; 3 * 4096];
    File::open(&f.path)
        .unwrap()
        .read_exact_at(&mut plain, 8192)
        .unwrap();
    assert_eq!(plain, data);

    // Misaligned O_DIRECT memory over written blocks surfaces EINVAL through the CQE on a
    // block device (tmpfs accepts any alignment; a hole is zero-filled without a check).
    if enforces_alignment {
        let bad = [rbuf.iovec(1, 4096)];
        let cqe = run_one(
            &mut ring,
            &io_uring_sqe::readv(f.fd(), bad.as_ptr(), 1, 8192, 3),
        );
        assert_eq!(cqe.res, -libc::EINVAL);
    }
}

#[test]
fn o_direct_aligned_io_on_disk() {
    direct_round_trip(Path::new(env!("CARGO_TARGET_TMPDIR")), true);
}

#[test]
fn o_direct_aligned_io_on_tmpfs() {
    direct_round_trip(Path::new("/dev/shm"), false);
}

#[test]
fn full_submission_queue_is_a_value() {
    let mut ring = IoUring::new(8, 0).expect("setup");
    let n = ring.sq_entries();
    for i in 0..n {
        assert_eq!(ring.sq_space_left(), n - i);
        // SAFETY: NOPs reference no memory.
        unsafe { ring.push(&io_uring_sqe::nop(u64::from(i))) }.expect("room");
    }
    assert_eq!(ring.sq_space_left(), 0);
    // SAFETY: as above.
    assert_eq!(unsafe { ring.push(&io_uring_sqe::nop(99)) }, Err(SqFull));
    assert_eq!(ring.submit().expect("submit"), n);
    assert_eq!(ring.sq_space_left(), n);
    push(&mut ring, &io_uring_sqe::nop(100));
    ring.submit().expect("submit");
    let tags: BTreeSet<u64> = reap(&mut ring, n as usize + 1)
        .iter()
        .map(|c| c.user_data)
        .collect();
    assert_eq!(tags, (0..u64::from(n)).chain([100]).collect());
}

#[test]
fn more_in_flight_than_cq_entries_loses_nothing() {
    let mut ring = IoUring::new(4, 0).expect("setup");
    assert!(
        ring.has_feature(IORING_FEAT_NODROP),
        "kernel lacks IORING_FEAT_NODROP"
    );
    let total = 5 * ring.cq_entries() as u64;
    let mut next = 0;
    while next < total {
        while next < total && ring.sq_space_left() > 0 {
            push(&mut ring, &io_uring_sqe::nop(next));
            next += 1;
        }
        ring.submit().expect("submit");
    }
    assert!(
        ring.cq_overflow_pending(),
        "the CQ ring overflowed into the kernel's list"
    );
    let tags: BTreeSet<u64> = reap(&mut ring, total as usize)
        .iter()
        .map(|c| c.user_data)
        .collect();
    assert_eq!(tags, (0..total).collect());
    assert!(!ring.cq_overflow_pending());
}

#[test]
fn registered_eventfd_becomes_readable_on_completion() {
    let mut ring = IoUring::new(8, 0).expect("setup");
    let efd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    ring.register_eventfd(efd.as_raw_fd())
        .expect("register eventfd");
    assert_eq!(efd.read().unwrap_err().kind(), io::ErrorKind::WouldBlock);

    push(&mut ring, &io_uring_sqe::nop(5));
    ring.submit().expect("submit");
    let mut pfd = libc::pollfd {
        fd: efd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(ready, 1, "eventfd readable within 5 s");
    assert!(efd.read().expect("eventfd count") >= 1);
    assert_eq!(reap(&mut ring, 1)[0].user_data, 5);
}

#[test]
fn failing_operations_surface_their_errno() {
    let mut ring = IoUring::new(8, 0).expect("setup");
    let mut byte = [0u8; 1];
    let iov = [libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }];
    // A descriptor number far above anything this process has open.
    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::readv(1 << 20, iov.as_ptr(), 1, 0, 77),
    );
    assert_eq!((cqe.user_data, cqe.res), (77, -libc::EBADF));

    // Registration errors keep the opcode and the errno.
    match ring.register_files(&[1 << 20]) {
        Err(UringError::Register { opcode, source }) => {
            assert_eq!(opcode, IORING_REGISTER_FILES);
            assert_eq!(source.raw_os_error(), Some(libc::EBADF));
        }
        other => panic!("expected EBADF, got {other:?}"),
    }
    // So do enter errors: GETEVENTS on a non-ring fd.
    let err = io_uring_enter(0, 0, 1, IORING_ENTER_GETEVENTS).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
    assert_eq!(
        UringError::Setup(io::Error::from_raw_os_error(libc::EINVAL)).raw_os_error(),
        Some(libc::EINVAL)
    );
    // And setup: zero entries is invalid.
    let err = IoUring::new(0, 0).err().expect("zero entries fail");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn a_restricted_ring_refuses_what_it_was_not_allowed() {
    let file = TempFile::on_disk("restricted");
    file.file.write_all_at(&pattern(4096, 3), 0).unwrap();
    let mut ring = IoUring::new(8, IORING_SETUP_R_DISABLED).expect("setup");
    let allowed = [
        io_uring_restriction::sqe_op(IoringOp::Readv),
        io_uring_restriction::sqe_op(IoringOp::Nop),
        io_uring_restriction::sqe_flags_allowed(IOSQE_IO_LINK),
        io_uring_restriction::register_op(IORING_REGISTER_PROBE),
    ];
    ring.register_restrictions(&allowed).expect("restrictions");
    // Restrictions are set once, before the ring is enabled.
    let again = ring.register_restrictions(&allowed).unwrap_err();
    assert_eq!(again.raw_os_error(), Some(libc::EBUSY), "{again}");
    // Registrations before enabling are not restricted.
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    ring.register_eventfd(event.as_raw_fd())
        .expect("register before enabling");
    ring.enable().expect("enable");

    // An allowed opcode (with an allowed flag) runs; the others complete with -EACCES and
    // touch nothing.
    let mut buf = vec![0u8; 4096];
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::readv(file.fd(), iov.as_ptr(), 1, 0, 1).with_flags(IOSQE_IO_LINK),
    );
    assert_eq!(cqe.res, 4096);
    assert_eq!(buf, pattern(4096, 3));
    let new = pattern(4096, 9);
    let write_iov = [libc::iovec {
        iov_base: new.as_ptr() as *mut libc::c_void,
        iov_len: new.len(),
    }];
    let refused = [
        io_uring_sqe::writev(file.fd(), write_iov.as_ptr(), 1, 0, 2),
        io_uring_sqe::fsync(file.fd(), IORING_FSYNC_DATASYNC, 3),
        io_uring_sqe::fallocate(file.fd(), 0, 0, 8192, 4),
        // An allowed opcode with a flag that was not allowed.
        io_uring_sqe::nop(5).with_flags(IOSQE_FIXED_FILE),
    ];
    for sqe in &refused {
        let cqe = run_one(&mut ring, sqe);
        assert_eq!(cqe.res, -libc::EACCES, "{sqe:?}");
    }
    assert_eq!(
        file.contents(),
        pattern(4096, 3),
        "the refused write wrote nothing"
    );
    assert_eq!(file.file.metadata().unwrap().len(), 4096, "nor fallocate");
    assert_eq!(run_one(&mut ring, &io_uring_sqe::nop(6)).res, 0);

    // Register opcodes: only the allowed one, once enabled.
    ring.probe().expect("an allowed register opcode");
    for (opcode, result) in [
        (
            IORING_REGISTER_EVENTFD,
            ring.register_eventfd(event.as_raw_fd()),
        ),
        (IORING_REGISTER_FILES, ring.register_files(&[file.fd()])),
        (
            IORING_REGISTER_RESTRICTIONS,
            ring.register_restrictions(&allowed),
        ),
    ] {
        match result {
            Err(UringError::Register { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EACCES), "opcode {opcode}")
            }
            other => panic!("opcode {opcode}: expected EACCES, got {other:?}"),
        }
    }
}

#[test]
fn restrictions_need_a_disabled_ring() {
    let ring = IoUring::new(8, 0).expect("setup");
    let err = ring
        .register_restrictions(&[io_uring_restriction::sqe_op(IoringOp::Nop)])
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBADFD), "{err}");
}

#[test]
fn fixed_files_and_fallocate() {
    let f = TempFile::on_disk("fixedfile");
    let mut ring = IoUring::new(8, 0).expect("setup");
    ring.register_files(&[f.fd()]).expect("register files");
    let data = pattern(512, 3);
    let iov = [libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    }];
    let sqe = io_uring_sqe::writev(0, iov.as_ptr(), 1, 0, 1).with_flags(IOSQE_FIXED_FILE);
    assert_eq!(run_one(&mut ring, &sqe).res, 512);
    assert_eq!(f.contents(), data);

    let cqe = run_one(
        &mut ring,
        &io_uring_sqe::fallocate(f.fd(), 0, 0, 1 << 20, 2),
    );
    assert_eq!(cqe.res, 0);
    assert_eq!(f.file.metadata().unwrap().len(), 1 << 20);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(
        run_one(
            &mut ring,
            &io_uring_sqe::fallocate(f.fd(), punch, 0, 4096, 3)
        )
        .res,
        0
    );
    assert_eq!(&f.contents()[..512], &[0u8; 512][..]);
}

#[test]
fn probe_knows_our_opcodes_and_extension_values_work() {
    let mut ring = IoUring::new(8, 0).expect("setup");
    let probe = ring.probe().expect("probe");
    assert!(
        u16::from(probe.last_op()) + 1 >= u16::from(IORING_OP_LAST),
        "kernel knows every opcode we define"
    );
    for op in [
        IoringOp::Nop,
        IoringOp::Readv,
        IoringOp::Writev,
        IoringOp::Fsync,
        IoringOp::ReadFixed,
    ] {
        assert!(ring.probe_opcode(op), "{} supported", op.c_name());
    }
    assert!(!probe.supports(IORING_OP_LAST));

    // Opcodes newer than the installed header, checked by what they do.
    let f = TempFile::on_disk("ftruncate");
    let mut sqe = io_uring_sqe::nop(1);
    sqe.opcode = IoringOp::Ftruncate as u8;
    sqe.fd = f.fd();
    sqe.off_u.off = 12345;
    assert_eq!(run_one(&mut ring, &sqe).res, 0);
    assert_eq!(f.file.metadata().unwrap().len(), 12345);

    let mut fds = [-1i32; 2];
    let mut sqe = io_uring_sqe::nop(2);
    sqe.opcode = IoringOp::Pipe as u8;
    sqe.addr_u.addr = fds.as_mut_ptr() as u64;
    sqe.op_flags.pipe_flags = libc::O_CLOEXEC as u32;
    assert_eq!(run_one(&mut ring, &sqe).res, 0);
    for fd in fds {
        // SAFETY: F_GETFD on a descriptor number has no memory effects.
        let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(
            fd_flags & libc::FD_CLOEXEC,
            libc::FD_CLOEXEC,
            "pipe_flags reached the kernel"
        );
    }
    // SAFETY: the kernel returned two fresh pipe descriptors this test now owns.
    let (mut rd, wr) = unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
    };
    (&wr).write_all(b"pipe").unwrap();
    let mut got = [0u8; 4];
    rd.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pipe");
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// Installs a no-op SIGUSR1 handler without SA_RESTART, so a blocked syscall sees EINTR.
fn install_sigusr1_handler() {
    // SAFETY: a zeroed sigaction with a valid handler and empty mask is well formed.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

#[test]
fn eintr_is_reported_by_the_syscall_and_retried_by_the_ring() {
    install_sigusr1_handler();
    let mut ring = IoUring::new(8, 0).expect("setup");
    let mut pipe = [0i32; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let kick = move || {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: `me` is the test thread, alive while it waits in the kernel below.
        unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
    };

    // The raw syscall reports EINTR.
    let t = std::thread::spawn(kick);
    let err = io_uring_enter(ring.as_raw_fd(), 0, 1, IORING_ENTER_GETEVENTS).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINTR));
    t.join().unwrap();

    // The ring retries: a read from an empty pipe completes after the signal and a write.
    let mut byte = [0u8; 1];
    let iov = [libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }];
    push(
        &mut ring,
        &io_uring_sqe::readv(pipe[0], iov.as_ptr(), 1, 0, 8),
    );
    assert_eq!(ring.submit().expect("submit"), 1);
    let wfd = pipe[1];
    let t = std::thread::spawn(move || {
        kick();
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: `wfd` is the pipe's open write end; one byte from a static buffer.
        assert_eq!(unsafe { libc::write(wfd, b"x".as_ptr().cast(), 1) }, 1);
    });
    // Nothing left to submit: the wait itself is interrupted, then retried.
    assert_eq!(ring.submit_and_wait(1).expect("EINTR retried"), 0);
    t.join().unwrap();
    let cqe = reap(&mut ring, 1)[0];
    assert_eq!((cqe.user_data, cqe.res, byte[0]), (8, 1, b'x'));
    // SAFETY: both pipe ends are owned here and closed once.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
}

/// Pushes NOPs in rounds (wrapping the ring indices several times) and reaps them all.
fn nop_rounds(ring: &mut IoUring, rounds: u64) {
    let per_round = u64::from(ring.sq_entries());
    for round in 0..rounds {
        for i in 0..per_round {
            push(ring, &io_uring_sqe::nop(round * per_round + i));
        }
        ring.submit_and_wait(per_round as u32)
            .expect("submit and wait");
        let tags: BTreeSet<u64> = reap(ring, per_round as usize)
            .iter()
            .map(|c| c.user_data)
            .collect();
        assert_eq!(tags, (round * per_round..(round + 1) * per_round).collect());
    }
}

#[test]
fn setup_flag_variants_round_trip() {
    use util::io_uring::sys::{
        IORING_SETUP_CQE32, IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER,
        IORING_SETUP_SQE128, IORING_SETUP_SQPOLL,
    };
    for flags in [
        0,
        IORING_SETUP_SQE128 | IORING_SETUP_CQE32,
        IORING_SETUP_SQPOLL,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
    ] {
        let mut ring = IoUring::new(4, flags).unwrap_or_else(|e| panic!("setup {flags:#x}: {e}"));
        nop_rounds(&mut ring, 5);
    }
    assert!(
        matches!(IoUring::new(4, 1 << 16), Err(UringError::UnsupportedFlags(f)) if f == 1 << 16)
    );
}
